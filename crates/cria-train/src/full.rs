//! Full training (issue 24 groundwork): a LLaMA whose EVERY weight is a trainable f32 parameter,
//! with the backward pass down to the embedding table.
//!
//! - [`FullParams`]: all weights in one flat f32 vector (gradients beside it), one [`FullEntry`]
//!   per tensor named as Hugging Face names it (`model.embed_tokens.weight`,
//!   `model.layers.0.self_attn.q_proj.weight`, ..., `model.norm.weight`, `lm_head.weight` when
//!   untied), in that order: embedding, per layer (input_layernorm, q, k, v, o,
//!   post_attention_layernorm, gate, up, down), final norm, head. A tied head IS the embedding
//!   entry: the head's gradient and the embedding's (scatter-added rows) land in the same tensor.
//! - [`FullModel`]: built from a `Config` with a seeded init ([`FullParams::init_hf`]: as
//!   transformers' `LlamaPreTrainedModel._init_weights`, normal(0, initializer_range = 0.02) for
//!   every matrix and the embedding, ones for the norms) or from a loaded `Model` (any weight type,
//!   dequantized to f32). Forward + backward over a packed batch of [`Seq`]s with dW for every
//!   matrix (`cpu.gemm_tn`), d(norm weights) (`ops_par::rmsnorm_backward`'s `dw`), d(embedding).
//!   The products run on f32 slices: `y = x W^T` is `gemm_nt`, `dx += dy W` is `gemm_nn`,
//!   `dW += dy^T x` is `gemm_tn`. Norms, RoPE, SwiGLU, the packed attention and the loss are the
//!   ops `TrainModel` (LoRA) uses.
//! - Weight decay groups ([`FullParams::decay_flags`]): matrices (and an untied head) decay;
//!   norms and the embedding (tied head included) do not, as usual for LLaMA pretraining.
//! - [`FullModel::save_hf`]: config.json + model.safetensors that `transformers` loads
//!   (`tests/check_full_hf.py`). Q/K rows of a model loaded from GGUF (interleaved RoPE layout)
//!   are permuted back to Hugging Face's order on the way out.
//!
//! No biases (LLaMA has none): a model with biases is refused.

use crate::attention::AttnDims;
use crate::attention_batch;
use crate::loss::{rows_cross_entropy, IGNORE};
use crate::model::{Seq, TrainOptions, HEAD_ROWS};
use crate::ops_par::{
    residual_forward, rmsnorm_backward, rmsnorm_forward, rope_backward, rope_forward,
    swiglu_backward, swiglu_forward,
};
use crate::optim::Rng;
use crate::rope::rope_table;
use crate::{Error, Result};
use cria_core::DType;
use cria_kernels::{CpuBackend, Rope};
use cria_model::config::{Config, RopeScaling};
use cria_model::model::Model;
use std::mem::size_of;
use std::ops::Range;
use std::path::Path;

/// What a parameter tensor is (for init and weight decay).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Embedding,
    Norm,
    Matrix,
    /// The untied output head.
    Head,
}

/// One tensor: `rows x cols` row-major at `range` of `FullParams::data` (and of `grads`); a norm
/// has `rows == 1` and is 1-D in files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FullEntry {
    pub name: String,
    pub kind: Kind,
    pub rows: usize,
    pub cols: usize,
    pub range: Range<usize>,
}

impl FullEntry {
    /// The PyTorch shape.
    pub fn shape(&self) -> Vec<usize> {
        match self.kind {
            Kind::Norm => vec![self.cols],
            _ => vec![self.rows, self.cols],
        }
    }
}

/// Tensors per layer, in entry order.
pub const PER_LAYER: usize = 9;
const IN_NORM: usize = 0;
const WQ: usize = 1;
const WK: usize = 2;
const WV: usize = 3;
const WO: usize = 4;
const POST_NORM: usize = 5;
const WGATE: usize = 6;
const WUP: usize = 7;
const WDOWN: usize = 8;

/// Every weight of the model, flat, with its gradient.
#[derive(Clone, Debug, PartialEq)]
pub struct FullParams {
    pub data: Vec<f32>,
    pub grads: Vec<f32>,
    pub entries: Vec<FullEntry>,
    pub tied: bool,
    n_layers: usize,
}

