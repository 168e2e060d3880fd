#!/usr/bin/env bash
# A lent GPU's session in one command, the parts in order of what matters most, each started only
# while the budget lasts, so that a call cut short still reports the earlier parts:
#   smoke     the kernel and logit-parity tests on cuda:0 (gpu-check.sh's parts 1 and 2)
#   8b        Llama-3.1-8B shape, bf16 LoRA, ours and PEFT's (bench-gpu.sh rows bf16 peft-bf16)
#   1b        Llama-3.2-1B shape, the same rows
#   q4        the 8B shape in QLoRA nf4, ours and PEFT + bitsandbytes (rows q4 peft-q4)
#   phases    `lora-train bench` on the 8B job: where a step's time goes (forward/backward/update),
#             with the fused kernels on and off (GPU_RUN_PHASE_KERNELS)
#   profile   every kernel of one 1B step (micro-batch 1) under Nsight Compute, summed by name:
#             which kernels a step's time goes to (profile-kernels.csv, and the top 25 printed)
#   smollm    SmolLM2-135M on configs/quickstart.toml in bf16: the loss falls, the adapter exports
#   packing   `lora-train bench` of the same SmolLM2 job, unpacked (micro-batch 4) against packed
#             rows of up to 280 tokens (about as many conversations per step), real tokens/s
#   check     scripts/gpu-check.sh (its training runs against the CPU, and `bench`)
#
#   GPU_RUN_PARTS="smoke 8b 1b q4" GPU_RUN_BUDGET_S=480 scripts/gpu-run.sh
#
# Needs dist/ from `scripts/build-cuda.sh --tests`; the q4 rows, bench-results/bnb
# (`scripts/bench-gpu.sh --fetch-bnb`); smollm, models/smollm2-135m-instruct.Q4_1.gguf, or its
# pieces .gpu/smollm.gguf.* (`split -b`), joined and checked here. Writes run.log,
# bench-gpu.{jsonl,md,log}, bench-8b-kernels-*.json, profile-kernels.csv, bench-smollm-*.json and
# gpu-check.txt to $OUT (default bench-results/gpu).
set -uo pipefail
cd "$(dirname "$0")/.."

OUTDIR="${OUT:-bench-results/gpu}"
mkdir -p "$OUTDIR"
export OUT="$OUTDIR"
exec > >(tee -a "$OUTDIR/run.log") 2>&1
PARTS="${GPU_RUN_PARTS:-smoke 8b 1b q4 phases profile smollm packing check}"
BUDGET="${GPU_RUN_BUDGET_S:-480}"
WORK="${BENCH_WORK:-/tmp/lora-train-bench-gpu}"
DEV="${GPU_RUN_DEVICE:-cuda:0}"   # "cpu" only tries this script on a machine without a GPU
mkdir -p "$WORK"
SMOL=models/smollm2-135m-instruct.Q4_1.gguf
SMOL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
left() { echo $((BUDGET - SECONDS)); }
part() { echo; echo "== $(date -u +%T) +${SECONDS}s: $*"; }
# Whether $SMOL is there with the expected content.
have_smol() { [ "$(sha256sum "$SMOL" 2>/dev/null | cut -d' ' -f1)" = "$SMOL_SHA" ]; }
# One line of a `bench --json` result: label file keys...
show() {
    python3 -c 'import json,sys; v=json.load(open(sys.argv[2])); print(sys.argv[1], {k: v.get(k) for k in sys.argv[3:]})' \
        "$@" 2>&1 | tail -n 1
}
# Starts a part only with at least $1 seconds left; says so otherwise.
fits() {
    if [ "$(left)" -lt "$1" ]; then
        echo "-- skipped: $(left) s left, the part needs about $1 s"
        return 1
    fi
}

part "host"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader 2>&1
for f in lora-train-cuda test-it; do
    [ -x "dist/$f" ] || { [ -f "dist/$f.xz" ] && xz -dkf "dist/$f.xz" && chmod +x "dist/$f"; }
    [ -x "dist/$f" ] || { echo "gpu-run.sh: no dist/$f (scripts/build-cuda.sh --tests, carry dist)"; exit 1; }
