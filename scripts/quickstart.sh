#!/usr/bin/env bash
# The default job on a fresh machine: fetch SmolLM2-135M-Instruct, build, fine-tune a LoRA
# adapter on the bundled persona dataset (CPU), export it in PEFT format, and print the
# before/after report. Extra arguments go to lora-train (e.g. --set train.max_steps=10). A run
# starts over (--overwrite replaces the previous run's files) unless they include --resume.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
cargo build --release --locked
fresh=(--overwrite)
for arg in "$@"; do
    if [[ "$arg" == --resume ]]; then fresh=(); fi
done
./target/release/lora-train --config configs/quickstart.toml ${fresh[@]+"${fresh[@]}"} "$@"
