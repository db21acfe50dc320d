"""Directions in the residual stream: difference of means, PCA of paired differences, save / load.

A :class:`Direction` holds, for every collected layer, the unit vector ``d_L``, the raw norm of the mean
difference, both class means and the mean activation norm (the scales steering is expressed in). Directions are
*per layer*: the direction at layer ``L`` is computed from layer-``L`` activations only, and a projection is
always onto the direction of the same layer.

Three directions are used across search-gym, kept separate on purpose:

- **harmfulness** (:func:`harmfulness_direction`): harmful minus harmless prompts at the ``<search>`` token of
  the search attack (the ``<search>`` prefill). This is what the latent guard reads and the representation-guided
  reward penalises.
- **refusal** (:func:`refusal_direction`): following Arditi et al. 2024 ("Refusal in language models is mediated
  by a single direction"), harmful minus harmless at the last prompt token *without* the search prefill, i.e. the
  token from which the model decides whether to refuse. We use the harmful-vs-harmless contrast rather than
  refused-vs-complied because the bundled SmolLM2-135M hardly ever refuses (there would be no refusal class);
  with a model that does refuse, :func:`behavioural_refusal_direction` contrasts refused and complied harmful
  prompts at the same position. :func:`cosine_per_layer` reports how far the two directions are apart.
- **attack search** (:func:`attack_search_direction`): ``<search>`` prefilled by the attack minus ``<search>``
  written by the model itself, on the same prompts and context.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from search_gym.directions.activations import ActivationSet
from search_gym.files import atomic_output

__all__ = [
    "Direction",
    "attack_search_direction",
    "behavioural_refusal_direction",
    "cosine_per_layer",
    "diff_of_means",
    "harmfulness_direction",
    "pca_direction",
    "refusal_direction",
]

FORMAT_VERSION = 1
_EPS = 1e-12


@dataclass
class Direction:
    """A unit direction per layer with the statistics it came from.

    ``vectors[j]`` is the unit direction at ``layers[j]``; ``raw_norms[j]`` the norm of ``mean_pos - mean_neg``
    there (for a PCA direction, the projection gap of the means on the component); ``act_norms[j]`` the mean
    ``||h||`` over both classes. ``chosen_layer`` is set by layer selection.
    """

    name: str
    layers: tuple[int, ...]
    vectors: torch.Tensor  # [L, d] unit norm
    raw_norms: torch.Tensor  # [L]
    mean_pos: torch.Tensor  # [L, d]
    mean_neg: torch.Tensor  # [L, d]
    act_norms: torch.Tensor  # [L]
    method: str = "diff_of_means"
    meta: dict = field(default_factory=dict)
    chosen_layer: int | None = None

    def __post_init__(self) -> None:
        self.layers = tuple(int(x) for x in self.layers)
        if self.vectors.shape[0] != len(self.layers):
            raise ValueError("one vector per layer expected")

    @property
    def hidden_size(self) -> int:
        return int(self.vectors.shape[1])

    def index(self, layer: int) -> int:
        try:
            return self.layers.index(int(layer))
        except ValueError:
            raise KeyError(f"direction {self.name!r} has no layer {layer} (layers {list(self.layers)})") from None

    def _layer(self, layer: int | None) -> int:
        if layer is not None:
            return int(layer)
        if self.chosen_layer is None:
            raise ValueError(f"direction {self.name!r} has no chosen layer: pass layer= or run layer selection")
        return self.chosen_layer

    def vector(self, layer: int | None = None) -> torch.Tensor:
        """Unit ``[d]`` direction at ``layer`` (default: the chosen layer)."""
        return self.vectors[self.index(self._layer(layer))]

    def midpoint(self, layer: int | None = None) -> float:
        """Projection of the midpoint of the two class means: the natural zero of a centred projection."""
        j = self.index(self._layer(layer))
        return float(((self.mean_pos[j] + self.mean_neg[j]) / 2) @ self.vectors[j])

    def gap(self, layer: int | None = None) -> float:
        """Projection gap ``(mean_pos - mean_neg) . d`` at ``layer``: the natural unit of steering."""
        j = self.index(self._layer(layer))
        return float((self.mean_pos[j] - self.mean_neg[j]) @ self.vectors[j])

    def act_norm(self, layer: int | None = None) -> float:
        return float(self.act_norms[self.index(self._layer(layer))])

    def project(self, acts: Any, layer: int | None = None, *, centered: bool = False) -> torch.Tensor:
        """Projections on the direction.

        - ``acts`` an :class:`ActivationSet` or a ``[N, L, d]`` tensor over ``self.layers``, ``layer`` None:
          ``[N, L]`` (every layer on its own direction).
        - otherwise ``acts`` is ``[..., d]`` taken at ``layer`` (default: chosen), giving ``[...]``.

        ``centered`` subtracts :meth:`midpoint`, so that 0 separates the classes (what ``max(0, h . d)``-style
        penalties need).
        """
        if isinstance(acts, ActivationSet):
            if layer is None:
                rows = torch.stack([acts.at(x) for x in self.layers], dim=1)
                return self._project_all(rows, centered)
            acts = acts.at(layer)
        acts = torch.as_tensor(acts).float()
        if layer is None and acts.ndim == 3 and acts.shape[1] == len(self.layers):
            return self._project_all(acts, centered)
        j = self.index(self._layer(layer))
        out = acts @ self.vectors[j]
        return out - self.midpoint(self.layers[j]) if centered else out

    def _project_all(self, acts: torch.Tensor, centered: bool) -> torch.Tensor:
        out = torch.einsum("nld,ld->nl", acts.float(), self.vectors)
        if centered:
            mid = torch.einsum("ld,ld->l", (self.mean_pos + self.mean_neg) / 2, self.vectors)
            out = out - mid
        return out

    def with_chosen_layer(self, layer: int) -> Direction:
        self.index(layer)
        return Direction(self.name, self.layers, self.vectors, self.raw_norms, self.mean_pos, self.mean_neg,
                         self.act_norms, self.method, dict(self.meta), int(layer))

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | os.PathLike) -> Path:
        """``path`` (.safetensors; tensors + metadata header) and a readable ``path.json``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = {
            "name": self.name,
            "method": self.method,
            "layers": list(self.layers),
            "chosen_layer": self.chosen_layer,
            "hidden_size": self.hidden_size,
            "format_version": FORMAT_VERSION,
            "meta": self.meta,
        }
        tensors = {
            "vectors": self.vectors, "raw_norms": self.raw_norms, "mean_pos": self.mean_pos,
            "mean_neg": self.mean_neg, "act_norms": self.act_norms,
        }
        with atomic_output(path) as tmp:
            save_file({k: v.contiguous().float() for k, v in tensors.items()}, str(tmp),
                      metadata={"search_gym": json.dumps(header)})
        readable = dict(header, raw_norms=[round(float(x), 6) for x in self.raw_norms],
                        act_norms=[round(float(x), 6) for x in self.act_norms])
        side = path.with_name(path.name + ".json")
        side.write_text(json.dumps(readable, indent=1), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Direction:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = json.loads((f.metadata() or {})["search_gym"])
            t = {k: f.get_tensor(k) for k in ("vectors", "raw_norms", "mean_pos", "mean_neg", "act_norms")}
        return cls(header["name"], tuple(header["layers"]), t["vectors"], t["raw_norms"], t["mean_pos"],
                   t["mean_neg"], t["act_norms"], header["method"], header.get("meta", {}), header["chosen_layer"])


# ---------------------------------------------------------------------------------------------- estimators


def _stack(acts: ActivationSet | torch.Tensor, layers: Sequence[int] | None) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``[N, L, d]`` over ``layers`` (default: all of the set's)."""
    if isinstance(acts, ActivationSet):
        layers = tuple(layers) if layers is not None else acts.layers
        return torch.stack([acts.at(x) for x in layers], dim=1).float(), layers
    acts = torch.as_tensor(acts).float()
    if acts.ndim == 2:
        acts = acts[:, None]
    if layers is None:
        layers = tuple(range(acts.shape[1]))
    if len(layers) != acts.shape[1]:
        raise ValueError(f"{acts.shape[1]} layers in the tensor, {len(layers)} layer indices given")
    return acts, tuple(layers)


def _provenance(pos: Any, neg: Any) -> dict:
    meta: dict[str, Any] = {}
    for side, acts in (("pos", pos), ("neg", neg)):
        if isinstance(acts, ActivationSet):
            m = acts.meta
            meta[side] = {k: m.get(k) for k in ("label", "prompt_sha256", "position", "prefill", "template",
                                                 "few_shot", "n")}
            meta.setdefault("model", m.get("model"))
            if m.get("num_layers") is not None:
                meta.setdefault("num_layers", m.get("num_layers"))
    return meta


def diff_of_means(
    pos: ActivationSet | torch.Tensor,
    neg: ActivationSet | torch.Tensor,
    *,
    name: str = "direction",
    layers: Sequence[int] | None = None,
    meta: dict | None = None,
) -> Direction:
    """``mean(pos) - mean(neg)`` per layer, normalised; ``pos`` / ``neg`` are sets or ``[N, L, d]`` tensors."""
    a, layers_a = _stack(pos, layers)
    b, layers_b = _stack(neg, layers)
    if layers_a != layers_b:
        raise ValueError(f"the two sets cover different layers: {layers_a} vs {layers_b}")
    if len(a) == 0 or len(b) == 0:
        raise ValueError("both classes need at least one activation")
    mean_pos, mean_neg = a.mean(0), b.mean(0)
    diff = mean_pos - mean_neg
    norms = diff.norm(dim=-1)
    vectors = diff / norms.clamp_min(_EPS)[:, None]
    act_norms = torch.cat([a, b]).norm(dim=-1).mean(0)
    info = dict(_provenance(pos, neg), n_pos=len(a), n_neg=len(b), **(meta or {}))
    return Direction(name, layers_a, vectors, norms, mean_pos, mean_neg, act_norms, "diff_of_means", info)


def pca_direction(
    pos: ActivationSet | torch.Tensor,
    neg: ActivationSet | torch.Tensor,
    *,
    name: str = "direction",
    paired: bool = False,
    seed: int = 0,
    layers: Sequence[int] | None = None,
    meta: dict | None = None,
) -> Direction:
    """First principal component of paired differences ``pos_i - neg_i`` per layer (RepE-style).

    ``paired``: row ``i`` of both sets belongs together (the same prompt under two conditions); otherwise rows
    are paired at random (seeded) and the shorter set sets the count. Each difference's sign is flipped at random
    before the PCA, so that the component follows the *spread* of the differences rather than their mean; the
    result is then oriented towards ``mean(pos) - mean(neg)``.
    """
    a, layers_a = _stack(pos, layers)
    b, layers_b = _stack(neg, layers)
    if layers_a != layers_b:
        raise ValueError(f"the two sets cover different layers: {layers_a} vs {layers_b}")
    generator = torch.Generator().manual_seed(seed)
    if paired:
        if len(a) != len(b):
            raise ValueError(f"paired sets need equal sizes, got {len(a)} and {len(b)}")
        ia = ib = torch.arange(len(a))
    else:
        n = min(len(a), len(b))
        ia = torch.randperm(len(a), generator=generator)[:n]
        ib = torch.randperm(len(b), generator=generator)[:n]
    if len(ia) < 2:
        raise ValueError("PCA needs at least two pairs")
    diffs = a[ia] - b[ib]  # [P, L, d]
    signs = torch.randint(0, 2, (len(ia),), generator=generator).float() * 2 - 1
    flipped = diffs * signs[:, None, None]
    mean_pos, mean_neg = a.mean(0), b.mean(0)
    mean_diff = mean_pos - mean_neg
    vectors = []
    for j in range(len(layers_a)):
        x = flipped[:, j]
        x = x - x.mean(0)
        # the leading right singular vector; torch.linalg.svd is exact and fast at these sizes
        _, _, vh = torch.linalg.svd(x, full_matrices=False)
        v = vh[0]
        if float(v @ mean_diff[j]) < 0:
            v = -v
        vectors.append(v / v.norm().clamp_min(_EPS))
    vectors_t = torch.stack(vectors)
    gaps = torch.einsum("ld,ld->l", mean_diff, vectors_t)
    act_norms = torch.cat([a, b]).norm(dim=-1).mean(0)
    info = dict(_provenance(pos, neg), n_pos=len(a), n_neg=len(b), pairs=len(ia), paired=paired, **(meta or {}))
    return Direction(name, layers_a, vectors_t, gaps, mean_pos, mean_neg, act_norms, "pca_paired", info)


def _estimate(pos, neg, name: str, method: str, meta: dict, **kw) -> Direction:
    if method == "diff_of_means":
        return diff_of_means(pos, neg, name=name, meta=meta)
    if method == "pca":
        return pca_direction(pos, neg, name=name, meta=meta, **kw)
    raise ValueError(f"method must be 'diff_of_means' or 'pca', not {method!r}")


def _check_position(acts: Any, position: str, what: str) -> None:
    if isinstance(acts, ActivationSet) and acts.meta.get("position") not in (None, position):
        raise ValueError(f"the {what} direction is read at position {position!r}, these activations are at "
                         f"{acts.meta.get('position')!r}")


def harmfulness_direction(harmful: ActivationSet | torch.Tensor, harmless: ActivationSet | torch.Tensor, *,
                          method: str = "diff_of_means", **kw: Any) -> Direction:
    """Harmful minus harmless at the prefilled ``<search>`` token (see the module docstring)."""
    _check_position(harmful, "search", "harmfulness")
    _check_position(harmless, "search", "harmfulness")
    return _estimate(harmful, harmless, "harmfulness", method, {"contrast": "harmful - harmless @ search"}, **kw)


def refusal_direction(harmful: ActivationSet | torch.Tensor, harmless: ActivationSet | torch.Tensor, *,
                      method: str = "diff_of_means", **kw: Any) -> Direction:
    """Arditi et al. 2024: harmful minus harmless at the last prompt token, no prefill."""
    _check_position(harmful, "last_prompt", "refusal")
    _check_position(harmless, "last_prompt", "refusal")
    for acts in (harmful, harmless):
        if isinstance(acts, ActivationSet) and acts.meta.get("prefill"):
            raise ValueError("the refusal direction is read before the assistant writes anything: use prefill=''")
    return _estimate(harmful, harmless, "refusal", method,
                     {"contrast": "harmful - harmless @ last_prompt (no prefill), Arditi et al. 2024"}, **kw)


def behavioural_refusal_direction(harmful: ActivationSet, refused: Sequence[bool]) -> Direction:
    """Refused minus complied harmful prompts at the last prompt token (for models that do refuse).

    ``refused[i]`` says whether the response to ``harmful.ids[i]`` was a refusal (e.g. from a refusal judge).
    """
    refused = [bool(r) for r in refused]
    if len(refused) != len(harmful):
        raise ValueError(f"{len(refused)} refusal labels for {len(harmful)} activations")
    yes = [i for i, r in enumerate(refused) if r]
    no = [i for i, r in enumerate(refused) if not r]
    if not yes or not no:
        raise ValueError(f"need both refused and complied prompts (got {len(yes)} refused, {len(no)} complied)")
    return diff_of_means(harmful.subset(yes), harmful.subset(no), name="refusal",
                         meta={"contrast": "refused - complied harmful @ last_prompt"})


def attack_search_direction(attack: ActivationSet, natural: ActivationSet, *, method: str = "diff_of_means",
                            **kw: Any) -> Direction:
    """``<search>`` prefilled by the attack minus ``<search>`` written by the model, on the prompts present in
    both sets (paired by id, so a PCA direction can use ``paired=True``)."""
    common = [i for i in natural.ids if i in set(attack.ids)]
    if not common:
        raise ValueError("no prompt has both an attack and a natural search")
    a_rows = {pid: k for k, pid in enumerate(attack.ids)}
    n_rows = {pid: k for k, pid in enumerate(natural.ids)}
    a = attack.subset([a_rows[i] for i in common])
    n = natural.subset([n_rows[i] for i in common])
    if method == "pca":
        kw.setdefault("paired", True)
    return _estimate(a, n, "attack_search", method, {"contrast": "attack <search> - natural <search>",
                                                     "paired_prompts": len(common)}, **kw)


def cosine_per_layer(a: Direction, b: Direction) -> dict[int, float]:
    """Cosine between two directions at every layer both have."""
    return {layer: float(a.vector(layer) @ b.vector(layer)) for layer in a.layers if layer in b.layers}
