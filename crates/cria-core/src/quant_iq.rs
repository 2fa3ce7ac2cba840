//! The IQ "i-quants" of llama.cpp that sit on lattice grids: IQ3_XXS, IQ3_S, IQ2_XXS, IQ2_XS,
//! IQ2_S, IQ1_S and IQ1_M. Each 256-element super-block stores one f16 scale (IQ1_M: spread over
//! its scale words), small per-32 (or per-16) scales, and for every group of 8 (IQ3: 4) elements
//! an index into a fixed grid of magnitudes plus sign bits. The grids and the sign table are data
//! generated from ggml-common.h (`quant_iq_grids.rs`, by tests/gen_iq_fixtures.py).
//!
//! The dequantizers here are the spec (bit-exact against ggml's `dequantize_row_*`, tested on
//! every grid entry and sign pattern in tests/iq_fixtures.rs); the kernels in cria-kernels are
//! tested against them.
//!
//! Block layouts (bytes, little-endian; ggml-common.h):
//!
//! ```text
//! | type    | bytes | layout                                                                      |
//! |---------|-------|-----------------------------------------------------------------------------|
//! | IQ2_XXS | 66    | d @0; per 32 (8 bytes @2+8ib): 4 grid bytes, u32 = 4 x 7 sign bits | scale<<28 |
//! | IQ2_XS  | 74    | d @0, qs u16[32] @2 (9-bit grid index | 7 sign bits << 9), scales[8] @66 (2x4)|
//! | IQ2_S   | 82    | d @0, qs[32] @2 (index low), signs[32] @34, qh[8] @66 (2 bits/idx), sc[8] @74|
//! | IQ3_XXS | 98    | d @0, qs[64] @2 (grid bytes, 4 elems each), 8 x u32 @66 (4 x 7 signs|sc<<28)|
//! | IQ3_S   | 110   | d @0, qs[64] @2, qh[8] @66 (9th index bit), signs[32] @74, scales[4] @106   |
//! | IQ1_S   | 50    | d @0, qs[32] @2 (index low), qh u16[8] @34: 4 x 3 idx bits, scale<<12, sign<<15 |
//! | IQ1_M   | 56    | qs[32] @0, qh[16] @32 (idx hi 3 bits + delta bit, x2), scales u16[4] @48 (3-bit |
//! |         |       | scales; the f16 super-block scale is the top nibble of each of the 4 words)  |
//! ```
//!
//! The 7-bit sign fields index `KSIGNS_IQ2XS`, whose bit 7 makes the parity even; bit j set means
//! element j is negated.

use crate::{DType, Error, Result};
use half::f16;

include!("quant_iq_grids.rs");

/// Elements per IQ super-block.
pub const QK_K: usize = 256;
/// IQ1_S / IQ1_M: the shift added to every grid value (its sign chosen per group).
pub const IQ1S_DELTA: f32 = 0.125;

/// The IQ types this module handles, in the order of the task (IQ3 first).
pub const IQ_TYPES: [DType; 7] = [
    DType::IQ3_XXS,
    DType::IQ3_S,
    DType::IQ2_XXS,
    DType::IQ2_XS,
    DType::IQ2_S,
    DType::IQ1_S,
    DType::IQ1_M,
];

/// Whether `t` is one of [`IQ_TYPES`].
pub fn is_iq(t: DType) -> bool {
    IQ_TYPES.contains(&t)
}

#[inline]
fn f16_at(b: &[u8], o: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[o], b[o + 1]])).to_f32()
}

#[inline]
fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

#[inline]
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// The 8 magnitudes of entry `i` of an 8-wide grid (little-endian bytes of the u64).
#[inline]
pub fn grid8(grid: &[u64], i: usize) -> [u8; 8] {
    grid[i].to_le_bytes()
}

/// The 4 magnitudes of entry `i` of a 4-wide grid.
#[inline]
pub fn grid4(grid: &[u32], i: usize) -> [u8; 4] {
    grid[i].to_le_bytes()
}

/// `y[j] = db * g[j]`, negated where bit j of `signs` is set (ggml multiplies by -1.f / 1.f:
/// the same bits).
#[inline]
fn put_signed(y: &mut [f32], db: f32, g: &[u8; 8], signs: u8) {
    for (j, (o, &q)) in y.iter_mut().zip(g).enumerate() {
        let v = db * q as f32;
        *o = if signs >> j & 1 != 0 { -v } else { v };
    }
}

