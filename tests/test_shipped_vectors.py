"""The package's shipped passage embeddings (search_gym/retrieval/shipped_vectors.py): they belong to the corpus the
package builds, they are the bundled MiniLM's embeddings of it, a matching build uses them instead of encoding, and
anything that does not match (another corpus, a damaged file, shipped_vectors=False) encodes as before."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import needs_minilm
from search_gym import build, paths
from search_gym.data.corpus import load_corpus
from search_gym.retrieval import shipped_vectors
from search_gym.retrieval.dense import DenseRetriever
from search_gym.retrieval.encoders import encode, load_encoder, resolve_encoder


def _shipped_record() -> dict:
    records = sorted(shipped_vectors.SHIPPED_DIR.glob("*.json"))
    assert len(records) == 1, f"expected one shipped record, found {records}"
    return json.loads(records[0].read_text())


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(paths.CACHE_ENV_VAR, str(tmp_path_factory.mktemp("search_gym_cache")))
        yield build.ensure_embedded(progress=False)


def test_shipped_record_matches_the_embedded_corpus(embedded):
    """Fails when the embedded corpus changes without the shipped vectors being regenerated (the module docstring
    says how): the build would still be right, but slow again on a newcomer's machine."""
    record = _shipped_record()
    retriever = DenseRetriever(embedded.passages, encoder="minilm", progress=False)
    assert record["corpus_fingerprint"] == retriever.fingerprint
    assert record["encoder"] == resolve_encoder("minilm").passage_identity()
    assert record["count"] == len(load_corpus(embedded.passages))
    found = shipped_vectors.lookup(retriever.fingerprint, retriever.encoder.passage_identity(), record["count"])
    assert found is not None and found[0].shape == (record["count"], record["dim"]) and found[0].dtype == np.float32


@needs_minilm
def test_shipped_rows_are_the_bundled_minilm_embeddings(embedded):
    """Row i is passage i encoded by the bundled MiniLM (a spread of 24 rows re-encoded here, float32 on this CPU):
    the difference is float16 rounding plus float32 arithmetic order, far below what changes a ranking."""
    record = _shipped_record()
    vectors = shipped_vectors.lookup(record["corpus_fingerprint"], record["encoder"], record["count"])[0]
    passages = load_corpus(embedded.passages)
    rows = np.linspace(0, record["count"] - 1, 24).astype(int)
    spec = resolve_encoder("minilm")
    fresh = encode(load_encoder(spec, "cpu"), [passages[i].contents for i in rows], prefix=spec.passage_prefix,
                   normalize=spec.normalize, batch_size=8)
    assert np.abs(fresh - vectors[rows]).max() < 2e-3
    assert (np.sum(fresh * vectors[rows], axis=1) > 0.9999).all()


CORPUS = [{"id": str(i), "contents": f"\"Topic {i}\"\nPassage number {i} is about subject {i * 7 % 11}."}
          for i in range(12)]


@pytest.fixture()
def tiny_shipped(tmp_path, monkeypatch):
    """A tiny corpus, a float32 flat index of it, and its shipped record in a private SHIPPED_DIR."""
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in CORPUS))
    encoded = DenseRetriever(corpus, index_dir=tmp_path / "encoded", progress=False, shipped_vectors=False)
    encoded.build(progress=False)
    shipped_dir = tmp_path / "shipped"
    record_path = shipped_vectors.export(encoded.index_dir, shipped_dir)
    monkeypatch.setattr(shipped_vectors, "SHIPPED_DIR", shipped_dir)
    return corpus, encoded, record_path


def _no_encoding(monkeypatch):
    def refuse(self, texts):
        raise AssertionError("encoded although shipped vectors match")

    monkeypatch.setattr(DenseRetriever, "_encode_passages", refuse)


@needs_minilm
def test_matching_build_uses_shipped_vectors(tiny_shipped, tmp_path, monkeypatch):
    corpus, encoded, record_path = tiny_shipped
    _no_encoding(monkeypatch)
    retriever = DenseRetriever(corpus, index_dir=tmp_path / "from_shipped", progress=False)
    retriever.build(progress=False)
    record = json.loads(record_path.read_text())
    assert retriever.meta["vectors_from"] == f"shipped:{record['file']}"
    assert retriever.meta["encoded_passages"] == 0
    assert retriever.meta["timings_s"]["encode"] == 0.0
    queries = ["subject 3", "Passage number 7", "Topic 11"]
    for ours, theirs in zip(retriever.search(queries, k=3), encoded.search(queries, k=3)):
        assert [h.doc_id for h in ours] == [h.doc_id for h in theirs]
        assert all(abs(a.score - b.score) < 1e-3 for a, b in zip(ours, theirs))
    assert record["made_from"]["max_abs_error_float16"] < 5e-4


@needs_minilm
def test_damaged_or_declined_shipped_vectors_encode(tiny_shipped, tmp_path, monkeypatch, caplog):
    corpus, encoded, record_path = tiny_shipped
    record = json.loads(record_path.read_text())
    declined = DenseRetriever(corpus, index_dir=tmp_path / "declined", progress=False, shipped_vectors=False)
    declined.build(progress=False)
    assert declined.meta["vectors_from"] == "encoded" and declined.meta["encoded_passages"] == len(CORPUS)

    array = record_path.with_name(record["file"])
    data = np.load(array)
    data[0, 0] += 1
    np.save(array, data)
    damaged = DenseRetriever(corpus, index_dir=tmp_path / "damaged", progress=False)
    damaged.build(progress=False)
    assert damaged.meta["vectors_from"] == "encoded"
    assert "sha256" in caplog.text and "encoding instead" in caplog.text

    array.unlink()
    missing = DenseRetriever(corpus, index_dir=tmp_path / "missing", progress=False)
    missing.build(progress=False)
    assert missing.meta["vectors_from"] == "encoded" and "missing" in caplog.text


@needs_minilm
def test_other_corpus_encodes(tiny_shipped, tmp_path):
    corpus, _, _ = tiny_shipped
    other = tmp_path / "other.jsonl"
    shutil.copy(corpus, other)
    with open(other, "a") as f:
        f.write(json.dumps({"id": "x", "contents": "\"Extra\"\nOne more passage."}) + "\n")
    retriever = DenseRetriever(other, index_dir=tmp_path / "other_index", progress=False)
    retriever.build(progress=False)
    assert retriever.meta["vectors_from"] == "encoded"


def test_export_refuses_what_is_not_a_float32_flat_encoding(tmp_path):
    folder = tmp_path / "idx"
    folder.mkdir()
    (folder / "meta.json").write_text(json.dumps({"kind": "dense", "index_type": "hnsw"}))
    with pytest.raises(ValueError, match="dense flat"):
        shipped_vectors.export(folder, tmp_path / "out")
    (folder / "meta.json").write_text(json.dumps({"kind": "dense", "index_type": "flat", "vectors_from": "x.index"}))
    with pytest.raises(ValueError, match="float32"):
        shipped_vectors.export(folder, tmp_path / "out")
