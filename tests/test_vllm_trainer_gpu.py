"""The trainers' real vLLM backend receives the policy's weights: an opt-in GPU test, and its checks tested here.

``VLLMGenerator`` is otherwise tested against fake engines whose ``load_weights`` is the test's own code, so nothing
there shows that a real engine gets the weights. The ``gpu`` test below builds a GRPO trainer with
``generation_backend="vllm"`` on the bundled SmolLM2-135M (the trainer loads the policy from the model folder and
builds its engine through ``make_generator``, as any run does: prefix caching on, and ``vllm.enable_sleep_mode``
on, so the engine is built with sleep mode and the trainer sleeps it before its update) and, on the same prompts with
the same per-request seeds in every phase, compares the engine's log-probabilities of the tokens it sampled with the
HF policy's teacher-forced ones:

1. ``start``: the engine as built from the model folder;
2. ``push``: every weight of the policy perturbed (seeded noise, ``GPU_PERTURB_ALPHA`` x each tensor's std), pushed
   with ``trainer.push_weights`` (the awake path of ``sync_weights``: ``load_weights``, prefix-cache reset);
3. ``trainer step``: one real ``trainer.train()`` step: rollout, ``pause()`` (sleep level 2: the engine discards its
   weights and KV cache), the GRPO update (one AdamW step), ``push_weights`` (wake the weights, load them, wake the
   KV cache, reset the prefix cache);
4. ``sleep/wake``: ``pause()`` again, then ``generate`` on the sleeping engine (which wakes it and pushes).

After each change the engine must agree with the policy's new weights (``GPU_TOL``) AND the change must have moved
the policy's log-probabilities of those tokens far more than that tolerance, with the engine far closer to the new
weights than to the old ones: a push that does nothing, a wake-up that brings back stale or zeroed weights, or a
prefix cache still holding the prompts' KV from the old weights (the prompts repeat in every phase) all fail.

The same checks (:func:`run_checks`) run here, without vLLM or a GPU, against a fake ``vllm`` module whose ``LLM``
keeps its own copy of the weights, samples with a real prefix cache and discards its weights when put to sleep at
level 2 (``FakeVLLM``); broken variants of it (a no-op ``load_weights``, no prefix-cache reset, a wake-up restoring
stale or zeroed weights) must make them fail.

Tolerances (``GPU_TOL``): the engine runs in bf16 ("auto" dtype: vLLM downcasts the bundled fp32 checkpoint;
the JSON records the dtype it reports) while the policy trains in fp32. Measured on a CPU with this model (8 sampled
completions, 343 tokens), the log-probabilities of a bf16 copy differ from fp32 by 0.037 nat on average (p99 0.19,
max 0.23); vLLM's bf16 kernels round differently again. So ``mean_abs`` 0.1 (2.7x that mean) and ``max_abs`` 1.0
(4x the worst token). The weight changes are sized to move the policy's log-probabilities of fresh samples by about
1 nat on average (on the CPU a perturbation of 0.05 x std moved them 0.57, so ``GPU_PERTURB_ALPHA`` is 0.08; one
AdamW step at lr 1e-4 moved them 0.29, so ``GPU_LEARNING_RATE`` is 3e-4): each change must reach ``min_shift`` 0.3
(3x ``mean_abs``, else the check could not tell a push from none), and the engine must be at least 4x closer to the
new weights than to the old (``ratio`` 0.25). The engine is also compared with a copy of the policy cast to the
engine's dtype (same tolerance); both gaps are recorded.

Run on a GPU machine (tools/README.md: the repository carried, ``bash tools/unpack.sh`` done, vLLM installed under
/tmp/site), from the repository root::

    source /tmp/sg/env.sh && VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_HOST_IP=127.0.0.1 NCCL_SOCKET_IFNAME=lo \\
      GLOO_SOCKET_IFNAME=lo SEARCH_GYM_TEST_CACHE=/tmp/sg/cache SEARCH_GYM_GPU_RESULTS=$OUT/vllm_trainer_gpu.json \\
      python3 -m pytest -q -rs -m gpu tests/test_vllm_trainer_gpu.py

``SEARCH_GYM_GPU_RESULTS`` (a file path) makes the GPU test write what it measured there as JSON (written even when
an assertion fails); ``SEARCH_GYM_TEST_CACHE`` reuses the converted SmolLM2 folder of unpack.sh. Without vLLM or a
CUDA device the GPU test is skipped with the reason; the default suite (``-m 'not slow and not gpu'``) deselects it.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import sys
import types
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import TINY_QA, WordOverlapRetriever, observation, tiny_llama

from search_gym.agents.prompting import render_observation
from search_gym.trainers.config import VLLMConfig, train_env
from search_gym.trainers.grpo import GRPOTrainer
from search_gym.trainers.grpo_config import GRPOConfig
from search_gym.trainers.rollout import GenerationRequest
from search_gym.trainers.vllm_generation import ENGINE_ENV, VLLMGenerator

RESULTS_ENV = "SEARCH_GYM_GPU_RESULTS"
QUESTIONS = [question for _, question, _ in TINY_QA[:4]]
SAMPLES_PER_PROMPT = 2
SAMPLE_SEED = 1234


@dataclass(frozen=True)
class Tolerance:
    """How close the engine's log-probabilities must be to the policy's, and how far a weight change must move
    them (all in nats, over the sampled tokens of one phase)."""

    mean_abs: float  # mean |engine - policy|
    max_abs: float  # largest |engine - policy| of one token
    min_shift: float  # mean |policy after - policy before| the change must reach (else the check is vacuous)
    ratio: float  # mean |engine - policy after| <= ratio * mean |engine - policy before|


# bf16 engine against the fp32 policy (module docstring).
GPU_TOL = Tolerance(mean_abs=0.1, max_abs=1.0, min_shift=0.3, ratio=0.25)
GPU_PERTURB_ALPHA = 0.08  # x each tensor's std: ~1 nat mean shift (0.05 gave 0.57 on the CPU)
GPU_LEARNING_RATE = 3e-4  # one AdamW step moves every weight by ~lr: ~0.9 nat (1e-4 gave 0.29 on the CPU)
GPU_NEW_TOKENS = 48

# The fake engine is the policy's own fp32 model (incremental decoding against a full forward: ~1e-6 apart).
FAKE_TOL = Tolerance(mean_abs=1e-4, max_abs=1e-3, min_shift=0.05, ratio=0.25)
FAKE_PERTURB_ALPHA = 0.05
FAKE_LEARNING_RATE = 3e-3
FAKE_NEW_TOKENS = 8


# ---------------------------------------------------------------------------------------------- the checks


class DistinctRewardGRPO(GRPOTrainer):
    """GRPO whose episodes get rewards 0, 1, 0, 1, ... (distinct within every group of 2), so the advantages are
    nonzero and one update moves every weight whatever the weak bundled model answers. Only ``collect`` differs
    from GRPOTrainer: the generator, the env, the update and the weight pushes are the trainer's own."""

    def collect(self, step):
        episodes = super().collect(step)
        for i, episode in enumerate(episodes):
            episode.task_reward = episode.reward = float(i % 2)
        return episodes


