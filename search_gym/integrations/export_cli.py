"""``search-gym export``: write search-gym's question sets in another training engine's dataset format.

    search-gym export verl --out ~/data/search_gym_verl                     # qa_{train,test}, harmful_{train,heldout}
    search-gym export verl --out DIR --sets qa --protocol tool_call         # prompts for verl's ToolAgentLoop
    search-gym export verl --out DIR --env SearchGym/AnswerKeySearch-v0 --splits train test --attack prompt_injection
    search-gym export skyrl --out ~/data/search_gym_skyrl                   # env_class search_gym, reward_spec
"""

from __future__ import annotations

import argparse
import json
import sys


def add_export_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``export`` subcommand on the main CLI's subparsers."""
    p = sub.add_parser(
        "export",
        help="write the question sets as another engine's training data (verl / SkyRL parquet)",
        description="Write search-gym's question sets in a training engine's dataset format. 'verl': one parquet "
        "file per set and split, with the columns of verl's Search-R1 preprocessing (data_source, prompt, ability, "
        "reward_model, extra_info, agent_name); prompts are rendered by the environment (template and attack "
        "prompt edits included). 'skyrl': the same rows in SkyRL's columns (prompt, env_class, reward_spec, "
        "extra_info). See docs/scaling_out.md.",
    )
    formats = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    for engine, help_ in (("verl", "verl RL parquet (data.train_files / data.val_files)"),
                          ("skyrl", "SkyRL parquet (data.train_data / data.val_data; env_class search_gym)")):
        v = formats.add_parser(engine, help=help_)
        v.add_argument("--out", required=True, help="output folder (created); files are <set>_<split>.parquet")
        v.add_argument("--sets", nargs="+", default=["qa", "harmful"], choices=["qa", "harmful"],
                       help="qa: SearchGym/WikiQA-v0 train + test; harmful: SearchGym/WikiHarmful-v0 train + heldout")
        v.add_argument("--env", default=None, help="export this env id instead of --sets (any SearchEnv-based id)")
        v.add_argument("--splits", nargs="+", default=None,
                       help="splits to export (default: the set's; needed with --env)")
        v.add_argument("--protocol", default="tags", choices=["tags", "tool_call"],
                       help="tags: Search-R1 prompts (verl: agent_name search_gym_agent); tool_call: prompts in the "
                            "tool-call template (verl: agent_name tool_agent: verl's ToolAgentLoop + SearchGymTool)")
        v.add_argument("--template", default=None,
                       help="prompt template (search_r1, safety, tool_call or a format string)")
        v.add_argument("--attack", default=None, help="attack whose prompt edit the prompts carry (e.g. "
                                                      "prompt_injection, multi_search_prompt:n=10)")
        v.add_argument("--dataset", default=None, help="override the env's question source (a name or a JSONL path)")
        v.add_argument("--limit", type=int, default=None, help="first N questions of each split")
        if engine == "verl":
            v.add_argument("--agent-name", default=None,
                           help="agent_name column (default per protocol; '' writes no column: verl's "
                                "default_agent_loop)")
    p.set_defaults(func=cmd_export)
    return p


def cmd_export(args: argparse.Namespace) -> int:
    from search_gym.integrations.verl.data import export_verl

    env_kwargs = {k: v for k, v in {"template": args.template, "attack": args.attack,
                                    "dataset": args.dataset}.items() if v is not None}
    try:
        written = export_verl(args.out, args.sets, protocol=args.protocol, limit=args.limit,
                              agent_name=getattr(args, "agent_name", None), env_id=args.env, splits=args.splits,
                              engine=args.format, **env_kwargs)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        print(f"search-gym export: {exc}", file=sys.stderr)
        return 2
    import pyarrow.parquet as pq

    summary = {name: {"path": str(path), "rows": pq.ParquetFile(path).metadata.num_rows}
               for name, path in written.items()}
    print(json.dumps(summary, indent=2))
    return 0
