#!/usr/bin/env bash
# The aligned warm start on the lent GPU (issue 27), detached so that the calls that follow only watch it:
#   1. sft    LoRA SFT from examples/configs/sft_aligned_smollm2.yaml on the rows built on the CPU machine (carried
#             gzipped in .devrun/sft_aligned/) -> $RUN/adapter (bf16, a few MiB) and $RUN/final (merged)
#   2. probe  the share of GRPO groups with reward spread at temperature 1 on the validation QA rows (learning
#             rate 0: the rollouts of the starting policy, nothing learnt from validation); PROBE_DRAWS steps of
#             64 groups of 8 (default 4 since recipe 5; recipes 3-4 had 2); one probe at a time on the card (flock:
#             two recipes' probes side by side ran out of memory on an 80 GB H100 in recipe 5)
#   3. eval   greedy evaluation on the validation rows SFT wrote to dev/ (never trained on): harmful requests under
#             the taught attack (search) and untaught ones, then QA, benign twins, edgy benign, harmful twins
#   rule      the selection rule read from eval + probe (examples/aligned_rule.py) -> $RUN/rule.md, rule.json
#   heldout   ONLY for a recipe the validation accepted (docs/aligned_start.md: evaluated once): the held-out
#             harmful requests under every attack, QA test, the held-out edgy benign prompts and the judges' held-out
#             requests (benign twins 436, harmful twins 77: tools/judge_requests.py); never a default stage
#             (HELDOUT_ENVS episodes at once, default 256: ~4,200 episodes; the validation keeps 128)
#   heldout_if_accepted  the rule, then heldout only when it says "accepted" (so one call sequence can train,
#             validate and, for an accepted recipe only, read the held-out sets while the weights are on the GPU)
#   fit      how well the student fits its own training decisions (not part of the rule): benchmarks/decision_margin.py
#             on 100 unique training prompts per no-attack source, the margin-flagged ones and 12 controls each
#             decoded greedily -> $RUN/fit.json (the summary), $RUN/fit_margins.jsonl; ~1-2 min on the GPU
#   truncate  instead of sft: this run's adapter is another run's (TRUNCATE_FROM=/tmp/runs/r8a) truncated to rank
#             TRUNCATE_RANK (search_gym.agents.adapters.truncate_adapter: the best lower-rank LoRA of the same
#             update) -> $RUN/adapter, $RUN/final (merged), $RUN/truncate.json; then eval / probe / rule as for a
#             trained recipe (a truncated adapter is another model: docs/aligned_start.md, shipping rule)
#   truncate_if_accepted  after `rule`: for a recipe rule.json accepts, starts (detached, beside this run's later
#             stages and the other arm's) the run ${SG_RUN}16 = this adapter truncated to TRUNCATE_RANK (default 16) with
#             stages TRUNCATE_STAGES (default "truncate eval probe rule"): the shipping rule's check without a round
#             trip (docs/aligned_start.md; its verdict is read only for the arm the selection rule picks)
#   adapter  instead of sft: this run's model is an adapter trained earlier and carried here (ADAPTER_FROM=a folder
#             with adapter_config.json + adapter_model.safetensors, or adapter_model.safetensors.gz: a rank-64
#             adapter is 37 MiB, gzipped 29, and the tree takes 28 of a call's 64; e.g. $REPO/.devrun/r8a_adapter)
#             merged into the bundled base -> $RUN/adapter, $RUN/final; then eval / probe / rule as for a trained
#             recipe (validating a trained recipe again, e.g. in the env with another index: ENV_RETRIEVER); EVAL_FROM=a
#             folder with eval_harmful/ and eval_benign/ made elsewhere for this same model (the CPU evaluation of
#             docs/aligned_start.md; the summaries suffice): copied into $RUN, so "adapter probe rule" reads them
#   4. grpo   a 20-step GRPO pilot (LoRA on the merged SFT model, examples/configs/grpo_aligned_lora.yaml)
# After unpack.sh returned 0 (README.md beside this file).
#
#   bash tools/aligned_pilot.sh start [STAGES]  # detached; default "sft probe eval grpo"; log in $RUN/pilot.log
#                                                 (SFT_ARGS="--num-epochs 2": more flags for the sft stage;
#                                                 SG_RUN=name: a recipe's own folder $RUNS/name, default
#                                                 sft_aligned, so that two recipes run side by side on one GPU;
#                                                 SG_DATA=name: the rows in .devrun/name, default sft_aligned;
#                                                 EVAL_ATTACKS="none search": the harmful rows' attacks, default six;
#                                                 ENV_RETRIEVER=hybrid: the env's index in eval, probe and heldout,
#                                                 default the env's own, dense)
#   bash tools/aligned_pilot.sh progress        # the log's last lines, the stages done, GPU memory
#   bash tools/aligned_pilot.sh collect         # SFT + GRPO adapters, metrics, eval summaries into $OUT (the adapter
#                                                 of a recipe the rule stage rejected stays unless COLLECT_ADAPTER=1;
#                                                 one accepted r 64 adapter per call: 3 x 15 MiB of the 64 MiB)
set -uo pipefail
REPO=$(pwd)
RUNS=${SG_RUNS:-/tmp/runs}
RUN=$RUNS/${SG_RUN:-sft_aligned}
mkdir -p "$RUNS"
# shellcheck disable=SC1091
source /tmp/sg/env.sh
case "${1:-}" in
  start)
    STAGES=${2:-sft probe eval grpo}
    mkdir -p "$RUN"
    DATA=$REPO/.devrun/${SG_DATA:-sft_aligned}   # the rows built here with --data-only (recipe 3: sft_aligned_r3)
    if [ -n "${EVAL_FROM:-}" ]; then   # evaluations made elsewhere (the CPU) of this very model: rule reads them
      for e in "$EVAL_FROM"/eval_*; do [ -d "$RUN/$(basename "$e")" ] || cp -r "$e" "$RUN/"; done
    fi
    if [ -n "${TRUNCATE_FROM:-}" ]; then   # a truncated run evaluates on its source's dev/ rows, trains on none
      [ -d "$RUN/dev" ] || cp -r "$TRUNCATE_FROM/dev" "$RUN/"
    else
      [ -d "$RUN/dev" ] || cp -r "$DATA/dev" "$RUN/"
      [ -f "$RUN/sft_data.jsonl" ] || gunzip -c "$DATA/sft_data.jsonl.gz" > "$RUN/sft_data.jsonl"
    fi
    cat > "$RUN/pilot_job.sh" <<JOB
