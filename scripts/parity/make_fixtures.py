"""Reference outputs from Hugging Face transformers, for vlmbench's parity tests.

Writes three tiny checkpoints with transformers' own `save_pretrained` (Llama, LLaVA 1.5,
LLaVA-NeXT; seeded random weights), test images, and what transformers does with them:
the prompt's token ids, the number of image tokens, a digest of the pixel values its
(Pillow-backed) image processor makes, and the greedy tokens of `generate(do_sample=False)`.
`tests/parity.rs` runs vlmbench on the same files and must reproduce every token.

It also writes one tiny checkpoint per text family and config variant (TEXT_FIXTURES: Llama
config layouts and rope types, Mistral's sliding window, Qwen2/2.5, Qwen3, Gemma 2/3, Phi-3,
GPT-2, GPT-NeoX), each with the greedy tokens of a plain argmax loop over the model with its
KV cache (not `generate(min_new_tokens=...)`, which forbids end-of-sequence tokens).

usage: python make_fixtures.py TOKENIZER_JSON OUT_DIR [NAME...]
  TOKENIZER_JSON: the preset tokenizer (`vlmbench synth-model --preset tiny-llava --out DIR`
  writes one, with `<image>` as its last id).
  NAME: only these fixtures (default: all).

Qwen2-VL and Qwen2.5-VL checkpoints get several images of different sizes and aspect ratios
(resized down to `max_pixels`, up to `min_pixels`, or only rounded to the 28-pixel grid), one
case per image in `expected.json` (`cases`, with `image`), and one case with two of them in one
prompt (`images`, in order), with greedy tokens from a plain argmax loop over full forward
passes (no cache, no `generate`). They need the Qwen2-VL preset tokenizer
(`vlmbench synth-model --preset tiny-qwen2.5-vl --out DIR`, `<|im_start|>` ... `<|video_pad|>` as
its last ids), named by the environment variable QWEN_TOKENIZER_JSON.

LLaVA-OneVision (`llava_onevision`) gets the same kind of cases: a tiny SigLIP tower (60-pixel
input, so the 14-pixel patches leave a remainder, as 384 does), a Qwen2 language model, a grid
of up to 6 x 6 tiles so `anyres_max_9` shrinks the features of a large image, images resized up
and down, one case with two images (each then a single untiled view) and a text-only one. It needs the
OneVision preset tokenizer (`vlmbench synth-model --preset tiny-llava-onevision --out DIR`),
named by ONEVISION_TOKENIZER_JSON, and uses llava-hf's OneVision chat template.

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
    AutoConfig,
    AutoModelForCausalLM,
    CLIPVisionConfig,
    Gemma2Config,
    Gemma3TextConfig,
    GPT2Config,
    GPTNeoXConfig,
    MistralConfig,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
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

    def case(inputs):
        """The prompt's ids, image token count, pixel digest and greedy tokens of one prompt (an
        argmax loop over full forward passes, no cache)."""
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
        return {"input_ids": prompt[0].tolist(), "image_tokens": int((prompt[0] == ids["<|image_pad|>"]).sum()),
                "pixel_values": digest(inputs["pixel_values"]), "output_ids": generated}

    cases = []
    for width, height, seed, question in shapes:
        name = f"image_{width}x{height}.png"
        test_image(width, height, seed).save(os.path.join(out, name))
        prompt_text = template.format(question)
        inputs = processor(images=Image.open(os.path.join(out, name)), text=prompt_text, return_tensors="pt")
        cases.append({"prompt": question, "text": prompt_text, "image": name, "image_size": [height, width],
                      "image_grid_thw": inputs["image_grid_thw"][0].tolist()} | case(inputs))
    # Two of those images in one prompt (`images`), as the chat template renders a user turn
    # whose content lists two images, then the text: one vision block per image, in order,
    # each with its own grid (`image_grid_thw`, one row per image; `pixel_values` of both).
    block = "<|vision_start|><|image_pad|><|vision_end|>"
    pair = ["image_213x130.png", "image_130x460.png"]
    question = "Compare the two pictures."
    prompt_text = template.replace(block, block * 2).format(question)
    images = [Image.open(os.path.join(out, name)) for name in pair]
    inputs = processor(images=images, text=prompt_text, return_tensors="pt")
    cases.append({"prompt": question, "text": prompt_text, "images": pair,
                  "image_sizes": [[img.height, img.width] for img in images],
                  "image_grid_thw": inputs["image_grid_thw"].tolist()} | case(inputs))
    import transformers
    save_expected(out, {"transformers": transformers.__version__, "torch": torch.__version__, "cases": cases})


# llava-hf's chat template for its OneVision checkpoints (chat_template.json).
ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>' }}{% endfor %}"
    "{# Render all video then #}{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\\n' + content['text'] }}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ '\\n' + content['text'] }}{% endgeneration %}{% endfor %}{% endif %}"
    "{{'<|im_end|>'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def run_onevision(tok, out):
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                              LlavaOnevisionProcessor)
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil)
    from transformers.models.llava_onevision.video_processing_llava_onevision import (
        LlavaOnevisionVideoProcessor)
    image_id, video_id = tok.convert_tokens_to_ids("<image>"), tok.convert_tokens_to_ids("<video>")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    grid = [[60 * i, 60 * j] for i in range(1, 7) for j in range(1, 7)]
    vision = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, image_size=60, patch_size=14, vision_use_head=False,
                  initializer_range=0.1)
    text = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768,
                       rms_norm_eps=1e-6, initializer_range=0.5, bos_token_id=1, eos_token_id=im_end,
                       pad_token_id=3, tie_word_embeddings=False)
    torch.manual_seed(13)
    config = LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_index=image_id,
                                  video_token_index=video_id, vision_feature_layer=-1,
                                  vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
                                  image_grid_pinpoints=grid, tie_word_embeddings=False)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    # Random biases (SigLIP's patch convolution, the projector, Qwen2's q/k/v) and norms, as
    # for Qwen2-VL; the newline embedding is random already.
    with torch.no_grad():
        for pname, param in model.named_parameters():
            if pname.endswith(".bias"):
                param.normal_(0.0, 0.2)
            elif "norm" in pname:
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessorPil(size={"height": 60, "width": 60}, image_grid_pinpoints=grid,
                                                        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
                                                        resample=3),
        tokenizer=tok, video_processor=LlavaOnevisionVideoProcessor(), num_image_tokens=16,
        vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
        chat_template=ONEVISION_CHAT_TEMPLATE)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    # (images as (width, height, seed), question): one large enough for the grid to shrink,
    # one resized up, a tall one, and two images in one prompt.
    shapes = [([(640, 480, 31)], "Describe the scene in detail."), ([(50, 36, 32)], "What is this?"),
              ([(130, 460, 33)], "Which colours are there?"),
              ([(213, 130, 34), (50, 36, 32)], "What differs between the pictures?"),
              ([], "Tell me about cats.")]
    cases = []
    for images, question in shapes:
        names = []
        for width, height, seed in images:
            name = f"image_{width}x{height}.png"
            test_image(width, height, seed).save(os.path.join(out, name))
            names.append(name)
        messages = [{"role": "user", "content": [{"type": "image"} for _ in names] + [
            {"type": "text", "text": question}]}]
        prompt_text = processor.apply_chat_template(messages, add_generation_prompt=True)
        opened = [Image.open(os.path.join(out, n)) for n in names]
        inputs = processor(images=[opened] if opened else None, text=prompt_text, return_tensors="pt")
        prompt = inputs["input_ids"]
        vision = {k: inputs[k] for k in ("pixel_values", "image_sizes", "batch_num_images") if k in inputs}
        generated = []
        with torch.no_grad():
            for _ in range(QWEN_MAX_NEW_TOKENS):
                full = torch.cat([prompt, torch.tensor([generated], dtype=prompt.dtype)], dim=1)
                logits = model(input_ids=full, attention_mask=torch.ones_like(full), use_cache=False,
                               **vision).logits
                generated.append(int(logits[0, -1].argmax()))
        case = {"prompt": question, "text": prompt_text, "input_ids": prompt[0].tolist(),
                "image_tokens": int((prompt[0] == image_id).sum()), "output_ids": generated}
        if opened:
            case["pixel_values"] = digest(inputs["pixel_values"])
        if len(names) == 1:
            case["image"] = names[0]
        elif names:
            case["images"] = names
        cases.append(case)
    import transformers
    save_expected(out, {"transformers": transformers.__version__, "torch": torch.__version__, "cases": cases})


TEXT_PROMPT = "The quick brown fox jumps over the lazy dog near the river bank at 10:45, in 2026."
# More prompts per text fixture (`expected.json` `more`): one shorter than every window and
# original context (longrope then switches factors while decoding), one with accents, digits,
# tabs, doubled spaces and a newline.
TEXT_PROMPTS_MORE = ["Hi", "Ünïcode, ça va? 12 + 34 = 46.\n\tTabs\tand  two  spaces."]
# Qwen2's tokenizer.json: NFC, and a split that keeps digits apart (llama.cpp's `qwen2`).
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
SMALL = dict(vocab_size=None, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, initializer_range=0.5,
             bos_token_id=1, eos_token_id=2, pad_token_id=3)


def small(**kw):
    d = dict(SMALL)
    d.update(kw)
    return d


def to_4x_layout(out):
    """Rewrites config.json the way transformers 4.x wrote it: top-level `rope_theta` and
    `rope_scaling` instead of 5.x's `rope_parameters`."""
    path = os.path.join(out, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    rp = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rp.pop("rope_theta")
    rp.pop("partial_rotary_factor", None)
    cfg["rope_scaling"] = None if rp.get("rope_type", "default") == "default" else rp
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)


