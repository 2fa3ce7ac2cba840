//! The products training needs beside the forward's (cria-train calls them): the transposed
//! product through a frozen weight of any type, `dX += dY W`, and three f32 GEMMs over plain
//! row-major slices for the adapters and the weight gradients. Every one ADDS into its output
//! (the caller zeroes), as a backward collects the gradient of a tensor from all its uses.
//!
//! `matmul_f32act`, the forward's base product with f32 activations (QLoRA's), is the same
//! GEMM with W read transposed.
//!
//! All of them are one blocked GEMM, `C (m, n) += A (m, k) B (k, n)`, whose operands are read
//! through strides (`OpA`, `OpB`: a slice row-major or transposed, or a weight matrix of any
//! type decoded on the fly). The loops are BLIS's:
//! - the output is cut into work items of (row block x column block), handed to the backend's
//!   threads; every element of C belongs to one item (no two threads ever write the same value)
//!   and the sum over k happens inside the item;
//! - per item and per `KC` rows of B, the item's columns of those rows are packed into an f32
//!   panel of strips `NR` wide (`KC x NB` floats, at most 384 KiB: stays in L2), decoding a
//!   quantized weight block by block (never the whole matrix: QLoRA's base stays quantized);
//! - per `MR` rows of C, the matching A values are packed row-interleaved (`KC x MR`, in L1);
//! - the register tile (`arch::{avx512,avx2,scalar}::train::tile`) broadcasts A(i, p) and FMAs
//!   it with B's strip row p into MR x NR accumulators loaded from and stored back to C.
//!
//! Every output element is thus one fused multiply-add chain over p = 0..k in order, starting
//! from its value in C, whatever the ISA, the tile shape, the blocking or the thread count: the
//! SIMD tiles and the scalar twin (`f32::mul_add`) give the same bits, and so do 1 and 2
//! threads. Edge tiles (fewer than MR rows or NR columns) go through a zero-padded copy.
//!
//! Weights: a prepared matrix is decoded from the backend's repacked copy when there is one
//! (`gemm_q::Packed::plain_block`, `gemm_half::PackedHalf::get`), else from the file's bytes; a
//! plain F32 matrix is read in place. Column blocks of a quantized weight start on block
//! boundaries, so every block is decoded once per KC panel and item.

use super::{gemm_half, gemm_q, CpuBackend, SyncPtr};
use crate::arch::scalar::train as scalar;
#[cfg(target_arch = "x86_64")]
use crate::arch::{avx2::train as avx2, avx512::train as avx512};
use crate::isa::Isa;
use cria_core::{quant, DType, Tensor};

/// Rows of B (the shared dimension) per packed panel.
const KC: usize = 256;
/// Most columns of C per work item: the B panel is at most KC x NB_MAX f32 (384 KiB: in L2;
/// a LLaMA width of 384 in one block).
const NB_MAX: usize = 384;
/// A C of at least TALL x (items wanted) MR-row tiles has its rows split between the items
/// rather than its columns (see `gemm`).
const TALL: usize = 4;

