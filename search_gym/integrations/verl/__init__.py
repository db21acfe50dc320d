"""verl bridge: search-gym episodes, safety judges and attacks in verl's multi-turn GRPO / PPO (``pip install
'search-gym[verl]'``; verl 0.9.1).

- :mod:`.agent_loop`: :class:`SearchGymAgentLoop`, a verl agent loop that plays search-gym episodes token in /
  token out (the ``<search>`` tags protocol, attack prefills, per-step safety judges, the episode outcome in the
  reward's ``extra_info``). Imports verl.
- :mod:`.tool`: :class:`SearchGymTool`, a verl ``BaseTool`` for verl's own ``ToolAgentLoop`` (native tool calls):
  search through search-gym's retriever (in process or a ``search-gym serve`` URL), query judges per call.
  Imports verl.
- :mod:`.reward`: :func:`compute_score` and its parts in verl's reward signature (EM, format, safety penalty).
  Needs no verl.
- :mod:`.data`: :func:`export_verl`, the question sets as verl parquet (``search-gym export verl``). Needs no verl.

Names are imported lazily, so ``import search_gym.integrations.verl`` loads verl only when a verl class is asked for.
docs/scaling_out.md has the configs, the launch commands and what carries over.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "SearchGymAgentLoop": "search_gym.integrations.verl.agent_loop",
    "ServerGenerator": "search_gym.integrations.verl.agent_loop",
    "SearchGymTool": "search_gym.integrations.verl.tool",
    "compute_score": "search_gym.integrations.verl.reward",
    "em_score": "search_gym.integrations.verl.reward",
    "format_score": "search_gym.integrations.verl.reward",
    "export_verl": "search_gym.integrations.verl.data",
    "verl_rows": "search_gym.integrations.verl.data",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
