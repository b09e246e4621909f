"""Turns the reports of scripts/gpu/verify.sh into OUT_DIR/summary.md.

  python3 scripts/gpu/summary.py OUT_DIR

Reads (each optional; a missing one shows as "not run" and its targets as "not measured"):
  OUT_DIR/steps.tsv                      step, status, seconds (written by verify.sh)
  OUT_DIR/vlmbench/<model>.json          `vlmbench run` reports
  OUT_DIR/transformers/<model>.json      `reference.py bench` results, same <model> names
  OUT_DIR/bandwidth.json                 `reference.py bandwidth`
  OUT_DIR/parity/vlmbench_<fixture>_<dtype>.json, OUT_DIR/parity/transformers.json
  OUT_DIR/profile/<model>.json (+ .trace.json, .profiler_stats.txt)

Standard library only, so it runs wherever Python 3.8+ does (the figures are computed here, not
on the GPU machine, and it is tested on CPU reports).
"""
import json
import os
import sys

# Nominal HBM bandwidth (bytes/s) by GPU name, for the "% of the HBM bound" target.
NOMINAL_BANDWIDTH = [
    ("H200", 4.8e12),
    ("H100 NVL", 3.9e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),
    ("A100-SXM4-80GB", 2.039e12),
    ("A100 80GB PCIe", 1.935e12),
    ("A100", 1.555e12),
    ("L40S", 0.864e12),
    ("L4", 0.3e12),
]
DECODE_FRACTION_TARGET = 0.75
VRAM_TOLERANCE = 0.05


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def get(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or d.get(k) is None:
            return None
        d = d[k]
    return d


def fmt(v, unit="", digits=1):
    if v is None:
        return "–"
    if unit == "B":
        return f"{v / 2**30:.2f} GiB" if v >= 2**30 else f"{v / 2**20:.2f} MiB"
    if unit == "%":
        return f"{100 * v:.1f} %"
    return f"{v:,.{digits}f}{(' ' + unit) if unit else ''}"


def ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def nominal_bandwidth(gpu_name):
    for key, bw in NOMINAL_BANDWIDTH:
        if gpu_name and key.lower() in gpu_name.lower():
            return bw
    return None


def model_figures(vb, tf, copy_bw, nominal_bw):
    """Every figure of one model, vlmbench beside transformers; the sources say where from."""
    shapes = get(tf, "shapes") or {}
    s_v, s_t = get(vb, "summary") or {}, get(tf, "summary") or {}
    mem = get(vb, "memory") or {}
    tps = get(s_v, "tps", "median")
    inp = get(s_v, "input_tokens", "mean")
    out = get(s_v, "output_tokens", "mean")
    weights = shapes.get("decode_weight_bytes")
    kv_pos = shapes.get("kv_bytes_per_position")
    # Mean context over the decode steps: the prompt, plus on average half the new tokens.
    per_token = None
    if weights is not None and kv_pos is not None and inp is not None and out is not None:
        per_token = weights + kv_pos * (inp + out / 2)
    bound_copy = ratio(copy_bw, per_token)
    bound_nominal = ratio(nominal_bw, per_token)
    # Memory expected at the end of decode: all weights, the KV cache of the longest context, and
    # the largest prefill transient (hidden states, q/k/v, MLP, attention scores, last logits).
    expected = None
    if shapes and inp is not None:
        seq = get(s_v, "input_tokens", "max") or inp
        longest = seq + (get(s_v, "output_tokens", "max") or out or 0)
        h, i, b = shapes["hidden_size"], shapes["intermediate_size"], shapes["dtype_bytes"]
        act = seq * (4 * h + 3 * i) * b + shapes["num_attention_heads"] * seq * seq * b + shapes["vocab_size"] * 4
        expected = shapes["weight_bytes_total"] + kv_pos * longest + act
    pool = max(filter(None, [get(mem, "gpu_pool_peak_prefill", "bytes"), get(mem, "gpu_pool_peak_decode", "bytes")]),
               default=None)
    rows = [
        ("TTFT median (ms)", get(s_v, "ttft_ms", "median"), get(s_t, "ttft_ms", "median"), ""),
        ("TTFT p99 (ms)", get(s_v, "ttft_ms", "p99"), get(s_t, "ttft_ms", "p99"), ""),
        ("preprocess median (ms)", get(s_v, "preprocess_ms", "median"), get(s_t, "preprocess_ms", "median"), ""),
        ("vision encode median (ms)", get(s_v, "vision_encode_ms", "median"), None, ""),
        ("prefill median (ms)", get(s_v, "prefill_ms", "median"), None, ""),
        ("TBT median (ms)", get(s_v, "tbt_ms", "median"), get(s_t, "tbt_ms", "median"), ""),
        ("TBT p99 (ms)", get(s_v, "tbt_ms", "p99"), get(s_t, "tbt_ms", "p99"), ""),
        ("TPS median (tok/s)", tps, get(s_t, "tps", "median"), ""),
        ("E2E median (ms)", get(s_v, "e2e_ms", "median"), get(s_t, "e2e_ms", "median"), ""),
        ("input tokens (mean)", inp, get(tf, "samples") and sum(x["input_tokens"] for x in tf["samples"]) / len(tf["samples"]), ""),
        ("output tokens (mean)", out, get(tf, "samples") and sum(x["output_tokens"] for x in tf["samples"]) / len(tf["samples"]), ""),
        ("peak VRAM, NVML process", get(mem, "gpu_peak_process", "bytes"), None, "B"),
        ("peak VRAM, NVML device", get(mem, "gpu_peak_device", "bytes"), None, "B"),
        ("pool peak, prefill", get(mem, "gpu_pool_peak_prefill", "bytes"), None, "B"),
        ("pool peak, decode", get(mem, "gpu_pool_peak_decode", "bytes"), get(tf, "peak_allocated_bytes"), "B"),
        ("weights + KV + activations, computed", expected, expected, "B"),
        ("bytes read per decode token", per_token, per_token, "B"),
        ("decode bound at copy bandwidth (tok/s)", bound_copy, bound_copy, ""),
        ("decode bandwidth fraction (copy)", ratio(tps, bound_copy), ratio(get(s_t, "tps", "median"), bound_copy), "%"),
        ("decode fraction of nominal HBM bound", ratio(tps, bound_nominal), ratio(get(s_t, "tps", "median"), bound_nominal), "%"),
    ]
    return {"rows": rows, "tps": tps, "tps_tf": get(s_t, "tps", "median"),
            "ttft": get(s_v, "ttft_ms", "median"), "ttft_tf": get(s_t, "ttft_ms", "median"),
            "fraction_nominal": ratio(tps, bound_nominal), "fraction_copy": ratio(tps, bound_copy),
            "bound_nominal": bound_nominal, "bound_copy": bound_copy, "pool": pool, "expected": expected,
            "nvml_process": get(mem, "gpu_peak_process", "bytes")}


def token_match(got, want):
    if got is None:
        return "not run"
    if got == want:
        return f"equal ({len(want)} tokens)"
    k = next((n for n, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    return f"differs from token {k} of {len(want)}"


def verdict(ok):
    return "not measured" if ok is None else ("met" if ok else "missed")


def main(argv):
    if len(argv) != 2:
        sys.exit("usage: summary.py OUT_DIR")
    root = argv[1]
    if not os.path.isdir(root):
        sys.exit(f"summary.py: {root} is not a folder (give the OUT_DIR verify.sh wrote)")
    lines = ["# GPU proof: vlmbench (candle) beside transformers", ""]
    bw = load(os.path.join(root, "bandwidth.json"))
    copy_bw = get(bw, "copy_bandwidth_bytes_per_s")
    models = sorted(f[:-5] for f in os.listdir(os.path.join(root, "vlmbench"))
                    if f.endswith(".json")) if os.path.isdir(os.path.join(root, "vlmbench")) else []
    reports = {m: load(os.path.join(root, "vlmbench", m + ".json")) for m in models}
    gpu = next((get(r, "environment", "gpu") for r in reports.values() if get(r, "environment", "gpu")), None)
    gpu_name = get(gpu, "name") or get(bw, "environment", "gpu")
    nominal_bw = nominal_bandwidth(gpu_name)
    env = next(iter(reports.values()), None) or {}
    tf_env = next((get(load(os.path.join(root, "transformers", m + ".json")), "environment") for m in models), None)
    lines += [f"- run: {get(env, 'started_at') or '?'}"]
    lines += [f"- device: vlmbench {get(env, 'engine', 'device') or '?'}, transformers {get(tf_env, 'device') or '?'} "
              f"(torch {get(tf_env, 'torch') or '?'}, transformers {get(tf_env, 'transformers') or '?'})"]
    lines += [f"- GPU: {gpu_name or 'none reported'}"
              + (f", driver {gpu['driver_version']}, CUDA driver {gpu['cuda_driver_version']}" if gpu else ""),
              f"- vlmbench {get(env, 'environment', 'vlmbench_version') or '?'} "
              f"({get(env, 'environment', 'git_commit') or '?'}), candle {get(env, 'environment', 'candle_version') or '?'}",
              f"- device copy bandwidth (torch, read + write): "
              f"{fmt(copy_bw / 1e9 if copy_bw else None, 'GB/s', 0)}; nominal HBM: {fmt(nominal_bw / 1e9 if nominal_bw else None, 'GB/s', 0)}",
              ""]
    figures = {}
    for m in models:
        tf = load(os.path.join(root, "transformers", m + ".json"))
        f = model_figures(reports[m], tf, copy_bw, nominal_bw)
        figures[m] = f
        vb = reports[m] or {}
        lines += [f"## {m} ({get(vb, 'engine', 'dtype') or '?'}, {get(vb, 'dataset', 'name') or '?'}, "
                  f"{get(vb, 'summary', 'succeeded')} samples, max {get(vb, 'config', 'max_new_tokens')} new tokens)", "",
                  "| figure | vlmbench | transformers | vlmbench / transformers |", "|---|---|---|---|"]
        for name, a, b, unit in f["rows"]:
            r = ratio(a, b) if unit != "%" else None
            same = name.startswith(("weights +", "bytes read", "decode bound"))
            lines.append(f"| {name} | {fmt(a, unit)} | {fmt(b, unit) if not same else '(same)'} | "
                         f"{fmt(r, 'x', 2) if r is not None and not same else ''} |")
        lines.append("")
    # Targets of the issue.
    lines += ["## Targets", "", "| target | figure | result |", "|---|---|---|"]
    for m, f in figures.items():
        frac = f["fraction_nominal"] if f["fraction_nominal"] is not None else f["fraction_copy"]
        basis = "nominal HBM" if f["fraction_nominal"] is not None else "copy bandwidth"
        bound = f["bound_nominal"] if f["fraction_nominal"] is not None else f["bound_copy"]
        lines.append(f"| {m}: decode ≥ {DECODE_FRACTION_TARGET:.0%} of the bound ({basis}) | "
                     f"{fmt(f['tps'], 'tok/s')} = {fmt(frac, '%')} of {fmt(bound, 'tok/s')} | "
                     f"{verdict(None if frac is None else frac >= DECODE_FRACTION_TARGET)} |")
        lines.append(f"| {m}: decode TPS ≥ transformers | {fmt(f['tps'])} vs {fmt(f['tps_tf'])} tok/s | "
                     f"{verdict(None if None in (f['tps'], f['tps_tf']) else f['tps'] >= f['tps_tf'])} |")
        lines.append(f"| {m}: TTFT ≤ transformers | {fmt(f['ttft'])} vs {fmt(f['ttft_tf'])} ms | "
                     f"{verdict(None if None in (f['ttft'], f['ttft_tf']) else f['ttft'] <= f['ttft_tf'])} |")
        dev = ratio(f["pool"], f["expected"])
        lines.append(f"| {m}: peak VRAM (pool) within {VRAM_TOLERANCE:.0%} of weights + KV + activations | "
                     f"{fmt(f['pool'], 'B')} vs {fmt(f['expected'], 'B')} computed"
                     f"{'' if dev is None else f' ({100 * (dev - 1):+.1f} %)'}; NVML process {fmt(f['nvml_process'], 'B')} | "
                     f"{verdict(None if dev is None else abs(dev - 1) <= VRAM_TOLERANCE)} |")
    lines.append("")
    # Greedy parity.
    lines += ["## Greedy parity (tests/fixtures/parity)", "",
              "Reference: expected.json (transformers, CPU, f32).", "",
              "| fixture | vlmbench f32 | vlmbench f16 | transformers f32 (same device) | transformers f16 (same device) |",
              "|---|---|---|---|---|"]
    pdir = os.path.join(root, "parity")
    tfp = get(load(os.path.join(pdir, "transformers.json")), "fixtures") or {}
    names = sorted({f[len("vlmbench_"):].rsplit("_", 1)[0] for f in os.listdir(pdir)
                    if f.startswith("vlmbench_") and f.endswith(".json")} | set(tfp)) if os.path.isdir(pdir) else []
    for n in names:
        want = get(tfp, n, "expected")
        if want is None:
            exp = load(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                    "tests", "fixtures", "parity", n, "expected.json"))
            want = get(exp, "output_ids") or []
        cells = []
        for d in ("f32", "f16"):
            r = load(os.path.join(pdir, f"vlmbench_{n}_{d}.json"))
            s = (get(r, "samples") or [None])[0]
            cells.append(token_match(get(s, "output_token_ids") if s else None, want))
        cells += [token_match(get(tfp, n, d), want) for d in ("f32", "f16")]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines.append("")
    # Profile.
    prof = os.path.join(root, "profile")
    if os.path.isdir(prof):
        lines += ["## Profile (one sample, --profile)", ""]
        for f in sorted(os.listdir(prof)):
            lines.append(f"- `profile/{f}`: {os.path.getsize(os.path.join(prof, f)):,} bytes")
        stats = [f for f in os.listdir(prof) if f.endswith(".profiler_stats.txt")]
        if stats:
            with open(os.path.join(prof, stats[0])) as fh:
                text = fh.read().splitlines()
            kv = [t for t in text if t.startswith("kv_cache")]
            lines += ["", "```", *text[:24], *(["..."] + kv if kv and kv[0] not in text[:24] else []), "```"]
        lines.append("")
    # Steps.
    steps = os.path.join(root, "steps.tsv")
    if os.path.isfile(steps):
        lines += ["## Steps", "", "| step | status | seconds |", "|---|---|---|"]
        with open(steps) as fh:
            for row in fh:
                parts = row.rstrip("\n").split("\t")
                if len(parts) == 3:
                    lines.append(f"| {parts[0]} | {parts[1]} | {parts[2]} |")
        lines.append("")
    with open(os.path.join(root, "summary.md"), "w") as fh:
        fh.write("\n".join(lines))
    print(f"wrote {os.path.join(root, 'summary.md')}")


if __name__ == "__main__":
    main(sys.argv)
