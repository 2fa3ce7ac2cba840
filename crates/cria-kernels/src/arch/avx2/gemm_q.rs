//! The AVX2 tile kernels of `gemm_q` (one 8-row group per call, `TILE_T` tokens); the
//! AVX-512 pair kernels reuse their helpers. Reached only through `cpu::gemm_q::tile_for`,
//! with AVX2/FMA/F16C detected.

// Kernels index per-token arrays (accumulators, sums) with the same token number.
#![allow(clippy::needless_range_loop)]
use crate::cpu::gemm_q::layout::{
    K2_Q, K2_SC, K3_H, K3_Q, K3_SC, K4_MIN, K4_QS, K4_SC, K5_QH, K6_QS, K6_SC, KX_QS, KX_SC,
};
use crate::cpu::gemm_q::{Kind, A8K_BLOCK, A8_BLOCK, GROUP, TILE_T};
use crate::dot::layout::{KVALUES_IQ4NL, QK};
use std::arch::x86_64::*;

/// Checks the arguments once, then runs the kernel for `cols` tokens.
pub fn tile(
    kind: Kind,
    nb: usize,
    w: &[u8],
    a: &[u8],
    stride: usize,
    cols: usize,
    out: &mut [[f32; GROUP]; TILE_T],
) {
    assert!(
        (1..=TILE_T).contains(&cols)
            && w.len() >= nb * kind.block_bytes()
            && stride >= nb * kind.act_bytes()
            && a.len() >= (cols - 1) * stride + nb * kind.act_bytes(),
        "gemm_q tile: bad arguments"
    );
    let (w, a) = (w.as_ptr(), a.as_ptr());
    // Tokens 1..=4: the kernel's const-generic instance; 4 may take a hand-scheduled kernel.
    macro_rules! by_cols {
        ($f:ident $(:: <$($g:literal),*>)?) => {
            by_cols!($f $(:: <$($g),*>)?, $f::<$($($g,)*)? 4>)
        };
        ($f:ident $(:: <$($g:literal),*>)?, $f4:expr) => {
            match cols {
                1 => $f::<$($($g,)*)? 1>(nb, w, a, stride, out),
                2 => $f::<$($($g,)*)? 2>(nb, w, a, stride, out),
                3 => $f::<$($($g,)*)? 3>(nb, w, a, stride, out),
                _ => $f4(nb, w, a, stride, out),
            }
        };
    }
    // SAFETY: this function is only handed out for Isa::Avx2/Avx512, which exist only
    // after Isa::available() confirmed AVX2/FMA/F16C; the reads stay inside `w` (nb blocks) and
    // `a` (cols rows of nb A8 blocks), checked above.
    unsafe {
        match kind {
            Kind::Q4_0 => by_cols!(q4_0, q4_0_x4),
            Kind::Q4_1 => by_cols!(nib::<true, false>),
            Kind::Q5_0 => by_cols!(nib::<false, true>),
            Kind::Q5_1 => by_cols!(nib::<true, true>),
            Kind::Q8_0 => by_cols!(q8_0, q8_0_x4),
            Kind::Q4_K => by_cols!(q4_k::<false>),
            Kind::Q5_K => by_cols!(q4_k::<true>),
            Kind::IQ4_NL => by_cols!(iq4_nl),
            Kind::IQ4_XS => by_cols!(iq4_xs),
            Kind::Q2_K => by_cols!(q2_k),
            Kind::Q3_K => by_cols!(q3_k),
            Kind::Q6_K => by_cols!(q6_k),
        }
    }
}

/// How far ahead of the block being decoded the one-token kernels prefetch.
pub(crate) const PF_AHEAD: usize = 2048;

/// One token (decoding): every weight byte comes from memory once, and a kernel's own loads
/// keep too few cache misses in flight (the out-of-order window holds well under a
/// kilobyte of a group's blocks), so the block `PF_AHEAD` bytes on is prefetched: matmul_speed
/// --ab 65536 2048 1 Q4_0 went from 30-33 to 37-40 GFLOP/s (prefetching 1 or 4 KiB ahead
/// did no better). The lines of consecutive blocks' prefetches join up, and past the
/// group's end they are the next group's (prefetches never fault). Several tokens read
/// their chunk from L2: no prefetch.
#[inline(always)]
pub(crate) unsafe fn prefetch_ahead<const T: usize>(blk: *const u8, bytes: usize) {
    prefetch_part::<T>(blk, bytes, 0, 1);
}

/// `prefetch_ahead` for part `part` of `parts` of a block (its lines from `part * bytes /
/// parts` to the next part's start): a K-quant block is 1-2 KiB per group, and its
/// prefetches spread over its decode instead of coming in one burst (matmul_speed --one
/// 262144 2048 1 on AVX-512: Q4_K 39.5-42 -> 43-46 GFLOP/s, Q6_K 28 -> 30-31.5, Q5_K 33 -> 36-37.6).
#[inline(always)]
pub(crate) unsafe fn prefetch_part<const T: usize>(
    blk: *const u8,
    bytes: usize,
    part: usize,
    parts: usize,
) {
    if T == 1 {
        let lo = (part * bytes / parts) & !63;
        let hi = if part + 1 == parts {
            bytes
        } else {
            ((part + 1) * bytes / parts) & !63
        };
        let mut o = lo;
        while o < hi {
            _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(PF_AHEAD + o) as *const i8);
            o += 64;
        }
    }
}

