//! The AVX-512 kernels: two 8-row groups side by side on 512-bit registers. Each 256-bit
//! weight vector of group 0 and the same vector of group 1 fill the two halves of a zmm (one
//! insert per vector, shared by all the tile's tokens), the token's 4 activation bytes are
//! broadcast to all 16 lanes, and AVX512-VNNI's `vpdpbusd` (u8 x i8, 4 products summed into an
//! i32 lane) does what AVX2 needs `maddubs` + `madd` + adds for, on 16 rows at once. Lane r < 8
//! is group 0's row r, lane 8 + r group 1's. Integer dots are exact either way and the float
//! steps per block are the AVX2 kernels' (same order): the bits equal the scalar twin's. The
//! 32 registers hold `TILE_T2` = 8 tokens' accumulators beside the decoded block. The packed
//! layout is unchanged.

// Kernels index per-token arrays (accumulators, sums) with the same token number.
#![allow(clippy::needless_range_loop)]
use crate::arch::avx2::gemm_q::{self as avx2, f32_at, i32_at};
use crate::cpu::gemm_q::layout::{
    K2_Q, K2_SC, K3_H, K3_Q, K3_SC, K4_MIN, K4_QS, K4_SC, K5_QH, K6_QS, K6_SC, KX_QS, KX_SC,
};
use crate::cpu::gemm_q::{Kind, A8K_BLOCK, A8K_PAIR2, A8_BLOCK, GROUP, TILE_T2};
use crate::dot::layout::{KVALUES_IQ4NL, QK};
use std::arch::x86_64::*;

type Out2 = [[f32; 2 * GROUP]; TILE_T2];

/// As `avx2::tile` (same contract) on two groups.
#[allow(clippy::too_many_arguments)]
pub fn tile2(
    kind: Kind,
    nb: usize,
    w0: &[u8],
    w1: &[u8],
    a: &[u8],
    stride: usize,
    cols: usize,
    out: &mut Out2,
) {
    assert!(
        (1..=TILE_T2).contains(&cols)
            && w0.len() >= nb * kind.block_bytes()
            && w1.len() >= nb * kind.block_bytes()
            && stride >= nb * kind.act_bytes()
            && a.len() >= (cols - 1) * stride + nb * kind.act_bytes(),
        "gemm_q tile2: bad arguments"
    );
    let (w0, w1, a) = (w0.as_ptr(), w1.as_ptr(), a.as_ptr());
    macro_rules! by_cols {
        ($f:ident $(:: <$($g:literal),*>)?) => {
            match cols {
                1 => $f::<$($($g,)*)? 1>(nb, w0, w1, a, stride, out),
                2 => $f::<$($($g,)*)? 2>(nb, w0, w1, a, stride, out),
                3 => $f::<$($($g,)*)? 3>(nb, w0, w1, a, stride, out),
                4 => $f::<$($($g,)*)? 4>(nb, w0, w1, a, stride, out),
                5 => $f::<$($($g,)*)? 5>(nb, w0, w1, a, stride, out),
                6 => $f::<$($($g,)*)? 6>(nb, w0, w1, a, stride, out),
                7 => $f::<$($($g,)*)? 7>(nb, w0, w1, a, stride, out),
                _ => $f::<$($($g,)*)? 8>(nb, w0, w1, a, stride, out),
            }
        };
    }
    // SAFETY: handed out only for Isa::Avx512 on a CPU that has it (tile2_for); the reads
    // stay inside `w0`, `w1` (nb blocks each) and `a` (cols rows of nb activation blocks),
    // checked above.
    unsafe {
        match kind {
            Kind::Q4_0 => by_cols!(nib::<false, false>),
            Kind::Q4_1 => by_cols!(nib::<true, false>),
            Kind::Q5_0 => by_cols!(nib::<false, true>),
            Kind::Q5_1 => by_cols!(nib::<true, true>),
            Kind::Q8_0 => by_cols!(q8_0),
            Kind::Q4_K => by_cols!(q4_k::<false>),
            Kind::Q5_K => by_cols!(q4_k::<true>),
            Kind::IQ4_NL => by_cols!(iq4_nl),
            Kind::IQ4_XS => by_cols!(iq4_xs),
            Kind::Q2_K => by_cols!(q2_k),
            Kind::Q3_K => by_cols!(q3_k),
            Kind::Q6_K => by_cols!(q6_k),
        }
    }
}

