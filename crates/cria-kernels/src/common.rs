//! What the scalar spec (`reference`) and the fast paths (`ops`, `arch`) share: the argument
//! checks that keep the kernels in bounds, the key window of a query, and ggml's RMS scale.
//! It depends on nothing but the crate's types, so `reference` depends on no fast path.

use crate::{AttnShape, Rope};

/// Checks rope's buffers (a kernel would index out of bounds).
pub fn check_rope(x: &[f32], t: usize, n_heads: usize, head_dim: usize, rope: &Rope) {
    let n_pairs = rope.inv_freq.len();
    assert!(
        2 * n_pairs <= head_dim,
        "rope: {n_pairs} pairs do not fit head_dim {head_dim}"
    );
    assert!(
        x.len() >= t * n_heads * head_dim,
        "rope: x has {} values, want {t} x {n_heads} x {head_dim}",
        x.len()
    );
}

/// Range of keys a query at position `p` attends to.
#[inline]
pub fn key_range(p: usize, window: Option<usize>) -> std::ops::RangeInclusive<usize> {
    let lo = window.map(|w| (p + 1).saturating_sub(w)).unwrap_or(0);
    lo..=p
}

/// Checks the attention buffers against the shape (the kernels would index out of bounds).
pub fn check_attention(out: &[f32], q: &[f32], k_len: usize, v_len: usize, s: &AttnShape) {
    assert!(
        s.n_kv_heads > 0 && s.n_heads % s.n_kv_heads == 0,
        "attention: {} heads not a multiple of {} kv heads",
        s.n_heads,
        s.n_kv_heads
    );
    let qn = s.t * s.n_heads * s.head_dim;
    let kvn = (s.pos0 + s.t) * s.n_kv_heads * s.head_dim;
    assert!(
        q.len() >= qn && out.len() >= qn,
        "attention: q/out have {}/{} values, need {qn}",
        q.len(),
        out.len()
    );
    assert!(
        k_len >= kvn && v_len >= kvn,
        "attention: k/v caches have {k_len}/{v_len} values, need {kvn}"
    );
}

/// 1 / sqrt(mean(x^2) + eps) in ggml's arithmetic (llama.cpp's rms_norm): each square rounded to
/// f32, summed in f64 in order, the mean rounded to f32, then `1.0f / sqrtf(mean + eps)` in f32.
/// The sequential f64 sum costs ~1 us per 576-row; matching ggml's bits matters more (a 1-ulp
/// difference here flips Q8 activation roundings downstream).
pub fn rms_scale(x: &[f32], eps: f32) -> f32 {
    let mut sum = 0f64;
    for &v in x {
        sum += (v * v) as f64;
    }
    let mean = (sum / x.len() as f64) as f32;
    1.0 / (mean + eps).sqrt()
}
