#!/usr/bin/env bash
# GRPO with verl on a Ray cluster of N nodes x 8 GPUs. Run the head part on the head node, the worker part on
# every other node, then submit from the head node. Every node needs the same Python env (verl[vllm], search-gym
# with the verl extra) and the data path; only the head node runs the retrieval server, which every worker reads
# (bind it to an address the nodes can reach, inside your cluster's private network).
set -euo pipefail
cd "$(dirname "$0")/../.."
NNODES=${NNODES:-2}
HEAD_IP=${HEAD_IP:?set HEAD_IP to the head node address}
# Read by the agent-loop and tool YAMLs on every node (Ray workers inherit the environment of `ray start`).
export SEARCH_GYM_RETRIEVER_URL="http://$HEAD_IP:8000"

case "${1:-submit}" in
  head)
    ray start --head --port=6379 --dashboard-host=0.0.0.0
    search-gym export verl --out "$HOME/data/search_gym_verl"
    search-gym serve --host "$HEAD_IP" --port 8000 --retriever dense --workers 2 &
    ;;
  worker)
    ray start --address="$HEAD_IP:6379"
    search-gym export verl --out "$HOME/data/search_gym_verl"   # or a shared filesystem
    ;;
  submit)
    python -m verl.trainer.main_ppo --config-path "$PWD/examples/verl" --config-name search_gym_grpo \
        trainer.nnodes="$NNODES" trainer.n_gpus_per_node=8 \
        "actor_rollout_ref.rollout.agent.agent_loop_config_path=$PWD/examples/verl/search_gym_agent_loop.yaml" \
        "${@:2}"
    ;;
esac
