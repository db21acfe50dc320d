"""Environment overhead over raw retrieval, measured side by side in one run.

For the same queries (the embedded QA questions), the same encoder and the same FAISS index it times:
  raw      encoder.encode + index.search, called directly            (the floor)
  search   Retriever.search (adds Hit objects)
  env      SearchVectorEnv.step on scripted search actions            (adds parsing, info blocks, info dicts)
  faiss    index.search alone on pre-encoded queries
  env-pre  SearchVectorEnv.step with the query embeddings looked up instead of encoded (env + FAISS, no encoder)
per batch of ``--batch`` queries, interleaving them so drift hits them equally, and reports queries/s, steps/s,
the env's overhead over raw encoder + FAISS (target: <= 10 % at batch 32), its overhead over FAISS alone, and the
env's own milliseconds per step (env-pre minus faiss). The spread across repeats is printed beside each median.

    python benchmarks/bench_env.py --batch 32 --queries 512
    python benchmarks/bench_env.py --batch 1 --queries 64      # one env stepped alone
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch

from search_gym.agents import ScriptedAgent
from search_gym.envs import SearchVectorEnv
from search_gym.retrieval.factory import RetrieverConfig, get_retriever


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32, help="queries per batch = sub-environments")
    parser.add_argument("--queries", type=int, default=512, help="queries per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats; medians are reported")
    parser.add_argument("--index-type", default="flat", help="dense index type")
    parser.add_argument("--threads", type=int, default=None, help="torch/FAISS threads (default: all cores)")
    parser.add_argument("--json", default=None, help="write the results to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = RetrieverConfig(kind="dense", index_type=args.index_type)
    retriever = get_retriever(config)
    venv = SearchVectorEnv(num_envs=args.batch, dataset="wiki_qa", split="test", retriever=config)
    questions = venv.envs[0].questions
    n_batches = max(1, args.queries // args.batch)
    batches = [
        [(j % len(questions)) for j in range(b * args.batch, (b + 1) * args.batch)] for b in range(n_batches)
    ]
    agent = ScriptedAgent()

    # Precompute the scripted search actions and reset observations: only the step is timed.
    def search_actions(indices):
        obs, _ = venv.reset(seed=0, options={"per_env": [{"index": i} for i in indices]})
        return [s.text for s in agent.act_batch([{"messages": m, "prefill": p} for m, p in zip(obs["messages"], obs["prefill"])])]

    query_batches = [[questions[i].question for i in idx] for idx in batches]
    retriever.search(query_batches[0], k=3)  # warm-up: load the index and the encoder

    def run_raw():
        for qs in query_batches:
            retriever.search_embeddings(retriever.encode_queries(qs), k=3)

    def run_search():
        for qs in query_batches:
            retriever.search(qs, k=3)

    env_step_time = []

    def run_env():
        total = 0.0
        for idx in batches:
            actions = search_actions(idx)
            total += _timed(lambda: venv.step(actions))
        env_step_time.append(total)

    # Pre-encoded queries: FAISS alone, and the env with the encoder replaced by a lookup of the same embeddings.
    cache = {q: e for qs in query_batches for q, e in zip(qs, retriever.encode_queries(qs))}
    encoded_batches = [np.stack([cache[q] for q in qs]) for qs in query_batches]

    def run_faiss():
        for emb in encoded_batches:
            retriever.search_embeddings(emb, k=3)

    env_pre_time = []

    def run_env_pre():
        real = retriever.encode_queries
        retriever.encode_queries = lambda qs: np.stack([cache[q] for q in qs])
        try:
            total = 0.0
            for idx in batches:
                actions = search_actions(idx)
                total += _timed(lambda: venv.step(actions))
            env_pre_time.append(total)
        finally:
            retriever.encode_queries = real

    times = {"raw": [], "search": [], "env": [], "faiss": [], "env-pre": []}
    for _ in range(args.repeats):
        times["raw"].append(_timed(run_raw))
        times["search"].append(_timed(run_search))
        run_env()
        times["faiss"].append(_timed(run_faiss))
        run_env_pre()
    times["env"] = env_step_time
    times["env-pre"] = env_pre_time

    n_queries = n_batches * args.batch
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [
        ("raw encoder + FAISS", med["raw"], n_queries / med["raw"], 0.0),
        ("Retriever.search", med["search"], n_queries / med["search"], 100 * (med["search"] / med["raw"] - 1)),
        ("SearchVectorEnv.step", med["env"], n_queries / med["env"], 100 * (med["env"] / med["raw"] - 1)),
    ]
    spread = {k: (min(v), max(v)) for k, v in times.items()}
    header = f"| path | s per {n_queries} queries (median) | min-max across repeats | queries (steps)/s | overhead |"
    print(f"\nMiniLM + FAISS index={args.index_type} batch={args.batch} threads={torch.get_num_threads()} "
          f"cpu={platform.processor() or platform.machine()} repeats={args.repeats} (medians)\n")
    print(header)
    print("|---|---:|---:|---:|---:|")
    keys = ["raw", "search", "env"]
    for (name, seconds, qps, overhead), key in zip(rows, keys):
        lo, hi = spread[key]
        print(f"| {name} | {seconds:.3f} | {lo:.3f}-{hi:.3f} | {qps:.1f} | {overhead:+.1f}% vs raw |")
    for name, key in (("FAISS alone (pre-encoded)", "faiss"), ("SearchVectorEnv.step, pre-encoded", "env-pre")):
        lo, hi = spread[key]
        over = f"{100 * (med['env-pre'] / med['faiss'] - 1):+.0f}% vs FAISS" if key == "env-pre" else "-"
        print(f"| {name} | {med[key]:.3f} | {lo:.3f}-{hi:.3f} | {n_queries / med[key]:.1f} | {over} |")
    own_ms = 1000 * (med["env-pre"] - med["faiss"]) / n_batches
    print(f"\nenv's own time per vector step of {args.batch} sub-envs (env-pre minus FAISS): {own_ms:.2f} ms "
          f"({own_ms / args.batch:.3f} ms per sub-env)")
    noise = max(hi - lo for lo, hi in (spread["raw"], spread["env"])) / med["raw"]
    print(f"run-to-run spread of raw / env: up to {100 * noise:.1f}% of the raw median; an overhead below that is "
          f"noise")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "times": times, "queries": n_queries, "medians": med}, f, indent=1)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
