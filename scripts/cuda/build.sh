#!/usr/bin/env bash
# Builds the CUDA binary (target/release/vlmbench) with a PyPI-assembled CUDA 13.0 toolkit.
#   scripts/cuda/build.sh            # build
#   scripts/cuda/build.sh check      # cargo check only (what CI runs: build scripts compile the kernels, nothing links)
# CUDA_COMPUTE_CAP defaults to 90 (H100/H200); set it for other GPUs (e.g. 80 for A100, 89 for L4).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$repo"
mode="${1:-build}"
# toolkit.sh reads its own $1 (the toolkit folder): source it with no arguments.
set --
# shellcheck source=toolkit.sh
source scripts/cuda/toolkit.sh
if [ "$mode" = check ]; then
  cargo check --locked --features cuda --all-targets
else
  cargo build --locked --release --features cuda
  echo "built ${CARGO_TARGET_DIR:-$repo/target}/release/vlmbench; at run time it needs libcuda.so.1 (driver), libcudart.so.13, libcublas.so.13, libcurand.so.10 on LD_LIBRARY_PATH" >&2
fi
