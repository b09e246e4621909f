#!/usr/bin/env bash
# The GPU proof in one command: vlmbench's CUDA path timed beside transformers on the same GPU,
# greedy parity on the GPU, a profile and the decode bandwidth fraction; everything under OUT_DIR,
# ending with OUT_DIR/summary.md. Run from the repository root of a checkout that holds the
# stripped CUDA binary (scripts/gpu/build.sh writes target/gpu/vlmbench):
#
#   scripts/gpu/verify.sh OUT_DIR
#
# Needs: an NVIDIA GPU and driver (nvidia-smi), python3 with torch (CUDA) and transformers; no
# Rust, no network. The binary is target/gpu/vlmbench.xz (unpacked into a scratch folder). The
# CUDA libraries it links (cudart, cublas, cublasLt, nvrtc, curand) come from that Python
# environment's nvidia packages (each package's lib/), cuRAND from target/gpu/libcurand.so.10.xz
# when the environment has none; never from a link stub. Every step has its own time limit and
# all of them share one budget (VERIFY_BUDGET_S, default 450 s from the start, summary
# included), so one slow step cannot eat the time of the rest; a failed step is recorded in
# OUT_DIR/steps.tsv and the next one runs. Exit status: 0 all steps ok, 1 some failed, 2 preflight.
#
# Environment: VLMBENCH_BIN (default target/gpu/vlmbench), PYTHON (default python3),
# VERIFY_SAMPLES (measured samples per model, default 3), VERIFY_BUDGET_S,
# VERIFY_REHEARSAL=cpu (the same steps with the tiny presets on the CPU: checks the script's
# logic on a machine without a GPU; figures are meaningless).
set -uo pipefail
start=$(date +%s)

die() { echo "verify.sh: $*" >&2; exit 2; }

