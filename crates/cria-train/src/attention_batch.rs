//! Causal GQA attention over a packed batch: several sequences, each a contiguous run of rows,
//! each attending only to itself (no attention across documents), forward keeping one
//! log-sum-exp per row and head, backward recomputing the probabilities from it (the blocked
//! math of `attention::flash_attention_*`, whose scalar code is the reference these are checked
//! against). Layouts as in `attention`: q/out/dq/dout `(rows, n_heads, head_dim)`, k/v/dk/dv
//! `(rows, n_kv_heads, head_dim)`, lse `(rows, n_heads)`; `dims.t` is ignored (each sequence's
//! length is its range's). The ranges must lie inside the buffers and not overlap.
//!
//! How it runs: blocks of `BQ` queries x `BK` keys, every product of a block a small GEMM
//! (`gemm`: register tiles of 4 rows x 32 or 16 columns) over the rows as they lie in q/k/v/dout
//! (row stride `n_heads * head_dim` or `n_kv_heads * head_dim`) or over a transposed copy of a
//! block in per-thread scratch (`thread_local`, grown once, so steady state allocates nothing);
//! nothing kept grows with t^2. Work items go to the backend's threads (`CpuBackend::for_each`):
//! - forward: items (sequence, query head, query block), the last (heaviest: the causal mask
//!   keeps more keys) blocks first; each writes its own rows of `out` and `lse`;
//! - backward, two passes so that no two items write the same rows, at the price of computing
//!   the scores and dP twice (7 block products per block pair instead of 5):
//!   1. items (sequence, KV head, key block): over every query head of the group and every
//!      query block at or after the key block, `dV += P^T dO` and `dK += scale dS^T Q`, in the
//!      item's own accumulators, added to its rows of `dk`/`dv` at the end;
//!   2. items (sequence, query head, query block): `dQ += scale dS K` over the key blocks.
//!
//! Scores and probabilities are worked in the transposed orientation where that lets the
//! unchanging operand be read in place (pass 1 holds keys as rows, queries as columns).
//!
//! SIMD: the bodies are plain Rust over fixed-width lane arrays, compiled three times: portable
//! (the scalar twin, separate multiply and add), and under `#[target_feature]` for AVX2+FMA and
//! AVX-512 (fused multiply-add), chosen by the backend's `Isa`. `exp` is a Cephes-style
//! polynomial (about 2 ulp) so that it vectorizes. Results differ from the scalar reference
//! only by rounding (summation order, fma, exp).

use crate::attention::AttnDims;
use crate::{check_len, prod, Error, Result};
use cria_kernels::{CpuBackend, Isa};
use std::cell::RefCell;
use std::ops::Range;

/// Queries per block.
const BQ: usize = 64;
/// Keys per block.
const BK: usize = 64;

/// `out`, `lse` overwritten for every row of every sequence in `seqs` (rows outside them are
/// left alone).
#[allow(clippy::too_many_arguments)]
pub fn forward(
    cpu: &CpuBackend,
    out: &mut [f32],
    lse: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seqs: &[Range<usize>],
    dims: AttnDims,
) -> Result<()> {
    const OP: &str = "attention_batch::forward";
    let g = Geo::check(OP, dims, seqs, q.len(), k.len(), v.len())?;
    check_len(OP, "out", out.len(), q.len())?;
    check_len(OP, "lse", lse.len(), g.rows * g.nh)?;
    let a = Fwd {
        g,
        q,
        k,
        v,
        out: SyncPtr(out.as_mut_ptr()),
        lse: SyncPtr(lse.as_mut_ptr()),
    };
    let per_seq = |len: usize| g.nh * len.div_ceil(BQ);
    let items: usize = seqs.iter().map(|r| per_seq(r.len())).sum();
    let need = g.fwd_scratch();
    let isa = cpu.isa();
    cpu.for_each(items, &|item, _thread| {
        let (r, idx) = locate(seqs, per_seq, item);
        let nb = r.len().div_ceil(BQ);
        let (qb, h) = (nb - 1 - idx / g.nh, idx % g.nh);
        with_scratch(need, |s| match isa {
            // SAFETY: the backend only holds an Isa that `available()` confirmed on this CPU.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { fwd_avx512(&a, s, r.start, r.len(), h, qb) },
            // SAFETY: as above (AVX-512 implies AVX2 + FMA, handled in the arm above).
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { fwd_avx2(&a, s, r.start, r.len(), h, qb) },
            _ => fwd_item::<false>(&a, s, r.start, r.len(), h, qb),
        });
    });
    Ok(())
}

