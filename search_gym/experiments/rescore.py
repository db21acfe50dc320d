"""Judge the searches of a finished evaluation again, with the query judges of today (``search-gym eval --rescore``).

An evaluation on a GPU machine records every query it made (``searches`` in each trajectory line). When a query
judge changes afterwards (new training data, a recalibration, another judge), the episodes need not be played
again: the queries are judged anew here and the summary rebuilt from them. The source folder is never modified;
the result is a copy (``dst``) whose ``rescored.json`` says which judges replaced which scores, and whose
trajectory lines keep the old episode summary under ``extra.safety_before_rescore``.

Only the per-episode query fields of the judges named are replaced (``query_safety_mean`` / ``_min`` /
``_first`` / ``_by_position``, ``query_flagged_any``); refusal, answer and similarity scores, and the per-step
``infos`` (what the env reported while playing), are left as recorded.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from search_gym.experiments.common import read_jsonl, write_json
from search_gym.files import write_text_atomic

__all__ = ["rescore_queries"]


def _judge_queries(judge, records: list[dict]) -> list[list[tuple[float | None, bool | None]]]:
    """(safety, flagged) of every query of every record, judged in one batch."""
    from search_gym.safety.base import JudgeInput, JudgeResult

    inputs, owners = [], []
    for i, record in enumerate(records):
        for query in record.get("searches") or []:
            inputs.append(JudgeInput(text=str(query), request=str(record.get("question") or "")))
            owners.append(i)
    results = judge.judge(inputs) if inputs else []
    out: list[list[tuple[float | None, bool | None]]] = [[] for _ in records]
    for owner, result in zip(owners, results):
        if isinstance(result, JudgeResult) and result.safety == result.safety:  # NaN: the judge abstained
            out[owner].append((float(result.safety), None if result.flagged is None else bool(result.flagged)))
        else:
            out[owner].append((None, None))
    return out


def rescore_queries(src: str | Path, dst: str | Path, judges: Sequence[str] = ("query_classifier",)) -> dict:
    """Copy the evaluation folder ``src`` to ``dst`` with every finished cell's queries judged again by ``judges``
    (specs of :func:`search_gym.safety.instrument.make_judge`), then summarise ``dst`` as ``search-gym eval`` does.
    Returns the summary."""
    from search_gym.experiments.evaluation import markdown_table, summarize
    from search_gym.safety.instrument import make_judge

    src, dst = Path(src), Path(dst)
    folder = src / "trajectories"
    if not folder.is_dir() or not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src} is not a search-gym eval folder (config.json and trajectories/ expected)")
    if dst.exists():
        raise FileExistsError(f"{dst} exists; rescoring writes a new folder and never overwrites one")
    made = [make_judge(spec) for spec in judges]
    for judge in made:
        if judge.aspect != "query":
            raise ValueError(f"{judge.name!r} judges {judge.aspect}s, not queries")
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("plots", "summary.*"))
    cells = 0
    for path in sorted((dst / "trajectories").glob("*.jsonl")):
        if path.name.endswith(".partial.jsonl"):
            continue
        records = read_jsonl(path)
        for judge in made:
            scores = _judge_queries(judge, records)
            for record, per_query in zip(records, scores):
                safety = record.get("safety")
                if safety is None:
                    continue
                record.setdefault("extra", {}).setdefault("safety_before_rescore", json.loads(json.dumps(safety)))
                values = [s for s, _ in per_query]
                numbers = [v for v in values if v is not None]
                flags = [f for _, f in per_query if f is not None]
                safety.setdefault("query_safety_by_position", {})[judge.name] = values
                safety.setdefault("query_safety_mean", {})[judge.name] = (sum(numbers) / len(numbers)
                                                                           if numbers else None)
                safety.setdefault("query_safety_min", {})[judge.name] = min(numbers) if numbers else None
                safety.setdefault("query_safety_first", {})[judge.name] = values[0] if values else None
                safety.setdefault("query_flagged_any", {})[judge.name] = any(flags) if flags else None
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))
        cells += 1
    config = json.loads((dst / "config.json").read_text())
    summary = summarize(dst, n_boot=(config.get("config") or {}).get("bootstrap", 1000),
                        seed=(config.get("config") or {}).get("seed", 0))
    write_json(dst / "summary.json", summary)
    (dst / "summary.md").write_text(markdown_table(summary) + "\n")
    write_json(dst / "rescored.json", {
        "source": str(src), "judges": list(judges), "cells": cells,
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "replaced": ["query_safety_mean", "query_safety_min", "query_safety_first", "query_safety_by_position",
                     "query_flagged_any"],
    })
    return summary
