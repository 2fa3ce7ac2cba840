//! Causal GQA attention over a packed batch: several sequences, each a contiguous run of rows,
//! each attending only to itself (no attention across documents), forward keeping one
//! log-sum-exp per row and head, backward recomputing the probabilities from it (the blocked
//! math of `attention::flash_attention_*`, whose scalar code is the reference these are checked
//! against). Layouts as in `attention`: q/out/dq/dout `(rows, n_heads, head_dim)`, k/v/dk/dv
//! `(rows, n_kv_heads, head_dim)`, lse `(rows, n_heads)`; `dims.t` is ignored (each sequence's
//! length is its range's).
//!
//! For now: the scalar reference, one sequence after another.

use crate::attention::{flash_attention_backward, flash_attention_forward, AttnDims};
use crate::Result;
use cria_kernels::CpuBackend;
use std::ops::Range;

/// `out`, `lse` overwritten for every row of every sequence in `seqs` (rows outside them are
/// left alone).
#[allow(clippy::too_many_arguments)]
pub fn forward(
    _cpu: &CpuBackend,
    out: &mut [f32],
    lse: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seqs: &[Range<usize>],
    dims: AttnDims,
) -> Result<()> {
    let (nq, nkv) = (
        dims.n_heads * dims.head_dim,
        dims.n_kv_heads * dims.head_dim,
    );
    for r in seqs {
        let d = AttnDims { t: r.len(), ..dims };
        flash_attention_forward(
            &mut out[r.start * nq..r.end * nq],
            &mut lse[r.start * dims.n_heads..r.end * dims.n_heads],
            &q[r.start * nq..r.end * nq],
            &k[r.start * nkv..r.end * nkv],
            &v[r.start * nkv..r.end * nkv],
            d,
        )?;
    }
    Ok(())
}

/// ADDS into dq, dk, dv.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    _cpu: &CpuBackend,
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
    let (nq, nkv) = (
        dims.n_heads * dims.head_dim,
        dims.n_kv_heads * dims.head_dim,
    );
    for r in seqs {
        let d = AttnDims { t: r.len(), ..dims };
        let (qs, ks) = (r.start * nq..r.end * nq, r.start * nkv..r.end * nkv);
        flash_attention_backward(
            &mut dq[qs.clone()],
            &mut dk[ks.clone()],
            &mut dv[ks.clone()],
            &dout[qs.clone()],
            &q[qs.clone()],
            &k[ks.clone()],
            &v[ks],
            &out[qs],
            &lse[r.start * dims.n_heads..r.end * dims.n_heads],
            d,
        )?;
    }
    Ok(())
}
