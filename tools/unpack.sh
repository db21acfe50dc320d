#!/usr/bin/env bash
# Device side (the lent GPU machine, no network). Run from the repository root in EVERY call of the sequence:
#     bash tools/unpack.sh; rc=$?        # 0 ready, 3 data parts still missing, else an error
#     source /tmp/sg/env.sh                          # once it returned 0
# What it does, each step skipped when already done on this (warm) machine:
#   1. installs the carried wheels .whl/*.whl into $SG_SITE (default /tmp/site) with pip --no-index --no-deps
#      (or, 3b, those that travelled inside the data parts, sg/wheels/, once they are extracted)
#   2. copies whatever data parts this call carried (.devdata/) into $SG_STORE (default /tmp/devdata): the
#      parts may arrive over several back-to-back calls, since one call carries at most 64 MiB
#   3. once every part listed in SHA256SUMS is there and checks, extracts them into $SG_DEST (default /tmp/sg):
#      cache/ (SEARCH_GYM_CACHE) and assets/ (stub packages holding the SmolLM2 GGUF and the MiniLM folder);
#      until then it exits 3
#   4. installs search-gym itself from the working tree that travelled with this call into $SG_SITE
#      (so code edited since prepare.sh ran is what runs; SG_FROM_TREE=0 keeps the wheel from .whl/ instead)
#   5. writes $SG_DEST/env.sh with the exports to use
#   6. converts the GGUF into the HF folder cache/models/SmolLM2-135M-Instruct (once per machine, ~40 s there)
# Run python3 -c / -m from OUTSIDE the repository root (cd /tmp): from the root, the tree's search_gym/ shadows
# the installed one and search_gym.agents / .trainers / .corpora (mapped by pyproject) are not found.
set -uo pipefail
SITE=${SG_SITE:-/tmp/site}
STORE=${SG_STORE:-/tmp/devdata}
DEST=${SG_DEST:-/tmp/sg}
PY=${PYTHON:-python3}
now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f s", b-a}'; }
T0=$(now)
mkdir -p "$SITE" "$STORE"

# 1. third-party wheels (re-installed only when the set of wheels changes): those carried in .whl/ now, or (3b)
# those that travelled inside the data parts, once extracted
install_wheels() {  # install_wheels DIR WHAT
  compgen -G "$1/*.whl" >/dev/null || return 0
  local stamp t
  stamp=$(cd "$1" && ls -l --time-style=+ *.whl | awk '{print $5, $NF}' | sha256sum | cut -c1-16)
  if [ "$(cat "$SITE/.wheels" 2>/dev/null)" != "$stamp" ]; then
    t=$(now)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$1"/*.whl \
      || { echo "unpack: wheel install ($2) failed" >&2; exit 1; }
    echo "$stamp" > "$SITE/.wheels"
    echo "unpack: installed $(ls "$1"/*.whl | wc -l) wheels ($2) into $SITE ($(took "$t"))"
  else
    echo "unpack: wheels ($2) already installed in $SITE"
  fi
}
install_wheels .whl "carried"

# 2. gather the data parts carried by this call
if [ -f .devdata/SHA256SUMS ] && ! cmp -s .devdata/SHA256SUMS "$STORE/SHA256SUMS"; then
  rm -f "$STORE"/sg.tar.gz.part-* "$STORE/SHA256SUMS"   # a new data set: forget the parts of the old one
