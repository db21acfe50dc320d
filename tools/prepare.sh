#!/usr/bin/env bash
# Run HERE (the CPU machine, where pip can download) from anywhere inside the checkout:
#     bash tools/prepare.sh            # wheels + data
#     bash tools/prepare.sh wheels     # only .whl/
#     bash tools/prepare.sh data       # only .devdata/
#     bash tools/prepare.sh plan       # print the carry lists of the run calls
#     bash tools/prepare.sh vllm       # .vllm/: vLLM 0.20.2 + its wheels, in parts
# Fills two git-ignored folders at the repository root for the lent GPU machine (Python 3.12, torch 2.11 cu130,
# transformers 5.17, no network):
#   .whl/      py3.12 x86_64 wheels of exactly what that machine lacks, plus a wheel of search-gym itself
#   .devdata/  the built search-gym cache (no converted model) and the two asset files read at run time
#              (SmolLM2 GGUF, MiniLM folder), as one tar split into parts of $PART_MB MiB, with SHA256SUMS
# tools/unpack.sh is the device side; README.md beside this file gives the `run` call sequence.
set -euo pipefail
ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
cd "$ROOT"
WHAT=${1:-all}
# Part size: by default what fits one call beside the working tree, which travels in every call (64 MiB a call,
# 2 MiB kept for files added meanwhile, 1 MiB for SHA256SUMS); `PART_MB=18` etc. to choose.
tree_mib() {
  git ls-files -co --exclude-standard -z | xargs -0 stat -c %s 2>/dev/null | awk '{s+=$1} END {printf "%d", s/1048576 + 1}'
}
PART_MB=${PART_MB:-$(( 64 - 3 - $(tree_mib) ))}
[ "$PART_MB" -ge 4 ] || { echo "prepare: the working tree leaves ${PART_MB} MiB a call: too little to carry data" >&2; exit 1; }
CACHE=${SEARCH_GYM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/search_gym}
PY=${PYTHON:-python3}

for d in /.whl/ /.devdata/; do
  grep -qxF "$d" .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo "$d" >> .git/info/exclude; }
done

# What the GPU image lacks (KINDS.md "Python packages already there", read 2026-11-17), one version each.
# trl/datasets/dill/multiprocess/xxhash versions are the ones shared/gpu-wheels/trl-1.16-py312-extra.txt saw
# working on that image (transformers 5.17, accelerate 1.15, huggingface_hub 1.33).
WHEELS=(
  gymnasium==1.4.0 farama-notifications==0.0.6   # env API
  faiss-cpu==1.15.1                              # dense index
  bm25s==0.3.16                                  # sparse index (PyStemmer deliberately absent: indexes here are built without it)
  gguf==0.19.0                                   # reading the bundled SmolLM2 GGUF
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 xxhash==4.1.0   # hub QA loaders, TRL
  trl==1.16.0                                    # TRL bridge / baselines
  pettingzoo==1.27.0                             # the multi-agent misalignment environments
)

# Requirement names the device image already has (KINDS.md list); anything else a wheel asks for must be in .whl/.
DEVICE_HAS="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax
llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas
nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile
nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13
nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless
optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy
portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core
scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson
six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl
tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision
tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug
wheel wrapt xarray xxhash yarl zipp"

prepare_wheels() {
  rm -rf .whl && mkdir -p .whl
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
  # search-gym itself (one package, search_gym/)
  "$PY" -m pip wheel -q --no-deps "$ROOT" -w .whl
  rm -rf "$ROOT/build"   # setuptools' scratch folder (ignored, but keep the tree clean)
  DEVICE_HAS="$DEVICE_HAS" "$PY" - .whl <<'PY'
import os, re, sys, zipfile
from pathlib import Path
from packaging.markers import Marker
from packaging.requirements import Requirement
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux", "platform_system": "Linux",
       "platform_machine": "x86_64", "os_name": "posix", "implementation_name": "cpython",
       "platform_python_implementation": "CPython", "extra": ""}
have = {norm(n) for n in os.environ["DEVICE_HAS"].split()}
wheels = sorted(Path(sys.argv[1]).glob("*.whl"))
carried = {}
for w in wheels:
    with zipfile.ZipFile(w) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    name = norm(re.search(r"^Name: (.+)$", meta, re.M).group(1).strip())
    if name in carried:
        sys.exit(f"two wheels of {name}: {carried[name]} and {w.name}")
    carried[name] = w.name
