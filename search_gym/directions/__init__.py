"""Direction toolkit: the residual-stream direction of harmful search, layer choice, steering, drift, latent guard.

Pipeline (also ``search-gym directions {extract,select,steer,drift}``)::

    from search_gym.directions import (ActivationConfig, collect_activations, load_prompts,
                                       harmfulness_direction, refusal_direction, layer_scores, choose_layer,
                                       steering_sweep, drift, LatentGuard)

    agent = "smollm2"                                   # or an HFAgent, (model, tokenizer), a folder
    search = ActivationConfig(position="search", prefill="<search>")
    harmful = collect_activations(agent, load_prompts("harmful", "train", 128), search, out="acts/h.safetensors")
    harmless = collect_activations(agent, load_prompts("qa", "train", 128), search, out="acts/q.safetensors")
    d = harmfulness_direction(harmful, harmless)        # unit vector per layer + norms + class means
    scores = layer_scores(d, harmful_heldout, harmless_heldout)
    d = d.with_chosen_layer(choose_layer(scores, num_layers=d.meta.get("num_layers")))
    sweep = steering_sweep(agent, d, prompts)           # coeff x gap -> projection, refusal, query harm
    guard = LatentGuard.calibrate(d, harmful, harmless) # a query Judge reading AgentStep.hidden

Modules: :mod:`.activations` (collection and storage), :mod:`.directions` (estimators, :class:`Direction`),
:mod:`.selection` (AUROC / Cohen's d per layer), :mod:`.steering`, :mod:`.drift_tracking`, :mod:`.guard`, :mod:`.cli`.
Names are imported lazily so that ``search-gym --help`` does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    # activations
    "ActivationConfig": "activations",
    "ActivationSet": "activations",
    "HFParts": "activations",
    "collect_activations": "activations",
    "collect_from_ids": "activations",
    "collect_natural_search": "activations",
    "hf_parts": "activations",
    "load_prompts": "activations",
    "model_fingerprint": "activations",
    "position_index": "activations",
    "prompt_pairs": "activations",
    "prompt_set_sha256": "activations",
    "render_prompts": "activations",
    "tokenize": "activations",
    # directions
    "Direction": "directions",
    "attack_search_direction": "directions",
    "behavioural_refusal_direction": "directions",
    "cosine_per_layer": "directions",
    "diff_of_means": "directions",
    "harmfulness_direction": "directions",
    "pca_direction": "directions",
    "refusal_direction": "directions",
    # selection
    "LayerScore": "selection",
    "auroc": "selection",
    "choose_layer": "selection",
    "cohens_d": "selection",
    "layer_scores": "selection",
    "mean_scores": "selection",
    "plot_layer_scores": "selection",
    "scores_markdown": "selection",
    # steering
    "SteeringConfig": "steering",
    "SweepResult": "steering",
    "is_refusal": "steering",
    "projections_under_steering": "steering",
    "steering_sweep": "steering",
    # drift
    "DriftRow": "drift_tracking",
    "DriftTable": "drift_tracking",
    "drift": "drift_tracking",
    # guard
    "Calibration": "guard",
    "LatentGuard": "guard",
    "calibrate_threshold": "guard",
    # cli
    "add_directions_parser": "cli",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
