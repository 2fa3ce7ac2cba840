//! AVX2 dots of the IQ grid types against Q8_K; twins of `arch::scalar::dot_iq`.
//!
//! Per 32-element sub-block: the grid magnitudes are gathered from the tables into one vector
//! (4 u64 or 8 u32 entries), the signs become +-1 bytes (from `SIGNS64`, one u64 per 7-bit
//! sign index, or expanded from raw sign bits) and are put on the activations (`sign_epi8`),
//! and `maddubs` (u8 magnitudes x i8) then `madd` with the sub-block's scales give i32 partial
//! sums. No pair saturates: magnitudes <= 62 and |activation| <= 127. Scales that differ between
//! a sub-block's two halves are decoded once per block into one vector and picked per sub-block
//! with a byte shuffle. Each block's integer sum is reduced exactly and the f32 part is done in
//! the scalar kernel's order, so the results are bitwise equal to the scalar twin's (tests/iq.rs
//! checks it).

#![allow(clippy::missing_safety_doc)]
#![allow(clippy::needless_range_loop)]

use super::dot::{f32_at, h2f, loadu, q8k_block};
use crate::dot::layout::*;
use cria_core::quant_iq::{
    IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID, KSIGNS_IQ2XS,
};
use std::arch::x86_64::*;
use std::ptr::read_unaligned;

// The grid types as const-generic kinds (trait methods cannot carry `#[target_feature]`).
pub(crate) const IQ2_XXS: u8 = 0;
pub(crate) const IQ2_XS: u8 = 1;
pub(crate) const IQ2_S: u8 = 2;
pub(crate) const IQ3_XXS: u8 = 3;
pub(crate) const IQ3_S: u8 = 4;

/// +-1 bytes of the 8 signs of each 7-bit sign index (`KSIGNS_IQ2XS`: bit j set, element j
/// negative), as llama.cpp's `keven_signs_q2xs`.
static SIGNS64: [u64; 128] = {
    let mut t = [0u64; 128];
    let mut i = 0;
    while i < 128 {
        let s = KSIGNS_IQ2XS[i];
        let mut j = 0;
        while j < 8 {
            t[i] |= (if s >> j & 1 != 0 { 0xFF } else { 0x01 }) << (8 * j);
            j += 1;
        }
        i += 1;
    }
    t
};

/// IQ1_M: the deltas of the two 8-element groups a `qh` byte governs (bit 3: first group,
/// bit 7: second; set: -1), as 16 bytes of -1 / +1.
static IQ1M_DELTA16: [[u64; 2]; 256] = {
    let mut t = [[0u64; 2]; 256];
    let mut h = 0;
    while h < 256 {
        t[h][0] = if h & 0x08 != 0 {
            u64::MAX
        } else {
            0x0101_0101_0101_0101
        };
        t[h][1] = if h & 0x80 != 0 {
            u64::MAX
        } else {
            0x0101_0101_0101_0101
        };
        h += 1;
    }
    t
};

/// Accumulators per column: two (even / odd sub-blocks) for one column, for more independent
/// adds; one for several columns, where the columns already give that and registers are short.
const fn accs(r: usize) -> usize {
    if r == 1 {
        2
    } else {
        1
    }
}

