//! The CPU backend. For now every op is the scalar reference; the fast kernels (per-dtype table,
//! runtime SIMD dispatch, thread pool) replace these bodies without changing the trait.

use crate::{reference, AttnShape, Backend, Rope};
use cria_core::{DType, Tensor};

pub struct CpuBackend {
    pub threads: usize,
}

impl CpuBackend {
    pub fn new(threads: usize) -> Self {
        CpuBackend { threads: threads.max(1) }
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        format!("cpu-reference x{}", self.threads)
    }
    fn supports(&self, dtype: DType) -> bool {
        matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
    }
    fn matmul(&self, out: &mut [f32], x: &[f32], w: &Tensor, t: usize) {
        reference::matmul(out, x, w, t)
    }
    fn embed(&self, out: &mut [f32], table: &Tensor, tokens: &[u32]) {
        reference::embed(out, table, tokens)
    }
    fn rmsnorm(&self, out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
        reference::rmsnorm(out, x, w, eps)
    }
    fn rope(&self, x: &mut [f32], t: usize, n_heads: usize, head_dim: usize, pos0: usize, rope: &Rope) {
        reference::rope(x, t, n_heads, head_dim, pos0, rope)
    }
    fn attention(&self, out: &mut [f32], q: &[f32], k: &[f32], v: &[f32], s: &AttnShape) {
        reference::attention(out, q, k, v, s)
    }
    fn silu_mul(&self, a: &mut [f32], b: &[f32]) {
        reference::silu_mul(a, b)
    }
    fn add_assign(&self, a: &mut [f32], b: &[f32]) {
        reference::add_assign(a, b)
    }
}
