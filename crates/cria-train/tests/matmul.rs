//! matmul and the LoRA pair: every gradient against central finite differences (f32, eps 1e-2:
//! the loss is linear in each single value, so the difference has no truncation error, only the
//! forward's rounding: tol 1e-3 of the largest gradient), on awkward sizes; the frozen-weight dX
//! over quantized types against the same product over the dequantized f32 weight.

mod common;

use common::{fd_check, project, Rng};
use cria_core::quantize::{can_quantize_rows, needs_imatrix, quantize_rows};
use cria_core::tensor::AlignedBuf;
use cria_core::{Bytes, DType, Tensor};
use cria_train::matmul::{
    lora_backward, lora_forward, matmul_backward, matmul_backward_dx_frozen, matmul_forward,
    LoraShape, MatShape,
};

const SIZES: [(usize, usize, usize); 5] =
    [(1, 1, 1), (3, 31, 33), (33, 3, 31), (31, 33, 3), (1, 33, 1)];

#[test]
fn matmul_backward_matches_finite_differences() {
    let mut rng = Rng::new(1);
    for (t, rows, cols) in SIZES {
        let s = MatShape { t, rows, cols };
        let (x, w, r) = (
            rng.vec(t * cols, 1.0),
            rng.vec(rows * cols, 1.0),
            rng.vec(t * rows, 1.0),
        );
        let loss = |x: &[f32], w: &[f32]| {
            let mut y = vec![0f32; t * rows];
            matmul_forward(&mut y, x, w, s).unwrap();
            project(&y, &r)
        };
        let (mut dx, mut dw) = (vec![0f32; x.len()], vec![0f32; w.len()]);
        matmul_backward(Some(&mut dx), Some(&mut dw), &r, &x, &w, s).unwrap();
        fd_check(&format!("matmul {s:?} dx"), &x, &dx, 1e-2, 1e-3, |x| {
            loss(x, &w)
        });
        fd_check(&format!("matmul {s:?} dw"), &w, &dw, 1e-2, 1e-3, |w| {
            loss(&x, w)
        });
        // A backward adds into what its gradients hold.
        let mut acc = vec![1f32; x.len()];
        matmul_backward(Some(&mut acc), None, &r, &x, &w, s).unwrap();
        assert!(acc
            .iter()
            .zip(&dx)
            .all(|(a, g)| (a - (1.0 + g)).abs() <= 1e-5 * (1.0 + g.abs())));
    }
}

#[test]
fn lora_backward_matches_finite_differences() {
    let mut rng = Rng::new(2);
    for (t, rows, cols) in SIZES {
        for rank in [1, 4] {
            let s = LoraShape {
                mat: MatShape { t, rows, cols },
                rank,
                scale: 1.7,
            };
            let x = rng.vec(t * cols, 1.0);
            let w = rng.vec(rows * cols, 1.0);
            let a = rng.vec(rank * cols, 0.5);
            let b = rng.vec(rows * rank, 0.5);
            let r = rng.vec(t * rows, 1.0);
            // The layer: frozen base plus adapter.
            let loss = |x: &[f32], a: &[f32], b: &[f32]| {
                let (mut y, mut h) = (vec![0f32; t * rows], vec![0f32; t * rank]);
                matmul_forward(&mut y, x, &w, s.mat).unwrap();
                lora_forward(&mut y, &mut h, x, a, b, s).unwrap();
                project(&y, &r)
            };
            let (mut y, mut h) = (vec![0f32; t * rows], vec![0f32; t * rank]);
            lora_forward(&mut y, &mut h, &x, &a, &b, s).unwrap();
            let (mut dx, mut da, mut db) = (
                vec![0f32; x.len()],
                vec![0f32; a.len()],
                vec![0f32; b.len()],
            );
            let mut dh = vec![0f32; t * rank];
            matmul_backward(Some(&mut dx), None, &r, &x, &w, s.mat).unwrap();
            lora_backward(
                Some(&mut dx),
                &mut da,
                &mut db,
                &mut dh,
                &r,
                &x,
                &h,
                &a,
                &b,
                s,
            )
            .unwrap();
            let name = format!("lora {:?} rank {rank}", s.mat);
            fd_check(&format!("{name} dx"), &x, &dx, 1e-2, 1e-3, |x| {
                loss(x, &a, &b)
            });
            fd_check(&format!("{name} da"), &a, &da, 1e-2, 1e-3, |a| {
                loss(&x, a, &b)
            });
            fd_check(&format!("{name} db"), &b, &db, 1e-2, 1e-3, |b| {
                loss(&x, &a, b)
            });
        }
    }
}