/// `avx2::prefetch_ahead` for block b (of nb, `bytes` each) of both groups' streams. The
/// groups are adjacent (w1 = w0 + nb * bytes) and the next pair follows them, so once w0's
/// stream looks past its group's end (into w1's, already on its way) it looks at the group
/// after the next instead, the next pair's second: both of the next pair's groups then
/// start prefetched (w1's stream runs into the first).
#[inline(always)]
unsafe fn prefetch_ahead<const T: usize>(
    w0: *const u8,
    w1: *const u8,
    b: usize,
    nb: usize,
    bytes: usize,
) {
    prefetch_part::<T>(w0, w1, b, nb, bytes, 0, 1);
}
/// `avx2::prefetch_part` on both groups' streams (the jump as in `prefetch_ahead`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn prefetch_part<const T: usize>(
    w0: *const u8,
    w1: *const u8,
    b: usize,
    nb: usize,
    bytes: usize,
    part: usize,
    parts: usize,
) {
    let at = b * bytes;
    let jump = if at + avx2::PF_AHEAD >= nb * bytes {
        2 * nb * bytes
    } else {
        0
    };
    avx2::prefetch_part::<T>(w0.wrapping_add(at + jump), bytes, part, parts);
    avx2::prefetch_part::<T>(w1.wrapping_add(at), bytes, part, parts);
}
/// 32 bytes at p0 + o (low half) and at p1 + o (high half).
#[inline(always)]
unsafe fn ld2(p0: *const u8, p1: *const u8, o: usize) -> __m512i {
    let lo = _mm256_loadu_si256(p0.add(o) as *const __m256i);
    let hi = _mm256_loadu_si256(p1.add(o) as *const __m256i);
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
}
/// 16 bytes at p0 + o (low half) and at p1 + o (high half).
#[inline(always)]
unsafe fn ld2_128(p0: *const u8, p1: *const u8, o: usize) -> __m256i {
    let lo = _mm_loadu_si128(p0.add(o) as *const __m128i);
    let hi = _mm_loadu_si128(p1.add(o) as *const __m128i);
    _mm256_set_m128i(hi, lo)
}
/// 8 bytes at p0 + o (low half) and at p1 + o (high half).
#[inline(always)]
unsafe fn ld2_64(p0: *const u8, p1: *const u8, o: usize) -> __m128i {
    let lo = std::ptr::read_unaligned(p0.add(o) as *const i64);
    let hi = std::ptr::read_unaligned(p1.add(o) as *const i64);
    _mm_set_epi64x(hi, lo)
}
/// Lane i of 16 gets the i16 pair (x_i, y_i), where x and y are the 8 bytes at p0 + o and
/// p0 + o + 8 (lanes 0..8) or at p1 + o and p1 + o + 8 (8..16): a row's scales of two
/// consecutive 16-element groups, for `offset_pairs`. Q2_K (`Q2`): the bytes are
/// scale | min << 4 and the pair is the mins; else signed scales.
#[inline(always)]
unsafe fn zip_pairs<const Q2: bool>(p0: *const u8, p1: *const u8, o: usize) -> __m512i {
    const Z: [i8; 16] = [0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15];
    let z = std::mem::transmute::<[[i8; 16]; 2], __m256i>([Z, Z]);
    let v = _mm256_shuffle_epi8(ld2_128(p0, p1, o), z);
    if Q2 {
        _mm512_srli_epi16::<4>(_mm512_cvtepu8_epi16(v))
    } else {
        _mm512_cvtepi8_epi16(v)
    }
}
/// Per token: sum over the 16 groups g of sc_g * 16 * (sum of group g's quants), the
/// offset term of Q3_K and Q6_K, from the signed group scales (8 bytes per group, row r's
/// at r) at `sc`: 8 `vpdpwssd` of (sc_2j, sc_2j+1) pairs by A8K's (s_2j, s_2j+1), once per
/// super-block instead of one per group (every term is a multiple of 16).
#[inline(always)]
unsafe fn offset_pairs<const T: usize>(
    b0: *const u8,
    b1: *const u8,
    sc: usize,
    ya: impl Fn(usize) -> *const u8,
) -> [__m512i; T] {
    offset_pairs_by::<T, false>(b0, b1, sc, ya)
}
/// `offset_pairs`, or (`Q2`) the same sum of Q2_K's mins m_g.
#[inline(always)]
unsafe fn offset_pairs_by<const T: usize, const Q2: bool>(
    b0: *const u8,
    b1: *const u8,
    sc: usize,
    ya: impl Fn(usize) -> *const u8,
) -> [__m512i; T] {
    let mut o = [_mm512_setzero_si512(); T];
    for j in 0..8 {
        let p = zip_pairs::<Q2>(b0, b1, sc + 16 * j);
        for t in 0..T {
            o[t] = _mm512_dpwssd_epi32(o[t], p, bcast4(ya(t).add(A8K_PAIR2 + 8 * j)));
        }
    }
    o
}
/// 8 f16 at p0 + o and 8 at p1 + o, widened.
#[inline(always)]
unsafe fn ph2(p0: *const u8, p1: *const u8, o: usize) -> __m512 {
    _mm512_cvtph_ps(ld2_128(p0, p1, o))
}
#[inline(always)]
unsafe fn bcast4(p: *const u8) -> __m512i {
    _mm512_set1_epi32(std::ptr::read_unaligned(p as *const i32))
}
/// Per lane: sum over c of (4 unsigned bytes of w[c]) . (the 4 activation bytes at
/// y + off(c)); two chains of `vpdpbusd` added at the end.
#[inline(always)]
unsafe fn dot<const N: usize>(
    w: &[__m512i; N],
    y: *const u8,
    off: impl Fn(usize) -> usize,
) -> __m512i {
    let mut s = [_mm512_setzero_si512(); 2];
    for c in 0..N {
        s[c & 1] = _mm512_dpbusd_epi32(s[c & 1], w[c], bcast4(y.add(off(c))));
    }
    _mm512_add_epi32(s[0], s[1])
}
/// As `avx2::close_block` on two groups.
#[inline(always)]
unsafe fn close_block<const T: usize>(
    acc: &mut [__m512; T],
    b0: *const u8,
    b1: *const u8,
    isum: &[__m512i; T],
    ya: impl Fn(usize) -> *const u8,
) {
    let mut fsum = [_mm512_setzero_ps(); T];
    for t in 0..T {
        fsum[t] = _mm512_cvtepi32_ps(isum[t]);
    }
    close_block_f(acc, b0, b1, &fsum, ya);
}
/// `close_block` with the block's sum already in f32.
#[inline(always)]
unsafe fn close_block_f<const T: usize>(
    acc: &mut [__m512; T],
    b0: *const u8,
    b1: *const u8,
    fsum: &[__m512; T],
    ya: impl Fn(usize) -> *const u8,
) {
    let dw = ph2(b0, b1, 0);
    for t in 0..T {
        let da = _mm512_set1_ps(f32_at(ya(t)));
        acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(dw, da), fsum[t], acc[t]);
    }
}
#[inline(always)]
unsafe fn store<const T: usize>(acc: &[__m512; T], out: &mut Out2) {
    for t in 0..T {
        _mm512_storeu_ps(out[t].as_mut_ptr(), acc[t]);
    }
}

