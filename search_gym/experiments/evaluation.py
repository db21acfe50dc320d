"""Safety evaluation grid: agents x prompt sets x attacks -> trajectories, a summary table and dumbbell plots.

:func:`run_eval` plays every cell of the grid and writes, under ``out_dir``::

    config.json                          the settings that shape the cells (checked when resuming)
    trajectories/<cell>.jsonl            one line per episode (search_gym.rollout.recorder format)
    trajectories/<cell>.meta.json        the cell's timing (agent / env / wall seconds) and judge statistics
    summary.json, summary.md             per-cell metrics with bootstrap 95% intervals
    plots/<metric>.png, plots/dumbbells.png   no attack -> attack, per metric

Resumable: a cell whose ``.jsonl`` exists is finished and skipped; a cell interrupted mid-way continues from its
``.partial.jsonl`` (episodes already there are kept, by question id). Seeded: the same ``seed`` picks the same
questions for every agent and attack (paired comparisons) and reseeds the agent at the start of each cell.

Episodes are played by the one episode loop (:class:`search_gym.rollout.RolloutCollector` over the agent, text
only), which skips the question ids already recorded and hands each finished episode to the cell's recorder.

The environment is ``EvalConfig.env`` (:class:`~search_gym.envs.EnvConfig`, as in the trainers: ``--env.max-turns``
flags, ``env: {max_turns: 2}`` in YAML); each cell sets its dataset, split, attack and judges. The flat keys and
flags these fields had before (``max_turns``, ``--retriever``, ...) still load, with a deprecation line naming the
new ones.

Metrics (per episode, then averaged; 0-100 except searches and EM): :data:`METRICS`, one definition with the demo
and the trainers (:func:`search_gym.rollout.metrics.episode_metrics`): search safety, refusal, first-turn refusal,
answer safety, searches, invalid actions, answered and EM (QA sets only).

Every other judge present in the trajectories gets the same metrics in ``summary.json`` under
``"<metric>@<judge>"``, plus ``search_safety_by_position`` (mean query safety at search 1, 2, ...).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from search_gym.attacks import attack_label, make_attack
from search_gym.configs import build_config, config_dict, config_keys, help_field, moved_to
from search_gym.envs.config import EnvConfig
from search_gym.envs.vector import SearchVectorEnv
from search_gym.experiments.common import agent_kwargs_for, read_jsonl, write_json
from search_gym.files import write_text_atomic
from search_gym.rollout import AgentGenerator, RolloutCollector
from search_gym.rollout.metrics import METRICS, episode_metrics
from search_gym.rollout.recorder import dumps_record, trajectory_record
from search_gym.safety.instrument import DEFAULT_JUDGES, SafetyConfig, judge_stats
from search_gym.stats import bootstrap_ci

__all__ = [
    "EvalConfig",
    "METRICS",
    "Cell",
    "agent_kwargs_for",
    "bootstrap_ci",
    "cell_questions",
    "config_from_dict",
    "eval_env",
    "make_eval_agent",
    "dumbbell_plots",
    "episode_metrics",
    "markdown_table",
    "parse_prompt_set",
    "run_eval",
    "summarize",
]

PRIMARY_JUDGES = {"query": "query_classifier", "refusal": "refusal_substring", "answer": "answer_classifier"}
#: The env fields that were EvalConfig fields before its ``env`` section: their flat keys and flags still load.
_MOVED_ENV = ("max_turns", "template", "retriever", "corpus_path", "encoder", "index_type", "topk", "parse_mode",
              "judges")
# Settings that change what a cell contains: resuming into a folder made with other values would mix runs. The
# names are flat (those of _MOVED_ENV are read from the env section), as in folders written before the section.
_CELL_SETTINGS = ("num_prompts", "seed", "max_turns", "max_new_tokens", "template", "retriever", "judges",
                  "llm_judge", "agent_kwargs", "topk", "corpus_path", "encoder", "index_type", "base_url", "parse_mode")
# Env fields eval did not have before the section: cell settings ("env.<field>") only when not the default, so
# folders written before still resume.
_NEW_ENV_SETTINGS = ("protocol", "reward", "prefill", "kwargs")
#: The env fields eval sets itself for every cell (SearchEnv on the cell's prompt set and attack, always judged):
#: they keep their defaults in ``EvalConfig.env`` and get no flag.
PER_CELL_ENV = ("id", "dataset", "split", "attack", "safety")
_PROMPT_SETS = {"qa": "wiki_qa", "wiki_qa": "wiki_qa", "harmful": "harmful", "benign": "benign",
                "nq": "nq", "hotpotqa": "hotpotqa"}


def eval_env(**changes) -> EnvConfig:
    """The evaluation's environment default: :class:`EnvConfig` with the dense retriever, the search_r1 template and
    the default judges; ``changes`` override fields (``EvalConfig(env=eval_env(max_turns=2))``)."""
    return EnvConfig(**{"retriever": "dense", "template": "search_r1", "judges": DEFAULT_JUDGES, **changes})


@dataclass
class EvalConfig:
    """One evaluation grid (``search-gym eval`` builds it from its flags)."""

    suite: str = field(
        default="safety",
        metadata={"help": "'safety' (agents x prompt sets x attacks) or 'misalignment' (free-form questions judged "
                          "0-100 for alignment and coherence by --llm-judge, default smollm2; uses agents, "
                          "num_prompts, samples, seed, max_new_tokens, device, agent_kwargs; see "
                          "search_gym.experiments.misalignment_eval)"},
    )
    agents: tuple[str, ...] = field(
        default=("smollm2",),
        metadata={"help": "agent names for make_agent ('smollm2', 'scripted', 'hf:<model>', ...)"},
    )
    prompt_sets: tuple[str, ...] = field(
        default=("harmful:heldout", "qa:test"),
        metadata={"help": "'<set>:<split>': harmful / benign (train, heldout), qa (train, test), or a JSONL path"},
    )
    attacks: tuple[str, ...] = field(
        default=("none", "search", "multi_search:n=3"),
        metadata={"help": "attack specs (make_attack strings); 'none' is the baseline of the dumbbell plots"},
    )
    num_prompts: int = field(
        default=32,
        metadata={"help": "questions per cell, a seeded draw (the same ones for every agent and attack)"},
    )
    seed: int = field(default=0, metadata={"help": "question draw, agent sampling and bootstrap seed"})
    out_dir: str = field(default="runs/eval", metadata={"help": "output folder; an existing one is resumed"})
    num_envs: int = field(default=8, metadata={"help": "episodes played (generated, retrieved, judged) together"})
    env: EnvConfig = help_field("the environment every cell plays (search_gym.envs.EnvConfig); eval sets its id, "
                                "dataset, split, attack and safety per cell; defaults: dense retriever, search_r1 "
                                "template, the default judges", default_factory=eval_env)
    max_new_tokens: int = field(default=64, metadata={"help": "generation budget per turn for LLM agents"})
    device: str | None = field(
        default=None, metadata={"help": "torch device of HF agents (hf, smollm2); vLLM and OpenAI-compatible agents "
                                        "ignore it"}
    )
    base_url: str | None = field(
        default=None, metadata={"help": "server of OpenAI-compatible agents (openai:<model>), e.g. "
                                        "http://127.0.0.1:8000/v1"}
    )
    similarity: bool = field(default=True, metadata={"help": "record the query-to-request similarity (loads MiniLM)"})
    llm_judge: str | None = field(
        default=None,
        metadata={"help": "agent that also judges query, refusal and answer on 1-5 rubrics (e.g. 'smollm2')"},
    )
    agent_kwargs: dict = field(
        default_factory=dict,
        metadata={"help": "extra make_agent arguments for LLM agents (device, dtype, batch_size, ...)"},
    )
    samples: int = field(default=1, metadata={"help": "misalignment suite: answers per question (sample with "
                                                       "agent_kwargs temperature for more than one)"})
    bootstrap: int = field(default=1000, metadata={"help": "bootstrap resamples for the 95% intervals"})
    plots: bool = field(default=True, metadata={"help": "write the dumbbell plots (needs matplotlib)"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})

    #: The top-level fields that moved into ``env``: their keys (YAML, config.json) and flags still load, with a
    #: one-line deprecation message naming the new key.
    moved_fields = moved_to("env", _MOVED_ENV)

    def __post_init__(self) -> None:
        if not isinstance(self.env, EnvConfig):
            raise TypeError(f"env must be an EnvConfig, not {type(self.env).__name__} (a mapping of its fields is "
                            "read by build_config)")
        default = eval_env()
        fixed = [f"env.{k}" for k in PER_CELL_ENV if getattr(self.env, k) != getattr(default, k)]
        if fixed:
            raise ValueError(f"{', '.join(fixed)}: eval sets these per cell (SearchEnv on each of prompt_sets, "
                             "with each of attacks, judged by env.judges and llm_judge); leave them unset")

    def env_judges(self) -> tuple:
        """``env.judges`` (None: the default judges)."""
        return tuple(DEFAULT_JUDGES if self.env.judges is None else self.env.judges)

    def judge_specs(self) -> tuple:
        specs = self.env_judges()
        if self.llm_judge:
            aspects = ("query", "refusal", "answer")
            specs += tuple({"kind": "llm", "aspect": a, "agent": self.llm_judge} for a in aspects)
        return specs

    def cell_settings(self) -> dict:
        """The settings that shape a cell's content, JSON-able and stable across processes (flat names; env
        fields added since the env section only where set)."""
        values = {k: getattr(self.env if k in _MOVED_ENV else self, k) for k in _CELL_SETTINGS}
        values["judges"] = self.env_judges()
        default = eval_env()
        for k in _NEW_ENV_SETTINGS:
            value = self.env.extra_kwargs() if k == "kwargs" else getattr(self.env, k)
            if value != ({} if k == "kwargs" else getattr(default, k)):
                values[f"env.{k}"] = value
        return {k: _stable(v) for k, v in values.items()}


def _stable(value: Any) -> Any:
    """JSON-able stand-in: objects (a retriever, a judge) become their type and name, never an address."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {str(k): _stable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_stable(v) for v in value]
    name = getattr(value, "name", None)
    return f"<{type(value).__name__}{' ' + str(name) if name else ''}>"


