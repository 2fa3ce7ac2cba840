//! AVX2 twins of rmsnorm, silu_mul and one attention head; reached only when
//! `Isa::Avx2.available()` (the backend checks once, at construction).
#![allow(clippy::needless_range_loop)]

use crate::ops::{flash_tile_body, visible, FlashBuf, KvBytes, FLASH_KEYS};
use crate::AttnShape;
use std::arch::x86_64::*;

avx2_fn! {
/// An f32 constant given by its bits (ggml writes these as hex floats).
unsafe fn splat(bits: u32) -> __m256 {
    _mm256_set1_ps(f32::from_bits(bits))
}
}

avx2_fn! {
/// e^x for 8 lanes, in exactly ggml's arithmetic (`ggml_v_expf`, from Arm's optimized-routines
/// expf: x = n ln2 + b with n = round(x / ln2) by the 1.5*2^23 shift trick, a degree-5
/// polynomial in b, the scale 2^n built in the exponent bits, and a slow path for |n| > 126
/// that avoids spurious overflow). Same instructions in the same order, so the same bits as
/// llama.cpp's softmax and SwiGLU: cria's logits track llama.cpp's only if this matches to
/// the ulp (a 1-ulp difference can flip a Q8 activation rounding downstream). Accuracy:
/// within 2 ulp of e^x (tested); e^-inf = 0, large inputs saturate to inf.
pub unsafe fn exp8(x: __m256) -> __m256 {
    let shift = splat(0x4b40_0000); // 1.5 * 2^23
    let z = _mm256_fmadd_ps(x, splat(0x3fb8_aa3b), shift); // x / ln2 + shift
    let n = _mm256_sub_ps(z, shift);
    // b = x - n*ln2, with ln2 split in a high part (exact products) and a low part.
    let b = _mm256_fnmadd_ps(n, splat(0x35bf_be8e), _mm256_fnmadd_ps(n, splat(0x3f31_7200), x));
    let e = _mm256_slli_epi32(_mm256_castps_si256(z), 23);
    let k = _mm256_castsi256_ps(_mm256_add_epi32(e, _mm256_castps_si256(_mm256_set1_ps(1.0)))); // 2^n
    let abs_n = _mm256_andnot_ps(_mm256_set1_ps(-0.0), n);
    let c = _mm256_cmp_ps(abs_n, _mm256_set1_ps(126.0), _CMP_GT_OQ);
    let u = _mm256_mul_ps(b, b);
    let j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(_mm256_fmadd_ps(splat(0x3c07_2010), b, splat(0x3d2b_9f17)), u, _mm256_fmadd_ps(splat(0x3e2a_af33), b, splat(0x3eff_fedb))),
        u,
        _mm256_mul_ps(splat(0x3f7f_fff6), b),
    ); // e^b - 1
    if _mm256_movemask_ps(c) == 0 {
        return _mm256_fmadd_ps(j, k, k);
    }
    // |n| > 126: 2^n = s1 * s2 with both factors representable; |n| > 192: s1^2 (0 or inf).
    let g = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_LE_OQ)), _mm256_set1_epi32(0x8200_0000u32 as i32));
    let s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f00_0000)));
    let s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
    let d = _mm256_cmp_ps(abs_n, _mm256_set1_ps(192.0), _CMP_GT_OQ);
    _mm256_or_ps(
        _mm256_and_ps(d, _mm256_mul_ps(s1, s1)),
        _mm256_andnot_ps(d, _mm256_or_ps(_mm256_and_ps(c, _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1)), _mm256_andnot_ps(c, _mm256_fmadd_ps(k, j, k)))),
    )
}
}

