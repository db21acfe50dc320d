#!/usr/bin/env bash
# GPU jobs on the lent machine (attack grid, throughput, the study, two-GPU data parallel), after unpack.sh
# returned 0 with vLLM installed (README.md beside this).
# Run from the repository root; every subcommand writes what it measured under $OUT.
#
#   bash tools/gpu_jobs.sh background [grid] [STAGE...]
#                                                   # start, detached (setsid), GPU jobs that need no timing:
#                                                   #  grid:  the attack grid on the bundled model (HF fp32)
#                                                   #  STAGE: a stage of the study (sft reads the carried
#                                                   #         .devrun/sft_data); several run side by side
#   bash tools/gpu_jobs.sh wait JOB...   # until those background jobs have ended (or $WAIT_S, 540 s)
#   bash tools/gpu_jobs.sh kill JOB      # SIGKILL a background stage (to show that it resumes)
#   bash tools/gpu_jobs.sh progress      # the last lines of every background job's log
#   bash tools/gpu_jobs.sh throughput "qwen2.5-0.5b 16" ...
#                                                   # per row: TRL + HF generate, TRL + vLLM colocate (the
#                                                   # ../shared/bench script, carried in .bench/), ours single-turn
#                                                   # and ours multi-turn, one process each, alone on the GPU
#   bash tools/gpu_jobs.sh study STAGE...  # stages of `search-gym study` (pilot sizes below)
#   bash tools/gpu_jobs.sh pipeline      # the whole study, detached (below); start it once the data
#                                                   # is unpacked (vLLM may still be arriving)
#   bash tools/gpu_jobs.sh dp            # on nvidia-h200-x2, detached: one GRPO run on one GPU, the same
#                                                   # on two at equal global batch, then the comparison table
#                                                   # (benchmarks/bench_data_parallel.py) in $RUNS/dp.md
#   bash tools/gpu_jobs.sh snapshot      # what the study has so far, no weights or trajectories, into
#                                                   # $OUT/study_light.tar.gz: end EVERY call with it (a machine
#                                                   # not called again within 30 s is gone, with /tmp)
#   bash tools/gpu_jobs.sh collect       # everything but weights (trajectories too) into $OUT, in parts
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

