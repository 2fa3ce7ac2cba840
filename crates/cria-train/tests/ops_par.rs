//! `ops_par` (the parallel, vectorized elementwise ops) and the vectorized cross-entropy against
//! their scalar references (`norm`, `rope`, `swiglu`; an f64 cross-entropy written here), on
//! awkward sizes (0, 1, 31, 33, odd rows, more than one work block), for every ISA this CPU runs;
//! the SIMD instances must give the portable instance's bits. Bad shapes are errors.
//!   cargo test --profile ci -p cria-train --test ops_par

use cria_kernels::{CpuBackend, Isa, Rope};
use cria_train::loss::{cross_entropy, rows_cross_entropy, CrossEntropy, IGNORE};
use cria_train::ops_par::{self as op, BLOCK};
use cria_train::{norm, rope, swiglu};

/// Backends for every ISA this CPU runs (2 threads); says loudly which are skipped.
fn backends() -> Vec<CpuBackend> {
    let mut v = vec![CpuBackend::with_isa(2, Isa::Scalar)];
    for isa in [Isa::Avx2, Isa::Avx512] {
        if isa.available() {
            v.push(CpuBackend::with_isa(2, isa));
        } else {
            eprintln!("ops_par: SKIPPED the {isa} kernels: this CPU lacks them");
        }
    }
    v
}

/// Deterministic values in about [-scale, scale].
fn vals(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut z = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            z ^= z << 13;
            z ^= z >> 7;
            z ^= z << 17;
            ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// `|got - want| <= tol * (|want| + floor)` everywhere (`floor`: the values' scale, for
/// results that cancel).
fn close(what: &str, got: &[f32], want: &[f32], tol: f32, floor: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let mut worst = 0f32;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let e = (g - w).abs() / (w.abs() + floor);
        assert!(e <= tol, "{what}: at {i} got {g}, want {w} (relative {e})");
        worst = worst.max(e);
    }
    eprintln!("{what}: worst relative error {worst:.2e}");
}

/// The bits of every ISA's result equal the first's (the portable instance's).
fn same_bits(what: &str, outs: &[Vec<f32>]) {
    for o in &outs[1..] {
        let same = o
            .iter()
            .zip(&outs[0])
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(
            same,
            "{what}: a SIMD instance differs from the portable one"
        );
    }
}

/// Rows beyond one work block for rows of `d`.
fn many_rows(d: usize) -> usize {
    BLOCK / d + 3
}

#[test]
fn rmsnorm_matches_norm() {
    let cpus = backends();
    for &(t, d) in &[
        (0, 4),
        (1, 1),
        (3, 31),
        (5, 33),
        (7, 576),
        (many_rows(257), 257),
    ] {
        let x = vals(t * d, 1 + d as u64, 3.0);
        let w = vals(d, 2, 1.5);
        let dy = vals(t * d, 3, 1.0);
        let (mut y0, mut r0) = (vec![0f32; t * d], vec![0f32; t]);
        norm::rmsnorm_forward(&mut y0, &mut r0, &x, &w, 1e-5).unwrap();
        let (mut dx0, mut dw0) = (vals(t * d, 4, 0.5), vals(d, 5, 0.5));
        norm::rmsnorm_backward(&mut dx0, Some(&mut dw0), &dy, &x, &w, &r0).unwrap();
        let mut outs = vec![];
        for cpu in &cpus {
            let what = format!("rmsnorm ({t}, {d}) {}", cpu.isa());
            let (mut y, mut r) = (vec![0f32; t * d], vec![0f32; t]);
            op::rmsnorm_forward(cpu, &mut y, &mut r, &x, &w, 1e-5).unwrap();
            close(&format!("{what} y"), &y, &y0, 1e-6, 1e-3);
            close(&format!("{what} rstd"), &r, &r0, 1e-6, 0.0);
            let (mut dx, mut dw) = (vals(t * d, 4, 0.5), vals(d, 5, 0.5));
            op::rmsnorm_backward(cpu, &mut dx, Some(&mut dw), &dy, &x, &w, &r).unwrap();
            // dx sums d products per row in lanes (the reference in index order): 1e-6 of the
            // row's scale.
            close(&format!("{what} dx"), &dx, &dx0, 1e-6, 1.0);
            close(&format!("{what} dw"), &dw, &dw0, 1e-6, 1e-3);
            outs.push([y, r, dx, dw].concat());
        }
        same_bits(&format!("rmsnorm ({t}, {d})"), &outs);
    }
}