missing = []
for w in wheels:
    with zipfile.ZipFile(w) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    for line in re.findall(r"^Requires-Dist: (.+)$", meta, re.M):
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(env):
            continue  # extras and other platforms
        n = norm(req.name)
        if n not in have and n not in carried:
            missing.append(f"{w.name}: {line}")
total = sum(w.stat().st_size for w in wheels)
print(f".whl: {len(wheels)} wheels, {total / 2**20:.1f} MiB: " + ", ".join(sorted(carried)))
if missing:
    sys.exit("requirements neither on the device image nor in .whl:\n  " + "\n  ".join(missing))
print("every Requires-Dist is on the device image or in .whl")
PY
}

prepare_data() {
  # SG_ASSETS_ONLY=smollm2: only the bundled model's GGUF (4 parts instead of 8), for device work that reads no
  # cache (an SFT run whose sft_data.jsonl was built here and travels in .devrun/): fewer calls before it starts.
  local only=${SG_ASSETS_ONLY:-}
  # safety/ is not required: the default query classifier ships with the package (search_gym/safety/weights/), so a
  # fresh cache has no safety/ folder; one trained here with other settings travels when it exists.
  [ -n "$only" ] || for need in "$CACHE/wiki_embedded/manifest.json" "$CACHE/prompts" "$CACHE/indexes"; do
    [ -e "$need" ] || { echo "missing $need: run 'search-gym setup --index all --model' first" >&2; exit 1; }
  done
  ls -d "$CACHE"/indexes/*-flat >/dev/null && ls -d "$CACHE"/indexes/*-bm25 >/dev/null
  STAGE=$(mktemp -d /tmp/sg-devdata.XXXXXX)
  trap 'rm -rf "$STAGE"' EXIT
  mkdir -p "$STAGE/sg/cache" "$STAGE/sg/assets"
  # The cache minus models/ (the converted SmolLM2 is 540 MB of fp32; unpack.sh converts the 98 MB GGUF there),
  # minus lock files. Built outputs carry their checksums in the manifests, so no asset package is needed to use them.
  # judge_data/: the judges' train/val/held-out rows (directions and the SFT dev split read them).
  [ -n "$only" ] || (cd "$CACHE" && find wiki_embedded prompts indexes $(ls -d safety judge_data 2>/dev/null) \
     -type f ! -name '*.lock' ! -name '.*' -print0 \
     | xargs -0 cp --parents -p -t "$STAGE/sg/cache")
  # Only the asset files search-gym reads at run time, under stub packages that importlib.util.find_spec finds
  # (search_gym/assets.py locates them with find_spec and never imports their code).
  "$PY" - "$STAGE/sg/assets" "$only" <<'PY'
import importlib.util, shutil, sys
from pathlib import Path
sys.path.insert(0, ".")
from search_gym.assets import ASSETS
out = Path(sys.argv[1])
for key in (sys.argv[2].split(",") if sys.argv[2] else ("smollm2", "minilm")):
    a = ASSETS[key]
    src = Path(list(importlib.util.find_spec(a.module).submodule_search_locations)[0]) / a.path
    dst = out / a.module / a.path
    dst.parent.mkdir(parents=True, exist_ok=True)
    (out / a.module / "__init__.py").write_text(f'"""Stub: data files of {a.requirement} ({a.licence}) for find_spec."""\n')
    if src.is_dir():
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.py", "*.pyc", ".gitattributes", "README.md"))
    else:
        shutil.copy2(src, dst)
    print(f"asset {key}: {src} -> {dst.relative_to(out.parent.parent)}")
PY
  # The wheels travel inside the data (sg/wheels/, installed by unpack.sh once the parts are extracted): a call
  # then carries only parts, which matters once the tree leaves less room than .whl/'s 21 MiB.
  if compgen -G ".whl/*.whl" >/dev/null; then
    mkdir -p "$STAGE/sg/wheels" && cp .whl/*.whl "$STAGE/sg/wheels/"
  fi
  rm -rf .devdata && mkdir -p .devdata
  # gzip -1: the bulk (GGUF, safetensors, float32 index) barely compresses; the jsonl text does.
  tar -C "$STAGE" -cf - sg | gzip -1 > "$STAGE/sg.tar.gz"
  split -b "${PART_MB}M" -d -a 2 "$STAGE/sg.tar.gz" .devdata/sg.tar.gz.part-
  (cd .devdata && sha256sum sg.tar.gz.part-* > SHA256SUMS && (cd "$STAGE" && sha256sum sg.tar.gz) >> SHA256SUMS)
  [ -d "$STAGE/sg/wheels" ] && ls "$STAGE/sg/wheels" > .devdata/WHEELS_INSIDE
  echo "unpacked: $(du -sh "$STAGE/sg" | cut -f1); archive: $(du -h "$STAGE/sg.tar.gz" | cut -f1); parts:"
  ls -l .devdata
  print_plan
}

# The back-to-back `run` calls that carry .whl/ and the parts (each call's carry + working tree <= 64 MiB).
print_plan() {
  "$PY" - <<'PY'
import json, os, subprocess
from pathlib import Path
MiB = 2**20
tree = sum(os.path.getsize(f) for f in subprocess.run(["git", "ls-files", "-co", "--exclude-standard"],
           capture_output=True, text=True).stdout.split("\n") if f and os.path.isfile(f))
budget = 64 * MiB - tree - 2 * MiB  # headroom for files the other engineers add meanwhile
# the wheels travel inside the data parts (prepare_data packs .whl/ into sg/wheels/); a data set built before
# that needs .whl carried too: the marker file says which
inside = Path(".devdata/WHEELS_INSIDE").is_file()
whl = 0 if inside else (sum(p.stat().st_size for p in Path(".whl").glob("*.whl")) if Path(".whl").is_dir() else 0)
parts = sorted(Path(".devdata").glob("sg.tar.gz.part-*"))
too_big = [p.name for p in parts if p.stat().st_size > budget]
if too_big:
    raise SystemExit(f"parts larger than the {budget / MiB:.1f} MiB a call has beside the working tree "
                     f"({tree / MiB:.1f} MiB): {too_big}; rebuild with a smaller PART_MB (bash tools/prepare.sh data)")
calls, cur, size = [], [".whl"] if whl else [], whl
for p in parts:
    if size + p.stat().st_size > budget or len(cur) >= 7:
        calls.append(cur); cur, size = [], 0
    cur.append(str(p)); size += p.stat().st_size
calls.append(cur)
print(f"working tree {tree / MiB:.1f} MiB; {len(calls)} back-to-back calls, each: bash tools/unpack.sh ...")
for i, c in enumerate(calls, 1):
    print(f"  call {i}: carry {json.dumps(c[:1] + ['.devdata/SHA256SUMS'] + c[1:] if c[0] == '.whl' else ['.devdata/SHA256SUMS'] + c)}")
PY
}

# vLLM 0.20.2 (the wheel for torch 2.11 + CUDA 13) and the wheels it needs beyond the image
# (../shared/gpu-wheels/vllm-0.20.2-py312-deps.txt), as one tar in parts under .vllm/ (unpack.sh installs them
# once every part has arrived). ~312 MB: six back-to-back calls.
prepare_vllm() {
  grep -qxF "/.vllm/" .git/info/exclude || echo "/.vllm/" >> .git/info/exclude
  LIST="$ROOT/../shared/gpu-wheels/vllm-0.20.2-py312-deps.txt"
  mkdir -p .vllm/dl
  grep -v '^#' "$LIST" | grep -v '^gguf' | grep . > .vllm/requirements.txt   # gguf is in .whl/ already
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    $(for n in 35 34 31 28 27 26 24 17; do echo --platform manylinux_2_${n}_x86_64; done) \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .vllm/dl -r .vllm/requirements.txt
  rm -f .vllm/vllm.tar.part-* .vllm/SHA256SUMS
  tar -C .vllm -cf - dl | split -b "${PART_MB}M" -d -a 2 - .vllm/vllm.tar.part-
  (cd .vllm && sha256sum vllm.tar.part-* > SHA256SUMS)
  ls -l .vllm
}

case "$WHAT" in
  wheels) prepare_wheels ;;
  data) prepare_data ;;
  all) prepare_wheels; prepare_data ;;
  plan) print_plan ;;
  vllm) prepare_vllm ;;
  *) echo "usage: $0 [all|wheels|data|plan|vllm]" >&2; exit 2 ;;
esac
