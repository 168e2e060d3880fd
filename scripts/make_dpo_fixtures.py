#!/usr/bin/env python3
"""TRL DPOTrainer reference for lora-train's DPO parity tests (CPU, fp32, seeded, deterministic).

Writes tests/fixtures/dpo/:
  pairs.jsonl                   40 preference pairs (dpo-trl, conversational) made from tests/fixtures/chats.jsonl:
                                each chat's last assistant reply is chosen, another chat's reply rejected
  <model>/tokens.json           TRL's tokenization of every pair (prompt_ids, chosen_ids, rejected_ids)
  <model>/<run>.json            one DPO run: settings, and per optimizer step the loss, grad_norm (before
                                clipping), lr, TRL's logged metrics (rewards/*, logps/*) and the policy's and
                                reference's summed reply log-probs of every pair of the step

for <model> in tiny-llama, tiny-gemma3, and these runs (all from the PEFT fixture's init_adapter, r=4, alpha=8,
all 7 projections, lora_B != 0, so the policy differs from the base from step 1):

  sigmoid_base   loss_type sigmoid, reference = the base model (PEFT disable_adapter), 10 steps
  ipo_base       loss_type ipo, reference = base, 10 steps
  sigmoid_init   loss_type sigmoid, reference = the init adapter: given a PeftModel, DPOTrainer copies its adapter
                 as a frozen "ref" adapter and measures against it, 10 steps; step 1's loss is exactly log 2
(for the "base" runs the script deletes that "ref" adapter, so TRL's reference forward runs under
disable_adapter(), the base model, as it does for an adapter TRL creates from a peft_config)
and, tiny-llama only, 3 steps each from the same start with reference = base:
  hinge_base, robust_base (label_smoothing 0.1), rpo_base (loss_type ["sigmoid", "sft"], weights [1, 0.5]),
  sigmoid_norm_base (TRL's length-normalized sigmoid)

    /work/venv/bin/python scripts/make_dpo_fixtures.py

Needs torch, transformers, peft and trl (the versions it ran with are in each run file). It runs TRL's own code:
DPOTrainer._prepare_dataset tokenizes the pairs, its data collator pads them ([chosen; rejected] in one batch) and
DPOTrainer.compute_loss computes every loss and metric; the loop around it is transformers Trainer's, written out so
that the batches are chosen here: per step, grad_accum micro-batches of micro_batch_size pairs, in file order
(step s uses pairs 4s..4s+3); each micro-batch's loss divided by grad_accum before backward (DPOTrainer sets
loss_is_scaled_for_ga = False); torch.nn.utils.clip_grad_norm_; torch.optim.AdamW; get_linear_schedule_with_warmup
(step 1 runs with lr 0). The logged metrics of a step are the means over its micro-batches of TRL's per-micro-batch
values, as Trainer.log averages them (logging_steps = 1).
"""

from __future__ import annotations

import json
import sys
import tempfile
import warnings
from pathlib import Path

import torch

import peft
import transformers
import trl
from datasets import Dataset
from peft import PeftModel
from transformers import get_linear_schedule_with_warmup
from trl import DPOConfig, DPOTrainer

from make_fixtures import write_json
from make_peft_fixtures import FIXTURES, TINY, base_hashes, load_base, load_tokenizer, read_chats, setup_determinism

OUT = FIXTURES / "dpo"
HPARAMS = {
    "lr": 1e-3,
    "betas": [0.9, 0.999],
    "eps": 1e-8,
    "weight_decay": 0.01,
    "max_grad_norm": 1.0,
    "warmup_steps": 2,
    "grad_accum": 2,
    "micro_batch_size": 2,
}
RUNS = {
    "sigmoid_base": {"loss_type": ["sigmoid"], "reference": "base", "steps": 10},
    "ipo_base": {"loss_type": ["ipo"], "reference": "base", "steps": 10},
    "sigmoid_init": {"loss_type": ["sigmoid"], "reference": "init_adapter", "steps": 10},
    "hinge_base": {"loss_type": ["hinge"], "reference": "base", "steps": 3, "only": "tiny-llama"},
    "robust_base": {
        "loss_type": ["robust"],
        "label_smoothing": 0.1,
        "reference": "base",
        "steps": 3,
        "only": "tiny-llama",
    },
    "rpo_base": {
        "loss_type": ["sigmoid", "sft"],
        "loss_weights": [1.0, 0.5],
        "reference": "base",
        "steps": 3,
        "only": "tiny-llama",
    },
    "sigmoid_norm_base": {"loss_type": ["sigmoid_norm"], "reference": "base", "steps": 3, "only": "tiny-llama"},
}
BETA = 0.1
PAIRS = 40


