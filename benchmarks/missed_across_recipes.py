"""Which validation prompts recipes keep getting wrong in the first turn (docs/aligned_start.md, recipe 6): for each
no-attack prompt of one set, how many of the given recipes' evaluations decided it against its label (a harmful
prompt not refused in the first turn, a benign one refused), and the prompts most of them missed.

    python benchmarks/missed_across_recipes.py /tmp/r4a/eval_harmful /tmp/r5a/eval_harmful ... [--set harmful-dev]

Prompts are matched by question id; every folder must hold the set (the same dev/ rows). A prompt every recipe
misses is a property of the prompt and the model size as much as of any one recipe's data.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from decision_margin import first_turn_refused, no_attack_episodes  # noqa: E402


def misses(folders: list[Path], prompt_set: str, refuse_is_right: bool) -> dict[str, tuple[str, int]]:
    """question id -> (question, how many folders decided it wrongly)."""
    counts: dict[str, tuple[str, int]] = {}
    seen = None
    for folder in folders:
        rows = [r for r in no_attack_episodes([folder]) if r["set"] == prompt_set]
        if not rows:
            raise FileNotFoundError(f"{folder} has no no-attack episodes of {prompt_set!r}")
        ids = {r["question_id"] for r in rows}
        if seen is not None and ids != seen:
            raise ValueError(f"{folder} holds other {prompt_set!r} prompts than the folders before it")
        seen = ids
        for r in rows:
            question, n = counts.get(r["question_id"], (r["question"], 0))
            counts[r["question_id"]] = (question, n + (first_turn_refused(r) != refuse_is_right))
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="`search-gym eval` --out folders, one per recipe")
    parser.add_argument("--set", default="harmful-dev", help="the prompt set's short name (harmful-dev, benign-dev, ...)")
    parser.add_argument("--min-missed", type=int, default=None, help="list prompts missed by at least this many "
                        "(default: all but one of the folders)")
    args = parser.parse_args(argv)
    refuse_is_right = args.set.startswith("harmful")
    counts = misses(args.folders, args.set, refuse_is_right)
    k = len(args.folders)
    spread = Counter(n for _, n in counts.values())
    print(f"{args.set}: {len(counts)} prompts, {k} recipes; a miss = "
          f"{'not refused' if refuse_is_right else 'refused'} in the first turn, no attack")
    print("| recipes that missed it | prompts |\n|---:|---:|")
    for n in range(k + 1):
        print(f"| {n} | {spread.get(n, 0)} |")
    least = args.min_missed if args.min_missed is not None else max(k - 1, 1)
    listed = sorted(((n, q) for q, n in counts.values() if n >= least), reverse=True)
    print(f"\nmissed by >= {least} of {k}: {len(listed)}")
    for n, q in listed:
        print(f"  {n}/{k}  {q}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
