"""Decode speed of every text family on the one decoder, beside the Llama path, as memory traffic.

usage: python3 scripts/bench/families.py VLMBENCH [PRESET[@N] ...]

Decode is bound by memory bandwidth: every step reads each weight once (the embedding table only
for one row, unless it is tied to the LM head, which reads all of it). So families of different
sizes compare as weight bytes read per second of decode: tok/s x bytes read per token. A family
on the fast CPU path reads at about the Llama path's rate. Each preset runs in one process after
the other (`vlmbench run --model random:PRESET`, f32, 2 threads, one 64-token prompt, 32 tokens,
one warm-up); the table prints each family's rate and its ratio to the first preset's.
"""
import json
import os
import subprocess
import sys
import tempfile

DEFAULT = ["llama-3.2-1b@4", "qwen2.5-0.5b@8", "qwen3-0.6b@8", "gemma-3-1b@8", "gemma-2-2b@4",
           "phi-3.5-mini@4", "mistral-7b@2", "gpt2", "pythia-70m"]


def run(cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    exe, presets = sys.argv[1], sys.argv[2:] or DEFAULT
    threads = os.environ.get("THREADS", "2")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in presets:
            base = preset.split("@")[0]
            conf_dir = os.path.join(tmp, base)
            if not os.path.isdir(conf_dir):
                run([exe, "synth-model", "--preset", base, "--out", conf_dir, "--no-weights"])
            cfg = json.load(open(os.path.join(conf_dir, "config.json")))
            cfg = cfg.get("text_config", cfg)
            data = os.path.join(tmp, f"{base}-p64.json")
            if not os.path.exists(data):
                run([exe, "prepare", "synthetic", "--name", "p64", "--no-images", "--num-samples", "2",
                     "--input-tokens-mean", "64", "--tokenizer", os.path.join(conf_dir, "tokenizer.json"),
                     "--out", data])
            report = os.path.join(tmp, f"{base}.json")
            run([exe, "run", "--model", f"random:{preset}", "--data-file", data, "--max-new-tokens", "32",
                 "--ignore-eos", "--threads", threads, "--warmup", "1", "--dtype", "f32", "--quiet",
                 "--report-file", report])
            r = json.load(open(report))
            params = r["engine"]["parameters"]
            hidden = cfg.get("hidden_size", cfg.get("n_embd"))
            vocab = cfg["vocab_size"]
            tied = cfg.get("tie_word_embeddings", True)
            read = params if tied else params - vocab * hidden
            tps = r["summary"]["decode_tps_pooled"]
            rows.append((preset, r["engine"]["architecture"], params, read, tps, read * 4 * tps / 1e9))
    ref = rows[0][5]
    print(f"{'preset':<18} {'architecture':<26} {'params':>12} {'read/token':>12} {'tok/s':>8} {'GB/s':>7} {'vs first':>8}")
    for p, a, n, rd, t, g in rows:
        print(f"{p:<18} {a:<26} {n:>12,} {rd:>12,} {t:>8.1f} {g:>7.2f} {g / ref:>8.2f}")


if __name__ == "__main__":
    main()
