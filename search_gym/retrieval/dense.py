"""Dense retrieval: a sentence-transformers encoder plus a FAISS index over a JSONL passage corpus.

An index lives in one folder::

    index.faiss     the FAISS index (inner product on L2-normalised embeddings = cosine similarity)
    offsets.npy     int64 byte offsets of every passage in the corpus JSONL (+ the file size)
    meta.json       corpus SHA-256, encoder identity, index type and parameters, dim, count, library versions
    shards/         per-shard passage embeddings while a build is in progress (removed afterwards by default;
                    ``shard_dir`` puts them elsewhere, e.g. one folder shared by the flat, hnsw and ivfpq builds)

``meta.json`` is written last, so its presence marks a finished index. On load, a folder whose meta does not
match the current corpus file, encoder, index type or an index parameter that was asked for is rebuilt (the reason
is logged); a parameter left unset (None) accepts the folder's value, so an index built with custom settings (by
``search-gym index build``) loads as it is. Builds encode the corpus in shards saved atomically as ``.npy``; an
interrupted build skips the shards already on disk. :meth:`DenseRetriever.build_from_vectors` makes the same folder
from embeddings computed elsewhere (Search-R1's prebuilt ``e5_Flat.index``).

Nothing heavy happens in the constructor: the model and index are loaded (or built) on the first
:meth:`DenseRetriever.search` or an explicit :meth:`DenseRetriever.build`. The object pickles to its settings
only, so environment copies in subprocesses reload the index lazily instead of copying it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from search_gym.retrieval.base import (
    CorpusIndex,
    Hit,
    PassageStore,
    _progress,
    _read_json,
    atomic_output,
    atomic_save_npy,
    atomic_write_text,
    clean_queries,
    read_meta,
)
from search_gym.retrieval.encoders import (
    EncoderSpec,
    check_encoder_dtype,
    check_encoder_name,
    embedding_dim,
    encode,
    load_encoder,
    resolve_encoder,
)

logger = logging.getLogger(__name__)

INDEX_TYPES = ("flat", "hnsw", "ivfpq")
#: Index types whose search is approximate (a query may miss passages that flat search would return).
APPROXIMATE_INDEX_TYPES = ("hnsw", "ivfpq")
META_FORMAT = 1

#: HNSW insertion is multi-threaded in FAISS and the resulting graph depends on thread timing. Up to this many
#: passages the build runs single-threaded (a few seconds) so that the same corpus always gives the same index.
HNSW_DETERMINISTIC_MAX = 200_000

#: Build parameters used when one is left unset (None). ``nlist`` / ``m`` None mean "chosen from the corpus size"
#: (:func:`ivfpq_params`); ``opq`` adds a learned rotation before product quantisation.
PARAM_DEFAULTS: dict[str, dict[str, Any]] = {
    "flat": {},
    "hnsw": {"M": 32, "ef_construction": 100},
    "ivfpq": {"nlist": None, "m": None, "nbits": 8, "opq": False},
}
#: Search-time defaults when neither the retriever nor the index folder's meta.json sets them.
DEFAULT_NPROBE = 64
DEFAULT_EF_SEARCH = 128


@contextlib.contextmanager
def faiss_threads(n: int | None) -> Iterator[None]:
    """Run the block with FAISS's OpenMP pool set to ``n`` threads (None = leave it), then restore it.

    Why: OpenMP threads spin while waiting, so on a small, busy CPU (a 2-core laptop also running the agent) tiny
    FAISS calls can get 5-1000x slower with several threads than with one. Measured on 2 loaded cores: IVF-PQ
    training on 30 points 2.4 s vs 2 ms; flat search of one query over 12k passages 84 vs 396 queries/s.
    """
    if n is None:
        yield
        return
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(int(n))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def ivfpq_params(n: int, dim: int, nlist: int | None = None, m: int | None = None, nbits: int = 8) -> dict[str, int]:
    """IVF-PQ parameters for ``n`` vectors of size ``dim``, clamped so that training is well-posed.

    * ``nlist`` ~ 4 sqrt(n), at most n/39 (FAISS wants >= 39 training points per centroid), at least 1.
    * ``m`` (sub-quantizers) = the largest divisor of ``dim`` not above dim/8, i.e. 8 dimensions per byte;
      for e5's 768-d vectors that is 96 bytes per passage, 2 GB of codes for wiki-18's 21M passages.
    * ``nbits`` at most log2 of the training-sample size (each sub-quantizer has 2**nbits centroids).
    * ``n_train`` = enough points for both quantizers, at most 1M, at most n.
    """
    if n < 2:
        raise ValueError(f"an ivfpq index needs at least 2 passages to train on, the corpus has {n}; "
                         f"use index_type='flat'")
    if nlist is None:
        nlist = int(round(4 * math.sqrt(n)))
    nlist = max(1, min(int(nlist), n // 39 if n >= 39 else 1))
    if m is None:
        m = max(d for d in range(1, max(1, dim // 8) + 1) if dim % d == 0)
    elif dim % m:
        raise ValueError(f"pq m={m} must divide the embedding dimension {dim}")
    n_train = min(n, max(50 * nlist, 40 * (1 << nbits)), 1_000_000)
    nbits = max(1, min(int(nbits), int(math.floor(math.log2(n_train)))))
    return {"nlist": nlist, "m": int(m), "nbits": nbits, "n_train": n_train}


class DenseRetriever(CorpusIndex):
    """FAISS retriever over a Search-R1 / FlashRAG JSONL corpus.

    ``build(force=True)`` rebuilds even a valid index; shards already encoded for this corpus and encoder are reused.

    Args:
        corpus_path: JSONL file of ``{"id", "contents"}`` rows.
        encoder: preset name ("minilm", "e5-base-v2"), hub id, local folder or :class:`EncoderSpec`.
        index_type: "flat" (exact: Search-R1's ``e5_Flat.index``), "hnsw" (graph, fast, approximate) or "ivfpq"
            (compressed, approximate; fits wiki-18 in a few GB instead of ~65 GB of float32 vectors).
        index_dir: the exact folder of this index; default ``indexes_dir()/<stem>-<sha[:12]>-<encoder>-<type>``.
        device: torch device for the encoder (None = sentence-transformers' choice).
        dtype: encoder weight precision, "float32", "float16" or "bfloat16" (the last two on CUDA only; a CPU
            device raises). Embeddings are float32 whatever it is. None = float32, and an existing folder is used
            whatever dtype it was encoded in; a dtype given explicitly and different from the folder's rebuilds.
            It applies to this object's query encoding too.
        batch_size: encoder batch size for passages and queries.
        nprobe: IVF lists visited per query (ivfpq only); None = the value recorded at build time, else
            min(64, nlist).
        hnsw_ef_search: HNSW candidate-list size at query time; None = the recorded value, else 128.
        hnsw_m, hnsw_ef_construction: HNSW graph degree and build-time candidate-list size (None = 32 / 100, or
            whatever an existing index folder was built with).
        nlist, pq_m, pq_nbits, pq_opq: IVF-PQ build parameters (None = chosen from the corpus size, see
            ivfpq_params; nbits 8; no OPQ rotation), or an existing folder's.
        shard_size: passages per embedding shard (the unit of resumption).
        keep_shards: keep the shard embeddings after the index is written (e.g. to build another index type).
        shard_dir: where the shards go (default ``index_dir/shards``). A folder given here is never deleted, so
            several index types of one corpus and encoder can be built from one encoding pass.
        progress: show progress bars while building.
        search_threads: FAISS threads per search call (None = FAISS's default, all cores). 1 is often faster
            for small batches on a small shared CPU; see :func:`faiss_threads`.
        mmap: flat only: memory-map index.faiss instead of reading it into this process's memory (the OS page
            cache holds it, shared between processes; the first searches read it from disk).
        shipped_vectors: build from the float16 embeddings the package ships when they are of exactly this corpus
            and encoder (the embedded default with MiniLM; see search_gym.retrieval.shipped_vectors) instead of
            encoding. False encodes; an existing valid folder is used whatever its vectors came from
            (``build(force=True)`` with False re-encodes it).
    """

    kind = "dense"
    meta_format = META_FORMAT
    _runtime_fields = ("_lock", "_index", "_store", "_meta", "_fingerprint", "on_shard", "_pending_vectors")

    def __init__(
        self,
        corpus_path: str | Path,
        encoder: str | EncoderSpec = "minilm",
        index_type: str = "flat",
        index_dir: str | Path | None = None,
        device: str | None = None,
        batch_size: int = 64,
        nprobe: int | None = None,
        hnsw_ef_search: int | None = None,
        hnsw_m: int | None = None,
        hnsw_ef_construction: int | None = None,
        nlist: int | None = None,
        pq_m: int | None = None,
        pq_nbits: int | None = None,
        pq_opq: bool | None = None,
        shard_size: int = 4096,
        keep_shards: bool = False,
        shard_dir: str | Path | None = None,
        progress: bool = True,
        search_threads: int | None = None,
        mmap: bool = False,
        dtype: str | None = None,
        shipped_vectors: bool = True,
    ):
        if index_type not in INDEX_TYPES:
            raise ValueError(f"index_type must be one of {INDEX_TYPES}, got {index_type!r}")
        check_encoder_name(encoder)
        if dtype is not None:
            dtype = check_encoder_dtype(dtype, device)
        if shard_size < 1:
            raise ValueError("shard_size must be positive")
        self.encoder: EncoderSpec = resolve_encoder(encoder)
        self.index_type = index_type
        self.device = device
        self.batch_size = batch_size
        self.nprobe = nprobe
        self.hnsw_ef_search = hnsw_ef_search
        self.hnsw_m = hnsw_m
        self.hnsw_ef_construction = hnsw_ef_construction
        self.nlist = nlist
        self.pq_m = pq_m
        self.pq_nbits = pq_nbits
        self.pq_opq = pq_opq
        self.shard_size = shard_size
        self.keep_shards = keep_shards
        self.shard_dir = os.path.expanduser(str(shard_dir)) if shard_dir is not None else None
        self.progress = progress
        self.search_threads = search_threads
        self.mmap = bool(mmap)
        self.dtype = dtype
        self.shipped_vectors = bool(shipped_vectors)
        self.name = f"dense-{self.encoder.slug}-{index_type}"
        # '~/indexes/wiki18' from a config or a YAML file means the home folder, not a folder named '~'.
        expand = os.path.expanduser
        self._init_index(expand(str(corpus_path)), expand(str(index_dir)) if index_dir is not None else None)

    def _init_runtime(self) -> None:
        super()._init_runtime()
        self._index: Any = None
        self._meta: dict[str, Any] | None = None
        self._pending_vectors: tuple[Any, Any, str] | None = None  # set by build_from_vectors for one build
        #: Called as ``on_shard(shards_done, shards_total)`` after each encoded shard is saved (progress reporting;
        #: tests raise from it to interrupt a build). Per process: not pickled.
        self.on_shard: Any = None

    @property
    def exact(self) -> bool:
        """True for the flat index (exhaustive inner-product search); hnsw and ivfpq are approximate."""
        return self.index_type not in APPROXIMATE_INDEX_TYPES

    def __repr__(self) -> str:
        return (f"DenseRetriever(corpus_path={str(self.corpus_path)!r}, encoder={self.encoder.name_or_path!r}, "
                f"index_type={self.index_type!r})")

    # ------------------------------------------------------------------------------------------------ identity

    def index_suffix(self) -> str:
        return f"{self.encoder.slug}-{self.index_type}"

    def _given_params(self) -> dict[str, Any]:
        """Build parameters as this object was given them (None = not asked for)."""
        if self.index_type == "hnsw":
            return {"M": self.hnsw_m, "ef_construction": self.hnsw_ef_construction}
        if self.index_type == "ivfpq":
            return {"nlist": self.nlist, "m": self.pq_m, "nbits": self.pq_nbits, "opq": self.pq_opq}
        return {}

    def _requested_params(self) -> dict[str, Any]:
        """What a build records as asked for: given values, defaults for the unset ones (None = by corpus size).

        ``opq`` is recorded only when on, so folders built before it existed keep matching.
        """
        given, defaults = self._given_params(), PARAM_DEFAULTS[self.index_type]
        out = {key: (defaults[key] if value is None else value) for key, value in given.items()}
        if self.index_type == "ivfpq" and not out.get("opq"):
            out.pop("opq", None)
        return out

    def _params_mismatch(self, recorded: dict[str, Any] | None) -> str | None:
        """Which parameter that was asked for differs from the folder's record (unset ones accept any value)."""
        recorded = recorded if isinstance(recorded, dict) else {}
        defaults = PARAM_DEFAULTS[self.index_type]
        for key, want in self._given_params().items():
            have = recorded.get(key, defaults[key])
            if want is not None and have != want:
                return f"{key}: {have} -> {want}"
        return None

    @property
    def encode_dtype(self) -> str:
        """The encoder precision this object encodes with (``dtype``, float32 when unset)."""
        return self.dtype or "float32"

    def _stale_detail(self, meta: dict[str, Any], folder: Path) -> str | None:
        if meta.get("encoder", {}).get("identity") != self.encoder.passage_identity():
            return f"encoder changed ({meta.get('encoder', {}).get('identity')} -> {self.encoder.passage_identity()})"
        # Folders encoded before the dtype was recorded were encoded in float32; vectors made elsewhere
        # (build_from_vectors, e.g. Search-R1's e5_Flat.index) have no known dtype and match any.
        recorded_dtype = meta.get("encoder", {}).get("dtype")
        if recorded_dtype is None and meta.get("vectors_from", "encoded") == "encoded":
            recorded_dtype = "float32"
        if self.dtype is not None and recorded_dtype is not None and recorded_dtype != self.dtype:
            return f"encoder dtype changed ({recorded_dtype} -> {self.dtype})"
        if meta.get("index_type") != self.index_type:
            return f"index type changed ({meta.get('index_type')} -> {self.index_type})"
        mismatch = self._params_mismatch(meta.get("requested_params"))
        if mismatch:
            return f"index parameters changed ({mismatch})"
        if not (folder / "index.faiss").is_file() or not (folder / "offsets.npy").is_file():
            return "index files missing"
        return None

    # ------------------------------------------------------------------------------------------------ loading

    @property
    def is_loaded(self) -> bool:
        return self._index is not None

    def _load(self, folder: Path) -> None:
        import faiss

        meta = read_meta(folder)
        assert meta is not None
        offsets = np.load(folder / "offsets.npy", mmap_mode="r")
        if self.mmap and self.index_type == "flat":
            # The vectors stay in the page cache (shared by every process mapping the file, evictable) instead of
            # being copied into each process's memory.
            index = faiss.read_index(str(folder / "index.faiss"), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
        else:
            index = faiss.read_index(str(folder / "index.faiss"))
        if index.ntotal != len(offsets) - 1 or index.ntotal != meta["count"]:
            raise RuntimeError(f"index at {folder} is inconsistent ({index.ntotal} vectors, "
                               f"{len(offsets) - 1} offsets); delete the folder to rebuild it")
        self._apply_search_params(index, meta)
        self._store = PassageStore(self.corpus_path, offsets)
        self._meta = meta
        self._index = index

    def _apply_search_params(self, index: Any, meta: dict[str, Any]) -> None:
        import faiss

        recorded = meta.get("search_params") or {}
        if self.index_type == "hnsw":
            ef = self.hnsw_ef_search if self.hnsw_ef_search is not None else recorded.get("ef_search")
            index.hnsw.efSearch = int(ef if ef is not None else DEFAULT_EF_SEARCH)
        elif self.index_type == "ivfpq":
            ivf = faiss.extract_index_ivf(index)
            nlist = int(meta["index_params"]["nlist"])
            nprobe = self.nprobe if self.nprobe is not None else recorded.get("nprobe")
            ivf.nprobe = int(min(nlist, nprobe if nprobe is not None else DEFAULT_NPROBE))

    @property
    def meta(self) -> dict[str, Any]:
        """Contents of meta.json of the loaded index (loads it)."""
        self.load()
        assert self._meta is not None
        return self._meta

    def __len__(self) -> int:
        self.load()
        return int(self._index.ntotal)

    # ------------------------------------------------------------------------------------------------ building

    def _encoder_model(self) -> Any:
        """The encoder in this object's dtype; float32 through the plain ``load_encoder(spec, device)`` call (what
        code that substitutes ``load_encoder`` expects)."""
        if self.encode_dtype == "float32":
            return load_encoder(self.encoder, self.device)
        return load_encoder(self.encoder, self.device, dtype=self.encode_dtype)

    def _encode_passages(self, texts: list[str]) -> np.ndarray:
        """Embeddings of one shard of passages (a separate method so tests can observe or interrupt builds)."""
        model = self._encoder_model()
        return encode(model, texts, prefix=self.encoder.passage_prefix, normalize=self.encoder.normalize,
                      batch_size=self.batch_size)

    def _shipped(self, n: int) -> tuple[np.ndarray, str] | None:
        """The package's float16 embeddings of this corpus + encoder as float32 (search_gym/retrieval/vectors/), or
        None to encode: none shipped for it, ``shipped_vectors=False``, or another encoder precision asked for."""
        if not self.shipped_vectors or self.encode_dtype != "float32":
            return None
        from search_gym.retrieval import shipped_vectors

        return shipped_vectors.lookup(self.fingerprint, self.encoder.passage_identity(), n)

    def _shard_folder(self, folder: Path) -> Path:
        return Path(self.shard_dir) if self.shard_dir is not None else folder / "shards"

    def _build(self, folder: Path, progress: bool) -> None:
        if self._pending_vectors is not None:
            self._build_from_pending(folder, progress)
            return
        t0 = time.perf_counter()
        store = self._begin_build(folder, progress)
        n = len(store)
        shipped = self._shipped(n)
        if shipped is not None:
            # The package carries this exact corpus + encoder's embeddings (the embedded default): no encoding pass.
            store.close()
            self._write_vectors(folder, shipped[0], progress, started=t0, source=shipped[1])
            return
        model = self._encoder_model()
        dim = embedding_dim(model)

        shard_dir = self._shard_folder(folder)
        manifest = {"corpus_fingerprint": self.fingerprint, "encoder": self.encoder.passage_identity(),
                    "shard_size": self.shard_size, "count": n, "dim": dim, "dtype": self.encode_dtype}
        previous = _read_json(shard_dir / "manifest.json")
        if isinstance(previous, dict):
            previous.setdefault("dtype", "float32")  # manifests from before the dtype was recorded: float32 shards
        if previous != manifest:
            # Shards of another corpus, encoder, encoder dtype or shard size. Only our own file names are removed:
            # a shard_dir given by the user may hold other files.
            for old in shard_dir.glob("[0-9][0-9][0-9][0-9][0-9][0-9].npy"):
                old.unlink()
        shard_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(shard_dir / "manifest.json", _dumps(manifest))

        n_shards = math.ceil(n / self.shard_size)
        shard_paths = [shard_dir / f"{s:06d}.npy" for s in range(n_shards)]
        todo = []
        for s, path in enumerate(shard_paths):
            rows = min(n, (s + 1) * self.shard_size) - s * self.shard_size
            if not _shard_ok(path, rows, dim):
                todo.append(s)
        done = n - sum(min(n, (s + 1) * self.shard_size) - s * self.shard_size for s in todo)
        t_enc = time.perf_counter()
        bar = _progress(total=n, initial=done, desc=f"encoding {self.corpus_path.name}", unit="psg",
                        disable=not progress)
        for i, s in enumerate(todo):
            a, b = s * self.shard_size, min(n, (s + 1) * self.shard_size)
            emb = self._encode_passages(store.contents_range(a, b))
            if emb.shape != (b - a, dim):
                raise RuntimeError(f"encoder returned shape {emb.shape} for shard {s}, expected {(b - a, dim)}")
            atomic_save_npy(shard_paths[s], np.ascontiguousarray(emb, dtype=np.float32))
            bar.update(b - a)
            if self.on_shard is not None:
                self.on_shard(n_shards - len(todo) + i + 1, n_shards)
        bar.close()
        encode_seconds = time.perf_counter() - t_enc
        store.close()

        # Memory maps: each shard is read into RAM only while FAISS adds it.
        chunks = [np.load(p, mmap_mode="r") for p in shard_paths]
        self._write_index(folder, chunks, n, dim, progress, started=t0, encode_seconds=encode_seconds,
                          encoded_passages=n - done, vectors_from="encoded")
        del chunks
        if not self.keep_shards and self.shard_dir is None:
            shutil.rmtree(shard_dir, ignore_errors=True)

    def build_from_vectors(self, vectors: Any, *, link: str | Path | None = None, source: str = "vectors",
                           progress: bool = True, force: bool = False) -> Path:
        """Make this retriever's index folder from passage embeddings computed elsewhere, then load it.

        Row ``i`` of ``vectors`` (an (n, dim) float32 array or memory map) must be the embedding of line ``i`` of
        the corpus, made with this retriever's encoder (its query embeddings are searched against them). Rows are
        read ``shard_size`` at a time, so a memory-mapped 65 GB matrix needs no 65 GB of RAM except for a flat
        index, which is the matrix. ``link`` (flat only) is a FAISS flat index file holding exactly these vectors:
        ``index.faiss`` becomes a symbolic link to it instead of a copy. ``source`` is recorded in meta.json.
        Like :meth:`build`, a valid existing folder is only loaded (``force`` rebuilds it). Returns the folder.
        """
        if link is not None and self.index_type != "flat":
            raise ValueError("link= is for index_type='flat' (the file is used as the index itself)")
        if getattr(vectors, "ndim", None) != 2:
            raise ValueError("vectors must be a 2-d (passages, dim) array, got shape "
                             f"{getattr(vectors, 'shape', None)}")
        self._pending_vectors = (vectors, link, source)
        try:
            return self.build(progress=progress, force=force)
        finally:
            self._pending_vectors = None

    def _build_from_pending(self, folder: Path, progress: bool) -> None:
        vectors, link, source = self._pending_vectors
        t0 = time.perf_counter()
        store = self._begin_build(folder, progress)
        n = len(store)
        store.close()
        if len(vectors) != n:
            raise ValueError(f"{source} holds {len(vectors):,} vectors but the corpus {self.corpus_path} has {n:,} "
                             "passages; row i must be passage i of this exact corpus file")
        self._write_vectors(folder, vectors, progress, started=t0, source=source, link=link)

    def _write_vectors(self, folder: Path, vectors: Any, progress: bool, *, started: float, source: str,
                       link: str | Path | None = None) -> None:
        """The index from embeddings made elsewhere (no encoding pass), read ``shard_size`` rows at a time."""
        n = len(vectors)
        chunks = [vectors[a:min(n, a + self.shard_size)] for a in range(0, n, self.shard_size)]
        self._write_index(folder, chunks, n, int(vectors.shape[1]), progress, started=started, encode_seconds=0.0,
                          encoded_passages=0, vectors_from=source, link=link)

    def _write_index(self, folder: Path, chunks: list[Any], n: int, dim: int, progress: bool, *, started: float,
                     encode_seconds: float, encoded_passages: int, vectors_from: str,
                     link: str | Path | None = None) -> None:
        """The last steps of every build: the FAISS index from the embedding chunks (or a link), then meta.json."""
        import faiss

        t_idx = time.perf_counter()
        if link is not None:
            params = {}
            target = Path(link).resolve()
            tmp = folder / ".index.faiss.link.tmp"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(target)
            tmp.replace(folder / "index.faiss")  # replaces a previous file or link, never writes through it
        elif self.index_type == "flat":
            # Streamed to disk shard by shard: a 21M x 768 flat index (64.6 GB) is written with one shard in RAM.
            params = {}
            with atomic_output(folder / "index.faiss") as tmp:
                write_flat_index(tmp, chunks, n, dim, progress=progress)
        else:
            index, params = self._make_index(chunks, n, dim, progress)
            with atomic_output(folder / "index.faiss") as tmp:
                faiss.write_index(index, str(tmp))
            del index
        index_seconds = time.perf_counter() - t_idx
        search_params: dict[str, Any] = {}
        if self.index_type == "ivfpq":
            search_params["nprobe"] = int(min(params["nlist"], self.nprobe if self.nprobe is not None
                                              else DEFAULT_NPROBE))
        elif self.index_type == "hnsw":
            search_params["ef_search"] = int(self.hnsw_ef_search if self.hnsw_ef_search is not None
                                             else DEFAULT_EF_SEARCH)

        self._finish_build(
            folder,
            count=n,
            dim=dim,
            encoder={
                "name": self.encoder.name_or_path,
                "query_prefix": self.encoder.query_prefix,
                "passage_prefix": self.encoder.passage_prefix,
                "normalize": self.encoder.normalize,
                "max_seq_length": self.encoder.max_seq_length,
                "pooling_note": self.encoder.pooling_note,
                "identity": self.encoder.passage_identity(),
                # The precision the passages were encoded in (vectors from elsewhere: unknown, not recorded).
                **({"dtype": self.encode_dtype} if vectors_from == "encoded" else {}),
            },
            index_type=self.index_type,
            index_params=params,
            requested_params=self._requested_params(),
            search_params=search_params,
            metric="inner_product",
            shard_size=self.shard_size,
            vectors_from=vectors_from,
            timings_s={"encode": round(encode_seconds, 3), "index": round(index_seconds, 3),
                       "total": round(time.perf_counter() - started, 3)},
            encoded_passages=encoded_passages,
        )

    def _make_index(self, chunks: list[Any], n: int, dim: int, progress: bool) -> tuple[Any, dict[str, Any]]:
        """An HNSW or IVF-PQ index of the rows of ``chunks`` (arrays or memory maps of ``shard_size`` rows, the last
        shorter); flat indexes are streamed to disk by :func:`write_flat_index` instead."""
        import faiss

        def batches():
            for x in chunks:
                yield np.ascontiguousarray(x, dtype=np.float32)

        if self.index_type == "hnsw":
            defaults = PARAM_DEFAULTS["hnsw"]
            hnsw_m = int(self.hnsw_m if self.hnsw_m is not None else defaults["M"])
            ef_construction = int(self.hnsw_ef_construction if self.hnsw_ef_construction is not None
                                  else defaults["ef_construction"])
            index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = ef_construction
            with faiss_threads(1 if n <= HNSW_DETERMINISTIC_MAX else None):
                bar = _progress(total=n, desc="hnsw graph", unit="psg", disable=not progress)
                for x in batches():
                    index.add(x)
                    bar.update(len(x))
                bar.close()
            return index, {"M": hnsw_m, "ef_construction": ef_construction}

        nbits = self.pq_nbits if self.pq_nbits is not None else PARAM_DEFAULTS["ivfpq"]["nbits"]
        params: dict[str, Any] = ivfpq_params(n, dim, self.nlist, self.pq_m, nbits)
        quantizer = faiss.IndexFlatIP(dim)
        ivf = faiss.IndexIVFPQ(quantizer, dim, params["nlist"], params["m"], params["nbits"],
                               faiss.METRIC_INNER_PRODUCT)
        index = ivf
        if self.pq_opq:
            # A learned rotation that balances variance across the PQ sub-vectors (OPQ); searched transparently.
            index = faiss.IndexPreTransform(faiss.OPQMatrix(dim, params["m"]), ivf)
            params["opq"] = True
        # A deterministic sample (fixed seed, sorted rows) keeps training reproducible; FAISS k-means is seeded too.
        rows = np.sort(np.random.default_rng(0).choice(n, size=params["n_train"], replace=False))
        small = params["n_train"] * max(params["nlist"], 1 << params["nbits"]) <= 2_000_000
        with faiss_threads(1 if small else None):
            index.train(_gather_rows(chunks, rows, self.shard_size, dim))
        bar = _progress(total=n, desc="ivfpq add", unit="psg", disable=not progress)
        for x in batches():
            index.add(x)
            bar.update(len(x))
        bar.close()
        return index, params

    # ------------------------------------------------------------------------------------------------ searching

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        """Query embeddings (prefixed, character-capped), float32 of shape (len(queries), dim). Loads the model only."""
        model = self._encoder_model()
        return encode(model, list(queries), prefix=self.encoder.query_prefix, normalize=self.encoder.normalize,
                      batch_size=self.batch_size)

    def search_embeddings(self, emb: np.ndarray, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
        """Raw FAISS search: ``(scores, ids)`` arrays of shape (len(emb), k); id -1 marks a missing result."""
        self.load()
        emb = np.ascontiguousarray(emb, dtype=np.float32)
        if emb.ndim == 1:
            emb = emb[None, :]
        if emb.shape[1] != self._index.d:
            # FAISS would fail with a bare assertion; the usual cause is an index made with another encoder.
            raise ValueError(f"query embeddings are {emb.shape[1]}-d but the index at {self.index_dir} is "
                             f"{self._index.d}-d: it was built with another encoder than {self.encoder.name_or_path!r}")
        k = max(1, min(int(k), int(self._index.ntotal)))
        with faiss_threads(self.search_threads):
            return self._index.search(emb, k)

    def search(self, queries: Sequence[str], k: int = 3, *, keep_empty: bool = False) -> list[list[Hit]]:
        """Top-``k`` passages per query, best first; an empty or whitespace query gets [].

        ``keep_empty=True`` encodes an empty query like any other (the encoder sees only its query prefix, e.g.
        ``"query: "`` for e5), which is what Search-R1's retrieval server does with the ``''`` query its parser
        produces for ``<search></search>``.
        """
        kept, positions = clean_queries(queries, keep_empty=keep_empty)
        n_queries = 1 if isinstance(queries, str) else len(queries)
        results: list[list[Hit]] = [[] for _ in range(n_queries)]
        if not kept or k <= 0:
            return results
        self.load()
        scores, ids = self.search_embeddings(self.encode_queries(kept), k)
        assert self._store is not None
        for pos, row_scores, row_ids in zip(positions, scores, ids):
            hits = []
            for score, i in zip(row_scores, row_ids):
                if i < 0:
                    continue
                doc_id, contents = self._store.get(int(i))
                hits.append(Hit(doc_id, contents, float(score)))
            results[pos] = hits
        return results

    def doc(self, i: int) -> tuple[str, str]:
        """``(doc_id, contents)`` of the passage stored at index position ``i``."""
        self.load()
        assert self._store is not None
        return self._store.get(int(i))


def write_flat_index(path: str | Path, chunks: Sequence[Any], n: int, dim: int, progress: bool = False) -> None:
    """Write a FAISS ``IndexFlatIP`` file from row chunks without holding the index in memory.

    The bytes are exactly what ``faiss.write_index(IndexFlatIP)`` writes (checked by a test): fourcc ``IxFI``, d
    (int32), ntotal (int64), two legacy int64 fields (1 << 20), is_trained (1 byte), metric (int32, 0 = inner
    product), the number of floats (uint64) and the float32 rows.
    """
    import struct

    header = b"IxFI" + struct.pack("<iqqqBi", dim, n, 1 << 20, 1 << 20, 1, 0) + struct.pack("<Q", n * dim)
    bar = _progress(total=n, desc="flat index", unit="psg", disable=not progress)
    written = 0
    with open(path, "wb") as f:
        f.write(header)
        for x in chunks:
            x = np.ascontiguousarray(x, dtype=np.float32)
            if x.ndim != 2 or x.shape[1] != dim:
                raise ValueError(f"chunk of shape {x.shape} in a {dim}-d flat index")
            f.write(x.tobytes())
            written += len(x)
            bar.update(len(x))
        f.flush()
        os.fsync(f.fileno())
    bar.close()
    if written != n:
        raise ValueError(f"flat index of {n} rows got {written}")


def _dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=2, sort_keys=True)


def _shard_ok(path: Path, rows: int, dim: int) -> bool:
    """A shard file exists and has the expected shape (a half-written file cannot exist: writes are atomic)."""
    if not path.is_file():
        return False
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return arr.shape == (rows, dim) and arr.dtype == np.float32


def _gather_rows(chunks: list[Any], rows: np.ndarray, shard_size: int, dim: int) -> np.ndarray:
    """Rows ``rows`` (sorted global positions) of the chunked embedding matrix, reading only the rows asked for."""
    out = np.empty((len(rows), dim), dtype=np.float32)
    shard_of = rows // shard_size
    start = 0
    for s in np.unique(shard_of):
        sel = rows[shard_of == s] - s * shard_size
        out[start:start + len(sel)] = chunks[int(s)][sel]
        start += len(sel)
    return out
