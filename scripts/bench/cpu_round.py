"""One round of the CPU speed table: vlmbench beside llama.cpp (and transformers) on one model.

usage: python3 scripts/bench/cpu_round.py VLMBENCH MODEL_DIR [options]

MODEL_DIR is what the peers' model script writes: model-f32.gguf, model-f16.gguf,
model-q8_0.gguf, model-q4_k_m.gguf (the formats present are measured) and hf/ (the
safetensors checkpoint with its tokenizer.json). For each format, vlmbench runs first and the
peer right after it, so each ratio compares two engines from the same minute: memory bandwidth
on a shared machine moves by tens of percent between minutes, so only ratios within one round
mean anything.

Options:
  --llama-bench PATH           llama.cpp's llama-bench (default: `llama-bench` on PATH)
  --transformers-python PATH   a Python with torch and transformers: adds safetensors f32 and
                               bf16 rows against a plain argmax loop (left out without it)
  --threads N                  threads for every engine (default 2)
  --formats a,b,...            GGUF formats to measure (default f32,f16,q8_0,q4_k_m)
  --long-format F              the format of the prompt-length and context rows (default q8_0)
  --quick                      skip the 512 / 2,048-token rows and the 1-thread rows

Printed: the CPU (model name and the features the kernel sets look at), the kernel set
vlmbench chose, then markdown tables with every ratio: decode tok/s and TTFT per format (TTFT
against llama-bench's prefill time of the same prompt length; TTFT also holds tokenisation,
the LM head and the first argmax), decode bandwidth and prefill compute utilisation from the
report, TTFT growth from 512 to 2,048 prompt tokens, TBT at 2,048 tokens of context against 128
(f32 and f16 KV cache; llama.cpp's the same way, `llama-bench -d 128,2048`), and decode tok/s
with 1 thread.
"""
import argparse
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile

CPU_FLAGS = ["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8"]

TRANSFORMERS_LOOP = r"""
import json, sys, time, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
path, dtype, threads, new_tokens, prompt = sys.argv[1:6]
torch.set_num_threads(int(threads))
model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
ids = torch.tensor([AutoTokenizer.from_pretrained(path)(prompt)["input_ids"]])
def once():
    stamps = []
    with torch.no_grad():
        start = time.perf_counter()
        out = model(ids, use_cache=True)
        for _ in range(int(new_tokens)):
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            stamps.append(time.perf_counter())
            out = model(token, past_key_values=out.past_key_values, use_cache=True)
    return stamps[0] - start, (len(stamps) - 1) / (stamps[-1] - stamps[0])
once()
runs = sorted(once() for _ in range(3))
print(json.dumps({"ttft_ms": runs[1][0] * 1000,
                  "decode_tps": sorted(r[1] for r in runs)[1]}))
"""


def cpu_description():
    name, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name == "unknown CPU":
                    name = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return name, [f for f in CPU_FLAGS if f in flags]


def quiet(cmd):
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr.strip()[-2000:]}")
    return done.stdout


class Round:
    def __init__(self, args, tmp):
        self.args, self.tmp = args, tmp
        self.threads = str(args.threads)

    def prompts(self, tokens, samples):
        out = os.path.join(self.tmp, f"p{tokens}.json")
        if not os.path.exists(out):
            quiet([self.args.vlmbench, "prepare", "synthetic", "--name", f"p{tokens}", "--no-images",
                   "--num-samples", str(samples), "--input-tokens-mean", str(tokens),
                   "--input-tokens-stddev", "0", "--tokenizer",
                   os.path.join(self.args.model_dir, "hf", "tokenizer.json"), "--out", out])
        return out

    def vlmbench(self, model, tokens, new_tokens, extra=(), threads=None):
        report = os.path.join(self.tmp, "report.json")
        quiet([self.args.vlmbench, "run", "--model-path", model,
               "--data-file", self.prompts(tokens, 4 if tokens <= 128 else 2),
               "--limit", "2", "--max-new-tokens", str(new_tokens), "--ignore-eos",
               "--threads", threads or self.threads, "--warmup", "1", "--quiet",
               "--report-file", report, *extra])
        with open(report) as f:
            return json.load(f)

    def llama_bench(self, model, prompt_tokens, new_tokens, threads=None, depths=None):
        """pp{N}_ms and tg{N}_tps, or with `depths` (after that many cached tokens)
        tg{N}@{D}_tps."""
        extra = ["-d", depths] if depths else []
        rows = csv.DictReader(io.StringIO(quiet(
            [self.args.llama_bench, "-m", model, "-p", prompt_tokens, "-n", str(new_tokens),
             "-t", threads or self.threads, "-r", "3", "-o", "csv", *extra])))
        out = {}
        for row in rows:
            rate = float(row["avg_ts"])
            if int(row["n_prompt"]) > 0:
                out[f"pp{row['n_prompt']}_ms"] = int(row["n_prompt"]) / rate * 1000
            elif depths:
                out[f"tg{row['n_gen']}@{row.get('n_depth', '0')}_tps"] = rate
            else:
                out[f"tg{row['n_gen']}_tps"] = rate
        return out

    def transformers(self, dtype):
        with open(self.prompts(128, 4)) as f:
            prompt = json.load(f)["samples"][0]["prompt"]
        line = quiet([self.args.transformers_python, "-c", TRANSFORMERS_LOOP,
                      os.path.join(self.args.model_dir, "hf"), dtype, self.threads, "64", prompt])
        return json.loads(line.strip().splitlines()[-1])


