//! A LoRA pair's term on the CPU: out (n, rows) += scale * (x (n, cols) @ A^T) @ B^T, A (rank,
//! cols) and B (rows, rank) in f32, f16 or bf16.
//!
//! Decoding reads both matrices once per token, so each is one pass at memory speed:
//! - the down projection d = A x reads A's rows as the file has them (rank dot products of
//!   `cols` values);
//! - the up projection reads B in panels of 32 rows (`LoraUp`, made once by `prepare`: the
//!   panel's r-th values of its 32 rows side by side), so that out[j..j+32] accumulates
//!   d[0] B[j..j+32, 0] + d[1] B[j.., 1] + ...: one contiguous run of memory, vector loads, no
//!   horizontal sums, whatever the rank. (B as the file has it is `rows` dot products of
//!   `rank` values, a horizontal sum each: at rank 16 that was most of the time; B transposed
//!   is rank short runs, which the hardware prefetcher follows badly: measured 2.4 GB/s.)
//!
//! The arithmetic of each value is fixed, whatever the ISA, the thread count or how many tokens
//! the call has (`down_scalar` / `up_scalar` are the spec the AVX2 kernels match bit for bit):
//! - d[r]: 32 partial sums, element c into sum c % 32 by `mul_add` in order of c, the row
//!   padded with zeros to a multiple of 32; then sums i and i + 16 added (i < 16), i and i + 8,
//!   i + 4, i + 2, i + 1;
//! - u[j]: one `mul_add` chain over r = 0..rank from +0.0 of B[j, r] * d[r]; then
//!   out[j] += scale * u[j] (a product, then a sum).
//!
//! Threads: every down projection of the call (several terms: one per sequence of a batch, each
//! its own adapter, `Backend::lora_batch`) by (token, group of A's rows), then every up
//! projection by (token, block of output rows): two pool jobs, each left on the calling thread
//! when it is small, as the base matmul does.

use super::{CpuBackend, SyncPtr};
use crate::{LoraAdapter, Rows};
use cria_core::tensor::AlignedBuf;
use cria_core::{DType, Tensor};

/// Partial sums of the down projection's dot products (4 AVX2 vectors, 2 AVX-512 ones).
pub const LANES: usize = 32;
/// Output rows per work item of one token's up projection (a multiple of 32).
const UP_ROWS: usize = 512;
/// A's rows per work item of one token's down projection.
const DOWN_ROWS: usize = 4;

