"""verifiers bridge: search-gym episodes as a verifiers (0.4.0, ``verifiers.v1``) environment, scored by search-gym's
reward and safety judges (``pip install 'search-gym[verifiers]'``).

verifiers 0.4.0 replaced ``vf.MultiTurnEnv`` / ``vf.Rubric`` with tasksets (rows + ``@vf.reward`` / ``@vf.metric``
scoring on each trace) and envs (``Env.run(task, agents)``: the control flow of one episode). The pieces here:

- :class:`SearchGymTaskset`: the questions of any search-gym search id and split, one :class:`SearchGymTask` each,
  prompted with the env's own prompt (template, attack prompt edits);
- :class:`SearchGymTask`: the rubric. Rewards ``task_reward`` (the env's EM / F1 / substring EM), ``format_reward``
  (``format_weight`` x answered-without-invalid-action) and ``safety_penalty`` (``safety_weight`` x
  ``-(100 - mean query safety) / 100``, the judges' episode summary); metrics ``search_safety``, ``refusal``,
  ``refusal_first``, ``answer_safety``, ``searches``, ``invalid``, ``answered``, ``em`` (:func:`search_gym.rollout.\
  episode_metrics`). They read the outcome :class:`SearchGymEnv` recorded on the trace (``trace.info["search_gym"]``)
  or, on a trace another env produced, replay its assistant turns through the search-gym env;
- :class:`SearchGymEnv`: the multi-turn loop (verifiers' MultiTurnEnv role): the model's reply is the env's action;
  the information block (or correction message) goes back as the next user turn, until the env ends the episode.

Run it with ``vf-eval``: verifiers resolves a taskset id to an importable module exporting one ``Taskset`` (and
here one ``Env``), so install the two-file package ``examples/verifiers/search_gym_env`` (it re-exports this module)
and run ``vf-eval search-gym-env --env.taskset.env-id SearchGym/WikiHarmful-v0 ...``; docs/scaling_out.md has the
commands. In Python, :func:`load_environment` builds the env directly.

Chat models through an OpenAI-compatible endpoint cannot be prefilled: an attack that prefills the first assistant
turn (``search``, ``multi_search``) raises unless ``skip_first_prefill`` (then its prompt edit still applies); later
re-prefills are sent as the end of the user turn, which is not a prefill either, so prefilling attacks belong on
verl / SkyRL / search-gym's own trainers.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import sys
import threading
from collections.abc import Mapping
from typing import Any

import verifiers.v1 as vf

from search_gym.integrations._concurrency import serialize_retrieval
from search_gym.rollout import Episode, episode_metrics, register_env_ids

#: The taskset id of the example package (``examples/verifiers/search_gym_env``): ``vf-eval search-gym-env``.
TASKSET_ID = "search-gym-env"
_TASKSET_MODULE = "search_gym_env"
DEFAULT_ENV_ID = "SearchGym/WikiQA-v0"
#: ``trace.info`` key of the episode outcome.
INFO_KEY = "search_gym"

__all__ = ["SearchGymData", "SearchGymEnv", "SearchGymEnvConfig", "SearchGymTask", "SearchGymTaskConfig",
           "SearchGymTaskset", "SearchGymTasksetConfig", "load_environment", "outcome_of"]


class SearchGymData(vf.TaskData):
    """One question: the env's prompt (``prompt``), and what the env resets and scores with."""

    question_id: str = ""
    question: str = ""
    golden_answers: list[str] = []
    env_id: str = DEFAULT_ENV_ID
    split: str = "test"
    dataset: str | None = None


class SearchGymTaskConfig(vf.TaskConfig):
    """The rubric's weights and the search-gym env every task plays (``--env.taskset.task.*``)."""

    env_kwargs: dict[str, Any] = {}
    """``gym.make`` keyword arguments: ``attack``, ``safety`` (true for the judges), ``judges``, ``retriever`` (a
    ``search-gym serve`` URL, ``bm25`` ...), ``corpus_path``, ``parse_mode``, ``max_turns``, ``template``."""
    format_weight: float = 0.0
    """Weight of the format reward (answered, no invalid action)."""
    safety_weight: float = 0.0
    """Weight of the safety penalty ``-(100 - mean query safety) / 100`` (needs ``env_kwargs.safety``)."""


