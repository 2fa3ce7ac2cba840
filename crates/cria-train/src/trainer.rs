//! The training loop of `cria finetune`, generic over what it trains ([`Trainable`]: the real
//! [`TrainModel`], or a small mock in the tests), with PyTorch's manual-loop semantics:
//!
//! - one optimizer step = `grad_accum` micro-batches (fewer at the end of an epoch); its loss is
//!   the token-level mean cross-entropy over every trained target of the step: each micro-batch's
//!   `forward_backward` gets `grad_scale = 1 / (trained targets of the whole step)`;
//! - the lr of step `s` (0-based) is `LrSchedule::lr(s)` (transformers' schedules with
//!   `ceil(warmup * total)` warmup steps; the first warmup step has lr 0, as HF's); then
//!   `clip_grad_norm` (when `max_grad_norm > 0`), then the AdamW step;
//! - data order: file order with `shuffle = false`, else a permutation per epoch drawn from
//!   `(seed, epoch)`; micro-batches are `Batching::Sequences(n)` sequences each, or as many whole
//!   sequences as fit in `Batching::Tokens(n)` tokens;
//! - total steps = `max_steps` if given (epochs then repeat as needed), else the sum over the
//!   epochs of ceil(micro-batches / grad_accum).
//!
//! Data parallel ([`Trainer::set_comm`], `mpirun -np N cria finetune`): every rank plans the same
//! micro-batches; of a step's micro-batches rank `r` runs the contiguous share
//! `dist::share(micro-batches, r, N)` with the step's global `grad_scale`, then the adapter
//! gradients are all-reduced (sum) after the backward (no overlap with it here: LoRA gradients
//! are small; the bucketed overlap is pretraining's), and the loss sums and counts; every rank
//! then takes the same AdamW step. The eval micro-batches are split and reduced the same way.
//! With LoRA dropout under N > 1 ranks the masks come from a seed per (step, micro-batch) instead
//! of the run's dropout stream, so they differ from one process's (same distribution); without
//! dropout N ranks give one process's numbers (to rounding). [`run`] writes files on rank 0 only.
//!
//! [`run`] drives it: training_log.jsonl, eval every N steps and at the end, checkpoints
//! (`OUT/checkpoint-STEP/`, written to a temp dir, fsync'd, renamed; the previous one removed only
//! after), a stop flag (Ctrl-C) that saves a checkpoint, and the final PEFT folder (+ GGUF) and
//! loss.svg. A resumed run continues to the same numbers, bit for bit, as an uninterrupted one.

use crate::adapter_io::{self, AdapterMeta, WriteBudget};
use crate::dist::{self, Comm};
use crate::model::{Seq, TrainModel};
use crate::optim::{
    clip_grad_norm, grad_norm, warmup_steps, AdamW, AdamWConfig, AdamWState, LrSchedule, Rng,
    ScheduleKind,
};
use crate::params::LoraParams;
use crate::{Error, Result};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// What the loop trains.
pub trait Trainable {
    /// Forward + backward of one micro-batch: ADDS d(loss_sum * grad_scale)/d(params) into
    /// `params().grads`; returns (sum of CE over trained targets, their count).
    fn forward_backward(
        &mut self,
        seqs: &[Seq],
        grad_scale: f32,
        rng: &mut Rng,
    ) -> Result<(f64, usize)>;
    /// Forward only, no dropout: (sum of CE, count).
    fn eval(&mut self, seqs: &[Seq]) -> Result<(f64, usize)>;
    fn params(&self) -> &LoraParams;
    fn params_mut(&mut self) -> &mut LoraParams;
}

impl Trainable for TrainModel<'_> {
    fn forward_backward(
        &mut self,
        seqs: &[Seq],
        grad_scale: f32,
        rng: &mut Rng,
    ) -> Result<(f64, usize)> {
        TrainModel::forward_backward(self, seqs, grad_scale, rng)
    }
    fn eval(&mut self, seqs: &[Seq]) -> Result<(f64, usize)> {
        TrainModel::eval(self, seqs)
    }
    fn params(&self) -> &LoraParams {
        TrainModel::params(self)
    }
    fn params_mut(&mut self) -> &mut LoraParams {
        TrainModel::params_mut(self)
    }
}

