//! Pretraining (issue 24, `cria pretrain`): a [`FullModel`] trained from scratch on token shards
//! (`cria data prepare`), with the pieces `cria pretrain` drives:
//!
//! - model shapes: [`preset`] (`--size 1M|5M|10M|20M`) or an HF-style config.json
//!   ([`config_from_json`]), the vocabulary taken from the data's manifest, the head tied;
//! - the data order ([`Stream`]): the train shards are read as ONE token stream (shards in
//!   manifest order); it is cut into `W = (tokens - 1) / ctx` windows, window `i` being tokens
//!   `i*ctx .. i*ctx + ctx + 1` (the inputs are the first `ctx`, the targets the last `ctx`, so
//!   every token but the very last is a target once per epoch). Epoch `e` visits the windows in
//!   the order `trainer::epoch_order(W, seed, e, true)` (a Fisher-Yates shuffle from a generator
//!   seeded by `(seed, e)`), and the position `(epoch, index)` is all the state there is: a
//!   checkpoint saves it and a resumed run regenerates the same permutation;
//! - one optimizer step ([`Pretrainer::step`]): `batch_seqs` windows, in micro-batches of at most
//!   `micro_seqs`, each micro-batch's `forward_backward` with `grad_scale = 1 / (batch_seqs *
//!   ctx)` so the gradient is that of the mean token cross-entropy of the whole batch; then
//!   `clip_grad_norm` (if `max_grad_norm > 0`) over every gradient, then two AdamW instances: one
//!   over the tensors `FullParams::decay_flags` marks (matrices: `weight_decay`), one over the
//!   rest (norms, embedding = tied head: no decay);
//! - data parallel ([`Pretrainer::set_comm`], `mpirun -np N`): every rank walks the same seeded
//!   order; of each step's `batch_seqs` windows rank `r` takes the contiguous share
//!   `dist::share(batch_seqs, r, N)`, in micro-batches of at most `micro_seqs`, with the same
//!   `grad_scale` (1 / the GLOBAL batch's tokens); the last micro-batch's backward hands each
//!   layer's finished gradients to an all-reduce (sum) that runs while the layers below are
//!   differentiated; the step waits for them all before clipping and AdamW, so every rank holds
//!   the gradient one process would compute over the whole batch, and takes the same update.
//!   Loss sums and val loss sums are all-reduced too (val windows split the same way);
//! - the learning rate ([`lr_at`]): linear warmup from 0, then the schedule's factor `f` (cosine,
//!   linear or constant, transformers' curves) mapped to `min_lr_ratio + (1 - min_lr_ratio) * f`
//!   so cosine ends at `lr * min_lr_ratio`;
//! - validation ([`Pretrainer::evaluate`]): the first `eval_windows` windows of the val stream in
//!   order, the mean token cross-entropy;
//! - checkpoints ([`save_checkpoint`] / [`load_checkpoint`]): `RUN/checkpoint-STEP/` with
//!   `params.safetensors` (every tensor, HF names, f32), `optimizer_decay.bin` and
//!   `optimizer_no_decay.bin` (`AdamWState::to_bytes`), `trainer_state.json` (step, tokens, data
//!   position, seed, the model config, the hyper-parameters and the train split's token count);
//!   written in a temp folder, each file fsync'd, renamed into place. A resume checks the model
//!   config, hyper-parameters and token count against the checkpoint's and continues bit for bit
//!   with the same thread count (nothing else is random: no dropout).

use crate::adapter_io::{self, WriteBudget};
use crate::dist::{self, Buckets, Comm};
use crate::full::{FullModel, FullParams};
use crate::model::{Seq, TrainOptions};
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig, AdamWState, LrSchedule, ScheduleKind};
use crate::shards::Shard;
use crate::trainer::{epoch_order, STATE_FILE};
use crate::{Error, Result};
use cria_kernels::CpuBackend;
use cria_model::config::Config;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const PARAMS_FILE: &str = "params.safetensors";
pub const OPTIM_DECAY_FILE: &str = "optimizer_decay.bin";
pub const OPTIM_NO_DECAY_FILE: &str = "optimizer_no_decay.bin";

