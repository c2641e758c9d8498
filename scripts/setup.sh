#!/usr/bin/env bash
# Set up (or refresh) the project's environment in ./.venv: pinned CPU torch first, so pip
# never picks a multi-GB CUDA build, then the package with its dev extras, then the kernels.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e '.[dev]'
if [ -f scripts/build_kernels.sh ]; then
  bash scripts/build_kernels.sh
fi
