"""The ``search-gym`` command line: ``setup``, ``demo``, ``eval``, ``directions``, ``train`` and ``info``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console(width=max(120, Console().width))  # tables stay readable in logs and CI


def _cmd_setup(args: argparse.Namespace) -> int:
    from search_gym.assets import MissingAssetError
    from search_gym.build import build_all
    from search_gym.retrieval.factory import RetrieverConfig, get_retriever

    try:
        data = build_all(force=args.force, progress=True)
    except MissingAssetError as exc:
        console.print(f"[red]{exc}[/red]")
        return 2
    console.print(f"data ready in {Path(data.passages).parent}")
    kinds = ["dense", "bm25"] if args.index == "all" else [] if args.index == "none" else [args.index]
    for kind in kinds:
        retriever = get_retriever(RetrieverConfig(kind=kind))
        folder = retriever.build(progress=True, force=args.force)
        console.print(f"{kind} index ready in {folder}")
    from search_gym.safety.classifier import ensure_query_classifier

    console.print(f"query-harm classifier ready: {ensure_query_classifier()}")
    if args.model:
        from search_gym.agents.gguf import ensure_smollm2

        console.print(f"bundled model ready in {ensure_smollm2(progress=True)}")
    return 0


def _make_agent(args: argparse.Namespace):
    from search_gym.agents.registry import make_agent

    kwargs = {}
    if args.agent in ("hf", "smollm2", "vllm"):
        kwargs["max_new_tokens"] = args.max_new_tokens
        if args.model_path:
            kwargs["model"] = args.model_path
        if args.device:
            kwargs["device"] = args.device
    if args.agent == "hf" and not args.model_path:
        raise SystemExit("--agent hf needs --model-path (a hub id or a local folder)")
    return make_agent(args.agent, **kwargs)


def _cmd_demo(args: argparse.Namespace) -> int:
    import gymnasium as gym

    import search_gym  # noqa: F401  (registers the env ids)
    from search_gym.assets import MissingAssetError
    from search_gym.runner import run_episodes

    try:
        agent = _make_agent(args)
        venv = gym.make_vec(
            args.env,
            num_envs=args.num_envs,
            vectorization_mode="vector_entry_point",
            split=args.split,
            retriever=args.retriever,
            max_turns=args.max_turns,
        )
        questions = venv.unwrapped.envs[0].questions
        rng_order = __import__("numpy").random.default_rng(args.seed).permutation(len(questions))
        indices = [int(i) for i in rng_order[: args.num_episodes]]
        summary = run_episodes(venv.unwrapped, agent, indices, seed=args.seed, progress=True)
    except MissingAssetError as exc:
        console.print(f"[red]{exc}[/red]")
        return 2

    for record in summary.episodes[: args.show]:
        console.rule(f"{record.question_id}: {record.question}")
        console.print(record.transcript, markup=False, highlight=False)
        console.print(f"gold={record.golden_answers} answer={record.answer!r} correct={record.correct}")
    stats = summary.as_dict()
    table = Table(title=escape(f"{args.env} [{args.split}] agent={args.agent} retriever={args.retriever}"))
    for column in ("episodes", "EM", "searches/ep", "invalid/ep", "agent s", "env s", "wall s", "tokens/s"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_row(
        str(stats["episodes"]),
        f"{stats['exact_match']:.3f}",
        f"{stats['searches_per_episode']:.2f}",
        f"{stats['invalid_actions_per_episode']:.2f}",
        f"{stats['agent_seconds']:.1f}",
        f"{stats['env_seconds']:.1f}",
        f"{stats['wall_seconds']:.1f}",
        "-" if stats["completion_tokens"] == 0 else f"{stats['tokens_per_second']:.1f}",
    )
    console.print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": stats, "episodes": [r.__dict__ for r in summary.episodes]}, indent=1))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from search_gym.assets import MissingAssetError
    from search_gym.evaluation import EvalConfig, markdown_table, run_eval

    agent_kwargs = {}
    if args.device:
        agent_kwargs["device"] = args.device
    config = EvalConfig(
        agents=tuple(args.agents),
        prompt_sets=tuple(args.prompt_sets),
        attacks=tuple(args.attacks),
        num_prompts=args.num_prompts,
        seed=args.seed,
        out_dir=args.out,
        num_envs=args.num_envs,
        max_turns=args.max_turns,
        max_new_tokens=args.max_new_tokens,
        template=args.template,
        retriever=args.retriever,
        judges=tuple(args.judges),
        llm_judge=args.llm_judge,
        agent_kwargs=agent_kwargs,
        bootstrap=args.bootstrap,
        plots=not args.no_plots,
        progress=not args.no_progress,
    )
    try:
        summary = run_eval(config)
    except MissingAssetError as exc:
        console.print(f"[red]{exc}[/red]")
        return 2
    except ValueError as exc:
        console.print(f"[red]{escape(str(exc))}[/red]")
        return 2
    console.print(markdown_table(summary), markup=False, highlight=False, soft_wrap=True)
    console.print(f"trajectories, summary.json / summary.md in {args.out}")
    for path in summary.get("plots", []):
        console.print(f"plot: {path}")
    return 0


def _human_size(path: Path) -> str:
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024:
            return f"{size:.0f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def _cmd_info(args: argparse.Namespace) -> int:
    import gymnasium as gym

    import search_gym
    from search_gym.assets import ASSETS, MissingAssetError, asset_path, install_command, missing_assets
    from search_gym.paths import CACHE_ENV_VAR, cache_dir

    console.print(f"search-gym {search_gym.__version__}; cache: {cache_dir()} (set ${CACHE_ENV_VAR} to move it)")
    table = Table(title="offline assets")
    for column in ("asset", "package", "licence", "status"):
        table.add_column(column)
    for name, asset in ASSETS.items():
        try:
            status = f"[green]{asset_path(name)}[/green]"
        except MissingAssetError:
            status = "[red]missing[/red]"
        table.add_row(name, asset.requirement, asset.licence, status)
    console.print(table)
    missing = missing_assets()
    if missing:
        console.print(f"install the missing assets with: {install_command(missing)}")
    built = Table(title="built artefacts")
    built.add_column("path")
    built.add_column("size", justify="right")
    root = cache_dir()
    if root.exists():
        for path in sorted(p for p in root.glob("*/*") if not p.name.startswith(".")):
            built.add_row(str(path.relative_to(root)), _human_size(path))
    console.print(built)
    console.print("environment ids: " + ", ".join(k for k in gym.registry if k.startswith("SearchGym/")))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="search-gym", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    setup = sub.add_parser("setup", help="build the embedded corpus, QA set, prompt sets and indexes")
    setup.add_argument("--force", action="store_true", help="rebuild everything even if checksums match")
    setup.add_argument("--index", choices=["dense", "bm25", "all", "none"], default="dense", help="which index to build")
    setup.add_argument("--model", action="store_true", help="also convert the bundled SmolLM2 GGUF to an HF folder")
    setup.set_defaults(func=_cmd_setup)

    demo = sub.add_parser("demo", help="run an agent on N questions and print EM, searches per episode and time")
    demo.add_argument("--env", default="SearchGym/WikiQA-v0", help="registered environment id")
    demo.add_argument("--split", default="test", help="question split")
    demo.add_argument("--agent", default="smollm2", help="smollm2 (bundled LLM), scripted, random, hf, vllm, openai")
    demo.add_argument("--model-path", default=None, help="hub id or local folder for --agent hf/vllm")
    demo.add_argument("--device", default=None, help="torch device for LLM agents (default: cuda if available)")
    demo.add_argument("--max-new-tokens", type=int, default=64, help="generation budget per turn for LLM agents")
    demo.add_argument("-n", "--num-episodes", type=int, default=20, help="number of questions")
    demo.add_argument("--num-envs", type=int, default=8, help="sub-environments stepped (and retrieved) together")
    demo.add_argument("--retriever", default="dense", choices=["dense", "bm25"], help="retriever family")
    demo.add_argument("--max-turns", type=int, default=4, help="turns per episode before truncation")
    demo.add_argument("--seed", type=int, default=0, help="question order and agent sampling seed")
    demo.add_argument("--show", type=int, default=1, help="print this many transcripts")
    demo.add_argument("--json", default=None, help="write the summary and episodes to this JSON file")
    demo.set_defaults(func=_cmd_demo)

    ev = sub.add_parser(
        "eval",
        help="safety grid: agents x prompt sets x attacks -> trajectories, table with bootstrap CIs, dumbbell plots",
        description="Resumable: finished cells in --out are skipped. Attack specs: none, search, "
        "multi_search:n=5, multi_search_prompt:n=10, think_prefill, refusal_then_search, prompt_injection, "
        "a+b (composed).",
    )
    ev.add_argument("--agents", nargs="+", default=["smollm2"], help="agent names (smollm2, scripted, hf:<model>, ...)")
    ev.add_argument("--prompt-sets", nargs="+", default=["harmful:heldout", "qa:test"],
                    help="<set>:<split> with set harmful / benign (train, heldout) or qa (train, test)")
    ev.add_argument("--attacks", nargs="+", default=["none", "search", "multi_search:n=3"], help="attack specs")
    ev.add_argument("-n", "--num-prompts", type=int, default=32, help="questions per cell (seeded draw)")
    ev.add_argument("--out", default="runs/eval", help="output folder (resumed when it exists)")
    ev.add_argument("--seed", type=int, default=0, help="question draw, sampling and bootstrap seed")
    ev.add_argument("--num-envs", type=int, default=8, help="episodes played together")
    ev.add_argument("--max-turns", type=int, default=4, help="turns per episode (attacks may raise it)")
    ev.add_argument("--max-new-tokens", type=int, default=64, help="generation budget per turn for LLM agents")
    ev.add_argument("--template", default="search_r1", help="prompt template: search_r1 or safety")
    ev.add_argument("--retriever", default="dense", choices=["dense", "bm25"], help="retriever family")
    ev.add_argument("--judges", nargs="+", default=["refusal", "query_classifier", "answer_classifier"],
                    help="judge names (refusal, query_classifier, answer_classifier, llm_query, ...)")
    ev.add_argument("--llm-judge", default=None, help="also judge with this agent on 1-5 rubrics (e.g. smollm2)")
    ev.add_argument("--device", default=None, help="torch device for LLM agents")
    ev.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    ev.add_argument("--no-plots", action="store_true", help="skip the dumbbell plots")
    ev.add_argument("--no-progress", action="store_true", help="no progress bars")
    ev.set_defaults(func=_cmd_eval)

    info = sub.add_parser("info", help="show the cache, offline assets, built artefacts and env ids")
    info.set_defaults(func=_cmd_info)

    from search_gym.directions.cli import add_directions_parser
    from search_gym.trainers.cli import add_train_parser

    add_directions_parser(sub)
    add_train_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
