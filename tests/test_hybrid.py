"""Hybrid retrieval: reciprocal-rank fusion of dense and BM25 (search_gym.retrieval.hybrid)."""

from __future__ import annotations

import pickle

import pytest

from conftest import needs_minilm

from search_gym.retrieval import (
    BM25Retriever,
    DenseRetriever,
    Hit,
    HybridRetriever,
    RetrieverConfig,
    get_retriever,
    make_retriever,
)
from search_gym.retrieval.hybrid import fuse


def hit(doc: str) -> Hit:
    return Hit(doc, f'"{doc}"\ntext of {doc}', 1.0)


class Ranked:
    """Test double: the same ranking for every non-empty query; records (queries, k, keep_empty)."""

    def __init__(self, ranking, name="ranked"):
        self.ranking, self.name, self.calls = list(ranking), name, []

    def search(self, queries, k=3, *, keep_empty=False):
        self.calls.append((list(queries), k, keep_empty))
        return [[hit(d) for d in self.ranking[:k]] if (q or keep_empty) else [] for q in queries]


class PlainRanked:
    """A retriever without the keep_empty keyword (a user's own object)."""

    name = "plain"

    def __init__(self, ranking):
        self.ranking, self.calls = list(ranking), []

    def search(self, queries, k=3):
        self.calls.append((list(queries), k))
        return [[hit(d) for d in self.ranking[:k]] if q else [] for q in queries]


def test_fuse_is_reciprocal_rank_fusion():
    fused = fuse([[hit("a"), hit("b"), hit("c")], [hit("c"), hit("a"), hit("d")]], k=4, rrf_k=60)
    assert [h.doc_id for h in fused] == ["a", "c", "b", "d"]
    assert [h.score for h in fused] == [1 / 61 + 1 / 62, 1 / 63 + 1 / 61, 1 / 62, 1 / 63]
    assert [h.contents for h in fused] == [hit(d).contents for d in "acbd"]
    assert [h.doc_id for h in fuse([[hit("a"), hit("b")], [hit("c"), hit("a")]], k=2)] == ["a", "c"]
    # rrf_k = 0: plain reciprocal ranks; weights scale each list
    assert [h.score for h in fuse([[hit("a")], [hit("b"), hit("a")]], k=2, rrf_k=0)] == [1.5, 1.0]
    weighted = fuse([[hit("a")], [hit("b")]], k=2, rrf_k=0, weights=[1.0, 2.0])
    assert [(h.doc_id, h.score) for h in weighted] == [("b", 2.0), ("a", 1.0)]


def test_fuse_breaks_ties_deterministically():
    # a and b have equal fused scores; both reach rank 1: a got it from the first retriever
    assert [h.doc_id for h in fuse([[hit("a"), hit("b")], [hit("b"), hit("a")]], k=2)] == ["a", "b"]
    assert [h.doc_id for h in fuse([[hit("b"), hit("a")], [hit("a"), hit("b")]], k=2)] == ["b", "a"]
    # only one list: its order is kept; a passage listed twice by one retriever counts once
    assert [h.doc_id for h in fuse([[hit("x"), hit("y"), hit("x")], []], k=3)] == ["x", "y"]
    # same id, different text: different passages
    twin = Hit("a", "other text", 1.0)
    assert len(fuse([[hit("a")], [twin]], k=5)) == 2


def test_hybrid_asks_each_retriever_for_depth_candidates_and_fuses():
    dense, sparse = Ranked("abcdef", "dense"), Ranked("fedcba", "bm25")
    hybrid = HybridRetriever([dense, sparse], rrf_k=60, depth=4)
    out = hybrid.search(["q1", "  ", "q2"], k=2)
    assert dense.calls == [(["q1", "q2"], 4, False)] and sparse.calls == [(["q1", "q2"], 4, False)]
    expected = fuse([[hit(d) for d in "abcd"], [hit(d) for d in "fedc"]], k=2)
    assert out == [expected, [], expected]
    assert hybrid.search(["q"], k=6)[0] == fuse([[hit(d) for d in "abcdef"], [hit(d) for d in "fedcba"]], k=6)
    assert dense.calls[-1][1] == 6  # k above depth: k candidates
    assert hybrid.search(["q"], k=0) == [[]] and hybrid.search([], k=3) == []
    assert len(hybrid.search("one string", k=1)) == 1
    assert hybrid.name == "hybrid-rrf(dense+bm25)"


