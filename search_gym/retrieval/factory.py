"""Build retrievers from a small picklable config, sharing one instance per process.

Environments carry a :class:`RetrieverConfig` (plain strings, cheap to pickle into ``AsyncVectorEnv`` workers)
and call :func:`get_retriever` when they first search, so every environment copy in a process shares one loaded
index, and each subprocess loads its own copy lazily.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, fields
from pathlib import Path

from search_gym.retrieval.base import Retriever

KINDS = ("dense", "bm25")


@dataclass(frozen=True)
class RetrieverConfig:
    """Which retriever to use over which corpus."""

    kind: str = field(default="dense", metadata={"help": "retriever family: 'dense' (FAISS) or 'bm25'"})
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

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"RetrieverConfig.kind must be one of {KINDS}, got {self.kind!r}")
        from search_gym.retrieval.dense import INDEX_TYPES
        from search_gym.retrieval.encoders import check_encoder_name

        if self.index_type not in INDEX_TYPES:
            raise ValueError(f"index_type={self.index_type!r} is not an index type; use one of {INDEX_TYPES} "
                             "(flat is exact, hnsw and ivfpq are approximate)")
        if self.kind == "dense":
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
    """A new retriever for ``config`` (nothing is loaded until its first search)."""
    config = config or RetrieverConfig()
    corpus = Path(config.corpus_path) if config.corpus_path is not None else default_corpus_path()
    if config.kind == "bm25":
        from search_gym.retrieval.bm25 import BM25Retriever

        return BM25Retriever(corpus, index_dir=config.index_dir)
    from search_gym.retrieval.dense import DenseRetriever

    return DenseRetriever(corpus, encoder=config.encoder, index_type=config.index_type,
                          index_dir=config.index_dir, device=config.device)


_SHARED: dict[RetrieverConfig, Retriever] = {}
_SHARED_LOCK = threading.Lock()


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
