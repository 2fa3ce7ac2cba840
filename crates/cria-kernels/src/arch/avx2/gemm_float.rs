//! The AVX2 kernels of `cpu::gemm_float` (F32/F16/BF16 weights in the file layout); the
//! `Load` widening is shared with `arch::avx2::gemm_half`.

use std::arch::x86_64::*;

/// How one weight type is widened to f32 (also `gemm_half`'s panels: `load8` of 2-byte types).
pub(crate) trait Load {
    /// Bytes per element.
    const SIZE: usize;
    /// Elements i..i+8 of the row at `p`.
    unsafe fn load8(p: *const u8, i: usize) -> __m256;
    /// Element i of the row at `p`.
    unsafe fn get(p: *const u8, i: usize) -> f32;
    /// The 4 x 3 tile's main loop (see `main_4x3!`).
    unsafe fn main_4x3(
        acc: &mut [[__m256; 3]; 4],
        w: [*const u8; 4],
        x: [*const f32; 3],
        k8: usize,
    );
    /// The 4 x 1 tile's main loop over elements 0..k32 (see `main_4x1!`); false when the
    /// type has none (the generic loop then does all of k8).
    #[inline(always)]
    unsafe fn main_4x1(
        _acc: &mut [__m256; 4],
        _w: [*const u8; 4],
        _x: *const f32,
        _k32: usize,
        _ahead: usize,
    ) -> bool {
        false
    }
}
pub(crate) struct F16;
pub(crate) struct Bf16;
pub(crate) struct F32;

impl Load for F16 {
    #[inline(always)]
    unsafe fn main_4x3(
        acc: &mut [[__m256; 3]; 4],
        w: [*const u8; 4],
        x: [*const f32; 3],
        k8: usize,
    ) {
        main_4x3_f16(acc, w, x, k8)
    }
    #[inline(always)]
    unsafe fn main_4x1(
        acc: &mut [__m256; 4],
        w: [*const u8; 4],
        x: *const f32,
        k32: usize,
        ahead: usize,
    ) -> bool {
        main_4x1_f16(acc, w, x, k32, ahead);
        true
    }
    const SIZE: usize = 2;
    #[inline(always)]
    unsafe fn load8(p: *const u8, i: usize) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p.add(2 * i) as *const __m128i))
    }
    #[inline(always)]
    unsafe fn get(p: *const u8, i: usize) -> f32 {
        half::f16::from_bits((p.add(2 * i) as *const u16).read_unaligned()).to_f32()
    }
}
impl Load for Bf16 {
    #[inline(always)]
    unsafe fn main_4x3(
        acc: &mut [[__m256; 3]; 4],
        w: [*const u8; 4],
        x: [*const f32; 3],
        k8: usize,
    ) {
        main_4x3_bf16(acc, w, x, k8)
    }
    #[inline(always)]
    unsafe fn main_4x1(
        acc: &mut [__m256; 4],
        w: [*const u8; 4],
        x: *const f32,
        k32: usize,
        ahead: usize,
    ) -> bool {
        main_4x1_bf16(acc, w, x, k32, ahead);
        true
    }
    const SIZE: usize = 2;
    #[inline(always)]
    unsafe fn load8(p: *const u8, i: usize) -> __m256 {
        // bf16 is the top half of an f32: zero-extend to 32 bits and shift up.
        let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.add(2 * i) as *const __m128i));
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(h))
    }
    #[inline(always)]
    unsafe fn get(p: *const u8, i: usize) -> f32 {
        let h = (p.add(2 * i) as *const u16).read_unaligned();
        f32::from_bits((h as u32) << 16)
    }
}
impl Load for F32 {
    #[inline(always)]
    unsafe fn main_4x3(
        acc: &mut [[__m256; 3]; 4],
        w: [*const u8; 4],
        x: [*const f32; 3],
        k8: usize,
    ) {
        main_4x3_f32(acc, w, x, k8)
    }
    const SIZE: usize = 4;
    #[inline(always)]
    unsafe fn load8(p: *const u8, i: usize) -> __m256 {
        _mm256_loadu_ps(p.add(4 * i) as *const f32)
    }
    #[inline(always)]
    unsafe fn get(p: *const u8, i: usize) -> f32 {
        (p.add(4 * i) as *const f32).read_unaligned()
    }
}

