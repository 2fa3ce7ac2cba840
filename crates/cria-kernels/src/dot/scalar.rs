//! Portable scalar kernels: the activation converters (`from_float`) and one `vec_dot` per weight
//! type, written straight from the block layouts of ggml-common.h (offsets are listed in
//! `super::layout`). They are the twins every SIMD kernel is tested against, and what runs on a CPU
//! without AVX2.
//!
//! Integer parts are exact, so a SIMD kernel must agree with these on every block's integer sum;
//! only the order in which the per-block f32 products are added differs.
//!
//! Activation quantizers follow what llama.cpp runs on x86 (its AVX2 `quantize_row_q8_0/q8_1` and
//! the reference `quantize_row_q8_K`), not the `_ref` q8_0/q8_1 it uses to write files: the
//! scale's inverse is `127 / amax` (not `1 / (amax / 127)`) and rounding is to nearest, ties to
//! even (not `roundf`). Matching it keeps cria's logits comparable to llama.cpp's.

use super::layout::*;
use half::{bf16, f16};

#[inline]
pub(crate) fn f16_at(b: &[u8], o: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[o], b[o + 1]])).to_f32()
}
#[inline]
fn f32_at(b: &[u8], o: usize) -> f32 {
    f32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
#[inline]
fn i16_at(b: &[u8], o: usize) -> i32 {
    i16::from_le_bytes([b[o], b[o + 1]]) as i32
}
#[inline]
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
#[inline]
fn q(b: &[u8], o: usize) -> i32 {
    b[o] as i8 as i32
}

// ---------------------------------------------------------------------------------------------
// Activation converters: f32 row -> the weight's vec_dot_type.

/// f32 -> Q8_0 as llama.cpp's x86 `quantize_row_q8_0`: d = amax/127 stored as f16, values
/// round_ties_even(x * 127/amax).
pub fn quantize_q8_0(x: &[f32], y: &mut [u8]) {
    assert!(x.len() % QK == 0 && y.len() == x.len() / QK * Q8_0_BYTES, "quantize_q8_0: bad sizes");
    for (xb, yb) in x.chunks_exact(QK).zip(y.chunks_exact_mut(Q8_0_BYTES)) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        yb[0..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
        for (o, &v) in yb[2..].iter_mut().zip(xb) {
            *o = round_i8(v * id) as u8;
        }
    }
}

/// f32 -> Q8_1: as Q8_0 plus s = d * sum(q) (f16), which the Q4_1/Q5_1 dots use for the min term.
pub fn quantize_q8_1(x: &[f32], y: &mut [u8]) {
    assert!(x.len() % QK == 0 && y.len() == x.len() / QK * Q8_1_BYTES, "quantize_q8_1: bad sizes");
    for (xb, yb) in x.chunks_exact(QK).zip(y.chunks_exact_mut(Q8_1_BYTES)) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (o, &v) in yb[4..].iter_mut().zip(xb) {
            let qv = round_i8(v * id);
            sum += qv as i32;
            *o = qv as u8;
        }
        yb[0..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
        yb[2..4].copy_from_slice(&f16::from_f32(d * sum as f32).to_le_bytes());
    }
}

/// f32 -> Q8_K as ggml's `quantize_row_q8_K_ref` (what x86 llama.cpp runs): the scale comes from
/// the signed value of largest magnitude, iscale = -127/max, d = 1/iscale (f32), plus the sums
/// of each 16 quants that the K-quant dots use for their min terms.
pub fn quantize_q8_k(x: &[f32], y: &mut [u8]) {
    assert!(x.len() % QK_K == 0 && y.len() == x.len() / QK_K * Q8_K_BYTES, "quantize_q8_k: bad sizes");
    for (xb, yb) in x.chunks_exact(QK_K).zip(y.chunks_exact_mut(Q8_K_BYTES)) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in xb {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            yb.fill(0);
            continue;
        }
        let iscale = -127.0 / max;
        for (o, &v) in yb[4..4 + QK_K].iter_mut().zip(xb) {
            // ggml clamps to 127; round_i8 already saturates there.
            *o = round_i8(iscale * v) as u8;
        }
        for j in 0..QK_K / 16 {
            let s: i32 = (0..16).map(|l| q(yb, 4 + 16 * j + l)).sum();
            yb[4 + QK_K + 2 * j..][..2].copy_from_slice(&(s as i16).to_le_bytes());
        }
        yb[0..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
    }
}

/// Round to nearest, ties to even, saturating to i8 as AVX2's cvtps + packs do. (|v| <= 127 for
/// every finite input of the quantizers above; NaN maps to 0.)
#[inline]
fn round_i8(v: f32) -> i8 {
    v.round_ties_even().clamp(-128.0, 127.0) as i8
}

/// f32 -> IEEE half, round to nearest even (what F16C's vcvtps2ph with imm 0 does).
pub fn to_f16(x: &[f32], y: &mut [u8]) {
    assert_eq!(y.len(), x.len() * 2, "to_f16: bad sizes");
    for (o, &v) in y.chunks_exact_mut(2).zip(x) {
        o.copy_from_slice(&f16::from_f32(v).to_le_bytes());
    }
}

/// f32 -> bfloat16, round to nearest even (ggml_compute_fp32_to_bf16).
pub fn to_bf16(x: &[f32], y: &mut [u8]) {
    assert_eq!(y.len(), x.len() * 2, "to_bf16: bad sizes");
    for (o, &v) in y.chunks_exact_mut(2).zip(x) {
        o.copy_from_slice(&bf16::from_f32(v).to_le_bytes());
    }
}

/// f32 -> f32 (the F32 weight path's "conversion" is a copy).
pub fn to_f32(x: &[f32], y: &mut [u8]) {
    y.copy_from_slice(bytemuck::cast_slice(x));
}

// ---------------------------------------------------------------------------------------------
// Float dots. 16 independent f32 lanes: a summation tree far shallower than a running sum (and
// easy for the compiler to vectorise on any target), with a final f64 reduction of the lanes.

#[inline]
fn dot_lanes(n: usize, w: impl Fn(usize) -> f32, a: impl Fn(usize) -> f32) -> f32 {
    const L: usize = 16;
    let mut acc = [0f32; L];
    let full = n / L * L;
    for i in (0..full).step_by(L) {
        for (l, s) in acc.iter_mut().enumerate() {
            *s += w(i + l) * a(i + l);
        }
    }
    let mut tail = 0f32;
    for i in full..n {
        tail += w(i) * a(i);
    }
    (acc.iter().map(|&v| v as f64).sum::<f64>() + tail as f64) as f32
}

pub fn dot_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    // Rows may sit at any byte offset (activation scratch, tensor data), so read unaligned.
    dot_lanes(n, |i| f32_at(w, 4 * i), |i| f32_at(a, 4 * i))
}

