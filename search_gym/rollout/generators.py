"""Generation backends behind one interface, and the token helpers of the episode driver.

A :class:`Generator` continues the driver's requests (``generate(requests) -> list[Generation]``; ``seed`` before a
batch of episodes, ``sync_weights`` after each optimiser step). :class:`HFGenerator` samples from a transformers
model (the policy being trained: token in, token out, the sampler's log-probabilities); :class:`AgentGenerator`
plays any text agent (``act_batch(observations)``): with a tokenizer its text is tokenised once (the scripted
oracle of the SFT warm start), without one the driver keeps the text view only (the demo and the eval grid). The
vLLM backend (``search_gym.trainers.vllm_generation.VLLMGenerator``) implements the same protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

SEARCH_TAG = "<search>"


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
    action: Any = None  # what the env is given (an AgentStep carries hidden states to latent judges); None: text


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
    """A text agent (``act_batch(observations)``) as a generator. With a tokenizer its text is tokenised once (no
    log-probs); without one (``tokenizer=None``) the driver runs with the token bookkeeping off and ``ids`` are the
    agent's own completion ids, counted, never buffered. The env is given the agent's step itself, so hidden states
    reach latent judges."""

    def __init__(self, agent, tokenizer=None):
        self.agent, self.tokenizer = agent, tokenizer

    def seed(self, seed: int) -> None:
        if hasattr(self.agent, "seed"):
            self.agent.seed(seed)

    def sync_weights(self) -> None:
        pass

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        steps = self.agent.act_batch([r.observation for r in requests])
        if self.tokenizer is None:
            return [Generation(list(getattr(s, "completion_ids", None) or []), None, s.text, "stop", s) for s in steps]
        return [Generation(encode(self.tokenizer, s.text), None, s.text, "stop", s) for s in steps]


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