avx2_fn! {
unsafe fn rmsnorm_impl(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let d = w.len();
    for (o, xr) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
        let r = crate::common::rms_scale(xr, eps);
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
    // The tail through the same exp8 (padded on the stack), not libm's exp: every element
    // then gets the same bits wherever it falls in the buffer, so a token's activations do
    // not depend on which other tokens share the batch.
    if i < n {
        let (mut ta, mut tb) = ([0f32; 8], [0f32; 8]);
        ta[..n - i].copy_from_slice(&a[i..n]);
        tb[..n - i].copy_from_slice(&b[i..n]);
        let x = _mm256_loadu_ps(ta.as_ptr());
        let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
        let s = _mm256_div_ps(x, _mm256_add_ps(one, e));
        _mm256_storeu_ps(ta.as_mut_ptr(), _mm256_mul_ps(s, _mm256_loadu_ps(tb.as_ptr())));
        a[i..n].copy_from_slice(&ta[..n - i]);
    }
}
}

/// # Safety
/// The CPU must have AVX2, FMA and F16C.
pub unsafe fn silu_mul(a: &mut [f32], b: &[f32]) {
    silu_mul_impl(a, b)
}

avx2_fn! {
/// ggml's `vec_dot_f32` on AVX2, to the bit: four 8-lane accumulators over steps of 32,
/// reduced as ((s0 + s2) + (s1 + s3)), 128-bit halves added, two `hadd`s; the leftover
/// elements (n % 32) added one by one with a fused multiply-add (GCC contracts ggml's
/// `sumf += x[i]*y[i]`).
unsafe fn vec_dot_ggml(n: usize, x: *const f32, y: *const f32) -> f32 {
    let np = n & !31;
    let mut s = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i < np {
        for j in 0..4 {
            s[j] = _mm256_fmadd_ps(_mm256_loadu_ps(x.add(i + 8 * j)), _mm256_loadu_ps(y.add(i + 8 * j)), s[j]);
        }
        i += 32;
    }
    let mut sumf = reduce4_ggml(s);
    for i in np..n {
        sumf = (*x.add(i)).mul_add(*y.add(i), sumf);
    }
    sumf
}
}

avx2_fn! {
/// GGML_F32x8_REDUCE of four accumulators.
unsafe fn reduce4_ggml(s: [__m256; 4]) -> f32 {
    let a = _mm256_add_ps(_mm256_add_ps(s[0], s[2]), _mm256_add_ps(s[1], s[3]));
    let t0 = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    let t1 = _mm_hadd_ps(t0, t0);
    _mm_cvtss_f32(_mm_hadd_ps(t1, t1))
}
}

