//! Quantized matmul on weights repacked at load into 8-row interleaved groups (after the idea of
//! ggml-cpu's repack.cpp `block_q4_0x8`; our own layout and kernels).
//!
//! Why: the plain-layout kernels dot one (weight row, token) pair per 8-lane accumulator, so every
//! 32-element block pays a horizontal integer reduction, an int->float conversion, a scale
//! product and an FMA per pair. Here one 32-bit lane holds one weight row: 4 consecutive quants
//! of each of 8 rows fill a 256-bit register, the token's 4 matching activation bytes are
//! broadcast to every lane, and `maddubs` + `madd` leave each row's partial dot in its own lane.
//! The per-block float work (conversion, scale, FMA) is then shared by 8 rows, and the decoded
//! weights of a block stay in registers while up to `TILE_T` tokens pass over them.
//!
//! Layout of a prepared matrix: rows are padded to a multiple of 8 (zero rows, never written
//! out) and cut into groups of 8; group g holds its `k / 32` blocks one after the other. Block:
//!
//! ```text
//! Q4_0x8 (144 bytes, as 8 plain blocks): d[8] f16 @0 (row r's scale in slot r),
//!         then 4 vectors of 32 bytes @16 + 32j: bytes 4r..4r+4 of vector j are the plain
//!         qs[4j..4j+4] of row r (low nibbles: elements 4j..4j+4, high: 16+4j..16+4j+4).
//! Q8_0x8 (272 bytes, as 8 plain blocks): d[8] f16 @0, then 8 vectors of 32 bytes @16 + 32j:
//!         bytes 4r..4r+4 of vector j are row r's quants 4j..4j+4.
//! ```
//!
//! Activations are quantized once per token row exactly as the plain path's Q8_0 (same rounding,
//! d rounded to f16), then stored as `A8` rows: quants (32 per block), d as f32, and the block's
//! integer sum of quants (Q4_0's nibbles are used unsigned: sum(q_w * a) = sum(u_w * a) - 8 sum(a),
//! so no sign trick is needed and 8 `maddubs` results add up in i16 without overflow:
//! 8 * 2 * 15 * 127 = 30480 < 32767).
//!
//! Per output, per block: acc = fma(d_w * d_a, (f32) integer dot, acc), one running accumulator
//! over the blocks in order. The plain-layout dots do the same terms in another order (8 lanes
//! summed at the end), so the results differ from them by float rounding only; they are identical
//! bit for bit whatever the thread count, tile size or chunking (each output is one lane of one
//! kernel call whose inputs do not depend on them). `scalar` below is the twin of the SIMD
//! kernels on this layout, with the same operation order (tests: bitwise equal).

use super::{CpuBackend, SyncPtr, MIN_PARALLEL_MACS};
use crate::dot::layout::{Q4_0_BYTES, Q8_0_BYTES, QK};
use crate::Isa;
use cria_core::tensor::AlignedBuf;
use cria_core::{DType, Tensor};
use std::sync::Arc;

/// Rows per interleaved group (one per 32-bit lane of a 256-bit register).
pub const GROUP: usize = 8;
/// Tokens per kernel call: their accumulators plus the 8 decoded weight vectors of a block fill
/// the 16 ymm registers.
pub const TILE_T: usize = 4;
/// Bytes of an A8 activation block: 32 quants + d (f32) + sum (i32).
pub const A8_BLOCK: usize = QK + 8;
/// Weight bytes per work item during prompt processing: stays in L2 while all tokens pass.
const CHUNK_BYTES: usize = 32 * 1024;

/// The weight types this module repacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Q4_0,
    Q8_0,
}

impl Kind {
    pub fn of(t: DType) -> Option<Kind> {
        match t {
            DType::Q4_0 => Some(Kind::Q4_0),
            DType::Q8_0 => Some(Kind::Q8_0),
            _ => None,
        }
    }
    /// Bytes of one 8-row block.
    pub const fn block_bytes(self) -> usize {
        match self {
            Kind::Q4_0 => 16 + 128,
            Kind::Q8_0 => 16 + 256,
        }
    }
    const fn plain_bytes(self) -> usize {
        match self {
            Kind::Q4_0 => Q4_0_BYTES,
            Kind::Q8_0 => Q8_0_BYTES,
        }
    }
}

