"""What the experiments share: JSONL / JSON files of resumable runs and the agent arguments of each backend."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from search_gym.files import write_text_atomic


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSONL file, ``.jsonl.gz`` too ([] when it does not exist); a line cut by a crash ends the read
    (everything before it is good, the rest is replayed)."""
    from search_gym.data.corpus import open_text

    rows = []
    if not path.exists():
        return rows
    with open_text(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def write_json(path: Path, payload: Any) -> None:
    """``payload`` as indented JSON, written atomically (objects JSON cannot encode are written as their repr)."""
    write_text_atomic(path, json.dumps(payload, indent=1, default=repr))


def agent_kwargs_for(name: str, *, max_new_tokens: int | None = None, device: str | None = None,
                     base_url: str | None = None, extra: dict | None = None) -> dict[str, Any]:
    """The ``make_agent`` arguments each backend accepts: the generation budget for LLM agents, ``device`` for HF
    agents only (vLLM places itself; an OpenAI-compatible server has no torch device), ``base_url`` for OpenAI.
    ``demo``, ``eval`` and the misalignment eval build their agents through this."""
    backend = name.partition(":")[0]
    kwargs: dict[str, Any] = {}
    if backend in ("hf", "smollm2", "vllm", "openai") and max_new_tokens is not None:
        kwargs["max_new_tokens"] = max_new_tokens
    if backend in ("hf", "smollm2") and device:
        kwargs["device"] = device
    if backend == "openai" and base_url:
        kwargs["base_url"] = base_url
    if backend in ("hf", "smollm2", "vllm", "openai"):
        kwargs.update(extra or {})
    return kwargs
