"""Direction toolkit: the residual-stream direction of harmful search, layer choice, steering, drift, latent guard.

Pipeline (also ``search-gym directions {extract,select,evaluate,steer,drift}``)::

    from search_gym.directions import (ActivationConfig, collect_activations, load_prompts, harmfulness_direction,
                                       val_pair_scores, choose_layer, slice_layer_scores, heldout_rows,
                                       steering_sweep, drift, LatentGuard)

    agent = "smollm2"                                   # or an HFAgent, (model, tokenizer), a folder
    search = ActivationConfig(position="search", prefill="<search>")
    acts = {(side, split): collect_activations(agent, load_prompts(f"matched_{side}", split), search)
            for side in ("harmful", "benign") for split in ("train", "val")}   # style-matched contrast
    d = harmfulness_direction(acts["harmful", "train"], acts["benign", "train"])  # unit vector per layer
    scores = val_pair_scores(d, acts["harmful", "val"], acts["benign", "val"])     # on val matched pairs
    d = d.with_chosen_layer(choose_layer(scores, num_layers=d.meta.get("num_layers")))
    guard = LatentGuard.calibrate(d, acts["harmful", "val"], acts["benign", "val"])  # threshold on val
    rows = heldout_rows()                               # the query-harm judges' held-out split, for reporting
    held = collect_activations(agent, [(r["id"], r["text"]) for r in rows], search)
    per_layer = slice_layer_scores(d, held, rows)       # AUROC per layer: overall, requests, queries, pairs
    sweep = steering_sweep(agent, d, prompts)           # coeff x gap -> projection, refusal, query harm

Modules: :mod:`.activations` (collection and storage), :mod:`.contrasts` (which prompts: style-matched by default,
RL-search-safety's prefill-vs-own-search), :mod:`.directions` (estimators, :class:`Direction`), :mod:`.selection`
(AUROC / Cohen's d / pair accuracy per layer), :mod:`.validation` (the judges' held-out split), :mod:`.steering`,
:mod:`.drift_tracking`, :mod:`.guard` (the command line, ``search-gym directions``, is
:mod:`search_gym.experiments.direction_pipeline`). Names are imported lazily so that ``search-gym --help`` does
not load torch.
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
    "PROMPT_KINDS": "activations",
    "prompt_pairs": "activations",
    "prompt_set_sha256": "activations",
    "render_prompts": "activations",
    "tokenize": "activations",
    # contrasts
    "CONTRASTS": "contrasts",
    "matched_rows": "contrasts",
    "pair_keys": "contrasts",
    "prefill_vs_own_search": "contrasts",
    "twin_indices": "contrasts",
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
    "pair_accuracy": "selection",
    "projection_scores": "selection",
    "plot_layer_scores": "selection",
    "scores_markdown": "selection",
    # validation
    "calibrate_guard": "validation",
    "guard_scores": "validation",
    "heldout_rows": "validation",
    "layer_table_markdown": "validation",
    "slice_layer_scores": "validation",
    "val_pair_scores": "validation",
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
