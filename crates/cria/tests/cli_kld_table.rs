//! `cria kld --base A -m B -m C`: the side-by-side table gives, for each candidate, exactly the
//! figures the file-based path prints for that pair (`cria perplexity --kl-divergence-base` with
//! A, then `--kl-divergence` with the candidate), digit for digit; mismatched vocabularies and
//! too-short texts are refused with a clear error.
//!
//! Models: tests/fixtures/tiny-llama2 (F32, random weights) as the base, and two copies of it
//! with every matrix perturbed (by 1% and 5%) written by the test.

use cria_core::gguf::{GgufFile, GgufWriter};
use cria_core::DType;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::repo;

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("cria_kldt_{}_{name}", std::process::id()))
}

fn tiny() -> PathBuf {
    repo().join("tests/fixtures/tiny-llama2/model.gguf")
}

fn text() -> PathBuf {
    repo().join("tests/fixtures/text/short.txt")
}

/// A copy of `src` with every F32 matrix's weights scaled by 1 + eps * sin(i).
fn perturbed(src: &Path, dst: &Path, eps: f32) {
    let g = GgufFile::open(src).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in &g.metadata {
        w.add(k.clone(), v.clone());
    }
    for t in &g.tensors {
        if t.dtype == DType::F32 && t.ne.len() == 2 && t.ne[1] > 1 {
            let v: Vec<u8> = t
                .bytes()
                .chunks_exact(4)
                .enumerate()
                .flat_map(|(i, b)| {
                    let x = f32::from_le_bytes(b.try_into().unwrap());
                    (x * (1.0 + eps * (i as f32).sin())).to_le_bytes()
                })
                .collect();
            w.add_tensor(t.name.clone(), t.dtype, t.ne.clone(), v)
                .unwrap();
        } else {
            w.add_tensor_ref(t).unwrap();
        }
    }
    w.write(dst).unwrap();
}

fn cria(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cria"))
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

/// The value text after the ':' of the line that starts with `key`, first number only.
fn figure<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_once(':'))
        .and_then(|(_, v)| v.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {key:?} in:\n{out}"))
}

#[test]
fn table_equals_file_based_figures() {
    let (a, b) = (tmp("a.gguf"), tmp("b.gguf"));
    perturbed(&tiny(), &a, 0.01);
    perturbed(&tiny(), &b, 0.05);
    let common = ["-c", "64", "-t", "1"].map(std::ffi::OsStr::new);
    let (tiny, text) = (tiny(), text());
    let table = ok(&Command::new(env!("CARGO_BIN_EXE_cria"))
        .args(["kld", "--base"])
        .arg(&tiny)
        .arg("-m")
        .arg(&a)
        .arg("-m")
        .arg(&b)
        .arg("-f")
        .arg(&text)
        .args(common)
        .output()
        .unwrap());
    eprintln!("{table}");

    let base = tmp("base.kld");
    let mut pa: Vec<&std::ffi::OsStr> = vec!["perplexity".as_ref(), "-m".as_ref()];
    pa.extend([tiny.as_os_str(), "-f".as_ref(), text.as_os_str()]);
    pa.extend(common);
    pa.extend(["--kl-divergence-base".as_ref(), base.as_os_str()]);
    ok(&cria(&pa));

    let mut klds = Vec::new();
    for (m, name) in [(&a, a.to_str().unwrap()), (&b, b.to_str().unwrap())] {
        let mut pk: Vec<&std::ffi::OsStr> = vec!["perplexity".as_ref(), "-m".as_ref()];
        pk.push(m.as_os_str());
        // -f is required though --kl-divergence reads the base file's tokens, not the text.
        pk.extend(["-f".as_ref(), text.as_os_str()]);
        pk.extend(common);
        pk.extend([
            "--kl-divergence-base".as_ref(),
            base.as_os_str(),
            "--kl-divergence".as_ref(),
        ]);
        let file = ok(&cria(&pk));
        let row = table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name} in:\n{table}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let kld = figure(&file, "Mean    KLD");
        let kld_unc = file
            .lines()
            .find(|l| l.starts_with("Mean    KLD"))
            .and_then(|l| l.split('±').nth(1))
            .unwrap()
            .trim();
        let want = [
            figure(&file, "Mean PPL(Q) ").to_string(),
            figure(&file, "Mean PPL(Q)/PPL(base)").to_string(),
            format!("{kld} ± {kld_unc}"),
            figure(&file, "99.9%   KLD").to_string(),
            figure(&file, "99.0%   KLD").to_string(),
            figure(&file, "Median  KLD").to_string(),
            format!("{}%", figure(&file, "Same top p")),
            format!("{}%", figure(&file, "RMS Δp")),
        ];
        let got: Vec<String> = cells[1..]
            .iter()
            .map(|c| c.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(got, want, "{name}: table row vs --kl-divergence:\n{file}");
        // The two candidates differ from the base, and by different amounts.
        klds.push(kld.parse::<f64>().unwrap());
        assert!(klds.last() > Some(&0.0));
    }
    assert!(
        klds[1] > klds[0],
        "5% perturbation should diverge more than 1%:\n{table}"
    );
    for p in [a, b, base] {
        let _ = std::fs::remove_file(p);
    }
}

#[test]
fn bad_input_is_refused() {
    let tiny = tiny();
    let text = text();
    let other = repo().join("tests/fixtures/tiny-llama31/model.gguf");
    // a candidate with another vocabulary
    let o = cria(&[
        "kld".as_ref(),
        "--base".as_ref(),
        tiny.as_os_str(),
        "-m".as_ref(),
        other.as_os_str(),
        "-f".as_ref(),
        text.as_os_str(),
        "-c".as_ref(),
        "64".as_ref(),
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("tokenizer vocab"), "{e}");
    // a context the text cannot fill twice
    let o = cria(&[
        "kld".as_ref(),
        "--base".as_ref(),
        tiny.as_os_str(),
        "-m".as_ref(),
        tiny.as_os_str(),
        "-f".as_ref(),
        text.as_os_str(),
        "-c".as_ref(),
        "4096".as_ref(),
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("needs at least"), "{e}");
    // no candidate
    let o = cria(&[
        "kld".as_ref(),
        "--base".as_ref(),
        tiny.as_os_str(),
        "-f".as_ref(),
        text.as_os_str(),
    ]);
    assert!(!o.status.success());
}
