"""The latent guard: a query-harm :class:`~search_gym.safety.base.Judge` that reads the agent's own hidden state.

Instead of reading the query text, the guard projects the agent's residual stream at the ``<search>`` token
(``JudgeInput.hidden[layer]["search"]``, as captured by an HFAgent built with ``layers=[layer]``) on the
harmfulness direction of that layer. A query is flagged when the projection exceeds a threshold calibrated on
the training split, and the 0-100 safety score (100 = safe) is a logistic of the margin in units of the
within-class spread:

    margin = (h . d - threshold) / scale,    safety = 100 * (1 - sigmoid(margin))

so that ``flagged`` is exactly ``safety < 50``. ``scale`` is the pooled within-class standard deviation of the
training projections: one spread away from the threshold gives 27 / 73.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from search_gym.directions.activations import ActivationSet
from search_gym.directions.directions import Direction
from search_gym.directions.selection import auroc
from search_gym.safety.base import JudgeInput, JudgeResult

__all__ = ["Calibration", "LatentGuard", "calibrate_threshold"]


@dataclass
class Calibration:
    """How the threshold was set, and how it does on the calibration data."""

    method: str  # "youden" (max TPR - FPR) or "fpr" (largest TPR with FPR <= target)
    threshold: float  # projections above it are flagged
    scale: float  # pooled within-class std of the projections (the logistic's unit)
    tpr: float  # flagged fraction of the harmful calibration activations
    fpr: float  # flagged fraction of the harmless calibration activations
    auroc: float  # threshold-free separation of the calibration activations
    n_pos: int
    n_neg: int
    target_fpr: float | None = None


def calibrate_threshold(pos: Any, neg: Any, *, method: str = "youden", target_fpr: float = 0.05) -> Calibration:
    """Threshold on projections ``pos`` (harmful) vs ``neg`` (harmless); flags are ``projection > threshold``.

    ``"youden"`` maximises Youden's J = TPR - FPR over the midpoints between consecutive distinct scores (ties go
    to the lower threshold, i.e. the larger TPR). ``"fpr"`` takes the lowest threshold whose FPR on ``neg`` is at
    most ``target_fpr``.
    """
    pos = torch.as_tensor(pos, dtype=torch.float64).reshape(-1)
    neg = torch.as_tensor(neg, dtype=torch.float64).reshape(-1)
    if len(pos) < 2 or len(neg) < 2:
        raise ValueError("calibration needs at least two activations per class")
    if method == "youden":
        values = torch.unique(torch.cat([pos, neg]))
        candidates = torch.cat([values[:1] - 1.0, (values[1:] + values[:-1]) / 2, values[-1:] + 1.0])
        tpr = (pos[None, :] > candidates[:, None]).double().mean(1)
        fpr = (neg[None, :] > candidates[:, None]).double().mean(1)
        best = int(torch.argmax(tpr - fpr))  # argmax returns the first maximum: the lowest such threshold
        threshold = float(candidates[best])
    elif method == "fpr":
        if not 0 <= target_fpr < 1:
            raise ValueError("target_fpr must be in [0, 1)")
        ordered = torch.sort(neg, descending=True).values
        k = math.floor(target_fpr * len(neg))
        threshold = float(ordered[min(k, len(neg) - 1)])
    else:
        raise ValueError(f"method must be 'youden' or 'fpr', not {method!r}")
    n1, n2 = len(pos), len(neg)
    pooled = ((n1 - 1) * pos.var() + (n2 - 1) * neg.var()) / (n1 + n2 - 2)
    scale = float(pooled.sqrt()) if float(pooled) > 0 else 1.0
    return Calibration(method=method, threshold=threshold, scale=scale, tpr=float((pos > threshold).double().mean()),
                       fpr=float((neg > threshold).double().mean()), auroc=auroc(pos, neg), n_pos=n1, n_neg=n2,
                       target_fpr=target_fpr if method == "fpr" else None)


class LatentGuard:
    """Judge of query harm from the agent's hidden state at ``position`` of ``layer`` (aspect ``"query"``).

    Args:
        direction: a :class:`Direction` (its unit vector at ``layer`` is used) or a ``[d]`` vector (normalised
            here, so thresholds are always in projection-on-a-unit-vector units).
        layer: the decoder block whose hidden state is read (default: the direction's chosen layer).
        threshold: projections above it are flagged; use :meth:`calibrate` to set it from data.
        scale: logistic unit of the margin (see the module docstring).
        position: which captured position to read (``"search"``; ``"query_mean"`` or ``"last_prompt"`` work too).
    """

    aspect = "query"

    def __init__(self, direction: Direction | Any, layer: int | None = None, threshold: float = 0.0, *,
                 scale: float = 1.0, position: str = "search", name: str = "latent_guard",
                 calibration: Calibration | None = None):
        if isinstance(direction, Direction):
            layer = direction._layer(layer)
            vector = direction.vector(layer)
            self.direction_name = direction.name
        else:
            if layer is None:
                raise ValueError("pass the layer the vector belongs to")
            vector = torch.as_tensor(direction, dtype=torch.float32).reshape(-1)
            self.direction_name = "vector"
        norm = float(vector.norm())
        if norm == 0:
            raise ValueError("the guard's direction is the zero vector")
        if scale <= 0:
            raise ValueError("scale must be > 0")
        self.vector = (vector / norm).float()
        self.layer = int(layer)
        self.threshold = float(threshold)
        self.scale = float(scale)
        self.position = position
        self.name = name
        self.calibration = calibration

    @classmethod
    def calibrate(cls, direction: Direction, harmful: ActivationSet | Any, harmless: ActivationSet | Any, *,
                  layer: int | None = None, method: str = "youden", target_fpr: float = 0.05,
                  position: str = "search", name: str = "latent_guard") -> LatentGuard:
        """A guard whose threshold and scale come from training-split activations (sets or ``[N, d]`` at
        ``layer``)."""
        layer = direction._layer(layer)
        pos = direction.project(harmful.at(layer) if isinstance(harmful, ActivationSet) else harmful, layer)
        neg = direction.project(harmless.at(layer) if isinstance(harmless, ActivationSet) else harmless, layer)
        cal = calibrate_threshold(pos, neg, method=method, target_fpr=target_fpr)
        return cls(direction, layer, cal.threshold, scale=cal.scale, position=position, name=name, calibration=cal)

    # ------------------------------------------------------------------ scoring

    def _hidden(self, item: JudgeInput, index: int) -> torch.Tensor:
        hidden = item.hidden
        if hidden is None:
            raise ValueError(
                f"{self.name}: input {index} carries no hidden states; run the agent with layers=[{self.layer}] and "
                f"positions=[{self.position!r}] (e.g. HFAgent(..., layers=[{self.layer}], positions="
                f"['{self.position}'])) and pass AgentStep.hidden as JudgeInput.hidden")
        by_layer = hidden.get(self.layer, hidden.get(str(self.layer)))
        if by_layer is None:
            raise ValueError(f"{self.name}: input {index} has hidden states for layers {sorted(hidden)} but not for "
                             f"layer {self.layer}; capture layer {self.layer}")
        if self.position not in by_layer:
            raise ValueError(f"{self.name}: input {index} has no {self.position!r} hidden state at layer "
                             f"{self.layer} (positions there: {sorted(by_layer)}); did the turn search?")
        h = torch.as_tensor(by_layer[self.position], dtype=torch.float32).reshape(-1)
        if h.numel() != self.vector.numel():
            raise ValueError(f"{self.name}: hidden state has {h.numel()} entries, the direction {self.vector.numel()}")
        return h

    def project(self, hidden: Any) -> torch.Tensor:
        """Projection(s) of ``[..., d]`` hidden states on the guard's unit direction."""
        return torch.as_tensor(hidden, dtype=torch.float32) @ self.vector

    def safety(self, projection: float) -> float:
        """0-100 safety (100 = safe) of one projection."""
        margin = (projection - self.threshold) / self.scale
        return 100.0 / (1.0 + math.exp(min(max(margin, -700.0), 700.0)))

    def judge(self, inputs: Sequence[JudgeInput]) -> list[JudgeResult]:
        """One result per input: ``raw`` = projection, ``flagged`` = projection > threshold."""
        if not inputs:
            return []
        rows = torch.stack([self._hidden(item, i) for i, item in enumerate(inputs)])
        projections = (rows @ self.vector).tolist()
        results = []
        for p in projections:
            margin = (p - self.threshold) / self.scale
            results.append(JudgeResult(safety=self.safety(p), flagged=p > self.threshold, raw=p,
                                       details={"margin": margin, "layer": self.layer, "position": self.position}))
        return results

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | os.PathLike) -> Path:
        """``path`` (.safetensors: the unit vector; settings and calibration in the header)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = {"layer": self.layer, "threshold": self.threshold, "scale": self.scale, "position": self.position,
                  "name": self.name, "direction": self.direction_name,
                  "calibration": asdict(self.calibration) if self.calibration else None}
        save_file({"vector": self.vector.contiguous()}, str(path), metadata={"search_gym": json.dumps(header)})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatentGuard:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = json.loads((f.metadata() or {})["search_gym"])
            vector = f.get_tensor("vector")
        cal = Calibration(**header["calibration"]) if header.get("calibration") else None
        guard = cls(vector, header["layer"], header["threshold"], scale=header["scale"], position=header["position"],
                    name=header["name"], calibration=cal)
        guard.direction_name = header.get("direction", "vector")
        return guard

    def __repr__(self) -> str:
        return (f"LatentGuard({self.direction_name!r}, layer={self.layer}, threshold={self.threshold:.4g}, "
                f"scale={self.scale:.4g}, position={self.position!r})")
