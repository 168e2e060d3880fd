"""PEFT peer row of scripts/bench_memory.sh: f32 LoRA training steps with PyTorch + transformers
+ PEFT on CPU, on the token ids and loss targets lora-train uses (from `make_bench_data.py
tokens`), fitted to --seq-len as lora-train fits them (cut from the left, the last assistant
turn kept whole, examples where it does not fit dropped), in file order, --batch-size per step.

The model is the GGUF file dequantized by transformers to float32, with the default attention
implementation (sdpa; the one used is printed). LoRA r=16, alpha=32, dropout 0 on all seven
projections unless --r, --alpha, --dropout and --targets say otherwise (`lora-train bench
--compare peft` passes the job's, and --checkpointing with the job's); AdamW lr 1e-4, no weight decay, gradients clipped to norm 1 (lora-train's job
defaults); loss is transformers' causal-LM loss with labels -100 off the targets, the mean over
the step's targets, as lora-train's. Prints one JSON line; step 1 is warm-up and not timed.
"""
import argparse
import json
import os
import resource
import sys
import time

import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def peak_rss_mib():
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def fit(row, max_len):
    """lora-train's fit_to_length: None when the last target run does not fit."""
    ids, targets = row["input_ids"], row["targets"]
    if len(ids) <= max_len:
        return ids, targets
    last = max(i for i, t in enumerate(targets) if t)
    start = last
    while start > 0 and targets[start - 1]:
        start -= 1
    cut = len(ids) - max_len
    if start < cut + 1:
        return None
    targets = targets[cut:]
    targets[0] = False
    return ids[cut:], targets


def batch(examples, pad_id):
    t = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), t), dtype=torch.long)
    labels = torch.full((len(examples), t), -100, dtype=torch.long)
    for i, (row, targets) in enumerate(examples):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
        labels[i, :len(row)] = torch.where(torch.tensor(targets), torch.tensor(row), -100)
    padded = bool((mask == 0).any())
    return ids, (mask if padded else None), labels, int(mask.sum())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a .gguf file")
    p.add_argument("--tokens", required=True, help="JSONL of {input_ids, targets} (make_bench_data.py tokens)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--r", type=int, default=16)
    p.add_argument("--alpha", type=float, default=32.0)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--targets", default=",".join(TARGETS), help="comma-separated module names")
    p.add_argument("--checkpointing", action="store_true", help="gradient checkpointing (non-reentrant)")
    a = p.parse_args()

    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    with open(a.tokens, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    examples = [e for e in (fit(r, a.seq_len) for r in rows) if e is not None]
    if len(examples) < a.batch_size:
        sys.exit(f"{a.tokens}: {len(examples)} examples fit in {a.seq_len} tokens, fewer than a batch")
    n_batches = len(examples) // a.batch_size

    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(os.path.abspath(a.model)),
                                                 gguf_file=os.path.basename(a.model), dtype=torch.float32)
    model.config.use_cache = False
    load_peak = peak_rss_mib()
    if a.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=a.r, lora_alpha=a.alpha, lora_dropout=a.dropout,
                                             target_modules=a.targets.split(",")))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0

    times, tokens, losses = [], [], []
    for step in range(a.steps):
        k = step % n_batches
        ids, mask, labels, n_tok = batch(examples[k * a.batch_size:(k + 1) * a.batch_size], pad_id)
        t0 = time.perf_counter()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        tokens.append(n_tok)
        losses.append(round(loss.item(), 4))
        print(f"step {step + 1}: loss {losses[-1]} {times[-1]:.2f} s", file=sys.stderr, flush=True)

    timed = slice(1, None) if a.steps > 1 else slice(0, None)
    secs, toks = sum(times[timed]), sum(tokens[timed])
    print(json.dumps({
        "impl": "peft", "model": os.path.basename(a.model), "steps": a.steps, "lora_r": a.r, "gradient_checkpointing": a.checkpointing,
        "timed_steps": len(times[timed]), "tokens_per_step": tokens[0],
        "tokens_per_second": round(toks / secs, 1), "s_per_step": round(secs / len(times[timed]), 3),
        "losses": losses, "peak_rss_mib": peak_rss_mib(), "load_peak_rss_mib": load_peak,
        "attn_implementation": model.config._attn_implementation, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
    }))


if __name__ == "__main__":
    main()
