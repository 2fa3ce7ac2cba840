#!/usr/bin/env python3
"""Writes tests/fixtures/attn_*.npy for tests/rope_attention_torch.rs: RoPE (Hugging Face's
apply_rotary_pos_emb, NeoX half-split layout, llama3 frequencies from transformers'
ROPE_INIT_FUNCTIONS) then causal GQA attention (torch's scaled_dot_product_attention with
enable_gqa), in f64 with autograd: the output and dq, dk, dv (before RoPE) of sum(out * r).
Run from crates/cria-train: python3 tests/gen_attention_fixture.py (CI only reads the files)."""
import numpy as np
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

torch.manual_seed(2023)
t, n_heads, n_kv, hd, base = 7, 4, 2, 16, 500000.0
cfg = LlamaConfig(
    hidden_size=n_heads * hd, num_attention_heads=n_heads, num_key_value_heads=n_kv,
    rope_theta=base,
    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
)
inv_freq, attn_scaling = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
assert attn_scaling == 1.0
plain = 1.0 / (base ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
# What cria's Rope takes: per-pair divisors of the plain frequencies.
factors = plain / inv_freq.double()

q = torch.randn(t, n_heads, hd, dtype=torch.float64)
k = torch.randn(t, n_kv, hd, dtype=torch.float64)
v = torch.randn(t, n_kv, hd, dtype=torch.float64)
r = torch.randn(t, n_heads, hd, dtype=torch.float64)
qg, kg, vg = (x.clone().requires_grad_(True) for x in (q, k, v))

pos = torch.arange(t, dtype=torch.float64)
freqs = pos[:, None] * inv_freq.double()[None, :]
emb = torch.cat((freqs, freqs), dim=-1)
cos, sin = emb.cos()[None], emb.sin()[None]  # (1, t, hd)
# HF layout: (batch, heads, t, hd).
qh, kh = apply_rotary_pos_emb(qg.transpose(0, 1)[None], kg.transpose(0, 1)[None], cos, sin)
vh = vg.transpose(0, 1)[None]
out = torch.nn.functional.scaled_dot_product_attention(
    qh, kh, vh, is_causal=True, enable_gqa=True, scale=hd ** -0.5
)[0].transpose(0, 1)  # (t, heads, hd)
(out * r).sum().backward()

d = "tests/fixtures/attn_"
save = lambda name, x: np.save(d + name + ".npy", x.detach().numpy().astype(np.float32))
for name, x in [("q", q), ("k", k), ("v", v), ("r", r), ("factors", factors), ("out", out),
                ("dq", qg.grad), ("dk", kg.grad), ("dv", vg.grad)]:
    save(name, x)
print("factors", factors.numpy())
