//! A LoRA pair's term on the CPU (`cpu::lora`): the AVX2 kernels against their scalar twins
//! (`down_scalar`, `up_scalar`: bitwise), the scalar spec against f64 arithmetic, the same bits
//! for a token alone or among others and whatever the thread count, on awkward sizes (ranks 1,
//! 3, 16, 33; rows 1, 31, 33 and past the 512-row work item; cols with no multiple of 8 or 32),
//! f32, f16 and bf16 matrices. And `Backend::lora` (through `prepare_lora`) equals the two
//! matmuls it replaces within f32 rounding.
//!
//! Tolerance vs f64: widening f16/bf16 is exact and activations stay f32; d[r] rounds at most
//! cols + 5 times, u[j] rank times, then one product and one sum: each bounded by 2^-24 of the
//! magnitudes involved, so |err| <= (cols + rank + 8) * 2^-23 * sum |terms| (we check against
//! that bound with the absolute values of every product).

mod common;

use common::*;
use cria_core::DType;
use cria_kernels::cpu::lora::{down_scalar, up_scalar, Elems, LoraUp};
use cria_kernels::{Backend, CpuBackend, Isa, LoraAdapter, Rows};

const RANKS: [usize; 4] = [1, 3, 16, 33];
const ROWS: [usize; 5] = [1, 31, 33, 100, 1100];
const COLS: [usize; 5] = [1, 7, 31, 33, 576];
const TYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

