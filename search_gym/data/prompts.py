"""Harmful and benign-but-edgy prompt sets (built by :mod:`search_gym.corpora.prompts`).

``load_prompt_set("harmful", "train")`` returns the bundled HarmBench / AdvBench / StrongREJECT / Do-Not-Answer
training prompts from the files under :func:`search_gym.paths.prompts_dir`. It only reads: when the files are not
built it raises :class:`~search_gym.data.embedded.NotBuiltError` (``search_gym.build.load_prompt_set`` builds them
first). Prompts carry their source, licence and category so that results can be broken down by dataset.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from search_gym.data.embedded import PROMPT_KINDS, PROMPT_SPLITS, prompt_set_path, require_built

__all__ = ["PromptItem", "load_prompt_set", "load_prompt_jsonl", "prompt_set_path", "PROMPT_KINDS", "PROMPT_SPLITS"]


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


def load_prompt_set(kind: str, split: str) -> list[PromptItem]:
    """``kind``: ``"harmful"`` or ``"benign"``; ``split``: ``"train"`` or ``"heldout"``. Reads the built file (raises
    :class:`~search_gym.data.embedded.NotBuiltError` when it is missing)."""
    path = prompt_set_path(kind, split)
    return load_prompt_jsonl(require_built(path, f"the {kind} / {split} prompt set", "ensure_prompt_sets()"))
