"""Text hygiene shared by the environment, the retrievers and the judges.

A Python ``str`` can hold code points that no encoder accepts: lone surrogates (``"\\ud800"``), which a fuzzer, a
JSON payload with a broken ``\\ud83d`` escape, or a careless agent can produce. UTF-8 cannot encode them, so the
Rust tokenizers behind sentence-transformers and Hugging Face models raise on them, and one such query would fail a
whole batch. :func:`valid_unicode` replaces each lone surrogate with U+FFFD (the replacement character), joins
surrogate pairs into the character they stand for, and leaves every other string as it is (the same object).
"""

from __future__ import annotations

import re

__all__ = ["valid_unicode"]

_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_unicode(text: str) -> str:
    """``text`` with lone surrogates replaced by U+FFFD (pairs joined); encodable as UTF-8 afterwards."""
    if _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
