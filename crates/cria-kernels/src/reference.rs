//! Scalar reference implementations: slow, obviously correct, the spec for every fast kernel.

use crate::common::rms_scale;
use crate::{AttnShape, KvSlice, Rope};
use cria_core::Tensor;

pub fn matmul(out: &mut [f32], x: &[f32], w: &Tensor, t: usize) {
    let (n, k) = (w.rows(), w.cols());
    assert_eq!(
        x.len(),
        t * k,
        "matmul: x has {} values, want t={t} x k={k}",
        x.len()
    );
    assert_eq!(
        out.len(),
        t * n,
        "matmul: out has {} values, want t={t} x n={n}",
        out.len()
    );
    let mut row = vec![0f32; k];
    for j in 0..n {
        w.dequantize_row(j, &mut row)
            .expect("matmul: unsupported weight type");
        for i in 0..t {
            let xi = &x[i * k..(i + 1) * k];
            // f64 accumulation: this is the reference, not the fast path.
            out[i * n + j] = xi
                .iter()
                .zip(&row)
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum::<f64>() as f32;
        }
    }
}

pub fn embed(out: &mut [f32], table: &Tensor, tokens: &[u32]) {
    let k = table.cols();
    for (i, &tok) in tokens.iter().enumerate() {
        table
            .dequantize_row(tok as usize, &mut out[i * k..(i + 1) * k])
            .expect("embed: unsupported type");
    }
}

pub fn rmsnorm(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let d = w.len();
    for (o, xr) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
        let r = rms_scale(xr, eps);
        for ((o, &xv), &wv) in o.iter_mut().zip(xr).zip(w) {
            *o = xv * r * wv;
        }
    }
}

pub fn rope(x: &mut [f32], t: usize, n_heads: usize, head_dim: usize, pos0: usize, rope: &Rope) {
    let n_pairs = rope.inv_freq.len();
    let mut cs = Vec::new();
    for r in 0..t {
        rope.table(pos0 + r, &mut cs);
        for h in 0..n_heads {
            let v = &mut x[(r * n_heads + h) * head_dim..(r * n_heads + h + 1) * head_dim];
            for (i, &(c, s)) in cs.iter().enumerate() {
                let (a, b) = if rope.interleaved {
                    (2 * i, 2 * i + 1)
                } else {
                    (i, i + n_pairs)
                };
                (v[a], v[b]) = crate::rotate(v[a], v[b], c, s);
            }
        }
    }
}

/// The attention spec: per query, scores in f32, softmax with division, probabilities times V
/// in increasing key order. An F16 cache is read exactly (each half widened to f32), so the F16
/// spec is the F32 spec on the f16-rounded K/V.
pub fn attention(out: &mut [f32], q: &[f32], k: KvSlice, v: KvSlice, s: &AttnShape) {
    crate::common::check_attention(out, q, k.len(), v.len(), s);
    let hd = s.head_dim;
    let mut scores = vec![0f32; s.pos0 + s.t];
    for r in 0..s.t {
        for h in 0..s.n_heads {
            let item = r * s.n_heads + h;
            let (o, qh) = (&mut out[item * hd..][..hd], &q[item * hd..][..hd]);
            attention_head(o, qh, k, v, s, r, h, &mut scores);
        }
    }
}

