"""Bad input, tried as a new user would: text no encoder accepts, non-text actions, wrong arguments and options.

Malformed actions never raise and never fail a vector batch; wrong constructor arguments fail at ``gym.make`` with
the argument, the bad value and the valid ones; options the env does not understand raise instead of being ignored.
"""

from __future__ import annotations

import json
import re

import gymnasium as gym
import numpy as np
import pytest

from conftest import needs_minilm

import search_gym  # noqa: F401 - registers the ids
from search_gym.envs import INVALID_ACTION_MESSAGE, SearchEnv, SearchVectorEnv
from search_gym.envs.protocol import coerce_action_text, parse_tool_call_action


SURROGATE_ACTIONS = [
    "<search> \ud800 </search>",
    "<search> capital of \udfff France </search>",
    "<search> \ud83d\ude00 paired halves </search>",  # a surrogate pair written as two code points
    "<answer> \ud800 </answer>",
]


@pytest.fixture()
def env(tiny_qa_path, overlap_retriever):
    return SearchEnv(dataset=str(tiny_qa_path), split="test", retriever=overlap_retriever)


class StrictEncoder:
    """A stand-in for a sentence-transformers model whose tokenizer, like the Rust ones, rejects text that UTF-8
    cannot encode (a lone surrogate)."""

    def __init__(self):
        self.seen: list[str] = []

    def encode(self, inputs, **kwargs):
        for text in inputs:
            text.encode("utf-8")  # raises UnicodeEncodeError on a lone surrogate
        self.seen.extend(inputs)
        return np.ones((len(inputs), 4), dtype=np.float32)

    def get_sentence_embedding_dimension(self):
        return 4


# ------------------------------------------------------------------------------------------ lone surrogates


def test_coerce_action_text_gives_utf8_text():
    assert coerce_action_text("a\ud800b") == "a\ufffdb"
    assert coerce_action_text("\ud83d\ude00") == "\U0001f600"  # a pair is joined into its character
    assert coerce_action_text(b"\xff<search>") == "\ufffd<search>"
    text = "plain"
    assert coerce_action_text(text) is text


@pytest.mark.parametrize("action", SURROGATE_ACTIONS)
def test_surrogate_actions_are_steps_not_crashes(env, action):
    env.reset(options={"question_id": "q0"})
    obs, reward, terminated, truncated, info = env.step(action)
    assert info["action_type"] in ("search", "answer")
    obs["prefill"].encode("utf-8")  # the transcript is valid text
    json.dumps(info, ensure_ascii=False).encode("utf-8")
    if info["query"] is not None:
        info["query"].encode("utf-8")


def test_encoders_never_see_lone_surrogates(monkeypatch, tiny_corpus_path):
    from search_gym.retrieval import dense, encoders
    from search_gym.safety.classifier import Embedder

    model = StrictEncoder()
    out = encoders.encode(model, ["\ud800", "ok", "x\udfff" * 3], prefix="query: ")
    assert out.shape == (3, 4) and model.seen[0] == "query: \ufffd"

    monkeypatch.setattr(dense, "load_encoder", lambda spec, device=None: model)
    retriever = dense.DenseRetriever(tiny_corpus_path, progress=False)
    assert retriever.encode_queries(["<\ud800>"]).shape == (1, 4)

    embedder = Embedder("minilm")  # the query-harm classifier's and the similarity's embedder
    embedder._model = model
    assert embedder.embed(["harm \ud800 query"]).shape == (1, 4)