/// A matrix in the interleaved layout (see the module doc).
pub struct Packed {
    pub kind: Kind,
    /// Rows (unpadded) and columns.
    pub n: usize,
    pub k: usize,
    pub buf: AlignedBuf,
}

impl Packed {
    pub fn groups(&self) -> usize {
        self.n.div_ceil(GROUP)
    }
    pub fn group_bytes(&self) -> usize {
        self.k / QK * self.kind.block_bytes()
    }
    fn group(&self, g: usize) -> &[u8] {
        let gb = self.group_bytes();
        &self.buf.as_slice()[g * gb..(g + 1) * gb]
    }

    /// Repacks `n` plain rows of `k` elements (`w`: the file's bytes).
    pub fn new(kind: Kind, n: usize, k: usize, w: &[u8]) -> Packed {
        assert!(k % QK == 0, "repack: k={k} is not whole blocks");
        let nb = k / QK;
        let (pb, bb) = (kind.plain_bytes(), kind.block_bytes());
        assert_eq!(w.len(), n * nb * pb, "repack: wrong byte count");
        let groups = n.div_ceil(GROUP);
        let mut buf = AlignedBuf::zeroed(groups * nb * bb);
        let out = buf.as_mut_slice();
        let vecs = (bb - 16) / 32;
        for g in 0..groups {
            for b in 0..nb {
                let o = &mut out[(g * nb + b) * bb..][..bb];
                for r in 0..GROUP.min(n - g * GROUP) {
                    let src = &w[((g * GROUP + r) * nb + b) * pb..][..pb];
                    o[2 * r..2 * r + 2].copy_from_slice(&src[0..2]);
                    for j in 0..vecs {
                        o[16 + 32 * j + 4 * r..][..4].copy_from_slice(&src[2 + 4 * j..][..4]);
                    }
                }
            }
        }
        Packed { kind, n, k, buf }
    }
}

/// The packed form of `w`, if `prepare` made one.
pub(crate) fn packed(w: &Tensor) -> Option<&Packed> {
    w.prepared.as_ref()?.downcast_ref::<Packed>()
}

/// `Backend::prepare` for quantized types: repack when the AVX2 kernels can use it.
pub(crate) fn prepare(b: &CpuBackend, mut w: Tensor) -> Tensor {
    let Some(kind) = Kind::of(w.dtype) else {
        return w;
    };
    if b.isa != Isa::Avx2 || w.cols() % QK != 0 || w.rows() == 0 {
        return w;
    }
    let p = Packed::new(kind, w.rows(), w.cols(), w.bytes());
    w.prepared = Some(Arc::new(p));
    w
}

/// Quantizes one f32 row into A8 blocks (`out.len() == x.len() / 32 * A8_BLOCK`), through the
/// ISA's Q8_0 converter so the quants and d are exactly the plain path's.
pub fn quantize_a8(isa: Isa, x: &[f32], out: &mut [u8]) {
    let nb = x.len() / QK;
    assert!(
        x.len() % QK == 0 && out.len() == nb * A8_BLOCK,
        "quantize_a8: bad sizes"
    );
    let kern = crate::dot::kernel(isa, DType::Q4_0).expect("Q4_0 kernel");
    let mut tmp = [0u8; Q8_0_BYTES * 8];
    // Eight blocks at a time through the Q8_0 converter (blocks are independent).
    for (xs, os) in x.chunks(QK * 8).zip(out.chunks_mut(A8_BLOCK * 8)) {
        let m = xs.len() / QK;
        (kern.from_float)(xs, &mut tmp[..m * Q8_0_BYTES]);
        for i in 0..m {
            let src = &tmp[i * Q8_0_BYTES..][..Q8_0_BYTES];
            let o = &mut os[i * A8_BLOCK..][..A8_BLOCK];
            o[..QK].copy_from_slice(&src[2..]);
            let d = half::f16::from_le_bytes([src[0], src[1]]).to_f32();
            let s: i32 = src[2..].iter().map(|&q| q as i8 as i32).sum();
            o[QK..QK + 4].copy_from_slice(&d.to_le_bytes());
            o[QK + 4..].copy_from_slice(&s.to_le_bytes());
        }
    }
}

