#!/usr/bin/env bash
# Makes the IQ test models for the i-quant check (issue 21): an imatrix of the F16 source model
# over 8 chunks of 128 tokens of tests/fixtures/text/ppl.txt with llama.cpp's llama-imatrix, then
# one GGUF per IQ type with llama-quantize (its default rules; IQ2/IQ1 need the imatrix).
# Default source: SmolLM2-135M F16 (ref/bench/smollm2-F16.gguf). Its hidden size 576 is not a
# multiple of 256, so llama-quantize gives only ffn_down (1536 columns) the IQ type and falls
# back to IQ4_NL elsewhere. IQ_SRC=ref/bench/llama32-1b-F16.gguf NAME=llama32-1b quantizes every
# matrix (slow: over an hour per type on a busy 2-core machine).
# Usage: [IQ_SRC=... NAME=...] scripts/bench/iq_models.sh [OUT_DIR=/tmp/iq] [THREADS=1]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-/tmp/iq}
T=${2:-1}
BIN=${CRIA_REF_DIR:-ref}/llama.cpp/build/bin
SRC=${IQ_SRC:-${CRIA_REF_DIR:-ref}/bench/smollm2-F16.gguf}
NAME=${NAME:-smollm2}
mkdir -p "$OUT"
IM="$OUT/imatrix-$NAME.gguf"
if [ ! -s "$IM" ]; then
  "$BIN/llama-imatrix" -m "$SRC" -f tests/fixtures/text/ppl.txt -c 128 --chunks 8 -t "$T" -o "$IM"
fi
# IQ2_M: the ftype whose ffn_down is the IQ2_S type (ftype IQ2_S uses IQ2_XS there).
for ty in ${TYPES:-IQ3_XXS IQ3_S IQ2_XXS IQ2_XS IQ2_S IQ2_M IQ1_S IQ1_M}; do
  f="$OUT/$NAME-$ty.gguf"
  [ -s "$f" ] || "$BIN/llama-quantize" --imatrix "$IM" "$SRC" "$f.tmp" "$ty" "$T"
  [ -s "$f" ] || mv "$f.tmp" "$f"
done
