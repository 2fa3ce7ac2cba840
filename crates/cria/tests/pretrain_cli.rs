//! `cria pretrain` through the binary, on the stories fixture (tests/fixtures/pretrain): a BPE
//! tokenizer of 600 tokens and token shards made first by `cria tokenizer train` and `cria data
//! prepare`, then a tiny LLaMA (dim 64, 2 layers, 4 heads, 2 KV heads) trained a few steps.
//!
//! - resume is bit for bit: 4 steps straight vs 2 steps (stopped by the test hook) + `--resume`
//!   2 more: the same checkpoint and final weights byte for byte, the same losses and norms;
//! - the result loads in `cria run -m RUN/final` and generates;
//! - bad input: clear errors, and nothing written or overwritten.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/pretrain")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cria-pretrain-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn cria(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cria"));
    c.args(args).env_remove("CRIA_TEST_STOP_AFTER_STEPS");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    err
}

fn fails(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "should have failed:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Tokenizer (vocabulary 600) and shards (5% validation) of the stories in `dir`; the data folder.
fn prepare(dir: &Path) -> PathBuf {
    let tok = dir.join("tok");
    let data = dir.join("data");
    let stories = fixtures().join("stories.txt");
    ok(&cria(
        &[
            "tokenizer",
            "train",
            "--vocab-size",
            "600",
            "-o",
            s(&tok),
            s(&stories),
        ],
        &[],
    ));
    ok(&cria(
        &[
            "data",
            "prepare",
            s(&stories),
            "--tokenizer",
            s(&tok),
            "-o",
            s(&data),
            "--val-fraction",
            "0.05",
        ],
        &[],
    ));
    data
}

fn tiny_config(dir: &Path, heads: usize) -> PathBuf {
    let p = dir.join(format!("tiny-{heads}.json"));
    let c = format!(
        r#"{{"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": {heads},
            "num_key_value_heads": 2, "intermediate_size": 128}}"#
    );
    std::fs::write(&p, c).unwrap();
    p
}

/// `cria pretrain` of the tiny config: 4 steps of 8 sequences of 32 tokens, 2 micro-batches each.
fn train(data: &Path, config: &Path, out: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut args = vec![
        "pretrain",
        "--data",
        s(data),
        "-o",
        s(out),
        "--config",
        s(config),
        "--max-steps",
        "4",
        "--batch-tokens",
        "256",
        "--micro-batch-tokens",
        "128",
        "--ctx",
        "32",
        "--lr",
        "1e-2",
        "--warmup",
        "1",
        "--save-every",
        "2",
        "--eval-every",
        "2",
        "--eval-tokens",
        "256",
        "--seed",
        "7",
        "-t",
        "2",
    ];
    args.extend_from_slice(extra);
    cria(&args, env)
}

/// (step, loss, grad_norm) per step line.
type Steps = Vec<(u64, f64, f64)>;

/// (step, loss, grad_norm) of the step lines, (step, val_loss) of the eval lines.
fn log(run: &Path) -> (Steps, Vec<(u64, f64)>) {
    let text = std::fs::read_to_string(run.join("training_log.jsonl")).unwrap();
    let (mut steps, mut evals) = (vec![], vec![]);
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let step = v["step"].as_u64().unwrap();
        if let Some(loss) = v["loss"].as_f64() {
            steps.push((step, loss, v["grad_norm"].as_f64().unwrap()));
        } else {
            evals.push((step, v["val_loss"].as_f64().unwrap()));
        }
    }
    (steps, evals)
}

