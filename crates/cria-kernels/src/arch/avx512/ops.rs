//! The flash tile on 512-bit registers: `arch::avx2::ops::flash_tile`'s blocks, register tiles and
//! online-softmax steps with 16 lanes. Scores are 6 rows x 64 keys (24 FMA chains over the head
//! dimension, each K vector used by 6 rows), p V is 6 rows x 64 outputs per pass (each V vector
//! used by 6 rows): per instruction twice the AVX2 tile's work. Every score and every output
//! element is the same FMA chain as in the AVX2 tile and the scalar twin; the exp is ggml's
//! AVX-512 `ggml_v_expf` and the softmax sums go by 16 lanes, so the three agree to rounding.
//! Reached only when `Isa::Avx512.available()` and head_dim % 16 == 0.

use crate::ops::flash_tile_body;
use crate::ops::{kv_ty, FlashBuf, KvBytes, FLASH_KEYS, SC_ROWS};
use crate::{AttnShape, KvType};
use std::arch::x86_64::*;

macro_rules! avx512_fn {
    ($(#[$m:meta])* $vis:vis unsafe fn $name:ident $($rest:tt)*) => {
        $(#[$m])*
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
        $vis unsafe fn $name $($rest)*
    };
}

avx512_fn! {
/// An f32 constant given by its bits (ggml writes these as hex floats).
unsafe fn splat(bits: u32) -> __m512 {
    _mm512_set1_ps(f32::from_bits(bits))
}
}

avx512_fn! {
/// e^x for 16 lanes in ggml's AVX-512 arithmetic (`ggml_v_expf`): x = n ln2 + b with
/// n = round(x / ln2) by the 1.5*2^23 shift trick, a degree-5 polynomial for e^b, scaled by
/// 2^n with `vscalefps`; |n| > 192 gives 0 or inf. Within 2.5 ulp of e^x (tested); e^-inf = 0.
pub unsafe fn exp16(x: __m512) -> __m512 {
    let shift = splat(0x4b40_0000); // 1.5 * 2^23
    let z = _mm512_fmadd_ps(x, splat(0x3fb8_aa3b), shift); // x / ln2 + shift
    let n = _mm512_sub_ps(z, shift);
    let b = _mm512_fnmadd_ps(n, splat(0x35bf_be8e), _mm512_fnmadd_ps(n, splat(0x3f31_7200), x));
    let d = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_abs_ps(n), _mm512_set1_ps(192.0));
    let u = _mm512_mul_ps(b, b);
    let j = _mm512_fmadd_ps(
        _mm512_fmadd_ps(_mm512_fmadd_ps(splat(0x3c07_2010), b, splat(0x3d2b_9f17)), u, _mm512_fmadd_ps(splat(0x3e2a_af33), b, splat(0x3eff_fedb))),
        u,
        _mm512_fmadd_ps(splat(0x3f7f_fff6), b, _mm512_set1_ps(1.0)),
    ); // e^b
    let res = _mm512_scalef_ps(j, n);
    if d == 0 {
        return res;
    }
    let le0 = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(n, _mm512_setzero_ps());
    let alt = _mm512_mask_blend_ps(le0, _mm512_set1_ps(f32::INFINITY), _mm512_setzero_ps());
    _mm512_mask_blend_ps(d, res, alt)
}
}

avx512_fn! {
/// K of one block widened transposed (`avx2::widen_transposed`, keys up to a multiple of 8),
/// and the keys from there to a multiple of 16 zeroed: the score tiles read whole vectors.
unsafe fn widen_k<const T: u8>(dst: *mut f32, src: *const u8, n: usize, hd: usize, stride: usize) {
    crate::arch::avx2::ops::widen_transposed::<T>(dst, src, n, hd, stride);
    let (n8, n16) = (n.div_ceil(8) * 8, n.div_ceil(16) * 16);
    if n8 < n16 {
        for e in 0..hd {
            _mm256_storeu_ps(dst.add(e * FLASH_KEYS + n8), _mm256_setzero_ps());
        }
    }
}
}

avx512_fn! {
/// V of one block widened (`avx2::widen_rows`).
unsafe fn widen_v<const T: u8>(dst: *mut f32, src: *const u8, n: usize, hd: usize, stride: usize) {
    crate::arch::avx2::ops::widen_rows::<T>(dst, src, n, hd, stride);
}
}

avx512_fn! {
/// x[..n] *= c (n a multiple of 16).
unsafe fn scale_row(x: *mut f32, n: usize, c: f32) {
    let cv = _mm512_set1_ps(c);
    for e in (0..n).step_by(16) {
        _mm512_storeu_ps(x.add(e), _mm512_mul_ps(_mm512_loadu_ps(x.add(e)), cv));
    }
}
}

avx512_fn! {
/// Scores of R rows against keys 0..16 C of a transposed key block: sc[r * FLASH_KEYS + j] =
/// scale * (q_r . k_j), each dot one FMA chain in element order, the lanes being keys.
unsafe fn scores<const R: usize, const C: usize>(qs: &[*const f32; R], kt: *const f32, hd: usize, scale: f32, sc: *mut f32) {
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    for e in 0..hd {
        let kv: [__m512; C] = std::array::from_fn(|c| _mm512_loadu_ps(kt.add(e * FLASH_KEYS + 16 * c)));
        for r in 0..R {
            let qb = _mm512_set1_ps(*qs[r].add(e));
            for c in 0..C {
                acc[r][c] = _mm512_fmadd_ps(qb, kv[c], acc[r][c]);
            }
        }
    }
    let sv = _mm512_set1_ps(scale);
    for r in 0..R {
        for c in 0..C {
            _mm512_storeu_ps(sc.add(r * FLASH_KEYS + 16 * c), _mm512_mul_ps(acc[r][c], sv));
        }
    }
}
}

avx512_fn! {
/// acc_r[e0..e0 + 16 C] = acc_r * corr_r + sum_{j in j0..j1} p[r * FLASH_KEYS + j] v_j for R
/// rows (`hd` apart from `acc`), one FMA chain per output element in key order.
#[allow(clippy::too_many_arguments)]
unsafe fn pv<const R: usize, const C: usize>(acc: *mut f32, corr: &[f32; R], p: *const f32, vf: *const f32, hd: usize, e0: usize, j0: usize, j1: usize) {
    let mut r: [[__m512; C]; R] = std::array::from_fn(|i| {
        let cv = _mm512_set1_ps(corr[i]);
        std::array::from_fn(|c| _mm512_mul_ps(_mm512_loadu_ps(acc.add(i * hd + e0 + 16 * c)), cv))
    });
    for j in j0..j1 {
        let v: [__m512; C] = std::array::from_fn(|c| _mm512_loadu_ps(vf.add(j * hd + e0 + 16 * c)));
        for i in 0..R {
            let pb = _mm512_set1_ps(*p.add(i * FLASH_KEYS + j));
            for c in 0..C {
                r[i][c] = _mm512_fmadd_ps(pb, v[c], r[i][c]);
            }
        }
    }
    for i in 0..R {
        for c in 0..C {
            _mm512_storeu_ps(acc.add(i * hd + e0 + 16 * c), r[i][c]);
        }
    }
}
}

avx512_fn! {
/// Rows i0..i0 + R of a tile against one key block (keys kb0..kb0 + n, K transposed in `kt`,
/// V in `vf`): scores, the online-softmax update of m and l, and acc += p V.
#[allow(clippy::too_many_arguments)]
unsafe fn row_tile<const R: usize>(q: &[f32], s: &AttnShape, kvh: usize, r0: usize, i0: usize, kb0: usize, n: usize, kt: *const f32, vf: *const f32, f: &mut FlashBuf) {
    let (hd, g) = (s.head_dim, s.n_heads / s.n_kv_heads);
    let (vis, jlo, jhi) = crate::ops::visible::<R>(s, r0, i0, kb0, n);
    if jlo >= jhi {
        return;
    }
    let nc = jhi.div_ceil(16); // 16-key vectors of scores
    let qs: [*const f32; R] = std::array::from_fn(|r| {
        let i = i0 + r;
        q.as_ptr().add(((r0 + i / g) * s.n_heads + kvh * g + i % g) * hd)
    });
    let sc = f.sc.as_mut_ptr();
    match nc {
        1 => scores::<R, 1>(&qs, kt, hd, s.scale, sc),
        2 => scores::<R, 2>(&qs, kt, hd, s.scale, sc),
        3 => scores::<R, 3>(&qs, kt, hd, s.scale, sc),
        _ => scores::<R, 4>(&qs, kt, hd, s.scale, sc),
    }
    let mut corr = [1f32; R];
    for r in 0..R {
        let row = sc.add(r * FLASH_KEYS);
        let Some((lo, hi)) = vis[r] else {
            // No visible key: p = 0, acc and the softmax state unchanged.
            for c in 0..nc {
                _mm512_storeu_ps(row.add(16 * c), _mm512_setzero_ps());
            }
            continue;
        };
        // Keys lo..=hi of this row (of the block's 64) as a bit mask, 16 bits per vector.
        let keep64 = (u64::MAX >> (63 - hi)) & (u64::MAX << lo);
        let keep = |c: usize| (keep64 >> (16 * c)) as __mmask16;
        let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut mv = ninf;
        for c in 0..nc {
            mv = _mm512_max_ps(mv, _mm512_mask_blend_ps(keep(c), ninf, _mm512_loadu_ps(row.add(16 * c))));
        }
        let i = i0 + r;
        let m_old = f.m[i];
        let mn = m_old.max(_mm512_reduce_max_ps(mv));
        corr[r] = (m_old - mn).exp(); // 0 on the first block (m = -inf)
        let mnv = _mm512_set1_ps(mn);
        let mut sumv = _mm512_setzero_ps();
        for c in 0..nc {
            let e = _mm512_maskz_mov_ps(keep(c), exp16(_mm512_sub_ps(_mm512_loadu_ps(row.add(16 * c)), mnv)));
            _mm512_storeu_ps(row.add(16 * c), e);
            sumv = _mm512_add_ps(sumv, e);
        }
        f.l[i] = f.l[i] * corr[r] + _mm512_reduce_add_ps(sumv);
        f.m[i] = mn;
    }
    let acc = f.acc.as_mut_ptr().add(i0 * hd);
    let mut e0 = 0;
    while e0 < hd {
        match ((hd - e0) / 16).min(4) {
            1 => pv::<R, 1>(acc, &corr, sc, vf, hd, e0, jlo, jhi),
            2 => pv::<R, 2>(acc, &corr, sc, vf, hd, e0, jlo, jhi),
            3 => pv::<R, 3>(acc, &corr, sc, vf, hd, e0, jlo, jhi),
            _ => pv::<R, 4>(acc, &corr, sc, vf, hd, e0, jlo, jhi),
        }
        e0 += 64;
    }
}
}

avx512_fn! {
#[allow(clippy::too_many_arguments)]
unsafe fn flash_tile_impl<const T: u8>(q: &[f32], k: &KvBytes, v: &KvBytes, s: &AttnShape, kvh: usize, r0: usize, r1: usize, f: &mut FlashBuf) {
    flash_tile_body!(q, k, v, s, kvh, r0, r1, f, widen_k::<T>, widen_v::<T>, row_tile, scale_row)
}
}

/// The AVX-512 flash tile (see `arch::scalar::ops::flash_tile_scalar`, its twin) over an F16,
/// Q8_0 or Q4_0 cache: the tile's output rows are left in `f.acc`.
/// # Safety
/// The CPU must have AVX2, FMA, F16C and AVX-512 F/BW/VL; `head_dim % 16 == 0`; `k` and `v` of
/// one type and the buffers must match `s` (`check_attention`), `f` must come from
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
    debug_assert!(s.head_dim % 16 == 0 && r0 < r1 && r1 <= s.t && k.ty == v.ty);
    const { assert!(SC_ROWS == 6 && FLASH_KEYS == 64) };
    match k.ty {
        KvType::Q8_0 => flash_tile_impl::<{ kv_ty::Q8_0 }>(q, k, v, s, kvh, r0, r1, f),
        KvType::Q4_0 => flash_tile_impl::<{ kv_ty::Q4_0 }>(q, k, v, s, kvh, r0, r1, f),
        _ => flash_tile_impl::<{ kv_ty::F16 }>(q, k, v, s, kvh, r0, r1, f),
    }
}