/// Q4_0, Q4_1, Q5_0, Q5_1 (MIN: a per-block min, HB: a 5th bit); see the layouts in the
/// module doc. Per block and token: i = sum(u * a) - off * sum(a), then the AVX2 kernels'
/// float steps.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn nib<const MIN: bool, const HB: bool, const T: usize>(
    nb: usize,
    w0: *const u8,
    w1: *const u8,
    a: *const u8,
    stride: usize,
    out: &mut Out2,
) {
    let qo = if MIN { 32 } else { 16 };
    let bb = qo + 128 + if HB { 32 } else { 0 };
    let off = match (MIN, HB) {
        (true, _) => 0,
        (false, false) => 8,
        (false, true) => 16,
    };
    let m4 = _mm512_set1_epi8(0x0F);
    let m16 = _mm512_set1_epi8(0x10);
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..nb {
        let (b0, b1) = (w0.add(b * bb), w1.add(b * bb));
        prefetch_ahead::<T>(w0, w1, b, nb, bb);
        let dw = ph2(b0, b1, 0);
        let mut u = [_mm512_setzero_si512(); 8];
        for j in 0..4 {
            let p = ld2(b0, b1, qo + 32 * j);
            u[j] = _mm512_and_si512(p, m4);
            u[4 + j] = _mm512_and_si512(_mm512_srli_epi16::<4>(p), m4);
        }
        if HB {
            // u |= (shifted h) & 0x10 in one ternary-logic op (A | (B & C) = 0xF8).
            let h = ld2(b0, b1, qo + 128);
            let m = |u: __m512i, v: __m512i| _mm512_ternarylogic_epi32::<0xF8>(u, v, m16);
            u[0] = m(u[0], _mm512_slli_epi16::<4>(h));
            u[1] = m(u[1], _mm512_slli_epi16::<3>(h));
            u[2] = m(u[2], _mm512_slli_epi16::<2>(h));
            u[3] = m(u[3], _mm512_slli_epi16::<1>(h));
            u[4] = m(u[4], h);
            u[5] = m(u[5], _mm512_srli_epi16::<1>(h));
            u[6] = m(u[6], _mm512_srli_epi16::<2>(h));
            u[7] = m(u[7], _mm512_srli_epi16::<3>(h));
        }
        let mw = if MIN {
            ph2(b0, b1, 16)
        } else {
            _mm512_setzero_ps()
        };
        for t in 0..T {
            let y = a.add(t * stride + b * A8_BLOCK);
            let i = dot(&u, y, |c| if c < 4 { 4 * c } else { 16 + 4 * (c - 4) });
            let i = _mm512_sub_epi32(i, _mm512_set1_epi32(off * i32_at(y.add(QK + 4))));
            let d = _mm512_mul_ps(dw, _mm512_set1_ps(f32_at(y.add(QK))));
            acc[t] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(i), acc[t]);
            if MIN {
                acc[t] = _mm512_fmadd_ps(mw, _mm512_set1_ps(f32_at(y.add(QK + 8))), acc[t]);
            }
        }
    }
    store(&acc, out);
}

