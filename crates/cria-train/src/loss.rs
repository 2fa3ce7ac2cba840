//! Cross-entropy over the vocabulary, as PyTorch's `CrossEntropyLoss(ignore_index=-100)`: the
//! mean over counted positions of `logsumexp(logits) - logits[label]`, positions labelled
//! `IGNORE` left out (prompt tokens under a chat mask, padding).
//!
//! The vocabulary is walked in chunks of columns with an online log-sum-exp per row (running max
//! and a sum rescaled when the max grows), so a trainer can produce the logits a chunk at a time
//! from the head (`x W_chunk^T`) and never hold `t x vocab` of them: `forward_chunk` over every
//! chunk, then `loss`, then `backward_chunk` over every chunk again (the logits recomputed).

use crate::{check_len, prod, Error, Result};

/// The label of a position that does not count (PyTorch's default `ignore_index`).
pub const IGNORE: i32 = -100;

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
        let m = row.iter().fold(self.max[i], |m, &v| m.max(v));
        let mut s = self.sum[i] * ((self.max[i] - m) as f64).exp();
        s += row.iter().map(|&v| ((v - m) as f64).exp()).sum::<f64>();
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
        let lse = self.lse(i);
        for (d, &v) in drow.iter_mut().zip(row) {
            *d = scale * (v as f64 - lse).exp() as f32;
        }
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
