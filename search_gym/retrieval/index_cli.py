"""``search-gym index build``: full-scale dense index builds (see :mod:`search_gym.retrieval.index_build`).

    search-gym index build --corpus wiki-18.jsonl --encoder e5-base-v2 --index ivfpq --memory-budget-gb 16 --dry-run
    search-gym index build --corpus wiki-18.jsonl --encoder e5-base-v2 --index flat --prebuilt e5_Flat.index --out DIR
    search-gym index build --corpus wiki-18.jsonl --encoder e5-base-v2 --index ivfpq --device cuda --out DIR
"""

from __future__ import annotations

import argparse

from search_gym.retrieval.index_build import IndexBuildConfig


def add_index_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``index build`` on the main CLI's subparsers; every flag is a field of IndexBuildConfig."""
    from search_gym.configs import add_dataclass_arguments

    index = sub.add_parser("index", help="build dense FAISS indexes (wiki-18 scale: estimate, GPU, resume)")
    actions = index.add_subparsers(dest="index_command", required=True)
    build = actions.add_parser(
        "build",
        help="encode a passages JSONL (or reuse Search-R1's e5_Flat.index) into a flat / hnsw / ivfpq index",
        description="Prints a RAM and disk estimate, then encodes the corpus in shards (a killed build resumes "
        "after the last saved shard when run again with the same arguments) and writes the FAISS index. The "
        "folder works as RetrieverConfig(index_dir=...) / gym.make(..., index_dir=...). Every flag is a field of "
        "search_gym.retrieval.index_build.IndexBuildConfig; --config reads a YAML/JSON file of them first.",
    )
    build.add_argument("--config", default=None, help="YAML or JSON file of IndexBuildConfig fields")
    # On/off options read as plain switches (--dry-run), not --dry-run true.
    switches = ("force", "dry_run", "keep_shards", "opq")
    add_dataclass_arguments(build, IndexBuildConfig, skip=switches)
    helps = IndexBuildConfig.help()
    for name in switches:
        build.add_argument("--" + name.replace("_", "-"), dest=name, action="store_const", const=True,
                           default=argparse.SUPPRESS, help=helps[name])
    build.add_argument("--no-progress", dest="progress", action="store_const", const=False,
                       default=argparse.SUPPRESS, help="no progress bars (same as --progress false)")
    build.set_defaults(func=cmd_index_build)
    return index


def cmd_index_build(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    from search_gym.configs import build_config
    from search_gym.retrieval.index_build import build_index

    console = Console(soft_wrap=True)  # paths and commands stay on one line, copyable
    try:
        config = build_config(IndexBuildConfig, args, args.config)
    except (TypeError, ValueError, FileNotFoundError) as exc:
        console.print(f"[red]{escape(str(exc))}[/red]")
        return 2
    try:
        build_index(config, echo=lambda line: console.print(line, markup=False, highlight=False))
    except (ValueError, FileNotFoundError, OSError) as exc:
        console.print(f"[red]{escape(str(exc))}[/red]")
        return 2
    return 0
