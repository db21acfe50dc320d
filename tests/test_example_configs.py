"""Every trainer and study config in examples/configs/ builds into its dataclass (a renamed or removed field, or a
wrong type, fails here rather than on a user's machine), and the teaching run's config asks for what its docs say."""

from __future__ import annotations

from pathlib import Path

import pytest

from search_gym.configs import build_config
from search_gym.experiments.algorithms import AlgorithmComparisonConfig
from search_gym.experiments.study import StudyConfig
from search_gym.trainers.grpo_config import GRPOConfig
from search_gym.trainers.sft_config import SFTConfig

CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "configs"
CLASSES = {"sft_": SFTConfig, "grpo_": GRPOConfig, "study_": StudyConfig, "algorithms_": AlgorithmComparisonConfig}  # trl_*: the TRL example script's own


@pytest.mark.parametrize("path", sorted(p for p in CONFIGS.glob("*.yaml") if not p.name.startswith("trl_")),
                         ids=lambda p: p.name)
def test_example_config_builds(path):
    cls = next(c for prefix, c in CLASSES.items() if path.name.startswith(prefix))
    config = build_config(cls, file=path)
    assert isinstance(config, cls)


def test_teaching_config_is_a_small_cpu_run_from_the_aligned_agent():
    config = build_config(GRPOConfig, file=CONFIGS / "grpo_teach_cpu.yaml")
    assert config.model == "smollm2-aligned" and config.device == "cpu" and config.lora_r > 0
    assert config.max_questions == config.questions_per_step  # the same questions every step: the curve is theirs
    assert config.env.reward == "f1" and config.beta == 0.0 and config.forward_batch_size > 0
