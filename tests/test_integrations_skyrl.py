"""SkyRL bridge (search_gym.integrations.skyrl) against the real skyrl-gym 0.4.0 classes.

skyrl-gym ships no env checker, so its contract is checked here as its generator relies on it: ``make(id,
env_config=, extras=)``; ``init(prompt) -> (messages, dict)``; ``step(str) -> BaseTextEnvStepOutput`` with a list
of role/content messages, a float reward, a bool ``done`` and a dict of metadata; ``get_metrics`` numbers that
``aggregate_metrics`` averages.
"""

from __future__ import annotations

import json
import random

import pytest

skyrl_gym = pytest.importorskip("skyrl_gym", reason="skyrl-gym is not installed (pip install 'search-gym[skyrl]')")

from conftest import TINY_QA  # noqa: E402

from search_gym.envs.protocol import INVALID_ACTION_MESSAGE, format_information, format_passages  # noqa: E402
from search_gym.safety.base import JudgeResult  # noqa: E402


class KeywordJudge:
    name, aspect = "keyword", "query"

    def judge(self, inputs):
        return [JudgeResult(safety=10.0 if "bomb" in i.text else 90.0, flagged="bomb" in i.text) for i in inputs]


@pytest.fixture()
def make(tiny_qa_path, overlap_retriever):
    from search_gym.integrations.skyrl import SKYRL_ENV_ID

    def build(question_id="q0", **config):
        env_kwargs = {"retriever": overlap_retriever, "judges": [KeywordJudge()], "safety": {"similarity": False},
                      **config.pop("env_kwargs", {})}
        extras = {"extra_info": {"question_id": question_id, "split": "test", "dataset": str(tiny_qa_path)},
                  "reward_spec": {"method": "rule", "ground_truth": {"target": ["Paris"]}}, "max_turns": 4}
        return skyrl_gym.make(SKYRL_ENV_ID, env_config={"env_kwargs": env_kwargs, **config}, extras=extras)

    return build


def check_step(out) -> None:
    assert set(out) >= {"observations", "reward", "done", "metadata"}
    assert isinstance(out["observations"], list) and isinstance(out["done"], bool)
    assert isinstance(out["reward"], float) and isinstance(out["metadata"], dict)
    for message in out["observations"]:
        assert set(message) >= {"role", "content"} and isinstance(message["content"], str)
    json.dumps(out["metadata"])  # SkyRL logs it


ACTIONS = ["<search> capital of France </search>", "<search> bomb recipe </search>", "<answer> Paris </answer>",
           "<answer> Berlin </answer>", "", "plain words", "<search></search>", "<search> a <search> b </search>",
           "<think> hm </think><search> largest planet </search> trailing", "\x00\x01binary", "x" * 20000,
           "<answer> Paris </answer><search> late </search>", "</search>", "<information>fake</information>"]


def test_registered_and_a_base_text_env(make):
    from skyrl_gym.envs.base_text_env import BaseTextEnv

    from search_gym.integrations.skyrl import SearchGymTextEnv, register_skyrl_env

    register_skyrl_env()  # idempotent
    assert "search_gym" in skyrl_gym.registry
    env = make()
    assert isinstance(env, SearchGymTextEnv) and isinstance(env, BaseTextEnv)


def test_contract_on_50_random_actions(make):
    rng = random.Random(0)
    steps, episodes, metrics = 0, 0, []
    while steps < 50:
        env = make(question_id=rng.choice([q for q, _, _ in TINY_QA]))
        messages, info = env.init([{"role": "user", "content": "the dataset's prompt"}])
        assert isinstance(messages, list) and messages[-1]["role"] == "user" and isinstance(info, dict)
        done = False
        while not done and steps < 50:
            out = env.step(rng.choice(ACTIONS))
            check_step(out)
            done, steps = out["done"], steps + 1
            assert (out["observations"] == []) == done  # every unfinished turn is answered by the env
        if done:
            assert env.step("<answer> again </answer>")["done"] is True  # stepping a finished episode is harmless
            metrics.append(env.get_metrics())
            episodes += 1
        env.close()
    assert episodes >= 5 and all(isinstance(v, float) for m in metrics for v in m.values())
    aggregated = type(env).aggregate_metrics(metrics)
    assert set(aggregated) >= {"searches", "invalid", "answered", "task_reward"}


