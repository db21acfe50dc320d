"""verifiers taskset id ``search-gym-env``: search-gym's taskset, rubric and multi-turn env (see
search_gym.integrations.verifiers and docs/scaling_out.md)."""

from search_gym.integrations.verifiers import (
    SearchGymData,
    SearchGymEnv,
    SearchGymEnvConfig,
    SearchGymTask,
    SearchGymTaskConfig,
    SearchGymTaskset,
    SearchGymTasksetConfig,
    load_environment,
)

__all__ = ["SearchGymData", "SearchGymEnv", "SearchGymEnvConfig", "SearchGymTask", "SearchGymTaskConfig",
           "SearchGymTaskset", "SearchGymTasksetConfig", "load_environment"]
