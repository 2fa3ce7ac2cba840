//! AVX2 + FMA + F16C kernels (x86-64).

/// An `unsafe fn` compiled for AVX2 + FMA + F16C and inlined into its callers of the same
/// features; declared before the modules so each of them can use it.
macro_rules! avx2_fn {
    ($(#[$m:meta])* $vis:vis unsafe fn $name:ident $($rest:tt)*) => {
        $(#[$m])*
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        $vis unsafe fn $name $($rest)*
    };
}

pub mod dot;
pub mod dot_iq;
pub(crate) mod gemm_float;
pub(crate) mod gemm_half;
pub(crate) mod gemm_q;
pub(crate) mod lora;
pub(crate) mod ops;
pub(crate) mod train;
