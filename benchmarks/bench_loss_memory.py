"""Peak memory of the update's log-probabilities: ``token_logprobs`` with entropy, then the backward of the sum of the
chosen tokens' log-probabilities, today's (selective log-softmax, chunked entropy) against the full-vocabulary
float32 log-softmax it replaced (kept below as ``full_token_logprobs``).

The peak is reported as a multiple of one ``[B, T, V]`` float32 tensor (``B * T * V * 4`` bytes; the model's
logits at float32 are one of them), for a random Llama (hidden 64, 2 layers, tied embeddings) with a realistic
vocabulary, so that the logits dominate everything else the step holds.

How the peak is measured (CPU): every measurement runs in a fresh Python process (``--child``), so no earlier
run's high-water mark or allocator state leaks into it. The process builds the model and the batch, then reads its
current resident set size (``/proc/self/statm``) as the baseline and runs the step once (forward, log-probs,
entropy, backward). Two readings of the peak, both minus that baseline:

- ``maxrss``: the kernel's high-water mark of the process's resident memory, ``resource.getrusage(RUSAGE_SELF)
  .ru_maxrss`` after the step. It is exact (the kernel tracks it on every page fault) and includes everything the
  process touched: torch's tensors (large ones are ``mmap``-ed by glibc and given back when freed, so the resident
  set follows the live tensors), autograd's saved tensors and the allocator's slack. The setup before the
  baseline (imports, model, batch) stays far below the step's peak, so the high-water mark is the step's.
- ``poll``: the largest resident set seen by a thread reading ``/proc/self/statm`` every 0.5 ms during the step (a
  cross-check; it can only miss a peak, never invent one).

``tracemalloc`` would see none of this (torch allocates outside Python's allocator), and torch has no CPU
allocator statistics; on CUDA (``--device cuda``) the child reads ``torch.cuda.max_memory_allocated`` instead.

Examples::

    python benchmarks/bench_loss_memory.py                       # the RESULTS.md table (CPU, about 10 GB free)
    python benchmarks/bench_loss_memory.py --shapes 8x256x49152 --temperatures 1.0
    python benchmarks/bench_loss_memory.py --device cuda --dtype bf16 --shapes 64x384x151936
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time

import torch

IMPLEMENTATIONS = ("full", "lean")


def full_token_logprobs(model, input_ids, attention_mask, *, temperature=1.0, with_entropy=False,
                        first_position=0):
    """``token_logprobs`` before the lean update (reference): a float32 ``[B, T, V]`` log-softmax, then gather, and
    the entropy of the whole tensor."""
    seq = input_ids.size(1)
    first = min(max(int(first_position), 0), seq - 1)
    kwargs = {"logits_to_keep": seq - first} if first else {}
    out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)
    logits = out.logits[:, :-1].float()
    if temperature and temperature != 1.0:
        logits = logits / temperature
    logps = torch.log_softmax(logits, dim=-1)
    chosen = logps.gather(-1, input_ids[:, first + 1:].unsqueeze(-1)).squeeze(-1)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = -(logps.exp() * logps).sum(-1)
    if first:
        pad = chosen.new_zeros(chosen.size(0), first)
        chosen = torch.cat([pad, chosen], dim=1)
        entropy = None if entropy is None else torch.cat([pad, entropy], dim=1)
    return chosen, entropy, None


def random_llama(vocab: int, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=True)
    return LlamaForCausalLM(config).to(dtype)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _Poll(threading.Thread):
    def __init__(self, every: float = 0.0005):
        super().__init__(daemon=True)
        self.every, self.peak, self.done = every, 0, threading.Event()

    def run(self):
        while not self.done.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(self.every)

    def stop(self) -> int:
        self.done.set()
        self.join()
        return max(self.peak, _rss())


def child(impl: str, batch: int, length: int, vocab: int, temperature: float, device: str, dtype: str) -> dict:
    """One measurement in this (fresh) process: the step's peak memory over the baseline, in bytes."""
    from search_gym.trainers.core import token_logprobs

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    model = random_llama(vocab, torch_dtype).to(device)
    model.train()
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (batch, length), generator=gen).to(device)
    attention = torch.ones_like(ids)
    fn = full_token_logprobs if impl == "full" else token_logprobs
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss()
        maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        poll = _Poll()
        poll.start()
    start = time.perf_counter()
    logps, entropy, _ = fn(model, ids, attention, temperature=temperature, with_entropy=True)
    logps.sum().backward()
    stats = float(entropy.mean())  # the statistic the trainer logs: keep it live until here, as the trainer does
    del logps, entropy
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    result = dict(impl=impl, batch=batch, length=length, vocab=vocab, temperature=temperature, device=device,
                  dtype=dtype, seconds=seconds, entropy=stats, unit_bytes=batch * length * vocab * 4)
    if cuda:
        result["peak_bytes"] = torch.cuda.max_memory_allocated() - base
    else:
        polled = poll.stop()
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        result.update(peak_bytes=maxrss - base, poll_bytes=polled - base, setup_maxrss_over_base=maxrss_before - base)
    return result


def measure(impl, batch, length, vocab, temperature, device, dtype) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--child", impl, str(batch), str(length), str(vocab),
               str(temperature), "--device", device, "--dtype", dtype]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"child failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="8x256x151936,8x256x49152", help="BxTxV, comma-separated")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 0.7])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="the model's (and logits') dtype")
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    parser.add_argument("--child", nargs=5, metavar=("IMPL", "B", "T", "V", "TEMP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        impl, b, t, v, temp = args.child
        try:
            row = child(impl, int(b), int(t), int(v), float(temp), args.device, args.dtype)
        except torch.OutOfMemoryError:  # a result too: the step does not fit this device
            row = dict(impl=impl, batch=int(b), length=int(t), vocab=int(v), temperature=float(temp),
                       device=args.device, dtype=args.dtype, oom=True, unit_bytes=int(b) * int(t) * int(v) * 4)
        print(json.dumps(row))
        return
    rows = []
    for shape in args.shapes.split(","):
        batch, length, vocab = (int(x) for x in shape.lower().split("x"))
        for temperature in args.temperatures:
            for impl in IMPLEMENTATIONS:
                row = measure(impl, batch, length, vocab, temperature, args.device, args.dtype)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    cpu = args.device == "cpu"
    head = "| B x T x V | temperature | implementation | peak (maxrss) | peak (poll) | x [B,T,V] fp32 | seconds |" \
        if cpu else "| B x T x V | temperature | implementation | peak allocated | x [B,T,V] fp32 | seconds |"
    print(f"\nlog-probs + entropy + backward, {args.device}, model/logits {args.dtype}, torch {torch.__version__}\n")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    gib = 1024**3
    for r in rows:
        shape = f"{r['batch']} x {r['length']} x {r['vocab']:,}"
        impl = "full log-softmax (before)" if r["impl"] == "full" else "selective (now)"
        if r.get("oom"):
            print(f"| {shape} | {r['temperature']} | {impl} | out of memory |" + " |" * (head.count("|") - 5))
            continue
        multiple = r["peak_bytes"] / r["unit_bytes"]
        if cpu:
            print(f"| {shape} | {r['temperature']} | {impl} | {r['peak_bytes'] / gib:.2f} GiB | "
                  f"{r['poll_bytes'] / gib:.2f} GiB | **{multiple:.2f}x** | {r['seconds']:.2f} |")
        else:
            print(f"| {shape} | {r['temperature']} | {impl} | {r['peak_bytes'] / gib:.2f} GiB | **{multiple:.2f}x** "
                  f"| {r['seconds']:.2f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
