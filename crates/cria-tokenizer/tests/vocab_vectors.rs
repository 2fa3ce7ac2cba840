//! llama.cpp's tokenizer test vectors (tests/test-tokenizer-0.cpp): every input of
//! models/ggml-vocab-<name>.gguf.inp must tokenize to the ids in the .out file, with
//! add_special = false and parse_special = false, as that test calls common_tokenize.

mod common;
use common::*;

fn check(name: &str) {
    let path = vocab_path(name);
    let tok = load_gguf(&path);
    let vectors = read_vectors(&path);
    let mut failed = Vec::new();
    for (text, expected) in &vectors {
        let got = tok.encode(text, false, false);
        if &got != expected {
            failed.push(format!(
                "  {text:?}\n    expected {expected:?}\n    got      {got:?}"
            ));
        }
    }
    let passed = vectors.len() - failed.len();
    eprintln!("{name}: {passed}/{} vectors match llama.cpp", vectors.len());
    assert!(
        failed.is_empty(),
        "{name}: {passed}/{} passed; failures:\n{}",
        vectors.len(),
        failed.join("\n")
    );
}

#[test]
fn llama_spm() {
    check("llama-spm");
}

#[test]
fn llama_bpe() {
    check("llama-bpe");
}

#[test]
fn gpt_2() {
    check("gpt-2");
}
