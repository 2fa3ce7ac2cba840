//! aarch64 NEON kernels for every quantized type (same contract as `avx2`), in two builds: one on
//! baseline NEON (every ARMv8-A core: widening multiplies and pairwise adds) and one on the
//! dot-product extension (`sdot`: Cortex-A55/A76 and later, Apple M1 and later, Graviton 2 and
//! later), chosen by `Isa::Neon` / `Isa::NeonDot`; and F16/BF16 weights widened with `fcvtl` /
//! a shift (the scalar kernel's bit tricks vectorise, at several times the instructions). F32
//! weights use the scalar kernel, which the compiler vectorises as it is.
//!
//! Every kernel here gives the scalar spec's bits, not just its value:
//! - the 32-element types: the spec's eight f32 lanes (lane j = exact integer dot of elements
//!   4j..4j+4 of each block, accumulated with one fused multiply-add per block) map onto two
//!   float32x4 registers; `vfmaq_f32` rounds once like `f32::mul_add`, and the horizontal sum
//!   follows the spec's tree;
//! - the 256-element types: the integer sum of a super-block is exact whatever the order, and the
//!   float term of each block is the spec's expression, evaluated in the spec's order;
//! - F16/BF16: the spec's 16 lanes (element 16i + l into lane l, a multiply then an add, each
//!   rounded) are four float32x4 registers, reduced in f64 in lane order like the spec.
//!
//! Both builds produce the same i32 lanes (sums of 4 consecutive products), so they agree bit for
//! bit with each other too. A weight block is decoded once per call and dotted against every
//! activation row (column) of the call, as the x86 kernels do for prompts.
//!
//! The `sdot` instruction is written as inline assembly: its intrinsic (`vdotq_s32`) is not yet
//! stable in Rust. It is only emitted inside functions compiled with the `dotprod` feature, which
//! are handed out only after the CPU reported the feature (`Isa::NeonDot.available()`).

use crate::arch::scalar::dot::{f16_to_f32, k4_scales_mins, q3k_scales};
use crate::dot::layout::*;
use crate::dot::{check_dot_args, geom, FromFloat, Geometry, VecDot};
use cria_core::DType;
use std::arch::aarch64::*;

/// The NEON dot product for weights of `dtype` (`dotprod`: the `sdot` build), if there is one.
pub fn vec_dot(dtype: DType, dotprod: bool) -> Option<VecDot> {
    macro_rules! table {
        ($($t:ident => $base:ident, $dot:ident;)*) => {
            match dtype {
                $(DType::$t => if dotprod { $dot } else { $base },)*
                _ => return None,
            }
        };
    }
    Some(table! {
        F16 => f16, f16;
        BF16 => bf16, bf16;
        Q4_0 => q4_0, q4_0_dot;
        Q4_1 => q4_1, q4_1_dot;
        Q5_0 => q5_0, q5_0_dot;
        Q5_1 => q5_1, q5_1_dot;
        Q8_0 => q8_0, q8_0_dot;
        IQ4_NL => iq4_nl, iq4_nl_dot;
        Q2_K => q2_k, q2_k_dot;
        Q3_K => q3_k, q3_k_dot;
        Q4_K => q4_k, q4_k_dot;
        Q5_K => q5_k, q5_k_dot;
        Q6_K => q6_k, q6_k_dot;
        IQ4_XS => iq4_xs, iq4_xs_dot;
    })
}

/// The NEON converter of f32 activations into `vec_dot_type`, if there is one (none yet: the
/// scalar converters run once per activation row, a small share of a matmul).
pub fn from_float(_vec_dot_type: DType) -> Option<FromFloat> {
    None
}

// ---------------------------------------------------------------------------------------------
// The integer dot, in two builds.

/// `acc + d`, where lane i of d is the exact dot of elements 4i..4i+4 of `a` and `b`
/// (|lane| <= 4 * 128 * 128, far within i32).
trait Idot {
    /// # Safety
    /// `Sdot` needs the dotprod extension (see the module doc); `Base` needs nothing.
    unsafe fn dot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t;
}

/// Baseline NEON: widening multiplies (each i8*i8 product fits i16), then pairwise adds.
struct Base;
impl Idot for Base {
    #[inline(always)]
    unsafe fn dot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        // SAFETY: NEON is part of the aarch64 baseline; these intrinsics only touch registers.
        unsafe {
            let p0 = vmull_s8(vget_low_s8(a), vget_low_s8(b));
            let p1 = vmull_high_s8(a, b);
            vaddq_s32(acc, vpaddq_s32(vpaddlq_s16(p0), vpaddlq_s16(p1)))
        }
    }
}

