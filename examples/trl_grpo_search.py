"""Train a policy on a SearchGym environment with TRL's GRPOTrainer, through search_gym.integrations.trl.

    python examples/trl_grpo_search.py --config examples/configs/trl_grpo_smollm2.yaml
    python examples/trl_grpo_search.py --model runs/sft_smollm2/final --max-steps 50 --rewards em format
    python examples/trl_grpo_search.py --protocol tool_call --model Qwen/Qwen2.5-0.5B-Instruct
    accelerate launch examples/trl_grpo_search.py --config x.yaml     # several GPUs (TRL's own launcher)

Every flag is a field of ``TRLSearchConfig`` below; ``--config`` reads a YAML/JSON file of the same fields first and
flags given on the command line win. ``protocol=tags`` trains multi-turn Search-R1 episodes token in / token out
through ``rollout_func=SearchRollout(...)``; ``protocol=tool_call`` lets TRL run its tool loop over
``environment_factory=SearchToolEnvironment.factory(...)`` (the tokenizer's chat template must be one TRL parses,
e.g. Qwen2.5; ``--chat-template qwen2_5`` puts TRL's Qwen2.5 template on a ChatML tokenizer such as SmolLM2's).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func / environment_factory are experimental in TRL


def _help(text: str, **kw) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass
class TRLSearchConfig:
    """A TRL GRPO run on a SearchGym environment."""

    model: str = _help("policy: 'smollm2' (bundled), a hub id or a saved folder", default="smollm2")
    output_dir: str = _help("TRL's output folder (checkpoints, logs); the final model goes to <output_dir>/final",
                            default="runs/trl_grpo")
    protocol: str = _help("'tags' (rollout_func, multi-turn tokens) or 'tool_call' (environment_factory)",
                          default="tags")
    env_id: str = _help("registered environment id", default="SearchGym/WikiQA-v0")
    split: str = _help("split of the environment's questions to train on", default="train")
    retriever: str = _help("retriever family: dense or bm25", default="dense")
    limit: int = _help("train on the first N questions (0: all)", default=0)
    max_turns: int = _help("turns per episode", default=4)
    topk: int = _help("passages per search", default=3)
    safety: bool = _help("safety judges on every step (needed by the 'safety' reward)", default=False)
    rewards: tuple[str, ...] = _help("reward functions, summed by TRL: em, task, format, safety", default=("em",))
    reward_weights: tuple[float, ...] = _help("one weight per reward (default: all 1)", default=())
    num_generations: int = _help("GRPO group size G", default=4)
    per_device_train_batch_size: int = _help("completions per device per step (a multiple of G)", default=8)
    gradient_accumulation_steps: int = _help("gradient accumulation steps", default=1)
    max_steps: int = _help("optimiser steps", default=10)
    learning_rate: float = _help("AdamW learning rate", default=1e-6)
    beta: float = _help("k3 KL coefficient to the reference model (0: no reference model)", default=0.0)
    temperature: float = _help("sampling temperature", default=1.0)
    max_completion_length: int = _help("tokens of a whole multi-turn response (policy + environment)", default=512)
    max_turn_tokens: int = _help("tags protocol: new tokens per turn", default=128)
    few_shot: int = _help("tags protocol: worked protocol examples in the prompt (the bundled model needs 2)",
                          default=0)
    chat_template: str | None = _help("tool_call: a TRL chat template to put on the tokenizer (e.g. qwen2_5)",
                                      default=None)
    penalty_lambda: float = _help("representation-guided penalty lambda (tags protocol; 0: off)", default=0.0)
    penalty_direction: str | None = _help("harmful-search Direction file (search-gym directions extract)",
                                          default=None)
    penalty_layer: int | None = _help("layer read for the penalty (default: the direction's chosen layer)",
                                      default=None)
    penalty_source: str = _help("who reads h: 'reference' (frozen starting model) or 'policy'", default="reference")
    penalty_searches: str = _help("'first' <search> or 'mean' over searches", default="first")
    penalty_projection: str = _help("'cosine' or 'dot'", default="cosine")
    penalty_relu: bool = _help("penalise max(0, p) instead of p", default=False)
    use_cpu: bool = _help("train on the CPU even when a GPU is present", default=False)
    bf16: bool = _help("bf16 mixed precision", default=False)
    seed: int = _help("seed of data order and sampling", default=0)
    logging_steps: int = _help("log every N steps", default=1)
    report_to: str = _help("TRL / transformers loggers: none, tensorboard, wandb...", default="none")


def build_trainer(config: TRLSearchConfig):
    """The ``trl.GRPOTrainer`` the config describes (not trained yet)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from search_gym.integrations import trl as bridge

    model = config.model
    if model == "smollm2":
        from search_gym.agents.gguf import ensure_smollm2

        model = str(ensure_smollm2())
    tokenizer = AutoTokenizer.from_pretrained(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if config.chat_template:
        import trl.chat_template_utils as templates

        tokenizer.chat_template = getattr(templates, f"{config.chat_template}_chat_template")
    env_kwargs: dict[str, Any] = dict(split=config.split, retriever=config.retriever, max_turns=config.max_turns,
                                      topk=config.topk, safety=config.safety)
    rewards = {"em": bridge.em_reward, "task": bridge.task_reward, "format": bridge.format_reward,
               "safety": bridge.safety_penalty}
    unknown = sorted(set(config.rewards) - set(rewards))
    if unknown:
        raise ValueError(f"unknown rewards {unknown}; choose from {sorted(rewards)}")
    reward_funcs = [rewards[name] for name in config.rewards]
    limit = config.limit or None
    args = GRPOConfig(
        output_dir=config.output_dir, num_generations=config.num_generations,
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps, max_steps=config.max_steps,
        learning_rate=config.learning_rate, beta=config.beta, temperature=config.temperature,
        max_completion_length=config.max_completion_length, use_cpu=config.use_cpu, bf16=config.bf16,
        seed=config.seed, logging_steps=config.logging_steps, report_to=config.report_to, save_strategy="no",
        reward_weights=list(config.reward_weights) or None,
        # tool_call: leave the policy a turn for its answer inside the env's turn budget
        max_tool_calling_iterations=config.max_turns - 1 if config.protocol == "tool_call" else None,
    )
    if config.protocol == "tags":
        rollout = bridge.SearchRollout(env_id=config.env_id, num_envs=config.per_device_train_batch_size,
                                       few_shot=config.few_shot, max_turn_tokens=config.max_turn_tokens, **env_kwargs)
        penalty = None
        if config.penalty_direction is not None:
            from search_gym.trainers.shaping import load_penalty

            # The reference reader is a frozen copy of the starting model; 'policy' reads the trained one (set below).
            reference = config.penalty_source == "reference"
            reader = AutoModelForCausalLM.from_pretrained(model).eval() if reference else None
            penalty = load_penalty(config, reader)
            reward_funcs.append(bridge.RepresentationPenaltyReward(penalty))
            if args.reward_weights is not None:
                args.reward_weights.append(1.0)  # lambda is the penalty's own coefficient
        trainer = GRPOTrainer(model=model, reward_funcs=reward_funcs, args=args,
                              train_dataset=rollout.dataset(limit=limit), processing_class=tokenizer,
                              rollout_func=rollout)
        if penalty is not None and penalty.reader is None:
            penalty.reader = trainer.model
        return trainer
    if config.protocol == "tool_call":
        if config.penalty_direction is not None:
            raise ValueError("the representation penalty re-encodes token episodes: use protocol=tags")
        factory = bridge.SearchToolEnvironment.factory(config.env_id, **env_kwargs)
        return GRPOTrainer(model=model, reward_funcs=reward_funcs, args=args,
                           train_dataset=bridge.question_dataset(factory(), limit=limit), processing_class=tokenizer,
                           environment_factory=factory)
    raise ValueError(f"protocol must be tags or tool_call, not {config.protocol!r}")


def main(argv: list[str] | None = None) -> None:
    from search_gym.configs import add_dataclass_arguments, build_config

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="YAML or JSON file of TRLSearchConfig fields")
    add_dataclass_arguments(parser, TRLSearchConfig)
    args = parser.parse_args(argv)
    config = build_config(TRLSearchConfig, args, args.config)
    trainer = build_trainer(config)
    trainer.train()
    final = Path(config.output_dir) / "final"
    trainer.save_model(str(final))
    last = next((row for row in reversed(trainer.state.log_history) if "reward" in row), {})
    shown = {k: round(v, 4) for k, v in last.items() if k == "reward" or k.startswith(("rewards/", "search/"))}
    print(f"{trainer.state.global_step} steps; model saved in {final}")
    print(", ".join(f"{k}={v}" for k, v in sorted(shown.items())))


if __name__ == "__main__":
    main()