def make_pairs():
    """Pair i: chat i % 9's prompt and reply (chosen) against chat (i + 1 + i // 9) % 9's reply (rejected)."""
    chats = read_chats()
    n = len(chats)
    pairs = []
    for i in range(PAIRS):
        c, r = i % n, (i + 1 + i // n) % n
        if r == c:
            r = (r + 1) % n
        k = max(j for j, m in enumerate(chats[c]) if m["role"] == "assistant")
        reply = max(j for j, m in enumerate(chats[r]) if m["role"] == "assistant")
        pairs.append(
            {
                "prompt": chats[c][:k],
                "chosen": [{"role": "assistant", "content": chats[c][k]["content"]}],
                "rejected": [{"role": "assistant", "content": chats[r][reply]["content"]}],
            }
        )
    return pairs


def trl_config(run, out_dir):
    kwargs = dict(
        output_dir=out_dir,
        beta=BETA,
        loss_type=run["loss_type"],
        per_device_train_batch_size=HPARAMS["micro_batch_size"],
        gradient_accumulation_steps=HPARAMS["grad_accum"],
        learning_rate=HPARAMS["lr"],
        max_length=None,
        disable_dropout=True,
        report_to=[],
        use_cpu=True,
        bf16=False,
        fp16=False,
        seed=20250612,
        dataset_num_proc=None,
        logging_steps=1,
    )
    if "loss_weights" in run:
        kwargs["loss_weights"] = run["loss_weights"]
    if "label_smoothing" in run:
        kwargs["label_smoothing"] = run["label_smoothing"]
    return DPOConfig(**kwargs)


def build(model_name, run, pairs, tmp):
    base = load_base(model_name, None)
    tok = load_tokenizer(model_name, None)
    init = FIXTURES / "peft-train" / model_name / "init_adapter"
    model = PeftModel.from_pretrained(base, str(init), is_trainable=True)
    trainer = DPOTrainer(
        model=model,
        args=trl_config(run, tmp),
        train_dataset=Dataset.from_list(pairs),
        processing_class=tok,
    )
    # Given a PeftModel, TRL copies its adapter as the frozen "ref" adapter and measures against it (the SFT
    # adapter as reference). Without "ref", its reference forward runs under disable_adapter(): the base model.
    peft_model = trainer.accelerator.unwrap_model(trainer.model)
    if "ref" not in peft_model.peft_config:
        raise RuntimeError("TRL made no frozen reference adapter")
    if run["reference"] == "base":
        peft_model.delete_adapter("ref")
        peft_model.set_adapter("default")
    return trainer, tok


def summed_logps(trainer, model, batch, reference):
    """The summed reply log-probs (chosen then rejected) of a collated batch, through TRL's own reference path."""
    with torch.no_grad():
        if reference:
            chosen, rejected = trainer.compute_ref_log_probs(model, batch)
            return torch.cat([chosen, rejected]).tolist()
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        kwargs = {k: v for k, v in batch.items() if k not in ("completion_mask",)}
        out = model(**kwargs, labels=labels, use_cache=False, fused_lm_head=True)
        per_token = out.log_probs[:, -(batch["completion_mask"].shape[1] - 1) :]
        return per_token.sum(dim=1).tolist()


def train(model_name, run_name, run, pairs):
    setup_determinism()
    with tempfile.TemporaryDirectory() as tmp:
        trainer, tok = build(model_name, run, pairs, tmp)
        model = trainer.model
        rows = trainer.train_dataset
        collate = trainer.data_collator
        params = [p for p in model.parameters() if p.requires_grad]
        n_lora = sum(1 for n, p in model.named_parameters() if p.requires_grad and "lora_" in n)
        if n_lora != len(params) or n_lora == 0:
            raise RuntimeError(f"{n_lora} LoRA tensors among {len(params)} trainable ones")
        opt = torch.optim.AdamW(
            params,
            lr=HPARAMS["lr"],
            betas=tuple(HPARAMS["betas"]),
            eps=HPARAMS["eps"],
            weight_decay=HPARAMS["weight_decay"],
            foreach=False,
            fused=False,
        )
        sched = get_linear_schedule_with_warmup(opt, HPARAMS["warmup_steps"], run["steps"])
        model.train()
        ga, mbs = HPARAMS["grad_accum"], HPARAMS["micro_batch_size"]
        steps = []
        for s in range(run["steps"]):
            opt.zero_grad(set_to_none=True)
            trainer._metrics["train"].clear()
            loss, micro = 0.0, []
            for m in range(ga):
                idx = list(range((s * ga + m) * mbs, (s * ga + m + 1) * mbs))
                batch = collate([rows[i] for i in idx])
                policy = summed_logps(trainer, model, batch, reference=False)
                reference = summed_logps(trainer, model, batch, reference=True)
                mb_loss = trainer.compute_loss(model, batch)
                (mb_loss / ga).backward()
                loss += float(mb_loss.detach()) / ga
                micro.append(
                    {
                        "pairs": idx,
                        "loss": float(mb_loss.detach()),
                        "policy_logps": policy,
                        "reference_logps": reference,
                    }
                )
            metrics = {
                k: sum(v) / len(v)
                for k, v in trainer._metrics["train"].items()
                if k.startswith(("rewards/", "logps/"))
            }
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, HPARAMS["max_grad_norm"], foreach=False))
            lr = opt.param_groups[0]["lr"]
            opt.step()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sched.step()
            steps.append(
                {"step": s + 1, "loss": loss, "grad_norm": grad_norm, "lr": lr, "metrics": metrics, "micro_batches": micro}
            )
            print(f"  {model_name} {run_name} step {s + 1}: loss {loss:.6f} grad_norm {grad_norm:.6f} lr {lr:.3g}")
        tokens = [
            {"prompt_ids": r["prompt_ids"], "chosen_ids": r["chosen_ids"], "rejected_ids": r["rejected_ids"]}
            for r in rows
        ]
        return steps, tokens, tok.pad_token_id


