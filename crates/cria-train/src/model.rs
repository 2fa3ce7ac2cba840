//! The whole LLaMA forward and backward for LoRA training, in the style of llm.c: every buffer is
//! allocated once in [`TrainModel::new`] (sized from [`TrainOptions`]), the forward walks the
//! layers keeping what each backward needs, and the backward walks them in reverse, one call per
//! op: `ops_par` for RMSNorm, RoPE, SwiGLU, the residual and the dropout masks (parallel twins of
//! `norm`, `rope`, `swiglu`), `loss::rows_cross_entropy` for the head's loss, `attention_batch` for
//! the packed causal GQA attention, the base products through `cpu.matmul_f32act` (f32
//! activations, `TrainOptions::exact_forward`) or the inference kernel (`cpu.matmul`; quantized
//! weights stay quantized either way) and their transposes through `cpu.matmul_dx`, the adapters
//! through `cpu.gemm_nt / gemm_nn / gemm_tn`.
//!
//! - The base (embedding table, norms, matrices, biases) is frozen: no gradient flows into it, and
//!   none is computed for the embedding (the first layer's input needs no dx either).
//! - An adapter on a product `y = x W^T` adds `s * drop(x) A^T B^T` (PEFT's
//!   `lora_B(lora_A(dropout(x))) * scaling`); the forward keeps `hs = s * drop(x) A^T` (t, rank).
//!   Dropout is inverted (kept values times 1/(1-p)), a mask per (layer, target) from a seed drawn
//!   from the caller's `Rng`; the mask is never stored, the backward regenerates it from the seed.
//! - The head and the cross-entropy run over CHUNKS of the trained rows only ([`HEAD_ROWS`] at a
//!   time): logits of the chunk (full vocabulary), the loss, the gradient written over the logits
//!   in place, then `d(normed) += dlogits W_head`. The (t, vocab) logits never exist whole, and
//!   prompt rows under a chat mask cost nothing in the head.
//! - `grad_checkpoint`: only each layer's input is kept (plus one layer's activations); the
//!   backward recomputes each layer's forward (same dropout seeds) before its backward.
//!
//! Allocation per step: none here beyond what the kernels do inside (the scalar `matmul_dx`
//! dequantizes into a row it allocates per call; the quantized forward kernels keep their own
//! activation scratch).

use crate::attention::AttnDims;
use crate::attention_batch;
use crate::loss::{rows_cross_entropy, IGNORE};
use crate::ops_par::{
    dropout_backward, dropout_forward, residual_forward, rmsnorm_backward, rmsnorm_forward,
    rope_backward, rope_forward, swiglu_backward, swiglu_forward,
};
use crate::optim::Rng;
use crate::params::{target_shape, Half, LoraConfig, LoraParams};
use crate::rope::rope_table;
use crate::{Error, Result};
use cria_core::Tensor;
use cria_kernels::CpuBackend;
use cria_model::config::Config;
use cria_model::lora::Target;
use cria_model::model::Model;
use std::mem::size_of;
use std::ops::Range;
use std::time::{Duration, Instant};

/// One training sequence: `targets[i]` is the token predicted AFTER position `i`, or -100 (not
/// trained); same length as `tokens` (Hugging Face's labels shifted by one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seq {
    pub tokens: Vec<u32>,
    pub targets: Vec<i32>,
}

/// What the buffers are sized for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrainOptions {
    /// Rows (tokens) per micro-batch, all sequences together.
    pub max_rows: usize,
    /// The longest sequence (the context).
    pub max_seq: usize,
    /// Keep only each layer's input; recompute the layer in the backward.
    pub grad_checkpoint: bool,
    /// The forward's products through the base (the seven projections and the head) keep f32
    /// activations for every weight type (`cpu.matmul_f32act`): QLoRA's gradients are then
    /// those of LoRA over the dequantized weights up to summation order. The default `cria
    /// finetune` uses. False: the inference kernels (`cpu.matmul`, int8 activations through a
    /// quantized base), faster, but the gradients move by tens of percent on SmolLM2.
    pub exact_forward: bool,
}

/// Trained rows the head and the loss take at a time: logits of `HEAD_ROWS x vocab` floats.
pub const HEAD_ROWS: usize = 64;

/// Where the time of the steps so far went (wall clock, summed over calls).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OpTimes {
    /// Base products of the forward (with biases), recomputation included.
    pub matmul_fwd: Duration,
    /// Base products of the backward (`cpu.matmul_dx`).
    pub matmul_dx: Duration,
    /// Adapter products, forward and backward, and dropout.
    pub adapters: Duration,
    /// Attention forward and backward.
    pub attention: Duration,
    /// The head (forward and dX) and the cross-entropy.
    pub head: Duration,
    /// Everything else (total less the above): embedding, norms, RoPE, SwiGLU, residuals.
    pub elementwise: Duration,
    /// All of it.
    pub total: Duration,
    /// Rows (tokens) run.
    pub rows: usize,
}

