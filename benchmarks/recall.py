"""Retrieval quality on the embedded QA set: answer recall@k and evidence-title recall@k per retriever.

    python benchmarks/recall.py --split test --retrievers dense bm25 hybrid
    python benchmarks/recall.py --split train --retrievers hybrid --rrf-k 10 30 60 100   # sensitivity, train only
"""

from __future__ import annotations

import argparse
import json

from search_gym.build import ensure_embedded
from search_gym.data.qa import load_qa_jsonl
from search_gym.retrieval import RetrieverConfig, get_retriever, recall_at_k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="test", choices=["train", "test"], help="QA split")
    parser.add_argument("--retrievers", nargs="+", default=["dense", "bm25", "hybrid"],
                        choices=["dense", "bm25", "hybrid"], help="retriever kinds to compare")
    parser.add_argument("--index-type", default="flat", help="dense index type")
    parser.add_argument("--rrf-k", type=float, nargs="+", default=[60.0],
                        help="hybrid's reciprocal-rank-fusion constant(s); 60 is the published default. Compare "
                             "values on --split train, never on test")
    parser.add_argument("--json", default=None, help="write the results to this file")
    args = parser.parse_args()

    data = ensure_embedded(progress=False)
    items = load_qa_jsonl(data.qa_train if args.split == "train" else data.qa_test)
    results = {}
    for kind in args.retrievers:
        for rrf_k in args.rrf_k if kind == "hybrid" else [None]:
            config = RetrieverConfig(kind=kind, index_type=args.index_type,
                                     **({"rrf_k": rrf_k} if rrf_k is not None else {}))
            retriever = get_retriever(config)
            if kind == "dense":
                name = f"dense MiniLM, FAISS {args.index_type}"
            elif kind == "bm25":
                name = "BM25"
            else:
                name = f"hybrid RRF k={rrf_k:g}, depth {retriever.depth} (dense {args.index_type} + BM25)"
            results[name] = recall_at_k(retriever, items, ks=(1, 5))
    print(f"\nembedded QA {args.split} split, {len(items)} questions\n")
    print("| retriever | answer recall@1 | answer recall@5 | title recall@1 | title recall@5 |")
    print("|---|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['answer_recall@1']:.3f} | {r['answer_recall@5']:.3f} | "
              f"{r.get('title_recall@1', float('nan')):.3f} | {r.get('title_recall@5', float('nan')):.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
