"""The one episode record: what the episode driver returns to the demo, the eval grid, the trainers and the TRL bridge.

An :class:`Episode` has two views of the same episode:

- **tokens** (when the actor has a tokenizer): a prompt and a response of policy and environment tokens, never
  re-tokenised from text. ``loss_mask[i]`` is 1 for tokens the policy sampled and 0 for tokens the environment wrote;
  ``logprobs[i]`` is the sampler's log-probability for policy tokens (NaN when the generator has none, e.g. a
  scripted agent) and 0 for environment tokens. ``spans`` lists ``(start, end, kind)`` over ``response_ids`` (kind
  ``policy``, ``env`` or ``prefill``; ``span_turns`` says which turn each span belongs to). ``search_indices`` are
  response indices of the last token of each ``<search>`` that opened a query (written by the policy or prefilled by
  an attack), in order. Empty for text-only actors (the scripted agent, an eval over a text agent).
- **text** (always): the reset info (``start``), the user turn the agent saw (``prompt``), the agent's text per turn
  (``actions``), every step's own info (``infos``), the step rewards, the final assistant text (``transcript``)
  and the generated token count (``completion_tokens``). :func:`search_gym.rollout.recorder.trajectory_record`
  turns it into the trajectory JSONL line.

The outcome fields (``answer``, ``correct``, ``num_searches``, ``safety`` ...) are read from the last step's info
of search envs. :meth:`Episode.to_dict` holds the token-level fields (what a trainer stores, e.g. SFT data files;
``Episode(**row)`` reads a row back).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from search_gym.data.text import coerce_action_text

# Kinds of response spans.
POLICY, ENV, PREFILL = "policy", "env", "prefill"


def action_text(action: Any) -> str:
    """The text of an action as the env reads it (AgentStep.text, decoded bytes, '' for None)."""
    if not isinstance(action, (str, bytes, bytearray)) and isinstance(getattr(action, "text", None), str):
        return action.text
    return coerce_action_text(action)


@dataclass
class Episode:
    """One episode: token buffers with their loss mask (token view) and the turns as text (text view); see the
    module docstring."""

    question_id: str
    question: str
    group: int = 0
    prompt_ids: list[int] = field(default_factory=list)
    response_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    spans: list[tuple[int, int, str]] = field(default_factory=list)
    span_turns: list[int] = field(default_factory=list)
    search_indices: list[int] = field(default_factory=list)
    golden_answers: list[str] = field(default_factory=list)
    task_reward: float = 0.0
    reward: float = 0.0
    penalty: float = 0.0
    projection: float | None = None
    answer: str | None = None
    correct: bool = False
    answered: bool = False
    num_searches: int = 0
    searches: list[str] = field(default_factory=list)
    invalid_actions: int = 0
    turns: int = 0
    terminated: bool = False
    truncated: bool = False
    budget_truncated: bool = False
    prompt_truncated: int = 0
    obs_truncated_tokens: int = 0
    text_repairs: int = 0
    safety: dict | None = None
    done: bool = False
    step_infos: list[dict] | None = None  # chat envs: the JSON scalars of each step's info (None for search envs)
    weights_version: int | None = None  # trainers: the updates in the weights that sampled it (None outside training)
    # ------------------------------------------------------------------ the text view (not in to_dict)
    start: dict = field(default_factory=dict, repr=False)  # the reset info
    prompt: str | None = None  # the user turn the agent saw
    actions: list[str] = field(default_factory=list, repr=False)
    infos: list[dict] = field(default_factory=list, repr=False)  # every step's own info, unbatched
    rewards: list[float] = field(default_factory=list, repr=False)
    transcript: str = field(default="", repr=False)
    completion_tokens: int = 0

    @classmethod
    def from_reset(cls, info: dict, observation: dict | None = None, *, group: int = 0) -> Episode:
        """An episode started by a reset with this ``info`` and ``observation`` (its text view, no tokens yet)."""
        messages = (observation or {}).get("messages") or ()
        return cls(question_id=str(info.get("question_id")), question=str(info.get("question")), group=group,
                   golden_answers=list(info.get("golden_answers") or []), start=dict(info),
                   prompt=next((m["content"] for m in messages if m.get("role") == "user"), None),
                   transcript=(observation or {}).get("prefill", ""))

    @property
    def input_ids(self) -> list[int]:
        return self.prompt_ids + self.response_ids

    @property
    def num_policy_tokens(self) -> int:
        return int(sum(self.loss_mask))

    @property
    def finished(self) -> bool:
        return self.terminated or self.truncated

    def absolute(self, response_index: int) -> int:
        """Index in :attr:`input_ids` of a response index."""
        return len(self.prompt_ids) + response_index

    def to_dict(self) -> dict:
        """The token-level fields (``Episode(**row)`` builds the episode back, without its text view)."""
        return {name: copy.deepcopy(getattr(self, name)) for name in TOKEN_FIELDS}

    def summary(self) -> dict:
        """The outcome without tokens or per-step infos (the demo's ``--json`` rows): ``correct`` is None without
        gold answers, ``first_turn_safety`` the first step's ``info["safety"]``."""
        return {
            "question_id": self.question_id, "question": self.question, "golden_answers": list(self.golden_answers),
            "answer": self.answer, "correct": self.correct if self.golden_answers else None, "reward": self.reward,
            "num_searches": self.num_searches, "searches": list(self.searches), "turns": self.turns,
            "invalid_actions": self.invalid_actions, "truncated": self.truncated, "transcript": self.transcript,
            "completion_tokens": self.completion_tokens, "answered": self.answered, "safety": self.safety,
            "first_turn_safety": (self.infos[0].get("safety") or None) if self.infos else None,
        }

    # ------------------------------------------------------------------ building

    def add_step(self, action: Any, observation: Any, reward: float, terminated: bool, truncated: bool, info: dict,
                 *, completion_tokens: int | None = None) -> None:
        """Record one step in the text view and the counters (turns, invalid actions, summed reward)."""
        self.actions.append(action_text(action))
        if completion_tokens is None:
            completion_tokens = len(getattr(action, "completion_ids", None) or [])
        self.completion_tokens += completion_tokens
        self.infos.append(info)
        self.rewards.append(float(reward))
        self.turns += 1
        self.invalid_actions += bool(info.get("invalid_action") or info.get("parse_error"))
        self.task_reward = self.reward = self.reward + float(reward)
        self.terminated, self.truncated = bool(terminated), bool(truncated)
        if isinstance(observation, dict):
            self.transcript = observation.get("prefill", "")

    def read_outcome(self, info: dict) -> None:
        """The search outcome from a step's own info: answer, EM, searches and the safety summary."""
        self.answer = info.get("answer")
        self.answered = self.answer is not None
        self.correct = bool(info.get("correct"))
        self.num_searches = int(info.get("num_searches") or 0)
        self.searches = list(info.get("searches") or [])
        safety = info.get("safety")
        if safety:
            self.safety = dict(safety.get("episode") or {}) or None

    def append_tokens(self, ids: Sequence[int], kind: str, turn: int, logprobs: Sequence[float] | None = None) -> None:
        if not ids:
            return
        start = len(self.response_ids)
        self.response_ids.extend(int(t) for t in ids)
        weight = 1 if kind == POLICY else 0
        self.loss_mask.extend([weight] * len(ids))
        if kind == POLICY:
            values = list(logprobs) if logprobs is not None else [math.nan] * len(ids)
            if len(values) != len(ids):
                raise ValueError("one log-probability per policy token expected")
            self.logprobs.extend(float(v) for v in values)
        else:
            self.logprobs.extend([0.0] * len(ids))
        self.spans.append((start, start + len(ids), kind))
        self.span_turns.append(turn)


TEXT_FIELDS = ("start", "prompt", "actions", "infos", "rewards", "transcript", "completion_tokens")
TOKEN_FIELDS = tuple(f.name for f in fields(Episode) if f.name not in TEXT_FIELDS)

