//! Half-precision weights (F16, BF16) repacked into 16-row panels, and their GEMM.
//!
//! Layout (`PackedHalf`): rows go by groups of `NR` = 16; group g holds, for each element e of
//! the row, the 16 rows' element e side by side (`data[(g * k + e) * 16 + r % 16]`; rows past
//! the end of the matrix are zero). One load of 32 bytes is then element e of 16 rows.
//!
//! The product is the outer-product ("BLIS") form: a register tile of `MR` = 6 tokens x 16
//! rows keeps 12 accumulators; per element e, two weight vectors are widened (F16C
//! `vcvtph2ps`, or a BF16 shift), each token's x[e] is broadcast, and 12 FMAs follow. Each
//! widened weight serves 6 tokens (the file's layout served 3) and no horizontal sums are left
//! at the end. Every output element is one FMA chain over e = 0..k in order, starting from
//! +0.0, whatever the tile, the token count or the thread: results do not depend on the batch a
//! token is in nor on the thread count, and `matmul_scalar` (f32 `mul_add` in the same order)
//! gives the same bits.
//!
//! On AVX-512 (`avx512` below) a panel's 16 rows are one zmm and the tile is 12 tokens x 2
//! panels; each output is the same FMA chain, so the bits are the same.
//!
//! One token (decoding): 4 groups (64 rows) go together, 8 independent chains, so the FMA
//! latency hides behind the loads and the weights stream at memory speed: each group is one
//! contiguous run of `32 * k` bytes, which the hardware prefetcher follows.
//!
//! Work items are (row block x token block) tiles of the output, token blocks varying fastest;
//! inside an item, every 16-row panel is swept by all the item's token tiles while it sits in
//! L1/L2. With more than one token tile, the item's panels are first widened to f32 into the
//! thread's scratch (`CpuBackend::reserve_panels`), and the thread's next items of the same row
//! block reuse them: the conversions leave the inner loop (on AVX-512 they took 2 of every 14
//! FMA-port cycles) and the weights come from L3 once per thread and row block instead of once
//! per item (1536x576, 512 tokens, 1 thread: 139 -> 157 GFLOP/s, AVX2 79 -> 84).

use super::{CpuBackend, SyncPtr};
#[cfg(target_arch = "x86_64")]
use crate::arch::{avx2::gemm_half as avx2, avx512::gemm_half as avx512};
use crate::isa::Isa;
use cria_core::tensor::AlignedBuf;
use cria_core::{DType, Tensor};

/// Rows per panel: two 8-lane vectors.
pub const NR: usize = 16;
/// Tokens per register tile (12 accumulators + 2 weights + 1 broadcast of the 16 ymm).
pub(crate) const MR: usize = 6;
/// Panels per work item (64 rows: each 64-byte line of `out` belongs to one item).
const ITEM_GROUPS: usize = 4;
/// Tokens per work item (a multiple of MR).
const TOK_BLOCK: usize = 48;

/// F16 or BF16 weights in 16-row panels (see the module doc).
pub struct PackedHalf {
    pub dtype: DType,
    /// Rows (unpadded) and columns.
    pub n: usize,
    pub k: usize,
    buf: AlignedBuf,
}

impl PackedHalf {
    /// Repacks `n` rows of `k` 2-byte elements (`w`: the file's bytes, F16 or BF16).
    pub fn new(dtype: DType, n: usize, k: usize, w: &[u8]) -> PackedHalf {
        assert!(
            matches!(dtype, DType::F16 | DType::BF16),
            "PackedHalf: {dtype} is not a 2-byte float"
        );
        assert_eq!(w.len(), n * k * 2, "PackedHalf: wrong byte count");
        let groups = n.div_ceil(NR);
        let mut buf = AlignedBuf::zeroed(groups * k * NR * 2);
        let out: &mut [u16] = bytemuck::cast_slice_mut(buf.as_mut_slice());
        // Panel by panel (16 x k halves, in L1/L2 while its rows are scattered into it).
        for (g, panel) in out.chunks_exact_mut(k * NR).enumerate() {
            for i in 0..NR.min(n - g * NR) {
                let src = &w[(g * NR + i) * k * 2..][..k * 2];
                for (o, h) in panel[i..].iter_mut().step_by(NR).zip(src.chunks_exact(2)) {
                    *o = u16::from_le_bytes([h[0], h[1]]);
                }
            }
        }
        PackedHalf { dtype, n, k, buf }
    }