/// ADDS into dq, dk, dv.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    cpu: &CpuBackend,
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dout: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    seqs: &[Range<usize>],
    dims: AttnDims,
) -> Result<()> {
    const OP: &str = "attention_batch::backward";
    let g = Geo::check(OP, dims, seqs, q.len(), k.len(), v.len())?;
    check_len(OP, "dout", dout.len(), q.len())?;
    check_len(OP, "out", out.len(), q.len())?;
    check_len(OP, "dq", dq.len(), q.len())?;
    check_len(OP, "dk", dk.len(), k.len())?;
    check_len(OP, "dv", dv.len(), k.len())?;
    check_len(OP, "lse", lse.len(), g.rows * g.nh)?;
    let a = Bwd {
        g,
        q,
        k,
        v,
        dout,
        out,
        lse,
        dq: SyncPtr(dq.as_mut_ptr()),
        dk: SyncPtr(dk.as_mut_ptr()),
        dv: SyncPtr(dv.as_mut_ptr()),
    };
    let isa = cpu.isa();
    // Pass 1: dK, dV by (sequence, KV head, key block), the early key blocks (more queries
    // after them) first.
    let per_seq = |len: usize| g.nkv * len.div_ceil(BK);
    let items: usize = seqs.iter().map(|r| per_seq(r.len())).sum();
    let need = g.dkv_scratch();
    cpu.for_each(items, &|item, _thread| {
        let (r, idx) = locate(seqs, per_seq, item);
        let (kb, kvh) = (idx / g.nkv, idx % g.nkv);
        with_scratch(need, |s| match isa {
            // SAFETY: the backend only holds an Isa that `available()` confirmed on this CPU.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { dkv_avx512(&a, s, r.start, r.len(), kvh, kb) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { dkv_avx2(&a, s, r.start, r.len(), kvh, kb) },
            _ => dkv_item::<false>(&a, s, r.start, r.len(), kvh, kb),
        });
    });
    // Pass 2: dQ by (sequence, query head, query block), the last blocks first.
    let per_seq = |len: usize| g.nh * len.div_ceil(BQ);
    let items: usize = seqs.iter().map(|r| per_seq(r.len())).sum();
    let need = g.dq_scratch();
    cpu.for_each(items, &|item, _thread| {
        let (r, idx) = locate(seqs, per_seq, item);
        let nb = r.len().div_ceil(BQ);
        let (qb, h) = (nb - 1 - idx / g.nh, idx % g.nh);
        with_scratch(need, |s| match isa {
            // SAFETY: the backend only holds an Isa that `available()` confirmed on this CPU.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { dq_avx512(&a, s, r.start, r.len(), h, qb) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { dq_avx2(&a, s, r.start, r.len(), h, qb) },
            _ => dq_item::<false>(&a, s, r.start, r.len(), h, qb),
        });
    });
    Ok(())
}

/// The geometry of a call, checked.
#[derive(Clone, Copy)]
struct Geo {
    nh: usize,
    nkv: usize,
    hd: usize,
    /// Query heads per KV head.
    group: usize,
    scale: f32,
    /// Rows in the buffers.
    rows: usize,
}

impl Geo {
    fn check(
        op: &str,
        d: AttnDims,
        seqs: &[Range<usize>],
        q: usize,
        k: usize,
        v: usize,
    ) -> Result<Geo> {
        if d.n_heads == 0 || d.n_kv_heads == 0 || d.n_heads % d.n_kv_heads != 0 {
            return Err(Error(format!(
                "{op}: {} query heads are not groups of {} KV heads",
                d.n_heads, d.n_kv_heads
            )));
        }
        if d.head_dim == 0 {
            return Err(Error(format!("{op}: head_dim is 0")));
        }
        let nq = prod(op, &[d.n_heads, d.head_dim])?;
        if q % nq != 0 {
            return Err(Error(format!(
                "{op}: q has {q} values, not rows of {} heads x {}",
                d.n_heads, d.head_dim
            )));
        }
        let rows = q / nq;
        let nkv = prod(op, &[rows, d.n_kv_heads, d.head_dim])?;
        check_len(op, "k", k, nkv)?;
        check_len(op, "v", v, nkv)?;
        check_ranges(op, seqs, rows)?;
        Ok(Geo {
            nh: d.n_heads,
            nkv: d.n_kv_heads,
            hd: d.head_dim,
            group: d.n_heads / d.n_kv_heads,
            scale: d.scale,
            rows,
        })
    }

