#!/usr/bin/env bash
# GRPO with SkyRL on search-gym: Search-R1's single-assistant-message layout, search-gym's env, judges and reward.
# Run from a SkyRL checkout's environment with search-gym installed in it (pip install -e "/path/to/search-gym[skyrl,serve]").
# Needs GPUs (vLLM engines + FSDP2 policy). Multi-node: `ray start --head` / `ray start --address=HEAD:6379` first,
# then raise trainer.placement.*_num_nodes; the retrieval server runs once, on the head node.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
DATA="$HOME/data/search_gym_skyrl"

search-gym export skyrl --out "$DATA"
search-gym serve --host 127.0.0.1 --port 8000 --retriever dense &
SERVER=$!
trap 'kill $SERVER' EXIT
until curl -sf http://127.0.0.1:8000/health >/dev/null; do sleep 2; done

SEARCH_GYM_SKYRL_CONFIG="$HERE/search_gym_env.yaml" python "$HERE/main_search_gym.py" \
  data.train_data="['$DATA/qa_train.parquet']" \
  data.val_data="['$DATA/qa_test.parquet', '$DATA/harmful_heldout.parquet']" \
  trainer.algorithm.advantage_estimator=grpo \
  trainer.policy.model.path=Qwen/Qwen2.5-3B-Instruct \
  trainer.placement.colocate_all=true \
  trainer.strategy=fsdp2 \
  trainer.placement.policy_num_gpus_per_node=8 \
  trainer.placement.ref_num_gpus_per_node=8 \
  generator.inference_engine.num_engines=4 \
  generator.inference_engine.tensor_parallel_size=2 \
  generator.inference_engine.backend=vllm \
  generator.batched=false \
  generator.use_conversation_multi_turn=false \
  generator.max_turns=4 \
  generator.n_samples_per_prompt=5 \
  generator.sampling_params.max_generate_length=500 \
  generator.sampling_params.stop='["</search>", "</answer>"]' \
  generator.eval_sampling_params.stop='["</search>", "</answer>"]' \
  environment.env_class=search_gym \
  environment.skyrl_gym.max_env_workers=16 \
  trainer.train_batch_size=512 \
  trainer.policy_mini_batch_size=256 \
  trainer.max_prompt_length=2048 \
  generator.max_input_length=4096 \
  trainer.epochs=1 \
  "$@"
