//! The ops composed into one whole LLaMA decoder layer, a final norm and an untied head, with LoRA
//! on q, k, v, o, gate, up, down, against PyTorch + PEFT (fixture from tests/gen_block_fixture.py:
//! transformers' LlamaDecoderLayer with GQA 4/2, head_dim 16 and llama3 RoPE, peft LoRA r 4
//! alpha 8, CrossEntropyLoss(ignore_index=-100), f64 autograd):
//!   n = rmsnorm(x); a = attn(rope(q(n)), rope(k(n)), v(n)); h = x + o(a);
//!   m = rmsnorm2(h); h2 = h + down(swiglu(gate(m), up(m))); logits = head(rmsnorm3(h2)).
//! The loss within 1e-6 relative; dx and all 14 adapter gradients within 1e-4 relative (norm of
//! the difference over the norm: the criterion; measured 2.1e-6 at worst), naive and flash
//! attention alike. Hugging Face's Q/K rows rotate in the NeoX layout; cria's own (GGUF) rows are
//! permuted to the interleaved one, which `Rope { interleaved: true }` covers.

use cria_core::npy::read_f32;
use cria_kernels::Rope;
use cria_train::attention::{
    attention_backward, attention_forward, flash_attention_backward, flash_attention_forward,
    AttnDims,
};
use cria_train::loss::{cross_entropy, CrossEntropy};
use cria_train::matmul::{lora_backward, lora_forward, matmul_backward, matmul_forward};
use cria_train::matmul::{LoraShape, MatShape};
use cria_train::norm::{rmsnorm_backward, rmsnorm_forward};
use cria_train::rope::{rope_backward, rope_forward, rope_table};
use cria_train::swiglu::{residual_backward, residual_forward, swiglu_backward, swiglu_forward};
use std::path::Path;

fn fx(name: &str) -> Vec<f32> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/block_{name}.npy"));
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

fn z(n: usize) -> Vec<f32> {
    vec![0f32; n]
}

/// One projection with its adapter: the frozen weight, A, B, what the forward keeps (h).
struct Proj {
    name: &'static str,
    w: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
    h: Vec<f32>,
    s: LoraShape,
}

impl Proj {
    fn new(name: &'static str, t: usize, rows: usize, cols: usize) -> Proj {
        let s = LoraShape {
            mat: MatShape { t, rows, cols },
            rank: 4,
            scale: 2.0,
        };
        let (a, b) = (fx(&format!("{name}_A")), fx(&format!("{name}_B")));
        Proj {
            name,
            w: fx(name),
            a,
            b,
            h: z(t * 4),
            s,
        }
    }
    fn forward(&mut self, x: &[f32]) -> Vec<f32> {
        let mut y = z(self.s.mat.t * self.s.mat.rows);
        matmul_forward(&mut y, x, &self.w, self.s.mat).unwrap();
        lora_forward(&mut y, &mut self.h, x, &self.a, &self.b, self.s).unwrap();
        y
    }
    /// dx += dy (W + s B A); returns (dA, dB).
    fn backward(&self, dx: &mut [f32], dy: &[f32], x: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let (mut da, mut db, mut dh) = (z(self.a.len()), z(self.b.len()), z(self.h.len()));
        matmul_backward(Some(&mut *dx), None, dy, x, &self.w, self.s.mat).unwrap();
        let (h, a, b) = (&self.h, &self.a, &self.b);
        lora_backward(Some(dx), &mut da, &mut db, &mut dh, dy, x, h, a, b, self.s).unwrap();
        (da, db)
    }
}

