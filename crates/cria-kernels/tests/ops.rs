//! The CPU backend's non-matmul ops against `reference`, on every available ISA.
//!
//! Tolerances, and why:
//! - rope: bit-exact (same ggml-style angles, same rotation, the table is only shared across heads).
//! - rmsnorm: the f64 sum of squares is added in another order, which moves r by ~1e-16 relative,
//!   so r as f32 agrees to 1 ulp; outputs within 2 ulps (2.4e-7 relative).
//! - silu_mul: exp8 is within 2 ulp of e^x, the rest is the reference's ops: 1e-6 relative.
//! - attention: dot products in 8 lanes, exp8, multiplication by 1/sum instead of division:
//!   each a few ulps; outputs are convex combinations of v, so 1e-5 * max|v| absolute.

mod common;

use common::{all_isas_or_skip, Rng};
use cria_kernels::{reference, AttnShape, Backend, CpuBackend, Isa, KvSlice, Rope};

fn backends() -> Vec<CpuBackend> {
    all_isas_or_skip("ops")
        .into_iter()
        .flat_map(|i| [CpuBackend::with_isa(1, i), CpuBackend::with_isa(3, i)])
        .collect()
}

fn close(a: &[f32], b: &[f32], rel: f32, abs: f32, what: &str) {
    assert_eq!(a.len(), b.len());
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= rel * y.abs() + abs,
            "{what}[{i}]: {x} vs reference {y}"
        );
    }
}

#[test]
fn rope_is_bit_exact_with_the_reference() {
    let mut rng = Rng::new(10);
    for b in backends() {
        for &(n_heads, head_dim, n_rot, interleaved) in &[
            (9, 64, 64, true),
            (3, 64, 32, false),
            (2, 10, 6, true),
            (1, 2, 2, false),
            (4, 24, 14, true),  // 3 vector pairs + a tail of 3
            (2, 24, 22, false), // 8 half-split pairs + a tail of 3
        ] {
            let ff =
                (!interleaved).then(|| (0..n_rot / 2).map(|i| 1.0 + i as f32 * 0.25).collect());
            let rope = Rope::new(
                n_rot,
                10000.0,
                if interleaved { 1.0 } else { 0.5 },
                ff,
                if interleaved { 1.0 } else { 1.1 },
                interleaved,
            );
            for &(t, pos0) in &[(1, 0), (5, 17), (3, 4000)] {
                let x0: Vec<f32> = (0..t * n_heads * head_dim)
                    .map(|_| rng.normal(1.0))
                    .collect();
                let (mut a, mut r) = (x0.clone(), x0.clone());
                // Twice: the second call reuses the backend's cos/sin table.
                b.rope(&mut a, t, n_heads, head_dim, pos0, &rope);
                b.rope(&mut a, t, n_heads, head_dim, pos0, &rope);
                reference::rope(&mut r, t, n_heads, head_dim, pos0, &rope);
                reference::rope(&mut r, t, n_heads, head_dim, pos0, &rope);
                assert!(
                    a.iter().zip(&r).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{} rope differs",
                    b.name()
                );
            }
        }
    }
}

#[test]
fn rmsnorm_matches_reference() {
    let mut rng = Rng::new(11);
    for b in backends() {
        for &(rows, d) in &[(1, 576), (3, 7), (2, 1), (4, 33), (1, 4096)] {
            let x: Vec<f32> = (0..rows * d).map(|_| rng.normal(3.0)).collect();
            let w: Vec<f32> = (0..d).map(|_| rng.range(0.5, 1.5)).collect();
            let (mut a, mut r) = (vec![0f32; rows * d], vec![0f32; rows * d]);
            b.rmsnorm(&mut a, &x, &w, 1e-5);
            reference::rmsnorm(&mut r, &x, &w, 1e-5);
            close(
                &a,
                &r,
                2.4e-7,
                0.0,
                &format!("{} rmsnorm {rows}x{d}", b.name()),
            );
        }
    }
}

#[test]
fn silu_mul_matches_reference_including_extremes() {
    let mut rng = Rng::new(12);
    for b in backends() {
        for n in [0usize, 1, 7, 8, 9, 1536, 1543] {
            let mut x: Vec<f32> = (0..n).map(|_| rng.normal(4.0)).collect();
            if n > 8 {
                x[0] = -100.0; // e^100 overflows: silu -> -0
                x[1] = 100.0;
                x[2] = -87.0;
                x[3] = 0.0;
                x[4] = 1e-30;
            }
            let y: Vec<f32> = (0..n).map(|_| rng.normal(1.0)).collect();
            let (mut a, mut r) = (x.clone(), x.clone());
            b.silu_mul(&mut a, &y);
            reference::silu_mul(&mut r, &y);
            close(&a, &r, 1e-6, 1e-30, &format!("{} silu_mul n={n}", b.name()));
        }
    }
}

