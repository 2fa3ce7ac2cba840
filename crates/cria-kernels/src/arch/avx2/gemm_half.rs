//! The AVX2 kernels of `cpu::gemm_half` (F16/BF16 weights repacked into 16-row panels), and
//! what the AVX-512 ones share with them (`prefetch_ahead`, `one_token!`).

use crate::cpu::gemm_half::{MR, NR};
// The file-layout GEMM's widening of 8 F16/BF16 elements (`load8`), reused on the panels;
// `F32` reads a panel already widened into scratch.
use crate::arch::avx2::gemm_float::{Load as Wide, F32};
use std::arch::x86_64::*;

/// T tokens x G panels: acc[j][g] = the 16 rows of panel g (two vectors) dotted with token
/// j, one FMA per element in order, then stored to out[(t0 + j) * n + row] for the rows
/// below n. Panel g0 + g starts at `w + g * k * NR * L::SIZE` bytes.
///
/// SAFETY (caller): AVX2/FMA/F16C present; panels g0..g0+G exist at `w` (k * 16 elements
/// each), tokens t0..t0+T in `x` (k each); the output elements are the caller's.
#[inline(always)]
unsafe fn tile<L: Wide, const T: usize, const G: usize>(
    out: *mut f32,
    n: usize,
    x: &[f32],
    w: *const u8,
    k: usize,
    g0: usize,
    t0: usize,
) {
    let wp: [*const u8; G] = std::array::from_fn(|g| w.add(g * k * NR * L::SIZE));
    let xp: [*const f32; T] = std::array::from_fn(|j| x.as_ptr().add((t0 + j) * k));
    let mut acc = [[[_mm256_setzero_ps(); 2]; G]; T];
    for e in 0..k {
        // The file's halves stream from memory (panels widened into scratch are in cache).
        if L::SIZE == 2 && e % 2 == 0 {
            prefetch_ahead(&wp, e * NR * 2);
        }
        let wv: [[__m256; 2]; G] = std::array::from_fn(|g| {
            let p = wp[g].add(e * NR * L::SIZE);
            [L::load8(p, 0), L::load8(p, 8)]
        });
        for j in 0..T {
            let xb = _mm256_broadcast_ss(&*xp[j].add(e));
            for g in 0..G {
                acc[j][g][0] = _mm256_fmadd_ps(wv[g][0], xb, acc[j][g][0]);
                acc[j][g][1] = _mm256_fmadd_ps(wv[g][1], xb, acc[j][g][1]);
            }
        }
    }
    for j in 0..T {
        for g in 0..G {
            let r0 = (g0 + g) * NR;
            let dst = out.add((t0 + j) * n + r0);
            if r0 + NR <= n {
                _mm256_storeu_ps(dst, acc[j][g][0]);
                _mm256_storeu_ps(dst.add(8), acc[j][g][1]);
            } else {
                let mut v = [0f32; NR];
                _mm256_storeu_ps(v.as_mut_ptr(), acc[j][g][0]);
                _mm256_storeu_ps(v.as_mut_ptr().add(8), acc[j][g][1]);
                for (i, &s) in v.iter().enumerate().take(n - r0) {
                    *dst.add(i) = s;
                }
            }
        }
    }
}

/// Token tiles t0..t1 of panel g, its weights at `w` read through `L`.
///
/// SAFETY (caller): as `tile`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn panel<L: Wide>(
    out: *mut f32,
    n: usize,
    x: &[f32],
    w: *const u8,
    k: usize,
    g: usize,
    t0: usize,
    t1: usize,
) {
    let mut j = t0;
    while j < t1 {
        let nt = tile_len(t1 - j, MR);
        match nt {
            6 => tile::<L, 6, 1>(out, n, x, w, k, g, j),
            5 => tile::<L, 5, 1>(out, n, x, w, k, g, j),
            4 => tile::<L, 4, 1>(out, n, x, w, k, g, j),
            3 => tile::<L, 3, 1>(out, n, x, w, k, g, j),
            2 => tile::<L, 2, 1>(out, n, x, w, k, g, j),
            _ => tile::<L, 1, 1>(out, n, x, w, k, g, j),
        }
        j += nt;
    }
}

/// The next register tile's tokens, of `left` still to do, with tiles of `mr` at most: as
/// even as the fewest tiles allow (13 tokens in tiles of 12: 7 + 6, not 12 + 1, whose
/// one-token tile is one FMA chain per lane and waits on its latency; 25: 9 + 8 + 8). Each
/// output is the same FMA chain in any tile, so the split changes no bit.
#[inline(always)]
pub(crate) fn tile_len(left: usize, mr: usize) -> usize {
    left.div_ceil(left.div_ceil(mr))
}

