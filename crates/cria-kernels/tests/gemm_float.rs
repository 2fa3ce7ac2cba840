//! The float-weight GEMM on the file's layout (`cpu::gemm_float`, taken by `matmul` on AVX2 for
//! every t when the weights were not repacked, as here) against the
//! spec: an f64 dot of the dequantized weights with the f32 activations, and against the scalar
//! backend (its twin: per-element scalar dots), on awkward sizes.
//!
//! Tolerances, and why:
//! - vs the f64 spec: the GEMM widens the weights exactly (f16/bf16 -> f32 is exact) and keeps
//!   activations f32, so only the f32 accumulation rounds: k/8 FMAs per lane plus an 8-lane sum
//!   and up to 7 tail terms, each off by at most 2^-24 of the running magnitude, bounded by
//!   sum_i |w_i x_i|. For k <= 576 that is <= 87 * 6e-8 = 5.2e-6; we allow 1e-5 * sum |w x|
//!   (a layout bug moves a result by whole terms, far more).
//! - vs the scalar backend: its F16 (and BF16) dots first round activations to the weight type
//!   (ggml's vec_dot_type), a relative error of 2^-11 (bf16: 2^-8) per product; we allow
//!   2^-10 (bf16: 2^-7) * sum |w x| for those, 1e-5 for F32.
//! - Results do not depend on the thread count, nor on the batch a token is in (each token
//!   alone gives the same bits as in the batch): bitwise.

mod common;

use common::*;
use cria_core::DType;
use cria_kernels::{CpuBackend, Isa};

const TOKENS: [usize; 6] = [1, 2, 3, 5, 17, 64];
const ROWS: [usize; 4] = [1, 7, 33, 100];
const KS: [usize; 5] = [1, 31, 33, 72, 576];
const TYPES: [DType; 3] = [DType::F16, DType::BF16, DType::F32];

fn check(got: &[f32], want: &[f64], mag: &[f64], rel: f64, what: &str) {
    for (i, ((&g, &w), &m)) in got.iter().zip(want).zip(mag).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(
            err <= rel * m + 1e-30,
            "{what}: element {i}: got {g}, want {w} (|err| {err:e} > {rel:e} * {m:e})"
        );
    }
}

#[test]
fn gemm_matches_spec_and_scalar_backend() {
    if !has_isa_or_skip(Isa::Avx2, "float GEMM (not used without AVX2)") {
        return;
    }
    let avx = CpuBackend::with_isa(1, Isa::Avx2);
    let avx2t = CpuBackend::with_isa(2, Isa::Avx2);
    let sc = CpuBackend::with_isa(1, Isa::Scalar);
    let mut rng = Rng::new(7);
    for dt in TYPES {
        for &k in &KS {
            for &n in &ROWS {
                let w = random_weights(&mut rng, dt, n, k);
                let wf = w.to_f32_vec().unwrap();
                for &t in &TOKENS {
                    let x: Vec<f32> = (0..t * k).map(|_| rng.normal(1.0)).collect();
                    let mut want = vec![0f64; t * n];
                    let mut mag = vec![0f64; t * n];
                    for tok in 0..t {
                        for r in 0..n {
                            let (mut s, mut m) = (0f64, 0f64);
                            for e in 0..k {
                                let p = wf[r * k + e] as f64 * x[tok * k + e] as f64;
                                s += p;
                                m += p.abs();
                            }
                            want[tok * n + r] = s;
                            mag[tok * n + r] = m;
                        }
                    }
                    let what = format!("{dt} n={n} k={k} t={t}");
                    let mut got = vec![f32::NAN; t * n];
                    avx.matmul(&mut got, &x, &w, t);
                    check(&got, &want, &mag, 1e-5, &format!("avx2 vs spec, {what}"));
                    for tok in 0..t {
                        let mut one = vec![f32::NAN; n];
                        avx.matmul(&mut one, &x[tok * k..(tok + 1) * k], &w, 1);
                        assert!(
                            one.iter()
                                .zip(&got[tok * n..(tok + 1) * n])
                                .all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{what}: token {tok} alone differs from the batch"
                        );
                    }
                    let mut got2 = vec![f32::NAN; t * n];
                    avx2t.matmul(&mut got2, &x, &w, t);
                    assert!(
                        got.iter()
                            .zip(&got2)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{what}: 1 and 2 threads differ"
                    );
                    let mut s = vec![f32::NAN; t * n];
                    sc.matmul(&mut s, &x, &w, t);
                    let s64: Vec<f64> = s.iter().map(|&v| v as f64).collect();
                    let rel = match dt {
                        DType::F16 => 2f64.powi(-10),
                        DType::BF16 => 2f64.powi(-7),
                        _ => 1e-5,
                    };
                    check(
                        &got,
                        &s64,
                        &mag,
                        rel,
                        &format!("avx2 vs scalar backend, {what}"),
                    );
                }
            }
        }
    }
}
