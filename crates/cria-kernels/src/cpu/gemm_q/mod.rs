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
//! Q4_1x8 (160 bytes): d[8] f16 @0, m[8] f16 @16, nibble vectors as Q4_0's @32.
//! Q5_0x8 (176 bytes): as Q4_0x8, then @144 one vector of the 5th bits: bit v of byte 4r+e is
//!         the 5th bit of row r's element 4v+e (v = 0..8: the element of byte 4r+e in the v-th
//!         decoded vector, low nibbles of vectors 0..4 first), so one shift and one mask per
//!         decoded vector put it in place.
//! Q5_1x8 (192 bytes): d[8] @0, m[8] @16, nibbles @32, 5th bits @160.
//! Q8_0x8 (272 bytes, as 8 plain blocks): d[8] f16 @0, then 8 vectors of 32 bytes @16 + 32j:
//!         bytes 4r..4r+4 of vector j are row r's quants 4j..4j+4.
//! IQ4_NLx8 (144 bytes): Q4_0x8's layout; the nibbles index `KVALUES_IQ4NL`.
//! IQ4_XSx8 (1104 bytes, 8 plain blocks take 1088): d[8] f16 @0, sub-block scales @16 (`KX_SC`):
//!         for sub-block j, 8 bytes (ls_j - 32 of row r at r, i8), quants @80 (`KX_QS`): for
//!         sub-block j, 4 vectors of 32 bytes: bytes 4r..4r+4 of vector c are row r's
//!         qs[16j+4c..16j+4c+4] (low nibbles: elements 32j+4c.., high: 32j+16+4c..).
//!         The IQ4 kernels look the nibbles up (`pshufb`) as levels + 128 (unsigned, for
//!         `vpdpbusd`) and subtract 128 * sum(a), or (AVX2) as signed levels with Q8_0's sign
//!         trick.
//! Q2_Kx8 (672 bytes, as 8 plain blocks): d[8] f16 @0, dmin[8] f16 @16, scales @32 (`K2_SC`):
//!         per 16-element group g, 8 bytes (the file's byte, scale | min << 4, of row r at r),
//!         quants @160 (`K2_Q`): per group g, 32 bytes laid out as Q3_Kx8's low bits.
//! Q3_Kx8 (912 bytes, 8 plain blocks take 880): d[8] f16 @0, scales @16 (`K3_SC`): for
//!         16-element group g, 8 bytes (sc_g - 32 of row r at r, i8), low bits @144 (`K3_Q`):
//!         per group g, 32 bytes: bits 2c..2c+2 of byte 4r+e are the low 2 bits of row r's
//!         element 16g+4c+e (decoded vector c = 0..4), high bits @656 (`K3_H`): per group pair,
//!         32 bytes: bit c + 4(g%2) of byte 4r+e is that element's 3rd bit. The values are
//!         u = q + 4 * hbit in 0..8, the weight u - 4 (ggml's "minus 4 unless the hmask bit"),
//!         so Q3_K runs the Q6_K kernel's sums with a 4 * sum(a) offset instead of 32.
//! Q4_Kx8 (1184 bytes for 256 elements, 8 plain blocks take 1152): d[8] f16 @0, dmin[8] f16 @16,
//!         sub-block scales @32 (`K4_SC`): for sub-block j, 8 bytes (sc_j of row r at r),
//!         mins @96 (`K4_MIN`): for sub-block pair p, 16 bytes (m_2p, m_2p+1 of row r at 2r,
//!         2r+1), quants @160 (`K4_QS`): for pair p, 8 vectors of 32 bytes: bytes 4r..4r+4 of
//!         vector c are the plain qs[32p+4c..32p+4c+4] of row r (low nibbles: sub-block 2p,
//!         high: 2p+1). The only bytes beyond the file's are the 6-bit scales and mins widened
//!         to one byte each (+2.8%).
//! Q5_Kx8 (1440 bytes, 8 plain blocks take 1408): a Q4_Kx8 block (the low 4 bits as its
//!         nibbles), then @1184 (`K5_QH`) the 8 rows' qh as 8 vectors of 32 bytes: bytes
//!         4r..4r+4 of vector c are row r's qh[4c..4c+4], so byte e of a nibble vector c of pair
//!         p has its 5th bit at bit 2p (low nibble) or 2p+1 (high) of the same byte of qh
//!         vector c.
//! Q6_Kx8 (1680 bytes, as 8 plain blocks): d[8] f16 @0, scales @16 (`K6_SC`): for 16-element
//!         group g, 8 bytes (sc_g of row r at r, i8), quants @144 (`K6_QS`): per group g, 96
//!         bytes: the group's 6-bit values (0..63, unbiased) as 4 decoded vectors c = 0..4
//!         (bytes 4r..4r+4 of vector c: row r's elements 16g+4c..16g+4c+4), stored as two nibble
//!         vectors L0 @0, L1 @32 (vector c's low 4 bits in L(c%2), low nibble for c < 2, high
//!         for c >= 2) and one vector H @64 of their top 2 bits (vector c's at bits 2c..2c+2).
//!         Decoding is 2-3 shifts and masks per vector.
//!
//! Scales are stored once per row, not widened to the (sc, sc) i16 pairs `madd` wants: decode
//! is bound by the bytes it reads, and a byte shuffle per sub-block (shared by the tile's
//! tokens) rebuilds the pairs.
//! ```
//!
//! K-quants dot against `A8K` activations: the plain path's Q8_K (one f32 d per 256, same
//! quants) plus, per super-block, the 8 sums of quants of each 32-element sub-block (i16, for
//! the Q4_K mins) and, per 16-element group, 16 * its sum twice as an i16 pair (for the AVX2
//! kernels' Q6_K -32 offset, Q3_K -4 offset and Q2_K mins, one `madd` per group; the AVX-512
//! kernels read two groups' sums from the middle of two pairs, 8 `vpdpwssd` per super-block,
//! and their Q2_K, Q3_K and Q6_K group dots are `vpdpbusd` sums scaled per group). Per
//! super-block and row: one integer sum of scale * sub-block dot (exact in i32), then
//! acc = fma(d_w * d_a, isum, acc) (and for Q4_K acc = acc - (dmin_w * d_a) * msum, fused).
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
//! kernel call whose inputs do not depend on them). `arch::scalar::gemm_q` is the twin of the SIMD
//! kernels on this layout, with the same operation order (tests: bitwise equal).

