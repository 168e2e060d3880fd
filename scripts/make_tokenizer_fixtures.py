#!/usr/bin/env python3
"""Reference token ids for tests/it/tokenizer.rs: writes tests/fixtures/tokenizer-encode.json.

For each real model it encodes a list of tricky strings with the Hugging Face tokenizer and records
the ids (without and with special tokens) and the `tokenizers` decode of those ids.

- Gemma 3: transformers' GGUF converter (`AutoTokenizer.from_pretrained(..., gguf_file=...)`).
- SmolLM2: the same, but with the pre-tokenizer of the real HuggingFaceTB/SmolLM2 tokenizer.json,
  Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False, use_regex=True)]:
  transformers' converter does not know llama.cpp's `smollm` pre-tokenizer and would not split digits.
- Two variants that exercise the other converter paths with the same vocabularies: the Gemma
  vocabulary under `general.architecture = llama` (LlamaTokenizer: Metaspace, merges from scores)
  and the SmolLM2 vocabulary with `tokenizer.ggml.pre = llama-bpe` (the Llama 3 split). Their
  GGUFs (tokenizer metadata only) are written to a temporary folder; each fixture entry records
  the metadata it overrides, so the Rust test can apply the same change.

Usage: /work/pyenv/bin/python scripts/make_tokenizer_fixtures.py [MODELS_DIR]
"""

import json
import os
import sys
import tempfile
from pathlib import Path

from gguf import GGUFReader, GGUFValueType, GGUFWriter
from tokenizers import pre_tokenizers
from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
MODELS = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("LORA_TRAIN_MODELS", ROOT / "models"))
OUT = ROOT / "tests" / "fixtures" / "tokenizer-encode.json"

TEXTS = [
    "Hello world",
    "",
    "2024 and 1234567",
    "x=3.14159; y=1,000,000 (about 42%)",
    " leading space",
    "   three leading spaces",
    "trailing spaces   ",
    "multiple   inner    spaces",
    "tabs\tand\t\ttabs",
    "line one\nline two\n\nline four\r\nend",
    "\n\n\n",
    "Café naïve résumé façade Ångström",
    "Ünïcödé ß ẞ Ωmega, Россия и Україна, مرحبا",
    "你好，世界！日本語のテキストとカタカナ。한국어",
    "emoji 😀👍🏽🇺🇸 and ❤️ and 🦀",
    "I'm sure they'll say it's fine, don't you?",
    "def foo(x):\n    return x ** 2\n",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n",
    "<bos>text<eos> and <|endoftext|>",
    "<table><tr><td>1</td></tr></table>",
    "a\u2581b \u2581 lower one eighth block",
    "bell\u0007 and nul\u0000 controls",
    "zero\u200bwidth and\u00a0nbsp",
]

# name -> (GGUF file, metadata overrides applied to it)
MODELS_SPEC = {
    "smollm2": ("smollm2-135m-instruct.Q4_1.gguf", {}),
    "gemma3": ("gemma-3-270m.Q4_K_M.gguf", {}),
    "gemma3-as-llama": ("gemma-3-270m.Q4_K_M.gguf", {"general.architecture": "llama"}),
    "smollm2-llama-bpe": ("smollm2-135m-instruct.Q4_1.gguf", {"tokenizer.ggml.pre": "llama-bpe"}),
}

WRITERS = {
    GGUFValueType.STRING: "add_string",
    GGUFValueType.BOOL: "add_bool",
    GGUFValueType.UINT32: "add_uint32",
    GGUFValueType.INT32: "add_int32",
    GGUFValueType.FLOAT32: "add_float32",
}


def write_variant(src: Path, dst: Path, overrides: dict) -> None:
    """A GGUF with only the tokenizer metadata of `src`, with `overrides` applied."""
    fields = GGUFReader(str(src)).fields
    arch = overrides.get("general.architecture") or bytes(fields["general.architecture"].parts[-1]).decode()
    writer = GGUFWriter(str(dst), arch)
    for key, field in fields.items():
        if not key.startswith("tokenizer."):
            continue
        if key in overrides:
            getattr(writer, WRITERS[GGUFValueType.STRING])(key, overrides[key])
            continue
        kind = field.types[0]
        if kind == GGUFValueType.ARRAY:
            if field.types[1] == GGUFValueType.STRING:
                writer.add_array(key, [bytes(field.parts[i]).decode("utf-8") for i in field.data])
            else:
                writer.add_array(key, [field.parts[i][0].item() for i in field.data])
        elif kind == GGUFValueType.STRING:
            writer.add_string(key, bytes(field.parts[field.data[0]]).decode("utf-8"))
        else:
            getattr(writer, WRITERS[kind])(key, field.parts[field.data[0]][0].item())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def load(name: str, folder: Path, gguf: str):
    tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf)
    backend = tok.backend_tokenizer
    if name == "smollm2":
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
            ]
        )
    return backend


def main() -> None:
    fixture = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (gguf, overrides) in MODELS_SPEC.items():
            folder = MODELS
            if overrides:
                folder = Path(tmp)
                write_variant(MODELS / gguf, folder / gguf, overrides)
            backend = load(name, folder, gguf)
            cases = []
            for text in TEXTS:
                ids = backend.encode(text, add_special_tokens=False).ids
                cases.append(
                    {
                        "text": text,
                        "ids": ids,
                        "ids_with_special": backend.encode(text, add_special_tokens=True).ids,
                        "decoded": backend.decode(ids, skip_special_tokens=False),
                    }
                )
            fixture[name] = {
                "gguf": gguf,
                "metadata_overrides": overrides,
                "vocab_size": backend.get_vocab_size(with_added_tokens=True),
                "encode": cases,
            }
            print(f"{name}: {len(cases)} cases")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(fixture, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