impl FullParams {
    /// Zeros in the shapes of `c` (`c.tied_embeddings`: no separate head).
    pub fn zeros(c: &Config) -> Result<FullParams> {
        let (dim, qd, kvd, ff) = (c.dim, c.q_dim(), c.kv_dim(), c.ffn_dim);
        let mut entries = Vec::with_capacity(2 + c.n_layers * PER_LAYER + 1);
        let mut at = 0usize;
        let mut push = |name: String, kind: Kind, rows: usize, cols: usize| -> Result<()> {
            let n = crate::prod("FullParams::zeros", &[rows, cols])?;
            let end = at
                .checked_add(n)
                .ok_or_else(|| Error("FullParams::zeros: the model's size overflows".into()))?;
            entries.push(FullEntry {
                name,
                kind,
                rows,
                cols,
                range: at..end,
            });
            at = end;
            Ok(())
        };
        push(
            "model.embed_tokens.weight".into(),
            Kind::Embedding,
            c.vocab_size,
            dim,
        )?;
        for l in 0..c.n_layers {
            let p = format!("model.layers.{l}");
            push(format!("{p}.input_layernorm.weight"), Kind::Norm, 1, dim)?;
            for (n, rows, cols) in [
                ("q", qd, dim),
                ("k", kvd, dim),
                ("v", kvd, dim),
                ("o", dim, qd),
            ] {
                push(
                    format!("{p}.self_attn.{n}_proj.weight"),
                    Kind::Matrix,
                    rows,
                    cols,
                )?;
            }
            push(
                format!("{p}.post_attention_layernorm.weight"),
                Kind::Norm,
                1,
                dim,
            )?;
            for (n, rows, cols) in [("gate", ff, dim), ("up", ff, dim), ("down", dim, ff)] {
                push(format!("{p}.mlp.{n}_proj.weight"), Kind::Matrix, rows, cols)?;
            }
        }
        push("model.norm.weight".into(), Kind::Norm, 1, dim)?;
        if !c.tied_embeddings {
            push("lm_head.weight".into(), Kind::Head, c.vocab_size, dim)?;
        }
        Ok(FullParams {
            data: vec![0.0; at],
            grads: vec![0.0; at],
            entries,
            tied: c.tied_embeddings,
            n_layers: c.n_layers,
        })
    }

    /// transformers' LLaMA init: every matrix, the embedding and the head normal(0, `std`)
    /// (config.json's `initializer_range`, 0.02 by default), the norms ones; from `rng` in entry
    /// order, so a seed gives the same model every time.
    pub fn init_hf(&mut self, std: f64, rng: &mut Rng) {
        for e in &self.entries {
            let v = &mut self.data[e.range.clone()];
            match e.kind {
                Kind::Norm => v.fill(1.0),
                _ => v.iter_mut().for_each(|x| *x = rng.normal(0.0, std) as f32),
            }
        }
    }

    pub fn n_params(&self) -> usize {
        self.data.len()
    }

    /// Values per entry (what `AdamW::new` takes).
    pub fn lens(&self) -> Vec<usize> {
        self.entries.iter().map(|e| e.range.len()).collect()
    }

    /// Weight decay per entry: matrices and an untied head yes; norms and the embedding (a tied
    /// head is the embedding) no.
    pub fn decay_flags(&self) -> Vec<bool> {
        self.entries
            .iter()
            .map(|e| matches!(e.kind, Kind::Matrix | Kind::Head))
            .collect()
    }

    /// The entry named `name`.
    pub fn find(&self, name: &str) -> Option<&FullEntry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// (parameters, gradients) per entry, in entry order.
    pub fn split_mut(&mut self) -> (Vec<&mut [f32]>, Vec<&mut [f32]>) {
        (
            split(&mut self.data, &self.entries),
            split(&mut self.grads, &self.entries),
        )
    }

    pub fn zero_grads(&mut self) {
        self.grads.fill(0.0);
    }

    /// Index of layer `l`'s tensor `k` (0..PER_LAYER).
    fn layer(&self, l: usize, k: usize) -> usize {
        1 + l * PER_LAYER + k
    }

    fn final_norm(&self) -> usize {
        1 + self.n_layers * PER_LAYER
    }

    fn head(&self) -> usize {
        if self.tied {
            0
        } else {
            self.final_norm() + 1
        }
    }

    fn w(&self, i: usize) -> &[f32] {
        &self.data[self.entries[i].range.clone()]
    }
}

fn split<'a>(v: &'a mut [f32], entries: &[FullEntry]) -> Vec<&'a mut [f32]> {
    let mut rest = v;
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let (a, b) = std::mem::take(&mut rest).split_at_mut(e.range.len());
        out.push(a);
        rest = b;
    }
    out
}

/// One layer's kept activations (`t x width` each).
struct Acts {
    n1: Vec<f32>,
    r1: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    lse: Vec<f32>,
    h: Vec<f32>,
    n2: Vec<f32>,
    r2: Vec<f32>,
    g: Vec<f32>,
    u: Vec<f32>,
    act: Vec<f32>,
}

/// Widths: (t, dim, q_dim, kv_dim, ffn, heads, vocab, head rows).
#[derive(Clone, Copy)]
struct Sz {
    t: usize,
    dim: usize,
    qd: usize,
    kvd: usize,
    ff: usize,
    nh: usize,
    vocab: usize,
    hr: usize,
    n_pairs: usize,
}

impl Sz {
    fn new(c: &Config, opts: &TrainOptions) -> Sz {
        let t = opts.max_rows;
        let (qd, kvd, n_pairs) = (c.q_dim(), c.kv_dim(), c.n_rot / 2);
        let (dim, ff, nh, vocab) = (c.dim, c.ffn_dim, c.n_heads, c.vocab_size);
        let hr = HEAD_ROWS.min(t);
        Sz {
            t,
            dim,
            qd,
            kvd,
            ff,
            nh,
            vocab,
            hr,
            n_pairs,
        }
    }