def test_vector_env_survives_a_surrogate_with_a_strict_encoder(monkeypatch, tiny_qa_path, tiny_corpus_path):
    """One bad query must not fail the batch: the encoder sees valid text for every sub-env."""
    from search_gym.retrieval import dense

    model = StrictEncoder()
    retriever = dense.DenseRetriever(tiny_corpus_path, progress=False)
    monkeypatch.setattr(dense, "load_encoder", lambda spec, device=None: model)
    monkeypatch.setattr(retriever, "search_embeddings",
                        lambda emb, k=3: (np.ones((len(emb), 1)), np.zeros((len(emb), 1), dtype=np.int64)))
    monkeypatch.setattr(retriever, "load", lambda *a, **kw: None)

    class Store:
        def get(self, i):
            return "0", '"Paris"\nParis is the capital of France.'

    retriever._store = Store()
    venv = SearchVectorEnv(num_envs=3, dataset=str(tiny_qa_path), split="test", retriever=retriever)
    venv.reset(seed=0)
    _, _, _, _, infos = venv.step(SURROGATE_ACTIONS[:3])
    assert list(infos["action_type"]) == ["search"] * 3 and len(model.seen) == 3


@needs_minilm
def test_vector_env_with_the_real_dense_retriever(tiny_qa_path, tiny_corpus_path, tmp_path):
    from search_gym.retrieval import RetrieverConfig, clear_retrievers

    config = RetrieverConfig(kind="dense", corpus_path=str(tiny_corpus_path), index_dir=str(tmp_path / "index"))
    venv = SearchVectorEnv(num_envs=4, dataset=str(tiny_qa_path), split="test", retriever=config)
    venv.reset(seed=0)
    obs, _, _, _, infos = venv.step(SURROGATE_ACTIONS)
    assert list(infos["action_type"]) == ["search", "search", "search", "answer"]
    assert all(len(ids) == 3 for ids in infos["retrieved_doc_ids"][:3])
    assert "capital" in infos["query"][1] and "\ufffd" in infos["query"][1]
    # and straight through the retriever
    assert len(venv.retriever.search(["\ud800", "Paris \udfff"], k=2)[1]) == 2
    clear_retrievers()


# ------------------------------------------------------------------------------------------ non-text actions


@pytest.mark.parametrize("action", [["<search> Paris </search>"], {"query": "Paris"}, 42, 3.5, object()])
@pytest.mark.parametrize("prefill", ["", "<search>"])
def test_non_text_actions_are_invalid_not_stringified(tiny_qa_path, overlap_retriever, action, prefill):
    env = SearchEnv(dataset=str(tiny_qa_path), split="test", retriever=overlap_retriever, prefill=prefill,
                    safety={"judges": ["refusal"], "similarity": False})
    env.reset(options={"question_id": "q0"})
    overlap_retriever.calls.clear()
    obs, reward, terminated, truncated, info = env.step(action)
    assert info["invalid_action"] and info["parse_error"] == "non_text" and info["action_type"] == "invalid"
    assert info["query"] is None and overlap_retriever.calls == [] and not terminated
    assert info["agent_text"] == "" and info["turn_prefill"] == prefill
    assert obs["prefill"] == prefill + INVALID_ACTION_MESSAGE
    assert info["turn_prefill"] + info["agent_text"] + info["env_text"] == obs["prefill"]
    assert "non_text" in info["safety"]["flags"]


def test_non_text_in_the_tool_call_protocol(tiny_qa_path, overlap_retriever):
    env = SearchEnv(dataset=str(tiny_qa_path), split="test", retriever=overlap_retriever, protocol="tool_call")
    env.reset(options={"question_id": "q0"})
    _, _, _, _, info = env.step({"name": "search", "arguments": {"query": "Paris"}})
    assert info["parse_error"] == "non_text"


# ------------------------------------------------------------------------------------------ constructor arguments


