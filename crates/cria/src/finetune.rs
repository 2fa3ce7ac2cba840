//! `cria finetune`: LoRA / QLoRA fine-tuning of a LLaMA-family model over the file the user runs
//! (an HF folder or a GGUF, quantized or not), writing a PEFT folder (+ a llama.cpp GGUF LoRA)
//! that `cria run --lora`, PEFT and llama.cpp load.
//!
//! Order of work, so that bad input fails fast: arguments checked; the model's config and file
//! sizes read (no weights); `--ctx` checked; `--dry-run` prints the memory plan and stops; the
//! data read and rendered with the model's tokenizer and chat template (line errors reported by
//! number, skipped with a count or fatal with `--strict`); then the weights loaded (quantized at
//! load with `--base-type`) and the loop of `cria_train::trainer` run.
//!
//! Test hook: `CRIA_TEST_FAIL_WRITE_AFTER=BYTES` makes the run's file writes (checkpoints and
//! the final adapter) fail with "No space left on device" once BYTES have been written in all.

use crate::load;
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use cria_core::DType;
use cria_model::config::Config;
use cria_model::lora::Target;
use cria_train::adapter_io::{self, AdapterMeta, WriteBudget};
use cria_train::data::{self, Limits, Message, RenderOptions};
use cria_train::memory;
use cria_train::model::{Seq, TrainModel, TrainOptions};
use cria_train::optim::{AdamWConfig, Rng, ScheduleKind};
use cria_train::params::{LoraConfig, LoraParams};
use cria_train::trainer::{self, Batching, Event, Finish, RunOptions, TrainConfig, Trainer};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Schedule {
    Cosine,
    Linear,
    Constant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BaseType {
    #[value(name = "q4_k")]
    Q4K,
    #[value(name = "q8_0")]
    Q8_0,
    /// Refused with a reason (not a ggml type).
    #[value(name = "nf4")]
    Nf4,
}

#[derive(Args, Clone, Debug)]
pub struct FinetuneArgs {
    /// The base model: whatever `cria run -m` takes (a .gguf, a Hugging Face folder,
    /// hf:ORG/REPO[:FILE], a short name).
    #[arg(short = 'm', long = "model", value_name = "BASE")]
    pub model: Option<String>,
    /// Training data, JSON lines: {"messages"}, {"prompt","completion"},
    /// {"instruction","input","output"}, {"text"} or {"input_ids","labels"}.
    #[arg(long, value_name = "TRAIN.jsonl")]
    pub data: PathBuf,
    /// Evaluation data (same formats).
    #[arg(long, value_name = "EVAL.jsonl", conflicts_with = "eval_split")]
    pub eval: Option<PathBuf>,
    /// Hold out this fraction of the training examples (seeded) for evaluation.
    #[arg(long = "eval-split", value_name = "FRACTION")]
    pub eval_split: Option<f64>,
    /// The output folder (PEFT adapter, checkpoints, training_log.jsonl, loss.svg).
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    pub out: PathBuf,
    #[arg(long = "lora-r", value_name = "R", default_value_t = 16)]
    pub lora_r: usize,
    #[arg(long = "lora-alpha", value_name = "ALPHA", default_value_t = 32.0)]
    pub lora_alpha: f32,
    #[arg(long = "lora-dropout", value_name = "P", default_value_t = 0.05)]
    pub lora_dropout: f32,
    /// Layer weights to adapt, comma-separated: q,k,v,o,gate,up,down (or their *_proj names).
    #[arg(
        long = "target",
        value_delimiter = ',',
        value_name = "LIST",
        default_value = "q,k,v,o,gate,up,down"
    )]
    pub target: Vec<String>,
    /// rsLoRA: scale alpha / sqrt(r).
    #[arg(long = "use-rslora")]
    pub use_rslora: bool,
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub epochs: u64,
    /// Optimizer steps in all (overrides --epochs).
    #[arg(long = "max-steps", value_name = "N")]
    pub max_steps: Option<u64>,
    #[arg(
        long,
        value_name = "LR",
        default_value_t = 2e-4,
        allow_negative_numbers = true
    )]
    pub lr: f64,
    /// Warmup: a ratio of the total steps below 1, a step count from 1.
    #[arg(long, value_name = "W", default_value_t = 0.03)]
    pub warmup: f64,
    #[arg(long, value_enum, default_value_t = Schedule::Cosine)]
    pub schedule: Schedule,
    #[arg(long = "weight-decay", value_name = "WD", default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    #[arg(long = "max-grad-norm", value_name = "N", default_value_t = 1.0)]
    pub max_grad_norm: f64,
    #[arg(long = "adam-beta1", default_value_t = 0.9)]
    pub adam_beta1: f64,
    #[arg(long = "adam-beta2", default_value_t = 0.999)]
    pub adam_beta2: f64,
    #[arg(long = "adam-eps", default_value_t = 1e-8)]
    pub adam_eps: f64,
    /// Sequences per micro-batch.
    #[arg(long = "micro-batch", value_name = "N", default_value_t = 1)]
    pub micro_batch: usize,
    /// Micro-batches per optimizer step.
    #[arg(long = "grad-accum", value_name = "N", default_value_t = 1)]
    pub grad_accum: usize,
    /// Fill each micro-batch with whole sequences up to N tokens (instead of --micro-batch).
    #[arg(
        long = "batch-tokens",
        value_name = "N",
        conflicts_with = "micro_batch"
    )]
    pub batch_tokens: Option<usize>,
    /// Longest sequence (tokens); longer examples are skipped (an error with --strict).
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub ctx: usize,
    /// Pack whole sequences into micro-batches of up to --ctx tokens (each attends only to
    /// itself), unless --batch-tokens says another size.
    #[arg(long)]
    pub packing: bool,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Keep the file order (no per-epoch shuffle).
    #[arg(long = "no-shuffle")]
    pub no_shuffle: bool,
    /// Evaluate every N steps (and always at the end).
    #[arg(long = "eval-every", value_name = "N")]
    pub eval_every: Option<u64>,
    /// Save a checkpoint every N steps (OUT/checkpoint-STEP).
    #[arg(long = "save-every", value_name = "N")]
    pub save_every: Option<u64>,
    /// Resume from a checkpoint folder, or the latest checkpoint in a folder (default: OUT).
    #[arg(long, value_name = "CHECKPOINT_DIR|OUT", num_args = 0..=1)]
    pub resume: Option<Option<PathBuf>>,
    /// Recompute activations in the backward instead of keeping them (less memory).
    #[arg(long = "grad-checkpoint")]
    pub grad_checkpoint: bool,
    /// A quantized base's forward with the inference kernels' int8 activations: faster, but the
    /// gradients are those of a slightly different forward (over SmolLM2 Q4_1 they differ from
    /// LoRA over the dequantized weights by 0.2-0.5 relative; by default, f32 activations: 3e-5).
    #[arg(long = "int8-activations")]
    pub int8_activations: bool,
    /// Threads (default: physical cores).
    #[arg(short = 't', long, value_name = "N", value_parser = crate::run::thread_count)]
    pub threads: Option<usize>,
    /// Start from this PEFT adapter's A and B (same rank, alpha and targets).
    #[arg(long = "init-adapter", value_name = "PEFT_DIR")]
    pub init_adapter: Option<PathBuf>,
    /// A data line that does not parse or is too long is an error (default: skipped).
    #[arg(long)]
    pub strict: bool,
    /// Print the memory the run needs (before loading any weights) and stop.
    #[arg(long = "dry-run")]
    pub dry_run: bool,
    /// Also write OUT/adapter.gguf (llama.cpp's LoRA format).
    #[arg(long)]
    pub gguf: bool,
    /// Quantize an f16/bf16/f32 base's layer matrices at load (QLoRA without a separate file).
    #[arg(long = "base-type", value_enum)]
    pub base_type: Option<BaseType>,
}