mod act;
pub(crate) mod layout;

pub use act::{
    quantize_a8, quantize_a8_generic, quantize_a8k, quantize_a8k_generic, A8K_BLOCK, A8K_PAIR2,
    A8_BLOCK,
};
pub use layout::{Kind, Packed, GROUP};

use super::{CpuBackend, SyncPtr};
#[cfg(target_arch = "x86_64")]
use crate::arch::avx2::gemm_q as avx2;
#[cfg(target_arch = "x86_64")]
use crate::arch::avx512::gemm_q as avx512;
use crate::arch::scalar::gemm_q::tile_scalar;
use crate::Isa;
use cria_core::Tensor;
use std::sync::Arc;

/// Tokens per kernel call: their accumulators plus the 8 decoded weight vectors of a block fill
/// the 16 ymm registers. (AVX-512 runs two groups per call, `TILE_T2` tokens: see `arch::avx512::gemm_q`.)
pub const TILE_T: usize = 4;
/// Tokens per pair-kernel call (`Tile2`): with 32 registers, 8 tokens' accumulators fit beside
/// a block's decoded weights, so each decoded block serves twice as many tokens.
pub const TILE_T2: usize = 8;
/// Weight bytes per work item during prompt processing: stays in L2 while all tokens pass.
const CHUNK_BYTES: usize = 32 * 1024;

/// The packed form of `w`, if `prepare` made one.
pub(crate) fn packed(w: &Tensor) -> Option<&Packed> {
    w.prepared.as_ref()?.downcast_ref::<Packed>()
}

/// `Backend::prepare` for quantized types: repack when the AVX2 kernels can use it.
pub(crate) fn prepare(b: &CpuBackend, mut w: Tensor) -> Tensor {
    let Some(kind) = Kind::of(w.dtype) else {
        return w;
    };
    // Every type here is repacked unless the backend says not to. The repacked kernels change
    // only the float summation order (tested bitwise against their scalar twin); on SmolLM2
    // Q4_1 that moves top-1 agreement with llama.cpp from 99%+ (the plain path, ggml's order) to
    // ~97% on a text full of near-ties, at the same perplexity (crates/cria/tests/smollm2.rs
    // measures both paths).
    if !b.repacks() {
        return w;
    }
    if !b.isa.has_avx2() || w.cols() % kind.qk() != 0 || w.rows() == 0 {
        return w;
    }
    let p = Packed::new_on(b, kind, w.rows(), w.cols(), w.bytes());
    w.prepared = Some(Arc::new(p));
    w
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

fn tile_fn(isa: Isa) -> Tile {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => avx2::tile,
        // AVX-512 runs groups in pairs (`tile2_for`); a matrix's odd last group takes the
        // AVX2 kernel (the same bits).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => avx2::tile,
        _ => tile_scalar,
    }
}

/// The tile kernel `isa` uses (tests).
pub fn tile_for(isa: Isa) -> Option<Tile> {
    isa.available().then(|| tile_fn(isa))
}