def test_construction_stays_lazy():
    env = gym.make("SearchGym/WikiQA-v0", split="test", retriever="dense", safety=True)
    assert env.unwrapped._questions is None and env.unwrapped._retriever is None


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"split": "dev"}, ValueError, ["split='dev'", "'wiki_qa'", "train", "test"]),
        ({"dataset": "harmful", "split": "test"}, ValueError, ["split='test'", "'harmful'", "heldout"]),
        ({"dataset": "nq", "split": "validation"}, ValueError, ["split='validation'", "'nq'", "dev"]),
        ({"dataset": "hotpotqa", "split": "test"}, ValueError, ["split='test'", "'hotpotqa'", "dev"]),
        ({"dataset": "/no/such/file.jsonl"}, FileNotFoundError, ["dataset='/no/such/file.jsonl'", "wiki_qa", "nq"]),
        ({"dataset": "wikiqa"}, FileNotFoundError, ["dataset='wikiqa'", "'wiki_qa'"]),
        ({"judges": ["nope"]}, ValueError, ["judges=['nope']", "'nope'", "refusal", "query_classifier"]),
        ({"safety": {"judges": [{"kind": "oracle"}]}}, ValueError, ["safety=", "oracle", "refusal", "classifier"]),
        ({"safety": {"judgez": ["refusal"]}}, TypeError, ["safety=", "judgez"]),
        ({"index_type": "ivf"}, ValueError, ["index_type='ivf'", "flat", "hnsw", "ivfpq"]),
        ({"encoder": "minilm2"}, ValueError, ["encoder='minilm2'", "not a known encoder", "not an existing local",
                                              "minilm", "e5-base-v2"]),
        ({"encoder": "./models/none"}, ValueError, ["not a known encoder"]),
        ({"attack": "multi_search:n=abc"}, ValueError, ["attack='multi_search:n=abc'", "n='abc'", "int",
                                                        "n: int = 10", "prompt: bool"]),
        ({"attack": "multi_search:count=3"}, ValueError, ["count", "n: int = 10"]),
        ({"attack": "mega_search"}, ValueError, ["mega_search", "multi_search"]),
        ({"protocol": "xml"}, ValueError, ["protocol='xml'", "tags", "tool_call"]),
        ({"template": "search-r1"}, ValueError, ["template='search-r1'", "search_r1", "{question}"]),
        ({"max_turns": 0}, ValueError, ["max_turns=0"]),
        ({"topk": "3"}, ValueError, ["topk='3'"]),
        ({"reward": "bleu"}, ValueError, ["bleu"]),
        ({"parse_mode": "loose"}, ValueError, ["parse_mode='loose'", "strict", "search_r1"]),
        ({"corpus_path": "/no/such/passages.jsonl"}, FileNotFoundError, ["corpus_path='/no/such/passages.jsonl'"]),
    ],
)
def test_bad_arguments_fail_at_make(kwargs, error, words):
    kwargs = {"retriever": "bm25", **kwargs}
    if "encoder" in kwargs or "index_type" in kwargs:
        kwargs["retriever"] = "dense"
    with pytest.raises(error, match=re.escape(words[0])) as excinfo:
        gym.make("SearchGym/WikiQA-v0", **kwargs)
    message = str(excinfo.value)
    for word in words:
        assert word in message, (word, message)


def test_hub_encoder_failure_names_the_encoder(monkeypatch, tiny_corpus_path):
    """A hub id passes construction (only the hub knows it); a failed load says what was tried."""
    from search_gym.retrieval import DenseRetriever

    retriever = DenseRetriever(tiny_corpus_path, encoder="no-such-org/no-such-model", progress=False)
    with pytest.raises(OSError, match="'no-such-org/no-such-model' is not a known encoder .* hub id failed"):
        retriever.encode_queries(["q"])


def test_folder_dataset_checks_its_split(tmp_path, overlap_retriever):
    folder = tmp_path / "nq"
    folder.mkdir()
    (folder / "dev.jsonl").write_text(json.dumps({"id": "a", "question": "q?", "golden_answers": ["x"]}) + "\n")
    SearchEnv(dataset=str(folder), split="dev", retriever=overlap_retriever)
    with pytest.raises(FileNotFoundError, match="split='test'"):
        SearchEnv(dataset=str(folder), split="test", retriever=overlap_retriever)


def test_single_file_dataset_split_is_a_label(tiny_qa_path, overlap_retriever):
    """A single file has no splits (documented): every row is served, split is only reported."""
    a = SearchEnv(dataset=str(tiny_qa_path), split="train", retriever=overlap_retriever)
    b = SearchEnv(dataset=str(tiny_qa_path), split="anything", retriever=overlap_retriever)
    assert [q.id for q in a.questions] == [q.id for q in b.questions]
    assert b.reset(seed=0)[1]["split"] == "anything"


