"""Hybrid retrieval: dense and BM25 rankings fused by reciprocal-rank fusion (RRF).

RRF (Cormack, Clarke and Buettcher, SIGIR 2009) scores a passage by the ranks it gets from each retriever::

    score(p) = sum over retrievers r that return p of  weight_r / (rrf_k + rank_r(p))      (rank 1 = best)

It needs no score calibration between the retrievers (cosine similarities and BM25 scores live on unrelated
scales), which is why it is the usual way to combine dense and sparse retrieval. ``rrf_k`` = 60 is the value of
the original paper; it was not tuned on this project's data (``benchmarks/recall.py --rrf-k`` measures others on
the QA train split).

Each retriever is asked for ``max(k, depth)`` candidates, so the fused top-k does not depend on ``k`` as long as
``k <= depth``: a passage ranked 40th by BM25 and 2nd by dense can still reach the fused top 3.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from search_gym.retrieval.base import Hit, accepts_keep_empty, clean_queries

#: The constant of the original RRF paper; larger values flatten the difference between ranks.
DEFAULT_RRF_K = 60
#: Candidates taken from each retriever before fusion.
DEFAULT_DEPTH = 50


class HybridRetriever:
    """Reciprocal-rank fusion of several retrievers over the same corpus (dense + BM25 by default).

    Args:
        retrievers: the retrievers to fuse, e.g. ``[DenseRetriever(...), BM25Retriever(...)]``. They must index
            the same corpus: passages are matched across them by ``(doc_id, contents)``.
        rrf_k: the RRF constant (>= 0). 60 is the published default.
        depth: candidates requested from each retriever per query (at least ``k`` are always requested).
        weights: one non-negative weight per retriever (default: all 1, plain RRF).

    ``search`` returns :class:`Hit` objects whose ``score`` is the fused RRF score. Ties (equal fused scores) go to
    the passage with the better single best rank, then to the earlier retriever in ``retrievers``, so the output
    is deterministic.
    """

    def __init__(
        self,
        retrievers: Sequence[Any],
        rrf_k: float = DEFAULT_RRF_K,
        depth: int = DEFAULT_DEPTH,
        weights: Sequence[float] | None = None,
    ):
        retrievers = list(retrievers)
        if len(retrievers) < 2:
            raise ValueError(f"a hybrid retriever fuses at least 2 retrievers, got {len(retrievers)}")
        for r in retrievers:
            if not callable(getattr(r, "search", None)):
                raise TypeError(f"{r!r} has no search(queries, k) method")
        if not rrf_k >= 0:  # also refuses NaN
            raise ValueError(f"rrf_k must be >= 0, got {rrf_k!r}")
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be a positive int, got {depth!r}")
        weights = [1.0] * len(retrievers) if weights is None else [float(w) for w in weights]
        if len(weights) != len(retrievers) or any(not w >= 0 for w in weights):
            raise ValueError(f"weights must be {len(retrievers)} non-negative numbers, got {weights!r}")
        paths = {str(getattr(r, "corpus_path")) for r in retrievers if getattr(r, "corpus_path", None) is not None}
        if len(paths) > 1:
            raise ValueError(f"hybrid retrievers must share one corpus, got {sorted(paths)}")
        self.retrievers = retrievers
        self.rrf_k = float(rrf_k)
        self.depth = depth
        self.weights = weights
        self.name = "hybrid-rrf(" + "+".join(str(getattr(r, "name", type(r).__name__)) for r in retrievers) + ")"

    def __repr__(self) -> str:
        return f"HybridRetriever({self.retrievers!r}, rrf_k={self.rrf_k:g}, depth={self.depth})"

    @property
    def corpus_path(self):
        """The shared corpus file (None when no component reports one)."""
        return next((r.corpus_path for r in self.retrievers if getattr(r, "corpus_path", None) is not None), None)

    def load(self) -> HybridRetriever:
        """Load (building when missing) every component index."""
        for r in self.retrievers:
            if hasattr(r, "load"):
                r.load()
        return self

    def build(self, progress: bool = True, force: bool = False):
        """Build every component index; returns their folders."""
        return [r.build(progress=progress, force=force) for r in self.retrievers if hasattr(r, "build")]

    def __len__(self) -> int:
        return len(self.retrievers[0])

    def __bool__(self) -> bool:
        return True  # never len(): that would load the indexes as a side effect

    def search(self, queries: Sequence[str], k: int = 3, *, keep_empty: bool = False) -> list[list[Hit]]:
        """Top-``k`` passages per query by fused RRF score, best first.

        ``keep_empty`` is passed to every component that accepts it (the dense retriever then encodes an empty
        query, BM25 returns nothing for it), so the hybrid behaves like its parts under ``parse_mode="search_r1"``.
        """
        n_queries = 1 if isinstance(queries, str) else len(queries)
        kept, positions = clean_queries(queries, keep_empty=keep_empty)
        results: list[list[Hit]] = [[] for _ in range(n_queries)]
        if not kept or k <= 0:
            return results
        depth = max(int(k), self.depth)
        rankings = []
        for r in self.retrievers:
            if keep_empty and accepts_keep_empty(r):
                rankings.append(r.search(kept, depth, keep_empty=True))
            else:  # a retriever without the keyword drops empty queries itself
                rankings.append(r.search(kept, depth))
        for j, pos in enumerate(positions):
            results[pos] = fuse([ranking[j] for ranking in rankings], int(k), self.rrf_k, self.weights)
        return results


def fuse(rankings: Sequence[Sequence[Any]], k: int, rrf_k: float = DEFAULT_RRF_K,
         weights: Sequence[float] | None = None) -> list[Hit]:
    """Reciprocal-rank fusion of ranked hit lists (best first) into the top ``k`` :class:`Hit` objects.

    A passage is identified by ``(doc_id, contents)``; its fused score is ``sum_r w_r / (rrf_k + rank_r)`` with
    1-based ranks. Ties are broken by the best single rank, then by the retriever that gave it that rank (earlier
    in ``rankings`` first), then by first appearance.
    """
    weights = [1.0] * len(rankings) if weights is None else list(weights)
    scores: dict[tuple[str, str], float] = {}
    order: dict[tuple[str, str], tuple[int, int]] = {}  # key -> (best rank, retriever that gave it)
    for r, hits in enumerate(rankings):
        seen: set[tuple[str, str]] = set()
        for rank, hit in enumerate(hits, start=1):
            key = (str(hit.doc_id), str(hit.contents))
            if key in seen:
                continue  # a retriever listing one passage twice counts it once, at its better rank
            seen.add(key)
            scores[key] = scores.get(key, 0.0) + weights[r] / (rrf_k + rank)
            if key not in order or rank < order[key][0]:
                order[key] = (rank, r)
    ranked = sorted(scores, key=lambda key: (-scores[key], order[key][0], order[key][1]))
    return [Hit(doc_id, contents, scores[(doc_id, contents)]) for doc_id, contents in ranked[:k]]
