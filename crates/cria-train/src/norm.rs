//! RMSNorm with a weight: `y = x * r * w`, `r = 1 / sqrt(mean(x^2) + eps)` per row of `d` values.

use crate::{check_len, Error, Result};

/// Checks an RMSNorm's shapes (`x` rows of `w.len()`); returns the row width.
pub(crate) fn check(op: &str, x: usize, w: usize, rstd: usize) -> Result<usize> {
    if w == 0 || x % w != 0 {
        return Err(Error(format!("{op}: {x} values are not rows of {w}")));
    }
    check_len(op, "rstd", rstd, x / w)?;
    Ok(w)
}

/// `y` (overwritten) and `rstd` (each row's `r`, kept for the backward) from `x` and `w`. `r` is
/// computed as cria's inference kernel does (squares in f32, summed in f64), so `y` matches
/// `CpuBackend::rmsnorm`.
pub fn rmsnorm_forward(
    y: &mut [f32],
    rstd: &mut [f32],
    x: &[f32],
    w: &[f32],
    eps: f32,
) -> Result<()> {
    const OP: &str = "rmsnorm_forward";
    let d = check(OP, x.len(), w.len(), rstd.len())?;
    check_len(OP, "y", y.len(), x.len())?;
    for ((yr, xr), r) in y
        .chunks_exact_mut(d)
        .zip(x.chunks_exact(d))
        .zip(rstd.iter_mut())
    {
        let sum: f64 = xr.iter().map(|&v| (v * v) as f64).sum();
        *r = 1.0 / ((sum / d as f64) as f32 + eps).sqrt();
        for ((y, &xv), &wv) in yr.iter_mut().zip(xr).zip(w) {
            *y = xv * *r * wv;
        }
    }
    Ok(())
}

/// Backward of `rmsnorm_forward`: with `g = dy * w`,
/// `dx += r * (g - x * r^2 * mean(g * x))` and `dw += sum over rows of dy * x * r`.
pub fn rmsnorm_backward(
    dx: &mut [f32],
    dw: Option<&mut [f32]>,
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    rstd: &[f32],
) -> Result<()> {
    const OP: &str = "rmsnorm_backward";
    let d = check(OP, x.len(), w.len(), rstd.len())?;
    check_len(OP, "dx", dx.len(), x.len())?;
    check_len(OP, "dy", dy.len(), x.len())?;
    for (((dxr, dyr), xr), &r) in dx
        .chunks_exact_mut(d)
        .zip(dy.chunks_exact(d))
        .zip(x.chunks_exact(d))
        .zip(rstd)
    {
        let gx: f32 = dyr
            .iter()
            .zip(w)
            .zip(xr)
            .map(|((&g, &w), &x)| g * w * x)
            .sum();
        let c = r * r * gx / d as f32;
        for (((dx, &g), &w), &x) in dxr.iter_mut().zip(dyr).zip(w).zip(xr) {
            *dx += r * (g * w - x * c);
        }
    }
    if let Some(dw) = dw {
        check_len(OP, "dw", dw.len(), w.len())?;
        for ((dyr, xr), &r) in dy.chunks_exact(d).zip(x.chunks_exact(d)).zip(rstd) {
            for ((dw, &g), &x) in dw.iter_mut().zip(dyr).zip(xr) {
                *dw += g * x * r;
            }
        }
    }
    Ok(())
}
