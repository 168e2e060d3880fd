#!/usr/bin/env python3
"""Tiny GGUF files of the tiny Qwen2, Qwen3 and Gemma 2 fixtures, written as llama.cpp's convert_hf_to_gguf.py writes them.

    /work/venv/bin/python scripts/make_gguf_fixtures.py

Reads tests/fixtures/tiny-qwen2/ and tiny-qwen3/ (scripts/make_fixtures.py) and writes
tests/fixtures/gguf/tiny-qwen2.gguf and tiny-qwen3.gguf: f32 tensors (so a layout error, not rounding,
is what a test would see), tensor names from the gguf package's own TensorNameMap for MODEL_ARCH.QWEN2 /
QWEN3, metadata under `qwen2.` / `qwen3.`, and the byte-level BPE tokenizer (tokenizer.ggml.model = gpt2,
pre = qwen2) with the chat template. As in llama.cpp's Qwen2Model / Qwen3Model (which, unlike LlamaModel,
do not override modify_tensors), q/k are NOT permuted; transformers' GGUF reader agrees (it reverses the
permutation for `llama` only). The Qwen2 file is checked here by loading it back with transformers
(AutoModelForCausalLM.from_pretrained(gguf_file=...)) and comparing its logits with the HF folder's.
transformers' GGUF reader maps no head_dim for qwen3 (it takes its 128 default), so the Qwen3 file, whose
head_dim is 24, is only checked by the Rust tests (tests/it/model_parity.rs) against the HF folder.

tiny-gemma2.gguf follows Gemma2Model: norm weights stored as `w + 1`, no `lm_head`, metadata under `gemma2.`
(key/value length, both softcaps, the sliding window; no rope base and no query_pre_attn_scalar, which
llama.cpp takes as 10000 and, below 27B, head_dim), and the SentencePiece vocabulary as
_set_vocab_sentencepiece writes it (tokenizer.ggml.model = llama, scores, token types, no merges). The fixture's
query_pre_attn_scalar (24) is not its head_dim (16), so the check here, like the Rust test, compares with the
HF folder's model at query_pre_attn_scalar = head_dim; transformers' GGUF reader maps neither softcap, so those
are passed to it too.

Made with gguf 0.19.0, transformers 5.24.0, torch 2.15.0 (CPU).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
OUT = FIXTURES / "gguf"

ARCHS = {
    "tiny-qwen2": gguf.MODEL_ARCH.QWEN2,
    "tiny-qwen3": gguf.MODEL_ARCH.QWEN3,
    "tiny-gemma2": gguf.MODEL_ARCH.GEMMA2,
}


def write(name: str, arch: gguf.MODEL_ARCH) -> Path:
    src = FIXTURES / name
    cfg = json.loads((src / "config.json").read_text(encoding="utf-8"))
    tok_cfg = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))
    tok_json = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    state = load_file(str(src / "model.safetensors"))
    arch_name = gguf.MODEL_ARCH_NAMES[arch]
    n_layers = cfg["num_hidden_layers"]
    names = gguf.get_tensor_name_map(arch, n_layers)

    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.gguf"
    w = gguf.GGUFWriter(str(path), arch_name)
    w.add_name(name)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(n_layers)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    gemma = arch == gguf.MODEL_ARCH.GEMMA2
    if not gemma:
        w.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
    if "head_dim" in cfg:
        # convert_hf_to_gguf.py's TextModel.set_gguf_parameters writes key/value lengths from head_dim.
        w.add_key_length(cfg["head_dim"])
        w.add_value_length(cfg["head_dim"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    if gemma:
        w.add_attn_logit_softcapping(cfg["attn_logit_softcapping"])
        w.add_final_logit_softcapping(cfg["final_logit_softcapping"])
        w.add_sliding_window(cfg["sliding_window"])
        write_sentencepiece_vocab(w, cfg, tok_cfg, tok_json)
    else:
        write_gpt2_vocab(w, cfg, tok_cfg, tok_json)

    for hf_name in sorted(state):
        t = state[hf_name].to(torch.float32)
        if gemma and hf_name == "lm_head.weight":
            continue
        if gemma and hf_name.endswith("norm.weight"):
            t = t + 1
        g = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if g is None:
            raise RuntimeError(f"{name}: no GGUF name for {hf_name}")
        w.add_tensor(g, np.ascontiguousarray(t.numpy()))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size} bytes)")
    return path


def write_gpt2_vocab(w, cfg, tok_cfg, tok_json):
    """The byte-level BPE vocabulary, as convert_hf_to_gguf.py's _set_vocab_gpt2 writes it."""
    vocab = tok_json["model"]["vocab"]
    added = {t["content"]: t for t in tok_json["added_tokens"]}
    size = cfg["vocab_size"]
    tokens, types = [], []
    by_id = {i: t for t, i in vocab.items()}
    for t in added:
        by_id[added[t]["id"]] = t
    for i in range(size):
        t = by_id.get(i, f"[PAD{i}]")
        tokens.append(t)
        if t in added:
            types.append(gguf.TokenType.CONTROL if added[t]["special"] else gguf.TokenType.USER_DEFINED)
        elif i in by_id:
            types.append(gguf.TokenType.NORMAL)
        else:
            types.append(gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok_json["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(vocab.get(tok_cfg["eos_token"], added.get(tok_cfg["eos_token"], {}).get("id")))
    w.add_pad_token_id(added[tok_cfg["pad_token"]]["id"])
    w.add_add_bos_token(False)
    w.add_chat_template(tok_cfg["chat_template"])


def write_sentencepiece_vocab(w, cfg, tok_cfg, tok_json):
    """A SentencePiece vocabulary as _set_vocab_sentencepiece writes Gemma's: every token with a score and
    a type (byte pieces BYTE, special ones CONTROL), no merges. The tiny fixture's merges follow its ids, as
    the Rust reader assumes for Gemma (scores = -id here)."""
    vocab = tok_json["model"]["vocab"]
    added = {t["id"]: t for t in tok_json["added_tokens"]}
    by_id = {i: t for t, i in vocab.items()}
    tokens, scores, types = [], [], []
    for i in range(cfg["vocab_size"]):
        t = added[i]["content"] if i in added else by_id.get(i, f"<unused{i}>")
        tokens.append(t)
        scores.append(-float(i))
        if i in added:
            types.append(gguf.TokenType.CONTROL if added[i]["special"] else gguf.TokenType.USER_DEFINED)
        elif t.startswith("<0x") and t.endswith(">") and len(t) == 6:
            types.append(gguf.TokenType.BYTE)
        elif i in by_id:
            types.append(gguf.TokenType.NORMAL)
        else:
            types.append(gguf.TokenType.UNUSED)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    tid = {t: i for i, t in enumerate(tokens)}
    w.add_bos_token_id(tid[tok_cfg["bos_token"]])
    w.add_eos_token_id(tid[tok_cfg["eos_token"]])
    w.add_unk_token_id(tid[tok_cfg["unk_token"]])
    w.add_pad_token_id(tid[tok_cfg["pad_token"]])
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(False)
    w.add_chat_template(tok_cfg["chat_template"])


@torch.no_grad()
def check_with_transformers(name: str, path: Path):
    from transformers import AutoModelForCausalLM

    # What llama.cpp infers or transformers' GGUF reader leaves at its defaults (see above).
    same = {}
    if name == "tiny-gemma2":
        cfg = json.loads((FIXTURES / name / "config.json").read_text(encoding="utf-8"))
        same = {k: cfg[k] for k in ("attn_logit_softcapping", "final_logit_softcapping")}
        same["query_pre_attn_scalar"] = cfg["head_dim"]
    hf = AutoModelForCausalLM.from_pretrained(str(FIXTURES / name), dtype=torch.float32, **same).eval()
    gg = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, **same
    ).eval()
    ids = torch.arange(3, 40).unsqueeze(0)
    d = float((hf(input_ids=ids).logits - gg(input_ids=ids).logits).abs().max())
    if d > 1e-5:
        raise RuntimeError(f"{path}: transformers reads logits {d} away from the HF folder's")
    print(f"  {name}: transformers' GGUF reader gives the HF folder's logits (max diff {d:.1e})")


def main():
    torch.set_num_threads(2)
    for name, arch in ARCHS.items():
        path = write(name, arch)
        if name != "tiny-qwen3":
            check_with_transformers(name, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
