"""FAISS alone on the embedded corpus: queries/s, recall against flat, build time and size per index type.

The embedded index's own vectors (MiniLM, 12,324 passages) are read back from the built flat index, so every
index type is built from the same vectors in this run, with the project's parameters (DenseRetriever defaults:
HNSW M=32, efConstruction=100, efSearch=128, single-threaded build below 200k passages; IVF-PQ from ivfpq_params,
nprobe=min(64, nlist)). Queries are the 660 QA test questions, encoded once. Search is timed in batches of
``--batch`` with interleaved repeats (medians, and the min-max spread across repeats). Also: the encoder's
passages/s and queries/s on this machine (a sample), which bound an index build and a live search.

    python benchmarks/bench_retrieval.py --batch 32 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    import faiss

    from search_gym.build import load_questions
    from search_gym.retrieval.dense import HNSW_DETERMINISTIC_MAX, faiss_threads, ivfpq_params
    from search_gym.retrieval.encoders import encode, load_encoder
    from search_gym.retrieval.factory import RetrieverConfig, get_retriever

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32, help="queries per FAISS call")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats")
    parser.add_argument("--k", type=int, default=5, help="recall@k against flat")
    parser.add_argument("--threads", type=int, default=None, help="FAISS threads for search (default: all)")
    parser.add_argument("--encode-sample", type=int, default=256, help="passages / queries timed through MiniLM")
    args = parser.parse_args()

    retriever = get_retriever(RetrieverConfig(kind="dense", index_type="flat"))
    retriever.load()
    flat = retriever._index
    n, dim = flat.ntotal, flat.d
    vectors = flat.reconstruct_n(0, n)
    questions = [q.question for q in load_questions("wiki_qa", "test")]
    t_q = timed(lambda: retriever.encode_queries(questions[:8]))  # warm-up: loads the encoder
    t_q = timed(lambda: retriever.encode_queries(questions[: args.encode_sample]))
    queries = retriever.encode_queries(questions)
    model = load_encoder(retriever.encoder)
    passages = [retriever.doc(i)[1] for i in range(min(args.encode_sample, n))]
    t_p = timed(lambda: encode(model, passages, prefix=retriever.encoder.passage_prefix,
                               normalize=retriever.encoder.normalize, batch_size=64))

    indexes, build_s = {"flat": flat}, {"flat": 0.0}
    t0 = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 100
    with faiss_threads(1 if n <= HNSW_DETERMINISTIC_MAX else None):
        hnsw.add(vectors)
    hnsw.hnsw.efSearch = 128
    build_s["hnsw"], indexes["hnsw"] = time.perf_counter() - t0, hnsw
    params = ivfpq_params(n, dim)
    t0 = time.perf_counter()
    ivf = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, params["nlist"], params["m"], params["nbits"],
                           faiss.METRIC_INNER_PRODUCT)
    rows = np.sort(np.random.default_rng(0).choice(n, size=params["n_train"], replace=False))
    with faiss_threads(1):
        ivf.train(vectors[rows])
    ivf.add(vectors)
    ivf.nprobe = min(64, params["nlist"])
    build_s["ivfpq"], indexes["ivfpq"] = time.perf_counter() - t0, ivf

    _, truth = flat.search(queries, args.k)
    batches = [queries[s : s + args.batch] for s in range(0, len(queries), args.batch)]
    times: dict[str, list[float]] = {name: [] for name in indexes}
    for _ in range(args.repeats):
        for name, index in indexes.items():
            with faiss_threads(args.threads):
                times[name].append(timed(lambda: [index.search(b, args.k) for b in batches]))

    print(f"\nembedded corpus: {n} passages, dim {dim}; {len(queries)} QA test queries; batch {args.batch}; "
          f"FAISS threads {args.threads or faiss.omp_get_max_threads()}; {args.repeats} repeats\n")
    print(f"| index | build s | size MB | FAISS queries/s (median) | spread across repeats | recall@{args.k} vs flat |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, index in indexes.items():
        qps = [len(queries) / t for t in times[name]]
        _, ids = index.search(queries, args.k)
        recall = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(ids.tolist(), truth.tolist())])
        size = len(faiss.serialize_index(index)) / 1e6
        build = "-" if name == "flat" else f"{build_s[name]:.2f}"
        print(f"| {name} | {build} | {size:.1f} | {statistics.median(qps):,.0f} | {min(qps):,.0f}-{max(qps):,.0f} |"
              f" {recall:.3f} |")
    print(f"\nMiniLM on this machine: {args.encode_sample / t_p:.1f} passages/s, {args.encode_sample / t_q:.1f} "
          f"queries/s (batch 64 / the retriever's batch; {args.encode_sample} each). A full build of the "
          f"{n} passages at that rate: {n / (args.encode_sample / t_p) / 60:.1f} min of encoding.")
    if params:
        print(f"IVF-PQ parameters: {params}, nprobe {ivf.nprobe}")


if __name__ == "__main__":
    main()
