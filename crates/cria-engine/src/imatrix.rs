//! Importance matrices, as llama.cpp's `llama-imatrix` computes them (tools/imatrix,
//! `collect_imatrix`): the calibration text is evaluated chunk by chunk as perplexity is
//! ([`crate::eval`]), and for every weight matrix of the layers (and `output.weight` with
//! `process_output`, unless the head is tied to the embeddings, which llama.cpp never collects),
//! the f32 input activations of each matrix multiplication are accumulated: per column, the sum of
//! the squares over the tokens (f32, in token order), and per matrix the tokens seen. As in
//! llama.cpp, a multiplication of fewer than 16 rows is skipped.
//!
//! The inputs are read through the forward's probe (`cria_model::Probe`), which sees each op's f32
//! output before any matmul quantizes it: `attn_norm` enters `attn_q/k/v`, `kqv_out`
//! `attn_output`, `ffn_norm` `ffn_gate/up`, `ffn_swiglu` `ffn_down`, `result_norm` `output`. With
//! no probe set (every other command) the forward does not change.

use crate::eval::{check_ctx, n_chunks, nll, ChunkEval, NllSum, PplResult};
use crate::LoadedModel;
use anyhow::{bail, Result};
use cria_core::imatrix::{Imatrix, ImatrixEntry};
use cria_kernels::Backend;
use std::sync::{Arc, Mutex};

/// llama.cpp skips multiplications of fewer rows (`src1->ne[1] < 16`).
pub const MIN_ROWS: usize = 16;

/// The matrix inputs the probe reports, per layer, and the weights each feeds.
const INPUTS: [(&str, &[&str]); 4] = [
    ("attn_norm", &["attn_q", "attn_k", "attn_v"]),
    ("kqv_out", &["attn_output"]),
    ("ffn_norm", &["ffn_gate", "ffn_up"]),
    ("ffn_swiglu", &["ffn_down"]),
];

#[derive(Clone, Debug)]
struct Acc {
    sums: Vec<f32>,
    count: u64,
}

impl Acc {
    fn new(n: usize) -> Self {
        Acc {
            sums: vec![0.0; n],
            count: 0,
        }
    }
    /// Adds every row of `x` (rows of `sums.len()`), llama.cpp's `acc[j] += x[j] * x[j]`.
    fn add(&mut self, x: &[f32]) -> bool {
        let n = self.sums.len();
        let rows = x.len() / n;
        if rows < MIN_ROWS {
            return true;
        }
        for row in x.chunks_exact(n) {
            for (a, &v) in self.sums.iter_mut().zip(row) {
                *a += v * v;
            }
        }
        self.count += rows as u64;
        self.sums.iter().all(|v| v.is_finite())
    }
}

/// The running sums of one model's matrices (what the probe adds to).
#[derive(Clone, Debug)]
pub struct Collector {
    /// Per layer, per entry of `INPUTS`.
    layers: Vec<[Acc; 4]>,
    output: Option<Acc>,
    /// The first non-finite sum met (llama.cpp stops there).
    bad: Option<String>,
    ctx: usize,
    datasets: Vec<String>,
}

impl Collector {
    /// Sums for `l`'s matrices; `process_output`: also `output.weight` (when not tied).
    pub fn new<B: Backend>(
        l: &LoadedModel<B>,
        ctx: usize,
        process_output: bool,
        datasets: Vec<String>,
    ) -> Self {
        let c = &l.model.config;
        let ins = [c.dim, c.q_dim(), c.dim, c.ffn_dim];
        Collector {
            layers: (0..c.n_layers).map(|_| ins.map(Acc::new)).collect(),
            output: (process_output && !l.model.weights.tied).then(|| Acc::new(c.dim)),
            bad: None,
            ctx,
            datasets,
        }
    }

