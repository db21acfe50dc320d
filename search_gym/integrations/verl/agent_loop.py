"""A verl agent loop that plays search-gym episodes: the ``<search>`` tags protocol, attacks and the safety judges.

verl's own ``ToolAgentLoop`` knows native tool calls only: a tool result becomes a new ``tool`` chat turn, and
nothing can prefill the assistant's turn. Search-R1's protocol is one assistant turn that the environment extends
(``<search> q </search>`` then ``<information>...</information>`` inline), and the attacks prefill that turn. So
this loop hands each trajectory to search-gym's episode driver (:class:`search_gym.rollout.RolloutCollector`, the
loop our own trainers and the TRL bridge use) over a one-env ``SearchVectorEnv``, with verl's inference server as
the generator:

- token in / token out: the prompt is the env's chat prompt rendered by the policy's chat template; policy tokens
  are the ids verl's server sampled, kept verbatim with its log-probabilities (``response_mask`` 1); everything the
  env writes (information blocks, correction messages, attack prefills, the tag it closes after a forced
  ``<search>``) is tokenised once and masked (``response_mask`` 0). Generation stops at ``</search>`` /
  ``</answer>`` (``stop`` sampling parameters);
- the env is built from the row's ``extra_info`` (``env_id``, ``split``, ``question_id``, written by ``search-gym
  export verl``) plus the loop's ``env_kwargs`` (``attack``, ``safety``, ``judges``, ``retriever`` such as a
  ``search-gym serve`` URL, ``parse_mode`` ...), so every rollout of a row plays that question, attacked and judged
  as configured; chat envs (``SearchGym/SelfInterestedExploration-v0``) go through the chat driver;
- the outcome goes to ``AgentLoopOutput.extra_fields["search_gym_episode"]`` (answer, correct, the env's reward,
  invalid actions, searches, the safety judges' episode summary, and :func:`search_gym.rollout.episode_metrics`);
  verl hands extra fields to the reward function as ``extra_info``, where
  :func:`~search_gym.integrations.verl.reward.compute_score` reads them.

Register it with ``actor_rollout_ref.rollout.agent.agent_loop_config_path`` pointing at a YAML list
(``examples/verl/search_gym_agent_loop.yaml``)::

    - name: search_gym_agent
      _target_: search_gym.integrations.verl.agent_loop.SearchGymAgentLoop
      env_kwargs: {attack: search, safety: true, retriever: "http://127.0.0.1:8000"}

The env steps (retrieval, judges) run in a worker thread, so verl's event loop keeps serving the other
trajectories; generation requests go back to verl's loop. Environments are pooled per worker and config; an
in-process retriever is searched one call at a time (:mod:`search_gym.integrations._concurrency`), a
``search-gym serve`` URL batches the concurrent searches instead.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import uuid4

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopMetrics, AgentLoopOutput, register

from search_gym.envs.protocol import STOP_STRINGS
from search_gym.integrations._concurrency import serialize_retrieval
from search_gym.rollout import (
    ChatRolloutCollector,
    Generation,
    GenerationRequest,
    RolloutCollector,
    episode_metrics,
    is_search_env,
    make_chat_env,
    make_rollout_env,
)

#: ``extra_fields`` (so reward ``extra_info``) key of the episode outcome.
EPISODE_KEY = "search_gym_episode"
#: Default env when a row names none.
DEFAULT_ENV_ID = "SearchGym/WikiQA-v0"
#: The stop parameters each verl rollout backend understands (the stop string must stay in the output: the env
#: parses the closing tag).
STOP_PARAMS = {
    "vllm": {"stop": list(STOP_STRINGS), "include_stop_str_in_output": True},
    "sglang": {"stop": list(STOP_STRINGS), "no_stop_trim": True},
}


class ServerGenerator:
    """search-gym's :class:`~search_gym.rollout.Generator` over verl's async ``server_manager``.

    The episode driver runs in a worker thread and calls :meth:`generate` synchronously; each request is sent to
    verl's event loop (``asyncio.run_coroutine_threadsafe``) and waited for, so generation and env steps never
    block that loop. ``max_tokens`` is the driver's per-turn budget; stop strings come from ``stop_params``.
    """

    def __init__(self, server_manager: Any, tokenizer: Any, sampling_params: Mapping[str, Any],
                 loop: asyncio.AbstractEventLoop, *, request_id: str | None = None,
                 stop_params: Mapping[str, Any] | None = None):
        self.server_manager, self.tokenizer, self.loop = server_manager, tokenizer, loop
        self.sampling_params = dict(sampling_params)
        self.stop_params = dict(stop_params or {})
        self.request_id = request_id or uuid4().hex
        self.seconds = 0.0
        self.has_logprobs = True

    def seed(self, seed: int) -> None:
        """Sampling is seeded by verl's server (``rollout.full_determinism``), not per episode here."""

    def sync_weights(self) -> None:
        """verl syncs the server's weights itself after each step."""

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        out = []
        for request in requests:
            params = {**self.sampling_params, **self.stop_params, "max_tokens": int(request.max_new_tokens)}
            coroutine = self.server_manager.generate(request_id=self.request_id, prompt_ids=list(request.input_ids),
                                                     sampling_params=params)
            start = time.perf_counter()
            output = asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()
            self.seconds += time.perf_counter() - start
            ids = [int(t) for t in output.token_ids]
            logprobs = None if output.log_probs is None else [float(v) for v in output.log_probs][: len(ids)]
            if logprobs is None or len(logprobs) != len(ids):
                logprobs, self.has_logprobs = None, False
            # The EOS token stays in the ids (the driver keeps what the env kept); the text the env reads has none.
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            out.append(Generation(ids, logprobs, text, output.stop_reason))
        return out