fn parse_target(s: &str) -> Result<Target> {
    let t = s.trim().to_ascii_lowercase();
    Ok(match t.trim_end_matches("_proj") {
        "q" => Target::Q,
        "k" => Target::K,
        "v" => Target::V,
        "o" => Target::O,
        "gate" => Target::Gate,
        "up" => Target::Up,
        "down" => Target::Down,
        _ => bail!("--target {s:?}: one of q, k, v, o, gate, up, down"),
    })
}

impl FinetuneArgs {
    pub fn lora_config(&self) -> Result<LoraConfig> {
        let mut targets = Vec::new();
        for s in &self.target {
            let t = parse_target(s)?;
            if !targets.contains(&t) {
                targets.push(t);
            }
        }
        targets.sort_by_key(|t| t.layer_index());
        let c = LoraConfig {
            rank: self.lora_r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            targets,
            rslora: self.use_rslora,
        };
        c.validate().map_err(|e| {
            anyhow::anyhow!("{e} (--lora-r, --lora-alpha, --lora-dropout, --target)")
        })?;
        Ok(c)
    }

    pub fn batching(&self) -> Batching {
        match (self.batch_tokens, self.packing) {
            (Some(n), _) => Batching::Tokens(n),
            (None, true) => Batching::Tokens(self.ctx),
            (None, false) => Batching::Sequences(self.micro_batch),
        }
    }