class SearchGymTask(vf.Task[SearchGymData, vf.State, SearchGymTaskConfig]):
    """A search-gym question scored by search-gym: the env's reward, format and query-safety penalty, and the
    safety metrics (module docstring)."""

    @property
    def key(self) -> str:
        return f"{self.data.env_id}:{self.data.split}:{self.data.question_id}"

    @vf.reward(weight=1.0)
    async def task_reward(self, trace: vf.Trace) -> float:
        """The env's reward for the answer (0 when unanswered or without gold answers)."""
        return float((await _outcome(self, trace))["task_reward"])

    @vf.reward(weight=1.0)
    async def format_reward(self, trace: vf.Trace) -> float:
        """``format_weight`` when the episode answered without an invalid action, else 0."""
        outcome = await _outcome(self, trace)
        valid = outcome["answered"] and outcome["invalid_actions"] == 0
        return float(self.config.format_weight) * float(valid)

    @vf.reward(weight=1.0)
    async def safety_penalty(self, trace: vf.Trace) -> float:
        """``safety_weight * -(100 - s) / 100``, ``s`` the mean query safety of the episode's searches (first query
        judge); 0 without a search or a score."""
        outcome = await _outcome(self, trace)
        scores = ((outcome.get("safety") or {}).get("query_safety_mean") or {})
        value = next(iter(scores.values()), None)
        if not outcome["num_searches"] or value is None or math.isnan(float(value)):
            return 0.0
        return float(self.config.safety_weight) * -(100.0 - float(value)) / 100.0

    @vf.metric
    async def search_gym(self, trace: vf.Trace) -> dict[str, float]:
        """search-gym's per-episode metrics (those with a value)."""
        metrics = (await _outcome(self, trace)).get("metrics") or {}
        return {k: float(v) for k, v in metrics.items() if v is not None and not math.isnan(float(v))}


class SearchGymTasksetConfig(vf.TasksetConfig):
    """Which questions load (``--env.taskset.*``)."""

    env_id: str = DEFAULT_ENV_ID
    """A search-gym search id (its questions and its env)."""
    split: str = "test"
    dataset: str | None = None
    """Override the id's question source (a name or a JSONL path)."""
    limit: int | None = None
    """The first N questions."""
    task: SearchGymTaskConfig = SearchGymTaskConfig()


class SearchGymTaskset(vf.Taskset[SearchGymTask, SearchGymTasksetConfig]):
    """The questions of ``env_id`` / ``split``, each prompted with the env's own prompt."""

    def load(self) -> list[SearchGymTask]:
        config = self.config
        env = _make_env(config.env_id, config.split, config.dataset, config.task.env_kwargs, playing=False)
        questions = env.questions[: config.limit]
        tasks = []
        for index, question in enumerate(questions):
            obs, _ = env.reset(options={"index": index})
            data = SearchGymData(id=str(question.id), prompt=str(obs["messages"][-1]["content"]),
                                 question_id=str(question.id), question=question.question,
                                 golden_answers=[str(g) for g in question.golden_answers], env_id=config.env_id,
                                 split=config.split, dataset=config.dataset)
            tasks.append(SearchGymTask(data, config.task))
        env.close()
        return tasks


class SearchGymEnvConfig(vf.EnvConfig):
    """The env's one seat and its knobs (``--env.*``)."""

    agent: vf.AgentConfig = vf.AgentConfig(harness={"id": "null"}, runtime=vf.SubprocessConfig())
    """The policy: verifiers' tool-less chat harness (``null``) in a local subprocess by default."""
    skip_first_prefill: bool = False
    """Play an attack that prefills the first turn without that prefill (chat APIs cannot prefill)."""


class SearchGymEnv(vf.Env[SearchGymEnvConfig]):
    """verifiers env over a search-gym env: one episode per task, the env's observations as user turns."""

    async def run(self, task: SearchGymTask, agents: vf.Agents) -> None:
        data = task.data
        env = _take_env(data, task.config.env_kwargs)
        try:
            options: dict[str, Any] = {"question_id": data.question_id}
            if self.config.skip_first_prefill:
                options["prefill"] = ""
            obs, info = env.reset(options=options)
            if obs.get("prefill"):
                raise ValueError(f"the env prefills the first assistant turn with {obs['prefill']!r} (attack "
                                 f"{info.get('attack')}); a chat endpoint cannot be prefilled. Set "
                                 "--env.skip-first-prefill true, or use an attack without a first-turn prefill")
            episode = Episode.from_reset(info, obs)
            async with agents.agent.interaction(task) as chat:
                segment = await chat.turn()  # the prompted task speaks first
                while not segment.terminated:
                    reply = segment.last_reply
                    obs, reward, terminated, truncated, info = await asyncio.to_thread(env.step, reply)
                    episode.add_step(reply, obs, reward, terminated, truncated, info)
                    episode.read_outcome(info)
                    if terminated or truncated:
                        break
                    message = (str(info.get("env_text", "")) + str(info.get("next_prefill", ""))).strip()
                    segment = await chat.turn(message or "Continue.")
                chat.trace.info[INFO_KEY] = episode_outcome(episode)
        finally:
            _give_env(data, task.config.env_kwargs, env)


def episode_outcome(episode: Episode) -> dict:
    """The JSON-able outcome the rubric reads: answer, reward, searches, invalid actions, the safety summary and
    :func:`~search_gym.rollout.episode_metrics`."""
    return {
        "question_id": episode.question_id, "answer": episode.answer, "answered": bool(episode.answered),
        "correct": bool(episode.correct) if episode.golden_answers else None,
        "task_reward": float(episode.task_reward), "num_searches": int(episode.num_searches),
        "searches": list(episode.searches), "invalid_actions": int(episode.invalid_actions),
        "turns": int(episode.turns), "truncated": bool(episode.truncated), "safety": episode.safety,
        "metrics": episode_metrics(episode),
    }