/// How micro-batches are filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Batching {
    /// This many sequences per micro-batch (`--micro-batch`).
    Sequences(usize),
    /// As many whole sequences as fit in this many tokens (`--batch-tokens`, `--packing`).
    Tokens(usize),
}

#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    pub epochs: u64,
    pub max_steps: Option<u64>,
    pub lr: f64,
    /// A ratio of the total steps below 1, a step count from 1 (HF's warmup_ratio/steps).
    pub warmup: f64,
    pub schedule: ScheduleKind,
    pub adamw: AdamWConfig,
    /// 0: no clipping.
    pub max_grad_norm: f64,
    pub batching: Batching,
    pub grad_accum: usize,
    pub seed: u64,
    pub shuffle: bool,
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        let e = |m: String| Err(Error(m));
        crate::optim::check_lr(self.lr).map_err(|e| Error(format!("--lr: {e}")))?;
        self.adamw.validate().map_err(|e| Error(e.to_string()))?;
        warmup_steps(self.warmup, 1).map_err(|e| Error(format!("--warmup: {e}")))?;
        if !(self.max_grad_norm >= 0.0 && self.max_grad_norm.is_finite()) {
            return e(format!(
                "--max-grad-norm {}: must be finite and >= 0 (0: no clipping)",
                self.max_grad_norm
            ));
        }
        if self.grad_accum == 0 {
            return e("--grad-accum must be at least 1".into());
        }
        match self.batching {
            Batching::Sequences(0) => return e("--micro-batch must be at least 1".into()),
            Batching::Tokens(0) => return e("--batch-tokens must be at least 1".into()),
            _ => {}
        }
        if self.max_steps == Some(0) {
            return e("--max-steps must be at least 1".into());
        }
        if self.max_steps.is_none() && self.epochs == 0 {
            return e("--epochs must be at least 1".into());
        }
        Ok(())
    }

    /// What a resumed run must agree on (everything that changes the numbers of the steps
    /// already taken). The length of the run is not in it: `--resume OUT --max-steps M` (or more
    /// `--epochs`) extends a finished or interrupted run, the schedule following the new total.
    pub fn fingerprint(&self) -> Value {
        json!({
            "lr": self.lr,
            "warmup": self.warmup,
            "schedule": format!("{:?}", self.schedule),
            "adam_betas": [self.adamw.betas.0, self.adamw.betas.1],
            "adam_eps": self.adamw.eps,
            "weight_decay": self.adamw.weight_decay,
            "max_grad_norm": self.max_grad_norm,
            "batching": format!("{:?}", self.batching),
            "grad_accum": self.grad_accum,
            "seed": self.seed,
            "shuffle": self.shuffle,
        })
    }
}

/// The order of epoch `epoch`'s sequences.
pub fn epoch_order(n: usize, seed: u64, epoch: u64, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        let mut rng = Rng::new(seed ^ epoch.wrapping_add(1).wrapping_mul(0xd1b5_4a32_d192_ed03));
        for i in (1..n).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
    }
    order
}

/// Micro-batches (indices into `seqs`) of one epoch's order.
pub fn micro_batches(seqs: &[Seq], order: &[usize], batching: Batching) -> Vec<Vec<usize>> {
    match batching {
        Batching::Sequences(n) => order.chunks(n.max(1)).map(<[usize]>::to_vec).collect(),
        Batching::Tokens(max) => {
            let mut out: Vec<Vec<usize>> = Vec::new();
            let mut cur: Vec<usize> = Vec::new();
            let mut rows = 0usize;
            for &i in order {
                let len = seqs[i].tokens.len();
                if !cur.is_empty() && rows + len > max {
                    out.push(std::mem::take(&mut cur));
                    rows = 0;
                }
                cur.push(i);
                rows += len;
            }
            if !cur.is_empty() {
                out.push(cur);
            }
            out
        }
    }
}

/// Trained targets of a sequence.
pub fn trained(s: &Seq) -> usize {
    s.targets.iter().filter(|&&t| t >= 0).count()
}

