"""Cost of activation collection: ``collect_from_ids`` at the ``<search>`` token, every layer, vs a plain forward.

One batch of Search-R1 prompts with the ``<search>`` prefill (as the directions are collected) is run, interleaved
and repeated so that drift and other load hit every setting alike:

- ``plain forward (logits)``: ``model(input_ids, attention_mask)``, what running the model costs anyway;
- ``plain forward, no LM head``: the decoder stack alone (``model.model``), the strict baseline for a collector
  that never needs logits;
- ``output_hidden_states + gather``: the naive collector (every layer's full ``[B, S, d]`` kept, then indexed);
- ``collect_from_ids``: search-gym's collector (hooks keep one row per prompt per layer, no LM head), giving
  ``[B, L, d]`` float32 on the CPU;
- ``agents.hidden.forward_hidden``: the agents' general helper (any positions per sequence) on the same rows, for
  comparison;
- ``collect_activations (text in)``: the whole pipeline from prompt strings (chat template, tokenisation,
  locating the ``<search>`` token) - the CPU-side preparation is also reported on its own.

Overheads are relative to the plain forward with logits and to the one without the LM head, as the median over
rounds of the time ratio within a round (the settings of one round run back to back, so load that drifts during the
benchmark cancels out); the design target is <= 10%. Prints a markdown table (and ``--out`` writes JSON).

Examples::

    python benchmarks/bench_activations.py                                     # bundled SmolLM2-135M, CPU
    python benchmarks/bench_activations.py --random-config qwen2.5-1.5b --device cuda --dtype bf16 --batch 64

``--random-config`` builds a randomly initialised model from a config embedded in ``_models.py`` (no hub access needed);
prompts are tokenised with the bundled SmolLM2 tokenizer (``--tokenizer`` to override), whose ids are all valid
in the larger vocabularies.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from _models import RANDOM_CONFIG_HELP, load_model
from search_gym.agents.hidden import forward_hidden

from search_gym.directions.activations import (
    collect_activations,
    collect_from_ids,
    position_index,
    render_prompts,
    tokenize,
)

QUESTIONS = [
    "What is the capital of France?",
    "Who wrote the opera Carmen?",
    "What is the highest mountain above sea level?",
    "Who created the Python programming language?",
    "What is the largest planet in the Solar System?",
    "Which river has the largest discharge volume in the world?",
    "In which year did the Berlin Wall fall?",
    "What process do plants use to make sugar from sunlight?",
    "How do vaccines train the immune system?",
    "Which element has the chemical symbol Fe?",
    "Who painted the ceiling of the Sistine Chapel?",
    "What is the speed of light in a vacuum?",
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="hub id or folder; default: the bundled SmolLM2-135M")
    parser.add_argument("--random-config", default=None, help=RANDOM_CONFIG_HELP)
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the model's / bundled SmolLM2)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", help="float32, bf16 or fp16")
    parser.add_argument("--batch", type=int, default=16, help="prompts per forward pass")
    parser.add_argument("--batches", type=int, default=1,
                        help="forward passes per timed run (the collector pipelines host copies across them)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per setting (after one warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tokenizer, description = load_model(args)
    device = next(model.parameters()).device
    n_layers = model.config.get_text_config().num_hidden_layers
    layers = tuple(range(n_layers))
    total = args.batch * args.batches
    questions = [QUESTIONS[i % len(QUESTIONS)] + ("" if i < len(QUESTIONS) else f" ({i})") for i in range(total)]

    prep_start = time.perf_counter()
    texts = render_prompts(tokenizer, questions, prefill="<search>")
    sequences = tokenize(tokenizer, texts)
    indices = [position_index(tokenizer, ids, "search") for ids in sequences]
    prep_s = time.perf_counter() - prep_start
    # The same right-padded batches for every setting (the collector truncates after the <search> token, which is
    # the last token here, so its inputs are exactly these; with one batch it keeps the order too).
    batches = []
    for start in range(0, total, args.batch):
        part = sequences[start: start + args.batch]
        width = max(len(s) for s in part)
        input_ids = torch.zeros((len(part), width), dtype=torch.long)
        mask = torch.zeros((len(part), width), dtype=torch.long)
        for b, s in enumerate(part):
            input_ids[b, : len(s)] = torch.tensor(s)
            mask[b, : len(s)] = 1
        rows = torch.arange(len(part), device=device)
        cols = torch.tensor(indices[start: start + args.batch], device=device)
        batches.append((input_ids.to(device), mask.to(device), rows, cols))
    width = max(len(s) for s in sequences)
    backbone = getattr(model, "base_model", model)

    @torch.no_grad()
    def plain_logits():
        for input_ids, mask, _, _ in batches:
            model(input_ids=input_ids, attention_mask=mask, use_cache=False)

    @torch.no_grad()
    def plain_backbone():
        for input_ids, mask, _, _ in batches:
            backbone(input_ids=input_ids, attention_mask=mask, use_cache=False)

    @torch.no_grad()
    def naive_hidden_states():
        for input_ids, mask, rows, cols in batches:
            out = backbone(input_ids=input_ids, attention_mask=mask, use_cache=False, output_hidden_states=True)
            torch.stack([h[rows, cols] for h in out.hidden_states[1:]], dim=1).float().cpu()

    def collector():
        collect_from_ids(model, sequences, indices, layers, batch_size=args.batch)

    def agents_forward_hidden():
        forward_hidden(model, sequences, [[i] for i in indices], layers, batch_size=args.batch)

    def pipeline():
        collect_activations((model, tokenizer), questions, batch_size=args.batch)

    settings = {
        "plain forward (logits)": plain_logits,
        "plain forward, no LM head": plain_backbone,
        "output_hidden_states + gather": naive_hidden_states,
        "collect_from_ids (all layers @ <search>)": collector,
        "agents.hidden.forward_hidden (same rows)": agents_forward_hidden,
        "collect_activations (text in)": pipeline,
    }
    for fn in settings.values():  # warm-up: allocator, kernels, chat-template compilation
        fn()
    times: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(args.repeats):
        for name, fn in settings.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    tokens = sum(len(s) for s in sequences)

    def paired(name: str, reference: str) -> float:
        """Median over rounds of this setting's time over the reference's in the same round, minus one: runs of
        one round are seconds apart, so load that drifts over the benchmark cancels out."""
        return 100.0 * (statistics.median(a / b for a, b in zip(times[name], times[reference])) - 1.0)

    results = []
    for name in settings:
        median = statistics.median(times[name])
        results.append({
            "setting": name,
            "median_s": median,
            "min_s": min(times[name]),
            "prompts_per_s": len(sequences) / median,
            "tokens_per_s": tokens / median,
            "overhead_vs_logits_pct": paired(name, "plain forward (logits)"),
            "overhead_vs_no_lm_head_pct": paired(name, "plain forward, no LM head"),
            "runs_s": times[name],
        })
    result = {
        "model": description,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "dtype": str(next(model.parameters()).dtype),
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "batches": args.batches,
        "prompt_tokens": tokens,
        "max_prompt_tokens": width,
        "layers": len(layers),
        "prep_s": prep_s,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "results": results,
    }
    print(f"\n{description} on {result['device_name']} ({result['dtype']}, {result['threads']} threads): "
          f"{args.batches} x {args.batch} prompts, {tokens} tokens (longest {width}), {len(layers)} layers @ <search>, "
          f"median of {args.repeats}; text preparation {1e3 * prep_s:.1f} ms\n")
    print("| setting | median ms | min ms | prompts/s | overhead vs forward | overhead vs forward w/o LM head |")
    print("|---|---|---|---|---|---|")
    for row in results:
        print(f"| {row['setting']} | {1e3 * row['median_s']:.1f} | {1e3 * row['min_s']:.1f} | "
              f"{row['prompts_per_s']:.1f} | {row['overhead_vs_logits_pct']:+.1f}% | "
              f"{row['overhead_vs_no_lm_head_pct']:+.1f}% |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
