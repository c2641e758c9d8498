#!/usr/bin/env bash
# The first thing to run on a freshly lent GPU machine (docs/gpu.md). No scripts/setup.sh (it would fetch
# torch; the box reaches no package index): the box's own CUDA torch, the project on PYTHONPATH, and the
# few wheels its image lacks (scripts/gpu-wheels.txt, ~6 MiB) installed from a carried folder.
#
#   scripts/gpu_selfcheck.sh [RESULTS_DIR] [WHEELS_DIR]      (defaults: gpu-selfcheck, .whl)
#
# Writes everything under RESULTS_DIR (at most 8 files): env.txt (driver, nvcc, torch, packages),
# gpucheck.json + gpucheck.log (python -m engine.gpucheck: the kernel built here for this GPU, every
# section in its own process), pytest-gpu.log (the tests marked gpu), summary.txt. Budget: 8 minutes
# in all (FRVD_SELFCHECK_BUDGET_S); the gpucheck gets what the steps before it left.
# Exit: gpucheck's (0 all ok/skipped, 1 a section failed, 3 --require-kernel and no usable kernel).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
repo="$(pwd)"
results="${1:-gpu-selfcheck}"
wheels="${2:-.whl}"
budget="${FRVD_SELFCHECK_BUDGET_S:-480}"
python="${PYTHON:-python3}"
require_kernel="${FRVD_REQUIRE_KERNEL:-1}"  # the box has nvcc: a kernel that cannot be built is a failure
start=$(date +%s)
mkdir -p "$results"
results="$(cd "$results" && pwd)"
left() { echo $(( budget - ($(date +%s) - start) )); }
note() { echo "selfcheck: $*" | tee -a "$results/summary.txt"; }
: > "$results/summary.txt"

# 1. the environment, as the box has it (before anything is installed)
{
  echo "date: $(date -u +%FT%TZ)"; echo "host: $(uname -a)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1 || echo "nvidia-smi: unavailable"
  nvcc --version 2>&1 | tail -2 || echo "nvcc: unavailable"
  command -v compute-sanitizer || echo "compute-sanitizer: not on PATH"
  "$python" -c 'import sys, torch; print("python", sys.version.split()[0]); print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'
  "$python" -m pip list 2>/dev/null | grep -iE '^(torch|numpy|onnx|onnxruntime|onnxruntime-gpu|onnxscript|onnx-ir|transformers|diffusers|huggingface.hub|safetensors|tensorrt|cuda-python|av|opencv|pillow|pytest) ' || true
} > "$results/env.txt" 2>&1
note "environment recorded ($(left) s left)"

# 2. the carried wheels, into a private site folder (the box's own packages stay as they are)
site="$(mktemp -d /tmp/frvd-site.XXXXXX)"
work="$(mktemp -d /tmp/frvd-gpucheck.XXXXXX)"  # the kernel and graphs gpucheck builds
trap 'rm -rf "$site" "$work"' EXIT
if compgen -G "$wheels/*.whl" > /dev/null; then
  total=$(du -cb "$wheels"/*.whl | tail -1 | cut -f1)
  if "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl \
      >> "$results/env.txt" 2>&1; then
    count=$(find "$wheels" -maxdepth 1 -name "*.whl" | wc -l)
    note "installed $count carried wheels ($(( total / 1048576 )) MiB) from $wheels"
  else
    note "could not install the wheels from $wheels (see env.txt); sections needing them will be skipped"
  fi
else
  note "no wheels in $wheels (scripts/fetch_gpu_wheels.sh $wheels): sections needing diffusers will be skipped"
fi
export PYTHONPATH="$repo:$site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

# 3. engine.gpucheck: builds the kernel here, then every section in its own process
flags=()
[ "$require_kernel" = "1" ] && flags+=(--require-kernel)
gpucheck_s=$(( $(left) - 60 ))  # keep a minute for the gpu tests and the summary
note "gpucheck: up to ${gpucheck_s} s"
timeout --kill-after=10 "$gpucheck_s" "$python" -m engine.gpucheck --out "$results/gpucheck.json" \
  --work "$work" "${flags[@]}" > "$results/gpucheck.log" 2>&1
rc=$?
[ "$rc" = 124 ] && note "gpucheck ran out of its ${gpucheck_s} s (the report holds the sections that finished)"
grep -E '^(gpucheck|error):' "$results/gpucheck.log" | tee -a "$results/summary.txt"

# 4. the tests marked gpu (they skip without CUDA), in what time is left
if [ "$(left)" -gt 20 ] && "$python" -c 'import pytest' 2> /dev/null; then
  timeout --kill-after=5 $(( $(left) - 10 )) "$python" -m pytest -q -m gpu -p no:cacheprovider \
    tests/test_grid_sample3d.py \
    > "$results/pytest-gpu.log" 2>&1
  note "pytest -m gpu: $(tail -1 "$results/pytest-gpu.log")"
else
  note "pytest -m gpu: not run (pytest missing or no time left)"
fi
note "done in $(( $(date +%s) - start )) s; exit $rc; results in $results"
exit "$rc"