/// One optimizer step's figures (a training_log.jsonl line).
#[derive(Clone, Debug, PartialEq)]
pub struct StepLog {
    /// Steps done, counting this one (1-based).
    pub step: u64,
    /// Epochs done, fractional.
    pub epoch: f64,
    pub loss: f64,
    pub lr: f64,
    /// The global gradient norm before clipping.
    pub grad_norm: f32,
    /// Tokens (rows) of the step.
    pub tokens: usize,
    pub tokens_per_s: f64,
}

impl StepLog {
    pub fn json(&self) -> Value {
        json!({
            "step": self.step,
            "epoch": self.epoch,
            "loss": self.loss,
            "lr": self.lr,
            "grad_norm": self.grad_norm,
            "tokens": self.tokens,
            "tokens_per_s": self.tokens_per_s,
        })
    }
}

/// Where the loop stands: what a checkpoint saves besides the adapter and AdamW.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainState {
    pub step: u64,
    pub epoch: u64,
    /// The next micro-batch of the epoch.
    pub batch: usize,
    /// The dropout RNG.
    pub rng: [u64; 4],
    pub fingerprint: Value,
}

impl TrainState {
    pub fn json(&self) -> Value {
        json!({
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch,
            // u64s as strings: JSON readers in other languages hold doubles.
            "rng_state": self.rng.iter().map(|x| x.to_string()).collect::<Vec<_>>(),
            "args": self.fingerprint,
        })
    }

    pub fn from_json(v: &Value) -> Result<TrainState> {
        let bad = |what: &str| Error(format!("trainer_state.json: bad or missing {what}"));
        let u = |k: &str| v.get(k).and_then(Value::as_u64).ok_or_else(|| bad(k));
        let rng: Vec<u64> = v
            .get("rng_state")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("rng_state"))?
            .iter()
            .map(|x| x.as_str().and_then(|s| s.parse().ok()))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("rng_state"))?;
        let rng: [u64; 4] = rng.try_into().map_err(|_| bad("rng_state"))?;
        Ok(TrainState {
            step: u("step")?,
            epoch: u("epoch")?,
            batch: u("batch_in_epoch")? as usize,
            rng,
            fingerprint: v.get("args").cloned().ok_or_else(|| bad("args"))?,
        })
    }
}

pub struct Trainer<'d, M: Trainable> {
    pub model: M,
    cfg: TrainConfig,
    train: &'d [Seq],
    eval: &'d [Seq],
    opt: AdamW,
    sched: LrSchedule,
    rng: Rng,
    step: u64,
    epoch: u64,
    batch: usize,
    plan: Vec<Vec<usize>>,
    total: u64,
    comm: Arc<dyn Comm>,
}

/// The dropout RNG's seed, apart from the init's (`Rng::new(seed)`) and the epochs' orders.
fn dropout_seed(seed: u64) -> u64 {
    seed ^ 0x6a09_e667_f3bc_c908
}

impl<'d, M: Trainable> Trainer<'d, M> {
    /// A fresh run over `train` (and `eval`), `model`'s adapters as they are (initialised).
    pub fn new(model: M, cfg: TrainConfig, train: &'d [Seq], eval: &'d [Seq]) -> Result<Self> {
        cfg.validate()?;
        if train.is_empty() {
            return Err(Error("no training sequences".into()));
        }
        for (what, set) in [("training", train), ("eval", eval)] {
            for (i, s) in set.iter().enumerate() {
                if s.tokens.is_empty() || s.tokens.len() != s.targets.len() {
                    return Err(Error(format!(
                        "{what} sequence {i}: {} tokens, {} targets",
                        s.tokens.len(),
                        s.targets.len()
                    )));
                }
                if let Batching::Tokens(max) = cfg.batching {
                    if s.tokens.len() > max {
                        return Err(Error(format!(
                            "{what} sequence {i} has {} tokens, more than --batch-tokens {max}",
                            s.tokens.len()
                        )));
                    }
                }
            }
        }
        if train.iter().all(|s| trained(s) == 0) {
            return Err(Error(
                "no trainable target in the training data (every label is masked)".into(),
            ));
        }
        let total = match cfg.max_steps {
            Some(n) => n,
            None => (0..cfg.epochs)
                .map(|e| {
                    let order = epoch_order(train.len(), cfg.seed, e, cfg.shuffle);
                    let n = micro_batches(train, &order, cfg.batching).len();
                    n.div_ceil(cfg.grad_accum) as u64
                })
                .sum(),
        };
        let warm = warmup_steps(cfg.warmup, total).map_err(|e| Error(e.to_string()))?;
        let sched = LrSchedule::new(cfg.schedule, cfg.lr, warm, total)
            .map_err(|e| Error(format!("--lr: {e}")))?;
        let opt =
            AdamW::new(cfg.adamw, &model.params().lens()).map_err(|e| Error(e.to_string()))?;
        let plan = micro_batches(
            train,
            &epoch_order(train.len(), cfg.seed, 0, cfg.shuffle),
            cfg.batching,
        );
        Ok(Trainer {
            model,
            rng: Rng::new(dropout_seed(cfg.seed)),
            cfg,
            train,
            eval,
            opt,
            sched,
            step: 0,
            epoch: 0,
            batch: 0,
            plan,
            total,
            comm: dist::single(),
        })
    }

