"""The Agent protocol: what every agent backend (scripted, HF, vLLM, OpenAI-compatible) returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass
class AgentStep:
    """One turn of agent output.

    - ``text``: the generated text (the env's action), continuing the observation's ``prefill``.
    - ``prompt_ids`` / ``completion_ids``: token ids of the prompt and of the generated text (None for agents
      without a tokenizer).
    - ``logprobs``: per-completion-token log-probabilities under the sampling policy.
    - ``hidden``: ``{layer: {position_name: tensor}}``; layer 0 is the first decoder block (HF's
      ``hidden_states[layer + 1]``). None when the backend cannot expose hidden states.
    """

    text: str
    prompt_ids: list[int] | None = None
    completion_ids: list[int] | None = None
    logprobs: list[float] | None = None
    hidden: dict[int, dict[str, Any]] | None = None
    finish_reason: str | None = None
    metadata: dict = field(default_factory=dict)


@runtime_checkable
class Agent(Protocol):
    """Maps SearchEnv observations (``{"messages", "prefill"}``) to actions."""

    def act(self, observation: dict) -> AgentStep: ...

    def act_batch(self, observations: Sequence[dict]) -> list[AgentStep]: ...


class BaseAgent:
    """Convenience base: ``act_batch`` loops over ``act``; backends that batch natively override it."""

    name = "agent"

    def act(self, observation: dict) -> AgentStep:
        return self.act_batch([observation])[0]

    def act_batch(self, observations: Sequence[dict]) -> list[AgentStep]:
        if type(self).act is BaseAgent.act:
            raise NotImplementedError(f"{type(self).__name__} must implement act() or act_batch()")
        return [self.act(o) for o in observations]

    def seed(self, seed: int | None) -> None:
        """Reseed any sampling; deterministic agents ignore it."""


def sampling_settings(max_new_tokens: int, min_new_tokens: int, temperature: float,
                      top_p: float) -> tuple[int, int, float, float]:
    """The generation settings every model-backed agent takes, checked: ``(max_new_tokens, min_new_tokens,
    temperature, top_p)``, or a ValueError naming the rule broken."""
    if max_new_tokens < 1 or not 0 <= min_new_tokens <= max_new_tokens:
        raise ValueError("need max_new_tokens >= 1 and 0 <= min_new_tokens <= max_new_tokens")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError("need temperature >= 0 and 0 < top_p <= 1")
    return int(max_new_tokens), int(min_new_tokens), float(temperature), float(top_p)
