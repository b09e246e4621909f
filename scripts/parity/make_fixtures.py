"""Reference outputs from Hugging Face transformers, for vlmbench's parity tests.

Writes three tiny checkpoints with transformers' own `save_pretrained` (Llama, LLaVA 1.5,
LLaVA-NeXT; seeded random weights), test images, and what transformers does with them:
the prompt's token ids, the number of image tokens, a digest of the pixel values its
(Pillow-backed) image processor makes, and the greedy tokens of `generate(do_sample=False)`.
`tests/parity.rs` runs vlmbench on the same files and must reproduce every token.

Qwen2-VL and Qwen2.5-VL checkpoints get several images of different sizes and aspect ratios
(resized down to `max_pixels`, up to `min_pixels`, or only rounded to the 28-pixel grid), one
case per image in `expected.json` (`cases`), with greedy tokens from a plain argmax loop over
full forward passes (no cache, no `generate`).

usage: python make_fixtures.py TOKENIZER_JSON QWEN_TOKENIZER_JSON OUT_DIR [NAME...]
  TOKENIZER_JSON: the preset tokenizer (`vlmbench synth-model --preset tiny-llava --out DIR`
  writes one, with `<image>` as its last id).
  QWEN_TOKENIZER_JSON: the Qwen2-VL preset tokenizer (`vlmbench synth-model --preset
  tiny-qwen2.5-vl --out DIR`, with `<|im_start|>` ... `<|image_pad|>` as its last ids).
  NAME: fixtures to write (llama, llava, llava_next, qwen2_5_vl, qwen2_vl); default all.

Needs torch, transformers (5.x), torchvision (transformers' Qwen2-VL image processor module
imports it), pillow, numpy; CPU only. Re-running gives the same files.
"""
import hashlib
import json
import os
import sys

import numpy as np
import torch
from PIL import Image
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

MAX_NEW_TOKENS = 24
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def tokenizer(path):
    tok = PreTrainedTokenizerFast(tokenizer_file=path, bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>", pad_token="<pad>",
                                  extra_special_tokens={"image_token": "<image>"})
    return tok


def text_config(vocab):
    return LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                       rms_norm_eps=1e-5, initializer_range=0.5, bos_token_id=1, eos_token_id=2,
                       pad_token_id=3, tie_word_embeddings=False)


def vision_config():
    return CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                            image_size=336, patch_size=14, initializer_range=0.1)


