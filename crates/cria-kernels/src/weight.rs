//! A weight matrix of the model: the base as the backend prepared it and what the file had (for
//! sizes and reports); a low-rank adapter pair over one.

use crate::Backend;
use cria_core::{DType, Tensor};

/// One weight matrix (rows = out_features, cols = in_features). The forward multiplies by it
/// in one place (`cria_model::forward`'s `project`), where the sequences' adapters' terms are
/// added.
pub struct Weight<B: Backend> {
    /// The base matrix in its file's dtype, as `Backend::prepare` made it (CPU: the tensor,
    /// with its repacked copy if the backend made one; CUDA: uploaded).
    pub base: B::Matrix,
    /// The file's name, type and shape of the base.
    pub name: String,
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    /// Bytes of the base in the file's type.
    pub byte_len: usize,
}

/// A low-rank adapter (LoRA) pair over a weight W (rows, cols): the product becomes
/// `x @ W^T + scale * (x @ a^T) @ b^T`, i.e. W + scale * b @ a, with `a` (rank, cols) and `b`
/// (rows, rank), in f32 over a frozen (possibly quantized) base (`Backend::lora`).
pub struct LoraAdapter<B: Backend> {
    /// The down projection, (rank, cols).
    pub a: B::Matrix,
    /// The up projection, (rows, rank).
    pub b: B::Matrix,
    pub rank: usize,
    /// The base's shape.
    pub rows: usize,
    pub cols: usize,
    /// The file's factor (alpha / rank, or alpha / sqrt(rank) with rslora).
    pub scale: f32,
}

impl<B: Backend> Weight<B> {
    /// `t` (checked by the loader) prepared by `backend`.
    pub fn prepare(backend: &B, t: Tensor) -> cria_core::Result<Self> {
        let info = Info::of(&t);
        Ok(info.with(backend.prepare(t)?))
    }

    /// The embedding table; `head`: the output head it is tied to, if any.
    pub fn embedding(backend: &B, t: Tensor, head: Option<&Weight<B>>) -> cria_core::Result<Self> {
        let info = Info::of(&t);
        Ok(info.with(backend.prepare_embedding(t, head.map(|h| &h.base))?))
    }

    /// Values of the base.
    pub fn n_elements(&self) -> usize {
        self.rows * self.cols
    }

    /// Bytes of one row of the base in the file's type.
    pub fn row_bytes(&self) -> usize {
        self.cols / self.dtype.block_size() * self.dtype.type_size()
    }
}

/// What the file said of a tensor, taken before the backend consumes it.
struct Info {
    name: String,
    dtype: DType,
    rows: usize,
    cols: usize,
    byte_len: usize,
}

impl Info {
    fn of(t: &Tensor) -> Info {
        Info {
            name: t.name.clone(),
            dtype: t.dtype,
            rows: t.rows(),
            cols: t.cols(),
            byte_len: t.bytes().len(),
        }
    }
    fn with<B: Backend>(self, base: B::Matrix) -> Weight<B> {
        Weight {
            base,
            name: self.name,
            dtype: self.dtype,
            rows: self.rows,
            cols: self.cols,
            byte_len: self.byte_len,
        }
    }
}