fn bits_eq(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// The scalar spec on n tokens: out += scale * (x A^T) B^T, token by token.
fn spec(
    out: &mut [f32],
    x: &[f32],
    n: usize,
    a: &cria_core::Tensor,
    b: &cria_core::Tensor,
    scale: f32,
) {
    let (rank, cols, rows) = (a.rows(), a.cols(), b.rows());
    let ae = Elems::of(a.dtype, a.bytes()).unwrap();
    let bt = LoraUp::new(b).unwrap();
    let mut d = vec![0f32; rank];
    for t in 0..n {
        down_scalar(&mut d, ae, &x[t * cols..(t + 1) * cols]);
        up_scalar(&mut out[t * rows..(t + 1) * rows], &bt, 0, &d, scale);
    }
}

#[test]
fn scalar_spec_is_the_product_within_f32_rounding() {
    let mut rng = Rng::new(7);
    for dt in TYPES {
        for &rank in &RANKS {
            for &(rows, cols) in &[(1, 1), (31, 33), (33, 576), (1100, 31)] {
                let a = random_weights(&mut rng, dt, rank, cols);
                let b = random_weights(&mut rng, dt, rows, rank);
                let (af, bf) = (a.to_f32_vec().unwrap(), b.to_f32_vec().unwrap());
                let x: Vec<f32> = (0..cols).map(|_| rng.normal(1.0)).collect();
                let out0: Vec<f32> = (0..rows).map(|_| rng.normal(1.0)).collect();
                let scale = 0.75f32;
                let mut out = out0.clone();
                spec(&mut out, &x, 1, &a, &b, scale);
                // f64: the exact value, and the sum of absolute terms for the bound.
                let d: Vec<(f64, f64)> = (0..rank)
                    .map(|r| {
                        (0..cols).fold((0.0, 0.0), |(s, m), c| {
                            let p = af[r * cols + c] as f64 * x[c] as f64;
                            (s + p, m + p.abs())
                        })
                    })
                    .collect();
                for j in 0..rows {
                    let (mut u, mut mag) = (0.0f64, 0.0f64);
                    for (r, &(dr, dm)) in d.iter().enumerate() {
                        let bv = bf[j * rank + r] as f64;
                        u += bv * dr;
                        mag += bv.abs() * dm;
                    }
                    let want = out0[j] as f64 + scale as f64 * u;
                    let bound = (cols + rank + 8) as f64
                        * 2f64.powi(-23)
                        * (out0[j].abs() as f64 + scale as f64 * mag)
                        + 1e-30;
                    let err = (out[j] as f64 - want).abs();
                    assert!(
                        err <= bound,
                        "{dt} rank {rank} {rows}x{cols} row {j}: {} vs {want} (err {err:e}, bound {bound:e})",
                        out[j]
                    );
                }
            }
        }
    }
}

#[test]
fn kernels_match_the_scalar_spec_bitwise() {
    let mut isas = vec![Isa::Scalar];
    isas.extend(isas_or_skip(&[Isa::Avx2, Isa::Avx512], "LoRA kernels"));
    let mut rng = Rng::new(11);
    for isa in isas {
        let backends = [1, 2, 3].map(|t| CpuBackend::with_isa(t, isa));
        for dt in TYPES {
            for &rank in &RANKS {
                for &rows in &ROWS {
                    for &cols in &COLS {
                        let a = random_weights(&mut rng, dt, rank, cols);
                        let b = random_weights(&mut rng, dt, rows, rank);
                        let (a, b) = backends[0].prepare_lora(a, b).unwrap();
                        let n = 3;
                        let x: Vec<f32> = (0..n * cols).map(|_| rng.normal(1.0)).collect();
                        let out0: Vec<f32> = (0..n * rows).map(|_| rng.normal(1.0)).collect();
                        let mut want = out0.clone();
                        spec(&mut want, &x, n, &a, &b, 0.5);
                        let what = format!("{isa} {dt} rank {rank} rows {rows} cols {cols}");
                        for be in &backends {
                            // All tokens in one call (the prompt path).
                            let mut got = out0.clone();
                            be.lora_slices(&mut got, &x, n, &a, &b, 0.5)
                                .unwrap_or_else(|| panic!("{what}: no transposed B"));
                            assert!(bits_eq(&got, &want), "{what} t={}: {n} tokens", be.threads);
                            // One token per call (the decode path): the same bits.
                            let mut got = out0.clone();
                            for t in 0..n {
                                be.lora_slices(
                                    &mut got[t * rows..(t + 1) * rows],
                                    &x[t * cols..(t + 1) * cols],
                                    1,
                                    &a,
                                    &b,
                                    0.5,
                                )
                                .unwrap();
                            }
                            assert!(
                                bits_eq(&got, &want),
                                "{what} t={}: one token a call",
                                be.threads
                            );
                        }
                    }
                }
            }
        }
    }
}

/// `Backend::lora` through `prepare_lora` (the transposed fast path) against the two matmuls
/// and scaled add of the generic path (B as `prepare` makes it), on rows of a batch.
#[test]
fn backend_lora_equals_the_two_matmuls() {
    let b = CpuBackend::new(2);
    let mut rng = Rng::new(5);
    for dt in TYPES {
        for &(rank, rows, cols) in &[(16, 576, 576), (3, 33, 31), (33, 100, 64)] {
            let a = random_weights(&mut rng, dt, rank, cols);
            let w = random_weights(&mut rng, dt, rows, rank);
            let (fa, fb) = b.prepare_lora(a.clone(), w.clone()).unwrap();
            let fast = LoraAdapter::<CpuBackend> {
                a: fa,
                b: fb,
                rank,
                rows,
                cols,
                scale: 2.0,
            };
            let slow = LoraAdapter::<CpuBackend> {
                a: Backend::prepare(&b, a).unwrap(),
                b: Backend::prepare(&b, w).unwrap(),
                rank,
                rows,
                cols,
                scale: 2.0,
            };
            let t = 5;
            let x: Vec<f32> = (0..t * cols).map(|_| rng.normal(1.0)).collect();
            let out0: Vec<f32> = (0..t * rows).map(|_| rng.normal(1.0)).collect();
            for r in [Rows::new(0, 1), Rows::new(1, 4), Rows::new(4, 5)] {
                let (mut o1, mut o2) = (out0.clone(), out0.clone());
                let (mut t1, mut t2) = (vec![0f32; t * rank], vec![0f32; rows * 2]);
                b.lora(&mut o1, &x, r, &fast, 0.3, &mut t1, &mut t2);
                b.lora(&mut o2, &x, r, &slow, 0.3, &mut t1, &mut t2);
                let range = o2.iter().fold(0f32, |m, v| m.max(v.abs()));
                let worst = o1
                    .iter()
                    .zip(&o2)
                    .map(|(p, q)| (p - q).abs())
                    .fold(0f32, f32::max);
                // On aarch64 the generic path's f16/bf16 matmul converts the activations to the
                // weight's type (ggml's vec_dot_f16 way); the fast path keeps them f32.
                let tol = match dt {
                    DType::F16 if cfg!(target_arch = "aarch64") => 2e-3,
                    DType::BF16 if cfg!(target_arch = "aarch64") => 2e-2,
                    _ => 1e-5,
                };
                assert!(
                    worst <= tol * range.max(1.0),
                    "{dt} rank {rank} {rows}x{cols} rows {r:?}: differ by {worst} (range {range})"
                );
                // Rows outside `r` untouched.
                for (i, (p, q)) in o1.iter().zip(&out0).enumerate() {
                    if !(r.start * rows..r.end * rows).contains(&i) {
                        assert_eq!(
                            p.to_bits(),
                            q.to_bits(),
                            "{dt}: value {i} outside the rows changed"
                        );
                    }
                }
                let changed = (r.start * rows..r.end * rows).any(|i| o1[i] != out0[i]);
                assert!(changed, "{dt} rank {rank}: the term changed nothing");
            }
        }
    }
}

/// Several sequences' terms in one `lora_batch` (each its own adapter: ranks, types differ) give
/// each sequence's rows the bits of `lora` alone, whatever the thread count; rows between the
/// terms are untouched.
#[test]
fn batch_of_terms_equals_each_alone_bitwise() {
    let mut rng = Rng::new(19);
    let (rows, cols) = (600, 100);
    let specs = [
        (16, DType::F16),
        (3, DType::F32),
        (33, DType::BF16),
        (1, DType::F16),
    ];
    let b1 = CpuBackend::new(1);
    let ads: Vec<LoraAdapter<CpuBackend>> = specs
        .iter()
        .map(|&(rank, dt)| {
            let a = random_weights(&mut rng, dt, rank, cols);
            let w = random_weights(&mut rng, dt, rows, rank);
            let (a, b) = b1.prepare_lora(a, w).unwrap();
            LoraAdapter {
                a,
                b,
                rank,
                rows,
                cols,
                scale: 1.0,
            }
        })
        .collect();
    // Rows of the batch: sequence 0 has 2 tokens, a gap, sequence 1 one token, 2 has 3, 3 one.
    let spans = [
        Rows::new(0, 2),
        Rows::new(3, 4),
        Rows::new(4, 7),
        Rows::new(7, 8),
    ];
    let t = 8;
    let x: Vec<f32> = (0..t * cols).map(|_| rng.normal(1.0)).collect();
    let out0: Vec<f32> = (0..t * rows).map(|_| rng.normal(1.0)).collect();
    let mut want = out0.clone();
    let (mut tmp, mut tmp2) = (vec![0f32; t * 33], vec![0f32; rows]);
    for (i, ad) in ads.iter().enumerate() {
        b1.lora(
            &mut want,
            &x,
            spans[i],
            ad,
            0.5 + i as f32,
            &mut tmp,
            &mut tmp2,
        );
    }
    for threads in [1, 2, 3] {
        let be = CpuBackend::new(threads);
        let terms: Vec<(Rows, &LoraAdapter<CpuBackend>, f32)> = ads
            .iter()
            .enumerate()
            .map(|(i, ad)| (spans[i], ad, 0.5 + i as f32))
            .collect();
        let mut got = out0.clone();
        be.lora_batch(&mut got, &x, &terms, &mut tmp, &mut tmp2);
        assert!(
            bits_eq(&got, &want),
            "{threads} threads: batch differs from each alone"
        );
        assert!(
            bits_eq(&got[2 * rows..3 * rows], &out0[2 * rows..3 * rows]),
            "the row between terms changed"
        );
    }
}
