"""A retriever that searches over HTTP: the client of ``search-gym serve`` (or of Search-R1's own retrieval server).

It speaks Search-R1's protocol (``POST /retrieve {"queries", "topk", "return_scores": true}``) and turns the
response back into :class:`~search_gym.retrieval.base.Hit` objects, so an env configured with
``retriever="http://host:port"`` sees the same passages as one holding the index in-process.

Built for long training runs against a shared server:

* batching - a ``search`` call sends its queries in one request (at most ``batch_size`` queries and ~4 MiB per
  request);
  duplicates and cached queries are not sent;
* an LRU cache of ``(query, k) -> hits`` (``cache_size`` entries; 0 turns it off), which a deterministic index
  makes exact;
* timeouts and retries with exponential backoff and jitter: a refused connection, a reset, a timeout or a 502 /
  503 / 504 / 429 is retried until ``retry_s`` seconds have passed, so a server restart (or a slow start while it
  loads its index) only pauses the run. Other 4xx answers are the caller's mistake and raise ``ValueError`` at
  once; a 500 is retried twice, then raises.

Only the standard library is used (``http.client``): an env that searches a remote index does not need the server's
dependencies. One keep-alive connection per thread.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from search_gym.retrieval.base import Hit, clean_queries, row_contents

logger = logging.getLogger(__name__)

#: Answers that mean "try again later": the server is overloaded, restarting, or behind a proxy that lost it.
RETRY_STATUSES = frozenset({408, 425, 429, 502, 503, 504})
#: A 500 may be a transient failure or a bug that every retry would hit again: retried this many times only.
MAX_500_RETRIES = 2
#: Most bytes of queries in one request: far below the server's 10 MiB default body limit even for long queries.
MAX_REQUEST_QUERY_BYTES = 4 << 20
#: Jitter source of the backoff; private so that retries never shift the global ``random`` stream a user seeded.
_JITTER = random.Random()


class RemoteRetrieverError(ConnectionError):
    """The retrieval server could not be reached, or kept failing, for longer than the retry budget."""


def parse_server_url(url: str) -> tuple[str, str, int, str]:
    """``(scheme, host, port, base_path)`` of a server URL; ``/retrieve`` at the end is accepted and dropped.

    Accepted: ``http://host:port``, ``http://host:port/``, ``http://host:port/retrieve`` (Search-R1's
    ``search_url``), ``https://...``, and a path prefix behind a proxy (``http://proxy/search-gym``).
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"server URL must be a non-empty string like 'http://127.0.0.1:8000', got {url!r}")
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"server URL {url!r} must start with http:// or https://")
    if not parts.hostname:
        raise ValueError(f"server URL {url!r} has no host; use e.g. 'http://127.0.0.1:8000'")
    if parts.query or parts.fragment:
        raise ValueError(f"server URL {url!r} must not have a query string or fragment")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"server URL {url!r} has a bad port: {exc}") from None
    port = port or (443 if parts.scheme == "https" else 80)
    path = parts.path.rstrip("/")
    if path.endswith("/retrieve"):
        path = path[: -len("/retrieve")]
    return parts.scheme, parts.hostname, port, path


