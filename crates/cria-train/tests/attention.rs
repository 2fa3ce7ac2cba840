//! Causal GQA attention: the naive backward against central finite differences (f32, eps 1e-2,
//! tol 2e-3 of the largest gradient), the blocked (flash) version against the naive one (outputs
//! and gradients within 1e-5 relative to their largest value) and finite differences too, and both
//! forwards against cria's inference attention over an f32 cache (within 1e-5), on GQA 4/2 and
//! 4/1 and plain 2/2 heads, head_dim 8 and 16, 1 to 33 rows.

mod common;

use common::{fd_check, project, Rng};
use cria_kernels::{reference, AttnShape, CpuBackend, KvSlice};
use cria_train::attention::{
    attention_backward, attention_forward, flash_attention_backward, flash_attention_forward,
    AttnDims,
};

const CASES: [(usize, usize, usize, usize); 5] = [
    (1, 4, 2, 8),
    (3, 4, 2, 16),
    (33, 4, 2, 8),
    (31, 4, 1, 16),
    (5, 2, 2, 8),
];

fn dims((t, n_heads, n_kv_heads, head_dim): (usize, usize, usize, usize)) -> AttnDims {
    AttnDims {
        t,
        n_heads,
        n_kv_heads,
        head_dim,
        scale: 1.0 / (head_dim as f32).sqrt(),
    }
}

struct Inputs {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    r: Vec<f32>,
}

fn inputs(rng: &mut Rng, d: AttnDims) -> Inputs {
    let (nq, nkv) = (
        d.t * d.n_heads * d.head_dim,
        d.t * d.n_kv_heads * d.head_dim,
    );
    Inputs {
        q: rng.vec(nq, 1.0),
        k: rng.vec(nkv, 1.0),
        v: rng.vec(nkv, 1.0),
        r: rng.vec(nq, 1.0),
    }
}

fn naive(q: &[f32], k: &[f32], v: &[f32], d: AttnDims) -> (Vec<f32>, Vec<f32>) {
    let (mut out, mut att) = (vec![0f32; q.len()], vec![0f32; d.n_heads * d.t * d.t]);
    attention_forward(&mut out, &mut att, q, k, v, d).unwrap();
    (out, att)
}

fn flash(q: &[f32], k: &[f32], v: &[f32], d: AttnDims) -> (Vec<f32>, Vec<f32>) {
    let (mut out, mut lse) = (vec![0f32; q.len()], vec![0f32; d.t * d.n_heads]);
    flash_attention_forward(&mut out, &mut lse, q, k, v, d).unwrap();
    (out, lse)
}

/// (dq, dk, dv) of the loss sum(out * r), by each version.
fn grads(x: &Inputs, d: AttnDims, blocked: bool) -> [Vec<f32>; 3] {
    let (mut dq, mut dk, mut dv) = (
        vec![0f32; x.q.len()],
        vec![0f32; x.k.len()],
        vec![0f32; x.v.len()],
    );
    if blocked {
        let (out, lse) = flash(&x.q, &x.k, &x.v, d);
        flash_attention_backward(
            &mut dq, &mut dk, &mut dv, &x.r, &x.q, &x.k, &x.v, &out, &lse, d,
        )
        .unwrap();
    } else {
        let (_, att) = naive(&x.q, &x.k, &x.v, d);
        attention_backward(&mut dq, &mut dk, &mut dv, &x.r, &x.q, &x.k, &x.v, &att, d).unwrap();
    }
    [dq, dk, dv]
}

fn check_fd(x: &Inputs, d: AttnDims, blocked: bool) {
    let [dq, dk, dv] = grads(x, d, blocked);
    let fwd = |q: &[f32], k: &[f32], v: &[f32]| {
        let out = if blocked {
            flash(q, k, v, d).0
        } else {
            naive(q, k, v, d).0
        };
        project(&out, &x.r)
    };
    let name = format!("{} {d:?}", if blocked { "flash" } else { "naive" });
    if d.t == 1 {
        // One key: its probability is 1 whatever q and k are.
        assert!(
            dq.iter().chain(&dk).all(|&g| g == 0.0),
            "{name}: t = 1 has no dq, dk"
        );
    } else {
        fd_check(&format!("{name} dq"), &x.q, &dq, 1e-2, 2e-3, |q| {
            fwd(q, &x.k, &x.v)
        });
        fd_check(&format!("{name} dk"), &x.k, &dk, 1e-2, 2e-3, |k| {
            fwd(&x.q, k, &x.v)
        });
    }
    fd_check(&format!("{name} dv"), &x.v, &dv, 1e-2, 2e-3, |v| {
        fwd(&x.q, &x.k, v)
    });
}

