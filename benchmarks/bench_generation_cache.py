"""HF generation with the dynamic vs the static KV cache (HFAgent ``cache_implementation``), same prompts.

    python benchmarks/bench_generation_cache.py [--model smollm2 | --random-config qwen2.5-0.5b] [--device cpu]
        [--batch 16] [--new-tokens 64] [--repeats 5] [--compile]

Prompts are the search_r1 prompt of embedded QA train questions (what the trainers' HF backend generates from).
Greedy decoding with EOS and stop strings off, so every row makes exactly ``--new-tokens`` tokens in both modes and
the outputs are checked to be identical. Prints a table (median and spread of ``--repeats`` timed runs after one
warm-up) and one JSON line; ``--compile`` wraps the model's forward in ``torch.compile`` (where a static cache is
meant to pay off).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import RANDOM_CONFIG_HELP, load_model  # noqa: E402


def prompts(tokenizer, n: int) -> list[list[int]]:
    from search_gym.agents.hf import render_observation
    from search_gym.build import load_questions
    from search_gym.envs.protocol import PROMPT_TEMPLATES

    out = []
    for q in load_questions("wiki_qa", "train")[:n]:
        obs = {"messages": ({"role": "user", "content": PROMPT_TEMPLATES["search_r1"].format(question=q.question)},),
               "prefill": ""}
        out.append(tokenizer(render_observation(tokenizer, obs, 0), add_special_tokens=False)["input_ids"])
    return out


def time_mode(model, tokenizer, rows, cache, args) -> tuple[list[float], list[list[int]]]:
    from search_gym.agents.hf import HFAgent

    agent = HFAgent(model, tokenizer, temperature=0.0, few_shot=0, max_new_tokens=args.new_tokens, stop=(),
                    cache_implementation=cache)
    agent.eos_token_ids = []  # exactly new_tokens per row in both modes
    times, out = [], None
    for i in range(args.repeats + 1):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        steps = agent.generate_ids(rows)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        if i:  # the first run warms up (and compiles)
            times.append(time.perf_counter() - t0)
        out = [s.completion_ids for s in steps]
    return times, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--random-config", default=None, help=RANDOM_CONFIG_HELP)
    parser.add_argument("--tokenizer", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args(argv)
    model, tokenizer, description = load_model(args)
    if args.compile:
        model.forward = torch.compile(model.forward)
    rows = prompts(tokenizer, args.batch)
    results, outputs = {}, {}
    for cache in (None, "static"):
        times, outputs[cache] = time_mode(model, tokenizer, rows, cache, args)
        results[cache or "dynamic"] = times
    same = outputs[None] == outputs["static"]
    tokens = args.batch * args.new_tokens
    print(f"{description} on {args.device} ({args.dtype}{', compiled' if args.compile else ''}): batch {args.batch}, "
          f"{args.new_tokens} new tokens, prompt {min(map(len, rows))}-{max(map(len, rows))} tokens, "
          f"{args.repeats} timed runs; outputs identical: {same}")
    print("| KV cache | median s | min-max s | tokens/s (median) |")
    print("|---|---:|---:|---:|")
    for mode, times in results.items():
        med = statistics.median(times)
        print(f"| {mode} | {med:.2f} | {min(times):.2f}-{max(times):.2f} | {tokens / med:,.0f} |")
    print(json.dumps({"model": description, "device": args.device, "compile": args.compile, "batch": args.batch,
                      "new_tokens": args.new_tokens, "identical": same,
                      **{f"{m}_s": [round(t, 3) for t in ts] for m, ts in results.items()}}))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
