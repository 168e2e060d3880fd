"""PEFT side of scripts/bench_train_cpu.sh: time LoRA training steps of SmolLM2-135M
(transformers, fp32, CPU, eager attention) with the same adapter settings as
configs/quickstart.toml (r=8, alpha=16, q/k/v/o) on the batches lora-train used."""
import json, resource, sys, time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

batches_path, models_dir = sys.argv[1], sys.argv[2]
steps = json.load(open(batches_path))
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(models_dir, gguf_file="smollm2-135m-instruct.Q4_1.gguf",
                                             torch_dtype=torch.float32, attn_implementation="eager")
model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
pad = 2

def step(micro):
    total = sum(sum(e["targets"]) for mb in micro for e in mb)
    tokens = 0
    for mb in micro:
        t = max(len(e["input_ids"]) for e in mb)
        ids = torch.full((len(mb), t), pad, dtype=torch.long)
        mask = torch.zeros((len(mb), t), dtype=torch.long)
        labels = torch.full((len(mb), t), -100, dtype=torch.long)
        for i, e in enumerate(mb):
            n = len(e["input_ids"])
            ids[i, :n] = torch.tensor(e["input_ids"])
            mask[i, :n] = 1
            tokens += n
            for j, is_t in enumerate(e["targets"]):
                if is_t:
                    labels[i, j] = e["input_ids"][j]
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum")
        (loss / total).backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    opt.step()
    opt.zero_grad()
    return tokens

step(steps[0])
start = time.time()
tokens = sum(step(s) for s in steps[1:])
secs = time.time() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"impl": "peft", "steps": len(steps) - 1, "tokens": tokens, "seconds": round(secs, 3),
                  "tokens_per_second": round(tokens / secs, 1), "peak_rss_mb": round(peak),
                  "torch": torch.__version__, "threads": torch.get_num_threads()}))
