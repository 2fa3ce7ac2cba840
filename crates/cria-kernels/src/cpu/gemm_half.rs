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
use crate::isa::Isa;
use cria_core::tensor::AlignedBuf;
use cria_core::{DType, Tensor};

/// Rows per panel: two 8-lane vectors.
pub const NR: usize = 16;
/// Tokens per register tile (12 accumulators + 2 weights + 1 broadcast of the 16 ymm).
const MR: usize = 6;
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
            (_, DType::F16) => avx2::block::<super::gemm_float::avx2::F16>,
            _ => avx2::block::<super::gemm_float::avx2::Bf16>,
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
        let widen = t > tile_t;
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
            let wide = t1 - t0 > tile_t;
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
            // boundary when the item has more than `tile_t` tokens, the kernel's condition for
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

/// How far ahead of the element being read the one-token tiles prefetch each panel's stream.
#[cfg(target_arch = "x86_64")]
const PF_AHEAD: usize = 2048;

/// One token (decoding) reads every weight byte from memory once, G panels as G streams; the
/// tiles' own loads keep too few misses in flight, so each stream's line `PF_AHEAD` bytes on
/// is prefetched once per 64 bytes read (past a panel's end it is the next one's start, or
/// nothing: prefetches never fault).
///
/// SAFETY (caller): the CPU has SSE (every x86-64 does).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn prefetch_ahead<const G: usize>(wp: &[*const u8; G], at: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    for p in wp {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(at + PF_AHEAD) as *const i8);
    }
}

/// One token over panels g0..g1, up to 4 panels per `tile` call (the SIMD modules' shared
/// decode loop; `tile::<L>` names the module's own const-generic tile).
#[cfg(target_arch = "x86_64")]
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

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{MR, NR};
    // The file-layout GEMM's widening of 8 F16/BF16 elements (`load8`), reused on the panels;
    // `F32` reads a panel already widened into scratch.
    use crate::cpu::gemm_float::avx2::{Load as Wide, F32};
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
            // One token on the file's halves (not on panels widened into scratch, in cache).
            if T == 1 && L::SIZE == 2 && e % 2 == 0 {
                super::prefetch_ahead(&wp, e * NR * 2);
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
            let nt = (t1 - j).min(MR);
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

    /// Panels g0..g1 x tokens t0..t1 of the output, by register tiles. With more than one
    /// token tile, the panels are read widened to f32 from `scratch` (the conversions then
    /// happen once per panel, not once per tile; the products are the same), where this call
    /// first widens them unless `ready` says an earlier call of the same matmul did.
    ///
    /// SAFETY (caller): AVX2/FMA/F16C present; `w` holds at least g1 panels of k * 16
    /// elements, `x` at least t1 rows of k; out[tok * n + row] for the block is writable by this
    /// call only; when t1 - t0 > MR, `scratch` is 32-byte aligned with (g1 - g0) * k * 16
    /// writable floats, and if `ready` they are panels g0..g1 of `w` widened.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn block<L: Wide>(
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
        if t1 - t0 <= MR {
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
}

/// The same tiles on 512-bit registers: a panel's 16 rows are one zmm, and the 32 registers
/// hold `MR512` = 12 tokens x 2 panels of accumulators. Per lane the same FMA chain as the AVX2
/// kernel and the scalar twin (same bits).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::NR;
    use std::arch::x86_64::*;

    /// Tokens per register tile: 24 accumulators + 2 weights + 1 broadcast of the 32 zmm.
    pub(super) const MR512: usize = 12;

    /// Widens 16 packed elements to f32.
    pub(super) trait Wide16 {
        /// Bytes per element.
        const SIZE: usize;
        /// SAFETY (caller): AVX-512 F present, 16 elements readable at p.
        unsafe fn load16(p: *const u8) -> __m512;
    }
    pub(super) struct F16;
    pub(super) struct Bf16;
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
            // One token on the file's halves (not on panels widened into scratch, in cache).
            if T == 1 && L::SIZE == 2 && e % 2 == 0 {
                super::prefetch_ahead(&wp, e * NR * 2);
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
            let nt = (t1 - j).min(MR512);
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

    /// As `avx2::block` (same contract, with `scratch` 64-byte aligned and used when
    /// t1 - t0 > 12), for AVX-512 F/BW/VL.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn block<L: Wide16>(
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
        let wide = t1 - t0 > MR512;
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
}
