//! `cria imatrix` against llama-imatrix (tests/fixtures/imatrix/, made by
//! scripts/fixtures/make_llamacpp_imatrix.sh with llama.cpp's AVX2 build; CI does not run
//! llama.cpp): on SmolLM2 Q4_1 over tests/fixtures/text/ppl.txt (-c 128, 4 chunks) the same
//! entries, counts and metadata and every sum within 1e-4 relative of llama.cpp's; cria reads
//! llama.cpp's GGUF and legacy .dat files; --process-output; bad input refused with no file left
//! behind.

use cria_core::imatrix::Imatrix;
use cria_kernels::Isa;
use std::path::PathBuf;
use std::process::{Command, Output};

mod common;
use common::{repo, smol};

const FIXTURE: &str = "tests/fixtures/imatrix/llamacpp_smollm2_q4_1_c128.gguf";

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("cria_imatrix_{}_{name}", std::process::id()))
}

/// `cria imatrix ARGS` run from the repository root (so that `-f tests/fixtures/...` is recorded
/// as llama-imatrix recorded it).
fn cria(env: &[(&str, &str)], args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cria"))
        .current_dir(repo())
        .envs(env.iter().copied())
        .arg("imatrix")
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

#[test]
fn reads_llama_cpps_file() {
    let m = Imatrix::read(&repo().join(FIXTURE)).unwrap();
    assert_eq!(m.entries.len(), 30 * 7);
    assert_eq!((m.chunk_count, m.chunk_size), (4, 128));
    assert_eq!(m.datasets, ["tests/fixtures/text/ppl.txt"]);
    let e = m.entry("blk.3.ffn_down.weight").unwrap();
    assert_eq!((e.in_sum2.len(), e.counts.as_slice()), (1536, &[512.0][..]));
    let w = m.quant_weights("blk.3.ffn_down.weight").unwrap();
    assert_eq!(w[7], e.in_sum2[7] / 512.0);
}

/// The same matrices as llama-imatrix, within 1e-4 relative, on the path whose logits are
/// llama.cpp's AVX2 build's (plain kernels, F32 KV cache).
#[test]
fn matches_llama_imatrix() {
    if !Isa::Avx2.available() {
        eprintln!("SKIPPED: this CPU lacks AVX2 (the fixture's llama.cpp is an AVX2 build)");
        return;
    }
    let want = Imatrix::read(&repo().join(FIXTURE)).unwrap();
    let fig: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join(FIXTURE).with_extension("json")).unwrap(),
    )
    .unwrap();
    let out = tmp("smol.gguf");
    let m = smol();
    let stdout = ok(&cria(
        &[("CRIA_REPACK", "0"), ("CRIA_CPU", "avx2")],
        &[
            "-m".as_ref(),
            m.as_os_str(),
            "-f".as_ref(),
            "tests/fixtures/text/ppl.txt".as_ref(),
            "-c".as_ref(),
            "128".as_ref(),
            "--chunks".as_ref(),
            "4".as_ref(),
            "-t".as_ref(),
            "2".as_ref(),
            "--kv-type".as_ref(),
            "f32".as_ref(),
            "-o".as_ref(),
            out.as_os_str(),
        ],
    ));
    let got = Imatrix::read(&out).unwrap();
    // Measured when the fixture was made: the very same bytes (reported, not required).
    let same = std::fs::read(&out).unwrap() == std::fs::read(repo().join(FIXTURE)).unwrap();
    eprintln!("byte-identical to llama-imatrix's file: {same}");
    std::fs::remove_file(&out).unwrap();
    assert_eq!(got.datasets, want.datasets);
    assert_eq!(
        (got.chunk_count, got.chunk_size),
        (want.chunk_count, want.chunk_size)
    );
    let names = |m: &Imatrix| m.entries.iter().map(|e| e.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&got), names(&want));
    let mut worst = (0f64, String::new());
    for (g, w) in got.entries.iter().zip(&want.entries) {
        assert_eq!(g.counts, w.counts, "{}", g.name);
        assert_eq!(g.in_sum2.len(), w.in_sum2.len(), "{}", g.name);
        for (&a, &b) in g.in_sum2.iter().zip(&w.in_sum2) {
            let rel = ((a as f64 - b as f64) / b as f64).abs();
            if rel > worst.0 {
                worst = (rel, g.name.clone());
            }
        }
    }
    eprintln!("max rel diff vs llama-imatrix: {:e} ({})", worst.0, worst.1);
    assert!(worst.0 <= 1e-4, "max rel diff {:e} in {}", worst.0, worst.1);
    // The perplexity printed as llama-imatrix prints it.
    let ppl = format!("Final estimate: PPL = {:.4}", fig["ppl"].as_f64().unwrap());
    assert!(stdout.contains(&ppl), "{stdout} vs {ppl}");
}