/// The dot-product extension: one `sdot` does the 16 multiplies and the adds.
struct Sdot;
impl Idot for Sdot {
    #[inline(always)]
    unsafe fn dot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        // SAFETY: register-only instruction; the caller guarantees the CPU has dotprod (this is
        // only reached from `#[target_feature(enable = "dotprod")]` functions handed out for
        // Isa::NeonDot, which is available only where the CPU reports the feature).
        unsafe {
            std::arch::asm!(
                "sdot {0:v}.4s, {1:v}.16b, {2:v}.16b",
                inout(vreg) acc,
                in(vreg) a,
                in(vreg) b,
                options(pure, nomem, nostack, preserves_flags)
            );
        }
        acc
    }
}

/// The f16 at `p` (little-endian, any alignment) as f32.
///
/// # Safety
/// `p` must point at 2 readable bytes.
#[inline(always)]
unsafe fn f16_ptr(p: *const u8) -> f32 {
    // SAFETY: the caller guarantees 2 readable bytes.
    f16_to_f32(u16::from_le_bytes(unsafe {
        p.cast::<[u8; 2]>().read_unaligned()
    }))
}

/// Dispatches a `vec_dot` call to `$run::<$d, $t, C>` for its column count C (1..=4).
macro_rules! by_cols {
    ($run:ident, $d:ty, $t:ty, $n:expr, $w:expr, $rows:expr, $a:expr, $stride:expr, $out:expr) => {{
        let (rb, cols) = check_dot_args(<$t>::G, $n, $w, $rows, $a, $stride, $out.len());
        let args = (
            $n / <$t>::G.block,
            $w.as_ptr(),
            rb,
            $rows,
            $a.as_ptr(),
            $stride,
        );
        // SAFETY: check_dot_args verified that `w` holds `rows` rows of `rb` bytes (n / block
        // whole blocks), that `a` holds `cols` activation rows `stride` bytes apart, and that
        // `out` holds rows * cols results; the kernels read and write nothing else.
        unsafe {
            match cols {
                1 => $run::<$d, $t, 1>(args, $out),
                2 => $run::<$d, $t, 2>(args, $out),
                3 => $run::<$d, $t, 3>(args, $out),
                4 => $run::<$d, $t, 4>(args, $out),
                _ => {} // rows == 0: nothing to do
            }
        }
    }};
}

/// (blocks per row, weights, row bytes, rows, activations, activation row stride).
type Args = (usize, *const u8, usize, usize, *const u8, usize);

/// The two builds of each type's kernel: `$base` on baseline NEON, `$dot` with `sdot`.
macro_rules! builds {
    ($($base:ident, $dot:ident, $inner:ident: $run:ident::<$t:ty>;)*) => {$(
        fn $base(n: usize, w: &[u8], rows: usize, a: &[u8], stride: usize, out: &mut [f32]) {
            by_cols!($run, Base, $t, n, w, rows, a, stride, out)
        }
        #[target_feature(enable = "dotprod")]
        unsafe fn $inner(n: usize, w: &[u8], rows: usize, a: &[u8], stride: usize, out: &mut [f32]) {
            by_cols!($run, Sdot, $t, n, w, rows, a, stride, out)
        }
        fn $dot(n: usize, w: &[u8], rows: usize, a: &[u8], stride: usize, out: &mut [f32]) {
            // SAFETY: handed out only for Isa::NeonDot, available only where the CPU has
            // dotprod (see `vec_dot` and `Isa::available`).
            unsafe { $inner(n, w, rows, a, stride, out) }
        }
    )*};
}

builds! {
    q4_0, q4_0_dot, q4_0_sdot: rows32::<Nib<false, false>>;
    q4_1, q4_1_dot, q4_1_sdot: rows32::<Nib<true, false>>;
    q5_0, q5_0_dot, q5_0_sdot: rows32::<Nib<false, true>>;
    q5_1, q5_1_dot, q5_1_sdot: rows32::<Nib<true, true>>;
    q8_0, q8_0_dot, q8_0_sdot: rows32::<Q8_0>;
    iq4_nl, iq4_nl_dot, iq4_nl_sdot: rows32::<Iq4Nl>;
    q2_k, q2_k_dot, q2_k_sdot: rows_k::<Q2K>;
    q3_k, q3_k_dot, q3_k_sdot: rows_k::<Q3K>;
    q4_k, q4_k_dot, q4_k_sdot: rows_k::<K4<false>>;
    q5_k, q5_k_dot, q5_k_sdot: rows_k::<K4<true>>;
    q6_k, q6_k_dot, q6_k_sdot: rows_k::<Q6K>;
    iq4_xs, iq4_xs_dot, iq4_xs_sdot: rows_k::<Iq4Xs>;
}

// ---------------------------------------------------------------------------------------------
// F16 / BF16 weights against activations of the same type.

fn f16(n: usize, w: &[u8], rows: usize, a: &[u8], stride: usize, out: &mut [f32]) {
    half_rows::<false>(geom::F16, n, w, rows, a, stride, out)
}

