//! `cria run --lookup` / `--draft-model`: the same text as without speculation (greedy, and
//! seeded sampling with the whole chain), at 1 and 2 threads, with the acceptance on the
//! end-of-run line; and bad input refused with clear errors before or at load.

use std::process::{Command, Output};

mod common;
use common::{repo, smol};

fn cria(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cria"))
        .args(args)
        .output()
        .unwrap()
}

const PROMPT: &str = "Repeat exactly: The river that runs through the valley has shaped the \
lives of the people who live along its banks for as long as anyone can remember.";

/// (stdout, stderr) of a successful `cria run` with `extra` flags.
fn run(threads: &str, extra: &[&str]) -> (String, String) {
    let m = smol();
    let mut args = vec![
        "run",
        "-m",
        m.to_str().unwrap(),
        "-t",
        threads,
        "-n",
        "40",
        "-c",
        "256",
    ];
    args.extend_from_slice(extra);
    args.push(PROMPT);
    let out = cria(&args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{err}");
    (String::from_utf8(out.stdout).unwrap(), err)
}

#[test]
fn run_output_is_unchanged_by_speculation() {
    let m = smol();
    let m = m.to_str().unwrap();
    let sampled = [
        "--seed",
        "7",
        "--temp",
        "0.9",
        "--repeat-penalty",
        "1.1",
        "--top-k",
        "40",
    ];
    for threads in ["1", "2"] {
        for base in [&["--temp", "0"][..], &sampled[..]] {
            let (want, _) = run(threads, base);
            for spec in [
                &["--lookup", "8", "--draft-fixed"][..],
                &["--draft-model", m, "--draft-max", "4", "--draft-fixed"][..],
            ] {
                let args: Vec<&str> = base.iter().chain(spec).copied().collect();
                let (got, err) = run(threads, &args);
                assert_eq!(want, got, "{args:?} at {threads} threads changed the text");
                assert!(err.contains("draft acceptance"), "{err}");
            }
        }
    }
}

#[test]
fn bad_speculation_input_is_refused() {
    let m = smol();
    let m = m.to_str().unwrap();
    let tiny = repo().join("tests/fixtures/tiny-llama2/model.gguf");
    let fails = |args: &[&str], want: &str| {
        let out = cria(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
    };
    fails(&["run", "-m", m, "--lookup", "0", "hi"], "--lookup 0");
    fails(
        &["run", "-m", m, "--draft-model", m, "--draft-max", "0", "hi"],
        "--draft-max 0",
    );
    fails(
        &["run", "-m", m, "-c", "32", "--lookup", "40", "hi"],
        "does not fit the context of 32",
    );
    fails(
        &[
            "run",
            "-m",
            m,
            "--draft-model",
            tiny.to_str().unwrap(),
            "-n",
            "4",
            "hi",
        ],
        "vocabulary differs",
    );
}

/// `cria bench --prompt-file F --lookup N`: plain and speculative decode of the same prompt,
/// greedy and seeded (`--temp --seed`), the same output both ways, acceptance and forwards
/// reported (JSON).
#[test]
fn bench_measures_speculation_greedy_and_sampled() {
    let m = smol();
    let dir = std::env::temp_dir().join(format!("cria-spec-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("prompt.txt");
    std::fs::write(&f, PROMPT).unwrap();
    let base = [
        "bench",
        "-m",
        m.to_str().unwrap(),
        "--prompt-file",
        f.to_str().unwrap(),
        "--lookup",
        "6",
        "-n",
        "24",
        "-r",
        "1",
        "-t",
        "1",
        "-o",
        "json",
    ];
    for extra in [&[][..], &["--temp", "0.9", "--seed", "4"][..]] {
        let out = cria(&[&base[..], extra].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        let text = String::from_utf8(out.stdout).unwrap();
        let j: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(j["same_output"], true, "{j}");
        assert!(j["plain_tps"][0].as_f64().unwrap() > 0.0, "{j}");
        assert!(j["speedup"].as_f64().unwrap() > 0.0, "{j}");
        // Every generated token came from a plain step or a verify.
        let forwards = j["forwards"].as_u64().unwrap();
        assert!(forwards > 0 && forwards <= 24, "{j}");
        assert!(
            j["plain_forwards_of_the_gate"].as_u64().unwrap() <= forwards,
            "{j}"
        );
        let t = if extra.is_empty() { 0.0 } else { 0.9 };
        assert!((j["temperature"].as_f64().unwrap() - t).abs() < 1e-6, "{j}");
    }
    // --temp needs the speculative test's prompt.
    let out = cria(&["bench", "-m", m.to_str().unwrap(), "--temp", "0.5"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--prompt-file"));
    let _ = std::fs::remove_dir_all(&dir);
}
