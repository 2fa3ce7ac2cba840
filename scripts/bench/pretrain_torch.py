#!/usr/bin/env python3
"""PyTorch reference of `cria pretrain` (issue 24): the same LLaMA (transformers'
LlamaForCausalLM), the same initial weights, the same windows in the same order, the same AdamW
decay groups, warmup + cosine, clipping and gradient accumulation, over the same token shards.

    python3 scripts/bench/pretrain_torch.py --data DATA_DIR --size 1M --ctx 256 \
        --batch-tokens 8192 --micro-batch-tokens 4096 --max-steps 96 --eval-every 8 \
        --eval-tokens 16384 --seed 0 -t 1 --log torch_log.jsonl

What it mirrors (crates/cria-train/src/pretrain.rs and trainer.rs, see their docs):
- init: cria's `FullParams::init_hf` replayed bit for bit: a xoshiro256** generator seeded by
  SplitMix64 from --seed, Box-Muller normal(0, 0.02) drawn in entry order (embedding; per layer
  q, k, v, o, gate, up, down; the untied head), norms 1 (`--init HF_FOLDER` loads a folder
  instead);
- data: the train shards as one stream cut into windows of ctx + 1 tokens, epoch e visiting them
  in `epoch_order(W, seed, e)` (Fisher-Yates from xoshiro seeded by seed ^ (e+1)*0xd1b54a32d192ed03);
- step: micro-batches of at most micro_seqs windows, each loss the SUM of token cross-entropies
  divided by batch_seqs * ctx (the batch mean), backward accumulated; then
  clip_grad_norm_(max_grad_norm); torch.optim.AdamW (betas 0.9/0.999, eps 1e-8) with two
  groups: matrices and an untied head with weight_decay, norms and the embedding without;
- lr: linear warmup from 0, then cosine (transformers' curve) mapped to min_lr_ratio..1;
- eval: the first eval_tokens / ctx windows of the val stream, mean token cross-entropy.

The functions are imported by scripts/fixtures/make_pretrain_ref.py (the 100-step fixture)."""
import argparse
import json
import math
import os
import struct
import sys
import time

import numpy as np

M64 = (1 << 64) - 1

# cria_train::pretrain::PRESETS: (dim, layers, heads, kv heads, ffn)
PRESETS = {
    "1M": (128, 5, 4, 2, 384),
    "5M": (256, 6, 8, 4, 768),
    "10M": (384, 6, 6, 2, 1024),
    "20M": (384, 12, 6, 2, 1024),
}


class Rng:
    """cria_train::optim::Rng: xoshiro256** seeded by SplitMix64."""

    def __init__(self, seed):
        x = seed & M64
        s = []
        for _ in range(4):
            x = (x + 0x9E3779B97F4A7C15) & M64
            z = x
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
            s.append(z ^ (z >> 31))
        self.s = s

    def next_u64(self):
        s = self.s
        r = (s[1] * 5) & M64
        r = ((r << 7) | (r >> 57)) & M64
        r = (r * 9) & M64
        t = (s[1] << 17) & M64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = ((s[3] << 45) | (s[3] >> 19)) & M64
        return r

    def next_f64(self):
        return (self.next_u64() >> 11) * (1.0 / (1 << 53))

    def normal(self, mean, std):
        u1 = 1.0 - self.next_f64()
        u2 = self.next_f64()
        return mean + std * math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


def epoch_order(n, seed, epoch):
    """cria_train::trainer::epoch_order(n, seed, epoch, shuffle = true)."""
    order = list(range(n))
    rng = Rng(seed ^ (((epoch + 1) * 0xD1B54A32D192ED03) & M64))
    for i in range(n - 1, 0, -1):
        j = rng.next_u64() % (i + 1)
        order[i], order[j] = order[j], order[i]
    return order