/// `--size` presets: (name, dim, layers, heads, kv heads, ffn). The name is the approximate count
/// of NON-embedding parameters (as Chinchilla counts N); the embedding (`vocab x dim`, tied head)
/// comes on top.
pub const PRESETS: [(&str, usize, usize, usize, usize, usize); 4] = [
    ("1M", 128, 5, 4, 2, 384),
    ("5M", 256, 6, 8, 4, 768),
    ("10M", 384, 6, 6, 2, 1024),
    ("20M", 384, 12, 6, 2, 1024),
];

/// The HF config.json of preset `name` for a vocabulary and context.
pub fn preset(name: &str, vocab: usize, ctx: usize) -> Result<Value> {
    let Some(&(_, dim, layers, heads, kv, ffn)) =
        PRESETS.iter().find(|p| p.0.eq_ignore_ascii_case(name))
    else {
        return Err(Error(format!(
            "--size {name}: unknown; one of {}",
            PRESETS.map(|p| p.0).join(", ")
        )));
    };
    Ok(json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": dim,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "intermediate_size": ffn,
        "vocab_size": vocab,
        "max_position_embeddings": ctx,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": true,
    }))
}

/// A model config from an HF-style config.json value: `vocab_size` is set (or checked) to the
/// data's, `max_position_embeddings` defaults to `ctx` and must be at least `ctx`; heads must
/// divide the width when `head_dim` is not given; the model must fit in this machine's memory
/// ([`check_fits_memory`]).
pub fn config_from_json(v: &Value, vocab: usize, ctx: usize) -> Result<Config> {
    let c = config_shape(v, vocab, ctx)?;
    check_fits_memory(&c, memory_total())?;
    Ok(c)
}

/// [`config_from_json`] without the memory check: a shape to describe (`cria plan`), not to
/// train here.
pub fn config_shape(v: &Value, vocab: usize, ctx: usize) -> Result<Config> {
    let mut v = v.clone();
    let Some(o) = v.as_object_mut() else {
        return Err(Error("the model config is not a JSON object".into()));
    };
    o.entry("model_type").or_insert(json!("llama"));
    match o.get("vocab_size").and_then(Value::as_u64) {
        Some(n) if n as usize != vocab => {
            return Err(Error(format!(
                "the config's vocab_size {n} differs from the data's {vocab} (data.json)"
            )))
        }
        _ => {
            o.insert("vocab_size".into(), json!(vocab));
        }
    }
    o.entry("max_position_embeddings").or_insert(json!(ctx));
    o.entry("tie_word_embeddings").or_insert(json!(true));
    let get = |k: &str| o.get(k).and_then(Value::as_u64).unwrap_or(0) as usize;
    let (dim, heads) = (get("hidden_size"), get("num_attention_heads"));
    if o.get("head_dim").is_none() && (heads == 0 || dim % heads != 0) {
        return Err(Error(format!(
            "num_attention_heads {heads} does not divide hidden_size {dim}"
        )));
    }
    let c = Config::from_hf_json(&v.to_string()).map_err(|e| Error(e.to_string()))?;
    c.validate().map_err(|e| Error(e.to_string()))?;
    if c.max_seq_len < ctx {
        return Err(Error(format!(
            "--ctx {ctx} is longer than the config's max_position_embeddings {}",
            c.max_seq_len
        )));
    }
    Ok(c)
}

/// Parameters of config `c` counted without allocating them (u128: no overflow for any shape
/// `Config::validate` accepts).
pub fn param_count_u128(c: &Config) -> u128 {
    let (d, hd) = (c.dim as u128, c.head_dim as u128);
    let attn = d * hd * (2 * c.n_heads as u128 + 2 * c.n_kv_heads as u128);
    let layer = attn + 3 * d * c.ffn_dim as u128 + 2 * d;
    let emb = c.vocab_size as u128 * d;
    emb * if c.tied_embeddings { 1 } else { 2 } + c.n_layers as u128 * layer + d
}

