"""Question-answer sets in the FlashRAG / Search-R1 format.

A row is ``{"id", "question", "golden_answers": [str, ...], "metadata": {...}}``. The embedded Wikipedia QA built by
:mod:`search_gym.corpora.qa` is read with :func:`load_qa_jsonl`; the full-scale NQ and HotpotQA sets come from the
``RUC-NLPIR/FlashRAG_datasets`` hub repository (or a local copy of it) through :func:`load_hf_qa`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search_gym.data.corpus import open_text
from search_gym.rewards import normalize_answer  # one normalisation for rewards, builders and recall

__all__ = ["QAItem", "load_qa_jsonl", "load_hf_qa", "normalize_answer", "FLASHRAG_REPO", "FLASHRAG_SPLITS"]

FLASHRAG_REPO = "RUC-NLPIR/FlashRAG_datasets"
# Splits the FlashRAG hub repository publishes for the datasets Search-R1 trains and evaluates on.
FLASHRAG_SPLITS = {"nq": ("train", "dev", "test"), "hotpotqa": ("train", "dev")}


@dataclass
class QAItem:
    """One question with its accepted answers; ``metadata`` carries provenance (source, evidence title, ...)."""

    id: str
    question: str
    golden_answers: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: dict[str, Any], default_id: str | None = None) -> QAItem:
        """Build from a FlashRAG-style row, tolerating a bare-string answer and numeric ids/answers."""
        answers = row.get("golden_answers", row.get("answers", row.get("answer", [])))
        if answers is None:
            answers = []
        elif isinstance(answers, (str, int, float)):
            answers = [answers]
        row_id = row.get("id", default_id)
        if row_id is None:
            raise ValueError(f"QA row has no id: {row!r}")
        metadata = row.get("metadata") or {}
        if not isinstance(metadata, dict):
            metadata = {"value": metadata}
        return cls(id=str(row_id), question=str(row["question"]), golden_answers=[str(a) for a in answers],
                   metadata=dict(metadata))

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "question": self.question, "golden_answers": list(self.golden_answers),
                "metadata": self.metadata}


def load_qa_jsonl(path: str | os.PathLike[str]) -> list[QAItem]:
    """Read QA rows from a JSONL (``.jsonl`` / ``.jsonl.gz``) file, or a ``.json`` file holding a list of rows."""
    path = Path(path)
    with open_text(path) as f:
        if path.name.endswith((".json", ".json.gz")):
            text = f.read()
            stripped = text.lstrip()
            if stripped.startswith("["):
                return [QAItem.from_row(row, f"{i}") for i, row in enumerate(json.loads(text))]
            lines = text.splitlines()
        else:
            lines = f
        items = []
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                items.append(QAItem.from_row(json.loads(line), f"{lineno - 1}"))
            except (json.JSONDecodeError, KeyError) as exc:
                raise ValueError(f"{path}:{lineno}: not a QA JSON row ({exc})") from exc
    return items


_LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".gz": "json"}


def _local_data_file(name: str, split: str, path: Path) -> Path:
    """Resolve ``path`` to one data file: the file itself, or ``{split}.*`` inside ``path`` or ``path/name``
    (the layout of the FlashRAG repository: ``nq/train.jsonl``, ``nq/dev.jsonl``, ...)."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist")
    for folder in (path / name, path):
        for suffix in (".jsonl", ".json", ".parquet", ".jsonl.gz"):
            candidate = folder / f"{split}{suffix}"
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(f"no {split}.jsonl / .json / .parquet under {path} or {path / name}")


def load_hf_qa(name: str, split: str, *, path: str | os.PathLike[str] | None = None) -> list[QAItem]:
    """Load a FlashRAG QA set through :func:`datasets.load_dataset`.

    name: FlashRAG config, e.g. ``"nq"`` or ``"hotpotqa"`` (any config of the repository works).
    split: ``"train"``, ``"dev"`` or ``"test"`` (HotpotQA has no public test answers: use ``"dev"``).
    path: a local JSON / JSONL / parquet file in the same format, or a folder laid out like the hub repository;
        when given, nothing is downloaded.
    """
    import datasets

    if path is None:
        ds = datasets.load_dataset(FLASHRAG_REPO, name, split=split)
    else:
        data_file = _local_data_file(name, split, Path(path).expanduser())
        suffix = data_file.suffix
        builder = _LOCAL_FORMATS.get(suffix)
        if builder is None:
            raise ValueError(f"unsupported QA file type {suffix!r} ({data_file}); use JSON, JSONL or parquet")
        # Local files get their own Arrow cache under the search-gym cache, so a test or a laptop run never
        # writes into the user's shared Hugging Face cache.
        from search_gym.paths import cache_dir

        ds = datasets.load_dataset(builder, data_files={split: str(data_file)}, split=split,
                                   cache_dir=str(cache_dir() / "hf_datasets"))
    return [QAItem.from_row(row, f"{split}_{i}") for i, row in enumerate(ds)]
