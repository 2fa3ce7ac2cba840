//! Block layouts and the scalar (reference) dequantizers/quantizers: this file is the spec that
//! every SIMD kernel in cria-kernels is tested against.
//!
//! Layouts follow ggml-common.h byte for byte (`#[repr(C)]`, little-endian hosts only, which is
//! every target cria runs on). A row of `n` elements of a quantized type is `n / QK` blocks laid
//! end to end; `QK` is 32 for the "legacy" types and IQ4_NL, and `QK_K` = 256 for the k-quants
//! and IQ4_XS. Block fields holding f16 scales use `half::f16` (alignment 2), so a `&[u8]` that is
//! 2-aligned can be viewed as blocks without copying (see [`as_blocks`]); GGUF tensor data is
//! 32-aligned, so mapped weights always are. `BlockQ8_K` has an f32 and is 4-aligned: it is an
//! activation format that lives in buffers cria allocates itself.
//!
//! Arithmetic is written in the same order as ggml-quants.c so that results are bit-identical to
//! ggml built without FMA contraction (as ggml-base is) and to gguf-py's numpy code: e.g. Q4_1 is
//! `q * d + m` rounded twice, Q6_K is `(d * sc) * q`. Rust never fuses a multiply and an add on its
//! own, so the scalar code here is the exact spec.
//!
//! Quantizers: `quantize_row_*` take a float row and fill blocks.
//! - `quantize_row_q8_0`, `quantize_row_q8_1`, `quantize_row_q8_k`: ggml's `*_ref` functions (the
//!   activation formats of the dot kernels; `quantize_row_q8_k` is also what ggml's CPU backend
//!   runs on every architecture).
//! - `quantize_row_q8_0_x86`, `quantize_row_q8_1_x86`: what llama.cpp's CPU backend actually runs
//!   on x86 with AVX/AVX2 (ggml-cpu/arch/x86/quants.c): it multiplies by `127 / amax` instead of
//!   `1 / (amax / 127)` and rounds half to even instead of away from zero, so a few quants differ
//!   by one from the `_ref` version. Use these to reproduce llama.cpp's numbers on x86.
//! - [`quantize`] for whole tensors of the weight formats, with ggml's reference rounding (what
//!   `llama-quantize` produces without an importance matrix).

// The quantizers keep ggml's index loops so they can be read side by side with ggml-quants.c.
#![allow(clippy::needless_range_loop)]

use crate::{DType, Error, Result};
use bytemuck::{Pod, Zeroable};
use half::{bf16, f16};

/// Elements per block of the legacy types (Q4_0 .. Q8_1) and IQ4_NL.
pub const QK: usize = 32;
/// Elements per super-block of the k-quants and IQ4_XS.
pub const QK_K: usize = 256;
/// Bytes of packed 6-bit scales and mins in Q4_K / Q5_K.
pub const K_SCALE_SIZE: usize = 12;
/// The 16 non-linear levels of IQ4_NL and IQ4_XS (ggml-common.h `kvalues_iq4nl`).
pub const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];
/// Groups whose largest magnitude is below this quantize to all zeros (ggml's GROUP_MAX_EPS).
pub(crate) const GROUP_MAX_EPS: f32 = 1e-15;

// ------------------------------------------------------------------------------------------------
// Block layouts
// ------------------------------------------------------------------------------------------------

/// x = d * (q - 8), q in 0..16. `qs[j]` holds element j (low nibble) and j + 16 (high nibble).
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_0 {
    pub d: f16,
    pub qs: [u8; QK / 2],
}

/// x = d * q + m, q in 0..16; nibble order as Q4_0.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; QK / 2],
}

/// x = d * (q - 16), q in 0..32: low 4 bits as Q4_0, bit 4 of element j is bit j of the
/// little-endian u32 `qh`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ5_0 {
    pub d: f16,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

/// x = d * q + m, q in 0..32; bits as Q5_0.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ5_1 {
    pub d: f16,
    pub m: f16,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

/// x = d * q, q in -127..=127.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; QK],
}

/// Q8_0 plus `s = d * sum(qs)` (rounded to f16), which the Q4_1/Q5_1 dot products use to apply
/// the weight's min once per block.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8_1 {
    pub d: f16,
    pub s: f16,
    pub qs: [i8; QK],
}

/// 16 groups of 16: x = d * (scales[g] & 15) * q - dmin * (scales[g] >> 4), q in 0..4.
/// `qs` packs, per 128 elements, 32 bytes whose bit pairs 0,2,4,6 are elements l, l+32, l+64, l+96.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ2_K {
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    pub d: f16,
    pub dmin: f16,
}

/// 16 groups of 16: x = d * (s6[g] - 32) * (q2 - (hbit ? 0 : 4)). The 6-bit scales are packed in
/// 12 bytes (low nibbles in bytes 0..8, high bit pairs in bytes 8..12); `hmask` bit k of byte l is
/// the high bit of element 32k + l.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ3_K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    pub d: f16,
}

/// 8 groups of 32: x = d * sc[g] * q - dmin * m[g], q in 0..16, (sc, m) 6-bit, packed in `scales`
/// (see [`get_scale_min_k4`]). `qs`, per 64 elements: 32 bytes, low nibble element l, high l+32.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; K_SCALE_SIZE],
    pub qs: [u8; QK_K / 2],
}

/// Q4_K plus a fifth bit: bit 2i (2i+1) of `qh[l]` is the high bit of element 64i + l (64i + 32 + l).
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ5_K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; K_SCALE_SIZE],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}

/// 16 groups of 16: x = d * scales[g] * (q - 32), q in 0..64: low 4 bits in `ql`, high 2 in `qh`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ6_K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: f16,
}

/// The activation format of the k-quant dot products: x = d * q (d is f32), plus the sum of
/// each 16 quants (used to apply the weights' mins).
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8_K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}

/// x = d * KVALUES_IQ4NL[q]; nibble order as Q4_0.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockIQ4_NL {
    pub d: f16,
    pub qs: [u8; QK / 2],
}

/// 8 groups of 32: x = d * (ls[g] - 32) * KVALUES_IQ4NL[q]; the 6-bit ls has its low 4 bits in
/// `scales_l` (two per byte) and its high 2 bits in `scales_h` (bits 2g, 2g+1).
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockIQ4_XS {
    pub d: f16,
    pub scales_h: u16,
    pub scales_l: [u8; QK_K / 64],
    pub qs: [u8; QK_K / 2],
}

/// A block type: its dtype, its element count, and its reference dequantizer.
pub trait QuantBlock: Pod {
    const DTYPE: DType;
    /// Elements per block.
    const QK: usize;
    /// Writes the block's `QK` values to `y[..QK]`.
    fn dequantize(&self, y: &mut [f32]);
}