    pub fn train_config(&self) -> Result<TrainConfig> {
        let c = TrainConfig {
            epochs: self.epochs,
            max_steps: self.max_steps,
            lr: self.lr,
            warmup: self.warmup,
            schedule: match self.schedule {
                Schedule::Cosine => ScheduleKind::Cosine { num_cycles: 0.5 },
                Schedule::Linear => ScheduleKind::Linear,
                Schedule::Constant => ScheduleKind::Constant,
            },
            adamw: AdamWConfig {
                betas: (self.adam_beta1, self.adam_beta2),
                eps: self.adam_eps,
                weight_decay: self.weight_decay,
            },
            max_grad_norm: self.max_grad_norm,
            batching: self.batching(),
            grad_accum: self.grad_accum,
            seed: self.seed,
            shuffle: !self.no_shuffle,
        };
        c.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(c)
    }

    fn train_options(&self) -> TrainOptions {
        TrainOptions {
            max_rows: match self.batching() {
                Batching::Tokens(n) => n,
                Batching::Sequences(k) => k.saturating_mul(self.ctx),
            },
            max_seq: self.ctx,
            grad_checkpoint: self.grad_checkpoint,
            exact_forward: !self.int8_activations,
        }
    }
}

/// What the model file says before its weights are loaded: the config and, per tensor, (GGUF
/// name, type, values).
struct Header {
    config: Config,
    tensors: Vec<(String, DType, usize)>,
}

fn read_header(path: &Path) -> Result<Header> {
    if path.is_dir() {
        let p = path.join("config.json");
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        let config = Config::from_hf_json(&text)?;
        let st = cria_core::safetensors::SafetensorsModel::open_folder(path)?;
        let tensors = st
            .tensors
            .iter()
            .map(|t| {
                let name = cria_model::names::hf_to_gguf(&t.name).unwrap_or_else(|| t.name.clone());
                (name, t.dtype, t.n_elements())
            })
            .collect();
        Ok(Header { config, tensors })
    } else {
        let g = cria_core::gguf::GgufFile::open(path)?;
        let config = Config::from_gguf(&g)?;
        let tensors = g
            .tensors
            .iter()
            .map(|t| (t.name.clone(), t.dtype, t.n_elements()))
            .collect();
        Ok(Header { config, tensors })
    }
}

impl BaseType {
    fn dtype(self) -> Result<DType> {
        match self {
            BaseType::Q4K => Ok(DType::Q4_K),
            BaseType::Q8_0 => Ok(DType::Q8_0),
            BaseType::Nf4 => bail!(
                "--base-type nf4: NF4 is bitsandbytes' format, not a ggml type cria's kernels \
                 read; use q4_k (4.5 bits per weight, QLoRA's memory) or q8_0"
            ),
        }
    }
}

/// A layer matrix that --base-type quantizes.
fn is_layer_matrix(name: &str) -> bool {
    matches!(Target::of_gguf_name(name), Some((_, Some(_))))
}