def versions():
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "trl": trl.__version__,
    }


def main():
    pairs = make_pairs()
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "pairs.jsonl", "w", encoding="utf-8") as f:
        for p in pairs:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    for model_name in TINY:
        tokens_written = False
        for run_name, run in RUNS.items():
            if run.get("only", model_name) != model_name:
                continue
            steps, tokens, pad_id = train(model_name, run_name, run, pairs)
            if not tokens_written:
                write_json(OUT / model_name / "tokens.json", {"pad_token_id": pad_id, "pairs": tokens})
                tokens_written = True
            settings = {
                "beta": BETA,
                "loss_type": run["loss_type"],
                "loss_weights": run.get("loss_weights"),
                "label_smoothing": run.get("label_smoothing", 0.0),
                "reference": run["reference"],
                "total_steps": run["steps"],
            }
            write_json(
                OUT / model_name / f"{run_name}.json",
                {
                    "generated_by": "scripts/make_dpo_fixtures.py",
                    "versions": versions(),
                    "base_files_sha256": base_hashes(model_name),
                    "init_adapter": f"tests/fixtures/peft-train/{model_name}/init_adapter",
                    "hyperparameters": HPARAMS,
                    "dpo": settings,
                    "steps": steps,
                },
            )


if __name__ == "__main__":
    sys.exit(main())