/// The `DType` <-> block struct correspondence in one place.
macro_rules! block_dtypes {
    ($($block:ident => $dt:ident, $qk:expr;)*) => {
        $(impl QuantBlock for $block {
            const DTYPE: DType = DType::$dt;
            const QK: usize = $qk;
            fn dequantize(&self, y: &mut [f32]) {
                paste_dequant::$dt(self, y)
            }
        })*
        /// Every block struct, for tests that walk them all.
        #[cfg(test)]
        fn block_sizes() -> Vec<(DType, usize, usize)> {
            vec![$((DType::$dt, std::mem::size_of::<$block>(), $qk)),*]
        }
    };
}

block_dtypes! {
    BlockQ4_0 => Q4_0, QK;
    BlockQ4_1 => Q4_1, QK;
    BlockQ5_0 => Q5_0, QK;
    BlockQ5_1 => Q5_1, QK;
    BlockQ8_0 => Q8_0, QK;
    BlockQ8_1 => Q8_1, QK;
    BlockQ2_K => Q2_K, QK_K;
    BlockQ3_K => Q3_K, QK_K;
    BlockQ4_K => Q4_K, QK_K;
    BlockQ5_K => Q5_K, QK_K;
    BlockQ6_K => Q6_K, QK_K;
    BlockQ8_K => Q8_K, QK_K;
    BlockIQ4_NL => IQ4_NL, QK;
    BlockIQ4_XS => IQ4_XS, QK_K;
}

/// Views `bytes` as blocks without copying. Errors if the length is not a whole number of blocks
/// or the slice is not aligned for `B` (mapped GGUF data always is).
pub fn as_blocks<B: QuantBlock>(bytes: &[u8]) -> Result<&[B]> {
    bytemuck::try_cast_slice(bytes).map_err(|e| {
        Error::msg(format!(
            "{} blocks: {} bytes at {:p}: {e:?}",
            B::DTYPE,
            bytes.len(),
            bytes.as_ptr()
        ))
    })
}

/// Mutable twin of [`as_blocks`].
pub fn as_blocks_mut<B: QuantBlock>(bytes: &mut [u8]) -> Result<&mut [B]> {
    let (len, ptr) = (bytes.len(), bytes.as_ptr());
    bytemuck::try_cast_slice_mut(bytes).map_err(|e| {
        Error::msg(format!(
            "{} blocks: {len} bytes at {ptr:p}: {e:?}",
            B::DTYPE
        ))
    })
}

// ------------------------------------------------------------------------------------------------
// Dequantization
// ------------------------------------------------------------------------------------------------

/// The 6-bit (scale, min) pair of group `j` (0..8) of a Q4_K/Q5_K block: groups 0..4 sit in the low
/// 6 bits of bytes j and j+4; groups 4..8 have their low 4 bits in byte j+4 and their top 2 bits in
/// the spare top bits of bytes j-4 and j.
#[inline]
pub fn get_scale_min_k4(j: usize, q: &[u8; K_SCALE_SIZE]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The 16 signed 6-bit scales of a Q3_K block (already minus 32).
#[inline]
pub fn q3_k_scales(s: &[u8; 12]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let low = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
        let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        *o = (low | (high << 4)) as i8 - 32;
    }
    out
}

/// Per-dtype block dequantizers (named after the DType variants so the macro above can find them).
#[allow(non_snake_case)]
mod paste_dequant {
    use super::*;