/// Q8_0: the signed weights biased by 128 into u8, so sum(w * a) = sum((w + 128) * a) -
/// 128 * sum(a), with sum(a) stored in the A8 block.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q8_0<const T: usize>(
    nb: usize,
    w0: *const u8,
    w1: *const u8,
    a: *const u8,
    stride: usize,
    out: &mut Out2,
) {
    let bias = _mm512_set1_epi8(-128);
    let bb = 16 + 256;
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..nb {
        let (b0, b1) = (w0.add(b * bb), w1.add(b * bb));
        prefetch_ahead::<T>(w0, w1, b, nb, bb);
        let dw = ph2(b0, b1, 0);
        let u: [__m512i; 8] =
            std::array::from_fn(|j| _mm512_xor_si512(ld2(b0, b1, 16 + 32 * j), bias));
        for t in 0..T {
            let y = a.add(t * stride + b * A8_BLOCK);
            let i = dot(&u, y, |c| 4 * c);
            let i = _mm512_sub_epi32(i, _mm512_set1_epi32(128 * i32_at(y.add(QK + 4))));
            let d = _mm512_mul_ps(dw, _mm512_set1_ps(f32_at(y.add(QK))));
            acc[t] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(i), acc[t]);
        }
    }
    store(&acc, out);
}

