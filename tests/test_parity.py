"""Search-R1 parity, pinned against Search-R1's own code.

``tests/data/search_r1/`` holds verbatim excerpts of Search-R1's source (repository, file, commit and licence in
each file's header). These tests execute those excerpts and compare search-gym with them byte for byte: the prompt
template, the ``?`` rule of its QA preprocessing, the information block, the invalid-action message, answer
normalisation and exact match, the parser
(cut at the first closing tag, first tag pair, empty contents allowed) and the turn loop of ``run_llm_loop``
(``max_turns`` turns with search, then one final turn with search disabled) in ``parse_mode="search_r1"``.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any, Dict, List, Tuple  # noqa: UP035 - the excerpts' annotations name these

import pytest

from conftest import needs_minilm

from search_gym.envs import INVALID_ACTION_MESSAGE, PROMPT_TEMPLATES, SearchEnv, SearchVectorEnv
from search_gym.envs.protocol import (
    cut_at_first_closing_tag,
    format_information,
    parse_search_r1_action,
    parse_tagged_action,
)
from search_gym.data.questions import search_r1_question
from search_gym.envs.wiki18 import Wiki18SearchEnv

DATA = Path(__file__).parent / "data" / "search_r1"



def sections(name: str) -> dict[str, str]:
    """The ``# === name ===`` sections of an excerpt file, verbatim (the attribution header is skipped)."""
    text = (DATA / name).read_text(encoding="utf-8")
    parts = re.split(r"^# === (.+?) ===\n", text, flags=re.M)
    assert parts[0].startswith("# Verbatim excerpts") and "Apache-2.0" in parts[0]
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def _namespace() -> dict[str, Any]:
    return {"re": re, "List": List, "Dict": Dict, "Any": Any, "Tuple": Tuple}


# ------------------------------------------------------------------------------------------ Search-R1, executed


@pytest.fixture(scope="module")
def make_prefix():
    ns = _namespace()
    exec(sections("nq_search_py_excerpts.txt")["make_prefix"], ns)
    return ns["make_prefix"]


@pytest.fixture(scope="module")
def question_rule():
    body = sections("nq_search_py_excerpts.txt")["process_fn: question rule"]
    ns = _namespace()
    exec("def rule(example):\n" + textwrap.indent(textwrap.dedent(body), "    ") + "    return example['question']\n", ns)
    return lambda q: ns["rule"]({"question": q})


@pytest.fixture(scope="module")
def search_r1_cut():
    body = sections("generation_py_excerpts.txt")["_postprocess_responses: cut after the first closing tag"]
    ns = _namespace()
    exec("def cut(responses_str):\n" + textwrap.indent(textwrap.dedent(body), "    ") + "    return responses_str\n", ns)
    return lambda text: ns["cut"]([text])[0]


class _Hits:
    """Search-R1's ``batch_search`` (no rerank) over our retriever: results as its server returns them."""

    def __init__(self, retriever, topk=3):
        self.retriever, self.topk, self.queries = retriever, topk, []

    def __call__(self, manager, queries):
        self.queries.extend(queries)
        results = self.retriever.search(list(queries), k=self.topk) if queries else []
        results = [[{"document": {"contents": h.contents}} for h in row] for row in results]
        return [manager._passages2string(result) for result in results]


@pytest.fixture(scope="module")
def manager_cls():
    """``LLMGenerationManager`` with its verbatim execute_predictions / postprocess_predictions / _passages2string."""
    found = sections("generation_py_excerpts.txt")
    body = "".join(found[k] for k in ("execute_predictions", "postprocess_predictions", "_passages2string"))
    ns = _namespace()
    exec("class LLMGenerationManager:\n" + body, ns)
    cls = ns["LLMGenerationManager"]

    def make(search):
        manager = cls()
        manager.batch_search = lambda queries: search(manager, queries)
        return manager

    return make


def search_r1_rollout(manager, cut, responses: list[str], max_turns: int) -> dict:
    """Search-R1's ``run_llm_loop`` for one sequence, restated without tensors (generation.py, same commit):
    ``max_turns`` steps with search, each response cut then executed, observation appended, stop when done; then,
    if still active, one final generation executed with ``do_search=False`` whose observation is discarded."""
    responses = iter(responses)
    transcript, turns, done = "", 0, False
    for _ in range(max_turns):
        response = cut(next(responses))
        next_obs, dones, _, _ = manager.execute_predictions([response], "<pad>", [True])
        transcript += response + next_obs[0]
        turns += 1
        if dones[0]:
            done = True
            break
    if not done:
        response = cut(next(responses))
        _, dones, _, _ = manager.execute_predictions([response], "<pad>", [True], do_search=False)
        transcript += response
        turns += 1
        done = bool(dones[0])
    return {"transcript": transcript, "turns": turns, "answered": done}


