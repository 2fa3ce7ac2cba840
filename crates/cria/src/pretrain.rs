//! `cria pretrain`: a LLaMA trained from scratch on token shards from `cria data prepare`
//! (`cria_train::pretrain` has the model shapes, the data order, the step and the checkpoints).
//!
//! Order of work, so that bad input fails fast and nothing is overwritten: the data's manifest
//! and shards opened (a manifest not done, an empty train split: errors); the model config
//! built and checked (heads dividing the width...); the run folder checked (a fresh run needs
//! it absent or empty; `--resume` needs a checkpoint there, of the same config and arguments);
//! only then anything written: `training_log.jsonl`, `checkpoint-STEP/`, and at the end
//! `final/` (config.json, model.safetensors, generation_config.json and the tokenizer files of
//! the folder the manifest names), which `cria run -m RUN/final` and transformers load.
//!
//! Under `mpirun -np N` (feature `mpi`): every rank runs this same function over the same data
//! and arguments (`cria_train::dist`: each takes its share of each step's windows); rank 0 alone
//! prints, writes the log, the checkpoints and `final/` (the others wait at a barrier); an error
//! on any rank aborts them all with its message.
//!
//! Test hooks: `CRIA_TEST_STOP_AFTER_STEPS=N` stops the run after step N as Ctrl-C does (a
//! checkpoint is saved), to test resume; `CRIA_TEST_FAIL_WRITE_AFTER=BYTES` makes the checkpoint
//! writes fail with ENOSPC once BYTES have been written (a disk that fills), as in `cria finetune`.

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use cria_tokenizer::VocabDiff;
use cria_train::adapter_io::WriteBudget;
use cria_train::flops;
use cria_train::optim::{warmup_steps, ScheduleKind};
use cria_train::pretrain::{self as pt, Hyper, Pretrainer, Stream};
use cria_train::shards;
use cria_train::trainer::checkpoints;
use serde_json::{json, Value};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Schedule {
    Cosine,
    Linear,
    Constant,
}