/// The sizes everything is allocated from (one place, so `activation_bytes` is exact).
#[derive(Clone, Copy, Debug)]
struct Dims {
    t: usize,
    dim: usize,
    qd: usize,
    kvd: usize,
    ff: usize,
    nh: usize,
    vocab: usize,
    rank: usize,
    n_targets: usize,
    n_layers: usize,
    n_pairs: usize,
    /// Widest adapter input when dropout is on (its regenerated input), else 0.
    drop_w: usize,
    /// Layers whose activations are kept at once (1 under checkpointing).
    sets: usize,
    head_rows: usize,
}

impl Dims {
    fn new(c: &Config, lora: &LoraConfig, o: &TrainOptions) -> Dims {
        let drop_w = if lora.dropout > 0.0 {
            lora.targets
                .iter()
                .map(|&t| target_shape(c, t).1)
                .max()
                .unwrap_or(0)
        } else {
            0
        };
        Dims {
            t: o.max_rows,
            dim: c.dim,
            qd: c.q_dim(),
            kvd: c.kv_dim(),
            ff: c.ffn_dim,
            nh: c.n_heads,
            vocab: c.vocab_size,
            rank: lora.rank,
            n_targets: lora.targets.len(),
            n_layers: c.n_layers,
            n_pairs: c.n_rot / 2,
            drop_w,
            sets: if o.grad_checkpoint { 1 } else { c.n_layers },
            head_rows: HEAD_ROWS.min(o.max_rows),
        }
    }

    /// f32 values of one layer's kept activations.
    fn acts_len(&self) -> usize {
        let (t, d) = (self.t, self);
        t * (3 * d.dim + 2 * d.qd + 2 * d.kvd + d.nh + 2 + 3 * d.ff + d.n_targets * d.rank)
    }

    /// f32 values of the scratch (backward, head, final norm).
    fn scratch_len(&self) -> usize {
        let (t, d) = (self.t, self);
        t * (4 * d.dim + 2 * d.qd + 2 * d.kvd + 3 * d.ff + d.rank + d.drop_w + 1)
            + d.head_rows * (2 * d.dim + d.vocab)
    }

    fn bytes(&self) -> usize {
        let f32s = (self.n_layers + 1) * self.t * self.dim
            + self.sets * self.acts_len()
            + self.scratch_len();
        f32s * size_of::<f32>()
            + self.t * self.n_pairs * size_of::<(f32, f32)>()
            + self.n_layers * self.n_targets * size_of::<u64>()
            + self.t * (size_of::<u32>() + size_of::<i32>() + size_of::<usize>())
            + self.t * size_of::<Range<usize>>()
            + self.head_rows * (size_of::<usize>() + size_of::<i32>())
    }
}

/// What the forward keeps of one layer (each `t x width`, the first rows of a step used).
struct Acts {
    n1: Vec<f32>,
    r1: Vec<f32>,
    /// q and k after RoPE.
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    lse: Vec<f32>,
    /// The residual stream after attention.
    h: Vec<f32>,
    n2: Vec<f32>,
    r2: Vec<f32>,
    g: Vec<f32>,
    u: Vec<f32>,
    act: Vec<f32>,
    /// Per trained target: `hs = s * drop(x) A^T`, (t, rank).
    hs: Vec<Vec<f32>>,
}

impl Acts {
    fn new(d: &Dims) -> Acts {
        let z = |w: usize| vec![0f32; d.t * w];
        Acts {
            n1: z(d.dim),
            r1: z(1),
            q: z(d.qd),
            k: z(d.kvd),
            v: z(d.kvd),
            att: z(d.qd),
            lse: z(d.nh),
            h: z(d.dim),
            n2: z(d.dim),
            r2: z(1),
            g: z(d.ff),
            u: z(d.ff),
            act: z(d.ff),
            hs: (0..d.n_targets).map(|_| z(d.rank)).collect(),
        }
    }

    fn bufs(&self) -> impl Iterator<Item = &Vec<f32>> {
        [
            &self.n1, &self.r1, &self.q, &self.k, &self.v, &self.att, &self.lse, &self.h, &self.n2,
            &self.r2, &self.g, &self.u, &self.act,
        ]
        .into_iter()
        .chain(self.hs.iter())
    }
}

/// The backward's and the head's working buffers.
struct Scratch {
    /// The gradient of the residual stream, (t, dim).
    dx: Vec<f32>,
    /// The gradient of a norm's output, (t, dim).
    dn: Vec<f32>,
    /// An attention or MLP output before its residual add, (t, dim).
    tmp: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    datt: Vec<f32>,
    dg: Vec<f32>,
    du: Vec<f32>,
    dact: Vec<f32>,
    /// An adapter's dh, (t, rank).
    dh: Vec<f32>,
    /// An adapter's dropped input (and then its dx before the mask), (t, drop_w).
    drop: Vec<f32>,
    /// The final norm's output and rstd.
    nf: Vec<f32>,
    rf: Vec<f32>,
    /// Head chunk: its rows of nf, their logits (then dlogits), their dX.
    xc: Vec<f32>,
    logits: Vec<f32>,
    dxc: Vec<f32>,
}