/// The machine's memory in bytes (/proc/meminfo MemTotal; 1 TiB where it cannot be read).
fn memory_total() -> u128 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u128>().ok())
        })
        .map_or(1 << 40, |kb| kb * 1024)
}

/// A model too large to train here is an error before anything is allocated: training holds 16
/// bytes per parameter (f32 weights, gradients and AdamW's two moments) before activations.
pub fn check_fits_memory(c: &Config, mem_bytes: u128) -> Result<()> {
    let n = param_count_u128(c);
    let need = n * 16;
    if need > mem_bytes {
        let gib = |b: u128| b as f64 / (1u64 << 30) as f64;
        return Err(Error(format!(
            "the model has {n} parameters: training it needs at least {:.1} GiB (f32 weights, \
             gradients, AdamW moments), more than this machine's {:.1} GiB; choose a smaller shape",
            gib(need),
            gib(mem_bytes)
        )));
    }
    Ok(())
}

/// Parameters of a model of config `c` (tied head counted once).
pub fn param_count(c: &Config) -> Result<usize> {
    Ok(FullParams::zeros(c)?.n_params())
}

/// Shards read as one token stream, cut into windows of `ctx + 1` tokens (see the module doc).
pub struct Stream {
    shards: Vec<Shard>,
    starts: Vec<usize>,
    total: usize,
    ctx: usize,
}

impl Stream {
    pub fn new(shards: Vec<Shard>, ctx: usize) -> Result<Stream> {
        if ctx == 0 {
            return Err(Error("--ctx must be at least 1".into()));
        }
        let mut starts = Vec::with_capacity(shards.len());
        let mut total = 0usize;
        for s in &shards {
            starts.push(total);
            total += s.len();
        }
        Ok(Stream {
            shards,
            starts,
            total,
            ctx,
        })
    }

    pub fn tokens(&self) -> usize {
        self.total
    }

    /// Windows of `ctx + 1` tokens.
    pub fn windows(&self) -> usize {
        self.total.saturating_sub(1) / self.ctx
    }

    /// Window `i` as a training sequence (inputs `ctx` tokens, targets the next `ctx`).
    pub fn seq(&self, i: usize) -> Result<Seq> {
        let n = self.ctx + 1;
        let mut buf = vec![0u32; n];
        let mut at = i * self.ctx;
        let mut filled = 0;
        while filled < n {
            let k = self.starts.partition_point(|&s| s <= at) - 1;
            let off = at - self.starts[k];
            let take = (self.shards[k].len() - off).min(n - filled);
            self.shards[k].read(off, &mut buf[filled..filled + take])?;
            filled += take;
            at += take;
        }
        Ok(Seq {
            tokens: buf[..self.ctx].to_vec(),
            targets: buf[1..].iter().map(|&t| t as i32).collect(),
        })
    }
}

/// Hyper-parameters (what a resume must match).
#[derive(Clone, Debug, PartialEq)]
pub struct Hyper {
    pub ctx: usize,
    pub batch_seqs: usize,
    pub micro_seqs: usize,
    pub steps: u64,
    pub lr: f64,
    pub warmup_steps: u64,
    pub schedule: ScheduleKind,
    pub min_lr_ratio: f64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    pub eval_windows: usize,
    pub seed: u64,
}

impl Hyper {
    pub fn json(&self) -> Value {
        let sched = match self.schedule {
            ScheduleKind::Constant => "constant",
            ScheduleKind::Linear => "linear",
            ScheduleKind::Cosine { .. } => "cosine",
        };
        json!({
            "ctx": self.ctx, "batch_seqs": self.batch_seqs, "micro_seqs": self.micro_seqs,
            "steps": self.steps, "lr": self.lr, "warmup_steps": self.warmup_steps,
            "schedule": sched, "min_lr_ratio": self.min_lr_ratio,
            "weight_decay": self.weight_decay, "max_grad_norm": self.max_grad_norm,
            "eval_windows": self.eval_windows, "seed": self.seed,
        })
    }
}

