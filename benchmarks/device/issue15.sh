#!/usr/bin/env bash
# Device side of issues 14/15 on one H200, after unpack.sh returned 0 with vLLM installed (README.md beside this).
# Run from the repository root; every subcommand writes what it measured under $OUT.
#
#   bash benchmarks/device/issue15.sh background [grid] [STAGE...]
#                                                   # start, detached (setsid), GPU jobs that need no timing:
#                                                   #  grid:  issue 14's attack grid on the bundled model (HF fp32)
#                                                   #  STAGE: a stage of the study (sft reads the carried
#                                                   #         .devrun/sft_data); several run side by side
#   bash benchmarks/device/issue15.sh wait JOB...   # until those background jobs have ended (or $WAIT_S, 540 s)
#   bash benchmarks/device/issue15.sh kill JOB      # SIGKILL a background stage (to show that it resumes)
#   bash benchmarks/device/issue15.sh progress      # the last lines of every background job's log
#   bash benchmarks/device/issue15.sh throughput "qwen2.5-0.5b 16" ...
#                                                   # per row: TRL + HF generate, TRL + vLLM colocate (the
#                                                   # ../shared/bench script, carried in .bench/), ours single-turn
#                                                   # and ours multi-turn, one process each, alone on the GPU
#   bash benchmarks/device/issue15.sh study STAGE...  # stages of `search-gym study` (pilot sizes below)
#   bash benchmarks/device/issue15.sh collect       # results of the background jobs and the study into $OUT
set -uo pipefail
REPO=$(pwd)
RUNS=${SG_RUNS:-/tmp/runs}
mkdir -p "$RUNS"
# shellcheck disable=SC1091
source /tmp/sg/env.sh
export VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_HOST_IP=127.0.0.1 NCCL_SOCKET_IFNAME=lo GLOO_SOCKET_IFNAME=lo
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}   # stages run side by side on 16 cores: no oversubscribed OpenMP pools
TOK=$SEARCH_GYM_CACHE/models/SmolLM2-135M-Instruct
# The study: the committed configs (examples/configs/study_smollm2.yaml and what it names), paths made absolute;
# STUDY_ARGS adds `search-gym study` flags (e.g. a smaller run for a pilot; docs/study.md says what ran).
study() {
  (cd /tmp && search-gym study --config "$REPO/examples/configs/study_smollm2.yaml" --output-dir "$RUNS/study" \
      --sft-config "$REPO/examples/configs/sft_smollm2.yaml" --sft-data "$RUNS/sft_data/sft_data.jsonl" \
      --grpo-config "$REPO/examples/configs/grpo_study.yaml" --device cuda --progress false ${STUDY_ARGS:-} \
      --stages "$@")
}

