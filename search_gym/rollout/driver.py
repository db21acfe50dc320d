"""The one episode loop: the demo, the eval grid, the trainers' rollouts and the TRL bridge all play episodes here.

:class:`EpisodeDriver` plays batches of episodes on a vector env with a
:class:`~search_gym.rollout.generators.Generator` and returns one :class:`~search_gym.rollout.episode.Episode` each (verl's agent-loop idea: token in, token out, one
loss mask). :class:`RolloutCollector` drives a ``SearchVectorEnv`` (batched retrieval), :class:`ChatRolloutCollector`
any Gymnasium text env whose observation is chat ``messages`` (+ optional ``prefill``) that grow by appending (e.g.
``SelfInterestedExploration-v0`` with ``context="conversation"``); they differ only in how sub-envs are reset and
stepped and in how a turn's text splits into the agent's part and the env's part.

**Token view** (the generator has a tokenizer). Each episode keeps ONE token buffer, never re-tokenised from the
transcript:

- ``prompt_ids``: the chat-templated user prompt, tokenised once at reset;
- ``response_ids``: everything after it, in order. Policy tokens are the ids the generator sampled, kept verbatim
  with the sampler's log-probabilities (loss weight 1). Environment tokens are everything the environment wrote
  into the assistant turn: attack prefills (the reset observation's ``prefill``, ``info["next_prefill"]`` after a
  step), the closing tag it adds after a forced ``<search>``, information blocks and correction messages
  (``info["env_text"]``); each piece is tokenised once when it arrives and has loss weight 0.

The next turn is generated from ``prompt_ids + response_ids`` as they stand, so the policy always continues exactly
the tokens it will be trained on. The environment keeps its own text transcript; ``info["agent_text"]`` says which
part of the action it kept (it cuts at the first closing tag). When the kept text is shorter than the decoded
policy tokens, the buffer keeps the longest token prefix inside the kept text, the few characters of a token that
straddled the cut are added as environment tokens, and ``Episode.text_repairs`` counts it: the buffer decodes to
the env's transcript, and only tokens the policy really emitted carry loss weight. A context budget bounds prompt,
response and per-turn observation tokens; every cut is recorded on the episode.

Chat envs: what the env appended after the agent's message is the new observation's rendered chat text past the old
one, tokenised once as environment tokens.

**Text view** (always; the only one for a generator without a tokenizer, e.g. ``AgentGenerator(agent)`` over the
scripted agent or an eval agent): the turns, every step's own info (``SearchVectorEnv.last_infos``: nested safety
dicts intact), rewards and the transcript. The env is given the generator's ``action`` when it has one (an agent's
step, whose hidden states feed latent judges), else the text.

Finished sub-environments are not stepped again (the vector env runs with ``autoreset_mode="disabled"``).
``collect(starts, group_size, seed=, skip=, on_episode=)``: ``skip`` leaves out starts whose question id is in it
(resuming by question id); ``on_episode(episode)`` is called as each episode ends (recording as they finish).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from search_gym.rollout.episode import ENV, POLICY, PREFILL, Episode, action_text
from search_gym.rollout.generators import Generation, GenerationRequest, Generator, encode, kept_prefix, search_tag_ends


@dataclass
class RolloutStats:
    generation_seconds: float = 0.0
    env_seconds: float = 0.0
    generated_tokens: int = 0


class EpisodeDriver:
    """The episode loop over ``slots`` (the sub-envs, see :class:`RolloutCollector` and :class:`ChatRolloutCollector`),
    with the generator, the context budget, the group layout of :meth:`collect` and the token bookkeeping of one
    :class:`Episode` (prompt and prefill at the start, policy tokens kept up to the text the env kept, environment
    turns capped per turn, the end when the response budget is spent). Without a tokenizer the bookkeeping is off
    and the episode has its text view only."""

    num_envs: int

    def __init__(self, generator: Generator, *, max_turn_tokens: int = 128, max_prompt_tokens: int = 1024,
                 max_response_tokens: int = 1024, max_obs_tokens: int = 512):
        self.generator, self.tokenizer = generator, getattr(generator, "tokenizer", None)
        self.max_turn_tokens, self.max_prompt_tokens = int(max_turn_tokens), int(max_prompt_tokens)
        self.max_response_tokens, self.max_obs_tokens = int(max_response_tokens), int(max_obs_tokens)
        self.stats = RolloutStats()
        self.slots: _SearchSlots | _ChatSlots

    @property
    def tokens(self) -> bool:
        """Whether episodes get a token buffer (the generator has a tokenizer)."""
        return self.tokenizer is not None

    def collect(self, starts: Sequence[Any], group_size: int = 1, *, seed: int = 0, progress=None,
                skip: Collection[str] = (), on_episode: Callable[[Episode], Any] | None = None) -> list[Episode]:
        """Episodes for every start (a question id, a dict of reset options such as ``{"index": i}``, or a chat env's
        reset seed), ``group_size`` each, grouped consecutively (``episode.group`` = index of its start), played
        ``num_envs`` at a time. Seeded: the same ``seed`` replays the same rollout for the same weights.

        ``skip``: question ids left out (their episodes exist already); ``on_episode``: called with each episode as
        it ends; ``progress(done, total)``: called after each batch."""
        jobs = [(g, s) for g, s in enumerate(starts) for _ in range(group_size)]
        if skip:
            skip = {str(q) for q in skip}
            jobs = [(g, s) for g, s in jobs if self.slots.question_id(s) not in skip]
        self.generator.seed(seed)
        episodes: list[Episode] = []
        n = self.num_envs
        for start in range(0, len(jobs), n):
            episodes += self._play(jobs[start : start + n], seed + start, on_episode)
            if progress is not None:
                progress(len(episodes), len(jobs))
        return episodes

    # ------------------------------------------------------------------ the loop

    def _play(self, jobs: list[tuple[int, Any]], seed: int, on_episode) -> list[Episode]:
        slots = self.slots
        t0 = time.perf_counter()
        started = slots.reset([s for _, s in jobs], seed)
        self.stats.env_seconds += time.perf_counter() - t0
        episodes = [slots.new_episode(group, start, obs, info) for (group, start), (obs, info) in zip(jobs, started)]
        observations = [obs for obs, _ in started]
        if self.tokens:
            for k, ep in enumerate(episodes):
                self._start_tokens(ep, *slots.begin(k, observations[k]))
        live = [not ep.budget_truncated for ep in episodes]  # an episode whose prefill fills the budget cannot act
        slots.stop([k for k in range(self.num_envs) if k >= len(jobs) or not live[k]])  # never step those
        for k, ep in enumerate(episodes):
            if not live[k]:
                self._finish(ep, set(), on_episode)
        search_turns: list[set[int]] = [set() for _ in jobs]
        while any(live):
            ids = [k for k, on in enumerate(live) if on]
            requests = [GenerationRequest(episodes[k].input_ids, _observation(observations[k]),
                                          min(self.max_turn_tokens,
                                              self.max_response_tokens - len(episodes[k].response_ids)))
                        for k in ids]
            t0 = time.perf_counter()
            generations = self.generator.generate(requests)
            self.stats.generation_seconds += time.perf_counter() - t0
            self.stats.generated_tokens += sum(len(gen.ids) for gen in generations)
            t0 = time.perf_counter()
            actions = [gen.text if gen.action is None else gen.action for gen in generations]
            steps = slots.step(dict(zip(ids, actions)))
            self.stats.env_seconds += time.perf_counter() - t0
            for k, gen, action in zip(ids, generations, actions):
                ep, (obs, reward, terminated, truncated, info) = episodes[k], steps[k]
                turn = ep.turns
                observations[k] = obs
                ep.add_step(action, obs, reward, terminated, truncated, info, completion_tokens=len(gen.ids))
                if ep.step_infos is not None:
                    ep.step_infos.append({key: v for key, v in info.items()
                                          if isinstance(v, (bool, int, float, str)) or v is None})
                if info.get("action_type") == "search":
                    search_turns[k].add(turn)
                finished = bool(terminated or truncated)
                rest = ""
                if self.tokens:
                    kept, own = slots.agent_text(k, gen, obs, info, finished, turn)
                    rest = self._add_policy_text(ep, gen, kept, turn, own_text=own)
                if finished:
                    slots.read_outcome(ep, info)
                    live[k] = False
                    self._finish(ep, search_turns[k], on_episode)
                    continue
                if self.tokens and self._add_env_turn(ep, *slots.env_text(k, rest, obs, info), turn):
                    # Out of context: the episode ends here and says why.
                    slots.read_outcome(ep, info)
                    ep.budget_truncated = ep.truncated = True
                    if not slots.budget_cut_keeps_rewards:
                        ep.task_reward = ep.reward = 0.0  # a search episode cut short is unanswered (reward 0)
                    live[k] = False
                    slots.stop([k])  # the env's episode is over too: never step it again
                    self._finish(ep, search_turns[k], on_episode)
        return episodes

    def _finish(self, ep: Episode, search_turns: set[int], on_episode) -> None:
        if self.tokens:
            ep.search_indices = self._search_indices(ep, search_turns)
        if on_episode is not None:
            on_episode(ep)

    # ------------------------------------------------------------------ token bookkeeping

    def _start_tokens(self, ep: Episode, prompt_text: str, prefill: str) -> None:
        """The prompt ``prompt_text`` (cut from the left to the prompt budget), then the env's ``prefill``; an
        episode whose prefill alone fills the response budget is ended."""
        prompt = encode(self.tokenizer, prompt_text)
        cut = max(0, len(prompt) - self.max_prompt_tokens)
        ep.prompt_ids, ep.prompt_truncated = prompt[cut:], cut
        ep.append_tokens(encode(self.tokenizer, prefill), PREFILL, 0)
        if len(ep.response_ids) >= self.max_response_tokens:
            ep.budget_truncated = ep.truncated = True
            ep.task_reward = ep.reward = 0.0

    def _add_policy_text(self, ep: Episode, gen: Generation, kept: str, turn: int, *,
                         own_text: str | None = None) -> str:
        """Append the longest prefix of the generated tokens whose text lies inside ``kept`` as policy tokens.

        ``own_text`` None: ``kept`` is exactly what the env kept of the action; the few characters a token
        straddling the cut leaves uncovered are appended as environment tokens and count as a text repair.
        ``own_text`` given: ``kept`` goes on past the agent's own text ``own_text`` with text the env writes (a
        chat template's end of turn, the env's next messages); the rest is returned for the caller to append, and
        a repair is counted only when tokens were dropped or ``own_text`` is not covered."""
        ids, logprobs = list(gen.ids), gen.logprobs
        k, rest = kept_prefix(self.tokenizer, ids, kept)
        if own_text is None:
            if k < len(ids) or rest:
                ep.text_repairs += 1
        elif k < len(ids) or len(kept) - len(rest) < len(own_text):
            ep.text_repairs += 1
        ep.append_tokens(ids[:k], POLICY, turn, None if logprobs is None else list(logprobs)[:k])
        if own_text is not None:
            return rest
        # Characters the env kept that no whole policy token covers (a token straddled the cut): env-written.
        ep.append_tokens(encode(self.tokenizer, rest), ENV, turn)
        return ""

    def _add_env_turn(self, ep: Episode, env_text: str, next_prefill: str, turn: int) -> bool:
        """Append what the env wrote after a turn (capped to ``max_obs_tokens`` and to the room left) and the
        next turn's prefill; True when the response budget is spent (the episode cannot continue)."""
        env_ids = encode(self.tokenizer, env_text)
        # Per-turn cap, then whatever room the response budget has left.
        keep = max(0, min(self.max_obs_tokens, self.max_response_tokens - len(ep.response_ids)))
        if len(env_ids) > keep:
            ep.obs_truncated_tokens += len(env_ids) - keep
            env_ids = env_ids[:keep]
        ep.append_tokens(env_ids, ENV, turn)
        room = max(0, self.max_response_tokens - len(ep.response_ids))
        ep.append_tokens(encode(self.tokenizer, next_prefill)[:room], PREFILL, turn + 1)
        return len(ep.response_ids) >= self.max_response_tokens

    def _search_indices(self, ep: Episode, search_turns: set[int]) -> list[int]:
        """The <search> tags of the turns whose action was a search (an invalid action's tag sent no query)."""
        out = []
        for (start, end, kind), turn in zip(ep.spans, ep.span_turns):
            if kind in (POLICY, PREFILL) and turn in search_turns:
                out += [start + j for j in search_tag_ends(self.tokenizer, ep.response_ids[start:end])]
        return out