/// Lane sums of four accumulators: lane i of the result is the sum of `a[i]`'s 8 lanes,
/// always in the order ((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7)), whichever tile it came from
/// (missing rows of an edge tile are zero vectors), so a result never depends on the tile.
#[inline(always)]
unsafe fn sum4(a: [__m256; 4]) -> __m128 {
    let h01 = _mm256_hadd_ps(a[0], a[1]); // a0 l0+l1, a0 l2+l3, a1 .., a1 .. | same, l4..l7
    let h23 = _mm256_hadd_ps(a[2], a[3]);
    let h = _mm256_hadd_ps(h01, h23); // a0 l0..3, a1 l0..3, a2 l0..3, a3 l0..3 | l4..7
    _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h))
}

/// The main loop of the full 4 x 3 tile, in assembly: 12 accumulators, 3 activation
/// vectors and one weight vector take all 16 ymm registers, and LLVM, scheduling the weight
/// conversions early, spilled an accumulator to the stack (a store and reload inside the FMA
/// dependency chain, which halved the speed). `$load` widens 8 weights at `[$w + e*size]`
/// into `{w}`.
macro_rules! main_4x3 {
    ($name:ident, $load_a:literal, $load_b:literal, $load_c:literal, $load_d:literal) => {
        /// acc[i][j] += the products of elements 0..k8 of weight row i and token j.
        ///
        /// SAFETY (caller): AVX2/FMA/F16C present; k8 is a multiple of 8 and every row
        /// and token pointer has k8 readable elements.
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        pub(crate) unsafe fn $name(
            acc: &mut [[__m256; 3]; 4],
            w: [*const u8; 4],
            x: [*const f32; 3],
            k8: usize,
        ) {
            if k8 == 0 {
                return;
            }
            let [[mut a00, mut a01, mut a02], [mut a10, mut a11, mut a12], [mut a20, mut a21, mut a22], [mut a30, mut a31, mut a32]] =
                *acc;
            std::arch::asm!(
                "2:",
                "vmovups {x0}, ymmword ptr [{xa} + {e}*4]",
                "vmovups {x1}, ymmword ptr [{xb} + {e}*4]",
                "vmovups {x2}, ymmword ptr [{xc} + {e}*4]",
                $load_a,
                "vfmadd231ps {a00}, {w}, {x0}",
                "vfmadd231ps {a01}, {w}, {x1}",
                "vfmadd231ps {a02}, {w}, {x2}",
                $load_b,
                "vfmadd231ps {a10}, {w}, {x0}",
                "vfmadd231ps {a11}, {w}, {x1}",
                "vfmadd231ps {a12}, {w}, {x2}",
                $load_c,
                "vfmadd231ps {a20}, {w}, {x0}",
                "vfmadd231ps {a21}, {w}, {x1}",
                "vfmadd231ps {a22}, {w}, {x2}",
                $load_d,
                "vfmadd231ps {a30}, {w}, {x0}",
                "vfmadd231ps {a31}, {w}, {x1}",
                "vfmadd231ps {a32}, {w}, {x2}",
                "add {e}, 8",
                "cmp {e}, {k8}",
                "jb 2b",
                a00 = inout(ymm_reg) a00, a01 = inout(ymm_reg) a01, a02 = inout(ymm_reg) a02,
                a10 = inout(ymm_reg) a10, a11 = inout(ymm_reg) a11, a12 = inout(ymm_reg) a12,
                a20 = inout(ymm_reg) a20, a21 = inout(ymm_reg) a21, a22 = inout(ymm_reg) a22,
                a30 = inout(ymm_reg) a30, a31 = inout(ymm_reg) a31, a32 = inout(ymm_reg) a32,
                x0 = out(ymm_reg) _, x1 = out(ymm_reg) _, x2 = out(ymm_reg) _,
                w = out(ymm_reg) _,
                wa = in(reg) w[0], wb = in(reg) w[1], wc = in(reg) w[2], wd = in(reg) w[3],
                xa = in(reg) x[0], xb = in(reg) x[1], xc = in(reg) x[2],
                e = inout(reg) 0usize => _,
                k8 = in(reg) k8,
                options(nostack, readonly),
            );
            *acc = [[a00, a01, a02], [a10, a11, a12], [a20, a21, a22], [a30, a31, a32]];
        }
    };
}
main_4x3!(
    main_4x3_f16,
    "vcvtph2ps {w}, xmmword ptr [{wa} + {e}*2]",
    "vcvtph2ps {w}, xmmword ptr [{wb} + {e}*2]",
    "vcvtph2ps {w}, xmmword ptr [{wc} + {e}*2]",
    "vcvtph2ps {w}, xmmword ptr [{wd} + {e}*2]"
);
main_4x3!(
    main_4x3_f32,
    "vmovups {w}, ymmword ptr [{wa} + {e}*4]",
    "vmovups {w}, ymmword ptr [{wb} + {e}*4]",
    "vmovups {w}, ymmword ptr [{wc} + {e}*4]",
    "vmovups {w}, ymmword ptr [{wd} + {e}*4]"
);
main_4x3!(
    main_4x3_bf16,
    "vpmovzxwd {w}, xmmword ptr [{wa} + {e}*2]\nvpslld {w}, {w}, 16",
    "vpmovzxwd {w}, xmmword ptr [{wb} + {e}*2]\nvpslld {w}, {w}, 16",
    "vpmovzxwd {w}, xmmword ptr [{wc} + {e}*2]\nvpslld {w}, {w}, 16",
    "vpmovzxwd {w}, xmmword ptr [{wd} + {e}*2]\nvpslld {w}, {w}, 16"
);

