//! The scalar twins of the SIMD ops in `arch::avx2::ops` and `arch::avx512::ops`: rope over a
//! cos/sin table and the flash-attention tile (tests/ops.rs, tests/flash*.rs compare them).

use crate::common::key_range;
use crate::ops::{tile_geometry, FlashBuf, FLASH_KEYS};
use crate::{AttnShape, KvSlice, Rope};

/// Rotates t tokens of n_heads heads with the table `cs` (t rows of n_pairs, `RopeTable::get`).
pub fn rope(
    x: &mut [f32],
    t: usize,
    n_heads: usize,
    head_dim: usize,
    rope: &Rope,
    cs: &[(f32, f32)],
) {
    crate::common::check_rope(x, t, n_heads, head_dim, rope);
    let n_pairs = rope.inv_freq.len();
    for r in 0..t {
        let cs = &cs[r * n_pairs..][..n_pairs];
        for h in 0..n_heads {
            let v = &mut x[(r * n_heads + h) * head_dim..][..head_dim];
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

/// Scalar twin of `arch::avx2::ops::flash_tile`: same tiles, blocks and online-softmax updates,
/// with `f32::exp` for ggml's exp and plain sums in key order (the SIMD kernel sums in lanes), so
/// the two agree to rounding. Leaves the tile's output rows in `f.acc`.
#[allow(clippy::too_many_arguments)]
pub fn flash_tile_scalar(
    q: &[f32],
    k: KvSlice,
    v: KvSlice,
    s: &AttnShape,
    kvh: usize,
    r0: usize,
    r1: usize,
    f: &mut FlashBuf,
) {
    let hd = s.head_dim;
    let kv_stride = s.n_kv_heads * hd;
    let (g, rows, first, last) = tile_geometry(s, r0, r1);
    f.acc[..rows * hd].fill(0.0);
    f.m[..rows].fill(f32::NEG_INFINITY);
    f.l[..rows].fill(0.0);
    let mut kb0 = first;
    while kb0 <= last {
        let n = (last + 1 - kb0).min(FLASH_KEYS);
        for j in 0..n {
            let src = (kb0 + j) * kv_stride + kvh * hd;
            k.widen(src, &mut f.kf[j * hd..][..hd]);
            v.widen(src, &mut f.vf[j * hd..][..hd]);
        }
        for i in 0..rows {
            let p = s.pos0 + r0 + i / g;
            let a = (*key_range(p, s.window).start()).max(kb0);
            let b = p.min(kb0 + n - 1);
            if a > b {
                continue;
            }
            let cnt = b + 1 - a;
            let qi = &q[((r0 + i / g) * s.n_heads + kvh * g + i % g) * hd..][..hd];
            let mut bm = f32::NEG_INFINITY;
            for j in 0..cnt {
                let kr = &f.kf[(a - kb0 + j) * hd..][..hd];
                let d = qi
                    .iter()
                    .zip(kr)
                    .fold(0f32, |acc, (x, y)| x.mul_add(*y, acc))
                    * s.scale;
                f.sc[j] = d;
                bm = bm.max(d);
            }
            let mn = f.m[i].max(bm);
            let corr = (f.m[i] - mn).exp(); // 0 on the first block (m = -inf)
            let mut sum = 0f32;
            for x in &mut f.sc[..cnt] {
                *x = (*x - mn).exp();
                sum += *x;
            }
            f.l[i] = f.l[i] * corr + sum;
            f.m[i] = mn;
            let acc = &mut f.acc[i * hd..][..hd];
            acc.iter_mut().for_each(|x| *x *= corr);
            for j in 0..cnt {
                let vr = &f.vf[(a - kb0 + j) * hd..][..hd];
                let pj = f.sc[j];
                acc.iter_mut()
                    .zip(vr)
                    .for_each(|(x, y)| *x = pj.mul_add(*y, *x));
            }
        }
        kb0 += n;
    }
    // Every row sees at least its own position, so l >= 1.
    for i in 0..rows {
        let inv = 1.0 / f.l[i];
        f.acc[i * hd..][..hd].iter_mut().for_each(|x| *x *= inv);
    }
}
