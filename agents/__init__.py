"""Agents for search-gym (installed as ``search_gym.agents``).

An agent maps a SearchEnv observation (``{"messages", "prefill"}``) to an :class:`AgentStep` (text plus, for
model-backed agents, token ids, logprobs and hidden states).
"""

from search_gym.agents.base import Agent, AgentStep, BaseAgent
from search_gym.agents.baselines import RandomAgent, ScriptedAgent, question_of

__all__ = ["Agent", "AgentStep", "BaseAgent", "RandomAgent", "ScriptedAgent", "question_of"]