    /// Row stride of q/out/dq/dout.
    fn ldq(&self) -> usize {
        self.nh * self.hd
    }

    /// Row stride of k/v/dk/dv.
    fn ldk(&self) -> usize {
        self.nkv * self.hd
    }

    /// Forward scratch: kt (hd x BK), scores (BQ x BK), o (BQ x hd), max and sum (BQ).
    fn fwd_scratch(&self) -> usize {
        self.hd * BK + BQ * BK + BQ * self.hd + 2 * BQ
    }

    /// Pass 1 scratch: qt, dot (hd x BQ), st, dpt (BK x BQ), dk, dv (BK x hd), lse, D (BQ).
    fn dkv_scratch(&self) -> usize {
        2 * self.hd * BQ + 2 * BK * BQ + 2 * BK * self.hd + 2 * BQ
    }

    /// Pass 2 scratch: kt, vt (hd x BK), s, dp (BQ x BK), dq (BQ x hd), lse, D (BQ).
    fn dq_scratch(&self) -> usize {
        2 * self.hd * BK + 2 * BQ * BK + BQ * self.hd + 2 * BQ
    }
}

/// Every range inside `0..rows`, none overlapping another (items write rows in parallel).
fn check_ranges(op: &str, seqs: &[Range<usize>], rows: usize) -> Result<()> {
    for r in seqs {
        if r.start > r.end || r.end > rows {
            return Err(Error(format!(
                "{op}: sequence rows {r:?} are not inside the {rows} rows given"
            )));
        }
    }
    let overlap = |a: &Range<usize>, b: &Range<usize>| {
        !a.is_empty() && !b.is_empty() && a.start < b.end && b.start < a.end
    };
    let sorted = seqs.windows(2).all(|w| w[0].end <= w[1].start);
    if !sorted {
        // The unusual case: sort a copy of the non-empty ranges and compare neighbours.
        let mut s: Vec<_> = seqs.iter().filter(|r| !r.is_empty()).cloned().collect();
        s.sort_by_key(|r| r.start);
        if let Some(w) = s.windows(2).find(|w| overlap(&w[0], &w[1])) {
            return Err(Error(format!(
                "{op}: sequence rows {:?} and {:?} overlap",
                w[0], w[1]
            )));
        }
    }
    Ok(())
}

/// Item `item` of the concatenation of every sequence's `per_seq(len)` items: (its sequence's
/// rows, its index among them).
fn locate(
    seqs: &[Range<usize>],
    per_seq: impl Fn(usize) -> usize,
    mut item: usize,
) -> (Range<usize>, usize) {
    for r in seqs {
        let n = per_seq(r.len());
        if item < n {
            return (r.clone(), item);
        }
        item -= n;
    }
    unreachable!("attention_batch: work item past the last sequence")
}

thread_local! {
    /// Each thread's block buffers, grown to the largest call seen.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

fn with_scratch(n: usize, f: impl FnOnce(&mut [f32])) {
    SCRATCH.with(|c| {
        let mut v = c.borrow_mut();
        if v.len() < n {
            v.resize(n, 0.0);
        }
        f(&mut v[..n])
    })
}

/// An output pointer the work items share. Sound because each item writes only rows no other
/// item of the same pass writes (see the module doc), the slices it derives lie inside the
/// buffer (ranges checked by `check_ranges`, lengths by `Geo::check` and `check_len`), and
/// `for_each` returns only when every item is done, while the `&mut` borrow is still held.
#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: see above: disjoint writes only, lifetime bounded by `for_each`.
unsafe impl Send for SyncPtr {}
// SAFETY: as above.
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// `len` values at `at`.
    ///
    /// # Safety
    /// `at + len` within the buffer, and no other live reference to those values.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, at: usize, len: usize) -> &mut [f32] {
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(at), len) }
    }
}

struct Fwd<'a> {
    g: Geo,
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    out: SyncPtr,
    lse: SyncPtr,
}

struct Bwd<'a> {
    g: Geo,
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    dout: &'a [f32],
    out: &'a [f32],
    lse: &'a [f32],
    dq: SyncPtr,
    dk: SyncPtr,
    dv: SyncPtr,
}