#[inline(always)]
unsafe fn bcast4(p: *const u8) -> __m256i {
    _mm256_set1_epi32(std::ptr::read_unaligned(p as *const i32))
}
/// Four weight vectors (lane = row, 4 unsigned bytes each) against 16 activation bytes at
/// `y`, vector c with bytes 4c..4c+4 broadcast to every lane: per lane, the i16 pair sums of
/// the 16 products added together. Callers keep |sum| < 2^15 (the adds wrap).
#[inline(always)]
unsafe fn sum4(w: &[__m256i], y: *const u8) -> __m256i {
    let pr = |c: usize| _mm256_maddubs_epi16(w[c], bcast4(y.add(4 * c)));
    _mm256_add_epi16(
        _mm256_add_epi16(pr(0), pr(1)),
        _mm256_add_epi16(pr(2), pr(3)),
    )
}
#[inline(always)]
pub(crate) unsafe fn f32_at(p: *const u8) -> f32 {
    std::ptr::read_unaligned(p as *const f32)
}
#[inline(always)]
pub(crate) unsafe fn i32_at(p: *const u8) -> i32 {
    std::ptr::read_unaligned(p as *const i32)
}

/// The end of one token of the x4 kernels: the block's integer dot (ymm13) to f32, times
/// d_w (ymm12) * d_a (the f32 @32 of the A8 block at `$b`), added into `$acc` by one FMA.
macro_rules! x4_token_close {
    ($b:literal, $acc:literal) => {
        concat!(
            "vcvtdq2ps ymm13, ymm13\n",
            "vbroadcastss ymm14, dword ptr [",
            $b,
            " + 32]\n",
            "vmulps ymm14, ymm14, ymm12\n",
            "vfmadd231ps ",
            $acc,
            ", ymm14, ymm13\n",
        )
    };
}

/// One activation chunk of a Q4_0 x4 token: the i16 pair sums of nibble vector `$v` with the
/// 4 bytes at `$b + $off`, added into ymm13.
macro_rules! q4_0_chunk {
    ($b:literal, $off:literal, $v:literal) => {
        concat!(
            "vpbroadcastd ymm14, dword ptr [",
            $b,
            " + ",
            $off,
            "]\n",
            "vpmaddubsw ymm14, ",
            $v,
            ", ymm14\n",
            "vpaddw ymm13, ymm13, ymm14\n",
        )
    };
}

/// One token of the Q4_0 x4 kernel: `$b` is the address of its A8 block, `$acc` its
/// accumulator. The same operations as `q4_0` (integer sums are exact, so the i16 chain
/// order does not matter; then madd, - 8 * sum, cvt, d_w * d_a, one FMA).
macro_rules! q4_0_token {
    ($b:literal, $acc:literal) => {
        concat!(
            "vpbroadcastd ymm13, dword ptr [",
            $b,
            "]\n",
            "vpmaddubsw ymm13, ymm0, ymm13\n",
            q4_0_chunk!($b, "4", "ymm1"),
            q4_0_chunk!($b, "8", "ymm2"),
            q4_0_chunk!($b, "12", "ymm3"),
            q4_0_chunk!($b, "16", "ymm4"),
            q4_0_chunk!($b, "20", "ymm5"),
            q4_0_chunk!($b, "24", "ymm6"),
            q4_0_chunk!($b, "28", "ymm7"),
            "vpmaddwd ymm13, ymm13, ymmword ptr [{c} + 32]\n",
            "vpbroadcastd ymm14, dword ptr [",
            $b,
            " + 36]\n",
            "vpslld ymm14, ymm14, 3\n",
            "vpsubd ymm13, ymm13, ymm14\n",
            x4_token_close!($b, $acc),
        )
    };
}

/// The frame the x4 kernels share: `$pre` once, the 4 accumulators (ymm8-11) zeroed, then per
/// block `$decode` (the block's weights into ymm0-7, d_w into ymm12), `$token` for each of the 4
/// tokens (A8 blocks at a, a + s, a + 2s, a + 3s), w and a advanced by one block (`$bb`
/// bytes, 44), and at the end the accumulators stored to `$o` (4 x 8 f32). `$c` is the
/// kernel's constants, `$clobber` the registers beyond ymm0-14 it touches.
macro_rules! x4_asm {
    ($nb:expr, $w:expr, $a:expr, $stride:expr, $c:expr, $o:expr, $token:ident, $bb:literal,
     [$($pre:literal),*], [$($decode:literal),* $(,)?], [$($clobber:tt)*]) => {
        std::arch::asm!(
            $($pre,)*
            "vxorps ymm8, ymm8, ymm8",
            "vxorps ymm9, ymm9, ymm9",
            "vxorps ymm10, ymm10, ymm10",
            "vxorps ymm11, ymm11, ymm11",
            "2:",
            $($decode,)*
            $token!("{a}", "ymm8"),
            $token!("{a} + {s}", "ymm9"),
            $token!("{a} + {s}*2", "ymm10"),
            $token!("{a} + {s3}", "ymm11"),
            concat!("add {w}, ", $bb),
            "add {a}, 44",
            "dec {n}",
            "jnz 2b",
            "vmovups ymmword ptr [{o}], ymm8",
            "vmovups ymmword ptr [{o} + 32], ymm9",
            "vmovups ymmword ptr [{o} + 64], ymm10",
            "vmovups ymmword ptr [{o} + 96], ymm11",
            w = inout(reg) $w => _,
            a = inout(reg) $a => _,
            n = inout(reg) $nb => _,
            s = in(reg) $stride,
            s3 = in(reg) 3 * $stride,
            c = in(reg) $c,
            o = in(reg) $o,
            out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
            out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
            out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
            out("ymm12") _, out("ymm13") _, out("ymm14") _,
            $($clobber)*
            options(nostack),
        )
    };
}