def param_names(cfg):
    """FullParams entry order: (name, kind) with kind in embedding, norm, matrix, head."""
    out = [("model.embed_tokens.weight", "embedding")]
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}"
        out.append((f"{p}.input_layernorm.weight", "norm"))
        out += [(f"{p}.self_attn.{n}_proj.weight", "matrix") for n in "qkvo"]
        out.append((f"{p}.post_attention_layernorm.weight", "norm"))
        out += [(f"{p}.mlp.{n}_proj.weight", "matrix") for n in ["gate", "up", "down"]]
    out.append(("model.norm.weight", "norm"))
    if not cfg.get("tie_word_embeddings", True):
        out.append(("lm_head.weight", "head"))
    return out


def cria_init(model, cfg, seed, std=0.02):
    """cria's FullParams::init_hf(std, Rng::new(seed)), written into `model` (any dtype)."""
    import torch

    rng = Rng(seed)
    sd = dict(model.named_parameters())
    with torch.no_grad():
        for name, kind in param_names(cfg):
            p = sd[name]
            if kind == "norm":
                p.fill_(1.0)
            else:
                v = [rng.normal(0.0, std) for _ in range(p.numel())]
                # cria draws f64 and stores f32.
                a = np.asarray(v, dtype=np.float64).astype(np.float32)
                p.copy_(torch.from_numpy(a).reshape(p.shape).to(p.dtype))


def hf_config(cfg):
    from transformers import LlamaConfig

    c = dict(cfg)
    c.setdefault("rms_norm_eps", 1e-5)
    c.setdefault("rope_theta", 10000.0)
    c.setdefault("tie_word_embeddings", True)
    c.setdefault("hidden_act", "silu")
    return LlamaConfig(**c)


def make_model(cfg, dtype):
    import torch
    from transformers import LlamaForCausalLM

    m = LlamaForCausalLM(hf_config(cfg)).to(dtype)
    m.config._attn_implementation = "eager"
    return m


def lr_at(step, lr, warmup, steps, min_ratio, schedule="cosine"):
    """cria_train::pretrain::lr_at (transformers' schedules, floor min_ratio after warmup)."""
    if step < warmup:
        return lr * step / max(1, warmup)
    if schedule == "constant":
        f = 1.0
    else:
        prog = (step - warmup) / max(1, steps - warmup)
        if schedule == "linear":
            f = max(0.0, 1.0 - prog)
        else:
            f = max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * prog)))
    return lr * (min_ratio + (1.0 - min_ratio) * f)


def make_optimizer(model, cfg, weight_decay):
    import torch

    sd = dict(model.named_parameters())
    decay, no_decay = [], []
    for name, kind in param_names(cfg):
        (decay if kind in ("matrix", "head") else no_decay).append(sd[name])
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=0.0,
        betas=(0.9, 0.999),
        eps=1e-8,
    )


def window(stream, ctx, i):
    w = stream[i * ctx : i * ctx + ctx + 1]
    return w[:-1], w[1:]


def train_step(model, opt, stream, ctx, ids, micro, lr, max_grad_norm):
    """One optimizer step over the windows `ids` (the batch), in micro-batches of `micro`;
    returns (mean loss, grad norm before clipping)."""
    import torch
    import torch.nn.functional as F

    dtype = next(model.parameters()).dtype
    opt.zero_grad(set_to_none=False)
    scale = 1.0 / (len(ids) * ctx)
    total = 0.0
    for k in range(0, len(ids), micro):
        chunk = ids[k : k + micro]
        x = torch.tensor(np.stack([window(stream, ctx, i)[0] for i in chunk]).astype(np.int64))
        y = torch.tensor(np.stack([window(stream, ctx, i)[1] for i in chunk]).astype(np.int64))
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).to(dtype), y.reshape(-1), reduction="sum")
        total += loss.item()
        (loss * scale).backward()
    params = [p for p in model.parameters()]
    if max_grad_norm > 0:
        gn = torch.nn.utils.clip_grad_norm_(params, max_grad_norm).item()
    else:
        gn = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params)).item()
    for g in opt.param_groups:
        g["lr"] = lr
    opt.step()
    return total * scale, gn


