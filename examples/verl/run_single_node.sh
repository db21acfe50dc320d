#!/usr/bin/env bash
# GRPO with verl on one node (8 GPUs), search-gym's <search> protocol, judges and safety-penalised reward.
# Needs GPUs: verl's vLLM rollout and FSDP actor do not run on a CPU.
set -euo pipefail
cd "$(dirname "$0")/../.."

# 1. verl's GPU stack (its own extra pins torch, vLLM and transformers), then search-gym with the bridge's extra.
#    pip install "verl[vllm]==0.9.1" && pip install -e ".[verl,serve]"
# 2. The data: qa_{train,test}.parquet and harmful_{train,heldout}.parquet.
search-gym export verl --out "$HOME/data/search_gym_verl"
# 3. One retrieval server for every rollout worker (the embedded corpus here; wiki-18: --corpus wiki-18.jsonl
#    --encoder e5-base-v2 --index-type ivfpq --device cuda).
search-gym serve --host 127.0.0.1 --port 8000 --retriever dense &
SERVER=$!
trap 'kill $SERVER' EXIT
until curl -sf http://127.0.0.1:8000/health >/dev/null; do sleep 2; done
# 4. Train. Any key of examples/verl/search_gym_grpo.yaml (or verl's defaults) can be overridden here.
python -m verl.trainer.main_ppo --config-path "$PWD/examples/verl" --config-name search_gym_grpo \
    trainer.n_gpus_per_node=8 trainer.nnodes=1 \
    "actor_rollout_ref.rollout.agent.agent_loop_config_path=$PWD/examples/verl/search_gym_agent_loop.yaml" "$@"
