//! The AVX-512 kernels of `cpu::gemm_half`: 12-token register tiles on 512-bit registers.

//! The same tiles on 512-bit registers: a panel's 16 rows are one zmm, and the 32 registers
//! hold `MR512` = 12 tokens x 2 panels of accumulators. Per lane the same FMA chain as the AVX2
//! kernel and the scalar twin (same bits).
use crate::arch::avx2::gemm_half::{one_token, prefetch_ahead, tile_len};
use crate::cpu::gemm_half::NR;
use std::arch::x86_64::*;

/// Tokens per register tile: 24 accumulators + 2 weights + 1 broadcast of the 32 zmm.
pub(crate) const MR512: usize = 12;
/// Tokens up to which a block goes 4 panels at a time, as one token does (up to 6 x 4
/// accumulators, 4 weights and a broadcast: 29 of the 32 zmm).
const FEW: usize = 6;

/// Widens 16 packed elements to f32.
pub(crate) trait Wide16 {
    /// Bytes per element.
    const SIZE: usize;
    /// SAFETY (caller): AVX-512 F present, 16 elements readable at p.
    unsafe fn load16(p: *const u8) -> __m512;
}
pub(crate) struct F16;
pub(crate) struct Bf16;
/// A panel already widened into scratch.
struct F32;
impl Wide16 for F16 {
    const SIZE: usize = 2;
    #[inline(always)]
    unsafe fn load16(p: *const u8) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
}
impl Wide16 for Bf16 {
    const SIZE: usize = 2;
    #[inline(always)]
    unsafe fn load16(p: *const u8) -> __m512 {
        let w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i));
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(w))
    }
}
impl Wide16 for F32 {
    const SIZE: usize = 4;
    #[inline(always)]
    unsafe fn load16(p: *const u8) -> __m512 {
        _mm512_load_ps(p as *const f32)
    }
}

/// T tokens x G panels, as `avx2::tile` (same contract; for `F32` the panels are 64-byte
/// aligned).
#[inline(always)]
unsafe fn tile<L: Wide16, const T: usize, const G: usize>(
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
    let mut acc = [[_mm512_setzero_ps(); G]; T];
    for e in 0..k {
        // The file's halves stream from memory (panels widened into scratch are in cache).
        if L::SIZE == 2 && e % 2 == 0 {
            prefetch_ahead(&wp, e * NR * 2);
        }
        let wv: [__m512; G] = std::array::from_fn(|g| L::load16(wp[g].add(e * NR * L::SIZE)));
        for j in 0..T {
            let xb = _mm512_set1_ps(*xp[j].add(e));
            for g in 0..G {
                acc[j][g] = _mm512_fmadd_ps(wv[g], xb, acc[j][g]);
            }
        }
    }
    for j in 0..T {
        for g in 0..G {
            let r0 = (g0 + g) * NR;
            let dst = out.add((t0 + j) * n + r0);
            if r0 + NR <= n {
                _mm512_storeu_ps(dst, acc[j][g]);
            } else {
                // The last panel's rows past n are not ours to write.
                let m: __mmask16 = (1u32 << (n - r0)).wrapping_sub(1) as __mmask16;
                _mm512_mask_storeu_ps(dst, m, acc[j][g]);
            }
        }
    }
}

/// Token tiles t0..t1 of panel g (and g + 1 when `two`), the weights at `w` read through
/// `L`.
///
/// SAFETY (caller): as `tile`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn panels<L: Wide16>(
    out: *mut f32,
    n: usize,
    x: &[f32],
    w: *const u8,
    k: usize,
    g: usize,
    two: bool,
    t0: usize,
    t1: usize,
) {
    let mut j = t0;
    while j < t1 {
        let nt = tile_len(t1 - j, MR512);
        macro_rules! go {
            ($($t:literal)*) => {
                match (nt, two) {
                    $(($t, true) => tile::<L, $t, 2>(out, n, x, w, k, g, j),
                      ($t, false) => tile::<L, $t, 1>(out, n, x, w, k, g, j),)*
                    _ => unreachable!(),
                }
            };
        }
        go!(1 2 3 4 5 6 7 8 9 10 11 12);
        j += nt;
    }
}

/// As `avx2::block` (same contract, with `scratch`, when not null, 64-byte aligned), for
/// AVX-512 F/BW/VL.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn block<L: Wide16>(
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
        // One token: up to 4 panels at once (4 streams, 4 chains).
        one_token!(tile::<L>, out, n, x, at, k, g0, g1, t0);
        return;
    }
    let wide = !scratch.is_null();
    if !wide && t1 - t0 <= FEW {
        // A few tokens (a speculative verify): one tile of them over 4 panels (4 streams,
        // prefetched) at once, as one token goes: 2-6 rows cost about what one does (SmolLM2
        // F16, 2 threads: 1 row 11 ms, 4 rows 11.7 ms, 6 rows 13 ms; with 2-panel tiles 4 rows
        // cost 15 ms).
        let mut g = g0;
        while g < g1 {
            let ng = (g1 - g).min(4);
            macro_rules! go {
                ($($t:literal)*) => {
                    match (t1 - t0, ng) {
                        $(($t, 4) => tile::<L, $t, 4>(out, n, x, at(g), k, g, t0),
                          ($t, 3) => tile::<L, $t, 3>(out, n, x, at(g), k, g, t0),
                          ($t, 2) => tile::<L, $t, 2>(out, n, x, at(g), k, g, t0),
                          ($t, _) => tile::<L, $t, 1>(out, n, x, at(g), k, g, t0),)*
                        _ => unreachable!(),
                    }
                };
            }
            go!(2 3 4 5 6);
            g += ng;
        }
        return;
    }
    if wide && !ready {
        let src = at(g0);
        for i in (0..(g1 - g0) * k * NR).step_by(16) {
            _mm512_store_ps(scratch.add(i), L::load16(src.add(i * L::SIZE)));
        }
    }
    // Pairs of panels outer: they stay in L1/L2 while the item's token tiles pass.
    let mut g = g0;
    while g < g1 {
        let two = g + 1 < g1;
        if wide {
            let src = scratch.add((g - g0) * k * NR) as *const u8;
            panels::<F32>(out, n, x, src, k, g, two, t0, t1);
        } else {
            panels::<L>(out, n, x, at(g), k, g, two, t0, t1);
        }
        g += if two { 2 } else { 1 };
    }
}
