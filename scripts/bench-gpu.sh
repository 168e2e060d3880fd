#!/usr/bin/env bash
# GPU benchmark: lora-train's CUDA build against PyTorch + transformers (sdpa) + PEFT on
# the same GPU, the same batches, in the same session. Models: random-weight Llama-3.2-1B and
# Llama-3.1-8B shapes in HF layout (scripts/make_random_llama.py, written once per machine under
# $BENCH_WORK). Job: seq 2048, LoRA r=16, alpha 32, all seven projections, dropout 0, AdamW lr 1e-4,
# bf16 base; rows: bf16 LoRA and 4-bit QLoRA (nf4), each with and without gradient checkpointing,
# each next to PEFT's same row (scripts/bench_gpu_peft.py, which also holds the FLOPs formula).
# Data: scripts/make_bench_data.py conversations sized so that every one is cut to exactly $BENCH_SEQ
# tokens; our tokenization (`lora-train inspect`) is fed to PEFT as ids + labels.
#
#   scripts/bench-gpu.sh                   # on a GPU host with PyTorch (CUDA 13), transformers, peft
#   BENCH_MODELS=8b BENCH_ROWS="bf16 peft-bf16" scripts/bench-gpu.sh
#   BENCH_DRY_RUN=1 scripts/bench-gpu.sh   # print the commands, run nothing
#   scripts/bench-gpu.sh --fetch-bnb       # here (pip and internet): bitsandbytes for CUDA 13.0 into
#                                          # bench-results/bnb, to carry to a host that lacks it
#
# On a host without a Rust toolchain, bring dist/lora-train-cuda.xz (scripts/build-cuda.sh) and,
# for the q4 rows, bench-results/bnb; BENCH_BUDGET_S bounds a call that has a time limit, e.g.
#   BENCH_MODELS=1b BENCH_BUDGET_S=500 scripts/bench-gpu.sh
#
# Environment (defaults in brackets):
#   BENCH_MODELS        "1b", "8b" and/or "tiny" (2 layers, a smoke test) ["1b 8b"]
#   BENCH_ROWS          rows, in order ["bf16 peft-bf16 bf16+ckpt peft-bf16+ckpt q4 peft-q4 q4+ckpt peft-q4+ckpt"]
#   BENCH_STEPS, BENCH_WARMUP   optimizer steps per row, and how many leading ones are not timed [6, 2]
#   BENCH_SEQ           data.max_seq_len, tokens per conversation [2048]
#   BENCH_MICRO_BATCH_1B, BENCH_MICRO_BATCH_8B, BENCH_MICRO_BATCH_TINY   micro-batch sizes [4, 1, 1]
#   BENCH_QUANT         model.quantize of the q4 rows (PEFT's q4 rows are bitsandbytes nf4) [nf4]
#   BENCH_SET           extra "key=value ..." --set overrides for our runs []
#   BENCH_BUDGET_S      seconds for the whole invocation; rows that cannot start in time are
#                       recorded as skipped [560]
#   BENCH_ROW_TIMEOUT_S the longest one row may run before it is stopped [300]
#   BENCH_DEVICE        model.device and PEFT's device; "cpu" only for testing the script [cuda:0]
#   BENCH_WORK          models, data and runs [/tmp/lora-train-bench-gpu]
#   BENCH_PYTHONPATH    prepended to PYTHONPATH for PEFT (default: bench-results/bnb when present)
#   LORA_TRAIN          our binary [dist/lora-train-cuda, else unpacked from dist/lora-train-cuda.xz]
#   LORA_TRAIN_CUDA_LIBS  LD_LIBRARY_PATH for it [the CUDA 13 libraries of PYTHON's nvidia packages]
#   PYTHON              the Python with torch, transformers and peft [python3]
#   OUT                 where results go [bench-results/gpu]
# Writes bench-gpu.jsonl (one JSON line per row, appended), bench-gpu.md (the table of this run,
# rewritten after every row) and bench-gpu.log to $OUT. A row that fails (out of memory, a
# timeout, a missing package) becomes a row with its error, and the script goes on.
set -uo pipefail
cd "$(dirname "$0")/.."

die() { echo "bench-gpu.sh: $*" >&2; exit 1; }

