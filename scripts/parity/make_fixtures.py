"""Reference outputs from Hugging Face transformers, for vlmbench's parity tests.

Writes three tiny checkpoints with transformers' own `save_pretrained` (Llama, LLaVA 1.5,
LLaVA-NeXT; seeded random weights), test images, and what transformers does with them:
the prompt's token ids, the number of image tokens, a digest of the pixel values its
(Pillow-backed) image processor makes, and the greedy tokens of `generate(do_sample=False)`.
`tests/parity.rs` runs vlmbench on the same files and must reproduce every token.

usage: python make_fixtures.py TOKENIZER_JSON OUT_DIR
  TOKENIZER_JSON: the preset tokenizer (`vlmbench synth-model --preset tiny-llava --out DIR`
  writes one, with `<image>` as its last id).

Needs torch, transformers (5.x), pillow, numpy; CPU only. Re-running gives the same files.
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


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    tok_path, root = sys.argv[1], sys.argv[2]
    torch.set_num_threads(2)
    tok = tokenizer(tok_path)
    for name in ["llama", "llava", "llava_next"]:
        out = os.path.join(root, name)
        os.makedirs(out, exist_ok=True)
        if name == "llama":
            run_llama(tok, out)
        else:
            run_llava(tok, out, next_=name == "llava_next")
        print(f"wrote {out}")
    import transformers
    with open(os.path.join(root, "VERSIONS"), "w") as f:
        f.write(f"transformers {transformers.__version__}\ntorch {torch.__version__}\n")


if __name__ == "__main__":
    main()
