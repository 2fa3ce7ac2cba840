//! RoPE then causal GQA attention against PyTorch (fixture from tests/gen_attention_fixture.py:
//! Hugging Face's apply_rotary_pos_emb with transformers' llama3 frequencies, torch's
//! scaled_dot_product_attention with enable_gqa, autograd in f64): cria's NeoX-layout Rope with
//! the same per-pair factors, the output and dq, dk, dv (through the attention backward, then the
//! RoPE backward) within 1e-5 of the largest value, naive and flash alike (measured: 3e-7 at
//! worst; the f32 angles of ggml's recipe and the f32 arithmetic).

use cria_core::npy::read_f32;
use cria_kernels::Rope;
use cria_train::attention::{
    attention_backward, attention_forward, flash_attention_backward, flash_attention_forward,
    AttnDims,
};
use cria_train::rope::{rope_backward, rope_forward, rope_table};
use std::path::Path;

fn fixture(name: &str) -> Vec<f32> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/attn_{name}.npy"));
    read_f32(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .1
}

fn close(a: &[f32], want: &[f32], what: &str) {
    assert_eq!(a.len(), want.len(), "{what}");
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let worst = a
        .iter()
        .zip(want)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    println!("{what}: worst {:.2e} of max {scale:.3}", worst / scale);
    assert!(
        worst <= 1e-5 * scale,
        "{what}: off by {worst} (max {scale})"
    );
}

#[test]
fn rope_and_attention_are_pytorchs() {
    let (t, n_heads, n_kv_heads, head_dim) = (7, 4, 2, 16);
    let d = AttnDims {
        t,
        n_heads,
        n_kv_heads,
        head_dim,
        scale: 0.25,
    };
    let (q0, k0, v, r) = (fixture("q"), fixture("k"), fixture("v"), fixture("r"));
    let rope = Rope::new(
        head_dim,
        500000.0,
        1.0,
        Some(fixture("factors")),
        1.0,
        false,
    );
    let mut cs = Vec::new();
    rope_table(&rope, &(0..t).collect::<Vec<_>>(), &mut cs);
    let (mut q, mut k) = (q0.clone(), k0.clone());
    rope_forward(&mut q, t, n_heads, head_dim, &rope, &cs).unwrap();
    rope_forward(&mut k, t, n_kv_heads, head_dim, &rope, &cs).unwrap();

    for blocked in [false, true] {
        let name = if blocked { "flash" } else { "naive" };
        let mut out = vec![0f32; q.len()];
        let (mut dq, mut dk, mut dv) = (
            vec![0f32; q.len()],
            vec![0f32; k.len()],
            vec![0f32; v.len()],
        );
        if blocked {
            let mut lse = vec![0f32; t * n_heads];
            flash_attention_forward(&mut out, &mut lse, &q, &k, &v, d).unwrap();
            flash_attention_backward(&mut dq, &mut dk, &mut dv, &r, &q, &k, &v, &out, &lse, d)
                .unwrap();
        } else {
            let mut att = vec![0f32; n_heads * t * t];
            attention_forward(&mut out, &mut att, &q, &k, &v, d).unwrap();
            attention_backward(&mut dq, &mut dk, &mut dv, &r, &q, &k, &v, &att, d).unwrap();
        }
        rope_backward(&mut dq, t, n_heads, head_dim, &rope, &cs).unwrap();
        rope_backward(&mut dk, t, n_kv_heads, head_dim, &rope, &cs).unwrap();
        close(&out, &fixture("out"), &format!("{name} out"));
        close(&dq, &fixture("dq"), &format!("{name} dq"));
        close(&dk, &fixture("dk"), &format!("{name} dk"));
        close(&dv, &fixture("dv"), &format!("{name} dv"));
    }
}
