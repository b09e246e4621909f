"""GGUF files of the text parity fixtures, as llama.cpp's converter writes them.

usage: python make_gguf.py LLAMA_CPP_DIR FIXTURES_DIR OUT_DIR NAME...
  LLAMA_CPP_DIR: a llama.cpp checkout (convert_hf_to_gguf.py and its `conversion` package).

Each fixture is converted to f32 (so its tokens can equal the safetensors ones) with the
tokenizer stored in the GGUF metadata. The converter identifies a BPE pre-tokenizer by the hash
of its output on a test text, which a tiny rule-made vocabulary never matches; the name is
given here instead: `qwen2` for the Qwen fixtures (whose tokenizer.json carries Qwen2's split),
`gpt-2` for the others. Fixture names here: qwen2 qwen3 gemma2 gemma3 phi3_longrope gpt2 pythia. The converter reads the config through transformers, whose 5.x drops
4.x keys it still reads (GPT-NeoX's `rotary_pct`); config.json's own keys fill those in.
"""
import importlib.util
import json
import os
import sys


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    llama_cpp, fixtures, out = sys.argv[1:4]
    os.chdir(llama_cpp)
    sys.path.insert(0, llama_cpp)
    spec = importlib.util.spec_from_file_location("conv", os.path.join(llama_cpp, "convert_hf_to_gguf.py"))
    conv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conv)
    import conversion.base as base
    load_hparams = base.ModelBase.load_hparams

    def hparams_with_raw_keys(dir_model, is_mistral_format):
        config = load_hparams(dir_model, is_mistral_format)
        with open(os.path.join(dir_model, "config.json")) as f:
            for k, v in json.load(f).items():
                config.setdefault(k, v)
        return config

    base.ModelBase.load_hparams = staticmethod(hparams_with_raw_keys)
    # The fixtures' tokenizer.json is a rule-made byte-level BPE with no SentencePiece
    # tokenizer.model beside it, which the Gemma 2 and Phi-3 converters ask for; their vocabulary
    # goes in as the GPT-2-style BPE it is (Gemma 3's converter does so by itself).
    import conversion.gemma as gemma
    import conversion.phi as phi
    for cls in (gemma.Gemma2Model, phi.Phi3MiniModel):
        cls.set_vocab = lambda self: self._set_vocab_gpt2()
    os.makedirs(out, exist_ok=True)
    for name in sys.argv[4:]:
        pre = "qwen2" if name.startswith("qwen") else "gpt-2"
        base.TextModel.get_vocab_base_pre = lambda self, tokenizer, pre=pre: pre
        sys.argv = ["convert_hf_to_gguf.py", os.path.join(fixtures, name), "--outtype", "f32",
                    "--outfile", os.path.join(out, f"{name}.gguf")]
        conv.main()
        print(f"wrote {name}.gguf")


if __name__ == "__main__":
    main()
