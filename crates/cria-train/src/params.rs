//! The trainable adapters: every LoRA pair of every layer in one flat f32 vector (and its
//! gradient beside it), one `Entry` per matrix saying where it lies. The optimizer sees one
//! tensor per matrix (`lens`, `split_mut`); the forward reads each pair through `pair`.
//!
//! Matrices are in PEFT's layout (A `(rank, in)`, B `(out, rank)`, row-major) but in the BASE
//! MODEL's row order: over a GGUF base whose Q/K rows are permuted for interleaved RoPE
//! (`Config::rope_interleaved`), the B rows of q and k are in that permuted order, and writing a
//! PEFT folder permutes them back (`cria_model::lora::permute_rows`).

use crate::optim::{lora_init, LoraInit, Rng};
use crate::{Error, Result};
use cria_model::config::Config;
use cria_model::lora::Target;
use std::ops::Range;

/// What to train: PEFT's LoraConfig fields.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f32,
    /// Dropout on the adapter's input, as PEFT's `lora_dropout` (0: none).
    pub dropout: f32,
    /// Per-layer targets, in `Target::LAYER` order, no repeats (Output is not trainable here).
    pub targets: Vec<Target>,
    /// rsLoRA: scale alpha / sqrt(r) instead of alpha / r.
    pub rslora: bool,
}

impl LoraConfig {
    pub fn scale(&self) -> f32 {
        if self.rslora {
            self.alpha / (self.rank as f32).sqrt()
        } else {
            self.alpha / self.rank as f32
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 || self.rank > cria_model::lora::MAX_LORA_RANK {
            return Err(Error(format!(
                "LoRA rank {} is outside 1..={}",
                self.rank,
                cria_model::lora::MAX_LORA_RANK
            )));
        }
        if !self.alpha.is_finite() || self.alpha <= 0.0 {
            return Err(Error(format!("lora_alpha {} must be > 0", self.alpha)));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error(format!(
                "lora_dropout {} must be in [0, 1)",
                self.dropout
            )));
        }
        if self.targets.is_empty() {
            return Err(Error("no target modules to train".into()));
        }
        for (i, t) in self.targets.iter().enumerate() {
            if t.layer_index().is_none() || self.targets[..i].contains(t) {
                return Err(Error(format!(
                    "target {t:?}: not a layer target, or repeated"
                )));
            }
        }
        Ok(())
    }
}

/// Which matrix of a pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Half {
    A,
    B,
}

/// One matrix: `rows x cols` row-major at `range` of `LoraParams::data` (and of `grads`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub layer: usize,
    pub target: Target,
    pub half: Half,
    pub rows: usize,
    pub cols: usize,
    pub range: Range<usize>,
}

/// The base weight's (out_features, in_features) of a target.
pub fn target_shape(c: &Config, t: Target) -> (usize, usize) {
    match t {
        Target::Q => (c.q_dim(), c.dim),
        Target::K | Target::V => (c.kv_dim(), c.dim),
        Target::O => (c.dim, c.q_dim()),
        Target::Gate | Target::Up => (c.ffn_dim, c.dim),
        Target::Down => (c.dim, c.ffn_dim),
        Target::Output => (c.vocab_size, c.dim),
    }
}

pub struct LoraParams {
    pub cfg: LoraConfig,
    pub data: Vec<f32>,
    pub grads: Vec<f32>,
    /// Layer by layer, targets in `cfg.targets` order, A before B.
    pub entries: Vec<Entry>,
}

impl LoraParams {
    /// All zeros (A and B): fill with `init_peft` or load an adapter over them.
    pub fn zeros(cfg: LoraConfig, model: &Config) -> Result<LoraParams> {
        cfg.validate()?;
        let mut entries = Vec::new();
        let mut n = 0usize;
        for layer in 0..model.n_layers {
            for &target in &cfg.targets {
                let (out, inp) = target_shape(model, target);
                for (half, rows, cols) in [(Half::A, cfg.rank, inp), (Half::B, out, cfg.rank)] {
                    let len = rows
                        .checked_mul(cols)
                        .ok_or_else(|| Error("adapter size overflows".into()))?;
                    entries.push(Entry {
                        layer,
                        target,
                        half,
                        rows,
                        cols,
                        range: n..n + len,
                    });
                    n = n
                        .checked_add(len)
                        .ok_or_else(|| Error("adapter size overflows".into()))?;
                }
            }
        }
        Ok(LoraParams {
            cfg,
            data: vec![0.0; n],
            grads: vec![0.0; n],
            entries,
        })
    }

    /// PEFT's initialisation, pair by pair in `entries` order (Kaiming-uniform A, zero B).
    pub fn init_peft(&mut self, rng: &mut Rng) -> Result<()> {
        for pair in self.entries.chunks_exact(2) {
            let (a, b) = (&pair[0], &pair[1]);
            let (va, vb) = lora_init(LoraInit::Default, a.rows, a.cols, b.rows, rng)
                .map_err(|e| Error(e.to_string()))?;
            self.data[a.range.clone()].copy_from_slice(&va);
            self.data[b.range.clone()].copy_from_slice(&vb);
        }
        Ok(())
    }

    /// Values per matrix, in `entries` order (AdamW's tensors).
    pub fn lens(&self) -> Vec<usize> {
        self.entries.iter().map(|e| e.range.len()).collect()
    }

    /// The entry index of (layer, target, half), if trained.
    pub fn find(&self, layer: usize, target: Target, half: Half) -> Option<usize> {
        let per_layer = 2 * self.cfg.targets.len();
        let ti = self.cfg.targets.iter().position(|&t| t == target)?;
        let i = layer * per_layer + 2 * ti + usize::from(half == Half::B);
        (i < self.entries.len()).then_some(i)
    }

    /// (A, B) of (layer, target), if trained.
    pub fn pair(&self, layer: usize, target: Target) -> Option<(&[f32], &[f32])> {
        let i = self.find(layer, target, Half::A)?;
        let (a, b) = (&self.entries[i], &self.entries[i + 1]);
        Some((&self.data[a.range.clone()], &self.data[b.range.clone()]))
    }

    /// Per matrix: (values, gradient), in `entries` order, for the optimizer and clipping.
    pub fn split_mut(&mut self) -> (Vec<&mut [f32]>, Vec<&mut [f32]>) {
        (
            split(&mut self.data, &self.entries),
            split(&mut self.grads, &self.entries),
        )
    }

    pub fn zero_grads(&mut self) {
        self.grads.fill(0.0);
    }
}

fn split<'a>(mut v: &'a mut [f32], entries: &[Entry]) -> Vec<&'a mut [f32]> {
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let (head, rest) = std::mem::take(&mut v).split_at_mut(e.range.len());
        out.push(head);
        v = rest;
    }
    out
}