/// Elements of an f32, f16 or bf16 matrix.
#[derive(Clone, Copy)]
pub enum Elems<'a> {
    F32(&'a [f32]),
    F16(&'a [u16]),
    Bf16(&'a [u16]),
}

impl<'a> Elems<'a> {
    /// `bytes` of `dtype` (F32 / F16 / BF16, aligned to its element), else None.
    pub fn of(dtype: DType, bytes: &'a [u8]) -> Option<Elems<'a>> {
        match dtype {
            DType::F32 => bytemuck::try_cast_slice(bytes).ok().map(Elems::F32),
            DType::F16 => bytemuck::try_cast_slice(bytes).ok().map(Elems::F16),
            DType::BF16 => bytemuck::try_cast_slice(bytes).ok().map(Elems::Bf16),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Elems::F32(v) => v.len(),
            Elems::F16(v) | Elems::Bf16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element i widened to f32 (exact).
    #[inline]
    pub fn get(&self, i: usize) -> f32 {
        match self {
            Elems::F32(v) => v[i],
            Elems::F16(v) => crate::arch::scalar::dot::f16_to_f32(v[i]),
            Elems::Bf16(v) => f32::from_bits((v[i] as u32) << 16),
        }
    }

    /// Elements from..from + n.
    fn slice(&self, from: usize, n: usize) -> Elems<'a> {
        match *self {
            Elems::F32(v) => Elems::F32(&v[from..from + n]),
            Elems::F16(v) => Elems::F16(&v[from..from + n]),
            Elems::Bf16(v) => Elems::Bf16(&v[from..from + n]),
        }
    }
}

/// Rows per panel of `LoraUp` (four AVX2 vectors).
pub const PANEL: usize = 32;

/// B (rows, rank) in panels of 32 rows: panel p holds, for r = 0..rank, B[32p..32p+32, r]
/// side by side (element (p * rank + r) * 32 + j % 32; rows past the end are zero), in B's
/// element type. The up projection then reads one contiguous run (what the hardware
/// prefetcher follows) and each load is 8 rows' r-th values: no horizontal sums.
pub struct LoraUp {
    pub dtype: DType,
    pub rank: usize,
    pub rows: usize,
    buf: AlignedBuf,
}

impl LoraUp {
    /// `b`: an f32 / f16 / bf16 tensor of `rows` rows of `rank` values (GGML ne [rank, rows]).
    pub fn new(b: &Tensor) -> Option<LoraUp> {
        let (rank, rows) = (b.cols(), b.rows());
        Elems::of(b.dtype, b.bytes())?;
        let size = b.dtype.type_size();
        let panels = rows.div_ceil(PANEL);
        let mut buf = AlignedBuf::zeroed(panels * rank * PANEL * size);
        let dst = buf.as_mut_slice();
        let raw = b.bytes();
        for j in 0..rows {
            for r in 0..rank {
                let s = (j * rank + r) * size;
                let d = ((j / PANEL * rank + r) * PANEL + j % PANEL) * size;
                dst[d..d + size].copy_from_slice(&raw[s..s + size]);
            }
        }
        Some(LoraUp {
            dtype: b.dtype,
            rank,
            rows,
            buf,
        })
    }

    /// The panels' elements.
    pub fn elems(&self) -> Elems<'_> {
        Elems::of(self.dtype, self.buf.as_slice()).expect("LoraUp holds f32, f16 or bf16")
    }

    /// B[j, r], widened to f32.
    pub fn get(&self, j: usize, r: usize) -> f32 {
        self.elems()
            .get((j / PANEL * self.rank + r) * PANEL + j % PANEL)
    }
}

/// `Backend::prepare_lora` on the CPU: A as it is (f32 / f16 / bf16, read row by row), B with
/// its panels attached (`LoraUp`); other types (or a misaligned A) go through `prepare` and
/// `lora` falls back to two matmuls.
pub(crate) fn prepare(
    b: &CpuBackend,
    a: Tensor,
    up: Tensor,
) -> cria_core::Result<(Tensor, Tensor)> {
    // With repacking off (CRIA_REPACK=0, the plain path) the adapter takes the plain matmuls
    // too, like every other product there.
    let fast = b.repacks()
        && Elems::of(a.dtype, a.bytes()).is_some()
        && matches!(up.dtype, DType::F32 | DType::F16 | DType::BF16)
        && a.rows() == up.cols();
    if !fast {
        return Ok((
            super::matmul::prepare(b, a)?,
            super::matmul::prepare(b, up)?,
        ));
    }
    let mut up = up;
    let t = LoraUp::new(&up).map(std::sync::Arc::new);
    up.prepared = t.map(|t| t as std::sync::Arc<dyn std::any::Any + Send + Sync>);
    Ok((a, up))
}

/// The transposed B `prepare` attached, if any.
pub(crate) fn packed(w: &Tensor) -> Option<&LoraUp> {
    w.prepared.as_ref()?.downcast_ref::<LoraUp>()
}

/// The scalar spec of the down projection: d[r] = A[r] . x (see the module doc for the order).
/// `a`: d.len() rows of x.len() elements.
pub fn down_scalar(d: &mut [f32], a: Elems, x: &[f32]) {
    let cols = x.len();
    assert_eq!(a.len(), d.len() * cols, "down_scalar: A is not rank x cols");
    for (r, dr) in d.iter_mut().enumerate() {
        let mut s = [0f32; LANES];
        let padded = cols.div_ceil(LANES) * LANES;
        for c in 0..padded {
            let (av, xv) = if c < cols {
                (a.get(r * cols + c), x[c])
            } else {
                (0.0, 0.0)
            };
            s[c % LANES] = av.mul_add(xv, s[c % LANES]);
        }
        *dr = reduce32(&mut s);
    }
}

/// The 32 partial sums added by halves: i + 16, i + 8, i + 4, i + 2, i + 1.
pub fn reduce32(s: &mut [f32; LANES]) -> f32 {
    let mut h = LANES / 2;
    while h > 0 {
        for i in 0..h {
            s[i] += s[i + h];
        }
        h /= 2;
    }
    s[0]
}

/// The scalar spec of the up projection: out[i] += scale * (B[j0 + i, :] . d) (see the module
/// doc for the order); d.len() == rank, j0 + out.len() <= rows.
pub fn up_scalar(out: &mut [f32], b: &LoraUp, j0: usize, d: &[f32], scale: f32) {
    assert!(
        d.len() == b.rank && j0 + out.len() <= b.rows,
        "up_scalar: d or out do not fit B"
    );
    for (i, o) in out.iter_mut().enumerate() {
        let mut u = 0f32;
        for (r, &dr) in d.iter().enumerate() {
            u = b.get(j0 + i, r).mul_add(dr, u);
        }
        *o += scale * u;
    }
}

/// d = A x for one token (d.len() rows of A).
fn down(b: &CpuBackend, d: &mut [f32], a: Elems, x: &[f32]) {
    let cols = x.len();
    #[cfg(target_arch = "x86_64")]
    if b.isa().has_avx2() {
        for (r, dr) in d.iter_mut().enumerate() {
            // SAFETY: AVX2/FMA/F16C were detected (has_avx2); the row is `cols` elements of A.
            *dr = unsafe { crate::arch::avx2::lora::dot32(a.slice(r * cols, cols), x) };
        }
        return;
    }
    let _ = b;
    down_scalar(d, a, x)
}

/// out (rows j0..j0 + out.len()) += scale * B d for one token; j0 a multiple of `PANEL`.
fn up(b: &CpuBackend, out: &mut [f32], bt: &LoraUp, j0: usize, d: &[f32], scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if b.isa().has_avx2() {
        assert!(j0.is_multiple_of(PANEL) && j0 + out.len() <= bt.rows && d.len() == bt.rank);
        // SAFETY: AVX2/FMA/F16C were detected; the panels hold ceil(rows / 32) * rank * 32
        // elements and rows j0..j0 + out.len() lie inside them (asserted).
        unsafe { crate::arch::avx2::lora::up(out, bt.elems(), j0 / PANEL, d, scale) };
        return;
    }
    let _ = b;
    up_scalar(out, bt, j0, d, scale)
}

/// Most terms one `lora` call takes (the forward batches at most this many sequences' terms).
pub(crate) const MAX_TERMS: usize = 64;

/// One adapter's term on some rows of a product.
struct Term<'a> {
    pub rows: Rows,
    /// The down projection (rank, cols), f32 / f16 / bf16 as the file has it.
    pub a: &'a Tensor,
    pub b: &'a LoraUp,
    pub scale: f32,
}

/// A term (rows, pair, scale) as the kernels read it (the pair's B has `LoraUp` panels:
/// checked by the callers).
fn view<'a>(&(rows, ad, scale): &(Rows, &'a LoraAdapter<CpuBackend>, f32)) -> Term<'a> {
    Term {
        rows,
        a: &ad.a,
        b: packed(&ad.b).expect("lora: a pair without LoraUp panels"),
        scale,
    }
}

