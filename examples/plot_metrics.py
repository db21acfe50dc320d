"""Plot metrics of training runs (their metrics.csv) against the step, one panel per metric.

    python examples/plot_metrics.py runs/grpo/metrics.csv --metrics charts/episodic_return losses/kl --out curves.png
    python examples/plot_metrics.py a/metrics.csv b/metrics.csv --labels grpo penalised --metrics charts/em
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path


def read(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", nargs="+", help="metrics.csv files of runs")
    parser.add_argument("--metrics", nargs="+", required=True, help="column names to plot")
    parser.add_argument("--labels", nargs="+", default=None, help="one legend label per run")
    parser.add_argument("--out", required=True, help="PNG path")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = args.labels or [Path(p).parent.name for p in args.csv]
    fig, axes = plt.subplots(1, len(args.metrics), figsize=(4.2 * len(args.metrics), 3.2), squeeze=False)
    for path, label in zip(args.csv, labels):
        rows = read(path)
        for ax, metric in zip(axes[0], args.metrics):
            points = [(float(r["global_step"]), float(r[metric])) for r in rows if r.get(metric) not in (None, "")]
            points = [(x, y) for x, y in points if not math.isnan(y)]
            if points:
                ax.plot(*zip(*points), label=label, lw=1.4)
    for ax, metric in zip(axes[0], args.metrics):
        ax.set_title(metric)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if len(args.csv) > 1:
        axes[0][0].legend(fontsize=8)
    if args.title:
        fig.suptitle(args.title)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