@dataclass(frozen=True)
class Cell:
    """One (agent, prompt set, attack) combination."""

    agent: str
    prompt_set: str
    attack: str

    @property
    def slug(self) -> str:
        """File-name-safe cell name (a prompt set given as a path contributes its file stem)."""
        source, sep, split = self.prompt_set.rpartition(":")
        if not sep:
            source, split = self.prompt_set, ""
        if "/" in source or "\\" in source:
            source = Path(source).stem
        raw = f"{self.agent}__{source}{'-' + split if split else ''}__{self.attack}"
        return re.sub(r"[^A-Za-z0-9_.=+-]+", "-", raw)


def parse_prompt_set(name: str) -> tuple[str, str]:
    """``"harmful:heldout"`` -> ``("harmful", "heldout")``; ``"qa:test"`` -> ``("wiki_qa", "test")``; a path with a
    ``:split`` suffix keeps the path."""
    source, sep, split = name.rpartition(":")
    if not sep:
        source, split = name, "test"
    return _PROMPT_SETS.get(source, source), split


# ---------------------------------------------------------------------------------------------- running


def make_eval_agent(name: str, config: EvalConfig):
    """``make_agent(name)`` with the grid's generation budget, device, server and agent_kwargs."""
    from search_gym.agents.registry import make_agent

    return make_agent(name, **agent_kwargs_for(name, max_new_tokens=config.max_new_tokens, device=config.device,
                                               base_url=config.base_url, extra=config.agent_kwargs))


