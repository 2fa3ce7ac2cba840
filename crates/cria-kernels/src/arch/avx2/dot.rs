//! AVX2 + FMA + F16C kernels (x86-64 only). Reached only through `crate::dot::table(Isa::Avx2)`, which
//! exists only after `Isa::Avx2.available()` said yes: that is the invariant that makes calling
//! these `#[target_feature]` functions sound.
//!
//! Every `vec_dot` takes R = 1..=MAX_COLS activation rows at once (`a + r*stride`), so that one
//! decoded weight block is reused from registers for several tokens during prefill. Each column
//! runs exactly the same instruction sequence whatever R is, so a token's result does not depend
//! on how tokens were grouped (tests check this bitwise).
//!
//! Integer products follow ggml's x86 recipes: `maddubs` (u8 x i8 -> i16 pairs) needs one
//! unsigned operand, so signed weights go through the sign trick (|x| and sign(y, x)); no pair can
//! saturate because quantized activations stay in [-127, 127] (see scalar::quantize_*).

#![allow(clippy::missing_safety_doc)]
// Kernels index several per-column arrays (accumulators, sums) with the same column number `r`.
#![allow(clippy::needless_range_loop)]

use crate::dot::layout::*;
use std::arch::x86_64::*;

// ---------------------------------------------------------------------------------------------
// Helpers.

avx2_fn! {
/// One little-endian f16 at `p` to f32 (F16C).
///
/// Inline asm on purpose: however the intrinsics are written (`_mm_cvtsi32_si128`, an insert
/// into `_mm_setzero_si128`), LLVM sees that only lane 0 matters, loads the half with `vpinsrw`
/// into whatever register is handy (often the loop's FMA accumulator), and the merge chains each
/// iteration to the previous one: the 32-block kernels ran 2x slower. `vmovd` from a GPR
/// zero-extends and carries no such dependency.
pub(super) unsafe fn h2f(p: *const u8) -> f32 {
    let bits = std::ptr::read_unaligned(p as *const u16) as u32;
    let v: __m128;
    // SAFETY: register-only instructions of F16C/AVX, which this function's target features
    // guarantee; no memory, stack or flags are touched.
    std::arch::asm!(
        "vmovd {v}, {g:e}",
        "vcvtph2ps {v}, {v}",
        g = in(reg) bits,
        v = out(xmm_reg) v,
        options(pure, nomem, nostack, preserves_flags),
    );
    _mm_cvtss_f32(v)
}
}

avx2_fn! {
/// The two little-endian f16 at `p` and `p + 2` to f32, in lanes 0 and 1 (same asm reasoning
/// as `h2f`). Q4_1/Q5_1 store (d, m) and Q8_1 stores (d, s) this way: one conversion per pair.
unsafe fn h2f_pair(p: *const u8) -> __m128 {
    let bits = std::ptr::read_unaligned(p as *const u32);
    let v: __m128;
    // SAFETY: as in h2f.
    std::arch::asm!(
        "vmovd {v}, {g:e}",
        "vcvtph2ps {v}, {v}",
        g = in(reg) bits,
        v = out(xmm_reg) v,
        options(pure, nomem, nostack, preserves_flags),
    );
    v
}
}

avx2_fn! {
pub(super) unsafe fn f32_at(p: *const u8) -> f32 {
    std::ptr::read_unaligned(p as *const f32)
}
}

avx2_fn! {
pub(super) unsafe fn loadu(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}
}

avx2_fn! {
/// Sum of 8 lanes, in a fixed order.
unsafe fn hsum_ps(x: __m256) -> f32 {
    let mut r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    _mm_cvtss_f32(r)
}
}

avx2_fn! {
unsafe fn hsum_ps128(x: __m128) -> f32 {
    let r = _mm_add_ps(x, _mm_movehl_ps(x, x));
    _mm_cvtss_f32(_mm_add_ss(r, _mm_movehdup_ps(r)))
}
}

avx2_fn! {
/// 16 bytes of nibbles -> 32 bytes in [0, 15]: low nibbles in lanes 0..16, high in 16..32
/// (the Q4/Q5/IQ4_NL element order).
unsafe fn nibbles32(p: *const u8) -> __m256i {
    let t = _mm_loadu_si128(p as *const __m128i);
    let b = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
    _mm256_and_si256(b, _mm256_set1_epi8(0xF))
}
}

avx2_fn! {
/// 32 bits at `p` -> 32 bytes, 0xFF where the bit is set.
unsafe fn bits32(p: *const u8) -> __m256i {
    let x = std::ptr::read_unaligned(p as *const u32) as i32;
    let shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x), shuf);
    // Byte i of each 8 now holds the source byte; OR in every bit except bit i, compare to -1.
    let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
}
}

avx2_fn! {
/// u8 x i8 -> sums of 4 adjacent products as i32.
unsafe fn dot_us8(ux: __m256i, sy: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(ux, sy), _mm256_set1_epi16(1))
}
}

// ---------------------------------------------------------------------------------------------
// Activation converters.

