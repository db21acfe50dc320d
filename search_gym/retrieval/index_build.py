"""Full-scale dense index builds: ``search-gym index build`` (Search-R1's wiki-18, 21M passages, e5-base-v2).

The build itself is :class:`~search_gym.retrieval.dense.DenseRetriever`'s (one implementation of encoding,
sharding, resumption and index writing); this module adds what a 21M-passage build needs around it:

* a memory and disk estimate printed before anything starts (:func:`estimate_resources`), with the arithmetic;
* IVF-PQ settings chosen for a RAM budget (:func:`ivfpq_for_budget`: 21M x 768-d in about 16 GB);
* device selection (``auto`` = CUDA when present) and GPU-sized encoder batches;
* half-precision encoding on CUDA (``dtype`` float16 / bfloat16; embeddings stored as float32 either way);
* a progress callback per saved shard (``on_shard``), which is also how tests interrupt a build to check resumption;
* Search-R1's prebuilt ``e5_Flat.index`` used as it is (linked, never copied) or turned into an HNSW or IVF-PQ
  index without re-encoding 21M passages: the flat file is memory-mapped and read shard by shard.

The output folder is an ordinary DenseRetriever folder, so an environment uses it with
``RetrieverConfig(corpus_path=..., encoder=..., index_type=..., index_dir=OUT)`` (or the same keyword arguments to
``gym.make``): parameters left unset there accept the folder's, so nothing is rebuilt.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from search_gym.retrieval.base import check_corpus_path
from search_gym.retrieval.dense import INDEX_TYPES, PARAM_DEFAULTS, DenseRetriever, ivfpq_params
from search_gym.retrieval.encoders import (
    ENCODER_DTYPES,
    HALF_DTYPES,
    check_encoder_dtype,
    check_encoder_name,
    resolve_encoder,
)

logger = logging.getLogger(__name__)

GB = 1e9


def human_bytes(n: float) -> str:
    """``n`` bytes as "12.3 GB" / "4.5 MB" / "678 kB" (decimal units, as disk and RAM sizes are quoted)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.{2 if unit == 'GB' else 1}f} {unit}"
    return f"{n:.0f} B"

#: Output sizes of the presets, so an estimate needs no model load (other encoders are loaded to ask them).
KNOWN_DIMS = {"all-MiniLM-L6-v2": 384, "intfloat/e5-base-v2": 768}
#: Resident size of the encoder while searching (fp32 weights), by name; others are estimated as 0.5 GB.
KNOWN_ENCODER_BYTES = {"all-MiniLM-L6-v2": 91e6, "intfloat/e5-base-v2": 438e6}
#: Rows read to estimate the passage count of a corpus too large to count up front.
SAMPLE_ROWS = 2000
#: Corpora up to this size are counted exactly before the estimate (a fraction of a second).
EXACT_COUNT_MAX_BYTES = 64 << 20


