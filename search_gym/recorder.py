"""Record whole trajectories as JSONL: one line per episode.

:class:`TrajectoryRecorder` wraps a (possibly wrapped) SearchEnv; :class:`EpisodeLog` is the record builder it
uses, also used by the evaluation harness for the sub-envs of a vector env. A line holds:

``question_id``, ``question``, ``golden_answers``, ``dataset``, ``split``, ``attack``, ``prompt`` (the user turn the
agent saw), ``actions`` (the agent's text per turn), ``turn_prefills`` (what each action continued, e.g. an
attack's ``"<search>"``), ``env_texts`` (the observation text the env appended per turn), ``infos`` (the full step
info per turn), ``rewards``, ``return``, ``terminated``, ``truncated``, ``finished`` (False when the episode was cut
by a reset or close), ``num_searches``, ``searches``, ``answer``, ``correct``, ``safety`` (the episode summary when
safety instrumentation is on, else None), ``transcript`` (the final assistant text), ``completion_tokens`` and
``extra`` (fields the caller adds, e.g. the agent's name).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TextIO

import gymnasium as gym

from search_gym.data.text import coerce_action_text


def action_text(action: Any) -> str:
    """The text of an action as the env reads it (AgentStep.text, decoded bytes, '' for None)."""
    if not isinstance(action, (str, bytes, bytearray)) and isinstance(getattr(action, "text", None), str):
        return action.text
    return coerce_action_text(action)


class EpisodeLog:
    """Builds one episode's JSONL record from the reset info and the steps."""

    def __init__(self, reset_info: dict, observation: dict | None = None, extra: dict | None = None):
        self.reset_info = dict(reset_info)
        messages = (observation or {}).get("messages") or ()
        self.prompt = next((m["content"] for m in messages if m.get("role") == "user"), None)
        self.extra = dict(extra or {})
        self.actions: list[str] = []
        self.completion_tokens = 0
        self.infos: list[dict] = []
        self.rewards: list[float] = []
        self.terminated = self.truncated = False
        self.transcript = (observation or {}).get("prefill", "")

    def add(self, action: Any, observation: dict, reward: float, terminated: bool, truncated: bool, info: dict):
        self.actions.append(action_text(action))
        self.completion_tokens += len(getattr(action, "completion_ids", None) or [])
        self.infos.append(info)
        self.rewards.append(float(reward))
        self.terminated, self.truncated = bool(terminated), bool(truncated)
        self.transcript = observation.get("prefill", "") if isinstance(observation, dict) else self.transcript

    @property
    def finished(self) -> bool:
        return self.terminated or self.truncated

    def record(self) -> dict:
        last = self.infos[-1] if self.infos else {}
        safety = last.get("safety") or {}
        return {
            "question_id": self.reset_info.get("question_id"),
            "question": self.reset_info.get("question"),
            "golden_answers": self.reset_info.get("golden_answers", []),
            "dataset": self.reset_info.get("dataset"),
            "split": self.reset_info.get("split"),
            "attack": self.reset_info.get("attack"),
            "prompt": self.prompt,
            "initial_prefill": self.reset_info.get("prefill", ""),
            "actions": self.actions,
            "turn_prefills": [i.get("turn_prefill", "") for i in self.infos],
            "env_texts": [i.get("env_text", "") for i in self.infos],
            "infos": self.infos,
            "rewards": self.rewards,
            "return": float(sum(self.rewards)),
            "terminated": self.terminated,
            "truncated": self.truncated,
            "finished": self.finished,
            "num_searches": last.get("num_searches", 0),
            "searches": last.get("searches", []),
            "answer": last.get("answer"),
            "correct": last.get("correct"),
            "safety": safety.get("episode"),
            "transcript": self.transcript,
            "completion_tokens": self.completion_tokens,
            "extra": self.extra,
        }


def dumps_record(record: dict) -> str:
    """One JSONL line; anything JSON cannot encode natively (numpy scalars, tensors) is stringified."""
    return json.dumps(record, ensure_ascii=False, default=_jsonable)


def _jsonable(value: Any) -> Any:
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError):
            pass
    tolist = getattr(value, "tolist", None)
    return tolist() if callable(tolist) else str(value)


class TrajectoryRecorder(gym.Wrapper):
    """Append one JSON line per episode to ``path`` (created with its folders; appended to when it exists).

    An episode is written when it terminates or truncates; one interrupted by ``reset`` or ``close`` is written
    with ``finished: false``, so nothing is lost. ``extra`` is copied into every record (run metadata). Lines are
    flushed as they are written, so a crashed run keeps every finished episode.
    """

    def __init__(self, env: gym.Env, path: str | os.PathLike, *, extra: dict | None = None):
        super().__init__(env)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.extra = dict(extra or {})
        self._file: TextIO | None = None
        self._log: EpisodeLog | None = None
        self.episodes_written = 0

    def _write(self) -> None:
        if self._log is None:
            return
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")
        self._file.write(dumps_record(self._log.record()) + "\n")
        self._file.flush()
        self.episodes_written += 1
        self._log = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if self._log is not None and self._log.actions:
            self._write()  # an episode cut short by reset: kept, marked unfinished
        self._log = None
        obs, info = self.env.reset(seed=seed, options=options)
        self._log = EpisodeLog(info, obs, self.extra)
        return obs, info

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self._log is not None:
            self._log.add(action, obs, reward, terminated, truncated, info)
            if terminated or truncated:
                self._write()
        return obs, reward, terminated, truncated, info

    def close(self):
        if self._log is not None and self._log.actions:
            self._write()
        if self._file is not None:
            self._file.close()
            self._file = None
        super().close()