    /// Bytes of everything `FullModel::new` allocates beside the parameters: each layer's input
    /// (and the output), `sets` layers' activations, the backward's and the head's buffers.
    fn bytes(&self, n_layers: usize, sets: usize) -> usize {
        let (t, f) = (self.t, size_of::<f32>());
        let acts = t * (3 * self.dim + 2 * self.qd + 2 * self.kvd + self.nh + 2 + 3 * self.ff);
        let work = t * (4 * self.dim + 2 * self.qd + 2 * self.kvd + 3 * self.ff + 1)
            + self.hr * (2 * self.dim + self.vocab);
        ((n_layers + 1) * t * self.dim + sets * acts + work) * f
            + t * (size_of::<u32>() + size_of::<i32>() + size_of::<usize>())
            + t * size_of::<Range<usize>>()
            + t * self.n_pairs * size_of::<(f32, f32)>()
            + self.hr * (size_of::<usize>() + size_of::<i32>())
    }
}

impl Acts {
    fn new(s: Sz) -> Acts {
        let z = |w: usize| vec![0f32; s.t * w];
        Acts {
            n1: z(s.dim),
            r1: z(1),
            q: z(s.qd),
            k: z(s.kvd),
            v: z(s.kvd),
            att: z(s.qd),
            lse: z(s.nh),
            h: z(s.dim),
            n2: z(s.dim),
            r2: z(1),
            g: z(s.ff),
            u: z(s.ff),
            act: z(s.ff),
        }
    }
}

/// Gradients in flight and the head's chunk buffers.
struct Work {
    dx: Vec<f32>,
    dn: Vec<f32>,
    tmp: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    datt: Vec<f32>,
    dg: Vec<f32>,
    du: Vec<f32>,
    dact: Vec<f32>,
    nf: Vec<f32>,
    rf: Vec<f32>,
    xc: Vec<f32>,
    logits: Vec<f32>,
    dxc: Vec<f32>,
    tokens: Vec<u32>,
    targets: Vec<i32>,
    positions: Vec<usize>,
    ranges: Vec<Range<usize>>,
    cs: Vec<(f32, f32)>,
    rows: Vec<usize>,
    labels: Vec<i32>,
}

impl Work {
    fn new(s: Sz) -> Work {
        let z = |w: usize| vec![0f32; s.t * w];
        let zc = |w: usize| vec![0f32; s.hr * w];
        Work {
            dx: z(s.dim),
            dn: z(s.dim),
            tmp: z(s.dim),
            dq: z(s.qd),
            dk: z(s.kvd),
            dv: z(s.kvd),
            datt: z(s.qd),
            dg: z(s.ff),
            du: z(s.ff),
            dact: z(s.ff),
            nf: z(s.dim),
            rf: z(1),
            xc: zc(s.dim),
            logits: zc(s.vocab),
            dxc: zc(s.dim),
            tokens: vec![0; s.t],
            targets: vec![IGNORE; s.t],
            positions: vec![0; s.t],
            ranges: Vec::with_capacity(s.t),
            cs: Vec::with_capacity(s.t * s.n_pairs),
            rows: Vec::with_capacity(s.hr),
            labels: Vec::with_capacity(s.hr),
        }
    }
}

/// Bytes a vector holds.
fn cap<T>(v: &Vec<T>) -> usize {
    v.capacity() * size_of::<T>()
}

/// `y = x W^T`, `W` (n, k) row-major, `x` (t, k).
fn linear(cpu: &CpuBackend, y: &mut [f32], x: &[f32], w: &[f32], t: usize, k: usize, n: usize) {
    y.fill(0.0);
    cpu.gemm_nt(y, x, w, t, k, n);
}

/// Backward of [`linear`]: `dW += dy^T x`, and `dx += dy W` when wanted.
#[allow(clippy::too_many_arguments)]
fn linear_back(
    cpu: &CpuBackend,
    dx: Option<&mut [f32]>,
    dw: &mut [f32],
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    t: usize,
    k: usize,
    n: usize,
) {
    cpu.gemm_tn(dw, dy, x, t, n, k);
    if let Some(dx) = dx {
        cpu.gemm_nn(dx, dy, w, t, n, k);
    }
}

/// A LLaMA with every weight trainable (see the module doc).
pub struct FullModel {
    pub config: Config,
    pub rope: Rope,
    params: FullParams,
    opts: TrainOptions,
    sz: Sz,
    /// Each layer's input, then the last layer's output.
    inputs: Vec<Vec<f32>>,
    /// Per layer, or one under checkpointing.
    acts: Vec<Acts>,
    w: Work,
}

impl FullModel {
    /// A new model of shape `c` with transformers' init (`init_std`: `initializer_range`, 0.02 in
    /// LLaMA configs) from `seed`.
    pub fn from_config(c: &Config, init_std: f64, seed: u64, opts: TrainOptions) -> Result<Self> {
        let mut p = FullParams::zeros(c)?;
        p.init_hf(init_std, &mut Rng::new(seed));
        Self::new(c.clone(), cria_model::model::make_rope(c), p, opts)
    }