def cell_questions(config: EvalConfig, dataset: str, split: str) -> list[int]:
    """The question indices of a cell: the first ``num_prompts`` of a ``seed``-ed permutation (shared by all cells
    of a prompt set, so attacks and agents are compared on the same questions)."""
    from search_gym.build import load_questions

    total = len(load_questions(dataset, split))
    order = np.random.default_rng(config.seed).permutation(total)
    return [int(i) for i in order[: min(config.num_prompts, total)]]


def _run_cell(cell: Cell, agent, config: EvalConfig, folder: Path, bar_position: int = 1) -> dict:
    from tqdm.auto import tqdm

    from search_gym.build import load_questions

    dataset, split = parse_prompt_set(cell.prompt_set)
    indices = cell_questions(config, dataset, split)
    questions = load_questions(dataset, split)
    partial = folder / f"{cell.slug}.partial.jsonl"
    meta_path = folder / f"{cell.slug}.partial.meta.json"
    # Keep only clean lines of an interrupted run (a crash may leave half a line); their questions are skipped.
    kept = read_jsonl(partial)
    write_text_atomic(partial, "".join(dumps_record(r) + "\n" for r in kept))
    done_ids = {r["question_id"] for r in kept}
    remaining = sum(questions[i].id not in done_ids for i in indices)
    meta = json.loads(meta_path.read_text()) if meta_path.exists() and kept else {}
    timing = {k: float(meta.get(k, 0.0)) for k in ("agent_seconds", "env_seconds", "wall_seconds")}
    tokens = int(meta.get("completion_tokens", 0))
    extra = {"agent": cell.agent, "prompt_set": cell.prompt_set, "attack_label": cell.attack, "seed": config.seed}

    bar = tqdm(total=len(indices), initial=len(indices) - remaining, desc=cell.slug[:60], unit="ep",
               disable=not config.progress, position=bar_position, leave=False)
    stats_before = judge_stats()
    if remaining:
        venv = SearchVectorEnv(
            num_envs=max(1, min(config.num_envs, remaining)),
            autoreset_mode="disabled",  # finished (and spare) sub-envs are never stepped: no junk episodes
            **config.env.make_kwargs(dataset=dataset, split=split, attack=make_attack(cell.attack),
                                     safety=SafetyConfig(judges=config.judge_specs(), similarity=config.similarity),
                                     judges=None),
        )
        driver = RolloutCollector(venv, AgentGenerator(agent))  # text only: the agent's steps reach the env as they are
        base, wall = dict(timing), time.perf_counter()

        with open(partial, "a", encoding="utf-8") as out:
            def record(episode) -> None:
                nonlocal tokens
                tokens += episode.completion_tokens
                out.write(dumps_record(trajectory_record(episode, extra)) + "\n")
                out.flush()
                bar.update(1)

            def checkpoint(done: int, total: int) -> None:  # after each batch: the timing a resumed cell adds to
                timing.update(agent_seconds=base["agent_seconds"] + driver.stats.generation_seconds,
                              env_seconds=base["env_seconds"] + driver.stats.env_seconds,
                              wall_seconds=base["wall_seconds"] + time.perf_counter() - wall)
                write_json(meta_path, {**timing, "completion_tokens": tokens})

            driver.collect([{"index": i} for i in indices], seed=config.seed, skip=done_ids, on_episode=record,
                           progress=checkpoint)
        venv.close()
    bar.close()
    after = judge_stats()
    judges = {name: {k: after[name][k] - stats_before.get(name, {}).get(k, 0) for k in after[name]}
              for name in after}
    meta = {**timing, "completion_tokens": tokens, "episodes": len(indices), "judges": judges,
            "cell": asdict(cell)}
    final = folder / f"{cell.slug}.jsonl"
    write_json(folder / f"{cell.slug}.meta.json", meta)
    os.replace(partial, final)  # the rename is what marks the cell finished
    if meta_path.exists():
        meta_path.unlink()
    return meta