/// Cuts `n` values off the front of `s`.
fn take<'a>(s: &mut &'a mut [f32], n: usize) -> &'a mut [f32] {
    let (a, b) = std::mem::take(s).split_at_mut(n);
    *s = b;
    a
}

/// `n` rounded up to a multiple of 16 (the narrowest GEMM tile), at most `max`.
fn pad16(n: usize, max: usize) -> usize {
    n.div_ceil(16).saturating_mul(16).min(max)
}

/// `dst[d * ld + j] = src[(j0 + j) * lds + d]` for `j < n`, `d < hd`; zero for `n <= j < nc`:
/// rows `j0..j0 + n` of a (rows, hd) block read with row stride `lds`, transposed to
/// (hd, ld), `scale`d.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn transpose(
    dst: &mut [f32],
    ld: usize,
    src: &[f32],
    lds: usize,
    n: usize,
    nc: usize,
    hd: usize,
    scale: f32,
) {
    // Gathers (strided reads, contiguous writes) vectorize; scatters are slow.
    for d in 0..hd {
        let drow = &mut dst[d * ld..][..nc];
        for (j, y) in drow[..n].iter_mut().enumerate() {
            *y = src[j * lds + d] * scale;
        }
        drow[n..].fill(0.0);
    }
}

// ---- forward -------------------------------------------------------------------------------

/// Query block `qb` of head `h` of the sequence at rows `base..base + len`.
#[inline(always)]
fn fwd_item<const F: bool>(
    a: &Fwd,
    mut s: &mut [f32],
    base: usize,
    len: usize,
    h: usize,
    qb: usize,
) {
    let g = a.g;
    let (hd, ldq, ldk) = (g.hd, g.ldq(), g.ldk());
    let kvo = (h / g.group) * hd;
    let (i0, i1) = (qb * BQ, ((qb + 1) * BQ).min(len));
    let m = i1 - i0;
    let kt = take(&mut s, hd * BK);
    let sc = take(&mut s, BQ * BK);
    let o = take(&mut s, BQ * hd);
    let mx = take(&mut s, BQ);
    let l = take(&mut s, BQ);
    o.fill(0.0);
    mx.fill(f32::NEG_INFINITY);
    l.fill(0.0);
    let qblk = &a.q[(base + i0) * ldq + h * hd..];
    let mut j0 = 0;
    while j0 < i1 {
        // Keys at or after i1 are masked for every query of the block.
        let j1 = (j0 + BK).min(i1);
        let (n, nc) = (j1 - j0, pad16(j1 - j0, BK));
        transpose(kt, BK, &a.k[(base + j0) * ldk + kvo..], ldk, n, nc, hd, 1.0);
        sc[..m * BK].fill(0.0);
        gemm::<F>(sc, BK, qblk, ldq, kt, BK, m, hd, nc);
        for i in 0..m {
            let row = &mut sc[i * BK..][..nc];
            // Keys j0 + j for j < nv are at or before query i0 + i.
            let nv = (i0 + i + 1).min(j1).saturating_sub(j0);
            if nv == 0 {
                row.fill(0.0);
                continue;
            }
            row.iter_mut().for_each(|x| *x *= g.scale);
            let new_max = mx[i].max(max_lanes(&row[..nv]));
            let c = exp(mx[i] - new_max);
            probs(row, new_max, nv);
            l[i] = l[i] * c + sum_lanes(row);
            mx[i] = new_max;
            o[i * hd..][..hd].iter_mut().for_each(|x| *x *= c);
        }
        gemm::<F>(
            o,
            hd,
            sc,
            BK,
            &a.v[(base + j0) * ldk + kvo..],
            ldk,
            m,
            n,
            hd,
        );
        j0 = j1;
    }
    for i in 0..m {
        let row = (base + i0 + i) * g.nh + h;
        // SAFETY: row `i0 + i` of head `h` belongs to this item alone (items are (sequence,
        // head, query block)); inside `out` and `lse` as the ranges were checked.
        let (orow, lrow) = unsafe { (a.out.slice(row * hd, hd), a.lse.slice(row, 1)) };
        let inv = 1.0 / l[i];
        for (y, &x) in orow.iter_mut().zip(&o[i * hd..][..hd]) {
            *y = x * inv;
        }
        lrow[0] = mx[i] + l[i].ln();
    }
}

