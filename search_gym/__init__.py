"""search-gym: Gymnasium environments for studying what RL on agentic search does to an LLM's safety.

``import search_gym`` registers the environment ids (``SearchGym/WikiQA-v0``, ``SearchGym/WikiHarmful-v0``,
``SearchGym/Wiki18NQ-v0``, ``SearchGym/Wiki18HotpotQA-v0``, ``SearchGym/SelfInterestedExploration-v0``, and the
misalignment search ids ``SearchGym/AnswerKeySearch-v0``, ``SearchGym/GameableGraderSearch-v0``,
``SearchGym/SycophancySearch-v0``, ``SearchGym/HarmlessRewardSearch-v0``) with Gymnasium. The multi-agent imitative-diffusion env is PettingZoo's:
``search_gym.envs.misalignment.imitative_diffusion_v0.parallel_env()``.
"""

from search_gym.envs import SearchEnv, SearchVectorEnv, register_envs
from search_gym.envs.misalignment import register_misalignment_envs

__version__ = "0.1.0"

register_envs()
register_misalignment_envs()

__all__ = ["SearchEnv", "SearchVectorEnv", "__version__"]