def run_eval(config: EvalConfig, *, agents: dict[str, Any] | None = None) -> dict:
    """Play every unfinished cell, then summarise all cells. Returns the summary (also in ``summary.json``).

    ``agents`` maps agent names to ready agent objects (otherwise they are built with ``make_agent``, once, and
    only when one of their cells still has to run). ``suite="misalignment"`` runs
    :func:`search_gym.experiments.misalignment_eval.run_misalignment_eval` instead.
    """
    if config.suite == "misalignment":
        from search_gym.experiments.misalignment_eval import run_misalignment_eval

        return run_misalignment_eval(config, agents=agents)
    if config.suite != "safety":
        raise ValueError(f"suite={config.suite!r}; use 'safety' or 'misalignment'")
    from tqdm.auto import tqdm

    out = Path(config.out_dir)
    folder = out / "trajectories"
    folder.mkdir(parents=True, exist_ok=True)
    config_path = out / "config.json"
    settings = config.cell_settings()
    if config_path.exists():
        previous = json.loads(config_path.read_text()).get("cell_settings")
        if previous is not None and previous != settings:
            changed = sorted(k for k in {**previous, **settings} if previous.get(k) != settings.get(k))
            raise ValueError(f"{out} holds cells made with other settings ({', '.join(changed)}); use another "
                             "out_dir or the same settings to resume")
    labels = [attack_label(a) for a in config.attacks]
    write_json(config_path, {"cell_settings": settings, "config": config_dict(config)})
    cells = [Cell(a, p, k) for a in config.agents for p in config.prompt_sets for k in labels]
    todo = [c for c in cells if not (folder / f"{c.slug}.jsonl").exists()]
    ready = dict(agents or {})
    bar = tqdm(total=len(cells), initial=len(cells) - len(todo), desc="cells", unit="cell",
               disable=not config.progress, position=0)
    for cell in todo:
        if cell.agent not in ready:
            ready[cell.agent] = make_eval_agent(cell.agent, config)
        _run_cell(cell, ready[cell.agent], config, folder)
        bar.update(1)
    bar.close()
    summary = summarize(out, cells, n_boot=config.bootstrap, seed=config.seed)
    write_json(out / "summary.json", summary)
    (out / "summary.md").write_text(markdown_table(summary) + "\n")
    if config.plots:
        summary["plots"] = [str(p) for p in dumbbell_plots(summary, out / "plots")]
        write_json(out / "summary.json", summary)
    return summary


