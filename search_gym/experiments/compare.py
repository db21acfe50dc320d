"""Paired differences between two finished evaluations (``search-gym eval --compare BEFORE AFTER``).

Two evaluations of the same prompts (one model before and after RL, two recipes, two seeds' checkpoints) are paired
episode by episode: for every cell they share (prompt set and attack; the agent may differ), each question's value
under ``after`` minus its value under ``before``, then the mean of those differences with a percentile bootstrap
over the pairs (:func:`search_gym.stats.paired_bootstrap_ci`). Greedy decoding on the same questions makes the pairs
exact, and pairing removes the between-question spread that independent intervals carry, which is what issue 27's
"paired results" asks for. Unpaired questions (in one run only) are counted and left out, never silently matched. A prompt set given as a
file pairs with a byte-identical file elsewhere (the cell records the path, which differs between two machines).

An evaluation's trajectories (megabytes) rarely outlive the machine that played them, so that a later recipe could
not be paired with an earlier one. :func:`export_episodes` (``search-gym eval --export-episodes EVAL_DIR OUT``)
writes what pairing needs, one line per episode (the cell, its prompt set's content key, the question id and the
per-episode metrics), gzipped: about 50 KB for a recipe's validation. ``BEFORE`` and ``AFTER`` may each be an eval
folder or such a file.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

from search_gym.data.corpus import file_fingerprint
from search_gym.experiments.common import read_jsonl
from search_gym.experiments.evaluation import Cell, finished_cells, primary_judges
from search_gym.files import write_bytes_atomic
from search_gym.rollout.metrics import METRICS, episode_metrics
from search_gym.stats import paired_bootstrap_ci, paired_mde

DIGITS = {"searches": 2, "invalid": 2, "em": 3}


def _set_key(prompt_set: str) -> str:
    """What makes two prompt sets the same: a named set (``qa:test``) by its name; a JSONL file by its content and
    split, so that one file copied to two folders (a recipe's dev/ files rebuilt byte for byte elsewhere) pairs, and
    two different files of one name do not. A file that is gone keys by its path."""
    source, sep, split = prompt_set.rpartition(":")
    if not sep:
        source, split = prompt_set, ""
    path = Path(source).expanduser()
    if _names_a_file(source) and path.is_file():
        return f"sha256:{file_fingerprint(path)}:{split}"
    return prompt_set


def _names_a_file(source: str) -> bool:
    """A prompt set's source that is a JSONL file (a path), not a named set such as ``qa``."""
    return "/" in source or source.endswith(".jsonl")


def _is_file_set(set_key: str) -> bool:
    """A set key :func:`_set_key` left as a file's path (the file was missing), not a content hash or a name."""
    return not set_key.startswith("sha256:") and _names_a_file(set_key.rpartition(":")[0] or set_key)


def eval_cells(folder: Path) -> dict[tuple[str, str], tuple[Cell, Path]]:
    """Finished cells of an eval folder keyed by (prompt set, attack); a folder with two agents is ambiguous."""
    trajectories = folder / "trajectories"
    if not trajectories.is_dir():
        raise FileNotFoundError(f"{folder} is not a finished evaluation (no trajectories/ folder): pass the --out "
                                "folder of a `search-gym eval` run")
    cells: dict[tuple[str, str], tuple[Cell, Path]] = {}
    for cell in finished_cells(folder):
        path = trajectories / f"{cell.slug}.jsonl"
        if not path.is_file():
            continue
        key = (_set_key(cell.prompt_set), cell.attack)
        if key in cells:
            raise ValueError(f"{folder} has {key} for two agents ({cells[key][0].agent}, {cell.agent}): compare "
                             "folders of one agent each")
        cells[key] = (cell, path)
    return cells


def per_question(path: Path) -> dict[str, dict]:
    records = read_jsonl(path)
    primary = primary_judges(records)
    return {str(r["question_id"]): episode_metrics(r, primary) for r in records}


EPISODES_FORMAT = "search_gym.episode_metrics/1"


def export_episodes(folder: str | os.PathLike, out: str | os.PathLike) -> int:
    """Write the per-episode metrics of every finished cell of the eval ``folder`` to ``out`` (JSON lines, gzipped
    when the name ends in ``.gz``): a header line ``{"format", "source"}``, then one line per episode ``{"agent",
    "prompt_set", "set_key", "attack", "question_id", "metrics"}``. ``set_key`` is read now, while the prompt file
    is there, so the export pairs by content later. Returns the number of episodes written."""
    cells = eval_cells(Path(folder))
    out = Path(out)
    lines = [{"format": EPISODES_FORMAT, "source": str(folder)}]
    for (set_key, attack), (cell, path) in sorted(cells.items()):
        for qid, values in per_question(path).items():
            lines.append({"agent": cell.agent, "prompt_set": cell.prompt_set, "set_key": set_key, "attack": attack,
                          "question_id": qid, "metrics": values})
    data = "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines).encode()
    # mtime=0: the same evaluation exports to the same bytes (a committed file does not change on a rerun)
    write_bytes_atomic(out, gzip.compress(data, mtime=0) if out.name.endswith(".gz") else data)
    return len(lines) - 1


def _exported_cells(path: Path) -> dict[tuple[str, str], tuple[Cell, dict[str, dict]]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt") as fh:
        lines = [json.loads(line) for line in fh if line.strip()]
    if not lines or lines[0].get("format") != EPISODES_FORMAT:
        raise ValueError(f"{path} is not an episode export (its first line must carry format {EPISODES_FORMAT!r}): "
                         "write one with `search-gym eval --export-episodes EVAL_DIR OUT`")
    cells: dict[tuple[str, str], tuple[Cell, dict[str, dict]]] = {}
    for row in lines[1:]:
        key = (row["set_key"], row["attack"])
        cell, episodes = cells.setdefault(key, (Cell(row["agent"], row["prompt_set"], row["attack"]), {}))
        if row["agent"] != cell.agent:
            raise ValueError(f"{path} has {key} for two agents ({cell.agent}, {row['agent']})")
        episodes[str(row["question_id"])] = row["metrics"]
    return cells


def _cells_with_episodes(source: Path) -> dict[tuple[str, str], tuple[Cell, dict[str, dict]]]:
    """An eval folder's cells (episodes read from its trajectories) or an export file's."""
    if source.is_file():
        return _exported_cells(source)
    return {key: (cell, per_question(path)) for key, (cell, path) in eval_cells(source).items()}


def compare_evals(before: str | os.PathLike, after: str | os.PathLike, *, metrics: list[str] | None = None,
                  n_boot: int = 2000, seed: int = 0) -> dict:
    """``{"before", "after", "cells": [{prompt_set, attack, agents, paired, only_before, only_after, metrics:
    {metric: {mean, lo, hi, n, before, after}}}]}``: for each shared cell, the paired difference after - before
    of each metric (``before`` / ``after`` are the means over the paired questions). Each side is an eval folder or
    an :func:`export_episodes` file."""
    a_cells, b_cells = _cells_with_episodes(Path(before)), _cells_with_episodes(Path(after))
    shared = [k for k in a_cells if k in b_cells]
    if not shared:
        # a prompt file that was not on the machine when a side was exported or read keys by its path, and two
        # copies of one file in two run folders then never pair: say so rather than leave the user guessing
        by_path = sorted({k[0] for k in (*a_cells, *b_cells) if _is_file_set(k[0])})
        hint = (f"; these prompt files were keyed by their path because they were not on this machine when read: "
                f"{', '.join(by_path)} (put them back and export or compare again, so they key by content)"
                if by_path else "")
        raise ValueError(f"{before} and {after} share no (prompt set, attack) cell: nothing to pair{hint}")
    metrics = metrics or list(METRICS)
    rows = []
    for key in shared:
        (a_cell, a), (b_cell, b) = a_cells[key], b_cells[key]
        ids = [q for q in a if q in b]
        stats = {}
        for m in metrics:
            xs, ys = [a[q][m] for q in ids], [b[q][m] for q in ids]
            ci = paired_bootstrap_ci(xs, ys, n_boot=n_boot, seed=seed)
            both = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None and x == x and y == y]
            ci["before"] = sum(x for x, _ in both) / len(both) if both else None
            ci["after"] = sum(y for _, y in both) / len(both) if both else None
            ci["mde"] = paired_mde(xs, ys)["mde"]  # what "the interval includes 0" can rule out
            stats[m] = ci
        rows.append({"prompt_set": a_cell.prompt_set, "attack": key[1], "agents": [a_cell.agent, b_cell.agent],
                     "paired": len(ids), "only_before": len(a) - len(ids), "only_after": len(b) - len(ids),
                     "metrics": stats})
    return {"before": str(before), "after": str(after), "cells": rows}


def _fmt(value, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def comparison_markdown(result: dict, metrics: list[str] | None = None) -> str:
    """One row per (cell, metric): before, after, the paired difference and its 95% interval, n pairs, and the
    smallest true difference these pairs detect with 80% power (two-sided 5%; :func:`search_gym.stats.paired_mde`)."""
    lines = [f"before: `{result['before']}`; after: `{result['after']}` (after - before, paired by question; "
             "detectable (80%): the smallest true difference a two-sided 5% test on these pairs finds with 80% "
             "power)", "",
             "| prompt set | attack | metric | n | before | after | difference [95% CI] | detectable (80%) |",
             "|---|---|---|---:|---:|---:|---|---:|"]
    for row in result["cells"]:
        for m, s in row["metrics"].items():
            if metrics and m not in metrics:
                continue
            if not s.get("n"):
                continue
            d = DIGITS.get(m, 1)
            lines.append(f"| {row['prompt_set']} | {row['attack']} | {METRICS.get(m, m)} | {s['n']} | "
                         f"{_fmt(s['before'], d)} | {_fmt(s['after'], d)} | {_fmt(s['mean'], d)} "
                         f"[{_fmt(s['lo'], d)}, {_fmt(s['hi'], d)}] | {_fmt(s.get('mde'), d)} |")
    unpaired = [r for r in result["cells"] if r["only_before"] or r["only_after"]]
    for r in unpaired:
        lines.append(f"\n{r['prompt_set']} / {r['attack']}: {r['only_before']} questions only before, "
                     f"{r['only_after']} only after (left out)")
    return "\n".join(lines)
