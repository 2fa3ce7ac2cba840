//! `cria pretrain` through the binary, on the stories fixture (tests/fixtures/pretrain): a BPE
//! tokenizer of 600 tokens and token shards made first by `cria tokenizer train` and `cria data
//! prepare`, then a tiny LLaMA (dim 64, 2 layers, 4 heads, 2 KV heads) trained a few steps.
//!
//! - resume is bit for bit: 4 steps straight vs 2 steps (stopped by the test hook) + `--resume`
//!   2 more: the same checkpoint and final weights byte for byte, the same losses and norms;
//! - the result loads in `cria run -m RUN/final` and generates;
//! - each step logs its MFU, each eval 3 seeded sample generations (the same in both runs);
//!   loss.svg is written;
//! - a finished run extended by `--resume --max-steps 6` continues at the schedule's final lr,
//!   and an extension interrupted and resumed gives the same weights;
//! - `--init RUN/final` continues from a model (and `--gguf` writes RUN/model.gguf as `cria
//!   convert` does); a model whose tokenizer is not the data's is refused;
//! - `cria plan`: its output parses, its config.json trains;
//! - bad input: clear errors, and nothing written or overwritten.

mod common;

use common::train::{cria, fixtures, ok, s, tok_and_data, TINY_STEP};
use std::path::{Path, PathBuf};
use std::process::Output;

fn tmp(name: &str) -> PathBuf {
    common::train::tmp("pretrain", name)
}

fn fails(o: &Output) -> String {
    common::train::fails(o, &[])
}

