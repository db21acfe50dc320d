"""Retrieval tests on a 30-passage corpus with the real (offline) MiniLM encoder."""

from __future__ import annotations

import json
import os
import pickle

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest

from conftest import needs_minilm

from search_gym.retrieval import (
    BM25Retriever,
    DenseRetriever,
    Hit,
    Retriever,
    RetrieverConfig,
    get_retriever,
    ivfpq_params,
    make_retriever,
    normalize_answer,
    recall_at_k,
    resolve_encoder,
)


PASSAGES = [
    ("Eiffel Tower", "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
                     "It was designed by the company of engineer Gustave Eiffel and completed in 1889."),
    ("Photosynthesis", "Photosynthesis is the process by which green plants use sunlight, water and carbon "
                       "dioxide to produce glucose and release oxygen."),
    ("Mount Everest", "Mount Everest is Earth's highest mountain above sea level, located in the Himalayas on "
                      "the border between Nepal and China."),
    ("Charles Darwin", "Charles Darwin was an English naturalist who wrote On the Origin of Species and proposed "
                       "the theory of evolution by natural selection."),
    ("Python (programming language)", "Python is a high-level programming language created by Guido van Rossum "
                                      "and first released in 1991."),
    ("Great Wall of China", "The Great Wall of China is a series of fortifications built across northern China "
                            "to protect against nomadic invasions."),
    ("Amazon River", "The Amazon River in South America is the largest river by discharge volume of water in "
                     "the world."),
    ("Albert Einstein", "Albert Einstein was a theoretical physicist who developed the theory of relativity and "
                        "won the Nobel Prize in Physics in 1921."),
    ("Moon", "The Moon is Earth's only natural satellite; Apollo 11 astronauts first landed on it in 1969."),
    ("Honey bee", "Honey bees are social insects that live in colonies, pollinate flowers and produce honey and "
                  "beeswax."),
    ("Chess", "Chess is a two-player strategy board game played on a checkered board with sixty-four squares."),
    ("Mozart", "Wolfgang Amadeus Mozart was a prolific composer of the Classical period, born in Salzburg in "
               "1756."),
    ("Tokyo", "Tokyo is the capital of Japan and one of the most populous metropolitan areas in the world."),
    ("Volcano", "A volcano is a rupture in the crust of a planet through which lava, ash and gases escape."),
    ("Penicillin", "Penicillin, discovered by Alexander Fleming in 1928, was the first widely used antibiotic."),
    ("Sahara", "The Sahara is the largest hot desert in the world, covering much of North Africa."),
    ("Leonardo da Vinci", "Leonardo da Vinci was an Italian Renaissance polymath who painted the Mona Lisa."),
    ("Coffee", "Coffee is a brewed drink prepared from roasted coffee beans, the seeds of Coffea plants."),
    ("Olympic Games", "The modern Olympic Games are an international multi-sport event first held in Athens in "
                      "1896."),
    ("Blue whale", "The blue whale is a marine mammal and the largest animal known to have ever existed."),
    ("Shakespeare", "William Shakespeare was an English playwright who wrote Hamlet, Macbeth and Romeo and "
                    "Juliet."),
    ("DNA", "DNA is a molecule composed of two strands coiling around each other to form a double helix that "
            "carries genetic instructions."),
    ("Bicycle", "A bicycle is a human-powered, pedal-driven vehicle with two wheels attached to a frame."),
    ("Antarctica", "Antarctica is Earth's southernmost continent and contains the geographic South Pole."),
    ("Jazz", "Jazz is a music genre that originated in the African-American communities of New Orleans."),
    ("Volleyball", "Volleyball is a team sport in which two teams of six players are separated by a net."),
    ("Solar System", "The Solar System consists of the Sun and the objects that orbit it, including eight "
                     "planets."),
    ("Roman Empire", "The Roman Empire was the post-Republican state of ancient Rome, ruled by emperors from "
                     "27 BC."),
    ("Tea", "Tea is an aromatic beverage prepared by pouring hot water over cured leaves of Camellia sinensis."),
    ("Internet", "The Internet is the global system of interconnected computer networks that uses the TCP/IP "
                 "protocol suite."),
]


def write_corpus(path, passages=PASSAGES):
    with open(path, "w") as f:
        f.writelines(json.dumps({"id": str(i), "contents": f'"{title}"\n{text}'}) + "\n" for i, (title, text) in enumerate(passages))
    return path


pytestmark = pytest.mark.usefixtures("isolated_retrievers")


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path / "passages.jsonl")


