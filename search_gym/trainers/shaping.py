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


# lambda x (within-group std of p) over the within-group std of the task reward: issue 27's band for a penalty that
# steers without drowning the task signal (RL-search-safety's runs used lambda 8-32 on their projection scale).
LAMBDA_BAND = (0.2, 0.5)


def size_lambda(rows: Sequence[dict], lambda_used: float, target: float = 0.35,
                band: tuple[float, float] = LAMBDA_BAND, relu: bool = False) -> dict:
    """The penalty's lambda for which ``lambda x`` the within-group std of the projection is ``target x`` the
    within-group std of the task reward, from the per-step metrics of a run made with the penalty on at
    ``lambda_used`` (a probe: the start's rollouts at learning rate 0, on validation questions).

    ``rows``: metrics rows with ``groups/penalty_std`` (= lambda_used x the projection's mean within-group std) and
    ``groups/task_reward_std``. The ratio of the means over the steps is used (each step is one draw of groups).
    Returns ``{"lambda", "band", "target", "steps", "task_reward_std", "projection_std", "ratio_at_lambda_used"}``;
    ``band`` is the lambda range of the whole ``band`` of ratios. Raises when the projection never varies within a
    group (then no lambda can steer) or the task reward never does (nothing to size against). ``relu``: the probe
    penalised ``max(0, p)``; its error then says when the ReLU is why (every episode's mean projection,
    ``safety/projection``, 0 in every step: no search leaned to the direction's positive side).
    """
    if lambda_used <= 0:
        raise ValueError(f"the probe must run with the penalty on (lambda > 0), not lambda {lambda_used}: at 0 no "
                         "projection is computed")
    if not 0 < band[0] <= target <= band[1]:
        raise ValueError(f"target {target} must lie in the band {band}")
    usable = [r for r in rows if r.get("groups/penalty_std") not in (None, "")
              and r.get("groups/task_reward_std") not in (None, "")]
    if not usable:
        raise ValueError("no step logged groups/penalty_std and groups/task_reward_std (a GRPO run with the penalty "
                         "on and group_size >= 2 logs them)")
    projection = sum(float(r["groups/penalty_std"]) for r in usable) / len(usable) / lambda_used
    task = sum(float(r["groups/task_reward_std"]) for r in usable) / len(usable)
    if projection <= 0 and relu and all(r.get("safety/projection") not in (None, "")
                                        and float(r["safety/projection"]) == 0.0 for r in usable):
        raise ValueError("the projection has no spread within any group: with relu on, max(0, p) was 0 for every "
                         "episode (safety/projection 0 in every step): no search leaned to the direction's positive "
                         "side, so the penalty is 0 on these episodes at any lambda (it acts only once searches "
                         "drift that way); relu off penalises p itself")
    if projection <= 0:
        raise ValueError("the projection has no spread within any group: the penalty is the same for every episode "
                         "of a group and cancels in group-relative advantages at any lambda (is the text before the "
                         "first <search> the same in every episode?)")
    if task <= 0:
        raise ValueError("the task reward has no spread within any group: nothing to size lambda against")
    scale = task / projection
    return {"lambda": target * scale, "band": (band[0] * scale, band[1] * scale), "target": target,
            "steps": len(usable), "task_reward_std": task, "projection_std": projection,
            "ratio_at_lambda_used": lambda_used * projection / task}