/// The kernel signature: `nb` blocks of one group (`w`) against `cols` A8 rows (`a`, `stride`
/// bytes apart); `out[c][r]` = row r . token c.
pub type Tile = fn(
    kind: Kind,
    nb: usize,
    w: &[u8],
    a: &[u8],
    stride: usize,
    cols: usize,
    out: &mut [[f32; GROUP]; TILE_T],
);

/// The scalar twin of the SIMD tile kernels: same layout, same per-lane operation order.
pub fn tile_scalar(
    kind: Kind,
    nb: usize,
    w: &[u8],
    a: &[u8],
    stride: usize,
    cols: usize,
    out: &mut [[f32; GROUP]; TILE_T],
) {
    let bb = kind.block_bytes();
    for c in 0..cols {
        let mut acc = [0f32; GROUP];
        for b in 0..nb {
            let blk = &w[b * bb..][..bb];
            let ab = &a[c * stride + b * A8_BLOCK..][..A8_BLOCK];
            let q = |i: usize| ab[i] as i8 as i32;
            let da = f32::from_le_bytes(ab[QK..QK + 4].try_into().unwrap());
            let sa = i32::from_le_bytes(ab[QK + 4..].try_into().unwrap());
            for (r, acc) in acc.iter_mut().enumerate() {
                let dw = half::f16::from_le_bytes([blk[2 * r], blk[2 * r + 1]]).to_f32();
                let mut s = 0i32;
                match kind {
                    Kind::Q4_0 => {
                        for j in 0..4 {
                            for e in 0..4 {
                                let byte = blk[16 + 32 * j + 4 * r + e] as i32;
                                s += (byte & 15) * q(4 * j + e) + (byte >> 4) * q(16 + 4 * j + e);
                            }
                        }
                        s -= 8 * sa;
                    }
                    Kind::Q8_0 => {
                        for j in 0..8 {
                            for e in 0..4 {
                                s += blk[16 + 32 * j + 4 * r + e] as i8 as i32 * q(4 * j + e);
                            }
                        }
                    }
                }
                *acc = (dw * da).mul_add(s as f32, *acc);
            }
        }
        out[c] = acc;
    }
}

fn tile_fn(isa: Isa) -> Tile {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => avx2::tile,
        _ => tile_scalar,
    }
}

/// The tile kernel `isa` uses (tests).
pub fn tile_for(isa: Isa) -> Option<Tile> {
    isa.available().then(|| tile_fn(isa))
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Kind, A8_BLOCK, GROUP, QK, TILE_T};
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
                && stride >= nb * A8_BLOCK
                && a.len() >= (cols - 1) * stride + nb * A8_BLOCK,
            "gemm_q tile: bad arguments"
        );
        let (w, a) = (w.as_ptr(), a.as_ptr());
        // SAFETY: this function is only handed out for Isa::Avx2, which exists only after
        // Isa::available() confirmed AVX2/FMA/F16C; the reads stay inside `w` (nb blocks) and
        // `a` (cols rows of nb A8 blocks), checked above.
        unsafe {
            match (kind, cols) {
                (Kind::Q4_0, 1) => q4_0::<1>(nb, w, a, stride, out),
                (Kind::Q4_0, 2) => q4_0::<2>(nb, w, a, stride, out),
                (Kind::Q4_0, 3) => q4_0::<3>(nb, w, a, stride, out),
                (Kind::Q4_0, _) => q4_0::<4>(nb, w, a, stride, out),
                (Kind::Q8_0, 1) => q8_0::<1>(nb, w, a, stride, out),
                (Kind::Q8_0, 2) => q8_0::<2>(nb, w, a, stride, out),
                (Kind::Q8_0, 3) => q8_0::<3>(nb, w, a, stride, out),
                (Kind::Q8_0, _) => q8_0::<4>(nb, w, a, stride, out),
            }
        }
    }

    #[inline(always)]
    unsafe fn bcast4(p: *const u8) -> __m256i {
        _mm256_set1_epi32(std::ptr::read_unaligned(p as *const i32))
    }
    #[inline(always)]
    unsafe fn f32_at(p: *const u8) -> f32 {
        std::ptr::read_unaligned(p as *const f32)
    }
    #[inline(always)]
    unsafe fn i32_at(p: *const u8) -> i32 {
        std::ptr::read_unaligned(p as *const i32)
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
                let s0 = _mm256_add_epi16(
                    _mm256_maddubs_epi16(lo[0], bcast4(y)),
                    _mm256_maddubs_epi16(lo[1], bcast4(y.add(4))),
                );
                let s1 = _mm256_add_epi16(
                    _mm256_maddubs_epi16(lo[2], bcast4(y.add(8))),
                    _mm256_maddubs_epi16(lo[3], bcast4(y.add(12))),
                );
                let s2 = _mm256_add_epi16(
                    _mm256_maddubs_epi16(hi[0], bcast4(y.add(16))),
                    _mm256_maddubs_epi16(hi[1], bcast4(y.add(20))),
                );
                let s3 = _mm256_add_epi16(
                    _mm256_maddubs_epi16(hi[2], bcast4(y.add(24))),
                    _mm256_maddubs_epi16(hi[3], bcast4(y.add(28))),
                );
                let s = _mm256_add_epi16(_mm256_add_epi16(s0, s1), _mm256_add_epi16(s2, s3));
                let i = _mm256_sub_epi32(
                    _mm256_madd_epi16(s, ones),
                    _mm256_set1_epi32(8 * i32_at(y.add(QK + 4))),
                );
                let d = _mm256_mul_ps(dw, _mm256_set1_ps(f32_at(y.add(QK))));
                acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(i), acc[t]);
            }
        }
        for t in 0..T {
            _mm256_storeu_ps(out[t].as_mut_ptr(), acc[t]);
        }
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
        for t in 0..T {
            _mm256_storeu_ps(out[t].as_mut_ptr(), acc[t]);
        }
    }
}