/// `q4_0::<4>` in assembly: with intrinsics the compiler spills an accumulator and d_w to
/// the stack (8 weight vectors + 4 accumulators + temporaries exceed 16 registers), and the
/// spilled accumulator's store/reload sat on the loop-carried chain. Here: ymm0-7 the
/// decoded nibbles, ymm8-11 the accumulators, ymm12 d_w, ymm13-14 temporaries; the nibble
/// mask and the i16 ones are memory operands. Bitwise equal to `q4_0::<4>` (same operations
/// per lane; tests compare with the scalar twin).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_0_x4(
    nb: usize,
    w: *const u8,
    a: *const u8,
    stride: usize,
    out: &mut [[f32; GROUP]; TILE_T],
) {
    if nb == 0 {
        *out = [[0.0; GROUP]; TILE_T];
        return;
    }
    #[repr(align(32))]
    struct Consts([u8; 64]);
    let mut c = Consts([0x0F; 64]);
    for i in 0..16 {
        c.0[32 + 2 * i] = 1;
        c.0[33 + 2 * i] = 0;
    }
    // SAFETY (caller's): nb >= 1 blocks of 144 bytes at w, 4 rows of nb A8 blocks at a
    // (stride apart), out holds 4 x 8 f32; the asm reads only those, writes only out, and
    // declares every register it touches.
    x4_asm!(
        nb,
        w,
        a,
        stride,
        c.0.as_ptr(),
        out.as_mut_ptr(),
        q4_0_token,
        "144",
        [],
        [
            "vcvtph2ps ymm12, xmmword ptr [{w}]",
            "vmovdqu ymm14, ymmword ptr [{w} + 16]",
            "vpand ymm0, ymm14, ymmword ptr [{c}]",
            "vpsrlw ymm14, ymm14, 4",
            "vpand ymm4, ymm14, ymmword ptr [{c}]",
            "vmovdqu ymm14, ymmword ptr [{w} + 48]",
            "vpand ymm1, ymm14, ymmword ptr [{c}]",
            "vpsrlw ymm14, ymm14, 4",
            "vpand ymm5, ymm14, ymmword ptr [{c}]",
            "vmovdqu ymm14, ymmword ptr [{w} + 80]",
            "vpand ymm2, ymm14, ymmword ptr [{c}]",
            "vpsrlw ymm14, ymm14, 4",
            "vpand ymm6, ymm14, ymmword ptr [{c}]",
            "vmovdqu ymm14, ymmword ptr [{w} + 112]",
            "vpand ymm3, ymm14, ymmword ptr [{c}]",
            "vpsrlw ymm14, ymm14, 4",
            "vpand ymm7, ymm14, ymmword ptr [{c}]",
        ],
        []
    );
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_0<const T: usize>(
    nb: usize,
    w: *const u8,
    a: *const u8,
    stride: usize,
    out: &mut [[f32; GROUP]; TILE_T],
) {
    let m4 = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        let blk = w.add(b * (16 + 128));
        prefetch_ahead::<T>(blk, 16 + 128);
        let dw = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
        let mut lo = [_mm256_setzero_si256(); 4];
        let mut hi = [_mm256_setzero_si256(); 4];
        for j in 0..4 {
            let p = _mm256_loadu_si256(blk.add(16 + 32 * j) as *const __m256i);
            lo[j] = _mm256_and_si256(p, m4);
            hi[j] = _mm256_and_si256(_mm256_srli_epi16(p, 4), m4);
        }
        for t in 0..T {
            let y = a.add(t * stride + b * A8_BLOCK);
            // 8 u4 x i8 pair sums: |.| <= 8 * 2 * 15 * 127 = 30480, no i16 overflow. One
            // running sum (not a tree): fewer live registers, so the 4 accumulators and 8
            // weight vectors are not spilled; the tokens' chains overlap instead.
            let mut s = _mm256_maddubs_epi16(lo[0], bcast4(y));
            for c in 1..8 {
                let (wv, off) = if c < 4 {
                    (lo[c], 4 * c)
                } else {
                    (hi[c - 4], 16 + 4 * (c - 4))
                };
                s = _mm256_add_epi16(s, _mm256_maddubs_epi16(wv, bcast4(y.add(off))));
            }
            let i = _mm256_sub_epi32(
                _mm256_madd_epi16(s, ones),
                _mm256_set1_epi32(8 * i32_at(y.add(QK + 4))),
            );
            let d = _mm256_mul_ps(dw, _mm256_set1_ps(f32_at(y.add(QK))));
            acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(i), acc[t]);
        }
    }
    store(&acc, out);
}

