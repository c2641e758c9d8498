#!/usr/bin/env bash
# Set up (or refresh) the project's environment in ./.venv: pinned torch first, so pip never picks
# a build we did not choose, then the package with its dev extras, then the kernels.
#
#   bash scripts/setup.sh                  # CPU torch (the default; what CI uses)
#   bash scripts/setup.sh --cuda [TAG]     # CUDA torch from PyTorch's wheel index, TAG default cu128
#   FRVD_TORCH=cu126 bash scripts/setup.sh # the same, chosen by variable (cpu | cuXYZ)
#
# TAG is the CUDA version of PyTorch's wheels (cu126, cu128, cu130, ...): pick one the GPU driver
# supports (`nvidia-smi` shows the newest CUDA the driver runs). Re-running with another choice
# replaces the installed torch.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.13.0
TORCH_BUILD=${FRVD_TORCH:-cpu}
while [ $# -gt 0 ]; do
  case "$1" in
    --cuda)
      TORCH_BUILD=cu128
      if [ $# -gt 1 ] && [[ "$2" == cu* ]]; then TORCH_BUILD=$2; shift; fi ;;
    --cpu) TORCH_BUILD=cpu ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown option '$1' (use --cuda [TAG] or --cpu; see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [[ ! "$TORCH_BUILD" =~ ^(cpu|cu[0-9]{3})$ ]]; then
  echo "error: FRVD_TORCH must be 'cpu' or a CUDA tag such as 'cu128', not '$TORCH_BUILD'" >&2
  exit 2
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
python -m pip install -q -e '.[dev]'
if [ -f scripts/build_kernels.sh ]; then
  bash scripts/build_kernels.sh
fi
python -c "import torch; print(f'setup: torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}')"
