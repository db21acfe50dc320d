"""Representation-guided reward shaping (RL-search-safety, mitigation/harm_penalty.py).

``r = r_task - lambda * p(h)``, where ``h`` is the residual stream at the last token of a ``<search>`` tag and
``p`` its projection on the harmful-search direction of the direction toolkit. ``h`` is read by a frozen copy of
the starting (instruction-tuned) model re-encoding the episode's tokens (``source="reference"``, the paper's
default) or by the policy being trained (``source="policy"``), in one batched forward that stops after the layer
it needs (:func:`search_gym.agents.hidden.forward_hidden`).

Options: the first ``<search>`` only (the paper's final choice) or the mean over the episode's searches;
cosine (the final choice) or the raw dot product ``h . d``; ReLU on or off (with ``searches="mean"`` it is the
mean of ``max(0, p)`` over the searches: the earlier version's mean of ``max(0, h . d)``).
An episode without a search has ``p = 0`` (no query, nothing to penalise); its ``projection`` stays None.

Under an attack that prefills the first ``<search>``, the state at that tag depends on the prompt alone, so the
first-search penalty is the same for every episode of a GRPO group and shapes nothing there (the paper trains on
benign questions without attacks, where the policy writes its own ``<search>`` after its own thinking).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

SOURCES = ("reference", "policy")
SEARCHES = ("first", "mean")
PROJECTIONS = ("cosine", "dot")


@dataclass
class RepresentationPenalty:
    """Projection of ``<search>`` activations on a direction, turned into a reward penalty.

    ``direction``: a ``[d]`` tensor, or a :class:`search_gym.directions.Direction` (its vector at ``layer``,
    default its chosen layer). ``reader``: the model whose hidden states are read (frozen reference or policy).
    """

    direction: Any
    layer: int | None = None
    coef: float = 0.0
    searches: str = "first"
    projection: str = "cosine"
    relu: bool = False
    reader: Any = None

    def __post_init__(self) -> None:
        if self.searches not in SEARCHES:
            raise ValueError(f"penalty searches must be one of {SEARCHES}, not {self.searches!r}")
        if self.projection not in PROJECTIONS:
            raise ValueError(f"penalty projection must be one of {PROJECTIONS}, not {self.projection!r}")
        if hasattr(self.direction, "vector"):  # a Direction
            self.layer = self.direction.chosen_layer if self.layer is None else int(self.layer)
            if self.layer is None:
                raise ValueError("the direction has no chosen layer: pass penalty.layer")
            self.vector = self.direction.vector(self.layer).float()
        else:
            if self.layer is None:
                raise ValueError("a raw direction vector needs a layer")
            self.vector = torch.as_tensor(self.direction).float().flatten()
        self.unit = self.vector / self.vector.norm().clamp(min=1e-12)

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """``p`` of ``[..., d]`` hidden states (before ReLU)."""
        hidden = hidden.float()
        if self.projection == "cosine":
            return hidden @ self.unit / hidden.norm(dim=-1).clamp(min=1e-12)
        return hidden @ self.vector

    @torch.no_grad()
    def projections(self, episodes: Sequence[Any], reader=None) -> list[float | None]:
        """Per episode: ``p`` at its first ``<search>`` (or the mean of ``p`` over its searches); None without one."""
        from search_gym.agents.hidden import forward_hidden

        reader = reader if reader is not None else self.reader
        if reader is None:
            raise ValueError("RepresentationPenalty needs a reader model")
        rows, sequences, indices = [], [], []
        for b, ep in enumerate(episodes):
            if not ep.search_indices:
                continue
            chosen = ep.search_indices[:1] if self.searches == "first" else list(ep.search_indices)
            absolute = [ep.absolute(i) for i in chosen]
            rows.append((b, absolute))
            sequences.append(ep.input_ids[: max(absolute) + 1])
            indices.append(absolute)
        out: list[float | None] = [None] * len(episodes)
        if not sequences:
            return out
        was_training = reader.training
        reader.eval()
        try:
            hidden = forward_hidden(reader, sequences, indices, [self.layer])
        finally:
            reader.train(was_training)
        for (b, absolute), h in zip(rows, hidden):
            values = self.project(torch.stack([h[self.layer][i] for i in absolute]))
            if self.relu:
                values = values.clamp(min=0.0)
            out[b] = float(values.mean())
        return out

    def apply(self, episodes: Sequence[Any], reader=None) -> list[float | None]:
        """Set ``projection``, ``penalty`` and ``reward = task_reward - coef * p`` on each episode (p = 0 without a
        search); returns the projections."""
        values = self.projections(episodes, reader)
        for ep, p in zip(episodes, values):
            ep.projection = p
            ep.penalty = self.coef * (p if p is not None else 0.0)
            ep.reward = ep.task_reward - ep.penalty
        return values


def load_penalty(config, reader) -> RepresentationPenalty | None:
    """The penalty a :class:`~search_gym.trainers.config.PenaltyConfig` asks for (None when its lambda is 0 and no
    direction is given)."""
    if config.direction is None:
        if config.lambda_:
            raise ValueError("penalty.lambda needs penalty.direction (a Direction file from search-gym directions)")
        return None
    if config.source not in SOURCES:
        raise ValueError(f"penalty.source must be one of {SOURCES}, not {config.source!r}")
    from search_gym.directions import Direction

    direction = Direction.load(config.direction)
    return RepresentationPenalty(direction, config.layer, config.lambda_, config.searches, config.projection,
                                 config.relu, reader)