avx2_fn! {
/// Quantizes 32 floats as llama.cpp's AVX2 quantize_row_q8_{0,1}; returns (d, sum of quants)
/// and stores the 32 quants at `qs`.
unsafe fn q8_block(x: *const f32, qs: *mut u8) -> (f32, i32) {
    let v = [_mm256_loadu_ps(x), _mm256_loadu_ps(x.add(8)), _mm256_loadu_ps(x.add(16)), _mm256_loadu_ps(x.add(24))];
    let sign = _mm256_set1_ps(-0.0);
    let mut m = _mm256_andnot_ps(sign, v[0]);
    for vi in &v[1..] {
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, *vi));
    }
    let mut m4 = _mm_max_ps(_mm256_extractf128_ps(m, 1), _mm256_castps256_ps128(m));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    let amax = _mm_cvtss_f32(m4);
    let d = amax / 127.0;
    let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
    let (i0, i1, i2, i3) = (round_q(v[0], id), round_q(v[1], id), round_q(v[2], id), round_q(v[3], id));
    let s = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
    let s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    let s4 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
    let sum = _mm_cvtsi128_si32(_mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0b10_11_00_01)));
    // i32 -> i16 -> i8 with saturation; packs work per 128-bit lane, the permute restores order.
    let p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
    let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(qs as *mut __m256i, p);
    (d, sum)
}
}

avx2_fn! {
/// round_ties_even(v * id) as i32 (vroundps with imm 0 = nearest even, then vcvtps2dq).
unsafe fn round_q(v: __m256, id: __m256) -> __m256i {
    _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v, id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC))
}
}

avx2_fn! {
unsafe fn f32_to_f16_bits(v: f32) -> [u8; 2] {
    (_mm_extract_epi16(_mm_cvtps_ph(_mm_set_ss(v), _MM_FROUND_TO_NEAREST_INT), 0) as u16).to_le_bytes()
}
}

avx2_fn! {
unsafe fn quantize_q8_0_impl(x: &[f32], y: &mut [u8]) {
    for (xb, yb) in x.chunks_exact(QK).zip(y.chunks_exact_mut(Q8_0_BYTES)) {
        let (d, _) = q8_block(xb.as_ptr(), yb.as_mut_ptr().add(2));
        yb[0..2].copy_from_slice(&f32_to_f16_bits(d));
    }
}
}

avx2_fn! {
unsafe fn quantize_q8_1_impl(x: &[f32], y: &mut [u8]) {
    for (xb, yb) in x.chunks_exact(QK).zip(y.chunks_exact_mut(Q8_1_BYTES)) {
        let (d, sum) = q8_block(xb.as_ptr(), yb.as_mut_ptr().add(4));
        yb[0..2].copy_from_slice(&f32_to_f16_bits(d));
        yb[2..4].copy_from_slice(&f32_to_f16_bits(d * sum as f32));
    }
}
}

avx2_fn! {
unsafe fn to_f16_impl(x: &[f32], y: &mut [u8]) {
    let n8 = x.len() / 8 * 8;
    for i in (0..n8).step_by(8) {
        let h = _mm256_cvtps_ph(_mm256_loadu_ps(x.as_ptr().add(i)), _MM_FROUND_TO_NEAREST_INT);
        _mm_storeu_si128(y.as_mut_ptr().add(2 * i) as *mut __m128i, h);
    }
    for i in n8..x.len() {
        y[2 * i..2 * i + 2].copy_from_slice(&f32_to_f16_bits(x[i]));
    }
}
}

avx2_fn! {
unsafe fn f16_round_trip(v: f32) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtps_ph(_mm_set_ss(v), _MM_FROUND_TO_NEAREST_INT)))
}
}

avx2_fn! {
unsafe fn quantize_a8_impl(x: &[f32], y: &mut [u8], block: usize) {
    for (xb, yb) in x.chunks_exact(QK).zip(y.chunks_exact_mut(block)) {
        let (d, sum) = q8_block(xb.as_ptr(), yb.as_mut_ptr());
        yb[QK..QK + 4].copy_from_slice(&f16_round_trip(d).to_le_bytes());
        yb[QK + 4..QK + 8].copy_from_slice(&sum.to_le_bytes());
        yb[QK + 8..QK + 12].copy_from_slice(&f16_round_trip(d * sum as f32).to_le_bytes());
    }
}
}

/// The repacked matmul's A8 activation blocks (`block` = A8_BLOCK bytes each: quants, d, sum of
/// quants, s; see cpu/gemm_q.rs) straight from f32, with Q8_1's rounding (d and s through f16):
/// the bytes `gemm_q::quantize_a8_generic` makes through the Q8_1 converter and a copy.
pub fn quantize_a8(x: &[f32], y: &mut [u8], block: usize) {
    assert!(
        block >= QK + 12 && x.len() % QK == 0 && y.len() == x.len() / QK * block,
        "quantize_a8: bad sizes"
    );
    // SAFETY: only called for Isa::Avx2 (AVX2/FMA/F16C present); sizes checked above (q8_block
    // writes 32 bytes at the start of each block).
    unsafe { quantize_a8_impl(x, y, block) }
}

avx2_fn! {
unsafe fn hsum_epi32(v: __m256i) -> i32 {
    let s4 = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s4 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
    _mm_cvtsi128_si32(_mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0b10_11_00_01)))
}
}

