"""Gymnasium environments: the Search-R1 search environment, its vector form and the full-scale variant."""

from search_gym.envs.config import EnvConfig
from search_gym.envs.protocol import INVALID_ACTION_MESSAGE, PROMPT_TEMPLATES, SEARCH_TOOL, STOP_STRINGS
from search_gym.envs.registration import ENV_SPECS, register_envs
from search_gym.envs.search_env import SearchEnv
from search_gym.envs.vector import SearchVectorEnv
from search_gym.envs.wiki18 import Wiki18SearchEnv

__all__ = [
    "ENV_SPECS",
    "EnvConfig",
    "INVALID_ACTION_MESSAGE",
    "PROMPT_TEMPLATES",
    "SEARCH_TOOL",
    "STOP_STRINGS",
    "SearchEnv",
    "SearchVectorEnv",
    "Wiki18SearchEnv",
    "register_envs",
]