fn bf16(n: usize, w: &[u8], rows: usize, a: &[u8], stride: usize, out: &mut [f32]) {
    half_rows::<true>(geom::BF16, n, w, rows, a, stride, out)
}

fn half_rows<const BF: bool>(
    g: Geometry,
    n: usize,
    w: &[u8],
    rows: usize,
    a: &[u8],
    stride: usize,
    out: &mut [f32],
) {
    let (rb, cols) = check_dot_args(g, n, w, rows, a, stride, out.len());
    for r in 0..rows {
        for c in 0..cols {
            // SAFETY: check_dot_args verified rows * rb weight bytes and cols activation rows of
            // 2n bytes, `stride` apart; half_dot reads 2n bytes of each.
            out[r * cols + c] =
                unsafe { half_dot::<BF>(n, w.as_ptr().add(r * rb), a.as_ptr().add(c * stride)) };
        }
    }
}

/// Four 2-byte values at `p` widened to f32 (exact): F16 by `fcvtl`, BF16 by a 16-bit shift.
///
/// # Safety
/// 8 readable bytes at `p`.
#[inline(always)]
unsafe fn widen4<const BF: bool>(p: *const u8) -> float32x4_t {
    // SAFETY: the caller guarantees the 8 bytes; register-only otherwise.
    unsafe {
        let v = vld1_u8(p);
        if BF {
            vreinterpretq_f32_u32(vshll_n_u16::<16>(vreinterpret_u16_u8(v)))
        } else {
            vcvt_f32_f16(vreinterpret_f16_u8(v))
        }
    }
}

/// The spec's `dot_lanes` on n 2-byte elements at `w` and `a`.
///
/// # Safety
/// 2n readable bytes at `w` and at `a`.
#[inline(always)]
unsafe fn half_dot<const BF: bool>(n: usize, w: *const u8, a: *const u8) -> f32 {
    // SAFETY: chunk i reads bytes 32i..32i+32 < 2n of each row; the tail reads the rest.
    unsafe {
        let mut acc = [vdupq_n_f32(0.0); 4];
        let full = n / 16;
        for i in 0..full {
            for (q, acc) in acc.iter_mut().enumerate() {
                let o = 32 * i + 8 * q;
                *acc = vaddq_f32(
                    *acc,
                    vmulq_f32(widen4::<BF>(w.add(o)), widen4::<BF>(a.add(o))),
                );
            }
        }
        let wide = |p: *const u8| {
            let b = u16::from_le_bytes(p.cast::<[u8; 2]>().read_unaligned());
            if BF {
                f32::from_bits((b as u32) << 16)
            } else {
                f16_to_f32(b)
            }
        };
        let mut tail = 0f32;
        for e in 16 * full..n {
            tail += wide(w.add(2 * e)) * wide(a.add(2 * e));
        }
        let mut lanes = [0f32; 16];
        for (q, acc) in acc.iter().enumerate() {
            vst1q_f32(lanes.as_mut_ptr().add(4 * q), *acc);
        }
        (lanes.iter().map(|&v| v as f64).sum::<f64>() + tail as f64) as f32
    }
}

// ---------------------------------------------------------------------------------------------
// 32-element blocks against Q8_0 / Q8_1.

trait Block32 {
    const G: Geometry;
    /// Activations are Q8_1 (the weight has a min: its term is m * s).
    const Q81: bool;
    /// The block's d, its values of elements 0..16 and 16..32, and its min m (0 without one).
    ///
    /// # Safety
    /// `x` must point at one whole block (`G.w_bytes` readable bytes).
    unsafe fn dec(x: *const u8) -> (f32, int8x16_t, int8x16_t, f32);
}

/// One weight row against C activation rows: the spec's lanes (see the module doc).
///
/// # Safety
/// See `by_cols`: the arguments describe readable memory as checked by `check_dot_args`.
#[inline(always)]
unsafe fn rows32<D: Idot, T: Block32, const C: usize>(args: Args, out: &mut [f32]) {
    let (nb, w, rb, rows, a, stride) = args;
    let (wb, ab) = (T::G.w_bytes, T::G.a_bytes);
    let off = if T::Q81 { 4 } else { 2 };
    // SAFETY: block b of row r lies at w + r*rb + b*wb, inside the rows*rb checked bytes; the
    // activation block b of column c at a + c*stride + b*ab, inside the checked activations
    // (its quants are the 32 bytes at `off`, within ab); register-only intrinsics otherwise.
    unsafe {
        for r in 0..rows {
            let x0 = w.add(r * rb);
            let mut lo = [vdupq_n_f32(0.0); C];
            let mut hi = [vdupq_n_f32(0.0); C];
            let mut summs = [0f32; C];
            for b in 0..nb {
                let (dx, v0, v1, m) = T::dec(x0.add(b * wb));
                for c in 0..C {
                    let y = a.add(c * stride + b * ab);
                    let dy = f16_ptr(y);
                    let y0 = vld1q_s8(y.add(off).cast());
                    let y1 = vld1q_s8(y.add(off + 16).cast());
                    let d = vdupq_n_f32(dx * dy);
                    let z = vdupq_n_s32(0);
                    lo[c] = vfmaq_f32(lo[c], vcvtq_f32_s32(D::dot(z, v0, y0)), d);
                    hi[c] = vfmaq_f32(hi[c], vcvtq_f32_s32(D::dot(z, v1, y1)), d);
                    if T::Q81 {
                        summs[c] = m.mul_add(f16_ptr(y.add(2)), summs[c]);
                    }
                }
            }
            for c in 0..C {
                // The spec's horizontal sum: (hi + lo) lane-wise, then (0 + 2) + (1 + 3).
                let s = vaddq_f32(hi[c], lo[c]);
                let s = (vgetq_lane_f32::<0>(s) + vgetq_lane_f32::<2>(s))
                    + (vgetq_lane_f32::<1>(s) + vgetq_lane_f32::<3>(s));
                out[r * C + c] = if T::Q81 { s + summs[c] } else { s };
            }
        }
    }
}

