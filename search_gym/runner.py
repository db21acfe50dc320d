"""Run an agent over many episodes of a vector SearchEnv and summarise task metrics and timing.

Agent time and environment time are measured separately so that speed reports say where time goes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from search_gym.envs.vector import SearchVectorEnv


@dataclass
class EpisodeRecord:
    """The end of one episode: JSON-able."""

    question_id: str
    question: str
    golden_answers: list[str]
    answer: str | None
    correct: bool | None
    reward: float
    num_searches: int
    searches: list[str]
    turns: int
    invalid_actions: int
    truncated: bool
    transcript: str
    completion_tokens: int = 0
    answered: bool = False
    safety: dict | None = None  # the env's episode safety summary (safety instrumentation on)
    first_turn_safety: dict | None = None  # the first step's info["safety"] (first-turn refusal)

    def metrics(self) -> dict:
        """This episode's values of the eval harness's metrics (one definition of EM, safety and refusal)."""
        from search_gym.evaluation import episode_metrics

        record = {"num_searches": self.num_searches, "correct": self.correct, "golden_answers": self.golden_answers,
                  "answer": self.answer, "safety": self.safety,
                  "infos": [{"safety": self.first_turn_safety or {}}]
                  + [{"invalid_action": True}] * self.invalid_actions}
        return episode_metrics(record)


@dataclass
class RunSummary:
    episodes: list[EpisodeRecord] = field(default_factory=list)
    agent_seconds: float = 0.0
    env_seconds: float = 0.0
    wall_seconds: float = 0.0

    @property
    def n(self) -> int:
        return len(self.episodes)

    @property
    def exact_match(self) -> float:
        """Mean EM over episodes with gold answers; an unanswered or truncated episode counts as wrong."""
        return self.metric("em")

    def metric(self, name: str) -> float:
        """Mean of an eval-harness metric (``search_gym.evaluation.METRICS``) over the episodes that have it."""
        values = [v for v in (e.metrics()[name] for e in self.episodes) if v is not None]
        return float(np.mean(values)) if values else float("nan")

    @property
    def mean_reward(self) -> float:
        return float(np.mean([e.reward for e in self.episodes])) if self.episodes else float("nan")

    @property
    def searches_per_episode(self) -> float:
        return float(np.mean([e.num_searches for e in self.episodes])) if self.episodes else float("nan")

    @property
    def invalid_per_episode(self) -> float:
        return float(np.mean([e.invalid_actions for e in self.episodes])) if self.episodes else float("nan")

    @property
    def completion_tokens(self) -> int:
        return sum(e.completion_tokens for e in self.episodes)

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.agent_seconds if self.agent_seconds > 0 else float("nan")

    def as_dict(self) -> dict:
        return {
            "episodes": self.n,
            "exact_match": self.exact_match,
            "search_safety": self.metric("search_safety"),
            "refusal_first": self.metric("refusal_first"),
            "answer_safety": self.metric("answer_safety"),
            "answered": self.metric("answered"),
            "mean_reward": self.mean_reward,
            "searches_per_episode": self.searches_per_episode,
            "invalid_actions_per_episode": self.invalid_per_episode,
            "completion_tokens": self.completion_tokens,
            "tokens_per_second": self.tokens_per_second,
            "agent_seconds": self.agent_seconds,
            "env_seconds": self.env_seconds,
            "wall_seconds": self.wall_seconds,
        }


def run_episodes(
    venv: SearchVectorEnv,
    agent,
    question_indices: Sequence[int] | None = None,
    *,
    num_episodes: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> RunSummary:
    """Play one episode per question index (default: the first ``num_episodes`` questions) in batches of
    ``venv.num_envs``; the agent acts on all live sub-envs at once through ``act_batch``."""
    if question_indices is None:
        total = len(venv.envs[0].questions)
        question_indices = list(range(min(num_episodes or total, total)))
    summary = RunSummary()
    wall = time.perf_counter()
    bar = tqdm(total=len(question_indices), desc="episodes", unit="ep", disable=not progress)
    if hasattr(agent, "seed"):
        agent.seed(seed)
    from gymnasium.vector import AutoresetMode

    autoreset, venv.autoreset_mode = venv.autoreset_mode, AutoresetMode.DISABLED  # never step a finished episode
    for start in range(0, len(question_indices), venv.num_envs):
        chunk = list(question_indices[start : start + venv.num_envs])
        padded = chunk + [chunk[-1]] * (venv.num_envs - len(chunk))  # spare sub-envs stay idle
        live = np.zeros(venv.num_envs, dtype=bool)
        live[: len(chunk)] = True
        t0 = time.perf_counter()
        obs, infos = venv.reset(seed=seed + start,
                                options={"per_env": [{"index": i} for i in padded], "reset_mask": live})
        summary.env_seconds += time.perf_counter() - t0
        questions = list(infos["question"])
        first_turn: list[dict | None] = [None] * venv.num_envs
        invalid = np.zeros(venv.num_envs, dtype=int)
        tokens = np.zeros(venv.num_envs, dtype=int)
        while live.any():
            ids = np.flatnonzero(live)
            t0 = time.perf_counter()
            steps = agent.act_batch([{"messages": obs["messages"][i], "prefill": obs["prefill"][i]} for i in ids])
            summary.agent_seconds += time.perf_counter() - t0
            actions = [""] * venv.num_envs
            for i, step in zip(ids, steps):
                actions[i] = step.text
                tokens[i] += len(step.completion_ids or [])
            t0 = time.perf_counter()
            obs, rewards, terms, truncs, infos = venv.step(actions)
            summary.env_seconds += time.perf_counter() - t0
            for i in ids:
                own = venv.last_infos[i] or {}  # the sub-env's own info: nested safety dicts intact
                invalid[i] += bool(own.get("invalid_action"))
                if first_turn[i] is None:
                    first_turn[i] = own.get("safety") or {}
                if terms[i] or truncs[i]:
                    live[i] = False
                    summary.episodes.append(
                        EpisodeRecord(
                            question_id=str(infos["question_id"][i]),
                            question=questions[i],
                            golden_answers=list(infos["golden_answers"][i]),
                            answer=own.get("answer"),
                            # unanswered or truncated = wrong; None only without gold answers. (Batched info
                            # turns None into False or keeps it depending on the other sub-envs: not read as is.)
                            correct=bool(own.get("correct")) if own.get("golden_answers") else None,
                            reward=float(rewards[i]),
                            num_searches=int(infos["num_searches"][i]),
                            searches=list(infos["searches"][i]),
                            turns=int(infos["turn"][i]),  # info["turn"] already counts this step
                            invalid_actions=int(invalid[i]),
                            truncated=bool(truncs[i]),
                            transcript=obs["prefill"][i],
                            completion_tokens=int(tokens[i]),
                            answered=own.get("answer") is not None,
                            safety=(own.get("safety") or {}).get("episode"),
                            first_turn_safety=first_turn[i] or None,
                        )
                    )
                    bar.update(1)
    bar.close()
    venv.autoreset_mode = autoreset
    summary.wall_seconds = time.perf_counter() - wall
    return summary
