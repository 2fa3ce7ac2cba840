//! cria-kernels: the small `Backend` boundary the forward pass is written against, and the CPU
//! backend. Every op here has a scalar reference (`reference`), which is the spec the fast kernels
//! are tested against.
//!
//! Conventions: activations are row-major f32 `(t, n)` slices; weights are `cria_core::Tensor`s in
//! GGML order (`ne[0]` = in_features = cols, rows = out_features), in whatever dtype the file has.

pub mod cpu;
pub mod dot;
pub mod isa;
mod ops;
pub mod pool;
pub mod reference;

use cria_core::{DType, Tensor};

pub use cpu::CpuBackend;
pub use isa::Isa;

/// Rotary embedding parameters, precomputed once per model.
#[derive(Clone, Debug)]
pub struct Rope {
    /// Per rotated pair i (0..n_rot/2): the angular frequency, already divided by any RoPE scaling
    /// factor (linear, llama3, or GGUF `rope_freqs`). theta(pos, i) = pos * inv_freq[i].
    pub inv_freq: Vec<f32>,
    /// Multiplies cos/sin (YaRN's attention factor; 1.0 for LLaMA).
    pub attn_factor: f32,
    /// true: rotate pairs (x[2i], x[2i+1]) (GGUF / llama.cpp "normal" mode, what cria stores);
    /// false: rotate (x[i], x[i + n_rot/2]) (GPT-NeoX / HF half-split).
    pub interleaved: bool,
}

/// Geometry of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Queries in this call: rows of `q`.
    pub t: usize,
    /// Position of the first query; keys 0..pos0+t are in the cache.
    pub pos0: usize,
    /// Sliding window (Mistral): a query at p sees keys in (p - window, p]. None: full causal.
    pub window: Option<usize>,
    /// Usually 1/sqrt(head_dim).
    pub scale: f32,
}

/// The ops a LLaMA forward needs. Implementations may use threads internally; every call is
/// synchronous. Slices are row-major f32 unless stated.
pub trait Backend: Send + Sync {
    fn name(&self) -> String;
    /// Whether `matmul`/`embed` run weights of this type.
    fn supports(&self, dtype: DType) -> bool;
    /// out (t, w.rows()) = x (t, w.cols()) @ w^T.
    fn matmul(&self, out: &mut [f32], x: &[f32], w: &Tensor, t: usize);
    /// out (tokens.len(), table.cols()) = rows `tokens` of `table`, dequantized.
    fn embed(&self, out: &mut [f32], table: &Tensor, tokens: &[u32]);
    /// Per row of length `w.len()`: out = x / sqrt(mean(x^2) + eps) * w.
    fn rmsnorm(&self, out: &mut [f32], x: &[f32], w: &[f32], eps: f32);
    /// In place on x (t, n_heads * head_dim); row r is at position pos0 + r.
    fn rope(&self, x: &mut [f32], t: usize, n_heads: usize, head_dim: usize, pos0: usize, rope: &Rope);
    /// out (t, n_heads*head_dim) = softmax(q k^T * scale, causal [+ window]) v, GQA: query head h
    /// reads kv head h / (n_heads / n_kv_heads). `k`, `v`: the layer's cache, (>= pos0+t, n_kv_heads*head_dim).
    fn attention(&self, out: &mut [f32], q: &[f32], k: &[f32], v: &[f32], s: &AttnShape);
    /// a = silu(a) * b.
    fn silu_mul(&self, a: &mut [f32], b: &[f32]);
    /// a += b.
    fn add_assign(&self, a: &mut [f32], b: &[f32]);
}
