#!/usr/bin/env bash
# Set up (or refresh) the project's environment in ./.venv: pinned torch first, so pip never picks
# a build we did not choose, then the package with its dev extras; the kernels build alongside.
#
#   bash scripts/setup.sh                  # CPU torch (the default; what CI uses)
#   bash scripts/setup.sh --cuda [TAG]     # CUDA torch from PyTorch's wheel index, TAG default cu128
#   FRVD_TORCH=cu126 bash scripts/setup.sh # the same, chosen by variable (cpu | cuXYZ)
#
#   bash scripts/setup.sh --ort gpu        # onnxruntime-gpu (CUDA/TensorRT EPs) instead of onnxruntime
#   FRVD_ORT=gpu FRVD_EXTRAS=trt-cu12 bash scripts/setup.sh   # plus TensorRT (trt-cu12 or trt-cu13: the driver's CUDA major)
#
#   bash scripts/setup.sh --no-lock        # newest releases within pyproject.toml's bounds (FRVD_LOCK=0)
#
# By default every package is installed at the exact version CI tested (scripts/constraints-cpu.txt,
# refreshed by scripts/update_lock.sh); packages the lock does not list (CUDA builds, TensorRT,
# onnxruntime-gpu) take the newest release within pyproject.toml's bounds.
#
# onnxruntime and onnxruntime-gpu provide the same `onnxruntime` module and cannot coexist: the
# chosen one comes from the package's [cpu] or [gpu] extra and the other is uninstalled first.
# TAG is the CUDA version of PyTorch's wheels (cu126, cu128, cu130, ...): pick one the GPU driver
# supports (`nvidia-smi` shows the newest CUDA the driver runs). Re-running with another choice
# replaces the installed torch.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.13.0
TORCH_BUILD=${FRVD_TORCH:-cpu}
ORT=${FRVD_ORT:-cpu}
while [ $# -gt 0 ]; do
  case "$1" in
    --cuda)
      TORCH_BUILD=cu128
      if [ $# -gt 1 ] && [[ "$2" == cu* ]]; then TORCH_BUILD=$2; shift; fi ;;
    --cpu) TORCH_BUILD=cpu ;;
    --ort) ORT=${2:-}; shift ;;
    --no-lock) FRVD_LOCK=0 ;;
    -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown option '$1' (use --cuda [TAG], --cpu or --ort cpu|gpu; see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [[ ! "$TORCH_BUILD" =~ ^(cpu|cu[0-9]{3})$ ]]; then
  echo "error: FRVD_TORCH must be 'cpu' or a CUDA tag such as 'cu128', not '$TORCH_BUILD'" >&2
  exit 2
fi

case "$ORT" in
  cpu) ORT_OTHER=onnxruntime-gpu ;;
  gpu) ORT_OTHER=onnxruntime ;;
  *) echo "error: --ort / FRVD_ORT must be 'cpu' or 'gpu', not '$ORT'" >&2; exit 2 ;;
esac
EXTRAS_CI="dev,serve,cpu,ray"  # what CI installs, and what scripts/constraints-cpu.txt locks
EXTRAS="dev,serve,ray,$ORT${FRVD_EXTRAS:+,$FRVD_EXTRAS}"
LOCK=scripts/constraints-cpu.txt
LOCK_ARGS=()
if [ "${FRVD_LOCK:-1}" != 0 ]; then LOCK_ARGS=(-c "$LOCK"); fi

# The kernel library needs no Python: build it while pip installs (waited for at the end)
KERNELS_PID=""
if [ -f scripts/build_kernels.sh ]; then
  mkdir -p build
  bash scripts/build_kernels.sh > build/kernels.log 2>&1 &
  KERNELS_PID=$!
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
python -m pip install -q --upgrade pip
if [ "$TORCH_BUILD" = cpu ]; then
  if python -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then
    # back from a CUDA build: the plain pin below would count that build as already satisfying it
    python -m pip install -q "torch==$TORCH_VERSION+cpu" --extra-index-url "https://download.pytorch.org/whl/cpu"
  else
    python -m pip install -q "torch==$TORCH_VERSION"
  fi
else
  # the exact local version (+cu128) so an installed CPU build does not count as "already satisfied"
  python -m pip install -q "torch==$TORCH_VERSION+$TORCH_BUILD" \
    --index-url "https://download.pytorch.org/whl/$TORCH_BUILD"
  python -c "import torch, sys; sys.exit(0 if torch.version.cuda else 'error: the installed torch has no CUDA')"
fi
if python -m pip show -q "$ORT_OTHER" >/dev/null 2>&1; then
  python -m pip uninstall -q -y "$ORT_OTHER"  # it would shadow, or be shadowed by, the chosen wheel
fi
python -m pip install -q -e ".[$EXTRAS]" "${LOCK_ARGS[@]}"
# tests/test_lock.py compares the installed versions with the lock this venv was installed from
if [ ${#LOCK_ARGS[@]} -gt 0 ]; then cp "$LOCK" .venv/frvd-installed-lock.txt; else rm -f .venv/frvd-installed-lock.txt; fi
# The browser test drives Debian's headless Chromium (Playwright's own browser download cannot work
# offline). Installed when missing; if apt-get fails, that one test skips and says why.
if [ "${FRVD_NO_BROWSER:-0}" != 1 ] && ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo -n"; fi
  if $SUDO apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium >/dev/null
  then
    echo "setup: installed chromium (for the browser test)"
  else
    echo "setup: warning: could not install chromium with apt-get; the browser test will be skipped" >&2
  fi
fi
if [ -n "$KERNELS_PID" ]; then
  if ! wait "$KERNELS_PID"; then
    cat build/kernels.log >&2
    echo "error: building the kernel library failed (log above; rerun: bash scripts/build_kernels.sh)" >&2
    exit 1
  fi
  tail -n 1 build/kernels.log
fi
python -c "import torch; print(f'setup: torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}')"