if [ "${1:-}" = "--fetch-bnb" ]; then
    # bitsandbytes' wheel carries libraries for every CUDA; the host's torch is CUDA 13 (13.0 or a
    # later 13.x: bitsandbytes loads the library named after torch.version.cuda), so only the 13.x
    # ones (and the CPU fallback) are kept: about 9 MB instead of 150.
    ver="${BNB_VERSION:-0.50.2}"
    tmp="$(mktemp -d)"
    "${PYTHON:-python3}" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_24_x86_64 -d "$tmp" "bitsandbytes==$ver" \
        || die "pip download bitsandbytes==$ver failed"
    rm -rf bench-results/bnb
    mkdir -p bench-results/bnb
    unzip -q "$tmp"/bitsandbytes-*.whl -d bench-results/bnb || die "cannot unpack the bitsandbytes wheel"
    find bench-results/bnb/bitsandbytes -name 'libbitsandbytes_*.so' ! -name '*_cuda13?.so' ! -name '*_cpu.so' -delete
    rm -rf "$tmp"
    echo "bench-results/bnb: bitsandbytes $ver ($(du -sh bench-results/bnb | cut -f1)); carry \"bench-results/bnb\""
    exit 0
fi

ROWS_DEFAULT="bf16 peft-bf16 bf16+ckpt peft-bf16+ckpt q4 peft-q4 q4+ckpt peft-q4+ckpt"
MODELS="${BENCH_MODELS:-1b 8b}"
ROWS="${BENCH_ROWS:-$ROWS_DEFAULT}"
STEPS="${BENCH_STEPS:-6}"
WARMUP="${BENCH_WARMUP:-2}"
SEQ="${BENCH_SEQ:-2048}"
QUANT="${BENCH_QUANT:-nf4}"
SETS="${BENCH_SET:-}"
BUDGET="${BENCH_BUDGET_S:-560}"
ROW_TIMEOUT="${BENCH_ROW_TIMEOUT_S:-300}"
DEVICE="${BENCH_DEVICE:-cuda:0}"
WORK="${BENCH_WORK:-/tmp/lora-train-bench-gpu}"
PY="${PYTHON:-python3}"
RES="${OUT:-bench-results/gpu}"
DRY="${BENCH_DRY_RUN:-0}"
RUN="$(date -u +%Y%m%dT%H%M%SZ)"
FIXTURE=tests/fixtures/tiny-llama
TARGETS='["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]'

mbs_of() {
    case "$1" in
        1b) echo "${BENCH_MICRO_BATCH_1B:-4}" ;;
        8b) echo "${BENCH_MICRO_BATCH_8B:-1}" ;;
        *) echo "${BENCH_MICRO_BATCH_TINY:-1}" ;;
    esac
}

for v in STEPS WARMUP SEQ BUDGET ROW_TIMEOUT; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a whole number, not '${!v}'"
done
for m in $MODELS; do
    case "$m" in 1b|8b|tiny) ;; *) die "unknown model '$m' in BENCH_MODELS (1b, 8b, tiny)" ;; esac
    [[ "$(mbs_of "$m")" =~ ^[1-9][0-9]*$ ]] || die "the micro-batch size of $m must be a positive whole number"
done
for r in $ROWS; do
    case "$r" in bf16|bf16+ckpt|q4|q4+ckpt|peft-bf16|peft-bf16+ckpt|peft-q4|peft-q4+ckpt) ;;
        *) die "unknown row '$r' in BENCH_ROWS ($ROWS_DEFAULT)" ;; esac
done

# The command line that reproduces this run: every setting that differs from the defaults.
CMDLINE="BENCH_MODELS=\"$MODELS\""
[ "$ROWS" != "$ROWS_DEFAULT" ] && CMDLINE+=" BENCH_ROWS=\"$ROWS\""
[ "$STEPS" != 6 ] && CMDLINE+=" BENCH_STEPS=$STEPS"
[ "$WARMUP" != 2 ] && CMDLINE+=" BENCH_WARMUP=$WARMUP"
[ "$SEQ" != 2048 ] && CMDLINE+=" BENCH_SEQ=$SEQ"
[ -n "${BENCH_MICRO_BATCH_1B:-}" ] && CMDLINE+=" BENCH_MICRO_BATCH_1B=$BENCH_MICRO_BATCH_1B"
[ -n "${BENCH_MICRO_BATCH_8B:-}" ] && CMDLINE+=" BENCH_MICRO_BATCH_8B=$BENCH_MICRO_BATCH_8B"
[ -n "${BENCH_MICRO_BATCH_TINY:-}" ] && CMDLINE+=" BENCH_MICRO_BATCH_TINY=$BENCH_MICRO_BATCH_TINY"
[ "$QUANT" != nf4 ] && CMDLINE+=" BENCH_QUANT=$QUANT"
[ -n "$SETS" ] && CMDLINE+=" BENCH_SET=\"$SETS\""
[ "$DEVICE" != cuda:0 ] && CMDLINE+=" BENCH_DEVICE=$DEVICE"
CMDLINE+=" scripts/bench-gpu.sh"

