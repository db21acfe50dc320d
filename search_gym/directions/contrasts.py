"""Which prompts a direction contrasts: style-matched benign prompts by default, and RL-search-safety's own contrast.

A harmfulness direction is a difference of means, so it learns whatever differs between its two prompt sets. The
first default contrasted harmful requests (mostly imperatives: "Write a tutorial on how to ...") with Wikipedia
trivia questions and learned the *form* of a request: on the SmolLM2-135M it separated harmful from QA at AUROC
0.997 and ranked matched harmful / benign pairs below chance (docs/directions.md). The contrasts here, all built
from the judges' data (:func:`search_gym.corpora.judge_data.judge_mixture`, split by pair / topic into ``train``,
``val`` and ``heldout`` exactly as the query-harm judge is), are:

=====================  ==========================================================================================
``matched`` (default)  harmful requests (the bundled harmful prompts and the harmful twins of the project's
                       domain-matched pairs) minus benign requests *in the same forms* (the benign twins, the
                       hand-written benign requests and the templated ones: "Give step-by-step instructions to
                       ...", "Write an essay about <title>."). :func:`matched_rows`, ``load_prompts("matched_*")``.
``qa``                 the first default: harmful prompts minus Wikipedia questions (kept for comparison).
``benign``             harmful prompts minus the benign-but-edgy prompts.
``prefill_vs_own``     RL-search-safety's *search-query direction* (``interp/extract/extract_search_query_d.py``):
                       on the same harmful prompts, the ``<search>`` prefilled by the attack minus the first
                       ``<search>`` the model wrote itself (:func:`prefill_vs_own_search`).
=====================  ==========================================================================================

Layer choice and the latent guard's threshold use ``train`` / ``val`` only; matched pairs (:func:`twin_indices`)
are the validation that matters, because only twins that share a topic and a form say whether a direction reads
harm rather than style. ``heldout`` is for reporting (:mod:`search_gym.directions.validation`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

# The rows of the matched contrast are chosen below the directions (activations' load_prompts reads them too)
from search_gym.corpora.judge_data import (
    MATCHED_BENIGN_SETS,
    MATCHED_HARMFUL_SETS,
    judge_rows,
    load_judge_rows,
    matched_rows,
)

__all__ = [
    "CONTRASTS",
    "MATCHED_BENIGN_SETS",
    "MATCHED_HARMFUL_SETS",
    "judge_rows",
    "matched_rows",
    "pair_keys",
    "prefill_vs_own_search",
    "twin_indices",
]

CONTRASTS = ("matched", "qa", "benign", "prefill_vs_own")


@functools.lru_cache(maxsize=1)
def _all_pair_keys() -> dict[str, str]:
    return {r["id"]: f"{r['pair']}/{r['kind']}" for r in load_judge_rows(sets=["pairs"]) if r.get("pair")}


def pair_keys(ids: Iterable[str]) -> list[str]:
    """Pair key (``"<pair>/<kind>"``, so a request twin never pairs with a query twin) of each row id; ``""`` for
    rows that are not one of the judge data's matched pairs."""
    keys = _all_pair_keys()
    return [keys.get(str(i), "") for i in ids]


def twin_indices(pos_ids: Sequence[str], neg_ids: Sequence[str]) -> tuple[list[int], list[int]]:
    """Row indices ``(i_pos, i_neg)`` of the complete matched pairs between a harmful and a benign id list, aligned
    (``pos_ids[i_pos[k]]`` and ``neg_ids[i_neg[k]]`` are twins), ordered by pair key."""
    pos = {k: i for i, k in enumerate(pair_keys(pos_ids)) if k}
    neg = {k: i for i, k in enumerate(pair_keys(neg_ids)) if k}
    common = sorted(set(pos) & set(neg))
    return [pos[k] for k in common], [neg[k] for k in common]


def prefill_vs_own_search(
    agent: Any,
    prompts: Iterable[Any],
    *,
    template: str = "search_r1",
    few_shot: int = 2,
    layers: Any = "all",
    max_new_tokens: int = 64,
    batch_size: int = 8,
    label: str = "harmful",
) -> tuple[Any, Any]:
    """RL-search-safety's contrast on ``prompts`` (harmful ones): ``(attack, own)`` activation sets on the prompts
    where the model searched by itself, row ``k`` of both the same prompt.

    ``own``: greedy generation with ``few_shot`` worked examples (small instruct models never use the tags
    zero-shot; RL-search-safety's 3B-14B models do, so pass ``few_shot=0`` for them) until the model writes its
    first ``<search>``, read at the tag's last token; prompts where it answers or runs out of tokens first are
    dropped (their ids in ``own.meta["missing"]``). ``attack``: the same rendered context with ``<search>``
    prefilled right after the generation prompt. :func:`~search_gym.directions.directions.attack_search_direction`
    turns the pair into the direction (attack minus own). Layers follow search-gym's convention (block ``L`` =
    HF ``hidden_states[L + 1]``; RL-search-safety indexes ``hidden_states`` directly, one lower).
    """
    from search_gym.directions.activations import collect_activations, collect_natural_search, hf_parts, prompt_pairs

    parts = hf_parts(agent)
    if parts is None:
        raise ValueError("the prefill-vs-own-search contrast needs an agent with an HF model (it generates)")
    pairs = prompt_pairs(prompts)
    own = collect_natural_search(parts, pairs, template=template, few_shot=few_shot, layers=layers,
                                 max_new_tokens=max_new_tokens, batch_size=batch_size, label=f"{label}/own_search")
    kept = set(own.ids)
    attack = collect_activations(parts, [p for p in pairs if p[0] in kept], template=template, few_shot=few_shot,
                                 layers=list(own.layers) if own.layers else layers, batch_size=batch_size,
                                 label=f"{label}/attack_search")
    if attack.ids != own.ids:  # both keep the prompts' order; this guards the pairing the direction relies on
        raise RuntimeError("attack and own-search activations are not aligned")
    return attack, own
