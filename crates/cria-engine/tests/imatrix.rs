//! `cria_engine::imatrix` on tests/fixtures/tiny-llama2 (F32, untied output head): the entries
//! llama-imatrix would store (every layer matrix; output.weight only with process_output), the
//! counts (tokens), layer 0's q/k/v sums against an independent f64 computation from the GGUF
//! (embedding rows, RMS norm), the skipped small batches, and the forward's logits unchanged by
//! the probe.

use cria_core::gguf::GgufFile;
use cria_engine::eval::ChunkEval;
use cria_engine::imatrix::{compute, Params};
use cria_engine::{load, LoadOptions, LoadedModel};
use cria_model::KvType;
use std::path::PathBuf;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tiny() -> PathBuf {
    repo().join("tests/fixtures/tiny-llama2/model.gguf")
}

fn model() -> LoadedModel {
    load(
        &tiny(),
        &LoadOptions {
            f32: false,
            threads: Some(1),
            kv_type: KvType::F32,
        },
    )
    .unwrap()
}

fn tokens(l: &LoadedModel) -> Vec<u32> {
    let text = std::fs::read_to_string(repo().join("tests/fixtures/text/short.txt")).unwrap();
    l.tok.encode(&text, true, false)
}

fn params(batch: usize, process_output: bool) -> Params {
    Params {
        ctx: 64,
        batch,
        max_chunks: Some(3),
        process_output,
        dataset: "short.txt".into(),
    }
}

fn f32s(g: &GgufFile, name: &str) -> Vec<f32> {
    let t = g.tensor(name).unwrap();
    t.bytes()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

#[test]
fn entries_counts_and_layer0_sums() {
    let l = model();
    let toks = tokens(&l);
    let mut seen = Vec::new();
    let (m, r) = compute(&l, &toks, &params(512, true), |i, ppl, _| {
        seen.push((i, ppl));
        Ok(())
    })
    .unwrap();
    assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!((r.chunks, r.scored), (3, 3 * 31));
    assert_eq!((m.chunk_count, m.chunk_size), (3, 64));
    assert_eq!(m.datasets, ["short.txt"]);
    let names: Vec<&str> = m.entries.iter().map(|e| e.name.as_str()).collect();
    let mut want = vec!["output.weight".to_string()];
    for b in 0..2 {
        for w in [
            "attn_k",
            "attn_output",
            "attn_q",
            "attn_v",
            "ffn_down",
            "ffn_gate",
            "ffn_up",
        ] {
            want.push(format!("blk.{b}.{w}.weight"));
        }
    }
    want.sort();
    assert_eq!(names, want);
    for e in &m.entries {
        assert_eq!(e.counts, [3.0 * 64.0], "{}", e.name);
        let n = if e.name.ends_with("ffn_down.weight") {
            172
        } else {
            64
        };
        assert_eq!(e.in_sum2.len(), n, "{}", e.name);
        assert!(e.in_sum2.iter().all(|v| v.is_finite() && *v > 0.0));
    }
    let q = &m.entry("blk.0.attn_q.weight").unwrap().in_sum2;
    assert_eq!(q, &m.entry("blk.0.attn_k.weight").unwrap().in_sum2);
    assert_eq!(q, &m.entry("blk.0.attn_v.weight").unwrap().in_sum2);
    assert_eq!(
        m.entry("blk.1.ffn_gate.weight").unwrap().in_sum2,
        m.entry("blk.1.ffn_up.weight").unwrap().in_sum2
    );

    // Independently: layer 0's q/k/v input is rmsnorm(embedding) * attn_norm, per token of each
    // chunk (its first token replaced by BOS).
    let g = GgufFile::open(tiny()).unwrap();
    let emb = f32s(&g, "token_embd.weight");
    let norm = f32s(&g, "blk.0.attn_norm.weight");
    let eps = g.get_f64("llama.attention.layer_norm_rms_epsilon").unwrap();
    let dim = norm.len();
    let mut want = vec![0f64; dim];
    for c in 0..3 {
        for (j, &t) in toks[c * 64..(c + 1) * 64].iter().enumerate() {
            let t = if j == 0 { l.tok.bos().unwrap() } else { t } as usize;
            let x = &emb[t * dim..(t + 1) * dim];
            let ms = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / dim as f64;
            let s = 1.0 / (ms + eps).sqrt();
            for (k, w) in want.iter_mut().enumerate() {
                let y = x[k] as f64 * s * norm[k] as f64;
                *w += y * y;
            }
        }
    }
    let worst = q
        .iter()
        .zip(&want)
        .map(|(&a, &b)| ((a as f64 - b) / b).abs())
        .fold(0f64, f64::max);
    assert!(worst < 1e-5, "layer 0 sums: max rel diff {worst:e}");
}

#[test]
fn output_only_with_process_output_and_small_batches_skipped() {
    let l = model();
    let toks = tokens(&l);
    let (m, _) = compute(&l, &toks, &params(512, false), |_, _, _| Ok(())).unwrap();
    assert!(m.entry("output.weight").is_none());
    assert_eq!(m.entries.len(), 14);
    // Forwards of 8 tokens: llama.cpp skips multiplications of fewer than 16 rows, so nothing is
    // collected, which is an error rather than an empty file.
    let e = compute(&l, &toks, &params(8, false), |_, _, _| Ok(()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("16 or more rows"), "{e}");
    // 48-token forwards of 64-token chunks: the 16-token remainders count, as 48 + 16 = 64.
    let (m48, _) = compute(&l, &toks, &params(48, false), |_, _, _| Ok(())).unwrap();
    assert_eq!(m48.entries[0].counts, [3.0 * 64.0]);
    // Too little text for the context.
    let e = compute(&l, &toks[..100], &params(512, false), |_, _, _| Ok(()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs at least 128"), "{e}");
}

#[test]
fn probe_leaves_logits_unchanged() {
    let l = model();
    let toks = tokens(&l);
    let rows = |probe: bool| {
        let mut e = ChunkEval::new(&l, 64, 512).unwrap();
        if probe {
            e.set_probe(Some(Box::new(|_, _, _| {})));
        }
        let mut out = Vec::new();
        e.run(&toks, 1, |r| {
            out.extend_from_slice(r.logits);
            Ok(())
        })
        .unwrap();
        out
    };
    let (a, b) = (rows(false), rows(true));
    assert!(!a.is_empty());
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
}
