#!/usr/bin/env python3
"""Writes tests/fixtures/mlp_*.npy for tests/mlp_peft.rs: the feed-forward half of a LLaMA block
and the head, with PEFT LoRA adapters on gate/up/down, in f64 autograd:
  h = x + down(silu(gate(n)) * up(n)), n = RMSNorm(x); logits = head(RMSNorm2(h));
  loss = CrossEntropyLoss(ignore_index=-100)(logits, labels).
transformers' LlamaMLP and LlamaRMSNorm, peft's LoraConfig (r 4, alpha 8: scale 2); lora_B made
non-zero so every gradient is. Saves inputs, weights (PEFT's layouts: lora_A (r, in), lora_B
(out, r)), the loss, d(loss)/dx and every adapter gradient. Run from crates/cria-train:
python3 tests/gen_mlp_fixture.py (CI only reads the files)."""
import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

torch.manual_seed(7)
t, d, ff, vocab, eps = 6, 32, 48, 40, 1e-5
cfg = LlamaConfig(hidden_size=d, intermediate_size=ff, hidden_act="silu", rms_norm_eps=eps)


class Half(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = LlamaRMSNorm(d, eps=eps)
        self.mlp = LlamaMLP(cfg)
        self.norm2 = LlamaRMSNorm(d, eps=eps)
        self.lm_head = torch.nn.Linear(d, vocab, bias=False)

    def forward(self, x):
        h = x + self.mlp(self.norm(x))
        return self.lm_head(self.norm2(h))


m = Half()
with torch.no_grad():
    for p in m.parameters():
        p.copy_(torch.randn_like(p) * 0.3)
    m.norm.weight.add_(1.0)
    m.norm2.weight.add_(1.0)
m = get_peft_model(m.double(), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                         target_modules=["gate_proj", "up_proj", "down_proj"]))
with torch.no_grad():
    for n, p in m.named_parameters():
        if "lora_B" in n:
            p.copy_(torch.randn_like(p) * 0.3)

x = torch.randn(t, d, dtype=torch.float64, requires_grad=True)
labels = torch.tensor([3, -100, 39, 0, -100, 17])
loss = torch.nn.CrossEntropyLoss(ignore_index=-100)(m(x), labels)
loss.backward()

out = "tests/fixtures/mlp_"
def save(name, v):
    np.save(out + name + ".npy", v.detach().numpy().astype(np.float32))
base = m.base_model.model
save("x", x)
save("labels", labels.double())
save("loss", loss.reshape(1))
save("dx", x.grad)
save("norm", base.norm.weight)
save("norm2", base.norm2.weight)
save("head", base.lm_head.weight)
for name in ["gate_proj", "up_proj", "down_proj"]:
    lin = getattr(base.mlp, name)
    save(name, lin.base_layer.weight)
    save(name + "_A", lin.lora_A["default"].weight)
    save(name + "_B", lin.lora_B["default"].weight)
    save(name + "_dA", lin.lora_A["default"].weight.grad)
    save(name + "_dB", lin.lora_B["default"].weight.grad)
    assert lin.scaling["default"] == 2.0
print("loss", loss.item())
