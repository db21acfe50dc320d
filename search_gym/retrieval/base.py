"""Core retrieval types shared by every backend: :class:`Hit`, the :class:`Retriever` protocol and corpus I/O.

Passages follow the Search-R1 / FlashRAG JSONL format, one row per passage::

    {"id": "0", "contents": "\\"Title\\"\\nPassage text ..."}

Backends never hold the whole corpus in memory. They keep a table of byte offsets into the JSONL file
(``offsets.npy``, one int64 per passage plus the file size) and read a passage by slicing a memory map of the
file, so the same code serves the ~15k-passage embedded corpus and the 21M-passage wiki-18 dump.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from search_gym.data.corpus import file_fingerprint
from search_gym.data.text import valid_unicode
from search_gym.files import atomic_output, write_text_atomic

logger = logging.getLogger(__name__)

#: Queries are cut to this many characters before tokenisation. The encoders truncate to their max token length
#: anyway (256-512 tokens is at most a few thousand characters); capping first keeps a 1 MB query from costing
#: seconds of tokenisation.
MAX_QUERY_CHARS = 8192


@dataclass(frozen=True)
class Hit:
    """One retrieved passage. ``contents`` is the raw corpus field: a quoted title line, then the text."""

    doc_id: str
    contents: str
    score: float

    @property
    def title(self) -> str:
        """First line of ``contents`` with one pair of surrounding double quotes removed.

        A single-line passage has no title line and gets "" (as :class:`search_gym.data.corpus.Passage` does).
        """
        first, sep, _ = self.contents.partition("\n")
        if not sep:
            return ""
        first = first.strip()
        if len(first) >= 2 and first[0] == '"' and first[-1] == '"':
            first = first[1:-1]
        return first

    @property
    def text(self) -> str:
        """Everything after the title line, stripped; the whole passage when it has a single line."""
        first, sep, rest = self.contents.partition("\n")
        return rest.strip() if sep else first.strip()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, with the parsed title and text alongside the raw contents."""
        return {
            "doc_id": self.doc_id,
            "title": self.title,
            "text": self.text,
            "contents": self.contents,
            "score": float(self.score),
        }


@runtime_checkable
class Retriever(Protocol):
    """Anything that answers batched queries with ranked passages.

    ``search`` returns one list per query, best first, at most ``k`` long. An empty or whitespace-only query gets
    ``[]``; no query text makes it raise (lone surrogates and other text no encoder accepts included).
    """

    name: str

    def search(self, queries: Sequence[str], k: int = 3) -> list[list[Hit]]: ...


def clean_queries(queries: Sequence[str] | str, keep_empty: bool = False) -> tuple[list[str], list[int]]:
    """Normalise a batch of queries: returns the non-empty ones (character-capped, stripped, valid Unicode) and
    their batch positions. ``keep_empty=True`` keeps empty and whitespace queries too (as ``""``); None is always
    dropped."""
    if isinstance(queries, str):
        # A bare string is almost always a mistake for a one-query batch; iterating it would search characters.
        queries = [queries]
    kept, positions = [], []
    for i, q in enumerate(queries):
        if q is None:
            continue
        q = valid_unicode(str(q)[:MAX_QUERY_CHARS]).strip()
        if q or keep_empty:
            kept.append(q)
            positions.append(i)
    return kept, positions


def accepts_keep_empty(retriever: Any) -> bool:
    """Whether ``retriever.search`` takes the ``keep_empty`` keyword (every search-gym retriever does; a user's
    object with a plain ``search(queries, k)`` may not)."""
    import inspect

    try:
        params = inspect.signature(retriever.search).parameters
    except (AttributeError, TypeError, ValueError):
        return False
    return "keep_empty" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


