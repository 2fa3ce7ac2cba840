#!/usr/bin/env python3
"""Training speed of `cria pretrain` beside PyTorch (transformers LlamaForCausalLM, f32,
torch.optim.AdamW) and, optionally, llm.c's CPU trainer `train_gpt2.c` (issue 24, "Speed").

Same model (a `cria pretrain --size` preset: LLaMA, RMSNorm, RoPE, GQA, SwiGLU, tied head), same
threads, batch (sequences), sequence length and token data (random tokens written as a cria shard
folder). Each system runs in its own process; its peak RSS is that process's ru_maxrss (wait4).

  cria     `cria pretrain --max-steps N`; tokens/s from training_log.jsonl (tokens_per_s of each
           step), the first --warmup steps skipped.
  pytorch  forward (loss), backward, clip_grad_norm_(1.0), AdamW step, zero_grad; timed per step
           with the same warm-up skipped; torch.set_num_threads(--threads).
  llm.c    (with --llmc PATH) scripts/bench/llmc_train.sh: train_gpt2.c built with
           gcc -O3 -march=native -fopenmp, a random-init GPT-2 of the same width/depth/vocab
           (GPT-2's FFN is 4*dim, no GQA), the same B and T, OMP_NUM_THREADS=--threads.

MFU = FLOPs per token x tokens/s / peak, with
  FLOPs per token = 6 * N_matrix + 6 * L * T * d_attn
  N_matrix = the weights that enter a matmul (all projections and the LM head, vocab x dim even
             when tied; not the norms, biases or the embedding lookup), L layers, T the sequence
             length, d_attn = heads x head_dim (causal attention: QK^T and AV, forward and backward).
  peak     = this CPU's f32 FLOP/s from a timed GEMM (torch.mm 2048^3, best of 5, same threads):
             what a tuned BLAS reaches here, not the data-sheet figure.

Usage:
  cargo build --profile ci --bin cria
  python3 scripts/bench/pretrain_vs_torch.py --sizes 5M,20M --threads 2 --steps 8 --warmup 2 \
      [--llmc /path/to/llm.c]

Prints a markdown table: size, system, ms/step, tok/s, ratio (cria over the system), MFU,
peak RSS, and the CPU seconds (user + system) of the whole process (set-up and every step: on a
shared machine, where wall-clock rates depend on the other load, a second view of the work).
"""

import argparse
import json
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# (name, dim, layers, heads, kv heads, ffn): crates/cria-train/src/pretrain.rs PRESETS.
PRESETS = {
    "1M": (128, 5, 4, 2, 384),
    "5M": (256, 6, 8, 4, 768),
    "20M": (384, 12, 6, 2, 1024),
}


def llama_flops_per_token(size, vocab, ctx):
    dim, layers, heads, kv, ffn = PRESETS[size]
    hd = dim // heads
    per_layer = dim * (heads * hd) + 2 * dim * (kv * hd) + (heads * hd) * dim + 3 * dim * ffn
    n_matrix = layers * per_layer + vocab * dim
    return 6 * n_matrix + 6 * layers * ctx * heads * hd, n_matrix


def gpt2_flops_per_token(dim, layers, vocab_padded, ctx):
    n_matrix = layers * 12 * dim * dim + vocab_padded * dim
    return 6 * n_matrix + 6 * layers * ctx * dim, n_matrix


# ---------------------------------------------------------------- data


def write_cria_data(d, vocab, n_train, n_val, seed):
    """A cria token folder (crates/cria-train/src/shards.rs layout) of random tokens."""
    import numpy as np

    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(seed)
    m = {
        "format": "cria-token-shards",
        "version": 1,
        "tokenizer": "none",
        "vocab_size": vocab,
        "eos_id": 0,
        "token_width": 2,
        "done": True,
    }
    for split, n in (("train", n_train), ("val", n_val)):
        toks = rng.integers(0, vocab, size=n, dtype=np.uint16)
        name = f"{split}_000000.bin"
        hdr = b"CRIATOK\0" + struct.pack("<IIQII", 1, 2, n, vocab, 0)
        with open(os.path.join(d, name), "wb") as f:
            f.write(hdr)
            f.write(toks.tobytes())
        m[split] = {"shards": [{"file": name, "tokens": n}], "tokens": n, "documents": 1}
    with open(os.path.join(d, "data.json"), "w") as f:
        json.dump(m, f, indent=1)


