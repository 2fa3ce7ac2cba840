#!/usr/bin/env bash
# cria quantize against llama.cpp's llama-quantize on a LLaMA-3.2-1B-shaped F32 GGUF (random
# weights, ~5 GB): same input, same TYPE, same threads; wall time and peak RSS from
# /usr/bin/time -v, a side-by-side table with ratios, and a byte comparison of the two outputs.
#
# Usage: scripts/bench/quantize-vs-llamacpp.sh [TYPE=Q4_K_M] [THREADS=2]
# Env: CRIA (default target/ci/cria; built with `cargo build --profile ci -p cria` if missing),
#      CRIA_REF_DIR (default ./ref: llama.cpp/build/bin/llama-quantize, bench/llama32-1b-F16.gguf),
#      WORK (default /tmp/cria-quantize-bench: the F32 input is made once and kept there).
# The F32 input is made from ref/bench/llama32-1b-F16.gguf with `cria quantize ... F32`
# (F16 -> F32 is exact, and byte-identical to llama-quantize's F32 output, see the fixtures).
# Machines are shared: the load average is printed, and CPU time (user + sys) beside wall time is
# the steadier speed figure there; compare ratios from one run.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
REF=${CRIA_REF_DIR:-$ROOT/ref}
TYPE=${1:-Q4_K_M}
THREADS=${2:-2}
WORK=${WORK:-/tmp/cria-quantize-bench}
CRIA=${CRIA:-$ROOT/target/ci/cria}
LQ=$REF/llama.cpp/build/bin/llama-quantize
F16=$REF/bench/llama32-1b-F16.gguf
mkdir -p "$WORK"
[ -x "$CRIA" ] || (cd "$ROOT" && CARGO_BUILD_JOBS=1 cargo build --profile ci -p cria)
F32=$WORK/llama32-1b-F32.gguf
if [ ! -f "$F32" ]; then
    echo "making $F32 from $F16 ..." >&2
    "$CRIA" quantize "$F16" "$F32" F32 -t "$THREADS" >&2
fi

# run NAME CMD...: /usr/bin/time -v into $WORK/NAME.time; prints "seconds peak_kib"
run() {
    local name=$1; shift
    cat "$F32" > /dev/null   # the same warm page cache for both
    /usr/bin/time -v "$@" > "$WORK/$name.log" 2> "$WORK/$name.time" || {
        cat "$WORK/$name.log" "$WORK/$name.time" >&2; exit 1; }
    local wall peak
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$WORK/$name.time" |
        awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
    peak=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$WORK/$name.time")
    cpu=$(awk -F': ' '/User time|System time/ {s += $2} END {print s}' "$WORK/$name.time")
    echo "$wall $peak $cpu"
}

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)" >&2
read -r l_wall l_peak l_cpu < <(run llama "$LQ" "$F32" "$WORK/llama-$TYPE.gguf" "$TYPE" "$THREADS")
read -r c_wall c_peak c_cpu < <(run cria "$CRIA" quantize "$F32" "$WORK/cria-$TYPE.gguf" "$TYPE" -t "$THREADS")
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

if cmp -s "$WORK/llama-$TYPE.gguf" "$WORK/cria-$TYPE.gguf"; then same=yes; else same=NO; fi
python3 - "$TYPE" "$THREADS" "$l_wall" "$l_peak" "$c_wall" "$c_peak" "$same" "$l_cpu" "$c_cpu" \
    "$(stat -c %s "$F32")" "$(stat -c %s "$WORK/cria-$TYPE.gguf")" <<'PY'
import sys
t, th, lw, lp, cw, cp, same, lc, cc, insz, outsz = sys.argv[1:]
lc, cc = float(lc), float(cc)
lw, cw, lp, cp = float(lw), float(cw), int(lp) / 1024, int(cp) / 1024
print(f"LLaMA-3.2-1B shape, F32 ({int(insz)/2**30:.2f} GiB) -> {t} ({int(outsz)/2**20:.0f} MiB), {th} threads")
print("| | llama-quantize | cria quantize | cria / llama |")
print("|---|---|---|---|")
print(f"| wall time (s) | {lw:.1f} | {cw:.1f} | {cw/lw:.2f} |")
print(f"| CPU time, user + sys (s) | {lc:.1f} | {cc:.1f} | {cc/lc:.2f} |")
print(f"| peak RSS (MiB) | {lp:.0f} | {cp:.0f} | {cp/lp:.2f} |")
print(f"outputs byte-identical: {same}")
PY
rm -f "$WORK/llama-$TYPE.gguf" "$WORK/cria-$TYPE.gguf"
[ "$same" = yes ]
