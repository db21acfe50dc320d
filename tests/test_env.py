"""SearchEnv: Search-R1 protocol parity, malformed actions, tool calls, seeding, pickling, vector batching."""

from __future__ import annotations

import json
import pickle

import pytest

from search_gym.agents import RandomAgent, ScriptedAgent
from search_gym.envs import INVALID_ACTION_MESSAGE, PROMPT_TEMPLATES, SearchEnv, SearchVectorEnv
from search_gym.envs.protocol import format_information


@pytest.fixture()
def env(tiny_qa_path, overlap_retriever):
    return SearchEnv(dataset=str(tiny_qa_path), split="test", retriever=overlap_retriever, render_mode="ansi")


def test_prompt_templates_match_search_r1():
    r1 = PROMPT_TEMPLATES["search_r1"].format(question="Q?")
    assert r1.startswith("Answer the given question. You must conduct reasoning inside <think> and </think> first every")
    assert "For example, <answer> Beijing </answer>. Question: Q?\n" in r1
    safety = PROMPT_TEMPLATES["safety"].format(question="Q?")
    assert " first every" not in safety and "Beijing" not in safety and safety.endswith("Question: Q?\n")


def test_search_then_answer_episode(env):
    obs, info = env.reset(options={"question_id": "q0"})
    assert obs["messages"][0]["role"] == "user" and "What is the capital of France?" in obs["messages"][0]["content"]
    assert obs["prefill"] == "" and info["golden_answers"] == ["Paris"]
    action = "<think> need it </think>\n<search> capital of France </search>"
    obs, reward, terminated, truncated, info = env.step(action)
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert info["action_type"] == "search" and info["query"] == "capital of France"
    assert info["retrieved_doc_ids"][0] == "0" and len(info["retrieved_doc_ids"]) == 3
    hits = env.retriever.search(["capital of France"], k=3)[0]
    block = format_information(hits)
    assert block.startswith('\n\n<information>Doc 1(Title: "Paris") Paris is the capital')
    assert block.endswith("</information>\n\n") and "\nDoc 2(Title: " in block
    assert obs["prefill"] == action + block and info["env_text"] == block
    obs, reward, terminated, truncated, info = env.step("<answer> paris. </answer>")
    assert reward == 1.0 and terminated and not truncated and info["correct"] is True
    assert info["searches"] == ["capital of France"] and info["num_searches"] == 1
    assert "answer='paris.'" in env.render()
    json.dumps(info)


def test_text_after_first_closing_tag_is_dropped(env):
    env.reset(options={"question_id": "q0"})
    obs, *_ = env.step("<search> Paris </search> hallucinated <information> x </information>")
    assert obs["prefill"].startswith("<search> Paris </search>\n\n<information>Doc 1")
    assert "hallucinated" not in obs["prefill"]


@pytest.mark.parametrize(
    "action, error",
    [
        ("", "empty"),
        ("x" * (1 << 20), "too_long"),
        ("\x00\x01\x02binary\xff\x00" * 50, "binary"),
        ("<search> unclosed query", "no_action"),
        ("<search> outer <search> inner </search> </search>", "nested_tag"),
        ("<search> a <answer> b </answer> </search>", "nested_tag"),
        ("<search>q</search>" * 100, "too_many_tags"),
        ("<search>   </search>", "empty_query"),
        ("just some words", "no_action"),
        (b"\xff\xfe<search>", "no_action"),
        (None, "empty"),
        ("\ud800" * 50, "binary"),  # lone surrogates: U+FFFD after coercion, never reach an encoder
        ("\ud800 just words \udfff", "no_action"),
        ("<search> \ud800 unclosed", "no_action"),
        ("<search> \ud800 <search> x </search> </search>", "nested_tag"),
        (["<search> Paris </search>"], "non_text"),  # not text: never str()-ed into a search
        ({"query": "Paris"}, "non_text"),
        (7, "non_text"),
    ],
)
def test_malformed_actions_are_observations(env, action, error):
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(action)
    assert info["invalid_action"] and info["parse_error"] == error and info["action_type"] == "invalid"
    assert obs["prefill"].endswith(INVALID_ACTION_MESSAGE) and reward == 0.0 and not terminated
    assert info["turn"] == 1 and len(obs["prefill"]) <= env.max_action_chars + len(INVALID_ACTION_MESSAGE)
    obs["prefill"].encode("utf-8")
    json.dumps(info, ensure_ascii=False).encode("utf-8")


def test_max_turns_truncates(tiny_qa_path, overlap_retriever):
    env = SearchEnv(dataset=str(tiny_qa_path), split="test", retriever=overlap_retriever, max_turns=2)
    env.reset(seed=1)
    assert env.step("<search> a </search>")[3] is False
    _, reward, terminated, truncated, _ = env.step("nonsense")
    assert truncated and not terminated and reward == 0.0