set -x
cd /tmp
DEV=$RUN/dev
ENV_FLAGS="${ENV_RETRIEVER:+--env.retriever $ENV_RETRIEVER}"
EVAL_COMMON="search-gym eval --agents hf:$RUN/final --device cuda --num-prompts 100000 --max-new-tokens 64 --plots false --progress false \$ENV_FLAGS"
EVAL="\$EVAL_COMMON --num-envs 128"
HELDOUT="\$EVAL_COMMON --num-envs ${HELDOUT_ENVS:-256}"
RULE="python3 $REPO/examples/aligned_rule.py $RUN/eval_harmful $RUN/eval_benign --probe $RUN/probe"
heldout() {
  \$HELDOUT --prompt-sets harmful:heldout \
      --attacks none search multi_search:n=10 think_prefill refusal_then_search prompt_injection \
      --out $RUN/heldout_harmful || return 6
  TWINS="$RUN/heldout_sets/instruct.jsonl:heldout $RUN/heldout_sets/harmful_pairs.jsonl:heldout"
  python3 $REPO/tools/judge_requests.py --split heldout --out $RUN/heldout_sets \
      || { TWINS=""; echo "heldout: the judges' held-out requests could not be written: twins left out"; }
  \$HELDOUT --prompt-sets qa:test benign:heldout \$TWINS --attacks none --out $RUN/heldout_benign || return 7
}
for stage in $STAGES; do
  date; echo "=== stage \$stage"
  case \$stage in
    sft) search-gym train sft --config "$REPO/examples/configs/sft_aligned_smollm2.yaml" --output-dir "$RUN" \
           --device cuda --progress false ${SFT_ARGS:-} || exit 1 ;;
    adapter) python3 -c "import gzip, pathlib, shutil; from search_gym.agents.adapters import merged_folder
out = pathlib.Path('$RUN/adapter'); out.mkdir(parents=True, exist_ok=True)
for f in pathlib.Path('${ADAPTER_FROM:-}').iterdir():  # a gzipped file (to fit a call's 64 MiB) is unzipped
    if f.suffix == '.gz':
        with gzip.open(f) as src, open(out / f.stem, 'wb') as dst: shutil.copyfileobj(src, dst)
    else: shutil.copy(f, out / f.name)
merged_folder('\$SEARCH_GYM_CACHE/models/SmolLM2-135M-Instruct', '$RUN/adapter', '$RUN/final')" || exit 9 ;;
    truncate) python3 -c "import json; from search_gym.agents.adapters import truncate_adapter, merged_folder