avx2_fn! {
unsafe fn quantize_a8k_impl(x: &[f32], y: &mut [u8], block: usize) {
    let sign = _mm256_set1_ps(-0.0);
    for (xb, yb) in x.chunks_exact(QK_K).zip(y.chunks_exact_mut(block)) {
        let p = xb.as_ptr();
        // max |v| (a NaN lane loses: max_ps returns its second operand when either is NaN,
        // as the scalar `>` skips NaN).
        let mut m = _mm256_setzero_ps();
        for c in 0..QK_K / 8 {
            m = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(p.add(8 * c))), m);
        }
        let mut m4 = _mm_max_ps(_mm256_extractf128_ps(m, 1), _mm256_castps256_ps128(m));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        let amax = _mm_cvtss_f32(m4);
        if amax == 0.0 {
            yb.fill(0);
            continue;
        }
        // The first element of that magnitude gives the sign, as in ggml's scalar loop.
        let av = _mm256_set1_ps(amax);
        let mut idx = 0;
        for c in 0..QK_K / 8 {
            let eq = _mm256_cmp_ps::<_CMP_EQ_OQ>(_mm256_andnot_ps(sign, _mm256_loadu_ps(p.add(8 * c))), av);
            let mask = _mm256_movemask_ps(eq);
            if mask != 0 {
                idx = 8 * c + mask.trailing_zeros() as usize;
                break;
            }
        }
        let iscale = -127.0 / xb[idx];
        let is = _mm256_set1_ps(iscale);
        let q = yb.as_mut_ptr().add(4);
        let mut s16 = [0i32; QK_K / 16];
        for c in 0..QK_K / 32 {
            let v = |u: usize| _mm256_loadu_ps(p.add(32 * c + 8 * u));
            let (i0, i1, i2, i3) = (round_q(v(0), is), round_q(v(1), is), round_q(v(2), is), round_q(v(3), is));
            let pk = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
            let pk = _mm256_permutevar8x32_epi32(pk, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256(q.add(32 * c) as *mut __m256i, pk);
            s16[2 * c] = hsum_epi32(_mm256_add_epi32(i0, i1));
            s16[2 * c + 1] = hsum_epi32(_mm256_add_epi32(i2, i3));
        }
        yb[0..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
        for j in 0..QK_K / 32 {
            let v = (s16[2 * j] + s16[2 * j + 1]) as i16;
            yb[4 + QK_K + 2 * j..][..2].copy_from_slice(&v.to_le_bytes());
        }
        for g in 0..QK_K / 16 {
            let v = (16 * s16[g] as i16).to_le_bytes();
            yb[4 + QK_K + 16 + 4 * g..][..4].copy_from_slice(&[v[0], v[1], v[0], v[1]]);
        }
    }
}
}

/// The repacked matmul's A8K activation super-blocks (`block` bytes each: d, 256 quants, 8
/// sub-block sums, 16 doubled 16 x group sums; see cpu/gemm_q.rs) straight from f32 with
/// ggml's Q8_K rounding: the bytes `gemm_q::quantize_a8k_generic` makes through the scalar Q8_K
/// converter (tests), without its per-element rounding calls.
pub fn quantize_a8k(x: &[f32], y: &mut [u8], block: usize) {
    assert!(
        block >= 4 + QK_K + 16 + 64 && x.len() % QK_K == 0 && y.len() == x.len() / QK_K * block,
        "quantize_a8k: bad sizes"
    );
    // SAFETY: only called for Isa::Avx2 (AVX2/FMA/F16C present); sizes checked above (the
    // quants are written at 4..4 + 256 of each block).
    unsafe { quantize_a8k_impl(x, y, block) }
}

pub fn quantize_q8_0(x: &[f32], y: &mut [u8]) {
    assert!(
        x.len() % QK == 0 && y.len() == x.len() / QK * Q8_0_BYTES,
        "quantize_q8_0: bad sizes"
    );
    // SAFETY: only reachable through the Avx2 table (AVX2/FMA/F16C present); sizes checked above.
    unsafe { quantize_q8_0_impl(x, y) }
}
pub fn quantize_q8_1(x: &[f32], y: &mut [u8]) {
    assert!(
        x.len() % QK == 0 && y.len() == x.len() / QK * Q8_1_BYTES,
        "quantize_q8_1: bad sizes"
    );
    // SAFETY: as above.
    unsafe { quantize_q8_1_impl(x, y) }
}
pub fn to_f16(x: &[f32], y: &mut [u8]) {
    assert_eq!(y.len(), x.len() * 2, "to_f16: bad sizes");
    // SAFETY: as above.
    unsafe { to_f16_impl(x, y) }
}

// ---------------------------------------------------------------------------------------------
// 32-element blocks, in ggml's AVX2 arithmetic (see dot_block32).

// The 32-element block types, as const-generic kinds (a trait's methods could not carry
// `#[target_feature]`, and these must inline into the kernel).
const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q5_0: u8 = 2;
const Q5_1: u8 = 3;
const Q8_0: u8 = 4;
const IQ4_NL: u8 = 5;

const fn block32_bytes(k: u8) -> usize {
    match k {
        Q4_0 => Q4_0_BYTES,
        Q4_1 => Q4_1_BYTES,
        Q5_0 => Q5_0_BYTES,
        Q5_1 => Q5_1_BYTES,
        Q8_0 => Q8_0_BYTES,
        _ => IQ4_NL_BYTES,
    }
}
/// Whether kind `k` dots against Q8_1 (unsigned quants plus a min term) rather than Q8_0.
const fn block32_q8_1(k: u8) -> bool {
    matches!(k, Q4_1 | Q5_1)
}

