"""Learning curves: the metrics a training run logged (``metrics.csv``, :class:`~search_gym.trainers.core.RunLogger`)
against step, one panel per metric, one line per run, as a PNG.

Every trainer writes ``<output_dir>/curves.png`` at each checkpoint and at the end (``plots: false`` turns it off);
``plot_curves`` also draws several runs on one figure (the study's GRPO runs, an algorithm comparison).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from search_gym.trainers.core import read_metrics

# What says whether an RL run learns: its reward and EM, how far it moved (KL to the start, or the sampler's
# approximate KL when no reference model is loaded), whether its groups carry signal, and the safety it keeps.
DEFAULT_CURVES = ("charts/task_reward", "charts/em", "losses/kl", "groups/informative_share", "safety/search_safety",
                  "safety/refusal")
SFT_CURVES = ("losses/sft_loss", "losses/grad_norm", "charts/learning_rate")


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` values (fewer at the start), so the smoothed curve never looks ahead."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_curves(runs: Mapping[str, str | Path] | str | Path, out: str | Path, *, keys: Sequence[str] | None = None,
                smooth: int = 0, title: str | None = None) -> Path:
    """``out`` (PNG): each metric of ``keys`` against step for each run (``{label: metrics.csv or run folder}``, or
    one run). Default keys: :data:`DEFAULT_CURVES` that the runs logged, else :data:`SFT_CURVES`. ``smooth`` N > 1
    draws the raw values faint and their trailing N-step mean on top. Metrics no run logged get no panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not isinstance(runs, Mapping):
        runs = {Path(runs).name if Path(runs).is_dir() else Path(runs).parent.name: runs}
    rows = {name: read_metrics(Path(p) / "metrics.csv" if Path(p).is_dir() else p) for name, p in runs.items()}
    logged = {k for rs in rows.values() for r in rs for k in r}
    if keys is None:
        keys = [k for k in DEFAULT_CURVES if k in logged] or [k for k in SFT_CURVES if k in logged]
    keys = [k for k in keys if k in logged]
    if not keys:
        raise ValueError(f"none of the metrics to plot were logged by {list(runs)} (logged: {sorted(logged)[:12]} ...)")
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.1), squeeze=False)
    for name, rs in rows.items():
        for ax, key in zip(axes[0], keys):
            pts = [(r["global_step"], r[key]) for r in rs if key in r]
            if not pts:
                continue
            steps, values = zip(*pts)
            if smooth > 1:
                line, = ax.plot(steps, values, alpha=0.3, lw=1)
                ax.plot(steps, moving_average(values, smooth), color=line.get_color(), lw=2, label=name)
            else:
                ax.plot(steps, values, marker="." if len(steps) < 40 else None, label=name)
    for ax, key in zip(axes[0], keys):
        ax.set_title(key + (f" ({smooth}-step mean)" if smooth > 1 else ""), fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if len(rows) > 1:
        axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def draw_run_curves(output_dir: str | Path) -> Path | None:
    """``<output_dir>/curves.png`` from the run's ``metrics.csv`` (what the trainers call at each checkpoint and at
    the end); None while nothing is logged."""
    csv_path = Path(output_dir) / "metrics.csv"
    rows = read_metrics(csv_path) if csv_path.is_file() else []
    if not rows:
        return None
    return plot_curves({Path(output_dir).name: csv_path}, Path(output_dir) / "curves.png",
                       smooth=5 if len(rows) >= 20 else 0)