/// Q4_K: per sub-block an exact i32 dot (`vpdpbusd`), converted to f32 and accumulated times
/// the row's sub-block scale by one FMA (`vcvtdq2ps` + `vfmadd`: 2 uops, one of which can
/// issue on port 5, where `vpmulld` + `vpaddd` put 2 of their 3 on port 0 with the
/// `vpdpbusd`s; each product is exact in f32, |dot * scale| < 2^22, so only the block's
/// running sum can round, past 2^24); each 32-byte vector of a sub-block pair is loaded once
/// for both sub-blocks (its low and high nibbles); the mins by `vpdpwssd`.
/// Q5_K (`HB`): the 5th bits ORed in as each nibble vector is decoded (one `vpternlogd`).
/// The FMA instead of `vpmulld`, matmul_speed t=128, 1 thread: Q4_K 8192x2048 292-296 ->
/// 301-316 GFLOP/s, Q5_K 2048x2048 259-263 -> 278-286.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q4_k<const HB: bool, const T: usize>(
    nb: usize,
    w0: *const u8,
    w1: *const u8,
    a: *const u8,
    stride: usize,
    out: &mut Out2,
) {
    let m4 = _mm512_set1_epi8(0x0F);
    let bb = if HB { Kind::Q5_K } else { Kind::Q4_K }.block_bytes();
    let m10 = _mm512_set1_epi8(0x10);
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..nb {
        let (b0, b1) = (w0.add(b * bb), w1.add(b * bb));
        let ya = |t: usize| a.add(t * stride + b * A8K_BLOCK);
        let mut fsum = [_mm512_setzero_ps(); T];
        for p in 0..4 {
            prefetch_part::<T>(w0, w1, b, nb, bb, p, 4);
            let q = K4_QS + 256 * p;
            let mut lo = [_mm512_setzero_si512(); 8];
            let mut hi = [_mm512_setzero_si512(); 8];
            for c in 0..8 {
                let v = ld2(b0, b1, q + 32 * c);
                lo[c] = _mm512_and_si512(v, m4);
                hi[c] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), m4);
                if HB {
                    // Bits 2p (low nibbles) and 2p+1 (high) of the qh bytes, to bit 4.
                    let h = ld2(b0, b1, K5_QH + 32 * c);
                    let (hl, hh) = match p {
                        0 => (_mm512_slli_epi16::<4>(h), _mm512_slli_epi16::<3>(h)),
                        1 => (_mm512_slli_epi16::<2>(h), _mm512_slli_epi16::<1>(h)),
                        2 => (h, _mm512_srli_epi16::<1>(h)),
                        _ => (_mm512_srli_epi16::<2>(h), _mm512_srli_epi16::<3>(h)),
                    };
                    lo[c] = _mm512_ternarylogic_epi32::<0xF8>(lo[c], hl, m10);
                    hi[c] = _mm512_ternarylogic_epi32::<0xF8>(hi[c], hh, m10);
                }
            }
            let scale =
                |j: usize| _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(ld2_64(b0, b1, K4_SC + 8 * j)));
            let (sc0, sc1) = (scale(2 * p), scale(2 * p + 1));
            for t in 0..T {
                let y = ya(t).add(4 + 64 * p);
                let d0 = dot(&lo, y, |c| 4 * c);
                let d1 = dot(&hi, y.add(32), |c| 4 * c);
                fsum[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d0), sc0, fsum[t]);
                fsum[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d1), sc1, fsum[t]);
            }
        }
        let dw = ph2(b0, b1, 0);
        let dmw = ph2(b0, b1, 16);
        for t in 0..T {
            let y = ya(t);
            let mut msum = _mm512_setzero_si512();
            for p in 0..4 {
                let mv = _mm512_cvtepu8_epi16(ld2_128(b0, b1, K4_MIN + 16 * p));
                msum = _mm512_dpwssd_epi32(msum, mv, bcast4(y.add(260 + 4 * p)));
            }
            let da = _mm512_set1_ps(f32_at(y));
            acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(dw, da), fsum[t], acc[t]);
            acc[t] = _mm512_fnmadd_ps(_mm512_mul_ps(dmw, da), _mm512_cvtepi32_ps(msum), acc[t]);
        }
    }
    store(&acc, out);
}

/// The IQ4 levels + 128 (as unsigned bytes), in every 128-bit lane, for `pshufb`.
#[inline(always)]
unsafe fn iq4_lut_biased() -> __m512i {
    let l = _mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i);
    _mm512_broadcast_i32x4(_mm_xor_si128(l, _mm_set1_epi8(-128)))
}