/// The learning rate of optimizer step `step` (0-based): see the module doc. Past `h.steps` (a
/// run extended beyond its schedule) it stays at the schedule's final value.
pub fn lr_at(h: &Hyper, step: u64) -> Result<f64> {
    let s = LrSchedule::new(h.schedule, h.lr, h.warmup_steps, h.steps)
        .map_err(|e| Error(e.to_string()))?;
    let step = step.min(h.steps);
    let f = s.factor(step);
    Ok(if step < h.warmup_steps {
        h.lr * f
    } else {
        h.lr * (h.min_lr_ratio + (1.0 - h.min_lr_ratio) * f)
    })
}

/// One step's figures.
#[derive(Clone, Debug, PartialEq)]
pub struct StepLog {
    pub step: u64,
    pub tokens: u64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f32,
}

/// The model, its two optimizers, the data and the position.
pub struct Pretrainer {
    pub model: FullModel,
    pub hyper: Hyper,
    decay: AdamW,
    no_decay: AdamW,
    flags: Vec<bool>,
    train: Stream,
    val: Option<Stream>,
    pub step: u64,
    pub epoch: u64,
    pub index: usize,
    order: Vec<usize>,
    comm: Arc<dyn Comm>,
}

/// Lengths of the entries whose flag is `want`.
fn group_lens(p: &FullParams, flags: &[bool], want: bool) -> Vec<usize> {
    p.lens()
        .into_iter()
        .zip(flags)
        .filter(|&(_, &f)| f == want)
        .map(|(n, _)| n)
        .collect()
}

/// The training buffers a run of `h` needs (micro-batches of `micro_seqs` windows of `ctx`).
pub fn train_options(h: &Hyper) -> TrainOptions {
    TrainOptions {
        max_rows: h.micro_seqs.min(h.batch_seqs).max(1) * h.ctx,
        max_seq: h.ctx,
        grad_checkpoint: false,
        exact_forward: true,
    }
}

/// The weights of an existing model (`cria pretrain --init`: an HF folder such as a previous
/// run's `final/`, or any model cria loads, dequantized to f32) to continue pretraining from, for
/// data of `vocab` tokens and the run's hyper-parameters: a vocabulary other than the data's, a
/// context beyond the model's or a model that is not a plain LLaMA are errors.
pub fn load_init(dir: &Path, vocab: usize, h: &Hyper, cpu: &CpuBackend) -> Result<FullModel> {
    let m = cria_model::model::Model::load(dir, cria_model::model::LoadOptions { f32: true }, cpu)
        .map_err(|e| io(dir, e))?;
    if m.config.vocab_size != vocab {
        return Err(io(
            dir,
            format!(
                "--init: the model's vocabulary has {} tokens, the data's {vocab}: prepare the \
                 data with this model's tokenizer (cria data prepare --tokenizer {})",
                m.config.vocab_size,
                dir.display()
            ),
        ));
    }
    if h.ctx > m.config.max_seq_len {
        return Err(io(
            dir,
            format!(
                "--init: --ctx {} is longer than the model's max_position_embeddings {}",
                h.ctx, m.config.max_seq_len
            ),
        ));
    }
    FullModel::from_model(&m, train_options(h)).map_err(|e| io(dir, e))
}

impl Pretrainer {
    /// A fresh run: the model initialized from `seed` (transformers' init, std 0.02).
    pub fn new(c: &Config, h: Hyper, train: Stream, val: Option<Stream>) -> Result<Pretrainer> {
        Self::check(&h, &train)?;
        let model = FullModel::from_config(c, 0.02, h.seed, train_options(&h))?;
        Self::with_model(model, h, train, val)
    }

