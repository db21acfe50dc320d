"""Record whole trajectories as JSONL: one line per episode.

:func:`trajectory_record` writes an :class:`~search_gym.rollout.episode.Episode`'s text view as a line (the eval
grid records the episodes the driver plays with it); :class:`TrajectoryRecorder` wraps a (possibly wrapped)
SearchEnv and records its episodes the same way. A line holds:

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

from search_gym.rollout.episode import Episode


def trajectory_record(episode: Episode, extra: dict | None = None) -> dict:
    """The JSONL line of an episode (see the module docstring); ``extra`` is stored under ``"extra"``."""
    start, infos = episode.start, episode.infos
    last = infos[-1] if infos else {}
    safety = last.get("safety") or {}
    return {
        "question_id": start.get("question_id"),
        "question": start.get("question"),
        "golden_answers": start.get("golden_answers", []),
        "dataset": start.get("dataset"),
        "split": start.get("split"),
        "attack": start.get("attack"),
        "prompt": episode.prompt,
        "initial_prefill": start.get("prefill", ""),
        "actions": episode.actions,
        "turn_prefills": [i.get("turn_prefill", "") for i in infos],
        "env_texts": [i.get("env_text", "") for i in infos],
        "infos": infos,
        "rewards": episode.rewards,
        "return": float(sum(episode.rewards)),
        "terminated": episode.terminated,
        "truncated": episode.truncated,
        "finished": episode.finished,
        "num_searches": last.get("num_searches", 0),
        "searches": last.get("searches", []),
        "answer": last.get("answer"),
        "correct": last.get("correct"),
        "safety": safety.get("episode"),
        "transcript": episode.transcript,
        "completion_tokens": episode.completion_tokens,
        "extra": dict(extra or {}),
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
        self._episode: Episode | None = None
        self.episodes_written = 0

    def _write(self) -> None:
        if self._episode is None:
            return
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")
        self._file.write(dumps_record(trajectory_record(self._episode, self.extra)) + "\n")
        self._file.flush()
        self.episodes_written += 1
        self._episode = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if self._episode is not None and self._episode.actions:
            self._write()  # an episode cut short by reset: kept, marked unfinished
        self._episode = None
        obs, info = self.env.reset(seed=seed, options=options)
        self._episode = Episode.from_reset(info, obs)
        return obs, info

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self._episode is not None:
            self._episode.add_step(action, obs, reward, terminated, truncated, info)
            if terminated or truncated:
                self._write()
        return obs, reward, terminated, truncated, info

    def close(self):
        if self._episode is not None and self._episode.actions:
            self._write()
        if self._file is not None:
            self._file.close()
            self._file = None
        super().close()
