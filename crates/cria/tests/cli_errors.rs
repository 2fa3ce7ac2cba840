//! Bad input to `run` and `chat`: a clear message on stderr and a failing exit code, before any
//! generation (unknown sampler options, out-of-range values, unreadable or malformed grammar and
//! schema files, a model that does not exist).

use std::process::Command;

mod common;
use common::smol;

/// Runs cria, expects failure, returns stderr.
fn fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cria"))
        .args(args)
        .env("CRIA_CACHE", std::env::temp_dir().join("cria-errors-cache"))
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} succeeded; stderr: {err}");
    assert!(
        out.stdout.is_empty(),
        "{args:?} printed an answer: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    err
}

#[test]
fn bad_input_is_a_clear_error() {
    let m = smol();
    let m = m.to_str().unwrap();
    let dir = std::env::temp_dir().join(format!("cria-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad_gbnf = dir.join("bad.gbnf");
    std::fs::write(&bad_gbnf, "root ::= \"a\" foo\n").unwrap();
    let bad_schema = dir.join("bad.json");
    std::fs::write(
        &bad_schema,
        r#"{"type": "object", "not": {"type": "string"}}"#,
    )
    .unwrap();
    let not_json = dir.join("notjson.json");
    std::fs::write(&not_json, "{\"type\": ").unwrap();
    let missing = dir.join("missing.gbnf");

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["run", "-m", m, "--no-such-sampler", "1", "hi"],
            "--no-such-sampler",
        ),
        (vec!["run", "-m", m, "--top-p", "1.5", "hi"], "top-p"),
        (
            vec!["run", "-m", m, "--temperature", "-", "hi"],
            "temperature",
        ),
        (vec!["run", "-m", m, "--mirostat", "3", "hi"], "mirostat"),
        (
            vec![
                "run",
                "-m",
                m,
                "--grammar-file",
                missing.to_str().unwrap(),
                "hi",
            ],
            "missing.gbnf",
        ),
        (
            vec![
                "run",
                "-m",
                m,
                "--grammar-file",
                bad_gbnf.to_str().unwrap(),
                "hi",
            ],
            "bad.gbnf:1:",
        ),
        (
            vec![
                "run",
                "-m",
                m,
                "--json-schema-file",
                bad_schema.to_str().unwrap(),
                "hi",
            ],
            "not",
        ),
        (
            vec![
                "run",
                "-m",
                m,
                "--json-schema-file",
                not_json.to_str().unwrap(),
                "hi",
            ],
            "not valid JSON",
        ),
        (
            vec!["run", "-m", "no-such-model-xyz", "hi"],
            "no-such-model-xyz",
        ),
        (vec!["chat", "-m", m, "--min-p", "2"], "min-p"),
        (vec!["run", "-m", m, "--ctx-size", "0", "hi"], "ctx"),
    ];
    for (args, needle) in cases {
        let err = fails(&args);
        assert!(
            err.contains(needle),
            "{args:?}: the message does not mention {needle:?}:\n{err}"
        );
        assert!(!err.contains("panicked"), "{args:?} panicked:\n{err}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