// ---- backward, pass 1: dK, dV ----------------------------------------------------------------

/// Key block `kb` of KV head `kvh` of the sequence at rows `base..base + len`.
#[inline(always)]
fn dkv_item<const F: bool>(
    a: &Bwd,
    mut s: &mut [f32],
    base: usize,
    len: usize,
    kvh: usize,
    kb: usize,
) {
    let g = a.g;
    let (hd, ldq, ldk) = (g.hd, g.ldq(), g.ldk());
    let (j0, j1) = (kb * BK, ((kb + 1) * BK).min(len));
    let n = j1 - j0;
    let qt = take(&mut s, hd * BQ);
    let dot = take(&mut s, hd * BQ);
    let st = take(&mut s, BK * BQ);
    let dpt = take(&mut s, BK * BQ);
    let dk = take(&mut s, BK * hd);
    let dv = take(&mut s, BK * hd);
    let lse = take(&mut s, BQ);
    let big_d = take(&mut s, BQ);
    dk.fill(0.0);
    dv.fill(0.0);
    let kblk = &a.k[(base + j0) * ldk + kvh * hd..];
    let vblk = &a.v[(base + j0) * ldk + kvh * hd..];
    for h in kvh * g.group..(kvh + 1) * g.group {
        // The first query block holding a query at or after key j0.
        let mut i0 = j0 / BQ * BQ;
        while i0 < len {
            let i1 = (i0 + BQ).min(len);
            let (m, mc) = (i1 - i0, pad16(i1 - i0, BQ));
            let off = (base + i0) * ldq + h * hd;
            let (qblk, doblk) = (&a.q[off..], &a.dout[off..]);
            transpose(qt, BQ, qblk, ldq, m, mc, hd, 1.0);
            transpose(dot, BQ, doblk, ldq, m, mc, hd, 1.0);
            row_stats(a, base + i0, h, m, mc, lse, big_d);
            st[..n * BQ].fill(0.0);
            dpt[..n * BQ].fill(0.0);
            gemm::<F>(st, BQ, kblk, ldk, qt, BQ, n, hd, mc);
            gemm::<F>(dpt, BQ, vblk, ldk, dot, BQ, n, hd, mc);
            for j in 0..n {
                // Query i0 + i sees key j0 + j when i0 + i >= j0 + j: i from `first`.
                let first = (j0 + j).saturating_sub(i0);
                let (prow, dsrow) = (&mut st[j * BQ..][..mc], &mut dpt[j * BQ..][..mc]);
                dscores_t(prow, dsrow, g.scale, lse, big_d, first, m);
            }
            gemm::<F>(dv, hd, st, BQ, doblk, ldq, n, m, hd);
            gemm::<F>(dk, hd, dpt, BQ, qblk, ldq, n, m, hd);
            i0 = i1;
        }
    }
    for j in 0..n {
        let at = ((base + j0 + j) * g.nkv + kvh) * hd;
        // SAFETY: row `j0 + j` of KV head `kvh` belongs to this item alone in this pass (items
        // are (sequence, KV head, key block)); inside `dk`/`dv` as the ranges were checked.
        let (dkr, dvr) = unsafe { (a.dk.slice(at, hd), a.dv.slice(at, hd)) };
        for ((y, z), (&x, &w)) in dkr
            .iter_mut()
            .zip(dvr.iter_mut())
            .zip(dk[j * hd..][..hd].iter().zip(&dv[j * hd..][..hd]))
        {
            *y += g.scale * x;
            *z += w;
        }
    }
}

/// For query rows `row0..row0 + m` of head `h`: their log-sum-exp and `D = dO . O`, zero for
/// `m <= i < mc`.
#[inline(always)]
fn row_stats(
    a: &Bwd,
    row0: usize,
    h: usize,
    m: usize,
    mc: usize,
    lse: &mut [f32],
    big_d: &mut [f32],
) {
    let (hd, ldq) = (a.g.hd, a.g.ldq());
    for i in 0..m {
        let off = (row0 + i) * ldq + h * hd;
        lse[i] = a.lse[(row0 + i) * a.g.nh + h];
        big_d[i] = dot_lanes(&a.dout[off..][..hd], &a.out[off..][..hd]);
    }
    lse[m..mc].fill(0.0);
    big_d[m..mc].fill(0.0);
}

// ---- backward, pass 2: dQ --------------------------------------------------------------------