    pub fn Q4_0(b: &BlockQ4_0, y: &mut [f32]) {
        let d = b.d.to_f32();
        for j in 0..QK / 2 {
            y[j] = ((b.qs[j] & 0xF) as i32 - 8) as f32 * d;
            y[j + QK / 2] = ((b.qs[j] >> 4) as i32 - 8) as f32 * d;
        }
    }
    pub fn Q4_1(b: &BlockQ4_1, y: &mut [f32]) {
        let (d, m) = (b.d.to_f32(), b.m.to_f32());
        for j in 0..QK / 2 {
            y[j] = (b.qs[j] & 0xF) as f32 * d + m;
            y[j + QK / 2] = (b.qs[j] >> 4) as f32 * d + m;
        }
    }
    pub fn Q5_0(b: &BlockQ5_0, y: &mut [f32]) {
        let d = b.d.to_f32();
        let qh = u32::from_le_bytes(b.qh);
        for j in 0..QK / 2 {
            let h0 = (((qh >> j) << 4) & 0x10) as u8;
            let h1 = ((qh >> (j + 12)) & 0x10) as u8;
            y[j] = (((b.qs[j] & 0xF) | h0) as i32 - 16) as f32 * d;
            y[j + QK / 2] = (((b.qs[j] >> 4) | h1) as i32 - 16) as f32 * d;
        }
    }
    pub fn Q5_1(b: &BlockQ5_1, y: &mut [f32]) {
        let (d, m) = (b.d.to_f32(), b.m.to_f32());
        let qh = u32::from_le_bytes(b.qh);
        for j in 0..QK / 2 {
            let h0 = (((qh >> j) << 4) & 0x10) as u8;
            let h1 = ((qh >> (j + 12)) & 0x10) as u8;
            y[j] = ((b.qs[j] & 0xF) | h0) as f32 * d + m;
            y[j + QK / 2] = ((b.qs[j] >> 4) | h1) as f32 * d + m;
        }
    }
    pub fn Q8_0(b: &BlockQ8_0, y: &mut [f32]) {
        let d = b.d.to_f32();
        for (y, &q) in y.iter_mut().zip(&b.qs) {
            *y = q as f32 * d;
        }
    }
    pub fn Q8_1(b: &BlockQ8_1, y: &mut [f32]) {
        // `s` is derived data (d * sum q) and plays no part in the values.
        let d = b.d.to_f32();
        for (y, &q) in y.iter_mut().zip(&b.qs) {
            *y = q as f32 * d;
        }
    }
    pub fn Q2_K(b: &BlockQ2_K, y: &mut [f32]) {
        let (d, min) = (b.d.to_f32(), b.dmin.to_f32());
        let mut is = 0;
        for n in 0..2 {
            let q = &b.qs[32 * n..32 * n + 32];
            for j in 0..4 {
                let shift = 2 * j;
                for half in 0..2 {
                    let sc = b.scales[is];
                    is += 1;
                    let dl = d * (sc & 0xF) as f32;
                    let ml = min * (sc >> 4) as f32;
                    let out = &mut y[128 * n + 32 * j + 16 * half..][..16];
                    for (l, o) in out.iter_mut().enumerate() {
                        *o = dl * ((q[l + 16 * half] >> shift) & 3) as f32 - ml;
                    }
                }
            }
        }
    }
    pub fn Q3_K(b: &BlockQ3_K, y: &mut [f32]) {
        let d_all = b.d.to_f32();
        let scales = q3_k_scales(&b.scales);
        let mut is = 0;
        let mut m = 1u8;
        for n in 0..2 {
            let q = &b.qs[32 * n..32 * n + 32];
            for j in 0..4 {
                let shift = 2 * j;
                for half in 0..2 {
                    let dl = d_all * scales[is] as f32;
                    is += 1;
                    let out = &mut y[128 * n + 32 * j + 16 * half..][..16];
                    for (l, o) in out.iter_mut().enumerate() {
                        let i = l + 16 * half;
                        let v =
                            ((q[i] >> shift) & 3) as i32 - if b.hmask[i] & m != 0 { 0 } else { 4 };
                        *o = dl * v as f32;
                    }
                }
                m <<= 1;
            }
        }
    }
    pub fn Q4_K(b: &BlockQ4_K, y: &mut [f32]) {
        let (d, min) = (b.d.to_f32(), b.dmin.to_f32());
        for j in 0..4 {
            let q = &b.qs[32 * j..32 * j + 32];
            let (sc1, m1) = get_scale_min_k4(2 * j, &b.scales);
            let (sc2, m2) = get_scale_min_k4(2 * j + 1, &b.scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            for l in 0..32 {
                y[64 * j + l] = d1 * (q[l] & 0xF) as f32 - m1;
                y[64 * j + 32 + l] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
    pub fn Q5_K(b: &BlockQ5_K, y: &mut [f32]) {
        let (d, min) = (b.d.to_f32(), b.dmin.to_f32());
        for j in 0..4 {
            let ql = &b.qs[32 * j..32 * j + 32];
            let (u1, u2) = (1u8 << (2 * j), 2u8 << (2 * j));
            let (sc1, m1) = get_scale_min_k4(2 * j, &b.scales);
            let (sc2, m2) = get_scale_min_k4(2 * j + 1, &b.scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            for l in 0..32 {
                let h1 = if b.qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if b.qh[l] & u2 != 0 { 16 } else { 0 };
                y[64 * j + l] = d1 * ((ql[l] & 0xF) + h1) as f32 - m1;
                y[64 * j + 32 + l] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
            }
        }
    }
    pub fn Q6_K(b: &BlockQ6_K, y: &mut [f32]) {
        let d = b.d.to_f32();
        for n in 0..2 {
            let ql = &b.ql[64 * n..64 * n + 64];
            let qh = &b.qh[32 * n..32 * n + 32];
            let sc = &b.scales[8 * n..8 * n + 8];
            let y = &mut y[128 * n..128 * n + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                y[l] = d * sc[is] as f32 * q1 as f32;
                y[l + 32] = d * sc[is + 2] as f32 * q2 as f32;
                y[l + 64] = d * sc[is + 4] as f32 * q3 as f32;
                y[l + 96] = d * sc[is + 6] as f32 * q4 as f32;
            }
        }
    }
    pub fn Q8_K(b: &BlockQ8_K, y: &mut [f32]) {
        for (y, &q) in y.iter_mut().zip(&b.qs) {
            *y = b.d * q as f32;
        }
    }
    pub fn IQ4_NL(b: &BlockIQ4_NL, y: &mut [f32]) {
        let d = b.d.to_f32();
        for j in 0..QK / 2 {
            y[j] = d * KVALUES_IQ4NL[(b.qs[j] & 0xF) as usize] as f32;
            y[j + QK / 2] = d * KVALUES_IQ4NL[(b.qs[j] >> 4) as usize] as f32;
        }
    }
    pub fn IQ4_XS(b: &BlockIQ4_XS, y: &mut [f32]) {
        let d = b.d.to_f32();
        for ib in 0..QK_K / 32 {
            let ls = ((b.scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF) as i32
                | ((((b.scales_h >> (2 * ib)) & 3) as i32) << 4);
            let dl = d * (ls - 32) as f32;
            let qs = &b.qs[16 * ib..16 * ib + 16];
            let y = &mut y[32 * ib..32 * ib + 32];
            for j in 0..16 {
                y[j] = dl * KVALUES_IQ4NL[(qs[j] & 0xF) as usize] as f32;
                y[j + 16] = dl * KVALUES_IQ4NL[(qs[j] >> 4) as usize] as f32;
            }
        }
    }
}

/// Dequantizes whole blocks of `B` from bytes of any alignment.
fn dequantize_blocks<B: QuantBlock>(src: &[u8], dst: &mut [f32]) {
    let size = std::mem::size_of::<B>();
    match bytemuck::try_cast_slice::<u8, B>(src) {
        Ok(blocks) => {
            for (b, y) in blocks.iter().zip(dst.chunks_exact_mut(B::QK)) {
                b.dequantize(y);
            }
        }
        // Unaligned bytes (e.g. a slice of a row at an odd offset): copy each block out first.
        Err(_) => {
            for (s, y) in src.chunks_exact(size).zip(dst.chunks_exact_mut(B::QK)) {
                bytemuck::pod_read_unaligned::<B>(s).dequantize(y);
            }
        }
    }
}

/// Dequantizes `src` (whole blocks of `dtype`) into `dst`; `dst.len()` must be the element count.
pub fn dequantize(dtype: DType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    let need = dtype.bytes_for(dst.len())?;
    if src.len() != need {
        return Err(Error::msg(format!(
            "dequantize {dtype}: {} bytes for {} elements, expected {need}",
            src.len(),
            dst.len()
        )));
    }
    match dtype {
        DType::F32 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            }
        }
        DType::F16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f16::from_le_bytes([s[0], s[1]]).to_f32();
            }
        }
        DType::BF16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = bf16::from_le_bytes([s[0], s[1]]).to_f32();
            }
        }
        DType::Q4_0 => dequantize_blocks::<BlockQ4_0>(src, dst),
        DType::Q4_1 => dequantize_blocks::<BlockQ4_1>(src, dst),
        DType::Q5_0 => dequantize_blocks::<BlockQ5_0>(src, dst),
        DType::Q5_1 => dequantize_blocks::<BlockQ5_1>(src, dst),
        DType::Q8_0 => dequantize_blocks::<BlockQ8_0>(src, dst),
        DType::Q8_1 => dequantize_blocks::<BlockQ8_1>(src, dst),
        DType::Q2_K => dequantize_blocks::<BlockQ2_K>(src, dst),
        DType::Q3_K => dequantize_blocks::<BlockQ3_K>(src, dst),
        DType::Q4_K => dequantize_blocks::<BlockQ4_K>(src, dst),
        DType::Q5_K => dequantize_blocks::<BlockQ5_K>(src, dst),
        DType::Q6_K => dequantize_blocks::<BlockQ6_K>(src, dst),
        DType::Q8_K => dequantize_blocks::<BlockQ8_K>(src, dst),
        DType::IQ4_NL => dequantize_blocks::<BlockIQ4_NL>(src, dst),
        DType::IQ4_XS => dequantize_blocks::<BlockIQ4_XS>(src, dst),
        DType::IQ2_XXS
        | DType::IQ2_XS
        | DType::IQ2_S
        | DType::IQ3_XXS
        | DType::IQ3_S
        | DType::IQ1_S
        | DType::IQ1_M => crate::quant_iq::dequantize(dtype, src, dst)?,
        other => {
            return Err(Error::Unsupported(format!(
                "dequantize of tensor type {other}"
            )))
        }
    }
    Ok(())
}

