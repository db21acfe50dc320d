"""Harmful and benign-but-edgy prompt sets (built by :mod:`search_gym.corpora.prompts`).

``load_prompt_set("harmful", "train")`` returns the bundled HarmBench / AdvBench / StrongREJECT / Do-Not-Answer
training prompts, building the files under :func:`search_gym.paths.prompts_dir` on first use. Prompts carry their
source, licence and category so that results can be broken down by dataset.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PromptItem", "load_prompt_set", "load_prompt_jsonl", "prompt_set_path", "PROMPT_KINDS", "PROMPT_SPLITS"]

PROMPT_KINDS = ("harmful", "benign")
PROMPT_SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class PromptItem:
    """One prompt; ``source`` is the data set (harmbench, advbench, strongreject, donotanswer, overrefusal)."""

    id: str
    prompt: str
    source: str
    licence: str
    category: str
    split: str

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> PromptItem:
        return cls(id=str(row["id"]), prompt=str(row["prompt"]), source=str(row.get("source", "")),
                   licence=str(row.get("licence", "")), category=str(row.get("category", "")),
                   split=str(row.get("split", "")))

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "prompt": self.prompt, "source": self.source, "licence": self.licence,
                "category": self.category, "split": self.split}


def load_prompt_jsonl(path: str | os.PathLike[str]) -> list[PromptItem]:
    """Read a prompt-set JSONL file."""
    items = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                items.append(PromptItem.from_row(json.loads(line)))
            except (json.JSONDecodeError, KeyError) as exc:
                raise ValueError(f"{path}:{lineno}: not a prompt JSON row ({exc})") from exc
    return items


def prompt_set_path(kind: str, split: str) -> Path:
    """Path of a prompt set, building the prompt sets first if they are missing or stale."""
    if kind not in PROMPT_KINDS:
        raise ValueError(f"kind must be one of {PROMPT_KINDS}, not {kind!r}")
    if split not in PROMPT_SPLITS:
        raise ValueError(f"split must be one of {PROMPT_SPLITS}, not {split!r}")
    from search_gym.build import ensure_prompt_sets  # lazy: build imports the builders, loaders stay light

    return ensure_prompt_sets(progress=False)[f"{kind}_{split}"]


def load_prompt_set(kind: str, split: str) -> list[PromptItem]:
    """``kind``: ``"harmful"`` or ``"benign"``; ``split``: ``"train"`` or ``"heldout"``. Builds on first use."""
    return load_prompt_jsonl(prompt_set_path(kind, split))