fn run(blocked: bool) {
    let (t, d, ff, vocab, nh, nkv, hd, eps) = (7, 64, 96, 40, 4, 2, 16, 1e-5);
    let x = fx("x");
    let labels: Vec<i32> = fx("labels").iter().map(|&l| l as i32).collect();
    let (norm1, norm2, norm3, head) = (
        fx("input_norm"),
        fx("post_norm"),
        fx("final_norm"),
        fx("head"),
    );
    let mut q_p = Proj::new("q_proj", t, nh * hd, d);
    let mut k_p = Proj::new("k_proj", t, nkv * hd, d);
    let mut v_p = Proj::new("v_proj", t, nkv * hd, d);
    let mut o_p = Proj::new("o_proj", t, d, nh * hd);
    let mut gate = Proj::new("gate_proj", t, ff, d);
    let mut up = Proj::new("up_proj", t, ff, d);
    let mut down = Proj::new("down_proj", t, d, ff);
    // Hugging Face's Q/K rows: the NeoX (half-split) pair layout.
    let rope = Rope::new(hd, 500000.0, 1.0, Some(fx("rope_factors")), 1.0, false);
    let mut cs = Vec::new();
    rope_table(&rope, &(0..t).collect::<Vec<_>>(), &mut cs);
    let ad = AttnDims {
        t,
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: hd,
        scale: 0.25,
    };
    let head_shape = MatShape {
        t,
        rows: vocab,
        cols: d,
    };

    // Forward, keeping what the backward reads.
    let (mut n1, mut r1) = (z(t * d), z(t));
    rmsnorm_forward(&mut n1, &mut r1, &x, &norm1, eps).unwrap();
    let (mut q, mut k, v) = (q_p.forward(&n1), k_p.forward(&n1), v_p.forward(&n1));
    rope_forward(&mut q, t, nh, hd, &rope, &cs).unwrap();
    rope_forward(&mut k, t, nkv, hd, &rope, &cs).unwrap();
    let (mut att, mut saved) = (z(t * nh * hd), z(if blocked { t * nh } else { nh * t * t }));
    if blocked {
        flash_attention_forward(&mut att, &mut saved, &q, &k, &v, ad).unwrap();
    } else {
        attention_forward(&mut att, &mut saved, &q, &k, &v, ad).unwrap();
    }
    let o = o_p.forward(&att);
    let mut h = z(t * d);
    residual_forward(&mut h, &x, &o).unwrap();
    let (mut n2, mut r2) = (z(t * d), z(t));
    rmsnorm_forward(&mut n2, &mut r2, &h, &norm2, eps).unwrap();
    let (g, u) = (gate.forward(&n2), up.forward(&n2));
    let mut act = z(t * ff);
    swiglu_forward(&mut act, &g, &u).unwrap();
    let mlp = down.forward(&act);
    let mut h2 = z(t * d);
    residual_forward(&mut h2, &h, &mlp).unwrap();
    let (mut n3, mut r3) = (z(t * d), z(t));
    rmsnorm_forward(&mut n3, &mut r3, &h2, &norm3, eps).unwrap();
    let mut logits = z(t * vocab);
    matmul_forward(&mut logits, &n3, &head, head_shape).unwrap();
    let mut dlogits = z(t * vocab);
    let mut ce = CrossEntropy::new(t, vocab).unwrap();
    let loss = cross_entropy(&mut dlogits, &mut ce, &logits, &labels, 16).unwrap();
    let want_loss = fx("loss")[0];
    assert!(
        (loss - want_loss).abs() <= 1e-6 * want_loss,
        "loss {loss} vs {want_loss}"
    );

    // Backward, in reverse.
    let mut dn3 = z(t * d);
    matmul_backward(Some(&mut dn3), None, &dlogits, &n3, &head, head_shape).unwrap();
    let mut dh2 = z(t * d);
    rmsnorm_backward(&mut dh2, None, &dn3, &h2, &norm3, &r3).unwrap();
    let (mut dh, mut dmlp) = (z(t * d), z(t * d));
    residual_backward(&mut dh, &mut dmlp, &dh2).unwrap();
    let mut dact = z(t * ff);
    let mut grads = vec![(down.name, down.backward(&mut dact, &dmlp, &act))];
    let (mut dg, mut du) = (z(t * ff), z(t * ff));
    swiglu_backward(&mut dg, &mut du, &dact, &g, &u).unwrap();
    let mut dn2 = z(t * d);
    grads.push((gate.name, gate.backward(&mut dn2, &dg, &n2)));
    grads.push((up.name, up.backward(&mut dn2, &du, &n2)));
    rmsnorm_backward(&mut dh, None, &dn2, &h, &norm2, &r2).unwrap();
    let (mut dx, mut do_) = (z(t * d), z(t * d));
    residual_backward(&mut dx, &mut do_, &dh).unwrap();
    let mut datt = z(t * nh * hd);
    grads.push((o_p.name, o_p.backward(&mut datt, &do_, &att)));
    let (mut dq, mut dk, mut dv) = (z(q.len()), z(k.len()), z(v.len()));
    if blocked {
        flash_attention_backward(
            &mut dq, &mut dk, &mut dv, &datt, &q, &k, &v, &att, &saved, ad,
        )
        .unwrap();
    } else {
        attention_backward(&mut dq, &mut dk, &mut dv, &datt, &q, &k, &v, &saved, ad).unwrap();
    }
    rope_backward(&mut dq, t, nh, hd, &rope, &cs).unwrap();
    rope_backward(&mut dk, t, nkv, hd, &rope, &cs).unwrap();
    let mut dn1 = z(t * d);
    grads.push((q_p.name, q_p.backward(&mut dn1, &dq, &n1)));
    grads.push((k_p.name, k_p.backward(&mut dn1, &dk, &n1)));
    grads.push((v_p.name, v_p.backward(&mut dn1, &dv, &n1)));
    rmsnorm_backward(&mut dx, None, &dn1, &x, &norm1, &r1).unwrap();

    let mut worst = rel(&dx, &fx("dx"));
    println!("blocked {blocked}: loss {loss} (PyTorch {want_loss}); dx {worst:.2e}");
    for (name, (da, db)) in grads {
        for (which, got) in [("dA", da), ("dB", db)] {
            let e = rel(&got, &fx(&format!("{name}_{which}")));
            println!("  {name} {which}: {e:.2e}");
            worst = worst.max(e);
        }
    }
    assert!(worst <= 1e-4, "worst relative gradient error {worst:.2e}");
}

#[test]
fn decoder_layer_gradients_are_peft_pytorchs_naive_attention() {
    run(false);
}

#[test]
fn decoder_layer_gradients_are_peft_pytorchs_flash_attention() {
    run(true);
}