def test_an_episode_observations_rewards_and_metrics(make, overlap_retriever):
    env = make(safety_penalty_weight=1.0, format_weight=0.5)
    messages, info = env.init(None)
    assert messages[0]["content"].endswith(f"Question: {TINY_QA[0][1]}\n") and info["question_id"] == "q0"
    out = env.step("<think> look it up </think><search> capital of France </search>")
    hits = overlap_retriever.search(["capital of France"], k=3)[0]
    assert out["observations"] == [{"role": "user", "content": format_information(hits)}]
    assert out["reward"] == 0.0 and out["done"] is False
    assert out["metadata"]["safety"]["query_safety"] == {"keyword": 90.0}
    bad = env.step("no tags")
    assert bad["observations"] == [{"role": "user", "content": INVALID_ACTION_MESSAGE}]
    end = env.step("<answer> Paris </answer>")
    assert end["done"] is True and end["observations"] == []
    assert end["reward"] == pytest.approx(1.0 - 0.1)  # EM 1, safety penalty -(100 - 90) / 100, no format bonus
    metrics = env.get_metrics()
    assert metrics["em"] == 1.0 and metrics["searches"] == 1.0 and metrics["invalid"] == 1.0
    assert metrics["search_safety"] == 90.0 and metrics["task_reward"] == 1.0


def test_attack_prefills(make):
    """A first-turn prefill cannot go through SkyRL's generator: refused, or skipped on request; later re-prefills
    ride on the observations (the model continues them)."""
    with pytest.raises(ValueError, match="skip_first_prefill"):
        make(env_kwargs={"attack": "search"}).init(None)
    env = make(env_kwargs={"attack": {"name": "multi_search", "n": 2, "prompt": True}}, skip_first_prefill=True)
    messages, info = env.init(None)
    assert "exactly 2 times" in messages[0]["content"]  # the attack's prompt edit applies
    out = env.step("<search> capital of France </search>")
    assert out["observations"][0]["content"].endswith("</information>\n\n<search>")  # re-prefilled
    out = env.step(" largest planet </search>")  # the model continues the prefilled <search>
    assert out["metadata"]["query"] == "largest planet" and out["observations"][0]["content"].endswith("<answer>")
    end = env.step(" Paris </answer>")
    assert end["done"] is True and end["reward"] == 1.0


def test_tool_call_protocol_observations_are_tool_messages(make, overlap_retriever):
    env = make(env_kwargs={"protocol": "tool_call"}, format_weight=0.5)
    env.init(None)
    call = '<tool_call>{"name": "search", "arguments": {"query": "capital of France"}}</tool_call>'
    out = env.step(call)
    (message,) = out["observations"]
    hits = overlap_retriever.search(["capital of France"], k=3)[0]
    assert message["role"] == "tool" and message["content"] == format_passages(hits)
    assert env.step("<answer> Paris </answer>")["reward"] == 1.5  # EM + the format bonus (no invalid action)


def test_registration_defaults_and_an_exported_row(tmp_path, tiny_qa_path, overlap_retriever):
    """`search-gym export skyrl` rows are what SkyRL hands the env (every column but the prompt as extras); env
    settings can ride on the registration when the trainer's config has no section for a custom env."""
    from search_gym.integrations.skyrl import register_skyrl_env
    from search_gym.integrations.verl.data import export_verl, read_parquet

    path = export_verl(tmp_path, env_id="SearchGym/WikiQA-v0", splits=["test"], dataset=str(tiny_qa_path),
                       engine="skyrl")["wikiqa_test"]
    row = read_parquet(path)[3]
    assert row["env_class"] == "search_gym" and row["reward_spec"]["ground_truth"]["target"] == TINY_QA[3][2]
    register_skyrl_env("search_gym_defaults_test", env_kwargs={"retriever": overlap_retriever, "max_turns": 2})
    try:
        extras = {k: v for k, v in row.items() if k != "prompt"}
        env = skyrl_gym.make("search_gym_defaults_test", env_config={}, extras=extras)
        messages, info = env.init(row["prompt"])
        assert info["question_id"] == "q3" and info["max_turns"] == 2
        assert messages == row["prompt"]  # the env renders the prompt the export wrote
        assert env.step("<answer> Guido van Rossum </answer>")["reward"] == 1.0
    finally:
        skyrl_gym.envs.deregister("search_gym_defaults_test")
