"""Builders for the embedded data sets (installed as ``search_gym.corpora``).

* :mod:`~search_gym.corpora.wiki_embedded` - Wikipedia lead summaries -> ~100-word passages (Search-R1 JSONL).
* :mod:`~search_gym.corpora.qa` - FanOutQA sub-questions and description-derived questions answerable from them.
* :mod:`~search_gym.corpora.prompts` - harmful and benign-but-edgy prompt sets with fixed train/heldout splits.
* :mod:`~search_gym.corpora.judge_data` - the query-harm judges' data: style-matched benign requests and queries,
  domain-matched pairs, harmful queries (texts in :mod:`~search_gym.corpora.judge_texts`), split by pair / topic.

Every builder reads only the data files of the offline asset packages (see :mod:`search_gym.assets`) and writes
deterministic bytes atomically, so a rebuild is byte-identical and an interrupted build never leaves a half file.
``search_gym.build`` orchestrates them, records checksums in a manifest and rebuilds whatever is stale.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from typing import Any

from search_gym.files import write_bytes_atomic

__all__ = ["write_jsonl_atomic", "write_bytes_atomic", "stable_hash", "jsonl_line", "normalise"]


def normalise(text: str) -> str:
    """Whitespace collapsed, case folded: the key texts are de-duplicated and grouped by."""
    return " ".join(str(text).split()).casefold()


def stable_hash(*parts: str) -> int:
    """A process-independent 64-bit hash (Python's ``hash`` is salted per process, so splits need this)."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def jsonl_line(row: dict[str, Any]) -> str:
    """One JSONL line with a fixed serialisation (key order as given, UTF-8 kept, no trailing spaces)."""
    return json.dumps(row, ensure_ascii=False) + "\n"


def write_jsonl_atomic(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> int:
    """Write rows as JSONL atomically; returns the number of rows written."""
    lines = [jsonl_line(row) for row in rows]
    write_bytes_atomic(path, "".join(lines).encode("utf-8"))
    return len(lines)