#[test]
fn rope_matches_rope() {
    let cpus = backends();
    let ff: Vec<f32> = (0..8).map(|i| 1.0 + i as f32 * 0.25).collect();
    for interleaved in [true, false] {
        let ropes = [
            (Rope::new(16, 10000.0, 1.0, None, 1.0, interleaved), 16),
            (
                Rope::new(16, 500000.0, 0.5, Some(ff.clone()), 1.1, interleaved),
                18,
            ),
            (Rope::new(2, 10000.0, 1.0, None, 1.0, interleaved), 3),
            (Rope::new(0, 10000.0, 1.0, None, 1.0, interleaved), 5),
        ];
        for (rp, hd) in &ropes {
            let hd = *hd;
            for &(t, nh) in &[(0, 3), (1, 1), (31, 3), (33, 2), (many_rows(3 * hd), 3)] {
                let positions: Vec<usize> = (0..t).map(|i| (i * 7) % 40).collect();
                let mut cs = vec![];
                rope::rope_table(rp, &positions, &mut cs);
                let x = vals(t * nh * hd, 7, 2.0);
                let (mut f0, mut b0) = (x.clone(), x.clone());
                rope::rope_forward(&mut f0, t, nh, hd, rp, &cs).unwrap();
                rope::rope_backward(&mut b0, t, nh, hd, rp, &cs).unwrap();
                for cpu in &cpus {
                    let what = format!("rope il {interleaved} hd {hd} ({t}, {nh}) {}", cpu.isa());
                    let (mut f, mut b) = (x.clone(), x.clone());
                    op::rope_forward(cpu, &mut f, t, nh, hd, rp, &cs).unwrap();
                    op::rope_backward(cpu, &mut b, t, nh, hd, rp, &cs).unwrap();
                    // The reference's own arithmetic: the same bits.
                    same_bits(&format!("{what} fwd"), &[f0.clone(), f]);
                    same_bits(&format!("{what} bwd"), &[b0.clone(), b]);
                }
            }
        }
    }
}

#[test]
fn swiglu_and_residual_match_swiglu() {
    let cpus = backends();
    for &n in &[0, 1, 31, 33, 1000, BLOCK + 17, 2 * BLOCK] {
        // Gates across the whole range, large ones included.
        let g = vals(n, 11, 12.0);
        let u = vals(n, 12, 2.0);
        let d = vals(n, 13, 1.0);
        let mut out0 = vec![0f32; n];
        swiglu::swiglu_forward(&mut out0, &g, &u).unwrap();
        let (mut dg0, mut du0) = (vals(n, 14, 0.5), vals(n, 15, 0.5));
        swiglu::swiglu_backward(&mut dg0, &mut du0, &d, &g, &u).unwrap();
        let mut res0 = vec![0f32; n];
        swiglu::residual_forward(&mut res0, &g, &u).unwrap();
        let (mut da0, mut db0) = (vals(n, 16, 1.0), vals(n, 17, 1.0));
        swiglu::residual_backward(&mut da0, &mut db0, &d).unwrap();
        let mut outs = vec![];
        for cpu in &cpus {
            let what = format!("swiglu {n} {}", cpu.isa());
            let mut out = vec![0f32; n];
            op::swiglu_forward(cpu, &mut out, &g, &u).unwrap();
            // exp within 4e-7: 1e-6 of the product's scale |g u|.
            let scale: Vec<f32> = g.iter().zip(&u).map(|(g, u)| (g * u).abs()).collect();
            let rel = |a: &[f32], b: &[f32], s: &[f32], what: &str| {
                for (i, ((&a, &b), &s)) in a.iter().zip(b).zip(s).enumerate() {
                    let e = (a - b).abs() / (b.abs().max(s) + 1e-30);
                    assert!(e <= 1e-6, "{what}: at {i} got {a}, want {b} ({e})");
                }
            };
            rel(&out, &out0, &scale, &format!("{what} out"));
            let (mut dg, mut du) = (vals(n, 14, 0.5), vals(n, 15, 0.5));
            op::swiglu_backward(cpu, &mut dg, &mut du, &d, &g, &u).unwrap();
            // dg's factor (1 + g (1 - s)) cancels near g = -1.28: 1e-6 of the terms' scale.
            let sdg: Vec<f32> = (0..n)
                .map(|i| 0.5 + (d[i] * u[i]).abs() * (1.0 + g[i].abs()))
                .collect();
            let sdu: Vec<f32> = (0..n).map(|i| 0.5 + (d[i] * g[i]).abs()).collect();
            rel(&dg, &dg0, &sdg, &format!("{what} dg"));
            rel(&du, &du0, &sdu, &format!("{what} du"));
            let mut res = vec![0f32; n];
            op::residual_forward(cpu, &mut res, &g, &u).unwrap();
            let (mut da, mut db) = (vals(n, 16, 1.0), vals(n, 17, 1.0));
            op::residual_backward(cpu, &mut da, &mut db, &d).unwrap();
            same_bits(
                &format!("{what} residual"),
                &[
                    [res0.clone(), da0.clone(), db0.clone()].concat(),
                    [res, da, db].concat(),
                ],
            );
            outs.push([out, dg, du].concat());
        }
        same_bits(&format!("swiglu {n}"), &outs);
    }
}