def edit_json(out, name, change):
    path = os.path.join(out, name)
    with open(path) as f:
        v = json.load(f)
    change(v)
    with open(path, "w") as f:
        json.dump(v, f, indent=2, ensure_ascii=False)


def qwen2_tokenizer(v):
    v["normalizer"] = {"type": "NFC"}
    v["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}


def qwen_edit(layout_4x=False):
    def edit(out):
        edit_json(out, "tokenizer.json", qwen2_tokenizer)
        if layout_4x:
            to_4x_layout(out)
    return edit


def gpt2_edit(out):
    # GPT-2 releases also carry `n_ctx` (llama.cpp's converter reads it).
    edit_json(out, "config.json", lambda v: v.update(n_ctx=v["n_positions"]))


def neox_4x_layout(out):
    """GPT-NeoX as 4.x (and the Pythia releases) write it: `rotary_pct`, `rotary_emb_base`."""
    def change(v):
        rp = v.pop("rope_parameters")
        v["rotary_pct"] = rp["partial_rotary_factor"]
        v["rotary_emb_base"] = rp["rope_theta"]
    edit_json(out, "config.json", change)


def text_fixtures():
    """name -> (config class, kwargs, post-save edit or None)."""
    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 16, "rope_theta": 10000.0}
    half = 8 // 2  # rotary dim / 2 for head_dim 16, partial 0.5
    return {
        # 5.x layout, theta != 10000, head_dim != hidden/heads, q/k/v/o and MLP biases, GQA.
        "llama_v5_bias_headdim": (LlamaConfig, small(head_dim=32, attention_bias=True, mlp_bias=True,
                                  max_position_embeddings=256,
                                  rope_parameters={"rope_type": "default", "rope_theta": 500000.0}), None),
        # 4.x layout (top-level rope_theta, rope_scaling) with linear scaling.
        "llama_v4_linear": (LlamaConfig, small(max_position_embeddings=256,
                            rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 50000.0}),
                            to_4x_layout),
        # Dynamic NTK: the prompt and the generated tokens run past max_position_embeddings.
        "llama_dynamic": (LlamaConfig, small(max_position_embeddings=24,
                          rope_parameters={"rope_type": "dynamic", "factor": 4.0, "rope_theta": 10000.0}), None),
        "llama_yarn": (LlamaConfig, small(max_position_embeddings=256,
                       rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                                        "rope_theta": 10000.0}), None),
        # Llama 3 scaling, tied embeddings, multi-query attention.
        "llama3_tied_mqa": (LlamaConfig, small(num_key_value_heads=1, tie_word_embeddings=True,
                            max_position_embeddings=256, rope_parameters=llama3), None),
        # A window shorter than the prompt: prefill and decode both limited to it.
        "mistral_window": (MistralConfig, small(sliding_window=6, max_position_embeddings=256), None),
        "qwen2": (Qwen2Config, small(tie_word_embeddings=True, max_position_embeddings=256,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}), qwen_edit()),
        # Sliding window on the layers from max_window_layers on.
        "qwen2_window": (Qwen2Config, small(tie_word_embeddings=False, max_position_embeddings=256,
                         use_sliding_window=True, sliding_window=6, max_window_layers=1), qwen_edit(True)),
        "qwen3": (Qwen3Config, small(head_dim=32, tie_word_embeddings=True, max_position_embeddings=256,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}), qwen_edit()),
        "gemma2": (Gemma2Config, small(head_dim=16, sliding_window=6, query_pre_attn_scalar=24,
                   max_position_embeddings=256, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                   initializer_range=0.2), None),
        # For the GGUF: llama.cpp scales Gemma 2's scores by 1/sqrt(head_dim) (its converter
        # does not store query_pre_attn_scalar; the released 2B and 9B have the two equal).
        "gemma2_gguf": (Gemma2Config, small(head_dim=16, sliding_window=6, query_pre_attn_scalar=16,
                        max_position_embeddings=256, attn_logit_softcapping=50.0,
                        final_logit_softcapping=30.0, initializer_range=0.2), None),
        # Six layers: the released pattern (five sliding, one global), which llama.cpp assumes.
        "gemma3": (Gemma3TextConfig, small(num_hidden_layers=6, head_dim=16, sliding_window=6,
                   query_pre_attn_scalar=16, max_position_embeddings=256, initializer_range=0.2,
                   rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                                    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}), None),
        # Longrope with partial rotary: the long factors take over past 16 positions.
        "phi3_longrope": (Phi3Config, small(hidden_size=64, num_attention_heads=4, num_key_value_heads=4,
                          max_position_embeddings=256, original_max_position_embeddings=16,
                          rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                                           "partial_rotary_factor": 0.5,
                                           "short_factor": [1.0, 1.1, 1.3, 1.6][:half],
                                           "long_factor": [1.0, 2.0, 4.0, 8.0][:half]}), None),
        "gpt2": (GPT2Config, dict(vocab_size=None, n_embd=64, n_layer=2, n_head=4, n_positions=256,
                 initializer_range=0.5, bos_token_id=1, eos_token_id=2), gpt2_edit),
        "pythia": (GPTNeoXConfig, dict(vocab_size=None, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                   num_attention_heads=4, max_position_embeddings=256, initializer_range=0.5,
                   rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
                   use_parallel_residual=True, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False),
                   neox_4x_layout),
    }