# Prints the command (dry run) or runs it.
run() {
    if [ "$DRY" = 1 ]; then printf '%q ' "$@" >&2; echo >&2; else "$@"; fi
}

mkdir -p "$RES" "$WORK" || die "cannot create $RES and $WORK"
WORK="$(cd "$WORK" && pwd)"
JSONL="$RES/bench-gpu.jsonl"
if [ "$DRY" != 1 ]; then
    exec 2> >(tee -a "$RES/bench-gpu.log" >&2)
fi
echo "$(date -u +%T) bench-gpu.sh run $RUN: $CMDLINE" >&2

# Our binary: as given, or dist/lora-train-cuda, or unpacked from the carried .xz.
if [ -n "${LORA_TRAIN:-}" ]; then
    BIN="$LORA_TRAIN"
elif [ -x dist/lora-train-cuda ]; then
    BIN="$PWD/dist/lora-train-cuda"
elif [ -f dist/lora-train-cuda.xz ]; then
    BIN="$WORK/lora-train-cuda"
    if [ "$DRY" != 1 ] && { [ ! -x "$BIN" ] || [ dist/lora-train-cuda.xz -nt "$BIN" ]; }; then
        echo "$(date -u +%T) unpacking dist/lora-train-cuda.xz to $BIN" >&2
        if command -v xz >/dev/null; then
            xz -dc dist/lora-train-cuda.xz >"$BIN.tmp"
        else
            "$PY" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' \
                dist/lora-train-cuda.xz >"$BIN.tmp"
        fi || die "cannot unpack dist/lora-train-cuda.xz"
        chmod +x "$BIN.tmp" && mv "$BIN.tmp" "$BIN"
    fi
elif [ "$DRY" = 1 ]; then
    BIN="$PWD/dist/lora-train-cuda"
    echo "bench-gpu.sh: (dry run) no dist/lora-train-cuda or dist/lora-train-cuda.xz yet" >&2
else
    die "no dist/lora-train-cuda or dist/lora-train-cuda.xz: build it with scripts/build-cuda.sh and carry" \
        "dist/lora-train-cuda.xz to this host, or set LORA_TRAIN"
fi

LIBS=""
if [ "$DEVICE" != cpu ]; then
    if [ -n "${LORA_TRAIN_CUDA_LIBS:-}" ]; then
        LIBS="$LORA_TRAIN_CUDA_LIBS"
    elif [ "$DRY" != 1 ]; then
        LIBS="$("$PY" scripts/bench_gpu_peft.py libdir)" || die "no CUDA 13 libraries for $BIN (set LORA_TRAIN_CUDA_LIBS)"
    fi
    command -v nvidia-smi >/dev/null || echo "bench-gpu.sh: no nvidia-smi; GPU memory is read through pynvml if it is installed, else not at all" >&2
fi
LDPATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [ "$DRY" != 1 ]; then
    [ -x "$BIN" ] || die "$BIN is not an executable"
    if ! out="$(env LD_LIBRARY_PATH="$LDPATH" "$BIN" --help 2>&1 >/dev/null)"; then
        die "$BIN does not start (LD_LIBRARY_PATH=$LDPATH): $(echo "$out" | tail -n 3)"
    fi
fi

PEFT_PATH="${BENCH_PYTHONPATH:-}"
[ -z "$PEFT_PATH" ] && [ -d bench-results/bnb/bitsandbytes ] && PEFT_PATH="$PWD/bench-results/bnb"
PEFT_ENV=(PYTHONUNBUFFERED=1)
[ -n "$PEFT_PATH" ] && PEFT_ENV+=("PYTHONPATH=$PEFT_PATH${PYTHONPATH:+:$PYTHONPATH}")
PEFT_ERR=""
case " $ROWS " in *" peft-"*)
    [ "$DRY" = 1 ] || "$PY" -c "import torch, transformers, peft" 2>/dev/null \
        || PEFT_ERR="PYTHON=$PY cannot import torch, transformers and peft" ;;
esac

PEAK="$WORK/peak-$RUN.json"
if [ "$DEVICE" != cpu ]; then
    echo "$(date -u +%T) bf16 matmul peak" >&2
    if [ "$DRY" = 1 ]; then run "$PY" scripts/bench_gpu_peft.py peak; else
        "$PY" scripts/bench_gpu_peft.py peak >"$PEAK" || echo "bench-gpu.sh: the matmul peak failed; no MFU" >&2
        cat "$PEAK" >&2
    fi