#[test]
fn dropout_mask_is_keep() {
    let cpus = backends();
    for &n in &[0, 1, 31, 33, BLOCK + 5] {
        for p in [0.0f32, 0.1, 0.5] {
            let x = vals(n, 21, 1.0);
            let seed = 0x1234_5678_9abc_def0;
            let want: Vec<f32> = (0..n)
                .map(|i| x[i] * op::dropout_keep(seed, i, p))
                .collect();
            let d0 = vals(n, 22, 1.0);
            let want_add: Vec<f32> = (0..n).map(|i| d0[i] + want[i]).collect();
            for cpu in &cpus {
                let mut out = vec![7f32; n];
                op::dropout_forward(cpu, &mut out, &x, seed, p).unwrap();
                same_bits(&format!("dropout {n} {p}"), &[want.clone(), out]);
                let mut dx = d0.clone();
                op::dropout_backward(cpu, &mut dx, &x, seed, p).unwrap();
                same_bits(&format!("dropout add {n} {p}"), &[want_add.clone(), dx]);
            }
            if n > 10_000 {
                let dropped = want.iter().filter(|&&v| v == 0.0).count() as f32 / n as f32;
                assert!((dropped - p).abs() < 0.02, "dropped {dropped}, p {p}");
            }
        }
    }
}

