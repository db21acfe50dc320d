"""Our GRPO trainer's step time and completion tokens/s, beside TRL's GRPOTrainer (../shared/bench), one GPU.

One configuration per process (vLLM's in-process engine holds process-wide state)::

    python benchmarks/bench_grpo_throughput.py --shape qwen2.5-0.5b --mode single --generations 16 [--backend vllm]
    python benchmarks/bench_grpo_throughput.py --table results.jsonl     # the RESULTS.md table from JSON lines

prints one JSON line with the keys of the TRL baseline script (``step_s_median`` over steps 3..N, ``completion_tok_s``
= generations x mean policy tokens / median step seconds). With ``--backend vllm`` it also replays the last step's
generate calls straight to the engine (:func:`engine_generate_seconds`: same prompts, budgets and sampling
parameters, prefix cache emptied, median of 3) and prints ``engine_generate_s``, ``rollout_s_last`` and their ratio
``rollout_over_engine`` (issue 24's target: <= 1.05).

What runs, matched to the TRL baseline (random weights in the published Qwen2.5 shape on the bundled SmolLM2
tokenizer's 49,152-token vocabulary, bf16 weights, lr 1e-6, beta 0.04 with a frozen reference, 16 generations per
prompt, temperature 1, 7 steps):

- ``single``: one turn of 256 new tokens per episode (``max_turns=1``), on the embedded QA questions in the
  search_r1 prompt (about 150 prompt tokens against TRL's ~20); a random model never closes a tag, so every
  episode is exactly 256 policy tokens, as TRL's completions are;
- ``multi``: the same 256 policy tokens in 4 turns of 64, each turn forced to search (``attack=multi_search:n=3``,
  then the answer turn): retrieval (MiniLM + FAISS flat over the bundled corpus), the safety judges on every step
  (refusal, query and answer classifiers) and the representation penalty (a random unit direction at the middle
  layer, read by the frozen reference at each episode's first ``<search>``) all included. Environment tokens
  (passages, prefills) are masked out of the loss and not counted as completion tokens.

Speed does not depend on the weights, so random weights are an honest stand-in and need no download.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import RANDOM_CONFIGS  # noqa: E402  (the published Qwen2.5 shapes)

SHAPES = ("qwen2.5-0.5b", "qwen2.5-1.5b")  # the rows of the TRL baseline's reference table


def save_random(shape: str, tokenizer, root: Path) -> Path:
    """A randomly initialised Qwen2 of ``shape`` on the tokenizer's vocabulary (as the TRL baseline script does),
    saved in bf16 with the tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(RANDOM_CONFIGS[shape], vocab_size=len(tokenizer), max_position_embeddings=4096,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    torch.manual_seed(0)
    path = root / f"random_{shape}"
    AutoModelForCausalLM.from_config(config).to(torch.bfloat16).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def random_direction(model_path: Path, out: Path) -> tuple[Path, int]:
    """A random unit direction at the middle layer (speed only: what it projects on does not matter)."""
    import torch
    from transformers import AutoConfig

    from search_gym.directions import Direction

    config = AutoConfig.from_pretrained(model_path)
    layer, d = config.num_hidden_layers // 2, config.hidden_size
    g = torch.Generator().manual_seed(0)
    v = torch.randn(1, d, generator=g)
    v = v / v.norm()
    Direction(name="random", layers=(layer,), vectors=v, raw_norms=torch.ones(1), mean_pos=v.clone(),
              mean_neg=torch.zeros(1, d), act_norms=torch.ones(1), chosen_layer=layer).save(out)
    return out, layer


class RequestLog:
    """Records what a generator was asked, step by step: each ``generate`` call's prompt ids and token budgets, a new
    step at each ``sync_weights`` (the trainer pushes weights once per step, before its rollouts)."""

    def __init__(self, generator):
        self.steps: list[list[tuple[list[list[int]], list[int]]]] = [[]]
        generate, sync = generator.generate, generator.sync_weights

        def logged_generate(requests):
            self.steps[-1].append(([list(r.input_ids) for r in requests], [int(r.max_new_tokens) for r in requests]))
            return generate(requests)

        def logged_sync(*a, **k):
            if self.steps[-1]:
                self.steps.append([])
            return sync(*a, **k)

        generator.generate, generator.sync_weights = logged_generate, logged_sync

    def last_step(self) -> list[tuple[list[list[int]], list[int]]]:
        return next((calls for calls in reversed(self.steps) if calls), [])


def engine_generate_seconds(agent, calls, repeats: int = 3) -> float:
    """vLLM's own ``generate`` on the prompts and budgets of ``calls`` (one step's generate calls, in order): the
    sampling parameters built before the clock starts (the agent's own, so stops, logprobs and temperature match),
    the prefix cache emptied before each repeat as our rollout's weight push empties it; the median over repeats.
    What issue 24 compares our rollout time with."""
    work = [([{"prompt_token_ids": p} for p in prompts],
             [agent._sampling(i, None, budget) for i, budget in enumerate(budgets)]) for prompts, budgets in calls]
    times = []
    for _ in range(repeats):
        agent.llm.reset_prefix_cache()
        t0 = time.perf_counter()
        for prompts, params in work:
            agent.llm.generate(prompts, params, use_tqdm=False)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(args) -> dict:
    import torch
    from transformers import AutoTokenizer

    from search_gym.agents.gguf import ensure_smollm2
    from search_gym.trainers.grpo import GRPOTrainer
    from search_gym.trainers.config import PenaltyConfig, VLLMConfig, train_env
    from search_gym.trainers.grpo_config import GRPOConfig

    root = Path(tempfile.mkdtemp(prefix=f"bench_grpo_{args.shape}_{args.mode}_"))
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or ensure_smollm2(progress=False))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model_path = save_random(args.shape, tokenizer, root)
    group = 16
    if args.generations % group:
        sys.exit("--generations must be a multiple of 16 (the group size)")
    common = dict(model=str(model_path), output_dir=str(root / "run"), dtype="bf16", device=args.device, seed=0,
                  learning_rate=1e-6, beta=0.04, temperature=1.0, max_steps=args.steps, save_steps=0,
                  questions_per_step=args.generations // group, group_size=group, generation_backend=args.backend,
                  tensorboard=False, progress=False, resume=False, max_prompt_tokens=1024, max_response_tokens=2048,
                  max_obs_tokens=512, forward_batch_size=args.forward_batch_size,
                  vllm=VLLMConfig(gpu_memory_utilization=0.35, max_model_len=2048,
                                  max_num_batched_tokens=args.vllm_max_num_batched_tokens,
                                  importance_sampling_correction=args.is_correction))
    if args.mode == "single":
        mode = dict(env=train_env(max_turns=1, safety=False), max_turn_tokens=256)
    else:
        direction, layer = random_direction(model_path, root / "direction.pt")
        mode = dict(env=train_env(max_turns=4, attack="multi_search:n=3", safety=True), max_turn_tokens=64,
                    penalty=PenaltyConfig(lambda_=0.1, direction=str(direction), layer=layer))
    config = GRPOConfig(**common, **mode)
    t0 = time.perf_counter()
    trainer = GRPOTrainer(config)
    setup = time.perf_counter() - t0
    log = RequestLog(trainer.generator) if args.backend == "vllm" else None
    cuda = torch.cuda.is_available() and args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
    rows = trainer.train()
    steps = [r["time/rollout_seconds"] + r["time/update_seconds"] for r in rows]
    tokens = [r["charts/policy_tokens"] for r in rows] if "charts/policy_tokens" in rows[0] else None

    def steady(values):  # steps 3..N, as the TRL baseline (a shorter smoke run: all)
        return values[2:] or values

    median = statistics.median(steady(steps))
    # completion tokens of a step = policy tokens generated (environment text excluded)
    generated = [r["charts/tokens_per_second"] * s for r, s in zip(rows, steps)]
    mean_tokens = statistics.mean(steady(generated)) / args.generations
    corrected = bool(args.is_correction) and args.backend == "vllm"  # HF rollouts are the policy's own log-probs
    label = f"ours-{args.mode}-{args.backend}" + ("+is" if corrected else "")
    engine = {}
    if log is not None and log.last_step():
        # the last step's rollout against vLLM's own generate on the same prompts and budgets, same process
        engine_s = engine_generate_seconds(trainer.generator.agent, log.last_step())
        last_rollout = rows[-1]["time/rollout_seconds"]
        engine = {"engine_generate_s": round(engine_s, 3), "rollout_s_last": round(last_rollout, 3),
                  "rollout_over_engine": round(last_rollout / engine_s, 3),
                  "engine_calls_last_step": len(log.last_step())}
    return {**engine, "shape": args.shape, "mode": label, "generations_per_step": args.generations,
            "forward_batch_size": args.forward_batch_size, "is_correction": args.is_correction,
            "vllm_max_num_batched_tokens": args.vllm_max_num_batched_tokens,
            "setup_s": round(setup, 1), "step_s_median": round(median, 3), "step_s_all": [round(s, 2) for s in steps],
            "rollout_s_median": round(statistics.median(steady([r["time/rollout_seconds"] for r in rows])), 3),
            "env_s_median": round(statistics.median(steady([r["time/env_seconds"] for r in rows])), 3),
            "mean_completion_len": round(mean_tokens, 1),
            "completion_tok_s": round(args.generations * mean_tokens / median),
            "policy_tokens_logged": tokens[-1] if tokens else None,
            "gpu": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__}


