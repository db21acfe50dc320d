"""Where :mod:`search_gym.build` puts the embedded data, and what a loader says when a file is not built.

Loaders read and never build: a missing file raises :class:`NotBuiltError`, whose message says how to build it
(``search-gym setup``, or :func:`search_gym.build.ensure_embedded`). Environments, and the ``load_*`` functions of
:mod:`search_gym.build`, build on demand before they read.
"""

from __future__ import annotations

from pathlib import Path

from search_gym import paths

PROMPT_KINDS = ("harmful", "benign")
PROMPT_SPLITS = ("train", "heldout")
#: Splits of the embedded QA set (built by search_gym.corpora.qa).
EMBEDDED_QA_SPLITS = ("train", "test")


class NotBuiltError(FileNotFoundError):
    """A file of the embedded data is missing; the message says how to build it."""


def passages_path() -> Path:
    """``<cache>/wiki_embedded/passages.jsonl``: the embedded Wikipedia passages."""
    return paths.embedded_dir() / "passages.jsonl"


def qa_path(split: str) -> Path:
    """``<cache>/wiki_embedded/qa_<split>.jsonl`` for split ``train`` / ``test`` of the embedded QA set."""
    if split not in EMBEDDED_QA_SPLITS:
        raise ValueError(f"split must be one of {EMBEDDED_QA_SPLITS}, not {split!r}")
    return paths.embedded_dir() / f"qa_{split}.jsonl"


def prompt_set_path(kind: str, split: str) -> Path:
    """``<cache>/prompts/<kind>_<split>.jsonl``: ``kind`` harmful / benign, ``split`` train / heldout."""
    if kind not in PROMPT_KINDS:
        raise ValueError(f"kind must be one of {PROMPT_KINDS}, not {kind!r}")
    if split not in PROMPT_SPLITS:
        raise ValueError(f"split must be one of {PROMPT_SPLITS}, not {split!r}")
    return paths.prompts_dir() / f"{kind}_{split}.jsonl"


def require_built(path: Path, what: str, ensure: str = "ensure_embedded()") -> Path:
    """``path`` when it exists, else :class:`NotBuiltError` naming ``what`` and the build step (``ensure``: the
    :mod:`search_gym.build` call that builds it)."""
    if not path.is_file():
        raise NotBuiltError(
            f"{what} is not built yet ({path} is missing). Build it with `search-gym setup`, or call "
            f"search_gym.build.{ensure} first (search_gym.build.load_questions / load_prompt_set build on demand)"
        )
    return path
