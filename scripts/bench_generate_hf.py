"""transformers side of scripts/bench_generate.sh: greedy batched `generate` of SmolLM2-135M
(the GGUF's weights in f32, through gguf_file=, as bench_train_cpu.py loads them) on the
prompt token ids lora-train used, left-padded, one prompt per call against a batch per call.
A row's new tokens are counted up to and including its first stop id, as lora-train counts."""
import json, sys, time

import torch
from transformers import AutoModelForCausalLM

spec, models_dir, batch = json.load(open(sys.argv[1])), sys.argv[2], int(sys.argv[3])
prompts, stop_ids, max_new = spec["prompts"], spec["stop_ids"], spec["max_new_tokens"]
model = AutoModelForCausalLM.from_pretrained(models_dir, gguf_file="smollm2-135m-instruct.Q4_1.gguf",
                                             torch_dtype=torch.float32)
model.eval()
pad = stop_ids[0]


def run(chunk):
    t = max(len(p) for p in chunk)
    ids = torch.full((len(chunk), t), pad, dtype=torch.long)
    mask = torch.zeros((len(chunk), t), dtype=torch.long)
    for i, p in enumerate(chunk):
        ids[i, t - len(p):] = torch.tensor(p)
        mask[i, t - len(p):] = 1
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                             eos_token_id=stop_ids, pad_token_id=pad)
    rows = []
    for row in out[:, t:].tolist():
        new = []
        for tok in row:
            new.append(tok)
            if tok in stop_ids:
                break
        rows.append(new)
    return rows


run(prompts[:1])
for size in [1, batch]:
    start = time.time()
    outs = [r for i in range(0, len(prompts), size) for r in run(prompts[i:i + size])]
    secs = time.time() - start
    tokens = sum(len(r) for r in outs)
    print(json.dumps({"impl": "transformers", "batch": size, "prompts": len(prompts), "new_tokens": tokens,
                      "seconds": round(secs, 3), "tokens_per_second": round(tokens / secs, 1),
                      "outputs": outs, "torch": torch.__version__, "threads": torch.get_num_threads()}))