/// Query block `qb` of head `h` of the sequence at rows `base..base + len`.
#[inline(always)]
fn dq_item<const F: bool>(
    a: &Bwd,
    mut s: &mut [f32],
    base: usize,
    len: usize,
    h: usize,
    qb: usize,
) {
    let g = a.g;
    let (hd, ldq, ldk) = (g.hd, g.ldq(), g.ldk());
    let kvo = (h / g.group) * hd;
    let (i0, i1) = (qb * BQ, ((qb + 1) * BQ).min(len));
    let m = i1 - i0;
    let kt = take(&mut s, hd * BK);
    let vt = take(&mut s, hd * BK);
    let sc = take(&mut s, BQ * BK);
    let dp = take(&mut s, BQ * BK);
    let dq = take(&mut s, BQ * hd);
    let lse = take(&mut s, BQ);
    let big_d = take(&mut s, BQ);
    dq.fill(0.0);
    row_stats(a, base + i0, h, m, m, lse, big_d);
    let off = (base + i0) * ldq + h * hd;
    let (qblk, doblk) = (&a.q[off..], &a.dout[off..]);
    let mut j0 = 0;
    while j0 < i1 {
        let j1 = (j0 + BK).min(i1);
        let (n, nc) = (j1 - j0, pad16(j1 - j0, BK));
        let (kblk, vblk) = (
            &a.k[(base + j0) * ldk + kvo..],
            &a.v[(base + j0) * ldk + kvo..],
        );
        transpose(kt, BK, kblk, ldk, n, nc, hd, 1.0);
        transpose(vt, BK, vblk, ldk, n, nc, hd, 1.0);
        sc[..m * BK].fill(0.0);
        dp[..m * BK].fill(0.0);
        gemm::<F>(sc, BK, qblk, ldq, kt, BK, m, hd, nc);
        gemm::<F>(dp, BK, doblk, ldq, vt, BK, m, hd, nc);
        for i in 0..m {
            let nv = (i0 + i + 1).min(j1).saturating_sub(j0);
            let (srow, dprow) = (&mut sc[i * BK..][..nc], &dp[i * BK..][..nc]);
            dscores(srow, dprow, g.scale, lse[i], big_d[i], nv);
        }
        gemm::<F>(dq, hd, sc, BK, kblk, ldk, m, n, hd);
        j0 = j1;
    }
    for i in 0..m {
        // SAFETY: row `i0 + i` of head `h` belongs to this item alone in this pass (items are
        // (sequence, head, query block)); inside `dq` as the ranges were checked.
        let dqr = unsafe { a.dq.slice(off + i * ldq, hd) };
        for (y, &x) in dqr.iter_mut().zip(&dq[i * hd..][..hd]) {
            *y += g.scale * x;
        }
    }
}

// ---- the ISA-specific instances ------------------------------------------------------------

macro_rules! instances {
    ($feat:literal, $fwd:ident, $dkv:ident, $dq:ident) => {
        /// `fwd_item` compiled for these features.
        ///
        /// # Safety
        /// The CPU must have them.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feat)]
        unsafe fn $fwd(a: &Fwd, s: &mut [f32], base: usize, len: usize, h: usize, qb: usize) {
            fwd_item::<true>(a, s, base, len, h, qb)
        }

        /// `dkv_item` compiled for these features.
        ///
        /// # Safety
        /// The CPU must have them.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feat)]
        unsafe fn $dkv(a: &Bwd, s: &mut [f32], base: usize, len: usize, kvh: usize, kb: usize) {
            dkv_item::<true>(a, s, base, len, kvh, kb)
        }

        /// `dq_item` compiled for these features.
        ///
        /// # Safety
        /// The CPU must have them.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feat)]
        unsafe fn $dq(a: &Bwd, s: &mut [f32], base: usize, len: usize, h: usize, qb: usize) {
            dq_item::<true>(a, s, base, len, h, qb)
        }
    };
}

instances!("avx2,fma", fwd_avx2, dkv_avx2, dq_avx2);
instances!(
    "avx512f,avx512vl,avx2,fma",
    fwd_avx512,
    dkv_avx512,
    dq_avx512
);

// ---- kernels: plain Rust that the instances above vectorize -----------------------------------

