//! RMSNorm, SwiGLU and the residual add: backwards against central finite differences (f32,
//! eps 1e-2; these are smooth, so the O(eps^2) truncation and the forward's rounding stay under
//! tol 2e-3 of the largest gradient), forwards against cria's inference kernels (within 1e-5).

mod common;

use common::{fd_check, project, Rng};
use cria_kernels::{Backend, CpuBackend, Isa};
use cria_train::norm::{rmsnorm_backward, rmsnorm_forward};
use cria_train::swiglu::{residual_backward, residual_forward, swiglu_backward, swiglu_forward};

/// Backends to compare forwards with: the scalar reference and the ISA this CPU runs.
fn backends() -> [CpuBackend; 2] {
    [CpuBackend::with_isa(1, Isa::Scalar), CpuBackend::new(1)]
}

fn within(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{what}[{i}]: {x} vs cria's {y}"
        );
    }
}

#[test]
fn rmsnorm_backward_matches_finite_differences() {
    let mut rng = Rng::new(4);
    // eps 1e-2 (not LLaMA's 1e-5) so that a row of one value still has a gradient to check.
    let eps = 1e-2;
    for (rows, d) in [(1, 1), (3, 31), (33, 3), (31, 33), (2, 16)] {
        let (x, w, r) = (
            rng.vec(rows * d, 1.0),
            rng.vec(d, 1.0),
            rng.vec(rows * d, 1.0),
        );
        let loss = |x: &[f32], w: &[f32]| {
            let (mut y, mut rstd) = (vec![0f32; x.len()], vec![0f32; rows]);
            rmsnorm_forward(&mut y, &mut rstd, x, w, eps).unwrap();
            project(&y, &r)
        };
        let (mut y, mut rstd) = (vec![0f32; x.len()], vec![0f32; rows]);
        rmsnorm_forward(&mut y, &mut rstd, &x, &w, eps).unwrap();
        let (mut dx, mut dw) = (vec![0f32; x.len()], vec![0f32; d]);
        rmsnorm_backward(&mut dx, Some(&mut dw), &r, &x, &w, &rstd).unwrap();
        fd_check(
            &format!("rmsnorm {rows}x{d} dx"),
            &x,
            &dx,
            1e-2,
            2e-3,
            |x| loss(x, &w),
        );
        fd_check(
            &format!("rmsnorm {rows}x{d} dw"),
            &w,
            &dw,
            1e-2,
            2e-3,
            |w| loss(&x, w),
        );
    }
}

#[test]
fn rmsnorm_forward_is_crias_kernel() {
    let mut rng = Rng::new(5);
    for (rows, d) in [(1, 1), (3, 31), (33, 3), (4, 576)] {
        let (x, w) = (rng.vec(rows * d, 3.0), rng.vec(d, 1.0));
        let (mut y, mut rstd) = (vec![0f32; x.len()], vec![0f32; rows]);
        rmsnorm_forward(&mut y, &mut rstd, &x, &w, 1e-5).unwrap();
        for b in backends() {
            let mut want = vec![0f32; x.len()];
            b.rmsnorm(&mut want, &x, &w, 1e-5);
            within(&y, &want, 1e-5, &format!("rmsnorm {rows}x{d} {}", b.name()));
        }
    }
}

#[test]
fn swiglu_and_residual_backward_match_finite_differences() {
    let mut rng = Rng::new(6);
    for n in [1, 3, 31, 33] {
        let (g, u, r) = (rng.vec(n, 2.0), rng.vec(n, 1.0), rng.vec(n, 1.0));
        let loss = |g: &[f32], u: &[f32]| {
            let mut o = vec![0f32; n];
            swiglu_forward(&mut o, g, u).unwrap();
            project(&o, &r)
        };
        let (mut dg, mut du) = (vec![0f32; n], vec![0f32; n]);
        swiglu_backward(&mut dg, &mut du, &r, &g, &u).unwrap();
        fd_check(&format!("swiglu {n} dg"), &g, &dg, 1e-2, 2e-3, |g| {
            loss(g, &u)
        });
        fd_check(&format!("swiglu {n} du"), &u, &du, 1e-2, 2e-3, |u| {
            loss(&g, u)
        });

        let res = |a: &[f32], b: &[f32]| {
            let mut o = vec![0f32; n];
            residual_forward(&mut o, a, b).unwrap();
            project(&o, &r)
        };
        let (mut da, mut db) = (vec![0f32; n], vec![0f32; n]);
        residual_backward(&mut da, &mut db, &r).unwrap();
        fd_check(&format!("residual {n} da"), &g, &da, 1e-2, 2e-3, |a| {
            res(a, &u)
        });
        fd_check(&format!("residual {n} db"), &u, &db, 1e-2, 2e-3, |b| {
            res(&g, b)
        });
    }
}

#[test]
fn swiglu_forward_is_crias_kernel() {
    let mut rng = Rng::new(7);
    let (g, u) = (rng.vec(333, 4.0), rng.vec(333, 1.0));
    let mut out = vec![0f32; 333];
    swiglu_forward(&mut out, &g, &u).unwrap();
    for b in backends() {
        let mut want = g.clone();
        b.silu_mul(&mut want, &u);
        within(&out, &want, 1e-5, &format!("swiglu {}", b.name()));
    }
}

#[test]
fn bad_shapes_are_errors() {
    let (mut y, mut rstd) = (vec![0f32; 6], vec![0f32; 2]);
    assert!(rmsnorm_forward(&mut y, &mut rstd, &[0.0; 6], &[1.0; 4], 1e-5).is_err());
    assert!(rmsnorm_forward(&mut y, &mut rstd, &[0.0; 6], &[], 1e-5).is_err());
    assert!(rmsnorm_forward(&mut y, &mut [0.0; 3], &[0.0; 6], &[1.0; 3], 1e-5).is_err());
    let mut dx = vec![0f32; 5];
    assert!(rmsnorm_backward(&mut dx, None, &[0.0; 6], &[0.0; 6], &[1.0; 3], &rstd).is_err());
    let mut o = vec![0f32; 3];
    assert!(swiglu_forward(&mut o, &[0.0; 3], &[0.0; 2]).is_err());
    assert!(swiglu_backward(
        &mut [0.0; 3],
        &mut [0.0; 2],
        &[0.0; 3],
        &[0.0; 3],
        &[0.0; 3]
    )
    .is_err());
    assert!(residual_forward(&mut o, &[0.0; 4], &[0.0; 4]).is_err());
    assert!(residual_backward(&mut [0.0; 3], &mut [0.0; 3], &[0.0; 4]).is_err());
}
