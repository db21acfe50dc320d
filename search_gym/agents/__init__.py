"""Agents for search-gym (installed as ``search_gym.agents``).

An agent maps a SearchEnv observation (``{"messages", "prefill"}``) to an :class:`AgentStep` (text plus, for
model-backed agents, token ids, logprobs and hidden states). ``make_agent(name, **kwargs)`` builds any of them by
name: ``scripted``, ``random``, ``smollm2`` (the bundled 135M LLM), ``hf``, ``vllm``, ``openai``.
"""

from search_gym.agents.base import Agent, AgentStep, BaseAgent
from search_gym.agents.baselines import OracleAgent, RandomAgent, RefusalAgent, ScriptedAgent, question_of
from search_gym.agents.registry import agent_names, make_agent

__all__ = [
    "Agent",
    "AgentStep",
    "BaseAgent",
    "OracleAgent",
    "RandomAgent",
    "RefusalAgent",
    "ScriptedAgent",
    "agent_names",
    "make_agent",
    "question_of",
]


def __getattr__(name: str):
    # Model-backed agents import torch/transformers; load them on first use so scripted users stay light.
    if name == "HFAgent":
        from search_gym.agents.hf import HFAgent

        return HFAgent
    if name == "VLLMAgent":
        from search_gym.agents.vllm_agent import VLLMAgent

        return VLLMAgent
    if name == "ensure_smollm2":
        from search_gym.agents.gguf import ensure_smollm2

        return ensure_smollm2
    if name == "OpenAIAgent":
        from search_gym.agents.openai_agent import OpenAIAgent

        return OpenAIAgent
    raise AttributeError(f"module 'search_gym.agents' has no attribute {name!r}")


_LAZY = ("HFAgent", "VLLMAgent", "OpenAIAgent", "ensure_smollm2")


def __dir__() -> list[str]:
    """The eager names and the lazily loaded ones, so tab completion and ``dir()`` show every agent."""
    return sorted(set(globals()) | set(__all__) | set(_LAZY))