#[test]
fn attention_f32_kv_matches_reference_with_gqa_windows_and_odd_head_dims() {
    let mut rng = Rng::new(13);
    let cases = [
        // (n_heads, n_kv_heads, head_dim, t, pos0, window)
        (9, 3, 64, 1, 0, None),
        (9, 3, 64, 1, 40, None),
        (9, 3, 64, 7, 33, None),
        (4, 4, 20, 5, 3, Some(4)),
        (2, 1, 7, 3, 0, Some(1)),
        (8, 2, 128, 2, 300, Some(64)),
    ];
    for b in backends() {
        for &(nh, nkv, hd, t, pos0, window) in &cases {
            let s = AttnShape {
                n_heads: nh,
                n_kv_heads: nkv,
                head_dim: hd,
                t,
                pos0,
                window,
                scale: 1.0 / (hd as f32).sqrt(),
            };
            let q: Vec<f32> = (0..t * nh * hd).map(|_| rng.normal(1.0)).collect();
            let k: Vec<f32> = (0..(pos0 + t) * nkv * hd)
                .map(|_| rng.normal(1.0))
                .collect();
            let v: Vec<f32> = (0..(pos0 + t) * nkv * hd)
                .map(|_| rng.normal(1.0))
                .collect();
            let vmax = v.iter().fold(0f32, |m, x| m.max(x.abs()));
            let (mut a, mut r) = (vec![f32::NAN; t * nh * hd], vec![0f32; t * nh * hd]);
            let (kk, vv) = (KvSlice::F32(&k), KvSlice::F32(&v));
            b.attention(&mut a, &q, kk, vv, &s);
            reference::attention(&mut r, &q, kk, vv, &s);
            close(
                &a,
                &r,
                0.0,
                1e-5 * vmax,
                &format!("{} attention {s:?}", b.name()),
            );
        }
    }
}

#[test]
fn attention_is_bitwise_independent_of_threads() {
    let mut rng = Rng::new(14);
    let s = AttnShape {
        n_heads: 9,
        n_kv_heads: 3,
        head_dim: 64,
        t: 6,
        pos0: 100,
        window: None,
        scale: 0.125,
    };
    let q: Vec<f32> = (0..6 * 9 * 64).map(|_| rng.normal(1.0)).collect();
    let k: Vec<f32> = (0..106 * 3 * 64).map(|_| rng.normal(1.0)).collect();
    let v: Vec<f32> = (0..106 * 3 * 64).map(|_| rng.normal(1.0)).collect();
    for isa in all_isas_or_skip("attention across threads") {
        let outs: Vec<Vec<f32>> = [1, 2, 4]
            .into_iter()
            .map(|th| {
                let mut o = vec![0f32; q.len()];
                CpuBackend::with_isa(th, isa).attention(
                    &mut o,
                    &q,
                    KvSlice::F32(&k),
                    KvSlice::F32(&v),
                    &s,
                );
                o
            })
            .collect();
        for o in &outs[1..] {
            assert!(
                o.iter()
                    .zip(&outs[0])
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{isa}: attention depends on threads"
            );
        }
    }
}

#[test]
fn add_assign_and_embed_match_reference() {
    let mut rng = Rng::new(15);
    for b in backends() {
        let mut a: Vec<f32> = (0..100).map(|_| rng.normal(1.0)).collect();
        let c: Vec<f32> = (0..100).map(|_| rng.normal(1.0)).collect();
        let mut r = a.clone();
        b.add_assign(&mut a, &c);
        reference::add_assign(&mut r, &c);
        assert_eq!(a, r);
        for dt in [
            cria_core::DType::F32,
            cria_core::DType::F16,
            cria_core::DType::Q8_0,
            cria_core::DType::Q4_1,
        ] {
            let table = common::random_weights(&mut rng, dt, 10, 64);
            let toks = [3u32, 0, 9, 3];
            let (mut e, mut er) = (vec![0f32; 4 * 64], vec![0f32; 4 * 64]);
            b.embed(&mut e, &table, &toks);
            reference::embed(&mut er, &table, &toks);
            assert_eq!(e, er, "{dt}");
        }
    }
}

#[test]
#[should_panic(expected = "token id 10 is outside the table")]
fn embed_rejects_out_of_range_tokens_clearly() {
    let mut rng = Rng::new(16);
    let table = common::random_weights(&mut rng, cria_core::DType::F32, 10, 8);
    let mut out = vec![0f32; 8];
    CpuBackend::with_isa(1, Isa::Scalar).embed(&mut out, &table, &[10]);
}