/// Q4_1, Q5_0, Q5_1 (MIN: a per-block min, HB: a 5th bit); see the layouts in the module doc.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nib<const MIN: bool, const HB: bool, const T: usize>(
    nb: usize,
    w: *const u8,
    a: *const u8,
    stride: usize,
    out: &mut [[f32; GROUP]; TILE_T],
) {
    let qo = if MIN { 32 } else { 16 };
    let bb = qo + 128 + if HB { 32 } else { 0 };
    // Q5_0's quants are u5 - 16; the min kinds add m instead of an offset.
    let off = if MIN { 0 } else { 16 };
    let m4 = _mm256_set1_epi8(0x0F);
    let m16 = _mm256_set1_epi8(0x10);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        let blk = w.add(b * bb);
        prefetch_ahead::<T>(blk, bb);
        let dw = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
        let mut u = [_mm256_setzero_si256(); 8];
        for j in 0..4 {
            let p = _mm256_loadu_si256(blk.add(qo + 32 * j) as *const __m256i);
            u[j] = _mm256_and_si256(p, m4);
            u[4 + j] = _mm256_and_si256(_mm256_srli_epi16(p, 4), m4);
        }
        if HB {
            // Bit v of each byte is the 5th bit of vector v's byte: move it to bit 4.
            let h = _mm256_loadu_si256(blk.add(qo + 128) as *const __m256i);
            u[0] = _mm256_or_si256(u[0], _mm256_and_si256(_mm256_slli_epi16(h, 4), m16));
            u[1] = _mm256_or_si256(u[1], _mm256_and_si256(_mm256_slli_epi16(h, 3), m16));
            u[2] = _mm256_or_si256(u[2], _mm256_and_si256(_mm256_slli_epi16(h, 2), m16));
            u[3] = _mm256_or_si256(u[3], _mm256_and_si256(_mm256_slli_epi16(h, 1), m16));
            u[4] = _mm256_or_si256(u[4], _mm256_and_si256(h, m16));
            u[5] = _mm256_or_si256(u[5], _mm256_and_si256(_mm256_srli_epi16(h, 1), m16));
            u[6] = _mm256_or_si256(u[6], _mm256_and_si256(_mm256_srli_epi16(h, 2), m16));
            u[7] = _mm256_or_si256(u[7], _mm256_and_si256(_mm256_srli_epi16(h, 3), m16));
        }
        let mw = if MIN {
            _mm256_cvtph_ps(_mm_loadu_si128(blk.add(16) as *const __m128i))
        } else {
            _mm256_setzero_ps()
        };
        for t in 0..T {
            let y = a.add(t * stride + b * A8_BLOCK);
            // Vector v holds elements 4v.. (v < 4) or 16 + 4(v - 4)..: activation chunk v.
            let s0 = sum4(&u[..4], y);
            let s1 = sum4(&u[4..], y.add(16));
            // u5 x i8: 4 pair sums stay within i16 (4 * 2 * 31 * 127 = 31496); 8 would not.
            let i = if HB {
                _mm256_add_epi32(_mm256_madd_epi16(s0, ones), _mm256_madd_epi16(s1, ones))
            } else {
                _mm256_madd_epi16(_mm256_add_epi16(s0, s1), ones)
            };
            let sa = i32_at(y.add(QK + 4));
            let i = _mm256_sub_epi32(i, _mm256_set1_epi32(off * sa));
            let da = f32_at(y.add(QK));
            let d = _mm256_mul_ps(dw, _mm256_set1_ps(da));
            acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(i), acc[t]);
            if MIN {
                acc[t] = _mm256_fmadd_ps(mw, _mm256_set1_ps(f32_at(y.add(QK + 8))), acc[t]);
            }
        }
    }
    store(&acc, out);
}

/// One activation chunk of a Q8_0 x4 token: |w| vector `$v` times the 4 bytes at `$b + $off`
/// signed by w (@`$wo` of the block), pair sums widened to i32 by ymm15's ones, added into ymm13.
macro_rules! q8_0_chunk {
    ($b:literal, $off:literal, $wo:literal, $v:literal) => {
        concat!(
            "vpbroadcastd ymm14, dword ptr [",
            $b,
            " + ",
            $off,
            "]\n",
            "vpsignb ymm14, ymm14, ymmword ptr [{w} + ",
            $wo,
            "]\n",
            "vpmaddubsw ymm14, ",
            $v,
            ", ymm14\n",
            "vpmaddwd ymm14, ymm14, ymm15\n",
            "vpaddd ymm13, ymm13, ymm14\n",
        )
    };
}

/// One token of the Q8_0 x4 kernel (see `q8_0_x4`).
macro_rules! q8_0_token {
    ($b:literal, $acc:literal) => {
        concat!(
            "vpbroadcastd ymm13, dword ptr [",
            $b,
            " + 0]\n",
            "vpsignb ymm13, ymm13, ymmword ptr [{w} + 16]\n",
            "vpmaddubsw ymm13, ymm0, ymm13\n",
            "vpmaddwd ymm13, ymm13, ymm15\n",
            q8_0_chunk!($b, "4", "48", "ymm1"),
            q8_0_chunk!($b, "8", "80", "ymm2"),
            q8_0_chunk!($b, "12", "112", "ymm3"),
            q8_0_chunk!($b, "16", "144", "ymm4"),
            q8_0_chunk!($b, "20", "176", "ymm5"),
            q8_0_chunk!($b, "24", "208", "ymm6"),
            q8_0_chunk!($b, "28", "240", "ymm7"),
            x4_token_close!($b, $acc),
        )
    };
}

