#!/usr/bin/env bash
# The CUDA binary on a machine without a GPU driver: it starts, `doctor` reports, `device = auto`
# trains the tiny Llama on the CPU with the same losses as the CPU build, and `cuda:0` is a clear
# error naming the library and the variable.
#
#   scripts/cuda-cpu-smoke.sh [CUDA_BIN [CPU_BIN]]
#
# Without CUDA_BIN, the binary is brought up to date first with scripts/build-cuda.sh (an
# incremental build) when the CUDA root and target/cuda are both cached here; when they are not,
# it exits 0 with a "skipped" line saying why (a cold CUDA build compiles candle's kernels with
# nvcc: about 10 minutes on 2 idle cores, far more on a busy machine). CPU_BIN defaults to
# target/release/lora-train (built here if missing). A machine with a driver skips too: the
# check is for machines without one.
set -euo pipefail
cd "$(dirname "$0")/.."
CUDA_BIN="${1:-}"
CPU_BIN="${2:-}"
die() { echo "cuda-cpu-smoke.sh: FAILED: $*" >&2; exit 1; }

if ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1'; then
    echo "cuda-cpu-smoke.sh: skipped: this machine has a CUDA driver; the check is for machines without one"
    exit 0
fi
if [ -z "$CUDA_BIN" ]; then
    root="${LORA_TRAIN_CUDA_ROOT:-$HOME/.cache/lora-train/cuda-13.0}"
    target="${CUDA_TARGET_DIR:-target/cuda}"
    if [ ! -x "$root/bin/nvcc" ] || [ ! -d "$target/release" ]; then
        echo "cuda-cpu-smoke.sh: skipped: no cached CUDA build here (needs the CUDA root $root and $target/release from scripts/build-cuda.sh)"
        exit 0
    fi
    scripts/build-cuda.sh >&2 || die "scripts/build-cuda.sh"
    CUDA_BIN="$target/release/lora-train"
fi
[ -x "$CUDA_BIN" ] || die "no CUDA binary at $CUDA_BIN"
if [ -z "$CPU_BIN" ]; then
    cargo build --release --locked --bin lora-train >&2
    CPU_BIN=target/release/lora-train
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# No library folder: the point is a machine with nothing CUDA on it.
unset LORA_TRAIN_CUDA_LIBS PYTHON LD_LIBRARY_PATH

"$CUDA_BIN" --help >/dev/null || die "--help"
"$CUDA_BIN" doctor --json >"$work/doctor.json" || die "doctor --json"
grep -q '"built": true' "$work/doctor.json" || die "doctor does not report a CUDA build"
grep -q '"driver": null' "$work/doctor.json" || die "doctor reports a driver on a machine without one"

cat >"$work/job.toml" <<TOML
[model]
source = "$PWD/tests/fixtures/tiny-llama"
device = "auto"
[lora]
r = 4
alpha = 8
target_modules = "all-linear"
[data]
train = "$PWD/tests/fixtures/chats.jsonl"
max_seq_len = 128
[train]
max_steps = 4
micro_batch_size = 2
lr = 1e-2
TOML
"$CUDA_BIN" --config "$work/job.toml" --set output.dir="$work/cuda" --no-report >/dev/null 2>"$work/cuda.log" ||
    { cat "$work/cuda.log" >&2; die "training with the CUDA binary"; }
grep -q "no CUDA driver found, using cpu" "$work/cuda.log" || { cat "$work/cuda.log" >&2; die "no 'no CUDA driver found, using cpu' line"; }
"$CPU_BIN" --config "$work/job.toml" --set output.dir="$work/cpu" --no-report >/dev/null 2>"$work/cpu.log" ||
    { cat "$work/cpu.log" >&2; die "training with the CPU binary"; }
losses() { grep -o '"loss":[^,}]*' "$1/metrics.jsonl"; }
[ "$(losses "$work/cuda")" = "$(losses "$work/cpu")" ] ||
    die "losses differ: CUDA binary $(losses "$work/cuda" | tr '\n' ' '), CPU binary $(losses "$work/cpu" | tr '\n' ' ')"

if "$CUDA_BIN" --config "$work/job.toml" --set output.dir="$work/gpu" --set model.device=cuda:0 2>"$work/gpu.log"; then
    die "device = cuda:0 ran without a driver"
fi
grep -q "libcuda.so.1" "$work/gpu.log" && grep -q "LORA_TRAIN_CUDA_LIBS" "$work/gpu.log" ||
    { cat "$work/gpu.log" >&2; die "the cuda:0 error does not name libcuda.so.1 and LORA_TRAIN_CUDA_LIBS"; }
echo "cuda-cpu-smoke.sh: ok: the CUDA binary starts, reports, trains on the CPU with the CPU build's losses ($(losses "$work/cuda" | wc -l) steps), and names what cuda:0 lacks"