/// Weight bytes as the run holds them: file types, the layer matrices at `base_type`.
fn weight_bytes(h: &Header, base_type: Option<DType>) -> Result<u64> {
    let mut n = 0u64;
    for (name, dt, count) in &h.tensors {
        let dt = match base_type {
            Some(q) if is_layer_matrix(name) => q,
            _ => *dt,
        };
        n += dt.bytes_for(*count)? as u64;
    }
    Ok(n)
}

/// Under `mpirun -np N` (feature `mpi`) every rank runs this over the same data and arguments
/// (`cria_train::trainer`: each takes its share of each step's micro-batches); rank 0 alone
/// prints and writes; an error on any rank aborts them all with its message.
pub fn run(a: &FinetuneArgs) -> Result<()> {
    let comm = cria_train::dist::world().map_err(anyhow::Error::msg)?;
    let res = train(a, &comm);
    if let Err(e) = &res {
        if comm.size() > 1 {
            comm.abort(&format!("{e:#}"));
        }
    }
    res
}

fn train(a: &FinetuneArgs, comm: &Arc<dyn cria_train::dist::Comm>) -> Result<()> {
    let root = comm.is_root();
    // Arguments first: nothing is read before they are known good.
    let lora = a.lora_config()?;
    let tcfg = a.train_config()?;
    if let Some(f) = a.eval_split {
        if !(f > 0.0 && f < 1.0) {
            bail!("--eval-split {f}: a fraction between 0 and 1 (exclusive)");
        }
    }
    if a.ctx < 2 {
        bail!("--ctx {}: at least 2 tokens", a.ctx);
    }
    let base_type = a.base_type.map(BaseType::dtype).transpose()?;
    // The checkpoint to resume from is found before anything is loaded.
    let resume = match &a.resume {
        Some(r) => Some(trainer::resolve_checkpoint(r.as_ref().unwrap_or(&a.out))?),
        None => None,
    };
    let spec = a.model.as_deref();
    let path = crate::fetch::resolve(spec)?.path;
    let header = read_header(&path).with_context(|| format!("reading {}", path.display()))?;
    let config = &header.config;
    if a.ctx > config.max_seq_len {
        bail!(
            "--ctx {} is beyond the model's context ({} tokens)",
            a.ctx,
            config.max_seq_len
        );
    }
    if let Some(q) = base_type {
        if let Some((name, dt, _)) = header.tensors.iter().find(|(n, dt, _)| {
            is_layer_matrix(n) && !matches!(dt, DType::F32 | DType::F16 | DType::BF16)
        }) {
            bail!(
                "--base-type {q}: the base is already quantized ({name} is {dt}); it applies to \
                 f16/bf16/f32 bases (train over the quantized file as it is)"
            );
        }
        if config.dim % q.block_size() != 0 || config.ffn_dim % q.block_size() != 0 {
            bail!(
                "--base-type {q}: the model's widths ({}, {}) are not whole {q} blocks of {}",
                config.dim,
                config.ffn_dim,
                q.block_size()
            );
        }
    }
    let topts = a.train_options();
    let act = |gc: bool| {
        let o = TrainOptions {
            grad_checkpoint: gc,
            ..topts
        };
        TrainModel::activation_bytes(config, &lora, &o) as u64
    };
    let data_bytes = std::fs::metadata(&a.data)
        .with_context(|| format!("reading {}", a.data.display()))?
        .len();
    let plan = memory::plan(
        config,
        &lora,
        weight_bytes(&header, base_type)?,
        act(false),
        act(true),
        data_bytes,
        a.grad_checkpoint,
    );
    if a.dry_run {
        println!(
            "model: {} ({} layers, dim {}, vocab {}{})",
            path.display(),
            config.n_layers,
            config.dim,
            config.vocab_size,
            base_type.map_or(String::new(), |q| format!(", layer matrices as {q}"))
        );
        println!(
            "adapter: rank {}, {} targets, {} trainable values",
            lora.rank,
            lora.targets.len(),
            memory::lora_param_count(config, &lora)
        );
        print!("{}", plan.report());
        return Ok(());
    }

    // The data, rendered with the model's tokenizer and template (no weights yet).
    // Pre-tokenized data needs no tokenizer: a model folder without one can still train on it.
    let tok = load::tokenizer(spec).map_err(|e| format!("{e:#}"));
    let vocab = config.vocab_size;
    let (mut train, train_lines) = read_data(&a.data, &tok, a.ctx, a.strict, vocab, "training")?;
    let mut eval = match &a.eval {
        Some(p) => read_data(p, &tok, a.ctx, a.strict, vocab, "eval")?.0,
        None => Vec::new(),
    };
    if let Some(f) = a.eval_split {
        if train.len() < 2 {
            bail!(
                "--eval-split: {} training example, nothing to split",
                train.len()
            );
        }
        let k = ((train.len() as f64 * f).ceil() as usize).clamp(1, train.len() - 1);
        let order = trainer::epoch_order(train.len(), a.seed ^ 0xe5a1, 0, true);
        let held: std::collections::BTreeSet<usize> = order[..k].iter().copied().collect();
        let (mut tr, mut ev) = (Vec::new(), Vec::new());
        for (i, s) in train.into_iter().enumerate() {
            if held.contains(&i) {
                ev.push(s)
            } else {
                tr.push(s)
            }
        }
        (train, eval) = (tr, ev);
    }
    let targets: usize = train.iter().map(trainer::trained).sum();
    let tokens: usize = train.iter().map(|s| s.tokens.len()).sum();
    if root {
        eprintln!(
        "data: {} training sequences from {train_lines} lines ({tokens} tokens, {targets} trained \
         targets), {} eval sequences",
        train.len(),
        eval.len()
    );
    }

    // The weights.
    // The model alone (training reads no tokenizer or template from it past the data above).
    // Default threads: the cores shared among the ranks on this machine.
    let backend = cria_kernels::CpuBackend::try_new(a.threads.unwrap_or_else(|| {
        (cria_engine::load::default_threads() / cria_train::dist::local_size()).max(1)
    }))
    .map_err(anyhow::Error::msg)?;
    let model = cria_model::Model::load(&path, Default::default(), &backend)
        .with_context(|| format!("loading {}", path.display()))?;
    let mut lm = Loaded { model, backend };
    if let Some(q) = base_type {
        quantize_layers(&mut lm, q)?;
    }
    let meta = AdapterMeta::of_config(&lm.model.config, spec.unwrap_or(&path.to_string_lossy()));
    let mut params = LoraParams::zeros(lora.clone(), &lm.model.config)?;
    params.init_peft(&mut Rng::new(a.seed))?;
    if let Some(dir) = &a.init_adapter {
        adapter_io::read_into(dir, &mut params, &meta).context("--init-adapter")?;
    }
    let tm = TrainModel::new(&lm.model, &lm.backend, params, topts)
        .map_err(|e| anyhow::anyhow!("preparing the training model: {e}"))?;
    let mut tr = Trainer::new(tm, tcfg, &train, &eval)?;
    tr.set_comm(comm.clone());
    if let Some(ck) = &resume {
        trainer::load_checkpoint(&mut tr, ck, &meta)?;
        if root {
            eprintln!("resumed from {} (step {})", ck.display(), tr.steps_done());
        }
    }
    let budget = match std::env::var("CRIA_TEST_FAIL_WRITE_AFTER") {
        Ok(v) => WriteBudget::fail_after(v.parse().context("CRIA_TEST_FAIL_WRITE_AFTER")?),
        Err(_) => WriteBudget::unlimited(),
    };
    let ro = RunOptions {
        out: a.out.clone(),
        meta,
        eval_every: a.eval_every,
        save_every: a.save_every,
        gguf: a.gguf,
        budget,
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // A second Ctrl-C while saving is ignored; the first one's checkpoint completes.
        let _ = ctrlc::set_handler(move || {
            if !stop.swap(true, Ordering::SeqCst) {
                eprintln!("\nstopping after this step (saving a checkpoint)...");
            }
        });
    }
    let total = tr.total_steps();
    let bar = match root {
        true => indicatif::ProgressBar::new(total),
        false => indicatif::ProgressBar::hidden(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps {msg} [{elapsed_precise} < {eta_precise}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(tr.steps_done());
    let tty = std::io::stderr().is_terminal();
    let mut eval_loss: Option<f64> = None;
    let mut on = |e: Event| match e {
        Event::Step(s) => {
            let ev = eval_loss.map_or(String::new(), |l| format!(" eval {l:.4}"));
            let msg = format!(
                "epoch {:.2} loss {:.4}{ev} lr {:.2e} {:.0} tok/s",
                s.epoch, s.loss, s.lr, s.tokens_per_s
            );
            if !tty && root {
                eprintln!("step {}/{total} {msg}", s.step);
            }
            bar.set_message(msg);
            bar.set_position(s.step);
        }
        Event::Eval { step, loss } => {
            eval_loss = Some(loss);
            bar.println(format!("step {step}: eval loss {loss:.4}"));
        }
        Event::Saved(p) => bar.println(format!("saved {}", p.display())),
    };
    let finish = trainer::run(&mut tr, &ro, &mut on, &stop)?;
    bar.finish_and_clear();
    if !root {
        return Ok(());
    }
    match finish {
        Finish::Interrupted { checkpoint } => {
            eprintln!(
                "interrupted at step {}/{total}; checkpoint {}\nresume with:\n  {}",
                tr.steps_done(),
                checkpoint.display(),
                resume_command(&checkpoint)
            );
        }
        Finish::Done { eval_loss } => {
            let peak = memory::peak_rss_bytes();
            eprintln!(
                "done: {total} steps{}; adapter in {}{} (cria run -m {} --lora {})",
                eval_loss.map_or(String::new(), |l| format!(", eval loss {l:.4}")),
                a.out.display(),
                if a.gguf { " (+ adapter.gguf)" } else { "" },
                spec.unwrap_or("BASE"),
                a.out.display()
            );
            if let Some(p) = peak {
                eprintln!(
                    "peak memory: {:.1} MiB measured (VmHWM), {:.1} MiB predicted",
                    p as f64 / (1 << 20) as f64,
                    plan.peak() as f64 / (1 << 20) as f64
                );
            }
        }
    }
    Ok(())
}

/// The command line that resumes: this one with `--resume CHECKPOINT` (an earlier --resume
/// dropped).
fn resume_command(checkpoint: &Path) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut args = std::env::args().peekable();
    while let Some(x) = args.next() {
        if x == "--resume" {
            if args.peek().is_some_and(|n| !n.starts_with('-')) {
                args.next();
            }
            continue;
        }
        if x.starts_with("--resume=") {
            continue;
        }
        out.push(x);
    }
    out.push("--resume".into());
    out.push(checkpoint.display().to_string());
    out.iter()
        .map(|s| {
            if s.is_empty() || s.contains(|c: char| c.is_whitespace() || "'\"$`\\".contains(c)) {
                format!("'{}'", s.replace('\'', "'\\''"))
            } else {
                s.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A data file read and rendered into sequences; bad lines reported by number and skipped (or
/// the first one an error with `strict`). Returns the sequences and the lines read.
fn read_data(
    path: &Path,
    tok: &std::result::Result<cria_tokenizer::Tokenizer, String>,
    ctx: usize,
    strict: bool,
    vocab: usize,
    what: &str,
) -> Result<(Vec<Seq>, usize)> {
    let file =
        std::fs::File::open(path).with_context(|| format!("{what} data {}", path.display()))?;
    let ds = data::read_jsonl(std::io::BufReader::new(file), &Limits::default())
        .with_context(|| format!("{what} data {}", path.display()))?;
    let no_assistant_line = |e: &data::LineError| matches!(&e.kind, data::LineErrorKind::Empty(m) if m.contains("assistant"));
    let mut errors: Vec<String> = ds.errors.iter().map(|e| e.to_string()).collect();
    let no_tok = |e: &String| format!("this line needs the model's tokenizer: {e}");
    let fmt = match tok {
        Ok(t) => Some(
            cria_engine::tools::ChatFormat::new(t.chat_template())
                .context("the model's chat template")?,
        ),
        Err(_) => None,
    };
    let chat = |m: &[Message], gen: bool| -> Result<String, String> {
        let (Some(fmt), Ok(tok)) = (&fmt, tok) else {
            return Err(tok.as_ref().err().map(no_tok).unwrap_or_default());
        };
        let msgs: Vec<cria_engine::template::Message> = m
            .iter()
            .map(|m| cria_engine::template::Message::new(m.role.as_str(), m.content.clone()))
            .collect();
        fmt.render(&msgs, None, gen, tok.bos_text(), tok.eos_text())
            .map_err(|e| format!("{e:#}"))
    };
    let encode = |s: &str, at_start: bool| -> Result<Vec<u32>, String> {
        let tok = tok.as_ref().map_err(no_tok)?;
        // A text that starts with the BOS token's text (templates write it) gets no second one.
        let bos = tok.bos_text();
        let writes_bos = !bos.is_empty() && s.starts_with(bos);
        let add = at_start && tok.add_bos() && !writes_bos;
        Ok(tok.encode(s, add, true))
    };
    let opts = RenderOptions {
        eos: tok.as_ref().ok().and_then(|t| t.eos()),
        max_tokens: Some(ctx),
    };
    let mut seqs = Vec::with_capacity(ds.examples.len());
    let mut no_assistant = ds.errors.iter().filter(|e| no_assistant_line(e)).count();
    let lines = ds.examples.len() + ds.errors.len();
    for (line, ex) in &ds.examples {
        match data::example_seq(ex, chat, encode, &opts, vocab) {
            Ok(s) => seqs.push(s),
            Err(e) => {
                if matches!(e, data::RenderError::NoAssistant) {
                    no_assistant += 1;
                }
                errors.push(format!("line {line}: {e}"));
            }
        }
    }
    if !errors.is_empty() {
        errors.sort_by_key(|e| {
            e.strip_prefix("line ")
                .and_then(|r| r.split(':').next())
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(0)
        });
        if strict {
            bail!(
                "{what} data {}: {} (--strict; {} bad lines in all)",
                path.display(),
                errors[0],
                errors.len()
            );
        }
        for e in errors.iter().take(20) {
            eprintln!("{}: {e}", path.display());
        }
        if errors.len() > 20 {
            eprintln!("... and {} more", errors.len() - 20);
        }
        eprintln!(
            "{}: skipped {} of {lines} lines (--strict makes them errors)",
            path.display(),
            errors.len()
        );
    }
    if seqs.is_empty() {
        if no_assistant > 0 {
            bail!(
                "{what} data {}: no trainable target: {no_assistant} conversations have no \
                 assistant turn to learn from (loss is on assistant turns only)",
                path.display()
            );
        }
        if lines == 0 {
            bail!(
                "{what} data {}: no training examples (the file is empty)",
                path.display()
            );
        }
        bail!(
            "{what} data {}: no training examples ({} lines, all skipped)",
            path.display(),
            errors.len()
        );
    }
    Ok((seqs, lines))
}

/// `--base-type`: every layer matrix quantized at load with cria's quantizer (ggml's bytes).
/// The base being trained over and its CPU backend.
struct Loaded {
    model: cria_model::Model,
    backend: cria_kernels::CpuBackend,
}

fn quantize_layers(lm: &mut Loaded, q: DType) -> Result<()> {
    let backend = &lm.backend;
    for layer in &mut lm.model.weights.layers {
        for w in [
            &mut layer.attn_q,
            &mut layer.attn_k,
            &mut layer.attn_v,
            &mut layer.attn_output,
            &mut layer.ffn_gate,
            &mut layer.ffn_up,
            &mut layer.ffn_down,
        ] {
            let t = &w.base;
            let v = t.to_f32_vec()?;
            let mut bytes = cria_core::tensor::AlignedBuf::zeroed(q.bytes_for(v.len())?);
            cria_core::quantize::quantize_rows(q, &v, bytes.as_mut_slice(), t.cols(), None)?;
            let nt = cria_core::Tensor::new(
                t.name.clone(),
                q,
                t.ne.clone(),
                cria_core::tensor::Bytes::owned(bytes),
            )?;
            *w = cria_model::Weight::prepare(backend, nt)?;
        }
    }
    Ok(())
}