def _observation(obs: dict) -> dict:
    """What a text agent acts on: the chat messages and the prefill of the assistant turn."""
    return {"messages": tuple(obs["messages"]), "prefill": str(obs.get("prefill") or "")}


# ---------------------------------------------------------------------------------------------- search envs


class RolloutCollector(EpisodeDriver):
    """Plays G episodes per question on a ``SearchVectorEnv`` and returns one :class:`Episode` each.

    Args:
        venv: a ``SearchVectorEnv``; it is switched to ``autoreset_mode="disabled"``. Token rollouts need the tags
            protocol (the tool-call protocol re-renders chat turns); text-only ones play either.
        generator: a :class:`Generator`.
        render_prompt: ``messages -> text`` of the prompt (chat template with the generation prompt); default
            renders with the generator's tokenizer and ``few_shot`` worked examples.
        max_turn_tokens / max_prompt_tokens / max_response_tokens / max_obs_tokens: the context budget.
    """

    def __init__(self, venv, generator: Generator, *, few_shot: int = 0, max_turn_tokens: int = 128,
                 max_prompt_tokens: int = 1024, max_response_tokens: int = 1024, max_obs_tokens: int = 512,
                 render_prompt=None):
        from gymnasium.vector import AutoresetMode

        super().__init__(generator, max_turn_tokens=max_turn_tokens, max_prompt_tokens=max_prompt_tokens,
                         max_response_tokens=max_response_tokens, max_obs_tokens=max_obs_tokens)
        if self.tokens and venv.envs[0].protocol != "tags":
            raise ValueError("token rollouts support the tags protocol (the tool-call protocol re-renders chat turns)")
        venv.autoreset_mode = AutoresetMode.DISABLED
        venv.metadata = {**venv.metadata, "autoreset_mode": AutoresetMode.DISABLED}
        self.venv, self.num_envs = venv, venv.num_envs
        if render_prompt is None and self.tokens:
            from search_gym.agents.prompting import render_prompt as render

            def render_prompt(messages):
                return render(self.tokenizer, messages, "", few_shot)
        self.slots = _SearchSlots(venv, render_prompt)


