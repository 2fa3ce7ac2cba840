//! Rotary position embedding over `(t, n_heads, head_dim)` rows, with `cria_kernels::Rope`'s
//! parameters: the interleaved (GGUF) or NeoX (half-split) pair layout, the first `n_rot`
//! dimensions rotated and the rest passed through, per-pair frequency factors (llama3 scaling,
//! `rope_freqs`) and the attention factor on cos/sin. The angles are the inference kernel's
//! (`Rope::table`), so the forward is `CpuBackend::rope` bit for bit.
//!
//! Each row has its own position (`positions`), so packed sequences restart at 0.

use crate::{check_len, prod, Error, Result};
use cria_kernels::Rope;

/// The (cos, sin) of every rotated pair at each of `positions`, into `cs` (`positions.len()`
/// rows of `n_rot / 2`). Made once per batch layout, outside the hot path.
pub fn rope_table(rope: &Rope, positions: &[usize], cs: &mut Vec<(f32, f32)>) {
    cs.clear();
    for &p in positions {
        rope.extend_table(p, cs);
    }
}

/// Checks the shapes; returns the number of rotated pairs.
pub(crate) fn check(
    op: &str,
    x: usize,
    t: usize,
    n_heads: usize,
    head_dim: usize,
    rope: &Rope,
    cs: usize,
) -> Result<usize> {
    let n_pairs = rope.inv_freq.len();
    if n_heads == 0 || head_dim == 0 {
        return Err(Error(format!("{op}: {n_heads} heads of {head_dim} values")));
    }
    if 2 * n_pairs > head_dim {
        return Err(Error(format!(
            "{op}: {} rotated dimensions do not fit heads of {head_dim}",
            2 * n_pairs
        )));
    }
    check_len(op, "x", x, prod(op, &[t, n_heads, head_dim])?)?;
    check_len(
        op,
        "cs (the rope_table of t positions)",
        cs,
        prod(op, &[t, n_pairs])?,
    )?;
    Ok(n_pairs)
}

/// The indices of pair `i` in a head.
fn pair(rope: &Rope, n_pairs: usize, i: usize) -> (usize, usize) {
    if rope.interleaved {
        (2 * i, 2 * i + 1)
    } else {
        (i, i + n_pairs)
    }
}

/// Rotates `x` in place: pair (a, b) at angle with (c, s) becomes (a c - b s, a s + b c).
pub fn rope_forward(
    x: &mut [f32],
    t: usize,
    n_heads: usize,
    head_dim: usize,
    rope: &Rope,
    cs: &[(f32, f32)],
) -> Result<()> {
    let turn = |a, b, c, s| cria_kernels::rotate(a, b, c, s);
    each_pair("rope_forward", x, t, n_heads, head_dim, rope, cs, turn)
}

/// Backward of `rope_forward`, in place like it: `dx` holds dY and becomes dX, each pair turned
/// by the transposed rotation, (da, db) -> (da c + db s, -da s + db c) (the inverse rotation,
/// scaled by the attention factor twice over as the forward's matrix is once). Unrotated
/// dimensions pass through.
pub fn rope_backward(
    dx: &mut [f32],
    t: usize,
    n_heads: usize,
    head_dim: usize,
    rope: &Rope,
    cs: &[(f32, f32)],
) -> Result<()> {
    let turn = |a: f32, b: f32, c: f32, s: f32| (a * c + b * s, b * c - a * s);
    each_pair("rope_backward", dx, t, n_heads, head_dim, rope, cs, turn)
}

/// Every rotated pair (a, b) of every head of every row becomes `turn(a, b, cos, sin)`.
#[allow(clippy::too_many_arguments)]
fn each_pair(
    op: &str,
    x: &mut [f32],
    t: usize,
    n_heads: usize,
    head_dim: usize,
    rope: &Rope,
    cs: &[(f32, f32)],
    turn: impl Fn(f32, f32, f32, f32) -> (f32, f32),
) -> Result<()> {
    let n_pairs = check(op, x.len(), t, n_heads, head_dim, rope, cs.len())?;
    if n_pairs == 0 {
        return Ok(());
    }
    for (row, cs) in x
        .chunks_exact_mut(n_heads * head_dim)
        .zip(cs.chunks_exact(n_pairs))
    {
        for v in row.chunks_exact_mut(head_dim) {
            for (i, &(c, s)) in cs.iter().enumerate() {
                let (a, b) = pair(rope, n_pairs, i);
                (v[a], v[b]) = turn(v[a], v[b], c, s);
            }
        }
    }
    Ok(())
}
