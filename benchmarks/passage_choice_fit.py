"""Does the student pick the passage its teacher picked? The grounded thought before a QA answer ("Doc 2 (Stockholm)
answers the question.", ``--grounded-thought true``) names the passage that holds the gold answer by its number:
one digit token decides which passage the answer is read from. Teacher-forced on SFT rows (the prompt, the search,
the retrieved passages and the thought up to "Doc "), this reads the model's log-probabilities of the digits 1-3 at
that token and reports, by the passage the teacher named, how often the taught digit is the most likely one and the
median margin (taught minus the best other, nats).

    python benchmarks/passage_choice_fit.py --model MERGED --rows .devrun/sft_aligned_r6c/sft_data.jsonl.gz \
        [--per-passage 150] [--device cpu] [--out fit_passage.json]

The rows are the QA rows of an SFT data file (``golden_answers`` set, a thought naming "Doc k" in the answer turn);
one row per question (repeats dropped), at most ``--per-passage`` per taught passage, a seeded draw. Prints JSON.

``--eval RUN/eval_benign`` reads the same choice on the validation QA episodes instead (never trained on): the
model's own first turn and the passages its search returned, then "<think> Doc " (the text rendered as the agent
renders it, tokenised at once), against the passage the grounded teacher would have named (the first holding a gold
answer; episodes whose passages hold none are left out).
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
from pathlib import Path

import numpy as np

DIGITS = ("1", "2", "3")


def read_rows(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def passage_token(row: dict, tokenizer) -> tuple[int, int] | None:
    """``(response index of the digit token after "Doc ", taught passage 1-3)`` in the row's answer thought (the span
    the trainer's ``passage_weight`` weights, :func:`search_gym.trainers.sft.answer_thought`), or None when the row
    has none (one turn, no gold answers, a thought that names no passage)."""
    from search_gym.trainers.rollout import TokenEpisode
    from search_gym.trainers.sft import answer_thought

    start, end = answer_thought(TokenEpisode(**row), tokenizer)
    text = ""
    for k in range(start, end):
        piece = tokenizer.decode([row["response_ids"][k]])
        if piece in DIGITS and re.search(r"Doc $", text):
            return k, int(piece)
        text += piece
    return None


def eval_contexts(eval_dir: Path, tokenizer) -> dict[int, list]:
    """Validation QA episodes with a search, by the passage the grounded teacher would name: ``(row, ids, k)``."""
    from search_gym.agents.baselines import _information_docs
    from search_gym.agents.prompting import render_prompt
    from search_gym.agents.teachers import answer_passage

    found = {1: [], 2: [], 3: []}
    for path in sorted((eval_dir / "trajectories").glob("*qa*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if len(row["actions"]) < 2 or not row["searches"] or not row["golden_answers"]:
                continue
            passage = answer_passage(row["golden_answers"], _information_docs(row["env_texts"][0]))
            if passage is None or passage > 2:
                continue
            text = (render_prompt(tokenizer, [{"role": "user", "content": row["prompt"]}]) + row["actions"][0]
                    + row["env_texts"][0] + "<think> Doc ")
            found[passage + 1].append((row, tokenizer.encode(text, add_special_tokens=False), passage + 1))
    return found


def score(model, tokenizer, items: list[tuple[dict, list[int], int]], device: str) -> list[dict]:
    """``items``: ``(row, the token ids before the digit, taught passage)``."""
    import torch

    digit_ids = [tokenizer.convert_tokens_to_ids(d) for d in DIGITS]
    out = []
    for row, ids, taught in items:
        with torch.no_grad():
            logits = model(torch.tensor([ids], device=device), logits_to_keep=1).logits[0, -1].float()
        logp = torch.log_softmax(logits, -1)[digit_ids].cpu().numpy()
        others = [logp[i] for i in range(3) if i != taught - 1]
        out.append({"question": row["question"], "taught": taught, "logp": [round(float(x), 4) for x in logp],
                    "picked": int(np.argmax(logp)) + 1, "margin": round(float(logp[taught - 1] - max(others)), 4)})
    return out


def summarise(scored: list[dict]) -> dict:
    by = {}
    for k in (1, 2, 3):
        part = [s for s in scored if s["taught"] == k]
        if part:
            top = round(float(np.mean([s["picked"] == k for s in part])), 3)
            by[str(k)] = {"n": len(part), "taught_digit_most_likely": top,
                          "median_margin": round(float(np.median([s["margin"] for s in part])), 3),
                          "picked": {str(j): sum(s["picked"] == j for s in part) for j in (1, 2, 3)}}
    return by


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a merged HF model folder")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--rows", type=Path, help="an SFT data file (.jsonl or .jsonl.gz)")
    source.add_argument("--eval", type=Path, help="a `search-gym eval` folder with QA trajectories (validation)")
    parser.add_argument("--per-passage", type=int, default=150, help="rows per taught passage at most (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="also write every scored row here (JSON lines)")
    args = parser.parse_args(argv)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    seen, found = set(), {1: [], 2: [], 3: []}
    if args.eval:
        found = eval_contexts(args.eval, tokenizer)
    for row in read_rows(args.rows) if args.rows else ():
        if row["question"] in seen:
            continue
        hit = passage_token(row, tokenizer)
        if hit is not None:
            seen.add(row["question"])
            k, taught = hit
            found[taught].append((row, row["prompt_ids"] + row["response_ids"][:k], taught))
    rng = np.random.default_rng(args.seed)
    chosen = []
    for k, items in found.items():
        order = rng.permutation(len(items))
        chosen += [items[i] for i in (order[: args.per_passage] if args.per_passage else order)]
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype="float32").to(args.device).eval()
    scored = score(model, tokenizer, chosen, args.device)
    if args.out:
        args.out.write_text("".join(json.dumps(s) + "\n" for s in scored))
    print(json.dumps({"model": args.model, "rows": str(args.rows or args.eval),
                      "unique_questions_by_taught_passage": {str(k): len(v) for k, v in found.items()},
                      "by_taught_passage": summarise(scored)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