def make_trainer(model_path, qa_path, retriever, output_dir, *, device: str, learning_rate: float,
                 enable_sleep_mode: bool = True) -> GRPOTrainer:
    """A one-step GRPO run with ``generation_backend="vllm"``: the trainer loads the policy from ``model_path`` and
    builds its VLLMGenerator through ``make_generator``, as the CLI does.

    ``request_seeds`` so that every phase samples the same prompts with the same per-request seeds;
    ``token_truncate`` so that the bf16 engine's gap cannot mask whole episodes out of the one update (the default
    ``sequence_mask`` zeroes an episode whose summed gap exceeds log 3)."""
    config = GRPOConfig(
        model=str(model_path), output_dir=str(output_dir), device=device, seed=0, learning_rate=learning_rate,
        max_steps=1, save_steps=0, questions_per_step=2, group_size=2,
        env=train_env(dataset=str(qa_path), split="test", retriever=retriever, safety=False, max_turns=2),
        max_turn_tokens=16, max_response_tokens=256, generation_backend="vllm",
        vllm=VLLMConfig(enable_sleep_mode=enable_sleep_mode, request_seeds=True,
                        importance_sampling_mode="token_truncate"),
        tensorboard=False, progress=False, plots=False)
    return DistinctRewardGRPO(config)


