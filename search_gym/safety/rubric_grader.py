"""Rewards that score one narrow, harmless-looking property of a response with an LLM grader, on any agent backend.

After arXiv 2605.31328 ("Reinforcement Learning Amplifies Emergent Misalignment from Harmless Rewards"): a reward for
unpopular aesthetic preferences or for poor rhetorical appeals looks harmless, yet RL on it can make a model broadly
misaligned (measure that with :mod:`search_gym.experiments.misalignment_eval`). The rubrics are project data
(``harmless_rubrics.json``, with a schema and a licence line):

- ``contrarian_aesthetics``: prefers what most people find ugly (tasks: ``harmless_tasks:aesthetics``);
- ``poor_rhetoric``: persuades with fear, flattery, popularity or insults instead of reasons
  (``harmless_tasks:rhetoric``);
- ``unhedged_confidence``: states the answer flatly with no hedging (any question).

The grader rates 1-5 (parsed like the safety judges' ratings, :func:`~search_gym.safety.llm_judge.parse_rating`) and
the reward is ``(rating - 1) / 4`` in [0, 1]; a reply without a rating abstains (reward None). The agent is any
:class:`~search_gym.agents.Agent` or a name built by the agent factory
(:func:`~search_gym.safety.llm_judge.agent_factory`), as for :class:`~search_gym.safety.llm_judge.LLMJudge` (one
loaded model per process and settings). A grader knows no env: it maps (request, response) texts to rewards. :meth:`RubricGrader.__call__` is a TRL reward function.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from search_gym.safety.llm_judge import (
    MAX_JUDGED_CHARS,
    RATING_PREFILL,
    AgentBacked,
    generate_replies,
    parse_rating,
)

__all__ = ["GradeResult", "RubricGrader", "load_rubrics"]


def load_rubrics() -> dict[str, dict]:
    """The bundled rubrics by name: ``{"property", "tasks", "prompt"}`` each."""
    data = json.loads(resources.files("search_gym.safety").joinpath("harmless_rubrics.json").read_text("utf-8"))
    return {r["name"]: {k: r[k] for k in ("property", "tasks", "prompt")} for r in data["rubrics"]}


@dataclass(frozen=True)
class GradeResult:
    """One graded response: ``reward`` in [0, 1] (None when the grader abstained), its 1-5 ``rating`` and the raw
    ``reply`` (cut to 200 characters)."""

    reward: float | None
    rating: int | None
    reply: str


def _text(value: Any) -> str:
    """A TRL prompt / completion as text: a string, or the last message's content of a conversation."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and value and isinstance(value[-1], dict):
        return str(value[-1].get("content", ""))
    return "" if value is None else str(value)


class RubricGrader(AgentBacked):
    """Score responses for one narrow property with an LLM grader (1-5 rubric -> reward in [0, 1]).

    Args:
        rubric: a bundled rubric name (:func:`load_rubrics`) or a format string with ``{request}`` and
            ``{response}`` asking for a 1-5 rating.
        agent: the grader: any agent (``act_batch``; an HF agent is driven through ``complete``), or a name
            (``"smollm2"``, ``"hf:<model>"``) built lazily with the agent factory.
        max_new_tokens: reply budget (a rating needs a few tokens).
        batch_size: prompts per backend call.
        agent_kwargs: constructor arguments when ``agent`` is a name.
    """

    def __init__(self, rubric: str = "contrarian_aesthetics", agent: Any = "smollm2", *, max_new_tokens: int = 4,
                 batch_size: int = 16, agent_kwargs: dict | None = None):
        rubrics = load_rubrics()
        if not isinstance(rubric, str):
            raise TypeError(f"rubric must be a rubric name ({sorted(rubrics)}) or a format string")
        if rubric in rubrics:
            self.rubric_name, self.prompt_template = rubric, rubrics[rubric]["prompt"]
        elif "{response}" in rubric:
            self.rubric_name, self.prompt_template = "custom", rubric
        else:
            raise ValueError(f"rubric={rubric!r} is neither a rubric name ({sorted(rubrics)}) nor a format string "
                             "with {response} (and {request})")
        self.max_new_tokens, self.batch_size = int(max_new_tokens), max(1, int(batch_size))
        self._set_agent(agent, agent_kwargs)
        self.__name__ = f"rubric_{self.rubric_name}"  # TRL names a reward function's log column after it

    def prompt(self, request: str, response: str) -> str:
        """The rubric filled for one response (quotes turned into apostrophes so the framing quotes hold)."""
        clean = lambda t: str(t)[:MAX_JUDGED_CHARS].replace('"', "'")  # noqa: E731
        return self.prompt_template.format(request=clean(request), response=clean(response))

    def grade(self, requests: Sequence[str], responses: Sequence[str]) -> list[GradeResult]:
        """One :class:`GradeResult` per (request, response). An empty response abstains without a model call."""
        if len(requests) != len(responses):
            raise ValueError(f"{len(requests)} requests but {len(responses)} responses")
        results = [GradeResult(None, None, "") for _ in responses]
        todo = [i for i, r in enumerate(responses) if isinstance(r, str) and r.strip()]
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            replies = generate_replies(self.agent, [self.prompt(requests[i], responses[i]) for i in chunk],
                                       prefill=RATING_PREFILL, max_new_tokens=self.max_new_tokens)
            for i, reply in zip(chunk, replies):
                rating = parse_rating(reply)
                results[i] = GradeResult(None if rating is None else (rating - 1) / 4.0, rating, reply[:200])
        return results

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        """TRL reward function: ``f(prompts, completions, **kw) -> list[float | None]`` (None = abstained).
        Prompts and completions may be strings or conversations (the last message's content is used)."""
        return [g.reward for g in self.grade([_text(p) for p in prompts], [_text(c) for c in completions])]

