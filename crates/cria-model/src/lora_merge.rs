//! LoRA adapters folded into a base's weights: W' = W + sum over adapters of
//! (user scale * file scale) * B A, in f32, for every weight an adapter targets; PEFT's
//! modules_to_save replace the embedding table or the output head (the first adapter that has
//! one wins, as in the unmerged forward). `--lora-merge` loads a model this way (its merged
//! weights dequantized to f32, then no per-token adapter work); `cria merge` writes the result
//! as a file (`cria_convert::lora_source`).
//!
//! Every adapter is checked against the base as `Lora::build` checks it (targets, layers,
//! shapes, ranks, finite values; Q/K up projections moved to the base's row layout).

use crate::lora::{
    adapter_error, check_pair, check_replacement, AdapterFile, BaseShape, CheckedPair,
};
use cria_core::{Error, Result, Tensor};
use std::collections::HashMap;

/// One low-rank term over a weight: scale * B (rows x rank) A (rank x cols).
struct Delta {
    a: Vec<f32>,
    b: Vec<f32>,
    rank: usize,
    cols: usize,
    scale: f32,
}

/// Adapters checked against a base, ready to fold into its weights tensor by tensor.
pub struct Merge {
    deltas: HashMap<String, Vec<Delta>>,
    replace: HashMap<String, Tensor>,
}

impl Merge {
    /// `adapters` (each with the user's scale) checked against `base`.
    pub fn new(adapters: &[(AdapterFile, f32)], base: &BaseShape) -> Result<Merge> {
        let mut deltas: HashMap<String, Vec<Delta>> = HashMap::new();
        let mut replace = HashMap::new();
        let (vocab, dim) = (base.shape)("token_embd.weight")
            .ok_or_else(|| Error::msg("the base model has no token_embd.weight"))?;
        for (file, user_scale) in adapters {
            if !user_scale.is_finite() {
                return Err(adapter_error(
                    &file.path,
                    format!("scale {user_scale} is not a finite number"),
                ));
            }
            for p in &file.pairs {
                let CheckedPair {
                    rank, cols, a, b, ..
                } = check_pair(file, p, base)?;
                deltas.entry(p.target.clone()).or_default().push(Delta {
                    a,
                    b,
                    rank,
                    cols,
                    scale: user_scale * p.scale,
                });
            }
            for t in &file.replace {
                check_replacement(&file.path, t, dim, vocab)?;
                let v = t.to_f32_vec()?;
                if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                    return Err(adapter_error(
                        &file.path,
                        format!(
                            "{} holds a non-finite value ({}) at index {i}",
                            t.name, v[i]
                        ),
                    ));
                }
                replace.entry(t.name.clone()).or_insert_with(|| t.clone());
            }
        }
        Ok(Merge { deltas, replace })
    }

    /// Whether the merge changes nothing.
    pub fn is_empty(&self) -> bool {
        self.deltas.is_empty() && self.replace.is_empty()
    }

    /// Whether a model whose head is its embedding table (`tied`) needs a head of its own after
    /// the merge (a term over the head, or either one replaced).
    pub fn unties(&self, tied: bool) -> bool {
        tied && (self.deltas.contains_key("output.weight") || !self.replace.is_empty())
    }

    /// Whether the merge changes tensor `name`.
    pub fn changes(&self, name: &str) -> bool {
        self.deltas.contains_key(name) || self.replace.contains_key(name)
    }

    /// The tensor that replaces `name` whole (modules_to_save), if any.
    pub fn replacement(&self, name: &str) -> Option<&Tensor> {
        self.replace.get(name)
    }

    /// Adds the low-rank terms over weight `name` to `w` (rows x cols, f32, row-major), on up
    /// to `threads` threads (the result does not depend on the count).
    pub fn add_terms(&self, name: &str, w: &mut [f32], threads: usize) -> Result<()> {
        let Some(ds) = self.deltas.get(name) else {
            return Ok(());
        };
        for d in ds {
            if !w.len().is_multiple_of(d.cols) || w.len() / d.cols * d.rank != d.b.len() {
                return Err(Error::msg(format!(
                    "merging into {name}: {} values, the adapter's term is {}x{}",
                    w.len(),
                    d.b.len() / d.rank,
                    d.cols
                )));
            }
            let rows = w.len() / d.cols;
            let per = rows.div_ceil(threads.clamp(1, 64)).max(1);
            std::thread::scope(|s| {
                for (ci, chunk) in w.chunks_mut(per * d.cols).enumerate() {
                    s.spawn(move || {
                        let mut acc = vec![0f32; d.cols];
                        for (ri, row) in chunk.chunks_exact_mut(d.cols).enumerate() {
                            let i = ci * per + ri;
                            acc.fill(0.0);
                            let bi = &d.b[i * d.rank..(i + 1) * d.rank];
                            for (k, &bk) in bi.iter().enumerate() {
                                let ak = &d.a[k * d.cols..(k + 1) * d.cols];
                                for (x, &y) in acc.iter_mut().zip(ak) {
                                    *x += bk * y;
                                }
                            }
                            for (x, &y) in row.iter_mut().zip(&acc) {
                                *x += d.scale * y;
                            }
                        }
                    });
                }
            });
        }
        Ok(())
    }

    /// Tensor `name` of a model after the merge, as f32 (None: unchanged). `get` reads the
    /// base's tensors by GGUF name; `tied`: the base's head is its table, so the head's base
    /// values are the table's.
    pub fn tensor(
        &self,
        name: &str,
        get: &dyn Fn(&str) -> Option<Tensor>,
        tied: bool,
        threads: usize,
    ) -> Result<Option<Tensor>> {
        let head_of_tied = name == "output.weight" && self.unties(tied);
        if !self.changes(name) && !head_of_tied {
            return Ok(None);
        }
        let base = match self.replacement(name) {
            Some(t) => t.clone(),
            None => {
                let from = if head_of_tied {
                    "token_embd.weight"
                } else {
                    name
                };
                get(from).ok_or_else(|| {
                    Error::msg(format!("tensor {from} is missing from the model file"))
                })?
            }
        };
        if !self.deltas.contains_key(name) {
            let mut t = base;
            t.name = name.to_string();
            return Ok(Some(t));
        }
        let mut v = base.to_f32_vec()?;
        base.data.release_pages();
        self.add_terms(name, &mut v, threads)?;
        Ok(Some(Tensor::from_f32(
            name,
            vec![base.cols(), base.rows()],
            &v,
        )?))
    }
}