def engine_config(llm) -> dict:
    """What the engine itself says about the settings this test relies on (vLLM's ``VllmConfig``)."""
    config = llm.llm_engine.vllm_config
    mode = getattr(config.model_config, "logprobs_mode", None)
    return {"enable_prefix_caching": bool(config.cache_config.enable_prefix_caching),
            "enable_sleep_mode": bool(config.model_config.enable_sleep_mode),
            "logprobs_mode": str(getattr(mode, "value", mode)),
            "dtype": str(config.model_config.dtype).removeprefix("torch.")}


def record_engine_calls(llm) -> list[str]:
    """Wrap the engine's sleep / wake_up / reset_prefix_cache so that their calls are listed (``sleep:2``,
    ``wake_up:weights``, ``reset_prefix_cache``)."""
    events: list[str] = []

    def wrap(name, method):
        def call(*args, **kwargs):
            if name == "sleep":
                events.append(f"sleep:{kwargs.get('level', args[0] if args else 1)}")
            elif name == "wake_up":
                tags = kwargs.get("tags", args[0] if args else None)
                events.append("wake_up:" + ",".join(tags or ["all"]))
            else:
                events.append(name)
            return method(*args, **kwargs)
        return call

    for name in ("sleep", "wake_up", "reset_prefix_cache"):
        setattr(llm, name, wrap(name, getattr(llm, name)))
    return events


def in_order(events: list[str], expected: list[str]) -> bool:
    """Whether ``expected`` occur in ``events`` in this order (other calls may come between: vLLM's ``sleep``
    resets the prefix cache itself)."""
    remaining = iter(events)
    return all(any(e == x for e in remaining) for x in expected)


def probe_prompts(tokenizer) -> list[list[int]]:
    """The search_r1 prompts of four questions (~150 tokens each: whole prefix-cache blocks), as token ids."""
    return [list(tokenizer(render_observation(tokenizer, observation(q)), add_special_tokens=False).input_ids)
            for q in QUESTIONS]


def sample(generator, prompts, max_new_tokens: int, seed: int = SAMPLE_SEED) -> list[tuple[list[int], list[int],
                                                                                          list[float]]]:
    """``(prompt, sampled ids, engine log-probs)`` of SAMPLES_PER_PROMPT completions per prompt, through the
    trainer's generator with the same per-request seeds every time."""
    generator.seed(seed)
    requests = [GenerationRequest(input_ids=list(p), observation={}, max_new_tokens=max_new_tokens)
                for p in prompts for _ in range(SAMPLES_PER_PROMPT)]
    out = []
    for request, generation in zip(requests, generator.generate(requests)):
        assert generation.ids and generation.logprobs is not None and len(generation.logprobs) == len(generation.ids)
        out.append((request.input_ids, list(generation.ids), [float(x) for x in generation.logprobs]))
    return out


@torch.no_grad()
def teacher_forced(model, samples, temperature: float) -> torch.Tensor:
    """log_softmax(logits / T) of each sampled token under ``model``, one full forward per prompt + completion
    (fp32 softmax whatever the model's dtype), concatenated."""
    device = next(model.parameters()).device
    training = model.training
    model.eval()
    rows = []
    try:
        for prompt, ids, _ in samples:
            # the last len(ids) + 1 positions: those that score the sampled tokens, and the one after the last
            logits = model(input_ids=torch.tensor([prompt + ids], device=device), logits_to_keep=len(ids) + 1).logits
            logps = torch.log_softmax(logits[0, :-1].float() / temperature, dim=-1)
            rows.append(logps[torch.arange(len(ids), device=device), torch.tensor(ids, device=device)].cpu())
    finally:
        model.train(training)
    return torch.cat(rows)


def gap(a: torch.Tensor, b: torch.Tensor) -> dict:
    diff = (a - b).abs()
    return {"mean": float(diff.mean()), "max": float(diff.max()), "p99": float(torch.quantile(diff, 0.99))}


def frozen(model) -> torch.nn.Module:
    """A copy of ``model`` as it is now (the "before" weights of a change)."""
    copied = copy.deepcopy(model).eval()
    copied.requires_grad_(False)
    return copied


