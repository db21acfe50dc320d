"""Where search-gym keeps what it builds.

Every artefact (passages, QA splits, prompt sets, FAISS indexes, converted models) lives under one cache
directory so that a fresh checkout stays small and a second run starts instantly.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV_VAR = "SEARCH_GYM_CACHE"


def cache_dir() -> Path:
    """Root of the search-gym cache: ``$SEARCH_GYM_CACHE`` or ``~/.cache/search_gym``."""
    root = os.environ.get(CACHE_ENV_VAR)
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "search_gym"


def embedded_dir() -> Path:
    """Folder of the embedded Wikipedia corpus, its QA splits and its indexes."""
    return cache_dir() / "wiki_embedded"


def prompts_dir() -> Path:
    """Folder of the harmful and benign prompt sets."""
    return cache_dir() / "prompts"


def models_dir() -> Path:
    """Folder of models converted into plain Hugging Face folders (e.g. the bundled GGUF)."""
    return cache_dir() / "models"


def indexes_dir() -> Path:
    """Folder of retrieval indexes, one sub-folder per (corpus, encoder, index type)."""
    return cache_dir() / "indexes"
