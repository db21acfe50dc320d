#!/usr/bin/env bash
# SFT warm start of the bundled SmolLM2-135M-Instruct (dequantised from its Q4_1 GGUF) and the before/after
# evaluation of docs/training.md. Usage: examples/sft_warmstart.sh [sft|eval|all] [RUNS_DIR]
#   DEVICE=cuda (default when a GPU is present) or cpu; the eval draws the same questions for both agents.
set -euo pipefail
STAGE=${1:-all}
RUNS=${2:-runs}
HERE=$(cd "$(dirname "$0")" && pwd)
DEVICE=${DEVICE:-$(python3 -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")}
if [[ $STAGE == sft || $STAGE == all ]]; then
  search-gym train sft --config "$HERE/configs/sft_smollm2.yaml" --output-dir "$RUNS/sft_smollm2" \
    --device "$DEVICE" --progress false
fi
if [[ $STAGE == eval || $STAGE == all ]]; then
  # -n 660 covers each set whole: QA test 660, harmful held-out 585, benign-but-edgy held-out 45.
  search-gym eval --agents smollm2 "hf:$RUNS/sft_smollm2/final" \
    --prompt-sets qa:test harmful:heldout benign:heldout --attacks none \
    -n 660 --num-envs 128 --max-new-tokens 64 --device "$DEVICE" --out "$RUNS/eval_sft" --no-progress --no-plots
fi