class _SearchSlots:
    """The sub-envs of a ``SearchVectorEnv``: reset by question, stepped together (one batched retrieval), each
    step's own info from ``last_infos``; a turn's text is what the env reports (``agent_text``, ``env_text``,
    ``next_prefill``)."""

    budget_cut_keeps_rewards = False

    def __init__(self, venv, render_prompt):
        self.venv, self.render_prompt = venv, render_prompt

    def question_id(self, start: Any) -> str | None:
        if not isinstance(start, dict):
            return str(start)
        if "question_id" in start:
            return str(start["question_id"])
        if "index" in start:
            return str(self.venv.envs[0].questions[int(start["index"])].id)
        return None

    def reset(self, starts: list, seed: int) -> list[tuple[dict, dict]]:
        n = self.venv.num_envs
        options = [dict(s) if isinstance(s, dict) else {"question_id": str(s)} for s in starts]
        live = np.zeros(n, dtype=bool)
        live[: len(starts)] = True
        per_env = options + [options[-1]] * (n - len(options))  # spare sub-envs stay idle
        obs, infos = self.venv.reset(seed=seed, options={"per_env": per_env, "reset_mask": live})
        return [(_sub_observation(obs, k), unbatch_info(infos, k)) for k in range(len(starts))]

    @staticmethod
    def new_episode(group: int, start: Any, obs: dict, info: dict) -> Episode:
        return Episode.from_reset(info, obs, group=group)

    def begin(self, k: int, obs: dict) -> tuple[str, str]:
        return self.render_prompt(obs["messages"]), obs["prefill"]

    def step(self, actions: dict[int, Any]) -> dict[int, tuple]:
        full: list[Any] = [""] * self.venv.num_envs
        for k, action in actions.items():
            full[k] = action
        obs, rewards, terms, truncs, _ = self.venv.step(full)
        return {k: (_sub_observation(obs, k), float(rewards[k]), bool(terms[k]), bool(truncs[k]),
                    self.venv.last_infos[k]) for k in actions}

    def stop(self, indices: list[int]) -> None:
        if indices:
            self.venv.stop(np.isin(np.arange(self.venv.num_envs), indices))

    @staticmethod
    def agent_text(k: int, gen: Generation, obs: dict, info: dict, finished: bool, turn: int) -> tuple[str, None]:
        return str(info["agent_text"]), None

    @staticmethod
    def env_text(k: int, rest: str, obs: dict, info: dict) -> tuple[str, str]:
        return str(info["env_text"]), str(info["next_prefill"])

    @staticmethod
    def read_outcome(ep: Episode, info: dict) -> None:
        ep.read_outcome(info)


