//! The ops composed into the feed-forward half of a LLaMA block and the head, with LoRA on
//! gate/up/down, against PyTorch + PEFT (fixture from tests/gen_mlp_fixture.py: transformers'
//! LlamaMLP and LlamaRMSNorm, peft LoRA r 4 alpha 8, CrossEntropyLoss(ignore_index=-100), f64
//! autograd):
//!   n = rmsnorm(x); h = x + down(swiglu(gate(n), up(n))); logits = head(rmsnorm2(h)).
//! The loss within 1e-6 relative; dx and every adapter gradient within 1e-4 relative (norm of the
//! difference over the norm: the criterion; measured 4e-7 at worst).

use cria_core::npy::read_f32;
use cria_train::loss::{cross_entropy, CrossEntropy};
use cria_train::matmul::{lora_backward, lora_forward, matmul_backward, matmul_forward};
use cria_train::matmul::{LoraShape, MatShape};
use cria_train::norm::{rmsnorm_backward, rmsnorm_forward};
use cria_train::swiglu::{residual_backward, residual_forward, swiglu_backward, swiglu_forward};
use std::path::Path;

fn fx(name: &str) -> Vec<f32> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/mlp_{name}.npy"));
    read_f32(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .1
}

/// norm(got - want) / norm(want).
fn rel(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let diff: f64 = got
        .iter()
        .zip(want)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum();
    let norm: f64 = want.iter().map(|&b| (b as f64).powi(2)).sum();
    assert!(norm > 0.0);
    (diff / norm).sqrt()
}

/// One projection with its adapter: the frozen weight, A, B, what the forward keeps (h).
struct Proj {
    w: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
    h: Vec<f32>,
    s: LoraShape,
}

impl Proj {
    fn new(name: &str, t: usize, rows: usize, cols: usize) -> Proj {
        let s = LoraShape {
            mat: MatShape { t, rows, cols },
            rank: 4,
            scale: 2.0,
        };
        Proj {
            w: fx(name),
            a: fx(&format!("{name}_A")),
            b: fx(&format!("{name}_B")),
            h: vec![0.0; t * 4],
            s,
        }
    }
    fn forward(&mut self, y: &mut [f32], x: &[f32]) {
        matmul_forward(y, x, &self.w, self.s.mat).unwrap();
        lora_forward(y, &mut self.h, x, &self.a, &self.b, self.s).unwrap();
    }
    /// dx += dy (W + s B A); returns (dA, dB).
    fn backward(&self, dx: &mut [f32], dy: &[f32], x: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let (mut da, mut db, mut dh) = (
            vec![0.0; self.a.len()],
            vec![0.0; self.b.len()],
            vec![0.0; self.h.len()],
        );
        matmul_backward(Some(&mut *dx), None, dy, x, &self.w, self.s.mat).unwrap();
        lora_backward(
            Some(dx),
            &mut da,
            &mut db,
            &mut dh,
            dy,
            x,
            &self.h,
            &self.a,
            &self.b,
            self.s,
        )
        .unwrap();
        (da, db)
    }
}

#[test]
fn feed_forward_and_head_gradients_are_peft_pytorchs() {
    let (t, d, ff, vocab, eps) = (6, 32, 48, 40, 1e-5);
    let x = fx("x");
    let labels: Vec<i32> = fx("labels").iter().map(|&l| l as i32).collect();
    let (norm, norm2, head) = (fx("norm"), fx("norm2"), fx("head"));
    let mut gate = Proj::new("gate_proj", t, ff, d);
    let mut up = Proj::new("up_proj", t, ff, d);
    let mut down = Proj::new("down_proj", t, d, ff);
    let z = |n: usize| vec![0f32; n];

    // Forward, keeping what the backward reads.
    let (mut n1, mut rstd1) = (z(t * d), z(t));
    rmsnorm_forward(&mut n1, &mut rstd1, &x, &norm, eps).unwrap();
    let (mut g, mut u, mut act) = (z(t * ff), z(t * ff), z(t * ff));
    gate.forward(&mut g, &n1);
    up.forward(&mut u, &n1);
    swiglu_forward(&mut act, &g, &u).unwrap();
    let (mut mlp, mut h) = (z(t * d), z(t * d));
    down.forward(&mut mlp, &act);
    residual_forward(&mut h, &x, &mlp).unwrap();
    let (mut n2, mut rstd2) = (z(t * d), z(t));
    rmsnorm_forward(&mut n2, &mut rstd2, &h, &norm2, eps).unwrap();
    let mut logits = z(t * vocab);
    matmul_forward(
        &mut logits,
        &n2,
        &head,
        MatShape {
            t,
            rows: vocab,
            cols: d,
        },
    )
    .unwrap();
    let mut dlogits = z(t * vocab);
    let mut ce = CrossEntropy::new(t, vocab).unwrap();
    let loss = cross_entropy(&mut dlogits, &mut ce, &logits, &labels, 16).unwrap();
    let want_loss = fx("loss")[0];
    assert!(
        (loss - want_loss).abs() <= 1e-6 * want_loss,
        "loss {loss} vs {want_loss}"
    );

    // Backward.
    let mut dn2 = z(t * d);
    matmul_backward(
        Some(&mut dn2),
        None,
        &dlogits,
        &n2,
        &head,
        MatShape {
            t,
            rows: vocab,
            cols: d,
        },
    )
    .unwrap();
    let mut dh = z(t * d);
    rmsnorm_backward(&mut dh, None, &dn2, &h, &norm2, &rstd2).unwrap();
    let (mut dx, mut dmlp) = (z(t * d), z(t * d));
    residual_backward(&mut dx, &mut dmlp, &dh).unwrap();
    let mut dact = z(t * ff);
    let down_grads = down.backward(&mut dact, &dmlp, &act);
    let (mut dg, mut du) = (z(t * ff), z(t * ff));
    swiglu_backward(&mut dg, &mut du, &dact, &g, &u).unwrap();
    let mut dn1 = z(t * d);
    let gate_grads = gate.backward(&mut dn1, &dg, &n1);
    let up_grads = up.backward(&mut dn1, &du, &n1);
    rmsnorm_backward(&mut dx, None, &dn1, &x, &norm, &rstd1).unwrap();

    let mut worst = rel(&dx, &fx("dx"));
    println!("dx: {worst:.2e}");
    for (name, (da, db)) in [
        ("gate_proj", gate_grads),
        ("up_proj", up_grads),
        ("down_proj", down_grads),
    ] {
        for (which, got) in [("dA", da), ("dB", db)] {
            let e = rel(&got, &fx(&format!("{name}_{which}")));
            println!("{name} {which}: {e:.2e}");
            worst = worst.max(e);
        }
    }
    assert!(worst <= 1e-4, "worst relative gradient error {worst:.2e}");
}
