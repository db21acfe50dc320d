"""Cost of hidden-state capture during generation: HFAgent tokens/s with and without forward-hook capture.

Same prompts, greedy, the same number of new tokens in every run (``min_new_tokens == max_new_tokens``, no stop
strings), runs interleaved in a rotating order so that drift (clocks, other load) hits every setting alike; the
table gives the median and the best run of each setting. Capture is measured for
3 layers (at 1/4, 1/2 and 3/4 depth) at the ``<search>`` position (the prompts end with the ``<search>`` prefill,
as in the search attack), and, as a heavier variant, at every position (which also keeps one row per layer per
generated token). The design target is <= 10% overhead.

Examples::

    python benchmarks/bench_hidden_states.py                                  # bundled SmolLM2-135M, CPU
    python benchmarks/bench_hidden_states.py --random-config Qwen/Qwen2.5-1.5B --device cuda --dtype bf16 \\
        --batch 16 --new-tokens 256 --out bench_hidden.json

``--random-config`` builds a randomly initialised model from a config embedded in ``_models.py`` (no hub access needed);
prompts are tokenised with the bundled SmolLM2 tokenizer, whose ids are all valid in the larger vocabularies.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from _models import RANDOM_CONFIG_HELP, load_model
from search_gym.agents.hf import HFAgent

from search_gym.envs.protocol import PROMPT_TEMPLATES

QUESTIONS = [
    "What is the capital of France?",
    "Who wrote the opera Carmen?",
    "What is the highest mountain above sea level?",
    "Who created the Python programming language?",
    "What is the largest planet in the Solar System?",
    "Which river has the largest discharge volume?",
    "In which year did the Berlin Wall fall?",
    "What process do plants use to make sugar from sunlight?",
]


def observations(batch: int) -> list[dict]:
    return [
        {
            "messages": (
                {
                    "role": "user",
                    "content": PROMPT_TEMPLATES["search_r1"].format(question=QUESTIONS[i % len(QUESTIONS)]),
                },
            ),
            "prefill": "<search>",
        }
        for i in range(batch)
    ]


def timed(agent: HFAgent, obs: list[dict], device: torch.device) -> tuple[float, int]:
    gc.collect()  # a collection inside a timed run is noise that lands on one setting only
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    steps = agent.act_batch(obs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, sum(len(s.completion_ids) for s in steps)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="hub id or folder; default: the bundled SmolLM2-135M")
    parser.add_argument(
        "--random-config", default=None, help=RANDOM_CONFIG_HELP
    )
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer folder for --random-config (default: the bundled SmolLM2 tokenizer)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", help="float32, bf16 or fp16")
    parser.add_argument("--batch", type=int, default=4, help="prompts per generate call")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated per prompt (forced)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per setting (after one warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tokenizer, description = load_model(args)
    device = next(model.parameters()).device
    n_layers = model.config.get_text_config().num_hidden_layers
    layers = sorted({n_layers // 4, n_layers // 2, (3 * n_layers) // 4})
    common = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, stop=(), few_shot=0, temperature=0.0)
    settings = {
        "plain": HFAgent(model, tokenizer, **common),
        "capture 3 layers @ search": HFAgent(model, tokenizer, layers=layers, positions=["search"], **common),
        "capture 3 layers @ all positions": HFAgent(model, tokenizer, layers=layers, **common),
    }
    obs = observations(args.batch)
    for agent in settings.values():  # warm-up (allocator, kernels, stop-string tables)
        timed(agent, obs, device)
    times: dict[str, list[float]] = {name: [] for name in settings}
    tokens: dict[str, int] = {}
    names = list(settings)
    for repeat in range(args.repeats):
        # rotate the order every round so that no setting always runs first (or right after a warm cache)
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            seconds, n = timed(settings[name], obs, device)
            times[name].append(seconds)
            tokens[name] = n
    base_median, base_min = statistics.median(times["plain"]), min(times["plain"])
    rows = []
    for name in settings:
        median, fastest = statistics.median(times[name]), min(times[name])
        rows.append(
            {
                "setting": name,
                "tokens": tokens[name],
                "median_s": median,
                "min_s": fastest,
                "tokens_per_s": tokens[name] / median,
                "tokens_per_s_best": tokens[name] / fastest,
                "overhead_pct": 100.0 * (median / base_median - 1.0),
                "overhead_best_pct": 100.0 * (fastest / base_min - 1.0),
                "runs_s": times[name],
            }
        )
    result = {
        "model": description,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "dtype": str(next(model.parameters()).dtype),
        "batch": args.batch,
        "new_tokens": args.new_tokens,
        "prompt_tokens": [len(settings["plain"].encode(settings["plain"].render(o))) for o in obs],
        "layers": layers,
        "repeats": args.repeats,
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "results": rows,
    }
    print(
        f"\n{description} on {result['device_name']} ({result['dtype']}), batch {args.batch} x {args.new_tokens} "
        f"new tokens, layers {layers}, {args.repeats} runs each (median / best)"
    )
    print(f"{'setting':<34}{'tok/s median':>14}{'tok/s best':>12}{'overhead':>10}{'(best)':>9}")
    for row in rows:
        print(
            f"{row['setting']:<34}{row['tokens_per_s']:>14.1f}{row['tokens_per_s_best']:>12.1f}"
            f"{row['overhead_pct']:>9.1f}%{row['overhead_best_pct']:>8.1f}%"
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