avx2_fn! {
/// llama.cpp's attention for one query head, without flash attention and with an F32 KV
/// cache, reproduced operation by operation (see `attention_order` in the module doc):
///
/// 1. score_j = vec_dot_f32(k_j, q) * scale (ggml's `vec_dot_f32` + `soft_max_ext`'s scale);
/// 2. softmax: max over the visible keys; e_j = expf(score_j - max) eight at a time in blocks
///    aligned at key position 0 (llama.cpp's KV cells), each block's sum (a fixed 128-bit
///    tree) added into an f64; probabilities e_j * (float)(1 / sum). Masked keys are exact
///    zeros there, so skipping them changes no bit;
/// 3. out_e = sum_j v_j[e] p_j: when `batched` (llama.cpp's tinyBLAS path: >= 2 tokens in
///    the batch, head_dim % 4 == 0) one 8-lane accumulator per output over positions j
///    (lane j % 8), reduced by tinyBLAS's hsum; otherwise ggml's vec_dot_f32 over positions
///    (32 lanes, lane j % 32).
#[allow(clippy::too_many_arguments)]
unsafe fn head_impl(o: &mut [f32], q: &[f32], k: &[f32], v: &[f32], s: &AttnShape, r: usize, h: usize, scores: &mut [f32], batched: bool) {
    let hd = s.head_dim;
    let kv_stride = s.n_kv_heads * hd;
    let kvh = h / (s.n_heads / s.n_kv_heads);
    let p = s.pos0 + r;
    let lo = *crate::common::key_range(p, s.window).start();
    // scores[j] for absolute positions j in 0..n_blk (8-aligned), 0 where masked.
    let n_blk = (p + 1).div_ceil(8) * 8;
    let sc = &mut scores[..n_blk];
    let kb = k.as_ptr().add(kvh * hd);
    let mut max = f32::NEG_INFINITY;
    for j in lo..=p {
        let d = vec_dot_ggml(hd, kb.add(j * kv_stride), q.as_ptr()) * s.scale;
        sc[j] = d;
        max = max.max(d);
    }
    let mv = _mm256_set1_ps(max);
    let mut sum = 0f64;
    for b in lo / 8..n_blk / 8 {
        let blk = sc.as_mut_ptr().add(8 * b);
        let mut e = exp8(_mm256_sub_ps(_mm256_loadu_ps(blk), mv));
        // Zero the masked lanes (before the window, after p): ggml's exp(-inf) = 0.
        let first = (8 * b).max(lo) - 8 * b;
        let last = (8 * b + 8).min(p + 1) - 8 * b;
        if first > 0 || last < 8 {
            let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let keep = _mm256_and_si256(
                _mm256_cmpgt_epi32(idx, _mm256_set1_epi32(first as i32 - 1)),
                _mm256_cmpgt_epi32(_mm256_set1_epi32(last as i32), idx),
            );
            e = _mm256_and_ps(e, _mm256_castsi256_ps(keep));
        }
        _mm256_storeu_ps(blk, e);
        let mut h4 = _mm_add_ps(_mm256_extractf128_ps(e, 1), _mm256_castps256_ps128(e));
        h4 = _mm_add_ps(h4, _mm_movehl_ps(h4, h4));
        h4 = _mm_add_ss(h4, _mm_movehdup_ps(h4));
        sum += _mm_cvtss_f32(h4) as f64;
    }
    let inv = (1.0 / sum) as f32;
    for e in &mut sc[lo..=p] {
        *e *= inv;
    }
    let vb = v.as_ptr().add(kvh * hd);
    if batched {
        weighted_sum_lanes::<8>(&mut o[..hd], &sc[..=p], lo, vb, kv_stride);
    } else {
        weighted_sum_lanes::<32>(&mut o[..hd], &sc[..=p], lo, vb, kv_stride);
    }
}
}

avx2_fn! {
/// o[e] = sum_{j in lo..w.len()} w[j] * v_j[e] with the positions split over L lanes (lane
/// j % L, an FMA chain in increasing j), as ggml's kernels split the dot over positions:
/// L = 8 is tinyBLAS (then its hsum: ((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7))), L = 32 is
/// vec_dot_f32 (lanes 8a+b: accumulator a, lane b; then its REDUCE). Vectorised over e, 8
/// outputs at a time, one accumulator vector per lane.
unsafe fn weighted_sum_lanes<const L: usize>(o: &mut [f32], w: &[f32], lo: usize, v: *const f32, stride: usize) {
    let hd = o.len();
    let mut e0 = 0;
    while e0 < hd {
        let width = (hd - e0).min(8);
        let mut acc = [_mm256_setzero_ps(); L];
        let load = |j: usize| -> __m256 {
            let vp = v.add(j * stride + e0);
            if width == 8 {
                _mm256_loadu_ps(vp)
            } else {
                let mut t = [0f32; 8];
                std::ptr::copy_nonoverlapping(vp, t.as_mut_ptr(), width);
                _mm256_loadu_ps(t.as_ptr())
            }
        };
        // Same FMA chain per lane as one pass in increasing j; the middle part goes by whole
        // groups of L keys so that lane indices are constants (registers, for L = 8).
        let n = w.len();
        let mut j = lo;
        while j < n && j % L != 0 {
            acc[j % L] = _mm256_fmadd_ps(load(j), _mm256_set1_ps(w[j]), acc[j % L]);
            j += 1;
        }
        while j + L <= n {
            for u in 0..L {
                acc[u] = _mm256_fmadd_ps(load(j + u), _mm256_set1_ps(w[j + u]), acc[u]);
            }
            j += L;
        }
        while j < n {
            acc[j % L] = _mm256_fmadd_ps(load(j), _mm256_set1_ps(w[j]), acc[j % L]);
            j += 1;
        }
        let res = if L == 8 {
            let a = _mm256_add_ps(acc[0], acc[4]);
            let b = _mm256_add_ps(acc[2], acc[6]);
            let c = _mm256_add_ps(acc[1], acc[5]);
            let d = _mm256_add_ps(acc[3], acc[7]);
            _mm256_add_ps(_mm256_add_ps(a, b), _mm256_add_ps(c, d))
        } else {
            // Accumulator a = lanes 8a..8a+8: first (s0+s2)+(s1+s3) lane by lane ...
            let mut y = [_mm256_setzero_ps(); 8];
            for l in 0..8 {
                y[l] = _mm256_add_ps(_mm256_add_ps(acc[l], acc[16 + l]), _mm256_add_ps(acc[8 + l], acc[24 + l]));
            }
            // ... then 128-bit halves (lane l + lane l+4), then hadd pairs, then hadd.
            let t: [__m256; 4] = std::array::from_fn(|i| _mm256_add_ps(y[i], y[i + 4]));
            _mm256_add_ps(_mm256_add_ps(t[0], t[1]), _mm256_add_ps(t[2], t[3]))
        };
        let mut out = [0f32; 8];
        _mm256_storeu_ps(out.as_mut_ptr(), res);
        o[e0..e0 + width].copy_from_slice(&out[..width]);
        e0 += 8;
    }
}
}