/// `a * b + c`: fused where the instance has FMA (`F`), two roundings in the portable twin.
#[inline(always)]
fn fma<const F: bool>(a: f32, b: f32, c: f32) -> f32 {
    if F {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `c (m x n, row stride ldc) += a (m x k, lda) @ b (k x n, ldb)`: tiles of 4 rows by 32 or 16
/// columns held in registers over the whole `k`, then the leftover columns one by one.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn gemm<const F: bool>(
    c: &mut [f32],
    ldc: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    m: usize,
    k: usize,
    n: usize,
) {
    let mut j = 0;
    while j + 32 <= n {
        tile_rows::<F, 32>(c, ldc, a, lda, b, ldb, m, k, j);
        j += 32;
    }
    if j + 16 <= n {
        tile_rows::<F, 16>(c, ldc, a, lda, b, ldb, m, k, j);
        j += 16;
    }
    for i in 0..m {
        let ar = &a[i * lda..][..k];
        for jj in j..n {
            let mut acc = 0f32;
            for (p, &x) in ar.iter().enumerate() {
                acc = fma::<F>(x, b[p * ldb + jj], acc);
            }
            c[i * ldc + jj] += acc;
        }
    }
}

/// Columns `j..j + C` of every row: 4 rows at a time, then one.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn tile_rows<const F: bool, const C: usize>(
    c: &mut [f32],
    ldc: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    m: usize,
    k: usize,
    j: usize,
) {
    let mut i = 0;
    while i + 4 <= m {
        tile::<F, 4, C>(c, ldc, a, lda, b, ldb, k, i, j);
        i += 4;
    }
    while i < m {
        tile::<F, 1, C>(c, ldc, a, lda, b, ldb, k, i, j);
        i += 1;
    }
}

