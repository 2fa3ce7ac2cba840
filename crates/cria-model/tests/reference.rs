//! End-to-end numerics against transformers: tiny random-weight models (committed under
//! tests/fixtures, made by scripts/fixtures/make_tiny_models.py), each as a Hugging Face folder and
//! as a GGUF made by llama.cpp's converter. With f32 weights cria must give transformers' logits
//! within 1e-4 of the logit range at every prompt position, and the same 32 greedy tokens.
//!
//! Tolerance: both sides compute in f32 with the same weights; differences come from summation
//! order (dot products of 64-192 terms, softmax) and sin/cos rounding, ~1e-6 relative. 1e-4 of the
//! range leaves room for that and is still far below anything a wrong permutation, RoPE scaling or
//! GQA mapping would give (those move logits by whole units).

use cria_core::npy;
use cria_kernels::CpuBackend;
use cria_model::{forward, KvCache, KvType, LoadOptions, Logits, Model, Scratch};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn ids(v: &Value, key: &str) -> Vec<u32> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("reference.json: no {key}"))
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// All-position logits of `prompt`, evaluated in chunks of `batch` tokens.
fn all_logits(m: &Model, b: &CpuBackend, prompt: &[u32], batch: usize) -> Vec<f32> {
    // transformers runs in f32: compare with an F32 cache.
    let mut kv = KvCache::with_type(m, prompt.len(), KvType::F32);
    let mut s = Scratch::new(m, batch, Logits::All);
    let mut out = vec![];
    let mut pos = 0;
    for c in prompt.chunks(batch) {
        forward(m, b, c, pos, &mut kv, &mut s, Logits::All).unwrap();
        out.extend_from_slice(s.logits());
        pos += c.len();
    }
    out
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Greedy continuation: prompt in one batch, then one token at a time (exercises the KV cache).
fn greedy(m: &Model, b: &CpuBackend, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut kv = KvCache::with_type(m, prompt.len() + n, KvType::F32);
    let mut s = Scratch::new(m, prompt.len(), Logits::Last);
    forward(m, b, prompt, 0, &mut kv, &mut s, Logits::Last).unwrap();
    let mut out = vec![];
    let mut pos = prompt.len();
    for _ in 0..n {
        let t = argmax(s.logits());
        out.push(t);
        forward(m, b, &[t], pos, &mut kv, &mut s, Logits::Last).unwrap();
        pos += 1;
    }
    out
}

fn check(name: &str, source: &Path) {
    let dir = fixtures().join(name);
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let (shape, want) = npy::read_f32(&dir.join("logits.npy")).unwrap();
    let prompt = ids(&r, "prompt_ids");
    assert_eq!(shape[0], prompt.len());
    let b = CpuBackend::new(2);
    let m = Model::load(source, LoadOptions { f32: true }, &b)
        .unwrap_or_else(|e| panic!("{}: {e}", source.display()));
    let range = want.iter().cloned().fold(f32::MIN, f32::max)
        - want.iter().cloned().fold(f32::MAX, f32::min);
    // Whole prompt in one batch, and in uneven chunks (batched prefill == incremental).
    for batch in [prompt.len(), 5] {
        let got = all_logits(&m, &b, &prompt, batch);
        assert_eq!(got.len(), want.len());
        let max_diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!("{name} {} batch {batch}: max |logit diff| {max_diff:.3e}, relative to range {range:.3}: {:.3e}", source.display(), max_diff / range);
        assert!(
            max_diff / range <= 1e-4,
            "{name} from {}: max diff {max_diff} vs range {range}",
            source.display()
        );
    }
    let g = greedy(&m, &b, &prompt, 32);
    assert_eq!(
        g,
        ids(&r, "greedy_ids"),
        "{name} from {}: greedy continuation differs",
        source.display()
    );
}

#[test]
fn tiny_llama2_hf_folder() {
    check("tiny-llama2", &fixtures().join("tiny-llama2"));
}
#[test]
fn tiny_llama2_gguf() {
    check("tiny-llama2", &fixtures().join("tiny-llama2/model.gguf"));
}
#[test]
fn tiny_llama31_hf_folder() {
    check("tiny-llama31", &fixtures().join("tiny-llama31"));
}
#[test]
fn tiny_llama31_gguf() {
    check("tiny-llama31", &fixtures().join("tiny-llama31/model.gguf"));
}
#[test]
fn tiny_variants_sharded_bf16_bias_hf_folder() {
    check("tiny-variants", &fixtures().join("tiny-variants"));
}
#[test]
fn tiny_variants_gguf() {
    check(
        "tiny-variants",
        &fixtures().join("tiny-variants/model.gguf"),
    );
}
