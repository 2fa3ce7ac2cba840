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

/// The rows of `cria bench -o json` on the tiny model with the given extra arguments.
fn bench_rows(extra: &[&str]) -> Vec<Value> {
    let m = tiny();
    let mut args = vec![
        "bench",
        "-m",
        m.to_str().unwrap(),
        "-p",
        "8",
        "-n",
        "4",
        "-o",
        "json",
    ];
    args.extend_from_slice(extra);
    let out = cria(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

#[test]
fn bench_json_report() {
    let rows = bench_rows(&["-t", "1,2", "-r", "2"]);
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

/// Each test runs one fixed token stream in every repetition, so its logits hash is the same
/// whatever -r (and the thread count): comparable across runs and rounds.
#[test]
fn bench_logits_hash_does_not_depend_on_repetitions() {
    let hashes = |extra: &[&str]| -> Vec<(String, String)> {
        bench_rows(extra)
            .iter()
            .map(|r| {
                let h = r["logits_hash"].as_str().unwrap().to_string();
                assert_eq!(h.len(), 8, "{r}");
                (r["test"].as_str().unwrap().to_string(), h)
            })
            .collect()
    };
    let one = hashes(&["-r", "1", "-t", "1"]);
    assert_eq!(one.len(), 2, "{one:?}");
    assert_ne!(one[0].1, one[1].1, "pp8 and tg4 end on different logits");
    assert_eq!(one, hashes(&["-r", "3", "-t", "1"]), "-r 1 vs -r 3");
    assert_eq!(
        one,
        hashes(&["-r", "2", "-t", "2"]),
        "-r 1 -t 1 vs -r 2 -t 2"
    );
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
