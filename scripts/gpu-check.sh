#!/usr/bin/env bash
# GPU checks, run on a GPU host from the repository root:
#   1. the kernel tests: every fused op against its unfused path, and flash attention against
#      eager attention with its gradients, on the GPU (tests/it/kernels.rs, `kernels::`);
#   2. the parity tests on the GPU: tiny Llama / Gemma 3 logits against transformers' fixtures,
#      f32 and bf16 (tests/it/model_parity.rs, `*_on_the_test_device`);
#   3. short training runs of the tiny models (CPU f32 vs CUDA f32 vs CUDA bf16, kernels on and
#      off, and 4-bit) and of a small random Llama with head_dim 64, whose bf16 runs go through the
#      flash-attention kernel (scripts/make_random_llama.py --shape small; needs torch, as the host
#      has); packed rows (data.packing) on both, through the flash kernel's packed form on the small
#      one; the step losses side by side, each CUDA run bounded against its CPU f32 run;
#   4. `lora-train bench` of the small Llama in bf16: its JSON, the memory pool's peak and the
#      driver's figure, and an MFU between 0 and 1.
# Everything goes to $OUT/gpu-check.txt (or bench-results/gpu-check.txt without $OUT).
#
# Needs dist/ from scripts/build-cuda.sh --tests on the host (the binary and the integration tests,
# which the host needs no Rust toolchain to run).
# Environment: LORA_TRAIN_CUDA_LIBS  a folder with libcublas.so.13, libcudart.so.13, libcurand.so.10
#              (default: the host PyTorch's site-packages/nvidia/cu13/lib)
#              GPU_CHECK_DEVICE  the device the "cuda:0" rows and tests run on [cuda:0]; "cpu" with
#              GPU_CHECK_DIST only tests this script here, with CPU builds of the two binaries
#              GPU_CHECK_DIST  the folder of lora-train-cuda and test-it [dist]
set -uo pipefail
cd "$(dirname "$0")/.."

OUTDIR="${OUT:-bench-results}"
mkdir -p "$OUTDIR"
REPORT="$OUTDIR/gpu-check.txt"
exec > >(tee "$REPORT") 2>&1

fail=0
DEV="${GPU_CHECK_DEVICE:-cuda:0}"
DIST="${GPU_CHECK_DIST:-dist}"
note() { echo; echo "== $*"; }

unpack() {  # name -> path of the executable
    local f="$DIST/$1"
    if [ ! -x "$f" ] && [ -f "$f.xz" ]; then
        xz -dkf "$f.xz" && chmod +x "$f"
    fi
    [ -x "$f" ] || { echo "gpu-check.sh: no $f (run scripts/build-cuda.sh --tests here and carry dist/)"; exit 1; }
    echo "$f"
}

libs="${LORA_TRAIN_CUDA_LIBS:-}"
if [ "$DEV" = cpu ]; then
    libs=.
elif [ -z "$libs" ]; then
    libs="$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), "nvidia", "cu13", "lib"))' 2>/dev/null)"
fi
[ -d "$libs" ] || { echo "gpu-check.sh: no CUDA 13 libraries found (set LORA_TRAIN_CUDA_LIBS)"; exit 1; }
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

BIN="$(unpack lora-train-cuda)" || exit 1
ITEST="$(unpack test-it)" || exit 1

note "host"
date -u
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || true
git rev-parse --short HEAD 2>/dev/null || true

note "1. kernel tests on $DEV (fused vs unfused, f32 and bf16; flash attention vs eager)"
LORA_TRAIN_TEST_DEVICE=$DEV "$ITEST" --test-threads=1 kernels:: || fail=1

note "2. parity tests on $DEV (logits against transformers, f32 and bf16)"
LORA_TRAIN_TEST_DEVICE=$DEV "$ITEST" --test-threads=1 on_the_test_device || fail=1

note "3. short training runs: tiny models (head_dim 16, unfused attention) and a small Llama (head_dim 64, flash attention)"
RUNS="$(mktemp -d)"
job() {  # name source -> job file
    cat >"$RUNS/$1.toml" <<EOF
[model]
source = "$2"
device = "cpu"
[lora]
r = 8
alpha = 16
target_modules = "all-linear"
[data]
train = "$PWD/tests/fixtures/chats.jsonl"
max_seq_len = 128
shuffle = false
[train]
max_steps = 12
micro_batch_size = 3
grad_accum = 1
lr = 5e-3
seed = 7
eval_every = 0
save_every = 0
[output]
dir = "$RUNS/$1"
EOF
    echo "$RUNS/$1.toml"
}
# Rows "device dtype variant kernels bound": the bound is the largest relative loss difference from
# the model's CPU f32 run allowed over the 12 steps.
TINY_ROWS=("cpu f32 none on 0" "cuda:0 f32 none on 2e-3" "cuda:0 f32 none off 2e-3"
           "cuda:0 bf16 none on 5e-2" "cuda:0 bf16 none off 5e-2" "cuda:0 bf16 nf4 on 1.5e-1"
           "cuda:0 bf16 nf4+ckpt on 1.5e-1" "cpu f32 packed on 0" "cuda:0 f32 packed on 2e-3")
# Packed rows (data.packing, rows of up to 400 tokens) follow the CPU f32 packed run; on the small
# model they go through the flash kernel's packed (segment starts) form.
# The small model: bf16 on CUDA runs the flash-attention kernel inside the model, plain and under
# checkpointing (whose replay reuses the stashed attention output and log-sum-exp).
SMALL_ROWS=("cpu f32 none on 0" "cuda:0 bf16 none on 5e-2" "cuda:0 bf16 none off 5e-2"
            "cuda:0 bf16 ckpt on 5e-2" "cuda:0 bf16 nf4+ckpt on 1.5e-1"
            "cpu f32 packed on 0" "cuda:0 bf16 packed on 5e-2" "cuda:0 bf16 packed+ckpt on 5e-2")
