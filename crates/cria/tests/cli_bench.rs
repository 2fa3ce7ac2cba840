//! `cria bench` end to end on a tiny model: the JSON report is complete and consistent, the
//! logits do not depend on the thread count, and bad options are clear errors.

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn tiny() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/tiny-llama2/model.gguf"
    ))
}

fn cria(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cria"))
        .args(args)
        .output()
        .expect("running cria")
}

#[test]
fn bench_json_report() {
    let m = tiny();
    let out = cria(&[
        "bench",
        "-m",
        m.to_str().unwrap(),
        "-p",
        "8",
        "-n",
        "4",
        "-t",
        "1,2",
        "-r",
        "2",
        "-o",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let tests: Vec<(u64, &str)> = rows
        .iter()
        .map(|r| (r["threads"].as_u64().unwrap(), r["test"].as_str().unwrap()))
        .collect();
    assert_eq!(
        tests,
        [(1, "pp8"), (1, "tg4"), (2, "pp8"), (2, "tg4")],
        "one row per thread count and test"
    );
    for r in &rows {
        let ts = r["avg_ts"].as_f64().unwrap();
        assert!(ts.is_finite() && ts > 0.0, "{r}");
        assert_eq!(r["samples_ts"].as_array().unwrap().len(), 2);
        assert!(r["read_bandwidth"].as_f64().unwrap() > 1e6);
        assert_eq!(r["logits_hash"].as_str().unwrap().len(), 8);
        if r["test"] == "tg4" {
            // Weights and K/V per token: positive, and GB/s consistent with t/s.
            let b = r["bytes_per_token"].as_f64().unwrap();
            assert!(b > 0.0);
            let gbps = r["gbps"].as_f64().unwrap();
            assert!((gbps - b * ts / 1e9).abs() <= 1e-9 * gbps.max(1.0));
        } else {
            assert!(r["bytes_per_token"].is_null());
        }
    }
    // Same tokens, same logits, whatever the thread count.
    assert_eq!(rows[0]["logits_hash"], rows[2]["logits_hash"]);
    assert_eq!(rows[1]["logits_hash"], rows[3]["logits_hash"]);
}

#[test]
fn bench_bad_options_are_errors() {
    let m = tiny();
    let m = m.to_str().unwrap();
    for (args, want) in [
        (vec!["bench", "-m", m, "-r", "0"], "-r must be at least 1"),
        (
            vec!["bench", "-m", m, "-p", "0", "-n", "0"],
            "nothing to measure",
        ),
        (vec!["bench", "-m", m, "-t", "0"], "at least 1"),
        (
            vec!["bench", "-m", "/nonexistent/model.gguf", "-r", "1"],
            "nonexistent",
        ),
    ] {
        let out = cria(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
