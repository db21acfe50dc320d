"""GRPO on multi-turn search episodes, read top to bottom.

One step:
1. ``questions_per_step`` questions, ``group_size`` episodes each, rolled out token-in/token-out
   (:mod:`search_gym.rollout`); retrieved passages, correction messages and prefills are environment
   tokens with loss weight 0.
2. Optional representation-guided shaping: ``r = r_task - lambda * p(h)`` (:mod:`search_gym.trainers.shaping`).
3. Group-relative advantages: ``A = (r - mean_group(r)) / (std + 1e-4)`` (std of the group, of the batch, or none).
4. ``num_iterations`` passes over the batch in minibatches: clipped importance ratio against the rollout policy's
   log-probabilities, k3 KL to the frozen starting model, aggregated per ``loss_type``.
"""

from __future__ import annotations

import contextlib

import torch

from search_gym.trainers.base import RLTrainer, score_logprobs
from search_gym.trainers.core import (collate, first_loss_position, masked_mean, sampled_mean, sampler_metrics,
                                      token_logprobs)
from search_gym.trainers.grpo_config import GRPOConfig


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group") -> torch.Tensor:
    """``(r - mean of its group)``, divided by the group's (or the batch's) std + 1e-4 unless ``scale="none"``.

    Rewards are ordered group by group (``group_size`` consecutive episodes per question), as rollouts return
    them. The std is the unbiased one, as TRL's.
    """
    grouped = rewards.view(-1, group_size)
    mean = grouped.mean(dim=1).repeat_interleave(group_size)
    advantages = rewards - mean
    if scale == "group":
        std = grouped.std(dim=1).repeat_interleave(group_size)
    elif scale == "batch":
        std = rewards.std().expand_as(rewards)
    elif scale == "none":
        return advantages
    else:
        raise ValueError(f"scale must be group, batch or none, not {scale!r}")
    return advantages / (std + 1e-4)


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor | None,
    ref_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    beta: float = 0.0,
    loss_type: str = "grpo",
    importance_sampling_level: str = "token",
    max_completion_length: int | None = None,
    num_items: float | torch.Tensor | None = None,
    bias_correction_kl: bool = True,
    sampling_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GRPO objective on per-token log-probabilities ``[B, T]`` (any alignment, as long as all agree).

    ``old_logps`` None means the batch is on-policy (ratio 1, gradient of the log-probabilities only). ``mask`` is
    1 at policy tokens. ``num_items``: the token count that ``dapo`` divides by (default: ``mask.sum()``; over a
    rollout batch split into minibatches pass the whole batch's count). ``bias_correction_kl`` multiplies the k3
    KL by the importance ratio (TRL's default). ``sampling_weights`` (``[B, T]`` or ``[B, 1]``,
    :func:`sampler_correction`) multiply the policy term, not the KL, as TRL's. Returns the loss and detached
    statistics.
    """
    mask = mask.float()
    old = logps.detach() if old_logps is None else old_logps
    log_ratio = logps - old
    if importance_sampling_level == "sequence":
        log_ratio = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    elif importance_sampling_level != "token":
        raise ValueError("importance_sampling_level must be 'token' or 'sequence'")
    ratio = torch.exp(log_ratio)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    per_token = -torch.min(ratio * adv, clipped * adv)
    if sampling_weights is not None:
        per_token = per_token * sampling_weights
    kl = None
    if beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta != 0 needs ref_logps")
        kl = torch.exp(ref_logps - logps) - (ref_logps - logps) - 1  # k3, >= 0
        if bias_correction_kl:
            # The KL is estimated on samples of the rollout policy: weight it by the (unclipped) importance ratio,
            # as TRL's use_bias_correction_kl (its default). On-policy the value is unchanged but the gradient
            # gains kl * grad(logp).
            kl = kl * ratio
        per_token = per_token + beta * kl
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("dr_grpo needs max_completion_length")
        loss = (per_token * mask).sum() / (per_token.size(0) * max_completion_length)
    elif loss_type == "dapo":
        total = mask.sum() if num_items is None else torch.as_tensor(num_items, dtype=mask.dtype)
        loss = (per_token * mask).sum() / total.clamp(min=1.0)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}")
    with torch.no_grad():
        token_mask = mask if importance_sampling_level == "token" else mask.sum(-1, keepdim=True).clamp(max=1.0)
        is_clipped = ((ratio < 1 - epsilon_low) & (adv < 0)) | ((ratio > 1 + epsilon_high) & (adv > 0))
        stats = {
            "clipfrac": masked_mean(is_clipped.float().expand_as(token_mask), token_mask),
            # CleanRL's approx_kl: E[(ratio - 1) - log ratio]
            "approx_kl": masked_mean(((ratio - 1) - log_ratio).expand_as(token_mask), token_mask),
            "ratio": masked_mean(ratio.expand_as(token_mask), token_mask),
        }
        if kl is not None:
            stats["kl"] = masked_mean(kl, mask)
    return loss, stats


class GRPOTrainer(RLTrainer):
    """GRPO against a SearchGym environment (see the module docstring; config: :class:`GRPOConfig`)."""

    algorithm = "grpo"

    def __init__(self, config: GRPOConfig, **kwargs):
        super().__init__(config, **kwargs)

    def uses_reference(self) -> bool:
        return self.config.beta != 0.0

    def update(self, episodes) -> dict[str, float]:
        config = self.config
        device = self.device
        parallel, local_n = self.parallel, len(episodes)
        rewards = torch.tensor([e.reward for e in episodes], dtype=torch.float32)
        # Data parallel: rank r holds episodes offset..offset+local_n of the global batch (whole groups). The
        # advantages are computed on every rank's rewards, so 'batch' scaling uses the global std.
        rewards = parallel.all_gather(rewards)
        offset = parallel.rank * local_n
        advantages = group_advantages(rewards, config.group_size, config.scale_rewards)
        advantages = advantages[offset : offset + local_n].to(device)
        batch = collate(episodes, self.tokenizer.pad_token_id).to(device)
        chunks = self.forward_chunks(len(episodes))
        # With one pass the batch is on-policy: the ratio is exp(logp - logp.detach()) = 1, as in TRL.
        # Rollouts from another engine (vLLM: other kernels, bf16) than the policy: TRL's correction needs the policy's
        # own log-probabilities of the sampled tokens, one more no-grad forward.
        correct = self.corrects_sampler
        policy_logps = (score_logprobs(self.model, batch, chunks, config.temperature)
                        if config.num_iterations > 1 or correct else None)
        old_logps = policy_logps if config.num_iterations > 1 else None
        weights = self.sampler_weights(policy_logps, batch) if correct else None
        ref_logps = score_logprobs(self.reference, batch, chunks, config.temperature) if config.beta else None
        eps_high = config.epsilon if config.epsilon_high is None else config.epsilon_high
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        self.model.train()
        for iteration in range(config.num_iterations):
            # Minibatches of the global batch (the single-process ones); each rank takes its rows of each.
            for global_rows in self.minibatches(local_n * parallel.world_size, self.step, iteration):
                rows = [i - offset for i in global_rows if offset <= i < offset + local_n]
                # A rank without rows in this minibatch still runs a (zero-weight) backward: DDP's gradient
                # all-reduce needs every rank.
                placeholder = not rows
                rows = rows or [0]
                # The minibatch's normaliser (its episodes or tokens over every rank): each forward/backward pass
                # of forward_batch_size rows adds its share of the minibatch loss to the accumulated gradient, so
                # one optimiser step sees the whole minibatch whatever the pass size. DDP averages the ranks'
                # gradients (divides by world_size), so each share is also scaled by world_size.
                local_tokens = batch.loss_mask[rows].sum() * (0.0 if placeholder else 1.0)
                global_tokens = parallel.all_reduce_sum(local_tokens) if parallel.enabled else local_tokens
                world = parallel.world_size if parallel.enabled else 1
                minibatch_loss, chunk_stats = 0.0, []
                passes = self.forward_chunks(len(rows))
                for n_pass, chunk in enumerate(passes):
                    # Under DDP only a minibatch's last pass all-reduces (the others accumulate locally): a rank
                    # holding more rows of it makes more passes, but every rank syncs exactly once.
                    last = n_pass == len(passes) - 1
                    with contextlib.nullcontext() if last or not parallel.enabled else self.train_model.no_sync():
                        part = [rows[i] for i in chunk]
                        sub = batch.select(part)
                        index = torch.as_tensor(part, device=device)
                        logps, entropy, _ = token_logprobs(self.train_model, sub.input_ids, sub.attention_mask,
                                                           temperature=config.temperature, with_entropy=True,
                                                           first_position=first_loss_position(sub.loss_mask),
                                                           entropy_every=config.entropy_every)
                        chunk_tokens = sub.loss_mask.sum()
                        if placeholder:
                            scale = 0.0
                        elif config.loss_type in ("grpo", "dr_grpo"):  # the pass's loss divides by its episodes
                            scale = len(part) / len(global_rows) * world
                        elif config.loss_type == "bnpo":  # ... by its tokens
                            scale = float(chunk_tokens.clamp(min=1.0) / global_tokens.clamp(min=1.0)) * world
                        else:  # dapo divides by the minibatch's tokens over every rank already
                            scale = float(world)
                        loss, stats = grpo_loss(
                            logps,
                            None if old_logps is None else old_logps[index],
                            None if ref_logps is None else ref_logps[index],
                            advantages[index],
                            sub.loss_mask,
                            epsilon_low=config.epsilon,
                            epsilon_high=eps_high,
                            beta=config.beta,
                            loss_type=config.loss_type,
                            importance_sampling_level=config.importance_sampling_level,
                            max_completion_length=config.max_response_tokens,
                            # dapo divides by the tokens of one optimiser step's batch (TRL: of its accumulation window)
                            num_items=global_tokens if config.loss_type == "dapo" else None,
                            bias_correction_kl=config.use_bias_correction_kl,
                            sampling_weights=None if weights is None else weights[index],
                        )
                        (loss * scale).backward()
                        # the minibatch's loss as one process computes it (on a single process the scales sum to 1)
                        minibatch_loss += float(loss.detach()) * scale / world
                        if not placeholder:
                            stats = {k: float(v) for k, v in stats.items()}
                            stats["entropy"] = float(sampled_mean(entropy, sub.loss_mask))
                            chunk_stats.append(stats)
                grad_norm = self.clip_and_step()
                if placeholder:  # its loss is 0 and the gradient norm the job's; its other statistics are no data
                    stats = {"policy_loss": 0.0, "grad_norm": grad_norm}
                else:
                    stats = {k: sum(c[k] for c in chunk_stats) / len(chunk_stats) for k in chunk_stats[0]}
                    stats.update(policy_loss=minibatch_loss * world, grad_norm=grad_norm)
                for key, value in stats.items():
                    sums[key] = sums.get(key, 0.0) + value
                    counts[key] = counts.get(key, 0) + 1
        metrics = {f"losses/{k}": v / max(1, counts[k]) for k, v in sums.items()}
        metrics["charts/advantage_abs"] = float(advantages.abs().mean())
        if correct:
            metrics.update(sampler_metrics(policy_logps, batch.sampler_logprobs, weights, batch.loss_mask))
        metrics["charts/reward_std"] = float(rewards.std()) if len(rewards) > 1 else 0.0  # of the global batch
        return metrics