/// The main loop of the 4 x 1 tile (one token: decoding), 2-byte weights, 32 elements per
/// iteration: per row, 4 widened vectors into its one accumulator in element order (the
/// order of every other tile shape, so results do not depend on the batch), and a prefetch
/// of the same 64 bytes of the row `ahead` bytes on (the next tile's rows). Rows are only a
/// few cache lines long, too short for the hardware prefetcher to lock on to four of them
/// at once; without the prefetch the loop waited on memory at ~60% of the read bandwidth.
/// `$pre`/`$post` wrap a memory operand into "widen 8 elements into {w}".
macro_rules! main_4x1 {
    ($name:ident, $pre:literal, $post:literal) => {
        /// acc[i] += the products of elements 0..k32 of weight row i and the token.
        ///
        /// SAFETY (caller): AVX2/FMA/F16C present; k32 is a multiple of 32 and every row
        /// pointer and `x` have k32 readable elements. (Prefetches never fault.)
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        pub(crate) unsafe fn $name(
            acc: &mut [__m256; 4],
            w: [*const u8; 4],
            x: *const f32,
            k32: usize,
            ahead: usize,
        ) {
            if k32 == 0 {
                return;
            }
            let [mut a0, mut a1, mut a2, mut a3] = *acc;
            std::arch::asm!(
                "2:",
                "prefetcht0 byte ptr [{pa} + {e}*2]",
                "prefetcht0 byte ptr [{pb} + {e}*2]",
                "prefetcht0 byte ptr [{pc} + {e}*2]",
                "prefetcht0 byte ptr [{pd} + {e}*2]",
                "vmovups {x0}, ymmword ptr [{xa} + {e}*4]",
                concat!($pre, "[{wa} + {e}*2]", $post),
                "vfmadd231ps {a0}, {w}, {x0}",
                concat!($pre, "[{wb} + {e}*2]", $post),
                "vfmadd231ps {a1}, {w}, {x0}",
                concat!($pre, "[{wc} + {e}*2]", $post),
                "vfmadd231ps {a2}, {w}, {x0}",
                concat!($pre, "[{wd} + {e}*2]", $post),
                "vfmadd231ps {a3}, {w}, {x0}",
                "vmovups {x0}, ymmword ptr [{xa} + {e}*4 + 32]",
                concat!($pre, "[{wa} + {e}*2 + 16]", $post),
                "vfmadd231ps {a0}, {w}, {x0}",
                concat!($pre, "[{wb} + {e}*2 + 16]", $post),
                "vfmadd231ps {a1}, {w}, {x0}",
                concat!($pre, "[{wc} + {e}*2 + 16]", $post),
                "vfmadd231ps {a2}, {w}, {x0}",
                concat!($pre, "[{wd} + {e}*2 + 16]", $post),
                "vfmadd231ps {a3}, {w}, {x0}",
                "vmovups {x0}, ymmword ptr [{xa} + {e}*4 + 64]",
                concat!($pre, "[{wa} + {e}*2 + 32]", $post),
                "vfmadd231ps {a0}, {w}, {x0}",
                concat!($pre, "[{wb} + {e}*2 + 32]", $post),
                "vfmadd231ps {a1}, {w}, {x0}",
                concat!($pre, "[{wc} + {e}*2 + 32]", $post),
                "vfmadd231ps {a2}, {w}, {x0}",
                concat!($pre, "[{wd} + {e}*2 + 32]", $post),
                "vfmadd231ps {a3}, {w}, {x0}",
                "vmovups {x0}, ymmword ptr [{xa} + {e}*4 + 96]",
                concat!($pre, "[{wa} + {e}*2 + 48]", $post),
                "vfmadd231ps {a0}, {w}, {x0}",
                concat!($pre, "[{wb} + {e}*2 + 48]", $post),
                "vfmadd231ps {a1}, {w}, {x0}",
                concat!($pre, "[{wc} + {e}*2 + 48]", $post),
                "vfmadd231ps {a2}, {w}, {x0}",
                concat!($pre, "[{wd} + {e}*2 + 48]", $post),
                "vfmadd231ps {a3}, {w}, {x0}",
                "add {e}, 32",
                "cmp {e}, {k32}",
                "jb 2b",
                a0 = inout(ymm_reg) a0, a1 = inout(ymm_reg) a1,
                a2 = inout(ymm_reg) a2, a3 = inout(ymm_reg) a3,
                x0 = out(ymm_reg) _, w = out(ymm_reg) _,
                wa = in(reg) w[0], wb = in(reg) w[1], wc = in(reg) w[2], wd = in(reg) w[3],
                pa = in(reg) w[0].wrapping_add(ahead), pb = in(reg) w[1].wrapping_add(ahead),
                pc = in(reg) w[2].wrapping_add(ahead), pd = in(reg) w[3].wrapping_add(ahead),
                xa = in(reg) x,
                e = inout(reg) 0usize => _,
                k32 = in(reg) k32,
                options(nostack, readonly),
            );
            *acc = [a0, a1, a2, a3];
        }
    };
}
main_4x1!(main_4x1_f16, "vcvtph2ps {w}, xmmword ptr ", "");
main_4x1!(
    main_4x1_bf16,
    "vpmovzxwd {w}, xmmword ptr ",
    "\nvpslld {w}, {w}, 16"
);

