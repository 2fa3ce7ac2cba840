//! aarch64 NEON kernels (same contract as `avx2`). Types without one use the scalar kernel.

use super::{FromFloat, VecDot};
use cria_core::DType;

/// The NEON dot product for weights of `dtype`, if there is one.
pub fn vec_dot(_dtype: DType) -> Option<VecDot> {
    None
}

/// The NEON converter of f32 activations into `vec_dot_type`, if there is one.
pub fn from_float(_vec_dot_type: DType) -> Option<FromFloat> {
    None
}