def _sub_observation(obs: dict, k: int) -> dict:
    return {"messages": obs["messages"][k], "prefill": obs["prefill"][k]}


def unbatch_info(infos: dict, k: int) -> dict:
    """Sub-env ``k``'s entries of a vector env's batched info (Gymnasium's ``info[key]`` array plus ``info["_key"]``
    mask, nested dicts recursively), numpy scalars as Python values. For reset infos, which hold no None (a step's
    own info is ``SearchVectorEnv.last_infos[k]``)."""
    out = {}
    for key, value in infos.items():
        if key.startswith("_") and key[1:] in infos:
            continue  # a mask
        mask = infos.get(f"_{key}")
        if mask is not None and not mask[k]:
            continue
        value = unbatch_info(value, k) if isinstance(value, dict) else value[k]
        out[key] = value.item() if isinstance(value, np.generic) else value
    return out


# ---------------------------------------------------------------------------------------------- chat envs


class ChatRolloutCollector(EpisodeDriver):
    """Plays G episodes per start on Gymnasium text envs whose observation is chat ``messages`` (+ optional
    ``prefill``) growing by appending, and returns one :class:`Episode` each.

    The token buffer follows the rendered chat: the prompt is ``chat_template(messages)`` at reset, the response
    starts with the observation's ``prefill`` (environment tokens). After each step the new observation is rendered
    (``chat_template(messages) + prefill``); it must extend the previous rendering (an env that rewrites its
    history, e.g. ``SelfInterestedExploration-v0``'s default ``context="window"``, raises ``ValueError``), and what
    it adds is the agent's message then the env's. The generated tokens are kept verbatim up to the text the env
    kept (``info["agent_text"]``, default the action; an end-of-turn token the policy sampled stays a policy
    token); everything after them, the template's end of turn, the env's new messages (``info["env_messages"]``
    is checked against the observation when the env reports it), the next generation prompt and prefill, is
    tokenised once as environment tokens (loss weight 0). The buffer therefore decodes to the rendered
    conversation, and the policy continues exactly the tokens it is trained on.

    Episode starts are reset seeds: ``collect(seeds, group_size)`` resets each sub-env with ``seed=start`` (the env
    draws its scenario from it), so the G episodes of a group start identically. The episode's reward is the sum
    of the env's step rewards (one scalar per episode for GRPO); an episode cut by the response budget keeps the
    rewards it was paid (``budget_truncated``). ``step_infos`` keeps the JSON scalars of every step's info.

    Args:
        venv: a ``gymnasium.vector.SyncVectorEnv`` (its ``envs`` are stepped one by one, only while their episode
            runs) or a list of envs.
        generator / max_*: as :class:`RolloutCollector`.
        render_prompt: ``messages -> text`` (default: the tokenizer's chat template with the generation prompt).
    """

    def __init__(self, venv, generator: Generator, *, max_turn_tokens: int = 128, max_prompt_tokens: int = 1024,
                 max_response_tokens: int = 1024, max_obs_tokens: int = 512, render_prompt=None):
        super().__init__(generator, max_turn_tokens=max_turn_tokens, max_prompt_tokens=max_prompt_tokens,
                         max_response_tokens=max_response_tokens, max_obs_tokens=max_obs_tokens)
        self.venv, self.envs = venv, list(getattr(venv, "envs", venv))
        if not self.envs:
            raise ValueError("need at least one env")
        self.num_envs = len(self.envs)
        if render_prompt is None and self.tokens:
            from search_gym.agents.prompting import render_prompt as render

            def render_prompt(messages):
                return render(self.tokenizer, messages, "", 0, tools=())
        self.slots = _ChatSlots(self.envs, render_prompt)


