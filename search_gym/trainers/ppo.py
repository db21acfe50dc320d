"""PPO on multi-turn search episodes, read top to bottom (in the spirit of CleanRL's ``ppo.py``).

One step:
1. Roll out episodes token-in/token-out; environment tokens (passages, correction messages, prefills) have loss
   weight 0 and are not time steps: the MDP's steps are the policy's tokens only.
2. Optional representation-guided shaping of the episode reward (``r_task - lambda * p(h)``).
3. Score the batch once without gradients: the rollout policy's log-probabilities (the ratio's denominator), the
   frozen reference's (per-token KL penalty ``-kl_coef * (logp - logp_ref)``) and the value head's values. When
   another engine sampled the batch (vLLM), TRL's importance weights ``exp(logp - logp_sampler)`` correct the
   policy loss for the mismatch (``vllm.importance_sampling_*``, shared with GRPO).
4. Rewards per policy token: the KL penalty at every token plus the episode reward at the last policy token.
   GAE(gamma, lambda) runs backwards over the policy tokens of each episode, skipping environment tokens.
5. ``num_iterations`` epochs of minibatches: clipped policy loss, clipped value loss, entropy bonus.

The value head is a linear layer on the policy's final hidden state (after the final norm) at each position; it is
saved and restored with checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from search_gym.trainers.base import RLTrainer
from search_gym.trainers.core import collate, masked_mean, sampled_mean, sampler_metrics, token_logprobs
from search_gym.trainers.ppo_config import PPOConfig


class ValueHead(torch.nn.Module):
    def __init__(self, hidden_size: int):
        super().__init__()
        self.summary = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.summary.weight)
        torch.nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden.float()).squeeze(-1)


def gae_over_mask(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Advantages and returns ``[B, T]`` where only positions with ``mask == 1`` are time steps.

    Masked positions (environment tokens, prompt, padding) are skipped, not treated as zero-reward steps: the
    value after the last policy token of an episode is 0 (the episode ends).
    """
    advantages = torch.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        steps = torch.nonzero(mask[b] > 0).flatten().tolist()
        next_value, running = 0.0, 0.0
        for t in reversed(steps):
            delta = float(rewards[b, t]) + gamma * next_value - float(values[b, t])
            running = delta + gamma * lam * running
            advantages[b, t] = running
            next_value = float(values[b, t])
    returns = advantages + values
    return advantages * mask, returns * mask


@dataclass
class _Scored:
    old_logps: torch.Tensor
    old_values: torch.Tensor
    ref_logps: torch.Tensor | None