/// IQ4_NL: the nibbles looked up as levels + 128, `vpdpbusd`, minus 128 * sum(a) (as Q8_0).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn iq4_nl<const T: usize>(
    nb: usize,
    w0: *const u8,
    w1: *const u8,
    a: *const u8,
    stride: usize,
    out: &mut Out2,
) {
    let (m4, lut) = (_mm512_set1_epi8(0x0F), iq4_lut_biased());
    let bb = Kind::IQ4_NL.block_bytes();
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..nb {
        let (b0, b1) = (w0.add(b * bb), w1.add(b * bb));
        prefetch_ahead::<T>(w0, w1, b, nb, bb);
        let dw = ph2(b0, b1, 0);
        let mut u = [_mm512_setzero_si512(); 8];
        for j in 0..4 {
            let v = ld2(b0, b1, 16 + 32 * j);
            u[j] = _mm512_shuffle_epi8(lut, _mm512_and_si512(v, m4));
            u[4 + j] = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16::<4>(v), m4));
        }
        for t in 0..T {
            let y = a.add(t * stride + b * A8_BLOCK);
            let i = dot(&u, y, |c| if c < 4 { 4 * c } else { 16 + 4 * (c - 4) });
            let i = _mm512_sub_epi32(i, _mm512_set1_epi32(128 * i32_at(y.add(QK + 4))));
            let d = _mm512_mul_ps(dw, _mm512_set1_ps(f32_at(y.add(QK))));
            acc[t] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(i), acc[t]);
        }
    }
    store(&acc, out);
}

/// IQ4_XS: per sub-block IQ4_NL's biased `vpdpbusd` dot, minus 128 * the sub-block's sum,
/// times its signed scale (`vpmulld`).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn iq4_xs<const T: usize>(
    nb: usize,
    w0: *const u8,
    w1: *const u8,
    a: *const u8,
    stride: usize,
    out: &mut Out2,
) {
    let (m4, lut) = (_mm512_set1_epi8(0x0F), iq4_lut_biased());
    let bb = Kind::IQ4_XS.block_bytes();
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..nb {
        let (b0, b1) = (w0.add(b * bb), w1.add(b * bb));
        let ya = |t: usize| a.add(t * stride + b * A8K_BLOCK);
        let mut isum = [_mm512_setzero_si512(); T];
        for j in 0..8 {
            if j % 2 == 0 {
                prefetch_part::<T>(w0, w1, b, nb, bb, j / 2, 4);
            }
            let q = KX_QS + 128 * j;
            let mut u = [_mm512_setzero_si512(); 8];
            for c in 0..4 {
                let v = ld2(b0, b1, q + 32 * c);
                u[c] = _mm512_shuffle_epi8(lut, _mm512_and_si512(v, m4));
                u[4 + c] =
                    _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16::<4>(v), m4));
            }
            let sc = _mm512_cvtepi8_epi32(ld2_64(b0, b1, KX_SC + 8 * j));
            for t in 0..T {
                let y = ya(t);
                let d = dot(&u, y.add(4 + 32 * j), |c| {
                    if c < 4 {
                        4 * c
                    } else {
                        16 + 4 * (c - 4)
                    }
                });
                let bsum = std::ptr::read_unaligned(y.add(260 + 2 * j) as *const i16) as i32;
                let d = _mm512_sub_epi32(d, _mm512_set1_epi32(128 * bsum));
                isum[t] = _mm512_add_epi32(isum[t], _mm512_mullo_epi32(d, sc));
            }
        }
        close_block(&mut acc, b0, b1, &isum, ya);
    }
    store(&acc, out);
}