pub fn dot_f16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_lanes(n, |i| f16_at(w, 2 * i), |i| f16_at(a, 2 * i))
}

pub fn dot_bf16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let bf = |b: &[u8], i: usize| f32::from_bits((u16::from_le_bytes([b[2 * i], b[2 * i + 1]]) as u32) << 16);
    dot_lanes(n, |i| bf(w, i), |i| bf(a, i))
}

// ---------------------------------------------------------------------------------------------
// 32-element blocks against Q8_0 / Q8_1.

pub fn dot_q4_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for ib in 0..n / QK {
        let (x, y) = (&w[ib * Q4_0_BYTES..], &a[ib * Q8_0_BYTES..]);
        let mut isum = 0i32;
        for j in 0..16 {
            let b = x[2 + j];
            isum += ((b & 0xF) as i32 - 8) * q(y, 2 + j) + ((b >> 4) as i32 - 8) * q(y, 2 + 16 + j);
        }
        sumf += (f16_at(x, 0) * f16_at(y, 0)) * isum as f32;
    }
    sumf
}

pub fn dot_q4_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for ib in 0..n / QK {
        let (x, y) = (&w[ib * Q4_1_BYTES..], &a[ib * Q8_1_BYTES..]);
        let mut isum = 0i32;
        for j in 0..16 {
            let b = x[4 + j];
            isum += (b & 0xF) as i32 * q(y, 4 + j) + (b >> 4) as i32 * q(y, 4 + 16 + j);
        }
        // sum_j (d*q_j + m) * (dy*y_j) = d*dy*sum(q_j*y_j) + m * (dy*sum(y_j)), the last factor is s.
        sumf += (f16_at(x, 0) * f16_at(y, 0)) * isum as f32 + f16_at(x, 2) * f16_at(y, 2);
    }
    sumf
}

pub fn dot_q5_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for ib in 0..n / QK {
        let (x, y) = (&w[ib * Q5_0_BYTES..], &a[ib * Q8_0_BYTES..]);
        let qh = u32_at(x, 2);
        let mut isum = 0i32;
        for j in 0..16 {
            let b = x[6 + j];
            let x0 = ((b & 0xF) as u32 | ((qh >> j) & 1) << 4) as i32 - 16;
            let x1 = ((b >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4) as i32 - 16;
            isum += x0 * q(y, 2 + j) + x1 * q(y, 2 + 16 + j);
        }
        sumf += (f16_at(x, 0) * f16_at(y, 0)) * isum as f32;
    }
    sumf
}

