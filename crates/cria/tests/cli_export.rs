//! `cria export` against transformers' verdict (tests/fixtures/export/reference.json, made by
//! scripts/fixtures/make_export_ref.py): the binary re-exports each fixture case and must write
//! the very bytes transformers loaded (sha256 of every file), cria must run the exported folder
//! as it runs the GGUF, transformers' logits on those bytes must be cria's within f32 noise, and
//! cria's tokenizer read back from the exported tokenizer.json must give transformers' ids.
//! Cases whose source is reference data outside a clean checkout (SmolLM2, llama.cpp's vocab
//! GGUFs) print SKIPPED when it is missing. Bad input: clear errors, nothing left behind.

mod common;

use common::repo;
use cria_core::npy;
use cria_kernels::CpuBackend;
use cria_model::{forward, KvCache, KvType, LoadOptions, Logits, Model, Scratch};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

fn cria() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cria"))
}

fn ref_dir() -> PathBuf {
    std::env::var_os("CRIA_REF_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("ref"))
}

fn skipped(why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cria-export-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn fixture() -> Value {
    let p = repo().join("tests/fixtures/export/reference.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn export(src: &Path, out: &Path, args: &[&str]) -> std::process::Output {
    cria()
        .arg("export")
        .arg(src)
        .arg(out)
        .args(args)
        .output()
        .unwrap()
}

/// Last-position logits of `prompt`, f32 weights and cache (the exact path).
fn last_logits(path: &Path, prompt: &[u32]) -> Vec<f32> {
    let b = CpuBackend::new(2);
    let m = Model::load(path, LoadOptions { f32: true }, &b)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut kv = KvCache::with_type(&m, prompt.len(), KvType::F32);
    let mut s = Scratch::new(&m, prompt.len(), Logits::Last);
    forward(&m, &b, prompt, 0, &mut kv, &mut s, Logits::Last).unwrap();
    s.logits().to_vec()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn range(v: &[f32]) -> f32 {
    let (lo, hi) = v
        .iter()
        .fold((f32::MAX, f32::MIN), |(l, h), &x| (l.min(x), h.max(x)));
    hi - lo
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn check_case(name: &str, c: &Value) {
    let rel = c["source"].as_str().unwrap();
    let src = if c["source_in_ref"].as_bool().unwrap() {
        ref_dir().join(rel)
    } else {
        repo().join(rel)
    };
    if !src.exists() {
        return skipped(&format!("export case {name}: {} is missing", src.display()));
    }
    let dir = tmp(name);
    let out = dir.join("out");
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let o = export(&src, &out, &args);
    assert!(
        o.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    // The same bytes transformers was given.
    let files = c["files"].as_object().unwrap();
    let mut written: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    let want: Vec<&String> = files.keys().collect();
    assert_eq!(written.iter().collect::<Vec<_>>(), want, "{name}: files");
    for (f, v) in files {
        let bytes = std::fs::read(out.join(f)).unwrap();
        let hex: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, v["sha256"].as_str().unwrap(), "{name}: sha256 of {f}");
    }

    // When the fixture was made, transformers found the original checkpoint's values in it.
    if let Some(o) = c.get("original_tensors") {
        assert_eq!(o["values_equal"], true, "{name}: {o}");
    }

    // The tokenizer read back gives transformers' ids, as the GGUF's does.
    let from_hf = cria_tokenizer::Tokenizer::from_hf(
        &out.join("tokenizer.json"),
        Some(&out.join("tokenizer_config.json")),
    )
    .unwrap();
    let g = cria_core::gguf::GgufFile::open(&src).unwrap();
    let from_gguf = cria_tokenizer::Tokenizer::from_gguf(&g).unwrap();
    let texts = c["tokenizer"].as_array().unwrap();
    for t in texts {
        let text = t["text"].as_str().unwrap();
        for (key, add) in [("ids", false), ("ids_special", true)] {
            let hf = ids(&t[key]);
            assert_eq!(
                from_hf.encode(text, add, true),
                hf,
                "{name}: exported tokenizer, {text:?}, add_special {add}"
            );
            assert_eq!(
                from_gguf.encode(text, add, true),
                hf,
                "{name}: GGUF tokenizer, {text:?}, add_special {add}"
            );
        }
        if let Some(l) = t.get("llamacpp") {
            // llama.cpp's vector (add_special false, parse_special false: test-tokenizer-0).
            assert_eq!(
                from_hf.encode(text, false, false),
                ids(l),
                "{name}: {text:?}"
            );
        }
    }
    if let Some(a) = c.get("llamacpp_agreement") {
        eprintln!(
            "{name}: transformers on the exported tokenizer agrees with llama.cpp on {} vectors",
            a.as_str().unwrap()
        );
    }

    // Logits: transformers (fixture) vs cria on the exported folder vs cria on the GGUF.
    if let Some(p) = c.get("prompt_ids") {
        let prompt = ids(p);
        let folder = last_logits(&out, &prompt);
        let (_, hf) = npy::read_f32(
            &repo()
                .join("tests/fixtures/export")
                .join(c["logits"].as_str().unwrap()),
        )
        .unwrap();
        let tol = 1e-4 * range(&folder);
        let d_hf = max_abs_diff(&hf, &folder);
        eprintln!("{name}: max |transformers - cria(exported)| = {d_hf:.3e} (tolerance {tol:.3e})");
        assert!(d_hf <= tol, "{name}: transformers vs cria {d_hf}");
        if !args.contains(&"f16") && !args.contains(&"bf16") {
            let gguf = last_logits(&src, &prompt);
            let d = max_abs_diff(&gguf, &folder);
            let d2 = max_abs_diff(&gguf, &hf);
            eprintln!(
                "{name}: max |cria(GGUF) - cria(exported)| = {d:.3e}, max |cria(GGUF) - transformers| = {d2:.3e}"
            );
            assert!(
                d <= tol && d2 <= tol,
                "{name}: GGUF vs exported {d}, vs transformers {d2}"
            );
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

fn case(name: &str) {
    let f = fixture();
    check_case(name, &f["cases"][name]);
}

#[test]
fn tiny_llama2() {
    case("tiny-llama2");
}

#[test]
fn tiny_llama2_f16() {
    case("tiny-llama2-f16");
}

#[test]
fn tiny_llama31_rope_scaling_from_rope_freqs() {
    case("tiny-llama31");
}

#[test]
fn tiny_variants_biases_gqa_linear_rope() {
    case("tiny-variants");
}

#[test]
fn tiny_variants_bf16_gives_the_checkpoint_back() {
    case("tiny-variants-bf16");
}

#[test]
fn smollm2_q4_1_dequantized() {
    case("smollm2-f32");
}

#[test]
fn vocab_llama_bpe() {
    case("vocab-llama-bpe");
}

#[test]
fn vocab_llama_spm() {
    case("vocab-llama-spm");
}

fn leftovers(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn bad_input_is_a_clear_error_and_leaves_nothing() {
    let dir = tmp("bad");
    let model = repo().join("tests/fixtures/tiny-llama2/model.gguf");
    let out = dir.join("out");

    let o = export(&model, &out, &["--dtype", "q4_0"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("f32, f16 or bf16"),
        "{err}"
    );
    assert!(leftovers(&dir).is_empty());

    // A truncated GGUF.
    let bytes = std::fs::read(&model).unwrap();
    let cut = dir.join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let o = export(&cut, &out, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && !err.contains("panicked"), "{err}");
    assert_eq!(leftovers(&dir), ["cut.gguf"], "{err}");
    std::fs::remove_file(&cut).unwrap();

    // A non-empty OUT_DIR is refused and left as it was; --force replaces it.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let o = export(&model, &out, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--force"), "{err}");
    assert_eq!(leftovers(&out), ["keep.txt"]);
    assert_eq!(leftovers(&dir), ["out"]);
    let o = export(&model, &out, &["--force"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.join("model.safetensors").is_file() && !out.join("keep.txt").exists());
    assert_eq!(leftovers(&dir), ["out"]);

    // A full disk (a file size limit; SIGXFSZ ignored, so the write fails with EFBIG): an
    // error naming the file, no OUT, no OUT.partial.
    #[cfg(unix)]
    {
        let o = Command::new("sh")
            .arg("-c")
            .arg("trap '' XFSZ; ulimit -f 200; exec \"$0\" export \"$1\" \"$2\"")
            .arg(env!("CARGO_BIN_EXE_cria"))
            .arg(&model)
            .arg(dir.join("full"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{err}");
        assert!(
            err.contains("model.safetensors") && !err.contains("panicked"),
            "{err}"
        );
        assert_eq!(leftovers(&dir), ["out"], "{err}");
    }

    // A Hugging Face folder is not a GGUF to export.
    let o = export(
        &repo().join("tests/fixtures/tiny-llama2"),
        &dir.join("hf"),
        &[],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("Hugging Face folder"),
        "{err}"
    );
    assert_eq!(leftovers(&dir), ["out"]);

    // A vocabulary-only GGUF (no weights) without --tokenizer-only: an error, nothing written.
    let vocab = dir.join("vocab.gguf");
    let g = cria_core::gguf::GgufFile::open(&model).unwrap();
    let mut w = cria_core::gguf::GgufWriter::from_gguf(&g);
    w.remove("llama.block_count");
    w.write(&vocab).unwrap();
    let o = export(&vocab, &dir.join("v"), &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("block_count"), "{err}");
    assert_eq!(leftovers(&dir), ["out", "vocab.gguf"]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn shards_as_save_pretrained_and_cria_reads_them() {
    let dir = tmp("shards");
    let model = repo().join("tests/fixtures/tiny-llama2/model.gguf");
    let one = dir.join("one");
    let many = dir.join("many");
    assert!(export(&model, &one, &[]).status.success());
    let o = export(&model, &many, &["--max-shard-size", "200K"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let files = leftovers(&many);
    assert!(files.contains(&"model.safetensors.index.json".to_string()));
    assert!(
        files.contains(&"model-00001-of-00004.safetensors".to_string()),
        "{files:?}"
    );
    let index: Value = serde_json::from_str(
        &std::fs::read_to_string(many.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(index["weight_map"].as_object().unwrap().len(), 21);
    let prompt = [1, 20, 30, 40, 50];
    assert_eq!(last_logits(&one, &prompt), last_logits(&many, &prompt));
    std::fs::remove_dir_all(&dir).ok();
}
