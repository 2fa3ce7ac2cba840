//! Portable scalar kernels: the activation converters (`from_float`) and one `vec_dot` per weight
//! type, written straight from the block layouts of ggml-common.h (offsets are listed in
//! `crate::dot::layout`). They are the twins every SIMD kernel is tested against, and what
//! runs on a CPU without AVX2.
//!
//! Integer parts are exact, so a SIMD kernel must agree with these on every block's integer sum;
//! only the order in which the per-block f32 products are added differs.
//!
//! Activation quantizers follow what llama.cpp runs on x86 (its AVX2 `quantize_row_q8_0/q8_1` and
//! the reference `quantize_row_q8_K`), not the `_ref` q8_0/q8_1 it uses to write files: the
//! scale's inverse is `127 / amax` (not `1 / (amax / 127)`) and rounding is to nearest, ties to
//! even (not `roundf`). Matching it keeps cria's logits comparable to llama.cpp's.

use crate::dot::layout::*;
use half::{bf16, f16};

#[cfg(test)]
mod tests {
    #[test]
    fn f16_to_f32_is_exact_for_every_half() {
        for bits in 0..=u16::MAX {
            let want = half::f16::from_bits(bits).to_f32();
            let got = super::f16_to_f32(bits);
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{bits:#06x}: {got} vs {want}"
            );
        }
    }
}

/// IEEE half -> f32, exactly, in a form the compiler can vectorise: the magnitude bits moved into
/// f32 position and scaled by 2^112 (exact for normals and subnormals alike; tested against
/// `half` for all 65536 inputs), inf/NaN mapped explicitly, sign put back.
#[inline]
pub fn f16_to_f32(h: u16) -> f32 {
    let h = h as u32;
    let em = h & 0x7fff;
    let mag = f32::from_bits(em << 13) * f32::from_bits(0x7780_0000);
    let bits = if em >= 0x7c00 {
        0x7f80_0000 | (em & 0x3ff) << 13
    } else {
        mag.to_bits()
    };
    f32::from_bits(bits | (h & 0x8000) << 16)
}

#[inline]
pub(crate) fn f16_at(b: &[u8], o: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[o], b[o + 1]]))
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

// ---------------------------------------------------------------------------------------------
// Activation converters: f32 row -> the weight's vec_dot_type.

/// f32 -> Q8_0 as llama.cpp's x86 `quantize_row_q8_0`: d = amax/127 stored as f16, values
/// round_ties_even(x * 127/amax).
pub fn quantize_q8_0(x: &[f32], y: &mut [u8]) {
    assert!(
        x.len() % QK == 0 && y.len() == x.len() / QK * Q8_0_BYTES,
        "quantize_q8_0: bad sizes"
    );
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
    assert!(
        x.len() % QK == 0 && y.len() == x.len() / QK * Q8_1_BYTES,
        "quantize_q8_1: bad sizes"
    );
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
    assert!(
        x.len() % QK_K == 0 && y.len() == x.len() / QK_K * Q8_K_BYTES,
        "quantize_q8_k: bad sizes"
    );
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
            let s: i32 = yb[4 + 16 * j..4 + 16 * j + 16]
                .iter()
                .map(|&b| b as i8 as i32)
                .sum();
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
// Float dots. 16 independent f32 lanes over fixed-size chunks (a summation tree far shallower
// than a running sum, and a loop the compiler vectorises on any target), lanes reduced in f64.

const LANES: usize = 16;

#[inline]
fn dot_lanes<const B: usize>(n: usize, w: &[u8], a: &[u8], decode: impl Fn(&[u8]) -> f32) -> f32 {
    let (w, a) = (&w[..n * B], &a[..n * B]);
    let mut acc = [0f32; LANES];
    let (wc, ac) = (w.chunks_exact(LANES * B), a.chunks_exact(LANES * B));
    let (wt, at) = (wc.remainder(), ac.remainder());
    for (wc, ac) in wc.zip(ac) {
        for (l, s) in acc.iter_mut().enumerate() {
            *s += decode(&wc[l * B..l * B + B]) * decode(&ac[l * B..l * B + B]);
        }
    }
    let mut tail = 0f32;
    for (x, y) in wt.chunks_exact(B).zip(at.chunks_exact(B)) {
        tail += decode(x) * decode(y);
    }
    (acc.iter().map(|&v| v as f64).sum::<f64>() + tail as f64) as f32
}

pub fn dot_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    // Rows may sit at any byte offset (activation scratch, tensor data), so decode bytes.
    dot_lanes::<4>(n, w, a, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

pub fn dot_f16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_lanes::<2>(n, w, a, |b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
}

pub fn dot_bf16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_lanes::<2>(n, w, a, |b| {
        f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)
    })
}

