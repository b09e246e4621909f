"""The transformers side of the GPU proof (scripts/gpu/verify.sh): the same shapes, the same
inputs and the same timing protocol as `vlmbench run`, in PyTorch + transformers.

  reference.py bench --model-dir DIR --data-file SET.json --out OUT.json [options]
      DIR: `vlmbench synth-model --preset P --out DIR --no-weights` (config, tokenizer and
      processor files). The model is built from that config directly on the device with
      transformers' own random initialisation (weight values do not change timing), in --dtype.
      Each sample: the clock starts before preprocessing (image load + processor + tokenizer, as
      vlmbench's preprocess), prefill with the default cache (DynamicCache), greedy argmax, the
      token read back to the host (a synchronisation) -> TTFT; then one forward per token with
      torch.cuda.synchronize before each timestamp -> TBT; detokenisation -> E2E.
  reference.py parity --fixtures tests/fixtures/parity --out OUT.json [--device D]
      transformers' greedy generate() on every parity fixture, f32 and f16, beside the tokens in
      each fixture's expected.json (written by transformers on the CPU in f32).
  reference.py bandwidth --out OUT.json [--device D] [--mib N]
      device-to-device copy bandwidth: (bytes read + bytes written) / time, best of 10 copies.

Needs torch and transformers (5.x); writes JSON only. Works on the CPU too (--device cpu), which
is how the script's logic is rehearsed on a machine without a GPU.
"""
import argparse
import inspect
import json
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoConfig, AutoTokenizer  # noqa: E402

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
# vlmbench's default LLaVA 1.5 prompt (README, "Prompt templates").
LLAVA_TEMPLATE = "USER: <image>\n{prompt} ASSISTANT:"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def environment(device):
    env = {"torch": torch.__version__, "transformers": transformers.__version__,
           "device": str(device)}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(gpu=p.name, gpu_memory_bytes=p.total_memory, cuda=torch.version.cuda,
                   compute_capability=f"{p.major}.{p.minor}")
    return env


def write_json(path, value):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def stats(values):
    if not values:
        return None
    s = sorted(values)
    return {"mean": statistics.fmean(s), "median": statistics.median(s), "min": s[0], "max": s[-1],
            "p99": s[min(len(s) - 1, int(round(0.99 * (len(s) - 1))))], "count": len(s)}


def build_model(model_dir, dtype, device):
    """The architecture of config.json, random-initialised by transformers on the device."""
    config = AutoConfig.from_pretrained(model_dir)
    vision = getattr(config, "vision_config", None) is not None
    if vision:
        from transformers import AutoModelForImageTextToText as Auto
    else:
        from transformers import AutoModelForCausalLM as Auto
    torch.manual_seed(0)
    t = time.perf_counter()
    with torch.device(device):
        model = Auto.from_config(config, **dtype_kw(dtype))
    model = model.to(device=device, dtype=dtype).eval()
    sync(device)
    return model, config, vision, time.perf_counter() - t


def decode_bytes(model, config, dtype):
    """What one decode step reads: every language-model weight except the input embedding
    table (one row is gathered), and per position of context the K and V of every layer."""
    text = getattr(config, "text_config", config)
    language = model.get_decoder() if hasattr(model, "get_decoder") else model
    embed = model.get_input_embeddings().weight
    lm_head = model.get_output_embeddings().weight
    lang_params = sum(p.numel() for p in language.parameters())
    if lm_head is not embed:  # untied: the LM head is read too
        lang_params += lm_head.numel()
    size = torch.tensor([], dtype=dtype).element_size()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "weight_bytes_total": sum(p.numel() * p.element_size() for p in model.parameters()),
        "decode_weight_bytes": (lang_params - embed.numel()) * size,
        "kv_bytes_per_position": 2 * text.num_hidden_layers * kv_heads * head_dim * size,
        "hidden_size": text.hidden_size,
        "intermediate_size": text.intermediate_size,
        "num_hidden_layers": text.num_hidden_layers,
        "num_attention_heads": text.num_attention_heads,
        "vocab_size": text.vocab_size,
        "dtype_bytes": size,
    }


def dtype_kw(dtype):
    """`dtype=` in transformers 5, `torch_dtype=` in 4.x."""
    return {"dtype": dtype} if int(transformers.__version__.split(".")[0]) >= 5 else {"torch_dtype": dtype}


