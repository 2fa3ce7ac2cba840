//! The repacked quantized matmul (`cpu::gemm_q`) against the plain-layout scalar dots (the spec),
//! on awkward sizes.
//!
//! Tolerances, and why:
//! - SIMD tile kernel vs its scalar twin on the same packed bytes: bit-identical (same integer
//!   sums, same f32 scale product, one FMA per block in the same order per lane).
//! - matmul on a prepared matrix vs `scalar::dot_*` on the plain rows with the same Q8_0
//!   activations: both add the same per-block f32 terms (exact integer dot times the same f32
//!   product d_w * d_a), in different orders (one running FMA vs 8 lanes summed at the end). Each
//!   of the <= 9 (Q4_K: 6) additions rounds by at most 2^-24 of the running magnitude, which is bounded
//!   by sum_i |w_i a_i|; we allow 1e-5 * sum_i |w_i a_i| (far above nb * 2^-24 = 5e-7, and far
//!   below any layout bug, which moves a result by a whole block's term).
//!   (Q4_1/Q5_1's min term uses Q8_1's f16 s in both.)
//! - Results do not depend on the thread count: bitwise.

mod common;

use common::*;
use cria_core::DType;
use cria_kernels::arch::scalar::dot as scalar;
use cria_kernels::arch::scalar::gemm_q::tile_scalar;
use cria_kernels::cpu::gemm_q::{self, Kind, Packed, GROUP, TILE_T, TILE_T2};
use cria_kernels::{CpuBackend, Isa};

const ALL: [DType; 12] = [
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q8_0,
    DType::Q2_K,
    DType::Q3_K,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
    DType::IQ4_NL,
    DType::IQ4_XS,
];
const ROWS: [usize; 7] = [1, 7, 8, 9, 17, 33, 35];
const KS: [usize; 3] = [32, 96, 288];
/// Super-block types: one, two and three super-blocks.
const KS_K: [usize; 3] = [256, 512, 768];

fn ks(t: DType) -> &'static [usize] {
    if t.block_size() == 256 {
        &KS_K
    } else {
        &KS
    }
}

/// The activation type the plain path dots `t` against.
fn act_type(t: DType) -> DType {
    if t.block_size() == 256 {
        DType::Q8_K
    } else if matches!(t, DType::Q4_1 | DType::Q5_1) {
        DType::Q8_1
    } else {
        DType::Q8_0
    }
}
const TOKENS: [usize; 10] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 17];

fn plain_dot(t: DType) -> fn(usize, &[u8], &[u8]) -> f32 {
    match t {
        DType::Q4_0 => scalar::dot_q4_0,
        DType::Q8_0 => scalar::dot_q8_0,
        DType::Q4_1 => scalar::dot_q4_1,
        DType::Q5_0 => scalar::dot_q5_0,
        DType::Q5_1 => scalar::dot_q5_1,
        DType::Q2_K => scalar::dot_q2_k,
        DType::IQ4_NL => scalar::dot_iq4_nl,
        DType::IQ4_XS => scalar::dot_iq4_xs,
        DType::Q3_K => scalar::dot_q3_k,
        DType::Q4_K => scalar::dot_q4_k,
        DType::Q5_K => scalar::dot_q5_k,
        DType::Q6_K => scalar::dot_q6_k,
        _ => unreachable!(),
    }
}

#[test]
fn prepared_matmul_matches_the_plain_scalar_dot() {
    if !has_isa_or_skip(Isa::Avx2, "repacked matmul (not used without AVX2)") {
        return;
    }
    for isa in simd_isas() {
        prepared_matmul_on(isa);
    }
}

/// The x86 ISAs with repacked kernels that this CPU has.
fn simd_isas() -> Vec<Isa> {
    isas_or_skip(&[Isa::Avx2, Isa::Avx512], "repacked tiles")
}

