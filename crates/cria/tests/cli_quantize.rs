//! `cria quantize` from the command line: a good run and the bad inputs, each of which must end
//! with exit status != 0, a clear message, no panic, and neither OUT nor OUT.partial left behind.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tiny(name: &str) -> String {
    common::repo().join(name).to_str().unwrap().to_string()
}

fn dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cria-cli-quantize-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn cria(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cria"))
        .args(args)
        .output()
        .unwrap()
}

fn partial(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

/// The run failed cleanly: status != 0, `msg` in stderr, no panic, nothing written.
fn refused(o: &Output, out: &Path, msg: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "succeeded: {err}");
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(msg), "expected '{msg}' in: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.exists(), "{} left behind", out.display());
    assert!(
        !partial(out).exists(),
        "{} left behind",
        partial(out).display()
    );
}

#[test]
fn quantizes_and_reports_sizes() {
    let d = dir("ok");
    let out = d.join("q.gguf");
    let o = cria(&[
        "quantize",
        &tiny("tests/fixtures/quantize/tiny-llama3-256.gguf"),
        out.to_str().unwrap(),
        "q4_k_m",
        "-t",
        "2",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("(Q4_K_M): 21 tensors (F32: 6, Q4_K: 12, Q6_K: 3)"),
        "{err}"
    );
    assert!(
        err.contains("MiB (16.02 bpw) -> 0.51 MiB (5.06 bpw)"),
        "{err}"
    );
    assert!(out.is_file() && !partial(&out).exists());
    // cria reads what it wrote.
    let g = cria_core::gguf::GgufFile::open(&out).unwrap();
    assert_eq!(g.get_u64("general.file_type"), Some(15));
}

#[test]
fn unknown_type() {
    let d = dir("type");
    let out = d.join("q.gguf");
    let o = cria(&[
        "quantize",
        &tiny("tests/fixtures/tiny-llama31/model.gguf"),
        out.to_str().unwrap(),
        "Q4_K_X",
    ]);
    refused(&o, &out, "unknown quantization type 'Q4_K_X'");
    let o = cria(&[
        "quantize",
        &tiny("tests/fixtures/tiny-llama31/model.gguf"),
        out.to_str().unwrap(),
        "Q4_0",
        "--output-tensor-type",
        "Q9_9",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown tensor type 'Q9_9'"));
    assert!(!out.exists() && !partial(&out).exists());
}

#[test]
fn quantized_input_needs_allow_requantize() {
    let d = dir("requant");
    let q8 = d.join("q8.gguf");
    let o = cria(&[
        "quantize",
        &tiny("tests/fixtures/tiny-llama31/model.gguf"),
        q8.to_str().unwrap(),
        "Q8_0",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = d.join("q4.gguf");
    let o = cria(&[
        "quantize",
        q8.to_str().unwrap(),
        out.to_str().unwrap(),
        "Q4_0",
    ]);
    refused(
        &o,
        &out,
        "requantizing from type Q8_0 is disabled (pass --allow-requantize",
    );
    let o = cria(&[
        "quantize",
        q8.to_str().unwrap(),
        out.to_str().unwrap(),
        "Q4_0",
        "--allow-requantize",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn iq2_without_imatrix() {
    let d = dir("iq2");
    let out = d.join("q.gguf");
    let o = cria(&[
        "quantize",
        &tiny("tests/fixtures/quantize/tiny-llama3-256.gguf"),
        out.to_str().unwrap(),
        "IQ2_XXS",
    ]);
    refused(&o, &out, "IQ2_XXS requires an importance matrix");
    refused(&o, &out, "pass --imatrix FILE");
}

#[test]
fn row_length_the_type_cannot_take() {
    let d = dir("rows");
    let out = d.join("q.gguf");
    let o = cria(&[
        "quantize",
        &tiny("tests/fixtures/tiny-llama2/model.gguf"),
        out.to_str().unwrap(),
        "Q4_0",
        "--output-tensor-type",
        "q4_k",
    ]);
    refused(
        &o,
        &out,
        "tensor output.weight: its rows of 64 cannot be Q4_K (blocks of 256)",
    );
}

#[test]
fn truncated_input() {
    let d = dir("trunc");
    let bytes =
        std::fs::read(common::repo().join("tests/fixtures/tiny-llama31/model.gguf")).unwrap();
    let cut = d.join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let out = d.join("q.gguf");
    let o = cria(&[
        "quantize",
        cut.to_str().unwrap(),
        out.to_str().unwrap(),
        "Q8_0",
    ]);
    refused(&o, &out, "cut.gguf");
    let missing = d.join("missing.gguf");
    let o = cria(&[
        "quantize",
        missing.to_str().unwrap(),
        out.to_str().unwrap(),
        "Q8_0",
    ]);
    refused(&o, &out, "missing.gguf");
}

/// A full disk, simulated with a file size limit (RLIMIT_FSIZE through the shell's `ulimit -f`,
/// SIGXFSZ ignored so the write fails with EFBIG instead of killing the process).
#[test]
fn full_disk() {
    let d = dir("full");
    let out = d.join("q.gguf");
    let script = format!(
        "trap '' XFSZ; ulimit -f 200; exec '{}' quantize '{}' '{}' F32",
        env!("CARGO_BIN_EXE_cria"),
        tiny("tests/fixtures/quantize/tiny-llama3-256.gguf"),
        out.display()
    );
    let o = Command::new("sh").arg("-c").arg(&script).output().unwrap();
    refused(&o, &out, "q.gguf.partial");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.to_lowercase().contains("file too large"), "{err}");
}

/// An HF folder quantizes in one step to the same bytes as `cria convert` (the converter's
/// `--outtype auto`, itself byte-identical to llama.cpp's convert_hf_to_gguf.py, tests/convert.rs)
/// followed by `cria quantize` of that GGUF (byte-identical to llama-quantize,
/// tests/quantize_llamacpp.rs); a folder with a missing shard is refused and leaves nothing.
#[test]
fn hf_folder_quantizes_in_one_step_as_convert_then_quantize() {
    let d = dir("hf");
    for (folder, ty) in [("tiny-llama2", "Q8_0"), ("tiny-variants", "Q4_K_M")] {
        let src = tiny(&format!("tests/fixtures/{folder}"));
        let one = d.join(format!("{folder}-one.gguf"));
        let conv = d.join(format!("{folder}-conv.gguf"));
        let two = d.join(format!("{folder}-two.gguf"));
        let o = cria(&["quantize", &src, one.to_str().unwrap(), ty]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let o = cria(&["convert", &src, conv.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let o = cria(&[
            "quantize",
            conv.to_str().unwrap(),
            two.to_str().unwrap(),
            ty,
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let (a, b) = (std::fs::read(&one).unwrap(), std::fs::read(&two).unwrap());
        assert!(
            a == b,
            "{folder} {ty}: one step and convert+quantize differ"
        );
    }
    // A sharded folder missing a shard.
    let broken = d.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    let src = PathBuf::from(tiny("tests/fixtures/tiny-variants"));
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        if !name.starts_with("model-00002") && p.is_file() {
            std::fs::copy(&p, broken.join(&name)).unwrap();
        }
    }
    let out = d.join("q.gguf");
    let o = cria(&[
        "quantize",
        broken.to_str().unwrap(),
        out.to_str().unwrap(),
        "Q8_0",
    ]);
    refused(&o, &out, "model-00002");
}
