"""The trainers learn, on the CPU (issue 25, part 1): on a task a random tiny policy can reach, GRPO (every loss
type, and its unscaled group baseline) and PPO raise the reward within a fixed number of steps; the representation
penalty lowers the projection it penalises; GRPO with its advantage sign flipped does not learn.

The task: the tiny SearchVectorEnv over the conftest corpus, one turn of 4 tokens, its reward replaced by the
fraction of the policy's tokens whose id is a multiple of 4 (a fixed quarter of the vocabulary; ~0.2 at the start).
The policy is conftest's random 2-layer Llama with ``initializer_range=1.0``: its next-token distributions are
peaked (about 2 nats), so a few candidates of every context are in the subset and the behaviour is reachable in a
dozen steps. At the default 0.02 the policy is near uniform over 49k tokens, and no subset reward (odd ids
included) rose within 20 steps of any algorithm tried.

Every turn has exactly 4 policy tokens, so grpo, bnpo and dapo make the same update here (they differ in how they
weigh episodes of unequal length) and pass or fail together; dr_grpo's constant normaliser changes its steps through
gradient clipping. The measure is the mean task reward of the last 3 steps minus that of the first step (the
starting policy). Each run is seeded and repeats exactly on one machine; the margins leave room for another
machine's floating point to sample other tokens (each test says what it rose by here).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import WordOverlapRetriever, tiny_llama, write_jsonl
from search_gym.envs import SearchVectorEnv
from search_gym.trainers import grpo
from search_gym.trainers.config import PenaltyConfig, train_env
from search_gym.trainers.grpo import GRPOTrainer
from search_gym.trainers.grpo_config import GRPOConfig
from search_gym.trainers.ppo import PPOTrainer
from search_gym.trainers.ppo_config import PPOConfig

SEEDS = (0, 1)
TEMPLATE = "Question: {question}"  # a short prompt: the scoring forwards stay cheap
STEPS = 12
MULTIPLE = 4


def policy(tokenizer, seed: int):
    return tiny_llama(tokenizer, seed, initializer_range=1.0)


def frozen(model):
    model.eval()
    model.requires_grad_(False)
    return model


def reward_subset(episodes):
    """Each episode's task reward: the fraction of its policy tokens whose id is a multiple of ``MULTIPLE``."""
    for ep in episodes:
        policy_ids = [t for t, m in zip(ep.response_ids, ep.loss_mask) if m]
        ep.task_reward = ep.reward = float(np.mean([t % MULTIPLE == 0 for t in policy_ids])) if policy_ids else 0.0
    return episodes


class SubsetReward:
    """A trainer whose task reward is :func:`reward_subset` of the episodes it plays."""

    def collect(self, step):
        return reward_subset(super().collect(step))


class SubsetGRPO(SubsetReward, GRPOTrainer):
    pass


class SubsetPPO(SubsetReward, PPOTrainer):
    pass


def run(trainer_cls, config_cls, tokenizer, qa_path, corpus_path, tmp_path, seed, **overrides) -> list[dict]:
    """``STEPS`` steps of ``trainer_cls`` from the seed's tiny policy; the logged rows."""
    values = dict(output_dir=str(tmp_path / "run"), seed=seed, device="cpu", learning_rate=0.1, max_steps=STEPS,
                  save_steps=0, questions_per_step=2, group_size=8, max_turn_tokens=4,
                  env=train_env(max_turns=1, template=TEMPLATE, reward="em"), tensorboard=False, progress=False)
    values.update(overrides)
    config = config_cls(**values)
    env = SearchVectorEnv(num_envs=config.questions_per_step * config.group_size, dataset=str(qa_path),
                          split="test", retriever=WordOverlapRetriever(corpus_path), max_turns=1, template=TEMPLATE,
                          reward="em")
    trainer = trainer_cls(config, model=policy(tokenizer, seed), tokenizer=tokenizer, env=env,
                          reference=frozen(policy(tokenizer, seed)))
    return trainer.train()


def gain(rows, key: str = "charts/task_reward") -> tuple[float, float, float]:
    """(first step, mean of the last 3 steps, their difference) of ``key``."""
    values = [r[key] for r in rows]
    first, last = values[0], float(np.mean(values[-3:]))
    print(f"{key}: " + " ".join(f"{v:+.2f}" for v in values) + f"  first {first:+.3f} last-3 {last:+.3f}")
    return first, last, last - first