avx2_fn! {
unsafe fn hsum(x: __m256) -> f32 {
    let h = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)))
}
}

avx2_fn! {
unsafe fn hmax(x: __m256) -> f32 {
    let h = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)))
}
}

avx2_fn! {
/// Values e..e + 8 (e a multiple of 8) of the cache row at `row` (bytes) as f32, the cache
/// being of type `T` (`crate::ops::kv_ty`): halves widened, or Q8_0/Q4_0 values dequantized as
/// ggml does (q * d in f32, the same bits as `KvSlice::get`).
pub(crate) unsafe fn load8<const T: u8>(row: *const u8, e: usize) -> __m256 {
    use crate::ops::kv_ty;
    if T == kv_ty::F16 {
        return _mm256_cvtph_ps(_mm_loadu_si128(row.add(2 * e) as *const __m128i));
    }
    let blk = row.add(e / 32 * if T == kv_ty::Q8_0 { 34 } else { 18 });
    let d = _mm256_set1_ps(crate::arch::scalar::dot::f16_to_f32(std::ptr::read_unaligned(blk as *const u16)));
    let q = if T == kv_ty::Q8_0 {
        _mm256_cvtepi8_epi32(_mm_loadl_epi64(blk.add(2 + e % 32) as *const __m128i))
    } else {
        // Values 0..16 are the low nibbles of the 16 bytes, 16..32 the high ones.
        let o = e % 32;
        let b = _mm_loadl_epi64(blk.add(2 + o % 16) as *const __m128i);
        let b = if o < 16 { b } else { _mm_srli_epi16::<4>(b) };
        let nib = _mm_and_si128(b, _mm_set1_epi8(0x0F));
        _mm256_sub_epi32(_mm256_cvtepu8_epi32(nib), _mm256_set1_epi32(8))
    };
    _mm256_mul_ps(_mm256_cvtepi32_ps(q), d)
}
}

avx2_fn! {
/// `n` cache rows (type `T`) of `hd` values, `stride` bytes apart, widened into `n * hd`
/// contiguous floats.
pub(crate) unsafe fn widen_rows<const T: u8>(dst: *mut f32, src: *const u8, n: usize, hd: usize, stride: usize) {
    for j in 0..n {
        let (d, s) = (dst.add(j * hd), src.add(j * stride));
        let mut c = 0;
        while c < hd {
            _mm256_storeu_ps(d.add(c), load8::<T>(s, c));
            c += 8;
        }
    }
}
}