    /// The weights of a loaded model, dequantized to f32 (GGUF Q/K rows stay in their
    /// interleaved order, as `model.rope` rotates them).
    pub fn from_model(model: &Model, opts: TrainOptions) -> Result<Self> {
        let (c, w) = (&model.config, &model.weights);
        if w.layers.iter().any(|l| {
            l.attn_q_bias.is_some()
                || l.attn_k_bias.is_some()
                || l.attn_v_bias.is_some()
                || l.attn_output_bias.is_some()
                || l.ffn_gate_bias.is_some()
                || l.ffn_up_bias.is_some()
                || l.ffn_down_bias.is_some()
        }) {
            return Err(Error(
                "full training: the model has biases (not a LLaMA); not supported".into(),
            ));
        }
        let mut c = c.clone();
        c.tied_embeddings = w.tied;
        let mut p = FullParams::zeros(&c)?;
        let deq = |t: &cria_core::Tensor| {
            t.to_f32_vec()
                .map_err(|e| Error(format!("tensor {}: {e}", t.name)))
        };
        let mut vals: Vec<Vec<f32>> = vec![deq(&w.token_embd.base)?];
        for l in &w.layers {
            vals.push(l.attn_norm.clone());
            for m in &l.matrices()[..4] {
                vals.push(deq(&m.base)?);
            }
            vals.push(l.ffn_norm.clone());
            for m in &l.matrices()[4..] {
                vals.push(deq(&m.base)?);
            }
        }
        vals.push(w.output_norm.clone());
        if !w.tied {
            vals.push(deq(&w.output.base)?);
        }
        for (e, v) in p.entries.iter().zip(&vals) {
            if v.len() != e.range.len() {
                return Err(Error(format!(
                    "{}: {} values, want {} x {}",
                    e.name,
                    v.len(),
                    e.rows,
                    e.cols
                )));
            }
            p.data[e.range.clone()].copy_from_slice(v);
        }
        Self::new(c, model.rope.clone(), p, opts)
    }

    /// From parameters in the shapes of `c` (`FullParams::zeros(c)`'s entries).
    pub fn new(c: Config, rope: Rope, params: FullParams, opts: TrainOptions) -> Result<Self> {
        c.validate().map_err(|e| Error(e.to_string()))?;
        if opts.max_rows == 0 || opts.max_seq == 0 || opts.max_seq > c.max_seq_len {
            return Err(Error(format!(
                "training buffers for {} rows of sequences up to {}: both must be > 0 and the \
                 context at most the model's {}",
                opts.max_rows, opts.max_seq, c.max_seq_len
            )));
        }
        if c.sliding_window.is_some_and(|w| w < opts.max_seq) {
            return Err(Error(
                "sliding-window attention is not supported in training".into(),
            ));
        }
        let want = FullParams::zeros(&c)?;
        if want.entries != params.entries || params.grads.len() != params.data.len() {
            return Err(Error(
                "the parameters were not made for this config (FullParams::zeros)".into(),
            ));
        }
        let sz = Sz::new(&c, &opts);
        let sets = if opts.grad_checkpoint { 1 } else { c.n_layers };
        Ok(FullModel {
            inputs: (0..=c.n_layers)
                .map(|_| vec![0f32; sz.t * sz.dim])
                .collect(),
            acts: (0..sets).map(|_| Acts::new(sz)).collect(),
            w: Work::new(sz),
            config: c,
            rope,
            params,
            opts,
            sz,
        })
    }

    /// Bytes of the training buffers for `c` under `opts` (activations of a micro-batch and
    /// scratch), before anything is allocated; the parameters and their gradients
    /// (`8 * n_params`) and the optimizer's moments (another `8 * n_params`) are not in it.
    pub fn activation_bytes(c: &Config, opts: &TrainOptions) -> usize {
        let sets = if opts.grad_checkpoint { 1 } else { c.n_layers };
        Sz::new(c, opts).bytes(c.n_layers, sets)
    }

    /// What `new` allocated for the buffers, counted from their capacities.
    pub fn buffer_bytes(&self) -> usize {
        let f = cap::<f32>;
        let a = |a: &Acts| {
            [
                &a.n1, &a.r1, &a.q, &a.k, &a.v, &a.att, &a.lse, &a.h, &a.n2, &a.r2, &a.g, &a.u,
                &a.act,
            ]
            .into_iter()
            .map(f)
            .sum::<usize>()
        };
        let w = &self.w;
        let work = [
            &w.dx, &w.dn, &w.tmp, &w.dq, &w.dk, &w.dv, &w.datt, &w.dg, &w.du, &w.dact, &w.nf,
            &w.rf, &w.xc, &w.logits, &w.dxc,
        ];
        self.inputs.iter().map(f).sum::<usize>()
            + self.acts.iter().map(a).sum::<usize>()
            + work.into_iter().map(f).sum::<usize>()
            + cap(&w.tokens)
            + cap(&w.targets)
            + cap(&w.positions)
            + cap(&w.ranges)
            + cap(&w.cs)
            + cap(&w.rows)
            + cap(&w.labels)
    }

    pub fn params(&self) -> &FullParams {
        &self.params
    }

    pub fn params_mut(&mut self) -> &mut FullParams {
        &mut self.params
    }