def read_cria_tokens(d, split):
    import numpy as np

    p = os.path.join(d, f"{split}_000000.bin")
    with open(p, "rb") as f:
        f.read(32)
        return np.frombuffer(f.read(), dtype=np.uint16)


# ---------------------------------------------------------------- processes


LAST_CPU_S = [0.0]


def run_measured(cmd, env=None, log=None):
    """Runs cmd; returns (returncode, peak RSS in MiB of that process, stdout text); the CPU
    seconds (user + system) of the process go to LAST_CPU_S[0]."""
    out = open(log, "w") if log else subprocess.PIPE
    p = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    text = ""
    if log is None:
        text = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    LAST_CPU_S[0] = ru.ru_utime + ru.ru_stime
    if log:
        out.close()
        with open(log) as f:
            text = f.read()
    return p.returncode, ru.ru_maxrss / 1024.0, text


def mean_step_s(step_seconds, warmup):
    kept = step_seconds[warmup:] or step_seconds[-1:]
    return sum(kept) / len(kept)


# ---------------------------------------------------------------- workers (own processes)


def worker_torch(a):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dim, layers, heads, kv, ffn = PRESETS[a.size]
    cfg = LlamaConfig(
        vocab_size=a.vocab,
        hidden_size=dim,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=a.ctx,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
    )
    model = LlamaForCausalLM(cfg).float().train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-4,
        betas=(0.9, 0.95),
    )
    toks = torch.from_numpy(read_cria_tokens(a.data, "train").astype("int64"))
    n = a.batch * (a.ctx + 1)
    times = []
    for s in range(a.steps):
        off = (s * n) % max(1, toks.numel() - n)
        x = toks[off : off + n].view(a.batch, a.ctx + 1)
        t0 = time.perf_counter()
        logits = model(input_ids=x[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, a.vocab), x[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        print(f"step {s + 1} loss {loss.item():.4f} {times[-1] * 1e3:.1f} ms", flush=True)
    print("RESULT " + json.dumps({"step_s": times}), flush=True)


def worker_peak(a):
    import torch

    torch.set_num_threads(a.threads)
    n = 2048
    x, y = torch.randn(n, n), torch.randn(n, n)
    torch.mm(x, y)
    best = 1e9
    for _ in range(5):
        t0 = time.perf_counter()
        torch.mm(x, y)
        best = min(best, time.perf_counter() - t0)
    print("RESULT " + json.dumps({"peak": 2 * n**3 / best}), flush=True)


def result_line(text):
    for line in reversed(text.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError("no RESULT line in:\n" + text[-3000:])


# ---------------------------------------------------------------- systems


def self_cmd(a, role, extra=()):
    return [sys.executable, os.path.abspath(__file__), "--worker", role,
            "--threads", str(a.threads), "--vocab", str(a.vocab), "--ctx", str(a.ctx),
            "--batch", str(a.batch), "--steps", str(a.steps), "--data", a.data, *extra]


def bench_cria(a, size, work):
    run_dir = os.path.join(work, f"cria-{size}")
    cmd = [a.cria, "pretrain", "--data", a.data, "--size", size, "-o", run_dir,
           "--max-steps", str(a.steps), "--ctx", str(a.ctx),
           "--batch-tokens", str(a.batch * a.ctx), "--micro-batch-tokens", str(a.batch * a.ctx),
           "--eval-tokens", str(a.ctx), "--threads", str(a.threads)]
    rc, rss, text = run_measured(cmd, log=os.path.join(work, f"cria-{size}.log"))
    if rc != 0:
        raise RuntimeError(f"cria pretrain failed ({rc}):\n{text[-3000:]}")
    steps = []
    with open(os.path.join(run_dir, "training_log.jsonl")) as f:
        for line in f:
            v = json.loads(line)
            if "tokens_per_s" in v:
                steps.append(a.batch * a.ctx / v["tokens_per_s"])
    return mean_step_s(steps, a.warmup), rss, LAST_CPU_S[0]


def bench_torch(a, size, work):
    rc, rss, text = run_measured(self_cmd(a, "torch", ["--size", size]),
                                 log=os.path.join(work, f"torch-{size}.log"))
    if rc != 0:
        raise RuntimeError(f"torch worker failed ({rc}):\n{text[-3000:]}")
    return mean_step_s(result_line(text)["step_s"], a.warmup), rss, LAST_CPU_S[0]


def bench_llmc(a, size, work):
    dim, layers, heads, _, _ = PRESETS[size]
    env = dict(os.environ)
    cmd = ["bash", os.path.join(HERE, "llmc_train.sh"), "--llmc", a.llmc, "--work",
           os.path.join(work, f"llmc-{size}"), "--dim", str(dim), "--layers", str(layers),
           "--heads", str(heads), "--vocab", str(a.vocab), "--ctx", str(a.ctx),
           "--batch", str(a.batch), "--steps", str(a.steps), "--threads", str(a.threads),
           "--data", a.data]
    rc, _, text = run_measured(cmd, env=env, log=os.path.join(work, f"llmc-{size}.log"))
    if rc != 0:
        raise RuntimeError(f"llmc_train.sh failed ({rc}):\n{text[-3000:]}")
    r = result_line(text)
    return mean_step_s(r["step_s"], a.warmup), r["rss_mib"], r["cpu_s"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="5M,20M")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16, help="sequences per step")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2, help="steps not timed")
    ap.add_argument("--cria", default=os.path.join(ROOT, "target", "ci", "cria"))
    ap.add_argument("--llmc", help="an llm.c checkout (train_gpt2.c, llmc/): also run llm.c")
    ap.add_argument("--systems", default="cria,pytorch,llm.c")
    ap.add_argument("--work", help="scratch folder (default: a temp folder)")
    ap.add_argument("--data")
    ap.add_argument("--size")
    ap.add_argument("--worker", choices=["torch", "peak"])
    a = ap.parse_args()
    if a.worker == "torch":
        return worker_torch(a)
    if a.worker == "peak":
        return worker_peak(a)

    if a.warmup >= a.steps:
        sys.exit("--warmup must be below --steps")
    work = a.work or tempfile.mkdtemp(prefix="pbench-")
    os.makedirs(work, exist_ok=True)
    a.data = os.path.join(work, "data")
    write_cria_data(a.data, a.vocab, max(1 << 20, 2 * a.steps * a.batch * (a.ctx + 1)),
                    a.batch * a.ctx + 1, seed=0)  # llm.c's loader wants B*T+1 val tokens
    systems = a.systems.split(",")
    if "llm.c" in systems and not a.llmc:
        systems.remove("llm.c")

    rc, _, text = run_measured(self_cmd(a, "peak"))
    peak = result_line(text)["peak"]
    print(f"peak f32 (torch.mm 2048^3, {a.threads} threads): {peak / 1e9:.1f} GFLOP/s",
          file=sys.stderr)

    rows = []
    for size in a.sizes.split(","):
        res = {}
        for s in systems:
            fn = {"cria": bench_cria, "pytorch": bench_torch, "llm.c": bench_llmc}[s]
            print(f"{size}: {s} ...", file=sys.stderr, flush=True)
            res[s] = fn(a, size, work)
        fl_llama, _ = llama_flops_per_token(size, a.vocab, a.ctx)
        dim, layers, _, _, _ = PRESETS[size]
        fl_gpt2, _ = gpt2_flops_per_token(dim, layers, a.vocab, a.ctx)
        cria_tps = a.batch * a.ctx / res["cria"][0] if "cria" in res else None
        for s, (step_s, rss, cpu) in res.items():
            tps = a.batch * a.ctx / step_s
            fl = fl_gpt2 if s == "llm.c" else fl_llama
            ratio = "" if cria_tps is None or s == "cria" else f"{cria_tps / tps:.2f}x"
            rows.append((size, s, f"{step_s * 1e3:.0f}", f"{tps:.0f}", ratio,
                         f"{100 * fl * tps / peak:.1f}%", f"{fl / 1e6:.1f}", f"{rss:.0f}", f"{cpu:.0f}"))
    print(f"\n{a.threads} threads, batch {a.batch} x ctx {a.ctx}, vocab {a.vocab}, "
          f"{a.steps} steps ({a.warmup} warm-up not timed); peak {peak / 1e9:.1f} GFLOP/s\n")
    print("| size | system | ms/step | tok/s | cria / this | MFU | MFLOP/token | peak RSS MiB "
          "| process CPU s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
