"""Retrieval quality on QA data: answer recall@k and evidence-title recall@k.

* ``answer_recall@k``: the fraction of questions for which one of the top-k passages contains a gold answer,
  both sides SQuAD-normalised (lower-case, punctuation and the articles a/an/the removed, whitespace collapsed)
  and matched on word boundaries (DPR's has_answer criterion: "1" does not match inside "1990").
* ``title_recall@k``: the fraction of questions that name an evidence title (``metadata["evidence_title"]``, a
  string or a list of strings) for which a top-k passage has that title (case-insensitive). Reported with
  ``n_with_title`` only when at least one item has a title.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from search_gym.retrieval.base import Retriever, _progress
from search_gym.rewards import normalize_answer

def _get(item: Any, key: str, default: Any = None) -> Any:
    if isinstance(item, dict):
        return item.get(key, default)
    return getattr(item, key, default)


def _evidence_titles(item: Any) -> list[str]:
    meta = _get(item, "metadata") or {}
    title = meta.get("evidence_title") if isinstance(meta, dict) else getattr(meta, "evidence_title", None)
    if title is None:
        return []
    titles = [title] if isinstance(title, str) else list(title)
    return [t.strip().casefold() for t in titles if t and str(t).strip()]


def _answers(item: Any) -> list[str]:
    gold = _get(item, "golden_answers")
    if gold is None:
        gold = _get(item, "answers", [])
    gold = [gold] if isinstance(gold, str) else list(gold or [])
    return [a for a in (normalize_answer(g) for g in gold) if a]


def recall_at_k(
    retriever: Retriever,
    items: Iterable[Any],
    ks: Sequence[int] = (1, 5),
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, float]:
    """Answer and title recall at each k in ``ks`` over ``items`` (dicts or objects with ``question``,
    ``golden_answers`` and optionally ``metadata["evidence_title"]``). Returns the metrics plus ``n``."""
    items = list(items)
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError("ks must be positive integers")
    k_max = ks[-1]
    answer_hits = {k: 0 for k in ks}
    title_hits = {k: 0 for k in ks}
    n_titled = 0
    bar = _progress(total=len(items), desc=f"recall@{k_max} {getattr(retriever, 'name', '')}", unit="q",
                    disable=not progress)
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        results = retriever.search([str(_get(it, "question", "")) for it in batch], k=k_max)
        for item, hits in zip(batch, results):
            answers = [f" {a} " for a in _answers(item)]
            padded = [f" {normalize_answer(h.contents)} " for h in hits]
            first_answer = next((r for r, p in enumerate(padded) if any(a in p for a in answers)), None)
            titles = _evidence_titles(item)
            first_title = None
            if titles:
                n_titled += 1
                first_title = next((r for r, h in enumerate(hits) if h.title.strip().casefold() in titles), None)
            for k in ks:
                if first_answer is not None and first_answer < k:
                    answer_hits[k] += 1
                if first_title is not None and first_title < k:
                    title_hits[k] += 1
        bar.update(len(batch))
    bar.close()

    n = len(items)
    out: dict[str, float] = {"n": n}
    for k in ks:
        out[f"answer_recall@{k}"] = answer_hits[k] / n if n else 0.0
    if n_titled:
        out["n_with_title"] = n_titled
        for k in ks:
            out[f"title_recall@{k}"] = title_hits[k] / n_titled
    return out