impl Scratch {
    fn new(d: &Dims) -> Scratch {
        let z = |w: usize| vec![0f32; d.t * w];
        let zc = |w: usize| vec![0f32; d.head_rows * w];
        Scratch {
            dx: z(d.dim),
            dn: z(d.dim),
            tmp: z(d.dim),
            dq: z(d.qd),
            dk: z(d.kvd),
            dv: z(d.kvd),
            datt: z(d.qd),
            dg: z(d.ff),
            du: z(d.ff),
            dact: z(d.ff),
            dh: z(d.rank),
            drop: z(d.drop_w),
            nf: z(d.dim),
            rf: z(1),
            xc: zc(d.dim),
            logits: zc(d.vocab),
            dxc: zc(d.dim),
        }
    }

    fn bufs(&self) -> [&Vec<f32>; 17] {
        [
            &self.dx,
            &self.dn,
            &self.tmp,
            &self.dq,
            &self.dk,
            &self.dv,
            &self.datt,
            &self.dg,
            &self.du,
            &self.dact,
            &self.dh,
            &self.drop,
            &self.nf,
            &self.rf,
            &self.xc,
            &self.logits,
            &self.dxc,
        ]
    }
}

/// The batch's layout: tokens, targets, positions (restarting in each sequence), row ranges.
struct Layout {
    tokens: Vec<u32>,
    targets: Vec<i32>,
    positions: Vec<usize>,
    ranges: Vec<Range<usize>>,
    cs: Vec<(f32, f32)>,
    /// A head chunk's rows, and their targets.
    rows: Vec<usize>,
    labels: Vec<i32>,
}

pub struct TrainModel<'m> {
    model: &'m Model,
    cpu: &'m CpuBackend,
    params: LoraParams,
    opts: TrainOptions,
    d: Dims,
    /// Each layer's input, then the last layer's output: n_layers + 1 of (t, dim).
    inputs: Vec<Vec<f32>>,
    /// n_layers of them, or one under checkpointing.
    acts: Vec<Acts>,
    s: Scratch,
    lay: Layout,
    /// Per (layer, target): the dropout seed of this step.
    seeds: Vec<u64>,
    times: OpTimes,
}

/// Adds `d` to `acc` from `t0` on, and returns now.
fn lap(acc: &mut Duration, t0: Instant) -> Instant {
    let now = Instant::now();
    *acc += now - t0;
    now
}

/// One adapter as the forward uses it.
struct AdapterFwd<'a> {
    a: &'a [f32],
    b: &'a [f32],
    rank: usize,
    scale: f32,
    /// Kept for the backward: s * drop(x) A^T.
    hs: &'a mut [f32],
    /// (seed, p, the buffer for drop(x)) when dropout is on.
    drop: Option<(u64, f32, &'a mut [f32])>,
}

/// `y = x W^T` through the frozen base: f32 activations when `exact`
/// (`TrainOptions::exact_forward`), else the inference kernel.
fn base_product(cpu: &CpuBackend, exact: bool, y: &mut [f32], x: &[f32], w: &Tensor, t: usize) {
    if exact {
        cpu.matmul_f32act(y, x, w, t)
    } else {
        cpu.matmul(y, x, w, t)
    }
}

