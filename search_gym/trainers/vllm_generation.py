"""vLLM rollouts colocated with training: the policy's weights pushed into an in-process engine after every step.

:class:`VLLMGenerator` is the fast backend behind the rollout engine's :class:`~search_gym.rollout.Generator`
interface (``HFGenerator`` stays the fallback: no vLLM, CPU). It generates through
:class:`search_gym.agents.VLLMAgent` (one implementation of vLLM generation: token-id prompts, the env's stop
strings kept in the text, sampled tokens' log-probabilities), with the engine built for training:

- ``logprobs_mode="processed_logprobs"``: the log-probabilities are the sampler's, after temperature (and top-p),
  the same convention as ``HFGenerator`` and the trainers' ratio computation;
- prefix caching on: the turns of an episode share their growing prefix (prompt, earlier turns, passages), so
  each turn pays only for its new tokens; the cache is reset whenever the weights change;
- the env's prefills and closing tags are already inside the token buffers the collector passes, so they reach
  vLLM verbatim;
- ``sync_weights()`` (called by the trainer after each optimiser step, and after resuming) loads the policy's
  current parameters into the engine's model (LoRA adapters merged for the copy, then unmerged);
- optional sleep mode: ``pause()`` before the update frees the engine's KV cache (and weights), ``sync_weights``
  wakes it, so long sequences train with the memory generation held.

Hidden states (the representation penalty, the latent guard) still come from HF forwards over the produced ids:
vLLM does not return them, and the trainers read them from the policy or the frozen reference, both HF modules.

Environment (the in-process engine hangs with its multiprocess front end on some hosts)::

    VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_HOST_IP=127.0.0.1 NCCL_SOCKET_IFNAME=lo GLOO_SOCKET_IFNAME=lo
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from search_gym.trainers.rollout import Generation, GenerationRequest, decode

# What the in-process engine needs (see the module docstring); set only where the user has not.
ENGINE_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_HOST_IP": "127.0.0.1", "NCCL_SOCKET_IFNAME": "lo",
              "GLOO_SOCKET_IFNAME": "lo"}


def engine_model(llm) -> Any:
    """The ``nn.Module`` inside an in-process vLLM engine (V1 engine, multiprocessing off), as TRL's colocate
    mode reaches it."""
    executor = llm.llm_engine.model_executor
    worker = executor.driver_worker
    runner = getattr(worker, "model_runner", None) or worker.worker.model_runner
    return runner.model


def policy_weights(policy: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of the policy as a plain HF checkpoint names them (a peft model's adapters must be
    merged by the caller; their own parameters and wrapper prefixes are dropped)."""
    for name, param in policy.named_parameters():
        if "lora_" in name or "modules_to_save" in name:
            continue
        name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        yield name, param.detach()


