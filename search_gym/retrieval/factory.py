"""Build retrievers from a small picklable config, sharing one instance per process.

Environments carry a :class:`RetrieverConfig` (plain strings, cheap to pickle into ``AsyncVectorEnv`` workers)
and call :func:`get_retriever` when they first search, so every environment copy in a process shares one loaded
index, and each subprocess loads its own copy lazily. ``kind="remote"`` (or a URL as the kind) gives a
:class:`~search_gym.retrieval.remote.RemoteRetriever` that asks a ``search-gym serve`` (or Search-R1) server.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, fields
from pathlib import Path

from search_gym.retrieval.base import Retriever

KINDS = ("dense", "bm25", "hybrid", "remote")
#: URL schemes that make ``kind`` a server address: ``RetrieverConfig(kind="http://host:port")`` is a remote config.
URL_SCHEMES = ("http://", "https://")


@dataclass(frozen=True)
class RetrieverConfig:
    """Which retriever to use over which corpus."""

    kind: str = field(
        default="dense",
        metadata={"help": "retriever family: 'dense' (FAISS), 'bm25', 'hybrid' (dense + BM25, reciprocal-rank "
                          "fusion), 'remote', or a server URL 'http://host:port' (same as kind='remote', url=...)"},
    )
    corpus_path: str | None = field(
        default=None,
        metadata={"help": "JSONL passages ({'id','contents'}); None = the embedded Wikipedia corpus"},
    )
    encoder: str = field(
        default="minilm",
        metadata={"help": "dense encoder: 'minilm', 'e5-base-v2', a hub id or a local folder"},
    )
    index_type: str = field(
        default="flat",
        metadata={"help": "dense index: 'flat' (exact, Search-R1's), 'hnsw' (approximate) or 'ivfpq' "
                          "(approximate, compressed: wiki-18 in a few GB)"},
    )
    index_dir: str | None = field(
        default=None, metadata={"help": "exact index folder; None = a folder named after corpus+encoder under the cache"}
    )
    device: str | None = field(
        default=None, metadata={"help": "torch device for the dense encoder; None = automatic"}
    )
    rrf_k: float = field(
        default=60.0, metadata={"help": "hybrid: reciprocal-rank-fusion constant (60 = the published default)"}
    )
    url: str | None = field(
        default=None,
        metadata={"help": "remote: base URL of a Search-R1-style /retrieve server, e.g. http://127.0.0.1:8000"},
    )
    timeout_s: float = field(
        default=60.0, metadata={"help": "remote: seconds one HTTP request may take before it is retried"}
    )
    retry_s: float = field(
        default=600.0,
        metadata={"help": "remote: seconds to keep retrying an unreachable or failing server (covers a restart) "
                          "before search raises"},
    )

    def __post_init__(self) -> None:
        if isinstance(self.kind, str) and self.kind.strip().lower().startswith(URL_SCHEMES):
            if self.url is not None and self.url != self.kind:
                raise ValueError(f"kind={self.kind!r} is a URL and url={self.url!r} names another one; give one")
            object.__setattr__(self, "url", self.kind.strip())
            object.__setattr__(self, "kind", "remote")
        if self.kind not in KINDS:
            raise ValueError(f"RetrieverConfig.kind must be one of {KINDS} or a URL 'http://host:port', "
                             f"got {self.kind!r}")
        if self.kind == "remote":
            from search_gym.retrieval.remote import parse_server_url

            if self.url is None:
                raise ValueError("kind='remote' needs url='http://host:port' (or pass the URL as the kind)")
            parse_server_url(self.url)  # raises ValueError for a malformed address
            if self.corpus_path is not None or self.index_dir is not None:
                raise ValueError("corpus_path / index_dir do not apply to a remote retriever: the server chooses "
                                 "its corpus and index (search-gym serve --corpus ... --index-dir ...)")
            for name in ("timeout_s", "retry_s"):
                value = getattr(self, name)
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                    raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        elif self.url is not None:
            raise ValueError(f"url only applies to kind='remote', not kind={self.kind!r}")
        if isinstance(self.rrf_k, bool) or not isinstance(self.rrf_k, (int, float)) or not self.rrf_k >= 0:
            raise ValueError(f"rrf_k must be a number >= 0, got {self.rrf_k!r}")
        from search_gym.retrieval.dense import INDEX_TYPES
        from search_gym.retrieval.encoders import check_encoder_name

        if self.index_type not in INDEX_TYPES:
            raise ValueError(f"index_type={self.index_type!r} is not an index type; use one of {INDEX_TYPES} "
                             "(flat is exact, hnsw and ivfpq are approximate)")
        if self.kind in ("dense", "hybrid"):
            check_encoder_name(self.encoder)
        # Path objects are accepted but stored as str so the config stays hashable and compares by value.
        for name in ("corpus_path", "index_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                object.__setattr__(self, name, str(value))

    @classmethod
    def help(cls) -> dict[str, str]:
        """Field name -> one-line help (for CLIs and docs)."""
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}


def default_corpus_path() -> Path:
    """The embedded corpus, building it when missing (needs the offline asset packages)."""
    from search_gym.paths import embedded_dir

    path = embedded_dir() / "passages.jsonl"
    if path.is_file():
        return path
    try:
        from search_gym.build import ensure_embedded
    except ImportError as exc:
        raise FileNotFoundError(
            f"the embedded corpus {path} does not exist; build it with `search-gym setup`"
        ) from exc
    result = ensure_embedded()
    if isinstance(result, (str, Path)):
        candidate = Path(result)
        candidate = candidate / "passages.jsonl" if candidate.is_dir() else candidate
        if candidate.is_file():
            return candidate
    if path.is_file():
        return path
    raise FileNotFoundError(f"the embedded corpus {path} does not exist; build it with `search-gym setup`")


def make_retriever(config: RetrieverConfig | None = None) -> Retriever:
    """A new retriever for ``config`` (nothing is loaded until its first search).

    A hybrid retriever's dense and BM25 parts are the process-wide ones (:func:`get_retriever`), so comparing
    dense, BM25 and hybrid in one process loads each index once.
    """
    config = config or RetrieverConfig()
    if config.kind == "remote":
        from search_gym.retrieval.remote import RemoteRetriever

        return RemoteRetriever(config.url, timeout_s=config.timeout_s, retry_s=config.retry_s)
    if config.kind == "hybrid":
        from search_gym.retrieval.hybrid import HybridRetriever

        # index_dir names one index folder, so it cannot serve both parts; the parts use their default folders.
        if config.index_dir is not None:
            raise ValueError("index_dir names one index folder; a hybrid retriever has two (dense + BM25) and uses "
                             "their default folders under the cache")
        # The parts' configs carry only the fields that shape them, so they equal (and share the index of) the
        # plain dense / BM25 configs of the same corpus.
        dense = RetrieverConfig(kind="dense", corpus_path=config.corpus_path, encoder=config.encoder,
                                index_type=config.index_type, device=config.device)
        sparse = RetrieverConfig(kind="bm25", corpus_path=config.corpus_path)
        return HybridRetriever([get_retriever(dense), get_retriever(sparse)], rrf_k=config.rrf_k)
    corpus = Path(config.corpus_path) if config.corpus_path is not None else default_corpus_path()
    if config.kind == "bm25":
        from search_gym.retrieval.bm25 import BM25Retriever

        return BM25Retriever(corpus, index_dir=config.index_dir)
    from search_gym.retrieval.dense import DenseRetriever

    return DenseRetriever(corpus, encoder=config.encoder, index_type=config.index_type,
                          index_dir=config.index_dir, device=config.device)


_SHARED: dict[RetrieverConfig, Retriever] = {}
_SHARED_LOCK = threading.RLock()  # re-entrant: a hybrid's make_retriever gets its parts through it


def get_retriever(config: RetrieverConfig | None = None) -> Retriever:
    """The process-wide retriever for ``config``: the first call creates it, later equal configs reuse it."""
    config = config or RetrieverConfig()
    with _SHARED_LOCK:
        retriever = _SHARED.get(config)
        if retriever is None:
            retriever = make_retriever(config)
            _SHARED[config] = retriever
        return retriever


def clear_retrievers() -> None:
    """Forget the shared retrievers (their indexes are freed once nothing else references them)."""
    with _SHARED_LOCK:
        _SHARED.clear()