def test_hybrid_keep_empty_reaches_the_parts_that_take_it():
    dense, plain = Ranked("ab"), PlainRanked("ba")
    hybrid = HybridRetriever([dense, plain], depth=2)
    out = hybrid.search(["", "q"], k=2, keep_empty=True)
    assert dense.calls[-1] == (["", "q"], 2, True) and plain.calls[-1] == (["", "q"], 2)
    assert [h.doc_id for h in out[0]] == ["a", "b"]  # only the dense part answers ''
    assert hybrid.search([""], k=2) == [[]]


def test_hybrid_arguments_are_checked(tiny_corpus_path, tmp_path):
    with pytest.raises(ValueError, match="at least 2"):
        HybridRetriever([Ranked("a")])
    with pytest.raises(TypeError, match="no search"):
        HybridRetriever([Ranked("a"), object()])
    with pytest.raises(ValueError, match="rrf_k"):
        HybridRetriever([Ranked("a"), Ranked("b")], rrf_k=-1)
    with pytest.raises(ValueError, match="depth"):
        HybridRetriever([Ranked("a"), Ranked("b")], depth=0)
    with pytest.raises(ValueError, match="weights"):
        HybridRetriever([Ranked("a"), Ranked("b")], weights=[1.0])
    other = tmp_path / "other.jsonl"
    other.write_text(tiny_corpus_path.read_text())
    with pytest.raises(ValueError, match="share one corpus"):
        HybridRetriever([BM25Retriever(tiny_corpus_path), BM25Retriever(other)])
    with pytest.raises(ValueError, match="rrf_k"):
        RetrieverConfig(kind="hybrid", rrf_k=-3)
    with pytest.raises(ValueError, match="index_dir"):
        make_retriever(RetrieverConfig(kind="hybrid", corpus_path=str(tiny_corpus_path), index_dir=str(tmp_path)))


def test_factory_builds_a_hybrid_from_the_shared_dense_and_bm25(tiny_corpus_path):
    corpus = str(tiny_corpus_path)
    hybrid = get_retriever(RetrieverConfig(kind="hybrid", corpus_path=corpus, rrf_k=30))
    assert isinstance(hybrid, HybridRetriever) and hybrid.rrf_k == 30
    dense, sparse = hybrid.retrievers
    assert dense is get_retriever(RetrieverConfig(kind="dense", corpus_path=corpus))  # one index per process
    assert sparse is get_retriever(RetrieverConfig(kind="bm25", corpus_path=corpus))
    clone = pickle.loads(pickle.dumps(hybrid))  # settings only; indexes reload lazily
    assert clone.rrf_k == 30 and [type(r) for r in clone.retrievers] == [DenseRetriever, BM25Retriever]


@needs_minilm
def test_hybrid_on_a_real_corpus_fuses_dense_and_bm25(tiny_corpus_path, tiny_qa_path):
    dense = DenseRetriever(tiny_corpus_path, progress=False)
    sparse = BM25Retriever(tiny_corpus_path, progress=False)
    hybrid = HybridRetriever([dense, sparse])
    queries = ["What is the capital of France?", "Which opera did Bizet compose?", "largest planet", ""]
    out = hybrid.search(queries, k=3)
    assert [h.title for h in out[0]][0] == "Paris" and out[1][0].title == "Carmen" and out[2][0].title == "Jupiter"
    for q, row in zip(queries[:3], out):
        assert row == fuse([dense.search([q], k=50)[0], sparse.search([q], k=50)[0]], k=3)
    assert out[3] == []
    assert [h.doc_id for h in hybrid.search([""], k=2, keep_empty=True)[0]] == \
        [h.doc_id for h in dense.search([""], k=2, keep_empty=True)[0]]
    assert len(hybrid) == 8

    from search_gym.envs import SearchEnv

    env = SearchEnv(dataset=str(tiny_qa_path), retriever="hybrid", corpus_path=str(tiny_corpus_path))
    env.reset(seed=0, options={"index": 0})
    obs, *_ = env.step("<search>capital of France</search>")
    assert '<information>Doc 1(Title: "Paris")' in obs["prefill"]  # Search-R1 keeps the title's quotes