/// Panels g0..g1 x tokens t0..t1 of the output, by register tiles. With a `scratch` (several
/// token tiles), the panels are read widened to f32 from `scratch` (the conversions then
/// happen once per panel, not once per tile; the products are the same), where this call
/// first widens them unless `ready` says an earlier call of the same matmul did.
///
/// SAFETY (caller): AVX2/FMA/F16C present; `w` holds at least g1 panels of k * 16
/// elements, `x` at least t1 rows of k; out[tok * n + row] for the block is writable by this
/// call only; `scratch` is null (the panels are read as they are) or 32-byte aligned with
/// (g1 - g0) * k * 16 writable floats, and if `ready` they are panels g0..g1 of `w` widened.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn block<L: Wide>(
    out: *mut f32,
    n: usize,
    x: &[f32],
    w: &[u16],
    k: usize,
    g0: usize,
    g1: usize,
    t0: usize,
    t1: usize,
    scratch: *mut f32,
    ready: bool,
) {
    debug_assert!(w.len() >= g1 * k * NR && x.len() >= t1 * k);
    let at = |g: usize| w.as_ptr().add(g * k * NR) as *const u8;
    if t1 - t0 == 1 {
        // One token: up to 4 panels at once (8 chains in flight).
        one_token!(tile::<L>, out, n, x, at, k, g0, g1, t0);
        return;
    }
    if scratch.is_null() && t1 - t0 <= FEW {
        // A few tokens (a speculative verify): 2 panels (2 prefetched streams) at once.
        let mut g = g0;
        while g < g1 {
            let two = g + 1 < g1;
            match (t1 - t0, two) {
                (2, true) => tile::<L, 2, 2>(out, n, x, at(g), k, g, t0),
                (2, false) => tile::<L, 2, 1>(out, n, x, at(g), k, g, t0),
                (3, true) => tile::<L, 3, 2>(out, n, x, at(g), k, g, t0),
                (3, false) => tile::<L, 3, 1>(out, n, x, at(g), k, g, t0),
                _ => unreachable!("FEW is 3"),
            }
            g += if two { 2 } else { 1 };
        }
        return;
    }
    if scratch.is_null() {
        for g in g0..g1 {
            panel::<L>(out, n, x, at(g), k, g, t0, t1);
        }
        return;
    }
    if !ready {
        let src = at(g0);
        for i in (0..(g1 - g0) * k * NR).step_by(8) {
            _mm256_store_ps(scratch.add(i), L::load8(src, i));
        }
    }
    // Panels outer: a panel stays in L1/L2 while the item's token tiles pass over it.
    for g in g0..g1 {
        let wide = scratch.add((g - g0) * k * NR) as *const u8;
        panel::<F32>(out, n, x, wide, k, g, t0, t1);
    }
}

/// Tokens up to which a block goes 2 panels at a time (3 x 2 x 2 accumulators).
const FEW: usize = 3;

/// How far ahead of the element being read a tile on the file's halves prefetches each panel's
/// stream.
const PF_AHEAD: usize = 2048;

/// One token (decoding) reads every weight byte from memory once, G panels as G streams; the
/// tiles' own loads keep too few misses in flight, so each stream's line `PF_AHEAD` bytes on
/// is prefetched once per 64 bytes read (past a panel's end it is the next one's start, or
/// nothing: prefetches never fault).
///
/// SAFETY (caller): the CPU has SSE (every x86-64 does).
#[inline(always)]
pub(crate) unsafe fn prefetch_ahead<const G: usize>(wp: &[*const u8; G], at: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    for p in wp {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(at + PF_AHEAD) as *const i8);
    }
}

/// One token over panels g0..g1, up to 4 panels per `tile` call (the SIMD modules' shared
/// decode loop; `tile::<L>` names the module's own const-generic tile).
macro_rules! one_token {
    ($tile:ident::<$l:ident>, $out:expr, $n:expr, $x:expr, $at:expr, $k:expr, $g0:expr, $g1:expr, $t0:expr) => {{
        let mut g = $g0;
        while g < $g1 {
            let ng = ($g1 - g).min(4);
            match ng {
                4 => $tile::<$l, 1, 4>($out, $n, $x, $at(g), $k, g, $t0),
                3 => $tile::<$l, 1, 3>($out, $n, $x, $at(g), $k, g, $t0),
                2 => $tile::<$l, 1, 2>($out, $n, $x, $at(g), $k, g, $t0),
                _ => $tile::<$l, 1, 1>($out, $n, $x, $at(g), $k, g, $t0),
            }
            g += ng;
        }
    }};
}
pub(crate) use one_token;
