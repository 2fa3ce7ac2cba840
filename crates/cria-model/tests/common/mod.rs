//! Test models shared by the integration tests.
#![allow(dead_code)] // each test file uses its own subset

use cria_core::gguf::{GgufFile, GgufWriter};
use cria_core::{quant, DType, Tensor};
use cria_model::{AdapterFile, AdapterFormat, LoraTensors, Model, Target};
use std::path::{Path, PathBuf};

/// Every position's logits of `tokens` (at most 32) under `lora`, F32 cache.
pub fn all_logits(
    m: &Model,
    b: &cria_kernels::CpuBackend,
    tokens: &[u32],
    lora: &[cria_model::ActiveLora],
) -> Vec<f32> {
    use cria_model::{forward_batch, KvCache, KvType, Logits, Scratch, SeqStep};
    let mut kv = KvCache::try_with_type(m, 64, KvType::F32).unwrap();
    let mut s = Scratch::new(m, 32, Logits::All);
    let mut step = [SeqStep {
        tokens,
        pos: 0,
        kv: &mut kv,
        lora,
    }];
    forward_batch(m, b, &mut step, &mut s, Logits::All).unwrap();
    s.logits().to_vec()
}

/// The tiny LLaMA-2 fixture (F32).
pub fn tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama2/model.gguf")
}

/// The tiny model with its matrices re-quantized (rows of 64 take block types; ffn_down's rows
/// of 172 become F16).
pub fn quantized_copy(dir: &Path) -> PathBuf {
    let g = GgufFile::open(tiny()).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in &g.metadata {
        w.add(k.clone(), v.clone());
    }
    let mut datas = Vec::new();
    for t in &g.tensors {
        let dtype = match t.name.as_str() {
            n if t.ne.len() < 2 || n.ends_with("norm.weight") => t.dtype,
            "token_embd.weight" => DType::Q8_0,
            "output.weight" => DType::Q4_1,
            n if n.contains("ffn_down") => DType::F16,
            n if n.contains("ffn_") => DType::Q8_0,
            _ => DType::Q4_0,
        };
        let v = t.to_f32_vec().unwrap();
        let mut bytes = vec![0u8; dtype.bytes_for(v.len()).unwrap()];
        quant::quantize(dtype, &v, &mut bytes).unwrap();
        datas.push((t.name.clone(), dtype, t.ne.clone(), bytes));
    }
    for (name, dtype, ne, bytes) in datas {
        w.add_tensor(name, dtype, ne, bytes).unwrap();
    }
    let p = dir.join("tiny-mixed.gguf");
    w.write(&p).unwrap();
    p
}

/// The tiny LLaMA-3.1 fixture (F32, a `rope_freqs` tensor).
pub fn tiny31() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama31/model.gguf")
}

/// A copy of the GGUF `src` at `dst` with metadata keys set (`Some`) or removed (`None`), and
/// every tensor's bytes passed through `edit(name, bytes)`: a model file with one bad field.
pub fn edited_copy(
    src: &Path,
    dst: &Path,
    set: &[(&str, Option<cria_core::gguf::Value>)],
    edit: impl Fn(&str, &mut Vec<u8>),
) {
    let g = GgufFile::open(src).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in &g.metadata {
        w.add(k.clone(), v.clone());
    }
    for (k, v) in set {
        match v {
            Some(v) => w.add(*k, v.clone()),
            None => w.remove(k),
        };
    }
    for t in &g.tensors {
        let mut bytes = t.bytes().to_vec();
        edit(&t.name, &mut bytes);
        w.add_tensor(t.name.clone(), t.dtype, t.ne.clone(), bytes)
            .unwrap();
    }
    w.write(dst).unwrap();
}

/// Deterministic values in [-0.5, 0.5).
pub fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// A rank-`r` adapter over every matrix of `m` (and the head), weights from `seed`.
pub fn adapter(m: &Model, r: usize, seed: u64) -> AdapterFile {
    let mut pairs = Vec::new();
    let mut names: Vec<(String, usize, usize)> = Vec::new();
    for (l, lw) in m.weights.layers.iter().enumerate() {
        for (w, t) in lw.matrices().iter().zip(Target::LAYER) {
            names.push((format!("blk.{l}.{}.weight", t.gguf_stem()), w.rows, w.cols));
        }
    }
    names.push((
        "output.weight".into(),
        m.weights.output.rows,
        m.weights.output.cols,
    ));
    for (i, (name, rows, cols)) in names.into_iter().enumerate() {
        let s = seed * 1000 + i as u64;
        pairs.push(LoraTensors {
            a: Tensor::from_f32(format!("{name}.lora_a"), vec![cols, r], &noise(r * cols, s))
                .unwrap(),
            b: Tensor::from_f32(
                format!("{name}.lora_b"),
                vec![r, rows],
                &noise(r * rows, s + 7),
            )
            .unwrap(),
            target: name,
            scale: 0.5,
        });
    }
    AdapterFile {
        path: format!("test-adapter-{seed}").into(),
        format: AdapterFormat::Gguf,
        base_model: None,
        interleaved: true,
        pairs,
        replace: Vec::new(),
        summary: Vec::new(),
    }
}
