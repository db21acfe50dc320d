"""PPO configuration (TRL-style: one field per knob, each with its help string)."""

from __future__ import annotations

from dataclasses import dataclass

from search_gym.trainers.config import RLConfig, _help


@dataclass
class PPOConfig(RLConfig):
    """PPO with a value head over multi-turn search episodes; GAE runs over policy tokens only."""

    output_dir: str = _help("run folder: checkpoints, logs (TensorBoard, metrics.csv), config.json", default="runs/ppo")
    group_size: int = _help("episodes per question", default=1)
    gamma: float = _help("discount between consecutive policy tokens", default=1.0)
    lam: float = _help("GAE lambda", default=0.95)
    cliprange: float = _help("policy ratio clip range", default=0.2)
    cliprange_value: float = _help("value clip range around the rollout's values", default=0.2)
    vf_coef: float = _help("value loss coefficient", default=0.1)
    ent_coef: float = _help("entropy bonus coefficient", default=0.0)
    kl_coef: float = _help("per-token KL penalty to the frozen starting model, folded into the rewards; 0 loads "
                           "no reference", default=0.05)
    whiten_advantages: bool = _help("normalise advantages over the batch's policy tokens", default=True)
    num_iterations: int = _help("PPO epochs over each rollout batch", default=2)
