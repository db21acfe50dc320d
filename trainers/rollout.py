"""Token-in / token-out multi-turn rollouts over ``SearchVectorEnv``.

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
                 batch_size: int | None = None):
        from search_gym.agents.hf import HFAgent

        self.tokenizer = tokenizer
        self.model = model
        self.agent = HFAgent(model, tokenizer, temperature=temperature, top_p=top_p, seed=seed, few_shot=0,
                             batch_size=batch_size)
        self.temperature = temperature

    def seed(self, seed: int) -> None:
        self.agent.seed(seed)

    def sync_weights(self) -> None:
        """The generator samples from the trained module itself."""

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        was_training = self.model.training
        self.model.eval()
        try:
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
        finally:
            self.model.train(was_training)


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
    """Indices into ``ids`` of the token that completes each ``<search>`` in their decoded text."""
    prefixes = _prefix_decodes(tokenizer, ids)
    if not prefixes or SEARCH_TAG not in prefixes[-1]:
        return []
    text, out, start = prefixes[-1], [], 0
    lengths = [len(p) for p in prefixes]
    while True:
        at = text.find(SEARCH_TAG, start)
        if at < 0:
            return out
        end = at + len(SEARCH_TAG)
        out.append(next(j for j, n in enumerate(lengths) if n >= end))
        start = end


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


class RolloutCollector:
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
        venv.autoreset_mode = AutoresetMode.DISABLED
        venv.metadata = {**venv.metadata, "autoreset_mode": AutoresetMode.DISABLED}
        self.venv, self.generator, self.tokenizer = venv, generator, generator.tokenizer
        self.render_prompt = render_prompt or (lambda messages: _render(self.tokenizer, messages, "", few_shot))
        self.max_turn_tokens, self.max_prompt_tokens = int(max_turn_tokens), int(max_prompt_tokens)
        self.max_response_tokens, self.max_obs_tokens = int(max_response_tokens), int(max_obs_tokens)
        self.stats = RolloutStats()

    def collect(self, question_ids: Sequence[str], group_size: int = 1, *, seed: int = 0,
                progress=None) -> list[TokenEpisode]:
        """Episodes for every question, ``group_size`` each, grouped consecutively (``episode.group`` = index of
        its question). Seeded: the same ``seed`` replays the same rollout for the same weights."""
        jobs = [(g, str(q)) for g, q in enumerate(question_ids) for _ in range(group_size)]
        self.generator.seed(seed)
        episodes: list[TokenEpisode] = []
        n = self.venv.num_envs
        for start in range(0, len(jobs), n):
            episodes += self._play(jobs[start : start + n], seed=seed + start)
            if progress is not None:
                progress(len(episodes), len(jobs))
        return episodes

    def _play(self, jobs: list[tuple[int, str]], seed: int) -> list[TokenEpisode]:
        import time

        venv, n = self.venv, self.venv.num_envs
        live = np.zeros(n, dtype=bool)
        live[: len(jobs)] = True
        per_env = [{"question_id": q} for _, q in jobs] + [{"question_id": jobs[-1][1]}] * (n - len(jobs))
        t0 = time.perf_counter()
        obs, infos = venv.reset(seed=seed, options={"per_env": per_env, "reset_mask": live})
        self.stats.env_seconds += time.perf_counter() - t0
        episodes: list[TokenEpisode | None] = [None] * n
        for i, (group, qid) in enumerate(jobs):
            prompt = encode(self.tokenizer, self.render_prompt(obs["messages"][i]))
            cut = max(0, len(prompt) - self.max_prompt_tokens)
            ep = TokenEpisode(question_id=qid, question=str(infos["question"][i]), group=group,
                              prompt_ids=prompt[cut:], prompt_truncated=cut,
                              golden_answers=list(infos["golden_answers"][i]))
            ep._append(encode(self.tokenizer, infos["prefill"][i]), PREFILL, 0)
            episodes[i] = ep
        # An episode whose prefill alone fills the budget cannot act.
        for i in range(len(jobs)):
            if len(episodes[i].response_ids) >= self.max_response_tokens:
                self._end(episodes[i], budget=True)
                live[i] = False
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
                env_ids = encode(self.tokenizer, str(infos["env_text"][i]))
                # Per-turn cap, then whatever room the response budget has left.
                keep = max(0, min(self.max_obs_tokens, self.max_response_tokens - len(ep.response_ids)))
                if len(env_ids) > keep:
                    ep.obs_truncated_tokens += len(env_ids) - keep
                    env_ids = env_ids[:keep]
                ep._append(env_ids, ENV, turn)
                room = max(0, self.max_response_tokens - len(ep.response_ids))
                ep._append(encode(self.tokenizer, str(infos["next_prefill"][i]))[:room], PREFILL, turn + 1)
                if len(ep.response_ids) >= self.max_response_tokens:
                    # Out of context: the episode ends here, unanswered (reward 0), and says why.
                    self._record_end(ep, infos, i, venv.last_infos[i])
                    self._end(ep, budget=True)
                    live[i] = False
                    venv.stop(np.arange(n) == i)  # the env's episode is over too: never step it again
        out = [e for e in episodes[: len(jobs)]]
        for i, ep in enumerate(out):
            ep.search_indices = self._search_indices(ep, search_turns[i])
        return out

    def _add_policy_text(self, ep: TokenEpisode, gen: Generation, kept: str, turn: int) -> None:
        ids, logprobs = list(gen.ids), gen.logprobs
        k, rest = kept_prefix(self.tokenizer, ids, kept)
        if k < len(ids) or rest:
            ep.text_repairs += 1
        ep._append(ids[:k], POLICY, turn, None if logprobs is None else list(logprobs)[:k])
        # Characters the env kept that no whole policy token covers (a token straddled the cut): env-written.
        ep._append(encode(self.tokenizer, rest), ENV, turn)

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

    @staticmethod
    def _end(ep: TokenEpisode, *, budget: bool) -> None:
        ep.budget_truncated = budget
        ep.truncated = True
        ep.task_reward = ep.reward = 0.0

    def _search_indices(self, ep: TokenEpisode, search_turns: set[int]) -> list[int]:
        """The <search> tags of the turns whose action was a search (an invalid action's tag sent no query)."""
        out = []
        for (start, end, kind), turn in zip(ep.spans, ep.span_turns):
            if kind in (POLICY, PREFILL) and turn in search_turns:
                out += [start + j for j in search_tag_ends(self.tokenizer, ep.response_ids[start:end])]
        return out


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


def episode_metrics(episodes: Sequence[TokenEpisode]) -> dict[str, float]:
    """Task and safety means over a rollout batch (CleanRL names for the return)."""
    if not episodes:
        return {}
    mean = lambda xs: float(np.mean(xs)) if len(xs) else float("nan")  # noqa: E731
    out = {
        "charts/episodic_return": mean([e.reward for e in episodes]),
        "charts/task_reward": mean([e.task_reward for e in episodes]),
        "charts/em": mean([float(e.correct) for e in episodes]),
        "charts/answered": mean([float(e.answered) for e in episodes]),
        "charts/format_valid": mean([float(e.invalid_actions == 0 and e.answered) for e in episodes]),
        "charts/invalid_per_episode": mean([e.invalid_actions for e in episodes]),
        "charts/searches_per_episode": mean([e.num_searches for e in episodes]),
        "charts/episodic_length": mean([len(e.response_ids) for e in episodes]),
        "charts/policy_tokens": mean([e.num_policy_tokens for e in episodes]),
        "charts/budget_truncated": mean([float(e.budget_truncated) for e in episodes]),
        "charts/text_repairs": mean([e.text_repairs for e in episodes]),
    }
    projections = [e.projection for e in episodes if e.projection is not None]
    if projections:
        out["safety/projection"] = mean(projections)
        out["safety/penalty"] = mean([e.penalty for e in episodes])
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
                out[name] = mean(values)
    return out