# ---------------------------------------------------------------------------------------------- statistics


def _judge_names(records: list[dict]) -> dict[str, list[str]]:
    names: dict[str, list[str]] = {"query": [], "refusal": [], "answer": []}
    for record in records:
        safety = record.get("safety") or {}
        for aspect, key in (("query", "query_safety_mean"), ("refusal", "refused"), ("answer", "answer_safety")):
            for name in safety.get(key) or {}:
                if name not in names[aspect]:
                    names[aspect].append(name)
    return names


def primary_judges(records: list[dict]) -> dict[str, str | None]:
    """The judge per aspect whose scores the summary reports: :data:`PRIMARY_JUDGES`' choice where the episodes hold
    it, else the first judge of the aspect they hold (None: no judge of that aspect)."""
    found = _judge_names(records)
    return {a: (PRIMARY_JUDGES[a] if PRIMARY_JUDGES[a] in names else (names[0] if names else None))
            for a, names in found.items()}


def finished_cells(out_dir: str | os.PathLike) -> list[Cell]:
    """The cells of an eval folder with a finished meta file (not ``.partial``), in file-name order."""
    cells = []
    for path in sorted((Path(out_dir) / "trajectories").glob("*.meta.json")):
        if not path.name.endswith(".partial.meta.json"):
            cells.append(Cell(**json.loads(path.read_text())["cell"]))
    return cells


def summarize(out_dir: str | os.PathLike, cells: Sequence[Cell] | None = None, *, n_boot: int = 1000,
              seed: int = 0) -> dict:
    """Metrics with bootstrap intervals for every finished cell in ``out_dir`` (or the given cells)."""
    folder = Path(out_dir) / "trajectories"
    if cells is None:
        cells = finished_cells(out_dir)
    rows = []
    for cell in cells:
        path = folder / f"{cell.slug}.jsonl"
        if not path.exists():
            continue
        records = read_jsonl(path)
        names = _judge_names(records)
        primary = primary_judges(records)
        per_episode = [episode_metrics(r, primary) for r in records]
        metrics = {m: bootstrap_ci([e[m] for e in per_episode], n_boot=n_boot, seed=seed) for m in METRICS}
        for aspect, metric in (("query", "search_safety"), ("refusal", "refusal"), ("refusal", "refusal_first"),
                               ("answer", "answer_safety")):
            for name in names[aspect]:
                if name != primary[aspect]:
                    values = [episode_metrics(r, {**primary, aspect: name})[metric] for r in records]
                    metrics[f"{metric}@{name}"] = bootstrap_ci(values, n_boot=n_boot, seed=seed)
        by_position: dict[str, list] = {}
        for record in records:
            positions = ((record.get("safety") or {}).get("query_safety_by_position") or {}).get(primary["query"]) or []
            for k, value in enumerate(positions):
                if value is not None:
                    by_position.setdefault(str(k + 1), []).append(value)
        meta_path = folder / f"{cell.slug}.meta.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        rows.append({
            **asdict(cell),
            "episodes": len(records),
            "judges": primary,
            "metrics": metrics,
            "search_safety_by_position": {k: float(np.mean(v)) for k, v in by_position.items()},
            "timing": {k: meta.get(k) for k in ("agent_seconds", "env_seconds", "wall_seconds", "completion_tokens")},
            "judge_stats": meta.get("judges", {}),
        })
    return {"metrics": METRICS, "cells": rows}


def _fmt(stat: dict, digits: int) -> str:
    if stat.get("mean") is None:
        return "–"
    return f"{stat['mean']:.{digits}f} [{stat['lo']:.{digits}f}, {stat['hi']:.{digits}f}]"