/// Rows `i..i + R`, columns `j..j + C` of `c += a @ b`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn tile<const F: bool, const R: usize, const C: usize>(
    c: &mut [f32],
    ldc: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    k: usize,
    i: usize,
    j: usize,
) {
    let mut acc = [[0f32; C]; R];
    let ar: [&[f32]; R] = std::array::from_fn(|r| &a[(i + r) * lda..][..k]);
    for p in 0..k {
        let bp = &b[p * ldb + j..][..C];
        for r in 0..R {
            let x = ar[r][p];
            for l in 0..C {
                acc[r][l] = fma::<F>(x, bp[l], acc[r][l]);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (y, &x) in c[(i + r) * ldc + j..][..C].iter_mut().zip(acc) {
            *y += x;
        }
    }
}

/// Lanes of the reductions below (vector width of AVX-512).
const LANES: usize = 16;

// The elementwise steps below work on 16-lane local arrays (`x.len()` a multiple of `LANES`),
// which the compiler knows alias nothing, so they vectorize.

/// Forward: `x[j] = exp(x[j] - max)` for `j < nv`, 0 after.
#[inline(always)]
fn probs(x: &mut [f32], max: f32, nv: usize) {
    for (c, ch) in x.chunks_exact_mut(LANES).enumerate() {
        let v: &mut [f32; LANES] = ch.try_into().unwrap();
        let p: [f32; LANES] = std::array::from_fn(|l| exp(v[l] - max));
        *v = std::array::from_fn(|l| if c * LANES + l < nv { p[l] } else { 0.0 });
    }
}

/// dQ pass, one query row: `s[j] = p_j (dp[j] - d)` with `p_j = exp(scale s[j] - lse)`, for
/// keys `j < nv`, 0 after.
#[inline(always)]
fn dscores(s: &mut [f32], dp: &[f32], scale: f32, lse: f32, d: f32, nv: usize) {
    for (c, (ch, dp)) in s
        .chunks_exact_mut(LANES)
        .zip(dp.chunks_exact(LANES))
        .enumerate()
    {
        let v: &mut [f32; LANES] = ch.try_into().unwrap();
        let dp: &[f32; LANES] = dp.try_into().unwrap();
        let ds: [f32; LANES] = std::array::from_fn(|l| exp(scale * v[l] - lse) * (dp[l] - d));
        *v = std::array::from_fn(|l| if c * LANES + l < nv { ds[l] } else { 0.0 });
    }
}

/// dK/dV pass, one key row against queries `i`: `p[i] = exp(scale p[i] - lse[i])` for
/// `first <= i < m`, 0 elsewhere; `ds[i] = p[i] (ds[i] - d[i])`.
#[inline(always)]
fn dscores_t(
    p: &mut [f32],
    ds: &mut [f32],
    scale: f32,
    lse: &[f32],
    d: &[f32],
    first: usize,
    m: usize,
) {
    let chunks = p
        .chunks_exact_mut(LANES)
        .zip(ds.chunks_exact_mut(LANES))
        .zip(lse.chunks_exact(LANES).zip(d.chunks_exact(LANES)));
    for (c, ((p, ds), (lse, d))) in chunks.enumerate() {
        let (p, ds): (&mut [f32; LANES], &mut [f32; LANES]) =
            (p.try_into().unwrap(), ds.try_into().unwrap());
        let (lse, d): (&[f32; LANES], &[f32; LANES]) =
            (lse.try_into().unwrap(), d.try_into().unwrap());
        let e: [f32; LANES] = std::array::from_fn(|l| exp(scale * p[l] - lse[l]));
        let pv: [f32; LANES] = std::array::from_fn(|l| {
            let i = c * LANES + l;
            if i >= first && i < m {
                e[l]
            } else {
                0.0
            }
        });
        *ds = std::array::from_fn(|l| pv[l] * (ds[l] - d[l]));
        *p = pv;
    }
}

/// Largest value of `x` (not empty), lane-wise then across lanes.
#[inline(always)]
fn max_lanes(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for ch in &mut chunks {
        for l in 0..LANES {
            acc[l] = acc[l].max(ch[l]);
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    acc.iter().fold(tail, |m, &v| m.max(v))
}

/// Sum of `x`, lane-wise then across lanes.
#[inline(always)]
fn sum_lanes(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for ch in &mut chunks {
        for l in 0..LANES {
            acc[l] += ch[l];
        }
    }
    chunks.remainder().iter().sum::<f32>() + acc.iter().sum::<f32>()
}

/// `x . y`, lane-wise then across lanes.
#[inline(always)]
fn dot_lanes(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (mut cx, mut cy) = (x.chunks_exact(LANES), y.chunks_exact(LANES));
    for (a, b) in (&mut cx).zip(&mut cy) {
        for l in 0..LANES {
            acc[l] += a[l] * b[l];
        }
    }
    let tail: f32 = cx
        .remainder()
        .iter()
        .zip(cy.remainder())
        .map(|(a, b)| a * b)
        .sum();
    tail + acc.iter().sum::<f32>()
}

/// `e^x` for the softmax, branch-free so it vectorizes: `x = k ln2 + r`, `|r| <= ln2 / 2`,
/// Cephes' degree-7 polynomial for `e^r`, `2^k` built in the exponent bits. Inputs below -87
/// give about 1.6e-38 (not 0: callers mask what must be exactly 0); above 88, about 1.7e38.
#[inline(always)]
#[allow(clippy::manual_clamp)] // max/min vectorize; clamp's NaN check does not
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding it rounds to an integer k (to nearest even), which then sits in the
    // low mantissa bits: bits(kr) = ROUND_BITS + k for |k| < 2^22.
    const ROUND: f32 = 12_582_912.0;
    const ROUND_BITS: u32 = 0x4b40_0000;
    let x = x.max(-87.0).min(88.0);
    let kr = x * LOG2E + ROUND;
    let kf = kr - ROUND;
    let r = x - kf * LN2_HI - kf * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = p * r * r + r + 1.0;
    // 2^k: k + 127 in the exponent field (k in -126..=127 after the clamp).
    let two_k = kr.to_bits().wrapping_sub(ROUND_BITS).wrapping_add(127) << 23;
    e * f32::from_bits(two_k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std() {
        let mut worst = 0f32;
        for i in -8690..=8790 {
            let x = i as f32 * 0.01 + 0.003;
            let (a, b) = (exp(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
        }
        assert!(worst < 4e-7, "exp: worst relative error {worst}");
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn gemm_matches_naive_on_awkward_sizes() {
        for &(m, k, n) in &[(1, 1, 1), (3, 5, 17), (4, 64, 64), (7, 33, 49), (9, 2, 80)] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) / 4.0)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0)
                .collect();
            let mut c = vec![1f32; m * n];
            gemm::<false>(&mut c, n, &a, k, &b, n, m, k, n);
            for i in 0..m {
                for j in 0..n {
                    let want = 1.0 + (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum::<f32>();
                    assert!(
                        (c[i * n + j] - want).abs() < 1e-4,
                        "({m},{k},{n}) at {i},{j}"
                    );
                }
            }
        }
    }
}
