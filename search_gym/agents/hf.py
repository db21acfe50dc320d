"""HFAgent: any transformers causal LM as a search agent, with token ids, logprobs, hidden states and steering.

The agent renders ``tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)`` and
appends the observation's ``prefill``; the completion continues that text (the prefill is never repeated in
``AgentStep.text``). Generation stops at ``</search>`` / ``</answer>`` (anything a final token carries past the stop
string is cut from the text) or at the tokenizer's end-of-sequence token.

Tool-call protocol (``SearchEnv(protocol="tool_call")``): an observation is a tool-call one when a message carries
``tool_calls`` or has role ``tool``, or the first user prompt mentions the `` `search` tool`` (the env's
``tool_call`` template); an observation's own ``"tools"`` key, when present, decides instead. Such observations
are rendered with ``apply_chat_template(messages, tools=[SEARCH_TOOL], ...)`` (see :func:`render_prompt`),
generation also stops at ``</tool_call>``, ``AgentStep.text`` is the model's text as written (the
``<tool_call>{...}</tool_call>`` block the env parses) and ``metadata["tool_calls"]`` holds the calls in OpenAI
form (:func:`parse_tool_calls`). The rendering and the tool-call helpers live in the torch-free
:mod:`search_gym.agents.prompting` (shared with the vLLM and OpenAI agents) and can still be imported from here.

- ``logprobs``: the sampler's log-probabilities of the chosen tokens, ``log_softmax(logits / temperature)``
  (temperature 1 when greedy): what RL trainers need for importance ratios at the sampling temperature. The
  temperature is applied by the recording processor itself (generate runs at temperature 1), so the number
  recorded is exactly the distribution sampled from when ``top_p == 1``; with ``top_p < 1`` the nucleus
  renormalisation is not included. With ``min_new_tokens`` the EOS token is masked out first, as generation does.
- ``hidden``: captured by forward hooks during generation (see :mod:`search_gym.agents.hidden` for layers,
  positions and the HF off-by-one). Nothing is hooked when ``layers`` is empty (the default).
- Sampling: ``temperature=0`` is greedy; otherwise seeded multinomial sampling with ``temperature`` and
  ``top_p``. Only the sampling settings given here apply (a checkpoint's ``generation_config`` defaults such as
  top-k or repetition penalty are overridden), so runs are comparable across models.
"""

from __future__ import annotations

import inspect
import os
import weakref
from collections.abc import Iterable, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from search_gym.agents.base import AgentStep, BaseAgent, sampling_settings
from search_gym.agents.hidden import (
    GenerationCapture,
    assemble,
    decoder_layers,
    locate_positions,
    normalize_layers,
    normalize_positions,
    prompt_positions,
    steering,
)

# The prompt and tool-call rendering (torch-free), importable from here as before.
from search_gym.agents.prompting import (  # noqa: F401
    BUNDLED_MODEL,
    DEFAULT_FEW_SHOT,
    FEW_SHOT_EXAMPLES,
    HERMES_TOOLS_PROMPT,
    assistant_turns,
    attach_tool_calls,
    chat_messages,
    few_shot_messages,
    hermes_tool_messages,
    is_tool_call_observation,
    observation_tools,
    render_observation,
    render_prompt,
    template_takes_tools,
    tool_call_block,
    tool_call_stops,
)
from search_gym.devices import resolve_device, resolve_dtype
from search_gym.envs.protocol import STOP_STRINGS, TOOL_CALL_STOP, parse_tool_calls  # noqa: F401

_STOP_CRITERIA: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def returned_cache(out: Any) -> Any:
    """The KV cache a forward or ``generate`` returned: ``out["cache"]`` from transformers 5.2x on,
    ``out.past_key_values`` before (deprecated there, removed in 5.40)."""
    return out["cache"] if "cache" in out else out.past_key_values


def cache_argument(model: Any, cache: Any) -> dict:
    """The keyword that passes a KV cache to ``model``'s forward under the installed transformers (``cache`` from
    5.2x on, ``past_key_values`` before)."""
    return {"cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values": cache}