    pub fn into_params(self) -> FullParams {
        self.params
    }

    /// Forward + backward of one micro-batch (sequences packed, positions restarting in each);
    /// ADDS d(loss_sum * grad_scale)/d(every weight) into params.grads; returns (sum of CE over
    /// trained targets, their count).
    pub fn forward_backward(
        &mut self,
        cpu: &CpuBackend,
        seqs: &[Seq],
        grad_scale: f32,
    ) -> Result<(f64, usize)> {
        self.forward_backward_hooked(cpu, seqs, grad_scale, &mut |_, _| {})
    }

    /// [`Self::forward_backward`], calling `ready(range, grads)` as soon as a range of
    /// `params.grads` is final for this micro-batch (data parallel: its all-reduce starts while
    /// the backward goes on). The ranges, in this order, cover the gradients once: the final norm
    /// and the untied head (the tail of the vector), each layer from the last to the first, the
    /// embedding (last: it is also the tied head). Always called, in the same order, even for a
    /// batch with nothing to train, so that every rank starts the same collectives.
    pub fn forward_backward_hooked(
        &mut self,
        cpu: &CpuBackend,
        seqs: &[Seq],
        grad_scale: f32,
        ready: &mut dyn FnMut(Range<usize>, &[f32]),
    ) -> Result<(f64, usize)> {
        if !grad_scale.is_finite() {
            return Err(Error(format!("grad_scale {grad_scale} is not finite")));
        }
        let n = self.config.n_layers;
        let e = &self.params.entries;
        let tail = e[self.params.final_norm()].range.start..self.params.grads.len();
        let layer = |l: usize| e[1 + l * PER_LAYER].range.start..e[(l + 1) * PER_LAYER].range.end;
        let mut ranges: Vec<Range<usize>> = std::iter::once(tail)
            .chain((0..n).rev().map(layer))
            .chain(std::iter::once(e[0].range.clone()))
            .collect();
        ranges.reverse(); // popped from the end, in the order above
        let mut hand = |p: &FullParams, ranges: &mut Vec<Range<usize>>, k: usize| {
            for _ in 0..k {
                if let Some(r) = ranges.pop() {
                    ready(r.clone(), &p.grads[r]);
                }
            }
        };
        let t = self.layout(seqs)?;
        if t == 0 {
            hand(&self.params, &mut ranges, n + 2);
            return Ok((0.0, 0));
        }
        self.embed(t);
        for l in 0..n {
            self.layer_forward(cpu, l, t)?;
        }
        let res = self.head(cpu, t, Some(grad_scale))?;
        if res.1 > 0 {
            hand(&self.params, &mut ranges, 1);
            for l in (0..n).rev() {
                if self.opts.grad_checkpoint && l + 1 < n {
                    self.layer_forward(cpu, l, t)?;
                }
                self.layer_backward(cpu, l, t)?;
                hand(&self.params, &mut ranges, 1);
            }
            // d(embedding): scatter-add the rows' gradients (into the head's when tied).
            let (dim, e) = (self.sz.dim, self.params.entries[0].range.start);
            for (i, &tok) in self.w.tokens[..t].iter().enumerate() {
                let g = &mut self.params.grads[e + tok as usize * dim..][..dim];
                for (g, &d) in g.iter_mut().zip(&self.w.dx[i * dim..][..dim]) {
                    *g += d;
                }
            }
        }
        hand(&self.params, &mut ranges, n + 2);
        Ok(res)
    }

    /// Forward only: (sum of CE, count).
    pub fn eval(&mut self, cpu: &CpuBackend, seqs: &[Seq]) -> Result<(f64, usize)> {
        let t = self.layout(seqs)?;
        if t == 0 {
            return Ok((0.0, 0));
        }
        self.embed(t);
        for l in 0..self.config.n_layers {
            self.layer_forward(cpu, l, t)?;
        }
        self.head(cpu, t, None)
    }

    /// Checks and packs the batch; returns its rows.
    fn layout(&mut self, seqs: &[Seq]) -> Result<usize> {
        let (vocab, w) = (self.sz.vocab, &mut self.w);
        w.ranges.clear();
        let mut t = 0usize;
        for (i, s) in seqs.iter().enumerate() {
            let n = s.tokens.len();
            if s.targets.len() != n {
                return Err(Error(format!(
                    "sequence {i}: {n} tokens but {} targets",
                    s.targets.len()
                )));
            }
            if n > self.opts.max_seq || t + n > self.opts.max_rows {
                return Err(Error(format!(
                    "sequence {i}: {n} tokens do not fit (context {}, {} rows per batch)",
                    self.opts.max_seq, self.opts.max_rows
                )));
            }
            let bad_tok = s.tokens.iter().any(|&x| x as usize >= vocab);
            let bad_tgt = s
                .targets
                .iter()
                .any(|&g| g != IGNORE && (g < 0 || g as usize >= vocab));
            if bad_tok || bad_tgt {
                return Err(Error(format!(
                    "sequence {i}: a token or target outside the vocabulary of {vocab}"
                )));
            }
            if n == 0 {
                continue;
            }
            w.tokens[t..t + n].copy_from_slice(&s.tokens);
            w.targets[t..t + n].copy_from_slice(&s.targets);
            w.positions[t..t + n]
                .iter_mut()
                .enumerate()
                .for_each(|(j, p)| *p = j);
            w.ranges.push(t..t + n);
            t += n;
        }
        rope_table(&self.rope, &w.positions[..t], &mut w.cs);
        Ok(t)
    }