#[test]
fn bad_shapes_are_errors() {
    let cpu = CpuBackend::new(2);
    let (x, w) = (vec![0f32; 12], vec![1f32; 5]);
    let (mut y, mut r) = (vec![0f32; 12], vec![0f32; 2]);
    assert!(op::rmsnorm_forward(&cpu, &mut y, &mut r, &x, &w, 1e-5).is_err());
    assert!(op::rmsnorm_forward(&cpu, &mut y, &mut r, &x, &[], 1e-5).is_err());
    let w = vec![1f32; 6];
    assert!(op::rmsnorm_forward(&cpu, &mut y[..11], &mut r, &x, &w, 1e-5).is_err());
    assert!(op::rmsnorm_forward(&cpu, &mut y, &mut r[..1], &x, &w, 1e-5).is_err());
    let mut dx = vec![0f32; 12];
    assert!(op::rmsnorm_backward(&cpu, &mut dx, None, &x[..6], &x, &w, &r).is_err());
    assert!(op::rmsnorm_backward(&cpu, &mut dx, Some(&mut [0f32; 5][..]), &x, &x, &w, &r).is_err());
    let rp = Rope::new(4, 10000.0, 1.0, None, 1.0, true);
    let mut cs = vec![];
    rope::rope_table(&rp, &[0, 1], &mut cs);
    let mut q = vec![0f32; 2 * 2 * 4];
    assert!(op::rope_forward(&cpu, &mut q, 2, 2, 4, &rp, &cs).is_ok());
    assert!(op::rope_forward(&cpu, &mut q, 3, 2, 4, &rp, &cs).is_err());
    assert!(op::rope_forward(&cpu, &mut q, 2, 2, 4, &rp, &cs[..3]).is_err());
    assert!(op::rope_backward(&cpu, &mut q[..8], 2, 4, 2, &rp, &cs).is_err());
    assert!(op::rope_backward(&cpu, &mut q, 2, 0, 4, &rp, &cs).is_err());
    let (a, mut o) = (vec![0f32; 5], vec![0f32; 5]);
    assert!(op::swiglu_forward(&cpu, &mut o, &a, &a[..4]).is_err());
    assert!(op::swiglu_forward(&cpu, &mut o[..4], &a, &a).is_err());
    let (mut g1, mut g2) = (vec![0f32; 5], vec![0f32; 4]);
    assert!(op::swiglu_backward(&cpu, &mut g1, &mut g2, &a, &a, &a).is_err());
    assert!(op::residual_forward(&cpu, &mut o, &a, &a[..3]).is_err());
    assert!(op::residual_backward(&cpu, &mut g1, &mut g2, &a).is_err());
    assert!(op::dropout_forward(&cpu, &mut o, &a[..4], 1, 0.1).is_err());
    assert!(op::dropout_forward(&cpu, &mut o, &a, 1, 1.0).is_err());
    assert!(op::dropout_backward(&cpu, &mut o, &a, 1, -0.1).is_err());
    let mut logits = vec![0f32; 10];
    assert!(rows_cross_entropy(&cpu, &mut logits, 0, &[], None).is_err());
    assert!(rows_cross_entropy(&cpu, &mut logits, 4, &[1, 2], None).is_err());
    assert!(rows_cross_entropy(&cpu, &mut logits, 5, &[1, 5], None).is_err());
    assert!(rows_cross_entropy(&cpu, &mut logits, 5, &[1, -3], None).is_err());
    logits[7] = f32::NAN;
    assert!(rows_cross_entropy(&cpu, &mut logits, 5, &[1, 2], None).is_err());
}

/// The f64 cross-entropy of one row: (logsumexp - row[label], dlogits = scale (softmax - onehot)).
fn ce_ref(row: &[f32], label: usize, scale: f64) -> (f64, Vec<f64>) {
    let m = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
    let mut d: Vec<f64> = row
        .iter()
        .map(|&v| scale * (v as f64 - lse).exp())
        .collect();
    d[label] -= scale;
    (lse - row[label] as f64, d)
}

/// Logits with a spread like a model's (a few large, most small), and labels with IGNOREs.
fn ce_case(t: usize, vocab: usize) -> (Vec<f32>, Vec<i32>) {
    let mut logits = vals(t * vocab, 31 + vocab as u64, 6.0);
    for (i, v) in logits.iter_mut().enumerate() {
        if i % 97 == 3 {
            *v += 9.0;
        }
    }
    let labels = (0..t)
        .map(|i| {
            if i % 5 == 2 {
                IGNORE
            } else {
                ((i * 7919) % vocab) as i32
            }
        })
        .collect();
    (logits, labels)
}

/// `got` against the f64 reference: each row's loss within 1e-6 relative, the total too, and
/// dlogits within 1e-6 of the scale (its values are scale times probabilities).
fn check_ce(what: &str, got_total: f64, got_d: &[f32], logits: &[f32], labels: &[i32], scale: f64) {
    let vocab = logits.len() / labels.len().max(1);
    let mut total = 0f64;
    for (i, &label) in labels.iter().enumerate() {
        let d = &got_d[i * vocab..][..vocab];
        if label == IGNORE {
            assert!(d.iter().all(|&v| v == 0.0), "{what}: ignored row {i} not 0");
            continue;
        }
        let (loss, d0) = ce_ref(&logits[i * vocab..][..vocab], label as usize, scale);
        total += loss;
        for (j, (&g, &w)) in d.iter().zip(&d0).enumerate() {
            let e = (g as f64 - w).abs() / scale;
            assert!(e <= 1e-6, "{what}: dlogits row {i} col {j}: {g} vs {w}");
        }
    }
    let e = (got_total - total).abs() / total.abs().max(1e-30);
    assert!(e <= 1e-6, "{what}: loss {got_total} vs {total} ({e:.2e})");
    eprintln!("{what}: loss relative error {e:.2e}");
}