class PPOTrainer(RLTrainer):
    """PPO against a SearchGym environment (see the module docstring; config: :class:`PPOConfig`)."""

    algorithm = "ppo"

    def __init__(self, config: PPOConfig, **kwargs):
        super().__init__(config, **kwargs)

    def uses_reference(self) -> bool:
        return self.config.kl_coef != 0.0

    def setup(self) -> None:
        if self.parallel.enabled:
            # Not yet: the value head is outside the DDP module (its gradients would not be averaged) and the
            # token means and advantage whitening are per rank. GRPO is data parallel.
            raise NotImplementedError("PPOTrainer runs in one process; use GRPO for accelerate data-parallel "
                                      "training")
        hidden = self.model.config.get_text_config().hidden_size if hasattr(self.model.config, "get_text_config") \
            else self.model.config.hidden_size
        self.value_head = ValueHead(hidden).to(self.device)

    def extra_parameters(self):
        return list(self.value_head.parameters())

    def modules(self):
        return {"value_head": self.value_head}

    def _forward(self, input_ids, attention_mask, with_entropy=False):
        logps, entropy, hidden = token_logprobs(self.model, input_ids, attention_mask,
                                                temperature=self.config.temperature, with_entropy=with_entropy,
                                                with_hidden=True, entropy_every=self.config.entropy_every)
        values = self.value_head(hidden[:, :-1])  # position t: the state before token t + 1
        return logps, entropy, values

    @torch.no_grad()
    def _score(self, batch) -> _Scored:
        old_logps = torch.zeros_like(batch.loss_mask)
        old_values = torch.zeros_like(batch.loss_mask)
        ref_logps = torch.zeros_like(batch.loss_mask) if self.reference is not None and self.config.kl_coef else None
        for rows in self.forward_chunks(batch.input_ids.shape[0]):
            sub = batch.select(rows)
            index = torch.as_tensor(rows, device=self.device)
            logps, _, values = self._forward(sub.input_ids, sub.attention_mask)
            old_logps[index], old_values[index] = logps, values
            if ref_logps is not None:
                ref, _, _ = token_logprobs(self.reference, sub.input_ids, sub.attention_mask,
                                           temperature=self.config.temperature)
                ref_logps[index] = ref
        return _Scored(old_logps, old_values * batch.loss_mask, ref_logps)

    def update(self, episodes) -> dict[str, float]:
        config, device = self.config, self.device
        batch = collate(episodes, self.tokenizer.pad_token_id).to(device)
        mask = batch.loss_mask
        scored = self._score(batch)
        # Rewards per policy token: KL penalty everywhere, the episode's reward at its last policy token.
        rewards = torch.zeros_like(mask)
        kl = None
        if scored.ref_logps is not None:
            kl = (scored.old_logps - scored.ref_logps) * mask
            rewards = rewards - config.kl_coef * kl
        last = (mask * torch.arange(mask.shape[1], device=device)).argmax(dim=1)
        has_tokens = mask.sum(1) > 0
        episode_reward = torch.tensor([e.reward for e in episodes], dtype=torch.float32, device=device)
        rows = torch.arange(mask.shape[0], device=device)[has_tokens]
        rewards[rows, last[has_tokens]] += episode_reward[has_tokens]
        advantages, returns = gae_over_mask(rewards, scored.old_values, mask, config.gamma, config.lam)
        # Rollouts from another engine (vLLM: other kernels, bf16) than the policy: the clipped ratio is taken
        # against the policy's own scoring of the batch (old_logps), and the sampler/policy mismatch is corrected
        # by TRL's importance weights exp(old_logps - sampler logps), as in GRPO.
        weights = self.sampler_weights(scored.old_logps, batch) if self.corrects_sampler else None
        if config.whiten_advantages and mask.sum() > 1:
            mean = masked_mean(advantages, mask)
            std = torch.sqrt(masked_mean((advantages - mean) ** 2, mask))
            advantages = (advantages - mean) / (std + 1e-8) * mask

        sums: dict[str, float] = {}
        count = 0
        self.model.train()
        for iteration in range(config.num_iterations):
            for rows_ in self.minibatches(len(episodes), self.step, iteration):
                # forward_batch_size splits the minibatch into forward/backward passes whose gradients accumulate:
                # every token mean divides by the whole minibatch's policy tokens, so the passes' losses add up to
                # the one-pass loss and one optimiser step follows (as GRPO's update). The entropy term, when
                # entropy_every > 1 leaves positions out, weighs each pass by its share of the policy tokens.
                tokens = mask[rows_].sum().clamp(min=1.0)
                stats = dict.fromkeys(("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac",
                                       "vf_clipfrac"), 0.0)
                for part in self.forward_chunks(len(rows_)):
                    rows_p = [rows_[i] for i in part]
                    sub = batch.select(rows_p)
                    index = torch.as_tensor(rows_p, device=device)
                    m = sub.loss_mask
                    logps, entropy, values = self._forward(sub.input_ids, sub.attention_mask, with_entropy=True)
                    log_ratio = logps - scored.old_logps[index]
                    ratio = torch.exp(log_ratio)
                    adv = advantages[index]
                    per_token = torch.max(-adv * ratio,
                                          -adv * ratio.clamp(1 - config.cliprange, 1 + config.cliprange))
                    if weights is not None:
                        per_token = per_token * weights[index]
                    pg_loss = (per_token * m).sum() / tokens
                    old_v, ret = scored.old_values[index], returns[index]
                    v_clipped = old_v + (values - old_v).clamp(-config.cliprange_value, config.cliprange_value)
                    vf_loss = 0.5 * (torch.max((values - ret) ** 2, (v_clipped - ret) ** 2) * m).sum() / tokens
                    ent = sampled_mean(entropy, m) * (m.sum() / tokens)
                    loss = pg_loss + config.vf_coef * vf_loss - config.ent_coef * ent
                    loss.backward()
                    with torch.no_grad():
                        stats["policy_loss"] += float(pg_loss)
                        stats["value_loss"] += float(vf_loss)
                        stats["entropy"] += float(ent)
                        stats["approx_kl"] += float((((ratio - 1) - log_ratio) * m).sum() / tokens)
                        stats["clipfrac"] += float((((ratio - 1).abs() > config.cliprange).float() * m).sum() / tokens)
                        stats["vf_clipfrac"] += float((((values - old_v).abs() > config.cliprange_value).float()
                                                       * m).sum() / tokens)
                stats["grad_norm"] = self.clip_and_step()
                for key, value in stats.items():
                    sums[key] = sums.get(key, 0.0) + value
                count += 1
        metrics = {f"losses/{k}": v / max(1, count) for k, v in sums.items()}
        if kl is not None:
            metrics["losses/kl"] = float(kl.sum() / mask.sum().clamp(min=1.0))
        if weights is not None:
            metrics.update(sampler_metrics(scored.old_logps, batch.sampler_logprobs, weights, mask))
        metrics["charts/value_mean"] = float(masked_mean(scored.old_values, mask))
        # Explained variance of the values (CleanRL's losses/explained_variance)
        var_ret = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
        var_res = masked_mean((returns - scored.old_values - masked_mean(returns - scored.old_values, mask)) ** 2, mask)
        metrics["losses/explained_variance"] = float(1 - var_res / var_ret) if var_ret > 0 else float("nan")
        return metrics