/// out (t, n) = x (t, k) . w^T for a packed `w`.
pub(crate) fn matmul(b: &CpuBackend, out: &mut [f32], x: &[f32], p: &Packed, t: usize) {
    let (n, k) = (p.n, p.k);
    let nb = k / QK;
    let ab = nb * A8_BLOCK;
    let mut act = b.act.lock().unwrap_or_else(|e| e.into_inner());
    if act.len() < t * ab {
        act.resize(t * ab, 0);
    }
    for (xr, ar) in x.chunks_exact(k).zip(act.chunks_exact_mut(ab)).take(t) {
        quantize_a8(b.isa, xr, ar);
    }
    let a = &act[..t * ab];
    let tile = tile_fn(b.isa);
    let groups = p.groups();
    let gb = p.group_bytes();
    // Groups per work item: an even number (16 rows: with a 64-byte aligned `out`, no cache line
    // of a token's output is written by two items). One token: a few large contiguous ranges per
    // thread, each streamed from memory once. Several: about CHUNK_BYTES of weights, which stay
    // in L2 while every token passes over them.
    let per_item = if t == 1 {
        groups.div_ceil(b.threads * 4)
    } else {
        CHUNK_BYTES / gb.max(1)
    };
    let per_item = (per_item.max(2).div_ceil(2) * 2).min(groups);
    let n_items = groups.div_ceil(per_item);
    let outp = SyncPtr(out.as_mut_ptr());
    let job = |item: usize, _tid: usize| {
        let (g0, g1) = (item * per_item, ((item + 1) * per_item).min(groups));
        let mut res = [[0f32; GROUP]; TILE_T];
        let mut i = 0;
        while i < t {
            let cols = TILE_T.min(t - i);
            for g in g0..g1 {
                tile(p.kind, nb, p.group(g), &a[i * ab..], ab, cols, &mut res);
                let (r0, rows) = (g * GROUP, GROUP.min(n - g * GROUP));
                for (c, rc) in res.iter().enumerate().take(cols) {
                    // SAFETY: token i + c < t and rows r0..r0+rows < n: inside `out` (t * n,
                    // checked by the caller); this (token, row) belongs to this item alone, and
                    // the pool joins before `out`'s borrow ends.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            rc.as_ptr(),
                            outp.get().add((i + c) * n + r0),
                            rows,
                        )
                    };
                }
            }
            i += cols;
        }
    };
    if b.threads == 1 || n_items == 1 || n * k * t < MIN_PARALLEL_MACS {
        (0..n_items).for_each(|c| job(c, 0));
    } else {
        b.pool.for_each(n_items, &job);
    }
}