// ---------------------------------------------------------------------------------------------
// 32-element blocks against Q8_0 / Q8_1. Each block is viewed as fixed-size arrays (no bounds
// checks in the loop), element j of the first half pairs with qs[j] low nibble, j+16 with high.

/// (quants of a Q8_0 / Q8_1 activation block, its d, for Q8_1 its s).
#[inline]
fn act32(y: &[u8], q81: bool) -> (&[i8; 32], f32, f32) {
    let off = if q81 { 4 } else { 2 };
    let qs: &[u8; 32] = y[off..off + 32].try_into().unwrap();
    (
        bytemuck::cast_ref(qs),
        f16_at(y, 0),
        if q81 { f16_at(y, 2) } else { 0.0 },
    )
}

/// The 32 weight values of a nibble block in element order: `lo`/`hi` turn a nibble (plus its
/// 5th bit for Q5) into the weight's integer value (always within i8).
#[inline]
fn unpack_nibbles(
    qs: &[u8; 16],
    lo: impl Fn(usize, u8) -> i32,
    hi: impl Fn(usize, u8) -> i32,
) -> [i8; 32] {
    let mut v = [0i8; 32];
    let (vl, vh) = v.split_at_mut(16);
    for (j, (o, &q)) in vl.iter_mut().zip(qs).enumerate() {
        *o = lo(j, q & 0xF) as i8;
    }
    for (j, (o, &q)) in vh.iter_mut().zip(qs).enumerate() {
        *o = hi(j, q >> 4) as i8;
    }
    v
}

/// The 32-element kernels in ggml's AVX2 order (the SIMD twins compute exactly this, bit for
/// bit, so that cria reproduces llama.cpp): eight f32 lanes, lane j taking the exact integer dot
/// of elements 4j..4j+4 of every block, accumulated across blocks as
/// `lane = fma(dx * dy, isum_j, lane)`; then the lanes summed as `hsum8`, plus for Q4_1/Q5_1
/// the min term accumulated as `summs = fma(m, s, summs)`.
struct Lanes {
    acc: [f32; 8],
    summs: f32,
}

impl Lanes {
    fn new() -> Self {
        Lanes {
            acc: [0.0; 8],
            summs: 0.0,
        }
    }
    #[inline]
    fn block(&mut self, d: f32, v: &[i8; 32], y: &[i8; 32]) {
        for (j, a) in self.acc.iter_mut().enumerate() {
            let isum: i32 = (4 * j..4 * j + 4).map(|e| v[e] as i32 * y[e] as i32).sum();
            *a = d.mul_add(isum as f32, *a);
        }
    }
    /// The AVX2 horizontal sum: (hi + lo) per 4-lane half, then (0 + 2) + (1 + 3).
    fn hsum(&self) -> f32 {
        let a = &self.acc;
        let r = [a[4] + a[0], a[5] + a[1], a[6] + a[2], a[7] + a[3]];
        (r[0] + r[2]) + (r[1] + r[3])
    }
}

pub fn dot_q4_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut l = Lanes::new();
    for (x, y) in w
        .chunks_exact(Q4_0_BYTES)
        .zip(a.chunks_exact(Q8_0_BYTES))
        .take(n / QK)
    {
        let (yq, dy, _) = act32(y, false);
        let v = unpack_nibbles(
            x[2..18].try_into().unwrap(),
            |_, v| v as i32 - 8,
            |_, v| v as i32 - 8,
        );
        l.block(f16_at(x, 0) * dy, &v, yq);
    }
    l.hsum()
}

pub fn dot_q4_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut l = Lanes::new();
    for (x, y) in w
        .chunks_exact(Q4_1_BYTES)
        .zip(a.chunks_exact(Q8_1_BYTES))
        .take(n / QK)
    {
        let (yq, dy, sy) = act32(y, true);
        let v = unpack_nibbles(
            x[4..20].try_into().unwrap(),
            |_, v| v as i32,
            |_, v| v as i32,
        );
        // sum_j (d*q_j + m) * (dy*y_j) = d*dy*sum(q_j*y_j) + m * (dy*sum(y_j)), the last factor is s.
        l.block(f16_at(x, 0) * dy, &v, yq);
        l.summs = f16_at(x, 2).mul_add(sy, l.summs);
    }
    l.hsum() + l.summs
}