/// Which (term, token, block) item `i` of a job is, blocks per token of each term `per[t]`.
fn locate(
    terms: &[(Rows, &LoraAdapter<CpuBackend>, f32)],
    per: &[usize],
    mut i: usize,
) -> (usize, usize, usize) {
    for (t, (rows, _, _)) in terms.iter().enumerate() {
        let n = rows.len() * per[t];
        if i < n {
            return (t, rows.start + i / per[t], i % per[t]);
        }
        i -= n;
    }
    unreachable!("item beyond the job")
}

/// For each term, out[rows] (rows of `B.rows` values) += scale * (x[rows] (rows of `cols`
/// values) @ A^T) @ B^T: first every down projection (items: a token's group of A's rows), then
/// every up projection (items: a token's block of output rows), each a pool job (or the calling
/// thread's, when small). Terms share the product (same rows and cols); their rows are in
/// increasing order and disjoint. `d` holds the down-projected rows: row g's at g * (largest
/// rank), so at least (last row + 1) * (largest rank) values.
pub(crate) fn lora(
    b: &CpuBackend,
    out: &mut [f32],
    x: &[f32],
    terms: &[(Rows, &LoraAdapter<CpuBackend>, f32)],
    d: &mut [f32],
) {
    let Some(t0) = terms.first().map(view) else {
        return;
    };
    let (rows, cols) = (t0.b.rows, t0.a.cols());
    let rmax = terms.iter().map(|t| view(t).b.rank).max().unwrap_or(0);
    let mut end = 0;
    for t in terms.iter().map(view) {
        assert!(
            t.b.rows == rows
                && t.a.cols() == cols
                && t.a.rows() == t.b.rank
                && t.rows.start >= end
                && t.rows.end * cols <= x.len()
                && t.rows.end * rows <= out.len()
                && Elems::of(t.a.dtype, t.a.bytes()).is_some(),
            "lora {}: terms do not fit (rows {:?}, rank {}, {}x{} vs {rows}x{cols}, x {}, out {})",
            t.a.name,
            t.rows,
            t.b.rank,
            t.b.rows,
            t.a.cols(),
            x.len(),
            out.len()
        );
        end = t.rows.end;
    }
    assert!(
        terms.len() <= MAX_TERMS && d.len() >= end * rmax,
        "lora: scratch too small"
    );
    if rows == 0 || rmax == 0 {
        return;
    }
    let dp = SyncPtr(d.as_mut_ptr());
    let op = SyncPtr(out.as_mut_ptr());
    // Down: item = (term, token, DOWN_ROWS of A's rows).
    let mut per = [0usize; MAX_TERMS];
    let (mut items, mut work) = (0, 0);
    for (p, t) in per.iter_mut().zip(terms.iter().map(view)) {
        *p = t.b.rank.div_ceil(DOWN_ROWS);
        items += t.rows.len() * *p;
        work += t.rows.len() * t.b.rank * cols;
    }
    b.run_items(items, work, &|i, _| {
        let (ti, g, blk) = locate(terms, &per, i);
        let t = view(&terms[ti]);
        let (r0, r1) = (blk * DOWN_ROWS, ((blk + 1) * DOWN_ROWS).min(t.b.rank));
        let a = Elems::of(t.a.dtype, t.a.bytes()).expect("checked above");
        // SAFETY: row g's values r0..r1 of d (at g * rmax, r1 <= rank <= rmax, g < end) belong
        // to this item alone; d holds end * rmax values; the pool joins before d's borrow ends.
        let dr = unsafe { std::slice::from_raw_parts_mut(dp.get().add(g * rmax + r0), r1 - r0) };
        down(
            b,
            dr,
            a.slice(r0 * cols, (r1 - r0) * cols),
            &x[g * cols..(g + 1) * cols],
        );
    });
    // Up: item = (term, token, UP_ROWS output rows).
    let blocks = rows.div_ceil(UP_ROWS);
    let (mut items, mut work) = (0, 0);
    for (p, t) in per.iter_mut().zip(terms.iter().map(view)) {
        *p = blocks;
        items += t.rows.len() * blocks;
        work += t.rows.len() * rows * t.b.rank;
    }
    let d: &[f32] = d;
    b.run_items(items, work, &|i, _| {
        let (ti, g, blk) = locate(terms, &per, i);
        let t = view(&terms[ti]);
        let (j0, j1) = (blk * UP_ROWS, ((blk + 1) * UP_ROWS).min(rows));
        // SAFETY: out row g's values j0..j1 (g < end, end * rows <= out.len()) belong to this
        // item alone (terms' rows are disjoint); the pool joins before out's borrow ends.
        let o = unsafe { std::slice::from_raw_parts_mut(op.get().add(g * rows + j0), j1 - j0) };
        up(b, o, t.b, j0, &d[g * rmax..g * rmax + t.b.rank], t.scale);
    });
}

impl CpuBackend {
    /// `lora` on slices, for tests: out (n, rows) += scale * (x (n, cols) @ A^T) @ B^T, with
    /// `a` and `b` as `prepare_lora` made them (None if it gave B no panels: a type the fast
    /// path does not take).
    pub fn lora_slices(
        &self,
        out: &mut [f32],
        x: &[f32],
        n: usize,
        a: &Tensor,
        b: &Tensor,
        scale: f32,
    ) -> Option<()> {
        let bt = packed(b)?;
        let mut d = vec![0f32; n * bt.rank];
        let ad = LoraAdapter {
            a: a.clone(),
            b: b.clone(),
            rank: bt.rank,
            rows: bt.rows,
            cols: a.cols(),
            scale: 1.0,
        };
        lora(self, out, x, &[(Rows::new(0, n), &ad, scale)], &mut d);
        Some(())
    }
}