@pytest.fixture(scope="module")
def flat_retriever(tmp_path_factory):
    """One flat index shared by the read-only tests (building it is the slow part)."""
    root = tmp_path_factory.mktemp("shared")
    path = write_corpus(root / "passages.jsonl")
    retriever = DenseRetriever(path, index_dir=root / "index-flat", progress=False)
    retriever.build(progress=False)  # its tests are marked needs_minilm: a missing encoder fails them in setup
    return retriever


# ------------------------------------------------------------------------------------------------------ Hit, misc


def test_hit_title_text_and_dict():
    hit = Hit("7", '"Eiffel Tower"\nThe tower is in Paris.\nSecond line.', 0.5)
    assert hit.title == "Eiffel Tower"
    assert hit.text == "The tower is in Paris.\nSecond line."
    d = hit.to_dict()
    assert d["doc_id"] == "7" and d["title"] == "Eiffel Tower" and d["score"] == 0.5
    json.dumps(d)
    assert Hit("1", "no title line", 1.0).title == ""
    assert Hit("1", "no title line", 1.0).text == "no title line"


def test_encoder_presets():
    assert resolve_encoder("minilm").name_or_path == "all-MiniLM-L6-v2"
    e5 = resolve_encoder("e5-base-v2")
    assert (e5.name_or_path, e5.query_prefix, e5.passage_prefix, e5.max_seq_length) == (
        "intfloat/e5-base-v2", "query: ", "passage: ", 256)
    assert resolve_encoder("intfloat/e5-base-v2") is e5
    assert resolve_encoder("some-org/other-model").query_prefix == ""


def test_ivfpq_params_clamp():
    tiny = ivfpq_params(30, 384)
    assert tiny["nlist"] == 1 and 384 % tiny["m"] == 0 and 2 ** tiny["nbits"] <= 30
    wiki = ivfpq_params(21_000_000, 768)
    assert wiki["m"] == 96 and wiki["nbits"] == 8
    assert 39 * wiki["nlist"] <= wiki["n_train"] <= 1_000_000
    with pytest.raises(ValueError, match="at least 2 passages"):
        ivfpq_params(1, 384)
    with pytest.raises(ValueError, match="m=7 must divide"):
        ivfpq_params(1000, 384, m=7)


def test_compressed_corpus_is_refused(tmp_path):
    with pytest.raises(ValueError, match="gunzip"):
        DenseRetriever(tmp_path / "wiki-18.jsonl.gz")
    with pytest.raises(ValueError, match="gunzip"):
        BM25Retriever(tmp_path / "wiki-18.jsonl.gz")


