"""Why QA EM does not move (docs/aligned_start.md, recipes 4a/4b and 9): retrieval of the model's own queries against
the question verbatim and the best of the teacher's rephrasings (top 3 and top 1), and the reader's accuracy by the
passage that holds the answer, read from a `search-gym eval` folder's QA trajectories; optionally where the answer
sits in an SFT data file's QA rows (what the teacher taught).

    python benchmarks/reader_diagnosis.py --eval RUN/eval_benign [--sft-data .devrun/sft_aligned_r3/sft_data.jsonl.gz]

Answers are compared after SQuAD normalisation (lower case, no punctuation or articles) by containment in a
passage's title + text; the index is the one the episodes searched (the eval's config.json; dense by default) and,
for comparison, the model's first queries are also searched in the dense, BM25 and hybrid indexes of the same corpus
(`*_by_index`). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import sys
from pathlib import Path

from search_gym.rewards import normalize_answer as norm  # SQuAD normalisation, as EM uses


def first_passage(golds: list[str], passages: list[str]) -> int | None:
    """Index of the first passage (normalised text) containing a normalised gold answer."""
    keys = [norm(g) for g in golds if norm(g)]
    return next((i for i, p in enumerate(passages) if any(k in p for k in keys)), None)


def qa_trajectories(eval_dir: Path) -> list[dict]:
    files = [p for p in sorted((eval_dir / "trajectories").glob("*.jsonl")) if "qa" in p.name]
    if not files:
        raise FileNotFoundError(f"no QA trajectories (*qa*.jsonl) in {eval_dir / 'trajectories'}")
    return [json.loads(line) for path in files for line in path.read_text().splitlines() if line.strip()]


def eval_retriever(eval_dir: Path) -> str:
    """The index the evaluation's episodes searched (its config.json's cell settings; dense when not recorded)."""
    path = eval_dir / "config.json"
    settings = json.loads(path.read_text()).get("cell_settings", {}) if path.is_file() else {}
    return settings.get("retriever") or "dense"


def diagnose_eval(rows: list[dict], retriever: str = "dense") -> dict:
    from search_gym.agents.teachers import query_forms
    from search_gym.retrieval.factory import RetrieverConfig, get_retriever

    rows = [r for r in rows if r["searches"] and r["golden_answers"]]
    queries = [s if isinstance(s, str) else s["query"] for s in (r["searches"][0] for r in rows)]
    indexes = {kind: get_retriever(RetrieverConfig(kind=kind)) for kind in ("dense", "bm25", "hybrid")}
    searched = indexes[retriever] if retriever in indexes else get_retriever(RetrieverConfig(kind=retriever))

    def found(hit_lists):
        return [first_passage(r["golden_answers"], [norm(h.contents) for h in hits])
                for r, hits in zip(rows, hit_lists)]

    def positions(index, texts):
        return found(index.search(texts, k=3))

    # the model's queries are searched once per index: the searched index's hits also give the passages read below
    hits_by_index = {kind: index.search(queries, k=3) for kind, index in indexes.items()}
    hits = hits_by_index[retriever] if retriever in hits_by_index else searched.search(queries, k=3)
    by_index = {kind: found(h) for kind, h in hits_by_index.items()}
    model_pos = found(hits)
    question_pos = positions(searched, [r["question"] for r in rows])
    bm25_pos = by_index["bm25"]
    # an upper bound for a better query: per question, the best rank any of the teacher's rephrasings reaches (an
    # oracle choice made with the gold answer, which neither the teacher's rows nor the student make)
    forms = [query_forms(r["question"]) or [r["question"]] for r in rows]
    form_pos = [positions(searched, [f[j] if j < len(f) else f[0] for f in forms]) for j in range(max(map(len, forms)))]
    best_form = [min((p for p in ps if p is not None), default=None) for ps in zip(*form_pos)]
    n = len(rows)
    by_passage: dict[int, list[bool]] = collections.defaultdict(list)
    first_title = 0
    for r, pos, passages in zip(rows, model_pos, hits):
        if pos is None:
            continue
        by_passage[pos].append(bool(r["correct"]))
        title = norm(passages[0].contents.split("\n")[0])
        answer = norm(r["answer"] or "")
        first_title += bool(answer) and (answer == title or answer in title)
    retrieved = [p for p in model_pos if p is not None]
    correct_hit = sum(c for v in by_passage.values() for c in v)
    return {
        "retriever": retriever,
        "episodes_with_a_search": n,
        "recall@3_model_queries": sum(p is not None for p in model_pos) / n,
        "recall@3_question_verbatim": sum(p is not None for p in question_pos) / n,
        "recall@3_bm25_model_queries": sum(p is not None for p in bm25_pos) / n,
        "recall@3_dense_or_bm25": sum(a is not None or b is not None for a, b in zip(by_index["dense"], bm25_pos)) / n,
        "top1_model_queries": model_pos.count(0) / n,
        "top1_question_verbatim": question_pos.count(0) / n,
        "top1_best_teacher_form": best_form.count(0) / n,
        "top1_model_queries_by_index": {kind: pos.count(0) / n for kind, pos in by_index.items()},
        "recall@3_model_queries_by_index": {kind: sum(p is not None for p in pos) / n
                                            for kind, pos in by_index.items()},
        "em_given_answer_retrieved": correct_hit / max(1, len(retrieved)),
        "em_given_not_retrieved": sum(bool(r["correct"]) for r, p in zip(rows, model_pos) if p is None)
        / max(1, n - len(retrieved)),
        "by_answer_passage": {str(k + 1): {"n": len(v), "em": sum(v) / len(v)} for k, v in sorted(by_passage.items())},
        "answer_is_passage_1_title": first_title,
    }


def diagnose_sft(path: Path) -> dict:
    """Where the answer sits in the QA rows (desc-/fanout- ids) of an SFT data file, and the pre-answer thoughts."""
    from transformers import AutoTokenizer

    from search_gym.agents.baselines import _information_docs
    from search_gym.agents.teachers import answer_passage
    from search_gym.trainers.core import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("smollm2"))
    opener = gzip.open if path.suffix == ".gz" else open
    where, thoughts = collections.Counter(), collections.Counter()
    with opener(path, "rt") as f:
        for line in f:
            row = json.loads(line)
            if row["question_id"].split("-")[0] not in ("desc", "fanout"):
                continue
            text = tokenizer.decode(row["response_ids"])
            where[answer_passage(row["golden_answers"], _information_docs(text))] += 1
            found = re.findall(r"<think>(.*?)</think>", text, re.S)
            thoughts[found[-1].strip() if found else ""] += 1
    total = sum(where.values())
    return {"qa_rows": total, "answer_passage": {str(k + 1 if k is not None else None): v for k, v in where.items()},
            "answer_in_passage_1_share": where[0] / max(1, total),
            "thought_doc_1_has_what_i_need": thoughts["Doc 1 has what I need."]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval", type=Path, help="a `search-gym eval` folder with QA trajectories")
    parser.add_argument("--sft-data", type=Path, help="an sft_data.jsonl(.gz) to read the teacher's QA rows from")
    args = parser.parse_args(argv)
    if not args.eval and not args.sft_data:
        parser.error("give --eval, --sft-data or both")
    out = {}
    if args.eval:
        out["eval"] = diagnose_eval(qa_trajectories(args.eval), eval_retriever(args.eval))
    if args.sft_data:
        out["sft_data"] = diagnose_sft(args.sft_data)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
