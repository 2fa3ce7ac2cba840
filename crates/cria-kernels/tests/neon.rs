//! NEON kernels against their scalar twins (the spec), on awkward sizes. aarch64 only; run on
//! x86-64 through qemu with scripts/test-aarch64.sh.
//!
//! The tolerance is zero: the 32-element NEON kernels perform the spec's rounding steps in the
//! spec's order (exact integer group sums, one fused multiply-add per block per lane, the same
//! horizontal-sum tree), so any difference at all is a bug.
#![cfg(target_arch = "aarch64")]

use cria_core::DType;
use cria_kernels::dot::{kernel, neon};
use cria_kernels::Isa;

/// xorshift64*: fixed-seed data without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    /// A finite normal f16 (magnitude about 2^-7 .. 2^0), random sign.
    fn f16_bits(&mut self) -> [u8; 2] {
        let v = self.next();
        let bits = (0x2000 + (v % 0x1C00) as u16) | (((v >> 20) & 1) as u16) << 15;
        bits.to_le_bytes()
    }
}

/// Random weight rows of a 32-element block type: random quant bytes, finite f16 d (and m).
fn weights(rng: &mut Rng, dtype: DType, rows: usize, nb: usize) -> Vec<u8> {
    let (bytes, halves) = match dtype {
        DType::Q4_0 => (18, 1),
        DType::Q4_1 => (20, 2),
        DType::Q8_0 => (34, 1),
        other => panic!("no generator for {other}"),
    };
    let mut w = Vec::with_capacity(rows * nb * bytes);
    for _ in 0..rows * nb {
        for _ in 0..halves {
            w.extend_from_slice(&rng.f16_bits());
        }
        for _ in 0..bytes - 2 * halves {
            w.push(rng.next() as u8);
        }
    }
    w
}

fn check(dtype: DType) {
    let sk = kernel(Isa::Scalar, dtype).expect("scalar kernel");
    let nk = kernel(Isa::Neon, dtype).expect("neon kernel");
    let vd = neon::vec_dot(dtype).expect("a NEON kernel for this type");
    assert_eq!(nk.vec_dot_type, sk.vec_dot_type);
    let ab_per_block = match sk.vec_dot_type {
        DType::Q8_0 => 34,
        DType::Q8_1 => 36,
        other => panic!("unexpected {other}"),
    };
    let mut rng = Rng(0x5EED_0000 + dtype as u64);
    let mut compared = 0;
    for nb in [1usize, 3, 17] {
        let n = nb * 32;
        for rows in [0usize, 1, 7, 33] {
            let w = weights(&mut rng, dtype, rows, nb);
            for cols in 1..=4 {
                // Activations: random f32 through the scalar converter, rows spaced with slack
                // (stride > row size) to catch stride mistakes.
                let ab = nb * ab_per_block;
                let stride = ab + 6;
                let mut a = vec![0u8; (cols - 1) * stride + ab];
                for c in 0..cols {
                    let x: Vec<f32> = (0..n).map(|_| rng.f32() * 3.0).collect();
                    (sk.from_float)(&x, &mut a[c * stride..c * stride + ab]);
                }
                let mut want = vec![f32::NAN; rows * cols];
                let mut got = vec![f32::NAN; rows * cols];
                (sk.vec_dot)(n, &w, rows, &a, stride, &mut want);
                vd(n, &w, rows, &a, stride, &mut got);
                for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                    assert!(e.is_finite(), "{dtype}: reference not finite");
                    assert_eq!(
                        g.to_bits(),
                        e.to_bits(),
                        "{dtype} n={n} rows={rows} cols={cols} out[{i}]: neon {g} scalar {e}"
                    );
                    compared += 1;
                }
                // Through the table too (the registered kernel must be the NEON one).
                let mut via = vec![f32::NAN; rows * cols];
                (nk.vec_dot)(n, &w, rows, &a, stride, &mut via);
                assert_eq!(via, got, "{dtype}: table kernel differs");
            }
        }
    }
    assert_eq!(compared, 3 * (1 + 7 + 33) * 10);
}

#[test]
fn q4_0_matches_scalar_bitwise() {
    check(DType::Q4_0);
}

#[test]
fn q4_1_matches_scalar_bitwise() {
    check(DType::Q4_1);
}

#[test]
fn q8_0_matches_scalar_bitwise() {
    check(DType::Q8_0);
}

#[test]
fn neon_is_available_and_best() {
    assert!(Isa::Neon.available());
    assert_eq!(Isa::best(), Isa::Neon);
    assert!(!Isa::Avx2.available());
}
