#!/usr/bin/env bash
# Downloads the wheels scripts/gpu_selfcheck.sh carries to a GPU box (scripts/gpu-wheels.txt) into DIR
# (default .whl) and prints their sizes. Run it where pip reaches the package index; the GPU box
# reaches nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-.whl}"
python="${PYTHON:-python3}"
mkdir -p "$dir"
"$python" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation py \
  --platform any -q -d "$dir" -r scripts/gpu-wheels.txt
du -b "$dir"/*.whl | awk '{ total += $1; printf "%10.2f MiB  %s\n", $1 / 1048576, $2 } END { printf "%10.2f MiB  total\n", total / 1048576 }'