def markdown_table(summary: dict) -> str:
    """The summary as a markdown table: mean [95% bootstrap interval] per metric and cell (a misalignment-suite
    summary gets its own table)."""
    if summary.get("suite") == "misalignment":
        from search_gym.experiments.misalignment_eval import misalignment_markdown

        return misalignment_markdown(summary)
    digits = {"searches": 2, "invalid": 2, "em": 3}
    header = ["agent", "prompt set", "attack", "n"] + [METRICS[m] for m in METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|"]
    for row in summary["cells"]:
        values = [_fmt(row["metrics"][m], digits.get(m, 1)) for m in METRICS]
        lines.append("| " + " | ".join([row["agent"], row["prompt_set"], row["attack"], str(row["episodes"])] + values)
                     + " |")
    return "\n".join(lines)


def dumbbell_plots(summary: dict, folder: str | os.PathLike, metrics: Sequence[str] | None = None) -> list[Path]:
    """One PNG per metric (and ``dumbbells.png`` with all of them): for every (agent, prompt set), a dumbbell from
    the no-attack value to each attack's value, with 95% intervals. Returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed (CI, servers)
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    metrics = list(metrics or METRICS)
    cells = summary["cells"]
    groups = list(dict.fromkeys((c["agent"], c["prompt_set"]) for c in cells))
    attacks = [a for a in dict.fromkeys(c["attack"] for c in cells) if a != "none"]
    lookup = {(c["agent"], c["prompt_set"], c["attack"]): c["metrics"] for c in cells}
    colours = plt.get_cmap("tab10")
    paths: list[Path] = []

    def draw(ax, metric: str) -> bool:
        drawn = False
        rows = len(attacks) or 1
        for g, (agent, prompt_set) in enumerate(groups):
            base = lookup.get((agent, prompt_set, "none"), {}).get(metric, {})
            for k, attack in enumerate(attacks):
                stat = lookup.get((agent, prompt_set, attack), {}).get(metric, {})
                y = g + (k - (rows - 1) / 2) * 0.6 / rows
                if base.get("mean") is None or stat.get("mean") is None:
                    continue
                drawn = True
                colour = colours(k % 10)
                ax.plot([base["mean"], stat["mean"]], [y, y], color=colour, lw=2, alpha=0.6, zorder=1)
                ax.errorbar(base["mean"], y, xerr=[[base["mean"] - base["lo"]], [base["hi"] - base["mean"]]],
                            fmt="o", color="0.35", ms=6, capsize=2, lw=0.8, zorder=2)
                ax.errorbar(stat["mean"], y, xerr=[[stat["mean"] - stat["lo"]], [stat["hi"] - stat["mean"]]],
                            fmt="D", color=colour, ms=6, capsize=2, lw=0.8, zorder=3, label=attack)
        ax.set_yticks(range(len(groups)), [f"{a}\n{p}" for a, p in groups])
        ax.set_ylim(-0.6, len(groups) - 0.4)
        ax.invert_yaxis()
        if metric in ("search_safety", "refusal", "refusal_first", "answer_safety"):
            ax.set_xlim(-4, 104)  # the shared 0-100 scale: panels compare at a glance
        elif metric == "em":
            ax.set_xlim(-0.04, 1.04)
        ax.set_title(METRICS.get(metric, metric))
        ax.grid(axis="x", alpha=0.3)
        return drawn

    def legend(ax) -> None:
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        base = plt.Line2D([], [], marker="o", color="0.35", ls="", label="none (no attack)")
        ax.legend([base, *unique.values()], [base.get_label(), *unique.keys()], fontsize=8, loc="best")

    for metric in metrics:
        fig, ax = plt.subplots(figsize=(6.5, 1.2 + 0.9 * len(groups)))
        if draw(ax, metric):
            legend(ax)
            fig.tight_layout()
            path = folder / f"{metric}.png"
            fig.savefig(path, dpi=110)
            paths.append(path)
        plt.close(fig)
    shown = [m for m in metrics if any(lookup.get((a, p, k), {}).get(m, {}).get("mean") is not None
                                       for a, p in groups for k in attacks)]
    if shown:
        fig, axes = plt.subplots(1, len(shown), figsize=(3.6 * len(shown), 1.4 + 0.9 * len(groups)), squeeze=False)
        for i, (ax, metric) in enumerate(zip(axes[0], shown)):
            draw(ax, metric)
            if i:
                ax.set_yticklabels([])
        legend(axes[0][-1])
        fig.suptitle("no attack (o) -> attack (◆), mean and bootstrap 95% interval", fontsize=10)
        fig.tight_layout()
        path = folder / "dumbbells.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def config_from_dict(values: dict) -> EvalConfig:
    """An EvalConfig from a dict (e.g. ``config.json``'s ``"config"``, nested or of a version before the env
    section, whose flat env keys load with the deprecation line), ignoring unknown keys."""
    keys = config_keys(EvalConfig)
    return build_config(EvalConfig, **{k: v for k, v in values.items() if k in keys})
