//! The scalar kernels: the twins every SIMD kernel is tested against, and what runs on a CPU
//! without a SIMD ISA.

pub mod dot;
pub mod dot_iq;
pub mod gemm_q;
pub(crate) mod ops;
pub(crate) mod train;