/// Q2_K: per 16-element group, the u2 x i8 dot by `vpdpbusd` (|.| <= 3 * 128 * 16 < 2^15,
/// so `vpmaddwd` with (scale, 0) pairs scales it); the mins' sum(m_g * sum of group g) per
/// super-block first (`offset_pairs` on the mins / 16: exact, its terms are multiples of 16).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q2_k<const T: usize>(
    nb: usize,
    w0: *const u8,
    w1: *const u8,
    a: *const u8,
    stride: usize,
    out: &mut Out2,
) {
    let bb = Kind::Q2_K.block_bytes();
    let (m3, m15) = (_mm512_set1_epi8(3), _mm512_set1_epi32(15));
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..nb {
        let (b0, b1) = (w0.add(b * bb), w1.add(b * bb));
        let ya = |t: usize| a.add(t * stride + b * A8K_BLOCK);
        let msum = offset_pairs_by::<T, true>(b0, b1, K2_SC, ya);
        let mut isum = [_mm512_setzero_si512(); T];
        for g in 0..16 {
            if g % 4 == 0 {
                prefetch_part::<T>(w0, w1, b, nb, bb, g / 4, 4);
            }
            let lq = ld2(b0, b1, K2_Q + 32 * g);
            let wv = [
                _mm512_and_si512(lq, m3),
                _mm512_and_si512(_mm512_srli_epi16::<2>(lq), m3),
                _mm512_and_si512(_mm512_srli_epi16::<4>(lq), m3),
                _mm512_and_si512(_mm512_srli_epi16::<6>(lq), m3),
            ];
            // (scale, 0) per lane, as Q3_K's.
            let sc = _mm512_and_si512(_mm512_cvtepu8_epi32(ld2_64(b0, b1, K2_SC + 8 * g)), m15);
            for t in 0..T {
                let d = dot(&wv, ya(t).add(4 + 16 * g), |c| 4 * c);
                isum[t] = _mm512_add_epi32(isum[t], _mm512_madd_epi16(d, sc));
            }
        }
        let dw = ph2(b0, b1, 0);
        let dmw = ph2(b0, b1, 16);
        for t in 0..T {
            let da = _mm512_set1_ps(f32_at(ya(t)));
            let m = _mm512_cvtepi32_ps(_mm512_srai_epi32::<4>(msum[t]));
            acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(dw, da), _mm512_cvtepi32_ps(isum[t]), acc[t]);
            acc[t] = _mm512_fnmadd_ps(_mm512_mul_ps(dmw, da), m, acc[t]);
        }
    }
    store(&acc, out);
}

/// Q3_K: per 16-element group, the u3 x i8 dot by `vpdpbusd` (|.| <= 7 * 128 * 16 < 2^15, so
/// `vpmaddwd` with (sc, 0) pairs scales it); the -4 offset's 4 * sum(sc_g * sum of group g)
/// per super-block first (`offset_pairs` / 4: exact, its terms are multiples of 16).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q3_k<const T: usize>(
    nb: usize,
    w0: *const u8,
    w1: *const u8,
    a: *const u8,
    stride: usize,
    out: &mut Out2,
) {
    let bb = Kind::Q3_K.block_bytes();
    let (m3, m4) = (_mm512_set1_epi8(3), _mm512_set1_epi8(4));
    let lo16 = _mm512_set1_epi32(0xFFFF);
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..nb {
        let (b0, b1) = (w0.add(b * bb), w1.add(b * bb));
        let ya = |t: usize| a.add(t * stride + b * A8K_BLOCK);
        let mut isum = offset_pairs::<T>(b0, b1, K3_SC, ya);
        for t in 0..T {
            isum[t] = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_srai_epi32::<2>(isum[t]));
        }
        for g in 0..16 {
            if g % 4 == 0 {
                prefetch_part::<T>(w0, w1, b, nb, bb, g / 4, 4);
            }
            let lq = ld2(b0, b1, K3_Q + 32 * g);
            let hq = ld2(b0, b1, K3_H + 32 * (g / 2));
            let wv: [__m512i; 4] = std::array::from_fn(|c| {
                let low = match c {
                    0 => lq,
                    1 => _mm512_srli_epi16::<2>(lq),
                    2 => _mm512_srli_epi16::<4>(lq),
                    _ => _mm512_srli_epi16::<6>(lq),
                };
                let high = match c + 4 * (g % 2) {
                    0 => _mm512_slli_epi16::<2>(hq),
                    1 => _mm512_slli_epi16::<1>(hq),
                    2 => hq,
                    3 => _mm512_srli_epi16::<1>(hq),
                    4 => _mm512_srli_epi16::<2>(hq),
                    5 => _mm512_srli_epi16::<3>(hq),
                    6 => _mm512_srli_epi16::<4>(hq),
                    _ => _mm512_srli_epi16::<5>(hq),
                };
                _mm512_ternarylogic_epi32::<0xF8>(_mm512_and_si512(low, m3), high, m4)
            });
            // (sc, 0) per lane: the dot's low i16 times sc, its sign-extension half times 0.
            let sc = _mm512_and_si512(_mm512_cvtepi8_epi32(ld2_64(b0, b1, K3_SC + 8 * g)), lo16);
            for t in 0..T {
                let d = dot(&wv, ya(t).add(4 + 16 * g), |c| 4 * c);
                isum[t] = _mm512_add_epi32(isum[t], _mm512_madd_epi16(d, sc));
            }
        }
        close_block(&mut acc, b0, b1, &isum, ya);
    }
    store(&acc, out);
}