class _ChatSlots:
    """Plain envs stepped one by one, reset with ``seed=start``; a turn's text is the rendered chat's growth."""

    budget_cut_keeps_rewards = True

    def __init__(self, envs: list, render_prompt):
        self.envs, self.render_prompt = envs, render_prompt
        self._chat: dict[int, tuple[list[dict], str]] = {}  # sub-env -> (messages, rendered text so far)
        self._next: dict[int, tuple[list[dict], str]] = {}

    @staticmethod
    def question_id(start: Any) -> str:
        return str(start)

    def reset(self, starts: list, seed: int) -> list[tuple[dict, dict]]:
        return [self.envs[k].reset(seed=int(start)) for k, start in enumerate(starts)]

    @staticmethod
    def new_episode(group: int, start: Any, obs: dict, info: dict) -> Episode:
        ep = Episode.from_reset(info, obs, group=group)
        ep.question_id, ep.question, ep.step_infos = str(start), str(ep.prompt or ""), []
        return ep

    def begin(self, k: int, obs: dict) -> tuple[str, str]:
        messages, prefill = list(obs["messages"]), str(obs.get("prefill") or "")
        text = self.render_prompt(messages)
        self._chat[k] = (messages, text + prefill)
        self._next.pop(k, None)
        return text, prefill

    def step(self, actions: dict[int, Any]) -> dict[int, tuple]:
        return {k: self.envs[k].step(action_text(action)) for k, action in actions.items()}

    def stop(self, indices: list[int]) -> None:
        """Plain envs are only stepped while their episode runs: nothing to mark."""

    def agent_text(self, k: int, gen: Generation, obs: dict, info: dict, finished: bool,
                   turn: int) -> tuple[str, str | None]:
        own = info.get("agent_text", gen.text)
        own = own if isinstance(own, str) else gen.text
        messages, transcript = self._chat[k]
        new_messages = list(obs["messages"])
        _check_appended(messages, new_messages, info)
        target = self.render_prompt(new_messages) + str(obs.get("prefill") or "")
        if target.startswith(transcript):
            self._next[k] = (new_messages, target)
            return target[len(transcript):], own
        if finished:  # a final observation need not extend the conversation: keep the agent's text
            return own, None
        raise ValueError(
            f"{type(self.envs[k].unwrapped).__name__}: the observation after step {turn + 1} does not "
            "extend the previous one (the env rewrote its messages); token rollouts need an env whose chat grows by "
            "appending (SelfInterestedExploration-v0: context='conversation')")

    def env_text(self, k: int, rest: str, obs: dict, info: dict) -> tuple[str, str]:
        prefill = str(obs.get("prefill") or "")
        if prefill and rest.endswith(prefill):
            rest = rest[: len(rest) - len(prefill)]
        else:
            prefill = ""  # the policy's own text reached into it (never with a chat template)
        self._chat[k] = self._next.pop(k)
        return rest, prefill

    @staticmethod
    def read_outcome(ep: Episode, info: dict) -> None:
        """Chat envs report no search outcome: the episode keeps its rewards and step infos."""


