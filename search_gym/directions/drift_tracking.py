"""Drift: how a series of checkpoints moves along a base model's direction.

Every checkpoint's activations (at the position and layers the direction was read at) are projected on the
*base* model's direction, so all checkpoints are measured with one fixed ruler. With harmless prompts as well,
each checkpoint also gets its own held-out separation along the base direction (AUROC, gap) and the cosine
between the base direction and the checkpoint's own difference of means: a checkpoint can keep projecting the
same way on average while its own harmful/harmless axis rotates away.

Trainers call :func:`drift` with ``[(step, path_or_agent), ...]``; a path is loaded, read and released before the
next one is loaded, so the series never holds more than one extra model.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from search_gym.directions.activations import ActivationConfig, collect_activations, hf_parts
from search_gym.directions.directions import Direction, diff_of_means
from search_gym.directions.selection import _pyplot, _save, auroc

__all__ = ["DriftRow", "DriftTable", "drift"]


@dataclass
class DriftRow:
    """One checkpoint at one layer, projected on the base direction of that layer."""

    step: int
    layer: int
    mean: float  # mean projection of the harmful prompts
    std: float  # their standard deviation
    centered: float  # mean minus the base direction's class midpoint (> 0: on the harmful side)
    frac_harmful_side: float  # fraction of harmful prompts projecting beyond the base midpoint
    harmless_mean: float | None = None  # mean projection of the harmless prompts (when given)
    gap: float | None = None  # harmful minus harmless mean projection
    auroc: float | None = None  # harmful vs harmless along the base direction
    cosine_to_base: float | None = None  # cosine of the checkpoint's own diff-of-means with the base direction


@dataclass
class DriftTable:
    """Rows ordered by step then layer."""

    direction: str
    rows: list[DriftRow] = field(default_factory=list)

    def layer_rows(self, layer: int) -> list[DriftRow]:
        return [r for r in self.rows if r.layer == layer]

    def to_dicts(self) -> list[dict]:
        return [asdict(r) for r in self.rows]

    def to_markdown(self) -> str:
        keys = ["step", "layer", "mean", "std", "centered", "frac_harmful_side"]
        if any(r.gap is not None for r in self.rows):
            keys += ["harmless_mean", "gap", "auroc", "cosine_to_base"]
        lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        for r in self.rows:
            cells = [getattr(r, k) for k in keys]
            lines.append("| " + " | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells) + " |")
        return "\n".join(lines)

    def plot(self, path: str | Path, *, title: str | None = None) -> Path:
        """Centred projection against step (one line per layer); with harmless prompts also the gap and AUROC."""
        plt = _pyplot()
        layers = sorted({r.layer for r in self.rows})
        panels = [("centered", "projection - base midpoint")]
        if any(r.gap is not None for r in self.rows):
            panels += [("gap", "harmful - harmless gap"), ("auroc", "AUROC along base direction")]
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
        for ax, (key, label) in zip(axes[0], panels):
            for layer in layers:
                rows = self.layer_rows(layer)
                ax.plot([r.step for r in rows], [getattr(r, key) for r in rows], marker="o", label=f"layer {layer}")
            ax.set_xlabel("step")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.suptitle(title or f"drift along the base {self.direction} direction")
        fig.tight_layout()
        return _save(fig, path)


def _config_from(direction: Direction, config: ActivationConfig | None, layers: Sequence[int]) -> ActivationConfig:
    """Read checkpoints where the direction was read: its position, prefill, template and few-shot count."""
    if config is not None:
        return ActivationConfig(**{**asdict(config), "layers": list(layers)})
    side = direction.meta.get("pos") or {}
    kwargs: dict[str, Any] = {"layers": list(layers)}
    for key in ("position", "prefill", "template", "few_shot"):
        if side.get(key) is not None:
            kwargs[key] = side[key]
    return ActivationConfig(**kwargs)


def drift(
    checkpoints: Sequence[tuple[int, Any]],
    direction: Direction,
    prompts: Iterable[Any],
    *,
    harmless_prompts: Iterable[Any] | None = None,
    layers: Sequence[int] | None = None,
    config: ActivationConfig | None = None,
    device: str | None = None,
    dtype: str | None = "float32",
    cache_dir: str | os.PathLike | None = None,
) -> DriftTable:
    """Project every checkpoint's activations on the base ``direction``.

    ``checkpoints``: ``(step, model)`` with ``model`` a folder / hub id / ``"smollm2"`` (loaded with ``device``
    and ``dtype``) or an agent / ``(model, tokenizer)`` already in memory. ``prompts``: the harmful prompts to
    read; ``harmless_prompts`` adds gap, AUROC and the cosine of each checkpoint's own direction. ``layers``:
    default the direction's chosen layer, else all of its layers. ``config``: where to read (default: the
    position, prefill, template and few-shot count recorded in the direction). ``cache_dir``: keep each
    checkpoint's activations there (``step_<n>_{harmful,harmless}.safetensors``) so a rerun skips finished
    checkpoints.
    """
    if layers is None:
        layers = [direction.chosen_layer] if direction.chosen_layer is not None else list(direction.layers)
    layers = [int(x) for x in layers]
    for layer in layers:
        direction.index(layer)
    read = _config_from(direction, config, layers)
    harmful = list(prompts)
    harmless = list(harmless_prompts) if harmless_prompts is not None else None
    table = DriftTable(direction=direction.name)
    for step, source in sorted(checkpoints, key=lambda c: c[0]):
        loaded = isinstance(source, (str, os.PathLike))
        parts = hf_parts(source, device=device, dtype=dtype) if loaded else source
        cache = Path(cache_dir) if cache_dir is not None else None
        pos = collect_activations(parts, harmful, read,
                                  out=cache / f"step_{step}_harmful.safetensors" if cache else None,
                                  label=f"harmful@{step}")
        neg = None
        if harmless is not None:
            neg = collect_activations(parts, harmless, read,
                                      out=cache / f"step_{step}_harmless.safetensors" if cache else None,
                                      label=f"harmless@{step}")
        own = diff_of_means(pos, neg) if neg is not None else None
        for layer in layers:
            p = direction.project(pos.at(layer), layer)
            mid = direction.midpoint(layer)
            row = DriftRow(step=int(step), layer=layer, mean=float(p.mean()),
                           std=float(p.std()) if len(p) > 1 else 0.0, centered=float(p.mean()) - mid,
                           frac_harmful_side=float((p > mid).float().mean()))
            if neg is not None and own is not None:
                n = direction.project(neg.at(layer), layer)
                row.harmless_mean = float(n.mean())
                row.gap = float(p.mean() - n.mean())
                row.auroc = auroc(p, n)
                row.cosine_to_base = float(own.vector(layer) @ direction.vector(layer))
            table.rows.append(row)
        if loaded:
            del parts
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return table