/// An R x T register tile: out[(t0 + j) * n + r0 + i] = row r0+i . token t0+j.
///
/// SAFETY (caller): AVX2/FMA/F16C present; rows r0..r0+R of `w` (row length k) and tokens
/// t0..t0+T of `x` exist; the output elements are inside `out` and owned by the caller.
#[inline(always)]
unsafe fn tile<L: Load, const R: usize, const T: usize>(
    out: *mut f32,
    n: usize,
    x: &[f32],
    w: &[u8],
    k: usize,
    r0: usize,
    t0: usize,
) {
    let rb = k * L::SIZE;
    let wp: [*const u8; R] = std::array::from_fn(|i| w.as_ptr().add((r0 + i) * rb));
    let xp: [*const f32; T] = std::array::from_fn(|j| x.as_ptr().add((t0 + j) * k));
    let k8 = k / 8 * 8;
    // Rows past R stay zero: every tile reduces four rows the same way.
    let mut acc = [[_mm256_setzero_ps(); T]; 4];
    if R == 4 && T == 3 {
        let mut a = [[_mm256_setzero_ps(); 3]; 4];
        let w4 = std::array::from_fn(|i| wp[i]);
        let x3 = std::array::from_fn(|j| xp[j]);
        L::main_4x3(&mut a, w4, x3, k8);
        for i in 0..4 {
            for j in 0..T {
                acc[i][j] = a[i][j];
            }
        }
    } else {
        let mut e = 0;
        if R == 4 && T == 1 {
            let mut a = [acc[0][0], acc[1][0], acc[2][0], acc[3][0]];
            let k32 = k / 32 * 32;
            // The next tile's rows, 4 on: what this loop prefetches.
            if L::main_4x1(&mut a, std::array::from_fn(|i| wp[i]), xp[0], k32, 4 * rb) {
                for i in 0..4 {
                    acc[i][0] = a[i];
                }
                e = k32;
            }
        }
        while e < k8 {
            let xv: [__m256; T] = std::array::from_fn(|j| _mm256_loadu_ps(xp[j].add(e)));
            for i in 0..R {
                let wv = L::load8(wp[i], e);
                for j in 0..T {
                    acc[i][j] = _mm256_fmadd_ps(wv, xv[j], acc[i][j]);
                }
            }
            e += 8;
        }
    }
    for j in 0..T {
        let s = sum4([acc[0][j], acc[1][j], acc[2][j], acc[3][j]]);
        let dst = out.add((t0 + j) * n + r0);
        if R == 4 && k8 == k {
            _mm_storeu_ps(dst, s);
            continue;
        }
        let mut v = [0f32; 4];
        _mm_storeu_ps(v.as_mut_ptr(), s);
        for i in 0..R {
            let mut s = v[i];
            for e in k8..k {
                s += L::get(wp[i], e) * *xp[j].add(e);
            }
            *dst.add(i) = s;
        }
    }
}