/// Low and high nibbles of the 16 bytes at `q`: the values of elements 0..16 and 16..32.
///
/// # Safety
/// 16 readable bytes at `q`.
#[inline(always)]
unsafe fn nibbles(q: *const u8) -> (uint8x16_t, uint8x16_t) {
    // SAFETY: the caller guarantees 16 readable bytes.
    unsafe {
        let q = vld1q_u8(q);
        (vandq_u8(q, vdupq_n_u8(0xF)), vshrq_n_u8::<4>(q))
    }
}

/// The 5th bits of a Q5_0/Q5_1 block as 16 (or 0) per element: bit j of the u32 at `qh` belongs
/// to element j. Returns elements 0..16 and 16..32.
///
/// # Safety
/// 4 readable bytes at `qh`.
#[inline(always)]
unsafe fn fifth_bits(qh: *const u8) -> (uint8x16_t, uint8x16_t) {
    const BIT: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
    // SAFETY: the caller guarantees 4 readable bytes; register-only intrinsics otherwise.
    unsafe {
        let h = qh.cast::<[u8; 4]>().read_unaligned();
        let bit = vld1q_u8(BIT.as_ptr());
        let sixteen = vdupq_n_u8(16);
        let spread = |b0: u8, b1: u8| vcombine_u8(vdup_n_u8(b0), vdup_n_u8(b1));
        (
            vandq_u8(vtstq_u8(spread(h[0], h[1]), bit), sixteen),
            vandq_u8(vtstq_u8(spread(h[2], h[3]), bit), sixteen),
        )
    }
}

/// Reinterprets unsigned values (all < 128) as i8, minus `bias`.
#[inline(always)]
fn signed(v: uint8x16_t, bias: i8) -> int8x16_t {
    // SAFETY: NEON baseline, register-only.
    unsafe { vsubq_s8(vreinterpretq_s8_u8(v), vdupq_n_s8(bias)) }
}

/// Q4_0 (`Nib<false, false>`), Q4_1 (MIN: a per-block min m at 2), Q5_0 (HB: the 5th bits as
/// a u32 after the scales), Q5_1 (both): d at 0, then m, qh, and the 16 nibble bytes; values are
/// the nibble (plus 16 for a set 5th bit), minus 8 (Q4_0) or 16 (Q5_0) without a min.
struct Nib<const MIN: bool, const HB: bool>;
impl<const MIN: bool, const HB: bool> Block32 for Nib<MIN, HB> {
    const G: Geometry = match (MIN, HB) {
        (false, false) => geom::Q4_0,
        (true, false) => geom::Q4_1,
        (false, true) => geom::Q5_0,
        (true, true) => geom::Q5_1,
    };
    const Q81: bool = MIN;
    #[inline(always)]
    unsafe fn dec(x: *const u8) -> (f32, int8x16_t, int8x16_t, f32) {
        let qh = 2 + 2 * MIN as usize;
        let qs = qh + 4 * HB as usize;
        let bias = match (MIN, HB) {
            (true, _) => 0,
            (false, false) => 8,
            (false, true) => 16,
        };
        // SAFETY: d at 0, m at 2 (MIN), qh at qh..qh+4 (HB) and qs at qs..qs+16 lie inside the
        // caller's whole block (G.w_bytes = qs + 16).
        unsafe {
            let (mut l, mut h) = nibbles(x.add(qs));
            if HB {
                let (fl, fh) = fifth_bits(x.add(qh));
                (l, h) = (vorrq_u8(l, fl), vorrq_u8(h, fh));
            }
            let m = if MIN { f16_ptr(x.add(2)) } else { 0.0 };
            (f16_ptr(x), signed(l, bias), signed(h, bias), m)
        }
    }
}

