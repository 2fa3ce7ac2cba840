#!/usr/bin/env bash
# cria quantize against llama-quantize for the IQ file types (issue 21): the same F16 input and
# imatrix, the same threads; wall time and peak RSS of each (/usr/bin/time) and whether the two
# output files are byte-identical (sha256). The imatrix is made once by llama-imatrix over
# tests/fixtures/text/ppl.txt (8 chunks of 128 tokens), as scripts/bench/iq_models.sh does.
# Default input SmolLM2-135M F16 (hidden size 576: llama-quantize gives only ffn_down the IQ type
# and IQ4_NL elsewhere); IQ_SRC=ref/bench/llama32-1b-F16.gguf quantizes every matrix (slow).
# Usage: [IQ_SRC=...] [TYPES="IQ2_XXS ..."] scripts/bench/iq_quantize_vs_llamacpp.sh [WORK=/tmp/iq-quantize] [THREADS=2]
# Needs target/ci/cria (cargo build --profile ci -p cria) or CRIA=path.
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${1:-/tmp/iq-quantize}
T=${2:-2}
BIN=${CRIA_REF_DIR:-ref}/llama.cpp/build/bin
CRIA=${CRIA:-target/ci/cria}
SRC=${IQ_SRC:-${CRIA_REF_DIR:-ref}/bench/smollm2-F16.gguf}
mkdir -p "$WORK"
IM="$WORK/imatrix.gguf"
[ -s "$IM" ] || "$BIN/llama-imatrix" -m "$SRC" -f tests/fixtures/text/ppl.txt -c 128 --chunks 8 \
  -t "$T" -o "$IM" > "$WORK/imatrix.log" 2>&1
printf '%-8s %10s %12s %10s %12s %s\n' type llama_s llama_peakMB cria_s cria_peakMB identical
for ty in ${TYPES:-IQ3_XXS IQ3_XS IQ3_S IQ3_M IQ2_XXS IQ2_XS IQ2_S IQ2_M IQ1_S IQ1_M}; do
  /usr/bin/time -f "%e %M" -o "$WORK/ll.time" "$BIN/llama-quantize" --imatrix "$IM" "$SRC" \
    "$WORK/ll-$ty.gguf" "$ty" "$T" > "$WORK/ll-$ty.log" 2>&1
  /usr/bin/time -f "%e %M" -o "$WORK/cria.time" "$CRIA" quantize --imatrix "$IM" "$SRC" \
    "$WORK/cria-$ty.gguf" "$ty" -t "$T" > "$WORK/cria-$ty.log" 2>&1
  read -r lw lm < "$WORK/ll.time"
  read -r cw cm < "$WORK/cria.time"
  a=$(sha256sum < "$WORK/ll-$ty.gguf")
  b=$(sha256sum < "$WORK/cria-$ty.gguf")
  printf '%-8s %10s %12d %10s %12d %s\n' "$ty" "$lw" $((lm / 1024)) "$cw" $((cm / 1024)) \
    "$([ "$a" = "$b" ] && echo yes || echo NO)"
  rm -f "$WORK/ll-$ty.gguf" "$WORK/cria-$ty.gguf"
done
