"""What every trainer shares: loading the policy, batching token episodes, per-token log-probabilities,
checkpoints that resume exactly, and metric logs (TensorBoard + CSV, CleanRL names)."""

from __future__ import annotations

import csv
import json
import math
import os
import random
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from search_gym.files import atomic_output
from search_gym.trainers.config import TrainConfig, config_dict

CHECKPOINT_PREFIX = "checkpoint-"


# ---------------------------------------------------------------------------------------------- seeding & models


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_model_path(name: str) -> str:
    """A folder or hub id for ``from_pretrained``; ``"smollm2"`` is the bundled model's converted HF folder and
    ``"smollm2-aligned"`` that folder with the shipped aligned adapter merged in (once, into the cache), so that a
    run starts from the aligned warm start (a new LoRA, if any, goes on top of the merged weights)."""
    if name in ("smollm2", "smollm2-aligned"):
        from search_gym.agents.gguf import ensure_smollm2

        base = str(ensure_smollm2())
        if name == "smollm2":
            return base
        from search_gym.agents.adapters import cached_merge, shipped_adapter

        return str(cached_merge(base, shipped_adapter(name)))
    return str(name)


def load_policy(config: TrainConfig, path: str | None = None):
    """(model, tokenizer, device) for training: the config's model (or ``path``), on its device and dtype, with
    LoRA adapters when ``lora_r > 0``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from search_gym.devices import allow_tf32, resolve_device, resolve_dtype

    source = path or resolve_model_path(config.model)
    device = resolve_device(config.device)
    allow_tf32(device, config.tf32)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=resolve_dtype(config.dtype)).to(device)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if config.lora_r > 0 and not is_peft(model):
        from peft import LoraConfig, get_peft_model

        targets = config.lora_target_modules
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")],
                          task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    model.train()
    return model, tokenizer, device


def is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def frozen_copy(source: str, device, dtype: str = "float32"):
    """A frozen model (eval mode, no gradients) loaded from ``source``: the KL reference / penalty reader."""
    from transformers import AutoModelForCausalLM

    from search_gym.devices import resolve_dtype

    model = AutoModelForCausalLM.from_pretrained(source, dtype=resolve_dtype(dtype)).to(device)
    model.eval()
    model.requires_grad_(False)
    return model


# ---------------------------------------------------------------------------------------------- batching


@dataclass
class TokenBatch:
    """Right-padded ``prompt + response`` rows. ``response_mask``/``loss_mask``/``old_logprobs`` are aligned with
    ``input_ids[:, 1:]`` (position t scores token t + 1), so they multiply per-token log-probabilities directly."""

    input_ids: torch.Tensor  # [B, S]
    attention_mask: torch.Tensor  # [B, S]
    loss_mask: torch.Tensor  # [B, S-1] float: 1 at policy tokens
    sampler_logprobs: torch.Tensor  # [B, S-1] float: the generator's log-probs at policy tokens (0 elsewhere)

    def to(self, device) -> TokenBatch:
        return TokenBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.loss_mask,
                                                    self.sampler_logprobs)))

    def select(self, rows: Sequence[int]) -> TokenBatch:
        index = torch.as_tensor(list(rows), dtype=torch.long, device=self.input_ids.device)
        return TokenBatch(*(t.index_select(0, index) for t in (self.input_ids, self.attention_mask, self.loss_mask,
                                                                self.sampler_logprobs)))


def collate(episodes: Sequence[Any], pad_id: int) -> TokenBatch:
    """A :class:`TokenBatch` of TokenEpisodes (anything with prompt_ids, response_ids, loss_mask, logprobs)."""
    width = max(len(e.prompt_ids) + len(e.response_ids) for e in episodes)
    batch = len(episodes)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    attention = torch.zeros((batch, width), dtype=torch.long)
    loss_mask = torch.zeros((batch, width - 1), dtype=torch.float32)
    sampler = torch.zeros((batch, width - 1), dtype=torch.float32)
    for b, e in enumerate(episodes):
        ids = list(e.prompt_ids) + list(e.response_ids)
        input_ids[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention[b, : len(ids)] = 1
        start = len(e.prompt_ids) - 1  # position predicting the first response token
        n = len(e.response_ids)
        loss_mask[b, start : start + n] = torch.tensor(e.loss_mask, dtype=torch.float32)
        lp = torch.tensor([0.0 if (isinstance(v, float) and math.isnan(v)) else v for v in e.logprobs],
                          dtype=torch.float32)
        sampler[b, start : start + n] = lp * loss_mask[b, start : start + n]
    return TokenBatch(input_ids, attention, loss_mask, sampler)


#: Elements (rows x vocabulary) of one chunk of logits that :func:`selective_logprobs` works on at a time (at most;
#: and at most 1/16 of the rows): its float32 temporaries are a few of these (64 MiB each), however long the batch.
LOGIT_CHUNK_ELEMENTS = 1 << 24


class _ChunkLogSoftmax:
    """Float32 log-softmax of chunks of logit rows at ``temperature`` (the rollout's sampling distribution), into
    buffers allocated once per pass and reused for every chunk: the allocator sees two chunk-sized blocks per pass,
    not a fresh block per chunk (glibc keeps freed blocks under its 32 MiB mmap threshold in the heap, where a few
    hundred of them grow the resident set by a whole logits tensor)."""

    def __init__(self, logits: torch.Tensor, temperature: float | None, chunk_rows: int):
        rows = min(chunk_rows, logits.size(0))
        self.temperature = temperature if temperature and temperature != 1.0 else None
        self.copy = self.temperature is not None or logits.dtype != torch.float32
        self.logps = logits.new_empty((rows, logits.size(1)), dtype=torch.float32)
        self._scratch = None  # the scaled float32 copy, then free for the caller (allocated when first needed)

    def scratch(self, n: int) -> torch.Tensor:
        if self._scratch is None:
            self._scratch = torch.empty_like(self.logps)
        return self._scratch[:n]

    def __call__(self, chunk: torch.Tensor) -> torch.Tensor:
        """The log-softmax of ``chunk`` [n, V] (a view of a buffer, valid until the next call)."""
        n = chunk.size(0)
        logps = self.logps[:n]
        if self.copy:
            scratch = self.scratch(n)
            chunk = scratch.copy_(chunk)
            if self.temperature is not None:
                chunk.div_(self.temperature)
        return torch.log_softmax(chunk, dim=-1, out=logps)


class _SelectiveLogprobs(torch.autograd.Function):
    """``log_softmax(logits / T).gather(targets)`` and (optionally) the entropy of each row, over ``[N, V]`` logit
    rows, a chunk of rows at a time.

    Forward keeps only the logits (already alive: the model's output) and a ``[N]`` result. Backward writes
    ``d logp[t] / d logits = (onehot(t) - softmax(logits / T)) / T`` (times the incoming gradient) chunk by chunk
    into one tensor of the logits' shape and dtype, recomputing the chunk's softmax: the peak is the logits plus
    their gradient (2x one ``[N, V]`` tensor of the logits' dtype) plus two chunks, where the autograd graph of
    ``log_softmax`` keeps a float32 log-softmax for backward and allocates two more full tensors in it.
    """

    @staticmethod
    def forward(ctx, logits, targets, temperature, chunk_rows, entropy_index):
        # entropy_index: None (no entropy), True (every row) or the sorted rows ([K] long) that want one
        rows = logits.size(0)
        chosen = torch.empty(rows, dtype=torch.float32, device=logits.device)
        entropy = bounds = None
        if entropy_index is not None:
            entropy = torch.full((rows,), math.nan, dtype=torch.float32, device=logits.device)
            if entropy_index is not True:  # each chunk's share of the index, found once on the host
                starts = torch.arange(0, rows, chunk_rows)
                bounds = torch.searchsorted(entropy_index.cpu(), torch.cat([starts, torch.tensor([rows])])).tolist()
        log_softmax = _ChunkLogSoftmax(logits, temperature, chunk_rows)
        for n, start in enumerate(range(0, rows, chunk_rows)):
            stop = min(start + chunk_rows, rows)
            logps = log_softmax(logits[start:stop])
            torch.gather(logps, -1, targets[start:stop].unsqueeze(-1), out=chosen[start:stop].unsqueeze(-1))
            if entropy_index is True:
                p_logp = torch.exp(logps, out=log_softmax.scratch(stop - start)).mul_(logps)
                entropy[start:stop] = p_logp.sum(-1).neg_()
            elif bounds is not None and bounds[n + 1] > bounds[n]:
                index = entropy_index[bounds[n]:bounds[n + 1]]
                picked = logps.index_select(0, index - start)
                entropy.index_copy_(0, index, -(picked.exp() * picked).sum(-1))
                del picked
        del log_softmax
        ctx.save_for_backward(logits, targets)
        ctx.temperature, ctx.chunk_rows = temperature, chunk_rows
        if entropy is None:
            return chosen
        ctx.mark_non_differentiable(entropy)
        return chosen, entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_chosen, grad_entropy=None):
        logits, targets = ctx.saved_tensors
        temperature, chunk_rows = ctx.temperature, ctx.chunk_rows
        scaled = bool(temperature and temperature != 1.0)
        grad = torch.empty_like(logits)
        grad_chosen = grad_chosen.float()
        log_softmax = _ChunkLogSoftmax(logits, temperature, chunk_rows)
        for start in range(0, logits.size(0), chunk_rows):
            stop = min(start + chunk_rows, logits.size(0))
            g = grad_chosen[start:stop].unsqueeze(-1)
            part = log_softmax(logits[start:stop])
            part.exp_().mul_(-g)  # -softmax * g
            part.scatter_add_(-1, targets[start:stop].unsqueeze(-1), g)  # + onehot * g
            if scaled:
                part.div_(temperature)
            grad[start:stop] = part
        return grad, None, None, None, None


def selective_logprobs(logits: torch.Tensor, targets: torch.Tensor, *, temperature: float | None = 1.0,
                       entropy_rows: torch.Tensor | bool | None = None, chunk_rows: int | None = None):
    """``log_softmax(logits / temperature, -1).gather(-1, targets)`` in float32 (``logits`` ``[..., V]``,
    ``targets`` ``[...]``), without a ``[..., V]`` log-softmax kept for backward; with ``entropy_rows`` (True for
    every row, or a bool mask shaped like ``targets``) also the entropy of those rows' distributions (no gradient;
    NaN at rows not asked for). Returns the log-probabilities, or (log-probabilities, entropy).

    The values (and, to float rounding, the gradients) of ``log_softmax`` then ``gather``: each chunk of
    ``chunk_rows`` rows (default: :data:`LOGIT_CHUNK_ELEMENTS` logits, or 1/16 of the rows if fewer) is
    log-softmaxed on its own, in float32 whatever the logits' dtype (bf16 logits are upcast a chunk at a time, and
    their gradient is bf16 like them).
    """
    vocab = logits.size(-1)
    shape = targets.shape
    flat = logits.reshape(-1, vocab)  # a view of a contiguous model output
    if chunk_rows is None:
        chunk_rows = max(1, min(LOGIT_CHUNK_ELEMENTS // vocab, -(-flat.size(0) // 16)))
    index = None
    if entropy_rows is True:
        index = True
    elif entropy_rows is not None and entropy_rows is not False:
        index = entropy_rows.reshape(-1).to(device=logits.device, dtype=torch.bool).nonzero().squeeze(1)
    out = _SelectiveLogprobs.apply(flat, targets.reshape(-1), temperature, int(chunk_rows), index)
    if index is None:
        return out.view(shape)
    chosen, entropy = out
    return chosen.view(shape), entropy.view(shape)


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, temperature: float = 1.0,
                   with_entropy: bool = False, with_hidden: bool = False, first_position: int = 0,
                   entropy_every: int = 1):
    """Per-token ``log p(x_{t+1} | x_<=t)`` at ``temperature`` ([B, S-1]), and optionally the entropy of each
    position's distribution and the final hidden states ([B, S, d], for a value head).

    Log-softmax is taken in float32 over ``logits / temperature``: the same distribution the rollout sampled
    from, so importance ratios compare like with like. ``first_position``: the first column of the result that is
    needed (callers pass :func:`first_loss_position` of their loss mask); the logits of earlier positions (the
    prompt) are not computed (HF's ``logits_to_keep``, as TRL does) and those columns are 0.

    Memory: the chosen tokens' log-probabilities come from :func:`selective_logprobs` (no ``[B, S, V]``
    log-softmax is materialised or kept for backward; log-probs + entropy + backward peak at about 2x the logits,
    ``benchmarks/bench_loss_memory.py``). The entropy is a statistic (no gradient), exact, computed chunk by chunk
    from the same log-softmax; ``entropy_every`` N > 1 computes it only at the columns that are multiples of N
    (NaN at the others: average it with :func:`sampled_mean`).
    """
    seq = input_ids.size(1)
    first = min(max(int(first_position), 0), seq - 1)
    kwargs = {"logits_to_keep": seq - first} if first else {}
    out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                output_hidden_states=with_hidden, **kwargs)
    logits = out.logits  # [B, L, V], L = seq - first: position l scores token first + l + 1; the last scores none
    hidden = out.hidden_states[-1] if with_hidden else None
    del out
    batch, length = logits.shape[:2]
    # One target per logit row (the last position's is a placeholder, dropped below), so the rows stay a view.
    targets = torch.cat([input_ids[:, first + 1:], input_ids.new_zeros(batch, 1)], dim=1)
    rows = None
    if with_entropy:
        every = max(1, int(entropy_every))
        rows = True
        if every > 1:
            columns = torch.arange(first, first + length, device=logits.device)
            rows = (columns % every == 0).expand(batch, length)
    result = selective_logprobs(logits, targets, temperature=temperature, entropy_rows=rows)
    chosen, entropy = result if with_entropy else (result, None)
    del logits, result
    chosen = chosen[:, :-1]
    entropy = None if entropy is None else entropy[:, :-1]
    if first:
        pad = chosen.new_zeros(chosen.size(0), first)
        chosen = torch.cat([pad, chosen], dim=1)
        entropy = None if entropy is None else torch.cat([pad, entropy], dim=1)
    return chosen, entropy, hidden


def sampled_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """:func:`masked_mean` over the positions where ``values`` is not NaN (an entropy from ``token_logprobs(...,
    entropy_every=N)``); the same as :func:`masked_mean` when nothing is NaN."""
    missing = values.isnan()
    if not bool(missing.any()):
        return masked_mean(values, mask)
    return masked_mean(values.nan_to_num(0.0), mask * ~missing)


def forward_passes(n: int, size: int) -> list[list[int]]:
    """Row indices ``0..n-1`` in passes of ``size`` (0: one pass): the forward/backward passes of a step or
    minibatch whose gradients accumulate (``forward_batch_size``)."""
    size = size or n
    return [list(range(s, min(n, s + size))) for s in range(0, n, size)]


def first_loss_position(loss_mask: torch.Tensor) -> int:
    """The first column any row of a ``[B, S-1]`` loss mask trains on (0 for an empty mask)."""
    columns = loss_mask.bool().any(dim=0).nonzero()
    return int(columns[0]) if len(columns) else 0


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


# ---------------------------------------------------------------------------------------------- sampler mismatch


def sampler_correction(policy_logps: torch.Tensor, sampler_logps: torch.Tensor, mask: torch.Tensor, mode: str,
                       clip_min: float | None = None, clip_max: float | None = 3.0) -> torch.Tensor:
    """Importance weights for a rollout sampled by another engine (vLLM) than the policy being trained.

    ``exp(policy - sampler)`` log-probabilities at policy tokens, per token (``token_*``, ``[B, T]``) or one per
    episode from the summed difference (``sequence_*``, ``[B, 1]``); ``*_truncate`` clips them to
    ``[clip_min, clip_max]``, ``*_mask`` zeroes those outside it. TRL 1.16's ``vllm_importance_sampling_*``
    semantics (a NaN sampler log-probability counts as no difference).
    """
    diff = torch.nan_to_num((policy_logps - sampler_logps) * mask.float(), nan=0.0)
    if mode.startswith("sequence"):
        diff = diff.sum(dim=-1, keepdim=True)
    elif not mode.startswith("token"):
        raise ValueError(f"unknown importance sampling mode {mode!r}")
    ratio = torch.exp(diff)
    if mode.endswith("truncate"):
        return torch.clamp(ratio, min=clip_min, max=clip_max)
    if not mode.endswith("mask"):
        raise ValueError(f"unknown importance sampling mode {mode!r}")
    low = -math.inf if clip_min is None else clip_min
    high = math.inf if clip_max is None else clip_max
    return ratio.masked_fill((ratio < low) | (ratio > high), 0.0)


def sampler_metrics(policy_logps: torch.Tensor, sampler_logps: torch.Tensor, weights: torch.Tensor,
                    mask: torch.Tensor) -> dict[str, float]:
    """How far the sampler was from the policy (mean absolute log-prob gap per policy token), and what the
    correction did about it (mean weight, fraction of policy tokens masked out)."""
    gap = torch.nan_to_num((policy_logps - sampler_logps).abs() * mask, nan=0.0)
    per_token = weights.expand_as(mask) if weights.size(1) == 1 else weights
    return {"sampling/logprob_gap": float(gap.sum() / mask.sum().clamp(min=1.0)),
            "sampling/is_ratio_mean": float(masked_mean(per_token, mask)),
            "sampling/masked_fraction": float(masked_mean((per_token == 0).float(), mask))}


# ---------------------------------------------------------------------------------------------- optimiser


def group_statistics(episodes: Sequence[Any], group_size: int) -> dict[str, float]:
    """How much signal the rollout groups carry (episodes ordered group by group, as collectors return them).

    A group whose ``group_size`` rewards are all equal gets zero group-relative advantage: it teaches GRPO nothing.
    ``groups/informative_share`` is the share of groups with any spread of the shaped reward (what the advantages
    see), ``groups/task_informative_share`` that of the task reward alone. ``groups/task_reward_std`` and
    ``groups/penalty_std`` are the mean *within-group* (unbiased, as the advantages use) std of the task reward and
    of the representation penalty: the penalty can act only where its within-group std is not 0, and their ratio
    (``groups/penalty_to_task_std``) is what lambda is sized by. ``charts/reward_std`` is the whole batch's and
    says nothing about groups.
    """
    if group_size < 2 or not episodes or len(episodes) % group_size:
        return {}
    shape = (-1, group_size)
    reward = np.asarray([e.reward for e in episodes], dtype=np.float64).reshape(shape)
    task = np.asarray([e.task_reward for e in episodes], dtype=np.float64).reshape(shape)
    penalty = np.asarray([getattr(e, "penalty", 0.0) for e in episodes], dtype=np.float64).reshape(shape)
    task_std = float(task.std(axis=1, ddof=1).mean())
    penalty_std = float(penalty.std(axis=1, ddof=1).mean())
    return {
        "groups/informative_share": float((np.ptp(reward, axis=1) > 1e-8).mean()),
        "groups/task_informative_share": float((np.ptp(task, axis=1) > 1e-8).mean()),
        "groups/task_reward_std": task_std,
        "groups/penalty_std": penalty_std,
        "groups/penalty_to_task_std": penalty_std / task_std if task_std > 0 else 0.0,
    }


def make_optimizer(model, config: TrainConfig, extra_params: Sequence[torch.nn.Parameter] = ()):
    params = [p for p in model.parameters() if p.requires_grad] + list(extra_params)
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    warmup, total = max(0, config.warmup_steps), max(1, config.max_steps)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if config.lr_scheduler == "linear":
            return max(0.0, (total - step) / max(1, total - warmup))
        return 1.0

    if config.lr_scheduler not in ("constant", "linear"):
        raise ValueError(f"lr_scheduler must be 'constant' or 'linear', not {config.lr_scheduler!r}")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return optimizer, scheduler


# ---------------------------------------------------------------------------------------------- checkpoints


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Finished checkpoints in a run folder, oldest first."""
    root = Path(output_dir)
    found = []
    for path in root.glob(f"{CHECKPOINT_PREFIX}*"):
        match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", path.name)
        if match and (path / "trainer_state.pt").exists():
            found.append((int(match.group(1)), path))
    return sorted(found)


def save_final(output_dir: str | Path, model, tokenizer) -> Path:
    """``output_dir/final``: a plain HF folder of ``model`` (LoRA merged) that ``hf:<folder>`` agents and RL runs
    load. A LoRA run also writes ``output_dir/adapter``: the adapter alone in bf16, a small folder that travels
    between machines (``HFAgent(base, adapter=...)`` loads it)."""
    if is_peft(model):
        from search_gym.agents.adapters import save_adapter

        save_adapter(model, Path(output_dir) / "adapter")  # before merging: merge_and_unload drops the adapter
    final = Path(output_dir) / "final"
    plain = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    plain.save_pretrained(final)
    tokenizer.save_pretrained(final)
    return final


def save_checkpoint(output_dir: str | Path, step: int, model, tokenizer, optimizer, scheduler, *,
                    extra: dict | None = None, modules: dict[str, torch.nn.Module] | None = None,
                    total_limit: int = 0) -> Path:
    """``checkpoint-<step>/``: the model (``save_pretrained``, loadable by any HF tool), the tokenizer, and
    ``trainer_state.pt`` (optimiser, scheduler, RNG, step, extra trainer state such as the data order position).
    Written to a temporary folder and renamed, so a kill mid-save never leaves a half checkpoint behind."""
    root = Path(output_dir)
    final = root / f"{CHECKPOINT_PREFIX}{step}"
    tmp = root / f".tmp-{CHECKPOINT_PREFIX}{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": _rng_state(),
        "extra": extra or {},
        "modules": {name: m.state_dict() for name, m in (modules or {}).items()},
    }
    torch.save(state, tmp / "trainer_state.pt")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    if total_limit > 0:
        for _, old in checkpoints(root)[:-total_limit]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path, model, optimizer, scheduler, *,
                    modules: dict[str, torch.nn.Module] | None = None) -> dict:
    """Restore weights, optimiser, scheduler and RNG from a checkpoint; returns its ``trainer_state`` dict."""
    from safetensors.torch import load_file

    path = Path(path)
    state = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=False)
    if is_peft(model):
        from peft import set_peft_model_state_dict

        weights = load_file(str(path / "adapter_model.safetensors"))
        set_peft_model_state_dict(model, weights)
    else:
        files = sorted(path.glob("model*.safetensors"))
        weights: dict = {}
        for f in files:
            weights.update(load_file(str(f)))
        missing, unexpected = model.load_state_dict(weights, strict=False)
        # Tied embeddings are saved once: a missing lm_head that is tied to the embeddings is expected.
        missing = [m for m in missing if not (m == "lm_head.weight" and getattr(model.config, "tie_word_embeddings", False))]
        if missing or unexpected:
            raise RuntimeError(f"checkpoint {path} does not match the model: missing {missing}, unexpected {unexpected}")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    # The saved param-group lr follows the saved run's schedule; this run's may differ (a larger max_steps under the
    # linear schedule): set the lr of the next step from this run's schedule.
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    for name, module in (modules or {}).items():
        module.load_state_dict(state["modules"][name])
    _set_rng_state(state["rng"])
    return state


