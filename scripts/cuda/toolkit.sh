#!/usr/bin/env bash
# Assembles a CUDA 13.0 toolkit from NVIDIA's PyPI wheels, for building vlmbench's `cuda` feature
# on a machine without a system CUDA install (and without a GPU).
#
#   source scripts/cuda/toolkit.sh [DIR]     # default DIR: .cuda-toolkit in the repository
#
# Afterwards CUDA_ROOT/CUDA_PATH/CUDA_HOME, PATH, LIBRARY_PATH and CUDA_COMPUTE_CAP are set for
# cargo. Pins: 13.0.x throughout, so the PTX matches a CUDA 13.0 driver (PTX from a newer toolkit
# does not load on an older driver; an unpinned nvvm/crt 13.5 also breaks ptxas 13.0).
# Where no driver is installed (no libcuda.so.1), a link stub is built: every driver entry point
# cudarc declares, each returning CUDA_ERROR_NO_DEVICE (100). Never ship or preload the stub on a
# machine with a GPU: it would hide the real driver.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
root="${1:-$repo/.cuda-toolkit}"
py="${PYTHON:-python3}"
wheels="$root/wheels"

if [ ! -x "$wheels/nvidia/cu13/bin/nvcc" ]; then
  echo "installing CUDA 13.0 wheels into $wheels ..." >&2
  "$py" -m pip install --quiet --no-cache-dir --disable-pip-version-check --target "$wheels" \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 \
    nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
fi
cu="$wheels/nvidia/cu13"
[ -x "$cu/bin/nvcc" ] || { echo "nvcc missing under $cu after install" >&2; exit 1; }

# A toolkit root laid out the way build scripts expect one.
for d in bin include nvvm; do ln -sfn "$cu/$d" "$root/$d"; done
mkdir -p "$root/lib64"
for f in "$cu"/lib/*.so*; do ln -sfn "$f" "$root/lib64/$(basename "$f")"; done
for lib in cudart cublas cublasLt curand nvrtc; do
  versioned=$(ls "$root/lib64/lib$lib.so."* 2>/dev/null | sort | head -n1 || true)
  [ -n "$versioned" ] && ln -sfn "$(basename "$versioned")" "$root/lib64/lib$lib.so"
done

# libcuda comes with the driver; build a link-only stub where there is none.
if ! ldconfig -p 2>/dev/null | grep -q 'libcuda.so.1'; then
  if [ ! -f "$root/stub/libcuda.so" ]; then
    (cd "$repo" && cargo fetch --quiet)
    sys=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.*/src/driver/sys/mod.rs 2>/dev/null | head -n1)
    [ -n "$sys" ] || { echo "cudarc sources not found in the cargo registry" >&2; exit 1; }
    mkdir -p "$root/stub"
    grep -o 'load::<_F>("cu[A-Za-z0-9_]*")' "$sys" | sed 's/.*("\(.*\)")/\1/' | sort -u \
      | awk '{print "int " $1 "(void) { return 100; }"}' > "$root/stub/cuda_stub.c"
    n=$(wc -l < "$root/stub/cuda_stub.c")
    [ "$n" -gt 100 ] || { echo "found only $n driver functions in $sys" >&2; exit 1; }
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$root/stub/libcuda.so.1" "$root/stub/cuda_stub.c"
    ln -sfn libcuda.so.1 "$root/stub/libcuda.so"
    echo "built a libcuda link stub with $n entry points" >&2
  fi
  export LIBRARY_PATH="$root/stub${LIBRARY_PATH:+:$LIBRARY_PATH}"
fi

export CUDA_ROOT="$root" CUDA_PATH="$root" CUDA_HOME="$root" CUDA_TOOLKIT_ROOT_DIR="$root"
export PATH="$root/bin:$PATH"
export LIBRARY_PATH="$root/lib64${LIBRARY_PATH:+:$LIBRARY_PATH}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-$(nproc)}"
echo "CUDA toolkit at $root (nvcc $("$root/bin/nvcc" --version | grep -o 'release [0-9.]*'), compute cap $CUDA_COMPUTE_CAP)" >&2
