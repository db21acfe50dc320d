"""Reward functions in verl's signature: ``compute_score(data_source, solution_str, ground_truth, extra_info=None)``.

verl's reward loop (``reward.reward_manager.name=naive``, the default) decodes each response and calls
``compute_score(data_source=..., solution_str=..., ground_truth=..., extra_info=..., **reward_kwargs)``; a dict
result gives the score under ``"score"`` and every other key is logged as ``reward_extra_info``. Point verl at
:func:`compute_score` with::

    reward.custom_reward_function.path=pkg://search_gym.integrations.verl.reward
    reward.custom_reward_function.name=compute_score
    +reward.custom_reward_function.reward_kwargs.safety_weight=0.5     # optional terms, see compute_score

``ground_truth`` is the ``reward_model.ground_truth`` column that ``search-gym export verl`` writes (Search-R1's
``{"target": [gold answers]}``; a plain list or string is read too).

The answer of a response is read as the environment reads it: the first ``<answer>...</answer>`` of the response
(the env ends the episode at the first valid answer; Search-R1's reward takes the last one, and counts the
prompt's Beijing example, see the README's parity section), scored with the same SQuAD normalisation and exact
match as :mod:`search_gym.rewards`. When the rollout came from :class:`~search_gym.integrations.verl.agent_loop.\
SearchGymAgentLoop`, ``extra_info["search_gym_episode"]`` holds the environment's own outcome (its answer, its
reward metric, invalid actions, the safety judges' episode summary) and is used instead of re-reading the text.
When it came from :class:`~search_gym.integrations.verl.tool.SearchGymTool`, ``extra_info["search_gym_tool_calls"]``
holds the query judges' scores of every search the tool ran.

The representation penalty of ``search_gym.trainers.shaping`` is not offered here: it needs the hidden states of a
frozen reader model over the episode's tokens, and verl's reward functions receive decoded strings in CPU reward
workers; see docs/scaling_out.md for how it would run as a reward-model worker.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from search_gym.envs.protocol import INVALID_ACTION_MESSAGE, parse_tagged_action
from search_gym.rewards import exact_match, score_answer

#: The keys of :func:`compute_score`'s result, always all present (verl stacks them into arrays per batch).
SCORE_KEYS = ("score", "em", "task_reward", "format", "safety_penalty", "search_safety", "num_searches")

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_SEARCH = re.compile(r"<search>(.*?)</search>", re.DOTALL)
_INFORMATION = re.compile(r"<information>.*?</information>", re.DOTALL)
_STRICT_LIMITS = {"max_chars": 16384, "max_tags": 8}
_AGGREGATES = ("mean", "min", "first")


def golden_answers(ground_truth: Any) -> list[str]:
    """The gold answers of a ``reward_model.ground_truth`` value: ``{"target": [...]}`` (Search-R1 / verl), a list,
    a numpy array or a single string."""
    if isinstance(ground_truth, Mapping):
        ground_truth = ground_truth.get("target", ground_truth.get("golden_answers", []))
    if ground_truth is None:
        return []
    if isinstance(ground_truth, str):
        return [ground_truth]
    return [str(g) for g in list(ground_truth)]


def extract_answer(solution_str: str) -> str | None:
    """The stripped content of the first ``<answer>...</answer>`` of a response, or None."""
    match = _ANSWER.search(str(solution_str))
    return match.group(1).strip() if match else None


def extract_queries(solution_str: str) -> list[str]:
    """The stripped contents of every ``<search>...</search>`` of a response, in order."""
    return [q.strip() for q in _SEARCH.findall(str(solution_str))]


def em_score(solution_str: str, ground_truth: Any) -> float:
    """1.0 when the response's answer exactly matches a gold answer (:func:`search_gym.rewards.exact_match`), else
    0.0; a response without an answer scores 0."""
    answer = extract_answer(solution_str)
    return 0.0 if answer is None else exact_match(answer, golden_answers(ground_truth))


def answer_score(solution_str: str, ground_truth: Any, metric: str = "em") -> float:
    """The response's answer scored with the env's reward metric (``"em"``, ``"f1"``, ``"substring_em"``)."""
    answer = extract_answer(solution_str)
    return 0.0 if answer is None else score_answer(answer, golden_answers(ground_truth), metric)


def format_score(solution_str: str) -> float:
    """1.0 when the response follows the tags protocol throughout, else 0.0: no correction message, and the text
    between the environment's information blocks is a sequence of valid searches ending in a valid answer, each
    turn valid under the env's strict parser (:func:`search_gym.envs.protocol.parse_tagged_action`). This is
    ``charts/format_valid`` of :func:`search_gym.rollout.batch_metrics` (answered, no invalid action), read from
    the text."""
    text = str(solution_str)
    if INVALID_ACTION_MESSAGE.strip() in text:
        return 0.0
    turns = [t for t in _INFORMATION.split(text)]
    if not turns:
        return 0.0
    for k, turn in enumerate(turns):
        parsed = parse_tagged_action(turn, **_STRICT_LIMITS)
        want = "answer" if k == len(turns) - 1 else "search"
        if parsed.kind != want:
            return 0.0
    return 1.0


def safety_penalty_from_scores(scores: Sequence[float | None], aggregate: str = "mean") -> float | None:
    """``-(100 - s) / 100`` in [-1, 0] for query-safety scores (0-100, 100 = safe) aggregated by ``mean``, ``min``
    or ``first``: the same penalty as the TRL bridge's ``SafetyPenalty``. No score: None."""
    if aggregate not in _AGGREGATES:
        raise ValueError(f"aggregate must be one of {_AGGREGATES}, not {aggregate!r}")
    values = [float(s) for s in scores if s is not None and not math.isnan(float(s))]
    if not values:
        return None
    value = {"mean": sum(values) / len(values), "min": min(values), "first": values[0]}[aggregate]
    return -(100.0 - value) / 100.0


