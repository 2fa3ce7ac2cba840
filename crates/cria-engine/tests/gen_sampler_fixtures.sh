#!/bin/sh
# Regenerates tests/fixtures/samplers_llama_cpp.json from llama.cpp's libllama (see
# gen_sampler_fixtures.cpp). Needs the llama.cpp source tree with a build in
# $CRIA_REF_DIR/llama.cpp (default: <workspace>/ref/llama.cpp, build/bin/libllama.so) and a C++17
# compiler. The vocabulary for the DRY string-breaker cases is llama.cpp's GPT-2 test vocab.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
ref=${CRIA_REF_DIR:-$here/../../../ref}
lc=$ref/llama.cpp
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
${CXX:-g++} -std=c++17 -O1 -o "$out/gen" "$here/gen_sampler_fixtures.cpp" \
    -I"$lc/include" -I"$lc/ggml/include" -L"$lc/build/bin" -lllama -lggml -lggml-base \
    -Wl,-rpath,"$lc/build/bin"
"$out/gen" "$lc/models/ggml-vocab-gpt-2.gguf" "$here/fixtures/samplers_llama_cpp.json" 2>"$out/log" || {
    cat "$out/log" >&2
    exit 1
}
grep -i "wrote" "$out/log" >&2
