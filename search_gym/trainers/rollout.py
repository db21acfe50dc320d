"""Token-in / token-out multi-turn rollouts over ``SearchVectorEnv`` and over chat-message text envs.

Each sub-environment keeps ONE token buffer for its episode, never re-tokenised from the transcript:

- ``prompt_ids``: the chat-templated user prompt, tokenised once at reset;
- ``response_ids``: everything after it, in order. Policy tokens are the ids the generator sampled, kept verbatim
  with the sampler's log-probabilities (loss weight 1). Environment tokens are everything the environment wrote
  into the assistant turn: attack prefills (``info["prefill"]`` at reset, ``info["next_prefill"]`` after a step),
  the closing tag it adds after a forced ``<search>``, information blocks and correction messages
  (``info["env_text"]``); each piece is tokenised once when it arrives and has loss weight 0.

The next turn is generated from ``prompt_ids + response_ids`` as they stand, so the policy always continues exactly
the tokens it will be trained on. The environment keeps its own text transcript; ``info["agent_text"]`` says which
part of the action it kept (it cuts at the first closing tag). When the kept text is shorter than the decoded
policy tokens, the buffer keeps the longest token prefix inside the kept text, the few characters of a token that
straddled the cut are added as environment tokens, and ``TokenEpisode.text_repairs`` counts it: the buffer decodes
to the env's transcript, and only tokens the policy really emitted carry loss weight.

Finished sub-environments are not stepped again (the vector env runs with ``autoreset_mode="disabled"``).
A context budget bounds prompt, response and per-turn observation tokens; every cut is recorded on the episode.

:class:`RolloutCollector` plays ``SearchVectorEnv`` (batched retrieval, the env reports its text in
``info["env_text"]``). :class:`ChatRolloutCollector` plays any Gymnasium text env whose observation is chat
``messages`` (+ optional ``prefill``) that grow by appending (e.g. ``SelfInterestedExploration-v0`` with
``context="conversation"``): what the env appended after the agent's message is the new observation's rendered chat
text past the old one, tokenised once as environment tokens. Both share one implementation of the bookkeeping
(:class:`TokenCollector`: episode start, policy tokens up to the kept text, capped environment turns, budget end).

Generation backends implement :class:`Generator` (``generate(requests) -> list[Generation]``). :class:`HFGenerator`
wraps :class:`search_gym.agents.HFAgent` around the policy being trained; :class:`AgentGenerator` turns a text agent
(the scripted oracle of the SFT warm start) into tokens. A vLLM backend with weight sync slots in here
(``sync_weights`` is called after every optimiser step).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

SEARCH_TAG = "<search>"
# Kinds of response spans.
POLICY, ENV, PREFILL = "policy", "env", "prefill"


@dataclass
class TokenEpisode:
    """One episode as the trainer sees it: a prompt and a response of policy and environment tokens.

    ``loss_mask[i]`` is 1 for tokens the policy sampled and 0 for tokens the environment wrote;
    ``logprobs[i]`` is the sampler's log-probability for policy tokens (NaN when the generator has none, e.g. a
    scripted agent) and 0 for environment tokens. ``spans`` lists ``(start, end, kind)`` over ``response_ids``
    (kind ``policy``, ``env`` or ``prefill``; ``turn`` says which turn each span belongs to in ``span_turns``).
    ``search_indices`` are response indices of the last token of each ``<search>`` that opened a query (written
    by the policy or prefilled by an attack), in order.
    """

    question_id: str
    question: str
    group: int
    prompt_ids: list[int]
    response_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    spans: list[tuple[int, int, str]] = field(default_factory=list)
    span_turns: list[int] = field(default_factory=list)
    search_indices: list[int] = field(default_factory=list)
    golden_answers: list[str] = field(default_factory=list)
    task_reward: float = 0.0
    reward: float = 0.0
    penalty: float = 0.0
    projection: float | None = None
    answer: str | None = None
    correct: bool = False
    answered: bool = False
    num_searches: int = 0
    searches: list[str] = field(default_factory=list)
    invalid_actions: int = 0
    turns: int = 0
    terminated: bool = False
    truncated: bool = False
    budget_truncated: bool = False
    prompt_truncated: int = 0
    obs_truncated_tokens: int = 0
    text_repairs: int = 0
    safety: dict | None = None
    done: bool = False
    step_infos: list[dict] | None = None  # chat envs: the JSON scalars of each step's info (None for search envs)

    @property
    def input_ids(self) -> list[int]:
        return self.prompt_ids + self.response_ids

    @property
    def num_policy_tokens(self) -> int:
        return int(sum(self.loss_mask))

    def absolute(self, response_index: int) -> int:
        """Index in :attr:`input_ids` of a response index."""
        return len(self.prompt_ids) + response_index

    def to_dict(self) -> dict:
        return asdict(self)

    # ------------------------------------------------------------------ building

    def _append(self, ids: Sequence[int], kind: str, turn: int, logprobs: Sequence[float] | None = None) -> None:
        if not ids:
            return
        start = len(self.response_ids)
        self.response_ids.extend(int(t) for t in ids)
        weight = 1 if kind == POLICY else 0
        self.loss_mask.extend([weight] * len(ids))
        if kind == POLICY:
            values = list(logprobs) if logprobs is not None else [math.nan] * len(ids)
            if len(values) != len(ids):
                raise ValueError("one log-probability per policy token expected")
            self.logprobs.extend(float(v) for v in values)
        else:
            self.logprobs.extend([0.0] * len(ids))
        self.spans.append((start, start + len(ids), kind))
        self.span_turns.append(turn)


@dataclass
class GenerationRequest:
    """What a generator continues: the token buffer, and the observation for text agents."""

    input_ids: list[int]
    observation: dict
    max_new_tokens: int


@dataclass
class Generation:
    ids: list[int]
    logprobs: list[float] | None
    text: str
    finish_reason: str | None = None


class Generator(Protocol):
    """A generation backend: continue token buffers; ``sync_weights`` after each optimiser step."""

    tokenizer: Any

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]: ...

    def sync_weights(self) -> None: ...

    def seed(self, seed: int) -> None: ...


class HFGenerator:
    """Sample from a transformers model (the policy itself: no copy, no weight sync needed).

    Uses :class:`search_gym.agents.HFAgent`'s token-id generation: stop strings ``</search>`` / ``</answer>``,
    left-padded batches and the sampler's log-probabilities at ``temperature``.
    """

    def __init__(self, model, tokenizer, *, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                 batch_size: int | None = None, cache_implementation: str | None = None):
        from search_gym.agents.hf import HFAgent

        self.tokenizer = tokenizer
        self.model = model
        self.agent = HFAgent(model, tokenizer, temperature=temperature, top_p=top_p, seed=seed, few_shot=0,
                             batch_size=batch_size, cache_implementation=cache_implementation)
        self.temperature = temperature

    def seed(self, seed: int) -> None:
        self.agent.seed(seed)

    def sync_weights(self) -> None:
        """The generator samples from the trained module itself."""

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        # HFAgent.generate_ids samples in eval mode and gives the policy its training mode back
        out: list[Generation] = [None] * len(requests)  # type: ignore[list-item]
        # One generate call per distinct budget keeps batches large (budgets differ only near the end).
        by_budget: dict[int, list[int]] = {}
        for i, r in enumerate(requests):
            by_budget.setdefault(r.max_new_tokens, []).append(i)
        for budget, idx in by_budget.items():
            steps = self.agent.generate_ids([requests[i].input_ids for i in idx], max_new_tokens=budget)
            for i, step in zip(idx, steps):
                out[i] = Generation(list(step.completion_ids or []), step.logprobs, step.text, step.finish_reason)
        return out


class AgentGenerator:
    """A text agent (``act_batch(observations)``) as a generator: its text is tokenised once, no log-probs."""

    def __init__(self, agent, tokenizer):
        self.agent, self.tokenizer = agent, tokenizer

    def seed(self, seed: int) -> None:
        if hasattr(self.agent, "seed"):
            self.agent.seed(seed)

    def sync_weights(self) -> None:
        pass

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        steps = self.agent.act_batch([r.observation for r in requests])
        return [Generation(encode(self.tokenizer, s.text), None, s.text, "stop") for s in steps]


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of a piece of text inside the assistant turn (no special tokens added)."""
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def decode(tokenizer, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _prefix_decodes(tokenizer, ids: Sequence[int]) -> list[str]:
    """``decode(ids[:j])`` for j = 1..n in one batched call."""
    if not ids:
        return []
    return tokenizer.batch_decode([list(ids[: j + 1]) for j in range(len(ids))], skip_special_tokens=False,
                                  clean_up_tokenization_spaces=False)


def search_tag_ends(tokenizer, ids: Sequence[int]) -> list[int]:
    """Indices into ``ids`` of the token that completes each ``<search>`` in their decoded text: for the k-th tag, the
    first ``j`` whose ``decode(ids[:j + 1])`` holds k tags. That count only grows with ``j`` (a tag is ASCII, which
    a longer prefix never re-decodes), so each tag is found by bisection: O(log n) decodes instead of one per token
    (this runs on every search turn of every episode)."""
    total = decode(tokenizer, ids).count(SEARCH_TAG)
    out, low = [], 0
    for k in range(1, total + 1):
        high = len(ids) - 1
        while low < high:
            mid = (low + high) // 2
            if decode(tokenizer, ids[: mid + 1]).count(SEARCH_TAG) >= k:
                high = mid
            else:
                low = mid + 1
        out.append(low)
    return out


def kept_prefix(tokenizer, ids: Sequence[int], kept: str) -> tuple[int, str]:
    """(k, rest): the longest ``ids[:k]`` whose decoded text is a prefix of ``kept``, and the text of ``kept`` after it."""
    if decode(tokenizer, ids) == kept:
        return len(ids), ""
    k, covered = 0, ""
    for j, text in enumerate(_prefix_decodes(tokenizer, ids)):
        if kept.startswith(text) and "\ufffd" not in text[len(covered):]:
            k, covered = j + 1, text
        elif not kept.startswith(text[: len(covered)]):
            break
    return k, kept[len(covered):]


@dataclass
class RolloutStats:
    generation_seconds: float = 0.0
    env_seconds: float = 0.0
    generated_tokens: int = 0


class TokenCollector:
    """What both collectors share: the generator, the context budget, the group layout of ``collect`` and the
    token bookkeeping of one :class:`TokenEpisode` (prompt and prefill at the start, policy tokens kept up to the
    text the env kept, environment turns capped per turn, the end when the response budget is spent).
    Subclasses set ``num_envs`` and implement ``_play(jobs, seed)``."""

    num_envs: int

    def __init__(self, generator: Generator, *, max_turn_tokens: int = 128, max_prompt_tokens: int = 1024,
                 max_response_tokens: int = 1024, max_obs_tokens: int = 512):
        self.generator, self.tokenizer = generator, generator.tokenizer
        self.max_turn_tokens, self.max_prompt_tokens = int(max_turn_tokens), int(max_prompt_tokens)
        self.max_response_tokens, self.max_obs_tokens = int(max_response_tokens), int(max_obs_tokens)
        self.stats = RolloutStats()

    def collect(self, question_ids: Sequence[Any], group_size: int = 1, *, seed: int = 0,
                progress=None) -> list[TokenEpisode]:
        """Episodes for every question (or episode start), ``group_size`` each, grouped consecutively
        (``episode.group`` = index of its question). Seeded: the same ``seed`` replays the same rollout for the
        same weights."""
        jobs = [(g, q) for g, q in enumerate(question_ids) for _ in range(group_size)]
        self.generator.seed(seed)
        episodes: list[TokenEpisode] = []
        n = self.num_envs
        for start in range(0, len(jobs), n):
            episodes += self._play(jobs[start : start + n], seed=seed + start)
            if progress is not None:
                progress(len(episodes), len(jobs))
        return episodes

    def _play(self, jobs: list[tuple[int, Any]], seed: int) -> list[TokenEpisode]:
        raise NotImplementedError

    def _new_episode(self, question_id: str, question: str, group: int, prompt_text: str, prefill: str,
                     **fields: Any) -> TokenEpisode:
        """An episode whose prompt is ``prompt_text`` (cut from the left to the prompt budget) and whose response
        starts with the env's ``prefill``; an episode whose prefill alone fills the response budget is ended."""
        prompt = encode(self.tokenizer, prompt_text)
        cut = max(0, len(prompt) - self.max_prompt_tokens)
        ep = TokenEpisode(question_id=question_id, question=question, group=group, prompt_ids=prompt[cut:],
                          prompt_truncated=cut, **fields)
        ep._append(encode(self.tokenizer, prefill), PREFILL, 0)
        if len(ep.response_ids) >= self.max_response_tokens:
            self._end(ep, budget=True)
        return ep

    def _add_policy_text(self, ep: TokenEpisode, gen: Generation, kept: str, turn: int, *,
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
        ep._append(ids[:k], POLICY, turn, None if logprobs is None else list(logprobs)[:k])
        if own_text is not None:
            return rest
        # Characters the env kept that no whole policy token covers (a token straddled the cut): env-written.
        ep._append(encode(self.tokenizer, rest), ENV, turn)
        return ""

    def _add_env_turn(self, ep: TokenEpisode, env_text: str, next_prefill: str, turn: int) -> bool:
        """Append what the env wrote after a turn (capped to ``max_obs_tokens`` and to the room left) and the
        next turn's prefill; True when the response budget is spent (the episode cannot continue)."""
        env_ids = encode(self.tokenizer, env_text)
        # Per-turn cap, then whatever room the response budget has left.
        keep = max(0, min(self.max_obs_tokens, self.max_response_tokens - len(ep.response_ids)))
        if len(env_ids) > keep:
            ep.obs_truncated_tokens += len(env_ids) - keep
            env_ids = env_ids[:keep]
        ep._append(env_ids, ENV, turn)
        room = max(0, self.max_response_tokens - len(ep.response_ids))
        ep._append(encode(self.tokenizer, next_prefill)[:room], PREFILL, turn + 1)
        return len(ep.response_ids) >= self.max_response_tokens

    @staticmethod
    def _end(ep: TokenEpisode, *, budget: bool) -> None:
        ep.budget_truncated = budget
        ep.truncated = True
        ep.task_reward = ep.reward = 0.0


class RolloutCollector(TokenCollector):
    """Plays G episodes per question on a vector env and returns one :class:`TokenEpisode` each.

    Args:
        venv: a ``SearchVectorEnv`` (tags protocol); it is switched to ``autoreset_mode="disabled"``.
        generator: a :class:`Generator`.
        render_prompt: ``messages -> text`` of the prompt (chat template with the generation prompt); default
            renders with the generator's tokenizer and ``few_shot`` worked examples.
        max_turn_tokens / max_prompt_tokens / max_response_tokens / max_obs_tokens: the context budget.
    """

    def __init__(self, venv, generator: Generator, *, few_shot: int = 0, max_turn_tokens: int = 128,
                 max_prompt_tokens: int = 1024, max_response_tokens: int = 1024, max_obs_tokens: int = 512,
                 render_prompt=None):
        from gymnasium.vector import AutoresetMode

        from search_gym.agents.hf import render_prompt as _render

        if venv.envs[0].protocol != "tags":
            raise ValueError("token rollouts support the tags protocol (the tool-call protocol re-renders chat turns)")
        super().__init__(generator, max_turn_tokens=max_turn_tokens, max_prompt_tokens=max_prompt_tokens,
                         max_response_tokens=max_response_tokens, max_obs_tokens=max_obs_tokens)
        venv.autoreset_mode = AutoresetMode.DISABLED
        venv.metadata = {**venv.metadata, "autoreset_mode": AutoresetMode.DISABLED}
        self.venv, self.num_envs = venv, venv.num_envs
        self.render_prompt = render_prompt or (lambda messages: _render(self.tokenizer, messages, "", few_shot))

    def _play(self, jobs: list[tuple[int, Any]], seed: int) -> list[TokenEpisode]:
        import time

        jobs = [(g, str(q)) for g, q in jobs]
        venv, n = self.venv, self.venv.num_envs
        live = np.zeros(n, dtype=bool)
        live[: len(jobs)] = True
        per_env = [{"question_id": q} for _, q in jobs] + [{"question_id": jobs[-1][1]}] * (n - len(jobs))
        t0 = time.perf_counter()
        obs, infos = venv.reset(seed=seed, options={"per_env": per_env, "reset_mask": live})
        self.stats.env_seconds += time.perf_counter() - t0
        episodes: list[TokenEpisode | None] = [None] * n
        for i, (group, qid) in enumerate(jobs):
            episodes[i] = self._new_episode(qid, str(infos["question"][i]), group,
                                            self.render_prompt(obs["messages"][i]), infos["prefill"][i],
                                            golden_answers=list(infos["golden_answers"][i]))
            # An episode whose prefill alone fills the budget cannot act.
            live[i] = not episodes[i].budget_truncated
        venv.stop(~live)  # never step a sub-env without a running job
        search_turns: list[set[int]] = [set() for _ in range(n)]
        while live.any():
            ids = [int(i) for i in np.flatnonzero(live)]
            requests = []
            for i in ids:
                ep = episodes[i]
                budget = min(self.max_turn_tokens, self.max_response_tokens - len(ep.response_ids))
                requests.append(GenerationRequest(ep.input_ids, {"messages": obs["messages"][i],
                                                                 "prefill": obs["prefill"][i]}, budget))
            t0 = time.perf_counter()
            generations = self.generator.generate(requests)
            self.stats.generation_seconds += time.perf_counter() - t0
            actions: list[Any] = [""] * n
            for i, gen in zip(ids, generations):
                actions[i] = gen.text
                self.stats.generated_tokens += len(gen.ids)
            t0 = time.perf_counter()
            obs, rewards, terms, truncs, infos = venv.step(actions)
            self.stats.env_seconds += time.perf_counter() - t0
            for i, gen in zip(ids, generations):
                ep = episodes[i]
                turn = int(infos["turn"][i]) - 1
                self._add_policy_text(ep, gen, str(infos["agent_text"][i]), turn)
                ep.invalid_actions += bool(infos["invalid_action"][i])
                if infos["action_type"][i] == "search":
                    search_turns[i].add(turn)
                ep.turns = turn + 1
                finished = bool(terms[i] or truncs[i])
                if finished:
                    ep.task_reward = ep.reward = float(rewards[i])
                    ep.terminated, ep.truncated = bool(terms[i]), bool(truncs[i])
                    self._record_end(ep, infos, i, venv.last_infos[i])
                    live[i] = False
                    continue
                if self._add_env_turn(ep, str(infos["env_text"][i]), str(infos["next_prefill"][i]), turn):
                    # Out of context: the episode ends here, unanswered (reward 0), and says why.
                    self._record_end(ep, infos, i, venv.last_infos[i])
                    self._end(ep, budget=True)
                    live[i] = False
                    venv.stop(np.arange(n) == i)  # the env's episode is over too: never step it again
        out = [e for e in episodes[: len(jobs)]]
        for i, ep in enumerate(out):
            ep.search_indices = self._search_indices(ep, search_turns[i])
        return out

    @staticmethod
    def _record_end(ep: TokenEpisode, infos: dict, i: int, own_info: dict | None = None) -> None:
        ep.answer = infos["answer"][i]
        ep.answered = ep.answer is not None
        correct = infos["correct"][i]
        ep.correct = bool(correct) if correct is not None else False
        ep.num_searches = int(infos["num_searches"][i])
        ep.searches = list(infos["searches"][i])
        safety = (own_info or {}).get("safety")
        if safety:
            ep.safety = dict(safety.get("episode") or {}) or None

    def _search_indices(self, ep: TokenEpisode, search_turns: set[int]) -> list[int]:
        """The <search> tags of the turns whose action was a search (an invalid action's tag sent no query)."""
        out = []
        for (start, end, kind), turn in zip(ep.spans, ep.span_turns):
            if kind in (POLICY, PREFILL) and turn in search_turns:
                out += [start + j for j in search_tag_ends(self.tokenizer, ep.response_ids[start:end])]
        return out


class ChatRolloutCollector(TokenCollector):
    """Plays G episodes per start on Gymnasium text envs whose observation is chat ``messages`` (+ optional
    ``prefill``) growing by appending, and returns one :class:`TokenEpisode` each.

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
        from search_gym.agents.hf import render_prompt as _render

        super().__init__(generator, max_turn_tokens=max_turn_tokens, max_prompt_tokens=max_prompt_tokens,
                         max_response_tokens=max_response_tokens, max_obs_tokens=max_obs_tokens)
        self.venv, self.envs = venv, list(getattr(venv, "envs", venv))
        if not self.envs:
            raise ValueError("need at least one env")
        self.num_envs = len(self.envs)
        self.render_prompt = render_prompt or (lambda messages: _render(self.tokenizer, messages, "", 0, tools=()))

    def _play(self, jobs: list[tuple[int, Any]], seed: int) -> list[TokenEpisode]:
        import time

        episodes, messages, transcripts, prefills = [], [], [], []
        t0 = time.perf_counter()
        for i, (group, start) in enumerate(jobs):
            obs, _ = self.envs[i].reset(seed=int(start))
            msgs, prefill = list(obs["messages"]), str(obs.get("prefill") or "")
            text = self.render_prompt(msgs)
            user = next((m["content"] for m in msgs if m.get("role") == "user"), "")
            episodes.append(self._new_episode(str(start), str(user), group, text, prefill, step_infos=[]))
            messages.append(msgs)
            transcripts.append(text + prefill)
            prefills.append(prefill)
        self.stats.env_seconds += time.perf_counter() - t0
        live = [not ep.budget_truncated for ep in episodes]
        while any(live):
            ids = [i for i, on in enumerate(live) if on]
            requests = []
            for i in ids:
                ep = episodes[i]
                budget = min(self.max_turn_tokens, self.max_response_tokens - len(ep.response_ids))
                requests.append(GenerationRequest(ep.input_ids, {"messages": tuple(messages[i]),
                                                                 "prefill": prefills[i]}, budget))
            t0 = time.perf_counter()
            generations = self.generator.generate(requests)
            self.stats.generation_seconds += time.perf_counter() - t0
            for i, gen in zip(ids, generations):
                ep, turn = episodes[i], episodes[i].turns
                self.stats.generated_tokens += len(gen.ids)
                t0 = time.perf_counter()
                obs, reward, terminated, truncated, info = self.envs[i].step(gen.text)
                self.stats.env_seconds += time.perf_counter() - t0
                ep.turns = turn + 1
                ep.task_reward = ep.reward = ep.reward + float(reward)
                ep.step_infos.append({k: v for k, v in info.items() if isinstance(v, (bool, int, float, str))
                                      or v is None})
                ep.invalid_actions += bool(info.get("parse_error") or info.get("invalid_action"))
                own = info.get("agent_text", gen.text)
                own = own if isinstance(own, str) else gen.text
                finished = bool(terminated or truncated)
                new_messages, new_prefill = list(obs["messages"]), str(obs.get("prefill") or "")
                self._check_appended(messages[i], new_messages, info)
                target = self.render_prompt(new_messages) + new_prefill
                if target.startswith(transcripts[i]):
                    rest = self._add_policy_text(ep, gen, target[len(transcripts[i]):], turn, own_text=own)
                elif finished:  # a final observation need not extend the conversation: keep the agent's text
                    self._add_policy_text(ep, gen, own, turn)
                else:
                    raise ValueError(
                        f"{type(self.envs[i].unwrapped).__name__}: the observation after step {turn + 1} does not "
                        "extend the previous one (the env rewrote its messages); token rollouts need an env whose "
                        "chat grows by appending (SelfInterestedExploration-v0: context='conversation')")
                if finished:
                    ep.terminated, ep.truncated = bool(terminated), bool(truncated)
                    live[i] = False
                    continue
                if new_prefill and rest.endswith(new_prefill):
                    rest = rest[: len(rest) - len(new_prefill)]
                else:
                    new_prefill = ""  # the policy's own text reached into it (never with a chat template)
                messages[i], transcripts[i], prefills[i] = new_messages, target, str(obs.get("prefill") or "")
                if self._add_env_turn(ep, rest, new_prefill, turn):
                    ep.budget_truncated = ep.truncated = True  # out of context: it keeps the rewards it was paid
                    live[i] = False
        return episodes

    @staticmethod
    def _check_appended(before: list[dict], after: list[dict], info: dict) -> None:
        """When the env reports ``env_messages``, the new observation must end with exactly them."""
        reported = info.get("env_messages")
        if reported is None:
            return
        reported = [dict(m) for m in reported]
        if len(after) < len(before) + len(reported) or [dict(m) for m in after[len(after) - len(reported):]] \
                != reported:
            raise ValueError("info['env_messages'] is not what the observation appended")


def make_chat_env(env_id: str, num_envs: int, **env_kwargs):
    """A ``SyncVectorEnv`` of ``num_envs`` copies of ``env_id`` (autoreset disabled) for
    :class:`ChatRolloutCollector`."""
    from functools import partial

    import gymnasium as gym
    from gymnasium.vector import AutoresetMode, SyncVectorEnv

    import search_gym  # noqa: F401  (registers the ids)

    return SyncVectorEnv([partial(gym.make, env_id, **env_kwargs) for _ in range(num_envs)],
                         autoreset_mode=AutoresetMode.DISABLED)


def is_search_env(env: Any) -> bool:
    """Whether ``env`` (an env id or a made env) is a ``SearchVectorEnv`` (played by :class:`RolloutCollector`);
    anything else is played by :class:`ChatRolloutCollector`. An id is a search env when it is registered with a
    vector entry point (the SearchVectorEnv factories)."""
    if isinstance(env, str):
        import gymnasium as gym

        import search_gym  # noqa: F401

        return gym.spec(env).vector_entry_point is not None
    from search_gym.envs.vector import SearchVectorEnv

    return isinstance(env, SearchVectorEnv)


def make_collector(env: Any, generator: Generator, *, few_shot: int = 0, **budget: int) -> TokenCollector:
    """The collector for ``env``: :class:`RolloutCollector` for a ``SearchVectorEnv``, else
    :class:`ChatRolloutCollector` (``few_shot`` search examples apply to search envs only)."""
    if is_search_env(env):
        return RolloutCollector(env, generator, few_shot=few_shot, **budget)
    return ChatRolloutCollector(env, generator, **budget)


def _first(scores: Any) -> Any:
    """The first judge's value of a ``{judge: value}`` dict (None when empty or absent)."""
    if isinstance(scores, dict):
        return next(iter(scores.values()), None)
    return scores


def make_rollout_env(env_id: str, num_envs: int, **env_kwargs):
    """A ``SearchVectorEnv`` for rollouts (vector entry point, autoreset disabled)."""
    import gymnasium as gym

    import search_gym  # noqa: F401  (registers the ids)

    venv = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point",
                        autoreset_mode="disabled", **env_kwargs)
    return venv.unwrapped


def _mean(xs) -> float:
    return float(np.mean(xs)) if len(xs) else float("nan")


def _batch_metrics(episodes: Sequence[TokenEpisode]) -> dict[str, float]:
    """The means every env's episodes have: return, task reward, invalid actions, lengths, budget cuts, repairs."""
    return {
        "charts/episodic_return": _mean([e.reward for e in episodes]),
        "charts/task_reward": _mean([e.task_reward for e in episodes]),
        "charts/invalid_per_episode": _mean([e.invalid_actions for e in episodes]),
        "charts/episodic_length": _mean([len(e.response_ids) for e in episodes]),
        "charts/policy_tokens": _mean([e.num_policy_tokens for e in episodes]),
        "charts/budget_truncated": _mean([float(e.budget_truncated) for e in episodes]),
        "charts/text_repairs": _mean([e.text_repairs for e in episodes]),
    }


def chat_episode_metrics(episodes: Sequence[TokenEpisode]) -> dict[str, float]:
    """Means over chat-env episodes: the return, lengths, and ``env/<key>``: the mean over all steps of every bool
    or float the env's step info reports (``SelfInterestedExploration-v0``: ``env/violation``,
    ``env/supervised``, ``env/reward``)."""
    out = {**_batch_metrics(episodes), "charts/turns": _mean([e.turns for e in episodes])}
    steps = [info for e in episodes for info in (e.step_infos or [])]
    keys = sorted({k for info in steps for k, v in info.items() if isinstance(v, (bool, float))})
    for key in keys:
        values = [float(info[key]) for info in steps if isinstance(info.get(key), (bool, float, int))]
        out[f"env/{key}"] = _mean(values)
    return out


def episode_metrics(episodes: Sequence[TokenEpisode]) -> dict[str, float]:
    """Task and safety means over a rollout batch (CleanRL names for the return); chat-env episodes get
    :func:`chat_episode_metrics`."""
    if not episodes:
        return {}
    if all(e.step_infos is not None for e in episodes):
        return chat_episode_metrics(episodes)
    out = {
        **_batch_metrics(episodes),
        "charts/em": _mean([float(e.correct) for e in episodes]),
        "charts/answered": _mean([float(e.answered) for e in episodes]),
        "charts/format_valid": _mean([float(e.invalid_actions == 0 and e.answered) for e in episodes]),
        "charts/searches_per_episode": _mean([e.num_searches for e in episodes]),
    }
    projections = [e.projection for e in episodes if e.projection is not None]
    if projections:
        out["safety/projection"] = _mean(projections)
        out["safety/penalty"] = _mean([e.penalty for e in episodes])
    safety = [e.safety for e in episodes if e.safety]
    if safety:
        # The first judge of each aspect (the env's judge order), on the eval harness's scale: an episode without
        # a search sent nothing to the search engine (search safety 100); refusal 100 = refused.
        search = [100.0 if not s.get("num_searches") else _first(s.get("query_safety_mean")) for s in safety]
        refused = [_first(s.get("refused")) for s in safety]
        answer = [_first(s.get("answer_safety")) for s in safety]
        for name, values in (("safety/search_safety", search),
                             ("safety/refusal", [100.0 * bool(v) for v in refused if v is not None]),
                             ("safety/answer_safety", answer)):
            values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
            if values:
                out[name] = _mean(values)
    return out
