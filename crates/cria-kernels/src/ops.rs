//! The ISA-independent parts of the non-matmul ops of the CPU backend (the rope table, the
//! flash-attention tiling and buffers); their kernels are `arch::{scalar,avx2,avx512}::ops`, their
//! scalar spec `crate::reference`.
//!
//! - `rope`: cos/sin computed once per row (`Rope::table`, ggml's angles) and applied to every
//!   head, so the result is the reference's to the bit, at 1/n_heads of the trigonometry.
//! - `rmsnorm` (AVX2): the scale from `common::rms_scale` (ggml's order: f32 squares summed in
//!   f64 sequentially), then `(x * r) * w` in the reference's order.
//! - `silu_mul` and the softmax in `attention` (AVX2) use `exp8`, ggml's `ggml_v_expf` to the bit.
//! - `attention` (AVX2): one (token, head) pair per work item, in llama.cpp's arithmetic for an
//!   F32 KV cache without flash attention (`arch::avx2::ops::head_impl`), so that cria's logits
//!   follow llama.cpp's: quantized models amplify any 1-ulp difference, since it can flip the
//!   rounding of a Q8 activation in the next matmul.
//! - attention over an F16 cache: blocked online softmax ("flash attention"), one work item per
//!   (KV head, run of query tokens), see `arch::scalar::ops::flash_tile_scalar`,
//!   `arch::avx2::ops::flash_tile` and `arch::avx512::ops::flash_tile` (16 lanes, when
//!   head_dim % 16 == 0).

use crate::common::key_range;
#[cfg(target_arch = "x86_64")]
use crate::KvSlice;
use crate::{AttnShape, Rope};

/// RoPE cos/sin of positions pos0..pos0 + t for one set of parameters, kept between calls: the Q
/// and K rotations of every layer of a forward pass share one table instead of recomputing the
/// angles (two libm calls per pair) each time.
#[derive(Default)]
pub struct RopeTable {
    rope: Option<Rope>,
    pos0: usize,
    t: usize,
    cs: Vec<(f32, f32)>,
}

impl RopeTable {
    /// (cos, sin) of every rotated pair at positions pos0..pos0 + t: t rows of n_pairs.
    pub fn get(&mut self, rope: &Rope, pos0: usize, t: usize) -> &[(f32, f32)] {
        let n_pairs = rope.inv_freq.len();
        let same_rope = self.rope.as_ref() == Some(rope);
        if !same_rope || self.pos0 != pos0 || self.t < t {
            if !same_rope {
                self.rope = Some(rope.clone());
            }
            self.cs.clear();
            for r in 0..t {
                rope.extend_table(pos0 + r, &mut self.cs);
            }
            (self.pos0, self.t) = (pos0, t);
        }
        &self.cs[..t * n_pairs]
    }
}

// ---- Flash attention over an F16 cache -------------------------------------------------------
//
// One work item (a "tile") is one KV head and a run of query tokens: its rows are every
// (token, query head of that KV group) pair, so each key block is read from the cache and widened
// to f32 once per tile, then used by all its rows (GQA heads and tokens alike). Keys go in blocks
// of FLASH_KEYS with an online softmax per row: running max m, running sum l and an unnormalised
// f32 accumulator, rescaled by e^(m_old - m_new) when the max grows; the output is acc / l.
// Memory per tile is fixed whatever the context length.
//
// The AVX2 tile works on SC_ROWS rows at a time as two small register-tiled products: the key
// block is widened *transposed* (head_dim x keys), so scores for 6 rows x 16 keys are 12 FMA
// chains over the head dimension with the keys in lanes (no horizontal sums, each K vector used by
// 6 rows), and p V for 6 rows x 16 outputs is 12 chains over the keys (each V vector used by 6
// rows). Every score and every output element is still one FMA chain in the scalar twin's order;
// the twins differ only in exp and in the order of the softmax sum. Keys a row may not see (past
// its position, or before its window) are masked to p = 0 inside the rows' common range.

/// Keys per block: K and V of one block widened to f32 take 2 * 64 * head_dim * 4 bytes (32 KiB
/// at head_dim 64), which stay in L1/L2 while every row of the tile passes over them.
pub const FLASH_KEYS: usize = 64;
/// About this many rows (tokens x GQA heads) per tile: enough rows to amortise the block
/// conversion, few enough that a 512-token prompt still makes dozens of tiles for the threads.
pub const FLASH_ROWS: usize = 64;