/// The pair-of-groups kernel signature: as `Tile` on two groups (`w0`, `w1`, `nb` blocks each)
/// at once; `out[c][..8]` are group 0's rows, `out[c][8..]` group 1's.
pub type Tile2 = fn(
    kind: Kind,
    nb: usize,
    w0: &[u8],
    w1: &[u8],
    a: &[u8],
    stride: usize,
    cols: usize,
    out: &mut [[f32; 2 * GROUP]; TILE_T2],
);

/// The pair kernel of `isa`, if it has one (`isa` is the backend's, checked at construction).
fn tile2_fn(isa: Isa) -> Option<Tile2> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => Some(avx512::tile2),
        _ => None,
    }
}

/// The pair kernel `isa` has, if any and the CPU has `isa` (tests).
pub fn tile2_for(isa: Isa) -> Option<Tile2> {
    tile2_fn(isa).filter(|_| isa.available())
}

/// Writes `res[c][..rows]` to `out[(i + c) * n + r0..]` for every token c of `res`.
///
/// # Safety
/// Those ranges must lie inside `out` and be written by no one else meanwhile.
#[inline(always)]
unsafe fn scatter_rows<const W: usize>(
    out: *mut f32,
    n: usize,
    i: usize,
    r0: usize,
    rows: usize,
    res: &[[f32; W]],
) {
    for (c, rc) in res.iter().enumerate() {
        std::ptr::copy_nonoverlapping(rc.as_ptr(), out.add((i + c) * n + r0), rows);
    }
}

/// Prefetches the cache lines of `out` that tokens `toks` of rows r0..r0+16 go to. A prompt's
/// output (t, n) is written 16 rows x 8 tokens at a time, each token's row n floats apart, and
/// with (t, n) beyond L2 every one of those stores missed, one by one: matmul_speed --one 8192
/// 2048 128 Q4_K (4 MiB of output) ran at 233 GFLOP/s, 309 with the stores left out, and 285
/// with the next tile's lines prefetched while the kernel runs.
#[inline(always)]
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn prefetch_out(out: *mut f32, n: usize, r0: usize, toks: std::ops::Range<usize>) {
    #[cfg(target_arch = "x86_64")]
    for tok in toks {
        let p = out.wrapping_add(tok * n + r0) as *const i8;
        // SAFETY: a prefetch is a hint: it reads nothing into the program and never faults,
        // whatever the address.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p);
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                p.wrapping_add(63),
            );
        }
    }
}

/// out (t, n) = x (t, k) . w^T for a packed `w`.
pub(crate) fn matmul(b: &CpuBackend, out: &mut [f32], x: &[f32], p: &Packed, t: usize) {
    matmul_many(b, x, t, &mut [out], &[p]);
}

/// At most this many matrices go through one `matmul_many`.
pub(crate) const MANY: usize = 4;

/// The packed forms of `ws` when `matmul_many` takes them together: all packed, at most `MANY`,
/// the same columns and the same activation blocks (one quantized copy of the input serves all).
/// Slots past `ws.len()` repeat the first matrix (only `[..ws.len()]` is meant).
pub(crate) fn packed_many<'a>(ws: &[&'a Tensor]) -> Option<[&'a Packed; MANY]> {
    let first = packed(ws.first()?)?;
    if ws.len() > MANY {
        return None;
    }
    let mut ps = [first; MANY];
    for (slot, w) in ps.iter_mut().zip(ws) {
        *slot = packed(w)?;
    }
    ps.iter()
        .all(|p| p.k == first.k && p.kind.act_bytes() == first.kind.act_bytes())
        .then_some(ps)
}

