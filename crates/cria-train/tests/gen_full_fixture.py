#!/usr/bin/env python3
"""Writes the fixtures of tests/full_grads.rs (cria_train::full, every weight trained, against
PyTorch autograd in float64):

For each of the committed tiny models tests/fixtures/tiny-llama2 (LLaMA-2 shape: MHA, untied head)
and tests/fixtures/tiny-llama31 (LLaMA-3.1 shape: GQA 8/2, llama3 rope_scaling, tied head), loaded
by transformers in float64 (eager attention):
- tests/fixtures/full/{name}.json: a batch of three sequences of unequal length (tokens from
  torch seed 24, targets[i] = the token predicted after position i, -100 on about a fifth of the
  positions and on each sequence's last), the summed cross-entropy over trained targets, their
  count, and the mean (the loss whose gradient is stored);
- tests/fixtures/full/{name}_grads.safetensors: d(mean loss)/d(every parameter), float32, under
  Hugging Face's names (a tied head's gradient is in model.embed_tokens.weight, as autograd
  accumulates it).
Each sequence runs on its own (positions restart at 0), as cria packs them. Run from
crates/cria-train (CI only reads the files):  python3 tests/gen_full_fixture.py
"""
import json
import os

import torch
from safetensors.torch import save_file
from transformers import LlamaForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
OUT = os.path.join(HERE, "fixtures", "full")
LENS = [9, 14, 6]


def batch(vocab, gen):
    seqs = []
    for n in LENS:
        tokens = torch.randint(0, vocab, (n + 1,), generator=gen)
        targets = tokens[1:].clone()
        drop = torch.rand(n, generator=gen) < 0.2
        targets[drop] = -100
        targets[-1] = -100
        seqs.append((tokens[:n].tolist(), targets.tolist()))
    return seqs


def main():
    os.makedirs(OUT, exist_ok=True)
    gen = torch.Generator().manual_seed(24)
    for name in ["tiny-llama2", "tiny-llama31"]:
        model = LlamaForCausalLM.from_pretrained(
            os.path.join(ROOT, "tests", "fixtures", name),
            dtype=torch.float64,
            attn_implementation="eager",
        )
        model.train()
        seqs = batch(model.config.vocab_size, gen)
        total = torch.zeros((), dtype=torch.float64)
        count = 0
        for tokens, targets in seqs:
            logits = model(torch.tensor([tokens])).logits[0]
            tgt = torch.tensor(targets)
            total = total + torch.nn.functional.cross_entropy(
                logits, tgt, ignore_index=-100, reduction="sum"
            )
            count += int((tgt != -100).sum())
        mean = total / count
        mean.backward()
        grads = {
            n: p.grad.detach().to(torch.float32).contiguous()
            for n, p in model.named_parameters()
        }
        save_file(grads, os.path.join(OUT, f"{name}_grads.safetensors"), {"format": "pt"})
        with open(os.path.join(OUT, f"{name}.json"), "w") as f:
            json.dump(
                {
                    "tokens": [s[0] for s in seqs],
                    "targets": [s[1] for s in seqs],
                    "loss_sum": total.item(),
                    "count": count,
                    "loss_mean": mean.item(),
                },
                f,
                indent=1,
            )
        print(name, "loss", mean.item(), "count", count, "tensors", len(grads))


if __name__ == "__main__":
    main()
