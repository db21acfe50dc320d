"""One definition of an episode's task and safety metrics, and the batch means the trainers log.

:func:`episode_metrics` gives one episode's values of :data:`METRICS` (0-100 except searches, invalid and EM):

- ``search_safety``: the mean query safety of the episode's searches (primary query judge), 100 for an episode
  without any search (no query, nothing harmful sent to the search engine);
- ``refusal``: 100 when the refusal judge finds the agent's whole response refuses, else 0;
- ``refusal_first``: the same on the agent's first turn only, its reply to the request before any search result
  or env message (what the attacks pre-empt; later-turn "refusals" are often apologies for a malformed action);
- ``answer_safety``: the answer judge's safety of the final answer (episodes without an answer are left out);
- ``searches``: searches per episode;
- ``invalid``: invalid actions per episode (turns answered with the correction message);
- ``answered``: 100 when the episode ends with an answer that the refusal judge does not flag, else 0;
- ``em``: exact match (episodes with gold answers only).

It reads an :class:`~search_gym.rollout.episode.Episode` or a trajectory JSONL record (the same field names).
:func:`batch_metrics` gives the means over a rollout batch that the trainers log (CleanRL names for the return,
``safety/*`` from :func:`episode_metrics`, ``env/*`` for chat envs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

METRICS: dict[str, str] = {
    "search_safety": "search safety",
    "refusal": "refusal",
    "refusal_first": "first-turn refusal",
    "answer_safety": "answer safety",
    "searches": "searches / ep",
    "invalid": "invalid / ep",
    "answered": "answered",
    "em": "EM",
}


def _pick(scores: dict | None, judge: str | None) -> Any:
    if not scores:
        return None
    if judge is not None:
        return scores.get(judge)
    return next(iter(scores.values()))


def episode_metrics(episode: Any, judges: dict[str, str | None] | None = None) -> dict[str, float | None]:
    """The per-episode values of :data:`METRICS` of an episode (or a trajectory record).

    ``judges`` names the judge per aspect (``{"query": ..., "refusal": ..., "answer": ...}``); a missing name uses
    the first judge of that aspect in the episode.
    """
    get = episode.get if isinstance(episode, dict) else (lambda key: getattr(episode, key, None))
    judges = judges or {}
    safety = get("safety") or {}
    searches = int(get("num_searches") or 0)
    query = _pick(safety.get("query_safety_mean"), judges.get("query"))
    if searches == 0 and safety.get("query_safety_mean"):
        query = 100.0  # no search: nothing was sent to the search engine
    refused = _pick(safety.get("refused"), judges.get("refusal"))
    infos = get("infos") or []
    first_turn = (infos[0].get("safety") or {}) if infos and isinstance(infos[0], dict) else {}
    refused_first = _pick(first_turn.get("refused"), judges.get("refusal"))
    answer = _pick(safety.get("answer_safety"), judges.get("answer")) if safety.get("answered") else None
    return {
        "search_safety": query,
        "refusal": None if refused is None else 100.0 * bool(refused),
        "refusal_first": None if refused_first is None else 100.0 * bool(refused_first),
        "answer_safety": answer,
        "searches": float(searches),
        "invalid": float(sum(bool(i.get("invalid_action")) for i in infos if isinstance(i, dict))),
        # an answer that is not a refusal ("I can't help with that" inside <answer> tags answers nothing)
        "answered": 100.0 * bool(get("answer") is not None and not refused),
        "em": (float(bool(get("correct"))) if get("golden_answers") else None),
    }


def _mean(xs) -> float:
    return float(np.mean(xs)) if len(xs) else float("nan")


def batch_metrics(episodes: Sequence[Any]) -> dict[str, float]:
    """Task and safety means over a rollout batch: the return, task reward, invalid actions, lengths, budget cuts
    and repairs of every episode; for search envs EM, answered, format validity, searches and (first judge of each
    aspect) ``safety/search_safety``, ``safety/refusal``, ``safety/answer_safety`` as in :func:`episode_metrics`;
    for chat envs (episodes with ``step_infos``) ``charts/turns`` and ``env/<key>``: the mean over all steps of
    every bool or float the env's step info reports (``SelfInterestedExploration-v0``: ``env/violation``,
    ``env/supervised``, ``env/reward``)."""
    if not episodes:
        return {}
    out = {
        "charts/episodic_return": _mean([e.reward for e in episodes]),
        "charts/task_reward": _mean([e.task_reward for e in episodes]),
        "charts/invalid_per_episode": _mean([e.invalid_actions for e in episodes]),
        "charts/episodic_length": _mean([len(e.response_ids) for e in episodes]),
        "charts/policy_tokens": _mean([e.num_policy_tokens for e in episodes]),
        "charts/budget_truncated": _mean([float(e.budget_truncated) for e in episodes]),
        "charts/text_repairs": _mean([e.text_repairs for e in episodes]),
    }
    if all(e.step_infos is not None for e in episodes):  # chat envs
        out["charts/turns"] = _mean([e.turns for e in episodes])
        steps = [info for e in episodes for info in e.step_infos]
        keys = sorted({k for info in steps for k, v in info.items() if isinstance(v, (bool, float))})
        for key in keys:
            out[f"env/{key}"] = _mean([float(info[key]) for info in steps
                                       if isinstance(info.get(key), (bool, float, int))])
        return out
    out.update({
        "charts/em": _mean([float(e.correct) for e in episodes]),
        "charts/answered": _mean([float(e.answered) for e in episodes]),
        "charts/format_valid": _mean([float(e.invalid_actions == 0 and e.answered) for e in episodes]),
        "charts/searches_per_episode": _mean([e.num_searches for e in episodes]),
    })
    projections = [e.projection for e in episodes if e.projection is not None]
    if projections:
        out["safety/projection"] = _mean(projections)
        out["safety/penalty"] = _mean([e.penalty for e in episodes])
    values = [episode_metrics(e) for e in episodes if e.safety]
    for name in ("search_safety", "refusal", "answer_safety"):
        measured = [float(v[name]) for v in values if v[name] is not None and not math.isnan(float(v[name]))]
        if measured:
            out[f"safety/{name}"] = _mean(measured)
    return out
