"""``make_agent(name, **kw)``: one entry point for every agent backend (used by the CLI and the examples).

Names: ``"scripted"``, ``"random"`` (model-free baselines), ``"hf"`` (any transformers model, ``model=`` hub id or
folder), ``"smollm2"`` (the bundled SmolLM2-135M-Instruct through HFAgent, few-shot on), ``"smollm2-aligned"`` (the same
base with the shipped aligned LoRA adapter merged, zero-shot: the warm start of the study), ``"vllm"`` and
``"openai"`` (an OpenAI-compatible server). ``"hf:<model>"``, ``"vllm:<model>"`` and ``"openai:<model>"`` are
shorthands for ``model=<model>``. Heavy backends are imported only when asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from search_gym.agents.base import Agent

ALIGNED = "smollm2-aligned"  # the shipped aligned warm start (search_gym/agents/weights/smollm2-aligned)


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


def _smollm2_aligned(**kw: Any) -> Agent:
    from search_gym.agents.adapters import shipped_adapter
    from search_gym.agents.hf import BUNDLED_MODEL, HFAgent

    if kw.setdefault("model", BUNDLED_MODEL) != BUNDLED_MODEL:
        raise ValueError("the 'smollm2-aligned' agent is the bundled model + its shipped adapter; use "
                         "make_agent('hf', model=..., adapter=...) for others")
    kw.setdefault("adapter", shipped_adapter(ALIGNED))
    kw.setdefault("few_shot", False)  # trained zero-shot: the worked examples are not what it learnt from
    return HFAgent(**kw)


def _vllm(**kw: Any) -> Agent:
    from search_gym.agents.vllm_agent import VLLMAgent

    adapter = kw.pop("adapter", None)
    if kw.get("model") == ALIGNED:  # 'vllm:smollm2-aligned': the bundled base + the shipped adapter
        from search_gym.agents.adapters import shipped_adapter
        from search_gym.agents.gguf import ensure_smollm2

        kw["model"], adapter = str(ensure_smollm2()), adapter or shipped_adapter(ALIGNED)
        kw.setdefault("few_shot", False)
    if adapter is not None:  # vLLM loads folders: base + adapter merged once into the cache, keyed by the adapter
        from search_gym.agents.adapters import cached_merge
        from search_gym.agents.gguf import ensure_smollm2
        from search_gym.agents.prompting import BUNDLED_MODEL

        base = kw.get("model", BUNDLED_MODEL)
        base = str(ensure_smollm2()) if base == BUNDLED_MODEL else str(base)
        kw["model"] = str(cached_merge(base, adapter))
    return VLLMAgent(**kw)


def _openai(**kw: Any) -> Agent:
    from search_gym.agents.openai_agent import OpenAIAgent

    return OpenAIAgent(**kw)


AGENT_FACTORIES: dict[str, Callable[..., Agent]] = {
    "scripted": _scripted,
    "random": _random,
    "hf": _hf,
    "smollm2": _smollm2,
    ALIGNED: _smollm2_aligned,
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
