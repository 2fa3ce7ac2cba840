//! Scalar dots of the IQ grid types (IQ3_XXS, IQ3_S, IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M)
//! against Q8_K activations, after ggml-cpu's generic `ggml_vec_dot_iq*_q8_K`: per super-block
//! an exact i32 sum of (signed grid value) x (activation) x (odd sub-block scale 2s+1), then one
//! f32 multiply-add per super-block in ggml's order. The grids come from `cria_core::quant_iq`
//! (whose dequantizers are bit-exact against llama.cpp's); layouts are listed there.
//!
//! Each block is first decoded to 256 signed small integers and 16 per-16 scales, and
//! `scaled_isum` sums them (the integer sum is the same whatever the grouping).

use super::dot::{f16_at, q8k, scaled_isum};
use crate::dot::layout::*;
use cria_core::quant_iq::{
    grid4, grid8, iq1_m_group, iq1_m_scales, IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID,
    IQ3S_GRID, IQ3XXS_GRID, KSIGNS_IQ2XS,
};

/// 8 grid magnitudes with the signs of `signs` (bit j set: element j negative).
#[inline]
fn signed8(out: &mut [i8], g: [u8; 8], signs: u8) {
    for (j, (o, q)) in out.iter_mut().zip(g).enumerate() {
        let v = q as i8;
        *o = if signs >> j & 1 != 0 { -v } else { v };
    }
}

#[inline]
fn pair4(grid: &[u32], a: usize, b: usize) -> [u8; 8] {
    let (x, y) = (grid4(grid, a), grid4(grid, b));
    [x[0], x[1], x[2], x[3], y[0], y[1], y[2], y[3]]
}

#[inline]
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// The grid types: `decode(block, values, scales)` fills 256 signed values and 16 scales;
/// the result is `mul * sum_blocks (d * dy) * isum`.
#[inline]
fn grid_dot(
    n: usize,
    w: &[u8],
    a: &[u8],
    bytes: usize,
    mul: f32,
    decode: impl Fn(&[u8], &mut [i8; QK_K], &mut [i32; 16]),
) -> f32 {
    let mut sumf = 0f32;
    let (mut v, mut sc) = ([0i8; QK_K], [0i32; 16]);
    for i in 0..n / QK_K {
        let x = &w[i * bytes..][..bytes];
        let (dy, yq, _) = q8k(a, i);
        decode(x, &mut v, &mut sc);
        let d = f16_at(x, 0) * dy;
        sumf += d * scaled_isum(&v, yq, &sc) as f32;
    }
    mul * sumf
}

fn decode_iq2_xxs(x: &[u8], v: &mut [i8; QK_K], sc: &mut [i32; 16]) {
    for (ib, vb) in v.chunks_exact_mut(32).enumerate() {
        let q = &x[2 + 8 * ib..][..8];
        let aux = u32_at(q, 4);
        let ls = 2 * (aux >> 28) as i32 + 1;
        sc[2 * ib] = ls;
        sc[2 * ib + 1] = ls;
        for (l, vl) in vb.chunks_exact_mut(8).enumerate() {
            let signs = KSIGNS_IQ2XS[(aux >> (7 * l) & 127) as usize];
            signed8(vl, grid8(&IQ2XXS_GRID, q[l] as usize), signs);
        }
    }
}

fn decode_iq2_xs(x: &[u8], v: &mut [i8; QK_K], sc: &mut [i32; 16]) {
    for (ib, vb) in v.chunks_exact_mut(32).enumerate() {
        let s = x[66 + ib];
        sc[2 * ib] = 2 * (s & 0xF) as i32 + 1;
        sc[2 * ib + 1] = 2 * (s >> 4) as i32 + 1;
        for (l, vl) in vb.chunks_exact_mut(8).enumerate() {
            let o = 2 + 2 * (4 * ib + l);
            let q = u16::from_le_bytes([x[o], x[o + 1]]);
            let signs = KSIGNS_IQ2XS[(q >> 9) as usize];
            signed8(vl, grid8(&IQ2XS_GRID, (q & 511) as usize), signs);
        }
    }
}

fn decode_iq2_s(x: &[u8], v: &mut [i8; QK_K], sc: &mut [i32; 16]) {
    for (ib, vb) in v.chunks_exact_mut(32).enumerate() {
        let s = x[74 + ib];
        sc[2 * ib] = 2 * (s & 0xF) as i32 + 1;
        sc[2 * ib + 1] = 2 * (s >> 4) as i32 + 1;
        let qh = x[66 + ib] as usize;
        for (l, vl) in vb.chunks_exact_mut(8).enumerate() {
            let idx = x[2 + 4 * ib + l] as usize | (qh << (8 - 2 * l) & 0x300);
            signed8(vl, grid8(&IQ2S_GRID, idx), x[34 + 4 * ib + l]);
        }
    }
}

fn decode_iq3_xxs(x: &[u8], v: &mut [i8; QK_K], sc: &mut [i32; 16]) {
    for (ib, vb) in v.chunks_exact_mut(32).enumerate() {
        let aux = u32_at(x, 66 + 4 * ib);
        let ls = 2 * (aux >> 28) as i32 + 1;
        sc[2 * ib] = ls;
        sc[2 * ib + 1] = ls;
        let qs = &x[2 + 8 * ib..][..8];
        for (l, vl) in vb.chunks_exact_mut(8).enumerate() {
            let signs = KSIGNS_IQ2XS[(aux >> (7 * l) & 127) as usize];
            let g = pair4(&IQ3XXS_GRID, qs[2 * l] as usize, qs[2 * l + 1] as usize);
            signed8(vl, g, signs);
        }
    }
}