    fn check(h: &Hyper, train: &Stream) -> Result<()> {
        if h.batch_seqs == 0 || h.micro_seqs == 0 || h.steps == 0 {
            return Err(Error(
                "batch, micro-batch and step counts must be at least 1".into(),
            ));
        }
        if train.windows() == 0 {
            return Err(Error(format!(
                "the train split has {} tokens: not one window of --ctx {} + 1",
                train.tokens(),
                h.ctx
            )));
        }
        Ok(())
    }

    /// A run starting from the weights of `model` (made with [`train_options`] of `h`, e.g. by
    /// [`load_init`]), fresh optimizer state, the data order of `h.seed` from its start.
    pub fn with_model(
        model: FullModel,
        h: Hyper,
        train: Stream,
        val: Option<Stream>,
    ) -> Result<Pretrainer> {
        Self::check(&h, &train)?;
        let flags = model.params().decay_flags();
        let cfg = |wd| AdamWConfig {
            weight_decay: wd,
            ..AdamWConfig::default()
        };
        let e = |e: crate::optim::OptimError| Error(e.to_string());
        let decay = AdamW::new(
            cfg(h.weight_decay),
            &group_lens(model.params(), &flags, true),
        )
        .map_err(e)?;
        let no_decay =
            AdamW::new(cfg(0.0), &group_lens(model.params(), &flags, false)).map_err(e)?;
        let order = epoch_order(train.windows(), h.seed, 0, true);
        Ok(Pretrainer {
            model,
            hyper: h,
            decay,
            no_decay,
            flags,
            train,
            val,
            step: 0,
            epoch: 0,
            index: 0,
            order,
            comm: dist::single(),
        })
    }

    /// Trains as one rank of a data-parallel run (see the module doc); every rank must have
    /// been made with the same config, arguments and data. The global batch must give each
    /// rank at least one window.
    pub fn set_comm(&mut self, comm: Arc<dyn Comm>) -> Result<()> {
        if comm.size() > self.hyper.batch_seqs {
            return Err(Error(format!(
                "{} ranks but {} sequences per step: give each rank at least one (raise \
                 --batch-tokens or use fewer ranks)",
                comm.size(),
                self.hyper.batch_seqs
            )));
        }
        self.comm = comm;
        Ok(())
    }

    pub fn comm(&self) -> &Arc<dyn Comm> {
        &self.comm
    }

    pub fn done(&self) -> bool {
        self.step >= self.hyper.steps
    }

    pub fn tokens_done(&self) -> u64 {
        self.step * (self.hyper.batch_seqs * self.hyper.ctx) as u64
    }

    /// The next window of the data order (advancing the position, a new epoch's order at the end).
    fn next_window(&mut self) -> usize {
        if self.index >= self.order.len() {
            self.epoch += 1;
            self.index = 0;
            self.order = epoch_order(self.train.windows(), self.hyper.seed, self.epoch, true);
        }
        let w = self.order[self.index];
        self.index += 1;
        w
    }

