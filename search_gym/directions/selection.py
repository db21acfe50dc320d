"""Which layer's direction to use: separation of projections of other prompts, per layer, plotted.

For every layer the positive and negative activations of prompts the direction was not fitted on are projected on
the direction computed from the *training* split at that layer, and these numbers say how well they separate:

- AUROC of the projections (rank based, ties count one half): threshold-free, 0.5 = chance;
- Cohen's d of the projections (mean gap over the pooled standard deviation): how far apart, in spread units;
- for matched pairs (``layer_scores(..., paired=True)``), the pair accuracy: how often the harmful twin projects
  above its benign twin.

Which prompts: the layer is chosen on the *validation* split's matched pairs (``search-gym directions select``
does so whenever the run folder has them), so that the held-out split stays for reporting
(:mod:`search_gym.directions.validation`). Matched pairs, because harmful and benign twins share a topic and a
form, and only they tell a harm direction from a style direction.

AUROC saturates at 1.0 on easy contrasts (harmful requests vs Wikipedia questions separate at almost every layer
of any model), so :func:`choose_layer` takes the best AUROC and breaks near-ties by Cohen's d. It skips the last
layers by default (``max_depth``): as Arditi et al. 2024 observe, directions read there mostly encode the next
token and steering them has little downstream effect, and a later layer is needed to read a steering effect out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from search_gym import stats
from search_gym.directions.activations import ActivationSet
from search_gym.directions.directions import Direction

__all__ = ["LayerScore", "auroc", "choose_layer", "cohens_d", "layer_scores", "mean_scores", "pair_accuracy",
           "plot_layer_scores", "projection_scores", "scores_markdown"]


@dataclass
class LayerScore:
    """Held-out separation at one layer (projections on that layer's direction)."""

    layer: int
    auroc: float  # P(projection of a positive > projection of a negative), ties 1/2
    cohens_d: float  # (mean_pos - mean_neg) / pooled std of the projections
    gap: float  # mean_pos - mean_neg of the held-out projections
    mean_pos: float  # mean projection of held-out positives
    mean_neg: float  # mean projection of held-out negatives
    pair_accuracy: float | None = None  # paired rows only: fraction of pairs whose positive projects higher (ties 1/2)
    n_pos: int = 0
    n_neg: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def auroc(pos: Any, neg: Any) -> float:
    """Area under the ROC curve of scores ``pos`` (label 1) vs ``neg`` (label 0), tensors (any device) or arrays:
    :func:`search_gym.stats.auroc`, a ValueError when a class has no score."""
    return stats.auroc(_float64(pos), _float64(neg), empty="raise")


def _float64(scores: Any) -> Any:
    return torch.as_tensor(scores, dtype=torch.float64).detach().reshape(-1).cpu().numpy()


def cohens_d(pos: Any, neg: Any) -> float:
    """``(mean(pos) - mean(neg)) / pooled std`` (sample variances; 0 when both classes are constant)."""
    pos = torch.as_tensor(pos, dtype=torch.float64).reshape(-1)
    neg = torch.as_tensor(neg, dtype=torch.float64).reshape(-1)
    n1, n2 = len(pos), len(neg)
    if n1 < 2 or n2 < 2:
        raise ValueError("Cohen's d needs at least two scores per class")
    pooled = ((n1 - 1) * pos.var() + (n2 - 1) * neg.var()) / (n1 + n2 - 2)
    gap = pos.mean() - neg.mean()
    if float(pooled) <= 0:
        return 0.0 if float(gap) == 0 else float("inf") * float(torch.sign(gap))
    return float(gap / pooled.sqrt())


def pair_accuracy(pos: Any, neg: Any) -> float:
    """Fraction of aligned pairs ``(pos[i], neg[i])`` where the positive scores higher, ties counting one half."""
    pos = torch.as_tensor(pos, dtype=torch.float64).reshape(-1)
    neg = torch.as_tensor(neg, dtype=torch.float64).reshape(-1)
    if len(pos) != len(neg) or not len(pos):
        raise ValueError(f"pair accuracy needs aligned, non-empty pairs ({len(pos)} vs {len(neg)} rows)")
    return float(((pos > neg).double() + 0.5 * (pos == neg).double()).mean())


def layer_scores(direction: Direction, pos: ActivationSet | torch.Tensor,
                 neg: ActivationSet | torch.Tensor, *, paired: bool = False) -> list[LayerScore]:
    """AUROC and effect size of projections at every layer of ``direction`` (computed from other prompts).

    ``paired``: row ``i`` of ``pos`` and of ``neg`` are twins (a matched pair, e.g. from
    :func:`~search_gym.directions.contrasts.twin_indices`); :attr:`LayerScore.pair_accuracy` is then filled in.
    """
    return projection_scores(direction.layers, direction.project(pos), direction.project(neg), paired=paired)


def projection_scores(layers: Sequence[int], pos: torch.Tensor, neg: torch.Tensor, *,
                      paired: bool = False) -> list[LayerScore]:
    """:class:`LayerScore` per layer from projections already made: ``pos`` ``[N, L]``, ``neg`` ``[M, L]``."""
    p, n = torch.as_tensor(pos).double(), torch.as_tensor(neg).double()
    if paired and p.shape[0] != n.shape[0]:
        raise ValueError(f"paired scores need as many positives as negatives ({p.shape[0]} vs {n.shape[0]})")
    out = []
    for j, layer in enumerate(layers):
        out.append(LayerScore(layer=int(layer), auroc=auroc(p[:, j], n[:, j]), cohens_d=cohens_d(p[:, j], n[:, j]),
                              gap=float(p[:, j].mean() - n[:, j].mean()), mean_pos=float(p[:, j].mean()),
                              mean_neg=float(n[:, j].mean()),
                              pair_accuracy=pair_accuracy(p[:, j], n[:, j]) if paired else None,
                              n_pos=int(p.shape[0]), n_neg=int(n.shape[0])))
    return out


def mean_scores(comparisons: Sequence[Sequence[LayerScore]]) -> list[LayerScore]:
    """Per-layer average of several comparisons (e.g. held-out harmful vs QA and vs benign), to choose one layer
    for a direction that must separate all of them."""
    by_layer: dict[int, list[LayerScore]] = {}
    for rows in comparisons:
        for s in rows:
            by_layer.setdefault(s.layer, []).append(s)
    out = []
    for layer, rows in sorted(by_layer.items()):
        n = len(rows)
        out.append(LayerScore(layer=layer, auroc=sum(s.auroc for s in rows) / n,
                              cohens_d=sum(s.cohens_d for s in rows) / n, gap=sum(s.gap for s in rows) / n,
                              mean_pos=sum(s.mean_pos for s in rows) / n, mean_neg=sum(s.mean_neg for s in rows) / n))
    return out


def choose_layer(scores: Sequence[LayerScore], *, num_layers: int | None = None, max_depth: float = 0.8,
                 min_layer: int = 0, auroc_tolerance: float = 0.005) -> int:
    """Best layer: highest AUROC, near-ties (within ``auroc_tolerance``) broken by the larger Cohen's d.

    Only layers ``min_layer <= L <= max_depth * (num_layers - 1)`` compete (``num_layers`` defaults to one past
    the deepest scored layer); when none is left every layer competes.
    """
    if not scores:
        raise ValueError("no layer scores")
    num_layers = num_layers or max(s.layer for s in scores) + 1
    deepest = max_depth * (num_layers - 1)
    pool = [s for s in scores if min_layer <= s.layer <= deepest] or list(scores)
    best_auroc = max(s.auroc for s in pool)
    tied = [s for s in pool if s.auroc >= best_auroc - auroc_tolerance]
    return max(tied, key=lambda s: (s.cohens_d, s.auroc, -s.layer)).layer


def scores_markdown(scores: Mapping[str, Sequence[LayerScore]], *, chosen: int | None = None) -> str:
    """One markdown table: a row per layer, AUROC and Cohen's d columns per named comparison."""
    names = list(scores)
    layers = sorted({s.layer for rows in scores.values() for s in rows})
    header = "| layer | " + " | ".join(f"AUROC {n} | d {n}" for n in names) + " |"
    lines = [header, "|" + "---|" * (1 + 2 * len(names))]
    by = {n: {s.layer: s for s in rows} for n, rows in scores.items()}
    for layer in layers:
        cells = []
        for n in names:
            s = by[n].get(layer)
            cells += [f"{s.auroc:.3f}", f"{s.cohens_d:.2f}"] if s else ["", ""]
        mark = f"**{layer}**" if layer == chosen else str(layer)
        lines.append(f"| {mark} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_layer_scores(scores: Mapping[str, Sequence[LayerScore]] | Sequence[LayerScore], path: str | Path, *,
                      chosen: int | None = None, title: str = "Held-out separation per layer") -> Path:
    """AUROC (top) and Cohen's d (bottom) against layer, one line per named comparison; PNG at ``path``."""
    plt = _pyplot()
    if not isinstance(scores, Mapping):
        scores = {"held-out": list(scores)}
    fig, (ax_auc, ax_d) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for name, rows in scores.items():
        rows = sorted(rows, key=lambda s: s.layer)
        ax_auc.plot([s.layer for s in rows], [s.auroc for s in rows], marker="o", ms=3, label=name)
        ax_d.plot([s.layer for s in rows], [s.cohens_d for s in rows], marker="o", ms=3, label=name)
    for ax in (ax_auc, ax_d):
        if chosen is not None:
            ax.axvline(chosen, color="grey", ls="--", lw=1)
        ax.grid(alpha=0.3)
    ax_auc.axhline(0.5, color="black", lw=0.5)
    ax_auc.set_ylabel("AUROC")
    ax_d.set_ylabel("Cohen's d")
    ax_d.set_xlabel("layer (decoder block, 0-based)" + (f"; dashed: chosen {chosen}" if chosen is not None else ""))
    # below the axes: with several comparisons an inside legend hides the curves
    ax_d.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=1 if len(scores) > 2 else 2)
    ax_auc.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("plots need matplotlib: pip install matplotlib") from exc
    return plt


def _save(fig, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
