//! aarch64 NEON kernels (same contract as `avx2`). Types without one use the scalar kernel.
//!
//! The 32-element kernels reproduce the scalar spec bit for bit: the spec's eight f32 lanes
//! (lane j = exact integer dot of elements 4j..4j+4 of each block, accumulated with one fused
//! multiply-add per block) map onto two float32x4 registers, the integer sums are exact, and
//! `vfmaq_f32` rounds once like `f32::mul_add`, so the order of every rounding step is the spec's.
//! The integer dot uses only baseline NEON (widening multiply + pairwise adds), so it runs on
//! every ARMv8-A core; an `sdot` variant (dotprod extension) is left for later.

use super::layout::*;
use super::scalar::f16_at;
use super::{check_dot_args, geom, FromFloat, VecDot};
use cria_core::DType;
use std::arch::aarch64::*;

/// The NEON dot product for weights of `dtype`, if there is one.
pub fn vec_dot(dtype: DType) -> Option<VecDot> {
    Some(match dtype {
        DType::Q4_0 => vec_dot_q4_0,
        DType::Q4_1 => vec_dot_q4_1,
        DType::Q8_0 => vec_dot_q8_0,
        _ => return None,
    })
}

/// The NEON converter of f32 activations into `vec_dot_type`, if there is one (none yet: the
/// scalar converters run once per activation row, a small share of a matmul).
pub fn from_float(_vec_dot_type: DType) -> Option<FromFloat> {
    None
}

/// Exact dots of 4-element groups: lane i = sum of v[4i..4i+4] * y[4i..4i+4] (|sum| <= 4*128*128,
/// far within i32; each i8*i8 product fits i16 and pairs of them sum within i32 after vpaddl).
#[inline(always)]
fn isum4(v: int8x16_t, y: int8x16_t) -> int32x4_t {
    // SAFETY: NEON is part of the aarch64 baseline; these intrinsics only touch registers.
    unsafe {
        let p0 = vmull_s8(vget_low_s8(v), vget_low_s8(y));
        let p1 = vmull_high_s8(v, y);
        vpaddq_s32(vpaddlq_s16(p0), vpaddlq_s16(p1))
    }
}

/// One weight row against one activation row of 32-element blocks. `dec(block)` gives the
/// weight block's d, its 32 values as two i8x16 (elements 0..16, 16..32) and its min m (Q4_1).
#[inline(always)]
fn dot32(
    n: usize,
    w: &[u8],
    a: &[u8],
    wb: usize,
    q81: bool,
    dec: impl Fn(&[u8]) -> (f32, int8x16_t, int8x16_t, f32),
) -> f32 {
    let ab = if q81 { Q8_1_BYTES } else { Q8_0_BYTES };
    let off = if q81 { 4 } else { 2 };
    let mut summs = 0f32;
    // SAFETY: NEON is baseline on aarch64; the loads read 16 bytes at offsets off and off+16 of
    // an `ab`-byte activation block that `chunks_exact` guarantees is whole (off + 32 <= ab).
    unsafe {
        let (mut lo, mut hi) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
        for (x, y) in w.chunks_exact(wb).zip(a.chunks_exact(ab)).take(n / QK) {
            let (dx, v0, v1, m) = dec(x);
            let dy = f16_at(y, 0);
            let y0 = vld1q_s8(y.as_ptr().add(off) as *const i8);
            let y1 = vld1q_s8(y.as_ptr().add(off + 16) as *const i8);
            let d = vdupq_n_f32(dx * dy);
            lo = vfmaq_f32(lo, vcvtq_f32_s32(isum4(v0, y0)), d);
            hi = vfmaq_f32(hi, vcvtq_f32_s32(isum4(v1, y1)), d);
            if q81 {
                summs = m.mul_add(f16_at(y, 2), summs);
            }
        }
        // The spec's horizontal sum: (hi + lo) lane-wise, then (0 + 2) + (1 + 3).
        let r = vaddq_f32(hi, lo);
        let s = (vgetq_lane_f32(r, 0) + vgetq_lane_f32(r, 2))
            + (vgetq_lane_f32(r, 1) + vgetq_lane_f32(r, 3));
        if q81 {
            s + summs
        } else {
            s
        }
    }
}

/// Low and high nibbles of 16 bytes as element 0..16 and 16..32 values, minus `bias`.
#[inline(always)]
fn nibbles(qs: &[u8], bias: i8) -> (int8x16_t, int8x16_t) {
    assert!(qs.len() >= 16);
    // SAFETY: NEON baseline; 16 bytes are readable (asserted above).
    unsafe {
        let q = vld1q_u8(qs.as_ptr());
        let b = vdupq_n_s8(bias);
        let l = vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0xF)));
        let h = vreinterpretq_s8_u8(vshrq_n_u8::<4>(q));
        (vsubq_s8(l, b), vsubq_s8(h, b))
    }
}

macro_rules! rows_cols {
    ($name:ident, $g:ident, $wb:expr, $q81:expr, $dec:expr) => {
        pub fn $name(n: usize, w: &[u8], rows: usize, a: &[u8], stride: usize, out: &mut [f32]) {
            let (rb, cols) = check_dot_args(geom::$g, n, w, rows, a, stride, out.len());
            for r in 0..rows {
                for c in 0..cols {
                    out[r * cols + c] = dot32(n, &w[r * rb..], &a[c * stride..], $wb, $q81, $dec);
                }
            }
        }
    };
}

rows_cols!(vec_dot_q4_0, Q4_0, Q4_0_BYTES, false, |x: &[u8]| {
    let (l, h) = nibbles(&x[2..18], 8);
    (f16_at(x, 0), l, h, 0.0)
});
rows_cols!(vec_dot_q4_1, Q4_1, Q4_1_BYTES, true, |x: &[u8]| {
    let (l, h) = nibbles(&x[4..20], 0);
    (f16_at(x, 0), l, h, f16_at(x, 2))
});
rows_cols!(vec_dot_q8_0, Q8_0, Q8_0_BYTES, false, |x: &[u8]| {
    let q = &x[2..34];
    // SAFETY: NEON baseline; q holds 32 bytes.
    let (l, h) = unsafe {
        (
            vld1q_s8(q.as_ptr() as *const i8),
            vld1q_s8(q.as_ptr().add(16) as *const i8),
        )
    };
    (f16_at(x, 0), l, h, 0.0)
});
