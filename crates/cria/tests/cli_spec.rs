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