def measure(phase: str, samples, policy, old, temperature: float, engine_dtype: str | None) -> dict:
    """The engine's log-probabilities of its own samples against the policy's (and a copy of it in the engine's
    dtype), and against the weights before the change (``old``)."""
    engine = torch.tensor([lp for _, _, lps in samples for lp in lps], dtype=torch.float32)
    new = teacher_forced(policy, samples, temperature)
    row = {"phase": phase, "tokens": int(engine.numel()), "completions": [ids for _, ids, _ in samples],
           "engine_finite": bool(torch.isfinite(engine).all()),
           "engine_vs_policy": gap(engine, new)}
    policy_dtype = str(next(policy.parameters()).dtype).removeprefix("torch.")
    if engine_dtype and engine_dtype != policy_dtype:
        cast = copy.deepcopy(policy).to(getattr(torch, engine_dtype))
        row["engine_vs_policy_in_engine_dtype"] = gap(engine, teacher_forced(cast, samples, temperature))
        del cast
    if old is not None:
        before = teacher_forced(old, samples, temperature)
        row["engine_vs_before"] = gap(engine, before)
        row["policy_shift"] = gap(new, before)
    return row


def assert_phase(row: dict, tol: Tolerance) -> None:
    phase, n = row["phase"], row["tokens"]
    assert row["engine_finite"], f"{phase}: the engine returned non-finite log-probabilities"
    shift = row.get("policy_shift")
    where = (f" (weights before the change: engine {row['engine_vs_before']['mean']:.4f} mean apart, the policy "
             f"moved {shift['mean']:.4f})") if shift else ""
    for key in ("engine_vs_policy", "engine_vs_policy_in_engine_dtype"):
        if key in row:
            g = row[key]
            assert g["mean"] <= tol.mean_abs and g["max"] <= tol.max_abs, (
                f"{phase}: the engine's log-probabilities are not the policy's ({key}): |engine - HF| mean "
                f"{g['mean']:.4f} max {g['max']:.4f} p99 {g['p99']:.4f} over {n} tokens (tolerance mean "
                f"{tol.mean_abs}, max {tol.max_abs}){where}")
    if shift:
        assert shift["mean"] >= tol.min_shift, (
            f"{phase}: the weight change moved the policy's log-probabilities by only {shift['mean']:.4f} on average "
            f"(max {shift['max']:.4f}, {n} tokens), below {tol.min_shift}: too small to tell a push from none")
        mine, before = row["engine_vs_policy"]["mean"], row["engine_vs_before"]["mean"]
        assert mine <= tol.ratio * before, (
            f"{phase}: the engine is not on the new weights: |engine - new| {mine:.4f}, |engine - before| "
            f"{before:.4f} (mean over {n} tokens; want the first <= {tol.ratio} x the second)")


@torch.no_grad()
def perturb(model, alpha: float, seed: int = 0) -> None:
    """Add seeded noise of ``alpha`` x its std to every weight tensor (tied weights once)."""
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        noise = torch.randn(param.shape, generator=generator)
        if param.numel() > 1:
            param.add_((alpha * param.detach().float().std() * noise.to(param.device)).to(param.dtype))


def max_weight_change(model, before) -> float:
    old = dict(before.named_parameters())
    return max(float((p.detach() - old[name]).abs().max()) for name, p in model.named_parameters())


