//! `cria perplexity --kl-divergence-base` / `--kl-divergence` against llama.cpp's figures
//! (tests/fixtures/smollm2/llamacpp_kld.json, made by scripts/fixtures/make_llamacpp_kld.sh; CI
//! does not run llama.cpp): the base file byte-identical to llama-perplexity's where cria's logits
//! are (SmolLM2 Q4_1, `CRIA_REPACK=0`, F32 KV cache), the KL statistics of one pair within 0.5% of
//! llama.cpp's over the same base file, and bad base files refused with a clear error.

use cria_kernels::Isa;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::{repo, smol};

fn fixture() -> serde_json::Value {
    let p = repo().join("tests/fixtures/smollm2/llamacpp_kld.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("cria_kld_{}_{name}", std::process::id()))
}

/// `cria perplexity -c 128` of tests/fixtures/text/short.txt (3 chunks) on the plain (not
/// repacked) path, with `env` and `args` added.
fn cria(env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cria"))
        .env("CRIA_REPACK", "0")
        .envs(env.iter().copied())
        .args(["perplexity", "-t", "2", "-c", "128", "-m"])
        .arg(smol())
        .arg("-f")
        .arg(repo().join("tests/fixtures/text/short.txt"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "cria failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn sha256(p: &Path) -> String {
    format!("{:x}", Sha256::digest(std::fs::read(p).unwrap()))
}

/// The number after the ':' of the line that starts with `key` (llama.cpp's layout).
fn figure(out: &str, key: &str) -> f64 {
    out.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_once(':'))
        .and_then(|(_, v)| v.split_whitespace().next())
        .and_then(|v| v.trim_end_matches('%').parse().ok())
        .unwrap_or_else(|| panic!("no {key:?} in:\n{out}"))
}

/// Whether this CPU has the AVX2 kernels, whose plain path gives llama.cpp's bits (the fixtures'
/// llama.cpp is an AVX2 build); without them the checks against its bits are SKIPPED.
fn avx2() -> bool {
    let yes = Isa::Avx2.available();
    if !yes {
        eprintln!("SKIPPED: this CPU lacks AVX2");
    }
    yes
}

/// (a) cria's base file is llama.cpp's, byte for byte (on the AVX2 kernels; the AVX-512 ones give the
/// same file, checked by hand).
#[test]
fn base_file_is_llama_cpps() {
    if !avx2() {
        return;
    }
    let f = fixture();
    let base = tmp("f32.kld");
    ok(&cria(
        &[("CRIA_CPU", "avx2")],
        &[
            "--kv-type",
            "f32",
            "--kl-divergence-base",
            base.to_str().unwrap(),
        ],
    ));
    let got = sha256(&base);
    let _ = std::fs::remove_file(&base);
    assert_eq!(
        got,
        f["base_f32kv"]["sha256"].as_str().unwrap(),
        "cria's base file differs from llama-perplexity's"
    );
}

/// (c) The KL statistics of a pair, within 0.5% of llama.cpp's over the same base file: the base
/// is cria's Q4_1 with a q4_0 KV cache (the AVX2 kernels, so its bits do not depend on the CPU;
/// llama.cpp read this very file), the candidate Q4_1 with an F32 cache, whose logits are
/// llama.cpp's bit for bit.
#[test]
fn kl_statistics_within_half_percent_of_llama_cpp() {
    if !avx2() {
        return;
    }
    let f = fixture();
    let k = &f["kld_q4_0kv_base"];
    let base = tmp("q4_0.kld");
    let b = base.to_str().unwrap();
    ok(&cria(
        &[("CRIA_CPU", "avx2")],
        &["--kv-type", "q4_0", "--kl-divergence-base", b],
    ));
    assert_eq!(
        sha256(&base),
        k["base_sha256"].as_str().unwrap(),
        "the base file is not the one llama.cpp read"
    );
    let out = ok(&cria(
        &[("CRIA_CPU", "avx2")],
        &[
            "--kv-type",
            "f32",
            "--kl-divergence-base",
            b,
            "--kl-divergence",
        ],
    ));
    let _ = std::fs::remove_file(&base);
    eprintln!("{out}");
    for (key, want) in k["figures"].as_object().unwrap() {
        let want = want.as_f64().unwrap();
        let got = figure(&out, key);
        assert!(
            (got - want).abs() <= 0.005 * want.abs(),
            "{key}: cria {got}, llama.cpp {want}"
        );
    }
}

fn fails(o: &Output, what: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{what}: exit 0");
    assert!(!err.contains("panicked"), "{what}: {err}");
    assert!(err.contains("error"), "{what}: no error message: {err}");
    eprintln!("{what}: {}", err.trim());
}

/// A truncated base file, one of another vocab, one whose header claims 2^31 chunks, and
/// --kl-divergence without a base file: clear errors, exit != 0.
#[test]
fn bad_base_files_are_refused() {
    let base = tmp("bad.kld");
    let b = base.to_str().unwrap();
    ok(&cria(&[], &["--chunks", "2", "--kl-divergence-base", b]));
    let good = std::fs::read(&base).unwrap();
    let kld = |bytes: &[u8]| {
        std::fs::write(&base, bytes).unwrap();
        cria(&[], &["--kl-divergence-base", b, "--kl-divergence"])
    };
    fails(&kld(&good[..good.len() - 100]), "truncated");
    let mut v = good.clone();
    v[12..16].copy_from_slice(&32000i32.to_le_bytes());
    fails(&kld(&v), "vocab 32000");
    let mut v = good.clone();
    v[16..20].copy_from_slice(&i32::MAX.to_le_bytes());
    fails(&kld(&v), "2^31 chunks");
    fails(&kld(b"_logits_"), "header only");
    let _ = std::fs::remove_file(&base);
    fails(&cria(&[], &["--kl-divergence"]), "no base file");
}