/// `q8_0::<4>` in assembly, for the reason `q4_0_x4` gives (the intrinsics version spilled
/// several vectors per block): ymm0-7 |w|, ymm8-11 the accumulators, ymm12 d_w, ymm13-14
/// temporaries, ymm15 the i16 ones; w itself (for the sign) is a memory operand. Per vector:
/// maddubs(|w|, sign(a, w)) then madd with ones, summed in i32 (exact, so the order of the
/// sums does not matter): bitwise equal to `q8_0::<4>`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0_x4(
    nb: usize,
    w: *const u8,
    a: *const u8,
    stride: usize,
    out: &mut [[f32; GROUP]; TILE_T],
) {
    if nb == 0 {
        *out = [[0.0; GROUP]; TILE_T];
        return;
    }
    #[repr(align(32))]
    struct Ones([u16; 16]);
    let c = Ones([1; 16]);
    // SAFETY (caller's): nb >= 1 blocks of 272 bytes at w, 4 rows of nb A8 blocks at a
    // (stride apart), out holds 4 x 8 f32; the asm reads only those, writes only out, and
    // declares every register it touches.
    x4_asm!(nb, w, a, stride, c.0.as_ptr(), out.as_mut_ptr(), q8_0_token, "272",
        ["vmovdqu ymm15, ymmword ptr [{c}]"], [
        "vcvtph2ps ymm12, xmmword ptr [{w}]",
        "vpabsb ymm0, ymmword ptr [{w} + 16]",
        "vpabsb ymm1, ymmword ptr [{w} + 48]",
        "vpabsb ymm2, ymmword ptr [{w} + 80]",
        "vpabsb ymm3, ymmword ptr [{w} + 112]",
        "vpabsb ymm4, ymmword ptr [{w} + 144]",
        "vpabsb ymm5, ymmword ptr [{w} + 176]",
        "vpabsb ymm6, ymmword ptr [{w} + 208]",
        "vpabsb ymm7, ymmword ptr [{w} + 240]",
    ], [out("ymm15") _,]);
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0<const T: usize>(
    nb: usize,
    w: *const u8,
    a: *const u8,
    stride: usize,
    out: &mut [[f32; GROUP]; TILE_T],
) {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        let blk = w.add(b * (16 + 256));
        prefetch_ahead::<T>(blk, 16 + 256);
        let dw = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
        // |w| stays in registers for all tokens; w itself (for the sign) is re-read from L1.
        let mut aw = [_mm256_setzero_si256(); 8];
        for j in 0..8 {
            aw[j] = _mm256_abs_epi8(_mm256_loadu_si256(blk.add(16 + 32 * j) as *const __m256i));
        }
        for t in 0..T {
            let y = a.add(t * stride + b * A8_BLOCK);
            let mut s = [_mm256_setzero_si256(); 2];
            for j in 0..8 {
                let wj = _mm256_loadu_si256(blk.add(16 + 32 * j) as *const __m256i);
                // Pairs of |w| * a fit i16 (2 * 127 * 127), but two such sums may not.
                let p = _mm256_maddubs_epi16(aw[j], _mm256_sign_epi8(bcast4(y.add(4 * j)), wj));
                s[j & 1] = _mm256_add_epi32(s[j & 1], _mm256_madd_epi16(p, ones));
            }
            let i = _mm256_add_epi32(s[0], s[1]);
            let d = _mm256_mul_ps(dw, _mm256_set1_ps(f32_at(y.add(QK))));
            acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(i), acc[t]);
        }
    }
    store(&acc, out);
}

/// Writes the tile's accumulators out.
#[inline(always)]
unsafe fn store<const T: usize>(acc: &[__m256; T], out: &mut [[f32; GROUP]; TILE_T]) {
    for t in 0..T {
        _mm256_storeu_ps(out[t].as_mut_ptr(), acc[t]);
    }
}
/// A super-block's closing step: acc = fma(d_w * d_a, (f32) isum, acc) per token, d_w the
/// 8 rows' f16 scales at `blk`, d_a the f32 at the head of the token's activation block.
#[inline(always)]
unsafe fn close_block<const T: usize>(
    acc: &mut [__m256; T],
    blk: *const u8,
    isum: &[__m256i; T],
    ya: impl Fn(usize) -> *const u8,
) {
    let dw = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
    for t in 0..T {
        let da = _mm256_set1_ps(f32_at(ya(t)));
        acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, da), _mm256_cvtepi32_ps(isum[t]), acc[t]);
    }
}

#[inline(always)]
unsafe fn load16_u8_to_i16(p: *const u8) -> __m256i {
    _mm256_cvtepu8_epi16(_mm_loadu_si128(p as *const __m128i))
}
/// The 8 bytes at `p` (one per row) in every 128-bit lane, for a row-spreading shuffle.
#[inline(always)]
pub(crate) unsafe fn bcast8(p: *const u8) -> __m256i {
    _mm256_set1_epi64x(std::ptr::read_unaligned(p as *const i64))
}
/// Shuffle control: lane r (of 8) gets byte r four times (`bcast8` puts all 8 bytes in
/// both 128-bit halves, so the in-lane shuffle reaches rows 4..8 from the high half).
pub(crate) const SPREAD4: [i8; 32] = {
    let mut c = [0i8; 32];
    let mut i = 0;
    while i < 32 {
        c[i] = (i / 4) as i8;
        i += 1;
    }
    c
};
/// Lane r gets byte r of `p`'s 8 as the i16 pair (sc, sc), zero-extended.
#[inline(always)]
unsafe fn pairs_u8(p: *const u8) -> __m256i {
    _mm256_shuffle_epi8(
        bcast8(p),
        std::mem::transmute::<[i8; 32], __m256i>(SPREAD2_U),
    )
}
/// Shuffle control: lane r gets (byte r, 0, byte r, 0), the zero-extended i16 pair.
pub(crate) const SPREAD2_U: [i8; 32] = {
    let mut c = SPREAD4;
    let mut i = 1;
    while i < 32 {
        c[i] = -128; // index 0x80 writes zero
        i += 2;
    }
    c
};
/// Lane r gets byte r of `p`'s 8 as the i16 pair (sc, sc), sign-extended: each i16 is
/// built as 257 * sc and shifted right arithmetically by 8.
#[inline(always)]
unsafe fn pairs_i8(p: *const u8) -> __m256i {
    let c = std::mem::transmute::<[i8; 32], __m256i>(SPREAD4);
    _mm256_srai_epi16::<8>(_mm256_shuffle_epi8(bcast8(p), c))
}

