"""``search-gym train {sft,grpo,ppo}``: flags generated from the config dataclasses, ``--config x.yaml`` first."""

from __future__ import annotations

import argparse
import importlib

from search_gym.configs import add_config_parser
from search_gym.trainers.config import build_config

# algorithm -> (config module, config class, trainer module, trainer class, one-line help)
ALGORITHMS = {
    "sft": ("sft_config", "SFTConfig", "sft", "SFTTrainer",
            "SFT warm start: oracle trajectories, refusals on harmful prompts, helpful edgy answers"),
    "grpo": ("grpo_config", "GRPOConfig", "grpo", "GRPOTrainer",
             "GRPO on multi-turn search episodes (optionally representation-guided)"),
    "ppo": ("ppo_config", "PPOConfig", "ppo", "PPOTrainer",
            "PPO with a value head and GAE over policy tokens (optionally representation-guided)"),
}


def _load(module: str, name: str):
    return getattr(importlib.import_module(f"search_gym.trainers.{module}"), name)


def add_train_parser(sub) -> None:
    train = sub.add_parser("train", help="train a policy against the environment: sft, grpo or ppo",
                           description="Every flag is a field of the algorithm's config dataclass; --config reads a "
                           "YAML/JSON file of the same fields first, and flags given on the command line win.")
    algos = train.add_subparsers(dest="algorithm", required=True)
    for algo, (config_module, config_name, _, _, help_text) in ALGORITHMS.items():
        config_cls = _load(config_module, config_name)
        add_config_parser(algos, algo, config_cls, _run, help=help_text,
                          description=(config_cls.__doc__ or "").strip())


def _run(args: argparse.Namespace) -> int:
    config_module, config_name, trainer_module, trainer_name, _ = ALGORITHMS[args.algorithm]
    config = build_config(_load(config_module, config_name), args, args.config)
    trainer = _load(trainer_module, trainer_name)(config)
    rows = trainer.train()
    last = rows[-1] if rows else {}
    shown = {k: round(v, 4) for k, v in last.items() if isinstance(v, float)}
    print(f"{args.algorithm}: {trainer.step if hasattr(trainer, 'step') else ''} steps done in {config.output_dir}")
    if shown:
        print("last step: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    return 0