class RemoteRetriever:
    """Retriever protocol over a Search-R1-style ``/retrieve`` server.

    Args:
        url: the server, e.g. ``"http://127.0.0.1:8000"`` (a trailing ``/retrieve`` is accepted).
        timeout_s: socket timeout of one request (connect, and each read); a request that times out is retried.
        retry_s: total seconds to keep retrying one request before raising :class:`RemoteRetrieverError`.
        backoff_s, max_backoff_s: first and largest pause between retries (doubling, with 50-100% jitter so many
            clients do not hammer a restarting server in step).
        batch_size: most queries per HTTP request; larger ``search`` calls are sent in several requests.
        cache_size: LRU entries of ``(query, k) -> hits`` kept in this process (0 = no cache).

    ``stats`` counts ``requests`` (HTTP POSTs answered), ``retries``, ``cache_hits`` and ``queries_sent``.
    Pickling keeps the settings only; each process opens its own connections and starts an empty cache.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 60.0,
        retry_s: float = 600.0,
        backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
        batch_size: int = 512,
        cache_size: int = 65536,
    ):
        self.scheme, self.host, self.port, self.base_path = parse_server_url(url)
        for name, value in (("timeout_s", timeout_s), ("retry_s", retry_s), ("backoff_s", backoff_s),
                            ("max_backoff_s", max_backoff_s)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise ValueError(f"cache_size must be an int >= 0, got {cache_size!r}")
        self.url = f"{self.scheme}://{self.host}:{self.port}{self.base_path}"
        self.timeout_s = float(timeout_s)
        self.retry_s = float(retry_s)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.batch_size = batch_size
        self.cache_size = cache_size
        self.name = f"remote({self.url})"
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, int], tuple[Hit, ...]] = OrderedDict()
        self.stats = {"requests": 0, "retries": 0, "cache_hits": 0, "queries_sent": 0}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_local", "_lock", "_cache", "stats"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    def __repr__(self) -> str:
        return f"RemoteRetriever({self.url!r})"

    def __bool__(self) -> bool:
        return True

    def __len__(self) -> int:
        """Passages in the server's corpus (asks ``/health``)."""
        passages = self.health().get("passages")
        if not isinstance(passages, int):
            raise TypeError(f"{self.url}/health does not report a passage count")
        return passages

    # ------------------------------------------------------------------------------------------------ searching

    def search(self, queries: Sequence[str], k: int = 3, *, keep_empty: bool = False) -> list[list[Hit]]:
        """Top-``k`` passages per query from the server, best first; an empty query gets [] unless
        ``keep_empty`` (then it is sent, and a Search-R1-style dense server searches it like any query)."""
        n_queries = 1 if isinstance(queries, str) else len(queries)
        kept, positions = clean_queries(queries, keep_empty=keep_empty)
        results: list[list[Hit]] = [[] for _ in range(n_queries)]
        if not kept or k <= 0:
            return results
        k = int(k)
        found: dict[str, tuple[Hit, ...]] = {}
        missing: list[str] = []
        with self._lock:
            for q in kept:
                if q in found or q in missing:
                    continue
                cached = self._cache.get((q, k)) if self.cache_size else None
                if cached is not None:
                    self._cache.move_to_end((q, k))
                    self.stats["cache_hits"] += 1
                    found[q] = cached
                else:
                    missing.append(q)
        for chunk in self._chunks(missing):
            rows = self._retrieve(chunk, k)
            with self._lock:
                for q, row in zip(chunk, rows):
                    found[q] = row
                    if self.cache_size:
                        self._cache[(q, k)] = row
                        self._cache.move_to_end((q, k))
                        while len(self._cache) > self.cache_size:
                            self._cache.popitem(last=False)
        for q, pos in zip(kept, positions):
            results[pos] = list(found[q])
        return results

    def _chunks(self, queries: list[str]):
        """``queries`` in request-sized lists: at most ``batch_size`` queries and about 4 MiB of text each."""
        chunk: list[str] = []
        size = 0
        for q in queries:
            n = len(q.encode("utf-8")) + 4  # quotes, comma, space
            if chunk and (len(chunk) >= self.batch_size or size + n > MAX_REQUEST_QUERY_BYTES):
                yield chunk
                chunk, size = [], 0
            chunk.append(q)
            size += n
        if chunk:
            yield chunk

    def clear_cache(self) -> None:
        """Forget every cached result (e.g. after the server switched to another index)."""
        with self._lock:
            self._cache.clear()

    def _retrieve(self, queries: list[str], k: int) -> list[tuple[Hit, ...]]:
        # UTF-8 rather than \u escapes: up to 3x smaller for non-Latin text (queries are valid Unicode by now)
        body = json.dumps({"queries": queries, "topk": k, "return_scores": True}, ensure_ascii=False).encode("utf-8")
        payload = self._request("POST", "/retrieve", body)
        with self._lock:
            self.stats["queries_sent"] += len(queries)
        return parse_response(payload, len(queries), self.url)

    def health(self) -> dict[str, Any]:
        """The server's ``GET /health`` answer (retried like a search)."""
        data = json.loads(self._request("GET", "/health", None))
        if not isinstance(data, dict):
            raise RuntimeError(f"{self.url}/health answered {data!r}, not a JSON object")
        return data

    # ------------------------------------------------------------------------------------------------ HTTP

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's keep-alive connection and whether it has been used before."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn, True
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        conn = cls(self.host, self.port, timeout=self.timeout_s)
        self._local.conn = conn
        return conn, False

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass

    def _request(self, method: str, path: str, body: bytes | None) -> bytes:
        """Body of a 200 answer to ``method path``, retrying transient failures for up to ``retry_s`` seconds."""
        deadline = time.monotonic() + self.retry_s
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        attempt, errors_500, last_error = 0, 0, ""
        while True:
            conn, reused = self._connection()
            try:
                conn.request(method, self.base_path + path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                status = response.status
                if response.will_close:
                    self._drop_connection()
            except (OSError, http.client.HTTPException) as exc:  # refused, reset, timeout, server gone mid-answer
                self._drop_connection()
                last_error = f"{type(exc).__name__}: {exc}"
                if reused and attempt == 0:
                    # The usual cause: the server closed an idle keep-alive connection. Retry at once on a new one.
                    attempt += 1
                    continue
            else:
                if status == 200:
                    with self._lock:
                        self.stats["requests"] += 1
                    if attempt > 1:
                        logger.info("%s answered again after %d retries", self.url, attempt)
                    return data
                detail = _detail(data)
                if status == 500:
                    errors_500 += 1
                    if errors_500 > MAX_500_RETRIES:
                        raise RemoteRetrieverError(f"{self.url}{path} failed with HTTP 500 {errors_500} times: "
                                                   f"{detail}")
                elif status not in RETRY_STATUSES:
                    raise ValueError(f"{self.url}{path} rejected the request (HTTP {status}): {detail}")
                last_error = f"HTTP {status}: {detail}"
            delay = min(self.max_backoff_s, self.backoff_s * 2 ** min(attempt, 30)) * (0.5 + 0.5 * _JITTER.random())
            if time.monotonic() + delay > deadline:
                raise RemoteRetrieverError(
                    f"retrieval server {self.url} did not answer {method} {path} within retry_s={self.retry_s:g} s "
                    f"({attempt + 1} attempts); last error: {last_error}. Is `search-gym serve` running there?"
                )
            if attempt <= 1 or attempt % 10 == 0:
                logger.warning("retrieval server %s: %s; retrying in %.2f s", self.url, last_error, delay)
            with self._lock:
                self.stats["retries"] += 1
            time.sleep(delay)
            attempt += 1


def _detail(data: bytes) -> str:
    """The ``detail`` message of an error answer, else its first 300 characters."""
    try:
        parsed = json.loads(data)
        if isinstance(parsed, dict) and "detail" in parsed:
            return str(parsed["detail"])
    except ValueError:
        pass
    return data[:300].decode("utf-8", "replace")


def parse_response(payload: bytes, n_queries: int, url: str = "server") -> list[tuple[Hit, ...]]:
    """Hits per query from a /retrieve answer, with or without scores.

    Documents are Search-R1 corpus rows: ``{"id", "contents"}`` (FlashRAG's ``title``/``text`` variant and
    Search-R1's BM25 server's ``{"title", "text", "contents"}`` are read too; a missing id becomes "").
    """
    try:
        data = json.loads(payload)
        rows = data["result"]
    except (ValueError, KeyError, TypeError):
        raise RuntimeError(f"{url} answered something that is not a /retrieve result: {payload[:200]!r}") from None
    if not isinstance(rows, list) or len(rows) != n_queries:
        raise RuntimeError(f"{url} answered {len(rows) if isinstance(rows, list) else rows!r} result lists for "
                           f"{n_queries} queries")
    out = []
    for row in rows:
        hits = []
        for item in row:
            if isinstance(item, dict) and "document" in item:
                doc, score = item["document"], item.get("score", 0.0)
            else:
                doc, score = item, 0.0
            if not isinstance(doc, dict):
                raise RuntimeError(f"{url} returned a document that is not a JSON object: {doc!r}")
            hits.append(Hit(str(doc.get("id", "")), row_contents(doc), float(score)))
        out.append(tuple(hits))
    return out