fi

# Appends a row. Args: model dir row impl quantize ckpt rc command log result mem timeout [error]
collect() {
    local ck=()
    [ "$6" = true ] && ck=(--checkpointing)
    "$PY" scripts/bench_gpu_peft.py collect --out "$JSONL" --run "$RUN" --model-key "$1" --model-dir "$2" \
        --row "$3" --impl "$4" --quantize "$5" "${ck[@]}" --rc "$7" --command "$8" --cmdline "$CMDLINE" \
        --log "$9" --result "${10}" --mem "${11}" --timeout "${12}" --error "${13:-}" --peak "$PEAK" \
        --steps "$STEPS" --warmup "$WARMUP" --seq "$SEQ" --micro-batch "$MBS"
    "$PY" scripts/bench_gpu_peft.py table "$JSONL" --run "$RUN" >"$RES/bench-gpu.md.tmp" \
        && mv "$RES/bench-gpu.md.tmp" "$RES/bench-gpu.md"
}

# Seconds the next row may run, or 0 when the budget is spent.
row_limit() {
    local left=$((BUDGET - SECONDS - 15)) t=$ROW_TIMEOUT
    [ "$left" -lt "$t" ] && t=$left
    [ "$t" -lt 30 ] && t=0
    echo "$t"
}

# Runs a command in the background under the memory watcher. Args: stdout stderr mem timeout cmd...
# (stderr "" sends it to stdout's file). Returns the command's exit status.
launch() {
    local outf=$1 errf=$2 mem=$3 t=$4 base pid wpid rc
    shift 4
    base="$("$PY" scripts/bench_gpu_peft.py gpu-used 2>/dev/null)"
    if [ -z "$errf" ]; then "$@" >"$outf" 2>&1 & else "$@" >"$outf" 2>"$errf" & fi
    pid=$!
    "$PY" scripts/bench_gpu_peft.py watch --pid "$pid" --out "$mem" --timeout "$t" ${base:+--baseline "$base"} &
    wpid=$!
    wait "$pid"
    rc=$?
    wait "$wpid"
    return "$rc"
}

tail_log() {  # the end of a failed row's log, into bench-gpu.log
    [ -s "$1" ] && tail -n 15 "$1" | sed 's/^/    | /' >&2
}

run_ours() {  # model dir row quantize ckpt
    local model=$1 mdir=$2 row=$3 quant=$4 ckpt=$5
    local dir="$WORK/runs/$model-${row/+/-}-$RUN" t
    local args=(--config "$WORK/jobs/$model.toml" --set "output.dir=$dir")
    [ "$quant" != none ] && args+=(--set "model.quantize=$quant")
    [ "$ckpt" = true ] && args+=(--set "train.gradient_checkpointing=true")
    local kv
    for kv in $SETS; do args+=(--set "$kv"); done
    args+=(--no-report)
    local cmd="$BIN ${args[*]}"
    echo "$(date -u +%T) $model $row: $cmd" >&2
    [ "$DRY" = 1 ] && return
    t="$(row_limit)"
    if [ "$t" = 0 ]; then
        collect "$model" "$mdir" "$row" lora-train "$quant" "$ckpt" 1 "$cmd" "" "" "" 0 \
            "skipped: the BENCH_BUDGET_S=$BUDGET s budget is spent"
        return
    fi
    rm -rf "$dir"
    launch "$dir.log" "" "$dir.mem.json" "$t" env LD_LIBRARY_PATH="$LDPATH" "$BIN" "${args[@]}"
    local rc=$?
    [ "$rc" != 0 ] && tail_log "$dir.log"
    collect "$model" "$mdir" "$row" lora-train "$quant" "$ckpt" "$rc" "$cmd" "$dir.log" "$dir/metrics.jsonl" \
        "$dir.mem.json" "$t"
}