avx2_fn! {
/// `arch::scalar::ops::rope` in AVX2, bit for bit: each rotation is ggml's (x0 c - r(x1 s), x0 s + r(x1 c))
/// with x0's product fused (`crate::rotate`): interleaved pairs as one vfmaddsub on
/// (x0, x0) * (c, s) -+ (x1, x1) * (s, c) for 4 pairs; half-split pairs 8 at a time.
unsafe fn rope_impl(x: &mut [f32], t: usize, n_heads: usize, head_dim: usize, rope: &crate::Rope, cs: &[(f32, f32)]) {
    let np = rope.inv_freq.len();
    for r in 0..t {
        let cs = &cs[r * np..][..np];
        let csp = cs.as_ptr() as *const f32;
        for h in 0..n_heads {
            let v = &mut x[(r * n_heads + h) * head_dim..][..head_dim];
            let vp = v.as_mut_ptr();
            let mut i = 0;
            if rope.interleaved {
                while i + 4 <= np {
                    let xv = _mm256_loadu_ps(vp.add(2 * i));
                    let b = _mm256_loadu_ps(csp.add(2 * i)); // c0 s0 c1 s1 ...
                    let sw = _mm256_permute_ps::<0b1011_0001>(b); // s0 c0 s1 c1 ...
                    let y = _mm256_fmaddsub_ps(_mm256_moveldup_ps(xv), b, _mm256_mul_ps(_mm256_movehdup_ps(xv), sw));
                    _mm256_storeu_ps(vp.add(2 * i), y);
                    i += 4;
                }
                for i in i..np {
                    let (c, s) = cs[i];
                    (v[2 * i], v[2 * i + 1]) = crate::rotate(v[2 * i], v[2 * i + 1], c, s);
                }
            } else {
                while i + 8 <= np {
                    let lo = _mm256_loadu_ps(csp.add(2 * i)); // c0 s0 .. c3 s3
                    let hi = _mm256_loadu_ps(csp.add(2 * i + 8)); // c4 s4 .. c7 s7
                    // c0 c1 c4 c5 | c2 c3 c6 c7, then 64-bit lanes into order.
                    let fix = |m: __m256| _mm256_castpd_ps(_mm256_permute4x64_pd::<0b1101_1000>(_mm256_castps_pd(m)));
                    let c = fix(_mm256_shuffle_ps::<0b1000_1000>(lo, hi));
                    let s = fix(_mm256_shuffle_ps::<0b1101_1101>(lo, hi));
                    let x0 = _mm256_loadu_ps(vp.add(i));
                    let x1 = _mm256_loadu_ps(vp.add(i + np));
                    _mm256_storeu_ps(vp.add(i), _mm256_fmsub_ps(x0, c, _mm256_mul_ps(x1, s)));
                    _mm256_storeu_ps(vp.add(i + np), _mm256_fmadd_ps(x0, s, _mm256_mul_ps(x1, c)));
                    i += 8;
                }
                for i in i..np {
                    let (c, s) = cs[i];
                    (v[i], v[i + np]) = crate::rotate(v[i], v[i + np], c, s);
                }
            }
        }
    }
}
}

/// AVX2 twin of `arch::scalar::ops::rope` (bit-exact).
/// # Safety
/// The CPU must have AVX2 and FMA.
pub unsafe fn rope(
    x: &mut [f32],
    t: usize,
    n_heads: usize,
    head_dim: usize,
    rope: &crate::Rope,
    cs: &[(f32, f32)],
) {
    crate::common::check_rope(x, t, n_heads, head_dim, rope);
    assert!(cs.len() >= t * rope.inv_freq.len(), "rope: table too short");
    rope_impl(x, t, n_heads, head_dim, rope, cs)
}