avx2_fn! {
/// `acc + madd(p, sc)` (pairs of i16 products summed into i32 lanes, no saturation); with
/// `V` one AVX512-VNNI `vpdpwssd`, which computes the same wrapping sum. `V` kernels run only
/// inside the AVX-512 row loops (`arch::avx512::dot_iq`), where `vnni_madd` inlines.
unsafe fn acc_madd<const V: bool>(acc: __m256i, p: __m256i, sc: __m256i) -> __m256i {
    if V {
        vnni_madd(acc, p, sc)
    } else {
        _mm256_add_epi32(acc, _mm256_madd_epi16(p, sc))
    }
}
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn vnni_madd(acc: __m256i, p: __m256i, sc: __m256i) -> __m256i {
    _mm256_dpwssd_epi32(acc, p, sc)
}

/// IQ1_M: the deltas of a sub-block's four groups from the 4 delta bits of its two qh bytes
/// (bit l: group l negative), 32 bytes of -1 / +1.
#[repr(align(32))]
struct Delta32([u64; 4]);
static IQ1M_DELTA32: [Delta32; 16] = {
    let mut t = [const { Delta32([0; 4]) }; 16];
    let mut b = 0;
    while b < 16 {
        let mut l = 0;
        while l < 4 {
            t[b].0[l] = if b >> l & 1 != 0 {
                u64::MAX
            } else {
                0x0101_0101_0101_0101
            };
            l += 1;
        }
        b += 1;
    }
    t
};

/// IQ1_M sub-block fields with BMI2: from its 4 qs bytes and its 2 qh bytes (as `h`), the four
/// 11-bit grid indices as the u16s of one u64 (qs | the 3 low bits of each qh nibble << 8) and
/// the four delta bits (bit 3 of each nibble). Inline asm, so that it inlines into the AVX2
/// kernels (a `target_feature` function would not): callers must have checked for BMI2.
#[inline(always)]
unsafe fn iq1m_bits(q4: u64, h: u64) -> (u64, usize) {
    let (packed, dbits): (u64, u64);
    // SAFETY: register-only BMI2 instructions; only the V kernels call this, and those run
    // only where `dot::avx512_iq_vec_dot` found BMI2.
    std::arch::asm!(
        "pext {t}, {h}, {m7}",
        "pdep {t}, {t}, {d7}",
        "pdep {p}, {q}, {d8}",
        "or {p}, {t}",
        "pext {e}, {h}, {m8}",
        h = in(reg) h,
        q = in(reg) q4,
        m7 = in(reg) 0x7777u64,
        d7 = in(reg) 0x0700_0700_0700_0700u64,
        d8 = in(reg) 0x00FF_00FF_00FF_00FFu64,
        m8 = in(reg) 0x8888u64,
        t = out(reg) _,
        p = out(reg) packed,
        e = out(reg) dbits,
        options(pure, nomem, nostack),
    );
    (packed, dbits as usize)
}

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

avx2_fn! {
/// +-1 bytes of four 7-bit sign indices (bits 0..28 of `aux`, 7 per 8 elements).
unsafe fn signs_ks(aux: u32) -> __m256i {
    let s = |l: u32| SIGNS64[(aux >> (7 * l) & 127) as usize] as i64;
    _mm256_set_epi64x(s(3), s(2), s(1), s(0))
}
}

avx2_fn! {
/// Per-block scale vector of two-scale types from 8 bytes at `p` (low nibble: first half of
/// sub-block j, high nibble: second): words j of the low 128 bits = 2 * lo_j + 1, of the high
/// 128 bits = 2 * hi_j + 1.
unsafe fn nibble_scales(p: *const u8) -> __m256i {
    let w = _mm_cvtepu8_epi16(_mm_loadl_epi64(p as *const __m128i));
    let m = _mm_set1_epi16(0xF);
    let v = _mm256_set_m128i(_mm_srli_epi16(w, 4), _mm_and_si128(w, m));
    _mm256_or_si256(_mm256_add_epi16(v, v), _mm256_set1_epi16(1))
}
}

avx2_fn! {
/// Sub-block `ib`'s scales from a per-block scale vector: word `ib` of each 128-bit half,
/// broadcast across that half.
unsafe fn pick_scale(s: __m256i, ib: usize) -> __m256i {
    let b = (2 * ib) as i8;
    _mm256_shuffle_epi8(s, _mm256_set1_epi16(i16::from_le_bytes([b as u8, b as u8 + 1])))
}
}

avx2_fn! {
/// 8 entries of a 4-wide IQ3 grid as one vector (the indices are below N by construction, so
/// the bounds checks fold away).
unsafe fn gather3<const N: usize>(grid: &[u32; N], idx: [usize; 8]) -> __m256i {
    let g = |k: usize| grid[idx[k]] as i32;
    _mm256_set_epi32(g(7), g(6), g(5), g(4), g(3), g(2), g(1), g(0))
}
}

avx2_fn! {
/// Per-block scale vector (zero for the kinds whose two halves share a scale).
unsafe fn block_scales<const K: u8>(x: *const u8) -> __m256i {
    match K {
        IQ2_XS => nibble_scales(x.add(66)),
        IQ2_S => nibble_scales(x.add(74)),
        _ => _mm256_setzero_si256(),
    }
}
}

avx2_fn! {
/// Sub-block `ib` of a grid-type block: the 32 magnitudes, the 32 +-1 signs and the scales of
/// its two 16-element halves (`bs`: the block's scale vector). `hw`: read the grid with the
/// hardware gathers (`vpgatherdd` / `vpgatherdq`), where they measured faster than scalar reads
/// on the AVX-512 (VNNI) machine: IQ3_XXS and IQ3_S, IQ2_S with one column; IQ2_XXS / IQ2_XS
/// measured slower, so they keep the scalar reads.
unsafe fn grid_sub<const K: u8>(x: *const u8, ib: usize, bs: __m256i, hw: bool) -> (__m256i, __m256i, __m256i) {
    let b = |o: usize| *x.add(o) as usize;
    match K {
        IQ2_XXS => {
            let q = 2 + 8 * ib;
            let aux = read_unaligned(x.add(q + 4) as *const u32);
            let g = |l: usize| *IQ2XXS_GRID.get_unchecked(b(q + l)) as i64;
            let ls = 2 * (aux >> 28) as i16 + 1;
            (_mm256_set_epi64x(g(3), g(2), g(1), g(0)), signs_ks(aux), _mm256_set1_epi16(ls))
        }
        IQ2_XS => {
            let q: [u16; 4] = std::array::from_fn(|l| read_unaligned(x.add(2 + 2 * (4 * ib + l)) as *const u16));
            let g = |l: usize| *IQ2XS_GRID.get_unchecked((q[l] & 511) as usize) as i64;
            let s = |l: usize| *SIGNS64.get_unchecked((q[l] >> 9) as usize) as i64;
            (
                _mm256_set_epi64x(g(3), g(2), g(1), g(0)),
                _mm256_set_epi64x(s(3), s(2), s(1), s(0)),
                pick_scale(bs, ib),
            )
        }
        IQ2_S => {
            let qh = b(66 + ib);
            let v = if hw {
                let q4 = _mm_cvtepu8_epi32(_mm_cvtsi32_si128(read_unaligned(x.add(2 + 4 * ib) as *const i32)));
                let hi = _mm_sllv_epi32(_mm_set1_epi32(qh as i32), _mm_set_epi32(2, 4, 6, 8));
                let idx = _mm_or_si128(q4, _mm_and_si128(hi, _mm_set1_epi32(0x300)));
                _mm256_i32gather_epi64::<8>(IQ2S_GRID.as_ptr() as *const i64, idx)
            } else {
                let g = |l: usize| *IQ2S_GRID.get_unchecked(b(2 + 4 * ib + l) | (qh << (8 - 2 * l) & 0x300)) as i64;
                _mm256_set_epi64x(g(3), g(2), g(1), g(0))
            };
            let s = read_unaligned(x.add(34 + 4 * ib) as *const u32);
            (v, signs32(s), pick_scale(bs, ib))
        }
        IQ3_XXS => {
            let aux = read_unaligned(x.add(66 + 4 * ib) as *const u32);
            let v = if hw {
                let idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64(x.add(2 + 8 * ib) as *const __m128i));
                _mm256_i32gather_epi32::<4>(IQ3XXS_GRID.as_ptr() as *const i32, idx)
            } else {
                gather3(&IQ3XXS_GRID, std::array::from_fn(|k| b(2 + 8 * ib + k)))
            };
            let ls = 2 * (aux >> 28) as i16 + 1;
            (v, signs_ks(aux), _mm256_set1_epi16(ls))
        }
        _ => {
            // IQ3_S
            let qh = b(66 + ib);
            let v = if hw {
                let q8 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(x.add(2 + 8 * ib) as *const __m128i));
                let hi = _mm256_sllv_epi32(_mm256_set1_epi32(qh as i32), _mm256_set_epi32(1, 2, 3, 4, 5, 6, 7, 8));
                let idx = _mm256_or_si256(q8, _mm256_and_si256(hi, _mm256_set1_epi32(256)));
                _mm256_i32gather_epi32::<4>(IQ3S_GRID.as_ptr() as *const i32, idx)
            } else {
                gather3(&IQ3S_GRID, std::array::from_fn(|k| b(2 + 8 * ib + k) | (qh << (8 - k) & 256)))
            };
            let s = read_unaligned(x.add(74 + 4 * ib) as *const u32);
            let sc = b(106 + ib / 2) as i16;
            let ls = 2 * (if ib % 2 == 0 { sc & 0xF } else { sc >> 4 }) + 1;
            (v, signs32(s), _mm256_set1_epi16(ls))
        }
    }
}
}

