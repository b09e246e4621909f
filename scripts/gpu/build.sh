#!/usr/bin/env bash
# Packs the CUDA build for a GPU machine that has no Rust and no network (see scripts/gpu/verify.sh):
#
#   scripts/gpu/build.sh         # scripts/cuda/build.sh (release, `cuda` feature), then pack
#   scripts/gpu/build.sh pack    # pack an existing CUDA target/release/vlmbench
#
# Writes target/gpu/vlmbench.xz (the stripped binary) and target/gpu/libcurand.so.10.xz: candle
# opens cuRAND with every CUDA device, and recent torch wheels no longer ship it, so it travels
# with the binary (verify.sh uses the Python environment's copy when there is one). Prints the
# sizes and fails when they and the working tree exceed the TRAVEL_LIMIT_MIB (default 64) that
# may be copied to the GPU machine. verify.sh unpacks with Python's lzma module (no xz needed).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$repo"
mode="${1:-build}"
limit_mib="${TRAVEL_LIMIT_MIB:-64}"
case "$mode" in
  build) scripts/cuda/build.sh ;;
  pack) ;;
  *) echo "usage: scripts/gpu/build.sh [pack]" >&2; exit 2 ;;
esac
bin="${CARGO_TARGET_DIR:-$repo/target}/release/vlmbench"
[ -x "$bin" ] || { echo "no $bin: run scripts/gpu/build.sh (without pack) first" >&2; exit 1; }
readelf -d "$bin" | grep -q 'NEEDED.*libcudart' \
  || { echo "$bin is not a CUDA build (it does not link libcudart): run scripts/gpu/build.sh" >&2; exit 1; }
curand="$repo/.cuda-toolkit/wheels/nvidia/cu13/lib/libcurand.so.10"
[ -f "$curand" ] || { echo "no $curand: scripts/cuda/toolkit.sh installs it (run scripts/gpu/build.sh)" >&2; exit 1; }

out="$repo/target/gpu"
mkdir -p "$out"
strip -o "$out/vlmbench" "$bin"
stripped=$(stat -c %s "$out/vlmbench")
xz -9 -T0 -f "$out/vlmbench"
if [ ! -f "$out/libcurand.so.10.xz" ] || [ "$curand" -nt "$out/libcurand.so.10.xz" ]; then
  xz -9e -T0 -c "$curand" > "$out/libcurand.so.10.xz.tmp" && mv "$out/libcurand.so.10.xz.tmp" "$out/libcurand.so.10.xz"
fi
tree=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -n1 | cut -f1)
packed=$(du -cb "$out/vlmbench.xz" "$out/libcurand.so.10.xz" | tail -n1 | cut -f1)
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
echo "stripped binary $(mib "$stripped"), packed $(mib "$(stat -c %s "$out/vlmbench.xz")"); libcurand packed $(mib "$(stat -c %s "$out/libcurand.so.10.xz")"); working tree $(mib "$tree"); total $(mib $((tree + packed))) of ${limit_mib} MiB"
if [ $((tree + packed)) -gt $((limit_mib * 1048576)) ]; then
  echo "too big to travel: $(mib $((tree + packed))) > ${limit_mib} MiB" >&2
  exit 1
fi
echo "carry target/gpu with the working tree; on the GPU machine run: scripts/gpu/verify.sh OUT_DIR"