pub fn dot_q5_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for ib in 0..n / QK {
        let (x, y) = (&w[ib * Q5_1_BYTES..], &a[ib * Q8_1_BYTES..]);
        let qh = u32_at(x, 4);
        let mut isum = 0i32;
        for j in 0..16 {
            let b = x[8 + j];
            let x0 = ((b & 0xF) as u32 | ((qh >> j) & 1) << 4) as i32;
            let x1 = ((b >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4) as i32;
            isum += x0 * q(y, 4 + j) + x1 * q(y, 4 + 16 + j);
        }
        sumf += (f16_at(x, 0) * f16_at(y, 0)) * isum as f32 + f16_at(x, 2) * f16_at(y, 2);
    }
    sumf
}

pub fn dot_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for ib in 0..n / QK {
        let (x, y) = (&w[ib * Q8_0_BYTES..], &a[ib * Q8_0_BYTES..]);
        let isum: i32 = (0..QK).map(|j| q(x, 2 + j) * q(y, 2 + j)).sum();
        sumf += (f16_at(x, 0) * f16_at(y, 0)) * isum as f32;
    }
    sumf
}

pub fn dot_iq4_nl(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for ib in 0..n / QK {
        let (x, y) = (&w[ib * IQ4_NL_BYTES..], &a[ib * Q8_0_BYTES..]);
        let mut isum = 0i32;
        for j in 0..16 {
            let b = x[2 + j];
            isum += KVALUES_IQ4NL[(b & 0xF) as usize] as i32 * q(y, 2 + j)
                + KVALUES_IQ4NL[(b >> 4) as usize] as i32 * q(y, 2 + 16 + j);
        }
        sumf += (f16_at(x, 0) * f16_at(y, 0)) * isum as f32;
    }
    sumf
}

// ---------------------------------------------------------------------------------------------
// 256-element super-blocks against Q8_K. Each kernel first decodes the block's quants to
// integers in element order (`decode`), then takes one exact integer sum per scale group.

/// Q8_K activation block: (d, quants, bsums).
#[inline]
fn q8k(a: &[u8], i: usize) -> (f32, &[u8], &[u8]) {
    let y = &a[i * Q8_K_BYTES..][..Q8_K_BYTES];
    (f32_at(y, 0), &y[4..4 + QK_K], &y[4 + QK_K..])
}

/// sum over the 16-element groups g of scale[g] * sum_l v[16g + l] * y[16g + l].
#[inline]
fn scaled_isum(v: &[i32; QK_K], yq: &[u8], scale: impl Fn(usize) -> i32) -> i32 {
    (0..QK_K / 16)
        .map(|g| scale(g) * (0..16).map(|l| v[16 * g + l] * yq[16 * g + l] as i8 as i32).sum::<i32>())
        .sum()
}

pub fn dot_q2_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for i in 0..n / QK_K {
        let x = &w[i * Q2_K_BYTES..][..Q2_K_BYTES];
        let (dy, yq, bsums) = q8k(a, i);
        let (sc, qs) = (&x[0..16], &x[16..80]);
        let mut v = [0i32; QK_K];
        for (e, v) in v.iter_mut().enumerate() {
            let (k, j, l) = (e / 128, e % 128 / 32, e % 32);
            *v = ((qs[32 * k + l] >> (2 * j)) & 3) as i32;
        }
        let isum = scaled_isum(&v, yq, |g| (sc[g] & 0xF) as i32);
        let summs: i32 = (0..16).map(|g| i16_at(bsums, 2 * g) * (sc[g] >> 4) as i32).sum();
        sumf += dy * f16_at(x, 80) * isum as f32 - dy * f16_at(x, 82) * summs as f32;
    }
    sumf
}

/// The 16 signed 6-bit scales of a Q3_K block (already minus 32).
pub(crate) fn q3k_scales(s: &[u8]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let low = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
        let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        *o = (low | high << 4) as i8 - 32;
    }
    out
}

pub fn dot_q3_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for i in 0..n / QK_K {
        let x = &w[i * Q3_K_BYTES..][..Q3_K_BYTES];
        let (dy, yq, _) = q8k(a, i);
        let (hmask, qs) = (&x[0..32], &x[32..96]);
        let sc = q3k_scales(&x[96..108]);
        let mut v = [0i32; QK_K];
        for (e, v) in v.iter_mut().enumerate() {
            let (k, j, l) = (e / 128, e % 128 / 32, e % 32);
            let low = ((qs[32 * k + l] >> (2 * j)) & 3) as i32;
            let high = (hmask[l] >> (4 * k + j)) & 1;
            *v = low - if high == 1 { 0 } else { 4 };
        }
        let isum = scaled_isum(&v, yq, |g| sc[g] as i32);
        sumf += f16_at(x, 108) * dy * isum as f32;
    }
    sumf
}

