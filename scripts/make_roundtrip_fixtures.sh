#!/usr/bin/env bash
# Round-trip fixtures: train short jobs with lora-train, commit the exported adapters, and let
# PEFT (scripts/make_peft_fixtures.py --roundtrip) score them on tests/fixtures/chats.jsonl.
# tests/it/roundtrip.rs then checks that `lora-train score --adapter` prints the same loss.
# Usage: PYTHON=/path/to/venv/python scripts/make_roundtrip_fixtures.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
cargo build --release
for name in tiny-gemma3 tiny-gemma3-mm tiny-qwen2 tiny-qwen3 tiny-mistral tiny-gemma2 smollm2; do
  out="/tmp/lora-train-roundtrip/$name"
  rm -rf "$out"
  ./target/release/lora-train --config "tests/fixtures/roundtrip/$name.toml" --no-report
  rm -rf "tests/fixtures/roundtrip/$name"
  mkdir -p "tests/fixtures/roundtrip/$name"
  cp -r "$out/adapter" "tests/fixtures/roundtrip/$name/adapter"
  "$PY" scripts/make_peft_fixtures.py --roundtrip "tests/fixtures/roundtrip/$name/adapter" \
    --model "$name" --out "tests/fixtures/roundtrip/$name/peft_score.json"
done
