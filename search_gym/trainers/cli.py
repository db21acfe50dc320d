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
    size = algos.add_parser("size-lambda", help="the penalty's lambda from a probe run (issue 27, part 4)",
                            description="Reads RUN/metrics.csv and RUN/config.json of a GRPO run made with the "
                            "penalty on (a probe at learning rate 0 on validation questions) and prints the lambda "
                            "for which lambda x the within-group std of the projection is TARGET x the within-group "
                            "std of the task reward (docs/grpo_sweep.md).")
    size.add_argument("run", help="the probe run's output_dir")
    size.add_argument("--target", type=float, default=0.35, help="wanted ratio, within the band 0.2-0.5")
    size.set_defaults(func=_size_lambda)


def _size_lambda(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from search_gym.trainers.core import read_metrics
    from search_gym.trainers.shaping import size_lambda

    run = Path(args.run)
    for name in ("metrics.csv", "config.json"):
        if not (run / name).is_file():
            raise SystemExit(f"size-lambda: {run / name} does not exist (the output_dir of a GRPO run with the "
                             "penalty on)")
    rows = read_metrics(run / "metrics.csv")
    config = json.loads((run / "config.json").read_text())
    penalty = config.get("penalty") or {}  # nested ({"lambda": ...}); runs before 2026-12 wrote penalty_lambda
    lambda_used = float(penalty.get("lambda", penalty.get("lambda_", config.get("penalty_lambda", 0.0))) or 0.0)
    try:
        sized = size_lambda(rows, lambda_used, target=args.target, relu=bool(penalty.get("relu", False)))
    except ValueError as err:
        raise SystemExit(f"size-lambda: {err}") from None
    lo, hi = sized["band"]
    print(f"size-lambda: {sized['steps']} steps of {run}: within-group std of the task reward "
          f"{sized['task_reward_std']:.4f}, of the projection {sized['projection_std']:.5f} "
          f"(ratio {sized['ratio_at_lambda_used']:.3f} at the probe's lambda {lambda_used:g})")
    print(f"lambda = {sized['lambda']:.4g} (ratio {sized['target']}); the band 0.2-0.5 is lambda {lo:.4g}-{hi:.4g}")
    return 0


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