/// Q5_K's 5th bit of sub-block j's element, at bit 4 of each byte: bit j of the qh byte
/// (16-bit shifts: bit 4 of either byte comes from the same byte for every j).
#[inline(always)]
pub(crate) unsafe fn k5_bit4(h: __m256i, j: usize) -> __m256i {
    let v = match j {
        0 => _mm256_slli_epi16::<4>(h),
        1 => _mm256_slli_epi16::<3>(h),
        2 => _mm256_slli_epi16::<2>(h),
        3 => _mm256_slli_epi16::<1>(h),
        4 => h,
        5 => _mm256_srli_epi16::<1>(h),
        6 => _mm256_srli_epi16::<2>(h),
        _ => _mm256_srli_epi16::<3>(h),
    };
    _mm256_and_si256(v, _mm256_set1_epi8(0x10))
}

/// Q4_K, and Q5_K (`HB`: the 5th bits at `K5_QH` ORed into the nibbles).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_k<const HB: bool, const T: usize>(
    nb: usize,
    w: *const u8,
    a: *const u8,
    stride: usize,
    out: &mut [[f32; GROUP]; TILE_T],
) {
    let m4 = _mm256_set1_epi8(0x0F);
    let bb = if HB { Kind::Q5_K } else { Kind::Q4_K }.block_bytes();
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        let blk = w.add(b * bb);
        let ya = |t: usize| a.add(t * stride + b * A8K_BLOCK);
        let mut isum = [_mm256_setzero_si256(); T];
        for j in 0..8 {
            if j % 2 == 0 {
                prefetch_part::<T>(blk, bb, j / 2, 4);
            }
            // Sub-block j: nibbles (low for even j, high for odd) of the 8 vectors of pair j/2.
            let q = blk.add(K4_QS + 256 * (j / 2));
            let mut wv = [_mm256_setzero_si256(); 8];
            for c in 0..8 {
                let v = _mm256_loadu_si256(q.add(32 * c) as *const __m256i);
                wv[c] = if j % 2 == 0 {
                    _mm256_and_si256(v, m4)
                } else {
                    _mm256_and_si256(_mm256_srli_epi16(v, 4), m4)
                };
                if HB {
                    let h = _mm256_loadu_si256(blk.add(K5_QH + 32 * c) as *const __m256i);
                    wv[c] = _mm256_or_si256(wv[c], k5_bit4(h, j));
                }
            }
            let scv = pairs_u8(blk.add(K4_SC + 8 * j));
            for t in 0..T {
                let y = ya(t).add(4 + 32 * j);
                let d = if HB {
                    // u5 x i8: 4 pair sums per half, 8 * 31 * 127 = 31496 < 2^15.
                    _mm256_add_epi32(
                        _mm256_madd_epi16(sum4(&wv[..4], y), scv),
                        _mm256_madd_epi16(sum4(&wv[4..], y.add(16)), scv),
                    )
                } else {
                    // 8 u4 x i8 pair sums: |.| <= 8 * 2 * 15 * 127 = 30480, no i16 overflow.
                    let s = _mm256_add_epi16(sum4(&wv[..4], y), sum4(&wv[4..], y.add(16)));
                    _mm256_madd_epi16(s, scv)
                };
                isum[t] = _mm256_add_epi32(isum[t], d);
            }
        }
        let dw = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
        let dmw = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(16) as *const __m128i));
        for t in 0..T {
            let y = ya(t);
            let mut msum = _mm256_setzero_si256();
            for p in 0..4 {
                let mv = load16_u8_to_i16(blk.add(K4_MIN + 16 * p));
                msum = _mm256_add_epi32(msum, _mm256_madd_epi16(mv, bcast4(y.add(260 + 4 * p))));
            }
            let da = _mm256_set1_ps(f32_at(y));
            acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, da), _mm256_cvtepi32_ps(isum[t]), acc[t]);
            acc[t] = _mm256_fnmadd_ps(_mm256_mul_ps(dmw, da), _mm256_cvtepi32_ps(msum), acc[t]);
        }
    }
    store(&acc, out);
}

/// Q3_K decoded vector c of group g: its low 2 bits from `lq`, its 3rd bit (bit
/// c + 4(g%2) of `hq`) to bit 2 (16-bit shifts: the kept bits come from the same byte).
#[inline(always)]
pub(crate) unsafe fn k3_vec(lq: __m256i, hq: __m256i, g: usize, c: usize) -> __m256i {
    let low = match c {
        0 => lq,
        1 => _mm256_srli_epi16::<2>(lq),
        2 => _mm256_srli_epi16::<4>(lq),
        _ => _mm256_srli_epi16::<6>(lq),
    };
    let high = match c + 4 * (g % 2) {
        0 => _mm256_slli_epi16::<2>(hq),
        1 => _mm256_slli_epi16::<1>(hq),
        2 => hq,
        3 => _mm256_srli_epi16::<1>(hq),
        4 => _mm256_srli_epi16::<2>(hq),
        5 => _mm256_srli_epi16::<3>(hq),
        6 => _mm256_srli_epi16::<4>(hq),
        _ => _mm256_srli_epi16::<5>(hq),
    };
    _mm256_or_si256(
        _mm256_and_si256(low, _mm256_set1_epi8(3)),
        _mm256_and_si256(high, _mm256_set1_epi8(4)),
    )
}

/// The IQ4 levels, in both 128-bit lanes, for `pshufb`.
#[inline(always)]
unsafe fn iq4_lut() -> __m256i {
    _mm256_broadcastsi128_si256(_mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i))
}

