//! Causal self-attention with grouped-query heads over one sequence of `t` rows: query `i` sees
//! keys `0..=i`; query head `h` reads KV head `h / (n_heads / n_kv_heads)`.
//!
//! Layouts: `q` and `out` are `(t, n_heads, head_dim)`, `k` and `v` `(t, n_kv_heads, head_dim)`
//! (what the Q/K/V projections give, after RoPE), so `k` and `v` read as cria's f32 KV cache.
//!
//! Packed sequences: a document's rows are contiguous in every buffer, so a packed batch is one
//! call per document over its sub-slices (with RoPE positions restarting at each).
//!
//! Two versions of the same math:
//! - naive: the forward keeps every probability, `(n_heads, t, t)`, and the backward reads them;
//! - blocked (flash-attention's): the forward keeps one log-sum-exp per query row and head,
//!   `(t, n_heads)`, and the backward recomputes each probability from it, so what is kept does
//!   not grow with t^2. The softmax is online (running max and sum rescaled as it grows).
//!
//! Backward, per query row i and head (p the probabilities, dO the output's gradient):
//! `dp_j = dO_i . V_j`, `D_i = sum_j p_ij dp_j = dO_i . O_i`, `ds_j = p_ij (dp_j - D_i)`;
//! then `dQ_i += scale sum_j ds_j K_j`, `dK_j += scale ds_j Q_i`, `dV_j += p_ij dO_i`.

use crate::{axpy, check_len, dot, prod, Error, Result};

/// One attention call's geometry.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnDims {
    pub t: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies q . k (usually 1 / sqrt(head_dim)).
    pub scale: f32,
}

impl AttnDims {
    /// Checks q, k, v (and out or dout, the length of q) against the dims.
    fn check(&self, op: &str, q: usize, k: usize, v: usize, out: usize) -> Result<()> {
        if self.n_kv_heads == 0 || self.n_heads % self.n_kv_heads != 0 {
            return Err(Error(format!(
                "{op}: {} query heads are not groups of {} KV heads",
                self.n_heads, self.n_kv_heads
            )));
        }
        let nq = prod(op, &[self.t, self.n_heads, self.head_dim])?;
        let nkv = prod(op, &[self.t, self.n_kv_heads, self.head_dim])?;
        check_len(op, "q", q, nq)?;
        check_len(op, "k", k, nkv)?;
        check_len(op, "v", v, nkv)?;
        check_len(op, "out", out, nq)
    }

    /// Query head `h`'s vector at row `i` (offset into q, out, dq, dout).
    fn qi(&self, i: usize, h: usize) -> usize {
        (i * self.n_heads + h) * self.head_dim
    }

    /// The KV vector query head `h` reads at row `j` (offset into k, v, dk, dv).
    fn kj(&self, j: usize, h: usize) -> usize {
        let kvh = h / (self.n_heads / self.n_kv_heads);
        (j * self.n_kv_heads + kvh) * self.head_dim
    }
}

/// Naive forward: `out` (overwritten) and `att` (`(n_heads, t, t)`, row i of head h holding the
/// probabilities of keys 0..=i, zeros after), scores in f32, softmax with division.
pub fn attention_forward(
    out: &mut [f32],
    att: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    d: AttnDims,
) -> Result<()> {
    const OP: &str = "attention_forward";
    d.check(OP, q.len(), k.len(), v.len(), out.len())?;
    check_len(OP, "att", att.len(), prod(OP, &[d.n_heads, d.t, d.t])?)?;
    let hd = d.head_dim;
    for h in 0..d.n_heads {
        for i in 0..d.t {
            let p = &mut att[(h * d.t + i) * d.t..][..d.t];
            let qh = &q[d.qi(i, h)..][..hd];
            let mut max = f32::NEG_INFINITY;
            for (j, pj) in p[..=i].iter_mut().enumerate() {
                *pj = dot(qh, &k[d.kj(j, h)..][..hd]) * d.scale;
                max = max.max(*pj);
            }
            let mut sum = 0f32;
            for pj in &mut p[..=i] {
                *pj = (*pj - max).exp();
                sum += *pj;
            }
            p[i + 1..].fill(0.0);
            let o = &mut out[d.qi(i, h)..][..hd];
            o.fill(0.0);
            for (j, pj) in p[..=i].iter_mut().enumerate() {
                *pj /= sum;
                axpy(o, *pj, &v[d.kj(j, h)..][..hd]);
            }
        }
    }
    Ok(())
}

