#!/usr/bin/env python3
"""LoRA/QLoRA fine-tuning speed and peak memory: cria finetune beside PyTorch+PEFT (issue 23).

Same CPU, same threads (torch.set_num_threads(N) / `cria finetune -t N`), same data (fixed
synthetic token ids, seeded, one sequence of --seq tokens per micro-batch, every token trained),
LoRA r 16 alpha 32, no dropout, on q,k,v,o,gate,up,down, AdamW lr 2e-4; --warmup steps untimed,
then --steps timed steps. Rows:

  torch-lora   PyTorch+PEFT over the HF folder in f32
  cria-lora    cria finetune over the same HF folder (f32 LoRA)
  cria-qlora   cria finetune over a Q4_K_M GGUF of it (made by `cria quantize DIR OUT Q4_K_M`)

for the models made by scripts/bench/make_hf_models.py (smol: SmolLM2-135M dequantized from the
shipped GGUF; 1b: the LLaMA-3.2-1B shape, random). Each run is a separate process, wrapped by a
fresh Python whose RUSAGE_CHILDREN.ru_maxrss is that one process's peak RSS. tokens/s: timed
tokens / timed seconds (PyTorch: wall clock around the timed steps; cria: the tokens and
tokens_per_s of its training_log.jsonl lines past the warm-up). Prints a markdown table.

Usage:
  finetune_vs_peft.py --models DIR [--models-list smol,1b] [--systems torch,cria,qlora]
                      [--threads 2] [--seq 512] [--steps 10] [--warmup 2] [--cria target/ci/cria]
  (the torch child: finetune_vs_peft.py --child-torch HF_DIR --seq .. --steps .. --warmup .. --threads ..)
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.join(HERE, "../..")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MODELS = {"smol": "smol-f32", "1b": "llama32-1b-f32"}


def synthetic(vocab, seq, n, seed=1234):
    """n sequences of seq token ids in [10, min(vocab, 32000)) from a fixed LCG (no numpy RNG
    version drift)."""
    x, top, out = seed, min(vocab, 32000), []
    for _ in range(n):
        row = []
        for _ in range(seq):
            x = (x * 6364136223846793005 + 1442695040888963407) % (1 << 64)
            row.append(10 + (x >> 33) % (top - 10))
        out.append(row)
    return out


def vocab_of(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        return json.load(f)["vocab_size"]


def child_torch(a):
    """One PyTorch+PEFT run; prints a JSON line {tokens_per_s, ...}."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(a.child_torch, dtype=torch.float32)
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                             target_modules=TARGETS, task_type="CAUSAL_LM"))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0)
    data = synthetic(vocab_of(a.child_torch), a.seq, a.warmup + a.steps)
    t0 = None
    for i, row in enumerate(data):
        if i == a.warmup:
            t0 = time.perf_counter()
        ids = torch.tensor([row])
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        print(f"  torch step {i} loss {loss.item():.4f}", file=sys.stderr, flush=True)
    dt = time.perf_counter() - t0
    print(json.dumps({"tokens_per_s": a.seq * a.steps / dt, "seconds": dt,
                      "threads": torch.get_num_threads()}))