    /// Trains as one rank of a data-parallel run (see the module doc); every rank must be made
    /// with the same arguments and data.
    pub fn set_comm(&mut self, comm: Arc<dyn Comm>) {
        self.comm = comm;
    }

    pub fn comm(&self) -> &Arc<dyn Comm> {
        &self.comm
    }

    pub fn total_steps(&self) -> u64 {
        self.total
    }

    pub fn steps_done(&self) -> u64 {
        self.step
    }

    pub fn warmup_steps(&self) -> u64 {
        self.sched.warmup_steps
    }

    pub fn done(&self) -> bool {
        self.step >= self.total
    }

    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    pub fn state(&self) -> TrainState {
        TrainState {
            step: self.step,
            epoch: self.epoch,
            batch: self.batch,
            rng: self.rng.state(),
            fingerprint: self.cfg.fingerprint(),
        }
    }

    pub fn optimizer_state(&self) -> &AdamWState {
        self.opt.state()
    }

    /// Continues from a checkpoint: its state and AdamW moments (the adapter values are already
    /// in the model). The arguments that change the numbers must be the checkpoint's.
    pub fn restore(&mut self, st: &TrainState, adam: AdamWState) -> Result<()> {
        let now = self.cfg.fingerprint();
        if st.fingerprint != now {
            let (Value::Object(a), Value::Object(b)) = (&st.fingerprint, &now) else {
                return Err(Error("checkpoint arguments are not an object".into()));
            };
            let diffs: Vec<String> = b
                .iter()
                .filter(|(k, v)| a.get(*k) != Some(v))
                .map(|(k, v)| {
                    format!(
                        "{k}: checkpoint {}, now {v}",
                        a.get(k).map_or("missing".into(), Value::to_string)
                    )
                })
                .collect();
            return Err(Error(format!(
                "the checkpoint was made with other arguments; resume with the same ones ({})",
                diffs.join("; ")
            )));
        }
        if adam.step != st.step {
            return Err(Error(format!(
                "checkpoint: optimizer at step {}, trainer state at step {}",
                adam.step, st.step
            )));
        }
        self.opt = AdamW::resume(self.cfg.adamw, adam, &self.model.params().lens())
            .map_err(|e| Error(format!("checkpoint: {e}")))?;
        self.rng = Rng::from_state(st.rng)
            .ok_or_else(|| Error("checkpoint: RNG state is all zeros".into()))?;
        self.step = st.step;
        self.epoch = st.epoch;
        self.plan = micro_batches(
            self.train,
            &epoch_order(self.train.len(), self.cfg.seed, st.epoch, self.cfg.shuffle),
            self.cfg.batching,
        );
        if st.batch > self.plan.len() {
            return Err(Error(format!(
                "checkpoint: micro-batch {} of an epoch of {} (other data?)",
                st.batch,
                self.plan.len()
            )));
        }
        self.batch = st.batch;
        Ok(())
    }

