#!/usr/bin/env bash
# The README's "Make a model fit" table: for each TYPE, cria quantizes BASE (an F16/BF16/F32 GGUF or an
# HF folder), then one `cria kld` run measures every candidate against BASE side by side over TEXT.
# Prints a markdown table: type, size, bits per weight (tensor data, as llama-quantize reports it),
# PPL, PPL ratio, mean KLD, same-top share. Types marked "+imatrix" use an importance matrix that
# `cria imatrix` computes on CALIB (a text other than TEXT).
#
#   scripts/bench/quant-table.sh BASE [TEXT] [CALIB]
#   env: TYPES="Q8_0 Q4_K_M ...", CHUNKS=N (KL chunks), ICHUNKS=N (imatrix chunks), T=threads
#
# Defaults: TEXT = tests/fixtures/text/ppl.txt; CALIB = llama.cpp's docs/build.md (from ref/, not part
# of TEXT); every type cria makes. Work files go to ${WORK:-/tmp/quant-table}.
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE=${1:?usage: quant-table.sh BASE [TEXT] [CALIB]}
TEXT=${2:-tests/fixtures/text/ppl.txt}
CALIB=${3:-ref/llama.cpp/docs/build.md}
WORK=${WORK:-/tmp/quant-table}
T=${T:-2}
TYPES=${TYPES:-"Q8_0 Q6_K Q5_K_M Q5_K_S Q5_1 Q5_0 Q4_K_M Q4_K_S Q4_1 Q4_0 IQ4_NL IQ4_XS Q3_K_L Q3_K_M Q3_K_S Q2_K Q4_K_M+imatrix IQ4_XS+imatrix Q3_K_M+imatrix Q2_K+imatrix"}
CRIA=${CRIA:-target/ci/cria}
[ -x "$CRIA" ] || cargo build --profile ci --bin cria >&2
mkdir -p "$WORK"
chunk_args=()
[ -n "${CHUNKS:-}" ] && chunk_args=(--chunks "$CHUNKS")

if [[ "$TYPES" == *imatrix* ]]; then
  ichunks=()
  [ -n "${ICHUNKS:-}" ] && ichunks=(--chunks "$ICHUNKS")
  "$CRIA" imatrix -m "$BASE" -f "$CALIB" -o "$WORK/imatrix.gguf" -c 512 -t "$T" "${ichunks[@]}" >"$WORK/imatrix.log" 2>&1 ||
    { tail -5 "$WORK/imatrix.log" >&2; exit 1; }
fi
models=()
declare -A size bpw
for spec in $TYPES; do
  ty=${spec%+imatrix}
  out="$WORK/$spec.gguf"
  args=()
  [ "$spec" != "$ty" ] && args=(--imatrix "$WORK/imatrix.gguf")
  log="$WORK/$spec.log"
  "$CRIA" quantize "$BASE" "$out" "$ty" "${args[@]}" -t "$T" --allow-requantize >"$log" 2>&1 ||
    { echo "quantize $spec failed:" >&2; tail -3 "$log" >&2; exit 1; }
  # "size 256.63 MiB (16.00 bpw) -> 98.87 MiB (6.17 bpw), ..."
  line=$(grep -E '^size ' "$log" | tail -1)
  size[$spec]=$(sed -E 's/.*-> ([0-9.]+) MiB.*/\1/' <<<"$line")
  bpw[$spec]=$(sed -E 's/.*-> [0-9.]+ MiB \(([0-9.]+) bpw\).*/\1/' <<<"$line")
  models+=(-m "$out")
done
"$CRIA" kld --base "$BASE" "${models[@]}" -f "$TEXT" -c 512 -t "$T" "${chunk_args[@]}" >"$WORK/kld.txt" 2>&1 ||
  { tail -5 "$WORK/kld.txt" >&2; exit 1; }
base_ppl=$(grep -E '^base ' "$WORK/kld.txt" | sed -E 's/.*PPL ([0-9.]+ ± [0-9.]+).*/\1/')
echo "base $BASE: PPL $base_ppl over $(head -1 "$WORK/kld.txt")"
echo
echo "| type | size MiB | bpw | PPL | PPL / base | mean KLD | same top |"
echo "|---|---|---|---|---|---|---|"
for spec in $TYPES; do
  row=$(grep -F "$WORK/$spec.gguf " "$WORK/kld.txt" | tail -1)
  IFS='|' read -r _ ppl ratio kld _ _ _ same _ <<<"$row"
  echo "| $spec | ${size[$spec]} | ${bpw[$spec]} | $(xargs <<<"$ppl") | $(xargs <<<"$ratio") | $(xargs <<<"$kld") | $(xargs <<<"$same") |"
done
