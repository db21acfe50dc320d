"""Retrieval shared by concurrent trajectories: what every engine bridge needs and search-gym's own loops do not.

verl's agent loops, SkyRL's env workers (``environment.skyrl_gym.max_env_workers``) and verifiers' episodes step
many environments at once from worker threads, all reading the one process-wide retriever of a config. FAISS
searches are safe from several threads, but the dense encoder's Hugging Face tokenizer is not (concurrent calls
raise "Already borrowed"), and BM25 gains nothing from it; so an in-process retriever is searched one call at a
time behind a lock per retriever (:class:`SerialRetriever`). A ``search-gym serve`` URL needs no lock: the remote
client is thread-safe and the server batches the concurrent requests into one encoder + FAISS call, which is also
the faster setup for many workers (docs/retrieval_server.md).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from search_gym.retrieval.base import EmptyQueriesSearched

_SERIAL: dict[int, SerialRetriever] = {}
_SERIAL_LOCK = threading.Lock()


class SerialRetriever:
    """A view of a retriever whose ``search`` calls run one at a time (every other attribute is the wrapped one's)."""

    def __init__(self, retriever: Any):
        self.retriever = retriever
        self.lock = threading.Lock()

    def search(self, queries: Sequence[str], k: int = 3, **kwargs: Any):
        with self.lock:
            return self.retriever.search(queries, k, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name in ("retriever", "lock"):  # not set yet (unpickling): avoid recursing
            raise AttributeError(name)
        return getattr(self.retriever, name)

    def __repr__(self) -> str:
        return f"SerialRetriever({self.retriever!r})"


def serial(retriever: Any) -> Any:
    """The process-wide :class:`SerialRetriever` of ``retriever`` (one lock per retriever object), or the retriever
    itself when it is remote (thread-safe) or already serial."""
    from search_gym.retrieval.remote import RemoteRetriever

    if isinstance(retriever, EmptyQueriesSearched):
        inner = serial(retriever.retriever)
        return retriever if inner is retriever.retriever else EmptyQueriesSearched(inner)
    if isinstance(retriever, (RemoteRetriever, SerialRetriever)):
        return retriever
    with _SERIAL_LOCK:
        wrapped = _SERIAL.get(id(retriever))
        if wrapped is None or wrapped.retriever is not retriever:
            wrapped = _SERIAL[id(retriever)] = SerialRetriever(retriever)
        return wrapped


def serialize_retrieval(env: Any) -> Any:
    """Put the in-process retriever of a search env (a ``SearchEnv``, a Gymnasium wrapper of one, or a
    ``SearchVectorEnv``) behind :func:`serial`; chat envs (no retriever) are returned unchanged. Builds the
    retriever object now (its index still loads on the first search). Returns ``env``."""
    subs = list(getattr(env, "envs", [env]))
    for sub in subs:
        sub = getattr(sub, "unwrapped", sub)
        if not hasattr(sub, "retriever_config") or not hasattr(sub, "_retriever"):
            continue
        # The env builds its retriever lazily from its config (search_r1 mode wraps it in EmptyQueriesSearched);
        # replacing the built object keeps that view and the process-wide index.
        sub._retriever = serial(sub.retriever)
    return env