/// Rows r0..r1 x tokens t0..t1 of the output, by register tiles; edges by smaller tiles.
///
/// SAFETY (caller): AVX2/FMA/F16C present; `w` holds at least r1 rows of k elements of L,
/// `x` at least t1 rows of k; out[tok * n + row] for the block is writable by this call only.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn block<L: Load>(
    out: *mut f32,
    n: usize,
    x: &[f32],
    w: &[u8],
    k: usize,
    r0: usize,
    r1: usize,
    t0: usize,
    t1: usize,
) {
    debug_assert!(w.len() >= r1 * k * L::SIZE && x.len() >= t1 * k);
    // Token tiles outer: a tile's 3 activation rows stay in L1 while the item's weight
    // rows stream past them from L2.
    let mut j = t0;
    while j < t1 {
        let nt = (t1 - j).min(crate::cpu::gemm_float::TT);
        let mut r = r0;
        while r < r1 {
            let nr = (r1 - r).min(crate::cpu::gemm_float::TR);
            match (nr, nt) {
                (4, 3) => tile::<L, 4, 3>(out, n, x, w, k, r, j),
                (4, 2) => tile::<L, 4, 2>(out, n, x, w, k, r, j),
                (4, 1) => tile::<L, 4, 1>(out, n, x, w, k, r, j),
                (3, 3) => tile::<L, 3, 3>(out, n, x, w, k, r, j),
                (3, 2) => tile::<L, 3, 2>(out, n, x, w, k, r, j),
                (3, 1) => tile::<L, 3, 1>(out, n, x, w, k, r, j),
                (2, 3) => tile::<L, 2, 3>(out, n, x, w, k, r, j),
                (2, 2) => tile::<L, 2, 2>(out, n, x, w, k, r, j),
                (2, 1) => tile::<L, 2, 1>(out, n, x, w, k, r, j),
                (1, 3) => tile::<L, 1, 3>(out, n, x, w, k, r, j),
                (1, 2) => tile::<L, 1, 2>(out, n, x, w, k, r, j),
                _ => tile::<L, 1, 1>(out, n, x, w, k, r, j),
            }
            r += nr;
        }
        j += nt;
    }
}