class VLLMGenerator:
    """Sample rollouts with vLLM; ``sync_weights`` copies ``policy`` into the engine.

    Args:
        policy: the trained HF model (its parameters are what ``sync_weights`` pushes).
        tokenizer: the policy's tokenizer.
        model_path: a saved model folder the engine starts from (the run's starting weights).
        temperature, top_p, seed: sampling. ``seed`` seeds the engine once; with ``request_seeds`` each request
            also gets a seed derived from (the step's seed, its index), reproducible for an identical batch on an
            identical engine. Off by default, as in TRL: vLLM then draws one noise tensor for the whole batch
            instead of one generator call per sequence per token, and rollouts are not bitwise reproducible
            anyway (batch-dependent kernels).
        max_num_batched_tokens: the engine's token budget per scheduler step (TRL's colocate value, 4096, keeps
            vLLM's memory profiler from reserving for its 32k default).
        gpu_memory_utilization: the engine's share of the GPU (the rest trains).
        max_model_len: longest prompt + response the engine serves.
        enable_sleep_mode: free the engine's memory between generation and the update (``pause``).
        dtype: the engine's dtype ("auto": the checkpoint's).
        llm: an already built engine (tests pass a fake with vLLM's ``generate`` and engine layout).
        llm_kwargs: more ``vllm.LLM`` arguments.
    """

    def __init__(self, policy, tokenizer, *, model_path: str | os.PathLike, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int = 0, gpu_memory_utilization: float = 0.3, max_model_len: int = 4096,
                 enable_sleep_mode: bool = False, dtype: str = "auto", request_seeds: bool = False,
                 max_num_batched_tokens: int = 4096, llm: Any = None, llm_kwargs: dict | None = None):
        from search_gym.agents.vllm_agent import VLLMAgent

        if temperature <= 0:
            raise ValueError("RL rollouts sample: temperature must be > 0")
        for key, value in ENGINE_ENV.items():
            os.environ.setdefault(key, value)
        kwargs = dict(gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                      enable_prefix_caching=True, enable_sleep_mode=enable_sleep_mode,
                      logprobs_mode="processed_logprobs", seed=int(seed),
                      max_num_batched_tokens=max(int(max_num_batched_tokens), 1))
        kwargs.update(llm_kwargs or {})
        self.policy, self.tokenizer = policy, tokenizer
        self.temperature = float(temperature)
        self.enable_sleep_mode = enable_sleep_mode
        self.request_seeds = request_seeds
        self.agent = VLLMAgent(str(model_path), llm=llm, tokenizer=tokenizer, temperature=temperature, top_p=top_p,
                               seed=seed if request_seeds else None, few_shot=0, dtype=dtype, llm_kwargs=kwargs)
        self.llm = self.agent.llm
        # The engine's log-probabilities are not the policy's (other kernels, bf16): GRPO's
        # vllm.importance_sampling_correction reweights for the difference.
        self.exact_logprobs = False
        # The engine samples from its own copy of the weights, changed only by sync_weights: it may generate the
        # next step's episodes while the policy updates (RLConfig.async_rollouts).
        self.owns_weights = True
        self.sleeping = False
        self.syncs = 0

    def seed(self, seed: int) -> None:
        if self.request_seeds:
            self.agent.seed(seed)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        if self.sleeping:  # level-2 sleep discarded the weights: push them again
            self.sync_weights()
        steps = self.agent.generate_ids([r.input_ids for r in requests],
                                        max_new_tokens=[r.max_new_tokens for r in requests])
        # The text is the tokenizer's decode of the sampled ids, as HFGenerator's: the collector keeps the longest
        # run of tokens whose decode the env kept, so a detokeniser that differs from it (vLLM's incremental one on
        # byte-fallback pieces, its stop-string cut inside a token) would drop policy tokens.
        # An end-of-sequence token has no text, as in HFAgent's.
        out = []
        for s in steps:
            ids = list(s.completion_ids or [])
            body = ids[:-1] if s.finish_reason == "eos" and ids else ids
            out.append(Generation(ids, s.logprobs, decode(self.tokenizer, body), s.finish_reason))
        return out

    def pause(self) -> None:
        """Before the update: with sleep mode, discard the engine's weights and KV cache (the weights are pushed
        again by :meth:`sync_weights`)."""
        if self.enable_sleep_mode and not self.sleeping:
            self.llm.sleep(level=2)
            self.sleeping = True

    @torch.no_grad()
    def sync_weights(self) -> None:
        """Load the policy's current parameters into the engine and forget cached prefixes (computed with the
        old weights)."""
        if self.sleeping:
            self.llm.wake_up(tags=["weights"])
        merged = hasattr(self.policy, "merge_adapter")
        if merged:
            self.policy.merge_adapter()
        try:
            model = engine_model(self.llm)
            model.load_weights(policy_weights(self.policy))
        finally:
            if merged:
                self.policy.unmerge_adapter()
        if self.sleeping:
            self.llm.wake_up(tags=["kv_cache"])
            self.sleeping = False
        self.llm.reset_prefix_cache()
        self.syncs += 1