#[allow(non_camel_case_types)]
struct Q8_0;
impl Block32 for Q8_0 {
    const G: Geometry = geom::Q8_0;
    const Q81: bool = false;
    #[inline(always)]
    unsafe fn dec(x: *const u8) -> (f32, int8x16_t, int8x16_t, f32) {
        // SAFETY: d at 0, qs at 2..34 of the caller's whole block.
        unsafe {
            let q = x.add(2).cast::<i8>();
            (f16_ptr(x), vld1q_s8(q), vld1q_s8(q.add(16)), 0.0)
        }
    }
}

/// The 16 IQ4_NL levels, for `vqtbl1q_s8`.
#[inline(always)]
fn iq4_levels() -> int8x16_t {
    // SAFETY: NEON baseline; the table holds 16 bytes.
    unsafe { vld1q_s8(KVALUES_IQ4NL.as_ptr()) }
}

struct Iq4Nl;
impl Block32 for Iq4Nl {
    const G: Geometry = geom::IQ4_NL;
    const Q81: bool = false;
    #[inline(always)]
    unsafe fn dec(x: *const u8) -> (f32, int8x16_t, int8x16_t, f32) {
        // SAFETY: d at 0, qs at 2..18 of the caller's whole block; table lookups of indices < 16.
        unsafe {
            let (l, h) = nibbles(x.add(2));
            let kv = iq4_levels();
            (f16_ptr(x), vqtbl1q_s8(kv, l), vqtbl1q_s8(kv, h), 0.0)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 256-element super-blocks against Q8_K: 16 groups of 16 elements, one integer scale each.

trait BlockK {
    const G: Geometry;
    /// The scales of groups 4i..4i+4 in vector i, and the mins of the 16 groups (0 for types
    /// without mins), decoded once per block for every column.
    ///
    /// # Safety
    /// `x` must point at one whole block (`G.w_bytes` readable bytes), as for all three.
    unsafe fn scales(x: *const u8) -> ([int32x4_t; 4], [u8; 16]);
    /// The values of elements 128h..128h+128 (groups 8h..8h+8).
    unsafe fn half(x: *const u8, h: usize) -> [int8x16_t; 8];
    /// The block's float term against activation block `y`, given the exact scaled integer sum
    /// and the block's `mins` (from `scales`): the spec's expression in the spec's order (the
    /// mins' term included).
    unsafe fn term(x: *const u8, y: *const u8, isum: i32, mins: &[u8; 16]) -> f32;
}

/// One weight row against C activation rows: per block, the exact integer sum, then the spec's
/// float term added to a running f32 sum (the spec's order).
///
/// # Safety
/// See `by_cols`: the arguments describe readable memory as checked by `check_dot_args`.
#[inline(always)]
unsafe fn rows_k<D: Idot, T: BlockK, const C: usize>(args: Args, out: &mut [f32]) {
    let (nb, w, rb, rows, a, stride) = args;
    let wb = T::G.w_bytes;
    // SAFETY: block b of row r lies at w + r*rb + b*wb, inside the checked weights; activation
    // block b of column c at a + c*stride + b*Q8_K_BYTES, inside the checked activations (its
    // quants are the 256 bytes at 4); register-only intrinsics otherwise.
    unsafe {
        for r in 0..rows {
            let x0 = w.add(r * rb);
            let mut sumf = [0f32; C];
            for b in 0..nb {
                let x = x0.add(b * wb);
                let (sc, mins) = T::scales(x);
                let mut acc = [vdupq_n_s32(0); C];
                for h in 0..2 {
                    let v = T::half(x, h);
                    for (c, acc) in acc.iter_mut().enumerate() {
                        let y = a
                            .add(c * stride + b * Q8_K_BYTES + 4 + 128 * h)
                            .cast::<i8>();
                        let z = vdupq_n_s32(0);
                        // (A loop, not array::from_fn: a closure would not inherit the
                        // caller's dotprod feature, and `sdot` would not assemble.)
                        let mut p = [z; 8];
                        for (g, p) in p.iter_mut().enumerate() {
                            *p = D::dot(z, v[g], vld1q_s8(y.add(16 * g)));
                        }
                        // Lane g of each: the whole sum of group g (of four).
                        let g0 = vpaddq_s32(vpaddq_s32(p[0], p[1]), vpaddq_s32(p[2], p[3]));
                        let g1 = vpaddq_s32(vpaddq_s32(p[4], p[5]), vpaddq_s32(p[6], p[7]));
                        *acc = vmlaq_s32(*acc, g0, sc[2 * h]);
                        *acc = vmlaq_s32(*acc, g1, sc[2 * h + 1]);
                    }
                }
                for (c, s) in sumf.iter_mut().enumerate() {
                    let y = a.add(c * stride + b * Q8_K_BYTES);
                    *s += T::term(x, y, vaddvq_s32(acc[c]), &mins);
                }
            }
            out[r * C..r * C + C].copy_from_slice(&sumf);
        }
    }
}

/// Four i32 vectors from 16 scales.
#[inline(always)]
fn scale_vecs(s: [i32; 16]) -> [int32x4_t; 4] {
    // SAFETY: NEON baseline; each load reads 4 of the array's 16 values.
    std::array::from_fn(|i| unsafe { vld1q_s32(s.as_ptr().add(4 * i)) })
}

/// Q8_K block at `y`: its d.
///
/// # Safety
/// `y` points at a whole Q8_K block.
#[inline(always)]
unsafe fn q8k_d(y: *const u8) -> f32 {
    // SAFETY: d is the f32 at 0 of the caller's whole block.
    f32::from_le_bytes(unsafe { y.cast::<[u8; 4]>().read_unaligned() })
}

/// sum over the 16 groups g of bsums[g] * m[g] (exact): the mins' integer term.
///
/// # Safety
/// `y` points at a whole Q8_K block (bsums at 260).
#[inline(always)]
unsafe fn bsums_dot(y: *const u8, m: [u8; 16]) -> i32 {
    // SAFETY: bsums are the 16 i16 at 260..292 of the caller's block; |bsum| <= 16 * 128 and
    // m < 64, so products and their sum fit i32.
    unsafe {
        let b0 = vld1q_s16(y.add(260).cast());
        let b1 = vld1q_s16(y.add(276).cast());
        let m = vld1q_u8(m.as_ptr());
        let m0 = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(m)));
        let m1 = vreinterpretq_s16_u16(vmovl_high_u8(m));
        let s = vaddq_s32(
            vaddq_s32(
                vmull_s16(vget_low_s16(b0), vget_low_s16(m0)),
                vmull_high_s16(b0, m0),
            ),
            vaddq_s32(
                vmull_s16(vget_low_s16(b1), vget_low_s16(m1)),
                vmull_high_s16(b1, m1),
            ),
        );
        vaddvq_s32(s)
    }
}

/// The 2-bit fields at bit 2j of each byte of `q`, for j = 0..4.
#[inline(always)]
fn crumbs(q: uint8x16_t) -> [uint8x16_t; 4] {
    // SAFETY: NEON baseline, register-only.
    unsafe {
        let three = vdupq_n_u8(3);
        [
            vandq_u8(q, three),
            vandq_u8(vshrq_n_u8::<2>(q), three),
            vandq_u8(vshrq_n_u8::<4>(q), three),
            vshrq_n_u8::<6>(q),
        ]
    }
}

struct Q2K;
impl BlockK for Q2K {
    const G: Geometry = geom::Q2_K;
    #[inline(always)]
    unsafe fn scales(x: *const u8) -> ([int32x4_t; 4], [u8; 16]) {
        // SAFETY: scales are bytes 0..16 of the caller's block (low nibble: scale, high: min).
        let s = unsafe { x.cast::<[u8; 16]>().read_unaligned() };
        (scale_vecs(s.map(|v| (v & 0xF) as i32)), s.map(|v| v >> 4))
    }
    #[inline(always)]
    unsafe fn half(x: *const u8, h: usize) -> [int8x16_t; 8] {
        // Element 128h + 32j + l: bits 2j..2j+2 of qs[32h + l] (qs at 16).
        // SAFETY: qs[32h..32h+32] lies in bytes 16..80 of the caller's block.
        let (q0, q1) = unsafe { (vld1q_u8(x.add(16 + 32 * h)), vld1q_u8(x.add(32 + 32 * h))) };
        let (c0, c1) = (crumbs(q0), crumbs(q1));
        std::array::from_fn(|g| signed(if g % 2 == 0 { c0[g / 2] } else { c1[g / 2] }, 0))
    }
    #[inline(always)]
    unsafe fn term(x: *const u8, y: *const u8, isum: i32, mins: &[u8; 16]) -> f32 {
        // SAFETY: d at 80, dmin at 82 of the caller's block; y is whole.
        unsafe {
            let summs = bsums_dot(y, *mins);
            let dy = q8k_d(y);
            dy * f16_ptr(x.add(80)) * isum as f32 - dy * f16_ptr(x.add(82)) * summs as f32
        }
    }
}

struct Q3K;
impl BlockK for Q3K {
    const G: Geometry = geom::Q3_K;
    #[inline(always)]
    unsafe fn scales(x: *const u8) -> ([int32x4_t; 4], [u8; 16]) {
        // SAFETY: the 12 scale bytes are 96..108 of the caller's block.
        let s = unsafe { x.add(96).cast::<[u8; 12]>().read_unaligned() };
        let sc = q3k_scales(&s);
        (scale_vecs(std::array::from_fn(|g| sc[g] as i32)), [0; 16])
    }
    #[inline(always)]
    unsafe fn half(x: *const u8, h: usize) -> [int8x16_t; 8] {
        // Element 128h + 32j + l: bits 2j..2j+2 of qs[32h + l] (qs at 32), minus 4 unless bit
        // 4h + j of hmask[l] (hmask at 0).
        // SAFETY: hmask is bytes 0..32, qs[32h..32h+32] lies in 32..96 of the caller's block.
        unsafe {
            let (q0, q1) = (vld1q_u8(x.add(32 + 32 * h)), vld1q_u8(x.add(48 + 32 * h)));
            let (m0, m1) = (vld1q_u8(x), vld1q_u8(x.add(16)));
            let (c0, c1) = (crumbs(q0), crumbs(q1));
            let four = vdupq_n_u8(4);
            std::array::from_fn(|g| {
                let j = g / 2;
                let (c, m) = if g % 2 == 0 { (c0[j], m0) } else { (c1[j], m1) };
                let bit = vdupq_n_u8(1 << (4 * h + j));
                let minus = vbicq_u8(four, vtstq_u8(m, bit));
                vsubq_s8(vreinterpretq_s8_u8(c), vreinterpretq_s8_u8(minus))
            })
        }
    }
    #[inline(always)]
    unsafe fn term(x: *const u8, y: *const u8, isum: i32, _mins: &[u8; 16]) -> f32 {
        // SAFETY: d at 108 of the caller's block; y is whole.
        unsafe { f16_ptr(x.add(108)) * q8k_d(y) * isum as f32 }
    }
}

/// Q4_K/Q5_K: the group scales (sub-block j = groups 2j, 2j+1) and the mins per group.
///
/// # Safety
/// `x` points at a whole Q4_K/Q5_K block.
#[inline(always)]
unsafe fn k4_scales(x: *const u8) -> ([int32x4_t; 4], [u8; 16]) {
    // SAFETY: the 12 scale bytes are 4..16 of the caller's block.
    let s = unsafe { x.add(4).cast::<[u8; 12]>().read_unaligned() };
    let (sc, mn) = k4_scales_mins(&s);
    (
        scale_vecs(std::array::from_fn(|g| sc[g / 2] as i32)),
        std::array::from_fn(|g| mn[g / 2]),
    )
}

/// Q4_K/Q5_K values of half h before the 5th bit: 64-element chunk j = 2h, 2h+1 is the low
/// nibbles of qs[32j..32j+32] (groups 4j, 4j+1) then their high nibbles (groups 4j+2, 4j+3).
///
/// # Safety
/// 64 readable bytes at `qs + 64h`.
#[inline(always)]
unsafe fn k4_nibbles(qs: *const u8, h: usize) -> [uint8x16_t; 8] {
    // SAFETY: the caller guarantees the 64 bytes.
    unsafe {
        let n: [(uint8x16_t, uint8x16_t); 4] =
            std::array::from_fn(|i| nibbles(qs.add(64 * h + 16 * i)));
        [
            n[0].0, n[1].0, n[0].1, n[1].1, n[2].0, n[3].0, n[2].1, n[3].1,
        ]
    }
}

/// Q4_K (`K4<false>`: d, dmin, 12 scale bytes, qs at 16) and Q5_K (`K4<true>`: qh[32] at 16,
/// qs at 48; plus 16 where bit 2j (low nibbles) / 2j+1 (high) of qh[l] is set, for 64-element
/// chunk j and lane l of 32).
struct K4<const HB: bool>;
impl<const HB: bool> BlockK for K4<HB> {
    const G: Geometry = if HB { geom::Q5_K } else { geom::Q4_K };
    #[inline(always)]
    unsafe fn scales(x: *const u8) -> ([int32x4_t; 4], [u8; 16]) {
        // SAFETY: the caller's contract.
        unsafe { k4_scales(x) }
    }
    #[inline(always)]
    unsafe fn half(x: *const u8, h: usize) -> [int8x16_t; 8] {
        // SAFETY: Q4_K: qs is bytes 16..144; Q5_K: qh 16..48, qs 48..176 of the caller's block.
        unsafe {
            let n = k4_nibbles(x.add(if HB { 48 } else { 16 }), h);
            if !HB {
                return n.map(|v| signed(v, 0));
            }
            let (h0, h1) = (vld1q_u8(x.add(16)), vld1q_u8(x.add(32)));
            let sixteen = vdupq_n_u8(16);
            std::array::from_fn(|g| {
                // Group g of the half: chunk 2h + g/4, high nibbles for g%4 >= 2, lanes
                // 0..16 (qh[0..16]) for even g, 16..32 for odd.
                let bit = 2 * (2 * h + g / 4) + (g % 4) / 2;
                let qh = if g % 2 == 0 { h0 } else { h1 };
                let five = vandq_u8(vtstq_u8(qh, vdupq_n_u8(1 << bit)), sixteen);
                signed(vorrq_u8(n[g], five), 0)
            })
        }
    }
    #[inline(always)]
    unsafe fn term(x: *const u8, y: *const u8, isum: i32, mins: &[u8; 16]) -> f32 {
        // d * dy * isum - dmin * dy * (sum of bsums times mins).
        // SAFETY: d at 0, dmin at 2 of the caller's block; y is a whole Q8_K block.
        unsafe {
            let summ = bsums_dot(y, *mins);
            let dy = q8k_d(y);
            f16_ptr(x) * dy * isum as f32 - f16_ptr(x.add(2)) * dy * summ as f32
        }
    }
}

struct Q6K;
impl BlockK for Q6K {
    const G: Geometry = geom::Q6_K;
    #[inline(always)]
    unsafe fn scales(x: *const u8) -> ([int32x4_t; 4], [u8; 16]) {
        // SAFETY: the 16 i8 scales are bytes 192..208 of the caller's block.
        let s = unsafe { x.add(192).cast::<[u8; 16]>().read_unaligned() };
        (scale_vecs(s.map(|v| v as i8 as i32)), [0; 16])
    }
    #[inline(always)]
    unsafe fn half(x: *const u8, h: usize) -> [int8x16_t; 8] {
        // Quarter q (0..4) of half h, lane l (0..32): nibble (low for q = 0, 1; high for 2, 3)
        // of ql[64h + 32(q&1) + l] (ql at 0), 2 high bits (2q) of qh[32h + l] (qh at 128),
        // minus 32. Group 2q + l/16.
        // SAFETY: ql[64h..64h+64] lies in 0..128, qh[32h..32h+32] in 128..192 of the block.
        unsafe {
            let ql: [uint8x16_t; 4] = std::array::from_fn(|i| vld1q_u8(x.add(64 * h + 16 * i)));
            let qh = [vld1q_u8(x.add(128 + 32 * h)), vld1q_u8(x.add(144 + 32 * h))];
            let (f, c) = (vdupq_n_u8(0xF), vdupq_n_u8(0x30));
            std::array::from_fn(|g| {
                let (q, half16) = (g / 2, g % 2);
                let l = ql[2 * (q & 1) + half16];
                let low = if q < 2 {
                    vandq_u8(l, f)
                } else {
                    vshrq_n_u8::<4>(l)
                };
                let hb = qh[half16];
                let high = match q {
                    0 => vshlq_n_u8::<4>(hb),
                    1 => vshlq_n_u8::<2>(hb),
                    2 => hb,
                    _ => vshrq_n_u8::<2>(hb),
                };
                signed(vorrq_u8(low, vandq_u8(high, c)), 32)
            })
        }
    }
    #[inline(always)]
    unsafe fn term(x: *const u8, y: *const u8, isum: i32, _mins: &[u8; 16]) -> f32 {
        // SAFETY: d at 208 of the caller's block; y is whole.
        unsafe { f16_ptr(x.add(208)) * q8k_d(y) * isum as f32 }
    }
}

struct Iq4Xs;
impl BlockK for Iq4Xs {
    const G: Geometry = geom::IQ4_XS;
    #[inline(always)]
    unsafe fn scales(x: *const u8) -> ([int32x4_t; 4], [u8; 16]) {
        // SAFETY: scales_h is the u16 at 2, scales_l bytes 4..8 of the caller's block.
        let (sh, sl) = unsafe {
            (
                u16::from_le_bytes(x.add(2).cast::<[u8; 2]>().read_unaligned()) as u32,
                x.add(4).cast::<[u8; 4]>().read_unaligned(),
            )
        };
        let sc = scale_vecs(std::array::from_fn(|g| {
            let ib = g / 2;
            let ls = ((sl[ib / 2] >> (4 * (ib % 2))) & 0xF) as u32 | ((sh >> (2 * ib)) & 3) << 4;
            ls as i32 - 32
        }));
        (sc, [0; 16])
    }
    #[inline(always)]
    unsafe fn half(x: *const u8, h: usize) -> [int8x16_t; 8] {
        // Sub-block ib = 4h..4h+4: the levels of the low nibbles of qs[16ib..16ib+16] (group
        // 2ib), then of their high nibbles (group 2ib+1); qs at 8.
        // SAFETY: qs[64h..64h+64] lies in bytes 8..136 of the caller's block.
        unsafe {
            let kv = iq4_levels();
            let n: [(uint8x16_t, uint8x16_t); 4] =
                std::array::from_fn(|i| nibbles(x.add(8 + 64 * h + 16 * i)));
            std::array::from_fn(|g| {
                let (l, hi) = n[g / 2];
                vqtbl1q_s8(kv, if g % 2 == 0 { l } else { hi })
            })
        }
    }
    #[inline(always)]
    unsafe fn term(x: *const u8, y: *const u8, isum: i32, _mins: &[u8; 16]) -> f32 {
        // SAFETY: d at 0 of the caller's block; y is whole.
        unsafe { f16_ptr(x) * q8k_d(y) * isum as f32 }
    }
}