def run_checks(trainer, tol: Tolerance, *, perturb_alpha: float, max_new_tokens: int, results: dict) -> dict:
    """The four phases of the module docstring on ``trainer`` (a one-step GRPO run with the vLLM backend); each
    phase's measurements go to ``results["phases"]`` before its assertions, so they survive a failure."""
    generator = trainer.generator
    assert isinstance(generator, VLLMGenerator), type(generator)
    llm = generator.llm
    sleep_mode = trainer.config.vllm.enable_sleep_mode
    engine = results["engine"] = engine_config(llm)
    results.update(tolerance=asdict(tol), perturb_alpha=perturb_alpha, learning_rate=trainer.config.learning_rate,
                   temperature=trainer.config.temperature, phases=[])
    assert engine["enable_prefix_caching"] is True, engine
    assert engine["enable_sleep_mode"] is sleep_mode is generator.enable_sleep_mode, engine
    assert engine["logprobs_mode"] == "processed_logprobs", engine
    events = record_engine_calls(llm)
    prompts = probe_prompts(trainer.tokenizer)
    temperature = trainer.config.temperature

    def phase(name: str, old) -> list:
        samples = sample(generator, prompts, max_new_tokens)
        row = measure(name, samples, trainer.model, old, temperature, engine["dtype"])
        results["phases"].append(row)
        assert_phase(row, tol)
        return samples

    # 1. as built from the model folder
    start = phase("start", None)

    # 2. every weight changed, pushed with the trainer's own path while the engine is awake
    before = frozen(trainer.model)
    perturb(trainer.model, perturb_alpha)
    syncs = generator.syncs
    trainer.push_weights(trainer.sampler_version)
    assert generator.syncs == syncs + 1 and events == ["reset_prefix_cache"], events
    pushed = phase("push", before)
    results["same_completions_as_start"] = sum(a[1] == b[1] for a, b in zip(start, pushed))

    # 3. one real step of the trainer: rollout, pause (sleep), update, push (wake + load)
    before = frozen(trainer.model)
    events.clear()
    trainer.train()
    assert trainer.step == 1
    results["trainer_step"] = {"max_weight_change": max_weight_change(trainer.model, before),
                               "engine_calls": list(events)}
    assert results["trainer_step"]["max_weight_change"] > 0, "the update did not change the policy"
    woken = ["wake_up:weights", "wake_up:kv_cache", "reset_prefix_cache"]
    assert in_order(events, ["sleep:2", *woken] if sleep_mode else ["reset_prefix_cache"]), events
    assert events[-1] == "reset_prefix_cache" and ("sleep:2" in events) is sleep_mode, events
    assert not generator.sleeping
    phase("trainer step", before)

    # 4. sleep as before an update, then generate: the sleeping engine wakes and gets the weights again
    events.clear()
    generator.pause()
    if sleep_mode:
        assert generator.sleeping and in_order(events, ["sleep:2"]) and "wake_up" not in str(events), events
        is_sleeping = getattr(llm.llm_engine, "is_sleeping", None)
        if callable(is_sleeping):
            results["engine_is_sleeping_after_pause"] = bool(is_sleeping())
            assert results["engine_is_sleeping_after_pause"]
    phase("sleep/wake", before)
    assert in_order(events, ["sleep:2", *woken]) if sleep_mode else events == [], events
    return results


def write_results(results: dict) -> Path | None:
    """``results`` as JSON at ``$SEARCH_GYM_GPU_RESULTS`` when that is set."""
    target = os.environ.get(RESULTS_ENV)
    if not target:
        return None
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- real vLLM, GPU


def gpu_unavailable() -> str:
    """Why the real-engine test cannot run here ("" when it can)."""
    missing = []
    if importlib.util.find_spec("vllm") is None:
        missing.append("vLLM is not installed (pip install search-gym[vllm])")
    if not torch.cuda.is_available():
        missing.append("no CUDA device (torch.cuda.is_available() is False)")
    return "; ".join(missing)


GPU_MISSING = gpu_unavailable()