avx2_fn! {
/// One weight block: 32 quants (signed for Q8_0-paired kinds, unsigned for Q8_1-paired ones)
/// and the scale d; the Q8_1-paired kinds return 0s for the scales, which `step_block32` reads
/// as an (d, m) pair.
unsafe fn load_block32<const K: u8>(x: *const u8) -> (__m256i, f32, f32) {
    match K {
        Q4_0 => (_mm256_sub_epi8(nibbles32(x.add(2)), _mm256_set1_epi8(8)), h2f(x), 0.0),
        Q4_1 => (nibbles32(x.add(4)), 0.0, 0.0),
        Q5_0 => {
            // (nibble | 16*bit) - 16 == nibble | (bit ? 0 : 0xF0) as i8.
            let hi = _mm256_andnot_si256(bits32(x.add(2)), _mm256_set1_epi8(0xF0u8 as i8));
            (_mm256_or_si256(nibbles32(x.add(6)), hi), h2f(x), 0.0)
        }
        Q5_1 => {
            let hi = _mm256_and_si256(bits32(x.add(4)), _mm256_set1_epi8(0x10));
            (_mm256_or_si256(nibbles32(x.add(8)), hi), 0.0, 0.0)
        }
        Q8_0 => (loadu(x.add(2)), h2f(x), 0.0),
        _ => {
            let t = _mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i);
            (_mm256_shuffle_epi8(_mm256_set_m128i(t, t), nibbles32(x.add(2))), h2f(x), 0.0)
        }
    }
}
}

avx2_fn! {
/// One weight block against R activation blocks: acc[r] = fma(dx*dy_r, sum(q_x * q_y) per lane,
/// acc[r]), and for Q8_1-paired kinds summs[r] = fma(m, s_r, summs[r]) (ggml's AVX2 order: its
/// `summs += m * s` is compiled to an FMA).
unsafe fn step_block32<const K: u8, const R: usize>(x: *const u8, y0: *const u8, stride: usize, acc: &mut [__m256; R], summs: &mut [__m128; R]) {
    if block32_q8_1(K) {
        // (d, m) of the weight times (d, s) of the activation in one multiply: lane 0 is the
        // scale of the integer dot; m and s are fused into the min term separately.
        let (qx, _, _) = load_block32::<K>(x);
        let dm = h2f_pair(x);
        let m = _mm_movehdup_ps(dm);
        for r in 0..R {
            let y = y0.add(r * stride);
            let p = _mm256_cvtepi32_ps(dot_us8(qx, loadu(y.add(4))));
            let ds = h2f_pair(y);
            acc[r] = _mm256_fmadd_ps(_mm256_broadcastss_ps(_mm_mul_ss(dm, ds)), p, acc[r]);
            summs[r] = _mm_fmadd_ss(m, _mm_movehdup_ps(ds), summs[r]);
        }
    } else {
        let (qx, dx, _) = load_block32::<K>(x);
        // Signed weights: |x| as the unsigned operand, the sign moved onto y (per column).
        let ux = _mm256_sign_epi8(qx, qx);
        for r in 0..R {
            let y = y0.add(r * stride);
            let sy = _mm256_sign_epi8(loadu(y.add(2)), qx);
            let p = _mm256_cvtepi32_ps(dot_us8(ux, sy));
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dx * h2f(y)), p, acc[r]);
        }
    }
}
}

avx2_fn! {
/// One accumulator per column across all blocks, then hsum (+ summs): exactly ggml's AVX2
/// vec_dot_q4_1_q8_1 / q8_0_q8_0 and tinyBLAS's Q8_0 gemm, so results match llama.cpp's bits
/// (a second accumulator would be faster for one token, but changes the rounding).
unsafe fn dot_block32<const K: u8, const R: usize>(nb: usize, w: *const u8, a: *const u8, stride: usize, out: *mut f32) {
    let xb = block32_bytes(K);
    let ab = if block32_q8_1(K) { Q8_1_BYTES } else { Q8_0_BYTES };
    let mut acc = [_mm256_setzero_ps(); R];
    let mut summs = [_mm_setzero_ps(); R];
    for ib in 0..nb {
        step_block32::<K, R>(w.add(ib * xb), a.add(ib * ab), stride, &mut acc, &mut summs);
    }
    for r in 0..R {
        let h = hsum_ps(acc[r]);
        *out.add(r) = if block32_q8_1(K) { h + _mm_cvtss_f32(summs[r]) } else { h };
    }
}
}

// ---------------------------------------------------------------------------------------------
// 256-element super-blocks against Q8_K (d f32 @0, qs @4, bsums @260).

/// pshufb masks that spread one i16 of a 128-bit lane over the lane: mask j takes i16 #2j into
/// the low lane and #2j+1 into the high lane (16 scales of a super-block, two 16-element groups
/// per 256-bit vector of products).
static SCALE_PAIR_SHUF: [[u8; 32]; 4] = {
    let mut m = [[0u8; 32]; 4];
    let mut j = 0;
    while j < 4 {
        let mut b = 0;
        while b < 16 {
            m[j][b] = (4 * j + (b & 1)) as u8;
            m[j][16 + b] = (4 * j + 2 + (b & 1)) as u8;
            b += 1;
        }
        j += 1;
    }
    m
};

avx2_fn! {
/// From 16 i16 scales (one per 16-element group), the 8 vectors `v[p]` whose low lane holds
/// scale 2p and high lane scale 2p+1: the multipliers for the products of elements 32p..32p+32.
unsafe fn scale_pairs(sc: __m256i) -> [__m256i; 8] {
    let lo = _mm256_permute2x128_si256(sc, sc, 0x00);
    let hi = _mm256_permute2x128_si256(sc, sc, 0x11);
    let mut v = [_mm256_setzero_si256(); 8];
    for p in 0..8 {
        let m = loadu(SCALE_PAIR_SHUF[p % 4].as_ptr());
        v[p] = _mm256_shuffle_epi8(if p < 4 { lo } else { hi }, m);
    }
    v
}
}