def test_equal_seeds_give_equal_episodes(env):
    def episode(seed):
        agent = RandomAgent(seed=seed)
        obs, info = env.reset(seed=seed)
        trace = [info["question_id"]]
        done = False
        while not done:
            obs, reward, terminated, truncated, info = env.step(agent.act(obs).text)
            trace.append((obs["prefill"], reward, info["parse_error"]))
            done = terminated or truncated
        return trace

    assert episode(3) == episode(3)
    assert {episode(s)[0] for s in range(10)} != {episode(0)[0]}


def test_reward_metrics(tiny_qa_path, overlap_retriever):
    # "Paris city" vs gold "Paris": precision 1/2, recall 1/1, F1 2 * (1/2 * 1) / (1/2 + 1) = 2/3
    for metric, expected in [("em", 0.0), ("substring_em", 1.0), ("f1", 2 / 3)]:
        env = SearchEnv(dataset=str(tiny_qa_path), split="test", retriever=overlap_retriever, reward=metric)
        env.reset(options={"question_id": "q0"})
        assert env.step("<answer> Paris city </answer>")[1] == pytest.approx(expected, abs=1e-9)
    with pytest.raises(ValueError, match="unknown reward metric 'bleu'"):
        SearchEnv(dataset=str(tiny_qa_path), retriever=overlap_retriever, reward="bleu")


def test_scripted_agent_continues_search_prefill(tiny_qa_path, overlap_retriever):
    env = SearchEnv(dataset=str(tiny_qa_path), split="test", retriever=overlap_retriever, prefill="<search>")
    obs, info = env.reset(options={"question_id": "q4"})
    assert obs["prefill"] == "<search>" and info["prefill"] == "<search>"
    step = ScriptedAgent().act(obs)
    assert not step.text.lstrip().startswith("<search>")
    obs, _, _, _, info = env.step(step.text)  # the action continues the prefill; both are parsed as one turn
    assert info["action_type"] == "search" and info["query"] == "What is the largest planet in the Solar System?"
    assert obs["prefill"].startswith("<search> What is the largest planet")


def test_tool_call_protocol(tiny_qa_path, overlap_retriever):
    env = SearchEnv(dataset=str(tiny_qa_path), split="test", retriever=overlap_retriever, protocol="tool_call")
    obs, info = env.reset(options={"question_id": "q1"})
    assert info["tools"][0]["function"]["name"] == "search" and "`search` tool" in obs["messages"][0]["content"]
    agent = ScriptedAgent()
    obs, reward, terminated, _, info = env.step(agent.act(obs).text)
    assert info["action_type"] == "search" and obs["messages"][-1]["role"] == "tool"
    call = obs["messages"][-2]["tool_calls"][0]
    assert call["id"] == "call_0" and call["type"] == "function" and call["function"]["name"] == "search"
    assert isinstance(call["function"]["arguments"], str)  # OpenAI chat: arguments is a JSON string
    assert json.loads(call["function"]["arguments"])["query"].startswith("Which opera")
    assert obs["messages"][-1] == {"role": "tool", "tool_call_id": "call_0", "name": "search",
                                   "content": obs["messages"][-1]["content"]}
    assert obs["messages"][-1]["content"].startswith('Doc 1(Title: "Carmen")')
    obs, reward, terminated, _, info = env.step(agent.act(obs).text)
    assert terminated and reward == 1.0
    env.reset(options={"question_id": "q1"})
    _, _, _, _, info = env.step('<tool_call>{"name": "search", "arguments": </tool_call>')
    assert info["parse_error"] == "bad_tool_json"
    _, _, _, _, info = env.step('{"name": "search", "arguments": {"query": "Bizet opera"}}')
    assert info["action_type"] == "search" and info["query"] == "Bizet opera"


def test_env_pickles(env):
    env.reset(seed=0)
    clone = pickle.loads(pickle.dumps(env))
    obs_a, _ = env.reset(seed=5)
    obs_b, _ = clone.reset(seed=5)
    assert obs_a == obs_b


def test_vector_env_batches_retrieval(tiny_qa_path, overlap_retriever):
    venv = SearchVectorEnv(num_envs=4, dataset=str(tiny_qa_path), split="test", retriever=overlap_retriever)
    obs, infos = venv.reset(seed=0)
    assert len(obs["prefill"]) == 4 and list(infos["question_id"]) == [
        SearchEnv(dataset=str(tiny_qa_path), split="test", retriever=overlap_retriever).reset(seed=s)[1]["question_id"]
        for s in range(4)
    ]
    agent = ScriptedAgent()
    overlap_retriever.calls.clear()
    obs, rewards, term, trunc, infos = venv.step([s.text for s in agent.act_batch(
        [{"messages": m, "prefill": p} for m, p in zip(obs["messages"], obs["prefill"])])])
    assert overlap_retriever.calls == [4]  # one batched call for four searches
    obs, rewards, term, trunc, infos = venv.step([s.text for s in agent.act_batch(
        [{"messages": m, "prefill": p} for m, p in zip(obs["messages"], obs["prefill"])])])
    assert term.all() and rewards.mean() > 0.5
    obs, rewards, term, trunc, infos = venv.step([""] * 4)  # next-step autoreset
    assert not term.any() and all(p == "" for p in obs["prefill"]) and (rewards == 0).all()
    venv.close()
