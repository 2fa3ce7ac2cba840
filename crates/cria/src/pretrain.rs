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
//! Test hook: `CRIA_TEST_STOP_AFTER_STEPS=N` stops the run after step N as Ctrl-C does (a
//! checkpoint is saved), to test resume.

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use cria_train::adapter_io::WriteBudget;
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
        required_unless_present = "size"
    )]
    pub config: Option<PathBuf>,
    /// A preset shape: 1M (dim 128, 5 layers, 4 heads, 2 KV heads, FFN 384), 5M (256, 6, 8, 4,
    /// 768), 20M (384, 12, 6, 2, 1024); non-embedding parameters; tied head.
    #[arg(long, value_name = "1M|5M|20M")]
    pub size: Option<String>,
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
    let cfg_json = match (&a.config, &a.size) {
        (Some(p), _) => json_file(p)?,
        (None, Some(s)) => pt::preset(s, vocab, a.ctx).map_err(anyhow::Error::msg)?,
        (None, None) => bail!("give --config CONFIG.json or --size 1M|5M|20M"),
    };
    let config = pt::config_from_json(&cfg_json, vocab, a.ctx)
        .map_err(anyhow::Error::msg)
        .with_context(|| match &a.config {
            Some(p) => format!("the model config {}", p.display()),
            None => "the model preset".into(),
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
    let hyper = Hyper {
        ctx: a.ctx,
        batch_seqs,
        micro_seqs,
        steps,
        lr: a.lr,
        warmup_steps: warmup_steps(a.warmup, steps).map_err(anyhow::Error::msg)?,
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
    pt::lr_at(&hyper, 0).map_err(anyhow::Error::msg)?;

    // The run folder: nothing is written before these checks pass.
    let resume = if a.resume {
        match checkpoints(&a.out).pop() {
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

    // Default threads: the cores shared among the ranks on this machine.
    let threads = a.threads.unwrap_or_else(|| {
        (cria_engine::load::default_threads() / cria_train::dist::local_size()).max(1)
    });
    let cpu = cria_kernels::CpuBackend::try_new(threads).map_err(anyhow::Error::msg)?;
    let mut t = Pretrainer::new(&config, hyper, train, val).map_err(anyhow::Error::msg)?;
    t.set_comm(comm.clone()).map_err(anyhow::Error::msg)?;
    if let Some(ck) = &resume {
        pt::load_checkpoint(&mut t, ck).map_err(anyhow::Error::msg)?;
        if root {
            eprintln!("resumed from {} (step {})", ck.display(), t.step);
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
    let budget = WriteBudget::unlimited();
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
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps {msg} [{elapsed_precise} < {eta_precise}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(t.step);
    let tty = std::io::stderr().is_terminal();
    let mut val_loss: Option<f64> = None;
    let mut interrupted = false;
    while !t.done() {
        let t0 = Instant::now();
        let s = t.step(&cpu).map_err(anyhow::Error::msg)?;
        let tps = per_step as f64 / t0.elapsed().as_secs_f64().max(1e-9);
        writeln!(
            log,
            "{}",
            json!({"step": s.step, "tokens": s.tokens, "loss": s.loss, "lr": s.lr,
                   "grad_norm": s.grad_norm, "tokens_per_s": tps})
        )?;
        let vl = val_loss.map_or(String::new(), |l| format!(" val {l:.4}"));
        let msg = format!(
            "loss {:.4}{vl} lr {:.2e} |g| {:.3} {tps:.0} tok/s",
            s.loss, s.lr, s.grad_norm
        );
        if !tty && root {
            eprintln!("step {}/{steps} {msg}", s.step);
        }
        bar.set_message(msg);
        bar.set_position(s.step);
        let last = t.done();
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
