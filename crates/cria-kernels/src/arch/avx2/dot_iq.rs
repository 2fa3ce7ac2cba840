//! AVX2 dots of the IQ grid types against Q8_K; twins of `arch::scalar::dot_iq`.
//!
//! Per 32-element sub-block: the grid magnitudes are gathered from the tables into one vector
//! (4 u64 or 8 u32 entries), the sign bits are expanded to +-1 bytes and put on the activations
//! (`sign_epi8`), and `maddubs` (u8 magnitudes x i8) then `madd` with the sub-block's scales give
//! i32 partial sums. No pair saturates: magnitudes <= 62 and |activation| <= 127. Each block's
//! integer sum is reduced exactly and the f32 part is done in the scalar kernel's order, so the
//! results are bitwise equal to the scalar twin's (tests/iq.rs checks it).

#![allow(clippy::missing_safety_doc)]
#![allow(clippy::needless_range_loop)]

use super::dot::{f32_at, h2f, loadu, q8k_block};
use crate::dot::layout::*;
use cria_core::quant_iq::{
    iq1_m_group, iq1_m_scales, IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID,
    IQ3XXS_GRID, KSIGNS_IQ2XS,
};
use std::arch::x86_64::*;
use std::ptr::read_unaligned;

// The grid types as const-generic kinds (trait methods cannot carry `#[target_feature]`).
pub(crate) const IQ2_XXS: u8 = 0;
pub(crate) const IQ2_XS: u8 = 1;
pub(crate) const IQ2_S: u8 = 2;
pub(crate) const IQ3_XXS: u8 = 3;
pub(crate) const IQ3_S: u8 = 4;

avx2_fn! {
/// Exact sum of the 8 i32 lanes.
unsafe fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}
}

avx2_fn! {
/// +1 / -1 bytes from 32 sign bits (bit j set: element j negative).
unsafe fn signs32(s: u32) -> __m256i {
    let v = _mm256_set1_epi32(s as i32);
    let pick = _mm256_set_epi64x(
        0x0303_0303_0303_0303,
        0x0202_0202_0202_0202,
        0x0101_0101_0101_0101,
        0,
    );
    let bits = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(v, pick), bits), bits);
    _mm256_or_si256(set, _mm256_set1_epi8(1))
}
}

#[inline(always)]
fn ks(aux: u32, l: usize) -> u32 {
    KSIGNS_IQ2XS[(aux >> (7 * l) & 127) as usize] as u32
}

#[inline(always)]
fn ks4(aux: u32) -> u32 {
    ks(aux, 0) | ks(aux, 1) << 8 | ks(aux, 2) << 16 | ks(aux, 3) << 24
}

avx2_fn! {
/// 8 entries of a 4-wide IQ3 grid as one vector.
unsafe fn gather3(grid: &[u32], idx: [usize; 8]) -> __m256i {
    let g = |k: usize| grid[idx[k]] as i32;
    _mm256_set_epi32(g(7), g(6), g(5), g(4), g(3), g(2), g(1), g(0))
}
}

