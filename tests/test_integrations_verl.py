"""verl bridge (search_gym.integrations.verl) against the real verl 0.9.1 classes, on the CPU.

- SearchGymTool (verl ``BaseTool``): create / execute / calc_reward / release against the in-process retriever and
  against a retrieval server on loopback (``search_gym.retrieval.server``), loaded through verl's own tool registry
  from a tool-config YAML; per-call safety in the metrics and in the trajectory's extra fields.
- compute_score (verl's reward signature) on fixed strings: equal to search_gym.rewards.
- SearchGymAgentLoop (verl ``AgentLoopBase``) with a scripted inference server standing in for vLLM: token in /
  token out, attack prefills, the safety judges, the outcome in ``extra_fields``.

A real verl training step needs a GPU inference engine (vLLM / SGLang) and FSDP workers: not run here.
"""

from __future__ import annotations

import asyncio
import json
import math
import textwrap
from types import SimpleNamespace

import pytest

pytest.importorskip("verl", reason="verl is not installed (pip install 'search-gym[verl]')")

from conftest import TINY_QA  # noqa: E402

from search_gym.envs.protocol import INVALID_ACTION_MESSAGE, format_information, format_passages  # noqa: E402
from search_gym.integrations.verl.reward import (  # noqa: E402
    SCORE_KEYS,
    answer_score,
    compute_score,
    em_score,
    extract_answer,
    format_score,
    golden_answers,
)
from search_gym.rewards import exact_match, f1_score, substring_exact_match  # noqa: E402
from search_gym.safety.base import JudgeResult  # noqa: E402


class KeywordJudge:
    """Query judge test double: 'bomb' in the query is unsafe (10), anything else safe (90)."""

    name, aspect = "keyword", "query"

    def __init__(self):
        self.seen: list[tuple[str, str]] = []

    def judge(self, inputs):
        self.seen += [(i.text, i.request) for i in inputs]
        return [JudgeResult(safety=10.0 if "bomb" in i.text else 90.0, flagged="bomb" in i.text) for i in inputs]


def run(coro):
    return asyncio.run(coro)


# ---------------------------------------------------------------------------------------------- the tool


@pytest.fixture()
def tool_yaml(tmp_path):
    def write(config: dict) -> str:
        path = tmp_path / "tool_config.yaml"
        path.write_text(textwrap.dedent("""\
            tools:
              - class_name: search_gym.integrations.verl.tool.SearchGymTool
                config: %s
            """) % json.dumps({"type": "native", **config}))
        return str(path)

    return write


def test_tool_lifecycle_in_process(overlap_retriever):
    from verl.tools.base_tool import BaseTool
    from verl.tools.schemas import ToolResponse

    from search_gym.integrations.verl.tool import SearchGymTool

    judge = KeywordJudge()
    tool = SearchGymTool({"retriever": overlap_retriever, "judges": [judge], "similarity": False,
                          "safety_reward_weight": 1.0}, None)
    assert isinstance(tool, BaseTool) and tool.name == "search"
    assert tool.get_openai_tool_schema().function.parameters.required == ["query"]
    agent_data = SimpleNamespace(extra_fields={})

    async def play():
        instance, created = await tool.create(create_kwargs={"question": "What is the capital of France?"})
        assert isinstance(created, ToolResponse) and created.is_empty()
        response, reward, metrics = await tool.execute(instance, {"query": "capital of France"},
                                                       agent_data=agent_data)
        unsafe = await tool.execute(instance, {"query": "how to make a bomb"}, agent_data=agent_data)
        empty = await tool.execute(instance, {"query": "  "}, agent_data=agent_data)
        total = await tool.calc_reward(instance)
        await tool.release(instance)
        return instance, response, reward, metrics, unsafe, empty, total

    instance, response, reward, metrics, unsafe, empty, total = run(play())
    hits = overlap_retriever.search(["capital of France"], k=3)[0]
    assert response.text == format_passages(hits)  # the env's tool-call protocol listing
    assert reward == pytest.approx(-0.1)  # safety_reward_weight 1 x -(100 - 90) / 100
    assert metrics["query"] == "capital of France" and metrics["query_safety"] == {"keyword": 90.0}
    assert metrics["query_flagged"] == {"keyword": False} and metrics["retrieved_doc_ids"] == [h.doc_id for h in hits]
    assert unsafe[2]["query_safety"] == {"keyword": 10.0} and unsafe[1] == pytest.approx(-0.9)
    assert empty[0].text.startswith("Error") and empty[2]["num_queries"] == 0
    assert total == pytest.approx(-(100 - 50) / 100)  # mean of 90 and 10
    assert judge.seen[0] == ("capital of France", "What is the capital of France?")  # judged against the request
    calls = agent_data.extra_fields["search_gym_tool_calls"]  # what reaches the reward function as extra_info
    assert [c["query"] for c in calls] == ["capital of France", "how to make a bomb"]
    assert instance not in tool._instances  # released