SMALL="$RUNS/small-llama"
if ! python3 scripts/make_random_llama.py --shape small --out "$SMALL" >"$RUNS/make-small.log" 2>&1; then
    fail=1
    echo "make_random_llama.py --shape small failed: $(tail -n 3 "$RUNS/make-small.log" | tr '\n' ' ')"
fi
: >"$RUNS/expected.txt"
train_rows() {  # model source row...
    local model="$1" src="$2" cfg row dev dtype variant kern bound name
    shift 2
    cfg="$(job "$model" "$src")"
    for row in "$@"; do
        read -r dev dtype variant kern bound <<<"$row"
        name="$model-${dev/:/}-$dtype-$variant-kernels-$kern"
        ref="$model-cpu-f32-none-kernels-on"
        case "$variant" in packed*) ref="$model-cpu-f32-packed-kernels-on" ;; esac
        [ "$dev" = cpu ] || echo "$name $ref $bound" >>"$RUNS/expected.txt"
        args=(--config "$cfg" --set "model.device=${dev/cuda:0/$DEV}" --set "model.dtype=$dtype" --set "output.dir=$RUNS/$name" --no-report)
        case "$variant" in
            nf4) args+=(--set model.quantize=nf4) ;;
            ckpt) args+=(--set train.gradient_checkpointing=true) ;;
            nf4+ckpt) args+=(--set model.quantize=nf4 --set train.gradient_checkpointing=true) ;;
            packed) args+=(--set data.packing=true --set data.max_seq_len=400) ;;
            packed+ckpt) args+=(--set data.packing=true --set data.max_seq_len=400 --set train.gradient_checkpointing=true) ;;
        esac
        if LORA_TRAIN_KERNELS="$kern" "$BIN" "${args[@]}" >"$RUNS/$name.log" 2>&1; then
            losses="$(python3 -c 'import json,sys; print(" ".join("%.4f" % json.loads(l)["loss"] for l in open(sys.argv[1]) if "tokens_per_second" in l))' "$RUNS/$name/metrics.jsonl" 2>&1)"
            printf '%-52s %s\n' "$name" "$losses"
        else
            fail=1
            printf '%-52s FAILED: %s\n' "$name" "$(tail -n 3 "$RUNS/$name.log" | tr '\n' ' ')"
        fi
    done
}
train_rows tiny-llama "$PWD/tests/fixtures/tiny-llama" "${TINY_ROWS[@]}"
train_rows tiny-gemma3 "$PWD/tests/fixtures/tiny-gemma3" "${TINY_ROWS[@]}"
train_rows small-llama "$SMALL" "${SMALL_ROWS[@]}"
python3 - "$RUNS" <<'PYEOF' || fail=1
# Every CUDA run must follow its model's CPU f32 run (packed runs: the packed one) within its bound.
import json, os, sys
runs = sys.argv[1]
def losses(name):
    p = os.path.join(runs, name, "metrics.jsonl")
    if not os.path.exists(p):
        return None
    return [json.loads(l)["loss"] for l in open(p) if "tokens_per_second" in l]
bad = 0
for line in open(os.path.join(runs, "expected.txt")):
    name, ref_name, bound = line.split()
    tol = float(bound)
    ref = losses(ref_name)
    got = losses(name)
    if not ref or not got:
        print(f"{name}: {'no CPU reference run' if not ref else 'no run'}"); bad = 1; continue
    worst = max(abs(a - b) / max(abs(b), 1e-6) for a, b in zip(got, ref))
    ok = worst <= tol and len(got) == len(ref)
    bad |= not ok
    print(f"{name}: worst relative loss difference vs CPU f32 {worst:.2e} (bound {tol:g}) {'ok' if ok else 'FAIL'}")
sys.exit(bad)
PYEOF

note "4. lora-train bench on $DEV (the small Llama, synthetic rows): its JSON, the pool's peak, MFU"
bench_dtype=bf16
[ "$DEV" = cpu ] && bench_dtype=f32
if "$BIN" bench --config "$RUNS/small-llama.toml" --set "model.device=$DEV" --set "model.dtype=$bench_dtype" \
        --synthetic --seq 256 --batch 2 --steps 3 --warmup 1 --json >"$RUNS/bench.json" 2>"$RUNS/bench.log"; then
    python3 - "$RUNS/bench.json" "$DEV" <<'PYEOF' || fail=1
# On CUDA the pool's peak and the driver's figure must be there; MFU must be a fraction.
import json, sys
v = json.load(open(sys.argv[1]))
keys = ["device", "dtype", "tokens_per_second", "step_time_p50_s", "peak_rss_mib", "peak_gpu_mib",
        "gpu_driver_used_mib", "estimated_peak_mib", "peak_tflops", "mfu", "hfu"]
print(" ".join(f"{k}={v.get(k)}" for k in keys))
bad = not (v["tokens_per_second"] > 0 and 0 < v["mfu"] <= 1.05 and v["hfu"] >= v["mfu"])
if sys.argv[2] != "cpu":
    bad |= not (v["peak_gpu_mib"] and v["gpu_driver_used_mib"])
print("bench:", "FAIL" if bad else "ok")
sys.exit(bad)
PYEOF
else
    fail=1
    echo "bench FAILED: $(tail -n 3 "$RUNS/bench.log" | tr '\n' ' ')"
fi

note "result"
if [ "$fail" = 0 ]; then echo "gpu-check: all passed"; else echo "gpu-check: FAILURES above"; fi
exit $fail