#[cfg(test)]
mod tests {
    use crate::Isa;
    use std::arch::x86_64::*;

    /// The worst error, in units of the f32 spacing at the true value, of a `W`-lane exp over
    /// [-87, 88) in steps of 0.113 (lanes `step` apart).
    fn worst_ulp<const W: usize>(step: f32, exp: impl Fn([f32; W]) -> [f32; W]) -> f64 {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let xs: [f32; W] = std::array::from_fn(|i| x + i as f32 * step);
            for (&xi, &yi) in xs.iter().zip(&exp(xs)) {
                let want = (xi as f64).exp();
                let w32 = want as f32;
                let ulp = f32::from_bits(w32.to_bits() + 1) as f64 - w32 as f64;
                worst = worst.max((yi as f64 - want).abs() / ulp);
            }
            x += 0.113;
        }
        worst
    }

    #[test]
    fn exp8_is_within_2_ulp_of_f64_exp() {
        if !Isa::Avx2.available() {
            eprintln!("no AVX2: skipping");
            return;
        }
        // SAFETY: AVX2 checked above.
        let worst = worst_ulp::<8>(0.0137, |xs| unsafe {
            std::mem::transmute(crate::arch::avx2::ops::exp8(_mm256_loadu_ps(xs.as_ptr())))
        });
        eprintln!("exp8: worst error {worst:.2} ulp");
        assert!(worst <= 2.0, "exp8 error {worst} ulp");
    }

    #[test]
    fn exp16_is_within_2_ulp_of_f64_exp_and_saturates() {
        if !Isa::Avx512.available() {
            eprintln!("no AVX-512: skipping");
            return;
        }
        // SAFETY: AVX-512 checked above.
        let exp16 = |xs: [f32; 16]| -> [f32; 16] {
            unsafe { std::mem::transmute(super::exp16(_mm512_loadu_ps(xs.as_ptr()))) }
        };
        let worst = worst_ulp::<16>(0.0071, exp16);
        // ggml's AVX-512 form (e^b as a polynomial with its 1, then vscalefps) is a little
        // less exact than the AVX2 one (2.13 ulp at worst here).
        eprintln!("exp16: worst error {worst:.2} ulp");
        assert!(worst <= 2.5, "exp16 error {worst} ulp");
        let xs: [f32; 16] = std::array::from_fn(|i| match i {
            0 => f32::NEG_INFINITY,
            1 => -200.0,
            2 => 200.0,
            3 => f32::INFINITY,
            _ => 0.0,
        });
        let ys = exp16(xs);
        assert_eq!(&ys[..5], &[0.0, 0.0, f32::INFINITY, f32::INFINITY, 1.0]);
    }
}