/// The 8 (scale, min) pairs of a Q4_K/Q5_K block, 6 bits each (ggml's get_scale_min_k4).
pub(crate) fn k4_scales_mins(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        if j < 4 {
            sc[j] = s[j] & 63;
            mn[j] = s[j + 4] & 63;
        } else {
            sc[j] = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
            mn[j] = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        }
    }
    (sc, mn)
}

pub fn dot_q4_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for i in 0..n / QK_K {
        let x = &w[i * Q4_K_BYTES..][..Q4_K_BYTES];
        let (dy, yq, bsums) = q8k(a, i);
        let (sc, mn) = k4_scales_mins(&x[4..16]);
        let qs = &x[16..144];
        let mut v = [0i32; QK_K];
        for (e, v) in v.iter_mut().enumerate() {
            let (j, l) = (e / 64, e % 64);
            *v = if l < 32 { qs[32 * j + l] & 0xF } else { qs[32 * j + l - 32] >> 4 } as i32;
        }
        let isum = scaled_isum(&v, yq, |g| sc[g / 2] as i32);
        let summ: i32 = (0..16).map(|g| i16_at(bsums, 2 * g) * mn[g / 2] as i32).sum();
        sumf += f16_at(x, 0) * dy * isum as f32 - f16_at(x, 2) * dy * summ as f32;
    }
    sumf
}

pub fn dot_q5_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for i in 0..n / QK_K {
        let x = &w[i * Q5_K_BYTES..][..Q5_K_BYTES];
        let (dy, yq, bsums) = q8k(a, i);
        let (sc, mn) = k4_scales_mins(&x[4..16]);
        let (qh, qs) = (&x[16..48], &x[48..176]);
        let mut v = [0i32; QK_K];
        for (e, v) in v.iter_mut().enumerate() {
            let (j, l) = (e / 64, e % 64);
            let (low, h) = if l < 32 {
                (qs[32 * j + l] & 0xF, (qh[l] >> (2 * j)) & 1)
            } else {
                (qs[32 * j + l - 32] >> 4, (qh[l - 32] >> (2 * j + 1)) & 1)
            };
            *v = (low + 16 * h) as i32;
        }
        let isum = scaled_isum(&v, yq, |g| sc[g / 2] as i32);
        let summ: i32 = (0..16).map(|g| i16_at(bsums, 2 * g) * mn[g / 2] as i32).sum();
        sumf += f16_at(x, 0) * dy * isum as f32 - f16_at(x, 2) * dy * summ as f32;
    }
    sumf
}

pub fn dot_q6_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for i in 0..n / QK_K {
        let x = &w[i * Q6_K_BYTES..][..Q6_K_BYTES];
        let (dy, yq, _) = q8k(a, i);
        let (ql, qh, sc) = (&x[0..128], &x[128..192], &x[192..208]);
        let mut v = [0i32; QK_K];
        for (e, v) in v.iter_mut().enumerate() {
            let (k, quarter, l) = (e / 128, e % 128 / 32, e % 32);
            let lowbyte = ql[64 * k + 32 * (quarter & 1) + l];
            let low = if quarter < 2 { lowbyte & 0xF } else { lowbyte >> 4 };
            let high = (qh[32 * k + l] >> (2 * quarter)) & 3;
            *v = (low | high << 4) as i32 - 32;
        }
        let isum = scaled_isum(&v, yq, |g| sc[g] as i8 as i32);
        sumf += f16_at(x, 208) * dy * isum as f32;
    }
    sumf
}

pub fn dot_iq4_xs(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for i in 0..n / QK_K {
        let x = &w[i * IQ4_XS_BYTES..][..IQ4_XS_BYTES];
        let (dy, yq, _) = q8k(a, i);
        let sh = u16::from_le_bytes([x[2], x[3]]) as u32;
        let (sl, qs) = (&x[4..8], &x[8..136]);
        let mut v = [0i32; QK_K];
        for (e, v) in v.iter_mut().enumerate() {
            let (ib, j) = (e / 32, e % 32);
            let b = qs[16 * ib + j % 16];
            *v = KVALUES_IQ4NL[if j < 16 { b & 0xF } else { b >> 4 } as usize] as i32;
        }
        let isum = scaled_isum(&v, yq, |g| {
            let ib = g / 2;
            let ls = ((sl[ib / 2] >> (4 * (ib % 2))) & 0xF) as u32 | ((sh >> (2 * ib)) & 3) << 4;
            ls as i32 - 32
        });
        sumf += f16_at(x, 0) * dy * isum as f32;
    }
    sumf
}