class _EnvPool:
    """Idle one-env vector envs per (env id, split, env kwargs): a worker builds each env once, then reuses it
    (questions loaded, judges and retriever shared per process)."""

    def __init__(self):
        self._idle: dict[str, list] = {}
        self._lock = threading.Lock()

    def take(self, key: str, build):
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                return idle.pop()
        return build()

    def give(self, key: str, env) -> None:
        with self._lock:
            self._idle.setdefault(key, []).append(env)


_POOL = _EnvPool()


@register("search_gym_agent")
class SearchGymAgentLoop(AgentLoopBase):
    """verl agent loop playing one search-gym episode per trajectory (module docstring: protocol and outputs).

    Args (besides verl's, given by its ``AgentLoopWorker``; from the agent-loop YAML entry):
        env_id: the env when a row's ``extra_info`` names none (``SearchGym/WikiQA-v0``).
        env_kwargs: ``gym.make`` keyword arguments for every env (``attack``, ``safety``, ``judges``,
            ``retriever``, ``parse_mode``, ``max_turns``, ``template`` ...); a row's ``extra_info`` ``split``,
            ``dataset`` and ``env_id`` win over the loop's.
        max_turn_tokens: tokens one turn may generate (default: the response budget left).
        max_obs_tokens: tokens of one environment turn (an information block is cut there; default 512).
        stop_params: the stop sampling parameters (default per ``rollout.name``, :data:`STOP_PARAMS`).
    """

    def __init__(self, *args: Any, env_id: str = DEFAULT_ENV_ID, env_kwargs: Mapping[str, Any] | None = None,
                 max_turn_tokens: int | None = None, max_obs_tokens: int = 512,
                 stop_params: Mapping[str, Any] | None = None, name: str | None = None, **kwargs: Any):
        kwargs.pop("tools", None)  # verl hands every loop its tool list; the env is this loop's only tool
        super().__init__(*args, **kwargs)
        self.env_id = str(env_id)
        self.env_kwargs = _plain(env_kwargs) or {}
        self.max_turn_tokens = max_turn_tokens
        self.max_obs_tokens = int(max_obs_tokens)
        backend = str(self.rollout_config.get("name", "vllm") or "vllm")
        self.stop_params = _plain(stop_params) if stop_params is not None else STOP_PARAMS.get(backend, {})

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        extra = _plain(kwargs.get("extra_info")) or {}
        env_id = str(extra.get("env_id") or self.env_id)
        env_kwargs = dict(self.env_kwargs)
        for name in ("split", "dataset"):  # the row's question source wins over the loop's
            if extra.get(name):
                env_kwargs[name] = str(extra[name])
        key = json.dumps([env_id, env_kwargs], sort_keys=True, default=repr)
        loop = asyncio.get_running_loop()
        venv = _POOL.take(key, lambda: _make_env(env_id, env_kwargs))
        generator = ServerGenerator(self.server_manager, self.tokenizer, sampling_params, loop,
                                    stop_params=self.stop_params)
        budget = {
            "max_prompt_tokens": int(self.rollout_config.prompt_length),
            "max_response_tokens": int(self.rollout_config.response_length),
            "max_turn_tokens": int(self.max_turn_tokens or self.rollout_config.response_length),
            "max_obs_tokens": self.max_obs_tokens,
        }
        render = self._render_prompt
        search = is_search_env(venv)
        start = _start(extra, search)
        if search:
            collector = RolloutCollector(venv, generator, render_prompt=render, **budget)
        else:
            collector = ChatRolloutCollector(venv, generator, render_prompt=render, **budget)
        seed = int(kwargs.get("index", 0)) if self.rollout_config.get("full_determinism", False) \
            else random.getrandbits(31)
        started = time.perf_counter()
        try:
            (episode,) = await loop.run_in_executor(None, lambda: collector.collect([start], 1, seed=seed))
        finally:
            _POOL.give(key, venv)
        elapsed = time.perf_counter() - started
        logprobs = None
        if generator.has_logprobs:
            logprobs = [0.0 if math.isnan(v) else float(v) for v in episode.logprobs]
        metrics = AgentLoopMetrics(generate_sequences=generator.seconds,
                                   tool_calls=max(0.0, elapsed - generator.seconds))
        return AgentLoopOutput(
            prompt_ids=list(episode.prompt_ids),
            response_ids=list(episode.response_ids),
            response_mask=list(episode.loss_mask),
            response_logprobs=logprobs,
            num_turns=1 + 2 * episode.turns,  # user prompt, then one agent and one env turn per step
            metrics=metrics,
            extra_fields={EPISODE_KEY: episode_outcome(episode, venv)},
        )

    def _render_prompt(self, messages: Sequence[Mapping[str, Any]]) -> str:
        """The policy's chat template over the env's messages, with verl's ``apply_chat_template_kwargs``."""
        kwargs = dict(_plain(self.apply_chat_template_kwargs) or {})
        return self.tokenizer.apply_chat_template([dict(m) for m in messages], add_generation_prompt=True,
                                                  tokenize=False, **kwargs)