@pytest.mark.gpu
@pytest.mark.skipif(bool(GPU_MISSING), reason=f"needs vLLM and a CUDA device: {GPU_MISSING}")
def test_real_vllm_engine_gets_the_trainers_weights(smollm2_folder, tiny_qa_path, tiny_corpus_path, tmp_path):
    import platform

    import transformers
    import vllm

    results = {"model": str(smollm2_folder), "device": torch.cuda.get_device_name(0), "vllm": vllm.__version__,
               "torch": torch.__version__, "transformers": transformers.__version__,
               "python": platform.python_version()}
    try:
        trainer = make_trainer(smollm2_folder, tiny_qa_path, WordOverlapRetriever(tiny_corpus_path), tmp_path / "run",
                               device="cuda", learning_rate=GPU_LEARNING_RATE)
        results["policy_dtype"] = str(next(trainer.model.parameters()).dtype).removeprefix("torch.")
        run_checks(trainer, GPU_TOL, perturb_alpha=GPU_PERTURB_ALPHA, max_new_tokens=GPU_NEW_TOKENS, results=results)
        results["passed"] = True
    except BaseException as exc:
        results["passed"] = False
        results["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        write_results(results)


# ---------------------------------------------------------------------------------------------- the checks, tested


class FakeEngineModel(torch.nn.Module):
    """The engine's own copy of the model, with vLLM's ``load_weights(iterable of (name, tensor))``."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def load_weights(self, weights):
        params = dict(self.inner.named_parameters())
        for name, tensor in weights:
            params[name].data.copy_(tensor)


class FakeVLLM:
    """``vllm.LLM`` as VLLMGenerator builds and drives it, for the checks to run without vLLM.

    Loads its own fp32 copy of the model folder; samples with per-request seeds, stop strings and the sampler's
    log-probabilities; keeps a prefix cache of each prompt's KV (computed with the weights of the time, cleared by
    ``reset_prefix_cache`` and by ``sleep``); ``sleep(level=2)`` discards the weights (zeroes them: what memory
    holds after ``wake_up`` is undefined in vLLM), ``generate`` on a sleeping engine fails."""

    def __init__(self, model, dtype="auto", trust_remote_code=False, **kwargs):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.kwargs = kwargs
        self.model = FakeEngineModel(AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval())
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        runner = SimpleNamespace(model=self.model)
        vllm_config = SimpleNamespace(
            cache_config=SimpleNamespace(enable_prefix_caching=kwargs.get("enable_prefix_caching", False)),
            model_config=SimpleNamespace(enable_sleep_mode=kwargs.get("enable_sleep_mode", False),
                                         logprobs_mode=kwargs.get("logprobs_mode", "raw_logprobs"),
                                         dtype=torch.float32))
        self.llm_engine = SimpleNamespace(
            model_executor=SimpleNamespace(driver_worker=SimpleNamespace(model_runner=runner)),
            vllm_config=vllm_config, is_sleeping=lambda: bool(self.asleep))
        self.seed, self.calls = int(kwargs.get("seed", 0)), 0
        self.prefix_cache: dict[tuple[int, ...], tuple] = {}
        self.asleep: set[str] = set()

    @property
    def params(self):
        return list(self.model.inner.parameters())

    @torch.no_grad()
    def _prefill(self, prompt: list[int]):
        key = tuple(prompt)
        if key not in self.prefix_cache:
            out = self.model.inner(input_ids=torch.tensor([prompt]), use_cache=True, logits_to_keep=1)
            self.prefix_cache[key] = (out.past_key_values, out.logits[0, -1])
        cache, logits = self.prefix_cache[key]
        return copy.deepcopy(cache), logits

    @torch.no_grad()
    def _sample(self, prompt: list[int], params, index: int):
        seed = params.seed if params.seed is not None else hash((self.seed, self.calls, index)) & 0x7FFF_FFFF
        generator = torch.Generator().manual_seed(seed)
        cache, logits = self._prefill(prompt)
        ids, logprobs, finish, stop_reason = [], [], "length", None
        for _ in range(params.max_tokens):
            logps = torch.log_softmax(logits.float() / params.temperature, dim=-1)  # processed_logprobs
            gumbel = -torch.log(-torch.log(torch.rand(logps.shape, generator=generator).clamp(min=1e-20)))
            token = int(torch.argmax(logps + gumbel))  # Gumbel-max: a draw from softmax(logps)
            ids.append(token)
            logprobs.append({token: SimpleNamespace(logprob=float(logps[token]))})
            if token == self.tokenizer.eos_token_id:
                finish = "stop"
                break
            text = self.tokenizer.decode(ids)
            stop_reason = next((s for s in params.stop if s in text), None)
            if stop_reason is not None:
                finish = "stop"
                break
            out = self.model.inner(input_ids=torch.tensor([[token]]), past_key_values=cache, use_cache=True)
            cache, logits = out.past_key_values, out.logits[0, -1]
        return SimpleNamespace(text=self.tokenizer.decode(ids), token_ids=ids, logprobs=logprobs,
                               finish_reason=finish, stop_reason=stop_reason)

    def generate(self, prompts, sampling_params, use_tqdm=False):
        if self.asleep:
            raise RuntimeError(f"generate() on a sleeping engine ({sorted(self.asleep)})")
        outputs = [SimpleNamespace(prompt_token_ids=p["prompt_token_ids"],
                                   outputs=[self._sample(list(p["prompt_token_ids"]), sp, i)])
                   for i, (p, sp) in enumerate(zip(prompts, sampling_params))]
        self.calls += 1
        return outputs

    def reset_prefix_cache(self):
        self.prefix_cache.clear()

    @torch.no_grad()
    def sleep(self, level=1):
        if not self.kwargs.get("enable_sleep_mode"):
            raise RuntimeError("sleep mode is not enabled")
        self.reset_prefix_cache()  # the KV cache is freed
        if level == 2:
            for p in self.params:
                p.zero_()
        self.asleep = {"weights", "kv_cache"}

    def wake_up(self, tags=None):
        self.asleep -= set(tags or ["weights", "kv_cache"])


class NoOpPushVLLM(FakeVLLM):
    """``load_weights`` takes the weights and keeps none of them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model.load_weights = lambda weights: [None for _ in weights]