/// Backward of `attention_forward` from its saved probabilities: `dq`, `dk`, `dv` added to.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dout: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    att: &[f32],
    d: AttnDims,
) -> Result<()> {
    const OP: &str = "attention_backward";
    d.check(OP, q.len(), k.len(), v.len(), dout.len())?;
    check_grads(OP, dq.len(), dk.len(), dv.len(), q.len(), k.len())?;
    check_len(OP, "att", att.len(), prod(OP, &[d.n_heads, d.t, d.t])?)?;
    let hd = d.head_dim;
    let mut g = Grads { dq, dk, dv };
    for h in 0..d.n_heads {
        for i in 0..d.t {
            let p = &att[(h * d.t + i) * d.t..][..=i];
            let doi = &dout[d.qi(i, h)..][..hd];
            let big_d: f32 = (0..=i)
                .map(|j| p[j] * dot(doi, &v[d.kj(j, h)..][..hd]))
                .sum();
            g.row(d, q, k, v, doi, i, h, big_d, |j| p[j]);
        }
    }
    Ok(())
}

/// The gradients a backward adds to.
struct Grads<'a> {
    dq: &'a mut [f32],
    dk: &'a mut [f32],
    dv: &'a mut [f32],
}

impl Grads<'_> {
    /// Query row `i` of head `h`'s share, given `D_i` and each key's probability `p(j)`.
    #[allow(clippy::too_many_arguments)]
    fn row(
        &mut self,
        d: AttnDims,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        doi: &[f32],
        i: usize,
        h: usize,
        big_d: f32,
        p: impl Fn(usize) -> f32,
    ) {
        let (hd, qo) = (d.head_dim, d.qi(i, h));
        for j in 0..=i {
            let (kv, pj) = (d.kj(j, h), p(j));
            let ds = pj * (dot(doi, &v[kv..][..hd]) - big_d);
            axpy(&mut self.dq[qo..][..hd], d.scale * ds, &k[kv..][..hd]);
            axpy(&mut self.dk[kv..][..hd], d.scale * ds, &q[qo..][..hd]);
            axpy(&mut self.dv[kv..][..hd], pj, doi);
        }
    }
}

fn check_grads(op: &str, dq: usize, dk: usize, dv: usize, q: usize, k: usize) -> Result<()> {
    check_len(op, "dq", dq, q)?;
    check_len(op, "dk", dk, k)?;
    check_len(op, "dv", dv, k)
}

/// Blocked forward: `out` (overwritten) and `lse` (`(t, n_heads)`: each query row and head's
/// log-sum-exp of its scaled scores, all the backward needs), one pass over the keys with an
/// online softmax; nothing kept grows with t^2.
pub fn flash_attention_forward(
    out: &mut [f32],
    lse: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    d: AttnDims,
) -> Result<()> {
    const OP: &str = "flash_attention_forward";
    d.check(OP, q.len(), k.len(), v.len(), out.len())?;
    check_len(OP, "lse", lse.len(), prod(OP, &[d.t, d.n_heads])?)?;
    let hd = d.head_dim;
    for i in 0..d.t {
        for h in 0..d.n_heads {
            let (qh, o) = (&q[d.qi(i, h)..][..hd], &mut out[d.qi(i, h)..][..hd]);
            o.fill(0.0);
            let (mut max, mut sum) = (f32::NEG_INFINITY, 0f32);
            for j in 0..=i {
                let s = dot(qh, &k[d.kj(j, h)..][..hd]) * d.scale;
                if s > max {
                    // The max grows: what is summed so far was relative to the old one.
                    let c = (max - s).exp();
                    sum *= c;
                    o.iter_mut().for_each(|x| *x *= c);
                    max = s;
                }
                let p = (s - max).exp();
                sum += p;
                axpy(o, p, &v[d.kj(j, h)..][..hd]);
            }
            o.iter_mut().for_each(|x| *x /= sum);
            lse[i * d.n_heads + h] = max + sum.ln();
        }
    }
    Ok(())
}

/// Backward of `flash_attention_forward` from `out` and `lse`: each probability recomputed as
/// `exp(scale q.k - lse)`, `D_i = dO_i . O_i`; `dq`, `dk`, `dv` added to.
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_backward(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dout: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    d: AttnDims,
) -> Result<()> {
    const OP: &str = "flash_attention_backward";
    d.check(OP, q.len(), k.len(), v.len(), dout.len())?;
    check_len(OP, "out", out.len(), q.len())?;
    check_grads(OP, dq.len(), dk.len(), dv.len(), q.len(), k.len())?;
    check_len(OP, "lse", lse.len(), prod(OP, &[d.t, d.n_heads])?)?;
    let hd = d.head_dim;
    let mut g = Grads { dq, dk, dv };
    for i in 0..d.t {
        for h in 0..d.n_heads {
            let qo = d.qi(i, h);
            let (qh, doi) = (&q[qo..][..hd], &dout[qo..][..hd]);
            let big_d = dot(doi, &out[qo..][..hd]);
            let l = lse[i * d.n_heads + h];
            let p = |j| (dot(qh, &k[d.kj(j, h)..][..hd]) * d.scale - l).exp();
            g.row(d, q, k, v, doi, i, h, big_d, p);
        }
    }
    Ok(())
}
