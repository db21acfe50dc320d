"""How retrieval cost grows with the corpus: flat vs HNSW vs IVF-PQ from 10k to 1M vectors, extrapolated to wiki-18.

Sections (``--sections``, default all three):

* ``scaling``: RANDOM unit vectors (Gaussian, normalised, seeded; not real embeddings, so recall is not measured
  here) of e5-base-v2's size (768-d) at each ``--sizes``; per index type: build seconds, index bytes (the written
  file), process RSS growth and peak during the build, batched queries/s (``--batch`` queries per call) and
  single-query ms (median). HNSW uses the project's M=32, efConstruction=100, efSearch=128 and stops at
  ``--hnsw-max`` vectors (its build is the slow one on small CPUs); IVF-PQ uses the project's ivfpq_params
  (nlist = 4 sqrt(N), m = dim/8) with nprobe 64. The 21,015,324-passage figures are EXTRAPOLATED: index bytes
  from a straight line through the two largest sizes (fixed parts such as codebooks stop mattering), times from
  the log-log slope between the two largest sizes (time ~ N**slope; the slope is printed), for build and
  single-query time.
* ``recall``: recall@5 / @10 against exact flat search of IVF-PQ settings (m = dim/8, dim/4, dim/3, dim/2;
  OPQ on/off; several nprobe), on (a) REAL embeddings: the embedded corpus's 12,324 MiniLM (384-d) passage vectors
  with the 660 QA test questions as queries (``--real-vectors FILE.npz`` with arrays ``base`` and ``queries``, or
  read from the built embedded index; ``none`` skips it), and (b) ``--recall-n`` RANDOM 768-d vectors (0 skips
  them), which only show that random directions are a poor stand-in: they have no near neighbours to find. Each setting's memory for 21M x 768 comes from
  search_gym.retrieval.index_build.estimate_resources.
* ``encode``: passages/s of a RANDOMLY INITIALISED BertModel in e5-base-v2's published shape (hidden 768, 12
  layers, 12 heads, intermediate 3072, vocab 30522, max 512 positions) on random token ids of ``--seq-len``
  tokens, mean pooling and L2 normalisation included, tokenisation excluded. Speed is what random weights measure
  honestly; no weights are downloaded. Needs only torch, transformers and numpy (``--device cuda`` for a GPU;
  ``--dtype fp16`` / ``bf16`` there), and prints one machine-readable ``BENCH_ENCODE {json}`` line.

Every measurement is also printed as a ``BENCH_RESULT {json}`` line. ``--plot`` saves the scaling curves.

    nice -n 5 python benchmarks/bench_scaling.py --sizes 10000 100000 1000000 --hnsw-max 100000 \
        --plot docs/img/retrieval_scaling.png
    python benchmarks/bench_scaling.py --sections encode --device cuda --dtype fp16 --encode-batch 256
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import tempfile
import time

import numpy as np

WIKI18_PASSAGES = 21_015_324  # rows of Search-R1's wiki-18.jsonl
E5_BASE_V2_CONFIG = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                         vocab_size=30522, max_position_embeddings=512, type_vocab_size=2)


def emit(kind: str, **fields) -> None:
    print(f"{kind} {json.dumps(fields, sort_keys=True)}", flush=True)


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM to the current RSS, so each build's peak is its own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def random_unit(n: int, dim: int, seed: int) -> np.ndarray:
    """``n`` random unit vectors, generated in blocks (1M x 768 float32 is 3 GB; no float64 copy of it)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for a in range(0, n, 100_000):
        block = rng.standard_normal((min(n, a + 100_000) - a, dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[a:a + len(block)] = block
    return out


# ----------------------------------------------------------------------------------------------------- indexes


def make_index(kind: str, x: np.ndarray, *, hnsw_m=32, ef_construction=100, ef_search=128, nprobe=64,
               nlist=None, pq_m=None, opq=False, train_rows=None):
    """(index, params) built with the project's settings (search_gym.retrieval.dense) from ``x``."""
    import faiss

    from search_gym.retrieval.dense import ivfpq_params

    n, dim = x.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
        index.add(x)
        return index, {}
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.add(x)
        index.hnsw.efSearch = ef_search
        return index, {"M": hnsw_m, "efConstruction": ef_construction, "efSearch": ef_search}
    params = ivfpq_params(n, dim, nlist, pq_m)
    ivf = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, params["nlist"], params["m"], params["nbits"],
                           faiss.METRIC_INNER_PRODUCT)
    index = faiss.IndexPreTransform(faiss.OPQMatrix(dim, params["m"]), ivf) if opq else ivf
    n_train = train_rows or params["n_train"]
    rows = np.sort(np.random.default_rng(0).choice(n, size=min(n, n_train), replace=False))
    index.train(x[rows])
    index.add(x)
    ivf.nprobe = min(nprobe, params["nlist"])
    return index, {**{k: v for k, v in params.items()}, "nprobe": ivf.nprobe, "opq": opq}


def index_file_bytes(index) -> int:
    import faiss

    with tempfile.NamedTemporaryFile(suffix=".faiss", dir=os.environ.get("BENCH_TMP")) as f:
        faiss.write_index(index, f.name)
        return os.path.getsize(f.name)


def time_queries(index, queries: np.ndarray, batch: int, singles: int) -> tuple[float, float]:
    """(batched queries/s, median single-query ms)."""
    index.search(queries[:batch], 10)  # warm-up
    t0 = time.perf_counter()
    for a in range(0, len(queries), batch):
        index.search(queries[a:a + batch], 10)
    qps = len(queries) / (time.perf_counter() - t0)
    single = []
    for i in range(singles):
        t1 = time.perf_counter()
        index.search(queries[i:i + 1], 10)
        single.append(time.perf_counter() - t1)
    return qps, 1000 * statistics.median(single)


def loglog_fit(ns: list[int], ys: list[float]) -> tuple[float, float]:
    """(slope, intercept) of log(y) = slope * log(n) + intercept, least squares."""
    lx, ly = np.log(np.asarray(ns, float)), np.log(np.asarray(ys, float))
    if len(ns) == 1:
        return 1.0, float(ly[0] - lx[0])
    slope, intercept = np.polyfit(lx, ly, 1)
    return float(slope), float(intercept)


def section_scaling(args) -> list[dict]:
    import faiss

    dim = args.dim
    print(f"\n## scaling: RANDOM unit vectors, {dim}-d (not real embeddings); FAISS threads "
          f"{faiss.omp_get_max_threads()}; queries: {args.queries} random unit vectors, batch {args.batch}; "
          f"single-query median of {args.singles}\n")
    queries = random_unit(args.queries, dim, seed=1)
    make_index("flat", queries[:10])  # warm-up: FAISS's first call pays for imports and thread-pool start
    rows = []
    for n in args.sizes:
        x = random_unit(n, dim, seed=0)
        for kind in args.index_types:
            if kind == "hnsw" and n > args.hnsw_max:
                print(f"(hnsw skipped at {n:,}: above --hnsw-max {args.hnsw_max:,})")
                continue
            gc.collect()
            reset_peak_rss()
            before = rss_bytes()
            t0 = time.perf_counter()
            index, params = make_index(kind, x)
            build_s = time.perf_counter() - t0
            rss_growth = rss_bytes() - before
            peak_growth = peak_rss_bytes() - before
            qps, single_ms = time_queries(index, queries, args.batch, args.singles)
            size = index_file_bytes(index)
            row = dict(section="scaling", index=kind, n=n, dim=dim, build_s=round(build_s, 3), index_bytes=size,
                       rss_growth_bytes=rss_growth, build_peak_rss_growth_bytes=peak_growth,
                       batch_qps=round(qps, 1), single_ms=round(single_ms, 3), params=params,
                       threads=faiss.omp_get_max_threads(), vectors="random")
            emit("BENCH_RESULT", **row)
            rows.append(row)
            del index
            gc.collect()
        del x
        gc.collect()

    print("\n| index | N | build s | index MB | bytes/vector | RSS growth MB | build peak MB | batch q/s | "
          "single ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['index']} | {r['n']:,} | {r['build_s']:.2f} | {r['index_bytes'] / 1e6:,.1f} | "
              f"{r['index_bytes'] / r['n']:,.0f} | {r['rss_growth_bytes'] / 1e6:,.0f} | "
              f"{r['build_peak_rss_growth_bytes'] / 1e6:,.0f} | {r['batch_qps']:,.0f} | {r['single_ms']:.3f} |")

    from search_gym.retrieval.index_build import estimate_resources

    print(f"\nEXTRAPOLATED to {WIKI18_PASSAGES:,} x {dim}-d (not measured): index bytes on the line through the "
          "two largest sizes; times as N**slope with the log-log slope between the two largest sizes (1.0 = "
          "linear). The estimate column is index_build.estimate_resources' index bytes for comparison.\n")
    print("| index | sizes fitted | index GB (line through measured) | estimate GB | build slope | build h | "
          "single-query slope | single-query ms |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    extrapolated = []
    for kind in args.index_types:
        rs = [r for r in rows if r["index"] == kind]
        if not rs:
            continue
        top = rs[-2:]
        ns = [r["n"] for r in top]
        if len(top) == 2:
            per = (top[1]["index_bytes"] - top[0]["index_bytes"]) / (ns[1] - ns[0])
            mem = top[1]["index_bytes"] + per * (WIKI18_PASSAGES - ns[1])
        else:
            mem = top[0]["index_bytes"] / ns[0] * WIKI18_PASSAGES
        est = estimate_resources(WIKI18_PASSAGES, dim, kind).index_bytes
        bslope, bint = loglog_fit(ns, [r["build_s"] for r in top])
        qslope, qint = loglog_fit(ns, [r["single_ms"] for r in top])
        build_h = math.exp(bint) * WIKI18_PASSAGES ** bslope / 3600
        single = math.exp(qint) * WIKI18_PASSAGES ** qslope
        row = dict(section="extrapolated", index=kind, n=WIKI18_PASSAGES, index_gb=round(mem / 1e9, 2),
                   estimate_gb=round(est / 1e9, 2), build_slope=round(bslope, 3), build_hours=round(build_h, 2),
                   single_slope=round(qslope, 3), single_ms=round(single, 2), fitted_sizes=ns)
        emit("BENCH_RESULT", **row)
        extrapolated.append(row)
        print(f"| {kind} | {', '.join(f'{n:,}' for n in ns)} | {mem / 1e9:.1f} | {est / 1e9:.1f} | {bslope:.2f} | "
              f"{build_h:.2f} | {qslope:.2f} | {single:.1f} |")
    return rows + extrapolated


# ----------------------------------------------------------------------------------------------------- recall


def real_vectors(path: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    """(base, queries, description) of real embeddings: from ``path`` (.npz) or the embedded corpus + QA set."""
    if path:
        data = np.load(path)
        return data["base"].astype(np.float32), data["queries"].astype(np.float32), f"real vectors from {path}"
    from search_gym.build import load_questions
    from search_gym.retrieval.factory import RetrieverConfig, get_retriever

    retriever = get_retriever(RetrieverConfig(kind="dense", index_type="flat"))
    retriever.load()
    base = retriever._index.reconstruct_n(0, retriever._index.ntotal)
    queries = retriever.encode_queries([q.question for q in load_questions("wiki_qa", "test")])
    return base, queries, "embedded corpus, MiniLM"


def recall_at(ids: np.ndarray, truth: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(ids.tolist(), truth.tolist())]))


def section_recall(args) -> list[dict]:
    import faiss

    from search_gym.retrieval.index_build import estimate_resources

    datasets = []
    if args.real_vectors != "none":
        base, queries, desc = real_vectors(args.real_vectors)
        if args.save_real:
            np.savez(args.save_real, base=base, queries=queries)
        datasets.append((f"REAL: {desc} ({len(base):,} x {base.shape[1]}, {len(queries)} QA questions)", base,
                         queries, "real"))
    if args.recall_n:
        datasets.append((f"RANDOM unit vectors ({args.recall_n:,} x {args.dim}; pessimistic)",
                         random_unit(args.recall_n, args.dim, seed=0), random_unit(args.queries, args.dim, seed=1),
                         "random"))
    rows = []
    for title, x, q, kind in datasets:
        n, dim = x.shape
        flat = faiss.IndexFlatIP(dim)
        flat.add(x)
        _, truth = flat.search(q, 10)
        print(f"\n## recall vs flat: {title}\n")
        print("| dims per byte | m (bytes/vector) | OPQ | nlist | nprobe | recall@5 | recall@10 | build s | "
              "21M x 768 search RAM GB | 21M build peak GB |")
        print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
        for per in args.dims_per_byte:
            if dim % per:
                continue
            m = dim // per
            for opq in ([False, True] if per >= 4 and not args.no_opq else [False]):
                t0 = time.perf_counter()
                index, params = make_index("ivfpq", x, pq_m=m, opq=opq)
                build_s = time.perf_counter() - t0
                ivf = faiss.extract_index_ivf(index)
                est = estimate_resources(WIKI18_PASSAGES, 768, "ivfpq", pq_m=768 // per, opq=opq,
                                         encoder_bytes=438e6)
                for nprobe in args.nprobes:
                    if nprobe > params["nlist"]:
                        continue
                    ivf.nprobe = nprobe
                    _, ids = index.search(q, 10)
                    row = dict(section="recall", vectors=kind, n=n, dim=dim, dims_per_byte=per, m=m, opq=opq,
                               nlist=params["nlist"], nprobe=nprobe, recall5=round(recall_at(ids, truth, 5), 4),
                               recall10=round(recall_at(ids, truth, 10), 4), build_s=round(build_s, 2),
                               wiki18_search_gb=round(est.search_ram_bytes / 1e9, 2),
                               wiki18_build_peak_gb=round(est.build_peak_ram_bytes / 1e9, 2))
                    emit("BENCH_RESULT", **row)
                    rows.append(row)
                    print(f"| {per} | {m} | {'yes' if opq else 'no'} | {params['nlist']} | {nprobe} | "
                          f"{row['recall5']:.3f} | {row['recall10']:.3f} | {build_s:.1f} | "
                          f"{row['wiki18_search_gb']:.1f} | {row['wiki18_build_peak_gb']:.1f} |")
                del index
    return rows


# ----------------------------------------------------------------------------------------------------- encoding


def section_encode(args) -> dict:
    import torch
    from transformers import BertConfig, BertModel

    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = BertModel(BertConfig(**E5_BASE_V2_CONFIG), add_pooling_layer=False).to(device=device, dtype=dtype).eval()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, E5_BASE_V2_CONFIG["vocab_size"], (args.encode_batch, args.seq_len), generator=gen)
    ids, mask = ids.to(device), torch.ones_like(ids, device=device)

    def step():
        with torch.inference_mode():
            h = model(input_ids=ids, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).to(h.dtype)
            emb = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
            return emb.float().cpu()  # the copy back synchronises a GPU

    step()  # warm-up (allocations, kernels)
    times = []
    for _ in range(args.encode_steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    per_s = args.encode_batch / statistics.median(times)
    hours = WIKI18_PASSAGES / per_s / 3600
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    result = dict(section="encode", model="random BertModel, e5-base-v2 shape", device=str(device), device_name=name,
                  dtype=args.dtype, batch=args.encode_batch, seq_len=args.seq_len, steps=args.encode_steps,
                  passages_per_s=round(per_s, 1), wiki18_hours=round(hours, 2),
                  step_s_min=round(min(times), 4), step_s_max=round(max(times), 4), torch=torch.__version__)
    print(f"\n## encoding: random-weight e5-base-v2 shape on {name}, {args.dtype}, batch {args.encode_batch} x "
          f"{args.seq_len} tokens, median of {args.encode_steps} steps (tokenisation excluded)\n")
    print(f"{per_s:,.1f} passages/s -> {WIKI18_PASSAGES:,} passages in {hours:,.1f} h on this device")
    emit("BENCH_ENCODE", **result)
    return result


# ----------------------------------------------------------------------------------------------------- plot


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in rows if r.get("section") == "scaling"]
    extra = {r["index"]: r for r in rows if r.get("section") == "extrapolated"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    panels = [("index_bytes", "index size (bytes)", "index_gb", 1e9), ("build_s", "build time (s)", None, None),
              ("single_ms", "single-query latency (ms)", "single_ms", 1.0)]
    colors = {"flat": "tab:blue", "hnsw": "tab:orange", "ivfpq": "tab:green"}
    for ax, (key, label, ekey, scale) in zip(axes, panels):
        for kind in ("flat", "hnsw", "ivfpq"):
            rs = [r for r in measured if r["index"] == kind]
            if not rs:
                continue
            ns = [r["n"] for r in rs]
            ys = [r[key] for r in rs]
            ax.plot(ns, ys, "o-", color=colors[kind], label=kind)
            e = extra.get(kind)
            if e is not None:
                y21 = e["build_hours"] * 3600 if key == "build_s" else e[ekey] * scale
                ax.plot([ns[-1], WIKI18_PASSAGES], [ys[-1], y21], "--", color=colors[kind], alpha=0.7)
                ax.plot([WIKI18_PASSAGES], [y21], "x", color=colors[kind])
        ax.axvline(WIKI18_PASSAGES, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("vectors (768-d, random)")
        ax.set_title(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(title="solid: measured; dashed/x: extrapolated to wiki-18 (21M)", fontsize=8, title_fontsize=8)
    fig.suptitle("FAISS cost vs corpus size (random vectors; 21M extrapolated from the fit)", fontsize=11)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"\nplot saved to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", default=["scaling", "recall", "encode"],
                        choices=["scaling", "recall", "encode"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--index-types", nargs="+", default=["flat", "hnsw", "ivfpq"])
    parser.add_argument("--hnsw-max", type=int, default=100_000, help="largest N for HNSW (slow builds)")
    parser.add_argument("--dim", type=int, default=768, help="random-vector dimension (e5-base-v2: 768)")
    parser.add_argument("--queries", type=int, default=1000, help="random queries for timing / random recall")
    parser.add_argument("--batch", type=int, default=64, help="queries per call in the batched timing")
    parser.add_argument("--singles", type=int, default=100, help="single-query calls timed")
    parser.add_argument("--threads", type=int, default=None, help="FAISS / torch threads (default: all cores)")
    parser.add_argument("--real-vectors", default=None,
                        help=".npz with 'base' and 'queries' (real embeddings); 'none' skips the real set")
    parser.add_argument("--save-real", default=None, help="write the real vectors used to this .npz")
    parser.add_argument("--recall-n", type=int, default=200_000, help="random vectors for the random recall (0: skip)")
    parser.add_argument("--dims-per-byte", nargs="+", type=int, default=[8, 4, 3, 2])
    parser.add_argument("--nprobes", nargs="+", type=int, default=[16, 64, 256])
    parser.add_argument("--no-opq", action="store_true", help="recall: skip the OPQ variants (slow to train)")
    parser.add_argument("--device", default="cpu", help="encoding device: cpu, cuda, cuda:1")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="encoder dtype")
    parser.add_argument("--encode-batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=160, help="tokens per passage (wiki-18: ~100 words)")
    parser.add_argument("--encode-steps", type=int, default=3)
    parser.add_argument("--plot", default=None, help="save the scaling plot (PNG) here")
    parser.add_argument("--json", default=None, help="write every result row to this JSON file")
    args = parser.parse_args()

    if args.threads and ("scaling" in args.sections or "recall" in args.sections):
        import faiss

        faiss.omp_set_num_threads(args.threads)
    rows: list[dict] = []
    if "encode" in args.sections:
        rows.append(section_encode(args))
    if "recall" in args.sections:
        rows += section_recall(args)
    if "scaling" in args.sections:
        rows += section_scaling(args)
        if args.plot:
            plot(rows, args.plot)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