#[test]
fn naive_backward_matches_finite_differences() {
    let mut rng = Rng::new(13);
    for c in CASES {
        let d = dims(c);
        check_fd(&inputs(&mut rng, d), d, false);
    }
}

#[test]
fn flash_backward_matches_finite_differences() {
    let mut rng = Rng::new(14);
    for c in [CASES[1], CASES[3]] {
        let d = dims(c);
        check_fd(&inputs(&mut rng, d), d, true);
    }
}

fn close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-30);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * scale,
            "{what}[{i}]: {x} vs {y} (max {scale})"
        );
    }
}

#[test]
fn flash_matches_naive() {
    let mut rng = Rng::new(15);
    for c in CASES.into_iter().chain([(64, 4, 2, 16)]) {
        let d = dims(c);
        let x = inputs(&mut rng, d);
        close(
            &flash(&x.q, &x.k, &x.v, d).0,
            &naive(&x.q, &x.k, &x.v, d).0,
            1e-5,
            &format!("{d:?} out"),
        );
        let (f, n) = (grads(&x, d, true), grads(&x, d, false));
        for (g, (a, b)) in ["dq", "dk", "dv"].iter().zip(f.iter().zip(&n)) {
            close(a, b, 1e-5, &format!("{d:?} {g}"));
        }
    }
}

#[test]
fn forwards_are_crias_attention() {
    let mut rng = Rng::new(16);
    for c in CASES {
        let d = dims(c);
        let x = inputs(&mut rng, d);
        let s = AttnShape {
            n_heads: d.n_heads,
            n_kv_heads: d.n_kv_heads,
            head_dim: d.head_dim,
            t: d.t,
            pos0: 0,
            window: None,
            scale: d.scale,
        };
        let (kv, vv) = (KvSlice::F32(&x.k), KvSlice::F32(&x.v));
        let mut want = vec![0f32; x.q.len()];
        reference::attention(&mut want, &x.q, kv, vv, &s);
        let mut fast = vec![0f32; x.q.len()];
        CpuBackend::new(1).attention(&mut fast, &x.q, kv, vv, &s);
        for (w, by) in [(&want, "reference"), (&fast, "CpuBackend")] {
            close(
                &naive(&x.q, &x.k, &x.v, d).0,
                w,
                1e-5,
                &format!("naive vs {by} {d:?}"),
            );
            close(
                &flash(&x.q, &x.k, &x.v, d).0,
                w,
                1e-5,
                &format!("flash vs {by} {d:?}"),
            );
        }
    }
}

#[test]
fn bad_shapes_are_errors() {
    let d = AttnDims {
        t: 2,
        n_heads: 3,
        n_kv_heads: 2,
        head_dim: 4,
        scale: 0.5,
    };
    let (q, kv) = (vec![0f32; 24], vec![0f32; 16]);
    let (mut out, mut att, mut lse) = (vec![0f32; 24], vec![0f32; 12], vec![0f32; 6]);
    let e = attention_forward(&mut out, &mut att, &q, &kv, &kv, d).unwrap_err();
    assert!(e.0.contains("not groups"), "{e}");
    let d = AttnDims { n_heads: 4, ..d };
    let (q, mut out) = (vec![0f32; 32], vec![0f32; 32]);
    assert!(attention_forward(&mut out, &mut att, &q, &kv, &kv, d).is_err()); // att is 12, want 16
    assert!(flash_attention_forward(&mut out, &mut lse, &q, &kv, &kv, d).is_err()); // lse 6, want 8
    let mut lse = vec![0f32; 8];
    assert!(flash_attention_forward(&mut out, &mut lse, &q, &kv[..15], &kv, d).is_err());
    flash_attention_forward(&mut out, &mut lse, &q, &kv, &kv, d).unwrap();
    let (mut dq, mut dk, mut dv) = (vec![0f32; 32], vec![0f32; 16], vec![0f32; 15]);
    assert!(
        flash_attention_backward(&mut dq, &mut dk, &mut dv, &out, &q, &kv, &kv, &out, &lse, d)
            .is_err()
    );
    let d0 = AttnDims { n_kv_heads: 0, ..d };
    assert!(flash_attention_forward(&mut out, &mut lse, &q, &kv, &kv, d0).is_err());
}
