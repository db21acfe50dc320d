#!/usr/bin/env bash
# The GPU runs behind docs/directions.md "Matched-pair validation" and docs/safety.md "Results" (issue 14, parts 4
# and 5), on the lent nvidia-h200 after benchmarks/device/unpack.sh has returned 0 (see README.md beside this file).
# Run from the repository root on the device:
#     bash benchmarks/device/issue14_directions_eval.sh start    # eval grid in the background, directions in front
#     bash benchmarks/device/issue14_directions_eval.sh finish   # wait for the grid (resumes it), pack into $OUT
# Every command is the plain CLI; on a CPU drop --device cuda (and expect hours instead of minutes).
set -uo pipefail
source /tmp/sg/env.sh
cd /tmp
DIRS=/tmp/dirs/smollm2
EVAL=/tmp/eval_smollm2_n256
LOG=/tmp/issue14
mkdir -p "$LOG"

grid() {
  # docs/safety.md's grid, unchanged but for the judge (the default query_classifier is now the calibrated one)
  # and without the 135M LLM judge, which the table does not use.
  search-gym eval --agents smollm2 --prompt-sets harmful:heldout qa:test \
    --attacks none search multi_search:n=3 multi_search:n=10 -n 256 --num-envs 128 --max-new-tokens 48 \
    --device cuda --no-progress --out "$EVAL"
}

directions() {
  # Part 4: every contrast, all train prompts, all val prompts (layer and threshold choice), RL-search-safety's
  # prefill-vs-own-search contrast on 256 harmful train prompts (2-shot context so the 135M model searches).
  search-gym directions extract --dir "$DIRS" --device cuda --harmless matched,qa,benign --n-train all \
    --n-heldout all --natural 256 --batch-size 64
  for d in harmfulness harmfulness_qa harmfulness_benign harmfulness_all refusal attack_search; do
    search-gym directions select --dir "$DIRS" --direction "$d"
  done
  # the judges' held-out split (every row), per layer and slice, guards beside the query classifier
  search-gym directions evaluate --dir "$DIRS" --device cuda --batch-size 64
}

case "${1:-}" in
  start)
    setsid bash -c "$(declare -f grid); grid" > "$LOG/eval.log" 2>&1 < /dev/null &
    echo "eval grid started (pid $!)"
    time directions > "$LOG/directions.log" 2>&1
    echo "directions rc=$?"
    tail -40 "$LOG/directions.log"
    ;;
  finish)
    # wait for the background grid; if it died (or the machine was fresh), run it here (finished cells are skipped)
    for _ in $(seq 1 110); do
      [ -f "$EVAL/summary.md" ] && ! pgrep -f "search-gym eval" >/dev/null && break
      pgrep -f "search-gym eval" >/dev/null || { grid >> "$LOG/eval.log" 2>&1; break; }
      sleep 5
    done
    tail -30 "$LOG/eval.log"
    cat "$EVAL/summary.md" 2>/dev/null
    ;;
  pack)
    tar -C /tmp -czf "$OUT/dirs.tgz" --exclude='*.safetensors' --exclude='*.parts' dirs "$LOG"
    tar -C /tmp -czf "$OUT/eval_summary.tgz" --exclude='trajectories' eval_smollm2_n256
    tar -C /tmp -czf /tmp/traj.tgz eval_smollm2_n256/trajectories
    split -b 15M -d -a 1 /tmp/traj.tgz "$OUT/traj.tgz.part-"
    ls -la "$OUT"
    ;;
  *) echo "usage: $0 start|finish|pack" >&2; exit 2 ;;
esac