    /// One optimizer step (see the module doc).
    pub fn step(&mut self, cpu: &CpuBackend) -> Result<StepLog> {
        let h = self.hyper.clone();
        let lr = lr_at(&h, self.step)?;
        self.model.params_mut().zero_grads();
        let scale = 1.0 / (h.batch_seqs * h.ctx) as f32;
        let (mut sum, mut count) = (0.0f64, 0usize);
        let batch: Vec<usize> = (0..h.batch_seqs).map(|_| self.next_window()).collect();
        let comm = self.comm.clone();
        let mine = &batch[dist::share(batch.len(), comm.rank(), comm.size())];
        let mut buckets = Buckets::new(&*comm);
        for (k, ws) in mine.chunks(h.micro_seqs).enumerate() {
            let seqs = ws
                .iter()
                .map(|&w| self.train.seq(w))
                .collect::<Result<Vec<_>>>()?;
            let (s, c) = if comm.size() > 1 && (k + 1) * h.micro_seqs >= mine.len() {
                // The last micro-batch: each layer's gradients are all-reduced once final.
                let mut ready = |r: std::ops::Range<usize>, g: &[f32]| buckets.start(r, g);
                self.model
                    .forward_backward_hooked(cpu, &seqs, scale, &mut ready)?
            } else {
                self.model.forward_backward(cpu, &seqs, scale)?
            };
            sum += s;
            count += c;
        }
        if comm.size() > 1 {
            dist::test_die_hook(&*comm, self.step + 1);
            buckets.finish(&mut self.model.params_mut().grads)?;
            let mut v = [sum, count as f64];
            comm.all_reduce_f64(&mut v)?;
            (sum, count) = (v[0], v[1] as usize);
        }
        let e = |e: crate::optim::OptimError| Error(e.to_string());
        let p = self.model.params_mut();
        let (mut params, mut grads) = p.split_mut();
        let grad_norm = if h.max_grad_norm > 0.0 {
            clip_grad_norm(&mut grads, h.max_grad_norm).map_err(e)?
        } else {
            crate::optim::grad_norm(grads.iter().map(|g| &**g))
        };
        let (mut pd, mut pn) = (Vec::new(), Vec::new());
        let (mut gd, mut gn) = (Vec::new(), Vec::new());
        for ((pp, g), &f) in params.drain(..).zip(grads.drain(..)).zip(&self.flags) {
            if f {
                pd.push(pp);
                gd.push(&*g);
            } else {
                pn.push(pp);
                gn.push(&*g);
            }
        }
        self.decay.step(lr, &mut pd, &gd).map_err(e)?;
        self.no_decay.step(lr, &mut pn, &gn).map_err(e)?;
        self.step += 1;
        Ok(StepLog {
            step: self.step,
            tokens: self.tokens_done(),
            loss: sum / count.max(1) as f64,
            lr,
            grad_norm,
        })
    }

    /// Mean token cross-entropy over the first `eval_windows` val windows; None without a val
    /// split (or one shorter than a window).
    pub fn evaluate(&mut self, cpu: &CpuBackend) -> Result<Option<f64>> {
        let Some(val) = &self.val else {
            return Ok(None);
        };
        let n = val.windows().min(self.hyper.eval_windows);
        if n == 0 {
            return Ok(None);
        }
        let (mut sum, mut count) = (0.0, 0usize);
        let micro = self.hyper.micro_seqs.min(self.hyper.batch_seqs);
        let mine = dist::share(n, self.comm.rank(), self.comm.size());
        let mut i = mine.start;
        while i < mine.end {
            let m = micro.min(mine.end - i);
            let seqs = (i..i + m).map(|w| val.seq(w)).collect::<Result<Vec<_>>>()?;
            let (s, c) = self.model.eval(cpu, &seqs)?;
            sum += s;
            count += c;
            i += m;
        }
        let mut v = [sum, count as f64];
        self.comm.all_reduce_f64(&mut v)?;
        Ok(Some(v[0] / v[1].max(1.0)))
    }

    /// trainer_state.json's content.
    pub fn state_json(&self) -> Result<Value> {
        Ok(json!({
            "format": "cria-pretrain-checkpoint",
            "step": self.step,
            "tokens": self.tokens_done(),
            "data_position": {"epoch": self.epoch, "index": self.index},
            "model": self.model.hf_config_json()?,
            "hyper": self.hyper.json(),
            "train_tokens": self.train.tokens(),
        }))
    }
}

fn io(path: &Path, e: impl std::fmt::Display) -> Error {
    Error(format!("{}: {e}", path.display()))
}

