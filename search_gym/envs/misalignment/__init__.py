"""Misalignment environments: how self-interested strategies arise in one agent and spread between agents.

- :class:`SelfInterestedExplorationEnv` (``SearchGym/SelfInterestedExploration-v0``): rounds of role-based
  decisions where breaking a rule pays more when unsupervised (ATP's self-interested exploration).
- :mod:`.imitative_diffusion_v0` (PettingZoo ``ParallelEnv``): N agents in repeated collective-action games who see
  their peers' choices and rewards (ATP's imitative strategy diffusion).
"""

from __future__ import annotations

from search_gym.envs.misalignment.exploration import (
    ROLE_FRAMINGS,
    SUPERVISION_PATTERNS,
    SelfInterestedExplorationEnv,
    load_scenarios,
    parse_choice,
    violation_rate_per_round,
)

ENV_IDS = {"SearchGym/SelfInterestedExploration-v0": "search_gym.envs.misalignment.exploration:"
                                                       "SelfInterestedExplorationEnv"}


def register_misalignment_envs() -> None:
    import gymnasium as gym

    for env_id, entry_point in ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point)


__all__ = ["ENV_IDS", "ROLE_FRAMINGS", "SUPERVISION_PATTERNS", "SelfInterestedExplorationEnv", "load_scenarios",
           "parse_choice", "register_misalignment_envs", "violation_rate_per_round"]