def table(path: Path) -> str:
    """Markdown table: one row per (shape, generations), one column per mode, from JSON lines."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    keys = list(dict.fromkeys((r["shape"], r["generations_per_step"]) for r in rows))
    cell = {(r["shape"], r["generations_per_step"], r["mode"]): r for r in rows}
    out = ["| shape, generations/step | " + " | ".join(modes) + " |", "|---|" + "---:|" * len(modes)]
    for shape, gens in keys:
        parts = []
        for m in modes:
            r = cell.get((shape, gens, m))
            parts.append(f"{r['completion_tok_s']:,} tok/s ({r['step_s_median']:.2f} s/step)" if r else "–")
        out.append(f"| {shape.removeprefix('qwen2.5-')}, {gens} | " + " | ".join(parts) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=SHAPES, default="qwen2.5-0.5b")
    parser.add_argument("--mode", choices=("single", "multi"), default="single")
    parser.add_argument("--generations", type=int, default=16, help="episodes per step (16 per question)")
    parser.add_argument("--backend", choices=("vllm", "hf"), default="vllm")
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--forward-batch-size", type=int, default=0,
                        help="episodes per forward/backward pass, gradients accumulated (0: the whole batch at once, "
                             "as TRL's one pass; multi-turn episodes carry ~5x the tokens in passages)")
    parser.add_argument("--vllm-max-num-batched-tokens", type=int, default=4096,
                        help="the engine's tokens per scheduler step (TRL's colocate value by default)")
    parser.add_argument("--is-correction", type=int, choices=(0, 1), default=1,
                        help="TRL's vLLM importance-sampling correction (1, TRL's default: one more no-grad forward "
                             "per step; the first H200 table ran before it existed, i.e. without it)")
    parser.add_argument("--device", default="cuda", help="torch device (cpu only to smoke-test the script)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the bundled SmolLM2's)")
    parser.add_argument("--table", type=Path, default=None, help="print the table of a JSON-lines file and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(table(args.table))
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(json.dumps(run(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
