"""Trainers for search-gym (installed as ``search_gym.trainers``).

- :mod:`.rollout`: the trainers' names for the one episode loop of :mod:`search_gym.rollout` (token in, token
  out: :class:`TokenEpisode`, :class:`RolloutCollector`, :class:`ChatRolloutCollector`, generation backends
  behind :class:`Generator`).
- :mod:`.grpo` / :mod:`.grpo_config`: GRPO (group-relative advantages, clipped ratio, k3 KL, loss aggregations).
- :mod:`.ppo` / :mod:`.ppo_config`: PPO with a value head and GAE over policy tokens.
- :mod:`.sft` / :mod:`.sft_config`: the SFT warm start on oracle trajectories, refusals and edgy-but-benign answers.
- :mod:`.shaping`: the representation-guided reward ``r_task - lambda * p(h)``.
- :mod:`.config`, :mod:`.core`, :mod:`.base`, :mod:`.cli`: shared configs, checkpoints/logs, the RL loop and
  ``search-gym train``.

Names are imported lazily so that ``import search_gym.trainers`` does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TokenEpisode": "rollout", "RolloutCollector": "rollout", "HFGenerator": "rollout", "AgentGenerator": "rollout",
    "Generator": "rollout", "make_rollout_env": "rollout", "episode_metrics": "rollout",
    "ChatRolloutCollector": "rollout", "EpisodeDriver": "rollout", "make_chat_env": "rollout",
    "make_collector": "rollout",
    "GRPOConfig": "grpo_config", "GRPOTrainer": "grpo", "grpo_loss": "grpo", "group_advantages": "grpo",
    "PPOConfig": "ppo_config", "PPOTrainer": "ppo", "gae_over_mask": "ppo",
    "SFTConfig": "sft_config", "SFTTrainer": "sft", "build_sft_episodes": "sft",
    "RepresentationPenalty": "shaping", "TrainConfig": "config", "RLConfig": "config",
    "VLLMConfig": "config", "PenaltyConfig": "config", "train_env": "config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"search_gym.trainers.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'search_gym.trainers' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