/// Writes `out/checkpoint-STEP/` (params, both AdamW states, trainer state) through
/// `trainer::write_checkpoint` (temp folder, fsync, rename, the newest two kept).
pub fn save_checkpoint(t: &Pretrainer, out: &Path, budget: &WriteBudget) -> Result<PathBuf> {
    crate::trainer::write_checkpoint(out, t.step, |tmp| {
        let p = t.model.params();
        let tensors: Vec<(String, [usize; 2], &[f32])> = p
            .entries
            .iter()
            .map(|e| (e.name.clone(), [e.rows, e.cols], &p.data[e.range.clone()]))
            .collect();
        let bytes = adapter_io::safetensors_bytes(&tensors)?;
        adapter_io::write_synced(&tmp.join(PARAMS_FILE), &bytes, budget)?;
        adapter_io::write_synced(
            &tmp.join(OPTIM_DECAY_FILE),
            &t.decay.state().to_bytes(),
            budget,
        )?;
        adapter_io::write_synced(
            &tmp.join(OPTIM_NO_DECAY_FILE),
            &t.no_decay.state().to_bytes(),
            budget,
        )?;
        let st = serde_json::to_vec_pretty(&t.state_json()?).map_err(|e| Error(e.to_string()))?;
        adapter_io::write_synced(&tmp.join(STATE_FILE), &st, budget)
    })
}

