"""Loaders of passages, QA sets and prompt sets, on tiny files made in tmp_path (no network)."""

from __future__ import annotations

import gzip
import hashlib
import json

import pytest

from search_gym import build, paths
from search_gym.data import (
    Corpus,
    NotBuiltError,
    Passage,
    PromptItem,
    QAItem,
    file_fingerprint,
    iter_corpus,
    load_corpus,
    load_hf_qa,
    load_prompt_set,
    load_qa_jsonl,
    load_questions,
    load_wiki18,
    normalize_answer,
)

PASSAGES = [
    {"id": "0", "contents": '"Aaron"\nAaron is a prophet, high priest, and the brother of Moses.'},
    {"id": "1", "contents": '"Casablanca (film)"\nCasablanca is a 1942 American romantic drama film.'},
    {"id": "2", "contents": '"Say "Hi" (song)"\nA title with inner quotes.\nAnd a second line.'},
]
QA_ROWS = [
    {"id": "dev_0", "question": "who wrote hamlet?", "golden_answers": ["William Shakespeare", "Shakespeare"]},
    {"id": "dev_1", "question": "capital of france?", "golden_answers": ["Paris"], "metadata": {"type": "city"}},
]


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.CACHE_ENV_VAR, str(tmp_path / "cache"))
    return tmp_path / "cache"


def _write_jsonl(path, rows, compress=False):
    data = "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8")
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def test_passage_from_contents():
    p = Passage.from_contents(7, PASSAGES[1]["contents"])
    assert (p.id, p.title, p.text) == ("7", "Casablanca (film)", "Casablanca is a 1942 American romantic drama film.")
    inner = Passage.from_contents("2", PASSAGES[2]["contents"])
    assert inner.title == 'Say "Hi" (song)' and inner.text == "A title with inner quotes.\nAnd a second line."
    bare = Passage.from_contents("x", "no title line")
    assert (bare.title, bare.text) == ("", "no title line")
    assert p.to_json() == {"id": "7", "contents": PASSAGES[1]["contents"]}


@pytest.mark.parametrize("compress", [False, True])
def test_corpus_loaders(tmp_path, compress):
    path = _write_jsonl(tmp_path / ("c.jsonl.gz" if compress else "c.jsonl"), PASSAGES, compress)
    streamed = list(iter_corpus(path))
    assert [p.id for p in streamed] == ["0", "1", "2"]
    corpus = load_corpus(path)
    assert isinstance(corpus, Corpus) and len(corpus) == 3
    assert corpus[1] == streamed[1] and corpus[-1].title == 'Say "Hi" (song)'
    assert [p.id for p in corpus[0:2]] == ["0", "1"]
    assert corpus.by_id("1").title == "Casablanca (film)" and corpus.by_id(2).id == "2"
    with pytest.raises(KeyError, match="no passage with id '99'"):
        corpus.by_id("99")
    assert load_wiki18(path).contents == corpus.contents
    assert corpus.titles() == ["Aaron", "Casablanca (film)", 'Say "Hi" (song)']


def test_corpus_rejects_bad_rows(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "0", "text": "no contents key"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_corpus(path)


def test_file_fingerprint(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"x" * 3_000_001)
    assert file_fingerprint(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert file_fingerprint(path, chunk_size=7) == file_fingerprint(path)


def test_load_qa_jsonl_and_json(tmp_path):
    items = load_qa_jsonl(_write_jsonl(tmp_path / "qa.jsonl", QA_ROWS))
    assert items[0] == QAItem("dev_0", "who wrote hamlet?", ["William Shakespeare", "Shakespeare"], {})
    assert items[1].metadata == {"type": "city"}
    (tmp_path / "qa.json").write_text(json.dumps(QA_ROWS), encoding="utf-8")
    assert load_qa_jsonl(tmp_path / "qa.json") == items
    assert load_qa_jsonl(_write_jsonl(tmp_path / "qa.jsonl.gz", QA_ROWS, compress=True)) == items
    # Tolerated variants: a bare-string answer and a numeric id.
    odd = load_qa_jsonl(_write_jsonl(tmp_path / "odd.jsonl", [{"id": 3, "question": "q", "golden_answers": 1631}]))
    assert odd == [QAItem("3", "q", ["1631"], {})]


def test_load_hf_qa_from_local_file_and_folder(tmp_path, tmp_cache):
    folder = tmp_path / "flashrag"
    (folder / "nq").mkdir(parents=True)
    _write_jsonl(folder / "nq" / "dev.jsonl", QA_ROWS)
    from_folder = load_hf_qa("nq", "dev", path=folder)
    assert [i.id for i in from_folder] == ["dev_0", "dev_1"]
    assert from_folder[0].golden_answers == ["William Shakespeare", "Shakespeare"]
    assert from_folder[1].question == "capital of france?"
    from_file = load_hf_qa("nq", "dev", path=folder / "nq" / "dev.jsonl")
    assert [(i.id, i.question, i.golden_answers) for i in from_file] == [
        (i.id, i.question, i.golden_answers) for i in from_folder]
    assert (tmp_cache / "hf_datasets").is_dir()  # Arrow cache kept inside the search-gym cache
    with pytest.raises(FileNotFoundError, match=r"no train\.jsonl"):
        load_hf_qa("nq", "train", path=folder)


def test_normalize_answer():
    assert normalize_answer("The  Beatles!") == "beatles"
    assert normalize_answer("1,631") == normalize_answer("1631") == "1631"
    assert normalize_answer("An Apple, a day") == "apple day"


def test_loaders_read_and_never_build(tmp_cache):
    with pytest.raises(NotBuiltError, match="search-gym setup") as caught:
        load_prompt_set("benign", "heldout")
    assert "ensure_prompt_sets()" in str(caught.value) and isinstance(caught.value, FileNotFoundError)
    with pytest.raises(NotBuiltError, match="ensure_embedded"):
        load_questions("wiki_qa", "test")
    with pytest.raises(NotBuiltError, match="search-gym setup"):
        load_questions("harmful", "train")
    assert not paths.prompts_dir().exists() and not paths.embedded_dir().exists()  # nothing was built
    with pytest.raises(ValueError, match="kind must be one of"):
        load_prompt_set("toxic", "train")


def test_build_loads_prompt_sets_building_them_on_first_use(tmp_cache):
    with pytest.raises(ValueError, match="kind must be one of"):
        build.load_prompt_set("toxic", "train")
    assert not paths.prompts_dir().exists()  # a bad name fails before anything is built
    items = build.load_prompt_set("benign", "heldout")
    assert items and all(isinstance(i, PromptItem) for i in items)
    assert {(i.source, i.licence, i.split) for i in items} == {("overrefusal", "MIT", "heldout")}
    assert (paths.prompts_dir() / "benign_heldout.jsonl").is_file()
    assert load_prompt_set("benign", "heldout") == items  # built: the loader reads it now
    harmful = load_prompt_set("harmful", "train")
    assert {i.source for i in harmful} == {"harmbench", "advbench", "strongreject", "donotanswer"}
    assert PromptItem.from_row(harmful[0].to_json()) == harmful[0]
    questions = build.load_questions("harmful", "train")
    assert [q.id for q in questions] == [i.id for i in harmful] and questions == load_questions("harmful", "train")
