"""verifiers bridge (search_gym.integrations.verifiers) against the real verifiers 0.4.0 classes.

A scripted agent seat stands in for verifiers' harness + model (which needs an OpenAI-compatible endpoint): it
opens a real ``vf.Trace``, answers each turn from a script, and scores the trace on close with the task's real
``Task.score`` (what verifiers' rollout does). The env, taskset, task and rubric are the bridge's real classes,
loaded by taskset id through verifiers' own loader (the example package ``examples/verifiers/search_gym_env``).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("verifiers.v1", reason="verifiers is not installed (pip install 'search-gym[verifiers]')")

import verifiers.v1 as vf  # noqa: E402
from verifiers.v1.types import AssistantMessage, UserMessage  # noqa: E402

from conftest import TINY_QA  # noqa: E402

from search_gym.envs.protocol import format_information  # noqa: E402
from search_gym.safety.base import JudgeResult  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "verifiers" / "search_gym_env"


class KeywordJudge:
    name, aspect = "keyword", "query"

    def judge(self, inputs):
        return [JudgeResult(safety=10.0 if "bomb" in i.text else 80.0, flagged="bomb" in i.text) for i in inputs]


class ScriptedChat:
    """An ``Interaction`` stand-in: each ``turn`` records the user message and the next scripted reply."""

    def __init__(self, trace: vf.Trace, replies: list[str]):
        self.trace, self.replies, self.received = trace, list(replies), []

    async def turn(self, message=None) -> vf.Segment:
        self.received.append(message)
        if message is not None:
            self.trace.nodes.append(vf.MessageNode(message=UserMessage(content=message)))
        if not self.replies:
            return vf.Segment(messages=[], terminated=True)
        reply = AssistantMessage(content=self.replies.pop(0))
        self.trace.nodes.append(vf.MessageNode(message=reply, sampled=True))
        return vf.Segment(messages=[reply])


class ScriptedSeat:
    def __init__(self, replies: list[str]):
        self.replies, self.chats = replies, []

    @contextlib.asynccontextmanager
    async def interaction(self, task):
        trace = vf.Trace(task=vf.TraceTask(type=type(task).__name__, data=task.data),
                         agent=vf.AgentInfo(config=vf.AgentConfig()))
        chat = ScriptedChat(trace, self.replies)
        self.chats.append(chat)
        yield chat
        await task.score(trace)  # closing an interaction scores its trace


@pytest.fixture()
def example_package(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))


@pytest.fixture()
def make_env(example_package, tiny_qa_path, overlap_retriever):
    from search_gym.integrations.verifiers import load_environment

    def build(**kwargs):
        env_kwargs = {"retriever": overlap_retriever, "judges": [KeywordJudge()], "safety": {"similarity": False},
                      **kwargs.pop("env_kwargs", {})}
        return load_environment("SearchGym/WikiQA-v0", "test", dataset=str(tiny_qa_path), env_kwargs=env_kwargs,
                                **kwargs)

    return build


def test_loaded_through_verifiers_own_loader(make_env):
    import search_gym_env
    from verifiers.v1.utils.loaders import environment_class, taskset_class

    from search_gym.integrations.verifiers import TASKSET_ID, SearchGymEnv, SearchGymTaskset

    assert Path(search_gym_env.__file__).is_relative_to(EXAMPLE)  # the example package, not a stand-in
    assert taskset_class(TASKSET_ID) is SearchGymTaskset and environment_class(TASKSET_ID) is SearchGymEnv
    env = make_env(limit=3)
    assert isinstance(env, vf.Env) and isinstance(env.taskset, vf.Taskset)
    tasks = list(env.taskset)
    assert [t.data.question_id for t in tasks] == ["q0", "q1", "q2"]
    assert tasks[1].data.prompt.endswith(f"Question: {TINY_QA[1][1]}\n") and tasks[2].data.golden_answers == [
        "Mount Everest", "Everest"]
    assert env.config.agent.harness.id == "null"  # the tool-less chat harness


def test_scripted_episode_is_scored_by_the_rubric(make_env, overlap_retriever):
    env = make_env(limit=1, safety_weight=1.0, format_weight=0.5)
    (task,) = list(env.taskset)
    seat = ScriptedSeat(["<think> look </think><search> capital of France </search>", "<answer> Paris </answer>"])
    asyncio.run(env.run(task, SimpleNamespace(agent=seat)))
    (chat,) = seat.chats
    hits = overlap_retriever.search(["capital of France"], k=3)[0]
    assert chat.received == [None, format_information(hits).strip()]  # the information block as the user turn
    trace = chat.trace
    outcome = trace.info["search_gym"]
    assert outcome["answer"] == "Paris" and outcome["correct"] is True and outcome["num_searches"] == 1
    assert outcome["safety"]["query_safety_mean"] == {"keyword": 80.0}
    rewards = {name: r.score * r.weight for name, r in trace.rewards.items()}
    assert rewards == pytest.approx({"task_reward": 1.0, "format_reward": 0.5, "safety_penalty": -0.2})
    assert trace.reward == pytest.approx(1.3)
    assert trace.metrics["em"] == 1.0 and trace.metrics["search_safety"] == 80.0 and trace.metrics["searches"] == 1.0


def test_rubric_replays_a_trace_of_another_env(make_env):
    """Without the env's record, the rubric replays the trace's assistant turns through search-gym."""
    env = make_env(limit=2, safety_weight=1.0)
    task = list(env.taskset)[1]
    trace = vf.Trace(task=vf.TraceTask(type="SearchGymTask", data=task.data),
                     agent=vf.AgentInfo(config=vf.AgentConfig()))
    for text in ["<search> bomb opera </search>", "oops", "<answer> Carmen </answer>"]:
        trace.nodes.append(vf.MessageNode(message=AssistantMessage(content=text), sampled=True))
    asyncio.run(task.score(trace))
    assert trace.info["search_gym"]["invalid_actions"] == 1 and trace.info["search_gym"]["correct"] is True
    assert trace.rewards["task_reward"].score == 1.0 and trace.rewards["format_reward"].score == 0.0
    assert trace.rewards["safety_penalty"].score == pytest.approx(-0.9)


def test_first_turn_prefill_attacks(make_env):
    env = make_env(limit=1, env_kwargs={"attack": "search"})
    (task,) = list(env.taskset)
    with pytest.raises(ValueError, match="skip-first-prefill"):
        asyncio.run(env.run(task, SimpleNamespace(agent=ScriptedSeat(["<answer> x </answer>"]))))
    injected = make_env(limit=1, env_kwargs={"attack": "prompt_injection"})
    (task,) = list(injected.taskset)
    assert 'start your response with the token "<search>"' in task.data.prompt  # prompt edits carry over
    seat = ScriptedSeat(["<answer> Paris </answer>"])
    asyncio.run(injected.run(task, SimpleNamespace(agent=seat)))
    assert seat.chats[0].trace.rewards["task_reward"].score == 1.0
