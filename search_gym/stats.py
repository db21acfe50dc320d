"""The statistics every floor reports with, one implementation each: AUROC, Brier score, expected calibration
error, and percentile bootstraps (of a mean, of a mean over clusters, of a paired difference, of any statistic,
of an AUROC).

numpy only, so the ground floor stays light. Intervals are percentile bootstraps at ``level`` (0.95 by default);
the same ``seed`` gives the same interval. Values that are None or NaN are left out, where a function says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["auroc", "brier", "ece", "bootstrap_ci", "cluster_bootstrap_ci", "paired_bootstrap_ci", "paired_mde", "bootstrap_interval",
           "auroc_interval"]


def _ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (as scipy's ``rankdata``)."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    # runs of equal values: each gets the mean of the ranks it spans
    boundaries = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1], True])
    for start, end in zip(boundaries[:-1], boundaries[1:]):
        ranks[order[start:end]] = (start + 1 + end) / 2.0
    return ranks


def auroc(pos: Any, neg: Any, *, empty: str = "nan") -> float:
    """P(score of a random positive > score of a random negative), ties counting one half (Mann-Whitney U over
    ``n_pos * n_neg``). With no score in a class: NaN, or a ValueError when ``empty="raise"``."""
    pos = np.asarray(pos, dtype=np.float64).reshape(-1)
    neg = np.asarray(neg, dtype=np.float64).reshape(-1)
    if not len(pos) or not len(neg):
        if empty == "raise":
            raise ValueError("AUROC needs at least one score per class")
        return math.nan
    ranks = _ranks(np.concatenate([pos, neg]))
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2.0) / (len(pos) * len(neg)))


def brier(p: Sequence[float], y: Sequence[int]) -> float:
    """Mean squared error of probabilities ``p`` against 0/1 labels ``y`` (NaN when empty)."""
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return float(np.mean((p - y) ** 2)) if len(p) else math.nan


def ece(p: Sequence[float], y: Sequence[int], bins: int = 10) -> float:
    """Expected calibration error: over ``bins`` equal-width bins of ``p`` (the last one closed), the
    size-weighted mean of |mean p - fraction positive| (NaN when empty)."""
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if not len(p):
        return math.nan
    index = np.minimum((np.clip(p, 0.0, 1.0) * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = index == b
        if mask.any():
            total += mask.sum() / len(p) * abs(p[mask].mean() - y[mask].mean())
    return float(total)


def _finite(values: Sequence[float | None]) -> np.ndarray:
    return np.asarray([float(v) for v in values if v is not None and not math.isnan(float(v))], dtype=np.float64)


def _percentiles(samples: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return float(lo), float(hi)


def bootstrap_ci(values: Sequence[float | None], *, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict[str, float | int | None]:
    """Mean and percentile-bootstrap interval of ``values`` (None / NaN left out): ``{"mean", "lo", "hi", "n"}``."""
    data = _finite(values)
    if data.size == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(n_boot, data.size))].mean(axis=1) if n_boot > 0 else data
    lo, hi = _percentiles(means, level)
    return {"mean": float(data.mean()), "lo": lo, "hi": hi, "n": int(data.size)}


def cluster_bootstrap_ci(values: Sequence[float | None], clusters: Sequence[Any], *, n_boot: int = 1000,
                         seed: int = 0, level: float = 0.95) -> dict[str, float | int | None]:
    """Mean of ``values`` with a percentile bootstrap that resamples whole clusters (e.g. questions with several
    samples each): ``{"mean", "lo", "hi", "n"}``; None / NaN values are left out."""
    keep = [(float(v), c) for v, c in zip(values, clusters) if v is not None and not math.isnan(float(v))]
    if not keep:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    names = sorted({c for _, c in keep}, key=str)
    sums = np.array([sum(v for v, c in keep if c == name) for name in names])
    counts = np.array([sum(1 for _, c in keep if c == name) for name in names], dtype=np.float64)
    mean = float(sums.sum() / counts.sum())
    if n_boot <= 0:
        return {"mean": mean, "lo": mean, "hi": mean, "n": len(keep)}
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(names), size=(n_boot, len(names)))
    lo, hi = _percentiles(sums[picks].sum(axis=1) / counts[picks].sum(axis=1), level)
    return {"mean": mean, "lo": lo, "hi": hi, "n": len(keep)}


def paired_bootstrap_ci(a: Sequence[float | None], b: Sequence[float | None], *, n_boot: int = 1000, seed: int = 0,
                        level: float = 0.95) -> dict[str, float | int | None]:
    """Mean of the paired differences ``b[i] - a[i]`` and its percentile-bootstrap interval, resampling pairs
    (a pair with None / NaN on either side is left out): ``{"mean", "lo", "hi", "n"}``. ``a`` and ``b`` must be
    aligned (the same prompts, in the same order)."""
    return bootstrap_ci(_paired_differences(a, b), n_boot=n_boot, seed=seed, level=level)


def _paired_differences(a: Sequence[float | None], b: Sequence[float | None]) -> list[float]:
    """``b[i] - a[i]`` over the aligned pairs with a finite value on both sides."""
    if len(a) != len(b):
        raise ValueError(f"paired values must be aligned: {len(a)} vs {len(b)}")
    return [float(y) - float(x) for x, y in zip(a, b)
            if x is not None and y is not None and not math.isnan(float(x)) and not math.isnan(float(y))]


def paired_mde(a: Sequence[float | None], b: Sequence[float | None], *, level: float = 0.95,
               power: float = 0.8) -> dict[str, float | int | None]:
    """The minimum detectable effect of a paired comparison: the smallest true mean difference ``b - a`` that a
    two-sided test at ``1 - level`` finds with probability ``power``, given the spread of these pairs,
    ``(z_{(1+level)/2} + z_power) * sd(b - a) / sqrt(n)`` (normal approximation; the sd is the pairs' own, so this
    is what a "no difference" on these data can rule out, not a power computed from the observed effect).
    ``{"mde", "sd", "n"}``; ``mde`` and ``sd`` are None with fewer than two pairs."""
    from statistics import NormalDist

    diffs = _paired_differences(a, b)
    if len(diffs) < 2:
        return {"mde": None, "sd": None, "n": len(diffs)}
    sd = float(np.std(diffs, ddof=1))
    z = NormalDist().inv_cdf((1 + level) / 2) + NormalDist().inv_cdf(power)
    return {"mde": z * sd / math.sqrt(len(diffs)), "sd": sd, "n": len(diffs)}


def bootstrap_interval(statistic: Callable[[np.ndarray], float], n: int, *, n_boot: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap interval of any statistic: ``statistic(indices)`` is called with ``n_boot`` resamples
    of ``range(n)`` (with replacement) and the interval of its values returned. For statistics that are not a mean
    (an AUROC over resampled pairs, say)."""
    rng = np.random.default_rng(seed)
    values = [statistic(rng.integers(0, n, n)) for _ in range(n_boot)]
    return _percentiles(np.asarray(values, dtype=np.float64), level)


def auroc_interval(pos: Any, neg: Any, *, paired: bool = False, n_boot: int = 1000, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap interval of the AUROC of scores ``pos`` vs ``neg``: aligned pairs (``pos[i]`` and
    ``neg[i]`` twins) are resampled together when ``paired``, each class on its own otherwise. A ValueError when a
    class has no score."""
    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    if paired:
        return bootstrap_interval(lambda take: auroc(pos[take], neg[take], empty="raise"), len(pos), n_boot=n_boot,
                                  seed=seed, level=level)
    rng = np.random.default_rng(seed)
    values = [auroc(pos[rng.integers(0, len(pos), len(pos))], neg[rng.integers(0, len(neg), len(neg))], empty="raise")
              for _ in range(n_boot)]
    return _percentiles(np.asarray(values, dtype=np.float64), level)
