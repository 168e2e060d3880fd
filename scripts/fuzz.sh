#!/usr/bin/env bash
# Runs the parser fuzz suite (tests/fuzz.rs) for MINUTES (default 10), split evenly over its
# targets, in the debug build (overflow checks on). Prints the cases each target ran, its time
# and its panics; exits non-zero on the first failure, whose output has the shrunk input and the
# seed to replay it: LORA_TRAIN_FUZZ_SEED=SEED LORA_TRAIN_FUZZ_CASES=64 cargo test --test fuzz TARGET.
#
#   scripts/fuzz.sh          # 10 minutes
#   scripts/fuzz.sh 1        # 1 minute
set -euo pipefail
cd "$(dirname "$0")/.."

minutes="${1:-10}"
targets=(
    job_toml_and_set
    dataset_readers
    chat_template_builtin_render
    chat_template_source_render
    safetensors_model_load
    gguf_model_load
    peft_adapter_load
)
# The test binary runs directly, so a cargo build elsewhere does not wait on this run.
bin="$(cargo test --locked --test fuzz --no-run --message-format=json \
    | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)"
[ -x "$bin" ] || { echo "fuzz: no test binary built" >&2; exit 1; }
secs=$(( minutes * 60 / ${#targets[@]} ))
# A fresh first seed per run, so repeated runs explore new inputs; printed to replay a run.
seed="${LORA_TRAIN_FUZZ_SEED:-$(date +%s)}"
echo "fuzz: ${#targets[@]} targets, ${secs} s each, first seed ${seed}"
log="$(mktemp)"
last="$(mktemp)"
trap 'rm -f "$log" "$last"' EXIT
start=$(date +%s)
total=0
for t in "${targets[@]}"; do
    rc=0
    LORA_TRAIN_FUZZ_SECS="$secs" LORA_TRAIN_FUZZ_SEED="$seed" LORA_TRAIN_FUZZ_CASES="${LORA_TRAIN_FUZZ_CASES:-64}" \
        RUST_BACKTRACE=0 LORA_TRAIN_FUZZ_LAST="$last" "$bin" --exact "$t" --nocapture --test-threads 1 >"$log" 2>&1 || rc=$?
    line="$(grep -o 'fuzz [a-z_]*: [0-9]* cases.*' "$log" || true)"
    if [ "$rc" -ne 0 ] || [ -z "$line" ]; then
        tail -n 200 "$log" >&2
        echo "fuzz: $t FAILED (exit $rc; its output is above; the last input it ran:)" >&2
        cat "$last" >&2
        exit 1
    fi
    echo "$line"
    total=$(( total + $(echo "$line" | awk '{ print $3 }') ))
done
echo "fuzz: ${total} cases in $(( $(date +%s) - start )) s over ${#targets[@]} targets, 0 panics"
