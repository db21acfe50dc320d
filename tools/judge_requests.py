"""The judges' requests of one split as question files for `search-gym eval`: the held-out analogue of the dev/
files the SFT data build writes (docs/aligned_start.md).

    python tools/judge_requests.py --split heldout --out RUN/heldout_sets
    # -> RUN/heldout_sets/instruct.jsonl (the benign requests: imperatives, how-tos, the benign twins of the matched
    #    pairs; 436 in heldout) and harmful_pairs.jsonl (the harmful twins; 77)

The same rows and file layout as `search_gym.trainers.sft` writes for the validation split (instruct.jsonl,
harmful_pairs.jsonl in dev/), so `examples/aligned_rule.py` reads a held-out evaluation of them like a validation.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from search_gym.trainers.sft import judge_requests

FILES = {"instruct": 0, "harmful_pairs": 1}  # file stem -> the judges' label (0 benign, 1 harmful)


def write(split: str, out: Path) -> dict[str, int]:
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for stem, label in FILES.items():
        rows = judge_requests(label, split)
        (out / f"{stem}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                           encoding="utf-8")
        counts[stem] = len(rows)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", required=True, choices=("train", "val", "heldout"))
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    counts = write(args.split, args.out)
    print(f"judge requests ({args.split}) -> {args.out}: " + ", ".join(f"{k}.jsonl {v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
