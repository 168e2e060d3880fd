#!/usr/bin/env bash
# Batched local generation (the eval harness's local candidates): lora-train against
# transformers' batched `generate`, greedy, SmolLM2-135M in f32 on the CPU, the same prompt
# token ids, batch 1 and batch 16, in the same run. Needs a Python with torch, transformers and
# gguf: PYTHON=/path/to/python scripts/bench_generate.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
BATCH="${BENCH_BATCH:-16}"
scripts/fetch-models.sh >/dev/null
export BENCH_BATCH="$BATCH" BENCH_PROMPTS="$(mktemp)"
ours=$(cargo bench --bench generate_batch 2>/dev/null | grep '"impl"')
theirs=$(OMP_NUM_THREADS="$(nproc)" "$PY" scripts/bench_generate_hf.py "$BENCH_PROMPTS" models "$BATCH" 2>/dev/null | grep '"impl"')
"$PY" - "$ours" "$theirs" <<'PYEOF'
import json, sys
ours = [json.loads(l) for l in sys.argv[1].splitlines()]
theirs = [json.loads(l) for l in sys.argv[2].splitlines()]
print("| batch | lora-train tokens/s | transformers tokens/s | ratio | same tokens |")
print("|---|---|---|---|---|")
for a, b in zip(ours, theirs):
    same = sum(x == y for x, y in zip(a["outputs"], b["outputs"]))
    print(f"| {a['batch']} | {a['tokens_per_second']} | {b['tokens_per_second']} | "
          f"{a['tokens_per_second'] / b['tokens_per_second']:.2f} | {same}/{len(a['outputs'])} |")
print(f"lora-train batch {ours[1]['batch']} over batch 1: {ours[1]['tokens_per_second'] / ours[0]['tokens_per_second']:.2f}x; "
      f"transformers: {theirs[1]['tokens_per_second'] / theirs[0]['tokens_per_second']:.2f}x "
      f"(torch {theirs[0]['torch']}, {theirs[0]['threads']} threads)")
PYEOF
