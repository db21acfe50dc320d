"""Safety judges: throughput, quality, and the evaluation harness's overhead. Prints markdown tables.

Sections (all by default; pick with --sections):

  throughput  queries/s of each judge at batch 1 and batch --batch, on held-out harmful prompts: refusal substring,
              query-harm classifier (MiniLM embedding + logistic regression, cold embedding cache), query-to-request
              similarity, and the bundled SmolLM2-135M as a 1-5 rubric judge (LLM judge).
  quality     held-out AUROC of the query-harm classifier (harmful held-out prompts vs benign-but-edgy held-out
              prompts, and vs QA test questions), its accuracy at the 0.5 threshold, and agreement (rate, Cohen's
              kappa) between the classifier and the LLM judge on the same queries: a seeded sample of held-out
              prompts plus, with --trajectories, the search queries an agent actually issued in an eval run.
  env         SearchVectorEnv.step on scripted search actions with safety off, with the refusal judge only, and with
              the default judges (refusal, query classifier, answer classifier, query-to-request similarity): what
              instrumentation costs per step, and that an env without judges pays nothing.
  overhead    the same grid played twice on the same questions: bare (experiments.demo.run_episodes: agent + env,
              no judges, nothing recorded) and through the harness (search_gym.experiments.evaluation: judges, per-step
              info, JSONL trajectories, summary with bootstrap intervals; plots off). Reports wall seconds, the agent's own
              seconds, and the harness's overhead over the bare run and over the agent time.

    python benchmarks/bench_judges.py
    python benchmarks/bench_judges.py --sections quality --trajectories runs/eval_smollm2 --llm-n 48
    python benchmarks/bench_judges.py --sections overhead --grid-agents scripted smollm2 --grid-n 8
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


# ---------------------------------------------------------------------------------------------- throughput


def throughput(args) -> str:
    from search_gym.build import load_prompt_set
    from search_gym.build import load_questions
    from search_gym.safety import JudgeInput, LLMJudge, QueryHarmClassifier, RefusalSubstringJudge
    from search_gym.safety.classifier import get_embedder
    from search_gym.safety.instrument import QuerySimilarity

    prompts = [p.prompt for p in load_prompt_set("harmful", "heldout")]
    request_of = dict(zip(prompts, (q.question for q in load_questions("wiki_qa", "test"))))  # distinct texts
    classifier = QueryHarmClassifier()
    classifier.judge([JudgeInput("warm-up")])  # load weights and MiniLM outside the timings
    embedder = get_embedder(classifier.weights.encoder)
    similarity = QuerySimilarity()
    llm = LLMJudge("smollm2", aspect="query", batch_size=args.batch)
    llm.judge([JudgeInput("warm-up")])
    rows = []

    def measure(name: str, batch: int, n: int, run) -> None:
        texts = prompts[:n]
        embedder._cache.clear()  # a cold cache: every text is embedded inside the timing
        seconds, _ = _timed(lambda: [run(texts[i: i + batch]) for i in range(0, len(texts), batch)])
        rows.append([name, batch, n, f"{n / seconds:,.1f}", f"{1000 * seconds / n:.2f}"])

    refusal = RefusalSubstringJudge()
    for batch in (1, args.batch):
        measure("refusal substring", batch, 512, lambda t: refusal.judge([JudgeInput(x) for x in t]))
        measure("query classifier (MiniLM + LR)", batch, args.n,
                lambda t: classifier.judge([JudgeInput(x) for x in t]))
        # each pair is two fresh texts (cold cache): a harmful prompt as the query, a QA question as the request
        measure("query-to-request similarity (2 texts per pair)", batch, args.n,
                lambda t: similarity.score([(x, request_of[x]) for x in t]))
        measure("LLM judge (SmolLM2-135M, 1-5 rubric)", batch, args.llm_throughput_n,
                lambda t: llm.judge([JudgeInput(x) for x in t]))
    return "### Judge throughput\n\n" + _table(["judge", "batch", "queries", "queries/s", "ms/query"], rows)


# ---------------------------------------------------------------------------------------------- quality


def _agent_queries(folder: Path, limit: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    """(query, cell) pairs from an eval run's trajectories, a seeded sample of at most ``limit``."""
    pairs = []
    for path in sorted((folder / "trajectories").glob("*.jsonl")):
        if path.name.endswith(".partial.jsonl"):
            continue
        for line in path.read_text().splitlines():
            record = json.loads(line)
            pairs += [(q, path.stem) for q in record.get("searches", [])]
    if len(pairs) > limit:
        pairs = [pairs[i] for i in sorted(rng.choice(len(pairs), size=limit, replace=False))]
    return pairs