/// Tokenizer (vocabulary 600) and shards (5% validation) of the stories in `dir`; the data folder.
fn prepare(dir: &Path) -> PathBuf {
    tok_and_data(dir).1
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
/// An `extra` --max-steps replaces the 4.
fn train(data: &Path, config: &Path, out: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let steps = if extra.contains(&"--max-steps") {
        vec![]
    } else {
        vec!["--max-steps", "4"]
    };
    let mut args = vec![
        "pretrain",
        "--data",
        s(data),
        "-o",
        s(out),
        "--config",
        s(config),
    ];
    args.extend(steps);
    args.extend(TINY_STEP);
    args.extend([
        "--micro-batch-tokens",
        "128",
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
    ]);
    args.extend_from_slice(extra);
    cria(&args, env)
}

/// (step, loss, grad_norm) per step line.
type Steps = Vec<(u64, f64, f64)>;

/// The lines of training_log.jsonl.
fn log_lines(run: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run.join("training_log.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// (step, loss, grad_norm) of the step lines, (step, val_loss) of the eval lines.
fn log(run: &Path) -> (Steps, Vec<(u64, f64)>) {
    let (mut steps, mut evals) = (vec![], vec![]);
    for v in log_lines(run) {
        let step = v["step"].as_u64().unwrap();
        if let Some(loss) = v["loss"].as_f64() {
            steps.push((step, loss, v["grad_norm"].as_f64().unwrap()));
        } else if let Some(l) = v["val_loss"].as_f64() {
            evals.push((step, l));
        }
    }
    (steps, evals)
}

/// (step, sample texts) of the sample lines.
fn sample_lines(run: &Path) -> Vec<(u64, Vec<String>)> {
    log_lines(run)
        .into_iter()
        .filter(|v| v.get("samples").is_some())
        .map(|v| {
            let texts = v["samples"].as_array().unwrap().iter();
            let texts = texts.map(|t| t.as_str().unwrap().to_string()).collect();
            (v["step"].as_u64().unwrap(), texts)
        })
        .collect()
}

/// (lr, mfu) of the step lines.
fn lr_mfu(run: &Path) -> Vec<(f64, f64)> {
    log_lines(run)
        .into_iter()
        .filter(|v| v.get("loss").is_some())
        .map(|v| (v["lr"].as_f64().unwrap(), v["mfu"].as_f64().unwrap()))
        .collect()
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

    // MFU on every step line; samples at each eval, seeded: the same in both runs.
    for (lr, mfu) in lr_mfu(&a) {
        assert!(lr.is_finite() && mfu.is_finite() && mfu > 0.0, "{mfu}");
    }
    let sa = sample_lines(&a);
    assert_eq!(sa.iter().map(|x| x.0).collect::<Vec<_>>(), [2, 4]);
    assert!(sa
        .iter()
        .all(|x| x.1.len() == 3 && x.1.iter().all(|t| t.len() > 8)));
    assert_eq!(sa, sample_lines(&b), "samples differ after the resume");
    let svg = String::from_utf8(read(&a.join("loss.svg"))).unwrap();
    assert!(svg.contains(">tokens</text>") && svg.contains("eval loss"));

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

    // Extending the finished run: --resume with the same step count has nothing to do; with
    // more steps it continues at the schedule's final lr (cosine's end: 0.1 x 1e-2).
    let err = fails(&train(&data, &cfg, &a, &["--resume"], &[]));
    assert!(err.contains("at step 4 already"), "{err}");
    let more = ["--resume", "--max-steps", "6"];
    let err = ok(&train(&data, &cfg, &a, &more, &[]));
    assert!(err.contains("extending the run to 6 steps"), "{err}");
    let (la6, ea6) = log(&a);
    assert_eq!(la6[..4], la[..]);
    assert_eq!(la6.len(), 6);
    assert_eq!(ea6.iter().map(|e| e.0).collect::<Vec<_>>(), [2, 4, 6]);
    let lrs: Vec<f64> = lr_mfu(&a).iter().map(|x| x.0).collect();
    assert!(
        lrs[4..].iter().all(|&l| (l - 1e-3).abs() < 1e-12),
        "{lrs:?}"
    );
    // The same extension interrupted at step 5 and resumed: the same weights.
    let stop = [("CRIA_TEST_STOP_AFTER_STEPS", "5")];
    let err = ok(&train(&data, &cfg, &b, &more, &stop));
    assert!(err.contains("stopped at step 5/6"), "{err}");
    ok(&train(&data, &cfg, &b, &more, &[]));
    let f = "final/model.safetensors";
    assert!(read(&a.join(f)) == read(&b.join(f)), "{f} differs");
    assert_eq!(log(&a), log(&b));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The `key: value` lines of `cria plan`'s stdout; value = the first word.
fn plan_fields(o: &Output) -> std::collections::HashMap<String, String> {
    let out = String::from_utf8_lossy(&o.stdout);
    out.lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.split(' ').next().unwrap().to_string()))
        .collect()
}

#[test]
fn plan_parses_and_its_config_trains() {
    let dir = tmp("plan");
    let cfg = dir.join("plan.json");
    let plan = |extra: &[&str]| {
        let mut args = vec!["plan", "--vocab", "600", "--ctx", "32", "-t", "2"];
        args.extend_from_slice(&["--micro-batch-tokens", "128"]);
        args.extend_from_slice(extra);
        cria(&args, &[])
    };
    let o = plan(&["--params", "150K", "--write-config", s(&cfg)]);
    let err = ok(&o);
    assert!(err.contains("measuring this machine"), "{err}");
    let f = plan_fields(&o);
    let num = |k: &str| -> f64 { f[k].parse().unwrap_or_else(|_| panic!("{k}: {}", f[k])) };
    // The nearest shape of the family: dim 64, 2 layers, 1 head of 64, FFN 192 (145,216 in all).
    assert_eq!(f["shape"], "dim");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        out.contains("dim 64 layers 2 heads 1 kv_heads 1 ffn 192 vocab 600"),
        "{out}"
    );
    assert_eq!(num("params"), 145216.0);
    assert_eq!(num("tokens"), 20.0 * 145216.0);
    assert_eq!(num("batch_tokens"), 8192.0);
    assert_eq!(num("steps"), (20.0f64 * 145216.0 / 8192.0).ceil());
    assert!(num("lr") > 1e-3 && num("lr") <= 3e-3);
    assert!(num("hours") > 0.0 && num("throughput") > 0.0);
    assert!(
        f["command"] == "cria" && out.contains("--batch-tokens 8192"),
        "{out}"
    );

    // --hours: the largest shape whose 20 N tokens fit; far too little time is an error.
    let o = plan(&["--hours", "0.05"]);
    ok(&o);
    let h = plan_fields(&o);
    assert!(h["hours"].parse::<f64>().unwrap() <= 0.05, "{h:?}");
    let err = fails(&plan(&["--hours", "1e-7"]));
    assert!(err.contains("even the smallest shape"), "{err}");
    for bad in [
        &["--params", "0"][..],
        &[],
        &["--params", "1M", "--tokens", "2M"],
    ] {
        fails(&plan(bad));
    }

    // The written config trains.
    let data = prepare(&dir);
    let run = dir.join("run");
    let err = ok(&train(&data, &cfg, &run, &["--max-steps", "2"], &[]));
    assert!(
        err.contains("dim 64 layers 2 heads 1 kv heads 1 ffn 192 vocab 600"),
        "{err}"
    );
    assert!(run.join("final/model.safetensors").is_file());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `cria pretrain --init MODEL` (continued pretraining) of `steps` steps, the tiny run's settings.
fn train_init(data: &Path, init: &Path, out: &Path, steps: &str, extra: &[&str]) -> Output {
    let run = [
        "pretrain",
        "--data",
        s(data),
        "-o",
        s(out),
        "--init",
        s(init),
    ];
    let rest = [
        "--max-steps",
        steps,
        "--eval-tokens",
        "256",
        "--seed",
        "7",
        "-t",
        "2",
    ];
    cria(&[&run[..], &TINY_STEP, &rest, extra].concat(), &[])
}

#[test]
fn init_continues_a_model_and_refuses_another_tokenizer() {
    let dir = tmp("init");
    let data = prepare(&dir);
    let cfg = tiny_config(&dir, 4);
    let first = dir.join("first");
    ok(&train(&data, &cfg, &first, &["--max-steps", "8"], &[]));
    let (steps1, evals1) = log(&first);

    // Continued from first/final: the same shape (from its config.json), starting where the
    // first run ended: its first loss far below a fresh init's (ln 600 = 6.4), near the
    // first run's last losses.
    let second = dir.join("second");
    let err = ok(&train_init(
        &data,
        &first.join("final"),
        &second,
        "2",
        &["--gguf"],
    ));
    assert!(
        err.contains("dim 64 layers 2 heads 4 kv heads 2 ffn 128 vocab 600"),
        "{err}"
    );
    let (steps2, evals2) = log(&second);
    let (fresh, last) = (steps1[0].1, steps1[steps1.len() - 1].1);
    let start = steps2[0].1;
    assert!(
        start < fresh - 0.5 && (start - last).abs() < 0.5 * (fresh - last),
        "--init started at loss {start}; the first run went {fresh} -> {last}"
    );
    assert!(
        evals2.last().unwrap().1 < evals1[0].1,
        "{evals1:?} {evals2:?}"
    );
    ok(&cria(
        &[
            "run",
            "-m",
            s(&second.join("final")),
            "-n",
            "4",
            "-p",
            "Once",
        ],
        &[],
    ));
    // --gguf: RUN/model.gguf, byte for byte what `cria convert RUN/final` writes, and it runs.
    let converted = dir.join("converted.gguf");
    ok(&cria(
        &["convert", s(&second.join("final")), s(&converted)],
        &[],
    ));
    assert!(read(&second.join("model.gguf")) == read(&converted));
    ok(&cria(
        &[
            "run",
            "-m",
            s(&second.join("model.gguf")),
            "-n",
            "4",
            "-p",
            "Once",
        ],
        &[],
    ));

    // Data tokenized by other tokenizers: of another size (500), and of the same size trained
    // on other text (the stories in capitals): refused, naming the first token that differs,
    // before anything is written.
    let stories = fixtures().join("stories.txt");
    let upper = dir.join("upper.txt");
    let text = std::fs::read_to_string(&stories).unwrap();
    std::fs::write(&upper, text.to_uppercase()).unwrap();
    let third = dir.join("third");
    for (vocab, corpus, want) in [
        (500, &stories, "vocab_size 600 differs from the data's 500"),
        (600, &upper, "is not the data's"),
    ] {
        let tok2 = dir.join(format!("tok-{vocab}"));
        let data2 = dir.join(format!("data-{vocab}"));
        common::train::train_tokenizer(corpus, vocab, &tok2);
        ok(&common::train::prepare(&stories, &tok2, &data2));
        let err = fails(&train_init(&data2, &first.join("final"), &third, "1", &[]));
        assert!(err.contains(want), "{err}");
    }
    assert!(
        !third.exists(),
        "a refused --init wrote {}",
        third.display()
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
    // Clipping and decay that mean nothing.
    for (flag, v) in [
        ("--max-grad-norm", "-1"),
        ("--max-grad-norm", "NaN"),
        ("--weight-decay", "-0.1"),
    ] {
        let arg = format!("{flag}={v}");
        let err = fails(&train(&data, &cfg, &out, &[&arg], &[]));
        assert!(err.contains(flag) && err.contains(">= 0"), "{err}");
    }
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