/// Query tokens per tile for this shape.
pub fn flash_tokens_per_tile(s: &AttnShape) -> usize {
    (FLASH_ROWS / (s.n_heads / s.n_kv_heads)).max(1)
}

/// f32 scratch a tile of `rows` rows needs.
pub fn flash_scratch_len(head_dim: usize, rows: usize) -> usize {
    2 * FLASH_KEYS * head_dim + SC_ROWS * FLASH_KEYS + rows * (head_dim + 2)
}

/// Rows whose scores the SIMD tile keeps at once (its register tile is this many rows).
pub(crate) const SC_ROWS: usize = 6;

/// A tile's scratch, cut from one buffer of `flash_scratch_len` floats.
pub struct FlashBuf<'a> {
    /// One key block of K and V for this tile's KV head, widened to f32: (FLASH_KEYS, head_dim)
    /// (the SIMD tile stores K transposed: (head_dim, FLASH_KEYS)).
    pub(crate) kf: &'a mut [f32],
    pub(crate) vf: &'a mut [f32],
    /// Scores / probabilities over a block's keys: SC_ROWS rows of FLASH_KEYS.
    pub(crate) sc: &'a mut [f32],
    /// (rows, head_dim): the accumulators, and the tile's output when the tile returns.
    pub acc: &'a mut [f32],
    pub(crate) m: &'a mut [f32],
    pub(crate) l: &'a mut [f32],
}

impl<'a> FlashBuf<'a> {
    pub fn new(buf: &'a mut [f32], head_dim: usize, rows: usize) -> Self {
        let (kf, rest) = buf.split_at_mut(FLASH_KEYS * head_dim);
        let (vf, rest) = rest.split_at_mut(FLASH_KEYS * head_dim);
        let (sc, rest) = rest.split_at_mut(SC_ROWS * FLASH_KEYS);
        let (acc, rest) = rest.split_at_mut(rows * head_dim);
        let (m, rest) = rest.split_at_mut(rows);
        let l = &mut rest[..rows];
        FlashBuf {
            kf,
            vf,
            sc,
            acc,
            m,
            l,
        }
    }
}

/// The rows of tile (kv head `kvh`, tokens r0..r1): row i is token r0 + i / g, query head
/// kvh * g + i % g. Returns (g, rows, first key, last key).
pub(crate) fn tile_geometry(s: &AttnShape, r0: usize, r1: usize) -> (usize, usize, usize, usize) {
    let g = s.n_heads / s.n_kv_heads;
    let first = *key_range(s.pos0 + r0, s.window).start();
    (g, (r1 - r0) * g, first, s.pos0 + r1 - 1)
}

/// Rows i0..i0 + R of tile (kv head, tokens r0..) against key block kb0..kb0 + n: each row's
/// visible keys relative to kb0 (None: none, a row whose position is before the block or whose
/// window ends before it), and the union lo..hi of them (lo >= hi: no row sees any key).
#[cfg(target_arch = "x86_64")]
pub(crate) fn visible<const R: usize>(
    s: &AttnShape,
    r0: usize,
    i0: usize,
    kb0: usize,
    n: usize,
) -> ([Option<(usize, usize)>; R], usize, usize) {
    let g = s.n_heads / s.n_kv_heads;
    let mut vis = [None::<(usize, usize)>; R];
    let (mut jlo, mut jhi) = (usize::MAX, 0usize);
    for (r, v) in vis.iter_mut().enumerate() {
        let p = s.pos0 + r0 + (i0 + r) / g;
        let a = (*key_range(p, s.window).start()).max(kb0);
        let b = p.min(kb0 + n - 1);
        if a <= b {
            *v = Some((a - kb0, b - kb0));
            jlo = jlo.min(a - kb0);
            jhi = jhi.max(b - kb0 + 1);
        }
    }
    (vis, jlo, jhi)
}

/// Cache element types the SIMD flash tiles read (their `const T: u8` parameter).
#[cfg(target_arch = "x86_64")]
pub mod kv_ty {
    pub const F16: u8 = 0;
    pub const Q8_0: u8 = 1;
    pub const Q4_0: u8 = 2;
}