/// One step of preset `size` (8 sequences of 32 tokens).
fn preset(data: &Path, out: &Path, size: &str) -> Output {
    let args = [
        "pretrain",
        "--data",
        s(data),
        "-o",
        s(out),
        "--size",
        size,
        "--max-steps",
        "1",
        "--batch-tokens",
        "256",
        "--ctx",
        "32",
        "-t",
        "2",
    ];
    cria(&args, &[])
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn resume_is_bit_exact_and_the_result_runs() {
    let dir = tmp("resume");
    let data = prepare(&dir);
    let cfg = tiny_config(&dir, 4);
    let (a, b) = (dir.join("straight"), dir.join("resumed"));
    ok(&train(&data, &cfg, &a, &[], &[]));
    let err = ok(&train(
        &data,
        &cfg,
        &b,
        &[],
        &[("CRIA_TEST_STOP_AFTER_STEPS", "2")],
    ));
    assert!(err.contains("stopped at step 2/4"), "{err}");
    assert!(!b.join("final").exists() && b.join("checkpoint-2").is_dir());
    let err = ok(&train(&data, &cfg, &b, &["--resume"], &[]));
    assert!(
        err.contains("resumed from") && err.contains("(step 2)"),
        "{err}"
    );

    for f in [
        "checkpoint-2/params.safetensors",
        "checkpoint-2/optimizer_decay.bin",
        "checkpoint-4/params.safetensors",
        "checkpoint-4/optimizer_decay.bin",
        "checkpoint-4/optimizer_no_decay.bin",
        "final/model.safetensors",
    ] {
        assert!(read(&a.join(f)) == read(&b.join(f)), "{f} differs");
    }
    let (la, ea) = log(&a);
    let (lb, eb) = log(&b);
    assert_eq!(la.len(), 4);
    assert_eq!(la, lb, "losses / grad norms differ");
    assert_eq!(ea, eb, "val losses differ");
    assert_eq!(ea.iter().map(|e| e.0).collect::<Vec<_>>(), [2, 4]);
    // From transformers' init (std 0.02) the first loss is about ln(vocab); then it falls.
    assert!(
        (la[0].1 - 600f64.ln()).abs() < 0.1,
        "first loss {}",
        la[0].1
    );
    assert!(la[3].1 < la[0].1 - 0.3, "{la:?}");

    // The final folder: weights, config, generation config, tokenizer; cria runs it.
    let fin = a.join("final");
    for f in [
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(fin.join(f).is_file(), "final/{f} missing");
    }
    let o = cria(
        &[
            "run",
            "-m",
            s(&fin),
            "-p",
            "Once upon a time",
            "-n",
            "5",
            "--temp",
            "0",
        ],
        &[],
    );
    let err = ok(&o);
    assert!(err.contains("generation 5 tokens"), "{err}");

    // Resuming from a checkpoint of another config: an error, and nothing in the run changes.
    let before = (
        read(&a.join("checkpoint-4/params.safetensors")),
        read(&a.join("training_log.jsonl")),
    );
    let other = tiny_config(&dir, 2);
    let err = fails(&train(&data, &other, &a, &["--resume"], &[]));
    assert!(err.contains("another model config"), "{err}");
    let err = fails(&train(
        &data,
        &cfg,
        &a,
        &["--resume", "--weight-decay", "0.2"],
        &[],
    ));
    assert!(err.contains("other training arguments"), "{err}");
    assert!(
        before
            == (
                read(&a.join("checkpoint-4/params.safetensors")),
                read(&a.join("training_log.jsonl"))
            )
    );
    // A fresh run into a used folder: refused.
    let err = fails(&train(&data, &cfg, &a, &[], &[]));
    assert!(
        err.contains("not empty") && err.contains("--resume"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_input_is_a_clear_error_and_writes_nothing() {
    let dir = tmp("bad");
    let data = prepare(&dir);
    let cfg = tiny_config(&dir, 4);
    let out = dir.join("run");

    // An empty data folder.
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let err = fails(&train(&empty, &cfg, &out, &[], &[]));
    assert!(err.contains("data.json"), "{err}");
    // A manifest whose preparation did not finish.
    let undone = dir.join("undone");
    std::fs::create_dir_all(&undone).unwrap();
    for e in std::fs::read_dir(&data).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), undone.join(e.file_name())).unwrap();
    }
    let m = std::fs::read_to_string(undone.join("data.json")).unwrap();
    std::fs::write(
        undone.join("data.json"),
        m.replace("\"done\": true", "\"done\": false"),
    )
    .unwrap();
    let err = fails(&train(&undone, &cfg, &out, &[], &[]));
    assert!(err.contains("did not finish"), "{err}");
    // Heads that do not divide the width.
    let err = fails(&train(&data, &tiny_config(&dir, 3), &out, &[], &[]));
    assert!(err.contains("does not divide"), "{err}");
    // An unknown preset, a context longer than the config allows.
    let err = fails(&preset(&data, &out, "3M"));
    assert!(err.contains("unknown") && err.contains("20M"), "{err}");
    let long = dir.join("long.json");
    std::fs::write(&long, r#"{"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 16}"#).unwrap();
    let err = fails(&train(&data, &long, &out, &[], &[]));
    assert!(err.contains("max_position_embeddings"), "{err}");
    // --resume with no checkpoint.
    let err = fails(&train(&data, &cfg, &out, &["--resume"], &[]));
    assert!(err.contains("no checkpoint"), "{err}");
    assert!(!out.exists(), "a failed start wrote {}", out.display());

    // A preset runs (one step of the 1M shape).
    let o = preset(&data, &out, "1M");
    let err = ok(&o);
    assert!(
        err.contains("dim 128 layers 5 heads 4 kv heads 2 ffn 384 vocab 600"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