    fn embed(&mut self, t: usize) {
        let dim = self.sz.dim;
        let table = self.params.w(0);
        for (row, &tok) in self.inputs[0][..t * dim]
            .chunks_exact_mut(dim)
            .zip(&self.w.tokens)
        {
            row.copy_from_slice(&table[tok as usize * dim..][..dim]);
        }
    }

    fn attn_dims(&self, t: usize) -> AttnDims {
        let c = &self.config;
        AttnDims {
            t,
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            scale: 1.0 / (c.head_dim as f32).sqrt(),
        }
    }

    fn layer_forward(&mut self, cpu: &CpuBackend, l: usize, t: usize) -> Result<()> {
        let dims = self.attn_dims(t);
        let Self {
            config: c,
            rope,
            params: p,
            sz,
            inputs,
            acts,
            w,
            ..
        } = self;
        let Sz {
            dim,
            qd,
            kvd,
            ff,
            nh,
            ..
        } = *sz;
        let wt = |k: usize| p.w(p.layer(l, k));
        let (before, after) = inputs.split_at_mut(l + 1);
        let (x, out) = (&before[l][..t * dim], &mut after[0][..t * dim]);
        let set = if acts.len() == 1 { 0 } else { l };
        let a = &mut acts[set];
        let eps = c.norm_eps;

        rmsnorm_forward(
            cpu,
            &mut a.n1[..t * dim],
            &mut a.r1[..t],
            x,
            wt(IN_NORM),
            eps,
        )?;
        let n1 = &a.n1[..t * dim];
        linear(cpu, &mut a.q[..t * qd], n1, wt(WQ), t, dim, qd);
        linear(cpu, &mut a.k[..t * kvd], n1, wt(WK), t, dim, kvd);
        linear(cpu, &mut a.v[..t * kvd], n1, wt(WV), t, dim, kvd);
        let hd = c.head_dim;
        rope_forward(cpu, &mut a.q[..t * qd], t, nh, hd, rope, &w.cs)?;
        rope_forward(cpu, &mut a.k[..t * kvd], t, c.n_kv_heads, hd, rope, &w.cs)?;
        attention_batch::forward(
            cpu,
            &mut a.att[..t * qd],
            &mut a.lse[..t * nh],
            &a.q[..t * qd],
            &a.k[..t * kvd],
            &a.v[..t * kvd],
            &w.ranges,
            dims,
        )?;
        let o = &mut w.tmp[..t * dim];
        linear(cpu, o, &a.att[..t * qd], wt(WO), t, qd, dim);
        residual_forward(cpu, &mut a.h[..t * dim], x, o)?;

        let h = &a.h[..t * dim];
        rmsnorm_forward(
            cpu,
            &mut a.n2[..t * dim],
            &mut a.r2[..t],
            h,
            wt(POST_NORM),
            eps,
        )?;
        let n2 = &a.n2[..t * dim];
        linear(cpu, &mut a.g[..t * ff], n2, wt(WGATE), t, dim, ff);
        linear(cpu, &mut a.u[..t * ff], n2, wt(WUP), t, dim, ff);
        swiglu_forward(cpu, &mut a.act[..t * ff], &a.g[..t * ff], &a.u[..t * ff])?;
        let mlp = &mut w.tmp[..t * dim];
        linear(cpu, mlp, &a.act[..t * ff], wt(WDOWN), t, ff, dim);
        residual_forward(cpu, out, h, mlp)?;
        Ok(())
    }