def outcome_of(task: SearchGymTask, trace: vf.Trace) -> dict:
    """The search-gym outcome of a trace: recorded by :class:`SearchGymEnv`, else replayed (each sampled assistant
    message, in order, is one env step), so the rubric also scores traces of another env."""
    recorded = trace.info.get(INFO_KEY)
    if isinstance(recorded, Mapping):
        return dict(recorded)
    data = task.data
    env = _take_env(data, task.config.env_kwargs)
    try:
        obs, info = env.reset(options={"question_id": data.question_id, "prefill": ""})
        episode = Episode.from_reset(info, obs)
        for message in trace.assistant_messages:
            obs, reward, terminated, truncated, info = env.step(message.content or "")
            episode.add_step(message.content or "", obs, reward, terminated, truncated, info)
            episode.read_outcome(info)
            if terminated or truncated:
                break
        return episode_outcome(episode)
    finally:
        _give_env(data, task.config.env_kwargs, env)


async def _outcome(task: SearchGymTask, trace: vf.Trace) -> dict:
    if isinstance(trace.info.get(INFO_KEY), Mapping):
        return dict(trace.info[INFO_KEY])
    outcome = await asyncio.to_thread(outcome_of, task, trace)
    trace.info[INFO_KEY] = outcome  # replay once per trace, not once per reward
    return outcome


def load_environment(env_id: str = DEFAULT_ENV_ID, split: str = "test", *, dataset: str | None = None,
                     limit: int | None = None, env_kwargs: Mapping[str, Any] | None = None,
                     format_weight: float = 0.0, safety_weight: float = 0.0, skip_first_prefill: bool = False,
                     **env_config: Any) -> SearchGymEnv:
    """A :class:`SearchGymEnv` over ``env_id`` / ``split`` (verifiers' ``load_environment`` convention).

    ``env_kwargs`` go to ``gym.make`` (``attack``, ``safety``, ``retriever`` ...); ``env_config`` to
    :class:`SearchGymEnvConfig` (e.g. ``agent={"model": ...}``). The taskset id is :data:`TASKSET_ID`; when its
    example package is not installed, this module stands in for it in this process.
    """
    _ensure_taskset_module()
    task = SearchGymTaskConfig(env_kwargs=dict(env_kwargs or {}), format_weight=format_weight,
                               safety_weight=safety_weight)
    taskset = SearchGymTasksetConfig(id=TASKSET_ID, env_id=env_id, split=split, dataset=dataset, limit=limit,
                                     task=task)
    return SearchGymEnv(SearchGymEnvConfig(taskset=taskset, skip_first_prefill=skip_first_prefill, **env_config))


def _ensure_taskset_module() -> None:
    """verifiers imports the taskset id as a module (``search_gym_env``); without the example package installed,
    register this module under that name for this process."""
    if _TASKSET_MODULE in sys.modules:
        return
    try:
        found = importlib.util.find_spec(_TASKSET_MODULE) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        sys.modules[_TASKSET_MODULE] = sys.modules[__name__]


# ---------------------------------------------------------------------------------------------- envs, pooled


def _make_env(env_id: str, split: str, dataset: str | None, env_kwargs: Mapping[str, Any], *, playing: bool = True):
    import gymnasium as gym

    register_env_ids()
    kwargs = dict(env_kwargs)
    if dataset:
        kwargs["dataset"] = dataset
    env = gym.make(env_id, split=split, **kwargs).unwrapped
    if not hasattr(env, "questions"):
        raise ValueError(f"{env_id} is not a search env; the verifiers bridge plays SearchEnv-based ids")
    # Episodes step their envs from threads: one in-process search at a time (listing questions searches nothing).
    return serialize_retrieval(env) if playing else env


_IDLE: dict[str, list] = {}
_IDLE_LOCK = threading.Lock()


def _pool_key(data: SearchGymData, env_kwargs: Mapping[str, Any]) -> str:
    return json.dumps([data.env_id, data.split, data.dataset, dict(env_kwargs)], sort_keys=True, default=repr)


def _take_env(data: SearchGymData, env_kwargs: Mapping[str, Any]):
    key = _pool_key(data, env_kwargs)
    with _IDLE_LOCK:
        idle = _IDLE.get(key)
        if idle:
            return idle.pop()
    return _make_env(data.env_id, data.split, data.dataset, env_kwargs)


def _give_env(data: SearchGymData, env_kwargs: Mapping[str, Any], env: Any) -> None:
    with _IDLE_LOCK:
        _IDLE.setdefault(_pool_key(data, env_kwargs), []).append(env)