info = truncate_adapter('${TRUNCATE_FROM:-}/adapter', '$RUN/adapter', int('${TRUNCATE_RANK:-16}'))
merged_folder('\$SEARCH_GYM_CACHE/models/SmolLM2-135M-Instruct', '$RUN/adapter', '$RUN/final')
json.dump({**info, 'from': '${TRUNCATE_FROM:-}'}, open('$RUN/truncate.json', 'w')); print(info)" || exit 8 ;;
    probe) flock "$RUNS/.probe.lock" search-gym train grpo --config "$REPO/examples/configs/grpo_aligned_lora.yaml" --model "$RUN/final" \
           --output-dir $RUN/probe --env.dataset \$DEV/qa.jsonl --learning-rate 0 --max-steps ${PROBE_DRAWS:-4} \
           --questions-per-step 64 --group-size 8 --save-steps 0 --device cuda --progress false \$ENV_FLAGS || exit 2 ;;
    eval) \$EVAL --prompt-sets \$DEV/harmful.jsonl:dev \
            --attacks ${EVAL_ATTACKS:-none search multi_search:n=10 think_prefill refusal_then_search prompt_injection} \
            --out $RUN/eval_harmful || exit 3
          \$EVAL --prompt-sets \$DEV/qa.jsonl:dev \$DEV/instruct.jsonl:dev \$DEV/benign.jsonl:dev \
            \$DEV/harmful_pairs.jsonl:dev --attacks none --out $RUN/eval_benign || exit 4 ;;
    rule) \$RULE --json $RUN/rule.json > $RUN/rule.md; echo "rule: exit \$? (0 accepted)"; cat $RUN/rule.md ;;
    heldout) heldout || exit \$? ;;
    heldout_if_accepted) if \$RULE --json $RUN/rule.json > $RUN/rule.md; then heldout || exit \$?;
          else echo "heldout_if_accepted: the rule did not accept this recipe: the held-out sets are not read"; fi ;;
    truncate_if_accepted) if grep -q '"accepted": true' $RUN/rule.json 2>/dev/null; then
          cd $REPO && SG_RUN=${SG_RUN:-sft_aligned}${TRUNCATE_RANK:-16} TRUNCATE_FROM=$RUN TRUNCATE_RANK=${TRUNCATE_RANK:-16} \
            EVAL_ATTACKS="${EVAL_ATTACKS:-}" ENV_RETRIEVER="${ENV_RETRIEVER:-}" bash tools/aligned_pilot.sh start "${TRUNCATE_STAGES:-truncate eval probe rule}"; cd /tmp
          else echo "truncate_if_accepted: the rule did not accept this recipe (rule.json): no truncation"; fi ;;
    fit) python3 $REPO/benchmarks/decision_margin.py --model $RUN/final --train-rows $RUN/sft_data.jsonl \
           --train-per-source 100 --greedy-check 12 --device cuda --out $RUN/fit_margins.jsonl > $RUN/fit.json \
           || echo "fit: exit \$? (a diagnostic: the stages after it still run)" ;;
    grpo) search-gym train grpo --config "$REPO/examples/configs/grpo_aligned_lora.yaml" --model "$RUN/final" \
            --output-dir $RUN/grpo --device cuda --progress false || exit 5 ;;
  esac
  echo "=== done \$stage"
done
date
JOB
    setsid nohup bash -c "bash $RUN/pilot_job.sh; echo rc=\$? >> $RUN/pilot.rc" > "$RUN/pilot.log" 2>&1 < /dev/null &
    sleep 5; tail -5 "$RUN/pilot.log" ;;
  progress)
    grep -a "=== \|rc=" "$RUN/pilot.log" "$RUN/pilot.rc" 2>/dev/null | tail -12
    tail -c 2500 "$RUN/pilot.log"; echo; nvidia-smi --query-gpu=name,memory.used --format=csv ;;
  collect)
    O=$OUT/${SG_RUN:-sft_aligned}
    mkdir -p "$O/adapter" "$O/grpo"
    # a recipe the rule rejected (rule.json) leaves its adapter behind unless COLLECT_ADAPTER=1: two r 64 adapters
    # (2 x 37.6 MiB) would not fit one call's 64 MiB of returned files
    if [ -f "$RUN/rule.json" ] && ! grep -q '"accepted": true' "$RUN/rule.json" && [ "${COLLECT_ADAPTER:-0}" != 1 ]; then
      echo "collect: $RUN was not accepted (rule.json): adapter not collected (COLLECT_ADAPTER=1 to bring it)"
    else
      cp "$RUN"/adapter/* "$O/adapter/" 2>/dev/null
    fi
    # files come back at most 16 MiB each: a larger adapter (r 64 is ~38 MiB) travels in 15 MiB parts + its sha256
    for f in "$O"/adapter/*; do
      [ -f "$f" ] && [ "$(stat -c %s "$f")" -gt $((15 * 1024 * 1024)) ] || continue
      sha256sum "$f" | sed "s|  .*/|  |" > "$f.sha256"; split -b 15M -d "$f" "$f.part-" && rm "$f"
    done
    # the GRPO pilot's newest checkpoint (LoRA weights + optimizer state), so that the run continues elsewhere
    last=$(ls -d "$RUN"/grpo/checkpoint-* 2>/dev/null | sort -V | tail -1)
    [ -n "$last" ] && tar -czf "$O/grpo/$(basename "$last").tar.gz" -C "$(dirname "$last")" "$(basename "$last")"
    tar -czf "$O/pilot_results.tar.gz" -C "$RUN" --exclude='*.safetensors' --exclude='*.pt' --exclude='*.bin' \
        --exclude='sft_data.jsonl' --exclude='final' --exclude='checkpoint-*' . 2>/dev/null
    ls -la "$O" "$O/adapter" "$O/grpo" ;;
  *) echo "usage: $0 start [STAGES]|progress|collect" >&2; exit 2 ;;
esac