carried_sft_data() {  # the SFT rows built on the CPU machine, carried once (.devrun) with the call that starts sft
  if [ -d .devrun/sft_data ]; then
    mkdir -p "$RUNS/sft_data" && cp -r .devrun/sft_data/* "$RUNS/sft_data/" && gunzip -kf "$RUNS/sft_data/sft_data.jsonl.gz"
  fi
}

case "${1:-}" in
  background)
    shift
    carried_sft_data
    for job in "$@"; do
      case $job in
        grid)
          (cd /tmp && setsid nohup bash -c "time search-gym eval --agents smollm2 --prompt-sets harmful:heldout qa:test \
            --attacks none search multi_search:n=3 multi_search:n=10 -n 256 --num-envs 128 --max-new-tokens 48 \
            --out $RUNS/grid_n256; echo rc=\$? > $RUNS/grid.rc" > "$RUNS/grid.log" 2>&1 < /dev/null &) ;;
        sft|directions|eval_sft|grpo|eval_grpo|grpo_penalty|eval_grpo_penalty|report)
          rm -f "$RUNS/$job.rc"   # a restarted (resumed) job
          setsid nohup bash -c "bash tools/gpu_jobs.sh __study $job; echo rc=\$? > $RUNS/$job.rc" \
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
  pipeline)  # the study's stages in the order (and overlap) that fits one H200 and one session's device time
    setsid nohup bash "$0" __pipeline >> "$RUNS/pipeline.log" 2>&1 < /dev/null &
    sleep 2; cat "$RUNS/pipeline.log" ;;
  __pipeline)
    # sft -> (directions | eval_sft) -> grpo, and grpo_penalty once grpo's engine is up and its first update done
    # -> each run's evaluation as soon as the run ends -> report. Two rules from the 2026-12-02 pilot
    # (tools/README.md): vLLM sizes its KV cache from the GPU's free memory, so no two engines start
    # within ENGINE_GAP s of each other; and two GRPO runs plus an evaluation engine do not fit at once.
    # KILL_DEMO=<run>: SIGKILL that run once its step-25 checkpoint and drift are written (and a few steps more),
    # then start it again: it resumes from the checkpoint ($RUNS/pipeline.log records both).
    R=$RUNS/study POLL=${SG_POLL:-5} GAP=${ENGINE_GAP:-60} VLLM_MARK=${SG_SITE:-/tmp/site}/.vllm
    export STUDY_ARGS="--grpo-max-steps ${GRPO_STEPS:-50} ${STUDY_ARGS:-}"
    last_engine=0
    log() { echo "pipeline $(date +%T) $*"; }
    ended() { [ -f "$RUNS/$1.rc" ]; }
    start() {  # start JOB [engine]: a job that starts a vLLM engine waits for the gap since the last one
      if [ "${2:-}" = engine ]; then
        while [ $(( $(date +%s) - last_engine )) -lt "$GAP" ]; do sleep "$POLL"; done
        last_engine=$(date +%s)
      fi
      bash "$0" background "$1" > /dev/null; log "started $1"
    }
    need() {  # wait for JOBs to end; stop the pipeline at the first that failed
      for j in "$@"; do
        until ended "$j"; do sleep "$POLL"; done
        grep -qx "rc=0" "$RUNS/$j.rc" || { log "$j failed ($(cat "$RUNS/$j.rc")); stopping"; tail -n 20 "$RUNS/$j.log"; exit 1; }
        log "$j done"
      done
    }
    stepped() { ended "$1" || { [ -f "$R/$1/metrics.csv" ] && [ "$(wc -l < "$R/$1/metrics.csv")" -ge 2 ]; }; }
    log "GRPO: $STUDY_ARGS; kill demo: ${KILL_DEMO:-none}"
    start sft; need sft
    until [ -f "$VLLM_MARK" ]; do sleep "$POLL"; done
    start directions; start eval_sft engine; need directions eval_sft
    start grpo engine
    until stepped grpo; do sleep "$POLL"; done
    start grpo_penalty engine
    if [ -n "${KILL_DEMO:-}" ]; then
      until grep -q '"step": 25' "$R/$KILL_DEMO/drift.jsonl" 2>/dev/null || ended "$KILL_DEMO"; do sleep "$POLL"; done
      if ended "$KILL_DEMO"; then
        log "kill demo skipped: $KILL_DEMO ended before its step-25 checkpoint ($(cat "$RUNS/$KILL_DEMO.rc"))"
      else
        sleep $(( 3 * POLL ))  # a few steps past the checkpoint: they are lost and replayed
        log "killing $KILL_DEMO at logged step $(tail -n 1 "$R/$KILL_DEMO/metrics.csv" | cut -d, -f1)"
        bash "$0" kill "$KILL_DEMO" > /dev/null
        log "$KILL_DEMO: $(cat "$RUNS/$KILL_DEMO.rc" 2>/dev/null)"
        start "$KILL_DEMO" engine
      fi
    fi
    # A run that fails beside the other (out of GPU memory in the pilot) is started once more when the other run
    # has ended; it resumes from its newest checkpoint. A second failure stops the pipeline.
    pending="grpo grpo_penalty" retried=""
    while [ -n "$pending" ]; do
      for run in $pending; do
        ended "$run" || continue
        if ! grep -qx "rc=0" "$RUNS/$run.rc" && [[ " $retried " != *" $run "* ]]; then
          retried="$retried $run"
          log "$run failed ($(cat "$RUNS/$run.rc")); again once the other run has ended"; tail -n 5 "$RUNS/$run.log"
          for other in $pending; do [ "$other" = "$run" ] || until ended "$other"; do sleep "$POLL"; done; done
          start "$run" engine; continue
        fi
        need "$run"; start "eval_$run" engine; pending=$(echo $pending | tr ' ' '\n' | grep -vx "$run" | tr '\n' ' ')
      done
      sleep "$POLL"
    done
    need eval_grpo eval_grpo_penalty
    start report; need report
    log "study complete" ;;
  dp)
    carried_sft_data
    rm -f "$RUNS/dp.rc"
    setsid nohup bash "$0" __dp >> "$RUNS/dp.log" 2>&1 < /dev/null &
    sleep 2; tail -n 3 "$RUNS/dp.log" ;;
  __dp)
    # Equal global batch: questions_per_step is global, each of the 2 processes rolls out half of it. The HF
    # backend on both sides: the vLLM backend runs in one process only (several raise an error). The study's SFT
    # model when the study ran on this machine, else its SFT stage first (~4 min); DP_MODEL overrides.
    # DP_LAUNCH="--cpu" and DP_ARGS (smaller sizes) let the same path run on a CPU machine.
    model=${DP_MODEL:-$RUNS/study/sft/final}
    if [ ! -f "$model/config.json" ]; then echo "dp: the study's SFT stage first"; study sft || { echo rc=1 > "$RUNS/dp.rc"; exit 1; }; fi
    args=(--config "$REPO/examples/configs/grpo_study.yaml" --model "$model" --generation-backend hf
          --max-steps "${DP_STEPS:-20}" --save-steps 0 --drift-every 0 --progress false ${DP_ARGS:-})
    cd /tmp
    echo "dp: one process $(date +%T)"
    CUDA_VISIBLE_DEVICES=0 search-gym train grpo "${args[@]}" --output-dir "$RUNS/dp1" \
      && echo "dp: two processes $(date +%T)" \
      && accelerate launch ${DP_LAUNCH:---multi_gpu} --num_processes 2 -m search_gym.cli train grpo "${args[@]}" \
           --output-dir "$RUNS/dp2" \
      && python3 "$REPO/benchmarks/bench_data_parallel.py" --runs 1gpu="$RUNS/dp1" 2gpu="$RUNS/dp2" | tee "$RUNS/dp.md"
    echo "rc=$?" > "$RUNS/dp.rc"; echo "dp: done $(date +%T)" ;;
  snapshot)  # small files only: the directions stage's activations (directions/acts, 173 MB) do not come back
    (cd "$RUNS" && find $(ls -d study dp1 dp2 dp.md *.log *.rc 2>/dev/null) -type f -size -8M ! -path '*checkpoint-*' \
        ! -path '*/final/*' ! -path '*trajectories*' ! -path '*tensorboard*' ! -path '*sft_data*' ! -name '*.pt' \
      | tar -czf "$OUT/study_light.tar.gz" -T -)
    ls -la "$OUT/study_light.tar.gz"; tail -n 4 "$RUNS/pipeline.log" 2>/dev/null ;;
  collect)
    tar -czf - -C "$RUNS" --exclude="model*.safetensors" --exclude="*.pt" --exclude='*.bin' --exclude='sft_data' \
        --exclude='optimizer*' --exclude='checkpoint-*' --exclude='final' $(cd "$RUNS" && ls) \
      | split -b 15M -d -a 1 - "$OUT/results.tar.gz.part-"   # files come back at most 16 MiB each
    ls -la "$OUT"
    ;;
  *) echo "usage: see the header of $0" >&2; exit 2 ;;
esac
