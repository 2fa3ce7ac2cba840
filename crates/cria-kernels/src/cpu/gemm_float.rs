//! GEMM for float weights (F32, F16, BF16) over several tokens.

use super::CpuBackend;
use cria_core::Tensor;

/// out (t, n) = x (t, k) @ w^T when this GEMM handles the case; false leaves it to the
/// per-row kernels of `matmul`.
pub(crate) fn gemm(_b: &CpuBackend, _out: &mut [f32], _x: &[f32], _w: &Tensor, _t: usize) -> bool {
    false
}
