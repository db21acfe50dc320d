"""Sparse retrieval with BM25 (bm25s), same corpus format, index folder conventions and :class:`Hit` outputs as
the dense retriever.

Tokenisation: lower-case words of two or more characters, English stopwords removed, Snowball stemming when
PyStemmer is installed (``stemmer=None``, the default, means "if available"; the choice is recorded in meta.json,
so an index built with stemming is rebuilt when loaded without it). The corpus is tokenised in chunks so the raw
texts are never all in memory; the folder holds bm25s's sparse matrix, the tokenizer vocabulary,
``offsets.npy`` and ``meta.json`` (written last).

Passages sharing no term with the query score 0 and are not returned, so a query may get fewer than ``k`` hits.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from search_gym.retrieval.base import (
    CorpusIndex,
    Hit,
    PassageStore,
    _progress,
    clean_queries,
    read_meta,
)

logger = logging.getLogger(__name__)

META_FORMAT = 1
_CHUNK = 10_000  # passages tokenised per step while building


def _stemmer_available() -> bool:
    try:
        import Stemmer  # noqa: F401  (PyStemmer)
    except ImportError:
        return False
    return True


class BM25Retriever(CorpusIndex):
    """BM25 over a Search-R1 / FlashRAG JSONL corpus.

    Args:
        corpus_path: JSONL file of ``{"id", "contents"}`` rows.
        index_dir: exact folder of this index; default ``indexes_dir()/<stem>-<sha[:12]>-bm25``.
        k1, b, method: BM25 parameters (bm25s names; "lucene" is Lucene's variant, as in Pyserini).
        stemmer: True = require PyStemmer, False = no stemming, None = stem when PyStemmer is installed.
        progress: show progress bars while building.
    """

    kind = "bm25"
    meta_format = META_FORMAT
    _runtime_fields = ("_lock", "_model", "_tokenizer", "_store", "_fingerprint")

    def __init__(
        self,
        corpus_path: str | Path,
        index_dir: str | Path | None = None,
        k1: float = 1.5,
        b: float = 0.75,
        method: str = "lucene",
        stemmer: bool | None = None,
        progress: bool = True,
    ):
        self.k1 = float(k1)
        self.b = float(b)
        self.method = method
        available = _stemmer_available()
        if stemmer and not available:
            raise ImportError("stemmer=True needs PyStemmer: pip install PyStemmer")
        self.stem = available if stemmer is None else bool(stemmer)
        self.progress = progress
        self.name = "bm25" + ("-stem" if self.stem else "")
        self._init_index(corpus_path, index_dir)

    def _init_runtime(self) -> None:
        super()._init_runtime()
        self._model: Any = None
        self._tokenizer: Any = None

    def __repr__(self) -> str:
        return f"BM25Retriever(corpus_path={str(self.corpus_path)!r}, stem={self.stem})"

    def index_suffix(self) -> str:
        return self.name

    @property
    def is_loaded(self) -> bool:
        return self._model is not None

    def _params(self) -> dict[str, Any]:
        return {"k1": self.k1, "b": self.b, "method": self.method, "stemmer": self.stem, "stopwords": "en",
                "lower": True}

    def _stale_detail(self, meta: dict[str, Any], folder: Path) -> str | None:
        if meta.get("params") != self._params():
            return f"parameters changed ({meta.get('params')} -> {self._params()})"
        if not (folder / "offsets.npy").is_file() or not (folder / "bm25").is_dir():
            return "index files missing"
        return None

    def _make_tokenizer(self) -> Any:
        from bm25s.tokenization import Tokenizer

        stemmer = None
        if self.stem:
            import Stemmer

            stemmer = Stemmer.Stemmer("english")
        return Tokenizer(lower=True, stopwords="en", stemmer=stemmer)

    def _build(self, folder: Path, progress: bool) -> None:
        import bm25s
        from bm25s.tokenization import Tokenized

        t0 = time.perf_counter()
        store = self._begin_build(folder, progress)
        n = len(store)
        tokenizer = self._make_tokenizer()
        ids: list[list[int]] = []
        bar = _progress(total=n, desc=f"tokenising {self.corpus_path.name}", unit="psg", disable=not progress)
        for a in range(0, n, _CHUNK):
            b = min(n, a + _CHUNK)
            ids.extend(tokenizer.streaming_tokenize(store.contents_range(a, b), update_vocab=True))
            bar.update(b - a)
        bar.close()
        store.close()

        model = bm25s.BM25(k1=self.k1, b=self.b, method=self.method)
        model.index(Tokenized(ids=ids, vocab=tokenizer.get_vocab_dict()), show_progress=progress)
        del ids
        tmp = folder / "bm25.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save(str(tmp), show_progress=False)
        tokenizer.save_vocab(str(tmp))
        shutil.rmtree(folder / "bm25", ignore_errors=True)
        tmp.rename(folder / "bm25")

        self._finish_build(folder, count=n, params=self._params(), vocab_size=len(tokenizer.get_vocab_dict()),
                           timings_s={"total": round(time.perf_counter() - t0, 3)})

    def _load(self, folder: Path) -> None:
        import bm25s

        meta = read_meta(folder)
        assert meta is not None
        model = bm25s.BM25.load(str(folder / "bm25"), load_vocab=True, mmap=False, show_progress=False)
        tokenizer = self._make_tokenizer()
        tokenizer.load_vocab(str(folder / "bm25"))
        offsets = np.load(folder / "offsets.npy", mmap_mode="r")
        if len(offsets) - 1 != meta["count"]:
            raise RuntimeError(f"BM25 index at {folder} is inconsistent; delete the folder to rebuild it")
        self._tokenizer = tokenizer
        self._store = PassageStore(self.corpus_path, offsets)
        self._model = model

    def __len__(self) -> int:
        self.load()
        assert self._store is not None
        return len(self._store)

    def search(self, queries: Sequence[str], k: int = 3, *, keep_empty: bool = False) -> list[list[Hit]]:
        """Top-``k`` passages per query by BM25 score, best first; queries with no known term get [].

        ``keep_empty`` is accepted for symmetry with :meth:`DenseRetriever.search`: an empty query has no term to
        score, so it gets [] either way (as with the pyserini BM25 server of Search-R1).
        """
        kept, positions = clean_queries(queries)
        n_queries = 1 if isinstance(queries, str) else len(queries)
        results: list[list[Hit]] = [[] for _ in range(n_queries)]
        if not kept or k <= 0:
            return results
        self.load()
        assert self._store is not None
        with self._lock:  # the tokenizer's stem cache is a plain dict it updates while tokenising
            token_ids = self._tokenizer.tokenize(kept, update_vocab=False, return_as="ids", show_progress=False,
                                                 allow_empty=False)
        live = [(pos, toks) for pos, toks in zip(positions, token_ids) if toks]
        if not live:
            return results
        k = min(int(k), len(self._store))
        docs, scores = self._model.retrieve([toks for _, toks in live], k=k, return_as="tuple",
                                            show_progress=False, n_threads=0)
        for (pos, _), row_docs, row_scores in zip(live, docs, scores):
            hits = []
            for i, score in zip(row_docs, row_scores):
                if score <= 0:
                    continue
                doc_id, contents = self._store.get(int(i))
                hits.append(Hit(doc_id, contents, float(score)))
            results[pos] = hits
        return results
