//! cria-train: fine-tuning (issue 23, in progress): the ops of a LLaMA block with their backward
//! passes; AdamW, schedules, gradient clipping, LoRA init (`optim`); training data (`data`);
//! the training loop and checkpoints (`trainer`), adapter files (`adapter_io`), the loss plot
//! (`plot`), the memory prediction of `--dry-run` (`memory`); `model` is the whole-model
//! forward/backward (`TrainModel`); `full` trains every weight (`FullModel`, issue 24 groundwork).
//!
//! In the style of llm.c: one function per op, its forward beside its backward, over f32 slices
//! the caller allocated (no allocation inside an op), scalar and readable; no autograd graph.
//!
//! Conventions, for every op:
//! - activations are row-major `(t, n)`; a weight `W` is `(rows, cols)` row-major as a PyTorch
//!   `nn.Linear` stores it (`rows` = out_features), so `y = x W^T`;
//! - a backward ADDS into its gradient outputs (`dx += ...`), as llm.c does: a tensor that feeds
//!   several ops (the residual stream, x under a base weight and its adapter) collects them all;
//!   the caller zeroes gradients before a step. Two exceptions, said at each: RoPE maps its
//!   buffer in place in both directions, and the loss, where the backward starts, overwrites;
//! - shapes are checked and a mismatch is an `Error`, never a panic.

pub mod adapter_io;
pub mod attention;
pub mod attention_batch;
pub mod data;
pub mod dist;
pub mod flops;
pub mod full;
pub mod loss;
pub mod matmul;
pub mod memory;
pub mod model;
pub mod norm;
pub mod ops_par;
pub mod optim;
pub mod params;
pub mod plot;
pub mod pretrain;
pub mod rope;
pub mod shards;
pub mod swiglu;
pub mod trainer;

/// A bad call: slices whose lengths do not match the shape given, or a shape the op cannot run.
#[derive(Debug, Clone, PartialEq)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// `Err` unless `v` holds exactly `want` values (`what` names the argument in the message).
pub(crate) fn check_len(op: &str, what: &str, len: usize, want: usize) -> Result<()> {
    if len == want {
        Ok(())
    } else {
        Err(Error(format!("{op}: {what} has {len} values, want {want}")))
    }
}

/// `a * b` for shape arithmetic, as an error on overflow.
pub(crate) fn prod(op: &str, dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error(format!("{op}: shape {dims:?} overflows")))
}

/// `a . b` in f32, in index order.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(&p, &q)| p * q).sum()
}

/// `y += g * x`.
pub(crate) fn axpy(y: &mut [f32], g: f32, x: &[f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += g * x;
    }
}
