#!/usr/bin/env python3
"""PyTorch's side of full_grads.rs's `bench_20m`: the same LLaMA (dim 384, 8 layers, 6 heads, FFN
1024, vocab 8192, tied head: 17.3M parameters), float32, 2 threads, a batch of 2 x 256 tokens,
forward + backward (transformers' LlamaForCausalLM, sdpa attention, loss over every position).
  python3 crates/cria-train/tests/bench_full_torch.py
"""
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

torch.set_num_threads(2)
torch.manual_seed(1)
c = LlamaConfig(hidden_size=384, intermediate_size=1024, num_attention_heads=6,
                num_key_value_heads=6, num_hidden_layers=8, vocab_size=8192,
                max_position_embeddings=256, tie_word_embeddings=True)
m = LlamaForCausalLM(c).float()
m.train()
ids = torch.randint(0, 8192, (2, 256))


def step():
    m(ids, labels=ids).loss.backward()


step()
reps = 3
t = time.time()
for _ in range(reps):
    step()
s = (time.time() - t) / reps
n = sum(p.numel() for p in m.parameters())
print(f"torch {n / 1e6:.1f}M params, 512 tokens/step: {s:.3f} s/step, {512 / s:.0f} tokens/s, "
      f"{6 * n * 512 / s / 1e9:.1f} GFLOP/s (6N per token)")
