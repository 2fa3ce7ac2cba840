"""Checks that a PEFT folder written by cria (cria_train::adapter_io) loads unchanged in PEFT and
computes what cria computes with it.

Run after `cargo test --profile ci -p cria-train --test adapter_io_roundtrip` (which leaves the
adapter in target/tmp/peft-tiny-llama31) and `cargo build --profile ci -p cria`:

    python3 crates/cria-train/tests/check_peft_load.py

Loads tests/fixtures/tiny-llama31 in transformers (f32), the adapter with
PeftModel.from_pretrained (no missing or unexpected keys allowed), and compares the logits of a
token sequence with `cria logits --lora` over the HF folder and over the GGUF, with the PEFT folder
and with the GGUF adapter. Not run by CI (it needs torch); prints the largest differences.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from peft import PeftModel
from transformers import LlamaForCausalLM

root = os.path.abspath(os.path.join(os.path.dirname(__file__), "../../.."))
fix = os.path.join(root, "tests/fixtures/tiny-llama31")
adapter = os.path.join(root, "target/tmp/peft-tiny-llama31")
cria = os.path.join(root, "target/ci/cria")
tokens = [1, 17, 42, 99, 3, 250, 7, 511, 64, 12]

base = LlamaForCausalLM.from_pretrained(fix, torch_dtype=torch.float32)
with torch.no_grad():
    ref_base = base(torch.tensor([tokens])).logits[0].numpy()
model = PeftModel.from_pretrained(base, adapter)
cfg = json.load(open(os.path.join(adapter, "adapter_config.json")))
st_keys = set()
from safetensors import safe_open

with safe_open(os.path.join(adapter, "adapter_model.safetensors"), "pt") as f:
    st_keys = set(f.keys())
loaded = {k for k, _ in model.named_parameters() if "lora_" in k}
assert len(loaded) == len(st_keys), (len(loaded), len(st_keys))
model.eval()
with torch.no_grad():
    ref = model(torch.tensor([tokens])).logits[0].numpy()
print(f"PEFT: {len(st_keys)} tensors loaded, r={cfg['r']} alpha={cfg['lora_alpha']}; "
      f"adapter moves the logits by {np.abs(ref - ref_base).max():.3e}")

worst = 0.0
for m in [fix, os.path.join(fix, "model.gguf")]:
    for lora in [adapter, os.path.join(adapter, "adapter.gguf")]:
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "l.npy")
            subprocess.run([cria, "logits", "-m", m, "--f32", "--lora", lora, "--all",
                            "--tokens", ",".join(map(str, tokens)), "--out", out],
                           check=True, capture_output=True)
            got = np.load(out)
        diff = np.abs(got - ref).max() / np.abs(ref).max()
        worst = max(worst, diff)
        print(f"cria -m {os.path.relpath(m, root)} --lora {os.path.relpath(lora, root)}: "
              f"max |diff| / max |logit| = {diff:.2e}")
sys.exit(0 if worst < 1e-4 else 1)