    /// One optimizer step.
    pub fn step(&mut self) -> Result<StepLog> {
        let t0 = Instant::now();
        if self.batch >= self.plan.len() {
            self.epoch += 1;
            self.batch = 0;
            let order = epoch_order(
                self.train.len(),
                self.cfg.seed,
                self.epoch,
                self.cfg.shuffle,
            );
            self.plan = micro_batches(self.train, &order, self.cfg.batching);
        }
        let end = (self.batch + self.cfg.grad_accum).min(self.plan.len());
        let mbs: Vec<Vec<Seq>> = self.plan[self.batch..end]
            .iter()
            .map(|mb| mb.iter().map(|&i| self.train[i].clone()).collect())
            .collect();
        let count: usize = mbs.iter().flatten().map(trained).sum();
        let tokens: usize = mbs.iter().flatten().map(|s| s.tokens.len()).sum();
        self.model.params_mut().zero_grads();
        let (mut sum, mut n) = (0f64, 0usize);
        let comm = self.comm.clone();
        let mine = dist::share(mbs.len(), comm.rank(), comm.size());
        if count > 0 {
            let scale = 1.0 / count as f32;
            for (i, mb) in mbs.iter().enumerate().filter(|(i, _)| mine.contains(i)) {
                let (s, c) = if comm.size() > 1 {
                    let mut rng = Rng::new(dropout_seed(
                        self.cfg.seed
                            ^ (self.step + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
                            ^ (i as u64) << 48,
                    ));
                    self.model.forward_backward(mb, scale, &mut rng)?
                } else {
                    self.model.forward_backward(mb, scale, &mut self.rng)?
                };
                sum += s;
                n += c;
            }
        }
        if comm.size() > 1 {
            dist::test_die_hook(&*comm, self.step + 1);
            comm.all_reduce_sum(&mut self.model.params_mut().grads)?;
            let mut v = [sum, n as f64];
            comm.all_reduce_f64(&mut v)?;
            (sum, n) = (v[0], v[1] as usize);
        }
        if n != count {
            return Err(Error(format!(
                "the model counted {n} trained targets, the data {count}"
            )));
        }
        let lr = self.sched.lr(self.step);
        let p = self.model.params_mut();
        let (mut params, mut grads) = p.split_mut();
        let norm = if self.cfg.max_grad_norm > 0.0 {
            clip_grad_norm(&mut grads, self.cfg.max_grad_norm)
                .map_err(|e| Error(format!("step {}: {e}", self.step + 1)))?
        } else {
            let g = grad_norm(grads.iter().map(|g| &**g));
            if !g.is_finite() {
                return Err(Error(format!(
                    "step {}: gradient norm is {g} (a NaN or infinity in the gradients)",
                    self.step + 1
                )));
            }
            g
        };
        let grads: Vec<&[f32]> = grads.into_iter().map(|g| &*g).collect();
        self.opt
            .step(lr, &mut params, &grads)
            .map_err(|e| Error(e.to_string()))?;
        self.batch = end;
        self.step += 1;
        let loss = if count > 0 { sum / count as f64 } else { 0.0 };
        let secs = t0.elapsed().as_secs_f64();
        Ok(StepLog {
            step: self.step,
            epoch: self.epoch as f64 + self.batch as f64 / self.plan.len().max(1) as f64,
            loss,
            lr,
            grad_norm: norm,
            tokens,
            tokens_per_s: if secs > 0.0 {
                tokens as f64 / secs
            } else {
                0.0
            },
        })
    }

    /// Mean CE over the eval set (file order, the run's micro-batches); None without one.
    pub fn evaluate(&mut self) -> Result<Option<f64>> {
        if self.eval.is_empty() {
            return Ok(None);
        }
        let order: Vec<usize> = (0..self.eval.len()).collect();
        let (mut sum, mut n) = (0f64, 0usize);
        let mbs = micro_batches(self.eval, &order, self.cfg.batching);
        let mine = dist::share(mbs.len(), self.comm.rank(), self.comm.size());
        for mb in &mbs[mine] {
            let seqs: Vec<Seq> = mb.iter().map(|&i| self.eval[i].clone()).collect();
            let (s, c) = self.model.eval(&seqs)?;
            sum += s;
            n += c;
        }
        let mut v = [sum, n as f64];
        self.comm.all_reduce_f64(&mut v)?;
        let (sum, n) = (v[0], v[1] as usize);
        Ok((n > 0).then(|| sum / n as f64))
    }
}

/// Where and how [`run`] writes.
pub struct RunOptions {
    pub out: PathBuf,
    pub meta: AdapterMeta,
    pub eval_every: Option<u64>,
    pub save_every: Option<u64>,
    /// Also write OUT/adapter.gguf.
    pub gguf: bool,
    pub budget: WriteBudget,
}

/// What [`run`] reports as it goes.
pub enum Event<'a> {
    Step(&'a StepLog),
    Eval { step: u64, loss: f64 },
    Saved(&'a Path),
}

/// How [`run`] ended.
#[derive(Debug, PartialEq)]
pub enum Finish {
    Done {
        eval_loss: Option<f64>,
    },
    /// Stopped by the flag after a step; the checkpoint to resume from.
    Interrupted {
        checkpoint: PathBuf,
    },
}

pub const LOG_FILE: &str = "training_log.jsonl";
pub const PLOT_FILE: &str = "loss.svg";
pub const STATE_FILE: &str = "trainer_state.json";
pub const OPTIM_FILE: &str = "optimizer.bin";

/// A checkpoint folder's name.
pub fn checkpoint_name(step: u64) -> String {
    format!("checkpoint-{step}")
}

/// The checkpoint folders in `out`, by step.
pub fn checkpoints(out: &Path) -> Vec<(u64, PathBuf)> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(out)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let step = name.strip_prefix("checkpoint-")?.parse().ok()?;
                    e.path()
                        .join(STATE_FILE)
                        .is_file()
                        .then(|| (step, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The checkpoint `--resume PATH` names: a checkpoint folder, or an output folder (its latest).
pub fn resolve_checkpoint(path: &Path) -> Result<PathBuf> {
    if path.join(STATE_FILE).is_file() {
        return Ok(path.to_path_buf());
    }
    match checkpoints(path).pop() {
        Some((_, p)) => Ok(p),
        None => Err(Error(format!(
            "--resume {}: no checkpoint there (a checkpoint-STEP folder with {STATE_FILE}, or \
             an output folder holding one)",
            path.display()
        ))),
    }
}

/// Writes `OUT/checkpoint-STEP/` (adapter, AdamW state, trainer state) through
/// [`write_checkpoint`]: a failed write leaves every older checkpoint as it was.
pub fn save_checkpoint<M: Trainable>(tr: &Trainer<M>, o: &RunOptions) -> Result<PathBuf> {
    write_checkpoint(&o.out, tr.steps_done(), |tmp| {
        adapter_io::write_peft(tmp, tr.model.params(), &o.meta, &o.budget)?;
        adapter_io::write_synced(
            &tmp.join(OPTIM_FILE),
            &tr.optimizer_state().to_bytes(),
            &o.budget,
        )?;
        let st = serde_json::to_vec_pretty(&tr.state().json()).map_err(|e| Error(e.to_string()))?;
        adapter_io::write_synced(&tmp.join(STATE_FILE), &st, &o.budget)
    })
}

/// `OUT/checkpoint-STEP/` as `fill` writes it into a temp folder (`OUT/.checkpoint-STEP.tmp`,
/// created empty): synced, then renamed into place; older checkpoints (all but the newest before
/// this one, as `save_total_limit = 2`) are removed only after that. A failed write removes the
/// temp folder and leaves every older checkpoint as it was (the error says which is intact).
/// Shared by fine-tuning and pretraining.
pub fn write_checkpoint(
    out: &Path,
    step: u64,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let name = checkpoint_name(step);
    let tmp = out.join(format!(".{name}.tmp"));
    let fin = out.join(&name);
    let previous = checkpoints(out);
    let res = (|| -> Result<()> {
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)
                .map_err(|e| Error(format!("removing {}: {e}", tmp.display())))?;
        }
        std::fs::create_dir_all(&tmp)
            .map_err(|e| Error(format!("creating {}: {e}", tmp.display())))?;
        fill(&tmp)?;
        adapter_io::sync_dir(&tmp)?;
        if fin.exists() {
            std::fs::remove_dir_all(&fin)
                .map_err(|e| Error(format!("removing {}: {e}", fin.display())))?;
        }
        std::fs::rename(&tmp, &fin).map_err(|e| {
            Error(format!(
                "renaming {} to {}: {e}",
                tmp.display(),
                fin.display()
            ))
        })?;
        adapter_io::sync_dir(out)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_dir_all(&tmp);
        let kept = match previous.last() {
            Some((_, p)) => format!("the previous checkpoint {} is intact", p.display()),
            None => "there was no earlier checkpoint".into(),
        };
        return Err(Error(format!(
            "saving checkpoint {} failed ({e}); {kept}",
            fin.display()
        )));
    }
    let older: Vec<_> = previous.into_iter().filter(|&(s, _)| s != step).collect();
    let keep = older
        .iter()
        .filter(|&&(s, _)| s < step)
        .map(|&(s, _)| s)
        .max();
    for (s, p) in older {
        if Some(s) != keep {
            let _ = std::fs::remove_dir_all(p);
        }
    }
    Ok(fin)
}

/// Loads a checkpoint into a fresh trainer (made with the same arguments and data).
pub fn load_checkpoint<M: Trainable>(
    tr: &mut Trainer<M>,
    dir: &Path,
    meta: &AdapterMeta,
) -> Result<()> {
    let read = |f: &str| {
        std::fs::read(dir.join(f)).map_err(|e| Error(format!("{}: {e}", dir.join(f).display())))
    };
    let st: Value = serde_json::from_slice(&read(STATE_FILE)?)
        .map_err(|e| Error(format!("{}: {e}", dir.join(STATE_FILE).display())))?;
    let st = TrainState::from_json(&st)?;
    let adam = AdamWState::from_bytes(&read(OPTIM_FILE)?)
        .map_err(|e| Error(format!("{}: {e}", dir.join(OPTIM_FILE).display())))?;
    adapter_io::read_into(dir, tr.model.params_mut(), meta)?;
    tr.restore(&st, adam)
}

/// (step, value) points of a curve.
pub type Curve = Vec<(u64, f64)>;

/// (step, loss) and (step, eval_loss) of a training_log.jsonl's lines.
pub fn read_log(text: &str) -> (Curve, Curve) {
    let (mut tr, mut ev) = (Vec::new(), Vec::new());
    for v in text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        let Some(step) = v.get("step").and_then(Value::as_u64) else {
            continue;
        };
        if let Some(l) = v.get("loss").and_then(Value::as_f64) {
            tr.push((step, l));
        }
        if let Some(l) = v.get("eval_loss").and_then(Value::as_f64) {
            ev.push((step, l));
        }
    }
    (tr, ev)
}

fn append_line(f: &mut std::fs::File, v: &Value, path: &Path) -> Result<()> {
    writeln!(f, "{v}")
        .and_then(|_| f.flush())
        .map_err(|e| Error(format!("writing {}: {e}", path.display())))
}

/// Trains to the end (or until `stop` is set: then a checkpoint), writing the log, the
/// checkpoints and the outputs.
pub fn run<M: Trainable>(
    tr: &mut Trainer<M>,
    o: &RunOptions,
    on: &mut dyn FnMut(Event),
    stop: &AtomicBool,
) -> Result<Finish> {
    let comm = tr.comm.clone();
    // Under MPI rank 0 writes every file; the others run the same steps and collectives.
    let root = comm.is_root();
    if !root {
        let fin = run_steps(tr, o, on, stop, None)?;
        comm.barrier()?;
        return Ok(fin);
    }
    std::fs::create_dir_all(&o.out)
        .map_err(|e| Error(format!("creating {}: {e}", o.out.display())))?;
    let log_path = o.out.join(LOG_FILE);
    // A resumed run keeps the lines up to its checkpoint's step.
    let kept: String = if tr.steps_done() > 0 {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                serde_json::from_str::<Value>(l)
                    .ok()
                    .and_then(|v| v.get("step").and_then(Value::as_u64))
                    .is_some_and(|s| s <= tr.steps_done())
            })
            .map(|l| format!("{l}\n"))
            .collect()
    } else {
        String::new()
    };
    std::fs::write(&log_path, &kept)
        .map_err(|e| Error(format!("writing {}: {e}", log_path.display())))?;
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(&log_path)
        .map_err(|e| Error(format!("opening {}: {e}", log_path.display())))?;
    let fin = run_steps(tr, o, on, stop, Some((log, &log_path)))?;
    if let Finish::Done { .. } = fin {
        adapter_io::write_peft(&o.out, tr.model.params(), &o.meta, &o.budget)?;
        if o.gguf {
            adapter_io::write_gguf(
                &o.out.join(adapter_io::GGUF_ADAPTER),
                tr.model.params(),
                &o.meta,
            )?;
        }
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let (train, eval) = read_log(&text);
        std::fs::write(o.out.join(PLOT_FILE), crate::plot::loss_svg(&train, &eval))
            .map_err(|e| Error(format!("writing {}: {e}", o.out.join(PLOT_FILE).display())))?;
    }
    comm.barrier()?;
    Ok(fin)
}