avx2_fn! {
pub(super) unsafe fn q8k_block(a: *const u8, stride: usize, r: usize, i: usize) -> *const u8 {
    a.add(r * stride + i * Q8_K_BYTES)
}
}

avx2_fn! {
unsafe fn dot_q2_k<const R: usize>(nb: usize, w: *const u8, a: *const u8, stride: usize, out: *mut f32) {
    let m3 = _mm256_set1_epi8(3);
    let mut acc = [_mm256_setzero_ps(); R];
    for i in 0..nb {
        let x = w.add(i * Q2_K_BYTES);
        let (dx, dminx) = (h2f(x.add(80)), h2f(x.add(82)));
        let sc8 = _mm_loadu_si128(x as *const __m128i);
        let scales = scale_pairs(_mm256_cvtepu8_epi16(_mm_and_si128(sc8, _mm_set1_epi8(0xF))));
        let mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sc8, 4), _mm_set1_epi8(0xF)));
        let q2 = [loadu(x.add(16)), loadu(x.add(48))];
        let mut sumi = [_mm256_setzero_si256(); R];
        for k in 0..2 {
            for j in 0..4 {
                let qx = _mm256_and_si256(_mm256_srl_epi16(q2[k], _mm_cvtsi32_si128(2 * j as i32)), m3);
                for r in 0..R {
                    let qy = loadu(q8k_block(a, stride, r, i).add(4 + 128 * k + 32 * j));
                    let p = _mm256_madd_epi16(scales[4 * k + j], _mm256_maddubs_epi16(qx, qy));
                    sumi[r] = _mm256_add_epi32(sumi[r], p);
                }
            }
        }
        for r in 0..R {
            let y = q8k_block(a, stride, r, i);
            let dy = f32_at(y);
            let mprod = _mm256_madd_epi16(mins, loadu(y.add(260)));
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dy * dx), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(-dy * dminx), _mm256_cvtepi32_ps(mprod), acc[r]);
        }
    }
    for r in 0..R {
        *out.add(r) = hsum_ps(acc[r]);
    }
}
}

avx2_fn! {
/// The 16 6-bit scales of a Q3_K block, minus 32, as i8 (ggml's kmask shuffle of 3 u32s:
/// low nibbles from bytes 0..8, high 2 bits from bytes 8..12).
unsafe fn q3k_scales(p: *const u8) -> __m128i {
    const KM1: u32 = 0x03030303;
    const KM2: u32 = 0x0f0f0f0f;
    let a0 = std::ptr::read_unaligned(p as *const u32);
    let a1 = std::ptr::read_unaligned(p.add(4) as *const u32);
    let t = std::ptr::read_unaligned(p.add(8) as *const u32);
    let s0 = (a0 & KM2) | ((t & KM1) << 4);
    let s1 = (a1 & KM2) | (((t >> 2) & KM1) << 4);
    let s2 = ((a0 >> 4) & KM2) | (((t >> 4) & KM1) << 4);
    let s3 = ((a1 >> 4) & KM2) | (((t >> 6) & KM1) << 4);
    _mm_sub_epi8(_mm_set_epi32(s3 as i32, s2 as i32, s1 as i32, s0 as i32), _mm_set1_epi8(32))
}
}

avx2_fn! {
unsafe fn dot_q3_k<const R: usize>(nb: usize, w: *const u8, a: *const u8, stride: usize, out: *mut f32) {
    let m3 = _mm256_set1_epi8(3);
    let four = _mm256_set1_epi8(4);
    let mut acc = [_mm256_setzero_ps(); R];
    for i in 0..nb {
        let x = w.add(i * Q3_K_BYTES);
        let dx = h2f(x.add(108));
        let scales = scale_pairs(_mm256_cvtepi8_epi16(q3k_scales(x.add(96))));
        let hm = loadu(x);
        let q3 = [loadu(x.add(32)), loadu(x.add(64))];
        let mut sumi = [_mm256_setzero_si256(); R];
        for k in 0..2 {
            for j in 0..4 {
                let ql = _mm256_and_si256(_mm256_srl_epi16(q3[k], _mm_cvtsi32_si128(2 * j as i32)), m3);
                // 4 where the high bit is clear: value = low - 4 * !high.
                let bit = _mm256_set1_epi8((1u8 << (4 * k + j)) as i8);
                let qh = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hm, bit), _mm256_setzero_si256()), four);
                for r in 0..R {
                    let qy = loadu(q8k_block(a, stride, r, i).add(4 + 128 * k + 32 * j));
                    let p16 = _mm256_sub_epi16(_mm256_maddubs_epi16(ql, qy), _mm256_maddubs_epi16(qh, qy));
                    sumi[r] = _mm256_add_epi32(sumi[r], _mm256_madd_epi16(scales[4 * k + j], p16));
                }
            }
        }
        for r in 0..R {
            let dy = f32_at(q8k_block(a, stride, r, i));
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dx * dy), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
        }
    }
    for r in 0..R {
        *out.add(r) = hsum_ps(acc[r]);
    }
}
}