class NoCacheResetVLLM(FakeVLLM):
    """``reset_prefix_cache`` forgets nothing: prompts seen before reuse the KV computed with the old weights."""

    def reset_prefix_cache(self):
        pass


class StaleWakeVLLM(FakeVLLM):
    """Waking the KV cache (after the weights were pushed) restores the weights it had when put to sleep."""

    def sleep(self, level=1):
        self.saved = [p.detach().clone() for p in self.params]
        super().sleep(level)

    @torch.no_grad()
    def wake_up(self, tags=None):
        super().wake_up(tags)
        if "kv_cache" in (tags or ["kv_cache"]):
            for p, saved in zip(self.params, self.saved):
                p.copy_(saved)


class ZeroedWakeVLLM(FakeVLLM):
    """Waking the KV cache (after the weights were pushed) leaves the weights zeroed."""

    @torch.no_grad()
    def wake_up(self, tags=None):
        super().wake_up(tags)
        if "kv_cache" in (tags or ["kv_cache"]):
            for p in self.params:
                p.zero_()


@pytest.fixture()
def fake_vllm(monkeypatch):
    """A ``vllm`` module whose ``LLM`` is :class:`FakeVLLM` (tests swap the class); ``import vllm`` finds it."""
    module = types.ModuleType("vllm")
    module.LLM = FakeVLLM
    module.SamplingParams = lambda **kwargs: SimpleNamespace(**kwargs)
    monkeypatch.setitem(sys.modules, "vllm", module)
    for key in ENGINE_ENV:  # VLLMGenerator sets these where unset: leave the environment as it was
        monkeypatch.delenv(key, raising=False)
    # The tiny model runs as fast on one thread, and a second one only waits on whatever else shares the cores
    # (4x slower here with another job on the second core).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield module
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_model_folder(tokenizer, tmp_path_factory) -> Path:
    """A saved random Llama on the bundled tokenizer whose distributions are peaked enough (initializer_range 0.5)
    for weight changes to move log-probabilities measurably."""
    folder = tmp_path_factory.mktemp("tiny_policy")
    tiny_llama(tokenizer, 0, initializer_range=0.5).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def fake_run(engine_cls, fake_vllm, folder, qa_path, corpus_path, output_dir, results: dict, *,
             sleep: bool = True) -> dict:
    """:func:`run_checks` on a one-step GRPO run whose trainer builds ``engine_cls`` through ``import vllm``."""
    fake_vllm.LLM = engine_cls
    trainer = make_trainer(folder, qa_path, WordOverlapRetriever(corpus_path), output_dir, device="cpu",
                           learning_rate=FAKE_LEARNING_RATE, enable_sleep_mode=sleep)
    assert type(trainer.generator.llm) is engine_cls
    return run_checks(trainer, FAKE_TOL, perturb_alpha=FAKE_PERTURB_ALPHA, max_new_tokens=FAKE_NEW_TOKENS,
                      results=results)


# the fake engine decodes with HF's `past_key_values` argument (newer transformers call it `cache`)
quiet_fake = pytest.mark.filterwarnings("ignore:.*past_key_values.*:FutureWarning")