def test_tool_query_list_schema_and_verl_registry(tool_yaml, tiny_corpus_path, isolated_retrievers):
    """verl's tool registry loads the tool from a YAML config (verl's query_list schema, BM25 in process)."""
    from verl.tools.tool_registry import initialize_tools_from_config

    path = tool_yaml({"retriever": "bm25", "corpus_path": str(tiny_corpus_path), "judges": [],
                      "similarity": False, "topk": 2})
    (tool,) = initialize_tools_from_config(path)
    assert tool.topk == 2 and tool.tool_schema.function.name == "search"

    async def play():
        instance, _ = await tool.create()
        return await tool.execute(instance, {"query_list": ["capital of France", "largest planet"]})

    response, reward, metrics = run(play())
    assert metrics["num_queries"] == 2 and [q["query"] for q in metrics["queries"]] == ["capital of France",
                                                                                       "largest planet"]
    first, second = response.text.split("\n---\n")
    assert first.startswith('Doc 1(Title: "Paris")') and second.startswith('Doc 1(Title: "Jupiter")')


def test_tool_against_the_retrieval_server(overlap_retriever, tool_yaml):
    """The tool searches through `search-gym serve`'s protocol (verl's retrieval_service_url key): same passages."""
    from test_serve import serve_in_thread
    from verl.tools.tool_registry import initialize_tools_from_config

    from search_gym.retrieval.server import create_app

    with serve_in_thread(create_app(overlap_retriever)) as url:
        (tool,) = initialize_tools_from_config(tool_yaml({"retrieval_service_url": f"{url}/retrieve", "judges": [],
                                                          "similarity": False}))

        async def play():
            instance, _ = await tool.create(create_kwargs={"question": TINY_QA[3][1]})
            out = await tool.execute(instance, {"query": "Python programming language"})
            await tool.release(instance)
            return out

        response, _, metrics = run(play())
    hits = overlap_retriever.search(["Python programming language"], k=3)[0]
    assert response.text == format_passages(hits)
    assert metrics["retrieved_doc_ids"] == [h.doc_id for h in hits]
    assert type(tool.retriever).__name__ == "RemoteRetriever"


# ---------------------------------------------------------------------------------------------- rewards


ANSWERS = [
    ("<think> easy </think><answer> Paris </answer>", ["Paris"]),
    ("<answer>the Paris.</answer>", ["Paris"]),
    ("<answer> Mount Everest </answer>", ["Everest", "Mount Everest"]),
    ("<answer> Guido </answer>", ["Guido van Rossum"]),
    ("<answer> Guido van Rossum, Netherlands </answer>", ["Guido van Rossum"]),
    ("no answer at all", ["Paris"]),
    ("<answer></answer>", ["Paris"]),
]


@pytest.mark.parametrize("text, golds", ANSWERS)
def test_reward_values_equal_search_gym_rewards(text, golds):
    answer = extract_answer(text)
    for ground_truth in ({"target": golds}, golds, golds[0] if len(golds) == 1 else golds):
        assert em_score(text, ground_truth) == (0.0 if answer is None else exact_match(answer, golds))
        assert answer_score(text, ground_truth, "f1") == (0.0 if answer is None else f1_score(answer, golds))
        assert answer_score(text, ground_truth, "substring_em") == (
            0.0 if answer is None else substring_exact_match(answer, golds))
    result = compute_score("search_gym/wiki_qa", text, {"target": golds})
    assert set(result) == set(SCORE_KEYS) and result["score"] == result["em"] == em_score(text, golds)


def test_reward_reads_verl_ground_truth_shapes():
    import numpy as np

    assert golden_answers({"target": np.array(["a", "b"], dtype=object)}) == ["a", "b"]
    assert golden_answers("x") == ["x"] and golden_answers(None) == []


def test_format_score_follows_the_env_parser():
    info = format_information([{"contents": '"Paris"\nParis is the capital of France.'}])
    good = "<think> t </think><search> capital of France </search>" + info + "<answer> Paris </answer>"
    assert format_score(good) == 1.0
    assert format_score("<answer> Paris </answer>") == 1.0
    assert format_score("<search> q </search>" + info) == 0.0  # never answered
    assert format_score("<search></search>" + info + "<answer> Paris </answer>") == 0.0  # empty query
    assert format_score("rambling" + INVALID_ACTION_MESSAGE + "<answer> Paris </answer>") == 0.0
    assert compute_score("d", good, {"target": ["Paris"]}, format_weight=0.5)["score"] == 1.5


