"""How much signal GRPO's groups would carry from a starting model, without training it (issue 27's last rule line).

Builds the GRPO trainer of a config exactly as `search-gym train grpo` does, plays one step's rollout (the questions of
step 0, ``group_size`` samples each at the config's temperature) and prints the group statistics the trainer logs
(``groups/informative_share``: the share of groups whose rewards are not all equal, the only groups with a non-zero
group-relative advantage), with a bootstrap interval over groups. Nothing is updated.

    python benchmarks/probe_groups.py --model /tmp/r64_merged --dataset /tmp/sft_aligned/dev/qa.jsonl \
        --questions 64 --group-size 8 --temperature 1.0 --device cpu --out probe.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "examples/configs/grpo_aligned_lora.yaml"),
                        help="GRPO config whose env, reward and turn settings the rollout uses")
    parser.add_argument("--model", required=True, help="starting model: a folder, hub id, smollm2 or smollm2-aligned")
    parser.add_argument("--dataset", default=None, help="question file (default: the config's env dataset)")
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--num-envs", type=int, default=64, help="episodes generated together (memory: the KV cache)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the statistics here as JSON")
    args = parser.parse_args(argv)

    from search_gym.configs import build_config
    from search_gym.stats import bootstrap_ci
    from search_gym.trainers.core import group_statistics
    from search_gym.trainers.grpo import GRPOTrainer
    from search_gym.trainers.grpo_config import GRPOConfig

    env = {"dataset": args.dataset} if args.dataset else {}
    with tempfile.TemporaryDirectory() as scratch:
        config = build_config(GRPOConfig, file=args.config, model=args.model, env=env, output_dir=scratch,
                              questions_per_step=args.questions, group_size=args.group_size, num_envs=args.num_envs,
                              temperature=args.temperature, seed=args.seed, beta=0.0, lora_r=0, max_steps=1,
                              save_steps=0, tensorboard=False, progress=False, plots=False,
                              **({"device": args.device} if args.device else {}))
        trainer = GRPOTrainer(config)
        t0 = time.perf_counter()
        episodes = trainer.rollout(0).episodes
        seconds = time.perf_counter() - t0
    stats = group_statistics(episodes, args.group_size)
    task = np.asarray([e.task_reward for e in episodes]).reshape(-1, args.group_size)
    informative = (np.ptp(task, axis=1) > 1e-8).astype(float)
    result = {
        "model": args.model, "dataset": args.dataset or config.env.dataset, "questions": len(task),
        "group_size": args.group_size, "temperature": args.temperature, "reward": config.env.reward,
        "seed": args.seed, "seconds": round(seconds, 1), **stats,
        "task_informative_share_ci": bootstrap_ci(informative.tolist(), n_boot=2000, seed=0),
        "mean_task_reward": float(task.mean()), "groups_all_correct": float((task.min(axis=1) > 0).mean()),
        "groups_all_wrong": float((task.max(axis=1) <= 0).mean()),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
