"""One GPU against N GPUs (data parallel through accelerate) at equal global batch: the same results within noise,
and the tokens/s scaling. Reads the runs' ``metrics.csv`` (rank 0 writes the job's metrics: tokens/s summed over
the ranks, times the slowest rank's) and prints a markdown table.

    python benchmarks/bench_data_parallel.py --runs 1gpu=runs/dp1 2gpu=runs/dp2 [--skip 2]

Both runs draw the same questions at every step (the step's batch is a function of the seed and the step, split
over the ranks), but each rank samples with its own seed, so the runs are not identical: the results are compared
step by step (paired over steps), as the mean difference of the per-step EM reward and return with a 95% bootstrap
interval over steps. "Within noise" means that interval holds 0. The speed columns are medians over the steps after
the first ``--skip`` (warm-up).
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

from search_gym.stats import paired_bootstrap_ci
from search_gym.trainers.core import read_metrics

PAIRED = (("charts/em", "EM reward"), ("charts/episodic_return", "return"), ("losses/kl", "KL to ref"))


def run_metrics(folder: Path) -> dict[int, dict[str, float]]:
    """The rows of ``folder/metrics.csv`` by step."""
    path = folder / "metrics.csv"
    if not path.exists():
        raise SystemExit(f"{path} not found: train the run first (tools/gpu_jobs.sh dp)")
    return {int(row["global_step"]): row for row in read_metrics(path)}


def paired_difference(a: list[float], b: list[float], n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of b - a over paired steps, with a 95% percentile-bootstrap interval over steps (NaN when no step)."""
    ci = paired_bootstrap_ci(a, b, n_boot=n_boot, seed=seed)
    return (math.nan, math.nan, math.nan) if not ci["n"] else (ci["mean"], ci["lo"], ci["hi"])


def speed(rows: dict[int, dict[str, float]], skip: int) -> tuple[float, float]:
    """Median step seconds (rollout + update) and median tokens/s over the steps after ``skip``."""
    kept = [r for s, r in sorted(rows.items()) if s > skip] or list(rows.values())
    step_s = statistics.median(r["time/rollout_seconds"] + r["time/update_seconds"] for r in kept)
    return step_s, statistics.median(r["charts/tokens_per_second"] for r in kept)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, metavar="NAME=DIR",
                        help="runs to compare, the first one the baseline (one GPU)")
    parser.add_argument("--skip", type=int, default=2, help="warm-up steps left out of the speed medians")
    args = parser.parse_args()
    runs = [(spec.split("=", 1)[0], run_metrics(Path(spec.split("=", 1)[1]))) for spec in args.runs]
    base_name, base = runs[0]
    _, base_tok_s = speed(base, args.skip)

    print("| run | steps | step s (median) | tokens/s (median) | scaling | "
          + " | ".join(f"{label} (mean)" for _, label in PAIRED) + " |")
    print("|---|---:|---:|---:|---:|" + "---:|" * len(PAIRED))
    for name, rows in runs:
        step_s, tok_s = speed(rows, args.skip)
        means = [statistics.fmean(r[k] for r in rows.values() if k in r) for k, _ in PAIRED]
        print(f"| {name} | {len(rows)} | {step_s:.2f} | {tok_s:,.0f} | {tok_s / base_tok_s:.2f}x | "
              + " | ".join(f"{m:.4g}" for m in means) + " |")

    print()
    print(f"| paired over steps, minus {base_name} | steps | " + " | ".join(label for _, label in PAIRED) + " |")
    print("|---|---:|" + "---:|" * len(PAIRED))
    for name, rows in runs[1:]:
        steps = sorted(set(base) & set(rows))
        cells = []
        for key, _ in PAIRED:
            both = [s for s in steps if key in base[s] and key in rows[s]]
            mean, lo, hi = paired_difference([base[s][key] for s in both], [rows[s][key] for s in both])
            cells.append(f"{mean:+.4g} [{lo:+.4g}, {hi:+.4g}]" + ("" if lo <= 0 <= hi else " (not within noise)"))
        print(f"| {name} | {len(steps)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
