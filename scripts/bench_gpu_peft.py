"""PEFT side and bookkeeping of the GPU benchmark (scripts/bench-gpu.sh).

Subcommands:
  train   LoRA / QLoRA steps with PyTorch + transformers (sdpa attention) + PEFT on the token ids
          and loss targets lora-train uses (`make_bench_data.py tokens`), fitted to --seq-len as
          lora-train fits them, in file order, --batch-size per step; prints one JSON line.
  peak    the measured bf16 matmul peak: 8192 x 8192 x 8192 torch.matmul in a loop (TFLOP/s).
  watch   samples GPU memory (NVML through pynvml, else nvidia-smi) every --interval s while
          --pid runs: that process's peak and the device's peak minus --baseline; stops it
          (SIGTERM, then SIGKILL) after --timeout s.
  gpu-used  the device's used memory now, in MiB (empty when it cannot be read).
  libdir  the folders of the CUDA 13 libraries in this Python's nvidia packages, for LD_LIBRARY_PATH.
  collect appends one benchmark row (either side) to a JSONL file.
  table   the markdown table of one or more JSONL files.

PEFT setup (the `train` subcommand): the model is loaded in bf16 with attn_implementation="sdpa";
LoRA r=16, alpha=32, dropout 0 on all seven projections through `get_peft_model` with its
defaults, so adapter weights are upcast to float32 when PEFT's `autocast_adapter_dtype` is on
(the default since PEFT 0.12; the dtype seen is reported as adapter_dtype) and the LoRA product runs
in f32 on an f32 copy of its input; no torch.autocast. AdamW lr 1e-4, no weight decay, gradients
clipped to norm 1, as lora-train's job. Gradient checkpointing: gradient_checkpointing_enable with
use_reentrant=False, then enable_input_require_grads. QLoRA: bitsandbytes 4-bit nf4, double quant,
bf16 compute; no prepare_model_for_kbit_training (it would upcast norms, embeddings and head to
f32; lora-train keeps them bf16). Steps are timed between torch.cuda.synchronize() calls.

Model FLOPs per token (the same formula for both sides, in `flops_per_token`), for T = seq len,
L layers, q = heads x head_dim, N_mm = the matmul weights of all layers plus the head (hidden x
vocab, also when tied), N_lora = r x (in + out) summed over the adapted projections:
  forward  = 2 N_mm + 2 N_lora + A,  A = 2 L T q (causal attention: QK^T and PV over T/2 keys on average)
  backward = 2 N_mm (input gradients only: the base is frozen) + 4 N_lora (input and weight
             gradients) + 2 A (gradients of Q, K and V)
  total    = 4 N_mm + 6 N_lora + 3 A
Norms, rope, softmax and the recomputation of gradient checkpointing are not counted (model FLOPs,
not hardware FLOPs). MFU = tokens/s x total / the measured matmul peak.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CUDA_LIBS = ["libcublas.so.13", "libcublasLt.so.13", "libcudart.so.13", "libcurand.so.10"]
OPTIONAL_LIBS = ["libnvrtc.so.13"]
MIB = 1 << 20


def flops_per_token(cfg, seq, r=16):
    """Training FLOPs per token of LoRA on every projection over a frozen base (formula in the module doc)."""
    h, i, L, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q = cfg["num_attention_heads"] * hd
    kv = cfg.get("num_key_value_heads", cfg["num_attention_heads"]) * hd
    shapes = [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]  # (in, out) of the 7 projections
    n_mm = L * sum(a * b for a, b in shapes) + h * V
    n_lora = L * sum(r * (a + b) for a, b in shapes)
    attn = 2 * L * seq * q
    return 4 * n_mm + 6 * n_lora + 3 * attn


# ---------------------------------------------------------------------------------------- train

def cmd_train(a):
    import torch
    import transformers
    import peft
    from packaging.version import Version
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    sys.path.insert(0, HERE)
    from bench_memory_peft import batch, fit  # lora-train's fit_to_length and the labels layout

    info = {"impl": "peft", "quantize": a.quantize, "gradient_checkpointing": a.checkpointing,
            "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}

    def fail(msg, code=1):
        print(json.dumps(dict(info, error=msg)))
        sys.exit(code)

    quant = None
    if a.quantize == "nf4":
        try:
            import bitsandbytes
        except ImportError:
            fail("bitsandbytes not installed", 3)
        info["bitsandbytes"] = bitsandbytes.__version__
        quant = transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)

    torch.manual_seed(0)
    with open(a.tokens, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    examples = [e for e in (fit(r, a.seq_len) for r in rows) if e is not None]
    if len(examples) < a.batch_size:
        fail(f"{a.tokens}: {len(examples)} examples fit in {a.seq_len} tokens, fewer than a batch")
    n_batches = len(examples) // a.batch_size

    cuda = a.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    dtype_kw = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        a.model, attn_implementation="sdpa", device_map={"": a.device}, quantization_config=quant,
        **{dtype_kw: torch.bfloat16})
    model.config.use_cache = False
    if a.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    sync()
    info.update({
        "load_s": round(time.perf_counter() - t0, 1),
        "attn_implementation": model.config._attn_implementation,
        "adapter_dtype": str(next(p.dtype for n, p in model.named_parameters() if "lora_A" in n)),
        "base_dtype": str(model.get_base_model().model.norm.weight.dtype),
        "trainable_parameters": sum(p.numel() for p in params),
        "device_name": torch.cuda.get_device_name(a.device) if cuda else "cpu",
    })
    if cuda:
        info["load_allocated_mib"] = round(torch.cuda.memory_allocated(a.device) / MIB)

    times, tokens, losses = [], [], []
    for step in range(a.steps):
        k = step % n_batches
        ids, mask, labels, n_tok = batch(examples[k * a.batch_size:(k + 1) * a.batch_size], pad_id)
        ids, labels = ids.to(a.device), labels.to(a.device)
        mask = mask.to(a.device) if mask is not None else None
        sync()
        t = time.perf_counter()
        try:
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync()
        except torch.cuda.OutOfMemoryError as e:
            fail(f"CUDA out of memory at step {step + 1}: {str(e).splitlines()[0][:200]}")
        times.append(time.perf_counter() - t)
        tokens.append(n_tok)
        losses.append(round(loss.item(), 4))
        print(f"step {step + 1}: loss {losses[-1]} {times[-1]:.3f} s", file=sys.stderr, flush=True)

    timed = slice(a.warmup, None) if a.steps > a.warmup else slice(0, None)
    secs, toks = sum(times[timed]), sum(tokens[timed])
    info.update({
        "steps": a.steps, "timed_steps": len(times[timed]), "tokens_per_step": tokens[0],
        "tokens_per_second": round(toks / secs, 1), "s_per_step": round(secs / len(times[timed]), 4),
        "losses": losses,
    })
    if cuda:
        info["max_memory_allocated_mib"] = round(torch.cuda.max_memory_allocated(a.device) / MIB)
        info["max_memory_reserved_mib"] = round(torch.cuda.max_memory_reserved(a.device) / MIB)
    # The last step once more, phase by phase as `lora-train bench` splits it (its `phases`):
    # forward with the loss, backward, then clipping and AdamW, each ended by a synchronization.
    ids, mask, labels, _ = batch(examples[k * a.batch_size:(k + 1) * a.batch_size], pad_id)
    ids, labels = ids.to(a.device), labels.to(a.device)
    mask = mask.to(a.device) if mask is not None else None
    try:
        sync()
        marks = [time.perf_counter()]
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        sync(); marks.append(time.perf_counter())
        loss.backward()
        sync(); marks.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(); marks.append(time.perf_counter())
        info["phases"] = {name: round(marks[i + 1] - marks[i], 4)
                          for i, name in enumerate(["forward_s", "backward_s", "update_s"])}
    except torch.cuda.OutOfMemoryError as e:
        info["phases_error"] = f"CUDA out of memory: {str(e).splitlines()[0][:200]}"
    print(json.dumps(info))


# ----------------------------------------------------------------------------------------- peak

def cmd_peak(a):
    import torch

    if not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device visible to torch"}))
        sys.exit(1)
    n = a.size
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn((n, n), generator=g, device="cuda", dtype=torch.bfloat16)
    y = torch.randn((n, n), generator=g, device="cuda", dtype=torch.bfloat16)
    for _ in range(a.warmup):
        torch.matmul(x, y)
    torch.cuda.synchronize()
    best = 0.0
    for _ in range(a.repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(a.iters):
            torch.matmul(x, y)
        end.record()
        torch.cuda.synchronize()
        best = max(best, 2 * n**3 * a.iters / (start.elapsed_time(end) / 1e3) / 1e12)
    props = torch.cuda.get_device_properties(0)
    print(json.dumps({"peak_tflops": round(best, 1), "matmul": f"{n}x{n}x{n} bf16", "iters": a.iters,
                      "repeats": a.repeats, "device_name": props.name,
                      "device_memory_mib": round(props.total_memory / MIB), "torch": torch.__version__,
                      "cuda": torch.version.cuda}))


# ------------------------------------------------------------------------------- GPU memory

class Sampler:
    """Device-0 memory through NVML (pynvml), else nvidia-smi; `ok` is False when neither works."""

    def __init__(self):
        self.nvml = None
        self.method = "none"
        try:
            import pynvml
            pynvml.nvmlInit()
            self.nvml = (pynvml, pynvml.nvmlDeviceGetHandleByIndex(0))
            self.method = "nvml"
        except Exception:
            try:
                subprocess.run(["nvidia-smi", "-L"], capture_output=True, check=True, timeout=30)
                self.method = "nvidia-smi"
            except (OSError, subprocess.SubprocessError):
                pass

    def device_used_mib(self):
        if self.method == "nvml":
            nv, h = self.nvml
            return nv.nvmlDeviceGetMemoryInfo(h).used / MIB
        if self.method == "nvidia-smi":
            out = _smi(["--query-gpu=memory.used", "-i", "0"])
            return float(out[0][0]) if out else None
        return None

    def per_pid_mib(self):
        if self.method == "nvml":
            nv, h = self.nvml
            procs = nv.nvmlDeviceGetComputeRunningProcesses(h)
            return {p.pid: p.usedGpuMemory / MIB for p in procs if p.usedGpuMemory is not None}
        if self.method == "nvidia-smi":
            return {int(r[0]): float(r[1]) for r in _smi(["--query-compute-apps=pid,used_memory", "-i", "0"])
                    if len(r) == 2 and r[0].isdigit() and _is_number(r[1])}
        return {}


def _is_number(s):
    try:
        float(s)
        return True
    except ValueError:
        return False


def _smi(query):
    try:
        out = subprocess.run(["nvidia-smi", *query, "--format=csv,noheader,nounits"], capture_output=True,
                             text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def cmd_gpu_used(_a):
    used = Sampler().device_used_mib()
    print("" if used is None else round(used))


def cmd_watch(a):
    s = Sampler()
    peak_pid = peak_dev = None
    samples, timed_out, t0 = 0, False, time.monotonic()
    term_at = None

    def write():
        rec = {"method": s.method, "samples": samples, "timed_out": timed_out,
               "baseline_mib": a.baseline,
               "peak_pid_mib": None if peak_pid is None else round(peak_pid),
               "peak_device_mib": None if peak_dev is None else round(peak_dev),
               "peak_device_minus_baseline_mib": None if peak_dev is None or a.baseline is None
               else round(peak_dev - a.baseline),
               "wall_s": round(time.monotonic() - t0, 1)}
        with open(a.out + ".tmp", "w", encoding="utf-8") as f:
            json.dump(rec, f)
        os.replace(a.out + ".tmp", a.out)

    last_write = 0.0
    while _alive(a.pid):
        if s.method != "none":
            try:
                dev = s.device_used_mib()
                mine = s.per_pid_mib().get(a.pid)
            except Exception:
                dev = mine = None
            if dev is not None:
                peak_dev = dev if peak_dev is None else max(peak_dev, dev)
            if mine is not None:
                peak_pid = mine if peak_pid is None else max(peak_pid, mine)
            samples += 1
        now = time.monotonic()
        if a.timeout and now - t0 > a.timeout:
            timed_out = True
            try:
                if term_at is None:
                    os.kill(a.pid, signal.SIGTERM)
                    term_at = now
                elif now - term_at > 10:
                    os.kill(a.pid, signal.SIGKILL)
            except ProcessLookupError:
                break
        if now - last_write > 1.0:
            write()
            last_write = now
        time.sleep(a.interval)
    write()


# --------------------------------------------------------------------------------------- libdir

def cmd_libdir(_a):
    roots = []
    try:
        import nvidia
        roots += list(nvidia.__path__)
    except ImportError:
        pass
    import site
    for sp in site.getsitepackages() + [site.getusersitepackages()]:
        d = os.path.join(sp, "nvidia")
        if os.path.isdir(d) and d not in roots:
            roots.append(d)
    found = {}
    for root in roots:
        for sub in sorted(os.listdir(root)) if os.path.isdir(root) else []:
            lib = os.path.join(root, sub, "lib")
            for name in CUDA_LIBS + OPTIONAL_LIBS:
                if name not in found and os.path.exists(os.path.join(lib, name)):
                    found[name] = lib
    missing = [n for n in CUDA_LIBS if n not in found]
    if len(missing) == len(CUDA_LIBS):
        sys.exit(f"libdir: none of {', '.join(CUDA_LIBS)} under {roots or 'any nvidia package'} "
                 "(install PyTorch with CUDA 13, or set LORA_TRAIN_CUDA_LIBS)")
    if missing:
        # Reported, not fatal: the system's library path may hold them; a row that needs one fails with its name.
        print(f"libdir: warning: {', '.join(missing)} not found under {roots}", file=sys.stderr)
    print(":".join(dict.fromkeys(found.values())))


# -------------------------------------------------------------------------------------- collect

def _read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except (OSError, TypeError):
        return ""


def _last_error_line(log):
    import re
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", l).strip() for l in log.splitlines()]
    lines = [l for l in lines if l and not l.startswith("warnings.warn") and "Warning" not in l
             and not l.startswith(("step ", "Loading weights"))]
    return lines[-1] if lines else ""


def cmd_collect(a):
    rec = {"run": a.run, "model": a.model_key, "row": a.row, "impl": a.impl, "dtype": "bf16",
           "quantize": a.quantize, "gradient_checkpointing": a.checkpointing, "steps": a.steps,
           "warmup": a.warmup, "seq": a.seq, "micro_batch": a.micro_batch, "command": a.command,
           "cmdline": a.cmdline, "rc": a.rc}
    cfg = json.loads(_read(os.path.join(a.model_dir, "config.json")) or "{}")
    if cfg:
        rec["flops_per_token"] = flops_per_token(cfg, a.seq)
        rec["parameters"] = json.loads(_read(os.path.join(a.model_dir, "random-llama.json")) or "{}").get("parameters")
    peak = json.loads(_read(a.peak) or "{}")
    if "peak_tflops" in peak:
        rec["peak_tflops"] = peak["peak_tflops"]
        rec["device_name"] = peak.get("device_name")
    mem = json.loads(_read(a.mem) or "{}")
    if mem:
        rec["gpu_memory"] = mem
        if mem.get("peak_pid_mib") is not None:
            rec["peak_gpu_mib"], rec["peak_gpu_method"] = mem["peak_pid_mib"], mem["method"] + " per process"
        elif mem.get("peak_device_minus_baseline_mib") is not None:
            rec["peak_gpu_mib"], rec["peak_gpu_method"] = (mem["peak_device_minus_baseline_mib"],
                                                           mem["method"] + " device minus idle baseline")
    error = a.error
    if not error and a.rc != 0:
        if mem.get("timed_out"):
            error = f"timed out after {a.timeout} s (BENCH_ROW_TIMEOUT_S / BENCH_BUDGET_S)"
        elif a.impl == "peft":
            res = [json.loads(l) for l in _read(a.result).splitlines() if l.startswith("{")]
            error = (res[-1].get("error") if res else None) or _last_error_line(_read(a.log)) or f"exit status {a.rc}"
        else:
            error = _last_error_line(_read(a.log)) or f"exit status {a.rc}"
    elif not error:
        try:
            if a.impl == "peft":
                res = [json.loads(l) for l in _read(a.result).splitlines() if l.startswith("{")][-1]
                rec.update({k: v for k, v in res.items() if k not in rec})
            else:
                lines = [json.loads(l) for l in _read(a.result).splitlines() if l.strip()]
                st = [l for l in lines if "tokens_per_second" in l]
                timed = st[a.warmup:] if len(st) > a.warmup else st
                secs = [l["tokens"] / l["tokens_per_second"] for l in timed]
                rec.update({"tokens_per_second": round(sum(l["tokens"] for l in timed) / sum(secs), 1),
                            "s_per_step": round(sum(secs) / len(secs), 4), "tokens_per_step": st[0]["tokens"],
                            "timed_steps": len(timed), "losses": [round(l["loss"], 4) for l in st]})
                if len(st) != a.steps:
                    error = f"{len(st)} of {a.steps} steps in {a.result}"
                # The memory pool's high-water mark from the run's summary, the counterpart of
                # PEFT's max_memory_reserved_mib (the watcher's figure stays the one compared).
                summary = json.loads(_read(os.path.join(os.path.dirname(a.result), "summary.json")) or "{}")
                if summary.get("peak_gpu_memory_mib") is not None:
                    rec["pool_peak_reserved_mib"] = summary["peak_gpu_memory_mib"]
        except (IndexError, KeyError, ValueError, ZeroDivisionError) as e:
            error = f"no result in {a.result}: {e!r}"
    if "tokens_per_step" in rec and rec["tokens_per_step"] != a.seq * a.micro_batch:
        rec["note"] = f"{rec['tokens_per_step']} tokens per step, not {a.seq * a.micro_batch}"
    if not error and rec.get("flops_per_token") and rec.get("peak_tflops"):
        rec["mfu"] = round(rec["tokens_per_second"] * rec["flops_per_token"] / (rec["peak_tflops"] * 1e12), 4)
    if error:
        rec["error"] = error[:400]
    with open(a.out, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec) + "\n")
    show = rec.get("error") or (f"{rec['tokens_per_second']} tokens/s, {rec.get('peak_gpu_mib')} MiB, "
                                f"MFU {rec.get('mfu')}, losses {rec.get('losses')}")
    print(f"  {a.model_key} {a.row}: {show}", file=sys.stderr)


# ---------------------------------------------------------------------------------------- table

NAMES = {"1b": "Llama-3.2-1B shape", "8b": "Llama-3.1-8B shape", "tiny": "tiny"}


def peft_row_of(row):
    return row if row.startswith("peft-") else "peft-" + row


def label(r):
    base = r["row"].removeprefix("peft-")
    ckpt = " + grad. ckpt" if base.endswith("+ckpt") else ""
    kind = "bf16 LoRA" if base.startswith("bf16") else f"QLoRA {r['quantize']}"
    who = "PEFT" if r["impl"] == "peft" else "lora-train"
    return f"{who} {kind}{ckpt}"


def ratio(a, b):
    return f"{a / b:.2f}×" if a is not None and b else ""


def cmd_table(a):
    recs = []
    for path in a.jsonl:
        for line in _read(path).splitlines():
            if line.strip():
                r = json.loads(line)
                if not a.run or r.get("run") in a.run:
                    recs.append(r)
    out = []
    if not recs:
        print("no rows")
        return
    dev = next((r for r in recs if r.get("device_name")), {})
    # One memory measure for every row, so that both sides are compared like with like: per process
    # when every successful row has it, else the device's use minus its idle baseline.
    done = [r for r in recs if "error" not in r]
    per_pid = bool(done) and all(r.get("gpu_memory", {}).get("peak_pid_mib") is not None for r in done)
    key = "peak_pid_mib" if per_pid else "peak_device_minus_baseline_mib"
    for r in recs:
        r["peak_gpu_mib"] = r.get("gpu_memory", {}).get(key)
    method = next((r["gpu_memory"]["method"] for r in done if r.get("gpu_memory", {}).get(key) is not None), None)
    out.append("| model | run | tokens/s | vs PEFT | peak GPU MiB | vs PEFT | MFU |")
    out.append("|---|---|---|---|---|---|---|")
    notes = []
    for model in dict.fromkeys(r["model"] for r in recs):
        rows = [r for r in recs if r["model"] == model]
        ok = {(r["row"]): r for r in rows if "error" not in r}
        name = NAMES.get(model, model)
        for r in rows:
            if "error" in r:
                err = r["error"].replace("|", "\\|").replace("`", "'")
                out.append(f"| {name} | {label(r)} | failed: `{err}` | | | | |")
                continue
            p = ok.get(peft_row_of(r["row"])) if r["impl"] != "peft" else None
            mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else ""
            mem = r["peak_gpu_mib"] if r["peak_gpu_mib"] is not None else ""
            out.append(f"| {name} | {label(r)} | {r['tokens_per_second']:.0f} | "
                       f"{ratio(r['tokens_per_second'], p and p['tokens_per_second'])} | {mem} | "
                       f"{ratio(r.get('peak_gpu_mib'), p and p.get('peak_gpu_mib'))} | {mfu} |")
            if r["impl"] == "peft":
                notes.append(f"{name} {label(r)}: torch max_memory_allocated {r.get('max_memory_allocated_mib')} MiB, "
                             f"reserved {r.get('max_memory_reserved_mib')} MiB; adapters {r.get('adapter_dtype')}, "
                             f"base {r.get('base_dtype')}, {r.get('attn_implementation')} attention; "
                             f"torch {r.get('torch')}, transformers {r.get('transformers')}, peft {r.get('peft')}"
                             + (f", bitsandbytes {r['bitsandbytes']}" if r.get("bitsandbytes") else ""))
            elif p:
                notes.append(f"{name} {label(r)}: losses {r['losses']} vs PEFT's {p['losses']} (same batches; "
                             "step 1 is the base model's loss: B = 0)")
            if "note" in r:
                notes.append(f"{name} {label(r)}: {r['note']}")
        r0 = rows[0]
        if r0.get("flops_per_token"):
            notes.append(f"{name}: {r0.get('parameters') or '?'} parameters, {r0['micro_batch']} x {r0['seq']} tokens "
                         f"per step, {r0['steps']} steps of which the first {r0['warmup']} are not timed; "
                         f"{r0['flops_per_token'] / 1e9:.4g} GFLOP per token")
    measure = ("peak of " + ("the process's own use" if per_pid else "the device's use minus its idle use before the row")
               + f" from {'nvidia-smi' if method == 'nvidia-smi' else 'NVML (what nvidia-smi reads)'}, sampled every "
               "0.2 s, the same way for both sides (includes the CUDA context)" if method else "not measured")
    out.append("")
    out.append(f"Device: {dev.get('device_name', '?')}; measured bf16 matmul peak "
               f"{dev.get('peak_tflops', '?')} TFLOP/s (8192³ torch.matmul). MFU = tokens/s × model FLOPs per "
               "token / that peak, with FLOPs per token = 4·N_mm + 6·N_lora + 3·A for both sides "
               "(N_mm: matmul weights of the layers and the head; N_lora: r·(in+out) over the adapted "
               "projections; A = 2·L·T·heads·head_dim, causal attention; frozen base: input gradients only; "
               "checkpointing recompute not counted). Peak GPU memory: "
               f"{measure}. "
               "vs PEFT: ours / PEFT's on the same row kind (tokens/s: higher is faster; memory: lower is less).")
    out.append("")
    for n in notes:
        out.append(f"- {n}")
    cmdlines = list(dict.fromkeys(r.get("cmdline") for r in recs if r.get("cmdline")))
    if cmdlines:
        out.append("")
        out.append("Reproduce:")
        out.append("")
        out.append("```sh")
        out.extend(cmdlines)
        out.append("```")
    print("\n".join(out))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--model", required=True, help="an HF folder")
    t.add_argument("--tokens", required=True, help="JSONL of {input_ids, targets} (make_bench_data.py tokens)")
    t.add_argument("--steps", type=int, default=6)
    t.add_argument("--warmup", type=int, default=2, help="leading steps not timed")
    t.add_argument("--batch-size", type=int, default=1)
    t.add_argument("--seq-len", type=int, default=2048)
    t.add_argument("--quantize", choices=["none", "nf4"], default="none")
    t.add_argument("--checkpointing", action="store_true")
    t.add_argument("--device", default="cuda:0")
    k = sub.add_parser("peak")
    k.add_argument("--size", type=int, default=8192)
    k.add_argument("--iters", type=int, default=20)
    k.add_argument("--repeats", type=int, default=5)
    k.add_argument("--warmup", type=int, default=10)
    w = sub.add_parser("watch")
    w.add_argument("--pid", type=int, required=True)
    w.add_argument("--out", required=True)
    w.add_argument("--baseline", type=float, default=None, help="device MiB used before the process started")
    w.add_argument("--interval", type=float, default=0.2)
    w.add_argument("--timeout", type=float, default=0, help="stop the process after this many seconds (0: never)")
    sub.add_parser("gpu-used")
    sub.add_parser("libdir")
    c = sub.add_parser("collect")
    for name in ("out", "run", "model-key", "model-dir", "row", "impl", "quantize", "command", "cmdline"):
        c.add_argument("--" + name, required=True)
    for name in ("result", "log", "mem", "peak", "error"):
        c.add_argument("--" + name, default="")
    for name in ("rc", "steps", "warmup", "seq", "micro-batch", "timeout"):
        c.add_argument("--" + name, type=int, required=name != "timeout", default=0)
    c.add_argument("--checkpointing", action="store_true")
    tb = sub.add_parser("table")
    tb.add_argument("jsonl", nargs="+")
    tb.add_argument("--run", action="append", help="only rows of this run id (repeatable)")
    a = p.parse_args()
    {"train": cmd_train, "peak": cmd_peak, "watch": cmd_watch, "gpu-used": cmd_gpu_used, "libdir": cmd_libdir,
     "collect": cmd_collect, "table": cmd_table}[a.cmd](a)


if __name__ == "__main__":
    main()