/// IQ4_NL: the nibbles looked up as signed levels, then Q8_0's sign trick (|w| * sign(a, w)
/// pairs fit i16) against the token's A8 block.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn iq4_nl<const T: usize>(
    nb: usize,
    w: *const u8,
    a: *const u8,
    stride: usize,
    out: &mut [[f32; GROUP]; TILE_T],
) {
    let (ones, m4, lut) = (_mm256_set1_epi16(1), _mm256_set1_epi8(0x0F), iq4_lut());
    let bb = Kind::IQ4_NL.block_bytes();
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        let blk = w.add(b * bb);
        prefetch_ahead::<T>(blk, bb);
        let dw = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
        // Vector j < 4: elements 4j..4j+4 of each row (low nibbles); j >= 4: 16 + 4(j-4)...
        let mut wv = [_mm256_setzero_si256(); 8];
        for j in 0..4 {
            let v = _mm256_loadu_si256(blk.add(16 + 32 * j) as *const __m256i);
            wv[j] = _mm256_shuffle_epi8(lut, _mm256_and_si256(v, m4));
            wv[4 + j] = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4));
        }
        let aw = wv.map(|v| _mm256_abs_epi8(v));
        for t in 0..T {
            let y = a.add(t * stride + b * A8_BLOCK);
            let mut s = [_mm256_setzero_si256(); 2];
            for j in 0..8 {
                let ya = y.add(if j < 4 { 4 * j } else { 16 + 4 * (j - 4) });
                let p = _mm256_maddubs_epi16(aw[j], _mm256_sign_epi8(bcast4(ya), wv[j]));
                s[j & 1] = _mm256_add_epi32(s[j & 1], _mm256_madd_epi16(p, ones));
            }
            let i = _mm256_add_epi32(s[0], s[1]);
            let d = _mm256_mul_ps(dw, _mm256_set1_ps(f32_at(y.add(QK))));
            acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(i), acc[t]);
        }
    }
    store(&acc, out);
}

/// IQ4_XS: per 32-element sub-block the IQ4_NL sign-trick pair sums, each scaled by the
/// sub-block's signed scale through `madd` with (sc, sc) pairs.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn iq4_xs<const T: usize>(
    nb: usize,
    w: *const u8,
    a: *const u8,
    stride: usize,
    out: &mut [[f32; GROUP]; TILE_T],
) {
    let (m4, lut) = (_mm256_set1_epi8(0x0F), iq4_lut());
    let bb = Kind::IQ4_XS.block_bytes();
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        let blk = w.add(b * bb);
        let ya = |t: usize| a.add(t * stride + b * A8K_BLOCK);
        let mut isum = [_mm256_setzero_si256(); T];
        for j in 0..8 {
            if j % 2 == 0 {
                prefetch_part::<T>(blk, bb, j / 2, 4);
            }
            let q = blk.add(KX_QS + 128 * j);
            let mut wv = [_mm256_setzero_si256(); 8];
            for c in 0..4 {
                let v = _mm256_loadu_si256(q.add(32 * c) as *const __m256i);
                wv[c] = _mm256_shuffle_epi8(lut, _mm256_and_si256(v, m4));
                wv[4 + c] =
                    _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4));
            }
            let aw = wv.map(|v| _mm256_abs_epi8(v));
            let scv = pairs_i8(blk.add(KX_SC + 8 * j));
            for t in 0..T {
                let y = ya(t).add(4 + 32 * j);
                let mut s = [_mm256_setzero_si256(); 2];
                for c in 0..8 {
                    let yc = y.add(if c < 4 { 4 * c } else { 16 + 4 * (c - 4) });
                    let p = _mm256_maddubs_epi16(aw[c], _mm256_sign_epi8(bcast4(yc), wv[c]));
                    s[c & 1] = _mm256_add_epi32(s[c & 1], _mm256_madd_epi16(p, scv));
                }
                isum[t] = _mm256_add_epi32(isum[t], _mm256_add_epi32(s[0], s[1]));
            }
        }
        close_block(&mut acc, blk, &isum, ya);
    }
    store(&acc, out);
}

/// Q2_K: per 16-element group, u2 x i8 sums times the group's 4-bit scale; the mins times
/// (16 sum, 16 sum) pairs into their own sum, a multiple of 32 (exact when shifted back).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q2_k<const T: usize>(
    nb: usize,
    w: *const u8,
    a: *const u8,
    stride: usize,
    out: &mut [[f32; GROUP]; TILE_T],
) {
    let bb = Kind::Q2_K.block_bytes();
    let (m3, m15) = (_mm256_set1_epi8(3), _mm256_set1_epi16(15));
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        let blk = w.add(b * bb);
        let ya = |t: usize| a.add(t * stride + b * A8K_BLOCK);
        let mut isum = [_mm256_setzero_si256(); T];
        let mut msum = [_mm256_setzero_si256(); T];
        for g in 0..16 {
            if g % 4 == 0 {
                prefetch_part::<T>(blk, bb, g / 4, 4);
            }
            let lq = _mm256_loadu_si256(blk.add(K2_Q + 32 * g) as *const __m256i);
            let wv = [
                _mm256_and_si256(lq, m3),
                _mm256_and_si256(_mm256_srli_epi16::<2>(lq), m3),
                _mm256_and_si256(_mm256_srli_epi16::<4>(lq), m3),
                _mm256_and_si256(_mm256_srli_epi16::<6>(lq), m3),
            ];
            let sm = pairs_u8(blk.add(K2_SC + 8 * g));
            let (scv, mv) = (_mm256_and_si256(sm, m15), _mm256_srli_epi16::<4>(sm));
            for t in 0..T {
                let y = ya(t);
                let s = sum4(&wv, y.add(4 + 16 * g));
                isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(s, scv));
                let m = _mm256_madd_epi16(mv, bcast4(y.add(276 + 4 * g)));
                msum[t] = _mm256_add_epi32(msum[t], m);
            }
        }
        let dw = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
        let dmw = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(16) as *const __m128i));
        for t in 0..T {
            let da = _mm256_set1_ps(f32_at(ya(t)));
            let m = _mm256_cvtepi32_ps(_mm256_srai_epi32::<5>(msum[t]));
            acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, da), _mm256_cvtepi32_ps(isum[t]), acc[t]);
            acc[t] = _mm256_fnmadd_ps(_mm256_mul_ps(dmw, da), m, acc[t]);
        }
    }
    store(&acc, out);
}