avx2_fn! {
/// Q4_K/Q5_K scales and mins as 16 i16 (scales in lanes 0..8, mins in 8..16), ggml's utmp dance.
unsafe fn k4_scales_mins(p: *const u8) -> __m256i {
    let u0 = std::ptr::read_unaligned(p as *const u32);
    let u1 = std::ptr::read_unaligned(p.add(4) as *const u32);
    let u2 = std::ptr::read_unaligned(p.add(8) as *const u32);
    const KM1: u32 = 0x3f3f3f3f;
    const KM2: u32 = 0x0f0f0f0f;
    const KM3: u32 = 0x03030303;
    let t3 = ((u2 >> 4) & KM2) | (((u1 >> 6) & KM3) << 4);
    let t2 = u1 & KM1;
    let t1 = (u2 & KM2) | (((u0 >> 6) & KM3) << 4);
    let t0 = u0 & KM1;
    _mm256_cvtepu8_epi16(_mm_set_epi32(t3 as i32, t2 as i32, t1 as i32, t0 as i32))
}
}

avx2_fn! {
/// Q4_K (HIGH = false) and Q5_K (HIGH = true).
unsafe fn dot_q45_k<const HIGH: bool, const R: usize>(nb: usize, w: *const u8, a: *const u8, stride: usize, out: *mut f32) {
    let m4 = _mm256_set1_epi8(0xF);
    let sixteen = _mm256_set1_epi8(16);
    let (bytes, qs_off) = if HIGH { (Q5_K_BYTES, 48) } else { (Q4_K_BYTES, 16) };
    let mut acc = [_mm256_setzero_ps(); R];
    let mut acc_m = [_mm_setzero_ps(); R];
    for i in 0..nb {
        let x = w.add(i * bytes);
        let dm = h2f_pair(x);
        let (dx, dminx) = (_mm_cvtss_f32(dm), _mm_cvtss_f32(_mm_movehdup_ps(dm)));
        let sm = k4_scales_mins(x.add(4));
        let sc128 = _mm256_castsi256_si128(sm);
        let mins = _mm256_extracti128_si256(sm, 1);
        // Each 32-element sub-block has one scale: broadcast i16 #s over the whole vector.
        let scb = _mm256_set_m128i(sc128, sc128);
        let hbits = if HIGH { loadu(x.add(16)) } else { _mm256_setzero_si256() };
        let mut sumi = [_mm256_setzero_si256(); R];
        for j in 0..4 {
            let q4 = loadu(x.add(qs_off + 32 * j));
            let mut ql = _mm256_and_si256(q4, m4);
            let mut qh = _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4);
            if HIGH {
                let bl = _mm256_set1_epi8((1u8 << (2 * j)) as i8);
                let bh = _mm256_set1_epi8((1u8 << (2 * j + 1)) as i8);
                ql = _mm256_or_si256(ql, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hbits, bl), bl), sixteen));
                qh = _mm256_or_si256(qh, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hbits, bh), bh), sixteen));
            }
            let sl = _mm256_shuffle_epi8(scb, _mm256_set1_epi16((0x0100 + 0x0202 * (2 * j)) as i16));
            let sh = _mm256_shuffle_epi8(scb, _mm256_set1_epi16((0x0100 + 0x0202 * (2 * j + 1)) as i16));
            for r in 0..R {
                let y = q8k_block(a, stride, r, i).add(4 + 64 * j);
                let pl = _mm256_madd_epi16(sl, _mm256_maddubs_epi16(ql, loadu(y)));
                let ph = _mm256_madd_epi16(sh, _mm256_maddubs_epi16(qh, loadu(y.add(32))));
                sumi[r] = _mm256_add_epi32(sumi[r], _mm256_add_epi32(pl, ph));
            }
        }
        for r in 0..R {
            let y = q8k_block(a, stride, r, i);
            let dy = f32_at(y);
            let bs = loadu(y.add(260));
            // Pairwise sums of bsums = per 32-element sub-block sums, times the mins.
            let q8s = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
            let prod = _mm_madd_epi16(mins, q8s);
            acc_m[r] = _mm_fmadd_ps(_mm_set1_ps(-dy * dminx), _mm_cvtepi32_ps(prod), acc_m[r]);
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dy * dx), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
        }
    }
    for r in 0..R {
        *out.add(r) = hsum_ps(acc[r]) + hsum_ps128(acc_m[r]);
    }
}
}

avx2_fn! {
unsafe fn dot_q6_k<const R: usize>(nb: usize, w: *const u8, a: *const u8, stride: usize, out: *mut f32) {
    let m4 = _mm256_set1_epi8(0xF);
    let mut acc = [_mm256_setzero_ps(); R];
    for i in 0..nb {
        let x = w.add(i * Q6_K_BYTES);
        let dx = h2f(x.add(208));
        let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(x.add(192) as *const __m128i));
        let scales = scale_pairs(sc16);
        let mut sumi = [_mm256_setzero_si256(); R];
        for k in 0..2 {
            let l1 = loadu(x.add(64 * k));
            let l2 = loadu(x.add(64 * k + 32));
            let hb = loadu(x.add(128 + 32 * k));
            let q = [
                _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_slli_epi16(_mm256_and_si256(hb, _mm256_set1_epi8(3)), 4)),
                _mm256_or_si256(_mm256_and_si256(l2, m4), _mm256_slli_epi16(_mm256_and_si256(hb, _mm256_set1_epi8(12)), 2)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), _mm256_and_si256(hb, _mm256_set1_epi8(48))),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(l2, 4), m4),
                    _mm256_srli_epi16(_mm256_and_si256(hb, _mm256_set1_epi8(0xC0u8 as i8)), 2),
                ),
            ];
            for (quarter, qx) in q.iter().enumerate() {
                for r in 0..R {
                    let qy = loadu(q8k_block(a, stride, r, i).add(4 + 128 * k + 32 * quarter));
                    let p = _mm256_madd_epi16(scales[4 * k + quarter], _mm256_maddubs_epi16(*qx, qy));
                    sumi[r] = _mm256_add_epi32(sumi[r], p);
                }
            }
        }
        for r in 0..R {
            let y = q8k_block(a, stride, r, i);
            // The stored quants are value + 32: subtract 32 * sum_g scale_g * bsum_g.
            let off = _mm256_slli_epi32(_mm256_madd_epi16(loadu(y.add(260)), sc16), 5);
            let s = _mm256_sub_epi32(sumi[r], off);
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dx * f32_at(y)), _mm256_cvtepi32_ps(s), acc[r]);
        }
    }
    for r in 0..R {
        *out.add(r) = hsum_ps(acc[r]);
    }
}
}

