"""Retrieval quality on the embedded QA set: answer recall@k and evidence-title recall@k per retriever.

    python benchmarks/recall.py --split test --retrievers dense bm25
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
    parser.add_argument("--retrievers", nargs="+", default=["dense", "bm25"], help="retriever kinds to compare")
    parser.add_argument("--index-type", default="flat", help="dense index type")
    parser.add_argument("--json", default=None, help="write the results to this file")
    args = parser.parse_args()

    data = ensure_embedded(progress=False)
    items = load_qa_jsonl(data.qa_train if args.split == "train" else data.qa_test)
    results = {}
    for kind in args.retrievers:
        retriever = get_retriever(RetrieverConfig(kind=kind, index_type=args.index_type))
        results[kind] = recall_at_k(retriever, items, ks=(1, 5))
    print(f"\nembedded QA {args.split} split, {len(items)} questions\n")
    print("| retriever | answer recall@1 | answer recall@5 | title recall@1 | title recall@5 |")
    print("|---|---:|---:|---:|---:|")
    for kind, r in results.items():
        name = f"dense MiniLM {args.index_type}" if kind == "dense" else "BM25"
        print(f"| {name} | {r['answer_recall@1']:.3f} | {r['answer_recall@5']:.3f} | "
              f"{r.get('title_recall@1', float('nan')):.3f} | {r.get('title_recall@5', float('nan')):.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