/// Q3_K: the Q6_K kernel's sums on u3 values, the offset 4 * sc * sum(a) being an eighth
/// of the (16 sum, 16 sum) madd (exact: a multiple of 8).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q3_k<const T: usize>(
    nb: usize,
    w: *const u8,
    a: *const u8,
    stride: usize,
    out: &mut [[f32; GROUP]; TILE_T],
) {
    let bb = Kind::Q3_K.block_bytes();
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        let blk = w.add(b * bb);
        let ya = |t: usize| a.add(t * stride + b * A8K_BLOCK);
        let mut isum = [_mm256_setzero_si256(); T];
        for g in 0..16 {
            if g % 4 == 0 {
                prefetch_part::<T>(blk, bb, g / 4, 4);
            }
            let lq = _mm256_loadu_si256(blk.add(K3_Q + 32 * g) as *const __m256i);
            let hq = _mm256_loadu_si256(blk.add(K3_H + 32 * (g / 2)) as *const __m256i);
            let wv: [__m256i; 4] = std::array::from_fn(|c| k3_vec(lq, hq, g, c));
            let scv = pairs_i8(blk.add(K3_SC + 8 * g));
            for t in 0..T {
                let y = ya(t);
                // u3 x i8: 16 products of at most 7 * 127 per lane, far inside i16.
                let s = sum4(&wv, y.add(4 + 16 * g));
                let off = _mm256_madd_epi16(scv, bcast4(y.add(276 + 4 * g)));
                let d = _mm256_sub_epi32(_mm256_madd_epi16(s, scv), _mm256_srai_epi32::<3>(off));
                isum[t] = _mm256_add_epi32(isum[t], d);
            }
        }
        close_block(&mut acc, blk, &isum, ya);
    }
    store(&acc, out);
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_k<const T: usize>(
    nb: usize,
    w: *const u8,
    a: *const u8,
    stride: usize,
    out: &mut [[f32; GROUP]; TILE_T],
) {
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        let blk = w.add(b * Kind::Q6_K.block_bytes());
        let ya = |t: usize| a.add(t * stride + b * A8K_BLOCK);
        let mut isum = [_mm256_setzero_si256(); T];
        let m4 = _mm256_set1_epi8(0x0F);
        let m30 = _mm256_set1_epi8(0x30);
        for g in 0..16 {
            if g % 4 == 0 {
                prefetch_part::<T>(blk, Kind::Q6_K.block_bytes(), g / 4, 4);
            }
            let q = blk.add(K6_QS + 96 * g);
            let l0 = _mm256_loadu_si256(q as *const __m256i);
            let l1 = _mm256_loadu_si256(q.add(32) as *const __m256i);
            let hb = _mm256_loadu_si256(q.add(64) as *const __m256i);
            // 16-bit shifts: the bits a byte gets from its neighbour are masked off.
            let wv = [
                _mm256_or_si256(
                    _mm256_and_si256(l0, m4),
                    _mm256_and_si256(_mm256_slli_epi16::<4>(hb), m30),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(l1, m4),
                    _mm256_and_si256(_mm256_slli_epi16::<2>(hb), m30),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(l0), m4),
                    _mm256_and_si256(hb, m30),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(l1), m4),
                    _mm256_and_si256(_mm256_srli_epi16::<2>(hb), m30),
                ),
            ];
            let scv = pairs_i8(blk.add(K6_SC + 8 * g));
            for t in 0..T {
                let y = ya(t);
                let yq = y.add(4 + 16 * g);
                // u6 x i8 pairs: two sums of pairs stay within i16 (2 * 2 * 63 * 127 = 32004).
                let s01 = _mm256_add_epi16(
                    _mm256_maddubs_epi16(wv[0], bcast4(yq)),
                    _mm256_maddubs_epi16(wv[1], bcast4(yq.add(4))),
                );
                let s23 = _mm256_add_epi16(
                    _mm256_maddubs_epi16(wv[2], bcast4(yq.add(8))),
                    _mm256_maddubs_epi16(wv[3], bcast4(yq.add(12))),
                );
                let d = _mm256_add_epi32(_mm256_madd_epi16(s01, scv), _mm256_madd_epi16(s23, scv));
                // The -32 offset: sc * 32 * sum(a) from the (16 sum, 16 sum) pair.
                let off = _mm256_madd_epi16(scv, bcast4(y.add(276 + 4 * g)));
                isum[t] = _mm256_add_epi32(isum[t], _mm256_sub_epi32(d, off));
            }
        }
        close_block(&mut acc, blk, &isum, ya);
    }
    store(&acc, out);
}