/// Reads a checkpoint into a fresh `Pretrainer` made with the same config and arguments; a
/// checkpoint of another model config or other hyper-parameters is an error and `t` is left as
/// it was.
pub fn load_checkpoint(t: &mut Pretrainer, dir: &Path) -> Result<()> {
    let read = |f: &str| std::fs::read(dir.join(f)).map_err(|e| io(&dir.join(f), e));
    let st: Value =
        serde_json::from_slice(&read(STATE_FILE)?).map_err(|e| io(&dir.join(STATE_FILE), e))?;
    if st["format"] != "cria-pretrain-checkpoint" {
        return Err(io(dir, "not a cria pretrain checkpoint"));
    }
    for (key, what, want) in [
        ("model", "another model config", t.model.hf_config_json()?),
        ("hyper", "other training arguments", t.hyper.json()),
        (
            "train_tokens",
            "other training data",
            json!(t.train.tokens()),
        ),
    ] {
        if st[key] != want {
            return Err(io(
                dir,
                format!(
                    "a checkpoint of {what}:\n  checkpoint: {}\n  this run:   {want}",
                    st[key]
                ),
            ));
        }
    }
    let num = |v: &Value, what: &str| {
        v.as_u64()
            .ok_or_else(|| io(&dir.join(STATE_FILE), format!("{what} missing")))
    };
    let step = num(&st["step"], "step")?;
    let epoch = num(&st["data_position"]["epoch"], "data_position.epoch")?;
    let index = num(&st["data_position"]["index"], "data_position.index")? as usize;
    let e = |f: &'static str| move |e: crate::optim::OptimError| io(&dir.join(f), e);
    let sd = AdamWState::from_bytes(&read(OPTIM_DECAY_FILE)?).map_err(e(OPTIM_DECAY_FILE))?;
    let sn = AdamWState::from_bytes(&read(OPTIM_NO_DECAY_FILE)?).map_err(e(OPTIM_NO_DECAY_FILE))?;
    let (ld, ln) = {
        let p = t.model.params();
        (
            group_lens(p, &t.flags, true),
            group_lens(p, &t.flags, false),
        )
    };
    let decay = AdamW::resume(*t.decay.config(), sd, &ld).map_err(e(OPTIM_DECAY_FILE))?;
    let no_decay = AdamW::resume(*t.no_decay.config(), sn, &ln).map_err(e(OPTIM_NO_DECAY_FILE))?;
    let order = epoch_order(t.train.windows(), t.hyper.seed, epoch, true);
    if index > order.len() || decay.steps() != step {
        return Err(io(
            dir,
            "inconsistent state (data position or optimizer steps)",
        ));
    }
    let ppath = dir.join(PARAMS_FILE);
    let st_file =
        cria_core::safetensors::SafetensorsModel::open_file(&ppath).map_err(|e| io(&ppath, e))?;
    let mut data = t.model.params().data.clone();
    for en in &t.model.params().entries {
        let v = st_file
            .get(&en.name)
            .and_then(|x| x.to_f32_vec())
            .map_err(|e| io(&ppath, e))?;
        if v.len() != en.range.len() {
            return Err(io(&ppath, format!("{}: {} values", en.name, v.len())));
        }
        data[en.range.clone()].copy_from_slice(&v);
    }
    t.model.params_mut().data = data;
    t.decay = decay;
    t.no_decay = no_decay;
    t.step = step;
    t.epoch = epoch;
    t.index = index;
    t.order = order;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shards::ShardWriter;

    /// Windows read across shard boundaries are the concatenated stream's, each epoch visits
    /// every window once, and a resumed position gives the same sequence of windows.
    #[test]
    fn stream_windows_cross_shards_and_epochs_are_permutations() {
        let dir = std::env::temp_dir().join(format!("cria-pt-stream-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let all: Vec<u32> = (0..23).collect();
        let mut shards = Vec::new();
        for (i, part) in [&all[..5], &all[5..6], &all[6..]].iter().enumerate() {
            let p = dir.join(format!("s{i}.bin"));
            let mut w = ShardWriter::create(&p, 100).unwrap();
            w.push(part).unwrap();
            shards.push(Shard::open(&w.finish().unwrap()).unwrap());
        }
        let ctx = 4;
        let st = Stream::new(shards, ctx).unwrap();
        assert_eq!((st.tokens(), st.windows()), (23, 5));
        for i in 0..st.windows() {
            let s = st.seq(i).unwrap();
            assert_eq!(s.tokens, &all[i * ctx..i * ctx + ctx]);
            let t: Vec<i32> = all[i * ctx + 1..i * ctx + ctx + 1]
                .iter()
                .map(|&x| x as i32)
                .collect();
            assert_eq!(s.targets, t);
        }
        for e in 0..3 {
            let mut o = epoch_order(st.windows(), 9, e, true);
            o.sort();
            assert_eq!(o, (0..5).collect::<Vec<_>>());
        }
        assert_ne!(epoch_order(5, 9, 0, true), epoch_order(5, 9, 1, true));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn lr_warms_up_then_decays_to_min_ratio() {
        let h = Hyper {
            ctx: 4,
            batch_seqs: 1,
            micro_seqs: 1,
            steps: 10,
            lr: 1e-3,
            warmup_steps: 2,
            schedule: ScheduleKind::Cosine { num_cycles: 0.5 },
            min_lr_ratio: 0.1,
            weight_decay: 0.1,
            max_grad_norm: 1.0,
            eval_windows: 1,
            seed: 0,
        };
        let lr = |s| lr_at(&h, s).unwrap();
        assert_eq!((lr(0), lr(1), lr(2)), (0.0, 5e-4, 1e-3));
        assert!((lr(10) - 1e-4).abs() < 1e-12, "{}", lr(10));
        assert!((lr(6) - (1e-4 + 9e-4 * 0.5)).abs() < 1e-12, "{}", lr(6));
        // Past the end (an extended run): the final value, not the cosine rising again.
        assert_eq!((lr(15), lr(1000)), (lr(10), lr(10)));
    }

    #[test]
    fn bad_configs_are_errors() {
        let c = |v: Value| config_from_json(&v, 100, 16).map(|_| ()).unwrap_err().0;
        let base = json!({"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 3,
                          "intermediate_size": 64});
        assert!(c(base.clone()).contains("does not divide"));
        let mut v = base.clone();
        v["num_attention_heads"] = json!(4);
        v["vocab_size"] = json!(99);
        assert!(c(v).contains("vocab_size 99"));
        assert!(c(json!([1])).contains("not a JSON object"));
        assert!(preset("2M", 100, 16).unwrap_err().0.contains("unknown"));
        let p = config_from_json(&preset("1M", 100, 16).unwrap(), 100, 16).unwrap();
        assert_eq!(
            (p.dim, p.n_layers, p.n_heads, p.n_kv_heads, p.ffn_dim),
            (128, 5, 4, 2, 384)
        );
    }
}