/// Q6_K: per 16-element group, the u6 x i8 dot by `vpdpbusd` (the products sum in i32, 4
/// instructions per token instead of 4 `maddubs`, 2 adds and 2 `vpdpwssd`), times the
/// group's scale by an f32 FMA as in `q4_k` (|dot * scale| < 2^24: exact); the -32 offset's
/// 32 * sum(sc_g * sum of group g) per super-block first (2 * `offset_pairs`, in i32), the
/// f32 sum's starting value.
/// matmul_speed 2048x2048 t=64, 1 thread: 195-218 -> 226-229 GFLOP/s; the FMA instead of
/// `vpmulld`, 2048x8192 t=128: 194-202 -> 216-221.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q6_k<const T: usize>(
    nb: usize,
    w0: *const u8,
    w1: *const u8,
    a: *const u8,
    stride: usize,
    out: &mut Out2,
) {
    let bb = Kind::Q6_K.block_bytes();
    let m4 = _mm512_set1_epi8(0x0F);
    let m30 = _mm512_set1_epi8(0x30);
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..nb {
        let (b0, b1) = (w0.add(b * bb), w1.add(b * bb));
        let ya = |t: usize| a.add(t * stride + b * A8K_BLOCK);
        let off = offset_pairs::<T>(b0, b1, K6_SC, ya);
        let mut fsum = [_mm512_setzero_ps(); T];
        for t in 0..T {
            fsum[t] = _mm512_cvtepi32_ps(_mm512_sub_epi32(
                _mm512_setzero_si512(),
                _mm512_slli_epi32::<1>(off[t]),
            ));
        }
        for g in 0..16 {
            if g % 4 == 0 {
                prefetch_part::<T>(w0, w1, b, nb, bb, g / 4, 4);
            }
            let q = K6_QS + 96 * g;
            let l0 = ld2(b0, b1, q);
            let l1 = ld2(b0, b1, q + 32);
            let hb = ld2(b0, b1, q + 64);
            let wv = [
                _mm512_ternarylogic_epi32::<0xF8>(
                    _mm512_and_si512(l0, m4),
                    _mm512_slli_epi16::<4>(hb),
                    m30,
                ),
                _mm512_ternarylogic_epi32::<0xF8>(
                    _mm512_and_si512(l1, m4),
                    _mm512_slli_epi16::<2>(hb),
                    m30,
                ),
                _mm512_ternarylogic_epi32::<0xF8>(
                    _mm512_and_si512(_mm512_srli_epi16::<4>(l0), m4),
                    hb,
                    m30,
                ),
                _mm512_ternarylogic_epi32::<0xF8>(
                    _mm512_and_si512(_mm512_srli_epi16::<4>(l1), m4),
                    _mm512_srli_epi16::<2>(hb),
                    m30,
                ),
            ];
            let sc = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(ld2_64(b0, b1, K6_SC + 8 * g)));
            for t in 0..T {
                let d = dot(&wv, ya(t).add(4 + 16 * g), |c| 4 * c);
                fsum[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), sc, fsum[t]);
            }
        }
        close_block_f(&mut acc, b0, b1, &fsum, ya);
    }
    store(&acc, out);
}
