//! Data parallel over MPI (issue 24): `mpirun -np 2 cria pretrain|finetune` against one process.
//!
//! With the `mpi` feature (`cargo test --features cria/mpi`) and `mpirun` on the PATH:
//! - pretrain: 2 ranks x half the batch give one process's per-step losses, gradient norms, val
//!   losses and final weights (1e-5 relative; only the summation order differs);
//! - a rank that dies mid-step (CRIA_TEST_DIE=1:3) stops the run with a clear message, the last
//!   checkpoint (step 2) stays loadable and `--resume` in one process finishes the run;
//! - finetune: 2 ranks give one process's losses and adapter (no dropout).
//!
//! Without `mpirun` these tests say SKIPPED loudly. Without the feature, the one test here checks
//! that a launch by mpirun (its environment variables) is refused with a clear message instead of
//! N ranks each training its own copy.
#![cfg_attr(not(feature = "mpi"), allow(dead_code))]

mod common;

use common::train::{ok, s, tok_and_data, TINY, TINY_STEP};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tmp(name: &str) -> PathBuf {
    common::train::tmp("mpi", name)
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `cria ARGS`, or `mpirun -np RANKS cria ARGS` with `ranks > 0`.
fn cria(ranks: usize, args: &[&str], env: &[(&str, &str)]) -> Output {
    let bin = env!("CARGO_BIN_EXE_cria");
    let mut c = if ranks == 0 {
        Command::new(bin)
    } else {
        let mut c = Command::new("mpirun");
        c.args(["--oversubscribe", "-np", &ranks.to_string(), bin]);
        // As root (CI, containers) OpenMPI wants both; no CMA single-copy in containers.
        c.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none");
        c
    };
    common::train::with_env(c.args(args), env).output().unwrap()
}

/// Tokenizer (vocabulary 600) and shards of the pretraining stories fixture; the data folder.
fn prepare(dir: &Path) -> PathBuf {
    tok_and_data(dir).1
}

/// Tiny LLaMA (dim 64, 2 layers), 4 steps of 8 sequences of 32 tokens, micro-batches of 2
/// sequences (so each rank of 2 accumulates 2 micro-batches, one process 4).
fn pretrain(ranks: usize, data: &Path, out: &Path, env: &[(&str, &str)]) -> Output {
    pretrain_with(ranks, data, out, &[], env)
}

/// [`pretrain`] with `extra` arguments.
fn pretrain_with(
    ranks: usize,
    data: &Path,
    out: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Output {
    let cfg = out.with_extension("json");
    std::fs::write(&cfg, TINY).unwrap();
    let args = [
        "pretrain",
        "--data",
        s(data),
        "-o",
        s(out),
        "--config",
        s(&cfg),
        "--max-steps",
        "4",
        "--micro-batch-tokens",
        "64",
        "--save-every",
        "2",
        "--eval-every",
        "2",
        "--eval-tokens",
        "256",
        "--seed",
        "7",
        "-t",
        "1",
    ];
    cria(ranks, &[&args[..], &TINY_STEP, extra].concat(), env)
}

/// The numbers of every line of training_log.jsonl but the timings, in order.
fn log_numbers(run: &Path) -> Vec<(String, f64)> {
    let text = std::fs::read_to_string(run.join("training_log.jsonl")).unwrap();
    let mut out = Vec::new();
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        for (k, x) in v.as_object().unwrap() {
            // Timings (tokens/s, MFU) differ; samples are text.
            if let (false, Some(x)) = (k == "tokens_per_s" || k == "mfu", x.as_f64()) {
                out.push((format!("step {} {k}", v["step"]), x));
            }
        }
    }
    out
}

fn close(what: &str, a: f64, b: f64, rel: f64) {
    assert!(
        (a - b).abs() <= rel * a.abs().max(b.abs()).max(1e-30),
        "{what}: {a} vs {b} (relative {:.2e} > {rel:e})",
        (a - b).abs() / a.abs().max(b.abs())
    );
}

/// Every tensor of two safetensors files within `rel` of the largest value of the tensor;
/// returns the largest relative difference.
fn same_tensors(a: &Path, b: &Path, rel: f32) -> f32 {
    use cria_core::safetensors::SafetensorsModel;
    let (fa, fb) = (
        SafetensorsModel::open_file(a).unwrap(),
        SafetensorsModel::open_file(b).unwrap(),
    );
    let mut names: Vec<String> = fa.tensors.iter().map(|t| t.name.clone()).collect();
    names.sort();
    assert!(!names.is_empty());
    let mut worst = 0f32;
    for n in &names {
        let x = fa.get(n).unwrap().to_f32_vec().unwrap();
        let y = fb.get(n).unwrap().to_f32_vec().unwrap();
        assert_eq!(x.len(), y.len(), "{n}");
        let scale = x.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
        let d = x
            .iter()
            .zip(&y)
            .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        worst = worst.max(d / scale);
        assert!(d <= rel * scale, "{n}: max difference {d} of max {scale}");
    }
    worst
}

#[cfg(feature = "mpi")]
fn have_mpirun() -> bool {
    let found = Command::new("mpirun").arg("--version").output().is_ok();
    if !found {
        eprintln!(
            "SKIPPED: no mpirun on the PATH (apt-get install openmpi-bin libopenmpi-dev): the \
             data-parallel tests did not run"
        );
    }
    found
}

#[cfg(feature = "mpi")]
#[test]
fn pretrain_two_ranks_equal_one_process_and_a_dead_rank_keeps_the_checkpoint() {
    if !have_mpirun() {
        return;
    }
    let dir = tmp("pretrain");
    let data = prepare(&dir);
    let (one, two, dead) = (dir.join("one"), dir.join("two"), dir.join("dead"));
    ok(&pretrain(0, &data, &one, &[]));
    let e = ok(&pretrain(2, &data, &two, &[]));
    assert!(e.contains("data parallel: 2 ranks"), "{e}");
    // Rank 0 alone prints the steps and writes.
    assert_eq!(e.matches("step 4/4").count(), 1, "{e}");
    let (a, b) = (log_numbers(&one), log_numbers(&two));
    assert_eq!(
        a.iter().map(|x| &x.0).collect::<Vec<_>>(),
        b.iter().map(|x| &x.0).collect::<Vec<_>>()
    );
    assert!(a.iter().any(|x| x.0.contains("val_loss")));
    for ((k, x), (_, y)) in a.iter().zip(&b) {
        close(k, *x, *y, 1e-5);
    }
    let worst = same_tensors(
        &one.join("final/model.safetensors"),
        &two.join("final/model.safetensors"),
        1e-5,
    );
    eprintln!("2 ranks vs 1 process: final weights within {worst:.1e} of each tensor's max");

    // Rank 1 dies in the middle of step 3: the run fails, saying so; checkpoint-2 is intact
    // and one process resumes from it to the end, to 2 ranks' numbers.
    let o = pretrain(2, &data, &dead, &[("CRIA_TEST_DIE", "1:3")]);
    assert!(!o.status.success());
    let e = err(&o);
    assert!(
        e.contains("rank 1: CRIA_TEST_DIE: exiting with status 1 in the middle of step 3"),
        "{e}"
    );
    assert!(e.contains("mpirun") || e.contains("exit"), "{e}");
    assert!(!e.contains("panicked"), "{e}");
    assert!(dead.join("checkpoint-2/params.safetensors").is_file());
    assert!(!dead.join("final").exists());
    let e = ok(&pretrain_resume(&data, &dead));
    assert!(e.contains("resumed from") && e.contains("(step 2)"), "{e}");
    same_tensors(
        &one.join("final/model.safetensors"),
        &dead.join("final/model.safetensors"),
        1e-5,
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `pretrain` with --resume, in one process: the same arguments plus the flag.
#[cfg(feature = "mpi")]
fn pretrain_resume(data: &Path, out: &Path) -> Output {
    pretrain_with(0, data, out, &["--resume"], &[])
}

#[cfg(feature = "mpi")]
#[test]
fn finetune_two_ranks_equal_one_process() {
    if !have_mpirun() {
        return;
    }
    let dir = tmp("finetune");
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama31");
    let model = fx.join("model.gguf");
    let data = dir.join("train.jsonl");
    let lines: String = (0..8)
        .map(|i| format!("{{\"text\": \"line {i}: the cat sat on the mat number {i}\"}}\n"))
        .collect();
    std::fs::write(&data, lines).unwrap();
    let run = |ranks: usize, out: &Path| {
        let args = [
            "finetune",
            "-m",
            s(&model),
            "--data",
            s(&data),
            "-o",
            s(out),
            "--ctx",
            "64",
            "--lora-r",
            "4",
            "--lora-dropout",
            "0",
            "--lr",
            "1e-2",
            "--max-steps",
            "3",
            "--micro-batch",
            "1",
            "--grad-accum",
            "4",
            "--eval-every",
            "2",
            "--eval-split",
            "0.25",
            "-t",
            "1",
        ];
        cria(ranks, &args, &[])
    };
    let (one, two) = (dir.join("one"), dir.join("two"));
    ok(&run(0, &one));
    let e = ok(&run(2, &two));
    assert_eq!(e.matches("done: 3 steps").count(), 1, "{e}");
    let (a, b) = (log_numbers(&one), log_numbers(&two));
    assert_eq!(a.len(), b.len());
    assert!(a.iter().any(|x| x.0.contains("eval_loss")));
    for ((k, x), (k2, y)) in a.iter().zip(&b) {
        assert_eq!(k, k2);
        close(k, *x, *y, 1e-5);
    }
    same_tensors(
        &one.join("adapter_model.safetensors"),
        &two.join("adapter_model.safetensors"),
        1e-5,
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Without the feature: launched as rank of 2 (mpirun's environment), cria refuses clearly.
#[cfg(not(feature = "mpi"))]
#[test]
fn without_mpi_a_multi_rank_launch_is_refused() {
    let dir = tmp("nompi");
    let out = dir.join("run");
    let o = pretrain(
        0,
        &dir.join("no-data"),
        &out,
        &[("OMPI_COMM_WORLD_SIZE", "2"), ("OMPI_COMM_WORLD_RANK", "0")],
    );
    let e = err(&o);
    assert!(!o.status.success());
    assert!(
        e.contains("launched by mpirun with 2 ranks, but this cria was built without MPI"),
        "{e}"
    );
    assert!(!out.exists());
    eprintln!("NOTE: built without the `mpi` feature: the 2-rank tests did not run");
    let _ = std::fs::remove_dir_all(&dir);
}