done
LIBS="${LORA_TRAIN_CUDA_LIBS:-$(python3 scripts/bench_gpu_peft.py libdir 2>/dev/null)}"
[ "$DEV" = cpu ] && LIBS=.
[ -d "$LIBS" ] || { echo "gpu-run.sh: no CUDA 13 libraries (set LORA_TRAIN_CUDA_LIBS)"; exit 1; }
export LORA_TRAIN_CUDA_LIBS="$LIBS"
export LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
BIN="$PWD/dist/lora-train-cuda"
"$BIN" doctor 2>&1   # its first line names the commit the binary was built from

bench() {  # models rows seconds
    BENCH_MODELS="$1" BENCH_ROWS="$2" BENCH_BUDGET_S="$3" BENCH_ROW_TIMEOUT_S="${4:-240}" \
        BENCH_DEVICE="$DEV" LORA_TRAIN="$BIN" BENCH_WORK="$WORK" scripts/bench-gpu.sh 2>&1 | grep -v '^\s*$' | tail -n 6
}

for p in $PARTS; do
    case "$p" in
    smoke)
        part "smoke: kernel tests and logit parity on $DEV"
        fits 60 || continue
        LORA_TRAIN_TEST_DEVICE=$DEV timeout 150 dist/test-it --test-threads=1 kernels:: 2>&1 | tail -n 25
        LORA_TRAIN_TEST_DEVICE=$DEV timeout 90 dist/test-it --test-threads=1 on_the_test_device 2>&1 | tail -n 12
        ;;
    8b)
        part "8B bf16 LoRA against PEFT"
        fits 120 && bench 8b "bf16 peft-bf16" "$(left)"
        ;;
    1b)
        part "1B bf16 LoRA against PEFT"
        fits 60 && bench 1b "bf16 peft-bf16" "$(left)"
        ;;
    q4)
        part "8B QLoRA nf4 against PEFT + bitsandbytes"
        fits 100 && bench 8b "q4 peft-q4" "$(left)" 180
        ;;
    phases)
        part "8B bf16: a step's phases, fused kernels on and off"
        [ -f "$WORK/jobs/8b.toml" ] || { echo "-- no 8B job (the 8b part did not run)"; continue; }
        for k in ${GPU_RUN_PHASE_KERNELS:-on off}; do
            fits 50 || break
            LORA_TRAIN_KERNELS=$k timeout "$(( $(left) < 150 ? $(left) : 150 ))" "$BIN" bench \
                --config "$WORK/jobs/8b.toml" --steps 3 --warmup 1 --json \
                >"$OUTDIR/bench-8b-kernels-$k.json" 2>"$WORK/bench-8b-$k.log" \
                || tail -n 5 "$WORK/bench-8b-$k.log"
            show "kernels $k" "$OUTDIR/bench-8b-kernels-$k.json" tokens_per_second step_time_p50_s \
                peak_gpu_mib mfu phases
        done
        ;;
    profile)
        part "1B bf16 step under ncu: time per kernel"
        fits 90 || continue
        NCU="$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1)"
        [ -x "$NCU" ] || { echo "-- no ncu on this host"; continue; }
        # No rows: bench-gpu.sh only writes the 1B model, its data and its job.
        [ -f "$WORK/jobs/1b.toml" ] || bench 1b " " "$(left)"
        [ -f "$WORK/jobs/1b.toml" ] || { echo "-- no 1B job"; continue; }
        # Loading and one step (GPU time per kernel does not depend on warm-up); the phase split and
        # the matmul probe after it are cut off by --launch-count.
        timeout "$(( $(left) - 10 ))" "$NCU" --clock-control none --cache-control none \
            --metrics gpu__time_duration.sum --print-units base --csv --page raw --launch-count "${GPU_RUN_NCU_LAUNCHES:-8000}" \
            "$BIN" bench --config "$WORK/jobs/1b.toml" --set train.micro_batch_size=1 --steps 1 --warmup 0 \
            >"$WORK/ncu.csv" 2>"$WORK/ncu.log" || tail -n 3 "$WORK/ncu.log"
        python3 - "$WORK/ncu.csv" "$OUTDIR/profile-kernels.csv" <<'PYEOF'
# Sums gpu__time_duration by kernel name over every profiled launch; prints the top 25.
import csv, sys
rows = [l for l in open(sys.argv[1], encoding="utf-8", errors="replace") if l.startswith('"')]
tot, cnt = {}, {}
for r in csv.DictReader(rows):
    v = (r.get("gpu__time_duration.sum") or "").replace(",", "")
    try:
        ns = float(v)
    except ValueError:
        continue
    name = (r.get("Kernel Name") or "?")[:90]
    tot[name] = tot.get(name, 0.0) + ns
    cnt[name] = cnt.get(name, 0) + 1
