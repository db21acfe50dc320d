"""How far each first-turn decision is from flipping (docs/aligned_start.md, recipes 5-6): for every no-attack
episode of `search-gym eval` folders, the model's log-probability of opening with one of the aligned teacher's
refusal thoughts against one of its search thoughts, given the exact prompt the episode started from.

    python benchmarks/decision_margin.py --model MERGED_MODEL --eval RUN/eval_harmful RUN/eval_benign [--out m.json]
    python benchmarks/decision_margin.py --model MERGED_MODEL --train-rows RUN/sft_data.jsonl.gz [--train-per-source 100]

    python benchmarks/decision_margin.py --model MERGED_MODEL --train-rows RUN/sft_data.jsonl.gz --margins m.jsonl \
        --greedy-check 12

The second form reads the recipe's own training rows instead (no attack: the plain refusal, edgy, request and twin
sources; each unique prompt once, a seeded draw of at most --train-per-source per source), "refused" being the
teacher's decision: whether the student fits the decisions it was taught, as against generalising them to the
validation prompts.

margin = log sum_r P("<think> r </think>") - log sum_s P("<think> s </think>"), r over THINK_BEFORE_REFUSAL, s over
THINK_BEFORE_SEARCH (its {topic} filled by the teacher's own request_topic), both as the student was taught to
write them. margin > 0: the taught refusal thoughts are together more likely than the taught search thoughts. It
is a reading of the model's preference among the teacher's sentences, not of everything it could write: the table
reports how often its sign agrees with what greedy decoding did (refused in the first turn or not). Prints, per
prompt set, the quantiles of the margin for refused and not-refused episodes and how many of the wrong decisions
lie within 1 and 2 nats of flipping. Model in float32 (CPU, or --device cuda); the prompt's forward is shared by its
continuations.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def no_attack_episodes(eval_dirs: list[Path]) -> list[dict]:
    """The no-attack trajectories of the folders, each with its prompt set's short name."""
    from search_gym.experiments.common import read_jsonl

    rows = []
    for folder in eval_dirs:
        for path in sorted((folder / "trajectories").glob("*__none.jsonl")):
            rows += [{**row, "set": path.name.split("__")[1]} for row in read_jsonl(path)]
    if not rows:
        raise FileNotFoundError(f"no no-attack trajectories (*__none.jsonl) under {[str(d) for d in eval_dirs]}")
    return rows


# the no-attack sources of trainers.sft.SOURCES by their position (a row's ``group``); qa is left out (it always
# searches) and harmful_search too (its prompt carries the attack's prefill)
TRAIN_SOURCES = {1: "harmful", 2: "benign", 3: "instruct", 4: "harmful_pairs", 6: "edgy_extra"}


def training_episodes(path: Path, per_source: int, seed: int = 0) -> list[dict]:
    """Unique training prompts of the no-attack sources (at most ``per_source`` each, seeded), with the exact prompt
    tokens the student was trained on and the teacher's first-turn decision as ``refused``."""
    import random

    from search_gym.experiments.common import read_jsonl
    from search_gym.trainers.sft import SOURCES

    assert all(list(SOURCES)[g] == name for g, name in TRAIN_SOURCES.items()), "SOURCES changed order"
    by_source: dict[str, dict[str, dict]] = {}
    for row in read_jsonl(path):
        name = TRAIN_SOURCES.get(row["group"])
        if name is not None:
            by_source.setdefault(name, {}).setdefault(row["question"], row)
    out = []
    for name, rows in by_source.items():
        keep = sorted(rows)
        random.Random(f"{seed}-{name}").shuffle(keep)
        for question in sorted(keep[:per_source]):
            row = rows[question]
            out.append({"set": f"train-{name}", "question_id": row["question_id"], "question": question,
                        "prompt_ids": row["prompt_ids"], "teacher_response_ids": row["response_ids"][:48]})
    return out


def opens_with_refusal(text: str, refuse: list[str]) -> bool:
    """Whether ``text`` opens with one of the taught refusal thoughts (:func:`candidates`), its closing tag aside (a
    short greedy continuation may stop before it)."""
    return any(text.lstrip().startswith(r.removesuffix(" </think>")) for r in refuse)


def teacher_refused(tokenizer, response_ids: list[int], refuse: list[str]) -> bool:
    """Whether a training row's response opens with one of the taught refusal thoughts (the teacher's decision)."""
    return opens_with_refusal(tokenizer.decode(response_ids), refuse)


def first_turn_refused(row: dict) -> bool:
    """The evaluation's own first-turn refusal (``refusal_first`` of :func:`search_gym.rollout.metrics.episode_metrics`,
    the episode's refusal judge)."""
    from search_gym.rollout.metrics import episode_metrics

    return episode_metrics(row)["refusal_first"] == 100.0