    /// One probe report: the op `name` of `layer` produced `x`.
    pub fn observe(&mut self, name: &str, layer: usize, x: &[f32]) {
        let acc = if name == "result_norm" {
            self.output.as_mut()
        } else {
            INPUTS
                .iter()
                .position(|(n, _)| *n == name)
                .and_then(|i| self.layers.get_mut(layer).map(|a| &mut a[i]))
        };
        if let Some(acc) = acc {
            if !acc.add(x) && self.bad.is_none() {
                self.bad = Some(if name == "result_norm" {
                    "output.weight".to_string()
                } else {
                    format!("layer {layer}'s input {name}")
                });
            }
        }
    }

    /// The importance matrix so far: one entry per weight that saw tokens, sorted by name;
    /// `chunk_count` = most tokens of an entry / ctx, as llama.cpp counts.
    pub fn imatrix(&self) -> Imatrix {
        let mut entries = Vec::new();
        for (l, accs) in self.layers.iter().enumerate() {
            for ((_, weights), acc) in INPUTS.iter().zip(accs) {
                for w in weights.iter() {
                    push(&mut entries, format!("blk.{l}.{w}.weight"), acc);
                }
            }
        }
        if let Some(acc) = &self.output {
            push(&mut entries, "output.weight".into(), acc);
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let max = self
            .layers
            .iter()
            .flatten()
            .chain(&self.output)
            .map(|a| a.count)
            .max()
            .unwrap_or(0);
        Imatrix {
            entries,
            datasets: self.datasets.clone(),
            chunk_count: (max / self.ctx as u64) as u32,
            chunk_size: self.ctx as u32,
        }
    }
}

fn push(entries: &mut Vec<ImatrixEntry>, name: String, acc: &Acc) {
    if acc.count > 0 {
        entries.push(ImatrixEntry {
            name,
            in_sum2: acc.sums.clone(),
            counts: vec![acc.count as f32],
        });
    }
}

/// What `cria imatrix` asks for.
#[derive(Clone, Debug)]
pub struct Params {
    /// Tokens per chunk.
    pub ctx: usize,
    /// Tokens per forward call.
    pub batch: usize,
    pub max_chunks: Option<usize>,
    pub process_output: bool,
    /// The calibration file's name, recorded in `imatrix.datasets`.
    pub dataset: String,
}

/// Computes the importance matrix of `l` over `tokens`; `on_chunk` gets each finished chunk's
/// number (from 1), the perplexity so far and the collector (to save intermediate files).
pub fn compute<B: Backend>(
    l: &LoadedModel<B>,
    tokens: &[u32],
    p: &Params,
    mut on_chunk: impl FnMut(usize, f64, &Collector) -> Result<()>,
) -> Result<(Imatrix, PplResult)> {
    check_ctx(tokens.len(), p.ctx)?;
    let n = n_chunks(tokens.len(), p.ctx, p.max_chunks);
    if n == 0 {
        bail!("--chunks 0: nothing to compute");
    }
    let col = Arc::new(Mutex::new(Collector::new(
        l,
        p.ctx,
        p.process_output,
        vec![p.dataset.clone()],
    )));
    let mut e = ChunkEval::new(l, p.ctx, p.batch)?;
    let sink = Arc::clone(&col);
    e.set_probe(Some(Box::new(move |name, layer, x| {
        if let Ok(mut c) = sink.lock() {
            c.observe(name, layer, x)
        }
    })));
    let lock = || {
        col.lock()
            .map_err(|_| anyhow::anyhow!("the imatrix collector was poisoned"))
    };
    let mut acc = NllSum::default();
    for c in 0..n {
        e.run(tokens, c, |r| {
            acc.add(nll(r.logits, r.next));
            Ok(())
        })?;
        let g = lock()?;
        if let Some(bad) = &g.bad {
            bail!("non-finite activations in {bad} (chunk {})", c + 1);
        }
        on_chunk(c + 1, acc.ppl(), &g)?;
    }
    let m = lock()?.imatrix();
    Ok((
        m,
        PplResult {
            ppl: acc.ppl(),
            stderr: acc.stderr(),
            chunks: n,
            scored: acc.count(),
        },
    ))
}