/// One query head `h` of token `r` (`qh`, into `o`): what `attention` computes for it. `scores`
/// is scratch of at least pos0 + t floats (arguments as checked by `check_attention`).
#[allow(clippy::too_many_arguments)]
pub fn attention_head(
    o: &mut [f32],
    qh: &[f32],
    k: KvSlice,
    v: KvSlice,
    s: &AttnShape,
    r: usize,
    h: usize,
    scores: &mut [f32],
) {
    let hd = s.head_dim;
    let kv_stride = s.n_kv_heads * hd;
    let kvh = h / (s.n_heads / s.n_kv_heads);
    let p = s.pos0 + r;
    let lo = s.window.map(|w| (p + 1).saturating_sub(w)).unwrap_or(0);
    let mut max = f32::NEG_INFINITY;
    for j in lo..=p {
        let kj = j * kv_stride + kvh * hd;
        let d: f32 = qh
            .iter()
            .enumerate()
            .map(|(e, a)| a * k.get(kj + e))
            .sum::<f32>()
            * s.scale;
        scores[j] = d;
        max = max.max(d);
    }
    let mut sum = 0f32;
    for sc in &mut scores[lo..=p] {
        *sc = (*sc - max).exp();
        sum += *sc;
    }
    o.fill(0.0);
    for j in lo..=p {
        let w = scores[j] / sum;
        let vj = j * kv_stride + kvh * hd;
        for (e, o) in o.iter_mut().enumerate() {
            *o += w * v.get(vj + e);
        }
    }
}

pub fn silu_mul(a: &mut [f32], b: &[f32]) {
    for (x, &y) in a.iter_mut().zip(b) {
        *x = *x / (1.0 + (-*x).exp()) * y;
    }
}

pub fn add_assign(a: &mut [f32], b: &[f32]) {
    for (x, &y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

/// The spec of `CpuBackend::matmul_dx`: `dx (t, w.cols()) += dy (t, w.rows()) @ w`, each sum in
/// f64 (added to dx's value, rounded once).
pub fn matmul_dx(dx: &mut [f32], dy: &[f32], w: &Tensor, t: usize) {
    let (rows, cols) = (w.rows(), w.cols());
    assert_eq!(dx.len(), t * cols, "matmul_dx: dx");
    assert_eq!(dy.len(), t * rows, "matmul_dx: dy");
    let wf = w.to_f32_vec().expect("matmul_dx: unsupported weight type");
    gemm(
        dx,
        t,
        cols,
        rows,
        |i, p| dy[i * rows + p],
        |p, c| wf[p * cols + c],
    );
}

/// The spec of `CpuBackend::gemm_tn`: `c (m, n) += a (t, m)^T @ b (t, n)`, sums in f64.
pub fn gemm_tn(c: &mut [f32], a: &[f32], b: &[f32], t: usize, m: usize, n: usize) {
    assert!(
        c.len() == m * n && a.len() == t * m && b.len() == t * n,
        "gemm_tn: sizes"
    );
    gemm(c, m, n, t, |i, p| a[p * m + i], |p, j| b[p * n + j]);
}

/// The spec of `CpuBackend::gemm_nn`: `c (t, n) += a (t, k) @ b (k, n)`, sums in f64.
pub fn gemm_nn(c: &mut [f32], a: &[f32], b: &[f32], t: usize, k: usize, n: usize) {
    assert!(
        c.len() == t * n && a.len() == t * k && b.len() == k * n,
        "gemm_nn: sizes"
    );
    gemm(c, t, n, k, |i, p| a[i * k + p], |p, j| b[p * n + j]);
}

/// The spec of `CpuBackend::gemm_nt`: `c (t, n) += a (t, k) @ b (n, k)^T`, sums in f64.
pub fn gemm_nt(c: &mut [f32], a: &[f32], b: &[f32], t: usize, k: usize, n: usize) {
    assert!(
        c.len() == t * n && a.len() == t * k && b.len() == n * k,
        "gemm_nt: sizes"
    );
    gemm(c, t, n, k, |i, p| a[i * k + p], |p, j| b[j * k + p])
}

/// c (m, n) += A (m, k) B (k, n) for A, B given elementwise; each element's sum in f64.
fn gemm(
    c: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    a: impl Fn(usize, usize) -> f32,
    b: impl Fn(usize, usize) -> f32,
) {
    for i in 0..m {
        for j in 0..n {
            let s: f64 = (0..k).map(|p| a(i, p) as f64 * b(p, j) as f64).sum();
            c[i * n + j] = (c[i * n + j] as f64 + s) as f32;
        }
    }
}
