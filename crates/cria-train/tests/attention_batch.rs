//! Packed-batch attention (`attention_batch`) against the scalar blocked reference
//! (`attention::flash_attention_*`, itself checked against PyTorch and finite differences), one
//! call per sequence: outputs, lse and gradients within 2e-5 of the largest value, on every ISA
//! this CPU has (the portable twin included) and 1 to 3 threads; awkward lengths (1, 2, 31, 33,
//! 200, several unequal sequences, an empty one, gaps between them), GQA groups 1, 2, 3,
//! head_dim 16, 20 (a column tail), 64, 80; rows outside the sequences untouched; bad shapes an
//! `Err`. `bench_smollm2` (ignored) times SmolLM2's shape against the reference.
#![allow(clippy::single_range_in_vec_init)]

mod common;

use common::Rng;
use cria_kernels::{CpuBackend, Isa};
use cria_train::attention::{flash_attention_backward, flash_attention_forward, AttnDims};
use cria_train::attention_batch::{backward, forward};
use std::ops::Range;

fn dims(n_heads: usize, n_kv_heads: usize, head_dim: usize) -> AttnDims {
    AttnDims {
        t: 0,
        n_heads,
        n_kv_heads,
        head_dim,
        scale: 1.0 / (head_dim as f32).sqrt(),
    }
}

/// The ISAs this CPU runs; says loudly which are skipped.
fn isas() -> Vec<Isa> {
    let mut v = vec![Isa::Scalar];
    for isa in [Isa::Avx2, Isa::Avx512] {
        if isa.available() {
            v.push(isa);
        } else {
            eprintln!("attention_batch: SKIPPED the {isa} kernels: this CPU lacks them");
        }
    }
    v
}

struct Case {
    rows: usize,
    seqs: Vec<Range<usize>>,
    d: AttnDims,
}

struct Data {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    dout: Vec<f32>,
    /// What the gradient buffers hold before the backward (it adds).
    dq0: Vec<f32>,
    dk0: Vec<f32>,
}

impl Case {
    fn nq(&self) -> usize {
        self.d.n_heads * self.d.head_dim
    }
    fn nkv(&self) -> usize {
        self.d.n_kv_heads * self.d.head_dim
    }
    fn data(&self, rng: &mut Rng) -> Data {
        let (nq, nkv) = (self.rows * self.nq(), self.rows * self.nkv());
        Data {
            q: rng.vec(nq, 1.5),
            k: rng.vec(nkv, 1.5),
            v: rng.vec(nkv, 1.0),
            dout: rng.vec(nq, 1.0),
            dq0: rng.vec(nq, 0.5),
            dk0: rng.vec(nkv, 0.5),
        }
    }
    fn inside(&self, row: usize) -> bool {
        self.seqs.iter().any(|r| r.contains(&row))
    }
}

/// (out, lse, dq, dk, dv) by the reference, sequence by sequence; rows outside every sequence
/// keep the fill values (`SENTINEL` for out/lse, the initial gradients).
fn reference(c: &Case, x: &Data) -> [Vec<f32>; 5] {
    let (nq, nkv, nh) = (c.nq(), c.nkv(), c.d.n_heads);
    let mut out = vec![SENTINEL; x.q.len()];
    let mut lse = vec![SENTINEL; c.rows * nh];
    let (mut dq, mut dk, mut dv) = (x.dq0.clone(), x.dk0.clone(), x.dk0.clone());
    for r in &c.seqs {
        if r.is_empty() {
            continue;
        }
        let d = AttnDims { t: r.len(), ..c.d };
        let (qs, ks, ls) = (
            r.start * nq..r.end * nq,
            r.start * nkv..r.end * nkv,
            r.start * nh..r.end * nh,
        );
        flash_attention_forward(
            &mut out[qs.clone()],
            &mut lse[ls.clone()],
            &x.q[qs.clone()],
            &x.k[ks.clone()],
            &x.v[ks.clone()],
            d,
        )
        .unwrap();
        flash_attention_backward(
            &mut dq[qs.clone()],
            &mut dk[ks.clone()],
            &mut dv[ks.clone()],
            &x.dout[qs.clone()],
            &x.q[qs.clone()],
            &x.k[ks.clone()],
            &x.v[ks.clone()],
            &out[qs.clone()],
            &lse[ls],
            d,
        )
        .unwrap();
    }
    [out, lse, dq, dk, dv]
}

const SENTINEL: f32 = 7.25;

fn batched(cpu: &CpuBackend, c: &Case, x: &Data) -> [Vec<f32>; 5] {
    let mut out = vec![SENTINEL; x.q.len()];
    let mut lse = vec![SENTINEL; c.rows * c.d.n_heads];
    let (mut dq, mut dk, mut dv) = (x.dq0.clone(), x.dk0.clone(), x.dk0.clone());
    forward(cpu, &mut out, &mut lse, &x.q, &x.k, &x.v, &c.seqs, c.d).unwrap();
    backward(
        cpu, &mut dq, &mut dk, &mut dv, &x.dout, &x.q, &x.k, &x.v, &out, &lse, &c.seqs, c.d,
    )
    .unwrap();
    [out, lse, dq, dk, dv]
}

