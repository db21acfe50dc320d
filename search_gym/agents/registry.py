"""``make_agent(name, **kw)``: one entry point for every agent backend (used by the CLI and the examples).

Names: ``"scripted"``, ``"random"`` (model-free baselines), ``"hf"`` (any transformers model, ``model=`` hub id or
folder), ``"smollm2"`` (the bundled SmolLM2-135M-Instruct through HFAgent, few-shot on), ``"vllm"`` and
``"openai"`` (an OpenAI-compatible server). ``"hf:<model>"``, ``"vllm:<model>"`` and ``"openai:<model>"`` are
shorthands for ``model=<model>``. Heavy backends are imported only when asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from search_gym.agents.base import Agent


def _scripted(**kw: Any) -> Agent:
    from search_gym.agents.baselines import ScriptedAgent

    return ScriptedAgent(**kw)


def _random(**kw: Any) -> Agent:
    from search_gym.agents.baselines import RandomAgent

    return RandomAgent(**kw)


def _hf(**kw: Any) -> Agent:
    from search_gym.agents.hf import HFAgent

    return HFAgent(**kw)


def _smollm2(**kw: Any) -> Agent:
    from search_gym.agents.hf import BUNDLED_MODEL, HFAgent

    if kw.setdefault("model", BUNDLED_MODEL) != BUNDLED_MODEL:
        raise ValueError("the 'smollm2' agent is the bundled model; use make_agent('hf', model=...) for others")
    kw.setdefault("few_shot", True)
    return HFAgent(**kw)


def _vllm(**kw: Any) -> Agent:
    from search_gym.agents.vllm_agent import VLLMAgent

    return VLLMAgent(**kw)


def _openai(**kw: Any) -> Agent:
    from search_gym.agents.openai_agent import OpenAIAgent

    return OpenAIAgent(**kw)


AGENT_FACTORIES: dict[str, Callable[..., Agent]] = {
    "scripted": _scripted,
    "random": _random,
    "hf": _hf,
    "smollm2": _smollm2,
    "vllm": _vllm,
    "openai": _openai,
}

_TAKES_MODEL = ("hf", "vllm", "openai")


def agent_names() -> list[str]:
    """The names ``make_agent`` accepts (besides the ``backend:model`` shorthands)."""
    return list(AGENT_FACTORIES)


def make_agent(name: str, **kw: Any) -> Agent:
    """Build an agent by name; keyword arguments go to its constructor.

    >>> make_agent("scripted").name
    'scripted'
    """
    backend, _, model = name.partition(":")
    if backend not in AGENT_FACTORIES:
        raise ValueError(
            f"unknown agent {name!r}; choose from {agent_names()} or 'hf:<model>' / 'vllm:<model>' / 'openai:<model>'"
        )
    if model:
        if backend not in _TAKES_MODEL:
            raise ValueError(
                f"agent {backend!r} takes no model; '{backend}:<model>' only works for {list(_TAKES_MODEL)}"
            )
        if "model" in kw:
            raise ValueError(f"model given twice: in the name {name!r} and as model={kw['model']!r}")
        kw["model"] = model
    return AGENT_FACTORIES[backend](**kw)
