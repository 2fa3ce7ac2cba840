//! Cross-entropy over the vocabulary, as PyTorch's `CrossEntropyLoss(ignore_index=-100)`: the
//! mean over counted positions of `logsumexp(logits) - logits[label]`, positions labelled
//! `IGNORE` left out (prompt tokens under a chat mask, padding).
//!
//! The vocabulary is walked in chunks of columns with an online log-sum-exp per row (running max
//! and a sum rescaled when the max grows), so a trainer can produce the logits a chunk at a time
//! from the head (`x W_chunk^T`) and never hold `t x vocab` of them: `forward_chunk` over every
//! chunk, then `loss`, then `backward_chunk` over every chunk again (the logits recomputed).
//!
//! The row loops are vectorized (`ops_par::simd_fn!` instances: max in lanes, `exp` the polynomial
//! of `attention_batch` summed in f64 lanes, the gradient `exp(v - max) * scale / sum`), within
//! 1e-6 of the f64 scalar math; [`rows_cross_entropy`] takes whole rows, parallel over them.

use crate::attention_batch::exp;
use crate::ops_par::{par, simd_fn, LANES};
use crate::{check_len, prod, Error, Result};
use cria_kernels::{CpuBackend, Isa};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The label of a position that does not count (PyTorch's default `ignore_index`).
pub const IGNORE: i32 = -100;

/// Below this, `exp(x)` is taken as 0 in the gradient (the polynomial `exp` gives about 1e-38
/// there, whose products with weights would be denormals).
const EXP_FLOOR: f32 = -87.0;

simd_fn! {
    /// The largest of `init` and `row`'s values (NaN ignored, as `f32::max` does).
    fn row_max(row: &[f32], init: f32) -> f32 {
        let mut acc = [init; LANES];
        let mut c = row.chunks_exact(LANES);
        for v in &mut c {
            for l in 0..LANES {
                acc[l] = acc[l].max(v[l]);
            }
        }
        let m = c.remainder().iter().fold(init, |m, &v| m.max(v));
        acc.iter().fold(m, |m, &v| m.max(v))
    }
}

/// `exp(x)`, NaN for NaN (the polynomial clamps its input, which would hide a NaN logit).
#[inline(always)]
fn exp_nan(x: f32) -> f32 {
    let e = exp(x);
    if x.is_nan() {
        x
    } else {
        e
    }
}

simd_fn! {
    /// `sum of exp(v - m)` over `row`, each term in f32, summed in f64 lanes.
    fn sum_exp(row: &[f32], m: f32) -> f64 {
        let mut acc = [0f64; LANES];
        let mut c = row.chunks_exact(LANES);
        for v in &mut c {
            for l in 0..LANES {
                acc[l] += exp_nan(v[l] - m) as f64;
            }
        }
        let tail: f64 = c.remainder().iter().map(|&v| exp_nan(v - m) as f64).sum();
        tail + acc.iter().sum::<f64>()
    }
}

simd_fn! {
    /// `row[j] = exp(row[j] - m)` in place (NaN for NaN), and their sum in f64 lanes (as
    /// `sum_exp`'s).
    fn exp_store(row: &mut [f32], m: f32) -> f64 {
        let mut acc = [0f64; LANES];
        let mut c = row.chunks_exact_mut(LANES);
        for v in &mut c {
            for l in 0..LANES {
                v[l] = exp_nan(v[l] - m);
                acc[l] += v[l] as f64;
            }
        }
        let mut tail = 0f64;
        for v in c.into_remainder() {
            *v = exp_nan(*v - m);
            tail += *v as f64;
        }
        tail + acc.iter().sum::<f64>()
    }
}

/// The smallest `exp_store` value kept by `scale_floored` (`exp(EXP_FLOOR)`, about 1.6e-38).
const TINY: f32 = 1.7e-38;

simd_fn! {
    /// `row[j] *= c`, 0 where `row[j] < TINY` (`exp_store`'s values, into the softmax times the
    /// loss scale when `c = scale / sum`).
    fn scale_floored(row: &mut [f32], c: f32) {
        for v in row.iter_mut() {
            *v = if *v < TINY { 0.0 } else { *v * c };
        }
    }
}

simd_fn! {
    /// `row[j] = exp(row[j] - m) * c` in place (0 where `row[j] - m < EXP_FLOOR`): the softmax
    /// times the loss scale when `c = scale / sum`.
    fn softmax_scaled(row: &mut [f32], m: f32, c: f32) {
        for v in row.iter_mut() {
            let x = *v - m;
            let e = exp(x) * c;
            *v = if x < EXP_FLOOR { 0.0 } else { e };
        }
    }
}

/// Per-row state of the log-softmax over vocabulary chunks (allocated once for `t` rows).
pub struct CrossEntropy {
    vocab: usize,
    /// Running max of each row's logits so far.
    max: Vec<f32>,
    /// Running sum of exp(logit - max), in f64 (vocabularies of 128k terms).
    sum: Vec<f64>,
    /// The logit of each row's label, once its chunk has been seen.
    target: Vec<f32>,
}

impl CrossEntropy {
    /// State for `t` rows over a vocabulary of `vocab` entries.
    pub fn new(t: usize, vocab: usize) -> Result<Self> {
        if vocab == 0 {
            return Err(Error("cross_entropy: empty vocabulary".into()));
        }
        Ok(CrossEntropy {
            vocab,
            max: vec![f32::NEG_INFINITY; t],
            sum: vec![0.0; t],
            target: vec![f32::NAN; t],
        })
    }

    /// Forgets every chunk seen (before the next batch).
    pub fn reset(&mut self) {
        self.max.fill(f32::NEG_INFINITY);
        self.sum.fill(0.0);
        self.target.fill(f32::NAN);
    }

    /// Checks `labels` and the chunk `logits` (`t` rows of `width` columns starting at vocabulary
    /// entry `col0`); returns `width`.
    fn check(&self, op: &str, logits: usize, col0: usize, labels: &[i32]) -> Result<usize> {
        let t = self.max.len();
        check_len(op, "labels", labels.len(), t)?;
        if let Some((i, l)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l != IGNORE && (l < 0 || l as usize >= self.vocab))
        {
            return Err(Error(format!(
                "{op}: label {l} at position {i} is outside the vocabulary of {} (and not {IGNORE})",
                self.vocab
            )));
        }
        if t == 0 {
            return Ok(0);
        }
        let width = logits / t;
        check_len(op, "logits", logits, prod(op, &[t, width])?)?;
        if width == 0 || col0 + width > self.vocab {
            return Err(Error(format!(
                "{op}: a chunk of {width} columns at {col0} is not inside the vocabulary of {}",
                self.vocab
            )));
        }
        Ok(width)
    }

    /// Takes in one chunk of logits: `t` rows of `width` columns, vocabulary entries
    /// `col0..col0 + width`. Ignored rows are skipped.
    pub fn forward_chunk(&mut self, logits: &[f32], col0: usize, labels: &[i32]) -> Result<()> {
        let width = self.check("cross_entropy forward_chunk", logits.len(), col0, labels)?;
        if width == 0 {
            return Ok(());
        }
        for (i, (row, &label)) in logits.chunks_exact(width).zip(labels).enumerate() {
            self.row_forward(i, row, col0, label);
        }
        Ok(())
    }

    /// Row `i`'s logits `col0..col0 + row.len()` into its running max and sum.
    fn row_forward(&mut self, i: usize, row: &[f32], col0: usize, label: i32) {
        if label == IGNORE {
            return;
        }
        let isa = Isa::best();
        let m = row_max(isa, row, self.max[i]);
        let mut s = self.sum[i] * ((self.max[i] - m) as f64).exp();
        s += sum_exp(isa, row, m);
        (self.max[i], self.sum[i]) = (m, s);
        let l = label as usize;
        if (col0..col0 + row.len()).contains(&l) {
            self.target[i] = row[l - col0];
        }
    }

    /// Once every chunk is in: the sum over counted rows of `logsumexp - logit[label]` (f64) and
    /// how many rows counted. The mean loss is their quotient.
    pub fn loss(&self, labels: &[i32]) -> Result<(f64, usize)> {
        check_len("cross_entropy loss", "labels", labels.len(), self.max.len())?;
        let (mut total, mut n) = (0f64, 0usize);
        for (i, &label) in labels.iter().enumerate() {
            if label == IGNORE {
                continue;
            }
            let v = self.lse(i) - self.target[i] as f64;
            if !v.is_finite() {
                return Err(Error(format!(
                    "cross_entropy loss: row {i}'s loss is not finite (logits not finite, or its \
                     label's chunk not seen)"
                )));
            }
            total += v;
            n += 1;
        }
        Ok((total, n))
    }

    fn lse(&self, i: usize) -> f64 {
        self.max[i] as f64 + self.sum[i].ln()
    }

    /// The gradient of `scale * (summed loss)` for one chunk (as `forward_chunk`'s): `dlogits`
    /// (overwritten: the backward starts here) is `scale * (softmax - onehot(label))` on counted
    /// rows, 0 on ignored ones. For the mean loss, `scale = 1 / counted`.
    pub fn backward_chunk(
        &self,
        dlogits: &mut [f32],
        logits: &[f32],
        col0: usize,
        labels: &[i32],
        scale: f32,
    ) -> Result<()> {
        const OP: &str = "cross_entropy backward_chunk";
        let width = self.check(OP, logits.len(), col0, labels)?;
        check_len(OP, "dlogits", dlogits.len(), logits.len())?;
        if width == 0 {
            return Ok(());
        }
        for (i, ((drow, row), &label)) in dlogits
            .chunks_exact_mut(width)
            .zip(logits.chunks_exact(width))
            .zip(labels)
            .enumerate()
        {
            self.row_backward(i, drow, row, col0, label, scale);
        }
        Ok(())
    }

    /// Row `i`'s gradient over columns `col0..col0 + row.len()`.
    fn row_backward(
        &self,
        i: usize,
        drow: &mut [f32],
        row: &[f32],
        col0: usize,
        label: i32,
        scale: f32,
    ) {
        if label == IGNORE {
            drow.fill(0.0);
            return;
        }
        drow.copy_from_slice(row);
        let c = (scale as f64 / self.sum[i]) as f32;
        softmax_scaled(Isa::best(), drow, self.max[i], c);
        let l = label as usize;
        if (col0..col0 + row.len()).contains(&l) {
            drow[l - col0] -= scale;
        }
    }
}

/// The whole loss over a `(t, vocab)` logits matrix, walked in chunks of `chunk` columns: the mean
/// over counted positions (PyTorch's `CrossEntropyLoss(ignore_index=-100)`), and `dlogits`
/// (overwritten) its gradient. No counted position is an error (PyTorch gives NaN).
pub fn cross_entropy(
    dlogits: &mut [f32],
    state: &mut CrossEntropy,
    logits: &[f32],
    labels: &[i32],
    chunk: usize,
) -> Result<f32> {
    const OP: &str = "cross_entropy";
    let (t, vocab) = (state.max.len(), state.vocab);
    check_len(OP, "logits", logits.len(), prod(OP, &[t, vocab])?)?;
    check_len(OP, "dlogits", dlogits.len(), logits.len())?;
    if chunk == 0 {
        return Err(Error(format!("{OP}: chunk of 0 columns")));
    }
    // Labels checked once for the whole call (a chunk of the full width is a valid call).
    state.check(OP, logits.len(), 0, labels)?;
    state.reset();
    for col0 in (0..vocab).step_by(chunk) {
        let w = chunk.min(vocab - col0);
        for (i, &label) in labels.iter().enumerate() {
            state.row_forward(i, &logits[i * vocab + col0..][..w], col0, label);
        }
    }
    let (total, n) = state.loss(labels)?;
    if n == 0 {
        return Err(Error(format!(
            "{OP}: every one of the {t} positions is {IGNORE}: nothing to learn from"
        )));
    }
    let scale = 1.0 / n as f32;
    for col0 in (0..vocab).step_by(chunk) {
        let w = chunk.min(vocab - col0);
        for (i, &label) in labels.iter().enumerate() {
            let at = i * vocab + col0;
            state.row_backward(
                i,
                &mut dlogits[at..][..w],
                &logits[at..][..w],
                col0,
                label,
                scale,
            );
        }
    }
    Ok((total / n as f64) as f32)
}

/// Rows per group of [`rows_cross_entropy`] (its per-row losses live on the stack).
const GROUP: usize = 64;

/// The cross-entropy of whole rows of logits (`labels.len()` rows of `vocab`), parallel over rows
/// on `cpu`'s threads: the sum over counted rows of `logsumexp(row) - row[label]` (f64, added in
/// row order) and how many rows counted (IGNORE rows do not). With `grad = Some(g)` each row is
/// overwritten with the gradient of `g * (summed loss)`: `g * (softmax - onehot(label))`, 0 on
/// ignored rows. A loss that is not finite (NaN or overflowing logits) is an error.
pub fn rows_cross_entropy(
    cpu: &CpuBackend,
    logits: &mut [f32],
    vocab: usize,
    labels: &[i32],
    grad: Option<f32>,
) -> Result<(f64, usize)> {
    const OP: &str = "rows_cross_entropy";
    if vocab == 0 {
        return Err(Error(format!("{OP}: empty vocabulary")));
    }
    check_len(
        OP,
        "logits",
        logits.len(),
        prod(OP, &[labels.len(), vocab])?,
    )?;
    if let Some((i, l)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l != IGNORE && (l < 0 || l as usize >= vocab))
    {
        return Err(Error(format!(
            "{OP}: label {l} at row {i} is outside the vocabulary of {vocab} (and not {IGNORE})"
        )));
    }
    let isa = cpu.isa();
    let (mut total, mut count) = (0f64, 0usize);
    for (g, (logits, labels)) in logits
        .chunks_mut(GROUP * vocab)
        .zip(labels.chunks(GROUP))
        .enumerate()
    {
        let losses: [AtomicU64; GROUP] = std::array::from_fn(|_| AtomicU64::new(0));
        let rows = logits.chunks_exact_mut(vocab).zip(labels).zip(&losses);
        par(cpu, rows, |((row, &label), loss)| {
            if label == IGNORE {
                if grad.is_some() {
                    row.fill(0.0);
                }
                return;
            }
            let l = label as usize;
            let m = row_max(isa, row, f32::NEG_INFINITY);
            let target = row[l] as f64;
            // With a gradient to write, the exponentials are kept in the row (one exp per
            // value, not two).
            let s = match grad {
                Some(_) => exp_store(isa, row, m),
                None => sum_exp(isa, row, m),
            };
            loss.store((m as f64 + s.ln() - target).to_bits(), Relaxed);
            if let Some(g) = grad {
                scale_floored(isa, row, (g as f64 / s) as f32);
                row[l] -= g;
            }
        });
        for (i, (loss, &label)) in losses.iter().zip(labels).enumerate() {
            if label == IGNORE {
                continue;
            }
            let v = f64::from_bits(loss.load(Relaxed));
            if !v.is_finite() {
                return Err(Error(format!(
                    "{OP}: the loss of row {} is not finite (logits overflowed or are NaN)",
                    g * GROUP + i
                )));
            }
            total += v;
            count += 1;
        }
    }
    Ok((total, count))
}