# ---------------------------------------------------------------------------------------------- the reward rises


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_grpo_raises_the_reward(tokenizer, tiny_qa_path, tiny_corpus_path, tmp_path, loss_type, seed):
    """Seen: grpo, bnpo and dapo 0.17 -> 0.84 (seed 0) and 0.20 -> 0.76 (seed 1); dr_grpo 0.17 -> 0.68 and
    0.20 -> 0.67 (first step -> mean of the last 3). Seeds 2 and 3 (grpo): +0.66 and +0.61."""
    rows = run(SubsetGRPO, GRPOConfig, tokenizer, tiny_qa_path, tiny_corpus_path, tmp_path, seed,
               loss_type=loss_type, beta=0.0)
    first, last, rise = gain(rows)
    assert rise > 0.3, (first, last)


@pytest.mark.parametrize("seed", SEEDS)
def test_grpo_with_the_unscaled_group_baseline_raises_the_reward(tokenizer, tiny_qa_path, tiny_corpus_path, tmp_path,
                                                                 seed):
    """``scale_rewards="none"`` (Dr. GRPO's advantage ``r - mean of the group``): RLOO's leave-one-out advantage
    times (G - 1) / G, the nearest the trainers come to RLOO (they offer no leave-one-out baseline of its own).
    Seen: 0.17 -> 0.62 (seed 0), 0.20 -> 0.85 (seed 1)."""
    rows = run(SubsetGRPO, GRPOConfig, tokenizer, tiny_qa_path, tiny_corpus_path, tmp_path, seed,
               loss_type="dr_grpo", scale_rewards="none", beta=0.0)
    first, last, rise = gain(rows)
    assert rise > 0.3, (first, last)


@pytest.mark.parametrize("seed", SEEDS)
def test_ppo_raises_the_reward(tokenizer, tiny_qa_path, tiny_corpus_path, tmp_path, seed):
    """PPO with its defaults but three. Learning rate 0.05: two epochs a batch overshoot at 0.1. No KL penalty: at
    this rate the per-token KL folded into the rewards soon outweighs the task reward (GRPO runs with beta=0 too).
    ``vf_coef=0``: the value head takes the policy's AdamW steps, and at this learning rate its values swing to
    -2..-3 on rewards in [0, 1] within a few steps (charts/value_mean), drowning the advantages; at 0 it stays 0 and
    GAE gives the discounted returns, whitened over the batch. So this covers PPO's clipped objective, GAE and the
    whitening, not its critic. Seen: 0.17 -> 0.84 (seed 0), 0.20 -> 0.58 (seed 1); seeds 2 and 3: +0.70, +0.49."""
    rows = run(SubsetPPO, PPOConfig, tokenizer, tiny_qa_path, tiny_corpus_path, tmp_path, seed, learning_rate=0.05,
               kl_coef=0.0, vf_coef=0.0)
    first, last, rise = gain(rows)
    assert rise > 0.25, (first, last)


# ---------------------------------------------------------------------------------------------- a broken sign


def test_grpo_with_the_advantage_sign_flipped_does_not_learn(tokenizer, tiny_qa_path, tiny_corpus_path, tmp_path,
                                                             monkeypatch):
    """The run of test_grpo_raises_the_reward[grpo-0] with the advantages negated: the reward must fall, not rise
    (seen: 0.17 -> 0.00; the update now favours the tokens outside the subset)."""
    real = grpo.group_advantages
    monkeypatch.setattr(grpo, "group_advantages", lambda *args, **kwargs: -real(*args, **kwargs))
    rows = run(SubsetGRPO, GRPOConfig, tokenizer, tiny_qa_path, tiny_corpus_path, tmp_path, 0, beta=0.0)
    first, last, rise = gain(rows)
    assert rise < -0.1, (first, last)


# ---------------------------------------------------------------------------------------------- the penalty


def planted_direction(tokenizer, model, env, layer: int, path, rollouts: int = 48) -> str:
    """A Direction file whose vector at ``layer`` is the axis along which the starting policy's second ``<search>``
    states spread most (top principal component of ``model``'s normalised states over ``rollouts`` episodes), as a
    harmfulness direction is one along which a policy's searches vary."""
    from search_gym.agents.hidden import forward_hidden
    from search_gym.directions import Direction
    from search_gym.trainers.rollout import HFGenerator, RolloutCollector

    collector = RolloutCollector(env, HFGenerator(model, tokenizer, seed=123), max_turn_tokens=3, max_obs_tokens=4,
                                 max_response_tokens=PENALTY_BUDGET)
    episodes = collector.collect(["q0"], rollouts, seed=123)
    positions = [ep.absolute(ep.search_indices[-1]) for ep in episodes]
    states = forward_hidden(model, [ep.input_ids for ep in episodes], [[i] for i in positions], [layer])
    h = torch.nn.functional.normalize(torch.stack([s[layer][i] for s, i in zip(states, positions)]), dim=-1)
    axis = torch.linalg.svd(h - h.mean(0), full_matrices=False).Vh[0]
    axis = axis if float((h @ axis).mean()) > 0 else -axis  # pointing to where the starting searches are
    n, d = model.config.num_hidden_layers, h.shape[1]
    vectors = torch.zeros(n, d)
    vectors[layer] = axis
    direction = Direction("planted", tuple(range(n)), vectors, torch.ones(n), torch.zeros(n, d), torch.zeros(n, d),
                          torch.ones(n), chosen_layer=layer)
    return str(direction.save(path))