# ---------------------------------------------------------------------------------------------- logging


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """The rows of a run's ``metrics.csv`` (:class:`RunLogger`'s), as floats; a column a row has no value in (it
    appeared later) is left out of that row."""
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


class RunLogger:
    """Metrics to ``metrics.csv`` (one row per logged step, columns grow as metrics appear) and TensorBoard."""

    def __init__(self, output_dir: str | Path, config: Any, *, tensorboard: bool = True):
        self.root = Path(output_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "config.json").write_text(json.dumps(config_dict(config), indent=1, default=str))
        self.csv_path = self.root / "metrics.csv"
        self.rows: list[dict] = []
        if self.csv_path.exists():
            with self.csv_path.open(newline="") as f:
                self.rows = list(csv.DictReader(f))
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.root / "tensorboard"))
            except ImportError:  # tensorboard is an optional extra; the CSV always exists
                self.writer = None
        self.started = time.perf_counter()

    def truncate(self, step: int) -> None:
        """Drop rows after ``step`` (a resumed run rewrites them exactly)."""
        self.rows = [r for r in self.rows if int(float(r["global_step"])) <= step]
        self._write()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"global_step": step, **{k: float(v) for k, v in metrics.items()}}
        self.rows.append(row)
        self._write()
        if self.writer is not None:
            for key, value in metrics.items():
                if value is not None and not (isinstance(value, float) and math.isnan(value)):
                    self.writer.add_scalar(key, float(value), step)
            self.writer.flush()

    def _write(self) -> None:
        columns: list[str] = []
        for row in self.rows:
            columns += [k for k in row if k not in columns]
        with atomic_output(self.csv_path) as tmp, tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns or ["global_step"])
            writer.writeheader()
            writer.writerows(self.rows)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def progress_bar(total: int, initial: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, unit="step", dynamic_ncols=True)
