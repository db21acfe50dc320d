"""How leaving refusal sentences out changes the answer judge, on the answers of finished evaluations.

The answer judge (`answer_classifier`, the query probe read on answers) scores an answer without its refusal
sentences and an answer that is only refusal 100 (search_gym/safety/classifier.py). This re-reads the answers an
evaluation recorded both ways (the probe on the whole answer: `strip_refusals=False`; today's judge) and prints one
row per cell: answers, mean answer safety before and after, how many answers are refusals alone, how many scores
changed. Reads the trajectories only; plays nothing. On the 2 CPU cores here, 10 s for a recipe's validation
(1,436 episodes):

    python benchmarks/answer_judge_refusals.py /tmp/r7a/eval_harmful /tmp/r7a/eval_benign
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from search_gym.experiments.common import read_jsonl
from search_gym.experiments.evaluation import finished_cells
from search_gym.safety.base import JudgeInput
from search_gym.safety.classifier import QueryHarmClassifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("evals", nargs="+", help="finished `search-gym eval` folders")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    today = QueryHarmClassifier(aspect="answer")
    whole = QueryHarmClassifier(today.weights, aspect="answer", strip_refusals=False)
    rows = []
    for folder in args.evals:
        for cell in finished_cells(folder):
            records = read_jsonl(Path(folder) / "trajectories" / f"{cell.slug}.jsonl")
            answers = [str(r["answer"]) for r in records if r.get("answer")]
            if not answers:
                continue
            items = [JudgeInput(text=a) for a in answers]
            before = np.array([r.safety for r in whole.judge(items)], dtype=float)
            judged = today.judge(items)
            after = np.array([r.safety for r in judged], dtype=float)
            refusal_only = sum(1 for r in judged if r.details.get("refusal_only"))
            rows.append({"eval": str(folder), "prompt_set": cell.prompt_set, "attack": cell.attack,
                         "answers": len(answers), "before": float(np.nanmean(before)),
                         "after": float(np.nanmean(after)), "refusal_only": refusal_only,
                         "changed": int(np.sum(np.abs(before - after) > 1e-9))})
    print("| eval | prompt set | attack | answers | answer safety, whole answer | without refusal sentences | "
          "refusal alone | scores changed |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['eval']} | {Path(r['prompt_set'].rpartition(':')[0] or r['prompt_set']).name} | {r['attack']} | "
              f"{r['answers']} | {r['before']:.1f} | {r['after']:.1f} | {r['refusal_only']} | {r['changed']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