#[derive(Args, Clone, Debug)]
pub struct PretrainArgs {
    /// A folder written by `cria data prepare` (data.json + shards).
    #[arg(long, value_name = "DATA_DIR")]
    pub data: PathBuf,
    /// The run folder: training_log.jsonl, checkpoint-STEP/, final/.
    #[arg(short = 'o', long = "output", value_name = "RUN_DIR")]
    pub out: PathBuf,
    /// The model shape, an HF-style config.json (vocab_size is the data's).
    #[arg(
        long,
        value_name = "CONFIG.json",
        conflicts_with = "size",
        required_unless_present_any = ["size", "init"]
    )]
    pub config: Option<PathBuf>,
    /// A preset shape: 1M (dim 128, 5 layers, 4 heads, 2 KV heads, FFN 384), 5M (256, 6, 8, 4,
    /// 768), 20M (384, 12, 6, 2, 1024); non-embedding parameters; tied head.
    #[arg(long, value_name = "1M|5M|10M|20M")]
    pub size: Option<String>,
    /// Continued pretraining: start from the weights of an HF folder (config.json +
    /// model.safetensors, e.g. a previous run's RUN/final) instead of a fresh init; the shape is
    /// its config's, its vocabulary must be the data's. The optimizer state starts fresh.
    #[arg(long, value_name = "MODEL", conflicts_with_all = ["config", "size"])]
    pub init: Option<PathBuf>,
    /// Training tokens (default: 20 per parameter, Chinchilla's ratio).
    #[arg(long, value_name = "N", conflicts_with = "max_steps")]
    pub tokens: Option<u64>,
    /// Optimizer steps (instead of --tokens).
    #[arg(long = "max-steps", value_name = "N")]
    pub max_steps: Option<u64>,
    /// Tokens per optimizer step (rounded down to whole --ctx sequences, at least one).
    #[arg(long = "batch-tokens", default_value_t = 16384)]
    pub batch_tokens: usize,
    /// Tokens per forward/backward (gradient accumulation up to --batch-tokens).
    #[arg(long = "micro-batch-tokens", default_value_t = 4096)]
    pub micro_tokens: usize,
    /// Sequence length.
    #[arg(long, default_value_t = 256)]
    pub ctx: usize,
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    /// Warmup: a ratio of the steps below 1, else a step count.
    #[arg(long, default_value_t = 0.05)]
    pub warmup: f64,
    #[arg(long, value_enum, default_value_t = Schedule::Cosine)]
    pub schedule: Schedule,
    /// The lr at the end of the decay, as a fraction of --lr.
    #[arg(long = "min-lr-ratio", default_value_t = 0.1)]
    pub min_lr_ratio: f64,
    /// AdamW's decoupled weight decay, on the matrices only (not norms or the embedding).
    #[arg(long = "weight-decay", default_value_t = 0.1)]
    pub weight_decay: f64,
    /// Gradient clipping by global L2 norm (0: none).
    #[arg(long = "max-grad-norm", default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Validation every N steps (0: only at the end).
    #[arg(long = "eval-every", default_value_t = 0)]
    pub eval_every: u64,
    /// Validation tokens (whole --ctx windows from the start of the val split).
    #[arg(long = "eval-tokens", default_value_t = 65536)]
    pub eval_tokens: usize,
    /// A checkpoint every N steps (0: only at the end).
    #[arg(long = "save-every", default_value_t = 0)]
    pub save_every: u64,
    /// Continue the run in RUN_DIR from its latest checkpoint (same config and arguments).
    #[arg(long)]
    pub resume: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Threads (default: physical cores).
    #[arg(short = 't', long, value_name = "N", value_parser = crate::run::thread_count)]
    pub threads: Option<usize>,
    /// Also write RUN_DIR/model.gguf from final/ (f16 matrices, as `cria convert RUN/final
    /// model.gguf` writes it), for llama.cpp, Ollama and `cria run`.
    #[arg(long)]
    pub gguf: bool,
    /// A prompt of the sample generations at each eval (repeat for several; default: the starts
    /// of the first 3 documents of the val split).
    #[arg(long = "sample-prompt", value_name = "TEXT")]
    pub sample_prompts: Vec<String>,
    /// New tokens per sample generation (0: no samples).
    #[arg(long = "sample-tokens", default_value_t = 32)]
    pub sample_tokens: usize,
}

fn json_file(path: &Path) -> Result<Value> {
    let b = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&b).with_context(|| format!("parsing {}", path.display()))
}

/// The tokenizer folder data.json names (as given to `cria data prepare`: from the current
/// folder, else from the data folder's parent); None for a model spec.
fn tokenizer_dir(manifest: &Value, data: &Path) -> Option<PathBuf> {
    let t = PathBuf::from(manifest["tokenizer"].as_str()?);
    let beside = data.parent().map(|p| p.join(&t));
    std::iter::once(t)
        .chain(beside)
        .find(|d| d.join("tokenizer.json").is_file())
}

/// `RUN/training_log.jsonl` opened to append, created with the folder (a resumed run keeps the
/// lines up to its checkpoint's step).
fn open_log(out: &Path, step: u64) -> Result<std::fs::File> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let log_path = out.join("training_log.jsonl");
    // A resumed run keeps the log lines up to its checkpoint's step.
    let kept: String = std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&log_path, kept).with_context(|| format!("writing {}", log_path.display()))?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))
}

pub fn run(a: &PretrainArgs) -> Result<()> {
    let comm = cria_train::dist::world().map_err(anyhow::Error::msg)?;
    let res = train(a, &comm);
    if let Err(e) = &res {
        if comm.size() > 1 {
            comm.abort(&format!("{e:#}"));
        }
    }
    res
}