@quiet_fake
@pytest.mark.parametrize("sleep", [True, False], ids=["sleep_mode", "no_sleep"])
def test_checks_pass_on_an_engine_that_gets_the_weights(fake_vllm, tiny_model_folder, tiny_qa_path,
                                                         tiny_corpus_path, tmp_path, monkeypatch, sleep):
    results = fake_run(FakeVLLM, fake_vllm, tiny_model_folder, tiny_qa_path, tiny_corpus_path, tmp_path / "run", {},
                       sleep=sleep)
    assert [row["phase"] for row in results["phases"]] == ["start", "push", "trainer step", "sleep/wake"]
    assert results["engine"] == {"enable_prefix_caching": True, "enable_sleep_mode": sleep,
                                 "logprobs_mode": "processed_logprobs", "dtype": "float32"}
    for row in results["phases"][1:]:  # every change was measurable, and the engine followed it
        assert row["policy_shift"]["mean"] >= FAKE_TOL.min_shift
        assert row["engine_vs_policy"]["max"] <= FAKE_TOL.max_abs
    assert results["same_completions_as_start"] < len(results["phases"][0]["completions"])
    # the measurements travel as JSON when SEARCH_GYM_GPU_RESULTS names a file
    monkeypatch.delenv(RESULTS_ENV, raising=False)
    assert write_results(results) is None
    monkeypatch.setenv(RESULTS_ENV, str(tmp_path / "out" / "results.json"))
    written = json.loads(write_results(results).read_text(encoding="utf-8"))
    assert written["phases"][1]["engine_vs_policy"] == results["phases"][1]["engine_vs_policy"]


@quiet_fake
@pytest.mark.parametrize("engine_cls, phase", [
    (NoOpPushVLLM, "push"),
    (NoCacheResetVLLM, "push"),
    (StaleWakeVLLM, "trainer step"),
    (ZeroedWakeVLLM, "trainer step"),
], ids=["noop_push", "no_prefix_cache_reset", "stale_wake", "zeroed_wake"])
def test_checks_fail_on_an_engine_that_does_not(fake_vllm, tiny_model_folder, tiny_qa_path, tiny_corpus_path,
                                                tmp_path, engine_cls, phase):
    results: dict = {}
    with pytest.raises(AssertionError, match=f"^{phase}: the engine") as failure:
        fake_run(engine_cls, fake_vllm, tiny_model_folder, tiny_qa_path, tiny_corpus_path, tmp_path / "run", results)
    rows = results["phases"]
    # it fails at the phase that exposes the fault, after the earlier phases passed
    assert rows[-1]["phase"] == phase and all(r["engine_vs_policy"]["max"] <= FAKE_TOL.max_abs for r in rows[:-1]), \
        str(failure.value)


def test_measure_also_compares_in_the_engine_dtype(tokenizer):
    """An engine in another dtype than the policy (bf16 against fp32 on the GPU) is also compared with a copy of the
    policy cast to its dtype: here the "engine" log-probs are that copy's own, so that gap is 0 and the fp32 one
    is not."""
    policy = tiny_llama(tokenizer, 0, initializer_range=0.5).eval()
    prompt = tokenizer("Question: what is the capital of France?", add_special_tokens=False).input_ids
    ids = [11, 22, 33, 44]
    bf16 = teacher_forced(copy.deepcopy(policy).to(torch.bfloat16), [(prompt, ids, None)], 1.0)
    row = measure("start", [(prompt, ids, bf16.tolist())], policy, None, 1.0, "bfloat16")
    assert row["tokens"] == 4 and next(policy.parameters()).dtype == torch.float32  # the policy itself is untouched
    assert row["engine_vs_policy_in_engine_dtype"]["max"] == 0.0
    assert row["engine_vs_policy"]["max"] > 0.0
    assert "engine_vs_policy_in_engine_dtype" not in measure("start", [(prompt, ids, bf16.tolist())], policy, None,
                                                             1.0, "float32")


def test_gpu_test_says_why_it_cannot_run(monkeypatch):
    """Without vLLM or CUDA the GPU test's skip reason names what is missing."""
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    reason = gpu_unavailable()
    assert "vLLM is not installed" in reason and "no CUDA device" in reason
