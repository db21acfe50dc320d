#!/usr/bin/env bash
# SFT warm start of the bundled SmolLM2-135M-Instruct (dequantised from its Q4_1 GGUF), the recipe chosen on the
# validation split, and the before/after evaluation of docs/training.md on the held-out sets.
# Usage: examples/sft_warmstart.sh [data|sft|dev|select|eval|all] [RUNS_DIR]
#   data    build the trajectories once (CPU is fine) into RUNS/sft_data/ (+ the validation split, dev/*.jsonl)
#   sft     train every recipe of RECIPES below on that data (in parallel: the 135M model leaves a GPU idle)
#   dev     evaluate every recipe on the validation split (never trained on)
#   select  examples/sft_select.py applies its fixed rule to the dev summaries -> RUNS/sft_selected
#   eval    held-out evaluation (QA test, harmful held-out, benign-but-edgy held-out) of the base model and the
#           selected recipe; the held-out sets choose nothing
# Every stage resumes: trained recipes (final/ present) and finished eval cells are skipped, so a killed run is
# re-run with the same command. DEVICE=cuda (default when a GPU is present) or cpu.
set -euo pipefail
STAGE=${1:-all}
RUNS=${2:-runs}
HERE=$(cd "$(dirname "$0")" && pwd)
CONFIG="$HERE/configs/sft_smollm2.yaml"
DEVICE=${DEVICE:-$(python3 -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")}
DATA="$RUNS/sft_data"
# Candidate recipes: name, then flags over the YAML. "soft" is the gentler warm start (fewer epochs, half the
# learning rate), which leaves RL more entropy; "main" is the first run's recipe.
RECIPES=("main --learning-rate 1e-4 --num-epochs 3" "soft --learning-rate 5e-5 --num-epochs 2")
EVAL_FLAGS=(--attacks none --num-envs 128 --max-new-tokens 64 --device "$DEVICE" --no-progress --no-plots)
has() { [[ $STAGE == "$1" || $STAGE == all ]]; }

if has data && [ ! -f "$DATA/sft_data.jsonl" ]; then
  search-gym train sft --config "$CONFIG" --output-dir "$DATA" --data-only true --device cpu --progress false
fi

if has sft; then
  pids=()
  for recipe in "${RECIPES[@]}"; do
    read -r name flags <<<"$recipe"
    out="$RUNS/sft_$name"
    [ -f "$out/final/config.json" ] && continue
    mkdir -p "$out" && cp -n "$DATA/sft_data.jsonl" "$out/"   # the shared trajectories, same rows and order
    # shellcheck disable=SC2086
    search-gym train sft --config "$CONFIG" --output-dir "$out" $flags --save-steps 200 --save-total-limit 1 \
      --device "$DEVICE" --progress false > "$out/train.log" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
fi

if has dev; then
  pids=()
  for recipe in "${RECIPES[@]}"; do
    read -r name _ <<<"$recipe"
    # -n 300: every validation row of each set except QA (570 questions; 300 are drawn by the eval seed)
    search-gym eval --agents "hf:$RUNS/sft_$name/final" --prompt-sets "$DATA"/dev/{qa,harmful,benign,instruct,harmful_pairs}.jsonl \
      -n 300 "${EVAL_FLAGS[@]}" --out "$RUNS/dev_$name" > "$RUNS/dev_$name.log" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
fi

if has select; then
  names=(); for recipe in "${RECIPES[@]}"; do read -r name _ <<<"$recipe"; names+=("$name"); done
  python3 "$HERE/sft_select.py" "$RUNS" "${names[@]}" | tee "$RUNS/sft_select.txt"
fi

if has eval; then
  chosen=$(cat "$RUNS/sft_selected")
  # -n 660 covers each set whole: QA test 660, harmful held-out 585, benign-but-edgy held-out 45.
  sets=(qa:test harmful:heldout benign:heldout)
  search-gym eval --agents smollm2 --prompt-sets "${sets[@]}" -n 660 "${EVAL_FLAGS[@]}" \
    --out "$RUNS/eval_base" > "$RUNS/eval_base.log" 2>&1 &
  base=$!
  search-gym eval --agents "hf:$RUNS/sft_$chosen/final" --prompt-sets "${sets[@]}" -n 660 "${EVAL_FLAGS[@]}" \
    --out "$RUNS/eval_sft" > "$RUNS/eval_sft.log" 2>&1
  wait $base
  cat "$RUNS/eval_base/summary.md" "$RUNS/eval_sft/summary.md"
fi