fn train(a: &PretrainArgs, comm: &Arc<dyn cria_train::dist::Comm>) -> Result<()> {
    let root = comm.is_root();
    // The data.
    let manifest = json_file(&a.data.join("data.json"))?;
    let train = shards::open_split(&a.data, "train").map_err(anyhow::Error::msg)?;
    let val = shards::open_split(&a.data, "val").map_err(anyhow::Error::msg)?;
    let vocab = manifest["vocab_size"]
        .as_u64()
        .context("data.json: vocab_size missing")? as usize;
    let train = Stream::new(train, a.ctx).map_err(anyhow::Error::msg)?;
    if train.windows() == 0 {
        bail!(
            "{}: the train split has {} tokens, not one sequence of --ctx {} + 1",
            a.data.display(),
            train.tokens(),
            a.ctx
        );
    }
    let val = Stream::new(val, a.ctx).map_err(anyhow::Error::msg)?;
    let val = (val.windows() > 0).then_some(val);

    // The model.
    let cfg_json = match (&a.config, &a.size, &a.init) {
        (Some(p), _, _) => json_file(p)?,
        (None, Some(s), _) => pt::preset(s, vocab, a.ctx).map_err(anyhow::Error::msg)?,
        (None, None, Some(d)) => json_file(&d.join("config.json"))?,
        (None, None, None) => {
            bail!("give --config CONFIG.json, --size 1M|5M|10M|20M or --init MODEL")
        }
    };
    let config = pt::config_from_json(&cfg_json, vocab, a.ctx)
        .map_err(anyhow::Error::msg)
        .with_context(|| match (&a.config, &a.init) {
            (Some(p), _) => format!("the model config {}", p.display()),
            (None, Some(d)) => format!("--init {}", d.display()),
            (None, None) => "the model preset".into(),
        })?;
    let n_params = pt::param_count(&config).map_err(anyhow::Error::msg)?;

    // The step counts.
    let batch_seqs = (a.batch_tokens / a.ctx).max(1);
    let micro_seqs = (a.micro_tokens / a.ctx).max(1).min(batch_seqs);
    let per_step = (batch_seqs * a.ctx) as u64;
    let steps = match (a.max_steps, a.tokens) {
        (Some(s), _) => s,
        (None, Some(t)) => t.div_ceil(per_step),
        (None, None) => (20 * n_params as u64).div_ceil(per_step),
    };
    if steps == 0 {
        bail!("zero training steps (--max-steps / --tokens)");
    }
    // Resuming with another --tokens / --max-steps extends (or shortens) the run; the lr
    // schedule keeps the length the run started with (see `schedule_steps`).
    let latest = if a.resume {
        checkpoints(&a.out).pop()
    } else {
        None
    };
    let sched_steps = schedule_steps(latest.as_ref().map(|c| c.1.as_path()), steps)?;
    let hyper = Hyper {
        ctx: a.ctx,
        batch_seqs,
        micro_seqs,
        steps: sched_steps,
        lr: a.lr,
        warmup_steps: warmup_steps(a.warmup, sched_steps).map_err(anyhow::Error::msg)?,
        schedule: match a.schedule {
            Schedule::Cosine => ScheduleKind::Cosine { num_cycles: 0.5 },
            Schedule::Linear => ScheduleKind::Linear,
            Schedule::Constant => ScheduleKind::Constant,
        },
        min_lr_ratio: a.min_lr_ratio,
        weight_decay: a.weight_decay,
        max_grad_norm: a.max_grad_norm,
        eval_windows: (a.eval_tokens / a.ctx).max(1),
        seed: a.seed,
    };
    if !(0.0..=1.0).contains(&a.min_lr_ratio) {
        bail!("--min-lr-ratio {} out of range 0..=1", a.min_lr_ratio);
    }
    if !(a.max_grad_norm >= 0.0 && a.max_grad_norm.is_finite()) {
        bail!(
            "--max-grad-norm {}: must be finite and >= 0 (0: no clipping)",
            a.max_grad_norm
        );
    }
    if !(a.weight_decay >= 0.0 && a.weight_decay.is_finite()) {
        bail!("--weight-decay {}: must be finite and >= 0", a.weight_decay);
    }
    pt::lr_at(&hyper, 0).map_err(anyhow::Error::msg)?;

    // The run folder: nothing is written before these checks pass.
    let resume = if a.resume {
        match latest {
            Some((_, p)) => Some(p),
            None => bail!("--resume: no checkpoint-STEP folder in {}", a.out.display()),
        }
    } else {
        if std::fs::read_dir(&a.out).is_ok_and(|mut d| d.next().is_some()) {
            bail!(
                "{} is not empty: continue its run with --resume, or choose another -o",
                a.out.display()
            );
        }
        None
    };
    let tok_dir = tokenizer_dir(&manifest, &a.data);
    if let Some(d) = &tok_dir {
        let tok = cria_engine::load_tokenizer_only(d)
            .with_context(|| format!("loading the tokenizer of {}", d.display()))?;
        crate::data_prepare::check_chat_template(&tok, &d.display().to_string())?;
    }
    // --init's tokenizer must be the data's: the same ids would otherwise mean other text.
    if let (Some(init), Some(d)) = (&a.init, &tok_dir) {
        if init.join("tokenizer.json").exists() {
            let mine = cria_engine::load_tokenizer_only(init)
                .with_context(|| format!("loading the tokenizer of --init {}", init.display()))?;
            let data = cria_engine::load_tokenizer_only(d)?;
            if let Some(diff) = data.vocab_diff(&mine) {
                let how = match diff {
                    VocabDiff::Token { id, ours, theirs } => {
                        format!("token {id} is {ours:?} in the data's but {theirs:?} in --init's")
                    }
                    VocabDiff::Size { ours, theirs } => {
                        format!("{ours} tokens in the data's, {theirs} in --init's")
                    }
                };
                bail!(
                    "--init {}: its tokenizer is not the data's ({}): {how}, so the same ids \
                     would mean other text; prepare the data with its tokenizer (cria data \
                     prepare --tokenizer {})",
                    init.display(),
                    d.display(),
                    init.display()
                );
            }
        }
    }

    // Default threads: the cores shared among the ranks on this machine.
    let threads = a.threads.unwrap_or_else(|| {
        (cria_engine::load::default_threads() / cria_train::dist::local_size()).max(1)
    });
    let cpu = cria_kernels::CpuBackend::try_new(threads).map_err(anyhow::Error::msg)?;
    let mut t = match &a.init {
        Some(d) => {
            let m = pt::load_init(d, vocab, &hyper, &cpu).map_err(anyhow::Error::msg)?;
            if root {
                eprintln!("starting from the weights of {}", d.display());
            }
            Pretrainer::with_model(m, hyper, train, val)
        }
        None => Pretrainer::new(&config, hyper, train, val),
    }
    .map_err(anyhow::Error::msg)?;
    t.set_comm(comm.clone()).map_err(anyhow::Error::msg)?;
    if let Some(ck) = &resume {
        pt::load_checkpoint(&mut t, ck).map_err(anyhow::Error::msg)?;
        if root {
            eprintln!("resumed from {} (step {})", ck.display(), t.step);
        }
        if t.step >= steps {
            bail!(
                "{} is at step {} already: to train on, give a larger --max-steps / --tokens \
                 (now {steps} steps)",
                ck.display(),
                t.step
            );
        }
        if sched_steps != steps && root {
            eprintln!(
                "extending the run to {steps} steps: the lr schedule keeps its {sched_steps} \
                 steps; after them the lr stays at their final value ({:.3e})",
                pt::lr_at(&t.hyper, sched_steps).map_err(anyhow::Error::msg)?
            );
        }
    }
    // Every rank has checked the run folder before rank 0 writes into it.
    comm.barrier().map_err(anyhow::Error::msg)?;
    if root && comm.size() > 1 {
        eprintln!(
            "data parallel: {} ranks (MPI), {threads} threads each",
            comm.size()
        );
    }
    if root {
        eprintln!(
            "model: dim {} layers {} heads {} kv heads {} ffn {} vocab {} ({} parameters, {} \
         non-embedding); {} steps of {} sequences x {} tokens ({} tokens), micro-batch {} \
         sequences",
            config.dim,
            config.n_layers,
            config.n_heads,
            config.n_kv_heads,
            config.ffn_dim,
            config.vocab_size,
            n_params,
            n_params - config.vocab_size * config.dim,
            steps,
            batch_seqs,
            a.ctx,
            steps * per_step,
            micro_seqs
        );
    }

    // Rank 0 writes the log; the others write nothing.
    let mut log: Box<dyn Write> = if root {
        Box::new(open_log(&a.out, t.step)?)
    } else {
        Box::new(std::io::sink())
    };
    let mut samples = Samples::new(a, &manifest, tok_dir.as_deref(), &a.data, a.ctx)?;
    let mut meter = Meter::new(&cpu, &config, a.ctx, per_step);
    let budget = match std::env::var("CRIA_TEST_FAIL_WRITE_AFTER") {
        Ok(v) => WriteBudget::fail_after(v.parse().context("CRIA_TEST_FAIL_WRITE_AFTER")?),
        Err(_) => WriteBudget::unlimited(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let _ = ctrlc::set_handler(move || {
            if !stop.swap(true, Ordering::SeqCst) {
                eprintln!("\nstopping after this step (saving a checkpoint)...");
            }
        });
    }
    let stop_after: Option<u64> = std::env::var("CRIA_TEST_STOP_AFTER_STEPS")
        .ok()
        .and_then(|v| v.parse().ok());

    let bar = if root {
        indicatif::ProgressBar::new(steps)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps {msg} [{elapsed}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(t.step);
    let tty = std::io::stderr().is_terminal();
    let mut val_loss: Option<f64> = None;
    let mut interrupted = false;
    while t.step < steps {
        let t0 = Instant::now();
        let s = t.step(&cpu).map_err(anyhow::Error::msg)?;
        let (tps, mfu, eta) = meter.update(t0, steps - s.step);
        writeln!(
            log,
            "{}",
            json!({"step": s.step, "tokens": s.tokens, "loss": s.loss, "lr": s.lr,
                   "grad_norm": s.grad_norm, "tokens_per_s": tps, "mfu": mfu})
        )?;
        let vl = val_loss.map_or(String::new(), |l| format!(" val {l:.4}"));
        let msg = format!(
            "loss {:.4}{vl} lr {:.2e} |g| {:.3} {tps:.0} tok/s MFU {:.1}% ETA {eta}",
            s.loss,
            s.lr,
            s.grad_norm,
            100.0 * mfu
        );
        if !tty && root {
            eprintln!("step {}/{steps} {msg}", s.step);
        }
        bar.set_message(msg);
        bar.set_position(s.step);
        let last = t.step >= steps;
        if a.eval_every > 0 && s.step % a.eval_every == 0 || last {
            if let Some(l) = t.evaluate(&cpu).map_err(anyhow::Error::msg)? {
                val_loss = Some(l);
                writeln!(
                    log,
                    "{}",
                    json!({"step": s.step, "tokens": s.tokens, "val_loss": l})
                )?;
                bar.println(format!("step {}: val loss {l:.4}", s.step));
            }
            if root {
                samples.run(&mut t, &cpu, s.step, s.tokens, &mut log, &bar)?;
                write_loss_plot(&a.out)?;
            }
        }
        let mut halt = stop.load(Ordering::SeqCst) || stop_after == Some(s.step);
        if comm.size() > 1 {
            // Ctrl-C reaches the ranks at different times: stop where any rank saw it.
            let mut v = [f64::from(u8::from(halt))];
            comm.all_reduce_f64(&mut v).map_err(anyhow::Error::msg)?;
            halt = v[0] > 0.0;
        }
        if a.save_every > 0 && s.step % a.save_every == 0 || last || halt {
            if root {
                let p = pt::save_checkpoint(&t, &a.out, &budget).map_err(anyhow::Error::msg)?;
                bar.println(format!("saved {}", p.display()));
            }
            comm.barrier().map_err(anyhow::Error::msg)?;
        }
        if halt && !last {
            interrupted = true;
            break;
        }
    }
    bar.finish_and_clear();
    if !root {
        // Rank 0 writes final/; the others wait for it.
        return comm.barrier().map_err(anyhow::Error::msg);
    }
    write_loss_plot(&a.out)?;
    if interrupted {
        eprintln!(
            "stopped at step {}/{steps}; continue with the same command and --resume",
            t.step
        );
        return comm.barrier().map_err(anyhow::Error::msg);
    }

    // The result: an HF folder with the tokenizer.
    let fin = a.out.join("final");
    t.model.save_hf(&fin).map_err(anyhow::Error::msg)?;
    let mut gen = json!({"eos_token_id": manifest["eos_id"]});
    match &tok_dir {
        Some(d) => {
            for f in [
                "tokenizer.json",
                "tokenizer_config.json",
                "special_tokens_map.json",
            ] {
                if d.join(f).is_file() {
                    std::fs::copy(d.join(f), fin.join(f))
                        .with_context(|| format!("copying {} to {}", f, fin.display()))?;
                }
            }
            if let Ok(tc) = json_file(&d.join("tokenizer_config.json")) {
                let bos = tc["bos_token"].as_str().unwrap_or_default().to_string();
                if let Some((id, _)) = tc["added_tokens_decoder"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .find(|(_, v)| v["content"] == bos.as_str())
                {
                    gen["bos_token_id"] = json!(id.parse::<u64>().ok());
                }
            }
        }
        None => eprintln!(
            "warning: data.json's tokenizer {} is not a folder with tokenizer.json: {} has no \
             tokenizer files (copy them in to run it)",
            manifest["tokenizer"],
            fin.display()
        ),
    }
    std::fs::write(
        fin.join("generation_config.json"),
        serde_json::to_string_pretty(&gen)? + "\n",
    )?;
    if a.gguf {
        crate::convert::run(&crate::convert::ConvertArgs {
            input: fin.clone(),
            out: a.out.join("model.gguf"),
            outtype: "auto".into(),
            split_max_size: None,
            tokenizer_pre: None,
        })
        .context("--gguf")?;
    }
    eprintln!(
        "done: {steps} steps, {} tokens{}; model in {} (cria run -m {})",
        t.tokens_done(),
        val_loss.map_or(String::new(), |l| format!(", val loss {l:.4}")),
        fin.display(),
        fin.display()
    );
    if let Some(p) = cria_train::memory::peak_rss_bytes() {
        eprintln!(
            "peak memory: {:.1} MiB (VmHWM)",
            p as f64 / (1 << 20) as f64
        );
    }
    comm.barrier().map_err(anyhow::Error::msg)
}

/// The length of the lr schedule: `steps` for a fresh run; a resumed run keeps its checkpoint's
/// (`hyper.steps` in trainer_state.json), whatever the new --tokens / --max-steps. So extending
/// a finished run continues at the schedule's final lr (`--min-lr-ratio x --lr` for cosine and
/// linear, `--lr` for constant), and an extended run resumes bit for bit like any other.
fn schedule_steps(checkpoint: Option<&Path>, steps: u64) -> Result<u64> {
    let Some(ck) = checkpoint else {
        return Ok(steps);
    };
    let st = json_file(&ck.join(cria_train::trainer::STATE_FILE))?;
    st["hyper"]["steps"]
        .as_u64()
        .filter(|&s| s > 0)
        .with_context(|| format!("{}: no hyper.steps in trainer_state.json", ck.display()))
}

/// Tokens/s, MFU and ETA of the steps of this session.
struct Meter {
    flops_per_token: f64,
    peak: f64,
    per_step: u64,
    start: Instant,
    done: u64,
}

impl Meter {
    /// Measures the peak (`cria_train::flops::peak_flops`, a fraction of a second) on `cpu`.
    fn new(
        cpu: &cria_kernels::CpuBackend,
        c: &cria_model::config::Config,
        ctx: usize,
        per_step: u64,
    ) -> Meter {
        let peak = flops::peak_flops(cpu);
        let fpt = flops::train_flops_per_token(c, ctx);
        eprintln!(
            "MFU: {:.3e} FLOPs per token (6 N + 6 L ctx q_dim) over a measured peak of {:.1} \
             GFLOP/s (f32 GEMM, {} threads)",
            fpt,
            peak / 1e9,
            cpu.threads
        );
        Meter {
            flops_per_token: fpt,
            peak,
            per_step,
            start: Instant::now(),
            done: 0,
        }
    }

    /// After a step that began at `t0`, `left` steps to go: (tokens/s of that step, its MFU, the
    /// ETA from this session's mean step time).
    fn update(&mut self, t0: Instant, left: u64) -> (f64, f64, String) {
        let tps = self.per_step as f64 / t0.elapsed().as_secs_f64().max(1e-9);
        self.done += 1;
        let mean = self.start.elapsed().as_secs_f64() / self.done as f64;
        let eta = (mean * left as f64).round() as u64;
        let eta = format!("{}:{:02}:{:02}", eta / 3600, eta / 60 % 60, eta % 60);
        (tps, flops::mfu(tps, self.flops_per_token, self.peak), eta)
    }
}

/// Sample generations at each eval: fixed prompts, `--sample-tokens` new tokens each,
/// temperature 0.8, top-k 40, from a generator seeded by (--seed, step, prompt), decoded with
/// the run's tokenizer; printed above the bar and logged as {"step", "tokens", "samples"}.
struct Samples {
    tok: Option<cria_tokenizer::Tokenizer>,
    prompts: Vec<Vec<u32>>,
    new_tokens: usize,
    ctx: usize,
    seed: u64,
}

/// Prompt length taken from the val split's documents.
const PROMPT_TOKENS: usize = 8;

impl Samples {
    fn new(
        a: &PretrainArgs,
        manifest: &Value,
        tok_dir: Option<&Path>,
        data: &Path,
        ctx: usize,
    ) -> Result<Samples> {
        let none = Samples {
            tok: None,
            prompts: vec![],
            new_tokens: 0,
            ctx,
            seed: a.seed,
        };
        if a.sample_tokens == 0 {
            return Ok(none);
        }
        let loaded = match tok_dir {
            Some(d) => cria_engine::load_tokenizer_only(d),
            None => manifest["tokenizer"].as_str().map_or_else(
                || crate::load::tokenizer(None),
                |s| crate::load::tokenizer(Some(s)),
            ),
        };
        let tok = match loaded {
            Ok(t) => t,
            Err(e) if a.sample_prompts.is_empty() => {
                eprintln!("warning: no sample generations: the data's tokenizer: {e:#}");
                return Ok(none);
            }
            Err(e) => return Err(e).context("--sample-prompt needs the data's tokenizer"),
        };
        let mut prompts = Vec::new();
        for p in &a.sample_prompts {
            let ids = tok.encode(p, false, false);
            if ids.is_empty() {
                bail!("--sample-prompt {p:?}: no tokens");
            }
            prompts.push(ids);
        }
        if prompts.is_empty() {
            let eos = manifest["eos_id"].as_u64().map(|e| e as u32);
            prompts = Self::val_prompts(data, eos)?;
        }
        Ok(Samples {
            tok: Some(tok),
            prompts,
            new_tokens: a.sample_tokens,
            ctx,
            seed: a.seed,
        })
    }

    /// The first PROMPT_TOKENS tokens of the val split's first 3 documents (EOS-separated), from
    /// its first 4096 tokens; the train split's if there is no val split.
    fn val_prompts(data: &Path, eos: Option<u32>) -> Result<Vec<Vec<u32>>> {
        let mut split = shards::open_split(data, "val").map_err(anyhow::Error::msg)?;
        if split.iter().all(|s| s.is_empty()) {
            split = shards::open_split(data, "train").map_err(anyhow::Error::msg)?;
        }
        let mut head = Vec::new();
        for s in &split {
            let n = s.len().min(4096 - head.len());
            let mut buf = vec![0u32; n];
            s.read(0, &mut buf).map_err(anyhow::Error::msg)?;
            head.extend(buf);
            if head.len() >= 4096 {
                break;
            }
        }
        let docs = head.split(|&t| Some(t) == eos).filter(|d| !d.is_empty());
        let mut out: Vec<Vec<u32>> = docs
            .take(3)
            .map(|d| d[..d.len().min(PROMPT_TOKENS)].to_vec())
            .collect();
        if out.is_empty() && !head.is_empty() {
            out.push(head[..head.len().min(PROMPT_TOKENS)].to_vec());
        }
        Ok(out)
    }

    /// Generates, prints and logs the samples of step `step`.
    fn run(
        &mut self,
        t: &mut Pretrainer,
        cpu: &cria_kernels::CpuBackend,
        step: u64,
        tokens: u64,
        log: &mut dyn Write,
        bar: &indicatif::ProgressBar,
    ) -> Result<()> {
        let Some(tok) = &self.tok else {
            return Ok(());
        };
        let mut texts = Vec::new();
        for (i, p) in self.prompts.iter().enumerate() {
            let mut rng = cria_train::optim::Rng::new(
                self.seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i as u64) << 56,
            );
            let mut ids = p.clone();
            for _ in 0..self.new_tokens {
                let from = ids.len().saturating_sub(self.ctx);
                let logits = t
                    .model
                    .next_logits(cpu, &ids[from..])
                    .map_err(anyhow::Error::msg)?;
                ids.push(sample_top_k(&logits, 0.8, 40, rng.next_f64()));
            }
            let text = tok.decode(&ids);
            let line = format!("step {step}: sample {}: {text:?}", i + 1);
            // A hidden bar (stderr not a terminal) drops println.
            if bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
            texts.push(text);
        }
        if !texts.is_empty() {
            writeln!(
                log,
                "{}",
                json!({"step": step, "tokens": tokens, "samples": texts})
            )?;
        }
        Ok(())
    }
}

/// A token from `logits` at `temperature` among the `k` most likely, `u` uniform in [0, 1).
fn sample_top_k(logits: &[f32], temperature: f64, k: usize, u: f64) -> u32 {
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    let k = k.clamp(1, logits.len().max(1));
    idx.select_nth_unstable_by(k - 1, |&a, &b| logits[b].total_cmp(&logits[a]));
    idx.truncate(k);
    idx.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    let top = logits[idx[0]] as f64;
    let w: Vec<f64> = idx
        .iter()
        .map(|&i| ((logits[i] as f64 - top) / temperature.max(1e-6)).exp())
        .collect();
    let mut x = u * w.iter().sum::<f64>();
    for (&i, &wi) in idx.iter().zip(&w) {
        if x < wi {
            return i as u32;
        }
        x -= wi;
    }
    idx[k - 1] as u32
}

/// RUN/loss.svg: train loss (every step) and val loss (each eval) against tokens, from
/// training_log.jsonl (`cria_train::plot`).
fn write_loss_plot(out: &Path) -> Result<()> {
    let text = std::fs::read_to_string(out.join("training_log.jsonl")).unwrap_or_default();
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for v in text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        let Some(tokens) = v["tokens"].as_u64() else {
            continue;
        };
        if let Some(l) = v["loss"].as_f64() {
            train.push((tokens, l));
        } else if let Some(l) = v["val_loss"].as_f64() {
            val.push((tokens, l));
        }
    }
    let svg = cria_train::plot::loss_svg_x(&train, &val, "tokens");
    let p = out.join("loss.svg");
    std::fs::write(&p, svg).with_context(|| format!("writing {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_sampling_keeps_to_the_k_best() {
        let logits = [0.0f32, 5.0, 1.0, 4.9, -3.0];
        for u in [0.0, 0.3, 0.6, 0.999] {
            let t = sample_top_k(&logits, 0.8, 2, u);
            assert!(t == 1 || t == 3, "{t}");
        }
        assert_eq!(sample_top_k(&logits, 0.8, 1, 0.99), 1);
        assert_eq!(sample_top_k(&logits, 0.8, 40, 0.0), 1);
        // A near-zero temperature is greedy.
        assert_eq!(sample_top_k(&logits, 1e-9, 40, 0.999), 1);
        // u near 1 at a high temperature can reach the least likely of the k.
        assert_eq!(sample_top_k(&logits, 1e6, 5, 0.9999), 4);
    }
}
