#!/usr/bin/env bash
# The RL algorithm comparison (docs/algorithms.md) on the lent GPU, one seed per session, detached so that the calls
# that follow only watch it. After unpack.sh returned 0 (README.md beside this file), from the repository root:
#
#   bash tools/algorithms_gpu.sh start [SEEDS]  # detached; SEEDS default "0" ("1", "1 2", ...); log in $RUNS/alg.log,
#                                                 exit status in $RUNS/alg.rc when it ends, GPU memory every 5 s in
#                                                 $RUNS/alg_mem.txt. Runs, from /tmp (unpack.sh: from the repo root
#                                                 the tree's search_gym/ would shadow the installed one):
#                                                   search-gym compare-algorithms --config algorithms_smollm2.yaml
#                                                     --output-dir $RUNS/alg --seeds SEEDS --progress false $ALG_ARGS
#                                                 (ALG_ARGS="--episodes 256 --eval-prompts 16": more flags; keep the same
#                                                 ones in every session, a folder made with other run settings is
#                                                 refused and --eval-prompts is not checked. SG_RUNS moves $RUNS,
#                                                 default /tmp/runs; keep it the same too: grpo_penalty's config.json
#                                                 records the direction's absolute path)
#                                                 ALG_CONFIG=examples/configs/algorithms_study.yaml (or _grpo_sweep):
#                                                 another experiment of the same machinery, with ALG_LIGHT=.devrun/
#                                                 study_light (its own carried folder) and ALG_ARGS for its --qa-set...
#   bash tools/algorithms_gpu.sh progress       # the last "algorithms:" status lines, rc, GPU memory (now, peak)
#   bash tools/algorithms_gpu.sh collect        # into $OUT: alg_light.tar.gz (the folder minus weights), alg.log,
#                                                 alg_mem.txt; files over 15 MiB in 15 MiB parts + .sha256
#
# Light results of earlier sessions: carry .devrun/alg_light/ (git-ignored) in the call that runs `start`, holding
# what `collect` brought back: alg_light.tar.gz (or its parts alg_light.tar.gz.part-NN with alg_light.tar.gz.sha256,
# as they came), or the folder extracted from it (.devrun/alg_light/alg/comparison_config.json ...). `start` puts it
# into $RUNS/alg first (files already there are kept). Each collect holds the whole folder, so carry the newest only.
#
# What a carried run is good for (search_gym/experiments/algorithms.py): a run is skipped when finished(): done.json
# AND eval_heldout/summary.json with all 4 cells; its final weights are not needed (they never come back: ~0.5 GB).
# So a session may name every seed: carried finished seeds are skipped. The report reads every <arm>/seed<k>/ with a
# config.json (metrics.csv for the curves, eval_heldout/trajectories/*.jsonl + *.meta.json for the table). `start`
# refuses a carried run that started but has no done.json (no checkpoint came back: it would train again from step 0
# beside its old files), and refuses when a carried grpo_penalty run's direction file is missing (it would be
# extracted again, possibly not the same direction); `collect` brings the direction back (directions/*.safetensors,
# ~0.2 MB each, and layer_scores.json; not directions/acts/, tens of MB).
set -uo pipefail
REPO=$(pwd)
RUNS=${SG_RUNS:-/tmp/runs}
ALG=$RUNS/alg
LIGHT=$REPO/${ALG_LIGHT:-.devrun/alg_light}   # one experiment's light results (ALG_LIGHT: another's folder)
CONFIG=$REPO/${ALG_CONFIG:-examples/configs/algorithms_smollm2.yaml}   # the sweep / the study: their algorithms_*.yaml
MEM=$RUNS/alg_mem.txt
mkdir -p "$RUNS"

running() { [ -f "$RUNS/alg.pid" ] && kill -0 "$(cat "$RUNS/alg.pid")" 2>/dev/null; }