/// The 8 magnitudes of two 4-wide IQ3 grid entries.
#[inline]
fn pair4(grid: &[u32], a: usize, b: usize) -> [u8; 8] {
    let (x, y) = (grid4(grid, a), grid4(grid, b));
    [x[0], x[1], x[2], x[3], y[0], y[1], y[2], y[3]]
}

fn deq_iq2_xxs(x: &[u8], y: &mut [f32]) {
    let d = f16_at(x, 0);
    for (ib, yb) in y.chunks_exact_mut(32).enumerate() {
        let q = &x[2 + 8 * ib..2 + 8 * ib + 8];
        let aux1 = u32_at(q, 4);
        let db = d * (0.5 + (aux1 >> 28) as f32) * 0.25;
        for (l, yl) in yb.chunks_exact_mut(8).enumerate() {
            let signs = KSIGNS_IQ2XS[(aux1 >> (7 * l) & 127) as usize];
            put_signed(yl, db, &grid8(&IQ2XXS_GRID, q[l] as usize), signs);
        }
    }
}

fn deq_iq2_xs(x: &[u8], y: &mut [f32]) {
    let d = f16_at(x, 0);
    for (ib, yb) in y.chunks_exact_mut(32).enumerate() {
        let sc = x[66 + ib];
        let db = [
            d * (0.5 + (sc & 0xF) as f32) * 0.25,
            d * (0.5 + (sc >> 4) as f32) * 0.25,
        ];
        for (l, yl) in yb.chunks_exact_mut(8).enumerate() {
            let q = u16_at(x, 2 + 2 * (4 * ib + l));
            let signs = KSIGNS_IQ2XS[(q >> 9) as usize];
            put_signed(
                yl,
                db[l / 2],
                &grid8(&IQ2XS_GRID, (q & 511) as usize),
                signs,
            );
        }
    }
}

fn deq_iq2_s(x: &[u8], y: &mut [f32]) {
    let d = f16_at(x, 0);
    for (ib, yb) in y.chunks_exact_mut(32).enumerate() {
        let sc = x[74 + ib];
        let db = [
            d * (0.5 + (sc & 0xF) as f32) * 0.25,
            d * (0.5 + (sc >> 4) as f32) * 0.25,
        ];
        let qh = x[66 + ib] as usize;
        for (l, yl) in yb.chunks_exact_mut(8).enumerate() {
            let idx = x[2 + 4 * ib + l] as usize | (qh << (8 - 2 * l) & 0x300);
            let signs = x[34 + 4 * ib + l];
            put_signed(yl, db[l / 2], &grid8(&IQ2S_GRID, idx), signs);
        }
    }
}

fn deq_iq3_xxs(x: &[u8], y: &mut [f32]) {
    let d = f16_at(x, 0);
    for (ib, yb) in y.chunks_exact_mut(32).enumerate() {
        let aux = u32_at(x, 66 + 4 * ib);
        let db = d * (0.5 + (aux >> 28) as f32) * 0.5;
        let qs = &x[2 + 8 * ib..2 + 8 * ib + 8];
        for (l, yl) in yb.chunks_exact_mut(8).enumerate() {
            let signs = KSIGNS_IQ2XS[(aux >> (7 * l) & 127) as usize];
            let g = pair4(&IQ3XXS_GRID, qs[2 * l] as usize, qs[2 * l + 1] as usize);
            put_signed(yl, db, &g, signs);
        }
    }
}

fn deq_iq3_s(x: &[u8], y: &mut [f32]) {
    let d = f16_at(x, 0);
    for (ib, yb) in y.chunks_exact_mut(32).enumerate() {
        let sc = x[106 + ib / 2];
        let s = if ib % 2 == 0 { sc & 0xF } else { sc >> 4 };
        let db = d * (1 + 2 * s as i32) as f32;
        let qh = x[66 + ib] as usize;
        let qs = &x[2 + 8 * ib..2 + 8 * ib + 8];
        for (l, yl) in yb.chunks_exact_mut(8).enumerate() {
            let i1 = qs[2 * l] as usize | (qh << (8 - 2 * l) & 256);
            let i2 = qs[2 * l + 1] as usize | (qh << (7 - 2 * l) & 256);
            put_signed(yl, db, &pair4(&IQ3S_GRID, i1, i2), x[74 + 4 * ib + l]);
        }
    }
}

