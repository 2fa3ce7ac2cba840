#!/usr/bin/env bash
# The IQ i-quants in cria against llama.cpp on the same files (issue 21): perplexity of each IQ
# model made by scripts/bench/iq_models.sh (cria perplexity vs llama-perplexity, same text, -c and
# chunks), then, with BENCH=1, speed (cria bench vs llama-bench, -p 512 -n 128, same threads).
# Usage: [BENCH=1] [BASE="other.gguf ..."] [THREADS=2] [TYPES="IQ3_XXS ..."] scripts/bench/iq_check.sh [MODEL_DIR=/tmp/iq]
# Needs target/ci/cria (cargo build --profile ci -p cria) or CRIA=path.
set -euo pipefail
cd "$(dirname "$0")/../.."
DIR=${1:-/tmp/iq}
T=${THREADS:-2}
BIN=${CRIA_REF_DIR:-ref}/llama.cpp/build/bin
CRIA=${CRIA:-target/ci/cria}
TEXT=${TEXT:-tests/fixtures/text/ppl.txt}
CTX=${CTX:-128}
CHUNKS=${CHUNKS:-4}
TYPES=${TYPES:-IQ3_XXS IQ3_S IQ2_XXS IQ2_XS IQ2_S IQ2_M IQ1_S IQ1_M}
printf '%-8s %14s %14s %9s\n' type cria_ppl llama_ppl rel_diff
# Baselines (BASE="ref/bench/smollm2-Q4_0.gguf ..."): a non-IQ file through the same two
# commands shows the usual cria / llama.cpp gap on this text.
for ty in $TYPES ${BASE:-}; do
  case "$ty" in *.gguf) m=$ty; ty=$(basename "$ty" .gguf) ;; *) m="$DIR/${NAME:-smollm2}-$ty.gguf" ;; esac
  [ -s "$m" ] || { echo "$ty: $m missing (scripts/bench/iq_models.sh)"; continue; }
  lp=$("$BIN/llama-perplexity" -m "$m" -f "$TEXT" -c "$CTX" --chunks "$CHUNKS" -t "$T" 2>&1 |
    sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p')
  cp=$("$CRIA" perplexity -m "$m" -f "$TEXT" -c "$CTX" --chunks "$CHUNKS" -t "$T" 2>&1 | tee "$DIR/cria-ppl-$ty.log" |
    sed -n 's/.*PPL = \([0-9.]*\).*/\1/p' | tail -1)
  printf '%-8s %14s %14s %9s\n' "$ty" "$cp" "$lp" "$(python3 -c "print(f'{($cp)/($lp)-1:+.4%}')")"
done
if [ "${BENCH:-0}" = 1 ]; then
  for ty in $TYPES; do
    m="$DIR/${NAME:-smollm2}-$ty.gguf"
    [ -s "$m" ] || continue
    echo "== $ty"
    "$BIN/llama-bench" -m "$m" -t "$T" -p 512 -n 128 -r "${REPS:-1}" 2>&1 | grep -E "pp512|tg128"
    "$CRIA" bench -m "$m" -t "$T" -p 512 -n 128 -r "${REPS:-1}" 2>&1 | tail -4
  done
fi