/// Whether [`dequantize`] handles `dtype`.
pub fn can_dequantize(dtype: DType) -> bool {
    use DType::*;
    matches!(
        dtype,
        F32 | F16
            | BF16
            | Q4_0
            | Q4_1
            | Q5_0
            | Q5_1
            | Q8_0
            | Q8_1
            | Q2_K
            | Q3_K
            | Q4_K
            | Q5_K
            | Q6_K
            | Q8_K
            | IQ4_NL
            | IQ4_XS
            | IQ2_XXS
            | IQ2_XS
            | IQ2_S
            | IQ3_XXS
            | IQ3_S
            | IQ1_S
            | IQ1_M
    )
}

/// Whether [`quantize`] handles `dtype`.
pub fn can_quantize(dtype: DType) -> bool {
    use DType::*;
    matches!(
        dtype,
        F32 | F16
            | BF16
            | Q4_0
            | Q4_1
            | Q5_0
            | Q5_1
            | Q8_0
            | Q8_1
            | Q2_K
            | Q3_K
            | Q4_K
            | Q5_K
            | Q6_K
            | Q8_K
    )
}

// ------------------------------------------------------------------------------------------------
// Quantization (ggml's reference rounding)
// ------------------------------------------------------------------------------------------------

/// ggml's `nearest_int`: adding 1.5 * 2^23 puts the integer part in the low mantissa bits with the
/// FPU's round-half-to-even. Valid for |x| <= 2^22; kept as the same bit trick (rather than
/// `round_ties_even`) so out-of-range inputs give the same garbage as ggml.
#[inline]
pub fn nearest_int(fval: f32) -> i32 {
    let i = (fval + 12582912.0f32).to_bits() as i32;
    (i & 0x007f_ffff) - 0x0040_0000
}

fn check_row(what: &str, n_x: usize, qk: usize, n_blocks: usize) {
    assert!(
        n_x == n_blocks * qk,
        "{what}: {n_x} floats do not fill {n_blocks} blocks of {qk}"
    );
}

/// The element of largest magnitude (the first one on ties), as ggml finds it.
#[inline]
pub(crate) fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    (amax, max)
}

#[inline]
fn absmax(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |a, &v| a.max(v.abs()))
}

#[inline]
fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// ggml `quantize_row_q4_0_ref`. Panics if `x.len() != 32 * y.len()`.
pub fn quantize_row_q4_0(x: &[f32], y: &mut [BlockQ4_0]) {
    check_row("quantize_row_q4_0", x.len(), QK, y.len());
    for (x, b) in x.chunks_exact(QK).zip(y) {
        let (_, max) = signed_absmax(x);
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f16::from_f32(d);
        for j in 0..QK / 2 {
            // C: MIN(15, (int8_t)(x*id + 8.5f)); the float->int cast truncates.
            let q0 = ((x[j] * id + 8.5) as i8).min(15) as u8;
            let q1 = ((x[j + QK / 2] * id + 8.5) as i8).min(15) as u8;
            b.qs[j] = q0 | (q1 << 4);
        }
    }
}

/// ggml `quantize_row_q4_1_ref`.
pub fn quantize_row_q4_1(x: &[f32], y: &mut [BlockQ4_1]) {
    check_row("quantize_row_q4_1", x.len(), QK, y.len());
    for (x, b) in x.chunks_exact(QK).zip(y) {
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f16::from_f32(d);
        b.m = f16::from_f32(min);
        for j in 0..QK / 2 {
            let q0 = (((x[j] - min) * id + 0.5) as i8).min(15) as u8;
            let q1 = (((x[j + QK / 2] - min) * id + 0.5) as i8).min(15) as u8;
            b.qs[j] = q0 | (q1 << 4);
        }
    }
}

/// ggml `quantize_row_q5_0_ref`.
pub fn quantize_row_q5_0(x: &[f32], y: &mut [BlockQ5_0]) {
    check_row("quantize_row_q5_0", x.len(), QK, y.len());
    for (x, b) in x.chunks_exact(QK).zip(y) {
        let (_, max) = signed_absmax(x);
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f16::from_f32(d);
        let mut qh = 0u32;
        for j in 0..QK / 2 {
            let q0 = ((x[j] * id + 16.5) as i8).min(31) as u8;
            let q1 = ((x[j + QK / 2] * id + 16.5) as i8).min(31) as u8;
            b.qs[j] = (q0 & 0xF) | ((q1 & 0xF) << 4);
            qh |= (((q0 & 0x10) >> 4) as u32) << j;
            qh |= (((q1 & 0x10) >> 4) as u32) << (j + QK / 2);
        }
        b.qh = qh.to_le_bytes();
    }
}

/// ggml `quantize_row_q5_1_ref`.
pub fn quantize_row_q5_1(x: &[f32], y: &mut [BlockQ5_1]) {
    check_row("quantize_row_q5_1", x.len(), QK, y.len());
    for (x, b) in x.chunks_exact(QK).zip(y) {
        let (min, max) = min_max(x);
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f16::from_f32(d);
        b.m = f16::from_f32(min);
        let mut qh = 0u32;
        for j in 0..QK / 2 {
            // C: (uint8_t)(x + 0.5f), no clamp (the value is at most 31.5 by construction).
            let q0 = ((x[j] - min) * id + 0.5) as u8;
            let q1 = ((x[j + QK / 2] - min) * id + 0.5) as u8;
            b.qs[j] = (q0 & 0xF) | ((q1 & 0xF) << 4);
            qh |= (((q0 & 0x10) >> 4) as u32) << j;
            qh |= (((q1 & 0x10) >> 4) as u32) << (j + QK / 2);
        }
        b.qh = qh.to_le_bytes();
    }
}

/// ggml `quantize_row_q8_0_ref`: d = amax / 127, q = roundf(x * (1 / d)) (half away from zero).
pub fn quantize_row_q8_0(x: &[f32], y: &mut [BlockQ8_0]) {
    check_row("quantize_row_q8_0", x.len(), QK, y.len());
    for (x, b) in x.chunks_exact(QK).zip(y) {
        let amax = absmax(x);
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f16::from_f32(d);
        for (q, &v) in b.qs.iter_mut().zip(x) {
            *q = (v * id).round() as i8;
        }
    }
}