@dataclass
class IndexBuildConfig:
    """Options of ``search-gym index build`` (one flag per field; see ``search-gym index build --help``)."""

    corpus: str | None = field(default=None, metadata={
        "help": "passages JSONL: Search-R1's wiki-18.jsonl ({'id','contents'} rows, contents '\"Title\"\\ntext'), "
                "the project's own passages.jsonl, or FlashRAG {'id','title','text'} rows; not compressed"})
    encoder: str = field(default="e5-base-v2", metadata={
        "help": "dense encoder: 'e5-base-v2' (Search-R1's), 'minilm', a hub id or a local sentence-transformers "
                "folder"})
    index: str = field(default="flat", metadata={
        "help": "index type: flat (exact, Search-R1's; 4*dim bytes per passage), hnsw (approximate graph, larger "
                "than flat), ivfpq (approximate, compressed)"})
    out: str | None = field(default=None, metadata={
        "help": "index folder; default: <cache>/indexes/<corpus>-<sha>-<encoder>-<type> (where the envs look)"})
    prebuilt: str | None = field(default=None, metadata={
        "help": "a FAISS flat index of this corpus made with this encoder (Search-R1's e5_Flat.index): no "
                "encoding; --index flat links it, hnsw / ivfpq are built from its vectors (memory-mapped)"})
    device: str = field(default="auto", metadata={
        "help": "encoder device: auto (cuda when available, else cpu), cpu, cuda, cuda:1, mps"})
    dtype: str = field(default="float32", metadata={
        "help": f"encoder weight precision: {' | '.join(ENCODER_DTYPES)}; float16 / bfloat16 on CUDA only (several "
                "times faster there; vectors differ slightly from float32 ones), stored as float32 either way. "
                "Part of the shard manifest: resuming with another dtype re-encodes"})
    batch_size: int | None = field(default=None, metadata={
        "help": "encoder batch size (unset: 64 on cpu, 512 on a GPU)"})
    shard_size: int = field(default=16384, metadata={
        "help": "passages per saved embedding shard: the unit of resumption after a kill"})
    shard_dir: str | None = field(default=None, metadata={
        "help": "where embedding shards go (default OUT/shards, deleted after the build); a folder given here "
                "is kept, so flat, hnsw and ivfpq of one corpus + encoder share one encoding pass"})
    keep_shards: bool = field(default=False, metadata={
        "help": "keep OUT/shards after the build (the sharded float32 embeddings, 4*dim bytes per passage)"})
    shipped_vectors: bool = field(default=True, metadata={
        "help": "use the float16 embeddings the package ships when they are of exactly this corpus and encoder "
                "(the embedded default with minilm) instead of encoding; false encodes"})
    memory_budget_gb: float | None = field(default=None, metadata={
        "help": "ivfpq: choose pq_m (bytes per passage) as large as fits this RAM budget for both build and "
                "search (e.g. 16 for wiki-18 on a 16 GB budget); ignored when --pq-m is given"})
    nlist: int | None = field(default=None, metadata={"help": "ivfpq: inverted lists (unset: 4*sqrt(N), at most N/39)"})
    pq_m: int | None = field(default=None, metadata={
        "help": "ivfpq: PQ sub-quantizers = bytes per passage at 8 bits (must divide dim; unset: dim/8, or "
                "from --memory-budget-gb)"})
    pq_nbits: int | None = field(default=None, metadata={"help": "ivfpq: bits per sub-quantizer code (unset: 8)"})
    opq: bool = field(default=False, metadata={"help": "ivfpq: learn an OPQ rotation before PQ"})
    nprobe: int | None = field(default=None, metadata={
        "help": "ivfpq: lists searched per query, recorded as the folder's default (unset: 64)"})
    hnsw_m: int | None = field(default=None, metadata={"help": "hnsw: graph degree M (unset: 32)"})
    hnsw_ef_construction: int | None = field(default=None, metadata={
        "help": "hnsw: build-time candidate list (unset: 100)"})
    hnsw_ef_search: int | None = field(default=None, metadata={
        "help": "hnsw: query-time candidate list, recorded as the folder's default (unset: 128)"})
    force: bool = field(default=False, metadata={"help": "rebuild even when OUT holds a valid index"})
    dry_run: bool = field(default=False, metadata={"help": "print the estimate and stop"})
    progress: bool = field(default=True, metadata={"help": "progress bars"})

    def __post_init__(self) -> None:
        if self.index not in INDEX_TYPES:
            raise ValueError(f"--index {self.index!r} is not an index type; use one of {', '.join(INDEX_TYPES)} "
                             "(flat is exact, hnsw and ivfpq are approximate)")
        check_encoder_name(self.encoder)
        # An explicit non-CUDA device fails here; 'auto' is checked by build_index once resolved.
        self.dtype = check_encoder_dtype(self.dtype, self.device)
        if self.corpus is None:
            raise ValueError("--corpus is required: the passages JSONL to index (e.g. wiki-18.jsonl)")
        corpus = check_corpus_path(os.path.expanduser(self.corpus))
        if not corpus.is_file():
            raise FileNotFoundError(f"corpus file {corpus} does not exist (pass the passages JSONL, e.g. "
                                    "Search-R1's wiki-18.jsonl)")
        if self.prebuilt is not None and not Path(self.prebuilt).expanduser().is_file():
            raise FileNotFoundError(f"prebuilt index {self.prebuilt} does not exist")
        for name in ("shard_size", "batch_size", "nlist", "pq_m", "pq_nbits", "nprobe", "hnsw_m",
                     "hnsw_ef_construction", "hnsw_ef_search"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if self.memory_budget_gb is not None and self.memory_budget_gb <= 0:
            raise ValueError("memory_budget_gb must be positive")
        if self.prebuilt is not None and self.dtype in HALF_DTYPES:
            raise ValueError(f"--dtype {self.dtype} sets the precision passages are encoded in, and --prebuilt "
                             "encodes nothing; leave --dtype at float32 with --prebuilt")

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}