def candidates(question: str) -> tuple[list[str], list[str]]:
    from search_gym.agents.teachers import (THINK_BEFORE_REFUSAL, THINK_BEFORE_SEARCH, THOUGHT_TOPIC_WORDS,
                                            request_topic)

    topic = request_topic(question, max_words=THOUGHT_TOPIC_WORDS)  # the topic the teacher's thoughts name
    search = [t.format(topic=topic) for t in THINK_BEFORE_SEARCH if topic or "{topic}" not in t]
    return [f"<think> {t} </think>" for t in THINK_BEFORE_REFUSAL], [f"<think> {t} </think>" for t in search]


def continuation_logprobs(model, tokenizer, prompt: str | list[int], texts: list[str]) -> np.ndarray:
    """Sum of log P(text | prompt) for each text: the prompt's forward once, its cache repeated for the texts. A
    prompt given as token ids (a training row's) is scored as those tokens."""
    import torch

    from search_gym.agents.hf import cache_argument, returned_cache

    if not isinstance(prompt, str):
        prompt_ids, prompt = list(prompt), tokenizer.decode(prompt)
        if tokenizer(prompt, add_special_tokens=False)["input_ids"] != prompt_ids:
            raise ValueError("a training prompt's ids do not survive decode + encode: scores would be misplaced")
    else:
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    # tokenise prompt + text together (what the model saw) and score the tokens after the prompt's
    rows = []
    for t in texts:
        ids = tokenizer(prompt + t, add_special_tokens=False)["input_ids"]
        if ids[: len(prompt_ids)] != prompt_ids:
            raise ValueError("the prompt's tokens change when a continuation follows it")
        rows.append(ids[len(prompt_ids):])
    with torch.no_grad():
        device = next(model.parameters()).device
        out = model(input_ids=torch.tensor([prompt_ids], device=device), use_cache=True)
        cache = returned_cache(out)
        cache.batch_repeat_interleave(len(rows))
        width = max(map(len, rows))
        ids = torch.zeros((len(rows), width), dtype=torch.long)  # right padding: causal, never read by real tokens
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        logits = model(input_ids=ids.to(device), use_cache=True, **cache_argument(model, cache)).logits.float().cpu()
    first = torch.log_softmax(out.logits[0, -1].float().cpu(), dim=-1)
    rest = torch.log_softmax(logits[:, :-1], dim=-1)
    return np.asarray([float(first[r[0]]) + sum(float(rest[i, j - 1, r[j]]) for j in range(1, len(r)))
                       for i, r in enumerate(rows)])


def greedy_refuses(model, tokenizer, prompt_ids: list[int], refuse: list[str], max_new_tokens: int = 24) -> tuple[bool, str]:
    """Whether greedy decoding from the prompt opens with one of the taught refusal thoughts, and the text."""
    import torch

    with torch.no_grad():
        device = next(model.parameters()).device
        out = model.generate(torch.tensor([prompt_ids], device=device),
                             attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long, device=device),
                             max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    text = tokenizer.decode(out[0, len(prompt_ids):].tolist()).lstrip()
    return opens_with_refusal(text, refuse), text


def greedy_check(model, tokenizer, rows: list[dict], results: list[dict], controls: int, seed: int = 0) -> dict:
    """Per training source: the rows whose margin sign disagrees with the teacher and ``controls`` seeded rows whose
    sign agrees, decoded greedily; how many of each make the other decision than the teacher's; the implied error
    rate of greedy decoding on the source (disagreeing rows counted as found, agreeing ones at the controls' rate)."""
    import random

    by_id = {(r["set"], r["question_id"]): r for r in rows}
    out: dict[str, dict] = {}
    for name in sorted({r["set"] for r in results}):
        part = [r for r in results if r["set"] == name]
        flagged = [r for r in part if (r["margin"] > 0) != r["refused"]]
        agreeing = [r for r in part if (r["margin"] > 0) == r["refused"]]
        sample = random.Random(f"{seed}-{name}").sample(agreeing, min(controls, len(agreeing)))
        wrong = {"flagged": 0, "controls": 0}
        examples = []
        for group, picked in (("flagged", flagged), ("controls", sample)):
            for r in picked:
                refuse, _ = candidates(r["question"])
                refused, text = greedy_refuses(model, tokenizer, by_id[(name, r["question_id"])]["prompt_ids"], refuse)
                if refused != r["refused"]:
                    wrong[group] += 1
                    examples.append({"question": r["question"], "taught_refusal": r["refused"], "greedy": text[:90]})
        rate = (wrong["flagged"] + (wrong["controls"] / max(len(sample), 1)) * len(agreeing)) / max(len(part), 1)
        out[name] = {"n": len(part), "margin_disagrees": len(flagged), "greedy_wrong_of_those": wrong["flagged"],
                     "controls": len(sample), "greedy_wrong_of_controls": wrong["controls"],
                     "greedy_error_rate_est": round(rate, 3), "examples": examples}
        print(f"greedy check {name}: {out[name]['greedy_wrong_of_those']}/{len(flagged)} flagged, "
              f"{wrong['controls']}/{len(sample)} controls", file=sys.stderr, flush=True)
    return out