# ------------------------------------------------------------------------------------------ reset options


def test_unknown_reset_options_raise(env):
    with pytest.raises(ValueError, match=r"'questionid'.*question_id.*index.*attack.*prefill"):
        env.reset(options={"questionid": "q0"})


@pytest.mark.parametrize("index", [-1, 5, 10**9])
def test_out_of_range_index_raises(env, index):
    with pytest.raises(IndexError, match=r"has 5 questions, so 0 <= index <= 4"):
        env.reset(options={"index": index})


@pytest.mark.parametrize("index", ["3", 1.0, True])
def test_non_integer_index_raises(env, index):
    with pytest.raises(TypeError, match="must be an integer"):
        env.reset(options={"index": index})


def test_valid_index_and_numpy_ints(env):
    assert env.reset(options={"index": 4})[1]["question_id"] == "q4"
    assert env.reset(options={"index": np.int64(0)})[1]["question_id"] == "q0"


# ------------------------------------------------------------------------------------------ tool calls


def _check_openai_messages(messages):
    """The structure OpenAI's chat API requires of tool calls and tool results."""
    ids = []
    for m in messages:
        if m.get("tool_calls"):
            for call in m["tool_calls"]:
                assert set(call) == {"id", "type", "function"} and call["type"] == "function"
                assert set(call["function"]) == {"name", "arguments"} and isinstance(call["function"]["arguments"], str)
                assert isinstance(json.loads(call["function"]["arguments"]), dict)
                ids.append(call["id"])
        if m["role"] == "tool":
            assert m["tool_call_id"] == ids[-1] and m["name"] == "search" and isinstance(m["content"], str)
    assert len(ids) == len(set(ids))
    return ids


@pytest.mark.parametrize(
    "call",
    [
        '<tool_call>{"name": "search", "arguments": {"query": "Bizet opera"}}</tool_call>',
        '<tool_call>{"name": "search", "arguments": "{\\"query\\": \\"Bizet opera\\"}"}</tool_call>',
        '{"type": "function", "function": {"name": "search", "arguments": "{\\"query\\": \\"Bizet opera\\"}"}}',
        'Let me look. <tool_call>\n{"name": "search", "arguments": {"query": " Bizet opera "}}\n</tool_call>',
    ],
)
def test_tool_call_arguments_as_dict_or_string(tiny_qa_path, overlap_retriever, call):
    env = SearchEnv(dataset=str(tiny_qa_path), split="test", retriever=overlap_retriever, protocol="tool_call")
    env.reset(options={"question_id": "q1"})
    obs, _, _, _, info = env.step(call)
    assert info["action_type"] == "search" and info["query"] == "Bizet opera"
    obs, _, _, _, info = env.step('<tool_call>{"name": "search", "arguments": {"query": "Carmen"}}</tool_call>')
    assert _check_openai_messages(obs["messages"]) == ["call_0", "call_1"]
    obs, reward, terminated, _, _ = env.step("<answer> Carmen </answer>")
    assert terminated and reward == 1.0


@pytest.mark.parametrize(
    "call, error",
    [
        ('<tool_call>{"name": "search", "arguments": "not json"}</tool_call>', "bad_tool_json"),
        ('<tool_call>{"name": "search", "arguments": {"query": ["a", "b"]}}</tool_call>', "bad_tool_json"),
        ('<tool_call>{"name": "search", "arguments": []}</tool_call>', "bad_tool_json"),
        ('<tool_call>{"name": "browse", "arguments": {}}</tool_call>', "unknown_tool"),
        ('<tool_call>{"name": "search", "arguments": {"query": "  "}}</tool_call>', "empty_query"),
        ('<tool_call>{"name": "search", "arguments": {"query": "\\ud800"}}</tool_call>', None),
    ],
)
def test_bad_tool_calls(call, error):
    parsed, _ = parse_tool_call_action(call, max_chars=16384, max_tags=8)
    if error is None:
        assert parsed.kind == "search" and parsed.content == "\ufffd"
    else:
        assert parsed.kind == "invalid" and parsed.error == error