# ------------------------------------------------------------------------------------------------ estimates


def count_passages(path: str | os.PathLike, sample_rows: int = SAMPLE_ROWS) -> tuple[int, bool]:
    """``(passages, exact)``: small files are counted, large ones estimated from the mean size of the first rows.

    Counting wiki-18's 21M lines means reading 14 GB, which the build does anyway when it saves the offsets; the
    estimate printed before it starts comes from ``file size / mean row size`` of the first ``sample_rows``.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size <= EXACT_COUNT_MAX_BYTES:
            return sum(1 for line in f if line.strip()), True
        rows = nbytes = 0
        for line in f:
            nbytes += len(line)
            rows += bool(line.strip())
            if rows >= sample_rows:
                break
    return max(1, round(size * rows / max(nbytes, 1))), False


@dataclass
class ResourceEstimate:
    """Bytes an index needs, from the vector count and dimension (see :func:`estimate_resources`)."""

    n: int
    dim: int
    index_type: str
    params: dict[str, Any]
    index_bytes: float  # the FAISS index as written and as loaded for search
    search_ram_bytes: float  # index + passage offsets + query encoder
    build_peak_ram_bytes: float
    disk_final_bytes: float  # index.faiss + offsets.npy (+ shards when kept)
    disk_peak_bytes: float  # during the build: + every embedding shard
    lines: list[str]  # the arithmetic, one term per line

    def summary(self) -> str:
        head = (f"estimate for {self.n:,} passages x {self.dim}-d, {self.index_type} "
                f"{_params_text(self.params)}:")
        tail = [f"  RAM to search  ~{human_bytes(self.search_ram_bytes)}",
                f"  RAM peak while building  ~{human_bytes(self.build_peak_ram_bytes)}",
                f"  disk  ~{human_bytes(self.disk_final_bytes)} final, ~{human_bytes(self.disk_peak_bytes)} during "
                f"the build"]
        return "\n".join([head, *("  " + line for line in self.lines), *tail])


def _params_text(params: dict[str, Any]) -> str:
    return "(" + ", ".join(f"{k}={v}" for k, v in params.items() if k != "n_train") + ")" if params else ""


def hnsw_bytes_per_vector(dim: int, m: int) -> float:
    """FAISS IndexHNSWFlat per vector: the float32 vector, int32 links (2M on level 0, M per upper level, and a
    node has 1/(M-1) upper levels on average with FAISS's level multiplier 1/ln M), an int64 offset, an int32 level."""
    return 4 * dim + 4 * (2 * m + m / (m - 1)) + 8 + 4


def estimate_resources(n: int, dim: int, index_type: str, *, encoder_bytes: float = 0.5 * GB,
                       shard_size: int = 16384, keep_shards: bool = False, encoding: bool = True,
                       hnsw_m: int | None = None, nlist: int | None = None, pq_m: int | None = None,
                       pq_nbits: int | None = None, opq: bool = False) -> ResourceEstimate:
    """RAM and disk an index of ``n`` vectors of ``dim`` float32 needs, term by term.

    * flat: the vectors, ``n * dim * 4`` bytes, in RAM to search (Search-R1's e5_Flat.index: 21M x 768 x 4 = 64.6 GB);
      the build streams them to disk, so it holds one shard, not the index.
    * hnsw: the vectors plus the graph (:func:`hnsw_bytes_per_vector`).
    * ivfpq: ``m * nbits / 8`` bytes of code and an 8-byte id per vector, ``nlist * dim * 4`` of centroids, the PQ
      codebooks ``2**nbits * dim * 4`` (and an OPQ matrix ``dim * dim * 4``). While adding, FAISS grows every list
      as a std::vector, whose capacity can reach twice its size: the build peak counts codes and ids twice. Training
      holds the sample (``n_train * dim * 4``, and a rotated copy with OPQ).
    * every type: the passage offsets (``8 * (n+1)``, memory-mapped) and the query encoder's weights; a build also
      holds one shard of embeddings, and ``n * dim * 4`` bytes of shards sit on disk until the index is written
      (``encoding=False``: vectors come from a prebuilt index, no shards).
    """
    if index_type not in INDEX_TYPES:
        raise ValueError(f"index_type must be one of {INDEX_TYPES}, got {index_type!r}")
    vectors = 4.0 * n * dim
    offsets = 8.0 * (n + 1)
    chunk = 4.0 * min(n, shard_size) * dim
    lines = []
    params: dict[str, Any] = {}
    if index_type == "flat":
        index = vectors
        lines.append(f"vectors {n:,} x {dim} x 4 B = {human_bytes(vectors)}")
        build_extra = chunk - index  # written to disk shard by shard, never whole in RAM
    elif index_type == "hnsw":
        m = hnsw_m if hnsw_m is not None else PARAM_DEFAULTS["hnsw"]["M"]
        params = {"M": m}
        per = hnsw_bytes_per_vector(dim, m)
        index = n * per
        lines.append(f"vectors + graph {n:,} x ({4 * dim} + {per - 4 * dim:.0f}) B = {human_bytes(index)}")
        build_extra = chunk
    else:
        nbits = pq_nbits if pq_nbits is not None else PARAM_DEFAULTS["ivfpq"]["nbits"]
        params = ivfpq_params(n, dim, nlist, pq_m, nbits)
        if opq:
            params["opq"] = True
        code = params["m"] * params["nbits"] / 8
        codes = n * (code + 8)
        centroids = params["nlist"] * dim * 4.0
        books = (1 << params["nbits"]) * dim * 4.0 + (dim * dim * 4.0 if opq else 0.0)
        index = codes + centroids + books
        lines.append(f"codes + ids {n:,} x ({code:g} + 8) B = {human_bytes(codes)}")
        lines.append(f"coarse centroids {params['nlist']:,} x {dim} x 4 B = {human_bytes(centroids)}; "
                     f"PQ{' + OPQ' if opq else ''} tables {human_bytes(books)}")
        train = params["n_train"] * dim * 4.0 * (2 if opq else 1)
        lines.append(f"training sample {params['n_train']:,} x {dim} x 4 B{' x 2 (OPQ)' if opq else ''} = "
                     f"{human_bytes(train)} (build only)")
        build_extra = max(train, codes + chunk)  # training happens before adding; adding can double the lists
    lines.append(f"passage offsets {n + 1:,} x 8 B = {human_bytes(offsets)}; "
                 f"query encoder ~{human_bytes(encoder_bytes)}")
    shards = vectors if encoding else 0.0
    if encoding:
        lines.append(f"embedding shards on disk {n:,} x {dim} x 4 B = {human_bytes(shards)} "
                     f"({'kept' if keep_shards else 'deleted after the build'})")
    search = index + offsets + encoder_bytes
    return ResourceEstimate(
        n=n, dim=dim, index_type=index_type, params=params, index_bytes=index, search_ram_bytes=search,
        build_peak_ram_bytes=index + offsets + encoder_bytes + build_extra,
        disk_final_bytes=index + offsets + (shards if keep_shards else 0.0),
        disk_peak_bytes=index + offsets + shards, lines=lines,
    )


def ivfpq_for_budget(n: int, dim: int, budget_gb: float, *, nlist: int | None = None, pq_nbits: int | None = None,
                     opq: bool = False, encoder_bytes: float = 0.5 * GB, shard_size: int = 16384,
                     min_dims_per_code: int = 2) -> int:
    """The largest PQ ``m`` (bytes per vector at 8 bits) whose build peak and search RAM both fit ``budget_gb``.

    ``m`` divides ``dim`` with at least ``min_dims_per_code`` dimensions per sub-quantizer (one dimension per byte is
    scalar quantisation, better done by other index types). Raises when not even the smallest fits.
    """
    candidates = sorted((m for m in range(1, dim // min_dims_per_code + 1) if dim % m == 0), reverse=True)
    for m in candidates:
        est = estimate_resources(n, dim, "ivfpq", encoder_bytes=encoder_bytes, shard_size=shard_size, nlist=nlist,
                                 pq_m=m, pq_nbits=pq_nbits, opq=opq)
        if max(est.build_peak_ram_bytes, est.search_ram_bytes) <= budget_gb * GB:
            return m
    raise ValueError(f"no IVF-PQ setting for {n:,} x {dim}-d vectors fits {budget_gb} GB of RAM; raise the budget")


# ------------------------------------------------------------------------------------------------ prebuilt flat


def open_flat_vectors(path: str | os.PathLike) -> tuple[Any, np.ndarray]:
    """``(index, vectors)`` of a FAISS flat index file, memory-mapped: no RAM is taken until rows are read.

    ``vectors`` is an (ntotal, d) float32 view of the index's storage; keep ``index`` alive while using it.
    Search-R1's ``e5_Flat.index`` (an ``IndexFlatIP``) is read this way.
    """
    import faiss

    # The wrapper read_index returns owns the C++ index (and the mapping): it must stay referenced while the
    # view is used, so it is returned as is rather than through downcast_index (a second, non-owning wrapper).
    flat = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
    if not isinstance(flat, faiss.IndexFlat):
        raise ValueError(f"{path} is a {type(flat).__name__}, not a FAISS flat index; --prebuilt takes an exact flat "
                         "index such as Search-R1's e5_Flat.index")
    if flat.metric_type != faiss.METRIC_INNER_PRODUCT:
        logger.warning("%s uses metric %s, not inner product: its vectors are used as inner-product embeddings",
                       path, flat.metric_type)
    n, d = int(flat.ntotal), int(flat.d)
    vectors = faiss.rev_swig_ptr(flat.get_xb(), n * d).reshape(n, d) if n else np.zeros((0, d), np.float32)
    return flat, vectors


# ------------------------------------------------------------------------------------------------ building


def resolve_device(device: str | None) -> str:
    """``auto`` / None -> ``cuda`` when torch sees a GPU, else ``cpu``; anything else as given."""
    if device in (None, "", "auto"):
        try:
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:
            return "cpu"
    return str(device)


def make_build_retriever(config: IndexBuildConfig, device: str | None = None,
                         pq_m: int | None = None) -> DenseRetriever:
    """The DenseRetriever that builds (and then serves) ``config``'s index."""
    device = device or resolve_device(config.device)
    batch = config.batch_size or (64 if device == "cpu" else 512)
    return DenseRetriever(
        Path(os.path.expanduser(config.corpus)), encoder=config.encoder, index_type=config.index,
        index_dir=_expand(config.out), device=device, batch_size=batch, nprobe=config.nprobe,
        hnsw_ef_search=config.hnsw_ef_search, hnsw_m=config.hnsw_m,
        hnsw_ef_construction=config.hnsw_ef_construction, nlist=config.nlist,
        pq_m=pq_m if pq_m is not None else config.pq_m, pq_nbits=config.pq_nbits,
        pq_opq=True if config.opq else None, shard_size=config.shard_size, keep_shards=config.keep_shards,
        shard_dir=_expand(config.shard_dir), progress=config.progress, dtype=config.dtype,
        shipped_vectors=config.shipped_vectors,
        # The build ends by loading what it wrote; a memory-mapped flat index costs no RAM for that.
        mmap=config.index == "flat",
    )


def _expand(path: str | None) -> str | None:
    return os.path.expanduser(path) if path is not None else None


@dataclass
class BuildResult:
    folder: Path | None
    estimate: ResourceEstimate
    retriever: DenseRetriever | None
    meta: dict[str, Any] | None


def build_index(config: IndexBuildConfig, on_shard: Callable[[int, int], None] | None = None,
                echo: Callable[[str], None] = print) -> BuildResult:
    """Estimate, then build (or link) the index ``config`` describes; resumes an interrupted build.

    ``on_shard(done, total)`` is called after each embedding shard is saved. ``echo`` receives the human-readable
    lines (the estimate, the device, the result). With ``dry_run`` only the estimate is made.
    """
    corpus = Path(os.path.expanduser(config.corpus))
    spec = resolve_encoder(config.encoder)
    # Before anything is counted or loaded: a half dtype with --device auto on a machine without CUDA.
    check_encoder_dtype(config.dtype, resolve_device(config.device))
    prebuilt_index = prebuilt_vectors = None
    if config.prebuilt is not None:
        prebuilt_index, prebuilt_vectors = open_flat_vectors(Path(config.prebuilt).expanduser())
        dim = int(prebuilt_vectors.shape[1])
        n, exact = int(prebuilt_vectors.shape[0]), True
    else:
        n, exact = count_passages(corpus)
        dim = KNOWN_DIMS.get(spec.name_or_path) or _loaded_dim(spec, resolve_device(config.device), config.dtype)
    encoder_bytes = KNOWN_ENCODER_BYTES.get(spec.name_or_path, 0.5 * GB)
    pq_m = config.pq_m
    if config.index == "ivfpq" and pq_m is None and config.memory_budget_gb is not None:
        pq_m = ivfpq_for_budget(n, dim, config.memory_budget_gb, nlist=config.nlist, pq_nbits=config.pq_nbits,
                                opq=config.opq, encoder_bytes=encoder_bytes, shard_size=config.shard_size)
        echo(f"--memory-budget-gb {config.memory_budget_gb:g}: pq_m={pq_m} ({pq_m} bytes per passage) is the largest "
             "that fits")
    est = estimate_resources(n, dim, config.index, encoder_bytes=encoder_bytes, shard_size=config.shard_size,
                             keep_shards=config.keep_shards, encoding=prebuilt_vectors is None,
                             hnsw_m=config.hnsw_m, nlist=config.nlist, pq_m=pq_m, pq_nbits=config.pq_nbits,
                             opq=config.opq)
    if config.prebuilt is not None and config.index == "flat":
        est.lines.append(f"flat from --prebuilt: index.faiss links {config.prebuilt} (no copy: 0 GB more disk)")
        est.disk_final_bytes = est.disk_peak_bytes = 8.0 * (n + 1)
    echo(est.summary() if exact else est.summary().replace(f"{n:,} passages", f"~{n:,} passages (estimated from "
                                                            f"the first {SAMPLE_ROWS:,} rows)", 1))
    if config.dry_run:
        return BuildResult(None, est, None, None)

    device = resolve_device(config.device)
    retriever = make_build_retriever(config, device=device, pq_m=pq_m)
    _check_disk(retriever, est, config)
    if prebuilt_vectors is not None:
        echo(f"vectors from {config.prebuilt} ({n:,} x {dim}, memory-mapped); no encoding")
        link = Path(config.prebuilt).expanduser() if config.index == "flat" else None
        folder = retriever.build_from_vectors(prebuilt_vectors, link=link, source=str(config.prebuilt),
                                              progress=config.progress, force=config.force)
        del prebuilt_vectors, prebuilt_index
    else:
        echo(f"encoding on {device} in {config.dtype} with {spec.name_or_path} (batch {retriever.batch_size}, "
             f"shards of {config.shard_size:,} passages; a re-run resumes after the last saved shard)")
        retriever.on_shard = on_shard
        try:
            folder = retriever.build(progress=config.progress, force=config.force)
        finally:
            retriever.on_shard = None
    meta = retriever.meta
    echo(f"index ready in {folder}: {meta['count']:,} passages, {meta['index_type']} {meta['index_params']}, "
         f"{human_bytes(_folder_bytes(folder))} on disk")
    echo(f"use it as retriever=RetrieverConfig(corpus_path={str(corpus.resolve())!r}, encoder={config.encoder!r}, "
         f"index_type={config.index!r}, index_dir={str(folder)!r}) in gym.make / SearchEnv, or "
         f"search-gym serve --corpus {corpus.resolve()} --encoder {config.encoder} --index-type {config.index} "
         f"--index-dir {folder}")
    return BuildResult(folder, est, retriever, meta)


def _loaded_dim(spec: Any, device: str, dtype: str = "float32") -> int:
    from search_gym.retrieval.encoders import embedding_dim, load_encoder

    # Loaded in the build's dtype: the same cached model then encodes the passages.
    if dtype == "float32":
        return embedding_dim(load_encoder(spec, device))
    return embedding_dim(load_encoder(spec, device, dtype=dtype))


def _folder_bytes(folder: Path) -> int:
    """Bytes of the files in ``folder`` (a linked prebuilt index counts as its link, not its target)."""
    return sum(p.lstat().st_size for p in Path(folder).rglob("*") if p.is_file() or p.is_symlink())


def _check_disk(retriever: DenseRetriever, est: ResourceEstimate, config: IndexBuildConfig) -> None:
    """Refuse to start a build that cannot fit on the output disk (a 21M build dies hours in otherwise)."""
    folder = retriever.index_dir
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    have = _folder_bytes(folder) if folder.exists() else 0  # a resumed build already wrote part of it
    if est.disk_peak_bytes - have > free:
        raise OSError(f"the build needs ~{human_bytes(est.disk_peak_bytes)} of disk at {folder} and "
                      f"{human_bytes(free)} is free ({'; '.join(est.lines)}); free space or pass --out elsewhere")


__all__ = [
    "BuildResult",
    "IndexBuildConfig",
    "ResourceEstimate",
    "build_index",
    "count_passages",
    "estimate_resources",
    "hnsw_bytes_per_vector",
    "ivfpq_for_budget",
    "open_flat_vectors",
    "resolve_device",
]