pub fn dot_q5_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut l = Lanes::new();
    for (x, y) in w
        .chunks_exact(Q5_0_BYTES)
        .zip(a.chunks_exact(Q8_0_BYTES))
        .take(n / QK)
    {
        let (yq, dy, _) = act32(y, false);
        let qh = u32_at(x, 2);
        let lo = |j: usize, v: u8| (v as u32 | ((qh >> j) & 1) << 4) as i32 - 16;
        let hi = |j: usize, v: u8| (v as u32 | ((qh >> (j + 16)) & 1) << 4) as i32 - 16;
        let v = unpack_nibbles(x[6..22].try_into().unwrap(), lo, hi);
        l.block(f16_at(x, 0) * dy, &v, yq);
    }
    l.hsum()
}

pub fn dot_q5_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut l = Lanes::new();
    for (x, y) in w
        .chunks_exact(Q5_1_BYTES)
        .zip(a.chunks_exact(Q8_1_BYTES))
        .take(n / QK)
    {
        let (yq, dy, sy) = act32(y, true);
        let qh = u32_at(x, 4);
        let lo = |j: usize, v: u8| (v as u32 | ((qh >> j) & 1) << 4) as i32;
        let hi = |j: usize, v: u8| (v as u32 | ((qh >> (j + 16)) & 1) << 4) as i32;
        let v = unpack_nibbles(x[8..24].try_into().unwrap(), lo, hi);
        l.block(f16_at(x, 0) * dy, &v, yq);
        l.summs = f16_at(x, 2).mul_add(sy, l.summs);
    }
    l.hsum() + l.summs
}

pub fn dot_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut l = Lanes::new();
    for (x, y) in w
        .chunks_exact(Q8_0_BYTES)
        .zip(a.chunks_exact(Q8_0_BYTES))
        .take(n / QK)
    {
        let (xq, dx, _) = act32(x, false);
        let (yq, dy, _) = act32(y, false);
        l.block(dx * dy, xq, yq);
    }
    l.hsum()
}

pub fn dot_iq4_nl(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut l = Lanes::new();
    for (x, y) in w
        .chunks_exact(IQ4_NL_BYTES)
        .zip(a.chunks_exact(Q8_0_BYTES))
        .take(n / QK)
    {
        let (yq, dy, _) = act32(y, false);
        let kv = |_, v: u8| KVALUES_IQ4NL[v as usize] as i32;
        let v = unpack_nibbles(x[2..18].try_into().unwrap(), kv, kv);
        l.block(f16_at(x, 0) * dy, &v, yq);
    }
    l.hsum()
}

// ---------------------------------------------------------------------------------------------
// 256-element super-blocks against Q8_K. Each kernel first decodes the block's quants to
// integers in element order (`decode`), then takes one exact integer sum per scale group.

/// Q8_K activation block: (d, quants, bsums).
#[inline]
pub(crate) fn q8k(a: &[u8], i: usize) -> (f32, &[i8], &[u8]) {
    let y = &a[i * Q8_K_BYTES..][..Q8_K_BYTES];
    (
        f32_at(y, 0),
        bytemuck::cast_slice(&y[4..4 + QK_K]),
        &y[4 + QK_K..],
    )
}

/// sum over the 16-element groups g of scale[g] * sum_l v[16g + l] * y[16g + l] (exact in i32:
/// |v| <= 127, |y| <= 127, |scale| <= 128, 256 terms).
#[inline]
pub(crate) fn scaled_isum(v: &[i8; QK_K], yq: &[i8], scale: &[i32; 16]) -> i32 {
    let mut total = 0i32;
    for ((vg, yg), &sc) in v.chunks_exact(16).zip(yq.chunks_exact(16)).zip(scale) {
        let mut s = 0i32;
        for (&x, &y) in vg.iter().zip(yg) {
            s += x as i32 * y as i32;
        }
        total += sc * s;
    }
    total
}