def summary(report):
    s = report["summary"]
    return {
        "decode_tps": s["decode_tps_pooled"],
        "ttft_ms": s["ttft_ms"]["median"],
        "tbt_ms": s["tbt_ms"]["median"],
        "bandwidth": (report.get("decode_bandwidth") or {}).get("utilisation"),
        "compute": (report.get("prefill_compute") or {}).get("utilisation"),
    }


def percent(value):
    return "—" if value is None else f"{value * 100:.0f} %"


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("vlmbench")
    parser.add_argument("model_dir")
    parser.add_argument("--llama-bench", default=shutil.which("llama-bench"))
    parser.add_argument("--transformers-python")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--formats", default="f32,f16,q8_0,q4_k_m")
    parser.add_argument("--long-format", default="q8_0")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if not args.llama_bench:
        sys.exit("llama-bench not found: put it on PATH or pass --llama-bench PATH")
    gguf = lambda f: os.path.join(args.model_dir, f"model-{f}.gguf")
    formats = [f for f in args.formats.split(",") if os.path.exists(gguf(f))]
    if not formats:
        sys.exit(f"{args.model_dir}: no model-FORMAT.gguf for any of {args.formats}")

    name, flags = cpu_description()
    print(f"CPU: {name}; features: {' '.join(flags) or 'none'}; "
          f"{os.cpu_count()} logical CPUs; {args.threads} threads per engine")
    with tempfile.TemporaryDirectory() as tmp:
        r = Round(args, tmp)
        rows, kernel_set = [], None
        for f in formats:
            report = r.vlmbench(gguf(f), 128, 64)
            kernel_set = report["environment"].get("cpu_kernels", {})
            ours, peer = summary(report), r.llama_bench(gguf(f), "128", 64)
            rows.append((f"GGUF {f}", ours, peer["tg64_tps"], peer["pp128_ms"], "llama.cpp"))
        if args.transformers_python and os.path.isdir(os.path.join(args.model_dir, "hf")):
            for dtype, torch_dtype in (("f32", "float32"), ("bf16", "bfloat16")):
                ours = summary(r.vlmbench(os.path.join(args.model_dir, "hf"), 128, 64,
                                          ["--dtype", dtype]))
                peer = r.transformers(torch_dtype)
                rows.append((f"safetensors {dtype}", ours, peer["decode_tps"], peer["ttft_ms"],
                             "transformers"))
        print(f"vlmbench kernel set: {kernel_set.get('set')} "
              f"(detected: {', '.join(kernel_set.get('features') or []) or 'none'})\n")
        print("| format | peer | decode tok/s vlmbench : peer | ratio | TTFT ms vlmbench : peer "
              "| ratio | decode bandwidth | prefill compute |")
        print("|---|---|---|---|---|---|---|---|")
        for label, ours, peer_tps, peer_ms, peer in rows:
            print(f"| {label} | {peer} | {ours['decode_tps']:.1f} : {peer_tps:.1f} | "
                  f"{ours['decode_tps'] / peer_tps:.2f} | {ours['ttft_ms']:.0f} : {peer_ms:.0f} | "
                  f"{ours['ttft_ms'] / peer_ms:.2f} | {percent(ours['bandwidth'])} | "
                  f"{percent(ours['compute'])} |")
        print("\nDecode ratio above 1 and TTFT ratio below 1: vlmbench is the faster.")
        if args.quick or args.long_format not in formats:
            return
        long_model = gguf(args.long_format)

        ttft = {n: summary(r.vlmbench(long_model, n, 2))["ttft_ms"] for n in (512, 2048)}
        peer = r.llama_bench(long_model, "512,2048", 0)
        ours_growth = ttft[2048] / ttft[512]
        peer_growth = peer["pp2048_ms"] / peer["pp512_ms"]
        print(f"\nPrompt length, {args.long_format}: TTFT {ttft[512]:.0f} ms at 512 tokens and "
              f"{ttft[2048]:.0f} ms at 2,048 ({ours_growth:.2f}x); llama.cpp prefill "
              f"{peer['pp512_ms']:.0f} and {peer['pp2048_ms']:.0f} ms ({peer_growth:.2f}x); "
              f"ratios {ttft[512] / peer['pp512_ms']:.2f} and {ttft[2048] / peer['pp2048_ms']:.2f}.")

        for cache in ("auto", "f16"):
            extra = ["--kv-cache-dtype", cache]
            short = summary(r.vlmbench(long_model, 128, 32, extra))["tbt_ms"]
            long = summary(r.vlmbench(long_model, 2048, 32, extra))["tbt_ms"]
            print(f"TBT at 2,048 tokens of context against 128, {cache} KV cache: "
                  f"{short:.2f} → {long:.2f} ms ({long / short:.2f}x).")
        peer = r.llama_bench(long_model, "0", 32, depths="128,2048")
        short, long = 1000 / peer["tg32@128_tps"], 1000 / peer["tg32@2048_tps"]
        print(f"llama.cpp (its default f16 cache), tg32 after 128 and 2,048 tokens: "
              f"{short:.2f} → {long:.2f} ms a token ({long / short:.2f}x).")

        one = summary(r.vlmbench(long_model, 128, 64, threads="1"))["decode_tps"]
        two = next(o for label, o, *_ in rows if label == f"GGUF {args.long_format}")["decode_tps"]
        peer_one = r.llama_bench(long_model, "0", 64, threads="1")["tg64_tps"]
        print(f"Threads, {args.long_format} decode: vlmbench {one:.1f} tok/s with 1 thread, "
              f"{two:.1f} with {args.threads}; llama.cpp {peer_one:.1f} with 1 "
              f"(ratio {one / peer_one:.2f}).")


if __name__ == "__main__":
    main()