/// `y[j] = dl * (grid[j] + delta)` over an IQ1 grid entry (signed bytes).
#[inline]
fn put_iq1(y: &mut [f32], dl: f32, idx: usize, delta: f32) {
    for (o, &g) in y.iter_mut().zip(&grid8(&IQ1S_GRID, idx)) {
        *o = dl * (g as i8 as f32 + delta);
    }
}

fn deq_iq1_s(x: &[u8], y: &mut [f32]) {
    let d = f16_at(x, 0);
    for (ib, yb) in y.chunks_exact_mut(32).enumerate() {
        let qh = u16_at(x, 34 + 2 * ib) as usize;
        let dl = d * (2 * ((qh >> 12) & 7) + 1) as f32;
        let delta = if qh & 0x8000 != 0 {
            -IQ1S_DELTA
        } else {
            IQ1S_DELTA
        };
        for (l, yl) in yb.chunks_exact_mut(8).enumerate() {
            let idx = x[2 + 4 * ib + l] as usize | ((qh >> (3 * l)) & 7) << 8;
            put_iq1(yl, dl, idx, delta);
        }
    }
}

/// IQ1_M's four u16 scale words and the f16 super-block scale assembled from their top nibbles.
#[inline]
pub fn iq1_m_scales(x: &[u8]) -> ([u16; 4], f32) {
    let sc: [u16; 4] = std::array::from_fn(|i| u16_at(x, 48 + 2 * i));
    let bits = (sc[0] >> 12) | ((sc[1] >> 8) & 0x00F0) | ((sc[2] >> 4) & 0x0F00) | (sc[3] & 0xF000);
    (sc, f16::from_bits(bits).to_f32())
}

/// IQ1_M sub-block `ib`'s four grid indices and delta signs (true: negative).
#[inline]
pub fn iq1_m_group(x: &[u8], ib: usize) -> ([usize; 4], [bool; 4]) {
    let qs = &x[4 * ib..4 * ib + 4];
    let (h0, h1) = (x[32 + 2 * ib] as usize, x[33 + 2 * ib] as usize);
    (
        [
            qs[0] as usize | ((h0 << 8) & 0x700),
            qs[1] as usize | ((h0 << 4) & 0x700),
            qs[2] as usize | ((h1 << 8) & 0x700),
            qs[3] as usize | ((h1 << 4) & 0x700),
        ],
        [
            h0 & 0x08 != 0,
            h0 & 0x80 != 0,
            h1 & 0x08 != 0,
            h1 & 0x80 != 0,
        ],
    )
}

fn deq_iq1_m(x: &[u8], y: &mut [f32]) {
    let (sc, d) = iq1_m_scales(x);
    for (ib, yb) in y.chunks_exact_mut(32).enumerate() {
        let s = sc[ib / 2] >> (6 * (ib % 2));
        let dl = [
            d * (2 * (s & 7) + 1) as f32,
            d * (2 * ((s >> 3) & 7) + 1) as f32,
        ];
        let (idx, neg) = iq1_m_group(x, ib);
        for (l, yl) in yb.chunks_exact_mut(8).enumerate() {
            let delta = if neg[l] { -IQ1S_DELTA } else { IQ1S_DELTA };
            put_iq1(yl, dl[l / 2], idx[l], delta);
        }
    }
}

/// Dequantizes whole blocks of IQ type `t` from `src` into `dst` (256 values per block).
pub fn dequantize(t: DType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    let f: fn(&[u8], &mut [f32]) = match t {
        DType::IQ2_XXS => deq_iq2_xxs,
        DType::IQ2_XS => deq_iq2_xs,
        DType::IQ2_S => deq_iq2_s,
        DType::IQ3_XXS => deq_iq3_xxs,
        DType::IQ3_S => deq_iq3_s,
        DType::IQ1_S => deq_iq1_s,
        DType::IQ1_M => deq_iq1_m,
        other => {
            return Err(Error::Unsupported(format!(
                "{other} is not an IQ grid type"
            )))
        }
    };
    let bs = t.type_size();
    if dst.len() % QK_K != 0 || src.len() != dst.len() / QK_K * bs {
        return Err(Error::msg(format!(
            "dequantize {t}: {} bytes for {} elements",
            src.len(),
            dst.len()
        )));
    }
    for (x, y) in src.chunks_exact(bs).zip(dst.chunks_exact_mut(QK_K)) {
        f(x, y);
    }
    Ok(())
}