/// How the tile reads A(i, p), i < m (rows of C), p < k.
#[derive(Clone, Copy)]
enum OpA<'a> {
    /// `a[i * ld + p]`.
    Rows(&'a [f32], usize),
    /// `a[p * ld + i]` (A transposed: `gemm_tn`).
    Cols(&'a [f32], usize),
}

/// How the tile reads B(p, c), p < k, c < n (columns of C).
#[derive(Clone, Copy)]
enum OpB<'a> {
    /// `b[p * ld + c]`.
    Rows(&'a [f32], usize),
    /// `b[c * ld + p]` (B transposed: `gemm_nt`).
    Cols(&'a [f32], usize),
    /// Row p, column c of a weight matrix of any type, decoded.
    Weight(&'a Tensor),
    /// Row c, column p of a weight matrix of any type, decoded (W transposed: the forward
    /// product `matmul_f32act`, whose output columns are W's rows).
    WeightT(&'a Tensor),
}

/// The register tile of an ISA.
#[derive(Clone, Copy)]
struct Tile {
    isa: Isa,
    mr: usize,
    nr: usize,
}

impl Tile {
    fn of(isa: Isa) -> Tile {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => Tile {
                isa,
                mr: avx512::MR,
                nr: avx512::NR,
            },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => Tile {
                isa,
                mr: avx2::MR,
                nr: avx2::NR,
            },
            _ => Tile {
                isa: Isa::Scalar,
                mr: scalar::MR,
                nr: scalar::NR,
            },
        }
    }

    /// Whether the tile may write C in place (a SIMD tile on a whole MR x NR tile); else the
    /// caller goes through a dense copy (`tmp`).
    fn in_place(self) -> bool {
        self.isa != Isa::Scalar
    }

    /// `c[i * ldc + l] += sum_p a[p * mr + i] * b[p * nr + l]` for i < mr, l < nr, p < kc.
    ///
    /// # Safety
    /// `a` holds kc * mr values, `b` kc * nr, and rows 0..mr of `c` (`ldc` apart) nr values
    /// each that no other thread touches during the call; `self.isa` is available (`Tile::of`
    /// of the backend's ISA, which `Isa::available` confirmed).
    unsafe fn run(self, kc: usize, a: &[f32], b: &[f32], c: *mut f32, ldc: usize) {
        debug_assert!(a.len() >= kc * self.mr && b.len() >= kc * self.nr);
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => avx512::tile(kc, a.as_ptr(), b.as_ptr(), c, ldc),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => avx2::tile(kc, a.as_ptr(), b.as_ptr(), c, ldc),
            _ => {
                let c = std::slice::from_raw_parts_mut(c, (self.mr - 1) * ldc + self.nr);
                scalar::tile(kc, a, b, c, ldc)
            }
        }
    }
}

impl CpuBackend {
    /// `dx (t, w.cols()) += dy (t, w.rows()) @ w`, `w` of any type `dequantize_row` reads (F32,
    /// F16, BF16, every ggml block type), prepared or not. Panics on lengths that do not match
    /// (callers check shapes once, at build).
    pub fn matmul_dx(&self, dx: &mut [f32], dy: &[f32], w: &Tensor, t: usize) {
        let (rows, cols) = (w.rows(), w.cols());
        assert_eq!(dx.len(), t * cols, "matmul_dx {}: dx", w.name);
        assert_eq!(dy.len(), t * rows, "matmul_dx {}: dy", w.name);
        assert!(
            quant::can_dequantize(w.dtype) && cols % w.dtype.block_size() == 0,
            "matmul_dx {}: cannot decode {} rows of {cols}",
            w.name,
            w.dtype
        );
        // A plain F32 matrix is read where it lies.
        let plain = (w.dtype == DType::F32 && w.prepared.is_none())
            .then(|| bytemuck::try_cast_slice::<u8, f32>(w.bytes()).ok())
            .flatten();
        let b = match plain {
            Some(wf) => OpB::Rows(wf, cols),
            None => OpB::Weight(w),
        };
        gemm(self, dx, t, cols, rows, OpA::Rows(dy, rows), b);
    }

    /// `out (t, w.rows()) = x (t, w.cols()) @ w^T` (OVERWRITES, as `matmul` does) with the
    /// activations kept f32 for every weight type: a quantized `w` is decoded block by block
    /// into the f32 panels of the blocked GEMM (never whole), as `matmul_dx` does with the roles
    /// transposed (the panel is W's rows x a KC-block of its columns; the threads split W's
    /// rows). `matmul` instead rounds the activations to int8 blocks for quantized weights,
    /// which is faster but moves the training gradients of a sensitive model by tens of
    /// percent (QLoRA wants the base's product over f32 activations, as bitsandbytes does).
    ///
    /// Quantized and unprepared F16/BF16 weights: every output is one FMA chain over the shared
    /// dimension in order from +0.0, on every ISA, thread count and layout (the same bits as the
    /// scalar twin). F16/BF16 matrices that `prepare` repacked go to their own GEMM (`gemm_half`:
    /// f32 activations, the same chain, hence the same bits); F32 matrices to `matmul` (f32
    /// activations; its summation order). Panics on lengths that do not match, or a type it
    /// cannot decode.
    pub fn matmul_f32act(&self, out: &mut [f32], x: &[f32], w: &Tensor, t: usize) {
        let (rows, cols) = (w.rows(), w.cols());
        assert_eq!(out.len(), t * rows, "matmul_f32act {}: out", w.name);
        assert_eq!(x.len(), t * cols, "matmul_f32act {}: x", w.name);
        assert!(
            quant::can_dequantize(w.dtype) && cols % w.dtype.block_size() == 0,
            "matmul_f32act {}: cannot decode {} rows of {cols}",
            w.name,
            w.dtype
        );
        // The forward's own GEMMs where they keep f32 activations: F32 weights (`gemm_float`,
        // 8-lane partial sums: about 3x less rounding than one FMA chain over k, which SmolLM2's
        // gradients feel at 1e-3) and repacked F16/BF16 (`gemm_half`).
        if w.dtype == DType::F32 || gemm_half::packed(w).is_some() {
            self.matmul(out, x, w, t);
            return;
        }
        out.fill(0.0);
        gemm(
            self,
            out,
            t,
            rows,
            cols,
            OpA::Rows(x, cols),
            OpB::WeightT(w),
        );
    }

    /// `c (m, n) += a (t, m)^T @ b (t, n)`: a weight gradient, the sum over the batch's rows.
    pub fn gemm_tn(&self, c: &mut [f32], a: &[f32], b: &[f32], t: usize, m: usize, n: usize) {
        assert_eq!(c.len(), m * n, "gemm_tn: c");
        assert_eq!(a.len(), t * m, "gemm_tn: a");
        assert_eq!(b.len(), t * n, "gemm_tn: b");
        gemm(self, c, m, n, t, OpA::Cols(a, m), OpB::Rows(b, n));
    }

    /// `c (t, n) += a (t, k) @ b (k, n)`.
    pub fn gemm_nn(&self, c: &mut [f32], a: &[f32], b: &[f32], t: usize, k: usize, n: usize) {
        assert_eq!(c.len(), t * n, "gemm_nn: c");
        assert_eq!(a.len(), t * k, "gemm_nn: a");
        assert_eq!(b.len(), k * n, "gemm_nn: b");
        gemm(self, c, t, n, k, OpA::Rows(a, k), OpB::Rows(b, n));
    }

    /// `c (t, n) += a (t, k) @ b (n, k)^T` (an f32 weight held as a slice: an adapter's).
    pub fn gemm_nt(&self, c: &mut [f32], a: &[f32], b: &[f32], t: usize, k: usize, n: usize) {
        assert_eq!(c.len(), t * n, "gemm_nt: c");
        assert_eq!(a.len(), t * k, "gemm_nt: a");
        assert_eq!(b.len(), n * k, "gemm_nt: b");
        gemm(self, c, t, n, k, OpA::Rows(a, k), OpB::Cols(b, k));
    }

    /// Calls `f(item, thread)` for every item in `0..n_items` on the backend's threads (items
    /// handed out dynamically); `thread < self.threads`.
    pub fn for_each(&self, n_items: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        self.pool.for_each(n_items, f)
    }
}

/// `c (m, n) += A (m, k) B (k, n)` (see the module doc); `c` row-major, exactly m * n values,
/// the operands' sizes checked by the callers.
fn gemm(be: &CpuBackend, c: &mut [f32], m: usize, n: usize, k: usize, a: OpA, b: OpB) {
    debug_assert_eq!(c.len(), m * n);
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let tile = Tile::of(be.isa);
    let (mr, nr) = (tile.mr, tile.nr);
    // Column blocks: whole units of `ucols` (strips, and a quantized weight's blocks: both
    // powers of two, so the larger is a multiple of the smaller), at most NB_MAX wide; with the
    // row blocks, at least two items per thread so that dynamic hand-out balances them.
    let qk = match b {
        OpB::Weight(w) if gemm_half::packed(w).is_none() => w.dtype.block_size(),
        _ => 1,
    };
    let ucols = nr.max(qk);
    // The decoded row of a weight: a column block's worth of blocks, or (transposed) one KC
    // slice of a row, which starts on a block boundary (KC is a multiple of every block size).
    let qrow = match b {
        OpB::Weight(w) | OpB::WeightT(w) => w.dtype.block_size(),
        _ => 0,
    };
    let units = n.div_ceil(ucols);
    let want = if be.threads > 1 { 2 * be.threads } else { 1 };
    let mt = m.div_ceil(mr);
    // The fewest column blocks NB_MAX allows.
    let wide = units.div_ceil((NB_MAX / ucols).max(1));
    let (n_cb, n_rb) = if mt >= TALL * want {
        // A tall C (a training step's linears: the batch's rows): column blocks as wide as
        // NB_MAX allows, the rows split between the items, so that every packed MR x KC tile
        // of A serves all the strips of the panel (with narrow blocks, packing A cost as much
        // as the tile's FMAs). Items: at least `want`, a multiple of the threads.
        let mut n_rb = want.div_ceil(wide);
        while (n_rb * wide) % be.threads != 0 {
            n_rb += 1;
        }
        (wide, n_rb.min(mt))
    } else {
        // Else columns first, at least two blocks per thread; row blocks (whole MR tiles) only
        // when the columns alone do not make enough items (a narrow output: an adapter's rank).
        let mut n_cb = wide.max(want.min(units));
        if be.threads > 1 {
            n_cb = (n_cb.div_ceil(be.threads) * be.threads).min(units);
        }
        let n_rb = if n_cb >= want {
            1
        } else {
            want.div_ceil(n_cb).min(mt)
        };
        (n_cb, n_rb)
    };
    let nbw = units.div_ceil(n_cb) * ucols; // widest block, whole strips
    let (bsz, asz, tsz) = (KC * nbw, KC * mr, mr * nr);
    be.reserve_scratch(bsz + asz + tsz + nbw.max(KC) + qrow);
    let cp = SyncPtr(c.as_mut_ptr());
    let job = |item: usize, tid: usize| {
        let (rb, cb) = (item / n_cb, item % n_cb);
        let (r0, r1) = (rb * mt / n_rb * mr, ((rb + 1) * mt / n_rb * mr).min(m));
        let (c0, c1) = (
            cb * units / n_cb * ucols,
            ((cb + 1) * units / n_cb * ucols).min(n),
        );
        if r0 >= r1 || c0 >= c1 {
            return;
        }
        let mut guard = be.scores[tid].lock().unwrap_or_else(|e| e.into_inner());
        let (bp, rest) = guard.split_at_mut(bsz);
        let (ap, rest) = rest.split_at_mut(asz);
        let (tmp, rowbuf) = rest.split_at_mut(tsz);
        let strips = (c1 - c0).div_ceil(nr);
        for p0 in (0..k).step_by(KC) {
            let kc = KC.min(k - p0);
            let bp = &mut bp[..strips * kc * nr];
            pack_b(b, p0, kc, c0, c1, nr, bp, rowbuf);
            for i0 in (r0..r1).step_by(mr) {
                let rows = mr.min(r1 - i0);
                let ap = &mut ap[..kc * mr];
                pack_a(a, i0, rows, mr, p0, kc, ap);
                for (s, bs) in bp.chunks_exact(kc * nr).enumerate() {
                    let cs = c0 + s * nr;
                    let cols = nr.min(c1 - cs);
                    // SAFETY: rows i0..i0+rows and columns cs..cs+cols of C lie inside `c` (m x
                    // n, i0 + rows <= r1 <= m, cs + cols <= c1 <= n) and belong to this item
                    // alone (items tile C without overlap); the pool joins before `c`'s borrow
                    // ends. The tile reads kc * mr values of `ap` and kc * nr of `bs` (their
                    // lengths), and writes MR x NR values: in place only when the tile is whole,
                    // else into `tmp` (mr * nr). `tile` is of the backend's ISA, which
                    // `CpuBackend::with_isa` checked is available.
                    unsafe {
                        let cij = cp.get().add(i0 * n + cs);
                        if tile.in_place() && rows == mr && cols == nr {
                            tile.run(kc, ap, bs, cij, n);
                            continue;
                        }
                        tmp.fill(0.0);
                        for i in 0..rows {
                            let ci = std::slice::from_raw_parts_mut(cij.add(i * n), cols);
                            tmp[i * nr..i * nr + cols].copy_from_slice(ci);
                        }
                        tile.run(kc, ap, bs, tmp.as_mut_ptr(), nr);
                        for i in 0..rows {
                            let ci = std::slice::from_raw_parts_mut(cij.add(i * n), cols);
                            ci.copy_from_slice(&tmp[i * nr..i * nr + cols]);
                        }
                    }
                }
            }
        }
    };
    be.run_items(n_rb * n_cb, m * n * k, &job);
}

/// The tallest register tile of any ISA (`pack_a`'s row table).
const MR_MAX: usize = 16;
#[cfg(target_arch = "x86_64")]
const _: () = assert!(avx512::MR <= MR_MAX && avx2::MR <= MR_MAX);
const _: () = assert!(scalar::MR <= MR_MAX);

/// A(i0.., p0..) packed for the tile: `dst[p * mr + i]` = A(i0 + i, p0 + p) for i < rows,
/// zero for rows..mr.
fn pack_a(a: OpA, i0: usize, rows: usize, mr: usize, p0: usize, kc: usize, dst: &mut [f32]) {
    match a {
        OpA::Rows(a, ld) => {
            // p outer, the rows inner: contiguous stores (one pass per row, storing mr values
            // apart, was the slower half of a training step's GEMM time).
            let mut src: [&[f32]; MR_MAX] = [&[]; MR_MAX];
            for (i, s) in src.iter_mut().enumerate().take(rows) {
                *s = &a[(i0 + i) * ld + p0..][..kc];
            }
            let src = &src[..rows];
            for (p, d) in dst[..kc * mr].chunks_exact_mut(mr).enumerate() {
                for (d, s) in d.iter_mut().zip(src) {
                    *d = s[p];
                }
                d[rows..].fill(0.0);
            }
        }
        OpA::Cols(a, ld) => {
            // Element loops, not copy_from_slice: a dozen values per call of memcpy cost as
            // much as the tile's FMAs on a narrow output (rank 16).
            for (p, d) in dst.chunks_exact_mut(mr).enumerate() {
                let src = &a[(p0 + p) * ld + i0..][..rows];
                for (i, d) in d.iter_mut().enumerate() {
                    *d = if i < rows { src[i] } else { 0.0 };
                }
            }
        }
    }
}

/// B(p0.., c0..c1) packed for the tile: strip s (columns c0 + s*nr..) holds
/// `dst[s * kc * nr + p * nr + l]` = B(p0 + p, c0 + s*nr + l), zero past c1. `row`: scratch
/// for a decoded weight row's blocks (c1 - c0, or KC transposed, plus the block size values).
#[allow(clippy::too_many_arguments)]
fn pack_b(
    b: OpB,
    p0: usize,
    kc: usize,
    c0: usize,
    c1: usize,
    nr: usize,
    dst: &mut [f32],
    row: &mut [f32],
) {
    let nc = c1 - c0;
    let put_row = |dst: &mut [f32], p: usize, src: &[f32]| {
        for (s, d) in dst.chunks_exact_mut(kc * nr).enumerate() {
            let d = &mut d[p * nr..(p + 1) * nr];
            let w = nr.min(nc - s * nr);
            d[..w].copy_from_slice(&src[s * nr..s * nr + w]);
            d[w..].fill(0.0);
        }
    };
    match b {
        OpB::Rows(b, ld) => {
            for p in 0..kc {
                put_row(dst, p, &b[(p0 + p) * ld + c0..][..nc]);
            }
        }
        // B's column c is a row of the slice, or of the weight (decoded).
        OpB::Cols(..) | OpB::WeightT(_) => {
            for (s, d) in dst.chunks_exact_mut(kc * nr).enumerate() {
                for l in 0..nr {
                    let lane = d.iter_mut().skip(l).step_by(nr);
                    let c = c0 + s * nr + l;
                    if c >= c1 {
                        lane.for_each(|d| *d = 0.0);
                        continue;
                    }
                    let src = match b {
                        OpB::Cols(b, ld) => &b[c * ld + p0..][..kc],
                        OpB::WeightT(w) => decode(w, c, p0, p0 + kc, row),
                        _ => unreachable!(),
                    };
                    lane.zip(src).for_each(|(d, &v)| *d = v);
                }
            }
        }
        OpB::Weight(w) => {
            for p in 0..kc {
                let src = decode(w, p0 + p, c0, c1, row);
                put_row(dst, p, src);
            }
        }
    }
}

/// Columns c0..c1 of row j of `w`, decoded into `buf` (c0 on a block boundary unless the
/// matrix is a repacked F16/BF16 one, read element by element).
fn decode<'b>(w: &Tensor, j: usize, c0: usize, c1: usize, buf: &'b mut [f32]) -> &'b [f32] {
    let nc = c1 - c0;
    if let Some(h) = gemm_half::packed(w) {
        for (o, e) in buf[..nc].iter_mut().zip(c0..c1) {
            *o = h.get(j, e);
        }
        return &buf[..nc];
    }
    let qk = w.dtype.block_size();
    let (b0, b1) = (c0 / qk, c1.div_ceil(qk));
    let out = &mut buf[..(b1 - b0) * qk];
    let res = match gemm_q::packed(w) {
        Some(p) => {
            let mut blk = [0u8; 256];
            let pb = p.kind.plain_bytes();
            (b0..b1)
                .zip(out.chunks_exact_mut(qk))
                .try_for_each(|(bi, o)| {
                    p.plain_block(j, bi, &mut blk);
                    quant::dequantize(w.dtype, &blk[..pb], o)
                })
        }
        None => {
            let ts = w.dtype.type_size();
            quant::dequantize(w.dtype, &w.row(j)[b0 * ts..b1 * ts], out)
        }
    };
    res.unwrap_or_else(|e| panic!("decoding {}: {e}", w.name));
    &buf[c0 - b0 * qk..][..nc]
}