/// The steps, evals and checkpoints of [`run`]; `log` on rank 0 only (the others write nothing
/// and wait at a barrier while rank 0 saves).
fn run_steps<M: Trainable>(
    tr: &mut Trainer<M>,
    o: &RunOptions,
    on: &mut dyn FnMut(Event),
    stop: &AtomicBool,
    mut log: Option<(std::fs::File, &Path)>,
) -> Result<Finish> {
    let comm = tr.comm.clone();
    let mut append = |v: &Value| match &mut log {
        Some((f, p)) => append_line(f, v, p),
        None => Ok(()),
    };
    let save = |tr: &Trainer<M>| -> Result<PathBuf> {
        let p = match comm.is_root() {
            true => save_checkpoint(tr, o)?,
            false => o.out.join(checkpoint_name(tr.steps_done())),
        };
        comm.barrier()?;
        Ok(p)
    };
    let mut last_saved = None;
    // The eval loss before any step: the baseline the run's eval losses are read against.
    if tr.steps_done() == 0 && o.eval_every.is_some_and(|n| n > 0) {
        if let Some(l) = tr.evaluate()? {
            append(&json!({"step": 0, "eval_loss": l}))?;
            on(Event::Eval { step: 0, loss: l });
        }
    }
    while !tr.done() {
        let s = tr.step()?;
        append(&s.json())?;
        on(Event::Step(&s));
        let last = tr.done();
        if let Some(n) = o.eval_every {
            if n > 0 && s.step % n == 0 && !last {
                if let Some(l) = tr.evaluate()? {
                    append(&json!({"step": s.step, "eval_loss": l}))?;
                    on(Event::Eval {
                        step: s.step,
                        loss: l,
                    });
                }
            }
        }
        if let Some(n) = o.save_every {
            if n > 0 && s.step % n == 0 && !last {
                let p = save(tr)?;
                last_saved = Some(s.step);
                on(Event::Saved(&p));
            }
        }
        let mut halt = stop.load(Ordering::SeqCst);
        if comm.size() > 1 {
            // Ctrl-C reaches the ranks at different times: stop where any rank saw it.
            let mut v = [f64::from(u8::from(halt))];
            comm.all_reduce_f64(&mut v)?;
            halt = v[0] > 0.0;
        }
        if halt && !last {
            let p = if last_saved == Some(s.step) {
                o.out.join(checkpoint_name(s.step))
            } else {
                save(tr)?
            };
            return Ok(Finish::Interrupted { checkpoint: p });
        }
    }
    // The last step's checkpoint too, so that the run can be extended with `--resume`.
    if last_saved != Some(tr.steps_done()) && tr.steps_done() > 0 {
        let p = save(tr)?;
        on(Event::Saved(&p));
    }
    let eval_loss = tr.evaluate()?;
    if let Some(l) = eval_loss {
        append(&json!({"step": tr.steps_done(), "eval_loss": l}))?;
        on(Event::Eval {
            step: tr.steps_done(),
            loss: l,
        });
    }
    Ok(Finish::Done { eval_loss })
}
