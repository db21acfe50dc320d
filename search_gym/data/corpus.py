"""Passage corpora in the Search-R1 / FlashRAG format.

One JSON object per line with exactly two keys, ``{"id": "0", "contents": "\\"Title\\"\\ntext ..."}``: the first line
of ``contents`` is the article title in double quotes, the rest is the passage text. The embedded corpus built by
:mod:`search_gym.corpora.wiki_embedded` and Search-R1's 21M-passage wiki-18 dump share this format, so one loader
serves both. Files may be plain ``.jsonl`` or gzip-compressed ``.jsonl.gz``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, overload

__all__ = [
    "Passage",
    "Corpus",
    "iter_corpus",
    "load_corpus",
    "load_wiki18",
    "file_fingerprint",
    "open_text",
]


@dataclass(frozen=True)
class Passage:
    """One retrievable passage; ``contents`` is the exact string stored in the corpus file."""

    id: str
    title: str
    text: str
    contents: str

    @classmethod
    def from_contents(cls, id: str | int, contents: str) -> Passage:
        """Split a ``contents`` string into title (first line, surrounding double quotes removed) and text."""
        first, sep, rest = contents.partition("\n")
        title = first.strip()
        if len(title) >= 2 and title.startswith('"') and title.endswith('"'):
            title = title[1:-1]
        if not sep:
            # A single-line record has no separate title line (some dumps store bare text): keep it all as text.
            return cls(id=str(id), title="", text=contents.strip(), contents=contents)
        return cls(id=str(id), title=title, text=rest.strip(), contents=contents)

    def to_json(self) -> dict[str, str]:
        """The corpus-file row for this passage."""
        return {"id": self.id, "contents": self.contents}


def open_text(path: str | os.PathLike[str]) -> IO[str]:
    """Open a UTF-8 text file for reading, transparently decompressing ``.gz``."""
    path = Path(path)
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def iter_corpus(path: str | os.PathLike[str]) -> Iterator[Passage]:
    """Stream the passages of a ``{"id","contents"}`` JSONL (or ``.jsonl.gz``) file without loading it whole."""
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                yield Passage.from_contents(row["id"], row["contents"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{lineno}: not a {{\"id\",\"contents\"}} JSON row ({exc})") from exc


class Corpus(Sequence[Passage]):
    """An in-memory corpus: ``len``, positional indexing (``corpus[i]`` is the i-th line) and :meth:`by_id`.

    Only the raw id and contents strings are kept; :class:`Passage` objects are made on access so that large
    corpora do not pay for a Python object per passage twice.
    """

    def __init__(self, ids: list[str], contents: list[str], path: Path | None = None):
        if len(ids) != len(contents):
            raise ValueError("ids and contents must have the same length")
        self.ids = ids
        self.contents = contents
        self.path = path
        self._position: dict[str, int] | None = None

    @classmethod
    def from_passages(cls, passages: list[Passage], path: Path | None = None) -> Corpus:
        return cls([p.id for p in passages], [p.contents for p in passages], path)

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, index: int) -> Passage: ...

    @overload
    def __getitem__(self, index: slice) -> list[Passage]: ...

    def __getitem__(self, index: int | slice) -> Passage | list[Passage]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return Passage.from_contents(self.ids[index], self.contents[index])

    def position(self, doc_id: str | int) -> int:
        """Line position of a passage id (the id -> position map is built on first use)."""
        if self._position is None:
            self._position = {doc_id: i for i, doc_id in enumerate(self.ids)}
        try:
            return self._position[str(doc_id)]
        except KeyError:
            raise KeyError(f"no passage with id {doc_id!r}") from None

    def by_id(self, doc_id: str | int) -> Passage:
        """The passage whose ``id`` field is ``doc_id``."""
        return self[self.position(doc_id)]

    def titles(self) -> list[str]:
        """Title of every passage, in corpus order."""
        return [Passage.from_contents(i, c).title for i, c in zip(self.ids, self.contents)]

    def __repr__(self) -> str:
        return f"Corpus({len(self)} passages{f', {self.path}' if self.path else ''})"


def load_corpus(path: str | os.PathLike[str]) -> Corpus:
    """Load a whole ``{"id","contents"}`` JSONL / JSONL.gz corpus into memory."""
    ids: list[str] = []
    contents: list[str] = []
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                ids.append(str(row["id"]))
                contents.append(row["contents"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{lineno}: not a {{\"id\",\"contents\"}} JSON row ({exc})") from exc
    return Corpus(ids, contents, Path(path))


def load_wiki18(path: str | os.PathLike[str]) -> Corpus:
    """Load Search-R1's wiki-18 passages (``wiki-18.jsonl`` or ``wiki-18.jsonl.gz``); same format as the embedded
    corpus. The full dump is about 21M passages and 14 GB of text: prefer :func:`iter_corpus` to stream it."""
    return load_corpus(path)


def file_fingerprint(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file's bytes, read in chunks so that multi-GB corpora never sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()