#[test]
fn process_output_and_bad_input() {
    let tiny = repo().join("tests/fixtures/tiny-llama2/model.gguf");
    let short = repo().join("tests/fixtures/text/short.txt");
    let out = tmp("tiny.gguf");
    let run = |extra: &[&str], text: &std::path::Path, out: &std::path::Path| {
        let mut a: Vec<&std::ffi::OsStr> = vec![
            "-m".as_ref(),
            tiny.as_os_str(),
            "-f".as_ref(),
            text.as_os_str(),
            "-t".as_ref(),
            "1".as_ref(),
            "-o".as_ref(),
            out.as_os_str(),
        ];
        a.extend(extra.iter().map(std::ffi::OsStr::new));
        cria(&[], &a)
    };
    let stdout = ok(&run(
        &["-c", "64", "--chunks", "3", "--process-output"],
        &short,
        &out,
    ));
    assert!(
        stdout.starts_with("[1]")
            && stdout.contains("[3]")
            && stdout.contains("Final estimate: PPL = ")
    );
    let m = Imatrix::read(&out).unwrap();
    assert_eq!(m.entries.len(), 15);
    assert_eq!(m.entry("output.weight").unwrap().counts, [192.0]);
    std::fs::remove_file(&out).unwrap();

    // An empty text, a text shorter than two contexts, an output in a missing folder: errors,
    // exit != 0, nothing written.
    let empty = tmp("empty.txt");
    std::fs::write(&empty, "  \n").unwrap();
    let o = run(&["-c", "64"], &empty, &out);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("empty"), "{e}");
    let o = run(&["-c", "4096"], &short, &out);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("needs at least 8192"),
        "{e}"
    );
    assert!(!out.exists());
    let nodir = tmp("no/such/dir/x.gguf");
    let o = run(&["-c", "64", "--chunks", "2"], &short, &nodir);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("no such directory"),
        "{e}"
    );
    assert!(!nodir.exists() && !nodir.with_extension("gguf.partial").exists());
    std::fs::remove_file(&empty).unwrap();
}

/// llama-imatrix's legacy .dat of the same matrix: the entries and chunk count, and the weights
/// llama-quantize derives from it (values / ncall) equal to those of the GGUF file (sums / count)
/// within f32 rounding.
#[test]
fn reads_llama_cpps_legacy_file() {
    let g = Imatrix::read(&repo().join(FIXTURE)).unwrap();
    let d = Imatrix::read(&repo().join(FIXTURE).with_extension("dat")).unwrap();
    assert_eq!(d.chunk_count, 4);
    assert_eq!(d.datasets, g.datasets);
    assert_eq!(d.entries.len(), g.entries.len());
    let mut worst = 0f64;
    for e in &g.entries {
        let (a, b) = (
            g.quant_weights(&e.name).unwrap(),
            d.quant_weights(&e.name).unwrap(),
        );
        assert_eq!(a.len(), b.len(), "{}", e.name);
        for (&x, &y) in a.iter().zip(&b) {
            worst = worst.max(((x as f64 - y as f64) / x as f64).abs());
        }
    }
    assert!(
        worst < 1e-6,
        "legacy vs GGUF weights: max rel diff {worst:e}"
    );
}
