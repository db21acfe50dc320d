#!/usr/bin/env bash
# The aligned warm start on the lent GPU: LoRA SFT from examples/configs/sft_aligned_smollm2.yaml on the rows built
# on the CPU machine (carried gzipped in .devrun/sft_aligned/), then greedy evaluation on the validation rows it
# wrote to dev/ (never trained on). After unpack.sh returned 0 (README.md beside this file).
#
#   bash tools/aligned_pilot.sh start     # detached: SFT, then the two evaluations; log in $RUNS/pilot.log
#   bash tools/aligned_pilot.sh progress  # the log's last lines
#   bash tools/aligned_pilot.sh collect   # adapter, metrics, eval summaries into $OUT (small files only)
set -uo pipefail
REPO=$(pwd)
RUNS=${SG_RUNS:-/tmp/runs}
RUN=$RUNS/sft_aligned
mkdir -p "$RUNS"
# shellcheck disable=SC1091
source /tmp/sg/env.sh
case "${1:-}" in
  start)
    mkdir -p "$RUN"
    cp -r "$REPO/.devrun/sft_aligned/dev" "$RUN/"
    gunzip -c "$REPO/.devrun/sft_aligned/sft_data.jsonl.gz" > "$RUN/sft_data.jsonl"
    cat > "$RUNS/pilot_job.sh" <<JOB
set -x
cd /tmp
date
search-gym train sft --config "$REPO/examples/configs/sft_aligned_smollm2.yaml" --output-dir "$RUN" \
    --device cuda --progress false || exit 1
date
DEV=$RUN/dev
search-gym eval --agents hf:$RUN/final --device cuda --num-envs 96 --num-prompts 100000 --max-new-tokens 64 \
    --prompt-sets \$DEV/harmful.jsonl:dev --attacks none search think_prefill refusal_then_search prompt_injection \
    --out $RUNS/eval_harmful --plots false || exit 2
date
search-gym eval --agents hf:$RUN/final --device cuda --num-envs 96 --num-prompts 100000 --max-new-tokens 64 \
    --prompt-sets \$DEV/qa.jsonl:dev \$DEV/instruct.jsonl:dev \$DEV/benign.jsonl:dev \$DEV/harmful_pairs.jsonl:dev \
    --attacks none --out $RUNS/eval_benign --plots false || exit 3
date
JOB
    setsid nohup bash -c "bash $RUNS/pilot_job.sh; echo rc=\$? >> $RUNS/pilot.rc" > "$RUNS/pilot.log" 2>&1 < /dev/null &
    sleep 5; tail -5 "$RUNS/pilot.log" ;;
  progress)
    tail -c 3000 "$RUNS/pilot.log"; cat "$RUNS/pilot.rc" 2>/dev/null; nvidia-smi --query-gpu=memory.used --format=csv ;;
  collect)
    mkdir -p "$OUT/adapter"
    cp "$RUN"/adapter/* "$OUT/adapter/" 2>/dev/null
    tar -czf "$OUT/pilot_results.tar.gz" -C "$RUNS" --exclude='*.safetensors' --exclude='*.pt' \
        --exclude='sft_data.jsonl' --exclude='final' --exclude='checkpoint-*' . 2>/dev/null
    ls -la "$OUT" "$OUT/adapter" ;;
  *) echo "usage: $0 start|progress|collect" >&2; exit 2 ;;
esac