all_ns = sum(tot.values())
with open(sys.argv[2], "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["kernel", "launches", "total_ms", "share"])
    for k in sorted(tot, key=tot.get, reverse=True):
        w.writerow([k, cnt[k], round(tot[k] / 1e6, 3), round(tot[k] / max(all_ns, 1), 4)])
print(f"{sum(cnt.values())} launches, {all_ns / 1e6:.1f} ms of kernel time (time units as ncu reports them)")
for k in sorted(tot, key=tot.get, reverse=True)[:25]:
    print(f"{tot[k] / max(all_ns, 1):6.1%} {cnt[k]:6d} x  {k}")
PYEOF
        ;;
    smollm)
        part "SmolLM2-135M, configs/quickstart.toml in bf16 on $DEV"
        fits 60 || continue
        if [ ! -f "$SMOL" ] && compgen -G ".gpu/smollm.gguf.*" >/dev/null; then
            mkdir -p models && cat .gpu/smollm.gguf.* >"$SMOL"
        fi
        have_smol || { echo "-- no $SMOL with the expected sha256"; continue; }
        run=/tmp/gpu-run-smollm
        rm -rf "$run" "$run-adapter"
        timeout "$(left)" "$BIN" --config configs/quickstart.toml --set model.device=$DEV \
            --set model.dtype=bf16 ${GPU_RUN_SMOLLM_SET:-} --set "output.dir=$run" --no-report >"$run.log" 2>&1 \
            || { echo "-- training failed:"; tail -n 8 "$run.log"; continue; }
        python3 - "$run/metrics.jsonl" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
steps = [r for r in rows if "tokens_per_second" in r]
val = [r for r in rows if "val_loss" in r]
first, last = sum(r["loss"] for r in steps[:5]) / 5, sum(r["loss"] for r in steps[-5:]) / 5
print(f"{len(steps)} steps; mean loss of the first 5 {first:.4f}, of the last 5 {last:.4f}; "
      f"val loss {' -> '.join('%.4f' % r['val_loss'] for r in val)}; "
      f"{sum(r['tokens_per_second'] for r in steps[2:]) / max(len(steps) - 2, 1):.0f} tok/s")
print("loss falls:", "ok" if last < first and val and val[-1]["val_loss"] < val[0]["val_loss"] else "FAIL")
PYEOF
        ckpt="$(ls -d "$run"/checkpoints/step-* 2>/dev/null | tail -n 1)"
        if "$BIN" export --checkpoint "$ckpt" --out "$run-adapter" >"$run-export.log" 2>&1; then
            echo "exported $ckpt:"; ls -l "$run-adapter"
        else
            echo "-- export failed:"; tail -n 5 "$run-export.log"
        fi
        ;;
    packing)
        part "SmolLM2 bf16: unpacked against packed, about 4 conversations per step"
        have_smol || { echo "-- no $SMOL with the expected sha256"; continue; }
        for v in unpacked packed; do
            fits 40 || break
            extra=()
            [ "$v" = packed ] && extra=(--set data.packing=true --set data.max_seq_len=280 --set train.micro_batch_size=1)
            timeout "$(( $(left) < 120 ? $(left) : 120 ))" "$BIN" bench --config configs/quickstart.toml \
                --set "model.device=$DEV" --set model.dtype=bf16 "${extra[@]}" --steps 20 --warmup 3 --json \
                >"$OUTDIR/bench-smollm-$v.json" 2>"$WORK/bench-smollm-$v.log" || tail -n 5 "$WORK/bench-smollm-$v.log"
            show "$v" "$OUTDIR/bench-smollm-$v.json" real_tokens_per_second padded_tokens_per_second \
                step_time_p50_s peak_gpu_mib phases
        done
        ;;
    check)
        part "scripts/gpu-check.sh"
        fits 120 || continue
        GPU_CHECK_DEVICE="$DEV" timeout "$(left)" scripts/gpu-check.sh >/dev/null 2>&1
        echo "gpu-check.sh exit $?"; grep -E "FAIL|ok$|passed|result" "$OUTDIR/gpu-check.txt" | tail -n 30
        ;;
    *) echo "gpu-run.sh: unknown part '$p'" ;;
    esac
done
part "done"
cat "$OUTDIR/bench-gpu.md" 2>/dev/null