avx2_fn! {
unsafe fn dot_iq4_xs<const R: usize>(nb: usize, w: *const u8, a: *const u8, stride: usize, out: *mut f32) {
    let t = _mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i);
    let m4 = _mm_set1_epi8(0xF);
    let mut acc = [_mm256_setzero_ps(); R];
    for i in 0..nb {
        let x = w.add(i * IQ4_XS_BYTES);
        let dx = h2f(x);
        let sh = std::ptr::read_unaligned(x.add(2) as *const u16) as u32;
        let mut sumi = [_mm256_setzero_si256(); R];
        for ib in 0..8 {
            let q = _mm_loadu_si128(x.add(8 + 16 * ib) as *const __m128i);
            let v = _mm256_set_m128i(
                _mm_shuffle_epi8(t, _mm_and_si128(_mm_srli_epi16(q, 4), m4)),
                _mm_shuffle_epi8(t, _mm_and_si128(q, m4)),
            );
            let ls = ((*x.add(4 + ib / 2) >> (4 * (ib % 2))) & 0xF) as u32 | ((sh >> (2 * ib)) & 3) << 4;
            let scale = _mm256_set1_epi16(ls as i16 - 32);
            let uv = _mm256_sign_epi8(v, v);
            for r in 0..R {
                let qy = loadu(q8k_block(a, stride, r, i).add(4 + 32 * ib));
                let p16 = _mm256_maddubs_epi16(uv, _mm256_sign_epi8(qy, v));
                sumi[r] = _mm256_add_epi32(sumi[r], _mm256_madd_epi16(p16, scale));
            }
        }
        for r in 0..R {
            let dy = f32_at(q8k_block(a, stride, r, i));
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dx * dy), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
        }
    }
    for r in 0..R {
        *out.add(r) = hsum_ps(acc[r]);
    }
}
}

// ---------------------------------------------------------------------------------------------
// Float rows. Four 8-lane accumulators per column (32 partial sums: the FMA latency is hidden and
// the summation tree is shallow), a scalar tail in a fixed order, lanes reduced in f64.

const F32: u8 = 0;
const F16: u8 = 1;
const BF16: u8 = 2;

const fn float_bytes(k: u8) -> usize {
    if k == F32 {
        4
    } else {
        2
    }
}

avx2_fn! {
unsafe fn load8<const K: u8>(p: *const u8) -> __m256 {
    match K {
        F32 => _mm256_loadu_ps(p as *const f32),
        F16 => _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
        _ => _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i)), 16)),
    }
}
}

avx2_fn! {
unsafe fn load1<const K: u8>(p: *const u8) -> f32 {
    match K {
        F32 => f32_at(p),
        F16 => h2f(p),
        _ => f32::from_bits((std::ptr::read_unaligned(p as *const u16) as u32) << 16),
    }
}
}

avx2_fn! {
unsafe fn dot_float<const K: u8, const R: usize>(n: usize, w: *const u8, a: *const u8, stride: usize, out: *mut f32) {
    let mut acc = [[_mm256_setzero_ps(); 4]; R];
    let n32 = n / 32 * 32;
    let mut i = 0;
    while i < n32 {
        for s in 0..4 {
            let wv = load8::<K>(w.add((i + 8 * s) * float_bytes(K)));
            for r in 0..R {
                let av = load8::<K>(a.add(r * stride + (i + 8 * s) * float_bytes(K)));
                acc[r][s] = _mm256_fmadd_ps(wv, av, acc[r][s]);
            }
        }
        i += 32;
    }
    for r in 0..R {
        let mut tail = 0f32;
        for j in n32..n {
            tail += load1::<K>(w.add(j * float_bytes(K))) * load1::<K>(a.add(r * stride + j * float_bytes(K)));
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[r][0], acc[r][1]), _mm256_add_ps(acc[r][2], acc[r][3]));
        let lanes: [f32; 8] = std::mem::transmute(s);
        *out.add(r) = (lanes.iter().map(|&v| v as f64).sum::<f64>() + tail as f64) as f32;
    }
}
}

// ---------------------------------------------------------------------------------------------
// Safe entry points with the table's signature. Each checks sizes once, then dispatches on the
// number of columns.