avx2_fn! {
/// In-register transpose of 8 rows of 8 floats.
unsafe fn transpose8(r: &mut [__m256; 8]) {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    r[0] = _mm256_permute2f128_ps::<0x20>(u0, u4);
    r[1] = _mm256_permute2f128_ps::<0x20>(u1, u5);
    r[2] = _mm256_permute2f128_ps::<0x20>(u2, u6);
    r[3] = _mm256_permute2f128_ps::<0x20>(u3, u7);
    r[4] = _mm256_permute2f128_ps::<0x31>(u0, u4);
    r[5] = _mm256_permute2f128_ps::<0x31>(u1, u5);
    r[6] = _mm256_permute2f128_ps::<0x31>(u2, u6);
    r[7] = _mm256_permute2f128_ps::<0x31>(u3, u7);
}
}

avx2_fn! {
/// `n` cache rows (type `T`) of `hd` values (`stride` bytes apart) widened and transposed:
/// dst[e * FLASH_KEYS + j] = row j, element e; keys n..n rounded up to 8 are zeros.
pub(crate) unsafe fn widen_transposed<const T: u8>(dst: *mut f32, src: *const u8, n: usize, hd: usize, stride: usize) {
    for j0 in (0..n).step_by(8) {
        let mut e0 = 0;
        while e0 < hd {
            let mut r = [_mm256_setzero_ps(); 8];
            for (u, r) in r.iter_mut().enumerate().take(n - j0) {
                *r = load8::<T>(src.add((j0 + u) * stride), e0);
            }
            transpose8(&mut r);
            for (u, r) in r.iter().enumerate() {
                _mm256_storeu_ps(dst.add((e0 + u) * FLASH_KEYS + j0), *r);
            }
            e0 += 8;
        }
    }
}
}

