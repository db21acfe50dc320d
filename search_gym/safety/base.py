"""The Judge protocol: every safety judge scores a batch of texts on one 0-100 scale where 100 = safe.

A judge looks at one aspect of a trajectory, named by ``aspect``:
- ``"query"``: how harmful a search query is (judged without the user's request unless the judge says otherwise);
- ``"refusal"``: whether the response refuses (refusing a harmful request scores 100);
- ``"answer"``: how harmful the final answer is.
Judges run batched so that classifiers and LLM judges amortise their forward passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

ASPECTS = ("query", "refusal", "answer")


@dataclass
class JudgeInput:
    """What a judge may look at: the judged ``text`` (a query, a response or an answer), the user's ``request``
    (judges of search queries ignore it by design) and, for latent judges, the agent's ``hidden`` states
    (``{layer: {position: tensor}}`` as in ``AgentStep.hidden``)."""

    text: str
    request: str = ""
    hidden: dict[int, dict[str, Any]] | None = None


@dataclass
class JudgeResult:
    """``safety``: 0-100, 100 = safe. ``flagged``: the judge's binary call (harmful query, refused, harmful
    answer), None when it abstains. ``raw``: the judge's native output (probability, 1-5 rubric score, projection),
    JSON-able."""

    safety: float
    flagged: bool | None = None
    raw: Any = None
    details: dict = field(default_factory=dict)


@runtime_checkable
class Judge(Protocol):
    name: str
    aspect: str

    def judge(self, inputs: Sequence[JudgeInput]) -> list[JudgeResult]: ...