#[test]
fn rows_cross_entropy_matches_f64() {
    let cpus = backends();
    for &(t, vocab) in &[(0, 5), (1, 1), (3, 31), (7, 33), (65, 1000), (130, 257)] {
        let (logits, labels) = ce_case(t, vocab);
        let counted = labels.iter().filter(|&&l| l != IGNORE).count();
        let mut outs = vec![];
        for cpu in &cpus {
            let what = format!("rows_cross_entropy ({t}, {vocab}) {}", cpu.isa());
            let mut l = logits.clone();
            let (fwd, n0) = rows_cross_entropy(cpu, &mut l, vocab, &labels, None).unwrap();
            assert_eq!(l, logits, "{what}: without grad the logits stay");
            let g = 0.37f32;
            let (total, n) = rows_cross_entropy(cpu, &mut l, vocab, &labels, Some(g)).unwrap();
            assert_eq!((n0, n), (counted, counted));
            assert_eq!(fwd.to_bits(), total.to_bits());
            if counted > 0 {
                check_ce(&what, total, &l, &logits, &labels, g as f64);
            }
            outs.push([l, vec![total as f32]].concat());
        }
        same_bits(&format!("rows_cross_entropy ({t}, {vocab})"), &outs);
    }
}

#[test]
fn chunked_cross_entropy_matches_f64() {
    for &(t, vocab, chunk) in &[
        (1, 1, 1),
        (3, 31, 8),
        (7, 33, 33),
        (9, 1000, 97),
        (4, 257, 500),
    ] {
        let (logits, labels) = ce_case(t, vocab);
        let counted = labels.iter().filter(|&&l| l != IGNORE).count();
        let what = format!("cross_entropy ({t}, {vocab}) chunk {chunk}");
        let mut st = CrossEntropy::new(t, vocab).unwrap();
        let mut d = vec![0f32; t * vocab];
        let mean = cross_entropy(&mut d, &mut st, &logits, &labels, chunk).unwrap();
        let scale = 1.0 / counted as f64;
        check_ce(
            &what,
            mean as f64 * counted as f64,
            &d,
            &logits,
            &labels,
            scale,
        );
        // The same through the chunk calls a trainer makes.
        st.reset();
        let cols = |c0: usize| {
            let w = chunk.min(vocab - c0);
            let m: Vec<f32> = (0..t)
                .flat_map(|i| logits[i * vocab + c0..][..w].to_vec())
                .collect();
            (w, m)
        };
        for c0 in (0..vocab).step_by(chunk) {
            st.forward_chunk(&cols(c0).1, c0, &labels).unwrap();
        }
        let (total, n) = st.loss(&labels).unwrap();
        assert_eq!(n, counted);
        let mut d2 = vec![0f32; t * vocab];
        for c0 in (0..vocab).step_by(chunk) {
            let (w, m) = cols(c0);
            let mut dc = vec![0f32; t * w];
            st.backward_chunk(&mut dc, &m, c0, &labels, scale as f32)
                .unwrap();
            for i in 0..t {
                d2[i * vocab + c0..][..w].copy_from_slice(&dc[i * w..][..w]);
            }
        }
        check_ce(
            &format!("{what} by chunks"),
            total,
            &d2,
            &logits,
            &labels,
            scale,
        );
    }
}

