//! AVX2 + FMA + F16C kernels (x86-64).

pub mod dot;
pub(crate) mod gemm_float;
pub(crate) mod gemm_half;
pub(crate) mod gemm_q;
pub(crate) mod ops;