def measured(cmd):
    """Runs cmd under a fresh Python; (its stdout, its peak RSS in MiB)."""
    wrap = ("import resource,subprocess,sys\n"
            "r=subprocess.run(sys.argv[1:],stdout=subprocess.PIPE)\n"
            "sys.stdout.buffer.write(r.stdout)\n"
            "print('\\nPEAK_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
            "sys.exit(r.returncode)\n")
    r = subprocess.run([sys.executable, "-c", wrap] + cmd, stdout=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({r.returncode})")
    out, peak = r.stdout.rsplit("PEAK_KIB", 1)
    return out, int(peak) / 1024


def run_torch(a, model_dir):
    out, peak = measured([sys.executable, os.path.abspath(__file__), "--child-torch", model_dir,
                          "--seq", str(a.seq), "--steps", str(a.steps), "--warmup",
                          str(a.warmup), "--threads", str(a.threads)])
    return json.loads(out.strip().splitlines()[-1])["tokens_per_s"], peak


def run_cria(a, base, work, name):
    """cria finetune over base (HF folder or GGUF) on the same synthetic rows."""
    data = os.path.join(work, f"{name}.jsonl")
    model_dir = base if os.path.isdir(base) else a.hf_dir_of[base]
    with open(data, "w") as f:
        for row in synthetic(vocab_of(model_dir), a.seq, a.warmup + a.steps):
            f.write(json.dumps({"input_ids": row}) + "\n")
    out = os.path.join(work, f"{name}-out")
    cmd = [a.cria, "finetune", "-m", base, "--data", data, "-o", out, "--lora-r", "16",
           "--lora-alpha", "32", "--lora-dropout", "0", "--target", "q,k,v,o,gate,up,down",
           "--micro-batch", "1", "--grad-accum", "1", "--max-steps", str(a.warmup + a.steps),
           "--ctx", str(a.seq), "--lr", "2e-4", "--warmup", "0", "--schedule", "constant",
           "--max-grad-norm", "0", "--no-shuffle", "-t", str(a.threads)]
    _, peak = measured(cmd)
    toks, secs = 0.0, 0.0
    with open(os.path.join(out, "training_log.jsonl")) as f:
        for line in f:
            v = json.loads(line)
            if "tokens_per_s" in v and v["step"] > a.warmup:
                toks += v["tokens"]
                secs += v["tokens"] / v["tokens_per_s"]
    return toks / secs, peak


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models")
    ap.add_argument("--models-list", default="smol,1b")
    ap.add_argument("--systems", default="torch,cria,qlora")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--cria", default=os.path.join(REPO, "target/ci/cria"))
    ap.add_argument("--work", default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--child-torch", default=None)
    a = ap.parse_args()
    if a.child_torch:
        return child_torch(a)
    if not a.models:
        sys.exit("--models DIR (made by scripts/bench/make_hf_models.py) is required")
    work = a.work or tempfile.mkdtemp(prefix="cria-ft-bench-")
    os.makedirs(work, exist_ok=True)
    a.hf_dir_of = {}
    systems = a.systems.split(",")
    rows = []
    for m in a.models_list.split(","):
        hf = os.path.join(a.models, MODELS[m])
        res = {}
        if "torch" in systems:
            res["PyTorch+PEFT LoRA f32"] = run_torch(a, hf)
            print(f"{m} torch: {res['PyTorch+PEFT LoRA f32']}", file=sys.stderr, flush=True)
        if "cria" in systems:
            res["cria LoRA f32"] = run_cria(a, hf, work, f"{m}-lora")
            print(f"{m} cria: {res['cria LoRA f32']}", file=sys.stderr, flush=True)
        if "qlora" in systems:
            q = os.path.join(work, f"{m}-Q4_K_M.gguf")
            if not os.path.exists(q):
                subprocess.run([a.cria, "quantize", hf, q, "Q4_K_M", "-t", str(a.threads)],
                               check=True)
            a.hf_dir_of[q] = hf
            res["cria QLoRA Q4_K_M"] = run_cria(a, q, work, f"{m}-qlora")
            print(f"{m} qlora: {res['cria QLoRA Q4_K_M']}", file=sys.stderr, flush=True)
        rows.append((m, res))
    print(f"\n{a.threads} threads, {a.seq} tokens per micro-batch (1 sequence), LoRA r 16 alpha 32 "
          f"on q,k,v,o,gate,up,down, {a.steps} timed steps after {a.warmup}\n")
    print("| model | system | tokens/s | peak MiB | tokens/s vs PyTorch | peak vs PyTorch |")
    print("|---|---|---:|---:|---:|---:|")
    for m, res in rows:
        ref = res.get("PyTorch+PEFT LoRA f32")
        for sysname, (tps, peak) in res.items():
            rt = f"{tps / ref[0]:.2f}x" if ref else "-"
            rp = f"{peak / ref[1]:.2f}x" if ref else "-"
            print(f"| {m} | {sysname} | {tps:.1f} | {peak:.0f} | {rt} | {rp} |")


if __name__ == "__main__":
    main()