# ------------------------------------------------------------------------------------------ strings


QUESTIONS = ["who got the first nobel prize in physics", "What is the capital of France?", "  spaced out  ",
             "with {braces} and ünïcödé", "ends with a dot.", "?"]


def test_prompt_template_is_search_r1s(make_prefix):
    for question in QUESTIONS:
        assert PROMPT_TEMPLATES["search_r1"].format(question=question) == make_prefix({"question": question}, "base")


def test_safety_template_is_search_r1s_without_first_and_example(make_prefix):
    theirs = make_prefix({"question": "Q?"}, "base")
    expected = theirs.replace(" first every", " every").replace("For example, <answer> Beijing </answer>. ", "")
    assert PROMPT_TEMPLATES["safety"].format(question="Q?") == expected


def test_question_mark_rule_is_search_r1s(question_rule):
    for question in QUESTIONS + ["a", "who? what", "trailing space? "]:
        assert search_r1_question(question) == question_rule(question)


def test_hub_qa_questions_get_the_question_mark(monkeypatch):
    from search_gym.data import qa
    from search_gym.data.questions import load_questions

    rows = [qa.QAItem("0", "who wrote hamlet", ["Shakespeare"]), qa.QAItem("1", "Is it? ", ["yes"])]
    monkeypatch.setattr(qa, "load_hf_qa", lambda name, split, path=None: rows)
    questions = load_questions("nq", "test")
    assert [q.question for q in questions] == ["who wrote hamlet?", "Is it?"]
    assert questions[0].metadata["original_question"] == "who wrote hamlet"


def test_information_block_and_invalid_message_are_search_r1s(manager_cls, overlap_retriever):
    search = _Hits(overlap_retriever)
    manager = manager_cls(search)
    for query in ["capital of France", "Bizet opera", "zzz"]:
        theirs = manager.execute_predictions([f"<search> {query} </search>"], "<pad>", [True])[0][0]
        assert theirs == format_information(overlap_retriever.search([query], k=3)[0])
    assert manager.execute_predictions(["no tags at all"], "<pad>", [True])[0][0] == INVALID_ACTION_MESSAGE


def test_passage_listing_edge_cases_are_search_r1s(manager_cls):
    class Hit:
        def __init__(self, contents):
            self.contents, self.doc_id, self.score = contents, "0", 1.0

    cases = [
        [],  # nothing retrieved: "<information></information>"
        [Hit("single line, no title")],
        [Hit('"Title"\nfirst line\nsecond line'), Hit('"T2"\ntext ends with spaces   ')],
        [Hit('"T"\n'), Hit("\nleading newline"), Hit('"Unicode ü"\nemoji 😀 text')],
    ]
    for hits in cases:
        class Fixed:
            def search(self, queries, k=3):
                return [hits for _ in queries]

        manager = manager_cls(_Hits(Fixed()))
        assert manager.execute_predictions(["<search>q</search>"], "<pad>", [True])[0][0] == format_information(hits)


def test_exact_match_is_search_r1s():
    import string

    from search_gym.rewards import exact_match, normalize_answer

    ns = {**_namespace(), "string": string}
    found = sections("qa_em_py_excerpts.txt")
    exec(found["normalize_answer"] + found["em_check"], ns)
    answers = ["Paris", "the Paris.", "  PARIS ", "An apple", "a", "Guido van Rossum", "guido-van rossum", "",
               "Ünïcode Straße", "1,000", "1000", "The The", "rock 'n' roll", "U.S.A."]
    for text in answers:
        assert normalize_answer(text) == ns["normalize_answer"](text), text
        for gold in (["Paris"], ["Guido van Rossum", "van Rossum"], ["1000"], ["USA"], ["rock n roll"]):
            assert exact_match(text, gold) == ns["em_check"](text, gold), (text, gold)


# ------------------------------------------------------------------------------------------ parser