/// ggml `quantize_row_q8_1_ref`: as Q8_0, plus s = f16(sum(q) * d).
pub fn quantize_row_q8_1(x: &[f32], y: &mut [BlockQ8_1]) {
    check_row("quantize_row_q8_1", x.len(), QK, y.len());
    for (x, b) in x.chunks_exact(QK).zip(y) {
        let amax = absmax(x);
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f16::from_f32(d);
        let mut sum = 0i32;
        for (q, &v) in b.qs.iter_mut().zip(x) {
            *q = (v * id).round() as i8;
            sum += *q as i32;
        }
        b.s = f16::from_f32(sum as f32 * d);
    }
}

/// llama.cpp's x86 AVX/AVX2 `quantize_row_q8_0` (ggml-cpu/arch/x86/quants.c), which is what its
/// CPU backend runs on this class of machine: q = round_half_even(x * (127 / amax)).
pub fn quantize_row_q8_0_x86(x: &[f32], y: &mut [BlockQ8_0]) {
    check_row("quantize_row_q8_0_x86", x.len(), QK, y.len());
    for (x, b) in x.chunks_exact(QK).zip(y) {
        let amax = absmax(x);
        b.d = f16::from_f32(amax / 127.0);
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        for (q, &v) in b.qs.iter_mut().zip(x) {
            *q = (v * id).round_ties_even() as i8;
        }
    }
}

/// llama.cpp's x86 AVX/AVX2 `quantize_row_q8_1` (see [`quantize_row_q8_0_x86`]).
pub fn quantize_row_q8_1_x86(x: &[f32], y: &mut [BlockQ8_1]) {
    check_row("quantize_row_q8_1_x86", x.len(), QK, y.len());
    for (x, b) in x.chunks_exact(QK).zip(y) {
        let amax = absmax(x);
        let d = amax / 127.0;
        b.d = f16::from_f32(d);
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in b.qs.iter_mut().zip(x) {
            *q = (v * id).round_ties_even() as i8;
            sum += *q as i32;
        }
        b.s = f16::from_f32(d * sum as f32);
    }
}

/// ggml `quantize_row_q8_K_ref` (also what ggml's CPU backend uses on x86): d = max / -127 where
/// max is the signed element of largest magnitude, q = nearest_int(x * -127 / max), bsums = sums
/// of 16 quants.
pub fn quantize_row_q8_k(x: &[f32], y: &mut [BlockQ8_K]) {
    check_row("quantize_row_q8_k", x.len(), QK_K, y.len());
    for (x, b) in x.chunks_exact(QK_K).zip(y) {
        let (amax, max) = signed_absmax(x);
        if amax == 0.0 {
            b.d = 0.0;
            b.qs = [0; QK_K];
            // ggml leaves bsums untouched here; zero them so the block is fully defined (the sums
            // of zero quants are zero, so this is what any reader expects).
            b.bsums = [0; QK_K / 16];
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in b.qs.iter_mut().zip(x) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (s, q) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            *s = q.iter().map(|&q| q as i16).sum();
        }
        b.d = 1.0 / iscale;
    }
}