/// dX = dY W through a frozen weight read row by row: for every type cria-core can write (float,
/// legacy, k-quant, IQ) it is bit for bit the f32 backward over the weight as cria-core
/// dequantizes it (same sums, same order), on awkward row and token counts.
#[test]
fn frozen_dx_over_quantized_weights_is_the_f32_backward_of_the_dequantized_weight() {
    use DType::*;
    let mut rng = Rng::new(3);
    let types = [
        F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS,
        IQ3_XXS, IQ3_S, IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M,
    ];
    for (n, dtype) in types.into_iter().enumerate() {
        assert!(can_quantize_rows(dtype), "{dtype}");
        let (t, rows) = [(3, 31), (33, 3), (1, 33)][n % 3];
        let cols = if dtype.block_size() > 32 { 256 } else { 64 };
        let wf = rng.vec(rows * cols, 1.0);
        let mut q = vec![0u8; dtype.bytes_for(rows * cols).unwrap()];
        let imatrix = vec![1f32; cols];
        let imatrix = needs_imatrix(dtype).then_some(&imatrix[..]);
        quantize_rows(dtype, &wf, &mut q, cols, imatrix).unwrap();
        let bytes = Bytes::owned(AlignedBuf::from_slice(&q));
        let wt = Tensor::new("w", dtype, vec![cols, rows], bytes).unwrap();
        let deq = wt.to_f32_vec().unwrap();
        let dy = rng.vec(t * rows, 1.0);
        let (mut got, mut want) = (vec![0f32; t * cols], vec![0f32; t * cols]);
        let mut row = vec![0f32; cols];
        matmul_backward_dx_frozen(&mut got, &dy, &wt, t, &mut row).unwrap();
        let s = MatShape { t, rows, cols };
        matmul_backward(Some(&mut want), None, &dy, &vec![0f32; t * cols], &deq, s).unwrap();
        assert!(got.iter().any(|&v| v != 0.0), "{dtype}");
        assert!(
            got.iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{dtype}: frozen dx differs from the dequantized f32 backward"
        );
    }
}

#[test]
fn bad_shapes_are_errors() {
    let s = MatShape {
        t: 2,
        rows: 3,
        cols: 4,
    };
    let (x, w) = (vec![0f32; 8], vec![0f32; 12]);
    let mut y = vec![0f32; 5];
    let e = matmul_forward(&mut y, &x, &w, s).unwrap_err();
    assert!(e.0.contains("y has 5 values, want 6"), "{e}");
    let mut dx = vec![0f32; 7];
    assert!(matmul_backward(Some(&mut dx), None, &[0.0; 6], &x, &w, s).is_err());
    let l = LoraShape {
        mat: s,
        rank: 2,
        scale: 1.0,
    };
    let (mut y, mut h) = (vec![0f32; 6], vec![0f32; 4]);
    assert!(lora_forward(&mut y, &mut h, &x, &[0.0; 7], &[0.0; 6], l).is_err());
    for empty in [
        MatShape {
            rows: 0,
            cols: 0,
            t: 0,
        },
        MatShape {
            rows: 0,
            cols: 4,
            t: 2,
        },
    ] {
        assert!(matmul_forward(&mut [], &[], &[], empty)
            .unwrap_err()
            .0
            .contains("empty"));
    }
    let zero_rank = LoraShape { rank: 0, ..l };
    assert!(lora_forward(&mut y, &mut [], &x, &[], &[], zero_rank).is_err());
    let huge = MatShape {
        t: usize::MAX,
        rows: 2,
        cols: 2,
    };
    assert!(matmul_forward(&mut y, &x, &w, huge).is_err());
    let wt = Tensor::from_f32("w", vec![4, 3], &w).unwrap();
    let mut row = vec![0f32; 3];
    assert!(matmul_backward_dx_frozen(&mut [0f32; 8], &[0.0; 6], &wt, 2, &mut row).is_err());
}