avx2_fn! {
/// Grid kinds: result = mul * sum_blocks (d * dy) * isum, as the scalar twin.
pub(crate) unsafe fn dot_iq_grid_v<const K: u8, const V: bool, const R: usize>(nb: usize, w: *const u8, a: *const u8, stride: usize, out: *mut f32) {
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
        let bs = block_scales::<K>(x);
        let mut sumi = [[_mm256_setzero_si256(); 2]; R];
        for j in 0..8 / accs(R) {
            for h in 0..accs(R) {
                let ib = accs(R) * j + h;
                let (v, sg, sc) = grid_sub::<K>(x, ib, bs, V && (K != IQ2_S || R == 1));
                for r in 0..R {
                    let qy = loadu(q8k_block(a, stride, r, i).add(4 + 32 * ib));
                    let p = _mm256_maddubs_epi16(v, _mm256_sign_epi8(qy, sg));
                    sumi[r][h] = acc_madd::<V>(sumi[r][h], p, sc);
                }
            }
        }
        let dx = h2f(x);
        for r in 0..R {
            let dy = f32_at(q8k_block(a, stride, r, i));
            sumf[r] += dx * dy * hsum_epi32(_mm256_add_epi32(sumi[r][0], sumi[r][1])) as f32;
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
    let g = |l: usize| *IQ1S_GRID.get_unchecked(idx[l] & 2047) as i64;
    _mm256_set_epi64x(g(3), g(2), g(1), g(0))
}
}

avx2_fn! {
/// IQ1_S. The delta term sum_ib ls * delta * (bsum pair of ib) is one `madd` of the Q8_K
/// block sums with the per-sub-block signed scales, and the block's total is taken as
/// 8 * sumi + sumi1 (each part at most 256 * 127 * 15 in magnitude, so the total is below
/// 2^24 and `total * 0.125` is exactly the scalar `sumi + 0.125 * sumi1`).
pub(crate) unsafe fn dot_iq1_s_v<const V: bool, const R: usize>(nb: usize, w: *const u8, a: *const u8, stride: usize, out: *mut f32) {
    let (m7, one) = (_mm_set1_epi16(7), _mm_set1_epi16(1));
    let mut sumf = [0f32; R];
    for i in 0..nb {
        let x = w.add(i * IQ1_S_BYTES);
        // The 8 qh words: scales 2 * bits 12..14 + 1, delta sign bit 15.
        let qh8 = _mm_loadu_si128(x.add(34) as *const __m128i);
        let ls = _mm_or_si128(_mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(qh8, 12), m7), 1), one);
        let neg = _mm_srai_epi16(qh8, 15);
        let lsd = _mm_sub_epi16(_mm_xor_si128(ls, neg), neg);
        let lsd2 = _mm256_set_m128i(_mm_unpackhi_epi16(lsd, lsd), _mm_unpacklo_epi16(lsd, lsd));
        let ls2 = _mm256_set_m128i(ls, ls);
        let mut sumi = [[_mm256_setzero_si256(); 2]; R];
        for j in 0..8 / accs(R) {
            for h in 0..accs(R) {
                let ib = accs(R) * j + h;
                let qh = read_unaligned(x.add(34 + 2 * ib) as *const u16) as usize;
                let v = gather1(std::array::from_fn(|l| *x.add(2 + 4 * ib + l) as usize | ((qh >> (3 * l)) & 7) << 8));
                let (uv, sc) = (_mm256_sign_epi8(v, v), pick_scale(ls2, ib));
                for r in 0..R {
                    let qy = loadu(q8k_block(a, stride, r, i).add(4 + 32 * ib));
                    let p = _mm256_maddubs_epi16(uv, _mm256_sign_epi8(qy, v));
                    sumi[r][h] = acc_madd::<V>(sumi[r][h], p, sc);
                }
            }
        }
        let dx = h2f(x);
        for r in 0..R {
            let y = q8k_block(a, stride, r, i);
            let s = _mm256_slli_epi32(_mm256_add_epi32(sumi[r][0], sumi[r][1]), 3);
            let total = hsum_epi32(_mm256_add_epi32(s, _mm256_madd_epi16(loadu(y.add(260)), lsd2)));
            sumf[r] += dx * f32_at(y) * (total as f32 * 0.125);
        }
    }
    for r in 0..R {
        *out.add(r) = sumf[r];
    }
}
}

