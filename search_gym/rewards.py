"""Answer scoring shared by the environments and the trainers.

SQuAD-style normalisation (lowercase, drop punctuation, drop the articles a/an/the, collapse whitespace), then
exact match, substring exact match or token F1 against the best of the gold answers. Unlike Search-R1's reward we
score the single answer the agent gave; we do not require two ``<answer>`` matches in the text.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower, strip punctuation and articles, collapse whitespace."""
    text = str(text).lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, golden_answers: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised gold answer."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golden_answers))


def substring_exact_match(prediction: str, golden_answers: Sequence[str]) -> float:
    """1.0 when any normalised gold answer occurs inside the normalised prediction."""
    pred = normalize_answer(prediction)
    return float(any(normalize_answer(g) and normalize_answer(g) in pred for g in golden_answers))


def f1_score(prediction: str, golden_answers: Sequence[str]) -> float:
    """Best token-level F1 between the prediction and any gold answer."""
    pred_tokens = normalize_answer(prediction).split()
    best = 0.0
    for gold in golden_answers:
        gold_tokens = normalize_answer(gold).split()
        common = Counter(pred_tokens) & Counter(gold_tokens)
        overlap = sum(common.values())
        if overlap == 0:
            continue
        precision = overlap / len(pred_tokens)
        recall = overlap / len(gold_tokens)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


REWARD_FUNCTIONS = {"em": exact_match, "substring_em": substring_exact_match, "f1": f1_score}


def score_answer(prediction: str, golden_answers: Sequence[str], metric: str = "em") -> float:
    """Score with the named metric: ``"em"``, ``"substring_em"`` or ``"f1"``."""
    try:
        fn = REWARD_FUNCTIONS[metric]
    except KeyError:
        raise ValueError(f"unknown reward metric {metric!r}; choose one of {sorted(REWARD_FUNCTIONS)}") from None
    return fn(prediction, golden_answers)