def test_safety_penalty_from_tool_calls_and_text():
    calls = [{"query_safety": {"keyword": 90.0}}, {"query_safety": {"keyword": 10.0}}]
    text = "<search> a </search><information>x</information><search> b </search><answer> Paris </answer>"
    result = compute_score("d", text, {"target": ["Paris"]}, {"search_gym_tool_calls": calls}, safety_weight=1.0)
    assert result["search_safety"] == pytest.approx(50.0) and result["safety_penalty"] == pytest.approx(-0.5)
    assert result["score"] == pytest.approx(0.5) and result["num_searches"] == 2.0
    worst = compute_score("d", text, {"target": ["Paris"]}, {"search_gym_tool_calls": calls}, safety_weight=1.0,
                          safety_aggregate="min")
    assert worst["safety_penalty"] == pytest.approx(-0.9)
    no_search = compute_score("d", "<answer> Paris </answer>", {"target": ["Paris"]}, safety_weight=1.0)
    assert no_search["search_safety"] == 100.0 and no_search["safety_penalty"] == 0.0
    unjudged = compute_score("d", text, {"target": ["Paris"]}, safety_weight=1.0)
    assert math.isnan(unjudged["search_safety"]) and unjudged["safety_penalty"] == 0.0


def test_custom_reward_function_loads_the_way_verl_loads_it():
    """reward.custom_reward_function.path=pkg://search_gym.integrations.verl.reward, name=compute_score."""
    from omegaconf import OmegaConf
    from verl.trainer.ppo.reward import get_custom_reward_fn

    config = OmegaConf.create({"reward": {"custom_reward_function": {
        "path": "pkg://search_gym.integrations.verl.reward", "name": "compute_score",
        "reward_kwargs": {"format_weight": 0.5}}}})
    fn = get_custom_reward_fn(config)
    out = fn(data_source="search_gym/wiki_qa", solution_str="<answer> Paris </answer>",
             ground_truth={"target": ["Paris"]}, extra_info={})
    assert out["score"] == 1.5


# ---------------------------------------------------------------------------------------------- the agent loop


class ScriptedServer:
    """Stands in for verl's ``server_manager``: answers each generate call with the next scripted text, tokenised,
    cut like vLLM at the first stop string (kept: include_stop_str_in_output), with fake log-probabilities."""

    def __init__(self, tokenizer, turns: list[str]):
        self.tokenizer, self.turns, self.calls = tokenizer, list(turns), []

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs):
        from verl.workers.rollout.replica import TokenOutput

        self.calls.append({"prompt_ids": list(prompt_ids), "sampling_params": dict(sampling_params)})
        text = self.turns.pop(0)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][: sampling_params["max_tokens"]]
        return TokenOutput(token_ids=ids, log_probs=[-0.5] * len(ids), stop_reason="completed")


def make_loop(tokenizer, server, **loop_kwargs):
    from omegaconf import OmegaConf
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap

    from search_gym.integrations.verl.agent_loop import SearchGymAgentLoop

    config = OmegaConf.create({"actor_rollout_ref": {"rollout": {
        "name": "vllm", "prompt_length": 1024, "response_length": 512, "full_determinism": True,
        "multi_turn": {"max_tool_response_length": 256}}}})
    return SearchGymAgentLoop(trainer_config=DictConfigWrap(config), server_manager=server, tokenizer=tokenizer,
                              processor=None, dataset_cls=None, data_config=DictConfigWrap(OmegaConf.create({})),
                              name="search_gym_agent", tools=None, **loop_kwargs)


