"""Run an agent over many episodes of a vector SearchEnv and summarise task metrics and timing (``search-gym demo``).

Episodes are played by the one episode loop (:class:`search_gym.rollout.RolloutCollector` over the agent, text
only) and scored with the eval harness's definitions (:func:`search_gym.rollout.metrics.episode_metrics`). Agent
time and environment time are measured separately so that speed reports say where time goes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from search_gym.envs.vector import SearchVectorEnv
from search_gym.rollout import AgentGenerator, Episode, RolloutCollector
from search_gym.rollout.metrics import episode_metrics


@dataclass
class RunSummary:
    episodes: list[Episode] = field(default_factory=list)  # in the order they finished
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
        """Mean of an eval-harness metric (``search_gym.rollout.metrics.METRICS``) over the episodes that have it."""
        values = [v for v in (episode_metrics(e)[name] for e in self.episodes) if v is not None]
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
    autoreset, metadata = venv.autoreset_mode, venv.metadata  # never step a finished episode; given back after
    driver = RolloutCollector(venv, AgentGenerator(agent))

    def finished(episode: Episode) -> None:
        summary.episodes.append(episode)
        bar.update(1)

    driver.collect([{"index": int(i)} for i in question_indices], seed=seed, on_episode=finished)
    bar.close()
    venv.autoreset_mode, venv.metadata = autoreset, metadata
    summary.agent_seconds, summary.env_seconds = driver.stats.generation_seconds, driver.stats.env_seconds
    summary.wall_seconds = time.perf_counter() - wall
    return summary