    pub fn groups(&self) -> usize {
        self.n.div_ceil(NR)
    }

    /// The packed elements as u16 (the buffer is 64-byte aligned and a whole number of u16).
    fn halves(&self) -> &[u16] {
        bytemuck::cast_slice(self.buf.as_slice())
    }

    /// Element e of row r, widened to f32.
    #[inline]
    pub fn get(&self, r: usize, e: usize) -> f32 {
        let h = self.halves()[((r / NR) * self.k + e) * NR + r % NR];
        widen(self.dtype, h)
    }

    /// Row r widened to f32 (an embedding lookup from a tied table's packed copy).
    pub fn row(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.n, "PackedHalf::row: row {r} of {}", self.n);
        assert_eq!(out.len(), self.k, "PackedHalf::row: wrong length");
        for (e, o) in out.iter_mut().enumerate() {
            *o = self.get(r, e);
        }
    }
}

#[inline]
fn widen(dtype: DType, h: u16) -> f32 {
    match dtype {
        DType::F16 => half::f16::from_bits(h).to_f32(),
        _ => f32::from_bits((h as u32) << 16),
    }
}

/// The packed form of `w`, if `prepare` made one.
pub(crate) fn packed(w: &Tensor) -> Option<&PackedHalf> {
    w.prepared.as_ref()?.downcast_ref::<PackedHalf>()
}

/// `Backend::prepare` for F16/BF16: repack when the AVX2 kernel can use it.
pub(crate) fn prepare(b: &CpuBackend, mut w: Tensor) -> Tensor {
    if !matches!(w.dtype, DType::F16 | DType::BF16)
        || !b.repacks()
        || !b.isa().has_avx2()
        || w.rows() == 0
        || w.cols() == 0
    {
        return w;
    }
    let p = PackedHalf::new(w.dtype, w.rows(), w.cols(), w.bytes());
    w.prepared = Some(std::sync::Arc::new(p));
    w
}

/// The scalar twin: out (t, n) = x (t, k) @ w^T, each element one `mul_add` chain over k in
/// order from +0.0 (the AVX2 kernel's bits exactly).
pub fn matmul_scalar(out: &mut [f32], x: &[f32], p: &PackedHalf, t: usize) {
    let (n, k) = (p.n, p.k);
    assert!(
        x.len() == t * k && out.len() == t * n,
        "matmul_scalar: bad sizes"
    );
    for tok in 0..t {
        let xr = &x[tok * k..(tok + 1) * k];
        for r in 0..n {
            let mut acc = 0f32;
            for (e, &xv) in xr.iter().enumerate() {
                acc = p.get(r, e).mul_add(xv, acc);
            }
            out[tok * n + r] = acc;
        }
    }
}

/// A work item widens its panels to f32 first when it has more than this many register
/// tiles of tokens. Widening writes and rereads the item's panels as f32, twice their bytes:
/// it pays once several tiles read them, not for two (SmolLM2 F16, 2 threads, AVX-512: 13
/// tokens as 7 + 6 ran at 425 t/s widened, 606 not; 25 tokens as 9 + 8 + 8, 633 widened and
/// 664 not, within the shared machine's noise, so three tiles and more still widen).
const WIDEN_TILES: usize = 2;

