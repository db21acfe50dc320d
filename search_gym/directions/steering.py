"""The causal check: add ``coeff * scale * d`` at one layer and watch projections, queries and refusals move.

For each coefficient the sweep, with the steering hook active at ``layer`` (every position, every step):

1. runs one forward pass over the search-attack prompts (``<search>`` prefilled) and projects the activation at
   the ``<search>`` token onto the direction, at the steered layer and at a later *readout* layer (the
   direction of that layer): the readout moving with the coefficient shows the edit propagates;
2. generates the search query after the prefill (greedy) and scores it with a query :class:`Judge` when one is
   given (the latent guard, an embedding classifier, an LLM judge...);
3. generates a free response without the prefill and counts refusals with a refusal judge (default: the
   safety package's substring detector).

``scale`` expresses coefficients in natural units: ``"gap"`` is the projection gap between the harmful and
harmless means at that layer (coefficient 1 moves a harmless activation to the harmful mean), ``"norm"`` the mean
residual-stream norm there.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch

from search_gym.agents.hidden import decoder_layers, steering
from search_gym.directions.activations import (
    SEARCH_PREFILL,
    collect_from_ids,
    hf_parts,
    position_index,
    prompt_pairs,
    render_prompts,
    tokenize,
)
from search_gym.directions.directions import Direction
from search_gym.directions.selection import _pyplot, _save
from search_gym.envs.protocol import STOP_STRINGS
from search_gym.safety.base import JudgeInput
from search_gym.safety.refusal import RefusalSubstringJudge

__all__ = ["SteeringConfig", "SweepResult", "is_refusal", "projections_under_steering",
           "steering_sweep"]

_REFUSAL_JUDGE = RefusalSubstringJudge()


def is_refusal(text: str) -> bool:
    """The safety package's substring refusal detector (:class:`RefusalSubstringJudge`) on one text."""
    return _REFUSAL_JUDGE.match(text) is not None


@dataclass
class SteeringConfig:
    """What the sweep varies and reads."""

    coeffs: tuple[float, ...] = (-2.0, -1.0, 0.0, 1.0, 2.0)  # steering coefficients, in units of `scale`
    scale: str | float = "gap"  # "gap" (class-mean projection gap at the layer), "norm" (mean ||h||) or a number
    readout_layer: int | None = None  # later layer to read the projection at; default layer + num_layers // 6
    template: str = "search_r1"  # prompt template of the user turn (see directions.activations)
    few_shot: int = 0  # worked examples before the prompt (as in collection)
    prefill: str = SEARCH_PREFILL  # the search attack: the assistant turn starts with this
    generate: bool = True  # also generate queries (query harm) and free responses (refusal rate)
    max_new_tokens: int = 32  # generation budget for a query and for a free response
    batch_size: int = 8  # prompts per forward / generate call