def _check_appended(before: list[dict], after: list[dict], info: dict) -> None:
    """When the env reports ``env_messages``, the new observation must end with exactly them."""
    reported = info.get("env_messages")
    if reported is None:
        return
    reported = [dict(m) for m in reported]
    if len(after) < len(before) + len(reported) or [dict(m) for m in after[len(after) - len(reported):]] \
            != reported:
        raise ValueError("info['env_messages'] is not what the observation appended")


# ---------------------------------------------------------------------------------------------- building


def register_env_ids() -> None:
    """Register every env id of the package with Gymnasium (what ``import search_gym`` does)."""
    from search_gym.envs import register_envs
    from search_gym.envs.misalignment import register_misalignment_envs

    register_envs()
    register_misalignment_envs()


def make_chat_env(env_id: str, num_envs: int, **env_kwargs):
    """A ``SyncVectorEnv`` of ``num_envs`` copies of ``env_id`` (autoreset disabled) for
    :class:`ChatRolloutCollector`."""
    from functools import partial

    import gymnasium as gym
    from gymnasium.vector import AutoresetMode, SyncVectorEnv

    register_env_ids()
    return SyncVectorEnv([partial(gym.make, env_id, **env_kwargs) for _ in range(num_envs)],
                         autoreset_mode=AutoresetMode.DISABLED)


def make_rollout_env(env_id: str, num_envs: int, **env_kwargs):
    """A ``SearchVectorEnv`` for rollouts (vector entry point, autoreset disabled)."""
    import gymnasium as gym

    register_env_ids()
    venv = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point",
                        autoreset_mode="disabled", **env_kwargs)
    return venv.unwrapped


def is_search_env(env: Any) -> bool:
    """Whether ``env`` (an env id or a made env) is a ``SearchVectorEnv`` (played by :class:`RolloutCollector`);
    anything else is played by :class:`ChatRolloutCollector`. An id is a search env when it is registered with a
    vector entry point (the SearchVectorEnv factories)."""
    if isinstance(env, str):
        import gymnasium as gym

        register_env_ids()
        return gym.spec(env).vector_entry_point is not None
    from search_gym.envs.vector import SearchVectorEnv

    return isinstance(env, SearchVectorEnv)


def make_collector(env: Any, generator: Generator, *, few_shot: int = 0, **budget: int) -> EpisodeDriver:
    """The driver for ``env``: :class:`RolloutCollector` for a ``SearchVectorEnv``, else
    :class:`ChatRolloutCollector` (``few_shot`` search examples apply to search envs only)."""
    if is_search_env(env):
        return RolloutCollector(env, generator, few_shot=few_shot, **budget)
    return ChatRolloutCollector(env, generator, **budget)
