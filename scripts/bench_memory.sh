#!/usr/bin/env bash
# Peak memory and throughput of LoRA training on CPU: lora-train's f32 LoRA, bf16 LoRA
# and 4-bit QLoRA, each with and without gradient checkpointing, and PEFT's f32 LoRA on the same
# tokens, on SmolLM2-135M and Gemma 3 270M (configs/bench/): r=16, alpha=32, all seven
# projections, micro-batches of exactly 4 x 1024 tokens (data: scripts/make_bench_data.py).
# Every run is its own process, one at a time; peak RSS is /usr/bin/time's %M for each.
#
#   PYTHON=/path/to/python-with-torch-transformers-peft-gguf scripts/bench_memory.sh
#
# Environment (defaults in brackets):
#   BENCH_MODELS       models to run ["smollm2 gemma3"]
#   BENCH_STEPS        optimizer steps per run; step 1 is warm-up and not timed [3]
#   BENCH_QUANT        model.quantize of the 4-bit rows [nf4]
#   BENCH_QUANT_DTYPE  model.dtype (compute dtype) of the 4-bit rows [f32]
#   BENCH_ROWS         which rows ["f32 f32+ckpt bf16 bf16+ckpt q4 q4+ckpt peft"]
#   BENCH_SEQ, BENCH_MICRO_BATCH   data.max_seq_len and train.micro_batch_size [1024, 4]
#   BENCH_SET          extra "key=value ..." --set overrides for our runs, e.g.
#                      "train.recompute_attention=true" (inputs-only checkpointing) []
#   LORA_TRAIN         the binary [target/release/lora-train, built by cargo build --release]
#   PYTHON             the Python for the PEFT row and the summaries [python3]
# Appends one JSON line per row to bench-results/memory.jsonl, and prints a markdown table (also
# written to bench-results/memory-<run>.md). A run that fails (an unsupported key, out of memory)
# becomes a row with its error; the script goes on with the next one.
set -uo pipefail
cd "$(dirname "$0")/.."

MODELS="${BENCH_MODELS:-smollm2 gemma3}"
STEPS="${BENCH_STEPS:-3}"
QUANT="${BENCH_QUANT:-nf4}"
QDTYPE="${BENCH_QUANT_DTYPE:-f32}"
ROWS="${BENCH_ROWS:-f32 f32+ckpt bf16 bf16+ckpt q4 q4+ckpt peft}"
SEQ="${BENCH_SEQ:-1024}"
MBS="${BENCH_MICRO_BATCH:-4}"
EXTRA_SET="${BENCH_SET:-}"
PY="${PYTHON:-python3}"
RES=bench-results
RUN="$(date -u +%Y%m%dT%H%M%SZ)"

# The command line that reproduces this table, with every setting that differs from the defaults.
CMDLINE="BENCH_MODELS=\"$MODELS\" BENCH_STEPS=$STEPS BENCH_QUANT=$QUANT"
[ "$QDTYPE" != f32 ] && CMDLINE+=" BENCH_QUANT_DTYPE=$QDTYPE"
[ "$ROWS" != "f32 f32+ckpt bf16 bf16+ckpt q4 q4+ckpt peft" ] && CMDLINE+=" BENCH_ROWS=\"$ROWS\""
[ "$SEQ" != 1024 ] && CMDLINE+=" BENCH_SEQ=$SEQ"
[ -n "$EXTRA_SET" ] && CMDLINE+=" BENCH_SET=\"$EXTRA_SET\""
[ "$MBS" != 4 ] && CMDLINE+=" BENCH_MICRO_BATCH=$MBS"
[ -n "${LORA_TRAIN:-}" ] && CMDLINE+=" LORA_TRAIN=$LORA_TRAIN"
CMDLINE+=" PYTHON=$PY scripts/bench_memory.sh"

if [ -n "${LORA_TRAIN:-}" ]; then
    BIN="$LORA_TRAIN"