run_peft() {  # model dir row quantize ckpt tokens
    local model=$1 mdir=$2 row=$3 quant=$4 ckpt=$5 tokens=$6
    local base="$WORK/runs/$model-${row/+/-}-$RUN" t
    local args=(scripts/bench_gpu_peft.py train --model "$mdir" --tokens "$tokens" --steps "$STEPS"
                --warmup "$WARMUP" --batch-size "$MBS" --seq-len "$SEQ" --device "$DEVICE")
    [ "$quant" != none ] && args+=(--quantize nf4)
    [ "$ckpt" = true ] && args+=(--checkpointing)
    local cmd="${PEFT_ENV[*]} $PY ${args[*]}"
    echo "$(date -u +%T) $model $row: $cmd" >&2
    [ "$DRY" = 1 ] && return
    t="$(row_limit)"
    if [ -n "$PEFT_ERR" ] || [ "$t" = 0 ]; then
        local why="${PEFT_ERR:-skipped: the BENCH_BUDGET_S=$BUDGET s budget is spent}"
        collect "$model" "$mdir" "$row" peft "$quant" "$ckpt" 1 "$cmd" "" "" "" 0 "$why"
        return
    fi
    launch "$base.json" "$base.log" "$base.mem.json" "$t" env "${PEFT_ENV[@]}" "$PY" "${args[@]}"
    local rc=$?
    [ "$rc" != 0 ] && tail_log "$base.log"
    collect "$model" "$mdir" "$row" peft "$quant" "$ckpt" "$rc" "$cmd" "$base.log" "$base.json" "$base.mem.json" "$t"
}

mkdir -p "$WORK/runs" "$WORK/jobs" "$WORK/models"
for model in $MODELS; do
    MBS="$(mbs_of "$model")"
    mdir="$WORK/models/$model"
    echo "$(date -u +%T) $model: random weights in $mdir" >&2
    run "$PY" scripts/make_random_llama.py --shape "$model" --out "$mdir" >&2 \
        || die "make_random_llama.py --shape $model failed"
    count=$((STEPS * MBS))
    [ "$count" -lt 16 ] && count=16
    data="$WORK/data-seq$SEQ-n$count"
    # Half as many words as tokens: with the fixture's small vocabulary that is ~2.2 x SEQ tokens
    # per conversation and a ~0.6 x SEQ-token reply, so each is cut from the left to exactly SEQ.
    if [ ! -s "$data/tokens.jsonl" ]; then
        run "$PY" scripts/make_bench_data.py data --seq $((SEQ / 2)) --count "$count" --out "$data" >&2 \
            || die "make_bench_data.py data failed"
        # The tokenizer is the fixture's (make_random_llama.py copies it), so the tiny fixture model
        # tokenizes exactly as the benchmark models do, without loading them once per conversation.
        run env LD_LIBRARY_PATH="$LDPATH" "$PY" scripts/make_bench_data.py tokens --bin "$BIN" --model "$FIXTURE" \
            --data "$data/train.jsonl" --out "$data/tokens.jsonl" >&2 || die "make_bench_data.py tokens failed"
    fi
    if [ "$DRY" != 1 ]; then
        for f in tokenizer.json tokenizer_config.json; do
            cmp -s "$mdir/$f" "$FIXTURE/$f" || die "$mdir/$f differs from $FIXTURE/$f: the tokens would not match"
        done
    fi
    cat >"$WORK/jobs/$model.toml" <<EOF
# Written by scripts/bench-gpu.sh (run $RUN); rows override model.quantize, train.gradient_checkpointing
# and output.dir with --set.
[model]
source = "$mdir"
dtype = "bf16"
device = "$DEVICE"
quantize = "none"

[lora]
r = 16
alpha = 32
dropout = 0.0
target_modules = $TARGETS

[data]
train = "$data/train.jsonl"
shuffle = false
max_seq_len = $SEQ
loss_on = "last_assistant"

[train]
max_steps = $STEPS
micro_batch_size = $MBS
grad_accum = 1
lr = 1e-4
scheduler = "constant"
weight_decay = 0.0
max_grad_norm = 1.0
seed = 42
eval_every = 0
save_every = 0
gradient_checkpointing = false

[output]
dir = "$WORK/runs/$model"
EOF
    for row in $ROWS; do
        ckpt=false
        [ "${row%+ckpt}" != "$row" ] && ckpt=true
        kind="${row%+ckpt}"
        case "$kind" in
            bf16) run_ours "$model" "$mdir" "$row" none "$ckpt" ;;
            q4) run_ours "$model" "$mdir" "$row" "$QUANT" "$ckpt" ;;
            peft-bf16) run_peft "$model" "$mdir" "$row" none "$ckpt" "$data/tokens.jsonl" ;;
            peft-q4) run_peft "$model" "$mdir" "$row" nf4 "$ckpt" "$data/tokens.jsonl" ;;
        esac
    done
done

[ "$DRY" = 1 ] && exit 0
echo "$(date -u +%T) done in $SECONDS s" >&2
cat "$RES/bench-gpu.md" 2>/dev/null
