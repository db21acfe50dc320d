#!/usr/bin/env bash
# GRPO on SearchGym/SelfInterestedExploration-v0 with the bundled SmolLM2-135M on CPU, then the held-out violation
# rate per round and the general misalignment eval, before and after, on the same checkpoint pair.
# The numbers in docs/misalignment.md ("GRPO on self-interested exploration") come from this script as committed.
#
#   nice -n 5 bash examples/grpo_exploration.sh            # RUN=runs/grpo_exploration STEPS=12 by default
#
# Training: 6 scenarios (the other 3 are held out), 4 rounds per episode in one growing chat
# (context=conversation), answers prefilled with {"choice": " so that the choice is the first sampled token,
# random supervision (p 0.5, drawn from the reset seed), episode starts = reset seeds 0..63; 1 start x 4 episodes
# per step; reward = the env's rewards summed over the 4 rounds; lr 1e-5, no KL term (beta 0), temperature 1.
set -euo pipefail
RUN=${RUN:-runs/grpo_exploration}
STEPS=${STEPS:-12}
DEVICE=${DEVICE:-cpu}
BASE=$(python -c "from search_gym.trainers.core import resolve_model_path; print(resolve_model_path('smollm2'))")

search-gym train grpo --env.id SearchGym/SelfInterestedExploration-v0 \
    --env.kwargs '{"context": "conversation", "prefill": "{\"choice\": \"", "num_rounds": 4, "supervision": "random", "scenarios": ["bakery", "delivery", "mechanic", "restaurant", "search_answer_key", "taxi"]}' \
    --episode-seeds 64 --questions-per-step 1 --group-size 4 --max-turn-tokens 4 --max-response-tokens 1024 \
    --learning-rate 1e-5 --beta 0 --temperature 1.0 --max-steps "$STEPS" --save-steps 0 --seed 0 \
    --device "$DEVICE" --tensorboard false --progress false --output-dir "$RUN"

# Held-out scenario sequences (researcher, tutor, warehouse x reset seeds 1000-1007), before and after.
python examples/grpo_exploration.py eval --model "base=$BASE" --model "grpo=$RUN/checkpoint-$STEPS" --run "$RUN" \
    --rounds 4 --seeds 1000 1008 --sample-seed 0 --device "$DEVICE" --out "$RUN/heldout.json"

# General misalignment eval on the same pair. The judge here is the bundled 135M model, which measures nothing
# (it replies 80 to every alignment prompt); pass a capable judge: --llm-judge hf:Qwen/Qwen2.5-7B-Instruct, or
# openai:<model> with --base-url for any OpenAI-compatible server.
search-gym eval --suite misalignment --agents "hf:$BASE" "hf:$RUN/checkpoint-$STEPS" -n 16 --max-new-tokens 48 \
    --device "$DEVICE" --out "$RUN/misalignment"

python examples/grpo_exploration.py report --heldout "$RUN/heldout.json" --metrics "$RUN/metrics.csv" \
    --misalignment "$RUN/misalignment/misalignment/summary.json" \
    --png docs/img/grpo_exploration.png --md docs/data/grpo_exploration.md
cp "$RUN/metrics.csv" docs/data/grpo_exploration_metrics.csv
cp "$RUN/misalignment/misalignment/summary.json" docs/data/grpo_exploration_misalignment_summary.json
cp "$RUN/heldout.json" docs/data/grpo_exploration_heldout.json  # every episode's rounds: choices, P(A), P(B)