else
    BIN=target/release/lora-train
    cargo build --release >&2 || { echo "bench_memory.sh: cargo build --release failed" >&2; exit 1; }
fi
[ -x "$BIN" ] || { echo "bench_memory.sh: no executable $BIN" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "bench_memory.sh: needs GNU time at /usr/bin/time (apt-get install time)" >&2; exit 1; }

if [ "$SEQ" = 1024 ]; then DATA="$RES/data"; else DATA="$RES/data-seq$SEQ"; fi
mkdir -p "$RES/runs"
[ -s "$DATA/train.jsonl" ] || "$PY" scripts/make_bench_data.py data --seq "$SEQ" --out "$DATA" >&2 || exit 1

PEFT_OK=1
case " $ROWS " in *" peft "*)
    "$PY" -c "import torch, transformers, peft, gguf" 2>/dev/null || PEFT_OK=0 ;;
esac

# Appends one row to memory.jsonl. Args: model row impl rc rss_file log_file result_file command
# dtype quantize checkpointing.
collect() {
    "$PY" - "$RES/memory.jsonl" "$RUN" "$STEPS" "$SEQ" "$MBS" "$@" <<'PYEOF'
import json, re, sys
(out, run, steps, seq, mbs, model, row, impl, rc, rss_file, log_file, result_file, command,
 dtype, quantize, ckpt) = sys.argv[1:]
rec = {"run": run, "model": model, "row": row, "impl": impl, "dtype": dtype, "quantize": quantize,
       "gradient_checkpointing": ckpt == "true", "steps": int(steps), "seq": int(seq),
       "micro_batch": int(mbs), "command": command, "rc": int(rc)}

def read(path):
    try:
        return open(path, encoding="utf-8", errors="replace").read()
    except OSError:
        return ""

rss_lines = read(rss_file).strip().splitlines()
if rss_lines and rss_lines[-1].strip().isdigit():
    rec["peak_rss_mib"] = round(int(rss_lines[-1]) / 1024)
error = None
if rec["rc"] != 0:
    killed = [l for l in rss_lines if "terminated by signal" in l]
    log = [re.sub(r"\x1b\[[0-9;]*m", "", l).strip() for l in read(log_file).splitlines()]
    log = [l for l in log if l and not l.startswith("warnings.warn")]
    error = (killed[0] + " (out of memory?)") if killed else (log[-1] if log else f"exit status {rc}")
else:
    try:
        if impl == "peft":
            res = [json.loads(l) for l in read(result_file).splitlines() if l.startswith("{")][-1]
            rec.update({k: res[k] for k in ("tokens_per_second", "s_per_step", "tokens_per_step",
                                            "timed_steps", "losses", "attn_implementation", "threads", "load_peak_rss_mib",
                                            "torch", "transformers", "peft")})
        else:
            lines = [json.loads(l) for l in read(result_file).splitlines() if l.strip()]
            st = [l for l in lines if "tokens_per_second" in l]
            timed = st[1:] if len(st) > 1 else st
            secs = [l["tokens"] / l["tokens_per_second"] for l in timed]
            rec.update({"tokens_per_second": round(sum(l["tokens"] for l in timed) / sum(secs), 1),
                        "s_per_step": round(sum(secs) / len(secs), 3), "tokens_per_step": st[0]["tokens"],
                        "timed_steps": len(timed), "losses": [round(l["loss"], 4) for l in st]})
            if len(st) != int(steps):
                error = f"{len(st)} of {steps} steps in {result_file}"
    except (IndexError, KeyError, ValueError, ZeroDivisionError) as e:
        error = f"no result in {result_file}: {e!r}"
    if "tokens_per_step" in rec and rec["tokens_per_step"] != int(seq) * int(mbs):
        rec["note"] = f"{rec['tokens_per_step']} tokens per step, not {int(seq) * int(mbs)}"
if error:
    rec["error"] = error[:300]
with open(out, "a", encoding="utf-8") as f:
    f.write(json.dumps(rec) + "\n")
show = rec.get("error") or f"{rec.get('peak_rss_mib')} MiB, {rec.get('tokens_per_second')} tokens/s, {rec.get('s_per_step')} s/step"
print(f"  {model} {row}: {show}", file=sys.stderr)
PYEOF
}

