//! RoPE: the forward is cria's inference kernel bit for bit (scalar reference and this CPU's ISA),
//! the backward against central finite differences (f32, eps 1e-2; the rotation is linear, so only
//! the forward's rounding: tol 1e-3 of the largest gradient), in both pair layouts, with partial
//! rotation, llama3-style frequency factors and an attention factor; forward then backward of a
//! plain rotation gives the input back.

mod common;

use common::{fd_check, project, Rng};
use cria_kernels::{reference, CpuBackend, Rope};
use cria_train::rope::{rope_backward, rope_forward, rope_table};

fn ropes(head_dim: usize) -> Vec<Rope> {
    let mut out = Vec::new();
    for interleaved in [true, false] {
        // Full rotation, plain.
        out.push(Rope::new(head_dim, 10000.0, 1.0, None, 1.0, interleaved));
        // Partial rotation, linear scaling, per-pair factors, attention factor.
        let n_rot = head_dim - 4;
        let ff = (0..n_rot / 2).map(|i| 1.0 + i as f32 * 0.5).collect();
        out.push(Rope::new(n_rot, 500000.0, 0.5, Some(ff), 1.1, interleaved));
    }
    out
}

#[test]
fn rope_forward_is_crias_kernel() {
    let mut rng = Rng::new(10);
    for (t, n_heads, head_dim) in [(1, 4, 8), (3, 2, 16), (33, 4, 16)] {
        for rope in ropes(head_dim) {
            for pos0 in [0, 17, 3000] {
                let x0 = rng.vec(t * n_heads * head_dim, 1.0);
                let positions: Vec<usize> = (pos0..pos0 + t).collect();
                let mut cs = Vec::new();
                rope_table(&rope, &positions, &mut cs);
                let mut x = x0.clone();
                rope_forward(&mut x, t, n_heads, head_dim, &rope, &cs).unwrap();
                let mut want = x0.clone();
                reference::rope(&mut want, t, n_heads, head_dim, pos0, &rope);
                let mut fast = x0.clone();
                CpuBackend::new(1).rope(&mut fast, t, n_heads, head_dim, pos0, &rope);
                for w in [&want, &fast] {
                    assert!(
                        x.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{rope:?} t {t}"
                    );
                }
            }
        }
    }
}

#[test]
fn rope_backward_matches_finite_differences() {
    let mut rng = Rng::new(11);
    for (t, n_heads, head_dim) in [(1, 4, 8), (3, 2, 16), (33, 2, 8)] {
        for rope in ropes(head_dim) {
            // Positions of packed sequences: each restarts at 0.
            let positions: Vec<usize> = (0..t)
                .map(|i| if i < t / 2 { i + 5 } else { i - t / 2 })
                .collect();
            let mut cs = Vec::new();
            rope_table(&rope, &positions, &mut cs);
            let x = rng.vec(t * n_heads * head_dim, 1.0);
            let r = rng.vec(x.len(), 1.0);
            let mut dx = r.clone();
            rope_backward(&mut dx, t, n_heads, head_dim, &rope, &cs).unwrap();
            let loss = |x: &[f32]| {
                let mut y = x.to_vec();
                rope_forward(&mut y, t, n_heads, head_dim, &rope, &cs).unwrap();
                project(&y, &r)
            };
            let what = format!(
                "rope t {t} heads {n_heads}x{head_dim} interleaved {}",
                rope.interleaved
            );
            fd_check(&what, &x, &dx, 1e-2, 1e-3, loss);
            // Unrotated dimensions pass their gradient through unchanged.
            let n_rot = 2 * rope.inv_freq.len();
            for (v, w) in dx.chunks_exact(head_dim).zip(r.chunks_exact(head_dim)) {
                assert_eq!(&v[n_rot..], &w[n_rot..]);
            }
        }
    }
}

#[test]
fn backward_of_a_plain_rotation_undoes_the_forward() {
    let mut rng = Rng::new(12);
    let (t, n_heads, head_dim) = (3, 2, 16);
    let rope = Rope::new(16, 10000.0, 1.0, None, 1.0, false);
    let mut cs = Vec::new();
    rope_table(&rope, &[0, 9, 100], &mut cs);
    let x0 = rng.vec(t * n_heads * head_dim, 1.0);
    let mut x = x0.clone();
    rope_forward(&mut x, t, n_heads, head_dim, &rope, &cs).unwrap();
    assert!(x.iter().zip(&x0).any(|(a, b)| (a - b).abs() > 1e-2));
    rope_backward(&mut x, t, n_heads, head_dim, &rope, &cs).unwrap();
    assert!(x
        .iter()
        .zip(&x0)
        .all(|(a, b)| (a - b).abs() <= 1e-6 * (1.0 + b.abs())));
}

#[test]
fn bad_shapes_are_errors() {
    let rope = Rope::new(16, 10000.0, 1.0, None, 1.0, true);
    let mut cs = Vec::new();
    rope_table(&rope, &[0, 1], &mut cs);
    let mut x = vec![0f32; 2 * 16];
    // Heads narrower than the rotated dimensions.
    assert!(rope_forward(&mut x, 2, 2, 8, &rope, &cs).is_err());
    // A table for another number of rows.
    assert!(rope_forward(&mut x, 1, 2, 16, &rope, &cs).is_err());
    assert!(rope_backward(&mut x[..31], 2, 1, 16, &rope, &cs).is_err());
    let none = Rope::new(0, 10000.0, 1.0, None, 1.0, true);
    assert!(rope_forward(&mut [], 2, 0, 16, &none, &[]).is_err());
    assert!(rope_forward(&mut [], 2, 4, 0, &none, &[]).is_err());
    assert!(rope_forward(&mut x, 2, 1, 16, &rope, &cs).is_ok());
}
