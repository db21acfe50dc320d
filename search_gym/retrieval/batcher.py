"""An asyncio micro-batcher: concurrent search requests become one retriever call.

Why: a dense search costs one encoder forward pass plus one FAISS call, and both are far cheaper per query in a
batch (MiniLM on 2 CPU cores: ~270 queries/s batched vs a few dozen one by one). A server that searched each HTTP
request on its own would lose that, so requests wait in a queue and a single worker task takes everything queued
(up to ``max_batch`` queries, waiting at most ``max_wait_s`` after the first request for more to arrive), runs one
``search`` in a worker thread, and hands each request its own slice of the results.

Requests that arrive while a search is running queue up and form the next batch without any added wait, so under
load the batch size grows by itself; ``max_wait_s`` only matters when the server is idle.

Requests with different ``k`` in one batch are searched as one call per distinct ``k`` (in practice every client
asks for the same k): taking the top-``max k`` and cutting would not always give the top-``k`` of an approximate
index or of a fusion that depends on ``k``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

SearchFn = Callable[[list[str], int], list[list[Any]]]


@dataclass
class _Pending:
    queries: list[str]
    k: int
    future: asyncio.Future = field(repr=False)


@dataclass
class BatcherStats:
    """Counters since start: retriever calls (``batches``), queries searched, requests answered, largest batch,
    and seconds spent inside the retriever (the rest of a request's latency is HTTP, JSON and queueing)."""

    batches: int = 0
    queries: int = 0
    requests: int = 0
    max_batch_queries: int = 0
    search_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "queries": self.queries, "requests": self.requests,
                "max_batch_queries": self.max_batch_queries, "search_seconds": round(self.search_seconds, 6)}


class MicroBatcher:
    """Collects ``submit(queries, k)`` calls from many coroutines into batched calls of ``search_fn(queries, k)``.

    ``search_fn`` runs in one dedicated thread (the retriever is used by one call at a time, and the event loop
    stays free to accept requests meanwhile). Use inside a running event loop: :meth:`start` before the first
    :meth:`submit`, :meth:`stop` at shutdown.

    Args:
        search_fn: ``(queries, k) -> one result list per query``, e.g. a retriever's ``search``.
        max_batch: most queries per ``search_fn`` call (a single larger request is still searched whole).
        max_wait_s: how long the first request of an idle server waits for others to join its batch.
        on_start: optional callable run once in the search thread before anything else (thread-local setup such
            as OpenMP thread counts, or loading the index there).
    """

    def __init__(self, search_fn: SearchFn, max_batch: int = 256, max_wait_s: float = 0.002,
                 on_start: Callable[[], Any] | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if not max_wait_s >= 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self.search_fn = search_fn
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_s)
        self.on_start = on_start
        self.stats = BatcherStats()
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    async def start(self) -> None:
        """Start the search thread and the batching task (runs ``on_start`` in the search thread first)."""
        if self._task is not None:
            return
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="search")
        if self.on_start is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self.on_start)
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        """Cancel the batching task; requests still queued get a ``RuntimeError``."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._queue is not None:
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if not item.future.done():
                    item.future.set_exception(RuntimeError("server shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def submit(self, queries: Sequence[str], k: int) -> list[list[Any]]:
        """Results of ``queries`` at ``k``, searched together with whatever other requests are queued."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() has not been awaited")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(list(queries), int(k), future))
        return await future

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            batch, size = [first], len(first.queries)
            deadline = loop.time() + self.max_wait_s
            while size < self.max_batch:
                # Take what is already queued first (no waiting); wait only while the batch is still small.
                if self._queue.empty():
                    timeout = deadline - loop.time()
                    if timeout <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self._queue.get(), timeout)
                    except asyncio.TimeoutError:
                        break
                else:
                    item = self._queue.get_nowait()
                batch.append(item)
                size += len(item.queries)
            await self._search(batch)

    async def _search(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        live = [p for p in batch if not p.future.done()]  # a client that went away cancelled its future
        by_k: dict[int, list[_Pending]] = {}
        for p in live:
            by_k.setdefault(p.k, []).append(p)
        for k, group in by_k.items():
            queries = [q for p in group for q in p.queries]
            t0 = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self.search_fn, queries, k)
                if len(results) != len(queries):
                    raise RuntimeError(f"retriever returned {len(results)} result lists for {len(queries)} queries")
            except Exception as exc:  # noqa: BLE001 - every waiting request gets the error, the loop goes on
                for p in group:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            with self._lock:
                self.stats.search_seconds += time.perf_counter() - t0
                self.stats.batches += 1
                self.stats.queries += len(queries)
                self.stats.requests += len(group)
                self.stats.max_batch_queries = max(self.stats.max_batch_queries, len(queries))
            start = 0
            for p in group:
                end = start + len(p.queries)
                if not p.future.done():
                    p.future.set_result(results[start:end])
                start = end