/// Speed at SmolLM2-135M's sizes (512 rows; not a test: `--ignored` prints the time per call of
/// each scalar reference and of `ops_par` on 1 and 2 threads per ISA).
///   cargo test --profile ci -p cria-train --test ops_par -- --ignored --nocapture
#[test]
#[ignore]
fn speed() {
    use std::time::Instant;
    let (t, dim, ff, nh, hd, vocab, rows) = (512, 576, 1536, 9, 64, 49152, 64);
    let x = vals(t * dim, 1, 2.0);
    let w = vals(dim, 2, 1.0);
    let g = vals(t * ff, 3, 4.0);
    let u = vals(t * ff, 4, 1.0);
    let rp = Rope::new(hd, 100000.0, 1.0, None, 1.0, true);
    let mut cs = vec![];
    rope::rope_table(&rp, &(0..t).collect::<Vec<_>>(), &mut cs);
    let (logits, _) = ce_case(rows, vocab);
    let labels: Vec<i32> = (0..rows as i32).collect();
    let time = |what: &str, f: &mut dyn FnMut()| {
        f();
        let n = 5;
        let t0 = Instant::now();
        for _ in 0..n {
            f();
        }
        let ms = t0.elapsed().as_secs_f64() * 1e3 / n as f64;
        println!("{what:<44} {ms:8.3} ms");
    };
    let (mut y, mut r, mut dx) = (vec![0f32; t * dim], vec![0f32; t], vec![0f32; t * dim]);
    let (mut o, mut dg, mut du) = (vec![0f32; t * ff], vec![0f32; t * ff], vec![0f32; t * ff]);
    let mut q = vals(t * nh * hd, 5, 1.0);
    let mut l = logits.clone();
    time("reference rmsnorm fwd", &mut || {
        norm::rmsnorm_forward(&mut y, &mut r, &x, &w, 1e-5).unwrap()
    });
    time("reference rmsnorm bwd", &mut || {
        norm::rmsnorm_backward(&mut dx, None, &x, &x, &w, &r).unwrap()
    });
    time("reference rope fwd", &mut || {
        rope::rope_forward(&mut q, t, nh, hd, &rp, &cs).unwrap()
    });
    time("reference swiglu fwd", &mut || {
        swiglu::swiglu_forward(&mut o, &g, &u).unwrap()
    });
    time("reference swiglu bwd", &mut || {
        swiglu::swiglu_backward(&mut dg, &mut du, &u, &g, &u).unwrap()
    });
    let mut st = CrossEntropy::new(rows, vocab).unwrap();
    time(
        "reference-shaped CE fwd+bwd (chunk calls, 1 thread)",
        &mut || {
            st.reset();
            st.forward_chunk(&logits, 0, &labels).unwrap();
            st.backward_chunk(&mut l, &logits, 0, &labels, 1.0).unwrap();
        },
    );
    // The loop model.rs's head ran before rows_cross_entropy (scalar, std exp).
    time("model's former inline CE fwd+bwd (1 thread)", &mut || {
        l.copy_from_slice(&logits);
        for (row, &label) in l.chunks_exact_mut(vocab).zip(&labels) {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let sum: f64 = row.iter().map(|&v| (v - max).exp() as f64).sum();
            let lse = (max as f64 + sum.ln()) as f32;
            for v in row.iter_mut() {
                *v = (*v - lse).exp();
            }
            row[label as usize] -= 1.0;
        }
    });
    for threads in [1, 2] {
        for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
            if !isa.available() {
                eprintln!("ops_par speed: SKIPPED {isa}: this CPU lacks it");
                continue;
            }
            let cpu = CpuBackend::with_isa(threads, isa);
            let p = format!("ops_par {isa} x{threads}");
            time(&format!("{p} rmsnorm fwd"), &mut || {
                op::rmsnorm_forward(&cpu, &mut y, &mut r, &x, &w, 1e-5).unwrap()
            });
            time(&format!("{p} rmsnorm bwd"), &mut || {
                op::rmsnorm_backward(&cpu, &mut dx, None, &x, &x, &w, &r).unwrap()
            });
            time(&format!("{p} rope fwd"), &mut || {
                op::rope_forward(&cpu, &mut q, t, nh, hd, &rp, &cs).unwrap()
            });
            time(&format!("{p} swiglu fwd"), &mut || {
                op::swiglu_forward(&cpu, &mut o, &g, &u).unwrap()
            });
            time(&format!("{p} swiglu bwd"), &mut || {
                op::swiglu_backward(&cpu, &mut dg, &mut du, &u, &g, &u).unwrap()
            });
            time(&format!("{p} residual fwd"), &mut || {
                op::residual_forward(&cpu, &mut o, &g, &u).unwrap()
            });
            time(&format!("{p} dropout fwd"), &mut || {
                op::dropout_forward(&cpu, &mut o, &g, 77, 0.1).unwrap()
            });
            time(&format!("{p} CE rows fwd+bwd"), &mut || {
                l.copy_from_slice(&logits);
                rows_cross_entropy(&cpu, &mut l, vocab, &labels, Some(1.0)).unwrap();
            });
        }
    }
}