RESPONSES = [
    "<think> hmm </think>\n<search> capital of France </search>",
    "<search> capital of France </search> trailing <information> fake </information>",
    "<search></search>",
    "<search>   \n </search>",
    "<answer></answer>",
    "<answer> Paris </answer>",
    "<answer> Paris </answer> and then <search> more </search>",  # cut at </search>: the answer comes first
    "<search> a <answer> b </answer> </search>",  # nested: Search-R1 searches 'a <answer> b </answer>'
    "<search> outer <search> inner </search> </search>",
    "<answer> x <search> y </search> </answer>",
    "<search> unclosed",
    "<answer> unclosed",
    "</search>",
    "",
    "   ",
    "plain words",
    "<search>q</search>" * 100,
    "<SEARCH> upper </SEARCH>",
    "<search>multi\nline\nquery</search>",
    "<information> x </information><answer>y</answer>",
    "<search> \ufffd </search>",
    "\x00\x01 binary <answer> 42 </answer>",
]


def test_search_r1_parser_matches_search_r1(manager_cls, search_r1_cut):
    manager = manager_cls(None)
    for response in RESPONSES:
        cut = search_r1_cut(response)
        actions, contents = manager.postprocess_predictions([cut])
        parsed = parse_search_r1_action(response)
        assert cut_at_first_closing_tag(response) == cut
        assert parsed.text == cut, response
        assert (parsed.kind if parsed.kind != "invalid" else None) == actions[0], response
        assert (parsed.content if parsed.kind != "invalid" else "") == contents[0], response


def test_strict_parser_is_stricter():
    assert parse_search_r1_action("<search></search>").kind == "search"
    assert parse_tagged_action("<search></search>", max_chars=100, max_tags=8).error == "empty_query"
    assert parse_search_r1_action("<answer></answer>").kind == "answer"
    assert parse_tagged_action("<answer></answer>", max_chars=100, max_tags=8).error == "empty_answer"
    # Tags are counted before the cut in strict mode, after it (and only when asked) in search_r1 mode.
    spam = "<search>q</search>" * 10
    assert parse_tagged_action(spam, max_chars=10_000, max_tags=8).error == "too_many_tags"
    assert parse_search_r1_action(spam, max_tags=8).kind == "search"
    assert parse_search_r1_action("<search>" * 9 + "q</search>", max_tags=8).error == "too_many_tags"


# ------------------------------------------------------------------------------------------ episodes

EPISODES = [
    ["<search> capital of France </search>", "<answer> Paris </answer>"],
    ["<search> Bizet opera </search>", "<search> Carmen </search>", "<answer> Carmen </answer>"],
    ["no tags", "still none", "<search></search>", "nothing", "never"],  # runs max_turns + 1 turns
    ["<search></search>", "<answer></answer>"],  # empty query searched, empty answer ends the episode
    ["<search> a </search>", "<search> b </search>", "<search> c </search>", "<search> final </search>"],
    ["<answer> x </answer> <search> y </search>"],
    ["<search> q </search> junk after", "x" * 20_000, "<answer> y </answer> more"],
]


@pytest.mark.parametrize("responses", EPISODES)
def test_episodes_match_search_r1_loop(responses, manager_cls, search_r1_cut, tiny_qa_path, overlap_retriever):
    max_turns = 3
    search = _Hits(overlap_retriever)
    reference = search_r1_rollout(manager_cls(search), search_r1_cut, responses, max_turns)

    env = SearchEnv(dataset=str(tiny_qa_path), split="test", retriever=overlap_retriever, parse_mode="search_r1",
                    max_turns=max_turns)
    obs, info = env.reset(options={"question_id": "q0"})
    assert info["parse_mode"] == "search_r1" and info["max_turns"] == max_turns + 1
    added, turns, terminated, truncated = "", 0, False, False
    queries = []
    for response in responses:
        obs, reward, terminated, truncated, info = env.step(response)
        added += info["turn_prefill"] + info["agent_text"] + info["env_text"]
        turns += 1
        if info["action_type"] == "search" and info["env_text"]:
            queries.append(info["query"])
        if terminated or truncated:
            break
    assert obs["prefill"] == added == reference["transcript"]  # byte for byte
    assert turns == reference["turns"] and terminated == reference["answered"]
    assert truncated == (not reference["answered"])
    assert queries == search.queries  # the same queries retrieved, '' included


def test_final_turn_searches_nothing(tiny_qa_path, overlap_retriever):
    env = SearchEnv(dataset=str(tiny_qa_path), split="test", retriever=overlap_retriever, parse_mode="search_r1",
                    max_turns=1)
    env.reset(options={"question_id": "q0"})
    _, _, _, truncated, info = env.step("<search> France </search>")
    assert not truncated and info["env_text"].startswith("\n\n<information>")
    overlap_retriever.calls.clear()
    _, reward, terminated, truncated, info = env.step("<search> more </search>")
    assert truncated and not terminated and reward == 0.0
    assert info["action_type"] == "search" and info["env_text"] == "" and info["retrieved_doc_ids"] == []
    assert overlap_retriever.calls == [] and info["searches"] == ["France", "more"]


