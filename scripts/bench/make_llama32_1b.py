#!/usr/bin/env python3
"""Writes a LLaMA-3.2-1B-shaped GGUF (F16) with random weights, for speed benchmarks only.

Shape of meta-llama/Llama-3.2-1B: hidden 2048, 16 layers, 32 heads, 8 KV heads, FFN 8192,
vocab 128256, tied embeddings, rope theta 500000 with llama3 scaling (factor 32, low/high freq
factors 1/4, original context 8192) stored as the `rope_freqs` tensor, as llama.cpp's converter does.
The vocabulary (tokens, merges, types) is copied from llama.cpp's ggml-vocab-llama-bpe.gguf, which is
LLaMA 3's. Weights ~ N(0, 0.02), norms 1: the numbers are meaningless, the bytes and shapes are real.
Usage: make_llama32_1b.py VOCAB_GGUF OUT_GGUF
"""
import math
import sys

import numpy as np
import gguf

vocab_path, out_path = sys.argv[1], sys.argv[2]
dim, n_layers, n_heads, n_kv, ffn, vocab = 2048, 16, 32, 8, 8192, 128256
head_dim = dim // n_heads
theta = 500000.0

src = gguf.GGUFReader(vocab_path)
def field(name):
    f = src.fields[name]
    return f.contents()

w = gguf.GGUFWriter(out_path, "llama")
w.add_name("random LLaMA-3.2-1B shape")
w.add_block_count(n_layers)
w.add_context_length(131072)
w.add_embedding_length(dim)
w.add_feed_forward_length(ffn)
w.add_head_count(n_heads)
w.add_head_count_kv(n_kv)
w.add_rope_freq_base(theta)
w.add_layer_norm_rms_eps(1e-5)
w.add_rope_dimension_count(head_dim)
w.add_vocab_size(vocab)
w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
w.add_tokenizer_model(field("tokenizer.ggml.model"))
w.add_tokenizer_pre(field("tokenizer.ggml.pre"))
w.add_token_list(field("tokenizer.ggml.tokens"))
w.add_token_types(field("tokenizer.ggml.token_type"))
w.add_token_merges(field("tokenizer.ggml.merges"))
w.add_bos_token_id(128000)
w.add_eos_token_id(128009)

# llama3 RoPE scaling as per-pair divisors (llama.cpp's convert_hf_to_gguf.py computes the same).
factor, lo, hi, old_ctx = 32.0, 1.0, 4.0, 8192
freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
lo_wl, hi_wl = old_ctx / lo, old_ctx / hi
rope_factors = []
for f in freqs:
    wl = 2 * math.pi / f
    if wl < hi_wl:
        rope_factors.append(1.0)
    elif wl > lo_wl:
        rope_factors.append(factor)
    else:
        s = (old_ctx / wl - lo) / (hi - lo)
        rope_factors.append(1.0 / ((1 - s) / factor + s))
w.add_tensor("rope_freqs.weight", np.array(rope_factors, dtype=np.float32))

rng = np.random.default_rng(0)
def rand(rows, cols):
    return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

w.add_tensor("token_embd.weight", rand(vocab, dim))
w.add_tensor("output_norm.weight", np.ones(dim, dtype=np.float32))
kvd = n_kv * head_dim
for l in range(n_layers):
    p = f"blk.{l}."
    w.add_tensor(p + "attn_norm.weight", np.ones(dim, dtype=np.float32))
    w.add_tensor(p + "attn_q.weight", rand(dim, dim))
    w.add_tensor(p + "attn_k.weight", rand(kvd, dim))
    w.add_tensor(p + "attn_v.weight", rand(kvd, dim))
    w.add_tensor(p + "attn_output.weight", rand(dim, dim))
    w.add_tensor(p + "ffn_norm.weight", np.ones(dim, dtype=np.float32))
    w.add_tensor(p + "ffn_gate.weight", rand(ffn, dim))
    w.add_tensor(p + "ffn_up.weight", rand(ffn, dim))
    w.add_tensor(p + "ffn_down.weight", rand(dim, ffn))
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
print("wrote", out_path)