fn decode_iq3_s(x: &[u8], v: &mut [i8; QK_K], sc: &mut [i32; 16]) {
    for (ib, vb) in v.chunks_exact_mut(32).enumerate() {
        let s = x[106 + ib / 2];
        let ls = 2 * (if ib % 2 == 0 { s & 0xF } else { s >> 4 }) as i32 + 1;
        sc[2 * ib] = ls;
        sc[2 * ib + 1] = ls;
        let qh = x[66 + ib] as usize;
        let qs = &x[2 + 8 * ib..][..8];
        for (l, vl) in vb.chunks_exact_mut(8).enumerate() {
            let i1 = qs[2 * l] as usize | (qh << (8 - 2 * l) & 256);
            let i2 = qs[2 * l + 1] as usize | (qh << (7 - 2 * l) & 256);
            signed8(vl, pair4(&IQ3S_GRID, i1, i2), x[74 + 4 * ib + l]);
        }
    }
}

pub fn dot_iq2_xxs(n: usize, w: &[u8], a: &[u8]) -> f32 {
    grid_dot(n, w, a, IQ2_XXS_BYTES, 0.125, decode_iq2_xxs)
}
pub fn dot_iq2_xs(n: usize, w: &[u8], a: &[u8]) -> f32 {
    grid_dot(n, w, a, IQ2_XS_BYTES, 0.125, decode_iq2_xs)
}
pub fn dot_iq2_s(n: usize, w: &[u8], a: &[u8]) -> f32 {
    grid_dot(n, w, a, IQ2_S_BYTES, 0.125, decode_iq2_s)
}
pub fn dot_iq3_xxs(n: usize, w: &[u8], a: &[u8]) -> f32 {
    grid_dot(n, w, a, IQ3_XXS_BYTES, 0.25, decode_iq3_xxs)
}
pub fn dot_iq3_s(n: usize, w: &[u8], a: &[u8]) -> f32 {
    grid_dot(n, w, a, IQ3_S_BYTES, 1.0, decode_iq3_s)
}

/// sum_j q8[j] * grid(idx)[j] over one 8-wide IQ1 grid entry (values -1, 0, 1).
#[inline]
fn iq1_lsum(idx: usize, q8: &[i8]) -> i32 {
    grid8(&IQ1S_GRID, idx)
        .iter()
        .zip(q8)
        .map(|(&g, &q)| g as i8 as i32 * q as i32)
        .sum()
}

pub fn dot_iq1_s(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for i in 0..n / QK_K {
        let x = &w[i * IQ1_S_BYTES..][..IQ1_S_BYTES];
        let (dy, yq, bsums) = q8k(a, i);
        let (mut sumi, mut sumi1) = (0i32, 0i32);
        for ib in 0..QK_K / 32 {
            let qh = u16::from_le_bytes([x[34 + 2 * ib], x[35 + 2 * ib]]) as usize;
            let ls = 2 * ((qh >> 12) & 7) as i32 + 1;
            let delta = if qh & 0x8000 != 0 { -1 } else { 1 };
            let lsum: i32 = (0..4)
                .map(|l| {
                    let idx = x[2 + 4 * ib + l] as usize | ((qh >> (3 * l)) & 7) << 8;
                    iq1_lsum(idx, &yq[32 * ib + 8 * l..])
                })
                .sum();
            let bs = |g: usize| i16::from_le_bytes([bsums[2 * g], bsums[2 * g + 1]]) as i32;
            sumi += ls * lsum;
            sumi1 += ls * delta * (bs(2 * ib) + bs(2 * ib + 1));
        }
        sumf += f16_at(x, 0) * dy * (sumi as f32 + IQ1S_DELTA * sumi1 as f32);
    }
    sumf
}

pub fn dot_iq1_m(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for i in 0..n / QK_K {
        let x = &w[i * IQ1_M_BYTES..][..IQ1_M_BYTES];
        let (dy, yq, _) = q8k(a, i);
        let (sc, d) = iq1_m_scales(x);
        let (mut sumi1, mut sumi2) = (0i32, 0i32);
        for ib in 0..QK_K / 32 {
            let (idx, neg) = iq1_m_group(x, ib);
            let (mut sum1, mut sum2) = ([0i32; 2], [0i32; 2]);
            for l in 0..4 {
                let q8 = &yq[32 * ib + 8 * l..][..8];
                sum1[l / 2] += iq1_lsum(idx[l], q8);
                let s: i32 = q8.iter().map(|&q| q as i32).sum();
                sum2[l / 2] += if neg[l] { -s } else { s };
            }
            let s = sc[ib / 2] >> (6 * (ib % 2));
            let ls1 = 2 * (s & 7) as i32 + 1;
            let ls2 = 2 * ((s >> 3) & 7) as i32 + 1;
            sumi1 += sum1[0] * ls1 + sum1[1] * ls2;
            sumi2 += sum2[0] * ls1 + sum2[1] * ls2;
        }
        sumf += d * dy * (sumi1 as f32 + IQ1M_DELTA * sumi2 as f32);
    }
    sumf
}

/// ggml's IQ1S_DELTA / IQ1M_DELTA.
const IQ1S_DELTA: f32 = 0.125;
const IQ1M_DELTA: f32 = 0.125;
