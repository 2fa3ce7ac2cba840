#!/usr/bin/env python3
"""Writes tests/fixtures/ce_*.npy: PyTorch's CrossEntropyLoss(ignore_index=-100) (mean over counted
positions) and its gradient over awkward logits, for tests/loss.rs. Run from crates/cria-train:
python3 tests/gen_ce_fixture.py (torch; CI only reads the files)."""
import numpy as np
import torch

torch.manual_seed(23)
t, vocab = 7, 37
logits = (torch.randn(t, vocab) * 3).float()
logits[2] += 60.0  # a row far from 0: the log-sum-exp must stay stable
logits[4, 5] = 40.0  # a row with one dominant entry
labels = torch.tensor([3, -100, 36, 0, 5, -100, 17])

x = logits.double().requires_grad_(True)
loss = torch.nn.CrossEntropyLoss(ignore_index=-100)(x, labels)
loss.backward()

out = "tests/fixtures/"
np.save(out + "ce_logits.npy", logits.numpy().astype(np.float32))
np.save(out + "ce_labels.npy", labels.numpy().astype(np.float32))
np.save(out + "ce_loss.npy", np.array([loss.item()], dtype=np.float32))
np.save(out + "ce_dlogits.npy", x.grad.numpy().astype(np.float32))
print("loss", loss.item())
