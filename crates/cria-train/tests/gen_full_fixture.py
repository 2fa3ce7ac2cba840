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
- in the same JSON, "adamw": 12 optimizer steps from the committed weights (float64), cycling over
  the batch above and two more (torch seed 25), each step: mean loss over the batch, backward,
  clip_grad_norm_(1.0), torch.optim.AdamW(lr 3e-3, betas (0.9, 0.999), eps 1e-8) with two
  parameter groups: weight_decay 0.1 on the matrices and an untied head, 0 on the norms and the
  embedding (a tied head is the embedding); the loss of every step (before its update).
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


def batch_loss(model, seqs):
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    for tokens, targets in seqs:
        logits = model(torch.tensor([tokens])).logits[0]
        tgt = torch.tensor(targets)
        total = total + torch.nn.functional.cross_entropy(
            logits, tgt, ignore_index=-100, reduction="sum"
        )
        count += int((tgt != -100).sum())
    return total, count


STEPS, LR, WD, CLIP = 12, 3e-3, 0.1, 1.0


def adamw_run(model, batches):
    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and "embed_tokens" not in n]
    plain = [p for n, p in model.named_parameters() if not (p.dim() == 2 and "embed_tokens" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WD}, {"params": plain, "weight_decay": 0.0}],
        lr=LR, betas=(0.9, 0.999), eps=1e-8,
    )
    losses = []
    for step in range(STEPS):
        opt.zero_grad()
        total, count = batch_loss(model, batches[step % len(batches)])
        (total / count).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        losses.append((total / count).item())
    return losses


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
        total, count = batch_loss(model, seqs)
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
        model.zero_grad()
        gen2 = torch.Generator().manual_seed(25)
        extra = [batch(model.config.vocab_size, gen2) for _ in range(2)]
        losses = adamw_run(model, [seqs] + extra)
        with open(os.path.join(OUT, f"{name}.json")) as f:
            j = json.load(f)
        j["adamw"] = {
            "steps": STEPS, "lr": LR, "weight_decay": WD, "max_grad_norm": CLIP,
            "batches": [[[s[0] for s in b], [s[1] for s in b]] for b in extra],
            "losses": losses,
        }
        with open(os.path.join(OUT, f"{name}.json"), "w") as f:
            json.dump(j, f, indent=1)
        print(name, "adamw losses", losses[0], "->", losses[-1])
        print(name, "loss", mean.item(), "count", count, "tensors", len(grads))


if __name__ == "__main__":
    main()
