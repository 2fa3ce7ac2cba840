//! The official `openai` Python package against a live server: tests/openai_client.py drives chat,
//! streaming, seeds, completions with log-probs, json_schema, a tool-call conversation,
//! embeddings and the error classes. The client lives in target/openai-venv (made by
//! tests/setup-openai.sh, which scripts/test.sh runs); CRIA_OPENAI_PYTHON overrides the path.

mod common;

use std::path::PathBuf;
use std::process::Command;

#[test]
fn official_openai_client_works_unmodified() {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    let python = std::env::var("CRIA_OPENAI_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target/openai-venv/bin/python"));
    assert!(
        python.exists(),
        "{} is missing: run crates/cria-server/tests/setup-openai.sh (installs the openai package)",
        python.display()
    );
    let key = "test-key-5";
    let srv = common::serve(|a| a.api_key = Some(key.into()));
    let out = Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/openai_client.py"
        ))
        .env("CRIA_SERVER_URL", srv.url())
        .env("CRIA_API_KEY", key)
        .output()
        .expect("run python");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "openai_client.py failed:\n{err}");
    assert!(err.contains("all checks passed"), "{err}");
}
