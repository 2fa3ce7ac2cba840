#!/usr/bin/env python3
"""Files for llm.c's train_gpt2.c (used by llmc_train.sh; nothing of llm.c is copied here):

  model.bin   a random-init GPT-2 checkpoint: 256 int32 header (magic 20240326, version 3, maxT,
              V, L, NH, C, Vp), then the f32 parameters in train_gpt2.c's order (wte, wpe, ln1w,
              ln1b, qkvw, qkvb, attprojw, attprojb, ln2w, ln2b, fcw, fcb, fcprojw, fcprojb, lnfw,
              lnfb); GPT-2's init (std 0.02, residual projections 0.02/sqrt(2L), norms 1, biases 0).
  train.bin / val.bin  token files: 256 int32 header (magic 20240520, version 1, count), uint16
              tokens, taken from a cria token folder's train/val shards (or random ones).

usage: llmc_init.py OUT_DIR --dim C --layers L --heads NH --vocab V --ctx T [--data CRIA_DATA]
"""
import argparse
import os
import struct

import numpy as np


def cria_tokens(d, split):
    with open(os.path.join(d, f"{split}_000000.bin"), "rb") as f:
        hdr = f.read(32)
        assert hdr[:8] == b"CRIATOK\0", "not a cria shard"
        width = struct.unpack("<I", hdr[12:16])[0]
        assert width == 2, "llm.c token files are uint16"
        return np.frombuffer(f.read(), dtype=np.uint16)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--dim", type=int, required=True)
    ap.add_argument("--layers", type=int, required=True)
    ap.add_argument("--heads", type=int, required=True)
    ap.add_argument("--vocab", type=int, required=True)
    ap.add_argument("--ctx", type=int, required=True)
    ap.add_argument("--data", help="a cria token folder (else random tokens)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.dim % a.heads:
        ap.error("--heads must divide --dim")
    os.makedirs(a.out, exist_ok=True)
    c, n_l, v, t = a.dim, a.layers, a.vocab, a.ctx
    vp = (v + 127) // 128 * 128
    rng = np.random.default_rng(a.seed)

    def normal(n, std):
        return rng.normal(0.0, std, size=n).astype(np.float32)

    zeros = lambda n: np.zeros(n, np.float32)  # noqa: E731
    ones = lambda n: np.ones(n, np.float32)  # noqa: E731
    res = 0.02 / (2 * n_l) ** 0.5
    wte = normal(vp * c, 0.02)
    wte[v * c :] = 0.0  # padded rows
    tensors = [
        wte, normal(t * c, 0.01), ones(n_l * c), zeros(n_l * c),
        normal(n_l * 3 * c * c, 0.02), zeros(n_l * 3 * c),
        normal(n_l * c * c, res), zeros(n_l * c),
        ones(n_l * c), zeros(n_l * c),
        normal(n_l * 4 * c * c, 0.02), zeros(n_l * 4 * c),
        normal(n_l * c * 4 * c, res), zeros(n_l * c),
        ones(c), zeros(c),
    ]
    header = np.zeros(256, np.int32)
    header[:8] = [20240326, 3, t, v, n_l, a.heads, c, vp]
    with open(os.path.join(a.out, "model.bin"), "wb") as f:
        f.write(header.tobytes())
        for x in tensors:
            f.write(x.tobytes())
    for split in ("train", "val"):
        if a.data:
            toks = cria_tokens(a.data, split)
        else:
            toks = rng.integers(0, v, size=1 << 20 if split == "train" else 1 << 14).astype(np.uint16)
        if int(toks.max()) >= v:
            raise SystemExit(f"token {int(toks.max())} not below --vocab {v}")
        h = np.zeros(256, np.int32)
        h[:3] = [20240520, 1, len(toks)]
        with open(os.path.join(a.out, f"{split}.bin"), "wb") as f:
            f.write(h.tobytes())
            f.write(toks.astype(np.uint16).tobytes())
    n = sum(x.size for x in tensors)
    print(f"llm.c GPT-2: C {c} L {n_l} NH {a.heads} V {v} (Vp {vp}) maxT {t}: {n} parameters")


if __name__ == "__main__":
    main()
