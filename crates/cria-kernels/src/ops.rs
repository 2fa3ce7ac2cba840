//! The non-matmul ops of the CPU backend. Their scalar twins are `crate::reference`.
//!
//! - `rope`: cos/sin computed once per row (`Rope::table`, ggml's angles) and applied to every
//!   head, so the result is the reference's to the bit, at 1/n_heads of the trigonometry.
//! - `rmsnorm` (AVX2): the scale from `reference::rms_scale` (ggml's order: f32 squares summed in
//!   f64 sequentially), then `(x * r) * w` in the reference's order.
//! - `silu_mul` and the softmax in `attention` (AVX2) use `exp8`, a Cephes-style expf (<= 2 ulp).
//! - `attention`: one (token, head) pair per work item; q.k and the v accumulation in AVX2.

use crate::{AttnShape, Rope};

pub fn rope(x: &mut [f32], t: usize, n_heads: usize, head_dim: usize, pos0: usize, rope: &Rope, cs: &mut Vec<(f32, f32)>) {
    let n_pairs = rope.inv_freq.len();
    assert!(2 * n_pairs <= head_dim, "rope: {n_pairs} pairs do not fit head_dim {head_dim}");
    assert!(x.len() >= t * n_heads * head_dim, "rope: x has {} values, want {t} x {n_heads} x {head_dim}", x.len());
    for r in 0..t {
        rope.table(pos0 + r, cs);
        for h in 0..n_heads {
            let v = &mut x[(r * n_heads + h) * head_dim..][..head_dim];
            for (i, &(c, s)) in cs.iter().enumerate() {
                let (a, b) = if rope.interleaved { (2 * i, 2 * i + 1) } else { (i, i + n_pairs) };
                (v[a], v[b]) = crate::rotate(v[a], v[b], c, s);
            }
        }
    }
}

/// Range of keys a query at position `p` attends to.
#[inline]
pub fn key_range(p: usize, window: Option<usize>) -> std::ops::RangeInclusive<usize> {
    let lo = window.map(|w| (p + 1).saturating_sub(w)).unwrap_or(0);
    lo..=p
}

/// Checks the attention buffers against the shape (the reference would index out of bounds).
pub fn check_attention(out: &[f32], q: &[f32], k: &[f32], v: &[f32], s: &AttnShape) {
    assert!(s.n_kv_heads > 0 && s.n_heads % s.n_kv_heads == 0, "attention: {} heads not a multiple of {} kv heads", s.n_heads, s.n_kv_heads);
    let qn = s.t * s.n_heads * s.head_dim;
    let kvn = (s.pos0 + s.t) * s.n_kv_heads * s.head_dim;
    assert!(q.len() >= qn && out.len() >= qn, "attention: q/out have {}/{} values, need {qn}", q.len(), out.len());
    assert!(k.len() >= kvn && v.len() >= kvn, "attention: k/v caches have {}/{} values, need {kvn}", k.len(), v.len());
}

#[cfg(target_arch = "x86_64")]
pub mod avx2 {
    #![allow(clippy::needless_range_loop)]
    //! AVX2 twins of rmsnorm, silu_mul and one attention head; reached only when
    //! `Isa::Avx2.available()` (the backend checks once, at construction).
    use crate::AttnShape;
    use std::arch::x86_64::*;

