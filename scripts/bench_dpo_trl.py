"""TRL + PEFT twin of `lora-train bench --compare peft` for a DPO job: DPO training steps with
TRL's DPOTrainer (PyTorch + transformers + PEFT, f32, CPU) on the preference pairs lora-train
tokenized, in the order its steps take them.

--pairs is JSONL of {prompt_ids, chosen_ids, rejected_ids} (the replies without the prompt), as
lora-train writes it: the pairs of its warm-up and timed steps first, --batch-size per step, then
the rest of the training pairs, so a precomputed reference covers the same pairs on both sides.
TRL's own tokenization is skipped (the ids are lora-train's) and its sampler reads the file in
order; everything else is TRL's: its collator ([chosen; rejected] in one batch), its loss and
reference (a fresh PEFT adapter, the reference under disable_adapter(): the base model), its
precompute_ref_log_probs, the Trainer's loop with AdamW and clipping at 1.

The model is the GGUF file dequantized by transformers to float32, default attention (sdpa).
Step time is the Trainer's step (callbacks on_step_begin to on_step_end); the first --warmup steps
are not timed. Real tokens count both sequences of every pair. Prints one JSON line.
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
import trl
from datasets import Dataset
from peft import LoraConfig
from torch.utils.data import SequentialSampler
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import DPOConfig, DPOTrainer


def peak_rss_mib():
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


class InOrder(DPOTrainer):
    """DPOTrainer on already tokenized pairs, read in file order."""

    precompute_seconds = None

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return dataset

    def _get_train_sampler(self, *args, **kwargs):
        return SequentialSampler(self.train_dataset)

    def _precompute_ref_logps(self, dataset, name, batch_size):
        start = time.perf_counter()
        out = super()._precompute_ref_logps(dataset, name, batch_size)
        InOrder.precompute_seconds = time.perf_counter() - start
        return out


class StepClock(TrainerCallback):
    def __init__(self):
        self.times, self.start = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self.start)
        print(f"step {len(self.times)}: {self.times[-1]:.2f} s", file=sys.stderr, flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a .gguf file")
    p.add_argument("--pairs", required=True, help="JSONL of {prompt_ids, chosen_ids, rejected_ids}")
    p.add_argument("--steps", type=int, required=True, help="optimizer steps, warm-up included")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=4, help="pairs per step")
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--loss", default="sigmoid", help="TRL loss_type: sigmoid, ipo, hinge, robust, sigmoid_norm")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--sft-weight", type=float, default=0.0, help="RPO: loss_type [loss, sft], weights [1, w]")
    p.add_argument("--precompute-reference", action="store_true")
    a = p.parse_args()

    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    with open(a.pairs, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if len(rows) < a.steps * a.batch_size:
        sys.exit(f"{a.pairs}: {len(rows)} pairs, fewer than {a.steps} steps of {a.batch_size}")
    step_rows = rows[: a.steps * a.batch_size]
    real_tokens = [
        sum(2 * len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"])
            for r in step_rows[s * a.batch_size:(s + 1) * a.batch_size])
        for s in range(a.steps)
    ]

    folder, name = os.path.dirname(os.path.abspath(a.model)), os.path.basename(a.model)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.config.use_cache = False
    # The weights are dequantized to f32: nothing is quantized, but transformers still marks the model
    # as GGUF-quantized, which Trainer refuses to train.
    model.hf_quantizer, model.is_quantized = None, False
    load_peak = peak_rss_mib()

    loss_type, weights = [a.loss], None
    if a.sft_weight > 0:
        loss_type, weights = [a.loss, "sft"], [1.0, a.sft_weight]
    args = DPOConfig(
        output_dir=os.path.join(os.environ.get("TMPDIR", "/tmp"), "bench-dpo-trl"),
        beta=a.beta,
        loss_type=loss_type,
        loss_weights=weights,
        label_smoothing=a.label_smoothing,
        per_device_train_batch_size=a.batch_size,
        gradient_accumulation_steps=1,
        learning_rate=a.lr,
        weight_decay=0.0,
        max_grad_norm=1.0,
        lr_scheduler_type="constant",
        max_steps=a.steps,
        max_length=None,
        precompute_ref_log_probs=a.precompute_reference,
        precompute_ref_batch_size=a.batch_size,
        disable_dropout=True,
        report_to=[],
        use_cpu=True,
        bf16=False,
        fp16=False,
        save_strategy="no",
        logging_steps=10**9,
        dataset_num_proc=None,
        dataloader_num_workers=0,
        seed=0,
    )
    lora = LoraConfig(r=a.r, lora_alpha=a.alpha, lora_dropout=0.0, target_modules=a.targets.split(","),
                      task_type="CAUSAL_LM")
    clock = StepClock()
    trainer = InOrder(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                      peft_config=lora, callbacks=[clock])
    trainer.train()

    timed = slice(a.warmup, None) if a.steps > a.warmup else slice(0, None)
    secs, toks = sum(clock.times[timed]), sum(real_tokens[timed])
    n = len(clock.times[timed])
    print(json.dumps({
        "impl": "trl", "model": name, "steps": a.steps, "timed_steps": n,
        "pairs_per_step": a.batch_size, "tokens_per_step": round(toks / n, 1),
        "tokens_per_second": round(toks / secs, 1), "s_per_step": round(secs / n, 3),
        "steps_per_second": round(n / secs, 4),
        "reference": "precomputed" if a.precompute_reference else "live (adapter off)",
        "reference_precompute_s": None if InOrder.precompute_seconds is None else round(InOrder.precompute_seconds, 2),
        "reference_pairs": len(rows),
        "peak_rss_mib": peak_rss_mib(), "load_peak_rss_mib": load_peak,
        "attn_implementation": model.config._attn_implementation, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        "trl": trl.__version__,
    }))


if __name__ == "__main__":
    main()