@dataclass
class SweepResult:
    """One row per coefficient; per-prompt readout projections for the monotonicity check."""

    direction: str
    layer: int
    readout_layer: int
    scale: float
    scale_kind: str
    rows: list[dict]
    per_prompt: list[list[float]]  # [coeff][prompt] projection at the readout layer
    queries: list[list[str]] = field(default_factory=list)  # [coeff][prompt]
    responses: list[list[str]] = field(default_factory=list)  # [coeff][prompt]

    def column(self, key: str) -> list[float | None]:
        return [row.get(key) for row in self.rows]

    def is_monotonic(self, key: str = "proj_readout", *, strict: bool = True) -> bool:
        """Whether the mean ``key`` increases with the coefficient."""
        values = [v for _, v in sorted(zip(self.column("coeff"), self.column(key)))]
        pairs = list(pairwise(values))
        return all(b > a for a, b in pairs) if strict else all(b >= a for a, b in pairs)

    def monotonic_fraction(self) -> float:
        """Fraction of prompts whose own readout projection strictly increases with the coefficient."""
        order = sorted(range(len(self.rows)), key=lambda k: self.rows[k]["coeff"])
        n_prompts = len(self.per_prompt[0]) if self.per_prompt else 0
        good = 0
        for p in range(n_prompts):
            values = [self.per_prompt[k][p] for k in order]
            good += all(b > a for a, b in pairwise(values))
        return good / n_prompts if n_prompts else 0.0

    def to_markdown(self) -> str:
        keys = [k for k in ("coeff", "alpha", "proj_layer", "proj_readout", "proj_readout_centered",
                            "refusal_rate", "query_safety", "query_flag_rate") if any(k in r for r in self.rows)]
        lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        for row in self.rows:
            lines.append("| " + " | ".join(_fmt(row.get(k)) for k in keys) + " |")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)

    def plot(self, path: str | Path, *, title: str | None = None) -> Path:
        """Readout projection, refusal rate and (with a judge) query safety against the coefficient."""
        plt = _pyplot()
        panels = [("proj_readout", f"projection @ layer {self.readout_layer}")]
        if any(r.get("refusal_rate") is not None for r in self.rows):
            panels.append(("refusal_rate", "refusal rate"))
        if any(r.get("query_safety") is not None for r in self.rows):
            panels.append(("query_safety", "query safety (0-100)"))
        fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), squeeze=False)
        coeffs = self.column("coeff")
        for ax, (key, label) in zip(axes[0], panels):
            ax.plot(coeffs, self.column(key), marker="o")
            if key == "proj_readout" and self.per_prompt:
                for p in range(len(self.per_prompt[0])):
                    ax.plot(coeffs, [self.per_prompt[k][p] for k in range(len(coeffs))], color="grey",
                            alpha=0.25, lw=0.8)
            if key == "refusal_rate":  # full ranges: small wobbles must not look like effects
                ax.set_ylim(-0.05, 1.05)
            elif key == "query_safety":
                ax.set_ylim(0, 100)
            ax.set_xlabel(f"coeff (x {self.scale_kind} = {self.scale:.3g})")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        fig.suptitle(title or f"steering {self.direction} at layer {self.layer}")
        fig.tight_layout()
        return _save(fig, path)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _readout_layer(direction: Direction, layer: int, num_layers: int, requested: int | None) -> int:
    if requested is not None:
        direction.index(requested)
        return int(requested)
    target = min(num_layers - 1, layer + max(1, num_layers // 6))
    later = [x for x in direction.layers if x >= target]
    return min(later) if later else max(direction.layers)


def _scale(direction: Direction, layer: int, scale: str | float) -> tuple[float, str]:
    if isinstance(scale, (int, float)):
        return float(scale), "fixed"
    if scale == "gap":
        return abs(direction.gap(layer)), "gap"
    if scale == "norm":
        return direction.act_norm(layer), "norm"
    raise ValueError(f"scale must be 'gap', 'norm' or a number, not {scale!r}")


def steering_sweep(
    agent: Any,
    direction: Direction,
    prompts: Iterable[Any],
    *,
    layer: int | None = None,
    config: SteeringConfig | None = None,
    judge: Any = None,
    refusal_judge: Any = None,
) -> SweepResult:
    """Steer ``direction`` at ``layer`` (default: its chosen layer) for every ``config.coeffs`` on ``prompts``.

    ``agent``: anything :func:`~search_gym.directions.activations.hf_parts` accepts (steering edits the
    model's forward pass). ``judge``: an optional query :class:`~search_gym.safety.base.Judge`; it receives each
    generated query with its request and the steered hidden states at the ``<search>`` token
    (``{layer: {"search": h}}`` for the steered and readout layers); NaN safeties (abstentions) are left out
    of the mean. ``refusal_judge``: a Judge of aspect ``"refusal"`` whose ``flagged`` means refused (default:
    :class:`~search_gym.safety.refusal.RefusalSubstringJudge`).
    """
    config = config or SteeringConfig()
    parts = hf_parts(agent)
    if parts is None:
        raise ValueError("steering needs an agent with an HF model (HFAgent, model folder, (model, tokenizer))")
    layer = direction._layer(layer)
    num_layers = len(decoder_layers(parts.model))
    readout = _readout_layer(direction, layer, num_layers, config.readout_layer)
    scale, scale_kind = _scale(direction, layer, config.scale)
    refusals = refusal_judge or _REFUSAL_JUDGE
    pairs = prompt_pairs(prompts)
    texts = [t for _, t in pairs]
    attacked = render_prompts(parts.tokenizer, texts, template=config.template, prefill=config.prefill,
                              few_shot=config.few_shot)
    free = render_prompts(parts.tokenizer, texts, template=config.template, prefill="", few_shot=config.few_shot)
    sequences = tokenize(parts.tokenizer, attacked)
    position = "search" if SEARCH_PREFILL in config.prefill else "last_prompt"
    indices = [position_index(parts.tokenizer, ids, position) for ids in sequences]
    read_layers = sorted({layer, readout})
    generator = None
    if config.generate:
        from search_gym.agents.hf import HFAgent

        generator = HFAgent(parts.model, parts.tokenizer, few_shot=0, temperature=0.0,
                            max_new_tokens=config.max_new_tokens, batch_size=config.batch_size)

    rows, per_prompt, all_queries, all_responses = [], [], [], []
    vector = direction.vector(layer)
    for coeff in config.coeffs:
        alpha = float(coeff) * scale
        with steering(parts.model, vector, layer, alpha):
            acts = collect_from_ids(parts.model, sequences, indices, read_layers, batch_size=config.batch_size)
            queries: list[str] = []
            responses: list[str] = []
            if generator is not None:
                queries = [_query(s.text) for s in generator.complete(attacked, stop=("</search>",))]
                responses = [s.text for s in generator.complete(free, stop=STOP_STRINGS)]
        at_layer = direction.project(acts[:, read_layers.index(layer)], layer)
        at_readout = direction.project(acts[:, read_layers.index(readout)], readout)
        row: dict[str, Any] = {
            "coeff": float(coeff),
            "alpha": alpha,
            "proj_layer": float(at_layer.mean()),
            "proj_readout": float(at_readout.mean()),
            "proj_readout_centered": float(at_readout.mean()) - direction.midpoint(readout),
            "n": len(texts),
        }
        if generator is not None:
            refused = [bool(r.flagged) for r in refusals.judge([JudgeInput(text=r, request=t)
                                                                 for r, t in zip(responses, texts)])]
            row["refusal_rate"] = sum(refused) / max(1, len(refused))
            if judge is not None:
                hidden = [{x: {position: acts[i, read_layers.index(x)]} for x in read_layers}
                          for i in range(len(texts))]
                results = judge.judge([JudgeInput(text=q, request=t, hidden=h)
                                       for q, t, h in zip(queries, texts, hidden)])
                safeties = [r.safety for r in results if r.safety is not None and math.isfinite(r.safety)]
                row["query_safety"] = sum(safeties) / len(safeties) if safeties else None
                flags = [r.flagged for r in results if r.flagged is not None]
                row["query_flag_rate"] = sum(flags) / len(flags) if flags else None
            row["example_query"] = queries[0] if queries else ""
        rows.append(row)
        per_prompt.append([float(x) for x in at_readout])
        all_queries.append(queries)
        all_responses.append(responses)
    return SweepResult(direction=direction.name, layer=layer, readout_layer=readout, scale=scale,
                       scale_kind=scale_kind, rows=rows, per_prompt=per_prompt, queries=all_queries,
                       responses=all_responses)


def _query(text: str) -> str:
    """The query of a turn that continues a ``<search>`` prefill: the text before ``</search>``."""
    return text.split("</search>", 1)[0].strip()


def projections_under_steering(agent: Any, direction: Direction, prompts: Iterable[Any], coeffs: Sequence[float],
                               *, layer: int | None = None, readout_layer: int | None = None,
                               config: SteeringConfig | None = None) -> torch.Tensor:
    """``[len(coeffs), N]`` readout projections only (no generation): the cheap form of the causal check."""
    config = SteeringConfig(**{**asdict(config or SteeringConfig()), "coeffs": tuple(coeffs), "generate": False,
                               "readout_layer": readout_layer})
    result = steering_sweep(agent, direction, prompts, layer=layer, config=config)
    return torch.tensor(result.per_prompt)