avx2_fn! {
/// IQ1_M. Each element's grid value g (-1, 0, 1) and its group's delta e (+-1) are folded into
/// one weight 8g + e (never 0, |.| <= 9), so one `maddubs` gives 8 * (grid part) + (delta part)
/// per pair (|.| <= 2 * 9 * 127, no saturation) and the block's integer sum is
/// 8 * sumi1 + sumi2 of the scalar twin. That sum is below 2^24 in magnitude (each part is at
/// most 256 * 127 * 15), so `isum * 0.125` is exactly the scalar `sumi1 + 0.125 * sumi2`.
pub(crate) unsafe fn dot_iq1_m_v<const V: bool, const R: usize>(nb: usize, w: *const u8, a: *const u8, stride: usize, out: *mut f32) {
    let eight = _mm256_set1_epi8(8);
    // Scale fields: word j of the low half takes field 2j (u16 j/2, bits 6*(j%2)), of the high
    // half field 2j+1 (bits 6*(j%2)+3). The multiply moves each to bits 9..11.
    let spread = _mm256_set_epi8(
        7, 6, 7, 6, 5, 4, 5, 4, 3, 2, 3, 2, 1, 0, 1, 0,
        7, 6, 7, 6, 5, 4, 5, 4, 3, 2, 3, 2, 1, 0, 1, 0,
    );
    let lift = _mm256_set_epi16(
        1, 64, 1, 64, 1, 64, 1, 64, // high half: fields at bits 9, 3
        8, 512, 8, 512, 8, 512, 8, 512, // low half: fields at bits 6, 0
    );
    let mut sumf = [0f32; R];
    for i in 0..nb {
        let x = w.add(i * IQ1_M_BYTES);
        let sc64 = read_unaligned(x.add(48) as *const u64);
        let sc = |k: u32| (sc64 >> (16 * k)) as u16;
        let dbits = (sc(0) >> 12) | ((sc(1) >> 8) & 0x00F0) | ((sc(2) >> 4) & 0x0F00) | (sc(3) & 0xF000);
        let d = h2f(&dbits as *const u16 as *const u8);
        let s = _mm256_shuffle_epi8(_mm256_set1_epi64x(sc64 as i64), spread);
        let s = _mm256_and_si256(_mm256_srli_epi16(_mm256_mullo_epi16(s, lift), 9), _mm256_set1_epi16(7));
        let bsc = _mm256_or_si256(_mm256_add_epi16(s, s), _mm256_set1_epi16(1));
        let mut sumi = [[_mm256_setzero_si256(); 2]; R];
        for j in 0..8 / accs(R) {
            for h in 0..accs(R) {
                let ib = accs(R) * j + h;
                let (v, e) = if V && R == 1 {
                    // One column, BMI2 (the V instances run only where it is present; with
                    // several columns, where the decode is shared, this measured slower): the
                    // four 11-bit indices in one u64, the four delta bits as one table index.
                    let h = read_unaligned(x.add(32 + 2 * ib) as *const u16) as u64;
                    let q4 = read_unaligned(x.add(4 * ib) as *const u32) as u64;
                    let (packed, dbits) = iq1m_bits(q4, h);
                    let v = gather1(std::array::from_fn(|l| (packed >> (16 * l)) as u16 as usize));
                    let e = _mm256_load_si256(IQ1M_DELTA32.get_unchecked(dbits).0.as_ptr() as *const __m256i);
                    (v, e)
                } else {
                    let (h0, h1) = (*x.add(32 + 2 * ib) as usize, *x.add(33 + 2 * ib) as usize);
                    let q = |l: usize| *x.add(4 * ib + l) as usize;
                    let v = gather1([
                        q(0) | ((h0 << 8) & 0x700),
                        q(1) | ((h0 << 4) & 0x700),
                        q(2) | ((h1 << 8) & 0x700),
                        q(3) | ((h1 << 4) & 0x700),
                    ]);
                    let e = _mm256_set_m128i(
                        _mm_loadu_si128(IQ1M_DELTA16.get_unchecked(h1).as_ptr() as *const __m128i),
                        _mm_loadu_si128(IQ1M_DELTA16.get_unchecked(h0).as_ptr() as *const __m128i),
                    );
                    (v, e)
                };
                let wv = _mm256_add_epi8(_mm256_sign_epi8(eight, v), e);
                let (uw, scv) = (_mm256_abs_epi8(wv), pick_scale(bsc, ib));
                for r in 0..R {
                    let qy = loadu(q8k_block(a, stride, r, i).add(4 + 32 * ib));
                    let p = _mm256_maddubs_epi16(uw, _mm256_sign_epi8(qy, wv));
                    sumi[r][h] = acc_madd::<V>(sumi[r][h], p, scv);
                }
            }
        }
        for r in 0..R {
            let dy = f32_at(q8k_block(a, stride, r, i));
            let isum = hsum_epi32(_mm256_add_epi32(sumi[r][0], sumi[r][1]));
            sumf[r] += d * dy * (isum as f32 * 0.125);
        }
    }
    for r in 0..R {
        *out.add(r) = sumf[r];
    }
}
}

avx2_fn! {
/// The AVX2 instance (`madd` + `add`) of `dot_iq_grid_v`.
pub(crate) unsafe fn dot_iq_grid<const K: u8, const R: usize>(nb: usize, w: *const u8, a: *const u8, stride: usize, out: *mut f32) {
    dot_iq_grid_v::<K, false, R>(nb, w, a, stride, out)
}
}

avx2_fn! {
/// The AVX2 instance (`madd` + `add`) of `dot_iq1_s_v`.
pub(crate) unsafe fn dot_iq1_s<const R: usize>(nb: usize, w: *const u8, a: *const u8, stride: usize, out: *mut f32) {
    dot_iq1_s_v::<false, R>(nb, w, a, stride, out)
}
}

avx2_fn! {
/// The AVX2 instance (`madd` + `add`) of `dot_iq1_m_v`.
pub(crate) unsafe fn dot_iq1_m<const R: usize>(nb: usize, w: *const u8, a: *const u8, stride: usize, out: *mut f32) {
    dot_iq1_m_v::<false, R>(nb, w, a, stride, out)
}
}
