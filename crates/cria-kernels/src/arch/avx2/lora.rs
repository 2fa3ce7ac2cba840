//! AVX2 twins of `cpu::lora::{down_scalar, up_scalar}` (same bits: see `cpu/lora.rs`).

use crate::cpu::lora::{Elems, LANES, PANEL};
use std::arch::x86_64::*;

avx2_fn! {
/// 8 elements of `e` from element i, widened to f32 (i + 8 <= e.len(), checked by callers).
unsafe fn load8(e: Elems, i: usize) -> __m256 {
    match e {
        Elems::F32(v) => _mm256_loadu_ps(v.as_ptr().add(i)),
        Elems::F16(v) => _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr().add(i) as *const __m128i)),
        Elems::Bf16(v) => {
            let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(v.as_ptr().add(i) as *const __m128i));
            _mm256_castsi256_ps(_mm256_slli_epi32(h, 16))
        }
    }
}
}

/// Bytes ahead of the loads that the kernels prefetch, as the base matmul's decode does: one
/// token reads each matrix once, in short runs (a few KiB to a few tens) that the hardware
/// prefetcher picks up late. Measured on the LLaMA-3.2-1B shape, one thread, rank 16 f16, two
/// rounds each: 94.3% / 94.7% of the base's tokens/s without, 96.0% / 97.2% with (a shared
/// 2-core machine; within its noise on SmolLM2).
const AHEAD: usize = 2048;

/// Prefetches the line(s) `AHEAD` bytes past element i of `e` (one line per 64 bytes of 32
/// elements: two for f32). Never dereferenced: any address will do.
#[inline(always)]
unsafe fn prefetch32(e: Elems, i: usize) {
    let (p, lines) = match e {
        Elems::F32(v) => (v.as_ptr().wrapping_add(i) as *const i8, 2),
        Elems::F16(v) | Elems::Bf16(v) => (v.as_ptr().wrapping_add(i) as *const i8, 1),
    };
    for l in 0..lines {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(AHEAD + 64 * l));
    }
}

avx2_fn! {
/// Four vectors of partial sums += 32 elements of a (from ai) times 32 of x (from xi).
unsafe fn step32(acc: &mut [__m256; 4], a: Elems, ai: usize, x: *const f32) {
    for (k, s) in acc.iter_mut().enumerate() {
        *s = _mm256_fmadd_ps(load8(a, ai + 8 * k), _mm256_loadu_ps(x.add(8 * k)), *s);
    }
}
}

avx2_fn! {
/// a . x (a.len() == x.len()) with 32 partial sums, element c into sum c % 32 (vector c / 8 % 4,
/// lane c % 8), the tail padded with zeros, reduced by halves: 16, 8, 4, 2, 1.
pub unsafe fn dot32(a: Elems, x: &[f32]) -> f32 {
    let cols = x.len();
    assert_eq!(a.len(), cols, "dot32: lengths differ");
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut c = 0;
    while c + LANES <= cols {
        prefetch32(a, c);
        step32(&mut acc, a, c, x.as_ptr().add(c));
        c += LANES;
    }
    if c < cols {
        let rest = cols - c;
        let mut ta = [0f32; LANES];
        let mut tx = [0f32; LANES];
        for i in 0..rest {
            ta[i] = a.get(c + i);
            tx[i] = x[c + i];
        }
        step32(&mut acc, Elems::F32(&ta), 0, tx.as_ptr());
    }
    // Sums i + 16 (vectors 0+2, 1+3), then i + 8 (the two results), then the halves of the
    // vector (i + 4), then i + 2 and i + 1.
    let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[1], acc[3]));
    let q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let h = _mm_add_ps(q, _mm_movehl_ps(q, q));
    _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)))
}
}

avx2_fn! {
/// out[i] += scale * u[32 * p0 + i], u[j] = the `mul_add` chain over r of B[j, r] * d[r] from
/// +0.0, B in `LoraUp`'s panels (`panels`: rank = d.len() rows of 32 values per panel), from
/// panel p0 on; out must lie inside the panels' rows.
pub unsafe fn up(out: &mut [f32], panels: Elems, p0: usize, d: &[f32], scale: f32) {
    let (n, rank) = (out.len(), d.len());
    assert!((p0 * PANEL + n).div_ceil(PANEL) * rank * PANEL <= panels.len(), "lora up: bad sizes");
    let sv = _mm256_set1_ps(scale);
    let mut i = 0;
    let mut p = p0;
    while i < n {
        let mut u = [_mm256_setzero_ps(); 4];
        let at = p * rank * PANEL;
        for (r, &dr) in d.iter().enumerate() {
            prefetch32(panels, at + r * PANEL);
            let dv = _mm256_set1_ps(dr);
            for (k, uk) in u.iter_mut().enumerate() {
                *uk = _mm256_fmadd_ps(load8(panels, at + r * PANEL + 8 * k), dv, *uk);
            }
        }
        let mut t = [0f32; PANEL];
        for (k, uk) in u.iter().enumerate() {
            _mm256_storeu_ps(t.as_mut_ptr().add(8 * k), _mm256_mul_ps(sv, *uk));
        }
        for (o, &v) in out[i..].iter_mut().zip(&t) {
            *o += v;
        }
        i += PANEL;
        p += 1;
    }
}
}