class EmptyQueriesSearched:
    """A view of a retriever whose ``search`` also searches empty queries (``keep_empty=True``).

    Search-R1's parser turns ``<search></search>`` into the query ``''`` and its dense server encodes it like any
    other query; the env's ``parse_mode="search_r1"`` reads passages through this view to do the same. Every other
    attribute is the wrapped retriever's, so the index is loaded once and shared with plain users of it.
    """

    def __init__(self, retriever: Any):
        self.retriever = retriever

    def search(self, queries: Sequence[str], k: int = 3) -> list[list[Hit]]:
        return self.retriever.search(queries, k, keep_empty=True)

    def __getattr__(self, name: str) -> Any:
        if name == "retriever":  # not set yet (unpickling): avoid recursing
            raise AttributeError(name)
        return getattr(self.retriever, name)

    def __repr__(self) -> str:
        return f"EmptyQueriesSearched({self.retriever!r})"


# --------------------------------------------------------------------------------------------------------------
# Corpus files


def row_contents(row: dict[str, Any]) -> str:
    """The ``contents`` field of a corpus row; FlashRAG's ``title``/``text`` variant is folded into that form."""
    contents = row.get("contents")
    if contents is None:
        title = row.get("title", "")
        text = row.get("text", "")
        contents = f'"{title}"\n{text}' if title else str(text)
    return str(contents)


def check_corpus_path(path: str | os.PathLike) -> Path:
    """``path`` as a Path; a compressed corpus is refused up front because passages are read by byte offset."""
    path = Path(path)
    if path.suffix in (".gz", ".bz2", ".xz", ".zst"):
        raise ValueError(
            f"{path} is compressed; retrieval reads passages by byte offset from a plain JSONL file. "
            f"Decompress it first (e.g. `gunzip -k {path}`) and pass the .jsonl path"
        )
    return path


def scan_offsets(path: str | os.PathLike, progress: bool = False) -> np.ndarray:
    """Byte offset of every non-blank line of a JSONL file, followed by the file size (int64, length n+1).

    Passage ``i`` is the bytes ``offsets[i]:offsets[i+1]``; blank lines between rows fall inside a slice as
    whitespace, which ``json.loads`` ignores.
    """
    path = Path(path)
    size = path.stat().st_size
    starts: list[int] = []
    bar = _progress(total=size, desc=f"scanning {path.name}", unit="B", unit_scale=True, disable=not progress)
    with open(path, "rb") as f:
        pos = 0
        for line in f:
            if line.strip():
                starts.append(pos)
            pos += len(line)
            bar.update(len(line))
    bar.close()
    starts.append(size)
    return np.asarray(starts, dtype=np.int64)


class PassageStore:
    """Random access to passages of a JSONL corpus through an offset table; picklable, opens the file lazily."""

    def __init__(self, corpus_path: str | os.PathLike, offsets: np.ndarray):
        self.corpus_path = str(corpus_path)
        self.offsets = offsets
        self._mm: mmap.mmap | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getstate__(self) -> dict[str, Any]:
        return {"corpus_path": self.corpus_path, "offsets": self.offsets}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["corpus_path"], state["offsets"])

    def _map(self) -> mmap.mmap:
        if self._mm is None:
            with self._lock:
                if self._mm is None:
                    with open(self.corpus_path, "rb") as f:
                        self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return self._mm

    def row(self, i: int) -> dict[str, Any]:
        """The parsed JSON row of passage ``i``."""
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        return json.loads(self._map()[start:end])

    def get(self, i: int) -> tuple[str, str]:
        """``(doc_id, contents)`` of passage ``i``; a row without an id gets its line number."""
        row = self.row(i)
        doc_id = row.get("id", i)
        return str(doc_id), row_contents(row)

    def contents_range(self, start: int, stop: int) -> list[str]:
        """Contents of passages ``start..stop-1``, read in one slice."""
        mm = self._map()
        lo, hi = int(self.offsets[start]), int(self.offsets[stop])
        block = mm[lo:hi]
        out = []
        for j in range(start, stop):
            a, b = int(self.offsets[j]) - lo, int(self.offsets[j + 1]) - lo
            out.append(row_contents(json.loads(block[a:b])))
        return out

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
            self._mm = None


# --------------------------------------------------------------------------------------------------------------
# Fingerprints and atomic files

_FP_CACHE_MIN_BYTES = 64 << 20
_FP_CACHE: dict[tuple[str, int, int], str] = {}
_FP_LOCK = threading.Lock()