avx2_fn! {
/// Scores of R rows against keys 0..nj (nj a multiple of 8) of a transposed key block:
/// sc[r * FLASH_KEYS + j] = scale * (q_r . k_j), each dot one FMA chain in element order (as
/// the scalar twin sums), the lanes being keys.
unsafe fn scores<const R: usize>(qs: &[*const f32; R], kt: *const f32, hd: usize, nj: usize, scale: f32, sc: *mut f32) {
    const FK: usize = FLASH_KEYS;
    let sv = _mm256_set1_ps(scale);
    let mut j0 = 0;
    while j0 + 16 <= nj {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for e in 0..hd {
            let k0 = _mm256_loadu_ps(kt.add(e * FK + j0));
            let k1 = _mm256_loadu_ps(kt.add(e * FK + j0 + 8));
            for r in 0..R {
                let qb = _mm256_broadcast_ss(&*qs[r].add(e));
                acc[r][0] = _mm256_fmadd_ps(qb, k0, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(qb, k1, acc[r][1]);
            }
        }
        for r in 0..R {
            _mm256_storeu_ps(sc.add(r * FK + j0), _mm256_mul_ps(acc[r][0], sv));
            _mm256_storeu_ps(sc.add(r * FK + j0 + 8), _mm256_mul_ps(acc[r][1], sv));
        }
        j0 += 16;
    }
    if j0 < nj {
        let mut acc = [_mm256_setzero_ps(); R];
        for e in 0..hd {
            let k0 = _mm256_loadu_ps(kt.add(e * FK + j0));
            for r in 0..R {
                acc[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(&*qs[r].add(e)), k0, acc[r]);
            }
        }
        for r in 0..R {
            _mm256_storeu_ps(sc.add(r * FK + j0), _mm256_mul_ps(acc[r], sv));
        }
    }
}
}

avx2_fn! {
/// acc_r = acc_r * corr_r + sum_{j in j0..j1} p[r * FLASH_KEYS + j] v_j for R rows of `hd`
/// accumulators (`hd` apart from `acc`), one FMA chain per output element in key order.
unsafe fn pv<const R: usize>(acc: *mut f32, corr: &[f32; R], p: *const f32, vf: *const f32, hd: usize, j0: usize, j1: usize) {
    const FK: usize = FLASH_KEYS;
    let mut e0 = 0;
    while e0 + 16 <= hd {
        let mut r: [[__m256; 2]; R] = std::array::from_fn(|i| {
            let c = _mm256_set1_ps(corr[i]);
            let a = acc.add(i * hd + e0);
            [_mm256_mul_ps(_mm256_loadu_ps(a), c), _mm256_mul_ps(_mm256_loadu_ps(a.add(8)), c)]
        });
        for j in j0..j1 {
            let v0 = _mm256_loadu_ps(vf.add(j * hd + e0));
            let v1 = _mm256_loadu_ps(vf.add(j * hd + e0 + 8));
            for i in 0..R {
                let pb = _mm256_broadcast_ss(&*p.add(i * FK + j));
                r[i][0] = _mm256_fmadd_ps(pb, v0, r[i][0]);
                r[i][1] = _mm256_fmadd_ps(pb, v1, r[i][1]);
            }
        }
        for i in 0..R {
            _mm256_storeu_ps(acc.add(i * hd + e0), r[i][0]);
            _mm256_storeu_ps(acc.add(i * hd + e0 + 8), r[i][1]);
        }
        e0 += 16;
    }
    if e0 < hd {
        let mut r: [__m256; R] = std::array::from_fn(|i| {
            _mm256_mul_ps(_mm256_loadu_ps(acc.add(i * hd + e0)), _mm256_set1_ps(corr[i]))
        });
        for j in j0..j1 {
            let v0 = _mm256_loadu_ps(vf.add(j * hd + e0));
            for i in 0..R {
                r[i] = _mm256_fmadd_ps(_mm256_broadcast_ss(&*p.add(i * FK + j)), v0, r[i]);
            }
        }
        for i in 0..R {
            _mm256_storeu_ps(acc.add(i * hd + e0), r[i]);
        }
    }
}
}

avx2_fn! {
/// Rows i0..i0 + R of a tile against one key block (keys kb0..kb0 + n, K transposed in `kt`,
/// V in `vf`): scores, the online-softmax update of m and l, and acc += p V.
#[allow(clippy::too_many_arguments)]
unsafe fn row_tile<const R: usize>(q: &[f32], s: &AttnShape, kvh: usize, r0: usize, i0: usize, kb0: usize, n: usize, kt: *const f32, vf: *const f32, f: &mut FlashBuf) {
    const FK: usize = FLASH_KEYS;
    let (hd, g) = (s.head_dim, s.n_heads / s.n_kv_heads);
    let (vis, jlo, jhi) = visible::<R>(s, r0, i0, kb0, n);
    if jlo >= jhi {
        return;
    }
    let nj = jhi.div_ceil(8) * 8;
    let qs: [*const f32; R] = std::array::from_fn(|r| {
        let i = i0 + r;
        q.as_ptr().add(((r0 + i / g) * s.n_heads + kvh * g + i % g) * hd)
    });
    let sc = f.sc.as_mut_ptr();
    scores::<R>(&qs, kt, hd, nj, s.scale, sc);
    let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let mut corr = [1f32; R];
    for r in 0..R {
        let row = sc.add(r * FK);
        let Some((lo, hi)) = vis[r] else {
            // No visible key: p = 0, acc and the softmax state unchanged.
            for c in (0..nj).step_by(8) {
                _mm256_storeu_ps(row.add(c), _mm256_setzero_ps());
            }
            continue;
        };
        // Keys outside lo..=hi masked: -inf for the max, 0 for the probabilities.
        let (lv, hv) = (_mm256_set1_epi32(lo as i32 - 1), _mm256_set1_epi32(hi as i32 + 1));
        let keep = |c: usize| {
            let j = _mm256_add_epi32(idx, _mm256_set1_epi32(c as i32));
            _mm256_castsi256_ps(_mm256_and_si256(_mm256_cmpgt_epi32(j, lv), _mm256_cmpgt_epi32(hv, j)))
        };
        let ninf = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut mv = ninf;
        for c in (0..nj).step_by(8) {
            mv = _mm256_max_ps(mv, _mm256_blendv_ps(ninf, _mm256_loadu_ps(row.add(c)), keep(c)));
        }
        let i = i0 + r;
        let m_old = f.m[i];
        let mn = m_old.max(hmax(mv));
        corr[r] = (m_old - mn).exp(); // 0 on the first block (m = -inf)
        let mnv = _mm256_set1_ps(mn);
        let mut sumv = _mm256_setzero_ps();
        for c in (0..nj).step_by(8) {
            let e = _mm256_and_ps(exp8(_mm256_sub_ps(_mm256_loadu_ps(row.add(c)), mnv)), keep(c));
            _mm256_storeu_ps(row.add(c), e);
            sumv = _mm256_add_ps(sumv, e);
        }
        f.l[i] = f.l[i] * corr[r] + hsum(sumv);
        f.m[i] = mn;
    }
    pv::<R>(f.acc.as_mut_ptr().add(i0 * hd), &corr, sc, vf, hd, jlo, jhi);
}
}

avx2_fn! {
#[allow(clippy::too_many_arguments)]
unsafe fn flash_tile_impl<const T: u8>(q: &[f32], k: &KvBytes, v: &KvBytes, s: &AttnShape, kvh: usize, r0: usize, r1: usize, f: &mut FlashBuf) {
    flash_tile_body!(q, k, v, s, kvh, r0, r1, f, widen_transposed::<T>, widen_rows::<T>, row_tile, scale_row)
}
}

avx2_fn! {
/// x[..n] *= c (n a multiple of 8).
unsafe fn scale_row(x: *mut f32, n: usize, c: f32) {
    let cv = _mm256_set1_ps(c);
    for e in (0..n).step_by(8) {
        _mm256_storeu_ps(x.add(e), _mm256_mul_ps(_mm256_loadu_ps(x.add(e)), cv));
    }
}
}

/// The AVX2+F16C flash tile (see `arch::scalar::ops::flash_tile_scalar`, its twin) over an
/// F16, Q8_0 or Q4_0 cache: the tile's output rows are left in `f.acc`.
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `head_dim % 8 == 0`; `k` and `v` of one type and
/// the buffers must match `s` (`check_attention`), `f` must come from
/// `flash_scratch_len(head_dim, (r1 - r0) * group)` floats, and r0 < r1 <= s.t.
#[allow(clippy::too_many_arguments)]
pub unsafe fn flash_tile(
    q: &[f32],
    k: &KvBytes,
    v: &KvBytes,
    s: &AttnShape,
    kvh: usize,
    r0: usize,
    r1: usize,
    f: &mut FlashBuf,
) {
    debug_assert!(s.head_dim % 8 == 0 && r0 < r1 && r1 <= s.t && k.ty == v.ty);
    use crate::ops::kv_ty;
    match k.ty {
        crate::KvType::Q8_0 => flash_tile_impl::<{ kv_ty::Q8_0 }>(q, k, v, s, kvh, r0, r1, f),
        crate::KvType::Q4_0 => flash_tile_impl::<{ kv_ty::Q4_0 }>(q, k, v, s, kvh, r0, r1, f),
        _ => flash_tile_impl::<{ kv_ty::F16 }>(q, k, v, s, kvh, r0, r1, f),
    }
}

/// Output row `o` (head_dim) of query head `h` of token `r`.
/// # Safety
/// The CPU must have AVX2, FMA and F16C; the buffers must match `s` (`check_attention`).
#[allow(clippy::too_many_arguments)]
pub unsafe fn head(
    o: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: &AttnShape,
    r: usize,
    h: usize,
    scores: &mut [f32],
    batched: bool,
) {
    head_impl(o, q, k, v, s, r, h, scores, batched)
}