def test_fingerprint_cache_for_large_files(tmp_path, monkeypatch):
    import hashlib

    from search_gym.retrieval import base

    monkeypatch.setattr(base, "_FP_CACHE_MIN_BYTES", 0)  # treat the tiny file as "large" to exercise the cache
    path = write_corpus(tmp_path / "big.jsonl")
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert base.corpus_fingerprint(path) == expected
    cache = json.loads((tmp_path / "cache" / "indexes" / "fingerprints.json").read_text())
    assert cache[os.path.realpath(path)]["sha256"] == expected
    base._FP_CACHE.clear()
    assert base.corpus_fingerprint(path) == expected  # served from the on-disk cache
    write_corpus(path, PASSAGES[:3])
    assert base.corpus_fingerprint(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_normalize_answer():
    assert normalize_answer("  The Eiffel-Tower, Paris! ") == "eiffeltower paris"


# ------------------------------------------------------------------------------------------------------ dense


@needs_minilm
def test_flat_finds_obvious_doc(flat_retriever):
    assert isinstance(flat_retriever, Retriever)
    hits = flat_retriever.search(["Who wrote On the Origin of Species?"], k=3)[0]
    assert len(hits) == 3
    assert hits[0].title == "Charles Darwin" and hits[0].doc_id == "3"
    assert hits[0].score >= hits[1].score >= hits[2].score


@needs_minilm
def test_batched_equals_single(flat_retriever):
    queries = ["highest mountain on Earth", "capital of Japan", "first antibiotic discovery"]
    batched = flat_retriever.search(queries, k=4)
    for q, row in zip(queries, batched):
        single = flat_retriever.search([q], k=4)[0]
        assert [h.doc_id for h in single] == [h.doc_id for h in row]
        np.testing.assert_allclose([h.score for h in single], [h.score for h in row], atol=1e-5)


@needs_minilm
def test_empty_and_huge_queries(flat_retriever):
    res = flat_retriever.search(["", "   \n\t", "Mona Lisa painter", "x" * (1 << 20)], k=2)
    assert res[0] == [] and res[1] == []
    assert res[2][0].title == "Leonardo da Vinci"
    assert len(res[3]) == 2
    assert flat_retriever.search([], k=3) == []
    assert flat_retriever.search(["tea"], k=0) == [[]]
    assert len(flat_retriever.search(["tea"], k=100)[0]) == len(PASSAGES)


@needs_minilm
def test_direct_faiss_path(flat_retriever):
    emb = flat_retriever.encode_queries(["largest hot desert"])
    assert emb.dtype == np.float32 and emb.shape == (1, 384)
    _, ids = flat_retriever.search_embeddings(emb, k=2)
    assert flat_retriever.doc(int(ids[0, 0]))[0] == "15"


@needs_minilm
@pytest.mark.parametrize("index_type", ["hnsw", "ivfpq"])
def test_approximate_indexes(corpus, tmp_path, index_type):
    retriever = DenseRetriever(corpus, index_type=index_type, progress=False, search_threads=1)
    res = retriever.search(["Who wrote On the Origin of Species?", "largest animal that ever lived"], k=3)
    assert res[0][0].title == "Charles Darwin"
    assert res[1][0].title == "Blue whale"
    meta = retriever.meta
    assert meta["index_type"] == index_type and meta["count"] == len(PASSAGES) and meta["dim"] == 384
    assert retriever.index_dir.parent == tmp_path / "cache" / "indexes"
    assert retriever.index_dir.name.endswith(f"-all-minilm-l6-v2-{index_type}")


@needs_minilm
def test_default_dir_reuse_and_rebuild_on_corpus_change(corpus, tmp_path):
    first = DenseRetriever(corpus, progress=False)
    first.build(progress=False)
    assert first.builds == 1
    folder = first.index_dir
    index_mtime = (folder / "index.faiss").stat().st_mtime_ns
    for name in ("index.faiss", "offsets.npy", "meta.json"):
        assert (folder / name).is_file()
    assert not (folder / "shards").exists()
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["encoder"]["name"] == "all-MiniLM-L6-v2" and "faiss-cpu" in meta["versions"]

    again = DenseRetriever(corpus, progress=False)
    again.build(progress=False)
    assert again.builds == 0 and again.index_dir == folder
    assert (folder / "index.faiss").stat().st_mtime_ns == index_mtime

    write_corpus(corpus, PASSAGES[:20])
    changed = DenseRetriever(corpus, progress=False)
    assert changed.index_dir != folder
    assert len(changed) == 20 and changed.builds == 1


@needs_minilm
def test_explicit_dir_rebuilds_when_corpus_changes(corpus, tmp_path, caplog):
    folder = tmp_path / "my-index"
    DenseRetriever(corpus, index_dir=folder, progress=False).build(progress=False)
    write_corpus(corpus, PASSAGES[::-1])
    retriever = DenseRetriever(corpus, index_dir=folder, progress=False)
    with caplog.at_level("WARNING"):
        retriever.build(progress=False)
    assert retriever.builds == 1
    assert "corpus fingerprint changed" in caplog.text
    assert retriever.search(["Who wrote On the Origin of Species?"], k=1)[0][0].doc_id == "26"


@needs_minilm
def test_interrupted_build_resumes(corpus, tmp_path, monkeypatch):
    folder = tmp_path / "resumable"
    encoded: list[int] = []
    original = DenseRetriever._encode_passages

    def failing(self, texts):
        if encoded:
            raise KeyboardInterrupt("simulated interruption")
        encoded.append(len(texts))
        return original(self, texts)

    monkeypatch.setattr(DenseRetriever, "_encode_passages", failing)
    with pytest.raises(KeyboardInterrupt, match="simulated interruption"):
        DenseRetriever(corpus, index_dir=folder, shard_size=8, progress=False).build(progress=False)
    assert encoded == [8]
    assert sorted(p.name for p in (folder / "shards").glob("*.npy")) == ["000000.npy"]
    assert not (folder / "meta.json").exists()

    def counting(self, texts):
        encoded.append(len(texts))
        return original(self, texts)

    monkeypatch.setattr(DenseRetriever, "_encode_passages", counting)
    retriever = DenseRetriever(corpus, index_dir=folder, shard_size=8, progress=False)
    retriever.build(progress=False)
    assert encoded == [8, 8, 8, 6]  # shard 0 was not encoded again
    assert retriever.meta["encoded_passages"] == 22

    fresh = DenseRetriever(corpus, index_dir=tmp_path / "fresh", shard_size=8, progress=False)
    fresh.build(progress=False)
    q = fresh.encode_queries(["largest river by discharge"])
    for a, b in zip(fresh.search_embeddings(q, 5), retriever.search_embeddings(q, 5)):
        np.testing.assert_allclose(a, b, atol=1e-6)


@needs_minilm
def test_retriever_pickles_without_index(flat_retriever):
    clone = pickle.loads(pickle.dumps(flat_retriever))
    assert not clone.is_loaded
    assert len(pickle.dumps(flat_retriever)) < 10_000
    assert clone.search(["Mona Lisa painter"], k=1)[0][0].title == "Leonardo da Vinci"
    assert clone.builds == 0


# ------------------------------------------------------------------------------------------------------ BM25


def test_bm25_search_and_persistence(corpus):
    retriever = BM25Retriever(corpus, progress=False)
    assert isinstance(retriever, Retriever)
    res = retriever.search(["Origin of Species naturalist", "", "zzzz qqqq", "the of and", "x" * (1 << 20)], k=3)
    assert res[0][0].title == "Charles Darwin"
    assert res[1] == [] and res[2] == [] and res[3] == [] and res[4] == []
    assert retriever.builds == 1
    assert (retriever.index_dir / "meta.json").is_file()

    again = BM25Retriever(corpus, progress=False)
    assert again.search(["capital of Japan"], k=1)[0][0].title == "Tokyo"
    assert again.builds == 0

    clone = pickle.loads(pickle.dumps(again))
    assert clone.search(["Sahara desert"], k=1)[0][0].doc_id == "15"

    write_corpus(corpus, PASSAGES[:10])
    changed = BM25Retriever(corpus, progress=False)
    assert changed.search(["Sahara desert"], k=3)[0] == []
    assert changed.builds == 1 and len(changed) == 10


# ------------------------------------------------------------------------------------------------------ factory


def test_config_help_and_pickle(corpus):
    cfg = RetrieverConfig(kind="bm25", corpus_path=corpus)
    assert isinstance(cfg.corpus_path, str)
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    assert set(RetrieverConfig.help()) == {"kind", "corpus_path", "encoder", "index_type", "index_dir", "device",
                                           "rrf_k", "url", "timeout_s", "retry_s"}
    assert all(RetrieverConfig.help().values())
    with pytest.raises(ValueError, match="kind must be one of"):
        RetrieverConfig(kind="colbert")


def test_get_retriever_memoises(corpus):
    cfg = RetrieverConfig(kind="bm25", corpus_path=str(corpus))
    first = get_retriever(cfg)
    assert get_retriever(pickle.loads(pickle.dumps(cfg))) is first
    assert make_retriever(cfg) is not first
    other = get_retriever(RetrieverConfig(kind="dense", corpus_path=str(corpus), index_type="hnsw"))
    assert isinstance(other, DenseRetriever) and other.index_type == "hnsw" and not other.is_loaded


def test_missing_embedded_corpus_message(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_build(name, *args, **kwargs):
        if name == "search_gym.build":
            raise ImportError("simulated")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_build)
    with pytest.raises(FileNotFoundError, match="search-gym setup"):
        make_retriever(RetrieverConfig())


# ------------------------------------------------------------------------------------------------------ evaluate


def test_recall_at_k_bm25(corpus):
    items = [
        {"question": "Who wrote On the Origin of Species?", "golden_answers": ["Charles Darwin"],
         "metadata": {"evidence_title": "Charles Darwin"}},
        {"question": "In which year was the Eiffel Tower completed?", "golden_answers": ["1889"],
         "metadata": {"evidence_title": "Eiffel Tower"}},
        {"question": "What is the capital of Japan?", "golden_answers": ["Tokyo"]},
        {"question": "Which gas do plants release?", "golden_answers": ["nitrogen"]},
    ]
    out = recall_at_k(BM25Retriever(corpus, progress=False), items, ks=(1, 5), progress=False)
    assert out["n"] == 4 and out["n_with_title"] == 2
    assert out["answer_recall@1"] == out["answer_recall@5"] == 0.75
    assert out["title_recall@1"] == out["title_recall@5"] == 1.0


@needs_minilm
def test_recall_at_k_dense(flat_retriever):
    class Item:
        def __init__(self, question, answers, title):
            self.question, self.golden_answers, self.metadata = question, answers, {"evidence_title": title}

    items = [Item("the first person to walk on the moon landed in which year", ["1969"], "Moon"),
             Item("who painted the Mona Lisa", ["Leonardo da Vinci"], ["Leonardo da Vinci"]),
             Item("what sport uses a net and six players", ["volleyball"], "Volleyball")]
    out = recall_at_k(flat_retriever, items, ks=[1, 3], batch_size=2, progress=False)
    assert out["n"] == 3
    assert out["answer_recall@3"] == 1.0 and out["title_recall@3"] == 1.0
    assert out["answer_recall@1"] <= out["answer_recall@3"]
