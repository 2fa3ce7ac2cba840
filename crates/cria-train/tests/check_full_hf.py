#!/usr/bin/env python3
"""Checks that the folders `FullModel::save_hf` writes load in transformers and compute what cria
computes: run
  CRIA_FULL_HF_OUT=/tmp/full_hf cargo test --profile ci -p cria-train --test full_grads save_hf
  python3 crates/cria-train/tests/check_full_hf.py /tmp/full_hf
For each folder (init_untied, init_tied, tiny-llama31): LlamaForCausalLM.from_pretrained loads it
with no missing or unexpected keys, every weight equals the safetensors value, the tie is as
config.json says, and (tiny-llama31) the logits equal those of the original committed folder.
"""
import os
import sys

import torch
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", "..", ".."))


def main(base):
    for name in ["init_untied", "init_tied", "tiny-llama31"]:
        d = os.path.join(base, name)
        model, info = LlamaForCausalLM.from_pretrained(d, output_loading_info=True)
        bad = {k: v for k, v in info.items() if v}
        assert not bad, f"{name}: {bad}"
        st = load_file(os.path.join(d, "model.safetensors"))
        sd = model.state_dict()
        for k, v in st.items():
            assert torch.equal(sd[k], v), f"{name}: {k} differs"
        tied = model.config.tie_word_embeddings
        assert tied == ("lm_head.weight" not in st), name
        if tied:
            assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
        ids = torch.tensor([[1, 5, 9, 23, 42, 7, 3]])
        with torch.no_grad():
            out = model(ids).logits
        if name == "tiny-llama31":
            ref = LlamaForCausalLM.from_pretrained(os.path.join(ROOT, "tests/fixtures/tiny-llama31"))
            with torch.no_grad():
                want = ref(ids).logits
            assert torch.equal(out, want), f"{name}: logits differ {(out - want).abs().max()}"
        print(f"{name}: loads, {len(st)} tensors equal, tied={tied}, logits {tuple(out.shape)} ok")
    print("all ok")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/full_hf")