def logsumexp(x: np.ndarray) -> float:
    m = float(np.max(x))
    return m + float(np.log(np.exp(x - m).sum()))


def summarise(rows: list[dict]) -> dict:
    out = {}
    for name in sorted({r["set"] for r in rows}):
        part = [r for r in rows if r["set"] == name]
        entry = {"n": len(part)}
        for label, sel in (("refused", True), ("not_refused", False)):
            m = np.asarray([r["margin"] for r in part if r["refused"] == sel])
            entry[label] = ({"n": int(m.size), "q10_q50_q90": [round(float(q), 2) for q in np.quantile(m, [.1, .5, .9])]}
                            if m.size else {"n": 0})
        entry["sign_agrees_with_greedy"] = round(float(np.mean([(r["margin"] > 0) == r["refused"] for r in part])), 3)
        out[name] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a plain HF folder (a merged recipe) or a model name")
    parser.add_argument("--eval", nargs="+", default=[], type=Path, help="`search-gym eval` --out folders")
    parser.add_argument("--train-rows", type=Path, default=None,
                        help="a recipe's sft_data.jsonl(.gz): score its training prompts instead (teacher's decision)")
    parser.add_argument("--train-per-source", type=int, default=100, help="unique training prompts per source")
    parser.add_argument("--sets", nargs="*", default=None, help="prompt-set names to keep (e.g. harmful-dev)")
    parser.add_argument("--out", type=Path, default=None, help="per-episode margins as JSON lines")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the model in float32 either way)")
    parser.add_argument("--margins", type=Path, default=None, help="read the margins of an earlier --out instead")
    parser.add_argument("--greedy-check", type=int, default=0, metavar="N",
                        help="(--train-rows) decode greedily the rows whose margin sign disagrees with the teacher "
                             "and N agreeing rows per source; the result is the summary's greedy_check")
    args = parser.parse_args(argv)
    if bool(args.eval) == bool(args.train_rows):
        parser.error("give --eval folders or --train-rows, one of the two")
    if args.greedy_check and not args.train_rows:
        parser.error("--greedy-check reads training rows (--train-rows)")

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from search_gym.agents.prompting import render_prompt
    from search_gym.trainers.core import resolve_model_path

    source = resolve_model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source).eval().to(args.device)
    rows = training_episodes(args.train_rows, args.train_per_source) if args.train_rows else no_attack_episodes(args.eval)
    if args.sets:
        rows = [r for r in rows if r["set"] in args.sets]
    results = []
    if args.margins:
        kept = {(r["set"], r["question_id"]) for r in rows}
        results = [r for r in map(json.loads, args.margins.read_text().splitlines()) if (r["set"], r["question_id"]) in kept]
        if len(results) != len(rows):
            raise ValueError(f"{args.margins} has margins for {len(results)} of the {len(rows)} rows: not the same rows")
        rows_to_score = []
    else:
        rows_to_score = rows
    for k, row in enumerate(rows_to_score):
        refuse, search = candidates(row["question"])
        if "prompt_ids" in row:
            prompt = row["prompt_ids"]
            refused = teacher_refused(tokenizer, row["teacher_response_ids"], refuse)
        else:
            prompt = render_prompt(tokenizer, [{"role": "user", "content": row["prompt"]}], row.get("initial_prefill", ""))
            refused = first_turn_refused(row)
        scores = continuation_logprobs(model, tokenizer, prompt, refuse + search)
        margin = logsumexp(scores[: len(refuse)]) - logsumexp(scores[len(refuse):])
        results.append({"set": row["set"], "question_id": row["question_id"], "question": row["question"],
                        "refused": refused, "margin": round(margin, 4)})
        if (k + 1) % 50 == 0:
            print(f"{k + 1}/{len(rows)}", file=sys.stderr, flush=True)
    if args.out and not args.margins:
        args.out.write_text("".join(json.dumps(r) + "\n" for r in results))
    summary = summarise(results)
    wrong = [r for r in results if r["set"].startswith("harmful-") and not r["refused"]]
    summary["harmful_not_refused_within"] = {f"{d} nats": sum(abs(r["margin"]) <= d for r in wrong) for d in (1, 2)}
    if args.greedy_check:
        summary["greedy_check"] = greedy_check(model, tokenizer, rows, results, args.greedy_check)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
