"""The shipped float16 passage vectors against a float32 encoding of the embedded corpus (issue 23).

    python benchmarks/bench_shipped_vectors.py            # prints the table
    python benchmarks/bench_shipped_vectors.py --record   # ... and appends it to benchmarks/RESULTS.md

Builds the embedded default's MiniLM flat index twice in a scratch folder: once from the vectors the package ships
(search_gym/retrieval/vectors/, float16, upcast) and once encoded here in float32 (``shipped_vectors=False``; the
slow part, ~4 min on 2 cores: the newcomer's cost that shipping removes). Then, over every question of both QA
splits (train + test), it compares what the two indexes return at k = 3 (the envs' default) and k = 10: the share
of questions whose top-k doc ids are identical in order, the mean overlap of the top-k sets, the largest score
difference, and answer / evidence-title recall of each.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from search_gym.build import ensure_embedded
from search_gym.data.qa import load_qa_jsonl
from search_gym.retrieval import recall_at_k
from search_gym.retrieval.dense import DenseRetriever

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--record", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = parser.parse_args()

    data = ensure_embedded(progress=False)
    questions = load_qa_jsonl(data.qa_train) + load_qa_jsonl(data.qa_test)
    with tempfile.TemporaryDirectory(prefix="shipped_bench_") as scratch:
        built: dict[str, DenseRetriever] = {}
        seconds: dict[str, float] = {}
        for name, shipped in (("shipped float16", True), ("encoded float32", False)):
            retriever = DenseRetriever(data.passages, encoder="minilm", index_dir=Path(scratch) / name.split()[0],
                                       device="cpu", progress=True, shipped_vectors=shipped)
            t0 = time.perf_counter()
            retriever.build(progress=True)
            seconds[name] = time.perf_counter() - t0
            built[name] = retriever
        ship, enc = built["shipped float16"], built["encoded float32"]
        assert ship.meta["vectors_from"].startswith("shipped:"), ship.meta["vectors_from"]
        assert enc.meta["vectors_from"] == "encoded"

        texts = [q.question for q in questions]
        # Exact (flat) search: the top 3 are the first 3 of the top 10, so one search per index serves both k.
        top10_ship, top10_enc = ship.search(texts, k=10), enc.search(texts, k=10)
        rows = []
        for k in (3, 10):
            a = [hits[:k] for hits in top10_ship]
            b = [hits[:k] for hits in top10_enc]
            same_order = np.mean([[h.doc_id for h in x] == [h.doc_id for h in y] for x, y in zip(a, b)])
            overlap = np.mean([len({h.doc_id for h in x} & {h.doc_id for h in y}) / k for x, y in zip(a, b)])
            score_gap = max(abs(h.score - g.score) for x, y in zip(a, b) for h, g in zip(x, y))
            rows.append((k, same_order, overlap, score_gap))
        recall = {name: recall_at_k(r, questions, ks=(3, 10), progress=False) for name, r in built.items()}

    lines = [
        "| build | seconds | answer recall@3 | answer recall@10 | title recall@3 | title recall@10 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in built:
        r = recall[name]
        lines.append(f"| {name} | {seconds[name]:.1f} | {r['answer_recall@3']:.4f} | {r['answer_recall@10']:.4f} | "
                     f"{r.get('title_recall@3', float('nan')):.4f} | {r.get('title_recall@10', float('nan')):.4f} |")
    lines += ["", "| k | top-k ids identical, in order | mean top-k overlap | largest score difference |",
              "|---:|---:|---:|---:|"]
    for k, same_order, overlap, gap in rows:
        lines.append(f"| {k} | {same_order:.4f} | {overlap:.4f} | {gap:.2e} |")
    table = "\n".join(lines)
    print(table)
    if args.record:
        load = os.getloadavg()
        header = (f"\n## Shipped float16 passage vectors vs a float32 encoding (`benchmarks/bench_shipped_vectors.py`)"
                  f" - {datetime.date.today()}\n\n"
                  f"`python benchmarks/bench_shipped_vectors.py --record`: the embedded corpus ({len(ship):,} "
                  f"passages), MiniLM flat index built from the shipped vectors and encoded here in float32; "
                  f"{len(questions)} questions (QA train + test). {os.cpu_count()} cores, Python "
                  f"{platform.python_version()}, load average {load[0]:.1f} at the end.\n\n")
        with open(REPO / "benchmarks" / "RESULTS.md", "a") as f:
            f.write(header + table + "\n")
        print(f"recorded in {REPO / 'benchmarks' / 'RESULTS.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
