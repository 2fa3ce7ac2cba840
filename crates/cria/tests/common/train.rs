//! Running the binary, and the pretraining fixtures (tests/fixtures/pretrain): the helpers of the
//! tokenizer, data and pretraining tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The test hooks the binary reads: removed from every child's environment unless a test sets
/// them (a hook left in the test runner's environment would change every run).
const HOOKS: [&str; 4] = [
    "CRIA_TEST_STOP_AFTER_STEPS",
    "CRIA_TEST_FAIL_WRITE_AFTER",
    "CRIA_TEST_FAIL_AFTER_SHARDS",
    "CRIA_TEST_DIE",
];

/// `c` with the hooks removed, then `env` set.
pub fn with_env<'c>(c: &'c mut Command, env: &[(&str, &str)]) -> &'c mut Command {
    for h in HOOKS {
        c.env_remove(h);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// `cria ARGS` with `env`.
pub fn cria(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cria"));
    with_env(c.args(args), env).output().unwrap()
}

/// The stderr of a run that must succeed.
pub fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    err
}

/// The stderr of a run that must fail without a panic, checked to contain every one of `want`.
pub fn fails(o: &Output, want: &[&str]) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "should have failed:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    for w in want {
        assert!(err.contains(w), "expected {w:?} in:\n{err}");
    }
    err
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A fresh, empty folder cria-TAG-PID-NAME in the temp dir.
pub fn tmp(tag: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cria-{tag}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// tests/fixtures/pretrain: stories.txt, stories.jsonl, the PyTorch fixtures.
pub fn fixtures() -> PathBuf {
    super::repo().join("tests/fixtures/pretrain")
}

/// `cria tokenizer train --vocab-size VOCAB` on `corpus`, into `out`.
pub fn train_tokenizer(corpus: &Path, vocab: usize, out: &Path) {
    let v = vocab.to_string();
    let args = [
        "tokenizer",
        "train",
        "--vocab-size",
        &v,
        "-o",
        s(out),
        s(corpus),
    ];
    ok(&cria(&args, &[]));
}

/// `cria data prepare CORPUS --tokenizer TOK -o OUT --val-fraction 0.05`.
pub fn prepare(corpus: &Path, tok: &Path, out: &Path) -> Output {
    let args = [
        "data",
        "prepare",
        s(corpus),
        "--tokenizer",
        s(tok),
        "-o",
        s(out),
    ];
    cria(&[&args[..], &["--val-fraction", "0.05"]].concat(), &[])
}

/// A tokenizer (vocabulary 600) and shards (5% validation) of the stories, in DIR/tok and
/// DIR/data.
pub fn tok_and_data(dir: &Path) -> (PathBuf, PathBuf) {
    let (tok, data) = (dir.join("tok"), dir.join("data"));
    let stories = fixtures().join("stories.txt");
    train_tokenizer(&stories, 600, &tok);
    ok(&prepare(&stories, &tok, &data));
    (tok, data)
}

/// The tiny LLaMA the pretraining tests train: dim 64, 2 layers, 4 heads, 2 KV heads.
pub const TINY: &str = r#"{"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "intermediate_size": 128}"#;

/// The step of every tiny run: 8 sequences of 32 tokens, lr 1e-2 after one warmup step.
pub const TINY_STEP: [&str; 8] = [
    "--batch-tokens",
    "256",
    "--ctx",
    "32",
    "--lr",
    "1e-2",
    "--warmup",
    "1",
];