def _judge_pick(scores: Any, judge: str | None) -> Any:
    if not isinstance(scores, Mapping) or not scores:
        return None
    return scores.get(judge) if judge is not None else next(iter(scores.values()))


def query_safety(extra_info: Mapping | None, solution_str: str, *, judge: str | None = None,
                 aggregate: str = "mean", judge_text: bool = False) -> tuple[float | None, int]:
    """(aggregated query safety 0-100 or None, number of searches) of one rollout.

    Read from, in order: the agent loop's episode summary (``extra_info["search_gym_episode"]["safety"]``), the
    tool's per-call scores (``extra_info["search_gym_tool_calls"]``), and, with ``judge_text=True``, the
    queries of ``solution_str`` judged here by ``judge`` (default the query classifier; this loads it in the
    reward worker). A rollout without a search has no score and 0 searches.
    """
    extra_info = extra_info or {}
    episode = extra_info.get("search_gym_episode")
    if isinstance(episode, Mapping):
        searches = int(episode.get("num_searches") or 0)
        summary = episode.get("safety") or {}
        key = {"mean": "query_safety_mean", "min": "query_safety_min", "first": "query_safety_first"}[aggregate]
        value = _judge_pick(summary.get(key), judge)
        return (None if value is None else float(value)), searches
    calls = extra_info.get("search_gym_tool_calls")
    if calls is not None and len(calls):
        scores = [_judge_pick(call.get("query_safety"), judge) for call in calls]
        penalty = safety_penalty_from_scores(scores, aggregate)
        return (None if penalty is None else 100.0 + 100.0 * penalty), len(calls)
    queries = extract_queries(solution_str)
    if not queries or not judge_text:
        return None, len(queries)
    from search_gym.safety.base import JudgeInput
    from search_gym.safety.instrument import shared_judge

    request = str(extra_info.get("question") or "")
    results = shared_judge(judge or "query_classifier").judge([JudgeInput(q[:4096], request) for q in queries])
    penalty = safety_penalty_from_scores([r.safety for r in results], aggregate)
    return (None if penalty is None else 100.0 + 100.0 * penalty), len(queries)


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: Mapping | None = None, *,
                  metric: str = "em", format_weight: float = 0.0, safety_weight: float = 0.0,
                  safety_aggregate: str = "mean", safety_judge: str | None = None, judge_text: bool = False,
                  **_: Any) -> dict[str, float]:
    """search-gym's reward for one verl rollout: ``task + format_weight * format + safety_weight * penalty``.

    - ``task``: the env's reward metric on the answer (``metric``: ``"em"`` default, ``"f1"``, ``"substring_em"``);
      with the agent loop's episode the env's own reward is used (its answer, its metric);
    - ``format``: :func:`format_score` (from the episode: answered and no invalid action);
    - ``penalty``: :func:`safety_penalty_from_scores` of the rollout's query safety (:func:`query_safety`), 0 when it
      made no search or no judge scored it.

    Extra keyword arguments are verl's (``reward_router_address`` ...) and ignored. Returns a dict with the keys of
    :data:`SCORE_KEYS` (``search_safety`` is 100 for a rollout without a search, as in ``episode_metrics``, and NaN
    when its searches have no score).
    """
    extra_info = extra_info or {}
    episode = extra_info.get("search_gym_episode")
    golds = golden_answers(ground_truth)
    if isinstance(episode, Mapping):
        answer = episode.get("answer")
        em = float(bool(episode.get("correct"))) if golds else 0.0
        task = float(episode.get("task_reward") or 0.0)
        fmt = float(bool(episode.get("answered")) and int(episode.get("invalid_actions") or 0) == 0)
        if answer is not None and metric != episode.get("reward_metric", metric):
            task = score_answer(str(answer), golds, metric) if golds else 0.0
    else:
        em = em_score(solution_str, golds) if golds else 0.0
        task = answer_score(solution_str, golds, metric) if golds else 0.0
        fmt = format_score(solution_str)
    safety, searches = query_safety(extra_info, solution_str, judge=safety_judge, aggregate=safety_aggregate,
                                    judge_text=judge_text)
    penalty = 0.0 if safety is None else -(100.0 - safety) / 100.0
    if searches == 0:
        search_safety = 100.0
    else:
        search_safety = float("nan") if safety is None else float(safety)
    score = task + float(format_weight) * fmt + float(safety_weight) * penalty
    return {"score": float(score), "em": float(em), "task_reward": float(task), "format": float(fmt),
            "safety_penalty": float(penalty), "search_safety": search_safety, "num_searches": float(searches)}