/// Expands to a `VecDot` over kernel `$k::<R>` (R = 1..=4 columns): checks the arguments once,
/// then runs the row loop inside `target_feature` code, so the kernel inlines into it.
macro_rules! entry {
    ($name:ident, $g:ident, $arg:expr, $k:ident) => {
        pub fn $name(n: usize, w: &[u8], rows: usize, a: &[u8], stride: usize, out: &mut [f32]) {
            avx2_fn! {
            unsafe fn rows_loop<const R: usize>(nn: usize, w: *const u8, rb: usize, rows: usize, a: *const u8, stride: usize, o: *mut f32) {
                for r in 0..rows {
                    $k::<R>(nn, w.add(r * rb), a, stride, o.add(r * R));
                }
            }
            }
            let (rb, cols) = crate::dot::check_dot_args(crate::dot::geom::$g, n, w, rows, a, stride, out.len());
            let nn = $arg(n);
            let (w, a, o) = (w.as_ptr(), a.as_ptr(), out.as_mut_ptr());
            // SAFETY: the Avx2 table is only built when AVX2/FMA/F16C are present, and
            // check_dot_args proved every block the kernel reads lies inside `w` and `a` and every
            // output inside `out`.
            unsafe {
                match cols {
                    1 => rows_loop::<1>(nn, w, rb, rows, a, stride, o),
                    2 => rows_loop::<2>(nn, w, rb, rows, a, stride, o),
                    3 => rows_loop::<3>(nn, w, rb, rows, a, stride, o),
                    4 => rows_loop::<4>(nn, w, rb, rows, a, stride, o),
                    _ => {} // rows == 0
                }
            }
        }
    };
}

/// The kernels' first argument: blocks for quantized types, elements for float rows.
fn blocks32(n: usize) -> usize {
    n / QK
}
fn blocks256(n: usize) -> usize {
    n / QK_K
}
fn elems(n: usize) -> usize {
    n
}

// The macro calls `$k::<R>(...)`: small wrappers fix the kernels' other generic parameter.
macro_rules! fix_kind {
    ($($name:ident = $k:ident::<$kind:tt>;)*) => {$(
        #[inline(always)]
        unsafe fn $name<const R: usize>(n: usize, w: *const u8, a: *const u8, s: usize, o: *mut f32) {
            $k::<$kind, R>(n, w, a, s, o)
        }
    )*};
}
fix_kind! {
    k_q4_0 = dot_block32::<Q4_0>;
    k_q4_1 = dot_block32::<Q4_1>;
    k_q5_0 = dot_block32::<Q5_0>;
    k_q5_1 = dot_block32::<Q5_1>;
    k_q8_0 = dot_block32::<Q8_0>;
    k_iq4_nl = dot_block32::<IQ4_NL>;
    k_q4_k = dot_q45_k::<false>;
    k_q5_k = dot_q45_k::<true>;
    k_f32 = dot_float::<F32>;
    k_f16 = dot_float::<F16>;
    k_bf16 = dot_float::<BF16>;
    k_iq2_xxs = dot_iq_grid::<IQ2_XXS_K>;
    k_iq2_xs = dot_iq_grid::<IQ2_XS_K>;
    k_iq2_s = dot_iq_grid::<IQ2_S_K>;
    k_iq3_xxs = dot_iq_grid::<IQ3_XXS_K>;
    k_iq3_s = dot_iq_grid::<IQ3_S_K>;
}
use super::dot_iq::{
    dot_iq1_m, dot_iq1_s, dot_iq_grid, IQ2_S as IQ2_S_K, IQ2_XS as IQ2_XS_K, IQ2_XXS as IQ2_XXS_K,
    IQ3_S as IQ3_S_K, IQ3_XXS as IQ3_XXS_K,
};

entry!(vec_dot_q4_0, Q4_0, blocks32, k_q4_0);
entry!(vec_dot_q4_1, Q4_1, blocks32, k_q4_1);
entry!(vec_dot_q5_0, Q5_0, blocks32, k_q5_0);
entry!(vec_dot_q5_1, Q5_1, blocks32, k_q5_1);
entry!(vec_dot_q8_0, Q8_0, blocks32, k_q8_0);
entry!(vec_dot_iq4_nl, IQ4_NL, blocks32, k_iq4_nl);
entry!(vec_dot_q2_k, Q2_K, blocks256, dot_q2_k);
entry!(vec_dot_q3_k, Q3_K, blocks256, dot_q3_k);
entry!(vec_dot_q4_k, Q4_K, blocks256, k_q4_k);
entry!(vec_dot_q5_k, Q5_K, blocks256, k_q5_k);
entry!(vec_dot_q6_k, Q6_K, blocks256, dot_q6_k);
entry!(vec_dot_iq4_xs, IQ4_XS, blocks256, dot_iq4_xs);
entry!(vec_dot_iq2_xxs, IQ2_XXS, blocks256, k_iq2_xxs);
entry!(vec_dot_iq2_xs, IQ2_XS, blocks256, k_iq2_xs);
entry!(vec_dot_iq2_s, IQ2_S, blocks256, k_iq2_s);
entry!(vec_dot_iq3_xxs, IQ3_XXS, blocks256, k_iq3_xxs);
entry!(vec_dot_iq3_s, IQ3_S, blocks256, k_iq3_s);
entry!(vec_dot_iq1_s, IQ1_S, blocks256, dot_iq1_s);
entry!(vec_dot_iq1_m, IQ1_M, blocks256, dot_iq1_m);
entry!(vec_dot_f32, F32, elems, k_f32);
entry!(vec_dot_f16, F16, elems, k_f16);
entry!(vec_dot_bf16, BF16, elems, k_bf16);

#[cfg(test)]
mod tests {
    #[test]
    fn h2f_is_exact_for_every_half() {
        if !crate::Isa::Avx2.available() {
            return;
        }
        for bits in 0..=u16::MAX {
            let want = half::f16::from_bits(bits).to_f32();
            // SAFETY: AVX2 checked above; the pointer is to a local.
            let got = unsafe { super::h2f(bits.to_le_bytes().as_ptr()) };
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{bits:#06x}: {got} vs {want}"
            );
        }
    }
}
