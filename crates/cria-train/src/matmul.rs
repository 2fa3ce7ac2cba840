//! Linear layers: `y = x W^T` over an f32 weight, the transposed product `dX = dY W` over a
//! weight of any type cria reads (a frozen, possibly quantized base), and a LoRA pair
//! `y += s (x A^T) B^T` with its gradients.
//!
//! Shapes: `x` is `(t, cols)`, `y` and `dy` are `(t, rows)`, `W` is `(rows, cols)`; a LoRA pair
//! has `A` `(rank, cols)` and `B` `(rows, rank)` (PEFT's `lora_A.weight`, `lora_B.weight`).

use crate::{axpy, check_len, dot, prod, Error, Result};
use cria_core::Tensor;

/// The shape of one product: `t` input rows of `cols` values, `rows` outputs each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatShape {
    pub t: usize,
    pub rows: usize,
    pub cols: usize,
}

impl MatShape {
    fn check_x_y(&self, op: &str, x: usize, y: usize) -> Result<()> {
        if self.rows == 0 || self.cols == 0 {
            return Err(Error(format!("{op}: a weight of shape {self:?} is empty")));
        }
        check_len(op, "x", x, prod(op, &[self.t, self.cols])?)?;
        check_len(op, "y", y, prod(op, &[self.t, self.rows])?)
    }
}

/// `y = x W^T` (`y` overwritten), f32 weight. Sums in f32 in column order.
pub fn matmul_forward(y: &mut [f32], x: &[f32], w: &[f32], s: MatShape) -> Result<()> {
    const OP: &str = "matmul_forward";
    s.check_x_y(OP, x.len(), y.len())?;
    check_len(OP, "w", w.len(), prod(OP, &[s.rows, s.cols])?)?;
    for (yi, xi) in y.chunks_exact_mut(s.rows).zip(x.chunks_exact(s.cols)) {
        for (yij, wj) in yi.iter_mut().zip(w.chunks_exact(s.cols)) {
            *yij = dot(xi, wj);
        }
    }
    Ok(())
}

/// Backward of `matmul_forward`: `dx += dy W` and `dw += dy^T x`; either may be skipped (a frozen
/// weight has no `dw`; the first layer's input needs no `dx`).
pub fn matmul_backward(
    dx: Option<&mut [f32]>,
    dw: Option<&mut [f32]>,
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    s: MatShape,
) -> Result<()> {
    const OP: &str = "matmul_backward";
    s.check_x_y(OP, x.len(), dy.len())?;
    let nw = prod(OP, &[s.rows, s.cols])?;
    check_len(OP, "w", w.len(), nw)?;
    if let Some(dx) = dx {
        check_len(OP, "dx", dx.len(), x.len())?;
        for (dxi, dyi) in dx.chunks_exact_mut(s.cols).zip(dy.chunks_exact(s.rows)) {
            for (&g, wj) in dyi.iter().zip(w.chunks_exact(s.cols)) {
                axpy(dxi, g, wj);
            }
        }
    }
    if let Some(dw) = dw {
        check_len(OP, "dw", dw.len(), nw)?;
        for (dyi, xi) in dy.chunks_exact(s.rows).zip(x.chunks_exact(s.cols)) {
            for (dwj, &g) in dw.chunks_exact_mut(s.cols).zip(dyi) {
                axpy(dwj, g, xi);
            }
        }
    }
    Ok(())
}

/// `dx += dy W` for a frozen weight of any type cria dequantizes (F32, F16, BF16, every ggml
/// block type): W is dequantized one row at a time into `row` (`cols` floats, the caller's), so
/// memory stays one row whatever the weight's size. The scalar reference of the transposed
/// product the quantized kernels will do.
pub fn matmul_backward_dx_frozen(
    dx: &mut [f32],
    dy: &[f32],
    w: &Tensor,
    t: usize,
    row: &mut [f32],
) -> Result<()> {
    const OP: &str = "matmul_backward_dx_frozen";
    let s = MatShape {
        t,
        rows: w.rows(),
        cols: w.cols(),
    };
    s.check_x_y(OP, dx.len(), dy.len())?;
    check_len(OP, "row", row.len(), s.cols)?;
    for j in 0..s.rows {
        w.dequantize_row(j, row)
            .map_err(|e| Error(format!("{OP}: {}: {e}", w.name)))?;
        for (dxi, dyi) in dx.chunks_exact_mut(s.cols).zip(dy.chunks_exact(s.rows)) {
            axpy(dxi, dyi[j], row);
        }
    }
    Ok(())
}