def quality(args) -> str:
    from sklearn.metrics import cohen_kappa_score, roc_auc_score

    from search_gym.build import load_prompt_set
    from search_gym.build import load_questions
    from search_gym.safety import JudgeInput, LLMJudge, QueryHarmClassifier

    harmful = [p.prompt for p in load_prompt_set("harmful", "heldout")]
    edgy = [p.prompt for p in load_prompt_set("benign", "heldout")]
    qa = [q.question for q in load_questions("wiki_qa", "test")]
    classifier = QueryHarmClassifier()
    p_harmful, p_edgy, p_qa = (classifier.probability(t) for t in (harmful, edgy, qa))
    out = ["### Query-harm classifier, held-out splits\n"]
    rows = []
    for name, negatives in (("benign-but-edgy held-out", p_edgy), ("QA test questions", p_qa)):
        scores = np.r_[p_harmful, negatives]
        labels = np.r_[np.ones(len(p_harmful)), np.zeros(len(negatives))]
        rows.append([f"harmful held-out ({len(p_harmful)}) vs {name} ({len(negatives)})",
                     f"{roc_auc_score(labels, scores):.4f}", f"{np.mean(p_harmful >= 0.5):.3f}",
                     f"{np.mean(negatives >= 0.5):.3f}"])
    out.append(_table(["comparison", "AUROC", "TPR @0.5", "FPR @0.5"], rows))

    rng = np.random.default_rng(args.seed)
    pick = lambda items, n: [items[i] for i in sorted(rng.choice(len(items), size=min(n, len(items)), replace=False))]  # noqa: E731
    groups = {
        "harmful held-out prompts": pick(harmful, args.llm_n),
        "benign-but-edgy held-out prompts": pick(edgy, args.llm_n // 2),
        "QA test questions": pick(qa, args.llm_n // 2),
    }
    if args.trajectories:
        for query, cell in _agent_queries(Path(args.trajectories), args.llm_n, rng):
            kind = "agent queries, harmful requests" if "harmful" in cell else "agent queries, QA questions"
            groups.setdefault(kind, []).append(query)
    llm = LLMJudge("smollm2", aspect="query", batch_size=args.batch)
    rows, all_c, all_l, ratings_by_group = [], [], [], {}
    for name, texts in groups.items():
        inputs = [JudgeInput(t) for t in texts]
        seconds, llm_results = _timed(lambda: llm.judge(inputs))
        clf_results = classifier.judge(inputs)
        pairs = [(c.flagged, r.flagged) for c, r in zip(clf_results, llm_results) if r.flagged is not None]
        abstain = 1 - len(pairs) / max(1, len(texts))
        c_flags = [int(c) for c, _ in pairs]
        l_flags = [int(r) for _, r in pairs]
        all_c += c_flags
        all_l += l_flags
        agree = float(np.mean([c == r for c, r in pairs])) if pairs else float("nan")
        kappa = cohen_kappa_score(c_flags, l_flags) if len(set(c_flags) | set(l_flags)) > 1 else float("nan")
        ratings = [r.raw for r in llm_results if r.raw is not None]
        rows.append([name, len(texts), f"{np.mean(c_flags):.2f}" if pairs else "–",
                     f"{np.mean(l_flags):.2f}" if pairs else "–", f"{abstain:.2f}", f"{agree:.2f}",
                     f"{kappa:.2f}", f"{np.mean(ratings):.2f}" if ratings else "–", f"{len(texts) / seconds:.1f}"])
        ratings_by_group[name] = [r.raw for r in llm_results]
    kappa = cohen_kappa_score(all_c, all_l) if len(set(all_c) | set(all_l)) > 1 else float("nan")
    rows.append(["all", sum(len(t) for t in groups.values()), f"{np.mean(all_c):.2f}", f"{np.mean(all_l):.2f}", "",
                 f"{np.mean(np.asarray(all_c) == np.asarray(all_l)):.2f}", f"{kappa:.2f}", "", ""])
    # The LLM's rating as a harm score (abstentions dropped): does it separate the groups at all?
    auroc_rows = []
    positives = [r for r in ratings_by_group["harmful held-out prompts"] if r is not None]
    for name in ("benign-but-edgy held-out prompts", "QA test questions"):
        negatives = [r for r in ratings_by_group[name] if r is not None]
        labels = np.r_[np.ones(len(positives)), np.zeros(len(negatives))]
        auroc_rows.append([f"harmful held-out vs {name}", f"{roc_auc_score(labels, np.r_[positives, negatives]):.3f}"])
    out.append("\n### Classifier vs LLM judge (SmolLM2-135M) on the same queries\n")
    out.append("flagged = p_harmful >= 0.5 (classifier) / rating >= 4 of 5 (LLM judge); agreement and kappa over the "
               "queries the LLM judge rated (abstentions left out).\n")
    out.append(_table(["queries", "n", "classifier flags", "LLM flags", "LLM abstains", "agreement",
                       "Cohen's kappa", "mean LLM rating", "LLM queries/s"], rows))
    out.append("\nLLM judge's 1-5 rating used as a harm score:\n")
    out.append(_table(["comparison", "AUROC"], auroc_rows))
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- env steps


def env_steps(args) -> str:
    from search_gym.agents import ScriptedAgent
    from search_gym.envs import SearchVectorEnv
    from search_gym.retrieval.factory import RetrieverConfig, get_retriever
    from search_gym.safety.classifier import get_embedder

    config = RetrieverConfig(kind="dense")
    get_retriever(config).search(["warm-up"], k=3)
    variants = {"safety off": {}, "refusal judge only": {"judges": ["refusal"], "safety": {"similarity": False}},
                "default judges + similarity": {"safety": True}}
    envs = {name: SearchVectorEnv(num_envs=args.batch, dataset="wiki_qa", split="test", retriever=config, **kw)
            for name, kw in variants.items()}
    questions = envs["safety off"].envs[0].questions
    agent = ScriptedAgent()
    batches = [list(range(b * args.batch, (b + 1) * args.batch)) for b in range(max(1, args.n // args.batch))]
    times = {name: [] for name in envs}
    for repeat in range(args.repeats + 1):  # repeat 0 warms caches and loads the judges; it is not counted
        for name, venv in envs.items():  # interleaved, so load from other processes hits every variant alike
            get_embedder("minilm")._cache.clear()
            elapsed = 0.0
            for indices in batches:
                obs, _ = venv.reset(seed=0, options={"per_env": [{"index": i % len(questions)} for i in indices]})
                actions = [agent.act({"messages": m, "prefill": p}).text for m, p in zip(obs["messages"], obs["prefill"])]
                seconds, _ = _timed(lambda: venv.step(actions))
                elapsed += seconds
            if repeat:
                times[name].append(elapsed)
    steps = len(batches) * args.batch
    base = float(np.median(times["safety off"]))
    rows = []
    for name, values in times.items():
        median = float(np.median(values))
        rows.append([name, steps, f"{steps / median:,.1f}", f"{1000 * median / steps:.2f}", f"{100 * (median / base - 1):+.0f}%"])
    return (f"### Env step with and without instrumentation (batch {args.batch}, search steps, median of "
            f"{args.repeats})\n\n" + _table(["variant", "steps", "steps/s", "ms/step", "vs safety off"], rows))


# ---------------------------------------------------------------------------------------------- overhead


def overhead(args) -> str:
    from search_gym.envs import SearchVectorEnv
    from search_gym.experiments.evaluation import EvalConfig, cell_questions, make_eval_agent, parse_prompt_set, run_eval
    from search_gym.retrieval.factory import RetrieverConfig, get_retriever
    from search_gym.experiments.demo import run_episodes
    from search_gym.safety import JudgeInput
    from search_gym.safety.instrument import shared_judge, shared_similarity

    rows = []
    for agent_name in args.grid_agents:
        config = EvalConfig(agents=(agent_name,), prompt_sets=tuple(args.grid_sets), attacks=tuple(args.grid_attacks),
                            num_prompts=args.grid_n, num_envs=args.num_envs, max_new_tokens=args.max_new_tokens,
                            plots=False, progress=False, bootstrap=1000)
        agent = make_eval_agent(agent_name, config)
        # Load what the runs use (retriever index, MiniLM, the judges' weights) outside the timings.
        get_retriever(RetrieverConfig(kind=config.env.retriever)).search(["warm-up"], k=config.env.topk)
        for spec in config.judge_specs():
            shared_judge(spec).judge([JudgeInput("warm-up", "warm-up")])
        shared_similarity("minilm").score([("warm-up", "warm-up request")])
        folder = Path(tempfile.mkdtemp(prefix="bench_judges_"))
        bare = {"wall": 0.0, "agent": 0.0, "tokens": 0}
        for prompt_set in config.prompt_sets:
            dataset, split = parse_prompt_set(prompt_set)
            indices = cell_questions(config, dataset, split)
            for attack in config.attacks:
                venv = SearchVectorEnv(num_envs=min(config.num_envs, len(indices)), dataset=dataset, split=split,
                                       retriever=config.env.retriever, template=config.env.template,
                                       max_turns=config.env.max_turns, attack=attack)
                summary = run_episodes(venv, agent, indices, seed=config.seed, progress=False)
                bare["wall"] += summary.wall_seconds
                bare["agent"] += summary.agent_seconds
                bare["tokens"] += summary.completion_tokens
        config.out_dir = str(folder / "harness")
        wall, result = _timed(lambda: run_eval(config, agents={agent_name: agent}))
        harness_agent = sum(c["timing"]["agent_seconds"] or 0.0 for c in result["cells"])
        tokens = sum(c["timing"]["completion_tokens"] or 0 for c in result["cells"])
        judge_seconds = sum(s["seconds"] for c in result["cells"] for s in c["judge_stats"].values())
        episodes = sum(c["episodes"] for c in result["cells"])

        def over(total: float, agent_seconds: float) -> str:
            # a model-free agent spends ~0 s: a ratio to its time says nothing
            return f"{100 * (total / agent_seconds - 1):+.1f}%" if agent_seconds > 0.01 * total else "– (agent ~0 s)"

        rows.append([agent_name, episodes, f"{bare['wall']:.1f}", f"{bare['agent']:.1f}", bare["tokens"],
                     over(bare["wall"], bare["agent"]), f"{wall:.1f}", f"{harness_agent:.1f}", tokens,
                     f"{judge_seconds:.1f}", over(wall, harness_agent), f"{wall - bare['wall']:+.1f}"])
        shutil.rmtree(folder, ignore_errors=True)
    grid = f"{' + '.join(args.grid_sets)} x {' + '.join(args.grid_attacks)}, {args.grid_n} prompts per cell"
    return (f"### Harness overhead ({grid})\n\n"
            "Overhead = wall time over the agent's own generation time, within each run (robust to other load on the "
            "machine); the last column compares the two runs' wall times directly.\n\n"
            + _table(["agent", "episodes", "bare wall s", "bare agent s", "bare tokens", "bare overhead",
                      "harness wall s", "harness agent s", "harness tokens", "judges s", "harness overhead",
                      "harness - bare wall s"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", default=["throughput", "env", "quality", "overhead"],
                        choices=["throughput", "env", "quality", "overhead"], help="what to measure")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of the env measurement")
    parser.add_argument("--n", type=int, default=256, help="texts per throughput measurement (fast judges)")
    parser.add_argument("--llm-throughput-n", type=int, default=16, help="texts per LLM-judge throughput measurement")
    parser.add_argument("--batch", type=int, default=16, help="batch size")
    parser.add_argument("--llm-n", type=int, default=48, help="harmful prompts the LLM judge rates (half as many "
                        "edgy and QA ones; as many agent queries)")
    parser.add_argument("--trajectories", default=None, help="an eval output folder: add its agent queries")
    parser.add_argument("--grid-agents", nargs="+", default=["scripted"], help="agents of the overhead grid")
    parser.add_argument("--grid-sets", nargs="+", default=["harmful:heldout", "qa:test"], help="prompt sets")
    parser.add_argument("--grid-attacks", nargs="+", default=["none", "search"], help="attacks")
    parser.add_argument("--grid-n", type=int, default=16, help="prompts per cell")
    parser.add_argument("--num-envs", type=int, default=8, help="episodes played together")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="generation budget per turn")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"<!-- {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
          f"python {platform.python_version()} -->\n")
    for section in args.sections:
        sections = {"throughput": throughput, "env": env_steps, "quality": quality, "overhead": overhead}
        print(sections[section](args), "\n", flush=True)


if __name__ == "__main__":
    main()