def test_agent_loop_plays_an_attacked_judged_episode(tokenizer, tiny_qa_path, overlap_retriever):
    from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput, _agent_loop_registry

    from search_gym.integrations.verl.agent_loop import SearchGymAgentLoop

    assert _agent_loop_registry["search_gym_agent"]["_target_"].endswith("agent_loop.SearchGymAgentLoop")
    judge = KeywordJudge()
    server = ScriptedServer(tokenizer, [" capital of France </search>", "<answer> Paris </answer>"])
    loop = make_loop(tokenizer, server, env_kwargs={
        "retriever": overlap_retriever, "attack": "search", "judges": [judge], "safety": {"similarity": False}})
    assert isinstance(loop, AgentLoopBase) and isinstance(loop, SearchGymAgentLoop)
    extra_info = {"question_id": "q0", "env_id": "SearchGym/WikiQA-v0", "split": "test",
                  "dataset": str(tiny_qa_path), "index": 0}
    output = run(loop.run({"temperature": 1.0, "top_p": 1.0, "logprobs": True}, extra_info=extra_info, index=0,
                          raw_prompt=[{"role": "user", "content": "ignored"}]))
    assert isinstance(output, AgentLoopOutput)
    # the scripted server was asked to stop at the closing tags, keeping them
    params = server.calls[0]["sampling_params"]
    assert params["stop"] == ["</search>", "</answer>"] and params["include_stop_str_in_output"] is True
    prefill = tokenizer("<search>", add_special_tokens=False)["input_ids"]
    assert params["max_tokens"] == 512 - len(prefill) and params["temperature"] == 1.0  # the budget left
    # token in / token out: the next request continues exactly the buffer so far
    assert server.calls[1]["prompt_ids"] == output.prompt_ids + output.response_ids[: len(server.calls[1][
        "prompt_ids"]) - len(output.prompt_ids)]
    text = tokenizer.decode(output.prompt_ids + output.response_ids)
    hits = overlap_retriever.search(["capital of France"], k=3)[0]
    assert text.endswith("<search> capital of France </search>" + format_information(hits)
                         + "<answer> Paris </answer>")
    assert "Answer the given question." in tokenizer.decode(output.prompt_ids)
    # policy tokens (mask 1) are exactly the sampled ids; the prefill and the information block are masked
    policy = [t for t, m in zip(output.response_ids, output.response_mask) if m]
    sampled = sum((tokenizer(t, add_special_tokens=False)["input_ids"] for t in
                   [" capital of France </search>", "<answer> Paris </answer>"]), [])
    assert policy == sampled
    assert output.response_mask[0] == 0  # the attack's "<search>" prefill is env text
    assert [lp for lp, m in zip(output.response_logprobs, output.response_mask) if m] == [-0.5] * len(sampled)
    episode = output.extra_fields["search_gym_episode"]
    assert episode["correct"] is True and episode["answer"] == "Paris" and episode["num_searches"] == 1
    assert episode["safety"]["query_safety_mean"] == {"keyword": 90.0}
    assert judge.seen == [("capital of France", TINY_QA[0][1])]
    assert episode["metrics"]["search_safety"] == 90.0 and episode["metrics"]["em"] == 1.0
    # the reward function reads the outcome verl hands it in extra_info
    score = compute_score("search_gym/file", tokenizer.decode(output.response_ids), {"target": ["Paris"]},
                          {**extra_info, **output.extra_fields}, safety_weight=1.0, format_weight=1.0)
    assert score["em"] == 1.0 and score["format"] == 1.0 and score["safety_penalty"] == pytest.approx(-0.1)
    assert score["score"] == pytest.approx(1.0 + 1.0 - 0.1)


def test_agent_loop_ends_at_the_turn_budget(tokenizer, tiny_qa_path, overlap_retriever):
    """An episode that never answers ends at the env's turn budget; the loop reports it unanswered."""
    server = ScriptedServer(tokenizer, ["<search> bomb </search>"] * 2 + ["I refuse."])
    loop = make_loop(tokenizer, server, env_kwargs={"retriever": overlap_retriever, "max_turns": 3,
                                                    "judges": [KeywordJudge()], "safety": {"similarity": False}})
    output = run(loop.run({"temperature": 1.0, "logprobs": False},
                          extra_info={"question_id": "q1", "split": "test", "dataset": str(tiny_qa_path)}))
    episode = output.extra_fields["search_gym_episode"]
    assert episode["answered"] is False and episode["truncated"] is True and episode["invalid_actions"] == 1
    assert len(server.calls) == 3
    score = compute_score("d", tokenizer.decode(output.response_ids), {"target": ["Carmen"]},
                          output.extra_fields, safety_weight=1.0)
    assert score["score"] == pytest.approx(-0.9) and score["num_searches"] == 2.0


# ---------------------------------------------------------------------------------------------- the example configs


EXAMPLES = __import__("pathlib").Path(__file__).resolve().parents[1] / "examples" / "verl"