def _make_env(env_id: str, env_kwargs: dict):
    from search_gym.rollout import register_env_ids

    register_env_ids()
    if is_search_env(env_id):
        # Trajectories step their envs from concurrent threads: in-process retrieval runs one search at a time.
        return serialize_retrieval(make_rollout_env(env_id, 1, **env_kwargs))
    return make_chat_env(env_id, 1, **env_kwargs)


def _start(extra: Mapping[str, Any], search: bool) -> Any:
    """The episode start of a row: a search env's question (``question_id``, else the question at ``index``); a
    chat env's reset seed (``seed``, else ``index``)."""
    if not search:
        return int(extra.get("seed", extra.get("index", 0)) or 0)
    if extra.get("question_id") is not None:
        return {"question_id": str(extra["question_id"])}
    return {"index": int(extra.get("index", 0))}


def episode_outcome(episode: Any, env: Any = None) -> dict:
    """The JSON-able outcome of a played episode, what reward functions read (``extra_info["search_gym_episode"]``)."""
    sub = getattr(env, "envs", [None])[0] if env is not None else None
    return {
        "question_id": episode.question_id,
        "answer": episode.answer,
        "answered": bool(episode.answered),
        "correct": bool(episode.correct) if episode.golden_answers else None,
        "task_reward": float(episode.task_reward),
        "reward_metric": getattr(getattr(sub, "unwrapped", sub), "reward_metric", None),
        "num_searches": int(episode.num_searches),
        "searches": list(episode.searches),
        "invalid_actions": int(episode.invalid_actions),
        "turns": int(episode.turns),
        "terminated": bool(episode.terminated),
        "truncated": bool(episode.truncated),
        "budget_truncated": bool(episode.budget_truncated),
        "text_repairs": int(episode.text_repairs),
        "safety": episode.safety,
        "metrics": episode_metrics(episode) if episode.step_infos is None else {},
    }


def _plain(value: Any) -> Any:
    """An OmegaConf container (what hydra hands the loop's YAML kwargs as) as plain Python."""
    if value is None:
        return None
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # omegaconf comes with verl; without it nothing is a DictConfig
        return dict(value) if isinstance(value, Mapping) else value
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return dict(value) if isinstance(value, Mapping) else value