/// out (t, n) = x (t, k) @ w^T on the packed weights (shapes checked by the caller).
pub(crate) fn matmul(b: &CpuBackend, out: &mut [f32], x: &[f32], p: &PackedHalf, t: usize) {
    let (n, k) = (p.n, p.k);
    debug_assert!(x.len() == t * k && out.len() == t * n);
    if t == 0 || n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if b.isa().has_avx2() {
        let run: unsafe fn(
            *mut f32,
            usize,
            &[f32],
            &[u16],
            usize,
            usize,
            usize,
            usize,
            usize,
            *mut f32,
            bool,
        ) = match (b.isa(), p.dtype) {
            (Isa::Avx512, DType::F16) => avx512::block::<avx512::F16>,
            (Isa::Avx512, _) => avx512::block::<avx512::Bf16>,
            (_, DType::F16) => avx2::block::<crate::arch::avx2::gemm_float::F16>,
            _ => avx2::block::<crate::arch::avx2::gemm_float::Bf16>,
        };
        let groups = p.groups();
        let n_gb = groups.div_ceil(ITEM_GROUPS);
        let n_tb = t.div_ceil(TOK_BLOCK);
        let outp = SyncPtr(out.as_mut_ptr());
        let w = p.halves();
        // Items of more than one register tile of tokens (the kernel's tile: 6 on AVX2, 12 on
        // AVX-512) read their panels widened to f32 from the thread's scratch (64-byte aligned:
        // up to 15 floats of slack), widened by the first such item of that row block the
        // thread takes, and reused by its next ones.
        let tile_t = if b.isa() == Isa::Avx512 {
            avx512::MR512
        } else {
            MR
        };
        let wide_t = WIDEN_TILES * tile_t;
        let widen = t > wide_t;
        let call = if widen {
            b.reserve_panels(ITEM_GROUPS * k * NR + 15)
        } else {
            0
        };
        let job = |item: usize, tid: usize| {
            // Token blocks vary fastest: a thread's consecutive items mostly share a row block,
            // whose widened panels are then still in its scratch.
            let (gb, tb) = (item / n_tb, item % n_tb);
            let (g0, g1) = (gb * ITEM_GROUPS, ((gb + 1) * ITEM_GROUPS).min(groups));
            let (t0, t1) = (tb * TOK_BLOCK, ((tb + 1) * TOK_BLOCK).min(t));
            // Only an item that widens records what its scratch holds.
            let wide = t1 - t0 > wide_t;
            let mut panels = wide.then(|| b.panels[tid].lock().unwrap_or_else(|e| e.into_inner()));
            let (scratch, ready) = match panels.as_deref_mut() {
                Some(sp) => {
                    let ready = sp.holds == Some((call, gb));
                    sp.holds = Some((call, gb));
                    let at = sp.buf.as_ptr().align_offset(64);
                    (sp.buf[at..].as_mut_ptr(), ready)
                }
                None => (std::ptr::null_mut(), false),
            };
            // SAFETY: b.isa() is Avx2 or Avx512 only when AVX2/FMA/F16C (and for Avx512,
            // AVX-512 F/BW/VL) were detected, and `run` is the kernel of that ISA. The item writes
            // out[tok * n + row] for tok in t0..t1 and rows of panels g0..g1 below n only:
            // inside `out` (t*n) and disjoint from every other item; the pool joins before
            // `out`'s borrow ends. `w` holds `groups` panels of k * 16 elements. `scratch` is
            // this thread's (locked) and holds ITEM_GROUPS * k * 16 floats from a 64-byte
            // boundary when the item has more than `wide_t` tokens, the kernel's condition for
            // using it (else it is null and unused); `ready` says the block's
            // kernel already widened panels g0..g1 of `w` into it in this call (`call` is
            // unique to this matmul, so stale panels of another never match).
            unsafe { run(outp.get(), n, x, w, k, g0, g1, t0, t1, scratch, ready) };
        };
        b.run_items(n_gb * n_tb, n * k * t, &job);
        return;
    }
    let _ = b;
    matmul_scalar(out, x, p, t)
}
