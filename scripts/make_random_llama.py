"""Random-weight Llama models in Hugging Face layout for the GPU benchmark (scripts/bench-gpu.sh).

`make_random_llama.py --shape 1b|8b|tiny|small --out DIR` writes DIR/config.json, the weights as bf16
safetensors (one `model.safetensors`, or shards of at most 5 GB named and indexed as
transformers' `save_pretrained` names them), and the tokenizer of tests/fixtures/tiny-llama
(tokenizer.json, tokenizer_config.json with its ChatML template): no hub access is needed.

Shapes are those of the real configs: `1b` is Llama-3.2-1B (hidden 2048, intermediate 8192, 16
layers, 32 heads, 8 kv heads, head_dim 64, tied embeddings, llama3 rope scaling factor 32) and `8b`
is Llama-3.1-8B (hidden 4096, intermediate 14336, 32 layers, 32 heads, 8 kv heads, head_dim 128,
untied head, factor 8); both have vocab 128256, rope theta 500000 and rms eps 1e-5. `tiny`
(hidden 64, 2 layers, vocab 512) is for testing the scripts on CPU; `small` (hidden 256, 2 layers,
head_dim 64, vocab 512) is the smallest model whose attention the flash kernel takes, for the short
training runs of scripts/gpu-check.sh. The tokenizer only uses the
first ids of the vocabulary; a config vocab larger than the tokenizer's is what transformers and
lora-train allow, and the embedding and head keep their full benchmark size.

Every projection and embedding is normal(0, 0.02) from a generator seeded per tensor (`--seed` +
its index), norms are ones, as transformers initialises Llama. The tensors are drawn on the GPU when
there is one (a CUDA generator gives other numbers than a CPU one; the device is recorded in
random-llama.json). A folder whose random-llama.json matches the request is reused, so the 8B
weights (16 GB) are written once per machine; the folder is written under DIR.partial and renamed.
"""
import argparse
import json
import os
import shutil
import sys
import time

import torch
from safetensors.torch import save_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(REPO, "tests", "fixtures", "tiny-llama")
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
MAX_SHARD_BYTES = 5 * 10**9  # transformers' default max_shard_size "5GB"

SHAPES = {
    "1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
           "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
           "tie_word_embeddings": True, "vocab_size": 128256, "rope_factor": 32.0},
    "8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
           "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
           "tie_word_embeddings": False, "vocab_size": 128256, "rope_factor": 8.0},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
             "tie_word_embeddings": False, "vocab_size": 512, "rope_factor": 8.0},
    "small": {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
              "tie_word_embeddings": False, "vocab_size": 512, "rope_factor": 8.0},
}


