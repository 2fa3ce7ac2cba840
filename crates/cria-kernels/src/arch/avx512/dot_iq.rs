//! The IQ grid types' row dots on AVX-512 CPUs: the AVX2 kernels of `arch::avx2::dot_iq`,
//! with AVX512-VNNI's `vpdpwssd` for `madd` + `add`, inlined into row loops compiled with
//! AVX-512 F/BW/VL/VNNI and BMI2 enabled (so the code generator also has 32 vector registers;
//! IQ1_M takes its indices with `pdep` / `pext`). The
//! integer arithmetic is the same and the f32 steps are the same in the same order, so the
//! results stay bitwise equal to the scalar twins' (tests/iq.rs checks each ISA).

use crate::arch::avx2::dot_iq::{
    dot_iq1_m_v, dot_iq1_s_v, dot_iq_grid_v, IQ2_S, IQ2_XS, IQ2_XXS, IQ3_S, IQ3_XXS,
};
use crate::dot::layout::QK_K;
use crate::dot::{check_dot_args, geom};

/// A `VecDot` for geometry `$g` over kernel `$k::<[$kind,] R>` (R = 1..=4 columns); the row
/// loop carries the AVX-512 target features, and the kernel inlines into it.
macro_rules! iq_entry512 {
    ($name:ident, $g:ident, $k:ident $(::<$kind:ident>)?) => {
        pub fn $name(n: usize, w: &[u8], rows: usize, a: &[u8], stride: usize, out: &mut [f32]) {
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c,bmi2,avx512f,avx512bw,avx512vl,avx512vnni")]
            unsafe fn rows_loop<const R: usize>(nb: usize, w: *const u8, rb: usize, rows: usize, a: *const u8, stride: usize, o: *mut f32) {
                for r in 0..rows {
                    $k::<$($kind,)? R>(nb, w.add(r * rb), a, stride, o.add(r * R));
                }
            }
            let (rb, cols) = check_dot_args(geom::$g, n, w, rows, a, stride, out.len());
            let (nb, w, a, o) = (n / QK_K, w.as_ptr(), a.as_ptr(), out.as_mut_ptr());
            // SAFETY: these entries are only handed out for Isa::Avx512, which `kernel` checks
            // is available (AVX2/FMA/F16C and AVX-512 F/BW/VL/VNNI), and only where BMI2 is too, and check_dot_args proved
            // every block the kernel reads lies inside `w` and `a` and every output inside `out`.
            unsafe {
                match cols {
                    1 => rows_loop::<1>(nb, w, rb, rows, a, stride, o),
                    2 => rows_loop::<2>(nb, w, rb, rows, a, stride, o),
                    3 => rows_loop::<3>(nb, w, rb, rows, a, stride, o),
                    4 => rows_loop::<4>(nb, w, rb, rows, a, stride, o),
                    _ => {} // rows == 0
                }
            }
        }
    };
}

// The VNNI instances of the kernels.
#[inline(always)]
unsafe fn grid<const K: u8, const R: usize>(
    nb: usize,
    w: *const u8,
    a: *const u8,
    s: usize,
    o: *mut f32,
) {
    dot_iq_grid_v::<K, true, R>(nb, w, a, s, o)
}
#[inline(always)]
unsafe fn iq1_s<const R: usize>(nb: usize, w: *const u8, a: *const u8, s: usize, o: *mut f32) {
    dot_iq1_s_v::<true, R>(nb, w, a, s, o)
}
#[inline(always)]
unsafe fn iq1_m<const R: usize>(nb: usize, w: *const u8, a: *const u8, s: usize, o: *mut f32) {
    dot_iq1_m_v::<true, R>(nb, w, a, s, o)
}

iq_entry512!(vec_dot_iq2_xxs, IQ2_XXS, grid::<IQ2_XXS>);
iq_entry512!(vec_dot_iq2_xs, IQ2_XS, grid::<IQ2_XS>);
iq_entry512!(vec_dot_iq2_s, IQ2_S, grid::<IQ2_S>);
iq_entry512!(vec_dot_iq3_xxs, IQ3_XXS, grid::<IQ3_XXS>);
iq_entry512!(vec_dot_iq3_s, IQ3_S, grid::<IQ3_S>);
iq_entry512!(vec_dot_iq1_s, IQ1_S, iq1_s);
iq_entry512!(vec_dot_iq1_m, IQ1_M, iq1_m);
