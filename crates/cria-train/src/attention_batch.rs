//! Causal GQA attention over a packed batch: several sequences, each a contiguous run of rows,
//! each attending only to itself (no attention across documents), forward keeping one
//! log-sum-exp per row and head, backward recomputing the probabilities from it (the blocked
//! math of `attention::flash_attention_*`, whose scalar code is the reference these are checked
//! against). Layouts as in `attention`: q/out/dq/dout `(rows, n_heads, head_dim)`, k/v/dk/dv
//! `(rows, n_kv_heads, head_dim)`, lse `(rows, n_heads)`; `dims.t` is ignored (each sequence's
//! length is its range's). The ranges must lie inside the buffers and not overlap.
//!
//! How it runs: blocks of `BQ` queries x `BK` keys, every product of a block a small GEMM
//! (`gemm`: register tiles of 4 rows x 32 or 16 columns, `C += A B` with B's rows contiguous and
//! A read in place or transposed) over the rows as they lie in q/k/v/dout (row stride
//! `n_heads * head_dim` or `n_kv_heads * head_dim`) or over a transposed copy of the item's own
//! block (Q^T, dO^T or K^T, V^T: made once per item, in per-thread scratch, a `thread_local`
//! grown once, so steady state allocates nothing); nothing kept grows with t^2. Work items go to
//! the backend's threads (`CpuBackend::for_each`):
//! - forward: items (sequence, query head, query block), the last (heaviest: the causal mask
//!   keeps more keys) blocks first; scores held as (keys, queries) so the online softmax runs
//!   with queries in the vector lanes; each item writes its own rows of `out` and `lse`;
//! - backward, two passes so that no two items write the same rows (no per-thread partials, no
//!   atomics), at the price of computing the scores and dP twice (7 block products per block
//!   pair instead of 5):
//!   1. items (sequence, KV head, key block): over every query head of the group and every
//!      query block at or after the key block, `dV += P^T dO` and `dK += scale dS^T Q`, in the
//!      item's own accumulators, added to its rows of `dk`/`dv` at the end;
//!   2. items (sequence, query head, query block): `dQ += scale dS K` over the key blocks.
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
    let isa = cpu.isa();
    let per_seq = |len: usize| g.nh * len.div_ceil(BQ);
    run(cpu, seqs, per_seq, g.fwd_scratch(), |s, r, idx| {
        let (h, qb) = head_block(g, r.len(), idx);
        dispatch!(
            isa,
            fwd_avx512,
            fwd_avx2,
            fwd_item,
            &a,
            s,
            r.start,
            r.len(),
            h,
            qb
        );
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
    run(cpu, seqs, per_seq, g.dkv_scratch(), |s, r, idx| {
        let (kb, kvh) = (idx / g.nkv, idx % g.nkv);
        dispatch!(
            isa,
            dkv_avx512,
            dkv_avx2,
            dkv_item,
            &a,
            s,
            r.start,
            r.len(),
            kvh,
            kb
        );
    });
    // Pass 2: dQ by (sequence, query head, query block), the last blocks first.
    let per_seq = |len: usize| g.nh * len.div_ceil(BQ);
    run(cpu, seqs, per_seq, g.dq_scratch(), |s, r, idx| {
        let (h, qb) = head_block(g, r.len(), idx);
        dispatch!(
            isa,
            dq_avx512,
            dq_avx2,
            dq_item,
            &a,
            s,
            r.start,
            r.len(),
            h,
            qb
        );
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

    /// Forward scratch: qt (hd x BQ), st (BK x BQ), o (BQ x hd), max, sum, factor (BQ).
    fn fwd_scratch(&self) -> usize {
        self.hd * BQ + BK * BQ + BQ * self.hd + 3 * BQ
    }

    /// Pass 1 scratch: kt, vt (hd x BK), s, dp (BQ x BK), dk, dv (BK x hd), lse, D (BQ).
    fn dkv_scratch(&self) -> usize {
        2 * self.hd * BK + 2 * BQ * BK + 2 * BK * self.hd + 2 * BQ
    }

    /// Pass 2 scratch: qt, dot (hd x BQ), st, dpt (BK x BQ), dq (BQ x hd), lse, D (BQ).
    fn dq_scratch(&self) -> usize {
        2 * self.hd * BQ + 2 * BK * BQ + BQ * self.hd + 2 * BQ
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

/// Calls `job(scratch, sequence rows, index)` for each of the `per_seq(len)` items of every
/// sequence, on the backend's threads, with `need` floats of this thread's scratch.
fn run(
    cpu: &CpuBackend,
    seqs: &[Range<usize>],
    per_seq: impl Fn(usize) -> usize + Sync,
    need: usize,
    job: impl Fn(&mut [f32], Range<usize>, usize) + Sync,
) {
    let items: usize = seqs.iter().map(|r| per_seq(r.len())).sum();
    cpu.for_each(items, &|item, _thread| {
        let (r, idx) = locate(seqs, &per_seq, item);
        with_scratch(need, |s| job(s, r, idx));
    });
}

/// Item `idx` of a sequence of `len` rows cut in (query head, query block) items, the last
/// (heaviest) blocks first: (head, block).
fn head_block(g: Geo, len: usize, idx: usize) -> (usize, usize) {
    (idx % g.nh, len.div_ceil(BQ) - 1 - idx / g.nh)
}

/// Calls the instance of an item function for `isa`: `$avx512`, `$avx2`, or the portable twin.
macro_rules! dispatch {
    ($isa:expr, $avx512:ident, $avx2:ident, $portable:ident, $($arg:expr),*) => {
        match $isa {
            // SAFETY: the backend only holds an Isa that `available()` confirmed on this CPU.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { $avx512($($arg),*) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { $avx2($($arg),*) },
            _ => $portable::<false>($($arg),*),
        }
    };
}
use dispatch;

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

/// `dst[d * ld + j] = src[j * lds + d]` for `j < n`, `d < hd`; zero for `n <= j < nc`: `n`
/// rows of a (rows, hd) block read with row stride `lds`, transposed to (hd, ld).
#[inline(always)]
fn transpose(dst: &mut [f32], ld: usize, src: &[f32], lds: usize, n: usize, nc: usize, hd: usize) {
    // Gathers (strided reads, contiguous writes) vectorize; scatters are slow.
    for d in 0..hd {
        let drow = &mut dst[d * ld..][..nc];
        for (j, y) in drow[..n].iter_mut().enumerate() {
            *y = src[j * lds + d];
        }
        drow[n..].fill(0.0);
    }
}

/// Query block `qb` of a sequence of `len` rows: its first query `i0` (in the sequence), `m`
/// queries, `mc` = `m` padded to 16.
fn qblock(len: usize, qb: usize) -> (usize, usize, usize) {
    let (i0, i1) = (qb * BQ, ((qb + 1) * BQ).min(len));
    (i0, i1 - i0, pad16(i1 - i0, BQ))
}

// ---- forward -------------------------------------------------------------------------------

/// Query block `qb` of head `h` of the sequence at rows `base..base + len`. Scores are held
/// transposed, `st` (keys, queries) = K Q^T, so that Q^T is transposed once per item and the
/// online softmax runs with queries in the vector lanes.
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
    let (i0, m, mc) = qblock(len, qb);
    let qt = take(&mut s, hd * BQ);
    let st = take(&mut s, BK * BQ);
    let o = take(&mut s, BQ * hd);
    let mx = take(&mut s, BQ);
    let l = take(&mut s, BQ);
    let c = take(&mut s, BQ);
    o.fill(0.0);
    mx.fill(f32::NEG_INFINITY);
    l.fill(0.0);
    let off = (base + i0) * ldq + h * hd;
    transpose(qt, BQ, &a.q[off..], ldq, m, mc, hd);
    let mut j0 = 0;
    // Keys at or after i0 + m are masked for every query of the block.
    while j0 < i0 + m {
        let j1 = (j0 + BK).min(i0 + m);
        let n = j1 - j0;
        let at = (base + j0) * ldk + kvo;
        st[..n * BQ].fill(0.0);
        gemm::<F, false>(st, BQ, &a.k[at..], ldk, qt, BQ, n, hd, mc);
        softmax_cols(st, n, mc, g.scale, j0 as isize - i0 as isize, mx, l, c);
        for (orow, &c) in o.chunks_exact_mut(hd).zip(&c[..m]) {
            orow.iter_mut().for_each(|x| *x *= c);
        }
        gemm::<F, true>(o, hd, st, BQ, &a.v[at..], ldk, m, n, hd);
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

/// One key block of the online softmax, queries in lanes: `st` (n keys x BQ queries, first
/// `mc` columns) scaled, turned into `exp(s - new max)` (0 where query `i` may not see key `j`:
/// `j + rel > i`, `rel` = first key - first query), `mx`/`l` (running max, sum) updated, `c` the
/// factor the earlier output rows must be multiplied by.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn softmax_cols(
    st: &mut [f32],
    n: usize,
    mc: usize,
    scale: f32,
    rel: isize,
    mx: &mut [f32],
    l: &mut [f32],
    c: &mut [f32],
) {
    for c0 in (0..mc).step_by(LANES) {
        // Lane x (query c0 + x) sees key j when x >= j + rel - c0.
        let first = |j: usize| (j as isize + rel - c0 as isize).max(0) as usize;
        let mut bm = [f32::NEG_INFINITY; LANES];
        for j in 0..n {
            let (f, row) = (first(j), lanes_mut(&mut st[j * BQ + c0..]));
            let v: [f32; LANES] = map(|x| row[x] * scale);
            *row = v;
            bm = map(|x| if x >= f { bm[x].max(v[x]) } else { bm[x] });
        }
        let (old, sum0) = (lanes(&mx[c0..]), lanes(&l[c0..]));
        let new: [f32; LANES] = map(|x| old[x].max(bm[x]));
        let cc: [f32; LANES] = map(|x| {
            let e = exp(old[x] - new[x]);
            if new[x] == f32::NEG_INFINITY {
                1.0
            } else {
                e
            }
        });
        let mut sum = [0f32; LANES];
        for j in 0..n {
            let (f, row) = (first(j), lanes_mut(&mut st[j * BQ + c0..]));
            let e: [f32; LANES] = map(|x| exp(row[x] - new[x]));
            let p: [f32; LANES] = map(|x| if x >= f { e[x] } else { 0.0 });
            sum = map(|x| sum[x] + p[x]);
            *row = p;
        }
        *lanes_mut(&mut mx[c0..]) = new;
        *lanes_mut(&mut l[c0..]) = map(|x| sum0[x] * cc[x] + sum[x]);
        *lanes_mut(&mut c[c0..]) = cc;
    }
}

// ---- backward, pass 1: dK, dV ----------------------------------------------------------------

/// Key block `kb` of KV head `kvh` of the sequence at rows `base..base + len`. K^T and V^T are
/// transposed once per item; scores `s` (queries, keys) = Q K^T, dP = dO V^T.
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
    let (n, nc) = (j1 - j0, pad16(j1 - j0, BK));
    let kt = take(&mut s, hd * BK);
    let vt = take(&mut s, hd * BK);
    let sc = take(&mut s, BQ * BK);
    let dp = take(&mut s, BQ * BK);
    let dk = take(&mut s, BK * hd);
    let dv = take(&mut s, BK * hd);
    let lse = take(&mut s, BQ);
    let big_d = take(&mut s, BQ);
    dk.fill(0.0);
    dv.fill(0.0);
    let at = (base + j0) * ldk + kvh * hd;
    transpose(kt, BK, &a.k[at..], ldk, n, nc, hd);
    transpose(vt, BK, &a.v[at..], ldk, n, nc, hd);
    for h in kvh * g.group..(kvh + 1) * g.group {
        // From the query block holding key j0's own query.
        for qb in j0 / BQ..len.div_ceil(BQ) {
            let (i0, m, _) = qblock(len, qb);
            let off = (base + i0) * ldq + h * hd;
            let (qblk, doblk) = (&a.q[off..], &a.dout[off..]);
            row_stats(a, base + i0, h, m, lse, big_d);
            sc[..m * BK].fill(0.0);
            dp[..m * BK].fill(0.0);
            gemm::<F, false>(sc, BK, qblk, ldq, kt, BK, m, hd, nc);
            gemm::<F, false>(dp, BK, doblk, ldq, vt, BK, m, hd, nc);
            for i in 0..m {
                // Query i0 + i sees keys j0 + j for j < nv.
                let nv = (i0 + i + 1).min(j1).saturating_sub(j0);
                let (srow, dprow) = (&mut sc[i * BK..][..nc], &mut dp[i * BK..][..nc]);
                pdscores(srow, dprow, g.scale, lse[i], big_d[i], nv);
            }
            gemm::<F, true>(dv, hd, sc, BK, doblk, ldq, n, m, hd);
            gemm::<F, true>(dk, hd, dp, BK, qblk, ldq, n, m, hd);
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

/// For query rows `row0..row0 + m` of head `h`: their log-sum-exp and `D = dO . O`.
#[inline(always)]
fn row_stats(a: &Bwd, row0: usize, h: usize, m: usize, lse: &mut [f32], big_d: &mut [f32]) {
    let (hd, ldq) = (a.g.hd, a.g.ldq());
    for i in 0..m {
        let off = (row0 + i) * ldq + h * hd;
        lse[i] = a.lse[(row0 + i) * a.g.nh + h];
        big_d[i] = dot_lanes(&a.dout[off..][..hd], &a.out[off..][..hd]);
    }
}

// ---- backward, pass 2: dQ --------------------------------------------------------------------

/// Query block `qb` of head `h` of the sequence at rows `base..base + len`. Q^T and dO^T are
/// transposed once per item; scores held transposed, `st` (keys, queries) = K Q^T, dP^T = V dO^T.
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
    let (i0, m, mc) = qblock(len, qb);
    let qt = take(&mut s, hd * BQ);
    let dot = take(&mut s, hd * BQ);
    let st = take(&mut s, BK * BQ);
    let dpt = take(&mut s, BK * BQ);
    let dq = take(&mut s, BQ * hd);
    let lse = take(&mut s, BQ);
    let big_d = take(&mut s, BQ);
    dq.fill(0.0);
    row_stats(a, base + i0, h, m, lse, big_d);
    lse[m..].fill(0.0);
    big_d[m..].fill(0.0);
    let off = (base + i0) * ldq + h * hd;
    transpose(qt, BQ, &a.q[off..], ldq, m, mc, hd);
    transpose(dot, BQ, &a.dout[off..], ldq, m, mc, hd);
    let mut j0 = 0;
    while j0 < i0 + m {
        let j1 = (j0 + BK).min(i0 + m);
        let n = j1 - j0;
        let at = (base + j0) * ldk + kvo;
        st[..n * BQ].fill(0.0);
        dpt[..n * BQ].fill(0.0);
        gemm::<F, false>(st, BQ, &a.k[at..], ldk, qt, BQ, n, hd, mc);
        gemm::<F, false>(dpt, BQ, &a.v[at..], ldk, dot, BQ, n, hd, mc);
        for j in 0..n {
            // Query i0 + i sees key j0 + j when i0 + i >= j0 + j: i from `first`.
            let first = (j0 + j).saturating_sub(i0);
            let (prow, dsrow) = (&mut st[j * BQ..][..mc], &mut dpt[j * BQ..][..mc]);
            dscores_t(prow, dsrow, g.scale, lse, big_d, first, m);
        }
        gemm::<F, true>(dq, hd, dpt, BQ, &a.k[at..], ldk, m, n, hd);
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

/// `c (m x n, row stride ldc) += A (m x k) @ b (k x n, ldb)`, `A[i][p]` = `a[i * lda + p]`, or
/// `a[p * lda + i]` when `TA` (A stored transposed): tiles of 4 rows by 32 or 16 columns held
/// in registers over the whole `k`, then the leftover columns one by one.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn gemm<const F: bool, const TA: bool>(
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
        tile_rows::<F, TA, 32>(c, ldc, a, lda, b, ldb, m, k, j);
        j += 32;
    }
    if j + 16 <= n {
        tile_rows::<F, TA, 16>(c, ldc, a, lda, b, ldb, m, k, j);
        j += 16;
    }
    for i in 0..m {
        for jj in j..n {
            let mut acc = 0f32;
            for p in 0..k {
                let x = if TA { a[p * lda + i] } else { a[i * lda + p] };
                acc = fma::<F>(x, b[p * ldb + jj], acc);
            }
            c[i * ldc + jj] += acc;
        }
    }
}

/// Columns `j..j + C` of every row: 4 rows at a time, then one.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn tile_rows<const F: bool, const TA: bool, const C: usize>(
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
        tile::<F, TA, 4, C>(c, ldc, a, lda, b, ldb, k, i, j);
        i += 4;
    }
    while i < m {
        tile::<F, TA, 1, C>(c, ldc, a, lda, b, ldb, k, i, j);
        i += 1;
    }
}

/// Rows `i..i + R`, columns `j..j + C` of `c += A @ b`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn tile<const F: bool, const TA: bool, const R: usize, const C: usize>(
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
    for p in 0..k {
        let bp = &b[p * ldb + j..][..C];
        let ap: [f32; R] = if TA {
            let col = &a[p * lda + i..][..R];
            map(|r| col[r])
        } else {
            map(|r| a[(i + r) * lda + p])
        };
        for r in 0..R {
            for l in 0..C {
                acc[r][l] = fma::<F>(ap[r], bp[l], acc[r][l]);
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

/// `[f(0), f(1), ..]`: what `std::array::from_fn` does, as a plain loop that is always inlined
/// (from_fn's machinery sometimes is not, which leaves `exp` scalar).
#[inline(always)]
fn map<const N: usize>(f: impl Fn(usize) -> f32) -> [f32; N] {
    let mut y = [0f32; N];
    for (l, v) in y.iter_mut().enumerate() {
        *v = f(l);
    }
    y
}

/// The `LANES` values at the start of `x`.
#[inline(always)]
fn lanes(x: &[f32]) -> [f32; LANES] {
    x[..LANES].try_into().unwrap()
}

#[inline(always)]
fn lanes_mut(x: &mut [f32]) -> &mut [f32; LANES] {
    (&mut x[..LANES]).try_into().unwrap()
}

/// dK/dV pass, one query row against keys `j`: `p[j] = exp(scale s[j] - lse)` and
/// `dp[j] = p[j] (dp[j] - d)` for `j < nv`, both 0 after.
#[inline(always)]
fn pdscores(s: &mut [f32], dp: &mut [f32], scale: f32, lse: f32, d: f32, nv: usize) {
    for (c, (sv, dv)) in s
        .chunks_exact_mut(LANES)
        .zip(dp.chunks_exact_mut(LANES))
        .enumerate()
    {
        let (sv, dv) = (lanes_mut(sv), lanes_mut(dv));
        let e: [f32; LANES] = map(|l| exp(scale * sv[l] - lse));
        let p: [f32; LANES] = map(|l| if c * LANES + l < nv { e[l] } else { 0.0 });
        *dv = map(|l| p[l] * (dv[l] - d));
        *sv = p;
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
        let e: [f32; LANES] = map(|l| exp(scale * p[l] - lse[l]));
        let pv: [f32; LANES] = map(|l| {
            let i = c * LANES + l;
            if i >= first && i < m {
                e[l]
            } else {
                0.0
            }
        });
        *ds = map(|l| pv[l] * (ds[l] - d[l]));
        *p = pv;
    }
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
pub(crate) fn exp(x: f32) -> f32 {
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
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
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
            gemm::<false, false>(&mut c, n, &a, k, &b, n, m, k, n);
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
