#!/usr/bin/env bash
# CPU training throughput and peak memory: lora-train against PyTorch + transformers + PEFT
# on the same batches of the quickstart job, in the same run. Needs a Python with torch,
# transformers, peft and gguf: PYTHON=/path/to/python scripts/bench_train_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
scripts/fetch-models.sh >/dev/null
export BENCH_STEPS="${BENCH_STEPS:-8}" BENCH_BATCHES="$(mktemp)"
ours=$(cargo bench --bench train_step 2>/dev/null | grep '"impl"')
theirs=$(OMP_NUM_THREADS="$(nproc)" "$PY" scripts/bench_train_cpu.py "$BENCH_BATCHES" models 2>/dev/null | grep '"impl"')
echo "$ours"
echo "$theirs"
"$PY" - "$ours" "$theirs" <<'PYEOF'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"tokens/s ratio (lora-train / PEFT): {a['tokens_per_second'] / b['tokens_per_second']:.2f}")
print(f"peak RSS ratio (lora-train / PEFT): {a['peak_rss_mb'] / b['peak_rss_mb']:.2f}")
PYEOF