def test_strict_is_the_default_and_counts_all_turns(tiny_qa_path, overlap_retriever):
    env = SearchEnv(dataset=str(tiny_qa_path), split="test", retriever=overlap_retriever, max_turns=2)
    _, info = env.reset(options={"question_id": "q0"})
    assert env.parse_mode == "strict" and info["parse_mode"] == "strict" and info["max_turns"] == 2
    assert env.step("<search></search>")[4]["parse_error"] == "empty_query"
    assert env.step("<search> France </search>")[3] is True  # truncated after 2 turns in all


def test_search_r1_mode_with_multi_search_attack(tiny_qa_path, overlap_retriever):
    env = SearchEnv(dataset=str(tiny_qa_path), split="test", retriever=overlap_retriever, parse_mode="search_r1",
                    max_turns=2, attack="multi_search:n=3")
    obs, info = env.reset(options={"question_id": "q0"})
    assert info["max_turns"] == 4 and obs["prefill"] == "<search>"  # 3 searches + the final answer turn
    for _ in range(3):
        obs, _, terminated, truncated, info = env.step(" France </search>")
        assert info["action_type"] == "search" and not (terminated or truncated)
    assert obs["prefill"].endswith("<answer>")
    _, reward, terminated, _, info = env.step(" Paris </answer>")
    assert terminated and reward == 1.0


def test_parse_mode_checked(tiny_qa_path, overlap_retriever):
    with pytest.raises(ValueError, match="parse_mode='r1'.*strict.*search_r1"):
        SearchEnv(dataset=str(tiny_qa_path), retriever=overlap_retriever, parse_mode="r1")
    with pytest.raises(ValueError, match="tags"):
        SearchEnv(dataset=str(tiny_qa_path), retriever=overlap_retriever, parse_mode="search_r1", protocol="tool_call")


# ------------------------------------------------------------------------------------------ retrieval


def test_wiki18_defaults_to_exact_flat_e5(tiny_corpus_path, tiny_qa_path):
    env = Wiki18SearchEnv(corpus_path=str(tiny_corpus_path), dataset=str(tiny_qa_path))
    assert env.retriever_config.index_type == "flat" and env.retriever_config.encoder == "e5-base-v2"
    approx = Wiki18SearchEnv(corpus_path=str(tiny_corpus_path), dataset=str(tiny_qa_path), index_type="ivfpq")
    assert approx.retriever_config.index_type == "ivfpq"
    from search_gym.retrieval import DenseRetriever

    assert DenseRetriever(tiny_corpus_path, index_type="flat").exact
    assert not DenseRetriever(tiny_corpus_path, index_type="ivfpq").exact
    assert not DenseRetriever(tiny_corpus_path, index_type="hnsw").exact


@needs_minilm
def test_empty_query_is_searched_by_the_dense_retriever(tiny_corpus_path, tiny_qa_path, tmp_path):
    """Search-R1's server encodes '' (with the e5 query prefix) and returns top-k passages; so do we in
    search_r1 mode, through the env and the vector env, while strict mode and plain retriever calls return []."""
    from search_gym.retrieval import RetrieverConfig, clear_retrievers, get_retriever

    config = RetrieverConfig(kind="dense", corpus_path=str(tiny_corpus_path), index_dir=str(tmp_path / "index"))
    base = get_retriever(config)
    assert base.search([""], k=3) == [[]] and len(base.search([""], k=3, keep_empty=True)[0]) == 3
    env = SearchEnv(dataset=str(tiny_qa_path), split="test", retriever=config, parse_mode="search_r1")
    env.reset(options={"question_id": "q0"})
    _, _, _, _, info = env.step("<search> </search>")
    assert info["query"] == "" and len(info["retrieved_doc_ids"]) == 3
    assert "<information>Doc 1(Title: " in info["env_text"]
    assert env.retriever.retriever is base  # one index in memory for both modes

    venv = SearchVectorEnv(num_envs=2, dataset=str(tiny_qa_path), split="test", retriever=config,
                           parse_mode="search_r1")
    venv.reset(seed=0)
    _, _, _, _, infos = venv.step(["<search></search>", "<search> Paris </search>"])
    assert [len(ids) for ids in infos["retrieved_doc_ids"]] == [3, 3]
    clear_retrievers()