/// A layer's F16, Q8_0 or Q4_0 cache as the SIMD flash tiles read it: its bytes and their type.
/// Made by `KvBytes::of`, which checks that a head is whole blocks.
#[cfg(target_arch = "x86_64")]
pub struct KvBytes<'a> {
    pub(crate) bytes: &'a [u8],
    pub ty: crate::KvType,
}

#[cfg(target_arch = "x86_64")]
impl<'a> KvBytes<'a> {
    /// None for an F32 cache (which has its own kernel).
    pub fn of(x: KvSlice<'a>, head_dim: usize) -> Option<KvBytes<'a>> {
        let bytes: &[u8] = match x {
            KvSlice::F16(x) => bytemuck::cast_slice(x),
            KvSlice::Q8_0(x) => bytemuck::cast_slice(x),
            KvSlice::Q4_0(x) => bytemuck::cast_slice(x),
            KvSlice::F32(_) => return None,
        };
        let ty = x.kv_type();
        ty.check_head_dim(head_dim)
            .unwrap_or_else(|e| panic!("attention: {e}"));
        Some(KvBytes { bytes, ty })
    }
    /// Bytes of `n` values.
    pub fn row_bytes(&self, n: usize) -> usize {
        self.ty.row_bytes(n)
    }
}

/// The SIMD flash tiles' outer loop (`arch::avx2::ops::flash_tile_impl`, `arch::avx512::ops::flash_tile_impl`): per
/// key block, K widened transposed and V widened (`$widen_k`, `$widen_v`), then the rows by
/// register tiles of up to SC_ROWS (`$row_tile::<R>`), and finally acc / l (`$scale`).
#[cfg(target_arch = "x86_64")]
macro_rules! flash_tile_body {
    ($q:expr, $k:expr, $v:expr, $s:expr, $kvh:expr, $r0:expr, $r1:expr, $f:expr,
     $widen_k:expr, $widen_v:expr, $row_tile:ident, $scale:path) => {{
        let (q, k, v, s, kvh, r0, r1, f) = ($q, $k, $v, $s, $kvh, $r0, $r1, $f);
        let hd = s.head_dim;
        // Cache rows as bytes: a position's row and a head's part of it.
        let (k, v): (&$crate::ops::KvBytes, &$crate::ops::KvBytes) = (k, v);
        let (kv_stride, head) = (k.row_bytes(s.n_kv_heads * hd), k.row_bytes(hd));
        let (_, rows, first, last) = $crate::ops::tile_geometry(s, r0, r1);
        f.acc[..rows * hd].fill(0.0);
        f.m[..rows].fill(f32::NEG_INFINITY);
        f.l[..rows].fill(0.0);
        let (kt, vf) = (f.kf.as_mut_ptr(), f.vf.as_mut_ptr());
        let mut kb0 = first;
        while kb0 <= last {
            let n = (last + 1 - kb0).min($crate::ops::FLASH_KEYS);
            let off = kb0 * kv_stride + kvh * head;
            $widen_k(kt, k.bytes.as_ptr().add(off), n, hd, kv_stride);
            $widen_v(vf, v.bytes.as_ptr().add(off), n, hd, kv_stride);
            let mut i0 = 0;
            while i0 < rows {
                let left = rows - i0;
                match left.min($crate::ops::SC_ROWS) {
                    1 => $row_tile::<1>(q, s, kvh, r0, i0, kb0, n, kt, vf, f),
                    2 => $row_tile::<2>(q, s, kvh, r0, i0, kb0, n, kt, vf, f),
                    3 => $row_tile::<3>(q, s, kvh, r0, i0, kb0, n, kt, vf, f),
                    4 => $row_tile::<4>(q, s, kvh, r0, i0, kb0, n, kt, vf, f),
                    5 => $row_tile::<5>(q, s, kvh, r0, i0, kb0, n, kt, vf, f),
                    _ => $row_tile::<6>(q, s, kvh, r0, i0, kb0, n, kt, vf, f),
                }
                i0 += left.min($crate::ops::SC_ROWS);
            }
            kb0 += n;
        }
        // Every row sees at least its own position, so l >= 1.
        for i in 0..rows {
            $scale(f.acc.as_mut_ptr().add(i * hd), hd, 1.0 / f.l[i]);
        }
    }};
}
#[cfg(target_arch = "x86_64")]
pub(crate) use flash_tile_body;
