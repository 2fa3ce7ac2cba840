//! The scalar twin of the `gemm_q` tile kernels (`arch::avx2::gemm_q`, `arch::avx512::gemm_q`):
//! same packed layout, same per-lane operation order (tests/gemm_q.rs: bitwise equal).

// Kernels index per-token arrays (accumulators, sums) with the same token number.
#![allow(clippy::needless_range_loop)]

use crate::cpu::gemm_q::layout::*;
use crate::cpu::gemm_q::TILE_T;
use crate::dot::layout::{KVALUES_IQ4NL, QK};

/// The scalar twin of the SIMD tile kernels: same layout, same per-lane operation order.
pub fn tile_scalar(
    kind: Kind,
    nb: usize,
    w: &[u8],
    a: &[u8],
    stride: usize,
    cols: usize,
    out: &mut [[f32; GROUP]; TILE_T],
) {
    let (bb, abb) = (kind.block_bytes(), kind.act_bytes());
    let h = |b: &[u8], o: usize| half::f16::from_le_bytes([b[o], b[o + 1]]).to_f32();
    let i16_at = |b: &[u8], o: usize| i16::from_le_bytes([b[o], b[o + 1]]) as i32;
    for c in 0..cols {
        let mut acc = [0f32; GROUP];
        for b in 0..nb {
            let blk = &w[b * bb..][..bb];
            let ab = &a[c * stride + b * abb..][..abb];
            for (r, acc) in acc.iter_mut().enumerate() {
                let dw = h(blk, 2 * r);
                match kind {
                    Kind::Q4_1 | Kind::Q5_0 | Kind::Q5_1 => {
                        let (min, hb, qo, off) = kind.nibble_geometry();
                        let q = |i: usize| ab[i] as i8 as i32;
                        let da = f32::from_le_bytes(ab[QK..QK + 4].try_into().unwrap());
                        let sa = i32::from_le_bytes(ab[QK + 4..QK + 8].try_into().unwrap());
                        let mut s = 0i32;
                        for v in 0..8 {
                            for e in 0..4 {
                                let byte = blk[qo + 32 * (v % 4) + 4 * r + e] as i32;
                                let mut u = if v < 4 { byte & 15 } else { byte >> 4 };
                                if hb {
                                    u |= ((blk[qo + 128 + 4 * r + e] as i32 >> v) & 1) << 4;
                                }
                                let idx = if v < 4 {
                                    4 * v + e
                                } else {
                                    16 + 4 * (v - 4) + e
                                };
                                s += u * q(idx);
                            }
                        }
                        s -= off * sa;
                        *acc = (dw * da).mul_add(s as f32, *acc);
                        if min {
                            let s1 = f32::from_le_bytes(ab[QK + 8..].try_into().unwrap());
                            *acc = h(blk, 16 + 2 * r).mul_add(s1, *acc);
                        }
                    }
                    Kind::Q4_0 | Kind::Q8_0 | Kind::IQ4_NL => {
                        let q = |i: usize| ab[i] as i8 as i32;
                        let da = f32::from_le_bytes(ab[QK..QK + 4].try_into().unwrap());
                        let sa = i32::from_le_bytes(ab[QK + 4..QK + 8].try_into().unwrap());
                        let mut s = 0i32;
                        if kind == Kind::IQ4_NL {
                            let kv = |n: i32| KVALUES_IQ4NL[n as usize] as i32;
                            for j in 0..4 {
                                for e in 0..4 {
                                    let byte = blk[16 + 32 * j + 4 * r + e] as i32;
                                    s += kv(byte & 15) * q(4 * j + e)
                                        + kv(byte >> 4) * q(16 + 4 * j + e);
                                }
                            }
                        } else if kind == Kind::Q4_0 {
                            for j in 0..4 {
                                for e in 0..4 {
                                    let byte = blk[16 + 32 * j + 4 * r + e] as i32;
                                    s += (byte & 15) * q(4 * j + e)
                                        + (byte >> 4) * q(16 + 4 * j + e);
                                }
                            }
                            s -= 8 * sa;
                        } else {
                            for j in 0..8 {
                                for e in 0..4 {
                                    s += blk[16 + 32 * j + 4 * r + e] as i8 as i32 * q(4 * j + e);
                                }
                            }
                        }
                        *acc = (dw * da).mul_add(s as f32, *acc);
                    }
                    Kind::Q4_K | Kind::Q5_K => {
                        let q = |i: usize| ab[4 + i] as i8 as i32;
                        let da = f32::from_le_bytes(ab[0..4].try_into().unwrap());
                        let (mut isum, mut msum) = (0i32, 0i32);
                        for j in 0..8 {
                            let (p, shift) = (j / 2, 4 * (j % 2));
                            let mut d = 0;
                            for e in 0..32 {
                                let at = 32 * (e / 4) + 4 * r + e % 4;
                                let mut v = (blk[K4_QS + 256 * p + at] >> shift) & 15;
                                if kind == Kind::Q5_K {
                                    v |= (blk[K5_QH + at] >> j & 1) << 4;
                                }
                                d += v as i32 * q(32 * j + e);
                            }
                            isum += blk[K4_SC + 8 * j + r] as i32 * d;
                            msum += blk[K4_MIN + 16 * (j / 2) + 2 * r + j % 2] as i32
                                * i16_at(ab, 260 + 2 * j);
                        }
                        *acc = (dw * da).mul_add(isum as f32, *acc);
                        *acc = (-(h(blk, 16 + 2 * r) * da)).mul_add(msum as f32, *acc);
                    }
                    Kind::IQ4_XS => {
                        let q = |i: usize| ab[4 + i] as i8 as i32;
                        let kv = |n: u8| KVALUES_IQ4NL[n as usize] as i32;
                        let da = f32::from_le_bytes(ab[0..4].try_into().unwrap());
                        let mut isum = 0i32;
                        for j in 0..8 {
                            let mut d = 0;
                            for c in 0..4 {
                                for e in 0..4 {
                                    let byte = blk[KX_QS + 128 * j + 32 * c + 4 * r + e];
                                    d += kv(byte & 15) * q(32 * j + 4 * c + e)
                                        + kv(byte >> 4) * q(32 * j + 16 + 4 * c + e);
                                }
                            }
                            isum += blk[KX_SC + 8 * j + r] as i8 as i32 * d;
                        }
                        *acc = (dw * da).mul_add(isum as f32, *acc);
                    }
                    Kind::Q2_K => {
                        let q = |i: usize| ab[4 + i] as i8 as i32;
                        let da = f32::from_le_bytes(ab[0..4].try_into().unwrap());
                        let (mut isum, mut msum) = (0i32, 0i32);
                        for g in 0..16 {
                            let mut d = 0;
                            for e in 16 * g..16 * g + 16 {
                                let (c, i) = (e % 16 / 4, 4 * r + e % 4);
                                d += (blk[K2_Q + 32 * g + i] >> (2 * c) & 3) as i32 * q(e);
                            }
                            let b = blk[K2_SC + 8 * g + r] as i32;
                            isum += (b & 15) * d;
                            // The stored pair is 16 * the group's sum.
                            msum += (b >> 4) * (i16_at(ab, 276 + 4 * g) / 16);
                        }
                        *acc = (dw * da).mul_add(isum as f32, *acc);
                        *acc = (-(h(blk, 16 + 2 * r) * da)).mul_add(msum as f32, *acc);
                    }
                    Kind::Q3_K => {
                        let q = |i: usize| ab[4 + i] as i8 as i32;
                        let da = f32::from_le_bytes(ab[0..4].try_into().unwrap());
                        let mut isum = 0i32;
                        for g in 0..16 {
                            let mut d = 0;
                            for e in 16 * g..16 * g + 16 {
                                let (c, i) = (e % 16 / 4, 4 * r + e % 4);
                                let lo = blk[K3_Q + 32 * g + i] >> (2 * c) & 3;
                                let hi = blk[K3_H + 32 * (g / 2) + i] >> (c + 4 * (g % 2)) & 1;
                                d += (lo | hi << 2) as i32 * q(e);
                            }
                            // (u - 4) . a = u . a - 4 * sum(a); the stored pair is 16 * sum.
                            let sc = blk[K3_SC + 8 * g + r] as i8 as i32;
                            isum += sc * d - sc * (i16_at(ab, 276 + 4 * g) / 4);
                        }
                        *acc = (dw * da).mul_add(isum as f32, *acc);
                    }
                    Kind::Q6_K => {
                        let q = |i: usize| ab[4 + i] as i8 as i32;
                        let da = f32::from_le_bytes(ab[0..4].try_into().unwrap());
                        let mut isum = 0i32;
                        for g in 0..16 {
                            let mut d = 0;
                            for e in 16 * g..16 * g + 16 {
                                let (c, i) = (e % 16 / 4, 4 * r + e % 4);
                                let lo =
                                    blk[K6_QS + 96 * g + 32 * (c % 2) + i] >> (4 * (c / 2)) & 15;
                                let hi = blk[K6_QS + 96 * g + 64 + i] >> (2 * c) & 3;
                                d += (lo | hi << 4) as i32 * q(e);
                            }
                            // (q - 32) . a = q . a - 32 * sum(a); the stored pair is 16 * sum.
                            let sc = blk[K6_SC + 8 * g + r] as i8 as i32;
                            isum += sc * d - sc * 2 * i16_at(ab, 276 + 4 * g);
                        }
                        *acc = (dw * da).mul_add(isum as f32, *acc);
                    }
                }
            }
        }
        out[c] = acc;
    }
}