/// ggml `make_qkx2_quants`: picks scale and min for a group of `x` (weighted) by trying `nstep + 1`
/// candidate scales around `nmax / (max - min)`. Writes levels 0..=nmax to `l`; returns (scale, -min).
#[allow(clippy::too_many_arguments)]
pub(crate) fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l[..n].fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let q = nearest_int(iscale * (x[i] - min)).min(nmax).max(0);
        l[i] = q as u8;
        let diff = scale * l[i] as f32 + min - x[i];
        let diff = if use_mad { diff.abs() } else { diff * diff };
        best_error += weights[i] * diff;
    }
    if nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        // The levels first (a loop the compiler can vectorize), then the sums in ggml's order.
        let (x, weights, laux) = (&x[..n], &weights[..n], &mut laux[..n]);
        for (l, &v) in laux.iter_mut().zip(x) {
            *l = nearest_int(iscale * (v - min)).min(nmax).max(0) as u8;
        }
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for ((&l, &w), &v) in laux.iter().zip(weights).zip(x) {
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * v;
        }
        let dd = sum_w * sum_l2 - sum_l * sum_l;
        if dd > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / dd;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / dd;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                let diff = if use_mad { diff.abs() } else { diff * diff };
                cur_error += weights[i] * diff;
            }
            if cur_error < best_error {
                l[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// ggml `make_qx_quants`: symmetric levels -nmax..nmax-1 stored as 0..2*nmax in `l`; returns the
/// scale. `qw`, when given, replaces the `rmse_type` weights (as ggml's `qw` argument does).
/// Groups of at most 32 values (ggml calls it on 16 and 32).
pub(crate) fn make_qx_quants(
    nmax: i32,
    x: &[f32],
    l: &mut [i8],
    rmse_type: i32,
    qw: Option<&[f32]>,
) -> f32 {
    let n = x.len();
    let (amax, max) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l[..n].fill(0);
        return 0.0;
    }
    let mut iscale = -(nmax as f32) / max;
    if rmse_type == 0 {
        for i in 0..n {
            let q = nearest_int(iscale * x[i]).min(nmax - 1).max(-nmax);
            l[i] = (nmax + q) as i8;
        }
        return 1.0 / iscale;
    }
    let (rmse_type, return_early) = if rmse_type < 0 {
        (-rmse_type, true)
    } else {
        (rmse_type, false)
    };
    // The weights once (ggml recomputes them in each loop; the values are the same).
    let mut wbuf = [0f32; 32];
    let weights = &mut wbuf[..n];
    for (i, w) in weights.iter_mut().enumerate() {
        *w = match (qw, rmse_type) {
            (Some(qw), _) => qw[i],
            (None, 1) => x[i] * x[i],
            (None, 2) => 1.0,
            (None, 3) => x[i].abs(),
            (None, _) => x[i].abs().sqrt(),
        };
    }
    let weights = &*weights;
    let l = &mut l[..n];
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for ((li, &v), &w) in l.iter_mut().zip(x).zip(weights) {
        let q = nearest_int(iscale * v).min(nmax - 1).max(-nmax);
        *li = (q + nmax) as i8;
        let lf = q as f32;
        sumlx += w * v * lf;
        suml2 += w * lf * lf;
    }
    // C: `suml2 ? sumlx/suml2 : 0` (NaN counts as true).
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    if return_early {
        return if suml2 > 0.0 {
            0.5 * (scale + 1.0 / iscale)
        } else {
            1.0 / iscale
        };
    }
    let mut best = scale * sumlx;
    let mut qbuf = [0f32; 32];
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        // The levels first (a loop the compiler can vectorize), then the sums in ggml's order.
        for (q, &v) in qbuf.iter_mut().zip(x) {
            *q = nearest_int(iscale * v).min(nmax - 1).max(-nmax) as f32;
        }
        for ((&v, &w), &q) in x.iter().zip(weights).zip(&qbuf[..n]) {
            sumlx += w * v * q;
            suml2 += w * q * q;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (li, &v) in l.iter_mut().zip(x) {
                *li = (nmax + nearest_int(iscale * v).min(nmax - 1).max(-nmax)) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// ggml `make_q3_quants` (Q3_K): symmetric levels with a few rounds of coordinate descent on the
/// x^2-weighted error. Levels -nmax..nmax-1 are returned as 0..2*nmax.
fn make_q3_quants(nmax: i32, x: &[f32], l: &mut [i8], do_rmse: bool) -> f32 {
    let n = x.len();
    let (amax, max) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l[..n].fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    if do_rmse {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for i in 0..n {
            let q = nearest_int(iscale * x[i]).min(nmax - 1).max(-nmax);
            l[i] = q as i8;
            let w = x[i] * x[i];
            sumlx += w * x[i] * q as f32;
            suml2 += w * q as f32 * q as f32;
        }
        for _ in 0..5 {
            let mut n_changed = 0;
            for i in 0..n {
                let w = x[i] * x[i];
                let li = l[i] as f32;
                let mut slx = sumlx - w * x[i] * li;
                if slx > 0.0 {
                    let mut sl2 = suml2 - w * li * li;
                    let new_l = nearest_int(x[i] * sl2 / slx).min(nmax - 1).max(-nmax);
                    if new_l != l[i] as i32 {
                        let nl = new_l as f32;
                        slx += w * x[i] * nl;
                        sl2 += w * nl * nl;
                        if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                            l[i] = new_l as i8;
                            sumlx = slx;
                            suml2 = sl2;
                            n_changed += 1;
                        }
                    }
                }
            }
            if n_changed == 0 {
                break;
            }
        }
        for q in &mut l[..n] {
            *q += nmax as i8;
        }
        return if suml2 > 0.0 { sumlx / suml2 } else { 0.0 };
    }
    for i in 0..n {
        let q = nearest_int(iscale * x[i]).min(nmax - 1).max(-nmax);
        l[i] = (q + nmax) as i8;
    }
    1.0 / iscale
}

/// ggml `quantize_row_q2_K_ref`.
pub fn quantize_row_q2_k(x: &[f32], y: &mut [BlockQ2_K]) {
    check_row("quantize_row_q2_k", x.len(), QK_K, y.len());
    const Q4SCALE: f32 = 15.0;
    for (x, b) in x.chunks_exact(QK_K).zip(y) {
        let mut l = [0u8; QK_K];
        let mut laux = [0u8; 16];
        let mut weights = [0f32; 16];
        let mut scales = [0f32; QK_K / 16];
        let mut mins = [0f32; QK_K / 16];
        let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
        for j in 0..QK_K / 16 {
            let xs = &x[16 * j..16 * j + 16];
            for (w, &v) in weights.iter_mut().zip(xs) {
                *w = v.abs();
            }
            (scales[j], mins[j]) = make_qkx2_quants(
                3,
                xs,
                &weights,
                &mut l[16 * j..16 * j + 16],
                &mut laux,
                -0.5,
                0.1,
                15,
                true,
            );
            if scales[j] > max_scale {
                max_scale = scales[j];
            }
            if mins[j] > max_min {
                max_min = mins[j];
            }
        }
        if max_scale > 0.0 {
            let iscale = Q4SCALE / max_scale;
            for j in 0..QK_K / 16 {
                b.scales[j] = nearest_int(iscale * scales[j]) as u8;
            }
            b.d = f16::from_f32(max_scale / Q4SCALE);
        } else {
            b.scales = [0; QK_K / 16];
            b.d = f16::from_f32(0.0);
        }
        if max_min > 0.0 {
            let iscale = Q4SCALE / max_min;
            for j in 0..QK_K / 16 {
                let q = nearest_int(iscale * mins[j]);
                b.scales[j] |= (q << 4) as u8;
            }
            b.dmin = f16::from_f32(max_min / Q4SCALE);
        } else {
            b.dmin = f16::from_f32(0.0);
        }
        q2_k_requantize_pack(x, &mut l, b);
    }
}

/// The shared end of Q2_K (reference and weighted): with `d`, `dmin` and `scales` of `b` set,
/// requantizes the levels of the groups whose scale is not zero and packs them.
pub(crate) fn q2_k_requantize_pack(x: &[f32], l: &mut [u8; QK_K], b: &mut BlockQ2_K) {
    for j in 0..QK_K / 16 {
        let d = b.d.to_f32() * (b.scales[j] & 0xF) as f32;
        if d == 0.0 {
            continue;
        }
        let dm = b.dmin.to_f32() * (b.scales[j] >> 4) as f32;
        for ii in 0..16 {
            l[16 * j + ii] = nearest_int((x[16 * j + ii] + dm) / d).clamp(0, 3) as u8;
        }
    }
    pack_2bit(l, &mut b.qs);
}

/// Packs 256 two-bit levels: per 128 values, 32 bytes whose bit pairs 0,2,4,6 are l, l+32, l+64, l+96.
fn pack_2bit(l: &[u8; QK_K], qs: &mut [u8; QK_K / 4]) {
    for j in (0..QK_K).step_by(128) {
        for i in 0..32 {
            qs[j / 4 + i] =
                l[j + i] | (l[j + i + 32] << 2) | (l[j + i + 64] << 4) | (l[j + i + 96] << 6);
        }
    }
}

/// ggml `quantize_row_q3_K_ref`.
pub fn quantize_row_q3_k(x: &[f32], y: &mut [BlockQ3_K]) {
    check_row("quantize_row_q3_k", x.len(), QK_K, y.len());
    for (x, b) in x.chunks_exact(QK_K).zip(y) {
        let mut l = [0i8; QK_K];
        let mut scales = [0f32; QK_K / 16];
        let (mut max_scale, mut amax) = (0.0f32, 0.0f32);
        for j in 0..QK_K / 16 {
            scales[j] = make_q3_quants(
                4,
                &x[16 * j..16 * j + 16],
                &mut l[16 * j..16 * j + 16],
                true,
            );
            let scale = scales[j].abs();
            if scale > amax {
                amax = scale;
                max_scale = scales[j];
            }
        }
        b.scales = [0; 12];
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            for j in 0..QK_K / 16 {
                // C: int8_t l = nearest_int(...) (wraps), clamped to -32..=31, then biased by 32.
                let q = ((nearest_int(iscale * scales[j]) as i8).clamp(-32, 31) + 32) as u8;
                if j < 8 {
                    b.scales[j] = q & 0xF;
                } else {
                    b.scales[j - 8] |= (q & 0xF) << 4;
                }
                b.scales[j % 4 + 8] |= (q >> 4) << (2 * (j / 4));
            }
            b.d = f16::from_f32(1.0 / iscale);
        } else {
            b.d = f16::from_f32(0.0);
        }
        q3_k_requantize_pack(x, &mut l, b);
    }
}

/// The shared end of Q3_K (reference and weighted): with `d` and the packed `scales` of `b` set,
/// requantizes the levels of the groups whose scale is not zero, splits off the high bits into
/// `hmask` and packs the low two bits.
pub(crate) fn q3_k_requantize_pack(x: &[f32], l: &mut [i8; QK_K], b: &mut BlockQ3_K) {
    let sc = q3_k_scales(&b.scales);
    for j in 0..QK_K / 16 {
        let d = b.d.to_f32() * sc[j] as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            l[16 * j + ii] = (nearest_int(x[16 * j + ii] / d).clamp(-4, 3) + 4) as i8;
        }
    }
    b.hmask = [0; QK_K / 8];
    let (mut m, mut hm) = (0usize, 1u8);
    for q in l.iter_mut() {
        if *q > 3 {
            b.hmask[m] |= hm;
            *q -= 4;
        }
        m += 1;
        if m == QK_K / 8 {
            m = 0;
            hm = hm.wrapping_shl(1);
        }
    }
    pack_2bit(bytemuck::cast_ref(l), &mut b.qs);
}

/// Packs eight 6-bit (scale, min) pairs the way [`get_scale_min_k4`] reads them.
pub(crate) fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; K_SCALE_SIZE] {
    let mut s = [0u8; K_SCALE_SIZE];
    for j in 0..8 {
        if j < 4 {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
            s[j - 4] |= (ls[j] >> 4) << 6;
            s[j] |= (lm[j] >> 4) << 6;
        }
    }
    s
}