    macro_rules! avx2_fn {
        ($(#[$m:meta])* $vis:vis unsafe fn $name:ident $($rest:tt)*) => {
            $(#[$m])*
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            $vis unsafe fn $name $($rest)*
        };
    }

    avx2_fn! {
    /// e^x for 8 lanes: Cephes expf (range reduction by ln2 in two parts, degree-6 polynomial).
    /// Inputs are clamped to +-88.376 (e^88.376 ~ 2.4e38 < f32::MAX; below -88.376 it returns 0
    /// where the true value is a denormal), NaN gives NaN only through the callers' x factor.
    pub unsafe fn exp8(x: __m256) -> __m256 {
        let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-88.376_26)), _mm256_set1_ps(88.376_26));
        let fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        let r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut y = _mm256_set1_ps(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
        }
        y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0)));
        let e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
        _mm256_mul_ps(y, _mm256_castsi256_ps(e))
    }
    }

    avx2_fn! {
    unsafe fn hsum(x: __m256) -> f32 {
        let mut r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
        r = _mm_add_ps(r, _mm_movehl_ps(r, r));
        r = _mm_add_ss(r, _mm_movehdup_ps(r));
        _mm_cvtss_f32(r)
    }
    }

    avx2_fn! {
    /// Dot of two equal-length f32 slices: two 8-lane accumulators, scalar tail.
    unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 16 <= n {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
            s1 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 8)), _mm256_loadu_ps(pb.add(i + 8)), s1);
            i += 16;
        }
        if i + 8 <= n {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
            i += 8;
        }
        let mut s = hsum(_mm256_add_ps(s0, s1));
        while i < n {
            s += a[i] * b[i];
            i += 1;
        }
        s
    }
    }

    avx2_fn! {
    unsafe fn rmsnorm_impl(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
        let d = w.len();
        for (o, xr) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
            let r = crate::reference::rms_scale(xr, eps);
            let rv = _mm256_set1_ps(r);
            let mut i = 0;
            while i + 8 <= d {
                let v = _mm256_mul_ps(_mm256_loadu_ps(xr.as_ptr().add(i)), rv);
                _mm256_storeu_ps(o.as_mut_ptr().add(i), _mm256_mul_ps(v, _mm256_loadu_ps(w.as_ptr().add(i))));
                i += 8;
            }
            for j in i..d {
                o[j] = xr[j] * r * w[j];
            }
        }
    }
    }

    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    pub unsafe fn rmsnorm(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
        rmsnorm_impl(out, x, w, eps)
    }

    avx2_fn! {
    unsafe fn silu_mul_impl(a: &mut [f32], b: &[f32]) {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_mut_ptr(), b.as_ptr());
        let one = _mm256_set1_ps(1.0);
        let mut i = 0;
        while i + 8 <= n {
            let x = _mm256_loadu_ps(pa.add(i));
            let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
            let s = _mm256_div_ps(x, _mm256_add_ps(one, e));
            _mm256_storeu_ps(pa.add(i), _mm256_mul_ps(s, _mm256_loadu_ps(pb.add(i))));
            i += 8;
        }
        for j in i..n {
            a[j] = a[j] / (1.0 + (-a[j]).exp()) * b[j];
        }
    }
    }

    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    pub unsafe fn silu_mul(a: &mut [f32], b: &[f32]) {
        silu_mul_impl(a, b)
    }

    avx2_fn! {
    /// scores[i] = q . k_i * scale for keys k_i = k[(lo + i) * stride ..][..hd]: four keys at a
    /// time into four accumulators, reduced together (one hadd tree per 4 keys instead of a
    /// horizontal sum per key).
    unsafe fn scores4(sc: &mut [f32], q: &[f32], k: *const f32, stride: usize, scale: f32) {
        let hd = q.len();
        let h8 = hd / 8 * 8;
        let qp = q.as_ptr();
        let n = sc.len();
        let mut i = 0;
        while i + 4 <= n {
            let kp = [k.add(i * stride), k.add((i + 1) * stride), k.add((i + 2) * stride), k.add((i + 3) * stride)];
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut c = 0;
            while c < h8 {
                let qv = _mm256_loadu_ps(qp.add(c));
                for u in 0..4 {
                    acc[u] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kp[u].add(c)), acc[u]);
                }
                c += 8;
            }
            // [a0+a1 pairs | b0+b1 pairs] ... -> lane u of the result = sum of acc[u].
            let ab = _mm256_hadd_ps(acc[0], acc[1]);
            let cd = _mm256_hadd_ps(acc[2], acc[3]);
            let abcd = _mm256_hadd_ps(ab, cd);
            let mut r = _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
            if h8 < hd {
                let mut t = [0f32; 4];
                for (u, tu) in t.iter_mut().enumerate() {
                    for cc in h8..hd {
                        *tu += q[cc] * *kp[u].add(cc);
                    }
                }
                r = _mm_add_ps(r, _mm_loadu_ps(t.as_ptr()));
            }
            _mm_storeu_ps(sc.as_mut_ptr().add(i), _mm_mul_ps(r, _mm_set1_ps(scale)));
            i += 4;
        }
        while i < n {
            let kp = k.add(i * stride);
            sc[i] = dot(q, std::slice::from_raw_parts(kp, hd)) * scale;
            i += 1;
        }
    }
    }

    avx2_fn! {
    /// o = sum_i w[i] * v_i with v_i = v[(lo + i) * stride ..][..hd]; o is built 32 floats at a
    /// time in registers across all keys (no load/store of o per key).
    unsafe fn weighted_sum(o: &mut [f32], w: &[f32], v: *const f32, stride: usize) {
        let hd = o.len();
        let op = o.as_mut_ptr();
        let mut c = 0;
        while c + 32 <= hd {
            let mut acc = [_mm256_setzero_ps(); 4];
            for (i, &wi) in w.iter().enumerate() {
                let wv = _mm256_set1_ps(wi);
                let vp = v.add(i * stride + c);
                for u in 0..4 {
                    acc[u] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(vp.add(8 * u)), acc[u]);
                }
            }
            for u in 0..4 {
                _mm256_storeu_ps(op.add(c + 8 * u), acc[u]);
            }
            c += 32;
        }
        while c + 8 <= hd {
            let mut acc = _mm256_setzero_ps();
            for (i, &wi) in w.iter().enumerate() {
                acc = _mm256_fmadd_ps(_mm256_set1_ps(wi), _mm256_loadu_ps(v.add(i * stride + c)), acc);
            }
            _mm256_storeu_ps(op.add(c), acc);
            c += 8;
        }
        for cc in c..hd {
            let mut s = 0f32;
            for (i, &wi) in w.iter().enumerate() {
                s += wi * *v.add(i * stride + cc);
            }
            o[cc] = s;
        }
    }
    }

    avx2_fn! {
    #[allow(clippy::too_many_arguments)]
    unsafe fn head_impl(o: &mut [f32], q: &[f32], k: &[f32], v: &[f32], s: &AttnShape, r: usize, h: usize, scores: &mut [f32]) {
        let hd = s.head_dim;
        let kv_stride = s.n_kv_heads * hd;
        let kvh = h / (s.n_heads / s.n_kv_heads);
        let p = s.pos0 + r;
        let keys = super::key_range(p, s.window);
        let lo = *keys.start();
        let sc = &mut scores[..p + 1 - lo];
        // check_attention proved rows lo..=p of k and v exist.
        scores4(sc, &q[..hd], k.as_ptr().add(lo * kv_stride + kvh * hd), kv_stride, s.scale);
        let max = sc.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        // exp(score - max) in place, 8 at a time, summed in a fixed order; then normalised.
        let mut i = 0;
        let mv = _mm256_set1_ps(max);
        let mut acc = _mm256_setzero_ps();
        while i + 8 <= sc.len() {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(sc.as_ptr().add(i)), mv));
            _mm256_storeu_ps(sc.as_mut_ptr().add(i), e);
            acc = _mm256_add_ps(acc, e);
            i += 8;
        }
        let mut sum = hsum(acc);
        for e in &mut sc[i..] {
            *e = (*e - max).exp();
            sum += *e;
        }
        let inv = 1.0 / sum;
        for e in sc.iter_mut() {
            *e *= inv;
        }
        weighted_sum(&mut o[..hd], sc, v.as_ptr().add(lo * kv_stride + kvh * hd), kv_stride);
    }
    }

    /// Output row `o` (head_dim) of query head `h` of token `r`.
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; the buffers must match `s` (`check_attention`).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn head(o: &mut [f32], q: &[f32], k: &[f32], v: &[f32], s: &AttnShape, r: usize, h: usize, scores: &mut [f32]) {
        head_impl(o, q, k, v, s, r, h, scores)
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use crate::Isa;
    use std::arch::x86_64::*;

    #[test]
    fn exp8_is_within_2_ulp_of_f64_exp() {
        if !Isa::Avx2.available() {
            eprintln!("no AVX2: skipping");
            return;
        }
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let xs: [f32; 8] = std::array::from_fn(|i| x + i as f32 * 0.0137);
            // SAFETY: AVX2 checked above.
            let ys: [f32; 8] = unsafe { std::mem::transmute(super::avx2::exp8(_mm256_loadu_ps(xs.as_ptr()))) };
            for (&xi, &yi) in xs.iter().zip(&ys) {
                let want = (xi as f64).exp();
                // The f32 spacing at the true value.
                let w32 = want as f32;
                let ulp = f32::from_bits(w32.to_bits() + 1) as f64 - w32 as f64;
                let e = (yi as f64 - want).abs() / ulp;
                worst = worst.max(e);
            }
            x += 0.113;
        }
        eprintln!("exp8: worst error {worst:.2} ulp");
        assert!(worst <= 2.0, "exp8 error {worst} ulp");
    }
}