def evaluate(model, stream, ctx, n_windows, micro):
    import torch
    import torch.nn.functional as F

    n = min(n_windows, (len(stream) - 1) // ctx)
    total, count = 0.0, 0
    with torch.no_grad():
        for k in range(0, n, micro):
            chunk = range(k, min(n, k + micro))
            x = torch.tensor(np.stack([window(stream, ctx, i)[0] for i in chunk]).astype(np.int64))
            y = torch.tensor(np.stack([window(stream, ctx, i)[1] for i in chunk]).astype(np.int64))
            logits = model(input_ids=x).logits
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum").item()
            count += y.numel()
    return total / max(1, count)


def read_shard(path):
    b = open(path, "rb").read()
    assert b[:8] == b"CRIATOK\0", path
    _, width, count, _, _ = struct.unpack("<IIQII", b[8:32])
    return np.frombuffer(b[32:], dtype=np.uint16 if width == 2 else np.uint32, count=count)


def read_split(data, split):
    man = json.load(open(os.path.join(data, "data.json")))
    parts = [read_shard(os.path.join(data, s["file"])) for s in man[split]["shards"]]
    return man, (np.concatenate(parts) if parts else np.zeros(0, np.uint16))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--size", default="1M")
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--batch-tokens", type=int, default=16384)
    ap.add_argument("--micro-batch-tokens", type=int, default=4096)
    ap.add_argument("--max-steps", type=int, required=True)
    ap.add_argument("--stop-after", type=int, default=0, help="stop after this many steps (the schedule still spans --max-steps): a prefix of a long run")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=float, default=0.05)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--max-grad-norm", type=float, default=1.0)
    ap.add_argument("--eval-every", type=int, default=0)
    ap.add_argument("--eval-tokens", type=int, default=65536)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-t", "--threads", type=int, default=1)
    ap.add_argument("--log", required=True)
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    man, train = read_split(a.data, "train")
    _, val = read_split(a.data, "val")
    dim, layers, heads, kv, ffn = PRESETS[a.size]
    cfg = dict(hidden_size=dim, num_hidden_layers=layers, num_attention_heads=heads,
               num_key_value_heads=kv, intermediate_size=ffn, vocab_size=man["vocab_size"],
               max_position_embeddings=a.ctx, tie_word_embeddings=True)
    model = make_model(cfg, torch.float32)
    cria_init(model, cfg, a.seed)
    opt = make_optimizer(model, cfg, a.weight_decay)
    batch = max(1, a.batch_tokens // a.ctx)
    micro = min(batch, max(1, a.micro_batch_tokens // a.ctx))
    warmup = math.ceil(a.max_steps * a.warmup) if a.warmup < 1 else int(a.warmup)  # optim::warmup_steps
    n_win = (len(train) - 1) // a.ctx
    epoch, index, order = 0, 0, epoch_order(n_win, a.seed, 0)
    log = open(a.log, "w")
    t_start = time.time()
    for step in range(a.stop_after if a.stop_after > 0 else a.max_steps):
        ids = []
        while len(ids) < batch:
            if index >= len(order):
                epoch, index = epoch + 1, 0
                order = epoch_order(n_win, a.seed, epoch)
            ids.append(order[index])
            index += 1
        lr = lr_at(step, a.lr, warmup, a.max_steps, a.min_lr_ratio)
        t0 = time.time()
        loss, gn = train_step(model, opt, train, a.ctx, ids, micro, lr, a.max_grad_norm)
        tokens = (step + 1) * batch * a.ctx
        tps = batch * a.ctx / (time.time() - t0)
        log.write(json.dumps({"step": step + 1, "tokens": tokens, "loss": loss, "lr": lr, "grad_norm": gn, "tokens_per_s": tps}) + "\n")
        print(f"step {step + 1}/{a.max_steps} loss {loss:.4f} lr {lr:.2e} |g| {gn:.3f} {tps:.0f} tok/s", flush=True)
        if (a.eval_every > 0 and (step + 1) % a.eval_every == 0) or step + 1 == a.max_steps or step + 1 == a.stop_after:
            vl = evaluate(model, val, a.ctx, max(1, a.eval_tokens // a.ctx), micro)
            log.write(json.dumps({"step": step + 1, "tokens": tokens, "val_loss": vl}) + "\n")
            print(f"step {step + 1}: val loss {vl:.4f}", flush=True)
        log.flush()
    print(f"done in {time.time() - t_start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