avx2_fn! {
/// Sub-block `ib` of a grid-type block: the 32 magnitudes, the 32 sign bits and the scales of
/// its two 16-element halves.
unsafe fn grid_sub<const K: u8>(x: *const u8, ib: usize) -> (__m256i, u32, i16, i16) {
    let b = |o: usize| *x.add(o) as usize;
    match K {
        IQ2_XXS => {
            let q = 2 + 8 * ib;
            let aux = read_unaligned(x.add(q + 4) as *const u32);
            let g = |l: usize| IQ2XXS_GRID[b(q + l)] as i64;
            let ls = 2 * (aux >> 28) as i16 + 1;
            (_mm256_set_epi64x(g(3), g(2), g(1), g(0)), ks4(aux), ls, ls)
        }
        IQ2_XS => {
            let q: [u16; 4] = std::array::from_fn(|l| read_unaligned(x.add(2 + 2 * (4 * ib + l)) as *const u16));
            let g = |l: usize| IQ2XS_GRID[(q[l] & 511) as usize] as i64;
            let s = (0..4).fold(0u32, |s, l| s | (KSIGNS_IQ2XS[(q[l] >> 9) as usize] as u32) << (8 * l));
            let sc = b(66 + ib) as i16;
            (_mm256_set_epi64x(g(3), g(2), g(1), g(0)), s, 2 * (sc & 0xF) + 1, 2 * (sc >> 4) + 1)
        }
        IQ2_S => {
            let qh = b(66 + ib);
            let g = |l: usize| IQ2S_GRID[b(2 + 4 * ib + l) | (qh << (8 - 2 * l) & 0x300)] as i64;
            let s = read_unaligned(x.add(34 + 4 * ib) as *const u32);
            let sc = b(74 + ib) as i16;
            (_mm256_set_epi64x(g(3), g(2), g(1), g(0)), s, 2 * (sc & 0xF) + 1, 2 * (sc >> 4) + 1)
        }
        IQ3_XXS => {
            let aux = read_unaligned(x.add(66 + 4 * ib) as *const u32);
            let v = gather3(&IQ3XXS_GRID, std::array::from_fn(|k| b(2 + 8 * ib + k)));
            let ls = 2 * (aux >> 28) as i16 + 1;
            (v, ks4(aux), ls, ls)
        }
        _ => {
            // IQ3_S
            let qh = b(66 + ib);
            let v = gather3(
                &IQ3S_GRID,
                std::array::from_fn(|k| b(2 + 8 * ib + k) | (qh << (8 - k) & 256)),
            );
            let s = read_unaligned(x.add(74 + 4 * ib) as *const u32);
            let sc = b(106 + ib / 2) as i16;
            let ls = 2 * (if ib % 2 == 0 { sc & 0xF } else { sc >> 4 }) + 1;
            (v, s, ls, ls)
        }
    }
}
}

avx2_fn! {
/// Grid kinds: result = mul * sum_blocks (d * dy) * isum, as the scalar twin.
pub(crate) unsafe fn dot_iq_grid<const K: u8, const R: usize>(nb: usize, w: *const u8, a: *const u8, stride: usize, out: *mut f32) {
    let (bytes, mul) = match K {
        IQ2_XXS => (IQ2_XXS_BYTES, 0.125f32),
        IQ2_XS => (IQ2_XS_BYTES, 0.125),
        IQ2_S => (IQ2_S_BYTES, 0.125),
        IQ3_XXS => (IQ3_XXS_BYTES, 0.25),
        _ => (IQ3_S_BYTES, 1.0),
    };
    let mut sumf = [0f32; R];
    for i in 0..nb {
        let x = w.add(i * bytes);
        let mut sumi = [_mm256_setzero_si256(); R];
        for ib in 0..8 {
            let (v, s, l1, l2) = grid_sub::<K>(x, ib);
            let sg = signs32(s);
            let sc = _mm256_set_m128i(_mm_set1_epi16(l2), _mm_set1_epi16(l1));
            for r in 0..R {
                let qy = loadu(q8k_block(a, stride, r, i).add(4 + 32 * ib));
                let p = _mm256_maddubs_epi16(v, _mm256_sign_epi8(qy, sg));
                sumi[r] = _mm256_add_epi32(sumi[r], _mm256_madd_epi16(p, sc));
            }
        }
        let dx = h2f(x);
        for r in 0..R {
            let dy = f32_at(q8k_block(a, stride, r, i));
            sumf[r] += dx * dy * hsum_epi32(sumi[r]) as f32;
        }
    }
    for r in 0..R {
        *out.add(r) = mul * sumf[r];
    }
}
}

avx2_fn! {
/// Four IQ1 grid entries (bytes -1, 0, 1) as one vector.
unsafe fn gather1(idx: [usize; 4]) -> __m256i {
    let g = |l: usize| IQ1S_GRID[idx[l] & 2047] as i64;
    _mm256_set_epi64x(g(3), g(2), g(1), g(0))
}
}