    /// `w.dx`: d(layer output) on entry, d(layer input) on return; every weight's gradient added.
    fn layer_backward(&mut self, cpu: &CpuBackend, l: usize, t: usize) -> Result<()> {
        let dims = self.attn_dims(t);
        let Self {
            config: c,
            rope,
            params: p,
            sz,
            inputs,
            acts,
            w,
            ..
        } = self;
        let Sz {
            dim,
            qd,
            kvd,
            ff,
            nh,
            ..
        } = *sz;
        let hd = c.head_dim;
        let idx = |k: usize| p.entries[p.layer(l, k)].range.clone();
        let r: [Range<usize>; PER_LAYER] = std::array::from_fn(idx);
        let (data, grads) = (&p.data, &mut p.grads);
        let x = &inputs[l][..t * dim];
        let a = &acts[if acts.len() == 1 { 0 } else { l }];
        let Work {
            dx,
            dn,
            dq,
            dk,
            dv,
            datt,
            dg,
            du,
            dact,
            ranges,
            cs,
            ..
        } = w;
        let (dx, dn) = (&mut dx[..t * dim], &mut dn[..t * dim]);

        // out = h + down(swiglu(gate(n2), up(n2)))
        let (dact, dg, du) = (&mut dact[..t * ff], &mut dg[..t * ff], &mut du[..t * ff]);
        dact.fill(0.0);
        let down = &data[r[WDOWN].clone()];
        linear_back(
            cpu,
            Some(&mut *dact),
            &mut grads[r[WDOWN].clone()],
            dx,
            &a.act[..t * ff],
            down,
            t,
            ff,
            dim,
        );
        dg.fill(0.0);
        du.fill(0.0);
        swiglu_backward(cpu, dg, du, dact, &a.g[..t * ff], &a.u[..t * ff])?;
        dn.fill(0.0);
        let n2 = &a.n2[..t * dim];
        for (k, dy) in [(WGATE, &*dg), (WUP, &*du)] {
            let (wk, gk) = (&data[r[k].clone()], &mut grads[r[k].clone()]);
            linear_back(cpu, Some(&mut *dn), gk, dy, n2, wk, t, dim, ff);
        }
        let (wn, gn) = (
            &data[r[POST_NORM].clone()],
            &mut grads[r[POST_NORM].clone()],
        );
        rmsnorm_backward(cpu, dx, Some(gn), dn, &a.h[..t * dim], wn, &a.r2[..t])?;

        // h = x + o(attention(rope(q(n1)), rope(k(n1)), v(n1)))
        let datt = &mut datt[..t * qd];
        datt.fill(0.0);
        let wo = &data[r[WO].clone()];
        linear_back(
            cpu,
            Some(&mut *datt),
            &mut grads[r[WO].clone()],
            dx,
            &a.att[..t * qd],
            wo,
            t,
            qd,
            dim,
        );
        let (dq, dk, dv) = (&mut dq[..t * qd], &mut dk[..t * kvd], &mut dv[..t * kvd]);
        dq.fill(0.0);
        dk.fill(0.0);
        dv.fill(0.0);
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
            ranges,
            dims,
        )?;
        rope_backward(cpu, dq, t, nh, hd, rope, cs)?;
        rope_backward(cpu, dk, t, c.n_kv_heads, hd, rope, cs)?;
        dn.fill(0.0);
        let n1 = &a.n1[..t * dim];
        for (k, dy, n) in [(WQ, &*dq, qd), (WK, &*dk, kvd), (WV, &*dv, kvd)] {
            let (wk, gk) = (&data[r[k].clone()], &mut grads[r[k].clone()]);
            linear_back(cpu, Some(&mut *dn), gk, dy, n1, wk, t, dim, n);
        }
        let (wn, gn) = (&data[r[IN_NORM].clone()], &mut grads[r[IN_NORM].clone()]);
        rmsnorm_backward(cpu, dx, Some(gn), dn, x, wn, &a.r1[..t])?;
        Ok(())
    }

    /// Final norm, head and loss over the trained rows, HEAD_ROWS at a time; with `grad`, the
    /// head's and the final norm's gradients and `w.dx` = d(last layer's output).
    fn head(&mut self, cpu: &CpuBackend, t: usize, grad: Option<f32>) -> Result<(f64, usize)> {
        let Self {
            config: c,
            params: p,
            sz,
            inputs,
            w,
            ..
        } = self;
        let (dim, vocab) = (sz.dim, sz.vocab);
        let (hi, fi) = (p.head(), p.final_norm());
        let (hr, fr) = (p.entries[hi].range.clone(), p.entries[fi].range.clone());
        let (data, grads) = (&p.data, &mut p.grads);
        let xl = &inputs[c.n_layers][..t * dim];
        let (nf, rf) = (&mut w.nf[..t * dim], &mut w.rf[..t]);
        rmsnorm_forward(cpu, nf, rf, xl, &data[fr.clone()], c.norm_eps)?;
        let dn = &mut w.dn[..t * dim];
        dn.fill(0.0);
        let head = &data[hr.clone()];
        let (mut total, mut count) = (0f64, 0usize);
        let mut i = 0;
        while i < t {
            w.rows.clear();
            w.labels.clear();
            while i < t && w.rows.len() < sz.hr {
                if w.targets[i] != IGNORE {
                    w.rows.push(i);
                    w.labels.push(w.targets[i]);
                }
                i += 1;
            }
            let n = w.rows.len();
            if n == 0 {
                continue;
            }
            for (xc, &r) in w.xc.chunks_exact_mut(dim).zip(&w.rows) {
                xc.copy_from_slice(&nf[r * dim..][..dim]);
            }
            let (xc, logits) = (&w.xc[..n * dim], &mut w.logits[..n * vocab]);
            linear(cpu, logits, xc, head, n, dim, vocab);
            let (sum, k) = rows_cross_entropy(cpu, logits, vocab, &w.labels, grad)?;
            total += sum;
            count += k;
            if grad.is_some() {
                let dxc = &mut w.dxc[..n * dim];
                dxc.fill(0.0);
                linear_back(
                    cpu,
                    Some(&mut *dxc),
                    &mut grads[hr.clone()],
                    logits,
                    xc,
                    head,
                    n,
                    dim,
                    vocab,
                );
                for (g, &r) in dxc.chunks_exact(dim).zip(&w.rows) {
                    crate::axpy(&mut dn[r * dim..][..dim], 1.0, g);
                }
            }
        }
        if grad.is_some() && count > 0 {
            let dx = &mut w.dx[..t * dim];
            dx.fill(0.0);
            rmsnorm_backward(cpu, dx, Some(&mut grads[fr.clone()]), dn, xl, &data[fr], rf)?;
        }
        Ok((total, count))
    }

    /// config.json as transformers' `LlamaConfig` reads it.
    pub fn hf_config_json(&self) -> Result<serde_json::Value> {
        let c = &self.config;
        if c.n_rot != c.head_dim {
            return Err(Error(format!(
                "RoPE over {} of {} head dimensions: not expressible in a LLaMA config.json",
                c.n_rot, c.head_dim
            )));
        }
        let scaling = match &c.rope_scaling {
            RopeScaling::None => serde_json::Value::Null,
            RopeScaling::Linear { factor } => {
                serde_json::json!({"rope_type": "linear", "factor": factor})
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => serde_json::json!({
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": *original_max_position_embeddings as u64,
            }),
            RopeScaling::FreqFactors(_) => {
                return Err(Error(
                    "RoPE frequency factors from a GGUF rope_freqs tensor: no config.json form"
                        .into(),
                ))
            }
        };
        Ok(serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_act": "silu",
            "attention_bias": false,
            "mlp_bias": false,
            "hidden_size": c.dim,
            "intermediate_size": c.ffn_dim,
            "num_attention_heads": c.n_heads,
            "num_key_value_heads": c.n_kv_heads,
            "num_hidden_layers": c.n_layers,
            "head_dim": c.head_dim,
            "vocab_size": c.vocab_size,
            "max_position_embeddings": c.max_seq_len,
            "rms_norm_eps": c.norm_eps,
            "rope_theta": c.rope_theta,
            "rope_scaling": scaling,
            "tie_word_embeddings": self.params.tied,
            "initializer_range": 0.02,
            "torch_dtype": "float32",
        }))
    }

    /// Writes `dir/config.json` and `dir/model.safetensors` (f32, HF names and row order).
    pub fn save_hf(&self, dir: &Path) -> Result<()> {
        let io = |e: std::io::Error| Error(format!("{}: {e}", dir.display()));
        let cfg =
            serde_json::to_vec_pretty(&self.hf_config_json()?).map_err(|e| Error(e.to_string()))?;
        std::fs::create_dir_all(dir).map_err(io)?;
        let c = &self.config;
        let p = &self.params;
        let mut owned: Vec<Option<Vec<f32>>> = vec![None; p.entries.len()];
        if c.rope_interleaved {
            for l in 0..c.n_layers {
                for (k, heads) in [(WQ, c.n_heads), (WK, c.n_kv_heads)] {
                    let i = p.layer(l, k);
                    let v = cria_model::lora::permute_rows(p.w(i), c.dim, heads, true);
                    owned[i] = Some(v);
                }
            }
        }
        let shapes: Vec<Vec<usize>> = p.entries.iter().map(FullEntry::shape).collect();
        let bytes: Vec<Vec<u8>> = (0..p.entries.len())
            .map(|i| {
                let v = owned[i].as_deref().unwrap_or(p.w(i));
                v.iter().flat_map(|x| x.to_le_bytes()).collect()
            })
            .collect();
        let tensors: Vec<(&str, DType, &[usize], &[u8])> = p
            .entries
            .iter()
            .zip(shapes.iter().zip(&bytes))
            .map(|(e, (s, b))| (e.name.as_str(), DType::F32, s.as_slice(), b.as_slice()))
            .collect();
        cria_core::safetensors::write_safetensors(&dir.join("model.safetensors"), &tensors)
            .map_err(|e| Error(e.to_string()))?;
        std::fs::write(dir.join("config.json"), cfg).map_err(io)
    }

    /// The logits (`vocab` values) of the token after `tokens`: `eval`'s forward of the one
    /// sequence (at most the training context), then the final norm and the head on its last row
    /// only. For sample generations during training (no KV cache: the whole prefix each call).
    pub fn next_logits(&mut self, cpu: &CpuBackend, tokens: &[u32]) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(Error("next_logits: no tokens".into()));
        }
        let seq = Seq {
            tokens: tokens.to_vec(),
            targets: vec![IGNORE; tokens.len()],
        };
        let t = self.layout(std::slice::from_ref(&seq))?;
        self.embed(t);
        for l in 0..self.config.n_layers {
            self.layer_forward(cpu, l, t)?;
        }
        let (dim, vocab) = (self.sz.dim, self.sz.vocab);
        let p = &self.params;
        let last = &self.inputs[self.config.n_layers][(t - 1) * dim..t * dim];
        let (mut nf, mut rf) = (vec![0f32; dim], [0f32]);
        let w = p.w(p.final_norm());
        rmsnorm_forward(cpu, &mut nf, &mut rf, last, w, self.config.norm_eps)?;
        let mut logits = vec![0f32; vocab];
        linear(cpu, &mut logits, &nf, p.w(p.head()), 1, dim, vocab);
        Ok(logits)
    }
}