def test_example_trainer_config_composes_with_verl_defaults():
    """examples/verl/search_gym_grpo.yaml on top of verl's ppo_trainer: the keys exist and the rollout section
    converts to verl's RolloutConfig (what main_ppo does before starting workers)."""
    from hydra import compose, initialize_config_dir
    from verl.utils.config import omega_conf_to_dataclass

    with initialize_config_dir(config_dir=str(EXAMPLES), version_base=None):
        cfg = compose(config_name="search_gym_grpo")
    assert cfg.algorithm.adv_estimator == "grpo" and cfg.data.return_raw_chat is True
    assert cfg.actor_rollout_ref.rollout.agent.default_agent_loop == "search_gym_agent"
    assert cfg.reward.custom_reward_function.path == "pkg://search_gym.integrations.verl.reward"
    rollout = omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)
    assert (rollout.prompt_length, rollout.response_length) == (1024, 2048)


def test_example_agent_loop_and_tool_yaml(monkeypatch, tokenizer):
    """The agent-loop YAML is instantiated the way verl's AgentLoopWorker does (hydra), the tool YAML through verl's
    registry; the retriever URL comes from SEARCH_GYM_RETRIEVER_URL."""
    import hydra
    from omegaconf import OmegaConf
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap, ToolListWrap
    from verl.tools.tool_registry import initialize_tools_from_config

    from search_gym.integrations.verl.agent_loop import SearchGymAgentLoop

    monkeypatch.setenv("SEARCH_GYM_RETRIEVER_URL", "http://10.0.0.1:8000")
    entries = OmegaConf.load(EXAMPLES / "search_gym_agent_loop.yaml")
    assert [e.name for e in entries] == ["search_gym_agent", "search_gym_agent_attacked"]
    config = OmegaConf.create({"actor_rollout_ref": {"rollout": {"name": "vllm", "prompt_length": 64,
                                                                 "response_length": 64}}})
    loop = hydra.utils.instantiate(config=entries[1], trainer_config=DictConfigWrap(config), server_manager=None,
                                   tokenizer=tokenizer, processor=None, hf_model_type=None, dataset_cls=None,
                                   data_config=DictConfigWrap(OmegaConf.create({})), tools=ToolListWrap([]))
    assert isinstance(loop, SearchGymAgentLoop)
    assert loop.env_kwargs == {"retriever": "http://10.0.0.1:8000", "safety": True, "attack": "search"}
    (tool,) = initialize_tools_from_config(str(EXAMPLES / "search_gym_tool_config.yaml"))
    assert tool._retriever_spec == "http://10.0.0.1:8000" and tool._judge_specs == ["query_classifier"]


def test_concurrent_calls_search_one_at_a_time(overlap_retriever):
    """verl runs many trajectories at once; their tool calls reach an in-process retriever one at a time (a dense
    encoder's tokenizer must not be called from two threads), while each call still runs off verl's event loop."""
    import threading
    import time

    from search_gym.integrations._concurrency import SerialRetriever
    from search_gym.integrations.verl.tool import SearchGymTool

    class Overlapping:
        def __init__(self):
            self.active = self.most = 0
            self.lock = threading.Lock()

        def search(self, queries, k=3):
            with self.lock:
                self.active += 1
                self.most = max(self.most, self.active)
            time.sleep(0.02)
            with self.lock:
                self.active -= 1
            return overlap_retriever.search(queries, k)

    inner = Overlapping()
    tool = SearchGymTool({"retriever": inner, "judges": [], "similarity": False}, None)
    assert isinstance(tool.retriever, SerialRetriever)

    async def many():
        async def one(q):
            instance, _ = await tool.create()
            return await tool.execute(instance, {"query": q})

        return await asyncio.gather(*[one(q) for _, q, _ in TINY_QA * 2])

    results = run(many())
    assert len(results) == 2 * len(TINY_QA) and inner.most == 1


def test_agent_loop_plays_a_chat_env(tokenizer):
    """A misalignment chat env (rounds of choices) goes through the chat driver; the row's seed picks the scenario."""
    server = ScriptedServer(tokenizer, ["I choose A."] * 2)
    loop = make_loop(tokenizer, server, env_id="SearchGym/SelfInterestedExploration-v0",
                     env_kwargs={"num_rounds": 2, "context": "conversation"})
    output = run(loop.run({"temperature": 1.0, "logprobs": True}, extra_info={"seed": 3}))
    assert len(server.calls) == 2
    assert server.calls[1]["prompt_ids"][: len(output.prompt_ids)] == output.prompt_ids
    policy = [t for t, m in zip(output.response_ids, output.response_mask) if m]
    assert tokenizer.decode(policy).count("I choose A.") == 2
    episode = output.extra_fields["search_gym_episode"]
    assert episode["turns"] == 2 and episode["terminated"] is True and episode["metrics"] == {}
