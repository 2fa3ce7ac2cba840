#!/usr/bin/env python3
"""Writes tests/fixtures/block_*.npy for tests/block_peft.rs: one whole LLaMA decoder layer
(transformers' LlamaDecoderLayer, eager attention with a causal mask, GQA 4/2, head_dim 16, llama3
RoPE through LlamaRotaryEmbedding) then a final RMSNorm and an untied head, with PEFT LoRA
(r 4, alpha 8: scale 2) on q, k, v, o, gate, up, down, and CrossEntropyLoss(ignore_index=-100),
in f64 autograd. lora_B made non-zero so every gradient is. Saves the inputs, every weight
(PEFT's layouts: lora_A (r, in), lora_B (out, r); Q/K rows in Hugging Face's order), the loss,
d(loss)/dx and every adapter gradient. Run from crates/cria-train:
python3 tests/gen_block_fixture.py (CI only reads the files)."""
import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import (
    LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding)

torch.manual_seed(11)
t, d, ff, vocab, n_heads, n_kv, eps = 7, 64, 96, 40, 4, 2, 1e-5
cfg = LlamaConfig(
    hidden_size=d, intermediate_size=ff, num_attention_heads=n_heads, num_key_value_heads=n_kv,
    rms_norm_eps=eps, rope_theta=500000.0, attention_bias=False, mlp_bias=False,
    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
)
cfg._attn_implementation = "eager"


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = LlamaDecoderLayer(cfg, layer_idx=0)
        self.norm = LlamaRMSNorm(d, eps=eps)
        self.lm_head = torch.nn.Linear(d, vocab, bias=False)
        self.rotary = LlamaRotaryEmbedding(cfg)

    def forward(self, x):
        pos = torch.arange(t)[None]
        cos, sin = self.rotary(x, pos)
        mask = torch.full((t, t), float("-inf"), dtype=x.dtype).triu(1)[None, None]
        h = self.layer(x, attention_mask=mask, position_ids=pos, position_embeddings=(cos, sin))
        h = h[0] if isinstance(h, tuple) else h
        return self.lm_head(self.norm(h))[0]


m = Block()
with torch.no_grad():
    for n, p in m.named_parameters():
        p.copy_(torch.randn_like(p) * 0.2 + (1.0 if "norm" in n else 0.0))
targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
m = get_peft_model(m.double(), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets))
with torch.no_grad():
    for n, p in m.named_parameters():
        if "lora_B" in n:
            p.copy_(torch.randn_like(p) * 0.2)

x = torch.randn(1, t, d, dtype=torch.float64, requires_grad=True)
labels = torch.tensor([3, -100, 39, 0, -100, 17, 8])
loss = torch.nn.CrossEntropyLoss(ignore_index=-100)(m(x), labels)
loss.backward()

out = "tests/fixtures/block_"
def save(name, v):
    np.save(out + name + ".npy", v.detach().reshape(-1).numpy().astype(np.float32))
base = m.base_model.model
inv_freq = base.rotary.inv_freq.double()
plain = 1.0 / (500000.0 ** (torch.arange(0, d // n_heads, 2, dtype=torch.float64) / (d // n_heads)))
save("rope_factors", plain / inv_freq)
save("x", x)
save("labels", labels.double())
save("loss", loss.reshape(1))
save("dx", x.grad)
save("input_norm", base.layer.input_layernorm.weight)
save("post_norm", base.layer.post_attention_layernorm.weight)
save("final_norm", base.norm.weight)
save("head", base.lm_head.weight)
for name in targets:
    parent = base.layer.self_attn if name[0] in "qkvo" else base.layer.mlp
    lin = getattr(parent, name)
    save(name, lin.base_layer.weight)
    for ab in ["A", "B"]:
        w = getattr(lin, "lora_" + ab)["default"].weight
        save(f"{name}_{ab}", w)
        save(f"{name}_d{ab}", w.grad)
    assert lin.scaling["default"] == 2.0
print("loss", loss.item())