/// The shared first half of Q4_K/Q5_K: per-group (scale, min) by make_qkx2_quants with weights
/// av_x + |x|, quantized to 6 bits against the block maxima. Returns the levels (0..=nmax).
fn quantize_k_scales(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    nstep: i32,
    d_out: &mut f16,
    dmin_out: &mut f16,
    scales_out: &mut [u8; K_SCALE_SIZE],
) -> [u8; QK_K] {
    let mut l = [0u8; QK_K];
    let mut laux = [0u8; 32];
    let mut weights = [0f32; 32];
    let mut scales = [0f32; QK_K / 32];
    let mut mins = [0f32; QK_K / 32];
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for j in 0..QK_K / 32 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0.0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        (scales[j], mins[j]) = make_qkx2_quants(
            nmax,
            xs,
            &weights,
            &mut l[32 * j..32 * j + 32],
            &mut laux,
            rmin,
            0.1,
            nstep,
            false,
        );
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..QK_K / 32 {
        // C: uint8_t ls = nearest_int(...) (wraps mod 256), then MIN(63, ls).
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    *scales_out = pack_scale_min_k4(&ls, &lm);
    *d_out = f16::from_f32(max_scale / 63.0);
    *dmin_out = f16::from_f32(max_min / 63.0);
    k_requantize(x, nmax, *d_out, *dmin_out, scales_out, &mut l);
    l
}

/// The shared end of the Q4_K/Q5_K scale search (reference and weighted): requantizes to 0..=nmax
/// the groups whose 6-bit scale is not zero.
pub(crate) fn k_requantize(
    x: &[f32],
    nmax: i32,
    d: f16,
    dmin: f16,
    scales: &[u8; K_SCALE_SIZE],
    l: &mut [u8; QK_K],
) {
    for j in 0..QK_K / 32 {
        let (sc, m) = get_scale_min_k4(j, scales);
        let d = d.to_f32() * sc as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * m as f32;
        for ii in 0..32 {
            l[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / d).min(nmax).max(0) as u8;
        }
    }
}

/// ggml `quantize_row_q4_K_ref`.
pub fn quantize_row_q4_k(x: &[f32], y: &mut [BlockQ4_K]) {
    check_row("quantize_row_q4_k", x.len(), QK_K, y.len());
    for (x, b) in x.chunks_exact(QK_K).zip(y) {
        let l = quantize_k_scales(x, 15, -1.0, 20, &mut b.d, &mut b.dmin, &mut b.scales);
        q4_k_pack(&l, b);
    }
}

/// Packs Q4_K levels 0..16: per 64 values, 32 bytes, low nibble l, high nibble l + 32.
pub(crate) fn q4_k_pack(l: &[u8; QK_K], b: &mut BlockQ4_K) {
    for j in 0..QK_K / 64 {
        for i in 0..32 {
            b.qs[32 * j + i] = l[64 * j + i] | (l[64 * j + i + 32] << 4);
        }
    }
}

/// ggml `quantize_row_q5_K_ref`.
pub fn quantize_row_q5_k(x: &[f32], y: &mut [BlockQ5_K]) {
    check_row("quantize_row_q5_k", x.len(), QK_K, y.len());
    for (x, b) in x.chunks_exact(QK_K).zip(y) {
        let l = quantize_k_scales(x, 31, -0.5, 15, &mut b.d, &mut b.dmin, &mut b.scales);
        q5_k_pack(&l, b);
    }
}

/// Packs Q5_K levels 0..32: low nibbles as Q4_K, fifth bits in `qh`.
pub(crate) fn q5_k_pack(l: &[u8; QK_K], b: &mut BlockQ5_K) {
    b.qh = [0; QK_K / 8];
    for j in 0..QK_K / 64 {
        let (m1, m2) = (1u8 << (2 * j), 2u8 << (2 * j));
        for i in 0..32 {
            let mut l1 = l[64 * j + i];
            if l1 > 15 {
                l1 -= 16;
                b.qh[i] |= m1;
            }
            let mut l2 = l[64 * j + i + 32];
            if l2 > 15 {
                l2 -= 16;
                b.qh[i] |= m2;
            }
            b.qs[32 * j + i] = l1 | (l2 << 4);
        }
    }
}

/// ggml `quantize_row_q6_K_ref`.
pub fn quantize_row_q6_k(x: &[f32], y: &mut [BlockQ6_K]) {
    check_row("quantize_row_q6_k", x.len(), QK_K, y.len());
    for (x, b) in x.chunks_exact(QK_K).zip(y) {
        q6_k_block(x, None, b);
    }
}

/// One Q6_K super-block: ggml's `quantize_row_q6_K_impl`, which with `qw == None` is
/// `quantize_row_q6_K_ref` (x^2 weights) and otherwise passes the raw importance weights (no
/// sigma2 term) to make_qx_quants.
pub(crate) fn q6_k_block(x: &[f32], qw: Option<&[f32]>, b: &mut BlockQ6_K) {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
    for ib in 0..QK_K / 16 {
        let r = 16 * ib..16 * ib + 16;
        let qw = qw.map(|w| &w[r.clone()]);
        let scale = make_qx_quants(32, &x[r.clone()], &mut l[r], 1, qw);
        scales[ib] = scale;
        if scale.abs() > max_abs_scale {
            max_abs_scale = scale.abs();
            max_scale = scale;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        *b = BlockQ6_K::zeroed();
        return;
    }
    let iscale = -128.0 / max_scale;
    b.d = f16::from_f32(1.0 / iscale);
    for ib in 0..QK_K / 16 {
        b.scales[ib] = nearest_int(iscale * scales[ib]).min(127) as i8;
    }
    for j in 0..QK_K / 16 {
        let d = b.d.to_f32() * b.scales[j] as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            l[16 * j + ii] = (nearest_int(x[16 * j + ii] / d).clamp(-32, 31) + 32) as i8;
        }
    }
    let l: [u8; QK_K] = bytemuck::cast(l);
    for n in 0..QK_K / 128 {
        let (j, ql, qh) = (
            128 * n,
            &mut b.ql[64 * n..64 * n + 64],
            &mut b.qh[32 * n..32 * n + 32],
        );
        for i in 0..32 {
            let q1 = l[j + i] & 0xF;
            let q2 = l[j + i + 32] & 0xF;
            let q3 = l[j + i + 64] & 0xF;
            let q4 = l[j + i + 96] & 0xF;
            ql[i] = q1 | (q3 << 4);
            ql[i + 32] = q2 | (q4 << 4);
            qh[i] = (l[j + i] >> 4)
                | ((l[j + i + 32] >> 4) << 2)
                | ((l[j + i + 64] >> 4) << 4)
                | ((l[j + i + 96] >> 4) << 6);
        }
    }
}

/// Quantizes `src` into blocks of `B` in `dst` (bytes of any alignment) with `f`.
fn quantize_blocks<B: QuantBlock>(src: &[f32], dst: &mut [u8], f: fn(&[f32], &mut [B])) {
    match bytemuck::try_cast_slice_mut::<u8, B>(dst) {
        Ok(blocks) => f(src, blocks),
        Err(_) => {
            let mut blocks = vec![B::zeroed(); src.len() / B::QK];
            f(src, &mut blocks);
            dst.copy_from_slice(bytemuck::cast_slice(&blocks));
        }
    }
}

/// Quantizes `src` (a whole number of blocks) into `dst` (exactly `dtype.bytes_for(src.len())`
/// bytes) with ggml's reference rounding, i.e. what `llama-quantize` writes without an importance
/// matrix. F32/F16/BF16 are converted with round-to-nearest-even. Q8_0/Q8_1 use the `_ref`
/// rounding (as model files do), not the x86 activation variant.
pub fn quantize(dtype: DType, src: &[f32], dst: &mut [u8]) -> Result<()> {
    if !can_quantize(dtype) {
        return Err(Error::Unsupported(format!("quantizing to {dtype}")));
    }
    let need = dtype.bytes_for(src.len())?;
    if dst.len() != need {
        return Err(Error::msg(format!(
            "quantize {dtype}: {} bytes for {} elements, expected {need}",
            dst.len(),
            src.len()
        )));
    }
    match dtype {
        DType::F32 => {
            for (d, s) in dst.chunks_exact_mut(4).zip(src) {
                d.copy_from_slice(&s.to_le_bytes());
            }
        }
        DType::F16 => {
            for (d, s) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&f16::from_f32(*s).to_le_bytes());
            }
        }
        DType::BF16 => {
            for (d, s) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&bf16::from_f32(*s).to_le_bytes());
            }
        }
        DType::Q4_0 => quantize_blocks(src, dst, quantize_row_q4_0),
        DType::Q4_1 => quantize_blocks(src, dst, quantize_row_q4_1),
        DType::Q5_0 => quantize_blocks(src, dst, quantize_row_q5_0),
        DType::Q5_1 => quantize_blocks(src, dst, quantize_row_q5_1),
        DType::Q8_0 => quantize_blocks(src, dst, quantize_row_q8_0),
        DType::Q8_1 => quantize_blocks(src, dst, quantize_row_q8_1),
        DType::Q2_K => quantize_blocks(src, dst, quantize_row_q2_k),
        DType::Q3_K => quantize_blocks(src, dst, quantize_row_q3_k),
        DType::Q4_K => quantize_blocks(src, dst, quantize_row_q4_k),
        DType::Q5_K => quantize_blocks(src, dst, quantize_row_q5_k),
        DType::Q6_K => quantize_blocks(src, dst, quantize_row_q6_k),
        DType::Q8_K => quantize_blocks(src, dst, quantize_row_q8_k),
        other => return Err(Error::Unsupported(format!("quantizing to {other}"))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_structs_match_dtype_sizes() {
        for (dt, size, qk) in block_sizes() {
            assert_eq!(size, dt.type_size(), "{dt}");
            assert_eq!(qk, dt.block_size(), "{dt}");
        }
    }

    #[test]
    fn nearest_int_rounds_half_to_even() {
        for (x, want) in [
            (0.5f32, 0),
            (1.5, 2),
            (2.5, 2),
            (-0.5, 0),
            (-1.5, -2),
            (3.49, 3),
            (-7.51, -8),
            (4194303.0, 4194303),
        ] {
            assert_eq!(nearest_int(x), want, "{x}");
            assert_eq!(nearest_int(x) as f32, x.round_ties_even(), "{x}");
        }
    }

    #[test]
    fn scale_min_k4_packing_round_trips() {
        let ls = [0, 1, 62, 63, 17, 63, 32, 5];
        let lm = [63, 2, 0, 40, 63, 1, 48, 33];
        let s = pack_scale_min_k4(&ls, &lm);
        for j in 0..8 {
            assert_eq!(get_scale_min_k4(j, &s), (ls[j], lm[j]));
        }
    }

    #[test]
    fn unaligned_bytes_dequantize_the_same() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut q = vec![0u8; DType::Q4_1.bytes_for(64).unwrap() + 1];
        quantize(DType::Q4_1, &x, &mut q[1..]).unwrap();
        let mut a = vec![0f32; 64];
        let mut b = vec![0f32; 64];
        dequantize(DType::Q4_1, &q[1..], &mut a).unwrap();
        let aligned = q[1..].to_vec();
        dequantize(DType::Q4_1, &aligned, &mut b).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn bad_lengths_are_errors() {
        let mut out = [0f32; 32];
        assert!(dequantize(DType::Q4_0, &[0u8; 17], &mut out).is_err());
        assert!(dequantize(DType::Q4_0, &[0u8; 18], &mut out[..31]).is_err());
        assert!(matches!(
            dequantize(DType::TQ1_0, &[0u8; 54], &mut [0f32; 256]),
            Err(Error::Unsupported(_))
        ));
        assert!(matches!(
            quantize(DType::IQ4_NL, &out, &mut [0u8; 18]),
            Err(Error::Unsupported(_))
        ));
        assert!(quantize(DType::Q8_0, &out, &mut [0u8; 33]).is_err());
    }
}