avx2_fn! {
pub(crate) unsafe fn dot_iq1_s<const R: usize>(nb: usize, w: *const u8, a: *const u8, stride: usize, out: *mut f32) {
    let mut sumf = [0f32; R];
    for i in 0..nb {
        let x = w.add(i * IQ1_S_BYTES);
        let mut sumi = [_mm256_setzero_si256(); R];
        let mut sumi1 = [0i32; R];
        for ib in 0..8 {
            let qh = read_unaligned(x.add(34 + 2 * ib) as *const u16) as usize;
            let v = gather1(std::array::from_fn(|l| *x.add(2 + 4 * ib + l) as usize | ((qh >> (3 * l)) & 7) << 8));
            let ls = 2 * ((qh >> 12) & 7) as i32 + 1;
            let delta = if qh & 0x8000 != 0 { -1 } else { 1 };
            let (uv, sc) = (_mm256_sign_epi8(v, v), _mm256_set1_epi16(ls as i16));
            for r in 0..R {
                let y = q8k_block(a, stride, r, i);
                let qy = loadu(y.add(4 + 32 * ib));
                let p = _mm256_maddubs_epi16(uv, _mm256_sign_epi8(qy, v));
                sumi[r] = _mm256_add_epi32(sumi[r], _mm256_madd_epi16(p, sc));
                let bs = |g: usize| read_unaligned(y.add(260 + 2 * g) as *const i16) as i32;
                sumi1[r] += ls * delta * (bs(2 * ib) + bs(2 * ib + 1));
            }
        }
        let dx = h2f(x);
        for r in 0..R {
            let dy = f32_at(q8k_block(a, stride, r, i));
            sumf[r] += dx * dy * (hsum_epi32(sumi[r]) as f32 + 0.125 * sumi1[r] as f32);
        }
    }
    for r in 0..R {
        *out.add(r) = sumf[r];
    }
}
}

avx2_fn! {
pub(crate) unsafe fn dot_iq1_m<const R: usize>(nb: usize, w: *const u8, a: *const u8, stride: usize, out: *mut f32) {
    let ones = _mm256_set1_epi8(1);
    let mut sumf = [0f32; R];
    for i in 0..nb {
        let x = std::slice::from_raw_parts(w.add(i * IQ1_M_BYTES), IQ1_M_BYTES);
        let (sc, d) = iq1_m_scales(x);
        let mut s1 = [_mm256_setzero_si256(); R];
        let mut s2 = [_mm256_setzero_si256(); R];
        for ib in 0..8 {
            let (idx, neg) = iq1_m_group(x, ib);
            let v = gather1(idx);
            let dl = |l: usize| if neg[l] { -1i64 } else { 0x0101_0101_0101_0101 };
            let dv = _mm256_set_epi64x(dl(3), dl(2), dl(1), dl(0));
            let s = sc[ib / 2] >> (6 * (ib % 2));
            let scv = _mm256_set_m128i(
                _mm_set1_epi16(2 * ((s >> 3) & 7) as i16 + 1),
                _mm_set1_epi16(2 * (s & 7) as i16 + 1),
            );
            let uv = _mm256_sign_epi8(v, v);
            for r in 0..R {
                let qy = loadu(q8k_block(a, stride, r, i).add(4 + 32 * ib));
                let p1 = _mm256_maddubs_epi16(uv, _mm256_sign_epi8(qy, v));
                s1[r] = _mm256_add_epi32(s1[r], _mm256_madd_epi16(p1, scv));
                let p2 = _mm256_maddubs_epi16(ones, _mm256_sign_epi8(qy, dv));
                s2[r] = _mm256_add_epi32(s2[r], _mm256_madd_epi16(p2, scv));
            }
        }
        for r in 0..R {
            let dy = f32_at(q8k_block(a, stride, r, i));
            sumf[r] += d * dy * (hsum_epi32(s1[r]) as f32 + 0.125 * hsum_epi32(s2[r]) as f32);
        }
    }
    for r in 0..R {
        *out.add(r) = sumf[r];
    }
}
}
