//! F16/BF16 weights repacked into 16-row panels (`cpu::gemm_half`): the AVX2 GEMM against its
//! scalar twin (`matmul_scalar`, f32 `mul_add` chains in the same order: bitwise), against the
//! f64 spec, across thread counts and batch sizes, on awkward sizes (rows around the 16-row
//! panel and the 64-row item, k with no multiple of 8, token counts around the 6- and 12-token
//! tiles and the 48-token item, and 110: three token blocks of one row block, the later ones
//! reading the panels the first widened). The embedding lookup from a packed table gives the file's values.
//!
//! Tolerance vs the f64 spec: widening f16/bf16 to f32 is exact and activations stay f32, so
//! only the k FMAs of each chain round, each by at most 2^-24 of the running magnitude, bounded
//! by sum |w x|: k * 6e-8 relative to sum |w x| (3.5e-5 for k = 576; we allow k * 2^-23).

mod common;

use common::*;
use cria_core::DType;
use cria_kernels::cpu::gemm_half::{matmul_scalar, PackedHalf};
use cria_kernels::{CpuBackend, Isa};

const TOKENS: [usize; 13] = [1, 2, 3, 5, 6, 7, 12, 13, 24, 25, 48, 55, 110];
const ROWS: [usize; 7] = [1, 7, 15, 16, 17, 65, 100];
const KS: [usize; 5] = [1, 31, 33, 72, 576];
const TYPES: [DType; 2] = [DType::F16, DType::BF16];

fn bits_eq(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn packed_gemm_matches_its_scalar_twin_bitwise_and_the_spec() {
    for isa in isas_or_skip(&[Isa::Avx2, Isa::Avx512], "packed F16/BF16 GEMM") {
        packed_gemm_on(isa);
    }
}

fn packed_gemm_on(isa: Isa) {
    let b1 = CpuBackend::with_isa(1, isa);
    let b2 = CpuBackend::with_isa(2, isa);
    let mut rng = Rng::new(61);
    for dt in TYPES {
        for &k in &KS {
            for &n in &ROWS {
                let w = random_weights(&mut rng, dt, n, k);
                let wf = w.to_f32_vec().unwrap();
                let w = b1.prepare(w).unwrap();
                let p = w
                    .prepared
                    .as_ref()
                    .and_then(|p| p.downcast_ref::<PackedHalf>())
                    .unwrap_or_else(|| panic!("{dt} {n}x{k} was not repacked"));
                let mut row = vec![0f32; k];
                for r in [0, n / 2, n - 1] {
                    p.row(r, &mut row);
                    assert!(
                        bits_eq(&row, &wf[r * k..(r + 1) * k]),
                        "{dt} n={n} k={k}: row {r} read back from the panels differs"
                    );
                }
                for &t in &TOKENS {
                    let what = format!("{isa} {dt} n={n} k={k} t={t}");
                    let x: Vec<f32> = (0..t * k).map(|_| rng.normal(1.0)).collect();
                    let mut got = vec![f32::NAN; t * n];
                    b1.matmul(&mut got, &x, &w, t);
                    let mut twin = vec![f32::NAN; t * n];
                    matmul_scalar(&mut twin, &x, p, t);
                    assert!(bits_eq(&got, &twin), "{what}: SIMD vs scalar twin");
                    let mut got2 = vec![f32::NAN; t * n];
                    b2.matmul(&mut got2, &x, &w, t);
                    assert!(bits_eq(&got, &got2), "{what}: 1 and 2 threads differ");
                    for tok in [0, t - 1] {
                        let mut one = vec![f32::NAN; n];
                        b2.matmul(&mut one, &x[tok * k..(tok + 1) * k], &w, 1);
                        assert!(
                            bits_eq(&one, &got[tok * n..(tok + 1) * n]),
                            "{what}: token {tok} alone differs from the batch"
                        );
                    }
                    for tok in 0..t {
                        for r in 0..n {
                            let (mut s, mut m) = (0f64, 0f64);
                            for e in 0..k {
                                let v = wf[r * k + e] as f64 * x[tok * k + e] as f64;
                                s += v;
                                m += v.abs();
                            }
                            let g = got[tok * n + r] as f64;
                            let tol = k as f64 * 2f64.powi(-23) * m + 1e-30;
                            assert!(
                                (g - s).abs() <= tol,
                                "{what}: ({tok}, {r}) = {g}, spec {s} (tolerance {tol:e})"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn embedding_reads_the_packed_table() {
    if !has_isa_or_skip(Isa::Avx2, "embedding from the packed table") {
        return;
    }
    let b = CpuBackend::with_isa(1, Isa::Avx2);
    let mut rng = Rng::new(62);
    for dt in TYPES {
        let (n, k) = (37, 40);
        let w = random_weights(&mut rng, dt, n, k);
        let wf = w.to_f32_vec().unwrap();
        let w = b.prepare(w).unwrap();
        assert!(w.prepared.is_some(), "{dt} was not repacked");
        let toks = [0u32, 36, 17, 16, 15];
        let mut out = vec![f32::NAN; toks.len() * k];
        b.embed(&mut out, &w, &toks);
        for (i, &tok) in toks.iter().enumerate() {
            let tok = tok as usize;
            assert!(
                bits_eq(&out[i * k..(i + 1) * k], &wf[tok * k..(tok + 1) * k]),
                "{dt}: token {tok}"
            );
        }
    }
}

#[test]
fn packing_is_off_without_repack_or_avx2() {
    let mut rng = Rng::new(63);
    let w = random_weights(&mut rng, DType::F16, 20, 16);
    let sc = CpuBackend::with_isa(1, Isa::Scalar);
    assert!(sc.prepare(w.clone()).unwrap().prepared.is_none());
    let plain = CpuBackend::with_isa(1, Isa::Avx2).without_repack();
    assert!(plain.prepare(w.clone()).unwrap().prepared.is_none());
    // PackedHalf by hand still multiplies through the scalar twin on any CPU.
    let p = PackedHalf::new(DType::F16, 20, 16, w.bytes());
    let x: Vec<f32> = (0..2 * 16).map(|_| rng.normal(1.0)).collect();
    let mut out = vec![0f32; 2 * 20];
    matmul_scalar(&mut out, &x, &p, 2);
    let wf = w.to_f32_vec().unwrap();
    for tok in 0..2 {
        for r in 0..20 {
            let s: f64 = (0..16)
                .map(|e| wf[r * 16 + e] as f64 * x[tok * 16 + e] as f64)
                .sum();
            assert!((out[tok * 20 + r] as f64 - s).abs() < 1e-4, "({tok}, {r})");
        }
    }
}