def corpus_fingerprint(path: str | os.PathLike) -> str:
    """SHA-256 of a corpus file, hex.

    Hashing wiki-18 (14 GB) takes tens of seconds, so the digest is remembered per (real path, size, mtime) in
    this process and in ``<cache>/indexes/fingerprints.json`` across processes; a file rewritten in place gets a
    new mtime and is hashed again.
    """
    from search_gym.paths import indexes_dir

    real = os.path.realpath(path)
    st = os.stat(real)
    if st.st_size <= _FP_CACHE_MIN_BYTES:
        # Small files hash in milliseconds; not caching them means a file rewritten within one mtime tick
        # (coarse-clock file systems) can never keep a stale fingerprint.
        return file_fingerprint(real)
    key = (real, st.st_size, st.st_mtime_ns)
    with _FP_LOCK:
        if key in _FP_CACHE:
            return _FP_CACHE[key]
    disk_cache = indexes_dir() / "fingerprints.json"
    cached = _read_json(disk_cache) or {}
    entry = cached.get(real)
    if entry and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
        digest = entry["sha256"]
    else:
        digest = file_fingerprint(real)
        with contextlib.suppress(OSError), file_lock(disk_cache.with_suffix(".lock")):
            cached = _read_json(disk_cache) or {}
            cached[real] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
            atomic_write_text(disk_cache, json.dumps(cached, indent=1))
    with _FP_LOCK:
        _FP_CACHE[key] = digest
    return digest


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_meta(folder: Path) -> dict[str, Any] | None:
    """``folder/meta.json`` or None when missing or unreadable."""
    meta = _read_json(folder / "meta.json")
    return meta if isinstance(meta, dict) else None


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file so that readers see either the old file or the whole new one."""
    write_text_atomic(path, text)


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save`` through a temporary file and a rename (an interrupted write leaves no partial .npy)."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Exclusive inter-process lock on ``path`` (POSIX ``flock``).

    Several environment copies in separate processes may ask for the same missing index at once; the lock makes
    one of them build it while the others wait and then load it. Where ``fcntl`` is unavailable it is a no-op.
    """
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape an index, recorded in meta.json for provenance."""
    import importlib.metadata as md

    out = {}
    for dist in ("faiss-cpu", "faiss-gpu", "faiss", "sentence-transformers", "transformers", "torch", "numpy",
                 "bm25s"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[dist] = md.version(dist)
    return out


def slugify(text: str) -> str:
    """Lower-case file-name-safe form of a model or corpus name."""
    keep = "".join(c if c.isalnum() or c in "-_." else "-" for c in text.lower())
    return "-".join(p for p in keep.split("-") if p) or "x"


def _progress(**kwargs: Any):
    from tqdm.auto import tqdm

    return tqdm(**kwargs)


class CorpusIndex:
    """What every retriever with an on-disk index of one corpus file shares (dense and BM25 today).

    The index lives in ``index_dir``: by default ``indexes_dir()/<corpus stem>-<sha[:12]>-<index_suffix()>``, so a
    changed corpus gets a new folder. ``meta.json`` is written last and records ``format``, ``kind`` and the corpus
    fingerprint; :meth:`build` rebuilds when it is missing or disagrees with this object (subclasses add their own
    checks in :meth:`_stale_detail`) and holds ``build.lock`` so concurrent processes build once. Pickling keeps the
    settings only: indexes, models and memory maps are per process and reload lazily.

    Subclasses set ``kind`` and ``meta_format``, extend ``_runtime_fields`` and implement ``index_suffix``,
    ``_stale_detail``, ``_build``, ``_load`` and ``is_loaded``.
    """

    kind = "index"
    meta_format = 1
    _runtime_fields: tuple[str, ...] = ("_lock", "_store", "_fingerprint")

    def _init_index(self, corpus_path: str | os.PathLike, index_dir: str | os.PathLike | None) -> None:
        self.corpus_path = check_corpus_path(corpus_path)
        self._index_dir = Path(index_dir) if index_dir is not None else None
        self.builds = 0  # how many times this object built (not merely loaded) its index
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._lock = threading.RLock()
        self._store: PassageStore | None = None
        self._fingerprint: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in self._runtime_fields:
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.builds = 0  # a copy starts its own count
        self._init_runtime()

    def __bool__(self) -> bool:
        # Without this, ``if retriever:`` would call __len__ and build the index as a side effect.
        return True

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the corpus file (computed once per object)."""
        if self._fingerprint is None:
            if not self.corpus_path.is_file():
                raise FileNotFoundError(f"corpus file {self.corpus_path} does not exist")
            self._fingerprint = corpus_fingerprint(self.corpus_path)
        return self._fingerprint

    def index_suffix(self) -> str:
        """The end of the default folder name: what distinguishes this index from others of the same corpus."""
        raise NotImplementedError

    @property
    def index_dir(self) -> Path:
        """Folder holding this index (hashes the corpus when the default name is used)."""
        if self._index_dir is not None:
            return self._index_dir
        from search_gym.paths import indexes_dir

        return indexes_dir() / f"{slugify(self.corpus_path.stem)}-{self.fingerprint[:12]}-{self.index_suffix()}"

    @property
    def is_loaded(self) -> bool:
        raise NotImplementedError

    def _stale_reason(self, folder: Path) -> str | None:
        """Why the index in ``folder`` cannot be used as is, or None when it can."""
        meta = read_meta(folder)
        if meta is None:
            return "no finished index"
        if meta.get("format") != self.meta_format or meta.get("kind") != self.kind:
            return "index format changed"
        if meta.get("corpus_fingerprint") != self.fingerprint:
            return (f"corpus fingerprint changed ({str(meta.get('corpus_fingerprint'))[:12]} -> "
                    f"{self.fingerprint[:12]})")
        return self._stale_detail(meta, folder)

    def _stale_detail(self, meta: dict[str, Any], folder: Path) -> str | None:
        """The subclass's own reasons to rebuild (parameters, encoder, missing files), or None."""
        return None

    def _build(self, folder: Path, progress: bool) -> None:
        raise NotImplementedError

    def _begin_build(self, folder: Path, progress: bool) -> PassageStore:
        """First steps of every build: mark the folder unfinished, scan and save the passage offsets."""
        # meta.json goes first so that a crash from here on leaves a folder that reads as unfinished.
        (folder / "meta.json").unlink(missing_ok=True)
        offsets = scan_offsets(self.corpus_path, progress=progress)
        if len(offsets) - 1 == 0:
            raise ValueError(f"corpus {self.corpus_path} has no passages")
        atomic_save_npy(folder / "offsets.npy", offsets)
        return PassageStore(self.corpus_path, offsets)

    def _finish_build(self, folder: Path, **fields: Any) -> None:
        """Last step of every build: write meta.json (the common fields plus ``fields``), which marks it finished."""
        meta = {
            "format": self.meta_format,
            "kind": self.kind,
            "corpus_path": str(self.corpus_path.resolve()),
            "corpus_fingerprint": self.fingerprint,
            "versions": library_versions(),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **fields,
        }
        atomic_write_text(folder / "meta.json", json.dumps(meta, indent=2, sort_keys=True))
        self.builds += 1

    def _load(self, folder: Path) -> None:
        raise NotImplementedError

    def load(self):
        """Load the index, building it first when missing or stale. Idempotent."""
        if not self.is_loaded:
            self.build(progress=getattr(self, "progress", True), force=False)
        return self

    def build(self, progress: bool = True, force: bool = False) -> Path:
        """Make sure a valid index exists on disk (building it when missing or stale) and load it.

        ``force`` rebuilds even a valid index. Returns the index folder.
        """
        with self._lock:
            folder = self.index_dir
            if self.is_loaded and not force:
                return folder
            folder.mkdir(parents=True, exist_ok=True)
            with file_lock(folder / "build.lock"):
                reason = "rebuild requested" if force else self._stale_reason(folder)
                if reason is not None:
                    if reason != "no finished index":
                        logger.warning("rebuilding %s index at %s: %s", self.kind, folder, reason)
                    else:
                        logger.info("building %s index at %s", self.kind, folder)
                    self._build(folder, progress)
                self._load(folder)
            return folder
