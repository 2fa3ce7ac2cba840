//! `Model::load_merged`: adapters folded into the weights give the logits of the same adapters
//! applied unmerged (f32 paths, within 1e-4 of the logit range), on an untied base, a quantized
//! one and a tied one whose head the adapters change (untied by the merge); Q/K terms in either
//! row layout; modules_to_save replacements; scale 0 gives the base bit for bit; an adapter for
//! another base or with a NaN is refused with the tensor named.

use cria_core::Tensor;
use cria_kernels::CpuBackend;
use cria_model::{ActiveLora, AdapterFile, LoadOptions, Lora, Model};
use std::path::Path;
use std::sync::Arc;

mod common;
use common::{adapter, all_logits as logits, noise, quantized_copy, tiny, tiny31};

const F32: LoadOptions = LoadOptions { f32: true };

/// Two adapters over every matrix and the head: the second in Hugging Face's Q/K row layout,
/// replacing the embedding table (modules_to_save); with the user's scales.
fn adapters(m: &Model) -> Vec<(AdapterFile, f32)> {
    let a = adapter(m, 4, 1);
    let mut b = adapter(m, 3, 2);
    b.interleaved = false;
    let (dim, vocab) = (m.config.dim, m.config.vocab_size);
    b.replace.push(
        Tensor::from_f32(
            "token_embd.weight",
            vec![dim, vocab],
            &noise(dim * vocab, 99),
        )
        .unwrap(),
    );
    vec![(a, 0.8), (b, 1.5)]
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

fn range(a: &[f32]) -> f32 {
    let (lo, hi) = a
        .iter()
        .fold((f32::MAX, f32::MIN), |(l, h), &x| (l.min(x), h.max(x)));
    hi - lo
}

#[test]
fn merged_matches_unmerged() {
    let dir = std::env::temp_dir().join(format!("cria-lora-merge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tokens: Vec<u32> = (0..20).map(|i| (i * 37 + 5) % 500).collect();
    for path in [tiny(), quantized_copy(&dir), tiny31()] {
        let b = CpuBackend::new(2);
        let base = Model::load(&path, F32, &b).unwrap();
        let active: Vec<ActiveLora> = adapters(&base)
            .into_iter()
            .enumerate()
            .map(|(i, (f, scale))| ActiveLora {
                lora: Arc::new(Lora::build(&format!("a{i}"), f, &base, &b).unwrap()),
                scale,
            })
            .collect();
        let unmerged = logits(&base, &b, &tokens, &active);
        let plain = logits(&base, &b, &tokens, &[]);
        let merged_model = Model::load_merged(&path, F32, &b, &adapters(&base)).unwrap();
        if base.config.tied_embeddings {
            assert!(
                !merged_model.weights.tied && !merged_model.config.tied_embeddings,
                "{}: a merge that changes the head must untie it",
                path.display()
            );
        }
        let merged = logits(&merged_model, &b, &tokens, &[]);
        let (d, r) = (max_diff(&unmerged, &merged), range(&unmerged));
        eprintln!(
            "{}: merged vs unmerged max |diff| {d:.3e}, logit range {r:.3}",
            path.display()
        );
        assert!(d <= 1e-4 * r, "{}: {d} > 1e-4 * {r}", path.display());
        let moved = max_diff(&plain, &merged);
        assert!(
            moved > 1e-2 * r,
            "the merge moved the logits by only {moved}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn scale_zero_merges_to_the_base_bit_for_bit() {
    let b = CpuBackend::new(1);
    let base = Model::load(&tiny(), LoadOptions::default(), &b).unwrap();
    let zero = vec![(adapter(&base, 4, 5), 0.0)];
    let merged = Model::load_merged(&tiny(), LoadOptions::default(), &b, &zero).unwrap();
    let tokens = [1u32, 50, 60, 70, 80];
    assert_eq!(
        logits(&base, &b, &tokens, &[]),
        logits(&merged, &b, &tokens, &[])
    );
}

fn merge_error(path: &Path, f: AdapterFile) -> String {
    let b = CpuBackend::new(1);
    match Model::load_merged(path, LoadOptions::default(), &b, &[(f, 1.0)]) {
        Ok(_) => panic!("a bad adapter was merged into {}", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_adapters_are_refused() {
    let b = CpuBackend::new(1);
    let llama2 = Model::load(&tiny(), LoadOptions::default(), &b).unwrap();
    // The tiny LLaMA-2 adapter over the LLaMA-3.1 shape (2 KV heads, ffn 192).
    let e = merge_error(&tiny31(), adapter(&llama2, 2, 3));
    assert!(
        e.contains("blk.0.attn_k.weight") && e.contains("another base"),
        "unclear message: {e}"
    );
    let mut nan = adapter(&llama2, 2, 3);
    let p = &mut nan.pairs[5];
    let mut v = p.b.to_f32_vec().unwrap();
    v[7] = f32::NAN;
    p.b = Tensor::from_f32(p.b.name.clone(), p.b.ne.clone(), &v).unwrap();
    let target = p.target.clone();
    let e = merge_error(&tiny(), nan);
    assert!(
        e.contains(&target) && e.contains("non-finite"),
        "unclear message: {e}"
    );
    let e = merge_error(&tiny(), {
        let mut f = adapter(&llama2, 2, 3);
        f.pairs[0].target = "blk.9.attn_q.weight".into();
        f
    });
    assert!(e.contains("layer 9"), "unclear message: {e}");
}

/// `Model::load_merged` with the PEFT fixtures (tests/fixtures/lora, from
/// scripts/fixtures/make_lora_refs.py) gives PEFT's logits within 1e-4 of the logit range, over
/// the GGUF base and the Hugging Face folder of the tiny models (SmolLM2's cases are
/// crates/cria/tests/cli_lora.rs's). Tied tiny-llama31 `a_all` / `combo`: the unmerged PEFT
/// model's logits (PEFT's merge_and_unload also moves the shared input embedding; cria unties).
#[test]
fn merged_peft_fixtures_give_peft_logits() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let refp = root.join("tests/fixtures/lora/reference.json");
    if !refp.exists() {
        eprintln!(
            "SKIPPED: {} is missing (the lorafix fixtures)",
            refp.display()
        );
        return;
    }
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&refp).unwrap()).unwrap();
    let path = |s: &serde_json::Value| {
        std::path::PathBuf::from(
            s.as_str()
                .unwrap()
                .replace("<repo>", root.to_str().unwrap()),
        )
    };
    let b = CpuBackend::new(2);
    let mut n = 0;
    for c in r["cases"].as_array().unwrap() {
        let (name, base) = (c["name"].as_str().unwrap(), c["base"].as_str().unwrap());
        if base == "smollm2" {
            continue;
        }
        let ids: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let (_, want) = cria_core::npy::read_f32(&path(&c["peft"])).unwrap();
        let range = c["logit_range"].as_f64().unwrap() as f32;
        for m in [path(&c["base_gguf"]), path(&c["base_hf"])] {
            let adapters: Vec<(AdapterFile, f32)> = c["adapters"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| {
                    let f = AdapterFile::open(&path(&a["path"])).unwrap();
                    (f, a["scale"].as_f64().unwrap() as f32)
                })
                .collect();
            let model = Model::load_merged(&m, F32, &b, &adapters).unwrap();
            let d = max_diff(&logits(&model, &b, &ids, &[]), &want);
            eprintln!(
                "{base} {name} merged over {}: max |diff| {d:.3e} vs PEFT ({:.2e} of the range)",
                m.file_name().unwrap().to_string_lossy(),
                d / range
            );
            assert!(d <= 1e-4 * range, "{base} {name}: {d} > 1e-4 * {range}");
            n += 1;
        }
    }
    assert!(n > 0, "no case ran");
}