class _ChosenLogprobs:
    """Logits processor that applies the sampling temperature and records log_softmax(logits / T)[chosen token].

    Generation itself runs at temperature 1 with this processor scaling the scores, so the recorded numbers are the
    sampler's own (transformers applies user processors before its top-p / top-k warpers). At step t it sees the
    token chosen at step t-1 (the last column of ``input_ids``), so only the previous step's log-probabilities are
    held, one [B, V] at a time; :meth:`finish` reads the final step's with the last generated tokens.
    """

    def __init__(self, temperature: float = 1.0):
        self.temperature = float(temperature) if temperature and temperature > 0 else 1.0
        self.previous: torch.Tensor | None = None
        self.values: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.previous is not None:
            self.values.append(self.previous.gather(1, input_ids[:, -1:]).squeeze(1))
        if self.temperature != 1.0:
            scores = scores / self.temperature
        self.previous = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, last_tokens: torch.Tensor) -> torch.Tensor:
        if self.previous is not None:
            self.values.append(self.previous.gather(1, last_tokens.reshape(-1, 1)).squeeze(1))
            self.previous = None
        if not self.values:
            return torch.zeros((last_tokens.shape[0], 0))
        return torch.stack(self.values, dim=1).cpu()


class HFAgent(BaseAgent):
    """A transformers causal LM that plays SearchEnv (see the module docstring for the conventions).

    Args:
        model: hub id or local folder (``from_pretrained``), ``"smollm2"`` for the bundled SmolLM2-135M-Instruct
            (converted from its GGUF on first use), or an already loaded ``PreTrainedModel`` (then pass
            ``tokenizer``).
        tokenizer: a tokenizer; loaded from ``model`` when it is a name or path.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default cuda when available. A loaded model stays where
            it is unless a device is given.
        dtype: ``"float32"`` (default), ``"bf16"``, ``"fp16"`` or ``"auto"``.
        max_new_tokens / min_new_tokens: generation length bounds per turn (``min_new_tokens`` also blocks EOS).
        temperature: 0 for greedy decoding, else sampling temperature. top_p: nucleus sampling mass.
        seed: sampling seed; each call draws from ``(seed, call number)`` in a forked RNG, so the global torch
            RNG is untouched and a re-seeded agent replays the same samples. None uses the global RNG.
        layers: decoder blocks to capture (ints, negatives from the end, or ``"all"``); None captures nothing.
        positions: which positions to keep (default: all of ``POSITIONS`` when layers are given).
        few_shot: worked protocol examples to prepend (True = 2, an int = that many, up to 3); default on for
            the bundled model, off otherwise.
        stop: stop strings (default ``STOP_STRINGS``); ``()`` generates until EOS or the length limit. Tool-call
            observations also stop at ``</tool_call>`` (unless ``stop=()``).
        batch_size: split ``act_batch`` into chunks of this many prompts (None: one batch).
        cache_implementation: ``generate``'s KV cache ("static" preallocates it, the form ``torch.compile`` needs;
            None keeps the dynamic cache; benchmarks/bench_generation_cache.py measures both on your hardware).
            Ignored while hidden states are captured (``layers``).
        model_kwargs: extra ``from_pretrained`` arguments (e.g. ``attn_implementation``).
        adapter: a LoRA adapter folder (``<output_dir>/adapter`` of a LoRA training run) loaded onto ``model`` and
            merged into its weights (:func:`search_gym.agents.adapters.apply_adapter`).
    """

    name = "hf"

    def __init__(
        self,
        model: str | os.PathLike | Any = BUNDLED_MODEL,
        tokenizer: Any = None,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = "float32",
        max_new_tokens: int = 256,
        min_new_tokens: int = 0,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = 0,
        layers: int | Iterable[int] | str | None = None,
        positions: str | Iterable[str] | None = None,
        few_shot: bool | int | None = None,
        stop: Sequence[str] | None = STOP_STRINGS,
        batch_size: int | None = None,
        trust_remote_code: bool = False,
        model_kwargs: dict | None = None,
        cache_implementation: str | None = None,
        adapter: str | os.PathLike | None = None,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        bundled = isinstance(model, str) and model == BUNDLED_MODEL
        if isinstance(model, (str, os.PathLike)):
            if bundled:
                from search_gym.agents.gguf import ensure_smollm2

                source: str | os.PathLike = ensure_smollm2()
            else:
                source = model
            model_kwargs = dict(model_kwargs or {})
            self.model = AutoModelForCausalLM.from_pretrained(
                source, dtype=resolve_dtype(dtype), trust_remote_code=trust_remote_code, **model_kwargs
            )
            if "device_map" not in model_kwargs:  # a device map already placed (maybe sharded) the weights
                self.model.to(resolve_device(device))
            self.device = next(self.model.parameters()).device
            self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
            self.model_name = str(model)
        else:
            if tokenizer is None:
                raise ValueError("pass the tokenizer along with an already loaded model")
            self.model, self.tokenizer = model, tokenizer
            if device is not None:
                self.model.to(resolve_device(device))
            self.device = next(self.model.parameters()).device
            self.model_name = getattr(getattr(model, "config", None), "_name_or_path", type(model).__name__)
        if adapter is not None:
            from search_gym.agents.adapters import apply_adapter

            self.model = apply_adapter(self.model, adapter)
            self.model_name = f"{self.model_name}+{Path(adapter).name}"
        if not isinstance(model, torch.nn.Module):
            self.model.eval()  # loaded here; a model passed in (a policy being trained) keeps its mode
        self.max_new_tokens, self.min_new_tokens, self.temperature, self.top_p = sampling_settings(
            max_new_tokens, min_new_tokens, temperature, top_p)
        self.num_layers = len(decoder_layers(self.model))
        self.layers = normalize_layers(layers, self.num_layers)
        self.positions = normalize_positions(positions) if self.layers else ()
        if few_shot is None:
            few_shot = bundled
        self.few_shot = DEFAULT_FEW_SHOT if few_shot is True else int(few_shot or 0)
        if not 0 <= self.few_shot <= len(FEW_SHOT_EXAMPLES):
            raise ValueError(f"few_shot must be a bool or 0..{len(FEW_SHOT_EXAMPLES)}")
        self.stop = tuple(stop or ())
        self.batch_size = batch_size
        self.cache_implementation = cache_implementation
        self.eos_token_ids = self._eos_ids()
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else self.eos_token_ids[0]
        self._stop_criteria: dict[tuple[str, ...], Any] = {}
        self.seed(seed)

    # ------------------------------------------------------------------ configuration helpers

    def _eos_ids(self) -> list[int]:
        ids: list[int] = []
        for source in (self.tokenizer.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None)):
            if source is None:
                continue
            for i in [source] if isinstance(source, int) else source:
                if i not in ids:
                    ids.append(int(i))
        if not ids:
            raise ValueError("the tokenizer and the model define no end-of-sequence token")
        return ids

    def seed(self, seed: int | None) -> None:
        self._seed, self._calls = seed, 0

    def _generation_config(self, max_new_tokens: int):
        from transformers import GenerationConfig

        settings: dict[str, Any] = dict(
            max_new_tokens=max_new_tokens,
            min_new_tokens=self.min_new_tokens or None,
            eos_token_id=self.eos_token_ids,
            pad_token_id=self.pad_token_id,
            return_dict_in_generate=True,
            use_cache=True,
            num_beams=1,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
        )
        if self.cache_implementation and not self.layers:
            # capturing hidden states may feed one token past the generation budget (_feed_last_token), which a
            # preallocated cache has no room for: hooks run on the dynamic cache
            settings["cache_implementation"] = self.cache_implementation
        if self.temperature > 0:
            # temperature 1 here: _ChosenLogprobs divides by self.temperature and records the sampler's logprobs
            settings.update(do_sample=True, temperature=1.0, top_p=self.top_p, top_k=0, typical_p=1.0)
        else:
            settings.update(do_sample=False)
        return GenerationConfig(**settings)

    def _stopping(self, stop: tuple[str, ...]):
        from transformers import StoppingCriteriaList, StopStringCriteria

        if not stop:
            return None
        try:  # building the criterion scans the whole vocabulary (~1 s): share it between agents
            cache = _STOP_CRITERIA.setdefault(self.tokenizer, {})
        except TypeError:
            cache = self._stop_criteria
        if stop not in cache:
            cache[stop] = StopStringCriteria(self.tokenizer, list(stop))
        return StoppingCriteriaList([cache[stop]])

    # ------------------------------------------------------------------ prompts

    def render(self, observation: dict) -> str:
        """The exact text the model continues: chat template (with few-shot turns, or the tools of a tool-call
        observation) + the observation's prefill."""
        return render_observation(self.tokenizer, observation, self.few_shot)

    def stops_for(self, observation: dict) -> tuple[str, ...]:
        """The stop strings of one observation's turn: the agent's, plus ``</tool_call>`` for tool-call ones."""
        return tool_call_stops(self.stop, observation)

    def encode(self, text: str) -> list[int]:
        # The chat template already wrote any BOS / special tokens as text.
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # ------------------------------------------------------------------ acting

    def act_batch(self, observations: Sequence[dict]) -> list[AgentStep]:
        prompts = [self.render(o) for o in observations]
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, o in enumerate(observations):  # one generate call per set of stop strings (one, in practice)
            groups.setdefault(self.stops_for(o), []).append(i)
        steps: list[AgentStep | None] = [None] * len(observations)
        for stop, indices in groups.items():
            for i, step in zip(indices, self.complete([prompts[i] for i in indices], stop=stop)):
                steps[i] = step
        for observation, step in zip(observations, steps):
            attach_tool_calls(step, observation)
        return steps  # type: ignore[return-value]

    def complete(
        self, prompts: Sequence[str], *, max_new_tokens: int | None = None, stop: Sequence[str] | None = None
    ) -> list[AgentStep]:
        """Continue raw prompt texts (already templated). ``max_new_tokens`` / ``stop`` override the agent's."""
        prompt_ids = [self.encode(p) for p in prompts]
        return self.generate_ids(prompt_ids, max_new_tokens=max_new_tokens, stop=stop)

    def generate_ids(
        self,
        prompt_ids: Sequence[Sequence[int]],
        *,
        max_new_tokens: int | None = None,
        stop: Sequence[str] | None = None,
    ) -> list[AgentStep]:
        """Continue token-id prompts, in chunks of ``batch_size``."""
        if any(len(p) == 0 for p in prompt_ids):
            raise ValueError("every prompt needs at least one token")
        max_new = int(max_new_tokens or self.max_new_tokens)
        stops = self.stop if stop is None else tuple(stop)
        size = self.batch_size or max(1, len(prompt_ids))
        steps: list[AgentStep] = []
        was_training = self.model.training
        self.model.eval()  # no dropout while sampling; the caller's mode comes back afterwards
        try:
            for start in range(0, len(prompt_ids), size):
                steps += self._generate([list(p) for p in prompt_ids[start : start + size]], max_new, stops)
        finally:
            self.model.train(was_training)
        return steps

    def _rng(self):
        if self.temperature <= 0 or self._seed is None:
            return nullcontext()
        devices = []
        if self.device.type == "cuda":
            devices = [self.device.index if self.device.index is not None else torch.cuda.current_device()]
        context = torch.random.fork_rng(devices=devices)

        @contextmanager
        def seeded():
            with context:
                torch.manual_seed(hash((self._seed, self._calls)) & 0x7FFF_FFFF_FFFF_FFFF)
                yield

        return seeded()

    @torch.no_grad()
    def _generate(self, prompt_ids: list[list[int]], max_new_tokens: int, stop: tuple[str, ...]) -> list[AgentStep]:
        batch, width = len(prompt_ids), max(len(p) for p in prompt_ids)
        pad_lengths = [width - len(p) for p in prompt_ids]
        input_ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, width), dtype=torch.long)
        for b, ids in enumerate(prompt_ids):
            input_ids[b, pad_lengths[b] :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[b, pad_lengths[b] :] = 1
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)

        capture = None
        if self.layers:
            before = [prompt_positions(self.tokenizer, ids, self.positions) for ids in prompt_ids]
            capture = GenerationCapture(
                self.model,
                self.layers,
                [sorted({i for v in p.values() for i in v}) for p in before],
                pad_lengths,
                keep_completion=any(p in self.positions for p in ("search", "query_mean", "generated")),
            )
        chosen = _ChosenLogprobs(self.temperature)
        from transformers import LogitsProcessorList

        with self._rng(), capture or nullcontext():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=self._generation_config(max_new_tokens),
                logits_processor=LogitsProcessorList([chosen]),
                stopping_criteria=self._stopping(stop),
            )
            self._calls += 1
            new_tokens = out.sequences[:, width:]
            logprobs = chosen.finish(new_tokens[:, -1]).tolist()
            new_rows = new_tokens.tolist()
            finished = [self._finish(prompt_ids[b], new_rows[b], stop) for b in range(batch)]
            located = []
            if capture is not None:
                located = [
                    locate_positions(self.tokenizer, prompt_ids[b], finished[b][0], self.positions)
                    for b in range(batch)
                ]
                fed = capture.completion_steps
                if any(i - len(prompt_ids[b]) >= fed for b, loc in enumerate(located) for v in loc.values() for i in v):
                    self._feed_last_token(out, attention_mask, new_tokens)

        hidden: list[dict | None] = [None] * batch
        if capture is not None:
            rows = capture.gather(
                [(len(prompt_ids[b]), [i for v in located[b].values() for i in v]) for b in range(batch)]
            )
            hidden = [assemble(located[b], rows[b]) for b in range(batch)]
        steps = []
        for b in range(batch):
            completion, text, reason, stop_string = finished[b]
            steps.append(
                AgentStep(
                    text=text,
                    prompt_ids=list(prompt_ids[b]),
                    completion_ids=completion,
                    logprobs=logprobs[b][: len(completion)],
                    hidden=hidden[b],
                    finish_reason=reason,
                    metadata={"stop_string": stop_string} if stop_string else {},
                )
            )
        return steps

    def _feed_last_token(self, out, prompt_mask: torch.Tensor, new_tokens: torch.Tensor) -> None:
        """One more decoding step over the last generated token, so hooks see its hidden state.

        ``generate`` stops right after sampling the final token, so that token was never fed through the model.
        Positions follow generate's own rule (cumulative attention mask), the KV cache is the one it returned.
        """
        batch, steps = new_tokens.shape
        mask = torch.cat([prompt_mask, prompt_mask.new_ones((batch, steps))], dim=1)
        position_ids = (mask.cumsum(-1) - 1)[:, -1:]
        backbone = getattr(self.model, "base_model", self.model)
        backbone(
            input_ids=new_tokens[:, -1:],
            attention_mask=mask,
            position_ids=position_ids,
            use_cache=True,
            **cache_argument(backbone, returned_cache(out)),
        )

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _continuation(self, prompt_ids: list[int], prompt_text: str, ids: list[int]) -> str:
        """Text of ``ids`` as a continuation of the prompt (SentencePiece drops a leading space when decoded alone)."""
        if not ids:
            return ""
        full = self._decode(prompt_ids + ids)
        return full[len(prompt_text) :] if full.startswith(prompt_text) else self._decode(ids)

    def _finish(self, prompt_ids: list[int], row: list[int], stop: tuple[str, ...]):
        """Cut one generated row: ``(completion_ids, text, finish_reason, stop_string)``.

        The row ends at the first EOS (kept in the ids, not in the text) or at the token that completes a stop
        string (text cut right after the stop string); padding after a finished row is dropped.
        """
        eos_at = next((j for j, t in enumerate(row) if t in self.eos_token_ids), None)
        body = row[:eos_at] if eos_at is not None else row
        prompt_text = self._decode(prompt_ids)
        text = self._continuation(prompt_ids, prompt_text, body)
        hits = [(text.find(s), s) for s in stop if s in text]
        if hits:
            start, string = min(hits)
            end = start + len(string)
            # the shortest prefix of tokens whose text already contains this stop string
            lo, hi = 1, len(body)
            while lo < hi:
                mid = (lo + hi) // 2
                if len(self._continuation(prompt_ids, prompt_text, body[:mid])) >= end:
                    hi = mid
                else:
                    lo = mid + 1
            return body[:lo], text[:end], "stop", string
        if eos_at is not None:
            return row[: eos_at + 1], text, "eos", None
        return row, text, "length", None

    # ------------------------------------------------------------------ steering

    @contextmanager
    def steer(self, direction: Any, layer: int, coeff: float = 1.0):
        """While active, add ``coeff * direction`` to decoder block ``layer``'s output at every position.

        ``direction`` is a ``[d]`` tensor / array (used as given: normalise it yourself if you want unit norm).
        The hook is removed on exit, also on exceptions. Contexts nest (their additions sum).
        """
        with steering(self.model, direction, layer, coeff):
            yield self

    def __repr__(self) -> str:
        return (
            f"HFAgent(model={self.model_name!r}, device={self.device}, temperature={self.temperature}, "
            f"layers={list(self.layers)}, positions={list(self.positions)}, few_shot={self.few_shot})"
        )
