"""Re-judge a finished ``search-gym eval`` folder: the same episodes, scored by another query / answer judge.

The recorder keeps every query an episode sent and its final answer, so a change of judge needs no new episodes:
this script scores them again and writes a folder that ``search_gym.experiments.evaluation.summarize`` reads like any other.

    python benchmarks/rejudge_eval.py runs/eval_smollm2_cpu_n20 --out runs/eval_smollm2_cpu_n20_first --judge first
    python benchmarks/rejudge_eval.py runs/eval_x --out runs/eval_x_rejudged            # the current default judge

``--judge``: ``current`` (the default query classifier, :func:`search_gym.safety.ensure_query_classifier`) or
``first`` (the first version's recipe, harmful prompts vs trivia questions:
:func:`search_gym.judges.evaluation.baseline_v1_weights`). The re-judged scores take the primary names
(``query_classifier``, ``answer_classifier``), so the summary's main columns use them; the recorded ones are kept
under ``<name>_recorded`` and summarised as ``search_safety@query_classifier_recorded``. Per-step ``infos`` are left
as recorded. Episodes without a search still count 100 (nothing reached the search engine), as in the eval.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path


def _judges(which: str):
    from search_gym.safety.classifier import QueryHarmClassifier

    if which == "current":
        return QueryHarmClassifier(), QueryHarmClassifier(aspect="answer")
    if which == "first":
        from search_gym.judges.evaluation import baseline_v1_weights

        weights = baseline_v1_weights()
        return QueryHarmClassifier(weights, name="query_classifier"), QueryHarmClassifier(
            weights, name="answer_classifier", aspect="answer")
    raise SystemExit(f"--judge takes 'current' or 'first', not {which!r}")


def _score(judge, texts: list[str]) -> list[tuple[float | None, bool | None]]:
    from search_gym.safety.base import JudgeInput

    out = []
    for result in judge.judge([JudgeInput(text=t) for t in texts]) if texts else []:
        safety = None if result.safety is None or math.isnan(result.safety) else round(float(result.safety), 4)
        out.append((safety, result.flagged))
    return out


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return round(sum(kept) / len(kept), 4) if kept else None


def rejudge_record(record: dict, query_scores: list, answer_score: tuple | None) -> dict:
    """``record`` with its episode-level query / answer scores replaced (the recorded ones renamed)."""
    safety = dict(record.get("safety") or {})
    qname, aname = "query_classifier", "answer_classifier"
    for key in ("query_safety_mean", "query_safety_min", "query_safety_first", "query_safety_by_position",
                "query_flagged_any", "answer_safety", "answer_flagged"):
        entry = dict(safety.get(key) or {})
        for name in (qname, aname):
            if name in entry:
                entry[f"{name}_recorded"] = entry.pop(name)
        safety[key] = entry
    values = [s for s, _ in query_scores]
    kept = [v for v in values if v is not None]
    safety["query_safety_mean"][qname] = _mean(values)
    safety["query_safety_min"][qname] = min(kept) if kept else None
    safety["query_safety_first"][qname] = values[0] if values else None
    safety["query_safety_by_position"][qname] = values
    safety["query_flagged_any"][qname] = any(bool(f) for _, f in query_scores)
    if answer_score is not None:
        safety["answer_safety"][aname], safety["answer_flagged"][aname] = answer_score
    return dict(record, safety=safety)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="a finished search-gym eval folder (with trajectories/)")
    parser.add_argument("--out", required=True, help="output folder (trajectories/, summary.json, summary.md)")
    parser.add_argument("--judge", default="current", help="current (the default classifier) or first")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    args = parser.parse_args(argv)

    from search_gym.experiments.evaluation import markdown_table, summarize

    src, out = Path(args.src) / "trajectories", Path(args.out)
    if not src.is_dir():
        raise SystemExit(f"{src} does not exist: pass a search-gym eval output folder")
    (out / "trajectories").mkdir(parents=True, exist_ok=True)
    query_judge, answer_judge = _judges(args.judge)
    for path in sorted(src.glob("*.jsonl")):
        if path.name.endswith(".partial.jsonl"):
            continue
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        queries = [str(q) for r in records for q in (r.get("searches") or [])]
        answers = [str(r["answer"]) for r in records if r.get("answer") is not None]
        q_scores, a_scores = iter(_score(query_judge, queries)), iter(_score(answer_judge, answers))
        lines = []
        for r in records:
            qs = [next(q_scores) for _ in (r.get("searches") or [])]
            a = next(a_scores) if r.get("answer") is not None else None
            lines.append(json.dumps(rejudge_record(r, qs, a), ensure_ascii=False))
        (out / "trajectories" / path.name).write_text("\n".join(lines) + "\n", encoding="utf-8")
        meta = path.with_name(path.name[: -len(".jsonl")] + ".meta.json")
        if meta.exists():
            shutil.copy2(meta, out / "trajectories" / meta.name)
        print(f"{path.name}: {len(records)} episodes, {len(queries)} queries, {len(answers)} answers re-judged",
              file=sys.stderr)
    summary = summarize(out, n_boot=args.bootstrap)
    summary["rejudged"] = {"source": str(args.src), "judge": args.judge}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    table = markdown_table(summary)
    (out / "summary.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