/// Worst |got - want| over max|want - initial|, and whether rows outside the sequences are
/// bit-identical to their fill.
fn compare(c: &Case, what: &str, got: &[f32], want: &[f32], row_len: usize) -> f64 {
    let scale = want
        .iter()
        .fold(0f64, |m, &w| m.max((w as f64).abs()))
        .max(1e-30);
    let mut worst = 0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let row = i / row_len;
        if !c.inside(row) {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "{what}: row {row} outside was changed"
            );
            continue;
        }
        assert!(g.is_finite(), "{what}: value {i} is {g}");
        worst = worst.max((g as f64 - w as f64).abs() / scale);
    }
    worst
}

fn check_case(c: &Case, seed: u64) {
    let x = c.data(&mut Rng::new(seed));
    let want = reference(c, &x);
    let names = ["out", "lse", "dq", "dk", "dv"];
    let row_lens = [c.nq(), c.d.n_heads, c.nq(), c.nkv(), c.nkv()];
    for isa in isas() {
        for threads in [1, 2, 3] {
            let cpu = CpuBackend::with_isa(threads, isa);
            let got = batched(&cpu, c, &x);
            for i in 0..5 {
                let worst = compare(c, names[i], &got[i], &want[i], row_lens[i]);
                let label = format!(
                    "{isa} x{threads} seqs {:?} heads {}/{} hd {}: {}",
                    c.seqs, c.d.n_heads, c.d.n_kv_heads, c.d.head_dim, names[i]
                );
                assert!(worst < 2e-5, "{label}: worst {worst:.2e}");
            }
        }
    }
}

/// Each length alone, one sequence filling the buffer.
#[test]
fn single_sequences_match_reference() {
    for (n, &t) in [1usize, 2, 31, 33, 200].iter().enumerate() {
        for &(nh, nkv, hd) in &[(2, 2, 16), (4, 2, 64), (3, 1, 20), (6, 2, 80)] {
            let c = Case {
                rows: t,
                seqs: vec![0..t],
                d: dims(nh, nkv, hd),
            };
            check_case(&c, 100 + n as u64);
        }
    }
}

/// Unequal sequences with gaps (rows belonging to none) and an empty range, in and out of order.
#[test]
fn packed_sequences_match_reference() {
    let seqs = vec![2..35, 35..36, 40..40, 41..111, 111..113, 120..151];
    for &(nh, nkv, hd) in &[(9, 3, 64), (4, 2, 16), (3, 3, 80), (6, 2, 20)] {
        let c = Case {
            rows: 155,
            seqs: seqs.clone(),
            d: dims(nh, nkv, hd),
        };
        check_case(&c, 7);
    }
    let c = Case {
        rows: 100,
        seqs: vec![60..100, 0..1, 3..59],
        d: dims(4, 2, 16),
    };
    check_case(&c, 8);
}

/// Bad calls: an `Err` naming the problem, never a panic.
#[test]
fn bad_shapes_are_errors() {
    let cpu = CpuBackend::new(2);
    let d = dims(4, 2, 16);
    let rows = 10;
    let (nq, nkv) = (rows * 64, rows * 32);
    let (q, k, v) = (vec![0.1f32; nq], vec![0.2f32; nkv], vec![0.3f32; nkv]);
    let (mut out, mut lse) = (vec![0f32; nq], vec![0f32; rows * 4]);
    let (mut dq, mut dk, mut dv) = (vec![0f32; nq], vec![0f32; nkv], vec![0f32; nkv]);
    let ok = [0..4, 4..10];
    let fwd = |out: &mut [f32], lse: &mut [f32], q: &[f32], k: &[f32], s: &[Range<usize>], d| {
        forward(&cpu, out, lse, q, k, &v, s, d)
    };
    assert!(fwd(&mut out, &mut lse, &q, &k, &ok, d).is_ok());
    let errs = [
        fwd(&mut out, &mut lse, &q, &k, &ok, dims(4, 3, 16)),
        fwd(&mut out, &mut lse, &q, &k, &ok, dims(4, 0, 16)),
        fwd(&mut out, &mut lse, &q, &k, &ok, dims(0, 0, 16)),
        fwd(&mut out, &mut lse, &q, &k, &ok, dims(4, 2, 0)),
        fwd(&mut out, &mut lse, &q[..nq - 1], &k, &ok, d),
        fwd(&mut out, &mut lse, &q, &k[..nkv - 16], &ok, d),
        fwd(&mut out[..nq - 64], &mut lse, &q, &k, &ok, d),
        fwd(&mut out, &mut lse[..39], &q, &k, &ok, d),
        fwd(&mut out, &mut lse, &q, &k, &[0..4, 4..11], d),
        #[allow(clippy::reversed_empty_ranges)]
        fwd(&mut out, &mut lse, &q, &k, &[5..4], d),
        fwd(&mut out, &mut lse, &q, &k, &[0..5, 4..10], d),
        fwd(&mut out, &mut lse, &q, &k, &[6..10, 0..7], d),
    ];
    for (i, e) in errs.iter().enumerate() {
        let e = e
            .as_ref()
            .expect_err(&format!("bad forward call {i} accepted"));
        assert!(e.0.starts_with("attention_batch::forward: "), "{e}");
    }
    let mut bwd = |dq: &mut [f32], dk: &mut [f32], dout: &[f32], s: &[Range<usize>], d| {
        backward(&cpu, dq, dk, &mut dv, dout, &q, &k, &v, &out, &lse, s, d)
    };
    assert!(bwd(&mut dq, &mut dk, &q, &ok, d).is_ok());
    let errs = [
        bwd(&mut dq[..nq - 1], &mut dk, &q, &ok, d),
        bwd(&mut dq, &mut dk[..1], &q, &ok, d),
        bwd(&mut dq, &mut dk, &q[1..], &ok, d),
        bwd(&mut dq, &mut dk, &q, &[0..11], d),
        bwd(&mut dq, &mut dk, &q, &[0..4, 3..10], d),
        bwd(&mut dq, &mut dk, &q, &ok, dims(6, 4, 16)),
    ];
    for (i, e) in errs.iter().enumerate() {
        let e = e
            .as_ref()
            .expect_err(&format!("bad backward call {i} accepted"));
        assert!(e.0.starts_with("attention_batch::backward: "), "{e}");
    }
}

