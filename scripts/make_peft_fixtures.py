#!/usr/bin/env python3
"""PyTorch + PEFT reference for lora-train's training parity tests (CPU, fp32, seeded, deterministic).

Fixture mode (default) writes, for tiny-llama, tiny-gemma3, tiny-qwen2, tiny-qwen3, tiny-mistral, tiny-gemma2 and
tiny-gemma3-mm, tests/fixtures/peft-train/<model>/:
  init_adapter/     PEFT LoRA adapter (save_pretrained) the run starts from: r=4, alpha=8, dropout 0, all 7
                    projections; lora_A = PEFT's kaiming-uniform default, lora_B = seeded N(0,1)*0.02 (not 0).
                    tiny-gemma3-mm (tiny-gemma3's text weights in a Gemma3ForConditionalGeneration, loaded as
                    that class) gets them on its language model only: target_modules is the regex
                    model\.language_model\.layers\.\d+\.(self_attn|mlp)\.(down_proj|...|v_proj), so the vision
                    tower's projections get none, and the tensors are named base_model.model.model.language_model.*
  batches.json      10 optimizer steps x grad_accum 2 micro-batches x micro_batch_size 2 examples
  expected.json     hyperparameters and, per step, loss / target_tokens / grad_norm (before clipping) / lr
  final_adapter/    the adapter after the 10th AdamW step
  score_init.json,  --roundtrip scores of init_adapter/ and final_adapter/ (masked CE over chats.jsonl)
  score_final.json

    /work/pyenv/bin/python scripts/make_peft_fixtures.py \
        [--only tiny-llama|tiny-gemma3|tiny-qwen2|tiny-qwen3|tiny-mistral|tiny-gemma2|tiny-gemma3-mm]

(about 2-5 minutes a model on 2 cores; byte-identical output on every run). The fixtures are only valid for the tiny
base models and chats.jsonl that scripts/make_fixtures.py wrote: expected.json records the base files' sha256
(base_files_sha256); rerun this script whenever those change. expected.json also has "sensitivity": how far
the per-step losses and final weights move under typical training-loop mistakes, and the f32 noise floor.

Round-trip mode scores an adapter (e.g. one exported by the Rust code) on tests/fixtures/chats.jsonl:

    /work/pyenv/bin/python scripts/make_peft_fixtures.py --roundtrip ADAPTER_DIR \
        --model {tiny-llama,tiny-gemma3,tiny-qwen2,tiny-qwen3,tiny-mistral,tiny-gemma2,tiny-gemma3-mm,smollm2,gemma3} --out FILE [--models-dir models]

It loads the base in fp32 (HF folder for the tiny models; models/<gguf> for the real ones, dequantized by
transformers), applies ADAPTER_DIR with PeftModel.from_pretrained, checks that every tensor of the adapter
file landed in the model (an unknown key is an error, not a warning), and writes
{"mean_loss", "target_tokens", "examples", "per_example": [{"index", "loss", "target_tokens"}], ...}.

Targets (TRL completion-only, "last_assistant"): k = index of the last assistant message; sequence =
ids(template(messages[:k+1])); prompt = ids(template(messages[:k], add_generation_prompt=True)); targets are
positions len(prompt)..len(sequence)-1 (rendered text tokenized with add_special_tokens=False). Loss at target
t = -log softmax(logits[t-1])[ids[t]]. Same definition as scripts/make_fixtures.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import random
import shutil
import sys
import time
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file

import peft
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from tokenizers import pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, get_linear_schedule_with_warmup

# The fixtures' JSON layout (this folder is on sys.path when run as a script).
from make_fixtures import compact_json, write_json

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
OUT_ROOT = FIXTURES / "peft-train"
CHATS_PATH = FIXTURES / "chats.jsonl"
GEMMA_TEMPLATE_PATH = ROOT / "src" / "data" / "templates" / "gemma.jinja"

SEED = 20250612
TINY = ["tiny-llama", "tiny-gemma3", "tiny-qwen2", "tiny-qwen3", "tiny-mistral", "tiny-gemma2"]
# tiny-gemma3's text weights in a Gemma3ForConditionalGeneration, loaded as that class so PEFT sees the vision
# tower's projections beside the language model's; LoRA goes on the language model only (LANGUAGE_MODEL_TARGETS).
CONDITIONAL_GENERATION = ["tiny-gemma3-mm"]
TRAINED = TINY + CONDITIONAL_GENERATION
REAL_GGUF = {"smollm2": "smollm2-135m-instruct.Q4_1.gguf", "gemma3": "gemma-3-270m.Q4_K_M.gguf"}

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# PEFT re.fullmatch-es a string target_modules against module names; this is the regex lora-train exports for a
# conditional-generation checkpoint (src/lora/peft.rs: language_model_targets, names sorted).
LANGUAGE_MODEL_TARGETS = r"model\.language_model\.layers\.\d+\.(self_attn|mlp)\.(" + "|".join(sorted(TARGET_MODULES)) + ")"
LORA = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "bias": "none", "use_rslora": False}
LORA_B_INIT_STD = 0.02

HPARAMS = {
    "lr": 1e-3,
    "betas": [0.9, 0.999],
    "eps": 1e-8,
    "weight_decay": 0.01,
    "max_grad_norm": 1.0,
    "scheduler": "linear",
    "warmup_steps": 2,
    "total_steps": 10,
    "min_lr_ratio": 0.0,
    "grad_accum": 2,
    "micro_batch_size": 2,
}

# The real SmolLM2 tokenizer.json splits every digit off before the GPT-2 byte-level regex; transformers'
# GGUF converter drops that (see scripts/make_fixtures.py, which applies the same patch).
SMOLLM2_PRE_TOKENIZER = pre_tokenizers.Sequence(
    [
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ]
)

BATCHES_FORMAT = (
    "steps[s] is optimizer step s+1: a list of grad_accum micro-batches; each micro-batch is a list of "
    "micro_batch_size examples, stored UNPADDED. To run a micro-batch, right-pad every example to the longest "
    "one in that micro-batch with pad_token_id (labels -100, attention_mask 0 on padding, 1 elsewhere; "
    "position ids 0..len-1). labels are HF-style and unshifted: -100 where not a target, input_ids[t] at "
    "target positions; the loss at target t uses logits[t-1]. order[s][m][e] is the index (0-based line) "
    "in tests/fixtures/chats.jsonl of example e of micro-batch m of step s. Running each example alone "
    "without padding gives the same losses (see expected.json sensitivity.unpadded). In Gemma 3 sliding-window "
    "layers a padding query more than sliding_window-1 past the last real token sees only masked keys: "
    "transformers' additive mask is finfo(f32).min, so those rows stay finite; a -inf mask makes them NaN, "
    "and 0*NaN in the next layer's attention@V then spreads NaN into the real positions."
)

EXPECTED_FORMAT = (
    "steps[s] is optimizer step s+1. loss = (sum of per-token CE over every target token of all the step's "
    "micro-batches) / target_tokens (all targets of the step, not a mean of micro-batch means); "
    "micro_batches[m].loss_sum / target_tokens are the per-micro-batch parts. grad_norm = global L2 norm of "
    "all LoRA grads before clipping. lr = learning rate the optimizer step used. Loop per step: zero grads; "
    "for each micro-batch backward(sum_CE / step_target_tokens); torch.nn.utils.clip_grad_norm_(lora, "
    "max_grad_norm) (scales grads by max_norm/(norm+1e-6) when that is < 1); torch.optim.AdamW.step() "
    "(decoupled decay p -= lr*wd*p, then Adam with bias correction, denom = sqrt(v)/sqrt(1-b2^t) + eps); "
    "scheduler.step() (transformers get_linear_schedule_with_warmup: lr(i) = lr*i/warmup for i < warmup, "
    "else lr*max(0, (total-i)/(total-warmup)), i = 0-based step). Step 1 therefore runs with lr = 0: the "
    "weights do not move, but Adam's moments and step count do advance."
)


# ----------------------------------------------------------------------------- shared helpers


def setup_determinism():
    torch.manual_seed(SEED)
    random.seed(SEED)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()


def read_chats():
    chats = []
    for line in CHATS_PATH.read_text(encoding="utf-8").splitlines():
        if line.strip():
            chats.append(json.loads(line)["messages"])
    if not chats:
        raise RuntimeError(f"{CHATS_PATH} has no conversations")
    return chats


def ids_of(tok, messages, gen=False):
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
    return tok.encode(text, add_special_tokens=False)


def last_assistant_example(tok, messages):
    """(input_ids, target_positions, prompt_was_prefix) for the last assistant turn of one conversation."""
    idx = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not idx:
        raise ValueError("conversation has no assistant message")
    k = idx[-1]
    seq = ids_of(tok, messages[: k + 1])
    prompt = ids_of(tok, messages[:k], gen=True)
    start = len(prompt)
    is_prefix = seq[:start] == prompt
    if not is_prefix:
        # Same fallback as scripts/make_fixtures.py: targets start after the longest common prefix.
        start = 0
        while start < min(len(seq), len(prompt)) and seq[start] == prompt[start]:
            start += 1
    if start < 1 or start >= len(seq):
        raise RuntimeError(f"empty target span or target at position 0 for {messages!r}")
    return seq, list(range(start, len(seq))), is_prefix


def load_tokenizer(model, models_dir: Path):
    if model in TRAINED:
        return AutoTokenizer.from_pretrained(str(FIXTURES / model))
    tok = AutoTokenizer.from_pretrained(str(models_dir), gguf_file=REAL_GGUF[model])
    if model == "smollm2":
        tok.backend_tokenizer.pre_tokenizer = SMOLLM2_PRE_TOKENIZER
        if tok.encode("2024", add_special_tokens=False) != [tok.convert_tokens_to_ids(c) for c in "2024"]:
            raise RuntimeError("SmolLM2 pre-tokenizer patch did not take effect")
    elif not tok.chat_template:
        # The Gemma 3 270M base GGUF carries no chat template; the official one is in the repo.
        tok.chat_template = GEMMA_TEMPLATE_PATH.read_text(encoding="utf-8")
    return tok


def load_base(model, models_dir: Path):
    if model in CONDITIONAL_GENERATION:
        from transformers import Gemma3ForConditionalGeneration

        m = Gemma3ForConditionalGeneration.from_pretrained(
            str(FIXTURES / model), dtype=torch.float32, attn_implementation="eager"
        )
    elif model in TINY:
        m = AutoModelForCausalLM.from_pretrained(
            str(FIXTURES / model), dtype=torch.float32, attn_implementation="eager"
        )
    else:
        m = AutoModelForCausalLM.from_pretrained(
            str(models_dir), gguf_file=REAL_GGUF[model], dtype=torch.float32, attn_implementation="eager"
        )
    bad = sorted({str(p.dtype) for p in m.parameters()} - {"torch.float32"})
    if bad:
        raise RuntimeError(f"{model}: base weights are {bad}, not float32")
    return m


def base_hashes(name):
    """The fixture is only valid for these exact base files (scripts/make_fixtures.py owns them)."""
    files = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    return {f: hashlib.sha256((FIXTURES / name / f).read_bytes()).hexdigest() for f in files}


def versions():
    import safetensors
    import tokenizers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
    }


# ----------------------------------------------------------------------------- scoring (round trip)


def lora_keys_of_file(adapter_dir: Path):
    path = adapter_dir / "adapter_model.safetensors"
    if not path.exists():
        raise RuntimeError(f"{path} does not exist")
    return load_file(str(path))


def check_adapter_applied(peft_model, adapter_dir: Path):
    """Every tensor in the adapter file must equal a LoRA parameter of the model, and vice versa."""
    from peft.utils import get_peft_model_state_dict

    saved = lora_keys_of_file(adapter_dir)
    in_model = get_peft_model_state_dict(peft_model)
    unknown = sorted(set(saved) - set(in_model))
    missing = sorted(set(in_model) - set(saved))
    if unknown or missing:
        raise RuntimeError(
            f"{adapter_dir}: adapter keys do not match the model: unknown {unknown[:5]} ({len(unknown)}), "
            f"missing {missing[:5]} ({len(missing)})"
        )
    for k, v in saved.items():
        if v.shape != in_model[k].shape or not torch.equal(v.float(), in_model[k].float()):
            raise RuntimeError(f"{adapter_dir}: tensor {k} was not loaded as saved")
    return len(saved)


@torch.no_grad()
def score_model(model, tok, chats):
    per_example, total, count, mismatches = [], 0.0, 0, 0
    for i, messages in enumerate(chats):
        seq, targets, is_prefix = last_assistant_example(tok, messages)
        mismatches += 0 if is_prefix else 1
        logits = model(input_ids=torch.tensor([seq], dtype=torch.long)).logits[0].float()
        logp = torch.log_softmax(logits, dim=-1)
        t = torch.tensor(targets)
        nll = -logp[t - 1, torch.tensor(seq)[t]].double()
        s = float(nll.sum())
        per_example.append({"index": i, "loss": s / len(targets), "target_tokens": len(targets)})
        total += s
        count += len(targets)
    return {
        "mean_loss": total / count,
        "target_tokens": count,
        "examples": len(chats),
        "per_example": per_example,
        "prefix_mismatches": mismatches,
    }


def roundtrip(adapter_dir: Path, model: str, out: Path, models_dir: Path):
    t0 = time.time()
    tok = load_tokenizer(model, models_dir)
    base = load_base(model, models_dir)
    pm = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False).eval()
    n = check_adapter_applied(pm, adapter_dir)
    result = score_model(pm, tok, read_chats())
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    result.update(
        {
            "model": model,
            "loss_on": "last_assistant",
            "adapter_tensors": n,
            "adapter_config": {k: cfg.get(k) for k in ("r", "lora_alpha", "use_rslora", "target_modules")},
        }
    )
    write_json(out, result)
    print(f"{model}: mean_loss {result['mean_loss']:.6f} over {result['target_tokens']} targets ({time.time() - t0:.0f}s)")
    return result


# ----------------------------------------------------------------------------- training fixtures


def make_batches(tok, chats):
    examples = []
    mismatches = 0
    for messages in chats:
        seq, targets, is_prefix = last_assistant_example(tok, messages)
        mismatches += 0 if is_prefix else 1
        labels = [-100] * len(seq)
        for t in targets:
            labels[t] = seq[t]
        examples.append({"input_ids": seq, "labels": labels})
    gen = random.Random(SEED)
    perm = list(range(len(chats)))
    gen.shuffle(perm)
    steps, ga, mbs = HPARAMS["total_steps"], HPARAMS["grad_accum"], HPARAMS["micro_batch_size"]
    flat = [perm[i % len(perm)] for i in range(steps * ga * mbs)]
    order = [[flat[(s * ga + m) * mbs : (s * ga + m + 1) * mbs] for m in range(ga)] for s in range(steps)]
    batches = [[[examples[i] for i in mb] for mb in step] for step in order]
    return batches, order, perm, mismatches


def pad_micro_batch(mb, pad_id):
    width = max(len(e["input_ids"]) for e in mb)
    ids, labels, mask = [], [], []
    for e in mb:
        n = width - len(e["input_ids"])
        ids.append(e["input_ids"] + [pad_id] * n)
        labels.append(e["labels"] + [-100] * n)
        mask.append([1] * len(e["input_ids"]) + [0] * n)
    return torch.tensor(ids), torch.tensor(labels), torch.tensor(mask)


def micro_batch_ce_sum(model, ids, labels, mask):
    logits = model(input_ids=ids, attention_mask=mask).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum"
    )


# Training-loop mistakes a Rust port could make; each changes the per-step losses (see "sensitivity").
VARIANTS = {
    "no_optimizer_update": "weights never move (lr 0 on every step)",
    "scheduler_off_by_one": "step i uses the schedule's lr for i+1 (no lr=0 first step)",
    "no_weight_decay": "weight_decay 0",
    "no_grad_clipping": "clip_grad_norm_ skipped",
    "mean_of_micro_batch_means": "each micro-batch normalised by its own targets, then averaged over grad_accum",
    "adam_no_bias_correction": "Adam without bias correction (step_size = lr, denom = sqrt(v) + eps)",
    "unpadded": "not a mistake: each example run alone without padding (same math as the padded batch)",
    "float64": "not a mistake: float64 and unpadded, i.e. the f32 rounding noise floor",
}


def train(model, params, batches, pad_id, name="", variant=None):
    """The reference loop (variant=None) or one of VARIANTS; returns the per-step records."""
    opt = torch.optim.AdamW(
        params,
        lr=HPARAMS["lr"],
        betas=tuple(HPARAMS["betas"]),
        eps=HPARAMS["eps"],
        weight_decay=0.0 if variant == "no_weight_decay" else HPARAMS["weight_decay"],
        foreach=False,
        fused=False,
    )
    sched = get_linear_schedule_with_warmup(opt, HPARAMS["warmup_steps"], HPARAMS["total_steps"])
    if variant == "scheduler_off_by_one":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sched.step()
    adam_state = {id(p): (torch.zeros_like(p), torch.zeros_like(p)) for p in params}
    model.train()
    steps = []
    for s, step in enumerate(batches):
        opt.zero_grad(set_to_none=True)
        padded = [pad_micro_batch(mb, pad_id) for mb in step]
        counts = [int((lab[:, 1:] != -100).sum()) for _, lab, _ in padded]
        total = sum(counts)
        loss, parts = 0.0, []
        for (ids, lab, mask), n, mb in zip(padded, counts, step):
            if variant in ("unpadded", "float64"):
                ce = sum(micro_batch_ce_sum(model, *pad_micro_batch([e], pad_id)) for e in mb)
            else:
                ce = micro_batch_ce_sum(model, ids, lab, mask)
            if variant == "mean_of_micro_batch_means":
                (ce / (n * len(padded))).backward()
                loss += float(ce.detach()) / (n * len(padded))
            else:
                (ce / total).backward()
                loss += float(ce.detach()) / total
            parts.append({"loss_sum": float(ce.detach()), "target_tokens": n})
        if variant == "no_grad_clipping":
            grad_norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params])))
        else:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, HPARAMS["max_grad_norm"], foreach=False))
        lr = opt.param_groups[0]["lr"]
        if variant == "no_optimizer_update":
            pass
        elif variant == "adam_no_bias_correction":
            b1, b2 = HPARAMS["betas"]
            with torch.no_grad():
                for p in params:
                    m, v = adam_state[id(p)]
                    p.mul_(1 - lr * HPARAMS["weight_decay"])
                    m.mul_(b1).add_(p.grad, alpha=1 - b1)
                    v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                    p.addcdiv_(m, v.sqrt().add_(HPARAMS["eps"]), value=-lr)
        else:
            opt.step()
        sched.step()
        steps.append(
            {
                "step": s + 1,
                "loss": loss,
                "target_tokens": total,
                "grad_norm": grad_norm,
                "clipped": grad_norm > HPARAMS["max_grad_norm"],
                "lr": lr,
                "micro_batches": parts,
            }
        )
        if variant is None:
            print(f"  {name} step {s + 1}: loss {loss:.6f} grad_norm {grad_norm:.6f} lr {lr:.6g}")
    return steps


def sensitivity(model, params, init_state, batches, pad_id, reference):
    """For each VARIANTS mistake: largest relative per-step loss difference from the reference, and largest
    |final LoRA weight difference| relative to the reference tensor's max |value|."""
    final_ref = [p.detach().clone() for p in params]
    out = {}
    for variant, what in VARIANTS.items():
        with torch.no_grad():
            for p, v in zip(params, init_state):
                p.copy_(v)
        if variant == "float64":
            model.double()
        steps = train(model, params, batches, pad_id, variant=variant)
        model.float()
        rel = max(abs(a["loss"] - b["loss"]) / abs(b["loss"]) for a, b in zip(steps, reference))
        w = max(float((p.float() - r).abs().max() / r.abs().max()) for p, r in zip(params, final_ref))
        out[variant] = {"what": what, "max_rel_loss_diff": rel, "max_rel_final_weight_diff": w}
    return out