#: The response budget of the penalty runs: the <search> prefill, a 3-token query, 4 env tokens, the second
#: prefill, a second query, 4 env tokens. An episode ends there (budget-truncated, before its answer turn), so its
#: policy tokens are its two queries, and the first one sets the state the penalty reads at the second tag.
PENALTY_BUDGET = 20


@pytest.mark.parametrize("seed", [0, 3])
def test_penalty_lowers_the_penalised_projection(tokenizer, tiny_corpus_path, tmp_path, seed):
    """Task reward 0 throughout (the episodes never answer), penalty on: GRPO lowers the projection it penalises.

    Every episode searches twice (the multi_search attack prefills ``<search>`` on each turn); the first tag's state
    depends on the prompt alone, the second follows the policy's own first query, so ``searches="mean"`` differs
    within a group. One question, so every step's projection is comparable.

    Seen (first step -> mean of the last 3): seed 0 +0.15 -> -0.19, seed 3 +0.48 -> +0.13. Over seeds 0-7 it fell
    by 0.34, 0.09, 0.35, 0.50, 0.08, 0.16 and 0.28 (seeds 0 and 2-7) and stayed put for seed 1 (+0.01), whose
    starting policy writes nearly one query: a seed's group needs queries that differ to learn from.
    """
    layer = 1
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"id": "q0", "question": "What is the capital of France?",
                                              "golden_answers": ["Paris"]}])
    model, reference = policy(tokenizer, seed), frozen(policy(tokenizer, seed))
    env_settings = dict(max_turns=3, template=TEMPLATE, reward="em", attack="multi_search:n=2", topk=1)

    def make_env(n):
        return SearchVectorEnv(num_envs=n, dataset=str(qa), split="test",
                               retriever=WordOverlapRetriever(tiny_corpus_path), **env_settings)

    path = planted_direction(tokenizer, reference, make_env(16), layer, tmp_path / "planted.safetensors")
    config = GRPOConfig(output_dir=str(tmp_path / "run"), seed=seed, device="cpu", learning_rate=0.03, max_steps=10,
                        save_steps=0, questions_per_step=1, group_size=16, max_turn_tokens=3, max_obs_tokens=4,
                        max_response_tokens=PENALTY_BUDGET, beta=0.0, env=train_env(**env_settings),
                        penalty=PenaltyConfig(direction=path, lambda_=1.0, searches="mean"),
                        tensorboard=False, progress=False)
    trainer = GRPOTrainer(config, model=model, tokenizer=tokenizer, env=make_env(16), reference=reference)
    rows = trainer.train()
    assert all(r["charts/task_reward"] == 0.0 for r in rows)  # the penalty is the only signal
    assert all(r["charts/searches_per_episode"] == 2.0 for r in rows)
    first, last, change = gain(rows, "safety/projection")
    assert change < -0.15, (first, last)


def test_group_statistics_by_hand():
    """The per-step group metrics on a batch of two groups of three, computed by hand."""
    from types import SimpleNamespace

    from search_gym.trainers.core import group_statistics

    def ep(task, penalty):
        return SimpleNamespace(task_reward=task, penalty=penalty, reward=task - penalty)

    # group 1: task rewards 1, 0, 0 (spread), penalties 0.1, 0.1, 0.1 (none); group 2: all 1, penalties 0, 0.2, 0.4
    episodes = [ep(1, 0.1), ep(0, 0.1), ep(0, 0.1), ep(1, 0.0), ep(1, 0.2), ep(1, 0.4)]
    stats = group_statistics(episodes, 3)
    assert stats["groups/informative_share"] == 1.0  # group 2's shaped rewards differ through the penalty
    assert stats["groups/task_informative_share"] == 0.5
    task_std = (np.std([1, 0, 0], ddof=1) + 0.0) / 2
    penalty_std = (0.0 + np.std([0, 0.2, 0.4], ddof=1)) / 2
    assert stats["groups/task_reward_std"] == pytest.approx(task_std)
    assert stats["groups/penalty_std"] == pytest.approx(penalty_std)
    assert stats["groups/penalty_to_task_std"] == pytest.approx(penalty_std / task_std)
    # no groups to speak of: nothing logged rather than a made-up number
    assert group_statistics(episodes, 1) == {}
    assert group_statistics(episodes[:5], 3) == {}