pub fn dot_q2_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for i in 0..n / QK_K {
        let x = &w[i * Q2_K_BYTES..][..Q2_K_BYTES];
        let (dy, yq, bsums) = q8k(a, i);
        let (sc, qs) = (&x[0..16], &x[16..80]);
        // Element 128k + 32j + l: bits 2j..2j+2 of qs[32k + l].
        let mut v = [0i8; QK_K];
        for (vk, qk) in v.chunks_exact_mut(128).zip(qs.chunks_exact(32)) {
            for (j, vj) in vk.chunks_exact_mut(32).enumerate() {
                for (o, &q) in vj.iter_mut().zip(qk) {
                    *o = ((q >> (2 * j)) & 3) as i8;
                }
            }
        }
        let isum = scaled_isum(&v, yq, &std::array::from_fn(|g| (sc[g] & 0xF) as i32));
        let summs: i32 = (0..16)
            .map(|g| i16_at(bsums, 2 * g) * (sc[g] >> 4) as i32)
            .sum();
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
        // Element 128k + 32j + l: bits 2j..2j+2 of qs[32k + l], minus 4 unless bit 4k+j of hmask[l].
        let mut v = [0i8; QK_K];
        for (k, (vk, qk)) in v.chunks_exact_mut(128).zip(qs.chunks_exact(32)).enumerate() {
            for (j, vj) in vk.chunks_exact_mut(32).enumerate() {
                for ((o, &q), &h) in vj.iter_mut().zip(qk).zip(hmask) {
                    let low = ((q >> (2 * j)) & 3) as i8;
                    *o = low - if (h >> (4 * k + j)) & 1 == 1 { 0 } else { 4 };
                }
            }
        }
        let isum = scaled_isum(&v, yq, &std::array::from_fn(|g| sc[g] as i32));
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
        // Elements 64j..64j+32: low nibbles of qs[32j..32j+32]; 64j+32..64j+64: high nibbles.
        let mut v = [0i8; QK_K];
        for (vj, qj) in v.chunks_exact_mut(64).zip(qs.chunks_exact(32)) {
            let (lo, hi) = vj.split_at_mut(32);
            for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(qj) {
                *l = (q & 0xF) as i8;
                *h = (q >> 4) as i8;
            }
        }
        let isum = scaled_isum(&v, yq, &std::array::from_fn(|g| sc[g / 2] as i32));
        let summ: i32 = (0..16)
            .map(|g| i16_at(bsums, 2 * g) * mn[g / 2] as i32)
            .sum();
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
        // As Q4_K, plus 16 where bit 2j (low half) / 2j+1 (high half) of qh[l] is set.
        let mut v = [0i8; QK_K];
        for (j, (vj, qj)) in v.chunks_exact_mut(64).zip(qs.chunks_exact(32)).enumerate() {
            let (lo, hi) = vj.split_at_mut(32);
            for (((l, h), &q), &b) in lo.iter_mut().zip(hi.iter_mut()).zip(qj).zip(qh) {
                *l = ((q & 0xF) + 16 * ((b >> (2 * j)) & 1)) as i8;
                *h = ((q >> 4) + 16 * ((b >> (2 * j + 1)) & 1)) as i8;
            }
        }
        let isum = scaled_isum(&v, yq, &std::array::from_fn(|g| sc[g / 2] as i32));
        let summ: i32 = (0..16)
            .map(|g| i16_at(bsums, 2 * g) * mn[g / 2] as i32)
            .sum();
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
        // Half k, quarter 0..4, lane l: nibble (low for quarters 0,1; high for 2,3) of
        // ql[64k + 32*(quarter&1) + l], 2 high bits (2*quarter) of qh[32k + l], minus 32.
        let mut v = [0i8; QK_K];
        for ((vk, qlk), qhk) in v
            .chunks_exact_mut(128)
            .zip(ql.chunks_exact(64))
            .zip(qh.chunks_exact(32))
        {
            for (quarter, vq) in vk.chunks_exact_mut(32).enumerate() {
                let src = &qlk[32 * (quarter & 1)..32 * (quarter & 1) + 32];
                for ((o, &lb), &hb) in vq.iter_mut().zip(src).zip(qhk) {
                    let low = if quarter < 2 { lb & 0xF } else { lb >> 4 };
                    *o = (low | ((hb >> (2 * quarter)) & 3) << 4) as i8 - 32;
                }
            }
        }
        let isum = scaled_isum(&v, yq, &std::array::from_fn(|g| sc[g] as i8 as i32));
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
        // Sub-block ib: low nibbles of qs[16ib..16ib+16], then their high nibbles.
        let mut v = [0i8; QK_K];
        for (vb, qb) in v.chunks_exact_mut(32).zip(qs.chunks_exact(16)) {
            let (lo, hi) = vb.split_at_mut(16);
            for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(qb) {
                *l = KVALUES_IQ4NL[(q & 0xF) as usize];
                *h = KVALUES_IQ4NL[(q >> 4) as usize];
            }
        }
        let isum = scaled_isum(
            &v,
            yq,
            &std::array::from_fn(|g| {
                let ib = g / 2;
                let ls =
                    ((sl[ib / 2] >> (4 * (ib % 2))) & 0xF) as u32 | ((sh >> (2 * ib)) & 3) << 4;
                ls as i32 - 32
            }),
        );
        sumf += f16_at(x, 0) * dy * isum as f32;
    }
    sumf
}
