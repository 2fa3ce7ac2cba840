#!/usr/bin/env python3
"""Writes small safetensors files with the reference implementation (`pip install safetensors
torch`; tested with safetensors 0.8.0, torch 2.x) for crates/cria-core/tests/safetensors.rs:

  fixtures/safetensors/single/model.safetensors   F32, F16, BF16, I64 (unsupported by cria),
                                                  a 0-d scalar and an empty tensor
  fixtures/safetensors/sharded/model-0000i-of-00002.safetensors + model.safetensors.index.json
                                                  (the layout transformers' save_pretrained uses)
  fixtures/safetensors/expected.json              per tensor: dtype, PyTorch shape, values as f64
                                                  (exact for every float dtype involved)
Deterministic; run: python3 crates/cria-core/tests/gen_safetensors_fixtures.py
"""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parent / "fixtures" / "safetensors"


def main():
    g = torch.Generator().manual_seed(3)
    t = {
        "model.layers.0.self_attn.q_proj.weight": torch.randn(3, 4, generator=g),
        "model.norm.weight": torch.randn(5, generator=g).to(torch.float16),
        "lm_head.weight": torch.randn(2, 3, 1, generator=g).to(torch.bfloat16),
        "position_ids": torch.arange(3, dtype=torch.int64),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 2),
    }
    (OUT / "single").mkdir(parents=True, exist_ok=True)
    save_file(t, str(OUT / "single" / "model.safetensors"), metadata={"format": "pt"})

    shards = [["model.layers.0.self_attn.q_proj.weight", "model.norm.weight"], ["lm_head.weight", "position_ids"]]
    (OUT / "sharded").mkdir(parents=True, exist_ok=True)
    weight_map, total = {}, 0
    for i, names in enumerate(shards):
        fname = f"model-{i + 1:05}-of-{len(shards):05}.safetensors"
        save_file({n: t[n] for n in names}, str(OUT / "sharded" / fname), metadata={"format": "pt"})
        for n in names:
            weight_map[n] = fname
            total += t[n].numel() * t[n].element_size()
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (OUT / "sharded" / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")

    expected = {}
    for n, x in t.items():
        expected[n] = {
            "dtype": {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}[x.dtype],
            "shape": list(x.shape),
            "values": x.double().reshape(-1).tolist(),
        }
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            print(p.relative_to(OUT), p.stat().st_size)


if __name__ == "__main__":
    main()
