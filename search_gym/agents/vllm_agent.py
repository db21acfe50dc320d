"""VLLMAgent: fast generation with vLLM, hidden states from one batched HF forward over the produced tokens.

vLLM (optional extra: ``pip install search-gym[vllm]``) generates from the same rendered prompt as
:class:`~search_gym.agents.hf.HFAgent` (chat template + prefill, passed as token ids so no second BOS is added),
stops at ``</search>`` / ``</answer>`` with the stop string kept in the text, and returns the sampled tokens'
log-probabilities (vLLM's default ``logprobs_mode`` reports the raw model distribution, like HFAgent).
Tool-call observations are rendered with the tools, also stop at ``</tool_call>`` and get
``metadata["tool_calls"]``, exactly as in HFAgent.

vLLM does not expose hidden states. When ``layers`` are requested, an HF copy of the model runs ONE batched
forward over each turn's prompt + completion token ids and keeps only the requested positions
(:func:`search_gym.agents.hidden.hidden_for_completions`), with the same conventions as HFAgent's hooks. Give
vLLM less than the whole GPU (``llm_kwargs={"gpu_memory_utilization": ...}``; 0.6 by default when capturing)
so that copy fits beside it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from search_gym.agents.base import AgentStep, BaseAgent, sampling_settings
from search_gym.agents.hidden import hidden_for_completions, normalize_layers, normalize_positions
from search_gym.agents.prompting import (
    BUNDLED_MODEL,
    DEFAULT_FEW_SHOT,
    FEW_SHOT_EXAMPLES,
    attach_tool_calls,
    render_observation,
    tool_call_stops,
)
from search_gym.devices import resolve_device, resolve_dtype
from search_gym.envs.protocol import STOP_STRINGS

VLLM_INSTALL_HINT = "VLLMAgent needs vLLM: pip install search-gym[vllm]"


@dataclass
class SamplingSpec:
    """The vLLM ``SamplingParams`` fields this agent sets; turned into real SamplingParams when vLLM is there.

    Injected ``llm`` objects (tests, custom engines) receive this dataclass when vLLM is not installed.
    """

    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str] = field(default_factory=list)
    include_stop_str_in_output: bool = True
    logprobs: int | None = 0
    seed: int | None = None
    min_tokens: int = 0
    # the text HFAgent returns (special tokens kept, none of vLLM's spaces around them): both agents' text, and
    # the token ids behind it, agree
    skip_special_tokens: bool = False
    spaces_between_special_tokens: bool = False

    def to_vllm(self):
        try:
            from vllm import SamplingParams
        except ImportError:
            return self
        return SamplingParams(**asdict(self))


def import_vllm():
    """Import vllm or raise ImportError with the install command."""
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(VLLM_INSTALL_HINT) from exc
    return vllm


class VLLMAgent(BaseAgent):
    """Search agent backed by ``vllm.LLM``; hidden states (optional) from an HF forward pass.

    Args:
        model: hub id or local folder; ``"smollm2"`` for the bundled model (converted HF folder).
        llm: an already built ``vllm.LLM`` (or any object with vLLM's ``generate(prompts, sampling_params)``
            returning objects with ``prompt_token_ids`` and ``outputs[0].token_ids / text / logprobs /
            finish_reason / stop_reason``); built from ``model`` when None.
        tokenizer: tokenizer used to render prompts and locate positions; loaded from ``model`` when None.
        hidden_model: the HF model used for hidden states; loaded from ``model`` on first use when None.
        layers / positions: as in HFAgent; None captures nothing (no HF model is loaded).
        max_new_tokens, min_new_tokens, temperature (0 = greedy), top_p, seed, few_shot, stop: as in HFAgent.
        logprobs: return the sampled tokens' log-probabilities.
        dtype: vLLM dtype ("auto", "bfloat16", "float32"...); the HF copy uses the same (bf16 for "auto").
        hidden_device: device of the HF copy (default cuda when available).
        hidden_batch_size: split the hidden-state forward into chunks of this many turns (None: one pass).
        llm_kwargs: extra ``vllm.LLM(...)`` arguments.
    """

    name = "vllm"

    def __init__(
        self,
        model: str | os.PathLike = BUNDLED_MODEL,
        *,
        llm: Any = None,
        tokenizer: Any = None,
        hidden_model: Any = None,
        layers: int | Iterable[int] | str | None = None,
        positions: str | Iterable[str] | None = None,
        max_new_tokens: int = 256,
        min_new_tokens: int = 0,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = 0,
        few_shot: bool | int | None = None,
        stop: Sequence[str] | None = STOP_STRINGS,
        logprobs: bool = True,
        dtype: str = "auto",
        hidden_device: str | None = None,
        hidden_batch_size: int | None = None,
        trust_remote_code: bool = False,
        llm_kwargs: dict | None = None,
    ):
        vllm = import_vllm() if llm is None else None  # fail fast, before any model or tokenizer is loaded
        bundled = isinstance(model, str) and model == BUNDLED_MODEL
        self._source: str | None = None if bundled else str(model)
        self.model_name = str(model)
        self.trust_remote_code = trust_remote_code
        self.dtype = dtype
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self.source, trust_remote_code=trust_remote_code)
        self.tokenizer = tokenizer
        self.hidden_model = hidden_model
        self.hidden_device = hidden_device
        self.hidden_batch_size = hidden_batch_size
        self.max_new_tokens, self.min_new_tokens, self.temperature, self.top_p = sampling_settings(
            max_new_tokens, min_new_tokens, temperature, top_p)
        self.stop = tuple(stop or ())
        self.logprobs = logprobs
        if few_shot is None:
            few_shot = bundled
        self.few_shot = DEFAULT_FEW_SHOT if few_shot is True else int(few_shot or 0)
        if not 0 <= self.few_shot <= len(FEW_SHOT_EXAMPLES):
            raise ValueError(f"few_shot must be a bool or 0..{len(FEW_SHOT_EXAMPLES)}")
        if layers is not None:
            num_layers = self._num_layers()
            self.layers = normalize_layers(layers, num_layers)
        else:
            self.layers = ()
        self.positions = normalize_positions(positions) if self.layers else ()
        if llm is None:
            kwargs = {"gpu_memory_utilization": 0.6} if self.layers else {}
            kwargs.update(llm_kwargs or {})
            llm = vllm.LLM(model=self.source, dtype=dtype, trust_remote_code=trust_remote_code, **kwargs)
        self.llm = llm
        self.seed(seed)

    @property
    def source(self) -> str:
        """Where vLLM and the HF copy load the model from (the bundled model is converted on first need only)."""
        if self._source is None:
            from search_gym.agents.gguf import ensure_smollm2

            self._source = str(ensure_smollm2())
        return self._source

    def _num_layers(self) -> int:
        if self.hidden_model is not None:
            from search_gym.agents.hidden import decoder_layers

            return len(decoder_layers(self.hidden_model))
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(self.source, trust_remote_code=self.trust_remote_code)
        return int(config.get_text_config().num_hidden_layers)

    def seed(self, seed: int | None) -> None:
        self._seed, self._calls = seed, 0

    def _hidden_model(self):
        if self.hidden_model is None:
            from transformers import AutoModelForCausalLM

            dtype = resolve_dtype("bf16" if self.dtype == "auto" else self.dtype)
            self.hidden_model = AutoModelForCausalLM.from_pretrained(
                self.source, dtype=dtype, trust_remote_code=self.trust_remote_code
            ).to(resolve_device(self.hidden_device))
            self.hidden_model.eval()
        return self.hidden_model

    # ------------------------------------------------------------------ acting

    def render(self, observation: dict) -> str:
        """Chat template (with few-shot turns, or a tool-call observation's tools) + prefill: the same text HFAgent
        continues."""
        return render_observation(self.tokenizer, observation, self.few_shot)

    def act_batch(self, observations: Sequence[dict]) -> list[AgentStep]:
        prompt_ids = [list(self.tokenizer(self.render(o), add_special_tokens=False)["input_ids"]) for o in observations]
        steps = self.generate_ids(prompt_ids, stops=[tool_call_stops(self.stop, o) for o in observations])
        return [attach_tool_calls(step, o) for step, o in zip(steps, observations)]

    def _sampling(self, index: int, stop: Sequence[str] | None = None, max_new_tokens: int | None = None):
        seed = None
        if self.temperature > 0 and self._seed is not None:
            seed = hash((self._seed, self._calls, index)) & 0x7FFF_FFFF
        return SamplingSpec(
            max_tokens=self.max_new_tokens if max_new_tokens is None else int(max_new_tokens),
            min_tokens=self.min_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=list(self.stop if stop is None else stop),
            include_stop_str_in_output=True,
            logprobs=0 if self.logprobs else None,
            seed=seed,
        ).to_vllm()

    def generate_ids(
        self, prompt_ids: Sequence[Sequence[int]], stops: Sequence[Sequence[str]] | None = None,
        max_new_tokens: Sequence[int] | None = None,
    ) -> list[AgentStep]:
        """Generate from token-id prompts in one vLLM call; add hidden states with one HF forward. ``stops``: stop
        strings per prompt (default: the agent's); ``max_new_tokens``: a budget per prompt (default: the agent's)."""
        prompts = [{"prompt_token_ids": list(p)} for p in prompt_ids]
        params = [self._sampling(i, None if stops is None else stops[i],
                                 None if max_new_tokens is None else max_new_tokens[i]) for i in range(len(prompts))]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        self._calls += 1
        steps = [self._step(list(p), out) for p, out in zip(prompt_ids, outputs)]
        if self.layers and steps:
            hidden = hidden_for_completions(
                self._hidden_model(),
                self.tokenizer,
                [s.prompt_ids for s in steps],
                [s.completion_ids for s in steps],
                self.layers,
                self.positions,
                batch_size=self.hidden_batch_size,
            )
            for step, h in zip(steps, hidden):
                step.hidden = h
        return steps

    @staticmethod
    def _step(prompt_ids: list[int], request_output: Any) -> AgentStep:
        out = request_output.outputs[0]
        completion = list(out.token_ids)
        logprobs = None
        if getattr(out, "logprobs", None):
            logprobs = []
            for token, entry in zip(completion, out.logprobs):
                value = entry[token]
                logprobs.append(float(getattr(value, "logprob", value)))
        stop_reason = getattr(out, "stop_reason", None)
        reason = out.finish_reason
        if reason == "stop":
            reason = "stop" if isinstance(stop_reason, str) else "eos"
        return AgentStep(
            text=out.text,
            prompt_ids=list(getattr(request_output, "prompt_token_ids", None) or prompt_ids),
            completion_ids=completion,
            logprobs=logprobs,
            finish_reason=reason,
            metadata={"stop_string": stop_reason} if isinstance(stop_reason, str) else {},
        )

    def __repr__(self) -> str:
        return f"VLLMAgent(model={self.model_name!r}, temperature={self.temperature}, layers={list(self.layers)})"