# the carried light results into $ALG; files already there win (a warm machine's own newer state)
merge_light() {
  [ -d "$LIGHT" ] || return 0
  mkdir -p "$ALG"
  local f base want got n=0
  for f in "$LIGHT"/*.tar.gz "$LIGHT"/*.tar.gz.part-00; do
    [ -f "$f" ] || continue
    base=${f%.part-00}
    if [ -f "$base.sha256" ]; then
      want=$(cut -d' ' -f1 < "$base.sha256")
      if [ "$f" = "$base" ]; then got=$(sha256sum < "$base" | cut -d' ' -f1)
      else got=$(cat "$base".part-* | sha256sum | cut -d' ' -f1); fi
      [ "$want" = "$got" ] || { echo "algorithms_gpu: $base: sha256 differs from $base.sha256 (a part missing?)" >&2; return 1; }
    fi
    if [ "$f" = "$base" ]; then tar -xzf "$base" -C "$RUNS" --skip-old-files || return 1
    else cat "$base".part-* | tar -xzf - -C "$RUNS" --skip-old-files || return 1; fi
    echo "algorithms_gpu: extracted $(basename "$base") into $RUNS"; n=$((n + 1))
  done
  for f in "$LIGHT/alg" "$LIGHT"; do
    [ -f "$f/comparison_config.json" ] || continue
    tar -C "$f" --exclude=./alg --exclude='./*.tar.gz*' -cf - . | tar -C "$ALG" -xf - --skip-old-files || return 1
    echo "algorithms_gpu: copied $f into $ALG"; n=$((n + 1))
  done
  [ "$n" -gt 0 ] || { echo "algorithms_gpu: $LIGHT holds neither alg_light.tar.gz nor an alg folder" >&2; return 1; }
  [ -f "$ALG/comparison_config.json" ] || { echo "algorithms_gpu: no comparison_config.json in $ALG after the merge" >&2; return 1; }
}

case "${1:-}" in
  start)
    SEEDS=${2:-0}
    for s in $SEEDS; do [[ $s =~ ^[0-9]+$ ]] || { echo "algorithms_gpu: seed '$s' is not a number" >&2; exit 2; }; done
    [ -n "$SEEDS" ] || { echo "algorithms_gpu: no seed given" >&2; exit 2; }
    if running; then echo "algorithms_gpu: already running (pid $(cat "$RUNS/alg.pid")); see progress" >&2; exit 1; fi
    merge_light || exit 1
    bad=""
    for s in $SEEDS; do
      for d in "$ALG"/*/seed"$s"; do
        [ -d "$d" ] || continue
        # a run killed on this machine resumes from its checkpoint; one carried from elsewhere has none
        if [ ! -f "$d/done.json" ] && { [ -d "$d/eval_heldout" ] || [ -f "$d/metrics.csv" ]; } \
            && ! compgen -G "$d/checkpoint-*" >/dev/null; then
          bad="$bad ${d#"$ALG"/}"
        fi
      done
    done
    if [ -n "$bad" ]; then
      echo "algorithms_gpu: carried runs of seed(s) $SEEDS started elsewhere and did not finish:$bad" >&2
      echo "  no checkpoint came back, so they would train again from step 0 beside their old files; delete their" >&2
      echo "  folders from .devrun/alg_light to run them anew" >&2
      exit 2
    fi
    for cfg in "$ALG"/grpo_penalty/seed*/config.json; do
      [ -f "$cfg" ] || continue
      dir=$(python3 -c 'import json,sys; print((json.load(open(sys.argv[1])).get("penalty") or {}).get("direction") or "")' "$cfg")
      if [ -n "$dir" ] && { [ ! -f "$dir" ] || { [ "$(dirname "$dir")" = "$ALG/directions" ] && [ ! -f "$ALG/directions/layer_scores.json" ]; }; }; then
        echo "algorithms_gpu: ${cfg#"$ALG"/} was penalised on $dir, which is not here (with its layer_scores.json):" >&2
        echo "  it would be extracted again and may differ; carry the light results that hold directions/" >&2
        exit 2
      fi
    done
    # shellcheck disable=SC1091
    source "${SG_DEST:-/tmp/sg}/env.sh" || exit 1
    cp "$CONFIG" "$RUNS/alg_config.yaml"  # the tree may change under the job
    rm -f "$RUNS/alg.rc"
    cat > "$RUNS/alg_job.sh" <<JOB
echo \$\$ > "$RUNS/alg.pid"
cd /tmp
echo "# \$(date '+%F %T') time, memory.used, utilization.gpu (every 5 s)" >> "$MEM"
( while true; do echo "\$(date +%T), \$(nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader | paste -sd';')"; sleep 5; done ) >> "$MEM" 2>&1 &
SAMPLER=\$!
date
set -x
search-gym compare-algorithms --config "$RUNS/alg_config.yaml" --output-dir "$ALG" --seeds $SEEDS --progress false ${ALG_ARGS:-}
rc=\$?
set +x
date
sleep 5; kill \$SAMPLER
echo "rc=\$rc" > "$RUNS/alg.rc"
JOB
    setsid nohup bash "$RUNS/alg_job.sh" > "$RUNS/alg.log" 2>&1 < /dev/null &
    sleep 5; tail -5 "$RUNS/alg.log" ;;
  progress)
    grep -a "^algorithms:" "$RUNS/alg.log" 2>/dev/null | tail -"${LINES_SHOWN:-6}"
    if [ -f "$RUNS/alg.rc" ]; then cat "$RUNS/alg.rc"; [ "$(cat "$RUNS/alg.rc")" = rc=0 ] || tail -c 2000 "$RUNS/alg.log"
    elif running; then echo "running (pid $(cat "$RUNS/alg.pid"))"
    else echo "not running, no rc: not started, or killed"; tail -c 1500 "$RUNS/alg.log" 2>/dev/null; fi
    awk -F', ' '!/^#/ {split($2, a, " "); if (a[1] + 0 > peak) peak = a[1] + 0; last = $0}
                END {if (last != "") printf "GPU memory: last %s; peak %d MiB\n", last, peak}' "$MEM" 2>/dev/null
    nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv,noheader ;;
  collect)
    : "${OUT:?OUT is not set (the run tool sets it)}"
    [ -d "$ALG" ] || { echo "algorithms_gpu: no $ALG" >&2; exit 1; }
    # no weights: checkpoint-*/, final/ (the merged model), adapter/*.safetensors, *.pt, *.bin; but the penalty's
    # direction (directions/*.safetensors) comes back. directions/acts/ (activations, tens of MB) does not.
    # eval_heldout/trajectories/ come back: the report's paired table reads them.
    (cd "$RUNS" && find alg \( -name 'checkpoint-*' -o -name '.tmp-checkpoint-*' -o -name final \
        -o -path alg/directions/acts \) -prune -o -type f ! -name '*.pt' ! -name '*.bin' ! -name '*.pth' \
        \( ! -name '*.safetensors' -o -path 'alg/directions/*' \) -print0) \
      | tar -czf "$OUT/alg_light.tar.gz" -C "$RUNS" --null -T -
    echo "alg_light.tar.gz: $(tar -tzf "$OUT/alg_light.tar.gz" | grep -vc '/$') files"
    tar -tzf "$OUT/alg_light.tar.gz" | grep 'directions/.*\.safetensors$' || echo "(no direction file in the folder)"
    cp "$RUNS/alg.log" "$MEM" "$OUT/" 2>/dev/null
    # files come back at most 16 MiB each: larger ones travel in 15 MiB parts + their sha256
    for f in "$OUT"/*; do
      if [ ! -f "$f" ] || [ "$(stat -c %s "$f")" -le $((15 * 1024 * 1024)) ]; then continue; fi
      sha256sum "$f" | sed "s|  .*/|  |" > "$f.sha256"; split -b 15M -d "$f" "$f.part-" && rm "$f"
    done
    ls -la "$OUT" ;;
  *) echo "usage: $0 start [SEEDS]|progress|collect" >&2; exit 2 ;;
esac
