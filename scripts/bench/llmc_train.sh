#!/usr/bin/env bash
# llm.c's CPU trainer (train_gpt2.c) on a random-init GPT-2 of a given size, for the speed table
# of scripts/bench/pretrain_vs_torch.py (issue 24). llm.c is read from --llmc PATH (a checkout of
# github.com/karpathy/llm.c, MIT; never copied into cria): train_gpt2.c and llmc/ are copied to
# the scratch folder, its hard-coded checkpoint/data paths, B, T and step count are replaced there
# with sed (val loss and sample generation switched off), built with
# gcc -O3 -Ofast -march=native -fopenmp -DOMP (llm.c's Makefile flags), and run with OMP_NUM_THREADS.
#
# usage: llmc_train.sh --llmc PATH --work DIR [--dim 384 --layers 12 --heads 6 --vocab 8192
#        --ctx 256 --batch 16 --steps 8 --threads N --data CRIA_DATA_DIR]
# prints llm.c's log, then "RESULT {"step_s": [...], "rss_mib": X}" (seconds of each step as
# train_gpt2.c times it: forward, zero_grad, backward, AdamW update; peak RSS and CPU seconds of
# the run).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
LLMC= WORK= DIM=384 LAYERS=12 HEADS=6 VOCAB=8192 CTX=256 BATCH=16 STEPS=8 THREADS=$(nproc) DATA=
while [ $# -gt 0 ]; do
  case "$1" in
    --llmc) LLMC=$2 ;; --work) WORK=$2 ;; --dim) DIM=$2 ;; --layers) LAYERS=$2 ;;
    --heads) HEADS=$2 ;; --vocab) VOCAB=$2 ;; --ctx) CTX=$2 ;; --batch) BATCH=$2 ;;
    --steps) STEPS=$2 ;; --threads) THREADS=$2 ;; --data) DATA=$2 ;;
    *) echo "llmc_train.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift 2
done
[ -n "$LLMC" ] && [ -f "$LLMC/train_gpt2.c" ] && [ -d "$LLMC/llmc" ] ||
  { echo "llmc_train.sh: --llmc must be an llm.c checkout (train_gpt2.c, llmc/)" >&2; exit 2; }
[ -n "$WORK" ] || { echo "llmc_train.sh: --work DIR needed" >&2; exit 2; }
mkdir -p "$WORK/src"
WORK=$(cd "$WORK" && pwd)
cp "$LLMC/train_gpt2.c" "$WORK/src/"
cp -r "$LLMC/llmc" "$WORK/src/"
src="$WORK/src/train_gpt2.c"
# Every pattern must hit exactly once: llm.c's code changing under us is an error, not a quiet miss.
patch() { # PATTERN REPLACEMENT
  local n
  n=$(grep -cF -- "$1" "$src" || true)
  [ "$n" = 1 ] || { echo "llmc_train.sh: '$1' found $n times in train_gpt2.c" >&2; exit 1; }
  local p r
  p=$(printf '%s' "$1" | sed 's/[][\.*^$/&]/\\&/g')
  r=$(printf '%s' "$2" | sed 's/[\/&]/\\&/g')
  sed -i "s/$p/$r/" "$src"
}
patch '"gpt2_124M.bin"' "\"$WORK/model.bin\""
patch '"dev/data/tinyshakespeare/tiny_shakespeare_train.bin"' "\"$WORK/train.bin\""
patch '"dev/data/tinyshakespeare/tiny_shakespeare_val.bin"' "\"$WORK/val.bin\""
patch 'int B = 4;' "int B = $BATCH;"
patch 'int T = 64;' "int T = $CTX;"
patch 'step <= 40;' "step < $STEPS;"
patch 'if (step % 10 == 0) {' 'if (0) {'
patch 'if (step > 0 && step % 20 == 0) {' 'if (0) {'
gcc -O3 -Ofast -march=native -fopenmp -DOMP -Wno-unused-result -Wno-unused-function \
  -I"$WORK/src" "$src" -lm -o "$WORK/train_gpt2"
python3 "$HERE/llmc_init.py" "$WORK" --dim "$DIM" --layers "$LAYERS" --heads "$HEADS" \
  --vocab "$VOCAB" --ctx "$CTX" ${DATA:+--data "$DATA"}
cd "$WORK"
OMP_NUM_THREADS=$THREADS /usr/bin/time -f 'MAXRSS_KB %M CPU_S %U %S' -o "$WORK/time.txt" ./train_gpt2 | tee "$WORK/train.log"
python3 - "$WORK" <<'PY'
import json, re, sys
w = sys.argv[1]
steps = [float(m.group(1)) / 1e3 for m in re.finditer(r"took ([0-9.]+) ms", open(w + "/train.log").read())]
tm = re.search(r"MAXRSS_KB (\d+) CPU_S ([0-9.]+) ([0-9.]+)", open(w + "/time.txt").read())
rss, cpu = int(tm.group(1)) / 1024, float(tm.group(2)) + float(tm.group(3))
if not steps:
    sys.exit("llmc_train.sh: no 'took N ms' lines in train_gpt2's output")
print("RESULT " + json.dumps({"step_s": steps, "rss_mib": rss, "cpu_s": cpu}))
PY