/// Forward + backward time of SmolLM2's attention (9 heads, 3 KV heads, head_dim 64) at 512
/// rows, as one sequence and as 4 x 128, 2 threads, against the scalar reference one sequence
/// at a time. Prints; asserts only that the results agree.
/// `cargo test --profile ci -p cria-train --test attention_batch -- --ignored --nocapture`
#[test]
#[ignore]
fn bench_smollm2() {
    use std::time::Instant;
    let d = dims(9, 3, 64);
    let rows = 512;
    let reps = 5;
    for seqs in [
        vec![0..512],
        (0..4).map(|i| i * 128..(i + 1) * 128).collect(),
    ] {
        let c = Case { rows, seqs, d };
        let x = c.data(&mut Rng::new(3));
        // Causal flops: 4 t^2 d heads / 2 per sequence forward; the backward ~2.5x that.
        let fwd_flops: f64 = c
            .seqs
            .iter()
            .map(|r| 2.0 * (r.len() * r.len()) as f64 * 64.0 * 9.0)
            .sum();
        let t0 = Instant::now();
        let want = reference(&c, &x);
        let t_ref = t0.elapsed().as_secs_f64();
        for isa in isas() {
            let cpu = CpuBackend::with_isa(2, isa);
            let mut out = vec![0f32; x.q.len()];
            let mut lse = vec![0f32; rows * 9];
            let (mut dq, mut dk, mut dv) = (x.dq0.clone(), x.dk0.clone(), x.dk0.clone());
            let (mut tf, mut tb) = (f64::MAX, f64::MAX);
            for _ in 0..reps {
                let t0 = Instant::now();
                forward(&cpu, &mut out, &mut lse, &x.q, &x.k, &x.v, &c.seqs, d).unwrap();
                let t1 = Instant::now();
                dq.copy_from_slice(&x.dq0);
                dk.copy_from_slice(&x.dk0);
                dv.copy_from_slice(&x.dk0);
                let t2 = Instant::now();
                backward(
                    &cpu, &mut dq, &mut dk, &mut dv, &x.dout, &x.q, &x.k, &x.v, &out, &lse,
                    &c.seqs, d,
                )
                .unwrap();
                tf = tf.min((t1 - t0).as_secs_f64());
                tb = tb.min(t2.elapsed().as_secs_f64());
            }
            let row_lens = [576, 9, 576, 192, 192];
            for ((g, w), n) in [out, lse, dq, dk, dv].iter().zip(&want).zip(row_lens) {
                let worst = compare(&c, "bench", g, w, n);
                assert!(worst < 2e-5, "bench: {worst}");
            }
            println!(
                "{} seqs, {isa}, 2 threads: fwd {:.2} ms ({:.1} GFLOP/s), bwd {:.2} ms ({:.1} GFLOP/s at 2.5x), \
                 fwd+bwd {:.2} ms; scalar reference (1 thread) fwd+bwd {:.1} ms: {:.0}x",
                c.seqs.len(),
                tf * 1e3,
                fwd_flops / tf * 1e-9,
                tb * 1e3,
                2.5 * fwd_flops / tb * 1e-9,
                (tf + tb) * 1e3,
                t_ref * 1e3,
                t_ref / (tf + tb)
            );
        }
    }
}
