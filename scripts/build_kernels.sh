#!/usr/bin/env bash
# Builds libfrvd_kernels.so into build/ (where engine.ops finds it). The CUDA kernel is
# compiled for sm_80/86/89/90 whenever nvcc is found (FRVD_CUDA=AUTO); pass
# FRVD_CUDA=ON to make a missing nvcc an error, FRVD_CUDA=OFF to skip CUDA.
# Extra arguments go to the CMake configure step.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs="${FRVD_BUILD_JOBS:-2}"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DFRVD_CUDA="${FRVD_CUDA:-AUTO}" "$@"
cmake --build build -j"${jobs}"