case "${1:-}" in
  background)
    shift
    if [ -d .devrun/sft_data ]; then  # carried once, with the call that starts sft
      mkdir -p "$RUNS/sft_data" && cp -r .devrun/sft_data/* "$RUNS/sft_data/" && gunzip -kf "$RUNS/sft_data/sft_data.jsonl.gz"
    fi
    for job in "$@"; do
      case $job in
        grid)
          (cd /tmp && setsid nohup bash -c "time search-gym eval --agents smollm2 --prompt-sets harmful:heldout qa:test \
            --attacks none search multi_search:n=3 multi_search:n=10 -n 256 --num-envs 128 --max-new-tokens 48 \
            --out $RUNS/grid_n256; echo rc=\$? > $RUNS/grid.rc" > "$RUNS/grid.log" 2>&1 < /dev/null &) ;;
        sft|directions|eval_sft|grpo|eval_grpo|grpo_penalty|eval_grpo_penalty|report)
          rm -f "$RUNS/$job.rc"   # a restarted (resumed) job
          setsid nohup bash -c "bash benchmarks/device/issue15.sh __study $job; echo rc=\$? > $RUNS/$job.rc" \
            >> "$RUNS/$job.log" 2>&1 < /dev/null & ;;
        *) echo "unknown background job $job" >&2; exit 2 ;;
      esac
    done
    sleep 5; for job in "$@"; do tail -n 3 "$RUNS/$job.log"; done
    ;;
  kill)  # kill STAGE: SIGKILL, no clean-up (the bracket keeps pkill from matching this command's own line)
    shift
    for job in "$@"; do
      pkill -9 -f -- "[-]-stages $job\$"; sleep 2; echo "killed $job"; tail -n 2 "$RUNS/$job.log"
    done ;;
  progress)
    for log in "$RUNS"/*.log; do echo "== $log"; tr '\r' '\n' < "$log" | grep -v '^\s*$' | tail -n 3; done
    nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv ;;
  __study) shift; study "$@" ;;
  wait)  # wait JOB...: until each started job has written its .rc (at most 540 s)
    shift
    for _ in $(seq $(( ${WAIT_S:-540} / 5 ))); do
      pending=0; for job in "$@"; do [ -f "$RUNS/$job.rc" ] || pending=1; done
      [ $pending = 0 ] && break; sleep 5
    done
    for job in "$@"; do echo "$job: $(cat "$RUNS/$job.rc" 2>/dev/null || echo running)"; tail -n 4 "$RUNS/$job.log"; done
    nvidia-smi --query-gpu=memory.used --format=csv
    ;;
  throughput)
    shift
    for row in "$@"; do
      set -- $row
      shape=$1 gens=$2
      for mode in ${TRL_MODES-hf vllm}; do
        (cd /tmp && timeout 300 python3 "$REPO/.bench/trl_grpo_baseline.py" "$TOK" "$shape" "$mode" "$gens") \
          > "$RUNS/trl_${shape}_${mode}_${gens}.log" 2>&1
        grep '^{' "$RUNS/trl_${shape}_${mode}_${gens}.log" | sed 's/"mode": "\(hf\|vllm\)"/"mode": "trl-\1"/' \
          | tee -a "$OUT/throughput.jsonl" || tail -5 "$RUNS/trl_${shape}_${mode}_${gens}.log"
      done
      for mode in ${OUR_MODES:-single multi}; do
        # multi-turn rows carry ~5x the tokens (passages): passes of 8 episodes, gradients accumulated
        fbs=0; [ "$mode" = multi ] && fbs=${MULTI_FORWARD_BATCH:-8}
        (cd /tmp && timeout 300 python3 "$REPO/benchmarks/bench_grpo_throughput.py" --shape "$shape" --mode "$mode" \
          --generations "$gens" --tokenizer "$TOK" --forward-batch-size "$fbs" ${OUR_ARGS:-}) \
          > "$RUNS/ours_${shape}_${mode}_${gens}.log" 2>&1
        grep '^{' "$RUNS/ours_${shape}_${mode}_${gens}.log" | tee -a "$OUT/throughput.jsonl" \
          || tail -25 "$RUNS/ours_${shape}_${mode}_${gens}.log"
      done
    done
    cp "$RUNS"/trl_*.log "$RUNS"/ours_*.log "$OUT/" 2>/dev/null
    (cd /tmp && python3 "$REPO/benchmarks/bench_grpo_throughput.py" --table "$OUT/throughput.jsonl")
    nvidia-smi --query-gpu=name,driver_version --format=csv
    ;;
  study)  # one process per stage: a vLLM engine does not give its GPU memory back inside a process
    shift
    for stage in "$@"; do
      study "$stage" 2>&1 | tee -a "$RUNS/study.log" | grep -v "it/s\]" | tail -40
    done
    cp "$RUNS/study.log" "$OUT/" ;;
  collect)
    tar -czf "$OUT/results.tar.gz" -C "$RUNS" --exclude="model*.safetensors" --exclude="*.pt" --exclude='*.bin' \
        --exclude='sft_data' --exclude='optimizer*' --exclude='checkpoint-*' $(cd "$RUNS" && ls)
    ls -la "$OUT"
    ;;
  *) echo "usage: see the header of $0" >&2; exit 2 ;;
esac
