"""Text hygiene shared by the environment, the retrievers and the judges.

A Python ``str`` can hold code points that no encoder accepts: lone surrogates (``"\\ud800"``), which a fuzzer, a
JSON payload with a broken ``\\ud83d`` escape, or a careless agent can produce. UTF-8 cannot encode them, so the
Rust tokenizers behind sentence-transformers and Hugging Face models raise on them, and one such query would fail a
whole batch. :func:`valid_unicode` replaces each lone surrogate with U+FFFD (the replacement character), joins
surrogate pairs into the character they stand for, and leaves every other string as it is (the same object).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["coerce_action_text", "is_text_action", "valid_unicode"]

_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_unicode(text: str) -> str:
    """``text`` with lone surrogates replaced by U+FFFD (pairs joined); encodable as UTF-8 afterwards."""
    if _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def is_text_action(action: Any) -> bool:
    """Whether the env reads ``action`` as text: a ``str``, ``bytes`` / ``bytearray`` or None (= empty)."""
    return action is None or isinstance(action, (str, bytes, bytearray))


def coerce_action_text(action: Any) -> str:
    """The text of an action: str as it is, bytes decoded as UTF-8 (invalid bytes become U+FFFD), None -> "".

    Lone surrogates become U+FFFD (:func:`valid_unicode`), so everything downstream (the
    transcript, retrievers, judges, JSON logs) gets text that UTF-8 can encode. Any other object (a list, a dict, a
    number) is not text and gives "": the env answers it as an invalid action (``parse_error="non_text"``) instead
    of searching its ``str()``.
    """
    if action is None:
        return ""
    if isinstance(action, str):
        return valid_unicode(action)
    if isinstance(action, (bytes, bytearray)):
        return bytes(action).decode("utf-8", errors="replace")
    return ""
