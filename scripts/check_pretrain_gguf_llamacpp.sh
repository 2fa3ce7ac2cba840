#!/usr/bin/env bash
# A model pretrained by cria, converted to GGUF, checked against llama.cpp (issue 24; not in CI,
# it needs llama.cpp's tools built):
#
#   scripts/check_pretrain_gguf_llamacpp.sh [LLAMA_CPP_BIN_DIR]   (default /work/llamacpp/build/bin)
#
# 1. `cria tokenizer train` (BPE, 600 tokens) + `cria data prepare` on the stories fixture,
#    `cria pretrain` of a tiny LLaMA (dim 64, 2 layers, 4 heads, 2 KV heads) for 40 steps;
# 2. `cria convert RUN/final m.gguf --outtype f32` (tokenizer.ggml.pre: llama-bpe);
# 3. llama-tokenize and `cria tokenize` give the same ids on a few texts (ASCII, accents, CJK,
#    emoji, digits, newlines, contractions);
# 4. llama-simple (greedy) and `cria run --raw --temp 0` continue a prompt with the same text.
#
# Environment: CRIA (the cria binary; default target/ci/cria, built with
# `cargo build --profile ci --bin cria`), KEEP=1 keeps the work folder.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-/work/llamacpp/build/bin}
CRIA=${CRIA:-target/ci/cria}
for t in "$BIN/llama-tokenize" "$BIN/llama-simple" "$CRIA"; do
    [ -x "$t" ] || { echo "missing $t" >&2; exit 2; }
done
W=$(mktemp -d /tmp/cria-llamacpp-check.XXXXXX)
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$W"' EXIT
STORIES=tests/fixtures/pretrain/stories.txt

"$CRIA" tokenizer train --vocab-size 600 -o "$W/tok" "$STORIES"
"$CRIA" data prepare "$STORIES" --tokenizer "$W/tok" -o "$W/data" --val-fraction 0.05
cat > "$W/tiny.json" <<'EOF'
{"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
 "num_key_value_heads": 2, "intermediate_size": 128}
EOF
"$CRIA" pretrain --data "$W/data" -o "$W/run" --config "$W/tiny.json" --max-steps 40 \
    --batch-tokens 1024 --micro-batch-tokens 512 --ctx 64 --lr 1e-2 --warmup 4 --seed 1 \
    -t "$(nproc)" 2>&1 | tail -n 3
"$CRIA" convert "$W/run/final" "$W/m.gguf" --outtype f32 2>&1 | tail -n 1

fail=0
texts=(
    "Once upon a time, there was a little girl named Lily."
    "She said: \"I'm happy!\" and they'll go home at 12345 o'clock."
    $'Two lines\nand\n\n  indented   spaces\ttab'
    "Café naïve résumé – “quotes” 日本語のテキスト 🦙🚀"
    "3.14159 1000000 ...!!! ??? don't WON'T"
)
for t in "${texts[@]}"; do
    a=$("$CRIA" tokenize -m "$W/m.gguf" --ids "$t" 2>/dev/null)
    b=$("$BIN/llama-tokenize" -m "$W/m.gguf" -p "$t" --ids --log-disable 2>/dev/null \
        | tail -n 1 | tr -d '[],')
    if [ "$a" = "$b" ]; then
        echo "tokenize ok ($(wc -w <<<"$a") ids): ${t:0:40}"
    else
        echo "TOKENIZE DIFFERS: $t"; echo "  cria:      $a"; echo "  llama.cpp: $b"; fail=1
    fi
done

N=32
for p in "Once upon a time" "The little dog"; do
    c=$("$CRIA" run -m "$W/m.gguf" --raw -p "$p" -n "$N" --temp 0 -t 1 2>/dev/null)
    # llama-simple prints the prompt (BOS included, as its text), then the greedy continuation.
    l=$("$BIN/llama-simple" -m "$W/m.gguf" -n "$N" "$p" 2>/dev/null)
    l=${l#"<|begin_of_text|>"}
    l=${l#"$p"}
    if [ "$c" = "$l" ]; then
        echo "generation ok: $p|$c"
    else
        echo "GENERATION DIFFERS for \"$p\":"; echo "  cria:      $c"; echo "  llama.cpp: $l"; fail=1
    fi
done
[ $fail = 0 ] && echo "all checks passed" || { echo "some checks FAILED"; exit 1; }