[ $# -eq 1 ] && [ -n "$1" ] || die "usage: scripts/gpu/verify.sh OUT_DIR (run from the repository root)"
repo="$(cd "$(dirname "$0")/../.." && pwd)"
out_arg="$1"
py="${PYTHON:-python3}"
bin="${VLMBENCH_BIN:-$repo/target/gpu/vlmbench}"
samples="${VERIFY_SAMPLES:-3}"
budget="${VERIFY_BUDGET_S:-450}"
rehearsal="${VERIFY_REHEARSAL:-}"

if [ "$rehearsal" = cpu ]; then
  device=cpu dtype=f32 tdevice=cpu
  text_preset=tiny-llama vision_preset=tiny-llava max_new=16 bw_mib=256
else
  [ -z "$rehearsal" ] || die "VERIFY_REHEARSAL=$rehearsal: the only rehearsal is VERIFY_REHEARSAL=cpu"
  device=cuda:0 dtype=f16 tdevice=cuda
  text_preset=llama-2-7b vision_preset=llava-1.5-7b max_new=128 bw_mib=4096
  # Preflight: each failure is one line and exit status 2 (these first ones before OUT_DIR exists).
  command -v nvidia-smi >/dev/null 2>&1 \
    || die "no NVIDIA GPU here: nvidia-smi not found (run this on a machine with a CUDA GPU and its driver, or rehearse with VERIFY_REHEARSAL=cpu)"
  nvidia-smi -L 2>/dev/null | grep -q '^GPU ' \
    || die "nvidia-smi lists no GPU: $(nvidia-smi -L 2>&1 | head -n1)"
fi
command -v "$py" >/dev/null 2>&1 || die "no $py: set PYTHON to a Python with torch and transformers"
"$py" -c 'import torch, transformers' 2>/dev/null \
  || die "$py cannot import torch and transformers: set PYTHON to an environment that has both"
if [ -z "$rehearsal" ]; then
  "$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null \
    || die "torch in $py sees no CUDA device (check the driver and that torch is a CUDA build)"
  # `nvidia` is a namespace package: every folder of it (a venv and a user site may both have one).
  nvroots=$("$py" -c 'import nvidia; print("\n".join(nvidia.__path__))' 2>/dev/null) && [ -n "$nvroots" ] \
    || die "$py has no nvidia packages (pip's CUDA libraries): install torch with CUDA there"
fi
if [ -z "${VLMBENCH_BIN:-}" ] && [ ! -x "$bin" ] && [ ! -f "$repo/target/gpu/vlmbench.xz" ]; then
  die "no vlmbench binary: neither $bin nor $repo/target/gpu/vlmbench.xz (build with scripts/gpu/build.sh, or set VLMBENCH_BIN)"
fi
[ -n "${VLMBENCH_BIN:-}" ] && { [ -x "$bin" ] || die "VLMBENCH_BIN=$bin is not an executable file"; }

mkdir -p "$out_arg" || die "cannot create $out_arg"
out="$(cd "$out_arg" && pwd)"
mkdir -p "$out"/{env,logs,models,data,vlmbench,transformers,parity,profile}
# Unpacked binary and libraries go to a scratch folder, not OUT_DIR (which holds results only).
work="$(mktemp -d "${TMPDIR:-/tmp}/vlmbench-gpu.XXXXXX")" || die "cannot create a scratch folder"
trap 'rm -rf "$work"' EXIT
# unpack FILE.xz DEST: with Python's lzma module, so no xz is needed here.
unpack() { "$py" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2"; }
if [ ! -x "$bin" ]; then
  unpack "$repo/target/gpu/vlmbench.xz" "$work/vlmbench" && chmod +x "$work/vlmbench" \
    || die "cannot unpack $repo/target/gpu/vlmbench.xz into $work"
  bin="$work/vlmbench"
fi
if [ -z "$rehearsal" ]; then
  # The CUDA libraries: every lib/ of the environment's nvidia packages (never a stub folder),
  # then cuRAND from build.sh's pack when the environment has none.
  libs="" curand=""
  while IFS= read -r root; do
    for d in "$root"/*/lib; do
      case "$d" in *stub*) continue ;; esac
      [ -d "$d" ] || continue
      libs="${libs:+$libs:}$d"
      [ -e "$d/libcurand.so.10" ] && curand="$d/libcurand.so.10"
    done
  done <<< "$nvroots"
  if [ -z "$curand" ]; then
    [ -f "$repo/target/gpu/libcurand.so.10.xz" ] \
      || die "no libcurand.so.10 in the nvidia packages of $py and no target/gpu/libcurand.so.10.xz (scripts/gpu/build.sh packs one)"
    unpack "$repo/target/gpu/libcurand.so.10.xz" "$work/libcurand.so.10" \
      || die "cannot unpack target/gpu/libcurand.so.10.xz into $work"
    libs="${libs:+$libs:}$work"
  fi
  export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
missing=$(ldd "$bin" 2>/dev/null | awk '/not found/ {print $1}' | tr '\n' ' ')
[ -z "$missing" ] || die "$bin cannot load ${missing% }: not in LD_LIBRARY_PATH (${LD_LIBRARY_PATH:-unset})"
if ldd "$bin" 2>/dev/null | grep -q 'libcuda.so.1 => .*stub'; then
  die "libcuda.so.1 resolves to a link stub: remove the stub folder from LD_LIBRARY_PATH"
fi
"$bin" --version >/dev/null 2>&1 || die "$bin does not run: $("$bin" --version 2>&1 | head -n1)"
: > "$out/steps.tsv"
summary_reserve=25
deadline=$((start + budget - summary_reserve))
ref="$repo/scripts/gpu/reference.py"

# step NAME LIMIT_S CMD...: runs CMD under the smaller of its own limit and the budget left,
# logs to logs/NAME.log, records status and seconds in steps.tsv.
step() {
  local name="$1" limit="$2"
  shift 2
  local now left t0 rc status
  now=$(date +%s)
  left=$((deadline - now))
  [ "$left" -lt "$limit" ] && limit="$left"
  if [ "$limit" -lt 5 ]; then
    printf '%s\tskipped: budget spent\t0\n' "$name" >> "$out/steps.tsv"
    echo "[$name] skipped: the ${budget} s budget is spent" >&2
    return 1
  fi
  t0=$(date +%s.%N)
  timeout --kill-after=10 "$limit" "$@" > "$out/logs/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status="timed out after ${limit} s" ;;
    *) status="failed (exit $rc): $(grep -v '^\s*$' "$out/logs/$name.log" | tail -n1 | tr '\t' ' ' | cut -c1-200)" ;;
  esac
  local secs
  secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
  printf '%s\t%s\t%s\n' "$name" "$status" "$secs" >> "$out/steps.tsv"
  echo "[$name] $status (${secs} s)" >&2
  return $rc
}

# run_model PRESET DATA REPORT LIMIT [extra run args]: one `vlmbench run` of a random preset.
run_model() {
  local preset="$1" data="$2" report="$3" limit="$4"
  shift 4
  "$bin" run --quiet --model-path "random:$preset" --data-file "$data" --device "$device" \
    --dtype "$dtype" --max-new-tokens "$max_new" --ignore-eos --warmup 1 --limit "$limit" \
    --report-file "$report" "$@"
}
# parity_run FIXTURE DTYPE: one parity fixture through vlmbench, as tests/parity.rs runs it.
parity_run() {
  local fixture="$1" d="$2" dir="$repo/tests/fixtures/parity/$1" n
  n=$("$py" -c 'import json, sys; print(len(json.load(open(sys.argv[1]))["output_ids"]))' "$dir/expected.json")
  "$bin" run --quiet --warmup 0 --device "$device" --dtype "$d" --max-new-tokens "$n" \
    --model-path "$dir" --data-file "$out/parity/set_$fixture.json" \
    --report-file "$out/parity/vlmbench_${fixture}_$d.json"
}
# The fixtures' prompts (and images) as one-sample sets.
parity_inputs() {
  local f
  for f in llama llava llava_next; do
    "$py" -c '
import json, os, sys
d = sys.argv[1]
e = json.load(open(os.path.join(d, "expected.json")))
line = {"text": e["prompt"]}
if e.get("image"):
    line["image"] = os.path.join(d, e["image"])
print(json.dumps(line))' "$repo/tests/fixtures/parity/$f" > "$out/parity/$f.jsonl" || return 1
    "$bin" prepare jsonl --file "$out/parity/$f.jsonl" --out "$out/parity/set_$f.json" || return 1
  done
}
export -f run_model parity_run parity_inputs
export bin py repo out device dtype max_new

# 1. Environment.
{
  if [ -z "$rehearsal" ]; then
    timeout 20 nvidia-smi
    timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv
  fi
  echo "vlmbench: $("$bin" --version)"
  timeout 60 "$py" -c 'import sys, torch, transformers; print("python", sys.version.split()[0]); print("torch", torch.__version__, "cuda", torch.version.cuda); print("transformers", transformers.__version__)'
  echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
  ldd "$bin" | grep -E 'cuda|cublas|curand|nvrtc' || true
} > "$out/env/versions.txt" 2>&1
cat "$out/env/versions.txt" >&2

# 2. Inputs: the presets' configs and tokenizers (no weights), a 128-token text set exact against
# the text preset's tokenizer, and a COCO-sized image set (640x480 JPEGs, a captioning-length prompt).
step inputs 60 bash -c '
  set -e
  "$0" synth-model --preset "$1" --out "$3/models/$1" --no-weights
  "$0" synth-model --preset "$2" --out "$3/models/$2" --no-weights
  "$0" prepare synthetic --no-images --num-samples "$4" --input-tokens-mean 128 \
    --tokenizer "$3/models/$1/tokenizer.json" --name text128 --out "$3/data"
  "$0" prepare synthetic --num-samples "$4" --image-width-mean 640 --image-height-mean 480 \
    --image-format jpeg --input-tokens-mean 32 --tokenizer "$3/models/$2/tokenizer.json" \
    --name coco640 --out "$3/data"
' "$bin" "$text_preset" "$vision_preset" "$out" "$((samples + 1))" || die "could not write the inputs: see $out/logs/inputs.log"
text_set="$out/data/synthetic_text128.json"
image_set="$out/data/synthetic_coco640.json"

# 3. The measurements, most important first.
step bandwidth 60 "$py" "$ref" bandwidth --device "$tdevice" --mib "$bw_mib" --out "$out/bandwidth.json"
step "vlmbench-$text_preset" 150 bash -c 'run_model "$@"' _ "$text_preset" "$text_set" "$out/vlmbench/$text_preset.json" "$samples"
step "transformers-$text_preset" 150 "$py" "$ref" bench --model-dir "$out/models/$text_preset" \
  --data-file "$text_set" --device "$tdevice" --dtype "$dtype" --max-new-tokens "$max_new" \
  --limit "$samples" --warmup 1 --out "$out/transformers/$text_preset.json"
if step parity-inputs 30 bash -c parity_inputs; then
  for fixture in llama llava llava_next; do
    for d in f32 f16; do
      step "parity-$fixture-$d" 40 bash -c 'parity_run "$@"' _ "$fixture" "$d"
    done
  done
fi
step parity-transformers 120 "$py" "$ref" parity --fixtures "$repo/tests/fixtures/parity" \
  --device "$tdevice" --out "$out/parity/transformers.json"
step "vlmbench-$vision_preset" 150 bash -c 'run_model "$@"' _ "$vision_preset" "$image_set" "$out/vlmbench/$vision_preset.json" "$samples"
step "transformers-$vision_preset" 150 "$py" "$ref" bench --model-dir "$out/models/$vision_preset" \
  --data-file "$image_set" --device "$tdevice" --dtype "$dtype" --max-new-tokens "$max_new" \
  --limit "$samples" --warmup 1 --out "$out/transformers/$vision_preset.json"
step "profile-$text_preset" 120 bash -c 'run_model "$@"' _ "$text_preset" "$text_set" \
  "$out/profile/$text_preset.json" 1 --profile
# The summary always runs, in the time kept for it.
deadline=$((deadline + summary_reserve))
step summary "$summary_reserve" "$py" "$repo/scripts/gpu/summary.py" "$out"
echo "verify.sh: done in $(( $(date +%s) - start )) s; summary: $out/summary.md" >&2
grep -v $'\tok\t' "$out/steps.tsv" | grep -q . && { echo "verify.sh: some steps did not succeed (see $out/steps.tsv)" >&2; exit 1; }
exit 0