def special_ids(tokenizer_dir):
    """bos/eos/pad ids of the tokenizer_config.json tokens, looked up in tokenizer.json."""
    with open(os.path.join(tokenizer_dir, "tokenizer.json"), encoding="utf-8") as f:
        tok = json.load(f)
    with open(os.path.join(tokenizer_dir, "tokenizer_config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    if not cfg.get("chat_template"):
        sys.exit(f"{tokenizer_dir}/tokenizer_config.json: no chat_template")
    vocab = tok.get("model", {}).get("vocab")
    ids = dict(vocab) if isinstance(vocab, dict) else {}
    ids.update({t["content"]: t["id"] for t in tok.get("added_tokens", [])})
    out = {}
    for key in ("bos_token", "eos_token", "pad_token"):
        name = cfg.get(key)
        if isinstance(name, dict):
            name = name.get("content")
        if name is not None:
            if name not in ids:
                sys.exit(f"{tokenizer_dir}/tokenizer_config.json: {key} {name!r} is not in tokenizer.json")
            out[key + "_id"] = ids[name]
    out["tokenizer_vocab"] = max(ids.values()) + 1
    return out


def hf_config(s, ids):
    rope = {"rope_type": "llama3", "factor": s["rope_factor"], "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": s["hidden_size"], "intermediate_size": s["intermediate_size"],
        "num_hidden_layers": s["num_hidden_layers"], "num_attention_heads": s["num_attention_heads"],
        "num_key_value_heads": s["num_key_value_heads"], "head_dim": s["head_dim"],
        "vocab_size": s["vocab_size"], "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
        "hidden_act": "silu", "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False,
        "initializer_range": 0.02, "pretraining_tp": 1, "use_cache": True,
        "tie_word_embeddings": s["tie_word_embeddings"], "dtype": "bfloat16",
        "rope_theta": 500000.0, "rope_scaling": rope,
        "rope_parameters": dict(rope, rope_theta=500000.0),
        "bos_token_id": ids.get("bos_token_id"), "eos_token_id": ids.get("eos_token_id"),
        "pad_token_id": ids.get("pad_token_id"),
    }


def tensor_specs(s):
    """(name, shape, init) in the order transformers writes a Llama; init is "normal" or "ones"."""
    h, i, hd = s["hidden_size"], s["intermediate_size"], s["head_dim"]
    q, kv = s["num_attention_heads"] * hd, s["num_key_value_heads"] * hd
    specs = [("model.embed_tokens.weight", (s["vocab_size"], h), "normal")]
    for n in range(s["num_hidden_layers"]):
        p = f"model.layers.{n}."
        specs += [(p + "input_layernorm.weight", (h,), "ones"),
                  (p + "self_attn.q_proj.weight", (q, h), "normal"),
                  (p + "self_attn.k_proj.weight", (kv, h), "normal"),
                  (p + "self_attn.v_proj.weight", (kv, h), "normal"),
                  (p + "self_attn.o_proj.weight", (h, q), "normal"),
                  (p + "post_attention_layernorm.weight", (h,), "ones"),
                  (p + "mlp.gate_proj.weight", (i, h), "normal"),
                  (p + "mlp.up_proj.weight", (i, h), "normal"),
                  (p + "mlp.down_proj.weight", (h, i), "normal")]
    specs.append(("model.norm.weight", (h,), "ones"))
    if not s["tie_word_embeddings"]:
        specs.append(("lm_head.weight", (s["vocab_size"], h), "normal"))
    return specs


def plan_shards(specs, max_bytes):
    """Groups tensors in order into shards as transformers does: a new shard when the next would overflow."""
    shards, cur, size = [], [], 0
    for spec in specs:
        nbytes = 2 * _numel(spec[1])
        if cur and size + nbytes > max_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append(spec)
        size += nbytes
    if cur:
        shards.append(cur)
    return shards


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def draw(spec, index, seed, device):
    name, shape, init = spec
    if init == "ones":
        return torch.ones(shape, dtype=torch.bfloat16)
    g = torch.Generator(device=device)
    g.manual_seed(seed + index)
    t = torch.randn(shape, generator=g, device=device, dtype=torch.float32).mul_(0.02)
    return t.to(torch.bfloat16).cpu()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", required=True, choices=sorted(SHAPES))
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="where the tensors are drawn: auto (cuda if available), cuda, cpu")
    p.add_argument("--vocab", type=int, default=None, help="override the shape's vocab_size")
    p.add_argument("--tie-embeddings", action=argparse.BooleanOptionalAction, default=None,
                   help="override the shape's tie_word_embeddings")
    p.add_argument("--max-shard-mb", type=float, default=MAX_SHARD_BYTES / 1e6,
                   help="largest shard in MB (10^6 bytes) [5000, transformers' 5GB]")
    p.add_argument("--tokenizer-dir", default=FIXTURE, help="tokenizer.json + tokenizer_config.json to copy")
    p.add_argument("--force", action="store_true", help="rewrite even when a matching folder exists")
    a = p.parse_args()

    device = a.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    shape = dict(SHAPES[a.shape])
    if a.vocab is not None:
        shape["vocab_size"] = a.vocab
    if a.tie_embeddings is not None:
        shape["tie_word_embeddings"] = a.tie_embeddings
    ids = special_ids(a.tokenizer_dir)
    if shape["vocab_size"] < ids["tokenizer_vocab"]:
        sys.exit(f"--vocab {shape['vocab_size']} is smaller than the tokenizer's {ids['tokenizer_vocab']} ids")
    want = {"shape": a.shape, "seed": a.seed, "dims": shape, "max_shard_bytes": int(a.max_shard_mb * 1e6)}

    marker = os.path.join(a.out, "random-llama.json")
    if not a.force and os.path.isfile(marker):
        with open(marker, encoding="utf-8") as f:
            have = json.load(f)
        if {k: have.get(k) for k in want} == want:
            print(f"{a.out}: reusing ({have.get('device')}-drawn, written in {have.get('write_s')} s)")
            return
    t0 = time.time()
    tmp = a.out.rstrip("/") + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
        json.dump(hf_config(shape, ids), f, indent=2)
    for name in TOKENIZER_FILES:
        src = os.path.join(a.tokenizer_dir, name)
        if os.path.isfile(src):
            shutil.copyfile(src, os.path.join(tmp, name))

    specs = tensor_specs(shape)
    shards = plan_shards(specs, want["max_shard_bytes"])
    index, weight_map, total = 0, {}, 0
    for k, shard in enumerate(shards):
        fname = "model.safetensors" if len(shards) == 1 else f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for spec in shard:
            tensors[spec[0]] = draw(spec, index, a.seed, device)
            weight_map[spec[0]] = fname
            total += tensors[spec[0]].numel() * 2
            index += 1
        save_file(tensors, os.path.join(tmp, fname), metadata={"format": "pt"})
        del tensors
        print(f"  {fname}: {len(shard)} tensors ({time.time() - t0:.1f} s)", file=sys.stderr, flush=True)
    if len(shards) > 1:
        with open(os.path.join(tmp, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    params = sum(_numel(s[1]) for s in specs)
    done = dict(want, device=device, parameters=params, bytes=total, write_s=round(time.time() - t0, 1))
    with open(os.path.join(tmp, "random-llama.json"), "w", encoding="utf-8") as f:
        json.dump(done, f, indent=2)
    shutil.rmtree(a.out, ignore_errors=True)
    os.replace(tmp, a.out)
    print(f"{a.out}: {a.shape}, {params:,} parameters, {total / 1e9:.2f} GB in {len(shards)} "
          f"file(s), drawn on {device}, {done['write_s']} s")


if __name__ == "__main__":
    main()