fi
if compgen -G ".devdata/*" >/dev/null; then
  cp -f .devdata/* "$STORE/" && echo "unpack: carried this call: $(cd .devdata && ls | tr '\n' ' ')"
fi

# 3. check and extract once all parts are there
[ -f "$STORE/SHA256SUMS" ] || { echo "unpack: no SHA256SUMS yet (carry .devdata/SHA256SUMS with the parts)"; exit 3; }
SUMS_ID=$(sha256sum < "$STORE/SHA256SUMS" | cut -c1-16)
if [ "$(cat "$DEST/.extracted" 2>/dev/null)" != "$SUMS_ID" ]; then
  parts=$(grep -o 'sg\.tar\.gz\.part-[0-9]*' "$STORE/SHA256SUMS" | sort)
  missing=$(for p in $parts; do [ -f "$STORE/$p" ] || echo -n "$p "; done)
  if [ -n "$missing" ]; then
    echo "unpack: have $(( $(echo $parts | wc -w) - $(echo $missing | wc -w) ))/$(echo $parts | wc -w) data parts in $STORE; still missing: $missing"
    exit 3
  fi
  t=$(now)
  (cd "$STORE" && grep 'part-' SHA256SUMS | sha256sum -c --quiet -) || { echo "unpack: a data part is corrupt" >&2; exit 1; }
  rm -rf "$DEST.tmp" && mkdir -p "$DEST.tmp"
  (cd "$STORE" && cat $parts) | tar -xzf - -C "$DEST.tmp" || { echo "unpack: extraction failed" >&2; exit 1; }
  rm -rf "$DEST" && mv "$DEST.tmp/sg" "$DEST" && rmdir "$DEST.tmp"
  echo "$SUMS_ID" > "$DEST/.extracted"
  echo "unpack: checked and extracted $(echo $parts | wc -w) parts into $DEST ($(took "$t"), $(du -sh "$DEST" | cut -f1))"
fi

# 3b. the wheels that travelled inside the data (prepare.sh packs .whl/ into sg/wheels/), same stamp as step 1
install_wheels "$DEST/wheels" "from the data"

# 4. search-gym from this call's working tree (setuptools and wheel are on the image)
if [ "${SG_FROM_TREE:-1}" != 0 ] && [ -f pyproject.toml ] && grep -q '^name = "search-gym"' pyproject.toml; then
  t=$(now)
  if "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade \
       --target "$SITE" . >/tmp/sg-tree-install.log 2>&1; then
    echo "unpack: search-gym installed from the working tree ($(took "$t"))"
  else
    echo "unpack: installing search-gym from the tree failed (see /tmp/sg-tree-install.log); keeping the .whl one" >&2
    tail -5 /tmp/sg-tree-install.log >&2
  fi
  rm -rf build
fi
[ -d "$SITE/search_gym" ] || { echo "unpack: search_gym is not in $SITE: carry .whl in this or an earlier call" >&2; exit 1; }


# 4b. vLLM, when its parts travel (.vllm/vllm.tar.part-*, SHA256SUMS; prepare.sh vllm), over several calls
if [ -f .vllm/SHA256SUMS ]; then
  VSTORE=${SG_VLLM_STORE:-/tmp/vllmstore}
  mkdir -p "$VSTORE"
  cp -f .vllm/SHA256SUMS .vllm/vllm.tar.part-* "$VSTORE/" 2>/dev/null
  if [ ! -f "$SITE/.vllm" ]; then
    vparts=$(grep -o 'vllm\.tar\.part-[0-9]*' "$VSTORE/SHA256SUMS" | sort)
    vmissing=$(for p in $vparts; do [ -f "$VSTORE/$p" ] || echo -n "$p "; done)
    if [ -n "$vmissing" ]; then
      echo "unpack: vLLM parts still missing: $vmissing"
    else
      t=$(now)
      (cd "$VSTORE" && sha256sum -c --quiet SHA256SUMS) || { echo "unpack: a vLLM part is corrupt" >&2; exit 1; }
      (cd "$VSTORE" && cat $vparts | tar -xf -) && "$PY" -m pip install -q --no-index --no-deps --no-compile \
        --no-cache-dir --upgrade --target "$SITE" "$VSTORE"/dl/*.whl && touch "$SITE/.vllm" \
        || { echo "unpack: vLLM install failed" >&2; exit 1; }
      echo "unpack: vLLM installed into $SITE ($(took "$t"))"
    fi
  fi
fi

# 5. the exports
cat > "$DEST/env.sh" <<ENV
export PYTHONPATH=$SITE:$DEST/assets\${PYTHONPATH:+:\$PYTHONPATH}
export PATH=$SITE/bin:\$PATH
export SEARCH_GYM_CACHE=$DEST/cache
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
ENV
# shellcheck disable=SC1091
source "$DEST/env.sh"

# 6. the bundled model as a plain HF folder (the 540 MB fp32 folder is made here rather than carried)
if [ ! -f "$DEST/cache/models/SmolLM2-135M-Instruct/model.safetensors" ]; then
  t=$(now)
  (cd / && "$PY" -c "from search_gym.agents.gguf import ensure_smollm2; ensure_smollm2(progress=False)") \
    || { echo "unpack: converting the SmolLM2 GGUF failed" >&2; exit 1; }
  echo "unpack: converted SmolLM2 GGUF -> $DEST/cache/models/SmolLM2-135M-Instruct ($(took "$t"))"
fi

echo "unpack: ready ($(took "$T0")). Use:"
echo "  source $DEST/env.sh      # i.e.:"
sed 's/^/  /' "$DEST/env.sh"
echo "  then: search-gym ...   (or, from outside the repo root: cd /tmp && python3 -m search_gym.cli ...)"
exit 0