def keep_last_logits(model):
    """Only the last position's logits in prefill, as generate() asks (the name changed in 4.50)."""
    params = inspect.signature(model.forward).parameters
    if "logits_to_keep" in params:
        return {"logits_to_keep": 1}
    if "num_logits_to_keep" in params:
        return {"num_logits_to_keep": 1}
    return {}


def cache_argument(model):
    """The keyword the model's forward takes its KV cache by (`cache` from transformers 5.2x,
    `past_key_values` before)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def returned_cache(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def load_set(path):
    with open(path) as f:
        data = json.load(f)
    base = os.path.dirname(os.path.abspath(path))
    for s in data["samples"]:
        if s.get("image"):
            s["image_path"] = os.path.join(base, s["image"])
    return data["samples"]


def timed_generate(model, processor, tokenizer, sample, vision, device, max_new, template):
    """One sample, timed as vlmbench times it. Returns the per-sample record."""
    from PIL import Image

    t0 = time.perf_counter()
    if vision and sample.get("image_path"):
        image = Image.open(sample["image_path"]).convert("RGB")
        text = template.format(prompt=sample["prompt"])
        inputs = processor(images=image, text=text, return_tensors="pt")
    else:
        inputs = tokenizer(sample["prompt"], return_tensors="pt")
    inputs = {k: v.to(device) for k, v in inputs.items()}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    input_tokens = int(inputs["input_ids"].shape[1])
    t_pre = time.perf_counter()
    cache_kw = cache_argument(model)
    with torch.inference_mode():
        out = model(**inputs, use_cache=True, **keep_last_logits(model))
        past = returned_cache(out)
        token = out.logits[:, -1, :].argmax(-1, keepdim=True)
        ids = [int(token.item())]
        times = [time.perf_counter()]
        for _ in range(max_new - 1):
            out = model(input_ids=token, use_cache=True, **{cache_kw: past})
            past = returned_cache(out)
            token = out.logits[:, -1, :].argmax(-1, keepdim=True)
            ids.append(int(token.item()))
            sync(device)
            times.append(time.perf_counter())
    tokenizer.decode(ids, skip_special_tokens=True)
    t_end = time.perf_counter()
    tbt = [(b - a) * 1e3 for a, b in zip(times, times[1:])]
    decode_s = times[-1] - times[0]
    return {
        "input_tokens": input_tokens,
        "output_tokens": len(ids),
        "preprocess_ms": (t_pre - t0) * 1e3,
        "ttft_ms": (times[0] - t0) * 1e3,
        "e2e_ms": (t_end - t0) * 1e3,
        "tbt_ms": tbt,
        "tps": (len(ids) - 1) / decode_s if len(ids) > 1 and decode_s > 0 else None,
        "output_token_ids": ids,
    }


def cmd_bench(a):
    device = torch.device(a.device)
    dtype = DTYPES[a.dtype]
    model, config, vision, build_s = build_model(a.model_dir, dtype, device)
    tokenizer = AutoTokenizer.from_pretrained(a.model_dir)
    processor = None
    if vision:
        from transformers import AutoProcessor
        processor = AutoProcessor.from_pretrained(a.model_dir)
    samples = load_set(a.data_file)
    if a.limit:
        samples = samples[: a.limit]
    for _ in range(a.warmup):
        timed_generate(model, processor, tokenizer, samples[0], vision, device, a.max_new_tokens, a.template)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    results = [timed_generate(model, processor, tokenizer, s, vision, device, a.max_new_tokens, a.template)
               for s in samples]
    tbt = [x for r in results for x in r["tbt_ms"]]
    summary = {
        "ttft_ms": stats([r["ttft_ms"] for r in results]),
        "tbt_ms": stats(tbt),
        "tps": stats([r["tps"] for r in results if r["tps"] is not None]),
        "e2e_ms": stats([r["e2e_ms"] for r in results]),
        "preprocess_ms": stats([r["preprocess_ms"] for r in results]),
    }
    record = {
        "engine": "transformers", "model_dir": a.model_dir, "data_file": a.data_file,
        "architecture": config.architectures[0] if config.architectures else config.model_type,
        "dtype": a.dtype, "max_new_tokens": a.max_new_tokens, "warmup": a.warmup,
        "attn_implementation": getattr(config, "_attn_implementation", None),
        "model_build_s": build_s, "environment": environment(device),
        "shapes": decode_bytes(model, config, dtype), "summary": summary,
        "peak_allocated_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "samples": [{k: v for k, v in r.items() if k != "tbt_ms"} | {"tbt_ms_median": stats(r["tbt_ms"])["median"] if r["tbt_ms"] else None}
                    for r in results],
    }
    write_json(a.out, record)
    print(f"transformers {record['architecture']} {a.dtype}: TTFT {summary['ttft_ms']['median']:.1f} ms, "
          f"TPS {summary['tps']['median']:.1f} tok/s over {len(results)} samples -> {a.out}")


def fixture_inputs(name, fixture_dir, expected, dtype, device):
    from PIL import Image
    if "image" not in expected:
        return {"input_ids": torch.tensor([expected["input_ids"]], device=device)}
    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained(fixture_dir)
    image = Image.open(os.path.join(fixture_dir, expected["image"])).convert("RGB")
    inputs = processor(images=image, text=expected["text"], return_tensors="pt")
    inputs = {k: v.to(device) for k, v in inputs.items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    if inputs["input_ids"][0].tolist() != expected["input_ids"]:
        raise SystemExit(f"{name}: the processor's prompt ids differ from expected.json's")
    return inputs


def cmd_parity(a):
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText
    device = torch.device(a.device)
    out = {"environment": environment(device), "fixtures": {}}
    for name in sorted(os.listdir(a.fixtures)):
        fixture_dir = os.path.join(a.fixtures, name)
        expected_path = os.path.join(fixture_dir, "expected.json")
        if not os.path.isfile(expected_path):
            continue
        with open(expected_path) as f:
            expected = json.load(f)
        if "cases" in expected:
            # Qwen2-VL / LLaVA-OneVision fixtures hold several image cases with their own
            # processors; the CPU parity tests (tests/parity.rs) check those.
            print(f"transformers parity {name}: skipped (several image cases)")
            continue
        want = expected["output_ids"]
        entry = {"expected": want}
        for dname in ("f32", "f16"):
            dtype = DTYPES[dname]
            Auto = AutoModelForImageTextToText if "image" in expected else AutoModelForCausalLM
            model = Auto.from_pretrained(fixture_dir, **dtype_kw(dtype)).to(device).eval()
            inputs = fixture_inputs(name, fixture_dir, expected, dtype, device)
            with torch.inference_mode():
                gen = model.generate(**inputs, max_new_tokens=len(want), do_sample=False, min_new_tokens=len(want))
            got = gen[0, inputs["input_ids"].shape[1]:].tolist()
            entry[dname] = got
        out["fixtures"][name] = entry
        print(f"transformers parity {name}: f32 {'equal' if entry['f32'] == want else 'DIFFERENT'}, "
              f"f16 {'equal' if entry['f16'] == want else 'different'} to expected.json")
    write_json(a.out, out)


def cmd_bandwidth(a):
    device = torch.device(a.device)
    n = a.mib * 1024 * 1024
    src = torch.empty(n, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(3):
        dst.copy_(src)
    for _ in range(10):
        sync(device)
        t = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t)
    record = {"environment": environment(device), "buffer_bytes": n, "best_copy_s": best,
              "copy_bandwidth_bytes_per_s": 2 * n / best,
              "definition": "device-to-device copy of buffer_bytes: (read + written bytes) / time, best of 10"}
    write_json(a.out, record)
    print(f"copy bandwidth {record['copy_bandwidth_bytes_per_s'] / 1e9:.0f} GB/s ({a.mib} MiB buffer) -> {a.out}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench", help="time the same shapes in transformers")
    b.add_argument("--model-dir", required=True)
    b.add_argument("--data-file", required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--device", default="cuda")
    b.add_argument("--dtype", choices=sorted(DTYPES), default="f16")
    b.add_argument("--max-new-tokens", type=int, default=128)
    b.add_argument("--limit", type=int, default=0)
    b.add_argument("--warmup", type=int, default=1)
    b.add_argument("--template", default=LLAVA_TEMPLATE)
    q = sub.add_parser("parity", help="transformers' greedy tokens on the parity fixtures")
    q.add_argument("--fixtures", required=True)
    q.add_argument("--out", required=True)
    q.add_argument("--device", default="cuda")
    w = sub.add_parser("bandwidth", help="device copy bandwidth")
    w.add_argument("--out", required=True)
    w.add_argument("--device", default="cuda")
    w.add_argument("--mib", type=int, default=2048)
    a = p.parse_args(argv)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"torch {torch.__version__} sees no CUDA device")
    {"bench": cmd_bench, "parity": cmd_parity, "bandwidth": cmd_bandwidth}[a.cmd](a)


if __name__ == "__main__":
    main()
