//! The feed-forward's gate, `out = silu(g) * u` with `silu(g) = g * sigmoid(g)`, and the
//! residual add `out = a + b`: elementwise, over slices of equal length.

use crate::{check_len, Result};

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `out = silu(g) * u` (overwritten).
pub fn swiglu_forward(out: &mut [f32], g: &[f32], u: &[f32]) -> Result<()> {
    const OP: &str = "swiglu_forward";
    check_len(OP, "u", u.len(), g.len())?;
    check_len(OP, "out", out.len(), g.len())?;
    for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
        *o = g * sigmoid(g) * u;
    }
    Ok(())
}

/// Backward of `swiglu_forward`: `dg += dout * u * sigmoid(g) * (1 + g * (1 - sigmoid(g)))`,
/// `du += dout * silu(g)`.
pub fn swiglu_backward(
    dg: &mut [f32],
    du: &mut [f32],
    dout: &[f32],
    g: &[f32],
    u: &[f32],
) -> Result<()> {
    const OP: &str = "swiglu_backward";
    for (what, len) in [
        ("u", u.len()),
        ("dout", dout.len()),
        ("dg", dg.len()),
        ("du", du.len()),
    ] {
        check_len(OP, what, len, g.len())?;
    }
    for ((((dg, du), &d), &g), &u) in dg.iter_mut().zip(du.iter_mut()).zip(dout).zip(g).zip(u) {
        let s = sigmoid(g);
        *dg += d * u * s * (1.0 + g * (1.0 - s));
        *du += d * g * s;
    }
    Ok(())
}

/// `out = a + b` (overwritten).
pub fn residual_forward(out: &mut [f32], a: &[f32], b: &[f32]) -> Result<()> {
    const OP: &str = "residual_forward";
    check_len(OP, "b", b.len(), a.len())?;
    check_len(OP, "out", out.len(), a.len())?;
    for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
        *o = a + b;
    }
    Ok(())
}

/// Backward of `residual_forward`: the gradient passes to both inputs, `da += dout`, `db += dout`.
pub fn residual_backward(da: &mut [f32], db: &mut [f32], dout: &[f32]) -> Result<()> {
    const OP: &str = "residual_backward";
    check_len(OP, "da", da.len(), dout.len())?;
    check_len(OP, "db", db.len(), dout.len())?;
    for ((a, b), &d) in da.iter_mut().zip(db.iter_mut()).zip(dout) {
        *a += d;
        *b += d;
    }
    Ok(())
}
