//! The CPU backend's KV cache storage (one layer's K or V rows in host memory) and the
//! Hadamard rotation of a quantized cache's rows.

use crate::{KvSlice, KvType};
use bytemuck::Zeroable;
use cria_core::quant::{self, BlockQ4_0, BlockQ8_0, QK};

/// One layer's K or V rows, (max_seq, kv_dim), in the cache's element type.
pub enum KvRows {
    /// IEEE half bits, rounded to nearest even from the f32 projections (ggml's cpy).
    F16(Vec<u16>),
    F32(Vec<f32>),
    /// ggml Q8_0 blocks of 32 values along a row (kv_dim / 32 per position).
    Q8_0(Vec<BlockQ8_0>),
    /// ggml Q4_0 blocks, as Q8_0.
    Q4_0(Vec<BlockQ4_0>),
}

impl KvRows {
    /// Rows for `n` values (a multiple of the type's block length).
    pub fn new(ty: KvType, n: usize) -> Self {
        let blocks = n / ty.block_len();
        match ty {
            KvType::F16 => KvRows::F16(vec![0; n]),
            KvType::F32 => KvRows::F32(vec![0.0; n]),
            KvType::Q8_0 => KvRows::Q8_0(vec![BlockQ8_0::zeroed(); blocks]),
            KvType::Q4_0 => KvRows::Q4_0(vec![BlockQ4_0::zeroed(); blocks]),
        }
    }
    /// Values 0..n as attention reads them (n a multiple of the type's block length).
    pub fn slice(&self, n: usize) -> KvSlice<'_> {
        match self {
            KvRows::F16(x) => KvSlice::F16(&x[..n]),
            KvRows::F32(x) => KvSlice::F32(&x[..n]),
            KvRows::Q8_0(x) => KvSlice::Q8_0(&x[..n / QK]),
            KvRows::Q4_0(x) => KvSlice::Q4_0(&x[..n / QK]),
        }
    }
    /// Stores `src` at value offset `at` (both whole blocks for a quantized type).
    pub fn store(&mut self, at: usize, src: &[f32]) {
        match self {
            KvRows::F16(x) => {
                // F16C's round-to-nearest-even when the CPU has it (half checks at run time):
                // the same bits as f16::from_f32 per element.
                use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
                let d: &mut [half::f16] = x[at..at + src.len()].reinterpret_cast_mut();
                d.convert_from_f32_slice(src)
            }
            KvRows::F32(x) => x[at..at + src.len()].copy_from_slice(src),
            // What llama.cpp's copy into a quantized cache does on x86 (the type's from_float).
            KvRows::Q8_0(x) => {
                quant::quantize_row_q8_0_x86(src, &mut x[at / QK..(at + src.len()) / QK])
            }
            KvRows::Q4_0(x) => {
                quant::quantize_row_q4_0(src, &mut x[at / QK..(at + src.len()) / QK])
            }
        }
    }
    /// Values held.
    pub fn len(&self) -> usize {
        match self {
            KvRows::F16(x) => x.len(),
            KvRows::F32(x) => x.len(),
            KvRows::Q8_0(x) => x.len() * QK,
            KvRows::Q4_0(x) => x.len() * QK,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn kv_type(&self) -> KvType {
        self.slice(0).kv_type()
    }
    /// Copies values 0..n of `src` (n a multiple of the block length), if it is of this type.
    pub fn copy_prefix(&mut self, src: &KvRows, n: usize) {
        match (self, src) {
            (KvRows::F16(d), KvRows::F16(s)) => d[..n].copy_from_slice(&s[..n]),
            (KvRows::F32(d), KvRows::F32(s)) => d[..n].copy_from_slice(&s[..n]),
            (KvRows::Q8_0(d), KvRows::Q8_0(s)) => d[..n / QK].copy_from_slice(&s[..n / QK]),
            (KvRows::Q4_0(d), KvRows::Q4_0(s)) => d[..n / QK].copy_from_slice(&s[..n / QK]),
            _ => {}
        }
    }
}

/// x <- H_n x on every run of `n` values: H_n the orthonormal Walsh-Hadamard matrix in Sylvester
/// order (llama.cpp's `ggml_gen_hadamard`), as a fast transform and one scaling by 1/sqrt(n).
pub fn hadamard(x: &mut [f32], n: usize) {
    let scale = 1.0 / (n as f32).sqrt();
    for r in x.chunks_exact_mut(n) {
        let mut h = 1;
        while h < n {
            for i in (0..n).step_by(2 * h) {
                for j in i..i + h {
                    (r[j], r[j + h]) = (r[j] + r[j + h], r[j] - r[j + h]);
                }
            }
            h *= 2;
        }
        r.iter_mut().for_each(|v| *v *= scale);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast transform is llama.cpp's dense Sylvester matrix (entries +-1/sqrt(n), the sign of
    /// (-1)^popcount(i & j)) times the vector, and its own inverse.
    #[test]
    fn hadamard_is_the_sylvester_matrix_and_an_involution() {
        for n in [64, 128] {
            let x: Vec<f32> = (0..2 * n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let mut y = x.clone();
            hadamard(&mut y, n);
            for (row, (xs, ys)) in x.chunks(n).zip(y.chunks(n)).enumerate() {
                for (i, &yi) in ys.iter().enumerate() {
                    let dense: f64 = (0..n)
                        .map(|j| {
                            let sign = if (i & j).count_ones() % 2 == 0 {
                                1.0
                            } else {
                                -1.0
                            };
                            sign * xs[j] as f64 / (n as f64).sqrt()
                        })
                        .sum();
                    assert!((yi as f64 - dense).abs() < 1e-4, "n {n} row {row} [{i}]");
                }
            }
            hadamard(&mut y, n);
            assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() < 1e-4));
        }
    }
}