/// outs[m] (t, ps[m].n) = x (t, k) . ps[m]^T for matrices on the same input (Q, K, V; gate, up):
/// the input is quantized once, and all their work items go to the pool in one dispatch (one
/// wake-up and one join instead of one per matrix; decoding, the small K and V no longer leave a
/// thread idle). Each output is computed exactly as by a lone `matmul`.
pub(crate) fn matmul_many(
    b: &CpuBackend,
    x: &[f32],
    t: usize,
    outs: &mut [&mut [f32]],
    ps: &[&Packed],
) {
    assert!(
        !ps.is_empty()
            && ps.len() <= MANY
            && outs.len() == ps.len()
            && ps
                .iter()
                .all(|p| p.k == ps[0].k && p.kind.act_bytes() == ps[0].kind.act_bytes()),
        "gemm_q matmul_many: matrices do not share an input"
    );
    let (kind, k) = (ps[0].kind, ps[0].k);
    let nb = k / kind.qk();
    let ab = nb * kind.act_bytes();
    let mut act = b.act.lock().unwrap_or_else(|e| e.into_inner());
    if act.len() < t * ab {
        act.resize(t * ab, 0);
    }
    let quantize = |xr: &[f32], ar: &mut [u8]| match kind {
        Kind::Q4_0 | Kind::Q4_1 | Kind::Q5_0 | Kind::Q5_1 | Kind::Q8_0 | Kind::IQ4_NL => {
            quantize_a8(b.isa, xr, ar)
        }
        Kind::IQ4_XS | Kind::Q2_K | Kind::Q3_K | Kind::Q4_K | Kind::Q5_K | Kind::Q6_K => {
            quantize_a8k(b.isa, xr, ar)
        }
    };
    b.convert_rows(x, t, k, &mut act[..t * ab], ab, &quantize);
    let a = &act[..t * ab];
    let tile = tile_fn(b.isa);
    let tile2 = tile2_fn(b.isa);
    // Per matrix: groups per work item, and the first global item number. Groups per item: an
    // even number (16 rows: with a 64-byte aligned `out`, no cache line of a token's output is
    // written by two items). One token: a few large contiguous ranges per thread, each streamed
    // from memory once. Several: about CHUNK_BYTES of weights, which stay in L2 while every
    // token passes over them.
    let (mut per_item, mut first) = ([0usize; MANY], [0usize; MANY + 1]);
    let total_groups: usize = ps.iter().map(|p| p.groups()).sum();
    for (m, p) in ps.iter().enumerate() {
        let groups = p.groups();
        let pi = if t == 1 {
            // The thread share of all matrices' groups, cut into 4 items per thread.
            groups.min(total_groups.div_ceil(b.threads * 4))
        } else {
            CHUNK_BYTES / p.group_bytes().max(1)
        };
        per_item[m] = (pi.max(2).div_ceil(2) * 2).min(groups).max(1);
        first[m + 1] = first[m] + groups.div_ceil(per_item[m]);
    }
    let n_items = first[ps.len()];
    let outp: [SyncPtr; MANY] = std::array::from_fn(|m| {
        SyncPtr(
            outs.get_mut(m)
                .map_or(std::ptr::null_mut(), |o| o.as_mut_ptr()),
        )
    });
    for (o, p) in outs.iter().zip(ps) {
        assert_eq!(o.len(), t * p.n, "gemm_q matmul: out has the wrong size");
    }
    let job = |item: usize, _tid: usize| {
        let m = (0..ps.len()).rfind(|&m| first[m] <= item).unwrap_or(0);
        let (p, outp) = (ps[m], outp[m]);
        let (n, groups) = (p.n, p.groups());
        let item = item - first[m];
        let (g0, g1) = (item * per_item[m], ((item + 1) * per_item[m]).min(groups));
        let mut res = [[0f32; GROUP]; TILE_T];
        let mut res2 = [[0f32; 2 * GROUP]; TILE_T2];
        // Tokens per pass: a pair kernel takes more.
        let step = if tile2.is_some() { TILE_T2 } else { TILE_T };
        let mut i = 0;
        while i < t {
            let cols = step.min(t - i);
            let mut g = g0;
            while g < g1 {
                let r0 = g * GROUP;
                // SAFETY (both scatter_rows below): tokens i.. < t and rows r0..r0+rows <= n
                // lie inside this matrix's `out` (t * n, checked above); these (token, row)
                // pairs belong to this item alone, and the pool joins before `outs`' borrows end.
                match tile2 {
                    // Two groups at once where the ISA has a pair kernel.
                    Some(tile2) if g + 1 < g1 => {
                        let (w0, w1) = (p.group(g), p.group(g + 1));
                        prefetch_out(outp.get(), n, r0, i + cols..(i + 2 * cols).min(t));
                        tile2(p.kind, nb, w0, w1, &a[i * ab..], ab, cols, &mut res2);
                        let rows = (2 * GROUP).min(n - r0);
                        unsafe { scatter_rows(outp.get(), n, i, r0, rows, &res2[..cols]) };
                        g += 2;
                    }
                    // Else one group, TILE_T tokens per call.
                    _ => {
                        for c0 in (0..cols).step_by(TILE_T) {
                            let cc = TILE_T.min(cols - c0);
                            prefetch_out(outp.get(), n, r0, i + c0 + cc..(i + c0 + 2 * cc).min(t));
                            tile(
                                p.kind,
                                nb,
                                p.group(g),
                                &a[(i + c0) * ab..],
                                ab,
                                cc,
                                &mut res,
                            );
                            let rows = GROUP.min(n - r0);
                            unsafe { scatter_rows(outp.get(), n, i + c0, r0, rows, &res[..cc]) };
                        }
                        g += 1;
                    }
                }
            }
            i += cols;
        }
    };
    let macs: usize = ps.iter().map(|p| p.n * k * t).sum();
    b.run_items(n_items, macs, &job);
}
