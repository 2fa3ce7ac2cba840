#!/usr/bin/env bash
# Makes the IQ test models for the i-quant check (issue 21): an imatrix of LLaMA-3.2-1B (F16) over
# a few chunks of tests/fixtures/text/ppl.txt with llama.cpp's llama-imatrix, then one GGUF per IQ
# type with llama-quantize (its default mixes; IQ2/IQ1 need the imatrix).
# Usage: scripts/bench/iq_models.sh [OUT_DIR=/tmp/iq] [THREADS=1]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-/tmp/iq}
T=${2:-1}
BIN=${CRIA_REF_DIR:-ref}/llama.cpp/build/bin
SRC=${IQ_SRC:-${CRIA_REF_DIR:-ref}/bench/llama32-1b-F16.gguf}
mkdir -p "$OUT"
IM="$OUT/imatrix-1b.gguf"
if [ ! -s "$IM" ]; then
  "$BIN/llama-imatrix" -m "$SRC" -f tests/fixtures/text/ppl.txt -c 512 --chunks 2 -t "$T" -o "$IM"
fi
for ty in IQ3_XXS IQ3_S IQ2_XXS IQ2_XS IQ2_S IQ1_S IQ1_M; do
  f="$OUT/llama32-1b-$ty.gguf"
  [ -s "$f" ] || "$BIN/llama-quantize" --imatrix "$IM" "$SRC" "$f" "$ty" "$T"
done
