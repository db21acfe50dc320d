"""The judges' requests of one split as question files for `search-gym eval`: the held-out analogue of the dev/
files the SFT data build writes (docs/aligned_start.md).

    python tools/judge_requests.py --split heldout --out RUN/heldout_sets
    # -> RUN/heldout_sets/instruct.jsonl (the benign requests: imperatives, how-tos, the benign twins of the matched
    #    pairs; 436 in heldout) and harmful_pairs.jsonl (the harmful twins; 77)

The SFT build's own writer (`search_gym.trainers.sft.write_judge_sources`), so `--split val` gives dev/'s
instruct.jsonl and harmful_pairs.jsonl byte for byte, and `examples/aligned_rule.py` reads a held-out evaluation of
these files like a validation.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from search_gym.trainers.sft import write_judge_sources


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", required=True, choices=("train", "val", "heldout"))
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    written = write_judge_sources(args.out, args.split)
    counts = ", ".join(f"{Path(p).name} {len(Path(p).read_text(encoding='utf-8').splitlines())}"
                       for p in written.values())
    print(f"judge requests ({args.split}) -> {args.out}: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
