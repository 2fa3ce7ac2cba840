//! The model-level flags and checks through the binary: a model file with a bad hyper-parameter
//! is a clear error (no panic), and `--f32` is the exact path (f32 weights and an f32 KV cache).

use std::path::Path;
use std::process::{Command, Output};

#[path = "../../cria-model/tests/common/mod.rs"]
mod model_common;

fn cria(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cria"))
        .args(args)
        .env(
            "CRIA_CACHE",
            std::env::temp_dir().join("cria-model-checks-cache"),
        )
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap()
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("cria-model-checks-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

#[test]
fn run_refuses_a_nan_rms_epsilon() {
    let p = tmp("nan-eps.gguf");
    let key = "llama.attention.layer_norm_rms_epsilon";
    model_common::edited_copy(
        &model_common::tiny(),
        &p,
        &[(key, Some(f32::NAN.into()))],
        |_, _| {},
    );
    let out = cria(&[
        "run",
        "-m",
        p.to_str().unwrap(),
        "-n",
        "4",
        "--raw",
        "hello",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(err.contains("rms epsilon is NaN"), "stderr: {err}");
    assert!(!err.contains("panicked"), "stderr: {err}");
    assert!(out.stdout.is_empty());
}

/// `cria logits --all` of the tiny fixture's prompt, with extra flags; the (t, vocab) values.
fn logits(extra: &[&str]) -> Vec<f32> {
    let model = model_common::tiny();
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(model.with_file_name("reference.json")).unwrap(),
    )
    .unwrap();
    let ids: Vec<String> = r["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    let out = tmp(&format!("logits{}.npy", extra.join("")));
    let ids = ids.join(",");
    let mut args = vec!["logits", "-m", model.to_str().unwrap(), "-t", "1", "--all"];
    args.extend(["--tokens", &ids, "--out", out.to_str().unwrap()]);
    args.extend(extra);
    let o = cria(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    cria_core::npy::read_f32(&out).unwrap().1
}

#[test]
fn f32_flag_is_the_exact_path() {
    let f32_only = logits(&["--f32"]);
    let explicit = logits(&["--f32", "--kv-type", "f32"]);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&f32_only),
        bits(&explicit),
        "--f32 did not use an f32 KV cache"
    );
    // An explicit --kv-type still wins.
    assert_ne!(
        bits(&logits(&["--f32", "--kv-type", "f16"])),
        bits(&explicit)
    );
    // And it is transformers' result, to f32 summation-order noise.
    let want =
        cria_core::npy::read_f32(&Path::new(&model_common::tiny()).with_file_name("logits.npy"))
            .unwrap()
            .1;
    assert_eq!(want.len(), f32_only.len());
    let range =
        want.iter().fold(f32::MIN, |a, &b| a.max(b)) - want.iter().fold(f32::MAX, |a, &b| a.min(b));
    let diff = want
        .iter()
        .zip(&f32_only)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff / range <= 1e-4, "max diff {diff} vs range {range}");
}

#[test]
fn quantized_kv_needs_whole_blocks_per_head() {
    // The tiny model's heads are 16 values: not whole Q8_0 blocks.
    let model = model_common::tiny();
    let out = tmp("never.npy");
    let o = cria(&[
        "logits",
        "-m",
        model.to_str().unwrap(),
        "--tokens",
        "1,2,3",
        "--kv-type",
        "q8_0",
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("q8_0 KV cache needs a head dimension that is a multiple of 32"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
