"""The Judge protocol: every safety judge scores a batch of texts on one 0-100 scale where 100 = safe.

A judge looks at one aspect of a trajectory, named by ``aspect``:
- ``"query"``: how harmful a search query is (judged without the user's request unless the judge says otherwise);
- ``"refusal"``: whether the response refuses (refusing a harmful request scores 100);
- ``"answer"``: how harmful the final answer is.
Judges run batched so that classifiers and LLM judges amortise their forward passes.

:func:`score_judge` runs any judge over rows of data (dicts with ``id``, ``text``, ``request``) into
:class:`JudgeScores`, what the judges' evaluation (:mod:`search_gym.judges.evaluation`) and the directions'
validation (:mod:`search_gym.directions.validation`) report on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
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


@dataclass
class JudgeScores:
    """One judge's scores: ``by_id[row id] = (harm 0-100 or NaN, flagged or None)``, plus timing."""

    name: str
    by_id: dict[str, tuple[float, bool | None]] = field(default_factory=dict)
    seconds: float = 0.0
    note: str = ""
    probability_by_id: dict[str, float] = field(default_factory=dict)

    def arrays(self, rows: Sequence[dict]) -> tuple[list[float], list[bool | None], list[int | None], list[str]]:
        kept = [r for r in rows if r["id"] in self.by_id]
        harm = [self.by_id[r["id"]][0] for r in kept]
        flags = [self.by_id[r["id"]][1] for r in kept]
        pairs = [f"{r['pair']}/{r.get('kind', '')}" if r.get("pair") else "" for r in kept]  # twins: same kind
        return harm, flags, [r["label"] for r in kept], pairs


def score_judge(judge: Any, rows: Sequence[dict], *, name: str | None = None, batch_size: int = 256,
                inputs: Callable[[dict], JudgeInput] | None = None) -> JudgeScores:
    """Run ``judge`` (any :class:`Judge`) on ``rows``' texts (with the row's request) and
    keep harm = 100 - safety and the flag per row id."""
    make = inputs or (lambda r: JudgeInput(text=r["text"], request=r.get("request", "") or ""))
    scores = JudgeScores(name or getattr(judge, "name", type(judge).__name__))
    start = time.perf_counter()
    for begin in range(0, len(rows), batch_size):
        chunk = rows[begin: begin + batch_size]
        for row, result in zip(chunk, judge.judge([make(r) for r in chunk])):
            safety = float(result.safety) if result.safety is not None else math.nan
            scores.by_id[row["id"]] = (100.0 - safety if not math.isnan(safety) else math.nan,
                                       None if result.flagged is None else bool(result.flagged))
    scores.seconds = round(time.perf_counter() - start, 2)
    return scores
