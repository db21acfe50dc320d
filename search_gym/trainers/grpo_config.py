"""GRPO configuration (TRL-style: one field per knob, each with its help string)."""

from __future__ import annotations

from dataclasses import dataclass

from search_gym.trainers.config import RLConfig, _help

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
SCALE_REWARDS = ("group", "batch", "none")


@dataclass
class GRPOConfig(RLConfig):
    """Group-relative policy optimisation over multi-turn search episodes.

    The loss matches TRL's ``GRPOTrainer`` for the same settings (``tests/test_trainers.py`` checks it on a fixed
    batch): clipped importance ratio per policy token, k3 KL to the frozen starting model, and the aggregation of
    ``loss_type`` (``grpo``: mean over each episode's tokens then over episodes; ``bnpo``: mean over all tokens;
    ``dr_grpo``: sum over tokens / (episodes x max_response_tokens); ``dapo``: sum over tokens / tokens in the
    whole rollout batch).
    """

    output_dir: str = _help("run folder: checkpoints, logs (TensorBoard, metrics.csv), config.json", default="runs/grpo")
    beta: float = _help("KL coefficient to the frozen starting model (k3 estimator); 0 loads no reference", default=0.01)
    epsilon: float = _help("lower clip range of the importance ratio (1 - epsilon)", default=0.2)
    epsilon_high: float | None = _help("upper clip range (1 + epsilon_high; DAPO's clip-higher); default epsilon",
                                       default=None)
    loss_type: str = _help("aggregation: grpo, bnpo, dr_grpo (Dr. GRPO) or dapo", default="grpo")
    scale_rewards: str = _help("divide advantages by the reward std of the group, of the batch, or not (none; "
                               "Dr. GRPO)", default="group")
    importance_sampling_level: str = _help("'token' ratios or one 'sequence' ratio per episode (GSPO)", default="token")
    use_bias_correction_kl: bool = _help("weight the k3 KL by the importance ratio (TRL's default)", default=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, not {self.loss_type!r}")
        if self.scale_rewards not in SCALE_REWARDS:
            raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, not {self.scale_rewards!r}")
        if self.importance_sampling_level not in ("token", "sequence"):
            raise ValueError("importance_sampling_level must be 'token' or 'sequence'")
        if self.group_size < 2:
            raise ValueError("GRPO needs group_size >= 2 (advantages are relative to the group)")