/// A LoRA pair's shape: the product's, its rank and its scale (`lora_alpha / r`, or
/// `lora_alpha / sqrt(r)` under rsLoRA).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoraShape {
    pub mat: MatShape,
    pub rank: usize,
    pub scale: f32,
}

impl LoraShape {
    fn check(&self, op: &str, x: usize, y: usize, h: usize, a: usize, b: usize) -> Result<()> {
        let m = self.mat;
        m.check_x_y(op, x, y)?;
        if self.rank == 0 {
            return Err(Error(format!("{op}: an adapter of rank 0")));
        }
        check_len(op, "h", h, prod(op, &[m.t, self.rank])?)?;
        check_len(op, "a", a, prod(op, &[self.rank, m.cols])?)?;
        check_len(op, "b", b, prod(op, &[m.rows, self.rank])?)
    }
}

/// The adapter term added to a base product: `h = x A^T` (kept for the backward, `(t, rank)`),
/// then `y += scale * h B^T`.
pub fn lora_forward(
    y: &mut [f32],
    h: &mut [f32],
    x: &[f32],
    a: &[f32],
    b: &[f32],
    s: LoraShape,
) -> Result<()> {
    const OP: &str = "lora_forward";
    s.check(OP, x.len(), y.len(), h.len(), a.len(), b.len())?;
    let (cols, rows, r) = (s.mat.cols, s.mat.rows, s.rank);
    for ((yi, hi), xi) in y
        .chunks_exact_mut(rows)
        .zip(h.chunks_exact_mut(r))
        .zip(x.chunks_exact(cols))
    {
        for (hk, ak) in hi.iter_mut().zip(a.chunks_exact(cols)) {
            *hk = dot(xi, ak);
        }
        for (yij, bj) in yi.iter_mut().zip(b.chunks_exact(r)) {
            *yij += s.scale * dot(hi, bj);
        }
    }
    Ok(())
}

/// Backward of `lora_forward`: with `dh = scale * dy B` (into the caller's `dh`, `(t, rank)`,
/// overwritten), `db += scale * dy^T h`, `da += dh^T x` and, if asked, `dx += dh A` (the
/// adapter's share of dx; the base adds its own `dy W`).
#[allow(clippy::too_many_arguments)]
pub fn lora_backward(
    dx: Option<&mut [f32]>,
    da: &mut [f32],
    db: &mut [f32],
    dh: &mut [f32],
    dy: &[f32],
    x: &[f32],
    h: &[f32],
    a: &[f32],
    b: &[f32],
    s: LoraShape,
) -> Result<()> {
    const OP: &str = "lora_backward";
    s.check(OP, x.len(), dy.len(), h.len(), a.len(), b.len())?;
    check_len(OP, "dh", dh.len(), h.len())?;
    check_len(OP, "da", da.len(), a.len())?;
    check_len(OP, "db", db.len(), b.len())?;
    let (cols, rows, r) = (s.mat.cols, s.mat.rows, s.rank);
    for (((dhi, hi), dyi), xi) in dh
        .chunks_exact_mut(r)
        .zip(h.chunks_exact(r))
        .zip(dy.chunks_exact(rows))
        .zip(x.chunks_exact(cols))
    {
        dhi.fill(0.0);
        for ((&g, bj), dbj) in dyi
            .iter()
            .zip(b.chunks_exact(r))
            .zip(db.chunks_exact_mut(r))
        {
            axpy(dhi, s.scale * g, bj);
            axpy(dbj, s.scale * g, hi);
        }
        for (&g, dak) in dhi.iter().zip(da.chunks_exact_mut(cols)) {
            axpy(dak, g, xi);
        }
    }
    if let Some(dx) = dx {
        check_len(OP, "dx", dx.len(), x.len())?;
        for (dxi, dhi) in dx.chunks_exact_mut(cols).zip(dh.chunks_exact(r)) {
            for (&g, ak) in dhi.iter().zip(a.chunks_exact(cols)) {
                axpy(dxi, g, ak);
            }
        }
    }
    Ok(())
}