/// `y = x W^T (+ bias)` through the inference kernel, then the adapter's `+ s drop(x) A^T B^T`.
#[allow(clippy::too_many_arguments)]
fn proj_forward(
    cpu: &CpuBackend,
    times: &mut OpTimes,
    exact: bool,
    y: &mut [f32],
    x: &[f32],
    w: &Tensor,
    bias: Option<&Vec<f32>>,
    t: usize,
    ad: Option<AdapterFwd>,
) -> Result<()> {
    let t0 = Instant::now();
    base_product(cpu, exact, y, x, w, t);
    if let Some(bias) = bias {
        for row in y.chunks_exact_mut(bias.len()) {
            for (v, &b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
    }
    let t0 = lap(&mut times.matmul_fwd, t0);
    let Some(ad) = ad else {
        return Ok(());
    };
    let (rows, cols) = (w.rows(), w.cols());
    let xin: &[f32] = match ad.drop {
        Some((seed, p, buf)) => {
            let buf = &mut buf[..t * cols];
            dropout_forward(cpu, buf, x, seed, p)?;
            buf
        }
        None => x,
    };
    ad.hs.fill(0.0);
    cpu.gemm_nt(ad.hs, xin, ad.a, t, cols, ad.rank);
    for v in ad.hs.iter_mut() {
        *v *= ad.scale;
    }
    cpu.gemm_nt(y, ad.hs, ad.b, t, ad.rank, rows);
    lap(&mut times.adapters, t0);
    Ok(())
}

/// One adapter as the backward uses it.
struct AdapterBwd<'a> {
    a: &'a [f32],
    b: &'a [f32],
    rank: usize,
    scale: f32,
    hs: &'a [f32],
    da: &'a mut [f32],
    db: &'a mut [f32],
    dh: &'a mut [f32],
    drop: Option<(u64, f32, &'a mut [f32])>,
}

/// Backward of `proj_forward` (`dx` None: not wanted): `dx += dy W` (frozen base, any type) and the adapter's share,
/// `db += dy^T hs`, `dh = s dy B`, `da += dh^T drop(x)`, `dx += drop'(dh A)`.
#[allow(clippy::too_many_arguments)]
fn proj_backward(
    cpu: &CpuBackend,
    times: &mut OpTimes,
    mut dx: Option<&mut [f32]>,
    dy: &[f32],
    x: &[f32],
    w: &Tensor,
    t: usize,
    ad: Option<AdapterBwd>,
) -> Result<()> {
    let t0 = Instant::now();
    if let Some(dx) = dx.as_deref_mut() {
        cpu.matmul_dx(dx, dy, w, t);
    }
    let t0 = lap(&mut times.matmul_dx, t0);
    let Some(ad) = ad else {
        return Ok(());
    };
    let (rows, cols, r) = (w.rows(), w.cols(), ad.rank);
    cpu.gemm_tn(ad.db, dy, ad.hs, t, rows, r);
    ad.dh.fill(0.0);
    cpu.gemm_nn(ad.dh, dy, ad.b, t, rows, r);
    for v in ad.dh.iter_mut() {
        *v *= ad.scale;
    }
    match ad.drop {
        Some((seed, p, buf)) => {
            let buf = &mut buf[..t * cols];
            dropout_forward(cpu, buf, x, seed, p)?;
            cpu.gemm_tn(ad.da, ad.dh, buf, t, r, cols);
            if let Some(dx) = dx {
                buf.fill(0.0);
                cpu.gemm_nn(buf, ad.dh, ad.a, t, r, cols);
                dropout_backward(cpu, dx, buf, seed, p)?;
            }
        }
        None => {
            cpu.gemm_tn(ad.da, ad.dh, x, t, r, cols);
            if let Some(dx) = dx {
                cpu.gemm_nn(dx, ad.dh, ad.a, t, r, cols);
            }
        }
    }
    lap(&mut times.adapters, t0);
    Ok(())
}

/// Where the trained matrices of (layer, target) are: (index in cfg.targets, A range, B range).
fn adapter_at(
    p: &LoraParams,
    layer: usize,
    target: Target,
) -> Option<(usize, Range<usize>, Range<usize>)> {
    let i = p.find(layer, target, Half::A)?;
    let ti = p.cfg.targets.iter().position(|&t| t == target)?;
    Some((
        ti,
        p.entries[i].range.clone(),
        p.entries[i + 1].range.clone(),
    ))
}

/// The attention's geometry (`t` is ignored by the packed attention).
fn attn_dims(c: &Config, t: usize) -> AttnDims {
    AttnDims {
        t,
        n_heads: c.n_heads,
        n_kv_heads: c.n_kv_heads,
        head_dim: c.head_dim,
        scale: 1.0 / (c.head_dim as f32).sqrt(),
    }
}

/// The weight, bias and trained target of each product of a layer.
fn products(lw: &cria_model::model::Layer) -> [(&Tensor, Option<&Vec<f32>>, Target); 7] {
    [
        (&lw.attn_q.base, lw.attn_q_bias.as_ref(), Target::Q),
        (&lw.attn_k.base, lw.attn_k_bias.as_ref(), Target::K),
        (&lw.attn_v.base, lw.attn_v_bias.as_ref(), Target::V),
        (
            &lw.attn_output.base,
            lw.attn_output_bias.as_ref(),
            Target::O,
        ),
        (&lw.ffn_gate.base, lw.ffn_gate_bias.as_ref(), Target::Gate),
        (&lw.ffn_up.base, lw.ffn_up_bias.as_ref(), Target::Up),
        (&lw.ffn_down.base, lw.ffn_down_bias.as_ref(), Target::Down),
    ]
}

impl<'m> TrainModel<'m> {
    pub fn new(
        model: &'m Model,
        cpu: &'m CpuBackend,
        params: LoraParams,
        opts: TrainOptions,
    ) -> Result<Self> {
        let c = &model.config;
        params.cfg.validate()?;
        if opts.max_rows == 0 || opts.max_seq == 0 {
            return Err(Error(format!(
                "training buffers for {} rows of sequences up to {}: both must be > 0",
                opts.max_rows, opts.max_seq
            )));
        }
        if opts.max_seq > c.max_seq_len {
            return Err(Error(format!(
                "a context of {} is beyond the model's {}",
                opts.max_seq, c.max_seq_len
            )));
        }
        if let Some(w) = c.sliding_window.filter(|&w| w < opts.max_seq) {
            return Err(Error(format!(
                "the model attends over a sliding window of {w}, shorter than the context {}: \
                 not supported in training",
                opts.max_seq
            )));
        }
        let want = c.n_layers * params.cfg.targets.len() * 2;
        let bad = params.entries.len() != want
            || params.entries.iter().any(|e| {
                let (out, inp) = target_shape(c, e.target);
                let (rows, cols) = match e.half {
                    Half::A => (params.cfg.rank, inp),
                    Half::B => (out, params.cfg.rank),
                };
                e.layer >= c.n_layers || e.rows != rows || e.cols != cols
            });
        if bad || params.data.len() != params.grads.len() {
            return Err(Error(
                "the adapters were not made for this model's shapes (LoraParams::zeros over its \
                 Config)"
                    .into(),
            ));
        }
        let d = Dims::new(c, &params.cfg, &opts);
        let lay = Layout {
            tokens: vec![0; d.t],
            targets: vec![IGNORE; d.t],
            positions: vec![0; d.t],
            ranges: Vec::with_capacity(d.t),
            cs: Vec::with_capacity(d.t * d.n_pairs),
            rows: Vec::with_capacity(d.head_rows),
            labels: Vec::with_capacity(d.head_rows),
        };
        Ok(TrainModel {
            model,
            cpu,
            opts,
            inputs: (0..=d.n_layers).map(|_| vec![0f32; d.t * d.dim]).collect(),
            acts: (0..d.sets).map(|_| Acts::new(&d)).collect(),
            s: Scratch::new(&d),
            lay,
            seeds: vec![0; d.n_layers * d.n_targets],
            times: OpTimes::default(),
            params,
            d,
        })
    }

    pub fn params(&self) -> &LoraParams {
        &self.params
    }

    pub fn params_mut(&mut self) -> &mut LoraParams {
        &mut self.params
    }

    pub fn into_params(self) -> LoraParams {
        self.params
    }

    pub fn options(&self) -> TrainOptions {
        self.opts
    }

    /// Time per op over the calls so far.
    pub fn times(&self) -> OpTimes {
        self.times
    }

    pub fn reset_times(&mut self) {
        self.times = OpTimes::default();
    }

    /// Bytes the training buffers take (activations per micro-batch + scratch), for --dry-run;
    /// callable before loading weights (from the Config alone). Exactly what `new` allocates
    /// (`buffer_bytes`); the adapters, their gradients and the kernels' own scratch are not in it.
    pub fn activation_bytes(cfg: &Config, lora: &LoraConfig, opts: &TrainOptions) -> usize {
        Dims::new(cfg, lora, opts).bytes()
    }

    /// Bytes of the buffers `new` allocated, counted from their capacities.
    pub fn buffer_bytes(&self) -> usize {
        let f = |v: &Vec<f32>| v.capacity() * size_of::<f32>();
        let l = &self.lay;
        self.inputs.iter().map(f).sum::<usize>()
            + self
                .acts
                .iter()
                .flat_map(|a| a.bufs())
                .map(f)
                .sum::<usize>()
            + self.s.bufs().into_iter().map(f).sum::<usize>()
            + l.tokens.capacity() * size_of::<u32>()
            + l.targets.capacity() * size_of::<i32>()
            + l.positions.capacity() * size_of::<usize>()
            + l.ranges.capacity() * size_of::<Range<usize>>()
            + l.cs.capacity() * size_of::<(f32, f32)>()
            + l.rows.capacity() * size_of::<usize>()
            + l.labels.capacity() * size_of::<i32>()
            + self.seeds.capacity() * size_of::<u64>()
    }

    /// Forward + backward of one micro-batch (sequences packed as row ranges, positions restart
    /// at 0 in each); ADDS d(loss_sum * grad_scale)/d(adapters) into params.grads; returns (sum
    /// of cross-entropy over trained targets (f64), their count). Dropout from `rng` when
    /// params.cfg.dropout > 0. The caller passes grad_scale = 1 / (trained targets in the whole
    /// optimizer step) so the step's loss is the token-level mean over all its micro-batches.
    pub fn forward_backward(
        &mut self,
        seqs: &[Seq],
        grad_scale: f32,
        rng: &mut Rng,
    ) -> Result<(f64, usize)> {
        if !grad_scale.is_finite() {
            return Err(Error(format!("grad_scale {grad_scale} is not finite")));
        }
        let t = self.layout(seqs)?;
        if t == 0 {
            return Ok((0.0, 0));
        }
        let start = Instant::now();
        let p = self.params.cfg.dropout;
        let dropout = p > 0.0;
        if dropout {
            for s in self.seeds.iter_mut() {
                *s = rng.next_u64();
            }
        }
        self.embed(t);
        let n = self.d.n_layers;
        for l in 0..n {
            self.layer_forward(l, t, dropout)?;
        }
        let res = self.head(t, Some(grad_scale))?;
        if res.1 > 0 {
            for l in (0..n).rev() {
                if self.opts.grad_checkpoint && l + 1 < n {
                    self.layer_forward(l, t, dropout)?;
                }
                self.layer_backward(l, t, dropout)?;
            }
        }
        self.finish(start, t);
        Ok(res)
    }

    /// Forward only, no dropout: (sum of CE, count).
    pub fn eval(&mut self, seqs: &[Seq]) -> Result<(f64, usize)> {
        let t = self.layout(seqs)?;
        if t == 0 {
            return Ok((0.0, 0));
        }
        let start = Instant::now();
        self.embed(t);
        for l in 0..self.d.n_layers {
            self.layer_forward(l, t, false)?;
        }
        let res = self.head(t, None)?;
        self.finish(start, t);
        Ok(res)
    }

    fn finish(&mut self, start: Instant, t: usize) {
        let tm = &mut self.times;
        tm.total += start.elapsed();
        tm.rows += t;
        let known = tm.matmul_fwd + tm.matmul_dx + tm.adapters + tm.attention + tm.head;
        tm.elementwise = tm.total.saturating_sub(known);
    }

    /// Checks the batch and lays it out; returns its rows.
    fn layout(&mut self, seqs: &[Seq]) -> Result<usize> {
        let (vocab, l) = (self.d.vocab, &mut self.lay);
        l.ranges.clear();
        let mut t = 0usize;
        for (i, s) in seqs.iter().enumerate() {
            let n = s.tokens.len();
            if s.targets.len() != n {
                return Err(Error(format!(
                    "sequence {i}: {n} tokens but {} targets",
                    s.targets.len()
                )));
            }
            if n > self.opts.max_seq {
                return Err(Error(format!(
                    "sequence {i}: {n} tokens, longer than the context of {}",
                    self.opts.max_seq
                )));
            }
            if t + n > self.opts.max_rows {
                return Err(Error(format!(
                    "the batch has more than the {} rows the buffers were sized for",
                    self.opts.max_rows
                )));
            }
            if let Some(&tok) = s.tokens.iter().find(|&&x| x as usize >= vocab) {
                return Err(Error(format!(
                    "sequence {i}: token id {tok} is outside the vocabulary of {vocab}"
                )));
            }
            if let Some(&g) = s
                .targets
                .iter()
                .find(|&&g| g != IGNORE && (g < 0 || g as usize >= vocab))
            {
                return Err(Error(format!(
                    "sequence {i}: target {g} is outside the vocabulary of {vocab} (and not {IGNORE})"
                )));
            }
            if n == 0 {
                continue;
            }
            l.tokens[t..t + n].copy_from_slice(&s.tokens);
            l.targets[t..t + n].copy_from_slice(&s.targets);
            for (j, p) in l.positions[t..t + n].iter_mut().enumerate() {
                *p = j;
            }
            l.ranges.push(t..t + n);
            t += n;
        }
        rope_table(&self.model.rope, &l.positions[..t], &mut l.cs);
        Ok(t)
    }

    fn embed(&mut self, t: usize) {
        let dim = self.d.dim;
        let table = &self.model.weights.token_embd.base;
        self.cpu
            .embed(&mut self.inputs[0][..t * dim], table, &self.lay.tokens[..t]);
    }

    /// Layer `l`'s forward from `inputs[l]` into `inputs[l + 1]`, keeping its activations.
    fn layer_forward(&mut self, l: usize, t: usize, dropout: bool) -> Result<()> {
        let Self {
            model,
            cpu,
            params,
            opts,
            d,
            inputs,
            acts,
            s,
            lay,
            seeds,
            times,
            ..
        } = self;
        let (c, lw) = (&model.config, &model.weights.layers[l]);
        let (dim, qd, kvd, ff, nh) = (d.dim, d.qd, d.kvd, d.ff, d.nh);
        let exact = opts.exact_forward;
        let (before, after) = inputs.split_at_mut(l + 1);
        let (x, out) = (&before[l][..t * dim], &mut after[0][..t * dim]);
        let a = &mut acts[if d.sets == 1 { 0 } else { l }];
        let p = params.cfg.dropout;
        let scale = params.cfg.scale();
        let eps = c.norm_eps;
        // The adapter of product `target`, if trained.
        macro_rules! adapter {
            ($target:expr, $hs:expr) => {
                adapter_at(params, l, $target).map(|(ti, ra, rb)| AdapterFwd {
                    a: &params.data[ra],
                    b: &params.data[rb],
                    rank: d.rank,
                    scale,
                    hs: &mut $hs[ti][..t * d.rank],
                    drop: dropout.then(|| (seeds[l * d.n_targets + ti], p, &mut s.drop[..])),
                })
            };
        }
        let [pq, pk, pv, po, pg, pu, pd] = products(lw);

        // h = x + o(attention(rope(q(n1)), rope(k(n1)), v(n1))), n1 = rmsnorm(x)
        rmsnorm_forward(
            cpu,
            &mut a.n1[..t * dim],
            &mut a.r1[..t],
            x,
            &lw.attn_norm,
            eps,
        )?;
        let n1 = &a.n1[..t * dim];
        for (pr, y) in [
            (pq, &mut a.q[..t * qd]),
            (pk, &mut a.k[..t * kvd]),
            (pv, &mut a.v[..t * kvd]),
        ] {
            proj_forward(
                cpu,
                times,
                exact,
                y,
                n1,
                pr.0,
                pr.1,
                t,
                adapter!(pr.2, a.hs),
            )?;
        }
        let cs = &lay.cs[..];
        let hd = c.head_dim;
        rope_forward(cpu, &mut a.q[..t * qd], t, nh, hd, &model.rope, cs)?;
        rope_forward(
            cpu,
            &mut a.k[..t * kvd],
            t,
            c.n_kv_heads,
            hd,
            &model.rope,
            cs,
        )?;
        let dims = attn_dims(c, t);
        let t0 = Instant::now();
        attention_batch::forward(
            cpu,
            &mut a.att[..t * qd],
            &mut a.lse[..t * nh],
            &a.q[..t * qd],
            &a.k[..t * kvd],
            &a.v[..t * kvd],
            &lay.ranges,
            dims,
        )?;
        lap(&mut times.attention, t0);
        let o = &mut s.tmp[..t * dim];
        proj_forward(
            cpu,
            times,
            exact,
            o,
            &a.att[..t * qd],
            po.0,
            po.1,
            t,
            adapter!(po.2, a.hs),
        )?;
        residual_forward(cpu, &mut a.h[..t * dim], x, o)?;

        // out = h + down(swiglu(gate(n2), up(n2))), n2 = rmsnorm(h)
        rmsnorm_forward(
            cpu,
            &mut a.n2[..t * dim],
            &mut a.r2[..t],
            &a.h[..t * dim],
            &lw.ffn_norm,
            eps,
        )?;
        let n2 = &a.n2[..t * dim];
        proj_forward(
            cpu,
            times,
            exact,
            &mut a.g[..t * ff],
            n2,
            pg.0,
            pg.1,
            t,
            adapter!(pg.2, a.hs),
        )?;
        proj_forward(
            cpu,
            times,
            exact,
            &mut a.u[..t * ff],
            n2,
            pu.0,
            pu.1,
            t,
            adapter!(pu.2, a.hs),
        )?;
        swiglu_forward(cpu, &mut a.act[..t * ff], &a.g[..t * ff], &a.u[..t * ff])?;
        let mlp = &mut s.tmp[..t * dim];
        proj_forward(
            cpu,
            times,
            exact,
            mlp,
            &a.act[..t * ff],
            pd.0,
            pd.1,
            t,
            adapter!(pd.2, a.hs),
        )?;
        residual_forward(cpu, out, &a.h[..t * dim], mlp)?;
        Ok(())
    }

    /// Layer `l`'s backward: `s.dx` holds d(its output) on entry, d(its input) on return (not
    /// for layer 0, whose input is the frozen embedding); the adapters' gradients are added into
    /// params.grads.
    fn layer_backward(&mut self, l: usize, t: usize, dropout: bool) -> Result<()> {
        let locs = Target::LAYER.map(|tg| adapter_at(&self.params, l, tg));
        let (model, cpu, d, lay, seeds) = (self.model, self.cpu, &self.d, &self.lay, &self.seeds);
        let (inputs, acts) = (&self.inputs, &self.acts);
        let (params, s, times) = (&mut self.params, &mut self.s, &mut self.times);
        let (c, lw) = (&model.config, &model.weights.layers[l]);
        let (dim, qd, kvd, ff, nh, hd) = (d.dim, d.qd, d.kvd, d.ff, d.nh, c.head_dim);
        let x = &inputs[l][..t * dim];
        let a = &acts[if d.sets == 1 { 0 } else { l }];
        let (p, scale) = (params.cfg.dropout, params.cfg.scale());
        let (data, grads) = (&params.data, &mut params.grads);
        let Scratch {
            dx,
            dn,
            dq,
            dk,
            dv,
            datt,
            dg,
            du,
            dact,
            dh,
            drop,
            ..
        } = s;
        let dx = &mut dx[..t * dim];
        let dn = &mut dn[..t * dim];
        // The adapter of product `k` (in Target::LAYER order), if trained.
        macro_rules! adapter {
            ($k:expr) => {
                locs[$k].as_ref().map(|(ti, ra, rb)| {
                    let (ga, gb) = grads[ra.start..rb.end].split_at_mut(ra.len());
                    AdapterBwd {
                        a: &data[ra.clone()],
                        b: &data[rb.clone()],
                        rank: d.rank,
                        scale,
                        hs: &a.hs[*ti][..t * d.rank],
                        da: ga,
                        db: gb,
                        dh: &mut dh[..t * d.rank],
                        drop: dropout.then(|| (seeds[l * d.n_targets + ti], p, &mut drop[..])),
                    }
                })
            };
        }
        let [pq, pk, pv, po, pg, pu, pd] = products(lw);

        // out = h + mlp: d(h) starts as dx (it stays in dx), d(mlp) is dx.
        let (dact, dg, du) = (&mut dact[..t * ff], &mut dg[..t * ff], &mut du[..t * ff]);
        dact.fill(0.0);
        proj_backward(
            cpu,
            times,
            Some(&mut *dact),
            dx,
            &a.act[..t * ff],
            pd.0,
            t,
            adapter!(6),
        )?;
        dg.fill(0.0);
        du.fill(0.0);
        swiglu_backward(cpu, dg, du, dact, &a.g[..t * ff], &a.u[..t * ff])?;
        dn.fill(0.0);
        let n2 = &a.n2[..t * dim];
        proj_backward(cpu, times, Some(&mut *dn), dg, n2, pg.0, t, adapter!(4))?;
        proj_backward(cpu, times, Some(&mut *dn), du, n2, pu.0, t, adapter!(5))?;
        let h = &a.h[..t * dim];
        rmsnorm_backward(cpu, dx, None, dn, h, &lw.ffn_norm, &a.r2[..t])?;

        // h = x + o: d(x) starts as dx, d(o) is dx.
        let datt = &mut datt[..t * qd];
        datt.fill(0.0);
        proj_backward(
            cpu,
            times,
            Some(&mut *datt),
            dx,
            &a.att[..t * qd],
            po.0,
            t,
            adapter!(3),
        )?;
        let (dq, dk, dv) = (&mut dq[..t * qd], &mut dk[..t * kvd], &mut dv[..t * kvd]);
        dq.fill(0.0);
        dk.fill(0.0);
        dv.fill(0.0);
        let dims = attn_dims(c, t);
        let t0 = Instant::now();
        attention_batch::backward(
            cpu,
            dq,
            dk,
            dv,
            datt,
            &a.q[..t * qd],
            &a.k[..t * kvd],
            &a.v[..t * kvd],
            &a.att[..t * qd],
            &a.lse[..t * nh],
            &lay.ranges,
            dims,
        )?;
        lap(&mut times.attention, t0);
        rope_backward(cpu, dq, t, nh, hd, &model.rope, &lay.cs)?;
        rope_backward(cpu, dk, t, c.n_kv_heads, hd, &model.rope, &lay.cs)?;
        // Layer 0's input is the frozen embedding: no dx below it.
        let first = l == 0;
        if !first {
            dn.fill(0.0);
        }
        let n1 = &a.n1[..t * dim];
        for (pr, dy, k) in [(pq, &*dq, 0), (pk, &*dk, 1), (pv, &*dv, 2)] {
            let dn = (!first).then_some(&mut *dn);
            proj_backward(cpu, times, dn, dy, n1, pr.0, t, adapter!(k))?;
        }
        if !first {
            rmsnorm_backward(cpu, dx, None, dn, x, &lw.attn_norm, &a.r1[..t])?;
        }
        Ok(())
    }

    /// The final norm, the head and the cross-entropy over the trained rows, HEAD_ROWS at a
    /// time; with `grad` (the scale of the summed loss), dlogits in place of the logits and the
    /// backward down to `s.dx` = d(last layer's output).
    fn head(&mut self, t: usize, grad: Option<f32>) -> Result<(f64, usize)> {
        let Self {
            model,
            cpu,
            opts,
            d,
            inputs,
            s,
            lay,
            times,
            ..
        } = self;
        let w = &model.weights;
        let (dim, vocab) = (d.dim, d.vocab);
        let xl = &inputs[d.n_layers][..t * dim];
        let (nf, rf) = (&mut s.nf[..t * dim], &mut s.rf[..t]);
        rmsnorm_forward(cpu, nf, rf, xl, &w.output_norm, model.config.norm_eps)?;
        let dn = &mut s.dn[..t * dim];
        dn.fill(0.0);
        let t0 = Instant::now();
        let head = &w.output.base;
        let (mut total, mut count) = (0f64, 0usize);
        let mut i = 0;
        while i < t {
            lay.rows.clear();
            lay.labels.clear();
            while i < t && lay.rows.len() < d.head_rows {
                if lay.targets[i] != IGNORE {
                    lay.rows.push(i);
                    lay.labels.push(lay.targets[i]);
                }
                i += 1;
            }
            let n = lay.rows.len();
            if n == 0 {
                continue;
            }
            for (xc, &r) in s.xc.chunks_exact_mut(dim).zip(&lay.rows) {
                xc.copy_from_slice(&nf[r * dim..][..dim]);
            }
            let logits = &mut s.logits[..n * vocab];
            base_product(cpu, opts.exact_forward, logits, &s.xc[..n * dim], head, n);
            let (sum, k) = rows_cross_entropy(cpu, logits, vocab, &lay.labels, grad)?;
            total += sum;
            count += k;
            if grad.is_some() {
                let dxc = &mut s.dxc[..n * dim];
                dxc.fill(0.0);
                cpu.matmul_dx(dxc, logits, head, n);
                for (g, &r) in dxc.chunks_exact(dim).zip(&lay.rows) {
                    for (o, &v) in dn[r * dim..][..dim].iter_mut().zip(g) {
                        *o += v;
                    }
                }
            }
        }
        lap(&mut times.head, t0);
        if grad.is_some() && count > 0 {
            let dx = &mut s.dx[..t * dim];
            dx.fill(0.0);
            rmsnorm_backward(cpu, dx, None, dn, xl, &w.output_norm, rf)?;
        }
        Ok((total, count))
    }
}