run_ours() {  # model config row dtype quantize checkpointing
    local model=$1 cfg=$2 row=$3 dtype=$4 quant=$5 ckpt=$6
    local dir="$RES/runs/$model-${row/+/-}"
    local args=(--config "$cfg" --set "model.dtype=$dtype" --set "train.max_steps=$STEPS"
                --set "data.max_seq_len=$SEQ" --set "train.micro_batch_size=$MBS"
                --set "data.train=$DATA/train.jsonl" --set "output.dir=$dir")
    # The new keys only where they differ from their defaults (no quantization, no checkpointing).
    [ "$quant" != none ] && args+=(--set "model.quantize=$quant")
    [ "$ckpt" = true ] && args+=(--set "train.gradient_checkpointing=true")
    for kv in $EXTRA_SET; do args+=(--set "$kv"); done
    args+=(--no-report)
    rm -rf "$dir" "$dir.rss" "$dir.log"
    echo "$(date -u +%T) $model $row: $BIN ${args[*]}" >&2
    /usr/bin/time -f %M -o "$dir.rss" "$BIN" "${args[@]}" >"$dir.log" 2>&1
    collect "$model" "$row" lora-train $? "$dir.rss" "$dir.log" "$dir/metrics.jsonl" \
        "$BIN ${args[*]}" "$dtype" "$quant" "$ckpt"
}

run_peft() {  # model gguf
    local model=$1 gguf=$2 base="$RES/runs/$model-peft"
    local tokens="$DATA/tokens-$model.jsonl"
    rm -f "$base.rss" "$base.log" "$base.json"
    if [ "$PEFT_OK" = 0 ]; then
        echo "PYTHON=$PY cannot import torch, transformers, peft and gguf" >"$base.log"
        collect "$model" peft peft 1 "$base.rss" "$base.log" "$base.json" "" f32 none false
        return
    fi
    if [ ! -s "$tokens" ] || [ "$DATA/train.jsonl" -nt "$tokens" ]; then
        echo "$(date -u +%T) $model: tokenizing with $BIN inspect" >&2
        if ! "$PY" scripts/make_bench_data.py tokens --bin "$BIN" --model "$gguf" --data "$DATA/train.jsonl" \
                --out "$tokens" >"$base.log" 2>&1; then
            collect "$model" peft peft 1 "$base.rss" "$base.log" "$base.json" "" f32 none false
            return
        fi
    fi
    local cmd=("$PY" scripts/bench_memory_peft.py --model "$gguf" --tokens "$tokens" --steps "$STEPS"
               --batch-size "$MBS" --seq-len "$SEQ")
    echo "$(date -u +%T) $model peft: ${cmd[*]}" >&2
    OMP_NUM_THREADS="$(nproc)" /usr/bin/time -f %M -o "$base.rss" "${cmd[@]}" >"$base.json" 2>"$base.log"
    collect "$model" peft peft $? "$base.rss" "$base.log" "$base.json" "${cmd[*]}" f32 none false
}

for model in $MODELS; do
    case "$model" in
        smollm2) cfg=configs/bench/smollm2-135m.toml; gguf=models/smollm2-135m-instruct.Q4_1.gguf ;;
        gemma3) cfg=configs/bench/gemma-3-270m.toml; gguf=models/gemma-3-270m.Q4_K_M.gguf ;;
        *) echo "bench_memory.sh: unknown model $model in BENCH_MODELS (smollm2, gemma3)" >&2; continue ;;
    esac
    [ -f "$gguf" ] || scripts/fetch-models.sh >&2
    for row in $ROWS; do
        ckpt=false
        [ "${row%+ckpt}" != "$row" ] && ckpt=true
        case "${row%+ckpt}" in
            f32) run_ours "$model" "$cfg" "$row" f32 none $ckpt ;;
            bf16) run_ours "$model" "$cfg" "$row" bf16 none $ckpt ;;
            q4) run_ours "$model" "$cfg" "$row" "$QDTYPE" "$QUANT" $ckpt ;;
            peft) run_peft "$model" "$gguf" ;;
            *) echo "bench_memory.sh: unknown row $row in BENCH_ROWS" >&2 ;;
        esac
    done
