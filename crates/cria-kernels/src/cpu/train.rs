//! The products training needs beside the forward's (cria-train calls them): the transposed
//! product through a frozen weight of any type, `dX += dY W`, and three f32 GEMMs over plain
//! row-major slices for the adapters and the weight gradients. Every one ADDS into its output
//! (the caller zeroes), as a backward collects the gradient of a tensor from all its uses.
//!
//! Scalar for now: the reference the SIMD versions will be checked against.

use super::CpuBackend;
use cria_core::Tensor;

impl CpuBackend {
    /// `dx (t, w.cols()) += dy (t, w.rows()) @ w`, `w` of any type `dequantize_row` reads (F32,
    /// F16, BF16, every ggml block type), prepared or not. Panics on lengths that do not match
    /// (callers check shapes once, at build).
    pub fn matmul_dx(&self, dx: &mut [f32], dy: &[f32], w: &Tensor, t: usize) {
        let (rows, cols) = (w.rows(), w.cols());
        assert_eq!(dx.len(), t * cols, "matmul_dx: dx");
        assert_eq!(dy.len(), t * rows, "matmul_dx: dy");
        let mut row = vec![0f32; cols];
        for j in 0..rows {
            w.dequantize_row(j, &mut row)
                .unwrap_or_else(|e| panic!("matmul_dx: {}: {e}", w.name));
            for (dxi, dyi) in dx.chunks_exact_mut(cols).zip(dy.chunks_exact(rows)) {
                let g = dyi[j];
                for (d, &v) in dxi.iter_mut().zip(&row) {
                    *d += g * v;
                }
            }
        }
    }

    /// `c (m, n) += a (t, m)^T @ b (t, n)`: a weight gradient, the sum over the batch's rows.
    pub fn gemm_tn(&self, c: &mut [f32], a: &[f32], b: &[f32], t: usize, m: usize, n: usize) {
        assert_eq!(c.len(), m * n, "gemm_tn: c");
        assert_eq!(a.len(), t * m, "gemm_tn: a");
        assert_eq!(b.len(), t * n, "gemm_tn: b");
        for (ai, bi) in a.chunks_exact(m.max(1)).zip(b.chunks_exact(n.max(1))) {
            for (&g, cj) in ai.iter().zip(c.chunks_exact_mut(n.max(1))) {
                for (c, &v) in cj.iter_mut().zip(bi) {
                    *c += g * v;
                }
            }
        }
    }

    /// `c (t, n) += a (t, k) @ b (k, n)`.
    pub fn gemm_nn(&self, c: &mut [f32], a: &[f32], b: &[f32], t: usize, k: usize, n: usize) {
        assert_eq!(c.len(), t * n, "gemm_nn: c");
        assert_eq!(a.len(), t * k, "gemm_nn: a");
        assert_eq!(b.len(), k * n, "gemm_nn: b");
        for (ci, ai) in c.chunks_exact_mut(n.max(1)).zip(a.chunks_exact(k.max(1))) {
            for (&g, bj) in ai.iter().zip(b.chunks_exact(n.max(1))) {
                for (c, &v) in ci.iter_mut().zip(bj) {
                    *c += g * v;
                }
            }
        }
    }

    /// `c (t, n) += a (t, k) @ b (n, k)^T` (an f32 weight held as a slice: an adapter's).
    pub fn gemm_nt(&self, c: &mut [f32], a: &[f32], b: &[f32], t: usize, k: usize, n: usize) {
        assert_eq!(c.len(), t * n, "gemm_nt: c");
        assert_eq!(a.len(), t * k, "gemm_nt: a");
        assert_eq!(b.len(), n * k, "gemm_nt: b");
        for (ci, ai) in c.chunks_exact_mut(n.max(1)).zip(a.chunks_exact(k.max(1))) {
            for (c, bj) in ci.iter_mut().zip(b.chunks_exact(k.max(1))) {
                *c += ai.iter().zip(bj).map(|(&p, &q)| p * q).sum::<f32>();
            }
        }
    }

    /// Calls `f(item, thread)` for every item in `0..n_items` on the backend's threads (items
    /// handed out dynamically); `thread < self.threads`.
    pub fn for_each(&self, n_items: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        self.pool.for_each(n_items, f)
    }
}
