"""The loop GRPO and PPO share: questions -> rollouts -> shaping -> algorithm update -> logs -> checkpoints.

Resumes exactly: the questions of step ``s`` and the rollout's sampling seed are functions of (seed, s) alone, and
a checkpoint holds weights, optimiser, scheduler, RNG and any trainer module (PPO's value head), so a run killed
between steps continues with the same next batch and loss as an uninterrupted one.

With ``async_rollouts`` the rollout of step t+1 runs in a background thread during the update of step t, so it
samples from the generator's copy of the weights of before that update (one step off-policy); the weights are
pushed only once it has finished. Each episode carries ``weights_version``, the number of updates in the weights
that sampled it, and ``charts/policy_lag`` is the mean lag of a batch behind the weights it updates (0 in
synchronous mode, 1 in async mode after the first step). A resumed async run collects its first step synchronously
(from the resumed weights, lag 0): the same questions and seeds as the uninterrupted run, one update fresher.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from search_gym.trainers.config import RLConfig
from search_gym.trainers.core import (
    RunLogger,
    checkpoints,
    forward_passes,
    frozen_copy,
    group_statistics,
    load_checkpoint,
    load_policy,
    make_optimizer,
    progress_bar,
    resolve_model_path,
    sampler_correction,
    save_checkpoint,
    save_final,
    set_seed,
)
from search_gym.trainers.curves import draw_run_curves
from search_gym.trainers.rollout import (
    HFGenerator,
    RolloutCollector,
    TokenEpisode,
    episode_metrics,
    is_search_env,
    make_chat_env,
    make_collector,
    make_rollout_env,
)
from search_gym.trainers.distributed import make_parallel, reduce_metrics
from search_gym.trainers.shaping import load_penalty


def make_generator(config: RLConfig, model, tokenizer, start_path):
    """The rollout backend ``config.generation_backend`` names, on ``model``."""
    if config.generation_backend == "hf":
        return HFGenerator(model, tokenizer, temperature=config.temperature, top_p=config.top_p, seed=config.seed,
                           cache_implementation=config.hf_cache_implementation)
    if config.generation_backend == "vllm":
        from search_gym.trainers.vllm_generation import VLLMGenerator

        if start_path is None:
            raise ValueError("generation_backend='vllm' starts its engine from a saved model folder: load the policy "
                             "from config.model (a folder or hub id), or pass generator=VLLMGenerator(...)")
        return VLLMGenerator(model, tokenizer, model_path=start_path, temperature=config.temperature,
                             top_p=config.top_p, seed=config.seed,
                             gpu_memory_utilization=config.vllm.gpu_memory_utilization,
                             max_model_len=config.vllm.max_model_len,
                             enable_sleep_mode=config.vllm.enable_sleep_mode,
                             request_seeds=config.vllm.request_seeds,
                             max_num_batched_tokens=config.vllm.max_num_batched_tokens)
    raise ValueError(f"generation_backend must be 'hf' or 'vllm', not {config.generation_backend!r}")


def env_kwargs_of(config: RLConfig) -> dict:
    """``config.env.kwargs`` as a dict (a JSON object string, a mapping from a YAML config, or empty)."""
    return config.env.extra_kwargs()


def make_env(config: RLConfig, num_envs: int):
    """The rollout env of ``config``: a ``SearchVectorEnv`` for search ids (the env fields, then ``env.kwargs``),
    else a ``SyncVectorEnv`` of ``env.id`` made with ``env.kwargs`` only."""
    if not is_search_env(config.env.id):
        return make_chat_env(config.env.id, num_envs, **config.env.extra_kwargs())
    return make_rollout_env(config.env.id, num_envs, **config.env.make_kwargs())


@dataclass
class Rollout:
    """One step's episodes as the generator sampled them (before any shaping), with the step's rollout figures."""

    episodes: list[TokenEpisode]  # each with ``weights_version``, the updates in the weights that sampled it
    seconds: float
    generated_tokens: int
    env_seconds: float


class RLTrainer:
    """Base of :class:`GRPOTrainer` and :class:`PPOTrainer`; subclasses implement :meth:`update`.

    Args:
        config: an :class:`RLConfig` subclass.
        model / tokenizer: an already loaded policy (tests pass tiny models); default loads ``config.model``.
        env: a ``SearchVectorEnv`` to roll out in, or a vector of chat-message text envs (``SyncVectorEnv``,
            played by ``ChatRolloutCollector``; episode starts are reset seeds ``0..episode_seeds-1``); default
            :func:`make_env` of the config.
        generator: a rollout backend (default: :class:`HFGenerator` on the policy).
        reference: the frozen starting model (default: loaded from the starting weights when the KL term or the
            penalty needs it).
        accelerator: an ``accelerate.Accelerator`` for data-parallel training (default: one is made when the
            process was started by ``accelerate launch`` / ``torchrun`` with several processes; see
            :mod:`search_gym.trainers.distributed`). Each rank then rolls out ``questions_per_step / world_size``
            questions of every step and ``num_envs`` counts one rank's sub-environments.
    """

    algorithm = "rl"

    def __init__(self, config: RLConfig, *, model=None, tokenizer=None, env=None, generator=None, reference=None,
                 accelerator=None):
        self.config = config
        self.parallel = make_parallel(accelerator)
        ranks = self.parallel.world_size
        if config.questions_per_step % ranks:
            raise ValueError(f"questions_per_step ({config.questions_per_step}) is the global batch, split into whole "
                             f"question groups across the {ranks} processes: make it a multiple of {ranks}")
        set_seed(config.seed)
        if model is None:
            load_config = config
            if self.parallel.enabled and config.device is None:
                from dataclasses import replace

                load_config = replace(config, device=str(self.parallel.accelerator.device))  # this rank's GPU
            model, tokenizer, device = load_policy(load_config)
            self.start_path = resolve_model_path(config.model)
        else:
            if tokenizer is None:
                raise ValueError("pass the tokenizer with the model")
            device = next(model.parameters()).device
            self.start_path = None
        self.model, self.tokenizer, self.device = model, tokenizer, device
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        num_envs = config.num_envs or config.questions_per_step // ranks * config.group_size
        if env is None:
            env = make_env(config, num_envs)
        self.env = env
        if generator is None and self.parallel.enabled and config.generation_backend == "vllm":
            # An in-process engine would join the trainer's process group (vLLM needs its external_launcher
            # executor for that, as TRL's colocate mode uses); not wired up yet.
            raise NotImplementedError("generation_backend='vllm' runs in one process; under accelerate data "
                                      "parallelism use generation_backend='hf', or TRL's GRPOTrainer through "
                                      "search_gym.integrations.trl")
        self.generator = generator or make_generator(config, model, tokenizer, self.start_path)
        if config.async_rollouts and not getattr(self.generator, "owns_weights", False):
            raise ValueError(f"async_rollouts needs a generator with its own copy of the weights (VLLMGenerator): "
                             f"{type(self.generator).__name__} samples from the policy being updated, so a rollout "
                             "beside the update would read weights mid-update")
        self.collector = make_collector(env, self.generator, few_shot=config.few_shot,
                                        max_turn_tokens=config.max_turn_tokens,
                                        max_prompt_tokens=config.max_prompt_tokens,
                                        max_response_tokens=config.max_response_tokens,
                                        max_obs_tokens=config.max_obs_tokens)
        needs_reference = self.uses_reference() or (config.penalty.direction and config.penalty.source == "reference")
        if reference is None and needs_reference:
            if self.start_path is None:
                raise ValueError("pass reference= (a frozen copy of the starting model) with an in-memory policy")
            reference = frozen_copy(self.start_path, device, config.dtype)
        self.reference = reference
        reader = reference if config.penalty.source == "reference" else model
        self.penalty = load_penalty(config.penalty, reader)
        self.setup()
        self.optimizer, self.scheduler = make_optimizer(model, config, self.extra_parameters())
        # ``train_model`` runs the forwards that are differentiated (DDP under several processes, so backward
        # averages gradients across ranks); ``self.model`` stays the plain module for generation, scoring without
        # gradients and saving. One process: the same object.
        self.train_model, self.optimizer = self.parallel.prepare(model, self.optimizer)
        self.step = 0
        # Updates in the weights the generator samples from (the policy's own for a generator that shares them).
        self.sampler_version = 0
        self.last_rollout: Rollout | None = None  # the rollout of the latest collect(), for the step's metrics
        self.pending_rollout: tuple[int, Future] | None = None  # async: (step, its rollout running in background)
        # Only rank 0 writes the run folder (logs, config.json, checkpoints).
        self.logger = RunLogger(config.output_dir, config, tensorboard=config.tensorboard) if self.parallel.is_main \
            else _NoLogger()
        if isinstance(self.collector, RolloutCollector):
            self.question_ids = [q.id for q in env.envs[0].questions]
            if config.max_questions > 0:
                self.question_ids = self.question_ids[: config.max_questions]
        else:  # chat envs: an episode start is a reset seed
            self.question_ids = list(range(config.episode_seeds))

    # ------------------------------------------------------------------ hooks for subclasses

    def uses_reference(self) -> bool:
        return False

    def setup(self) -> None:
        """Build algorithm modules (PPO's value head) before the optimiser is made."""

    def extra_parameters(self) -> Sequence[torch.nn.Parameter]:
        return ()

    def modules(self) -> dict[str, torch.nn.Module]:
        """Trainer modules saved and restored with checkpoints."""
        return {}

    def update(self, episodes: list[TokenEpisode]) -> dict[str, float]:
        raise NotImplementedError

    # ------------------------------------------------------------------ data order

    def questions_for_step(self, step: int) -> list[str]:
        """``questions_per_step`` ids for ``step``: epochs of seeded permutations, a pure function of (seed, step)."""
        n, per = len(self.question_ids), self.config.questions_per_step
        out = []
        for k in range(step * per, (step + 1) * per):
            epoch, offset = divmod(k, n)
            order = np.random.default_rng([self.config.seed, epoch]).permutation(n)
            out.append(self.question_ids[int(order[offset])])
        return out

    def rollout_seed(self, step: int) -> int:
        # Each rank samples its own rollouts (rank 0 keeps the single-process seed); still a function of
        # (seed, step, rank), so a resumed or repeated run samples the same.
        key = [self.config.seed, step, 7] + ([self.parallel.rank] if self.parallel.rank else [])
        return int(np.random.default_rng(key).integers(2**31 - 1))

    def local_questions(self, questions: list) -> list:
        """This rank's contiguous share of a step's questions (all of them in one process)."""
        per = len(questions) // self.parallel.world_size
        return questions[self.parallel.rank * per : (self.parallel.rank + 1) * per]

    # ------------------------------------------------------------------ loop

    def resume(self) -> int:
        found = checkpoints(self.config.output_dir)
        if not self.config.resume or not found:
            return 0
        step, path = found[-1]
        load_checkpoint(path, self.model, self.optimizer, self.scheduler, modules=self.modules())
        self.step = step
        self.logger.truncate(step)
        if self.parallel.is_main:  # the one line that shows, in a log, where a killed run picked up
            print(f"{self.algorithm}: resumed from {path} (step {step} of {self.config.max_steps})", flush=True)
        return step

    def rollout(self, step: int) -> Rollout:
        """``step``'s episodes as the generator samples them. In async mode this runs in a background thread beside
        the update, so it touches only the collector, its env and the generator, never the policy or the optimiser;
        one rollout runs at a time, so the collector's counters before and after are this rollout's."""
        version = self.sampler_version  # no weights are pushed while a rollout runs (push_weights)
        stats = self.collector.stats
        tokens_before, env_before = stats.generated_tokens, stats.env_seconds
        t0 = time.perf_counter()
        episodes = self.collector.collect(self.local_questions(self.questions_for_step(step)), self.config.group_size,
                                          seed=self.rollout_seed(step))
        for episode in episodes:
            episode.weights_version = version
        return Rollout(episodes, time.perf_counter() - t0, stats.generated_tokens - tokens_before,
                       stats.env_seconds - env_before)

    def collect(self, step: int) -> list[TokenEpisode]:
        """``step``'s episodes, shaped: the rollout started in the background during the previous update (async
        mode), else one rolled out now."""
        pending, self.pending_rollout = self.pending_rollout, None
        if pending is None:
            rollout = self.rollout(step)
        else:
            pending_step, future = pending
            if pending_step != step:
                raise RuntimeError(f"the rollout in flight is step {pending_step}'s, not step {step}'s")
            rollout = future.result()
        self.last_rollout = rollout
        episodes = rollout.episodes
        if self.penalty is not None:
            # In the main thread, after the previous update: the reader may be the policy itself, and the penalty's
            # forward must not run beside the update (same weights as in synchronous mode).
            self.penalty.apply(episodes, self.reference if self.config.penalty.source == "reference" else self.model)
        return episodes

    def start_rollout(self, executor: ThreadPoolExecutor, step: int) -> None:
        """Roll out ``step`` in the background, from the generator's current weights; :meth:`collect` takes it."""
        if self.pending_rollout is not None:
            raise RuntimeError(f"a rollout (step {self.pending_rollout[0]}) is already in flight")
        self.pending_rollout = (step, executor.submit(self.rollout, step))

    def wait_rollout(self) -> float:
        """Block until the rollout in flight (if any) has finished; re-raises its error here. Returns the seconds
        waited (the part of the rollout the update did not hide)."""
        if self.pending_rollout is None:
            return 0.0
        t0 = time.perf_counter()
        self.pending_rollout[1].result()
        return time.perf_counter() - t0

    def push_weights(self, version: int) -> None:
        """The generator's copy of the weights becomes the policy's (``version`` updates in it)."""
        if self.pending_rollout is not None and not self.pending_rollout[1].done():
            # Weights changing between two turns of a rollout would mix versions inside one episode.
            raise RuntimeError("weights pushed while a rollout is generating: wait_rollout() first")
        self.generator.sync_weights()
        self.sampler_version = version

    def train(self) -> list[dict]:
        """Run to ``max_steps`` (resuming first); returns the logged metric rows of this call."""
        config = self.config
        start = self.resume()
        self.sampler_version = start
        if start:
            self.push_weights(start)  # an engine with its own copy starts from the resumed weights
        elif config.drift_every and self.penalty is not None:
            if self.parallel.is_main:
                self.record_drift()  # step 0: the starting weights, what drift is measured from
            self.parallel.barrier()
        logged = []
        bar = progress_bar(config.max_steps, start, config.progress and self.parallel.is_main, f"{self.algorithm}")
        # One worker: at most one rollout beside the update. A resumed run also starts with a synchronous rollout.
        executor = ThreadPoolExecutor(1, thread_name_prefix="async-rollout") if config.async_rollouts else None
        try:
            for step in range(start, config.max_steps):
                t0 = time.perf_counter()
                episodes = self.collect(step)
                rollout = self.last_rollout
                t_collect = time.perf_counter() - t0
                if executor is not None:
                    if step + 1 < config.max_steps:
                        # Started before the update: step + 1 samples from the engine's weights of version `step`.
                        self.start_rollout(executor, step + 1)
                elif hasattr(self.generator, "pause"):
                    self.generator.pause()  # a sleeping vLLM engine leaves the update its memory
                metrics = self.update(episodes)
                self.scheduler.step()
                waited = self.wait_rollout()  # the next rollout finishes on the old weights before they change
                self.push_weights(step + 1)
                wall = time.perf_counter() - t0
                turns = sum(e.turns for e in episodes)
                metrics.update(episode_metrics(episodes))
                metrics.update(group_statistics(episodes, config.group_size))
                metrics.update({
                    "charts/learning_rate": self.scheduler.get_last_lr()[0],
                    "charts/SPS": turns / wall,
                    "charts/tokens_per_second": rollout.generated_tokens / wall,
                    # updates the batch's sampling weights are behind the weights this step updated (version `step`)
                    "charts/policy_lag": float(np.mean([step - e.weights_version for e in episodes])),
                    # the step's wall time on rollouts (async: the part the update did not hide) and on the update
                    "time/rollout_seconds": t_collect + waited,
                    "time/update_seconds": wall - t_collect - waited,
                    # how long the step's own rollout took (async: during the previous update)
                    "time/rollout_busy_seconds": rollout.seconds,
                    "time/env_seconds": rollout.env_seconds,
                })
                metrics = reduce_metrics(self.parallel, metrics)
                self.step = step + 1
                if config.logging_steps and (self.step % config.logging_steps == 0 or self.step == config.max_steps):
                    self.logger.log(self.step, metrics)
                logged.append({"step": self.step, **metrics})
                if (config.save_steps and self.step % config.save_steps == 0) or self.step == config.max_steps:
                    self.save()
                    if config.plots and self.parallel.is_main:
                        draw_run_curves(config.output_dir)
                bar.update(1)
                bar.set_postfix(ret=f"{metrics['charts/episodic_return']:.3f}",
                                em=f"{metrics.get('charts/em', math.nan):.2f}")  # chat envs have no EM
        finally:
            if executor is not None:
                # After an error: let a rollout in flight finish (a thread cannot be stopped) and drop it.
                executor.shutdown(wait=True, cancel_futures=True)
                self.pending_rollout = None
        bar.close()
        self.logger.close()
        return logged

    def save(self):
        path = None
        if self.parallel.is_main:  # every rank holds the same weights and optimiser state
            path = save_checkpoint(self.config.output_dir, self.step, self.model, self.tokenizer, self.optimizer,
                                   self.scheduler, modules=self.modules(), total_limit=self.config.save_total_limit,
                                   extra={"algorithm": self.algorithm})
            if self.config.drift_every and self.penalty is not None and self.step % self.config.drift_every == 0:
                self.record_drift()
        self.parallel.barrier()  # no rank runs ahead of (or resumes from) a checkpoint still being written
        return path

    def save_final(self):
        """``output_dir/final`` (:func:`~search_gym.trainers.core.save_final`), written by rank 0 only."""
        from pathlib import Path

        final = Path(self.config.output_dir) / "final"
        if self.parallel.is_main:  # rank 0 writes the one copy of the shared weights
            save_final(self.config.output_dir, self.model, self.tokenizer)
        self.parallel.barrier()
        return final

    def record_drift(self) -> dict:
        """Drift of the policy along the penalty direction (the direction toolkit's ``drift``) at this step, on
        ``drift_prompts`` held-out harmful and QA prompts; one JSON line per layer in ``output_dir/drift.jsonl``."""
        import json

        from search_gym.directions import drift, load_prompts

        n = self.config.drift_prompts
        table = drift([(self.step, (self.model, self.tokenizer))], self.penalty.direction,
                      load_prompts("harmful", "heldout", n, seed=self.config.seed),
                      harmless_prompts=load_prompts("qa", "heldout", n, seed=self.config.seed),
                      layers=[self.penalty.layer])
        rows = table.to_dicts()
        with open(f"{self.config.output_dir}/drift.jsonl", "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        self.model.train()
        return rows[0] if rows else {}

    def minibatches(self, n: int, step: int, iteration: int) -> list[list[int]]:
        """Seeded shuffled minibatches of episode rows (``mini_batch_size`` each; 0 = one batch)."""
        size = self.config.mini_batch_size or n
        order = np.random.default_rng([self.config.seed, step, iteration, 11]).permutation(n)
        return [[int(i) for i in order[s : s + size]] for s in range(0, n, size)]

    def forward_chunks(self, n: int) -> list[list[int]]:
        return forward_passes(n, self.config.forward_batch_size)

    @property
    def corrects_sampler(self) -> bool:
        """Whether rollouts come from another engine than the policy (vLLM) and the config asks to correct for
        it (TRL's ``vllm_importance_sampling_correction``); the HF backend's log-probabilities are the policy's."""
        return self.config.vllm.importance_sampling_correction and not getattr(self.generator, "exact_logprobs", True)

    def sampler_weights(self, policy_logps: torch.Tensor, batch) -> torch.Tensor:
        """TRL's importance weights exp(policy - sampler) log-probabilities for ``batch``, as the config sets them
        (mode and clip bounds)."""
        vllm = self.config.vllm
        return sampler_correction(policy_logps, batch.sampler_logprobs, batch.loss_mask, vllm.importance_sampling_mode,
                                  vllm.importance_sampling_clip_min, vllm.importance_sampling_clip_max)

    def clip_and_step(self) -> float:
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm or float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)


class _NoLogger:
    """The logger of ranks other than 0: they compute the same reduced metrics but write nothing."""

    def truncate(self, step: int) -> None:
        pass

    def log(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def close(self) -> None:
        pass


def score_logprobs(model, batch, chunks, temperature: float) -> torch.Tensor:
    """Per-token log-probabilities of a batch without gradients, in chunks of rows."""
    from search_gym.trainers.core import first_loss_position, token_logprobs

    out = torch.zeros_like(batch.loss_mask)
    with torch.no_grad():
        for rows in chunks:
            sub = batch.select(rows)
            logps, _, _ = token_logprobs(model, sub.input_ids, sub.attention_mask, temperature=temperature,
                                         first_position=first_loss_position(sub.loss_mask))
            out[torch.as_tensor(rows, device=out.device)] = logps
    return out