def argmax_loop(model, ids, n):
    """Greedy tokens: prefill, then one token at a time through the KV cache; no logits
    processors, so an end-of-sequence token is generated like any other."""
    out = []
    with torch.no_grad():
        res = model(input_ids=ids, use_cache=True)
        past = res.past_key_values
        for _ in range(n):
            nxt = int(res.logits[0, -1].argmax())
            out.append(nxt)
            res = model(input_ids=torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
            past = res.past_key_values
    return out


def run_text(tok, out, name, cls, kwargs, edit):
    kwargs = dict(kwargs)
    kwargs["vocab_size"] = len(tok)
    torch.manual_seed(sum(map(ord, name)))
    config = cls(**kwargs)
    model = AutoModelForCausalLM.from_config(config).eval()
    # Norm weights and biases start at constants; seeded noise makes every one of them count.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.2)
        if config.model_type.startswith("gemma"):
            # Gemma multiplies embeddings by sqrt(hidden): without this the scaled token
            # embedding swamps the residual stream and the tied head echoes the last token.
            model.get_input_embeddings().weight.mul_(config.hidden_size ** -0.5)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    if edit is not None:
        edit(out)
    # The reference comes from the checkpoint as written (config.json / tokenizer.json edits
    # included).
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok_out = PreTrainedTokenizerFast.from_pretrained(out)
    ids = tok_out(TEXT_PROMPT, return_tensors="pt").input_ids
    output_ids = argmax_loop(model, ids, MAX_NEW_TOKENS)
    more = []
    for prompt in TEXT_PROMPTS_MORE:
        # A fresh model per prompt: dynamic rope keeps the longest sequence it has seen in the
        # model object, so an earlier prompt would change a later one's frequencies.
        model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        more_ids = tok_out(prompt, return_tensors="pt").input_ids
        more.append({"prompt": prompt, "input_ids": more_ids[0].tolist(),
                     "output_ids": argmax_loop(model, more_ids, MAX_NEW_TOKENS)})
    import transformers
    save_expected(out, {"prompt": TEXT_PROMPT, "input_ids": ids[0].tolist(), "output_ids": output_ids,
                        "more": more, "transformers": transformers.__version__})


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    tok_path, root = sys.argv[1], sys.argv[2]
    only = set(sys.argv[3:])
    torch.set_num_threads(2)
    tok = tokenizer(tok_path)
    texts = text_fixtures()
    names = ["llama", "llava", "llava_next"] + list(texts) + ["qwen2_5_vl", "qwen2_vl", "llava_onevision"]
    for name in names:
        if only and name not in only:
            continue
        out = os.path.join(root, name)
        os.makedirs(out, exist_ok=True)
        if name in texts:
            run_text(tok, out, name, *texts[name])
        elif name == "llama":
            run_llama(tok, out)
        elif name in ("llava", "llava_next"):
            run_llava(tok, out, next_=name == "llava_next")
        elif name in ("qwen2_5_vl", "qwen2_vl"):
            qwen_tok = os.environ.get("QWEN_TOKENIZER_JSON")
            if not qwen_tok:
                sys.exit("set QWEN_TOKENIZER_JSON to the tiny-qwen2.5-vl preset's tokenizer.json")
            run_qwen(qwen_tokenizer(qwen_tok), out, v25=name == "qwen2_5_vl")
        elif name == "llava_onevision":
            ov_tok = os.environ.get("ONEVISION_TOKENIZER_JSON")
            if not ov_tok:
                sys.exit("set ONEVISION_TOKENIZER_JSON to the tiny-llava-onevision preset's tokenizer.json")
            run_onevision(PreTrainedTokenizerFast(tokenizer_file=ov_tok, bos_token="<s>", eos_token="<|im_end|>",
                                                  unk_token="<unk>", pad_token="<pad>",
                                                  extra_special_tokens={"image_token": "<image>",
                                                                        "video_token": "<video>"}), out)
        else:
            sys.exit(f"unknown fixture {name!r}")
        print(f"wrote {out}")
    if not only:
        import transformers
        with open(os.path.join(root, "VERSIONS"), "w") as f:
            f.write(f"transformers {transformers.__version__}\ntorch {torch.__version__}\n")


if __name__ == "__main__":
    main()