done

"$PY" - "$RES/memory.jsonl" "$RUN" "$CMDLINE" "$(git rev-parse --short HEAD 2>/dev/null)" \
    "$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | xargs)" "$(nproc)" \
    >"$RES/memory-$RUN.md" <<'PYEOF'
import json, sys
path, run, cmdline, commit, cpu, cores = sys.argv[1:]
recs = [r for r in map(json.loads, open(path, encoding="utf-8")) if r.get("run") == run]
names = {"smollm2": "SmolLM2-135M", "gemma3": "Gemma 3 270M"}

def label(r):
    if r["impl"] == "peft":
        return f"PEFT f32 LoRA ({r.get('attn_implementation', 'sdpa')} attention)"
    base = {"f32": "f32 LoRA", "bf16": "bf16 LoRA"}.get(r["row"].split("+")[0],
                                                       f"QLoRA {r['quantize']} ({r['dtype']} compute)")
    return base + (" + grad. checkpointing" if r["gradient_checkpointing"] else "")

def ratio(a, b):
    return f"{a / b:.2f}×" if a is not None and b else ""

r0 = recs[0] if recs else {"steps": "?", "seq": "?", "micro_batch": "?"}
print(f"<!-- {cmdline} -->")
print(f"<!-- run {run}, commit {commit}, {cpu}, {cores} cores; {r0['micro_batch']} x {r0['seq']} tokens per step, "
      f"{r0['steps']} steps per run, step 1 not timed; peak RSS from /usr/bin/time -f %M -->")
print()
print("| model | run | peak RSS (MiB) | peak vs our f32 LoRA | tokens/s | s/step | checkpointing step-time cost |")
print("|---|---|---|---|---|---|---|")
notes = []
for model in dict.fromkeys(r["model"] for r in recs):
    rows = [r for r in recs if r["model"] == model]
    ok = {r["row"]: r for r in rows if "error" not in r}
    f32 = ok.get("f32", {}).get("peak_rss_mib")
    for r in rows:
        name = names.get(model, model)
        if "error" in r:
            err = r["error"].replace("|", "\\|").replace("`", "'")
            print(f"| {name} | {label(r)} | failed: `{err}` | | | | |")
            continue
        cost = ""
        if r["gradient_checkpointing"] and r["row"].split("+")[0] in ok:
            cost = ratio(r["s_per_step"], ok[r["row"].split("+")[0]]["s_per_step"])
        print(f"| {name} | {label(r)} | {r['peak_rss_mib']} | {ratio(r['peak_rss_mib'], f32)} | "
              f"{r['tokens_per_second']} | {r['s_per_step']} | {cost} |")
        if "note" in r:
            notes.append(f"{name} {label(r)}: {r['note']}")
    if "f32" in ok and "peft" in ok:
        a, p = ok["f32"], ok["peft"]
        notes.append(f"{names.get(model, model)}: our f32 LoRA peak vs PEFT's: {ratio(a['peak_rss_mib'], p['peak_rss_mib'])}; "
                     f"tokens/s vs PEFT's: {ratio(a['tokens_per_second'], p['tokens_per_second'])} "
                     f"(torch {p['torch']}, transformers {p['transformers']}, peft {p['peft']}, {p['threads']} threads; "
                     f"PEFT's peak by the end of loading: {p['load_peak_rss_mib']} MiB); "
                     f"step-1 loss {a['losses'][0]} vs PEFT's {p['losses'][0]} (same tokens, same targets)")
if notes:
    print()
    for n in notes:
        print(f"- {n}")
PYEOF
cat "$RES/memory-$RUN.md"