fn prepared_matmul_on(isa: Isa) {
    let mut rng = Rng::new(31);
    for dt in ALL {
        for &n in &ROWS {
            for &k in ks(dt) {
                let w = random_weights(&mut rng, dt, n, k);
                let wf = w.to_f32_vec().unwrap();
                let b1 = CpuBackend::with_isa(1, isa);
                let b2 = CpuBackend::with_isa(2, isa);
                // What prepare does.
                let mut p = w.clone();
                p.prepared = Some(std::sync::Arc::new(Packed::new(
                    Kind::of(dt).unwrap(),
                    n,
                    k,
                    w.bytes(),
                )));
                // The repack on 1 and on 2 threads (items of 64 groups) gives the same bytes.
                for b in [&b1, &b2] {
                    let q = b.prepare(w.clone()).unwrap();
                    let q = q.prepared.as_ref().and_then(|x| x.downcast_ref::<Packed>());
                    assert!(
                        q.is_some_and(|q| q.buf.as_slice()
                            == p.prepared
                                .as_ref()
                                .unwrap()
                                .downcast_ref::<Packed>()
                                .unwrap()
                                .buf
                                .as_slice()),
                        "{dt} was not repacked"
                    );
                }
                for &t in &TOKENS {
                    let x = random_acts(&mut rng, t, k);
                    let mut out = vec![f32::NAN; t * n];
                    b1.matmul(&mut out, &x, &p, t);
                    let mut out2 = vec![f32::NAN; t * n];
                    b2.matmul(&mut out2, &x, &p, t);
                    assert!(
                        out.iter()
                            .zip(&out2)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{isa} {dt} n={n} k={k} t={t}: 1 and 2 threads differ"
                    );
                    let at = act_type(dt);
                    let qb = at.bytes_for(k).unwrap();
                    for tok in 0..t {
                        let mut a = vec![0u8; qb];
                        let xr = &x[tok * k..(tok + 1) * k];
                        match at {
                            DType::Q8_K => scalar::quantize_q8_k(xr, &mut a),
                            DType::Q8_1 => scalar::quantize_q8_1(xr, &mut a),
                            _ => scalar::quantize_q8_0(xr, &mut a),
                        }
                        let af = dequant_act(at, &a, k);

                        for r in 0..n {
                            let want = plain_dot(dt)(k, w.row(r), &a);
                            let mag: f64 = (0..k)
                                .map(|i| (wf[r * k + i] as f64 * af[i] as f64).abs())
                                .sum();
                            let got = out[tok * n + r];
                            assert!(
                                ((got - want) as f64).abs() <= 1e-5 * mag + 1e-30,
                                "{isa} {dt} n={n} k={k} t={t} token {tok} row {r}: {got} vs {want} (mag {mag})"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn simd_tile_matches_its_scalar_twin_bitwise() {
    if simd_isas().is_empty() {
        eprintln!("note: no AVX2 on this CPU");
    }
    for isa in simd_isas() {
        simd_tile_on(isa);
    }
}

fn simd_tile_on(isa: Isa) {
    let simd = gemm_q::tile_for(isa).expect("available");
    let mut rng = Rng::new(32);
    for dt in ALL {
        let kind = Kind::of(dt).unwrap();
        for &k in ks(dt) {
            let nb = k / dt.block_size();
            let n = 9;
            let w = random_weights(&mut rng, dt, n, k);
            let p = Packed::new(kind, n, k, w.bytes());
            assert_eq!(p.groups(), 2);
            let gb = p.group_bytes();
            // Enough tokens for either kernel.
            let nt = TILE_T.max(TILE_T2);
            let x = random_acts(&mut rng, nt, k);
            let ab = nb * kind.act_bytes();
            let mut a = vec![0u8; nt * ab];
            for tok in 0..nt {
                // The activation converter: SIMD and scalar must agree bitwise too.
                let mut s = vec![0u8; ab];
                let q = if dt.block_size() == 256 {
                    gemm_q::quantize_a8k
                } else {
                    gemm_q::quantize_a8
                };
                q(isa, &x[tok * k..(tok + 1) * k], &mut a[tok * ab..][..ab]);
                q(Isa::Scalar, &x[tok * k..(tok + 1) * k], &mut s);
                assert_eq!(
                    &a[tok * ab..][..ab],
                    &s[..],
                    "activation converter {dt} {k}"
                );
            }
            for g in 0..2 {
                let wg = &p.buf.as_slice()[g * gb..(g + 1) * gb];
                for cols in 1..=TILE_T {
                    let mut o1 = [[f32::NAN; GROUP]; TILE_T];
                    let mut o2 = [[f32::NAN; GROUP]; TILE_T];
                    simd(kind, nb, wg, &a, ab, cols, &mut o1);
                    tile_scalar(kind, nb, wg, &a, ab, cols, &mut o2);
                    for c in 0..cols {
                        for r in 0..GROUP {
                            assert_eq!(
                                o1[c][r].to_bits(),
                                o2[c][r].to_bits(),
                                "{isa} {dt} k={k} group {g} cols {cols}: token {c} row {r}: {} vs {}",
                                o1[c][r],
                                o2[c][r]
                            );
                        }
                    }
                    // Padding rows of the last group are zero weights: their results are 0.
                    if g == 1 {
                        assert!(o1[0][1..].iter().all(|&v| v == 0.0));
                    }
                }
            }
            // The pair kernel (two groups side by side) against the twin on each group.
            if let Some(tile2) = gemm_q::tile2_for(isa) {
                let (w0, w1) = (&p.buf.as_slice()[..gb], &p.buf.as_slice()[gb..2 * gb]);
                for cols in 1..=TILE_T2 {
                    let mut o = [[f32::NAN; 2 * GROUP]; TILE_T2];
                    tile2(kind, nb, w0, w1, &a, ab, cols, &mut o);
                    for (g, wg) in [w0, w1].into_iter().enumerate() {
                        for c in 0..cols {
                            let mut want = [[f32::NAN; GROUP]; TILE_T];
                            tile_scalar(kind, nb, wg, &a[c * ab..], ab, 1, &mut want);
                            for r in 0..GROUP {
                                assert_eq!(
                                    o[c][g * GROUP + r].to_bits(),
                                    want[0][r].to_bits(),
                                    "{isa} pair {dt} k={k} cols {cols}: token {c} group {g} row {r}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn scalar_isa_keeps_the_plain_layout() {
    let mut rng = Rng::new(33);
    let b = CpuBackend::with_isa(1, Isa::Scalar);
    for dt in ALL.into_iter().chain([DType::F32]) {
        let w = random_weights(&mut rng, dt, 9, 256);
        assert!(b.prepare(w).unwrap().prepared.is_none(), "{dt}");
    }
}

#[test]
fn unpacking_a_block_gives_back_the_file_bytes() {
    let mut rng = Rng::new(41);
    for t in ALL {
        let kind = Kind::of(t).unwrap();
        for &rows in &ROWS {
            for &k in ks(t) {
                let w = random_weights(&mut rng, t, rows, k);
                let p = Packed::new(kind, rows, k, w.bytes());
                let pb = kind.plain_bytes();
                let mut blk = [0xAAu8; 256];
                for r in 0..rows {
                    for b in 0..k / kind.qk() {
                        p.plain_block(r, b, &mut blk);
                        assert_eq!(
                            &blk[..pb],
                            &w.row(r)[b * pb..(b + 1) * pb],
                            "{t} rows={rows} k={k}: row {r} block {b}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn embedding_rows_from_a_shared_packed_copy_equal_the_files() {
    let mut rng = Rng::new(42);
    let b = CpuBackend::with_isa(1, Isa::best());
    for t in ALL {
        let k = ks(t)[1];
        let rows = 35;
        let plain = random_weights(&mut rng, t, rows, k);
        let head = b.prepare(plain.clone()).unwrap();
        if head.prepared.is_none() {
            continue; // no SIMD repack on this CPU: nothing to share
        }
        // A tied table, as the model builds it: the file's bytes plus the head's packed copy.
        let mut table = plain.clone();
        table.prepared = head.prepared.clone();
        let tokens = [0u32, 7, 8, 34, 17, 0];
        let (mut want, mut got) = (vec![0f32; tokens.len() * k], vec![0f32; tokens.len() * k]);
        b.embed(&mut want, &plain, &tokens);
        b.embed(&mut got, &table, &tokens);
        assert_eq!(
            want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{t}"
        );
    }
}

#[test]
fn fused_activation_quantizer_matches_the_generic_one() {
    if !has_isa_or_skip(Isa::Avx2, "activation quantizer") {
        return;
    }
    let mut rng = Rng::new(43);
    for blocks in [0usize, 1, 2, 7, 8, 9, 17, 48] {
        let n = blocks * 32;
        let mut x = random_acts(&mut rng, 1, n);
        if blocks >= 2 {
            // An all-zero block (d = 0) and one with a huge range.
            x[..32].iter_mut().for_each(|v| *v = 0.0);
            x[40] = 3.0e4;
        }
        let ab = gemm_q::A8_BLOCK;
        let (mut want, mut got) = (vec![0u8; blocks * ab], vec![0u8; blocks * ab]);
        gemm_q::quantize_a8_generic(Isa::Avx2, &x, &mut want);
        gemm_q::quantize_a8(Isa::Avx2, &x, &mut got);
        assert_eq!(want, got, "{blocks} blocks");
    }
}

#[test]
fn matmul_many_equals_one_matmul_per_matrix_bitwise() {
    let mut rng = Rng::new(44);
    // (types, rows) sets on one input: A8 kinds together, A8K kinds together, an odd row count,
    // and a set the backend cannot take together (F16 beside Q4_0) which must fall back.
    let sets: [(&[DType], &[usize], usize); 6] = [
        (&[DType::Q4_0, DType::Q8_0, DType::Q4_1], &[64, 24, 9], 96),
        (
            &[DType::Q4_K, DType::Q6_K, DType::Q5_K, DType::Q3_K],
            &[33, 16, 9, 17],
            512,
        ),
        (&[DType::Q5_0], &[35], 288),
        (
            &[DType::Q2_K, DType::Q6_K, DType::IQ4_XS],
            &[24, 8, 16],
            256,
        ),
        (&[DType::IQ4_NL, DType::Q8_0], &[16, 8], 64),
        (&[DType::Q4_0, DType::F16], &[16, 8], 64),
    ];
    for threads in [1, 2] {
        let b = CpuBackend::with_isa(threads, Isa::best());
        for (types, rows, k) in sets {
            let ws: Vec<_> = types
                .iter()
                .zip(rows)
                .map(|(&dt, &n)| b.prepare(random_weights(&mut rng, dt, n, k)).unwrap())
                .collect();
            let wr: Vec<&cria_core::Tensor> = ws.iter().collect();
            for t in [1usize, 3, 5, 17] {
                let x = random_acts(&mut rng, t, k);
                let want: Vec<Vec<f32>> = ws
                    .iter()
                    .map(|w| {
                        let mut o = vec![0f32; t * w.rows()];
                        b.matmul(&mut o, &x, w, t);
                        o
                    })
                    .collect();
                let mut got: Vec<Vec<f32>> =
                    ws.iter().map(|w| vec![f32::NAN; t * w.rows()]).collect();
                let mut outs: Vec<&mut [f32]> = got.iter_mut().map(|o| o.as_mut_slice()).collect();
                b.matmul_many(&mut outs, &x, &wr, t);
                for (m, (g, w)) in got.iter().zip(&want).enumerate() {
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(g),
                        bits(w),
                        "{types:?} matrix {m}, t={t}, threads={threads}"
                    );
                }
            }
        }
    }
}

#[test]
fn vectorised_k_activation_quantizer_matches_the_generic_one() {
    if !has_isa_or_skip(Isa::Avx2, "K activation quantizer") {
        return;
    }
    let mut rng = Rng::new(45);
    for blocks in [0usize, 1, 2, 3, 6] {
        let n = blocks * 256;
        let mut x = random_acts(&mut rng, 1, n);
        if blocks >= 3 {
            // An all-zero super-block; one whose largest magnitude comes first as a negative and
            // then as a positive value (the first one sets the sign); one with a lone spike.
            x[..256].iter_mut().for_each(|v| *v = 0.0);
            x[256 + 10] = -9.0;
            x[256 + 200] = 9.0;
            x[512 + 255] = 4.0e3;
        }
        let ab = gemm_q::A8K_BLOCK;
        let (mut want, mut got) = (vec![0u8; blocks * ab], vec![0u8; blocks * ab]);
        gemm_q::quantize_a8k_generic(Isa::Avx2, &x, &mut want);
        gemm_q::quantize_a8k(Isa::Avx2, &x, &mut got);
        assert_eq!(want, got, "{blocks} super-blocks");
    }
}

#[test]
fn repack_on_threads_equals_the_serial_repack() {
    let mut rng = Rng::new(42);
    let b2 = CpuBackend::with_isa(2, Isa::Scalar);
    // 1100 rows: 138 groups, three items of 64 groups (the last one short), over 64 KiB.
    for dt in [DType::Q4_0, DType::Q6_K] {
        let k = if dt.block_size() == 256 { 256 } else { 128 };
        let w = random_weights(&mut rng, dt, 1100, k);
        let kind = Kind::of(dt).unwrap();
        let serial = Packed::new(kind, 1100, k, w.bytes());
        let par = Packed::new_on(&b2, kind, 1100, k, w.bytes());
        assert!(serial.buf.as_slice() == par.buf.as_slice(), "{dt}");
    }
}
