"""Numbers behind the study's curves: per GRPO run, the mean of a few logged metrics over the first and the last
K steps, and the median step time (docs/study.md quotes this table).

    python examples/study_curve_stats.py docs/data/study_smollm2_h200 [--k 10]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from search_gym.trainers.core import read_metrics

COLUMNS = (("charts/em", "EM reward", 3), ("charts/episodic_return", "return", 3),
           ("safety/search_safety", "search safety", 2), ("safety/projection", "projection", 4),
           ("charts/searches_per_episode", "searches / ep", 2), ("losses/kl", "KL to ref", 5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path, help="study folder (holding grpo/ and grpo_penalty/ metrics.csv)")
    parser.add_argument("--k", type=int, default=10, help="steps averaged at each end")
    args = parser.parse_args()
    head = "| run | steps | " + " | ".join(f"{label} (first {args.k} -> last {args.k})" for _, label, _ in COLUMNS)
    print(head + " | step s (median) |")
    print("|---|---:|" + "---|" * len(COLUMNS) + "---:|")
    for run in ("grpo", "grpo_penalty"):
        path = args.study / run / "metrics.csv"
        if not path.exists():
            continue
        rows = read_metrics(path)
        cells = []
        for key, _, digits in COLUMNS:
            values = [r[key] for r in rows if key in r]
            first, last = statistics.fmean(values[: args.k]), statistics.fmean(values[-args.k :])
            cells.append(f"{first:.{digits}f} -> {last:.{digits}f}")
        step_s = statistics.median(r["time/rollout_seconds"] + r["time/update_seconds"] for r in rows)
        print(f"| {run} | {len(rows)} | " + " | ".join(cells) + f" | {step_s:.1f} |")


if __name__ == "__main__":
    main()