def target_modules(name):
    """The target_modules given to PEFT: the projection names, or the language-model regex."""
    return LANGUAGE_MODEL_TARGETS if name in CONDITIONAL_GENERATION else list(TARGET_MODULES)


def layers_prefix(name):
    """Where the decoder layers sit in the base model's module tree."""
    return "model.language_model.layers" if name in CONDITIONAL_GENERATION else "model.layers"


def lora_config(name):
    return LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["lora_alpha"],
        lora_dropout=LORA["lora_dropout"],
        bias=LORA["bias"],
        use_rslora=LORA["use_rslora"],
        target_modules=target_modules(name),
        task_type="CAUSAL_LM",
        init_lora_weights=True,
    )


def save_adapter(model, path: Path, name: str, n_layers: int):
    """PEFT save_pretrained, then made reproducible: relative base path, sorted target_modules (a list; a regex
    string stays as it is), no model card."""
    model.save_pretrained(str(path))
    cfg_path = path / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["base_model_name_or_path"] = f"tests/fixtures/{name}"
    if isinstance(cfg["target_modules"], list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    elif cfg["target_modules"] != target_modules(name):
        raise RuntimeError(f"{path}: PEFT saved target_modules {cfg['target_modules']!r}")
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (path / "README.md").unlink(missing_ok=True)
    check_saved_names(path, n_layers, layers_prefix(name))


def check_saved_names(adapter_dir: Path, n_layers: int, prefix: str):
    keys = set(lora_keys_of_file(adapter_dir))
    want = set()
    for i in range(n_layers):
        for mod in TARGET_MODULES:
            parent = "self_attn" if mod in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            for ab in ("lora_A", "lora_B"):
                want.add(f"base_model.model.{prefix}.{i}.{parent}.{mod}.{ab}.weight")
    if keys != want:
        raise RuntimeError(f"{adapter_dir}: unexpected tensor names {sorted(keys ^ want)[:6]}")


def make_training_fixture(name, chats):
    t0 = time.time()
    out = OUT_ROOT / name
    for sub in ("init_adapter", "final_adapter"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    setup_determinism()
    hashes = base_hashes(name)
    tok = load_tokenizer(name, Path("."))
    base = load_base(name, Path("."))
    n_layers = base.config.get_text_config().num_hidden_layers
    model = get_peft_model(base, lora_config(name))
    gen = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for pname, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if "lora_B" in pname:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * LORA_B_INIT_STD)
    lora = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if (
        not lora
        or any("lora_" not in n or f".{layers_prefix(name)}." not in n for n, _ in lora)
        or len(lora) != 2 * len(TARGET_MODULES) * n_layers
    ):
        raise RuntimeError(f"{name}: unexpected trainable parameters {[n for n, _ in lora][:6]}")
    params = [p for _, p in lora]
    save_adapter(model, out / "init_adapter", name, n_layers)

    batches, order, perm, mismatches = make_batches(tok, chats)
    pad_id = tok.pad_token_id
    write_json(
        out / "batches.json",
        {
            "format": BATCHES_FORMAT,
            "model": name,
            "pad_token_id": pad_id,
            "loss_on": "last_assistant",
            "steps_count": HPARAMS["total_steps"],
            "grad_accum": HPARAMS["grad_accum"],
            "micro_batch_size": HPARAMS["micro_batch_size"],
            "shuffle": f"random.Random({SEED}).shuffle(range({len(chats)})) = {perm}, cycled",
            "prefix_mismatches": mismatches,
            "order": order,
            "steps": batches,
        },
    )

    init_state = [p.detach().clone() for p in params]
    steps = train(model, params, batches, pad_id, name=name)
    save_adapter(model, out / "final_adapter", name, n_layers)
    init = load_file(str(out / "init_adapter" / "adapter_model.safetensors"))
    final = load_file(str(out / "final_adapter" / "adapter_model.safetensors"))
    moved = max(float((final[k] - init[k]).abs().max()) for k in init)

    model.eval()
    train_end = score_model(model, tok, chats)
    sens = sensitivity(model, params, init_state, batches, pad_id, steps)
    init_cfg = json.loads((out / "init_adapter" / "adapter_config.json").read_text(encoding="utf-8"))
    write_json(
        out / "expected.json",
        {
            "format": EXPECTED_FORMAT,
            "model": name,
            "dtype": "float32",
            "hyperparameters": HPARAMS,
            "lora": dict(LORA, target_modules=target_modules(name), scaling=LORA["lora_alpha"] / LORA["r"]),
            "init": (
                f"torch.manual_seed({SEED}) before get_peft_model: lora_A = PEFT default kaiming_uniform_(a=sqrt(5)); "
                f"then lora_B = torch.randn(shape, generator=torch.Generator().manual_seed({SEED + 1})) * "
                f"{LORA_B_INIT_STD}, parameters visited in sorted name order. Saved as init_adapter/."
            ),
            "adapter_config": {
                k: init_cfg.get(k)
                for k in ("r", "lora_alpha", "lora_dropout", "bias", "use_rslora", "target_modules", "peft_type", "task_type")
            },
            "lora_tensors": len(init),
            "final_max_abs_change": moved,
            "steps": steps,
            "final_score_in_memory": {k: train_end[k] for k in ("mean_loss", "target_tokens")},
            "sensitivity": sens,
            "base_files_sha256": hashes,
            "versions": versions(),
        },
    )

    for sub, fname in (("init_adapter", "score_init.json"), ("final_adapter", "score_final.json")):
        sc = roundtrip(out / sub, name, out / fname, Path("."))
        if sub == "final_adapter" and abs(sc["mean_loss"] - train_end["mean_loss"]) > 1e-6 * abs(train_end["mean_loss"]):
            raise RuntimeError(f"{name}: reloaded final adapter scores {sc['mean_loss']} != {train_end['mean_loss']}")
    if base_hashes(name) != hashes:
        raise RuntimeError(f"tests/fixtures/{name} changed while this ran (scripts/make_fixtures.py?): run again")
    print(f"{name}: done in {time.time() - t0:.0f}s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=TRAINED, help="make the training fixture of one tiny model only")
    ap.add_argument("--roundtrip", metavar="ADAPTER_DIR", help="score a PEFT adapter instead of making fixtures")
    ap.add_argument("--model", choices=TRAINED + list(REAL_GGUF), help="base model for --roundtrip")
    ap.add_argument("--out", metavar="FILE", help="output JSON for --roundtrip")
    ap.add_argument("--models-dir", default="models", help="folder with the GGUF files (relative to repo root)")
    args = ap.parse_args()

    if args.roundtrip:
        if not args.model or not args.out:
            ap.error("--roundtrip needs --model and --out")
        models_dir = Path(args.models_dir)
        if not models_dir.is_absolute():
            models_dir = ROOT / models_dir
        setup_determinism()
        roundtrip(Path(args.roundtrip), args.model, Path(args.out), models_dir)
        return 0

    chats = read_chats()
    for name in [args.only] if args.only else TRAINED:
        make_training_fixture(name, chats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
