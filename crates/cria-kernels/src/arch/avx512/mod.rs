//! AVX-512 (F, BW, VL; VNNI for the quantized GEMM) kernels (x86-64); they reuse AVX2 helpers
//! from `arch::avx2`.

pub(crate) mod dot_iq;
pub(crate) mod gemm_half;
pub(crate) mod gemm_q;
pub(crate) mod ops;
pub(crate) mod train;