def test_image(width, height, seed):
    """Smooth gradients plus seeded blocks: resizing has real work to do at every pixel."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)),
                    ((x + y) * 3) % 256], axis=-1).astype(np.uint8)
    for _ in range(12):
        x0, y0 = rng.integers(0, width - 20), rng.integers(0, height - 20)
        img[y0:y0 + rng.integers(5, 60), x0:x0 + rng.integers(5, 60)] = rng.integers(0, 256, 3)
    return Image.fromarray(img, "RGB")


def digest(pixel_values):
    arr = pixel_values.detach().cpu().numpy().astype(np.float32)
    return {"shape": list(arr.shape), "sha256": hashlib.sha256(arr.tobytes()).hexdigest(),
            "sum": float(arr.astype(np.float64).sum())}


def save_expected(out, record):
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")


def run_llama(tok, out):
    torch.manual_seed(1)
    model = LlamaForCausalLM(text_config(len(tok))).eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    prompt = "The quick brown fox jumps over the lazy dog near the river bank."
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    save_expected(out, {"prompt": prompt, "input_ids": ids[0].tolist(),
                        "output_ids": gen[0, ids.shape[1]:].tolist()})


def run_llava(tok, out, next_):
    image_token = tok.convert_tokens_to_ids("<image>")
    torch.manual_seed(2 if next_ else 3)
    if next_:
        config = LlavaNextConfig(vision_config=vision_config(), text_config=text_config(len(tok)),
                                 image_token_index=image_token, projector_hidden_act="gelu",
                                 vision_feature_layer=-2, vision_feature_select_strategy="default")
        model = LlavaNextForConditionalGeneration(config).eval()
        processor = LlavaNextProcessor(
            image_processor=LlavaNextImageProcessorPil(
                size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, resample=3,
                image_mean=CLIP_MEAN, image_std=CLIP_STD,
                image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]),
            tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
            num_additional_image_tokens=1)
        # A frame that is neither square nor one of the grid shapes: resize, pad, unpad.
        image = test_image(500, 290, 7)
        template = ("A chat between a curious human and an artificial intelligence assistant. The assistant "
                    "gives helpful, detailed, and polite answers to the human's questions. USER: <image>\n{} ASSISTANT:")
    else:
        config = LlavaConfig(vision_config=vision_config(), text_config=text_config(len(tok)),
                             image_token_index=image_token, projector_hidden_act="gelu",
                             vision_feature_layer=-2, vision_feature_select_strategy="default")
        model = LlavaForConditionalGeneration(config).eval()
        processor = LlavaProcessor(
            image_processor=CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                                  image_mean=CLIP_MEAN, image_std=CLIP_STD, resample=3),
            tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
            num_additional_image_tokens=1)
        image = test_image(640, 480, 5)
        template = "USER: <image>\n{} ASSISTANT:"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    image_name = "image.png"
    image.save(os.path.join(out, image_name))
    question = "Describe the scene in detail."
    text = template.format(question)
    inputs = processor(images=Image.open(os.path.join(out, image_name)), text=text, return_tensors="pt")
    ids = inputs["input_ids"]
    with torch.no_grad():
        gen = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    image_tokens = int((ids[0] == image_token).sum())
    save_expected(out, {
        "prompt": question, "text": text, "image": image_name,
        "input_ids": ids[0].tolist(), "image_tokens": image_tokens,
        "pixel_values": digest(inputs["pixel_values"]),
        "output_ids": gen[0, ids.shape[1]:].tolist(),
    })


QWEN_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                 "<|video_pad|>"]
QWEN_MAX_NEW_TOKENS = 16


def qwen_tokenizer(path):
    return PreTrainedTokenizerFast(tokenizer_file=path, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", extra_special_tokens={"image_token": "<|image_pad|>",
                                                                            "video_token": "<|video_pad|>"})


def run_qwen(tok, out, v25):
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor)
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
    ids = {name: tok.convert_tokens_to_ids(name) for name in QWEN_SPECIALS}
    text = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                initializer_range=0.5, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    token_ids = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                     vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
                     tie_word_embeddings=False)
    torch.manual_seed(11 if v25 else 12)
    if v25:
        # Windows of 2x2 merged units (56 px), full attention on the middle layer.
        vision = dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                      window_size=56, fullatt_block_indexes=[1], hidden_act="silu", patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2, initializer_range=0.1)
        model = Qwen2_5_VLForConditionalGeneration(
            Qwen2_5_VLConfig(text_config=text, vision_config=vision, **token_ids)).eval()
        processor_class = Qwen2_5_VLProcessor
    else:
        vision = dict(depth=2, embed_dim=32, mlp_ratio=2, num_heads=2, hidden_size=64, hidden_act="quick_gelu",
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2, initializer_range=0.1)
        model = Qwen2VLForConditionalGeneration(
            Qwen2VLConfig(text_config=text, vision_config=vision, **token_ids)).eval()
        processor_class = Qwen2VLProcessor
    # transformers initialises biases to zero and norms to one; random values make the test
    # see every bias (the language model's q/k/v, the tower's) and every norm weight.
    with torch.no_grad():
        for pname, param in model.named_parameters():
            if pname.endswith(".bias"):
                param.normal_(0.0, 0.2)
            elif "norm" in pname or "ln_q" in pname:
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
    processor = processor_class(
        image_processor=Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 64, resample=3,
                                                 image_mean=CLIP_MEAN, image_std=CLIP_STD, patch_size=14,
                                                 temporal_patch_size=2, merge_size=2),
        tokenizer=tok, video_processor=Qwen2VLVideoProcessor())
    model.save_pretrained(out)
    processor.save_pretrained(out)
    template = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                "<|vision_start|><|image_pad|><|vision_end|>{}<|im_end|>\n<|im_start|>assistant\n")
    # (width, height, seed, question): above max_pixels, below min_pixels, tall and above
    # max_pixels, and one only rounded to the 28-pixel grid.
    shapes = [(640, 480, 21, "Describe the scene in detail."), (50, 36, 22, "What is this?"),
              (130, 460, 23, "Which colours are there?"), (213, 130, 24, "Count the squares.")]
    cases = []
    for width, height, seed, question in shapes:
        name = f"image_{width}x{height}.png"
        test_image(width, height, seed).save(os.path.join(out, name))
        prompt_text = template.format(question)
        inputs = processor(images=Image.open(os.path.join(out, name)), text=prompt_text, return_tensors="pt")
        prompt = inputs["input_ids"]
        types = inputs["mm_token_type_ids"]
        generated = []
        with torch.no_grad():
            for _ in range(QWEN_MAX_NEW_TOKENS):
                tail = torch.tensor([generated], dtype=prompt.dtype)
                full = torch.cat([prompt, tail], dim=1)
                full_types = torch.cat([types, torch.zeros_like(tail, dtype=types.dtype)], dim=1)
                logits = model(input_ids=full, attention_mask=torch.ones_like(full),
                               pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"],
                               mm_token_type_ids=full_types, use_cache=False).logits
                generated.append(int(logits[0, -1].argmax()))
        cases.append({
            "prompt": question, "text": prompt_text, "image": name, "image_size": [height, width],
            "image_grid_thw": inputs["image_grid_thw"][0].tolist(),
            "input_ids": prompt[0].tolist(), "image_tokens": int((prompt[0] == ids["<|image_pad|>"]).sum()),
            "pixel_values": digest(inputs["pixel_values"]), "output_ids": generated,
        })
    import transformers
    save_expected(out, {"transformers": transformers.__version__, "torch": torch.__version__, "cases": cases})


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    tok_path, qwen_tok_path, root = sys.argv[1], sys.argv[2], sys.argv[3]
    names = sys.argv[4:] or ["llama", "llava", "llava_next", "qwen2_5_vl", "qwen2_vl"]
    torch.set_num_threads(2)
    tok = tokenizer(tok_path) if set(names) & {"llama", "llava", "llava_next"} else None
    for name in names:
        out = os.path.join(root, name)
        os.makedirs(out, exist_ok=True)
        if name == "llama":
            run_llama(tok, out)
        elif name in ("llava", "llava_next"):
            run_llava(tok, out, next_=name == "llava_next")
        elif name in ("qwen2_5_vl", "qwen2_vl"):
            run_qwen(qwen_tokenizer(qwen_tok_path), out, v25=name == "qwen2_5_vl")
        else:
            sys.exit(f"unknown fixture {name!r}")
        print(f"wrote {out}")
    if set(names) >= {"llama", "llava", "llava_next"}:
        import transformers
        with open(os.path.join(root, "VERSIONS"), "w") as f:
            f.write(f"transformers {transformers.__version__}\ntorch {torch.__version__}\n")


if __name__ == "__main__":
    main()
