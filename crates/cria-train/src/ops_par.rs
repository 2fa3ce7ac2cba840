//! Parallel, vectorized twins of the elementwise ops of `norm`, `rope` and `swiglu` (RMSNorm,
//! RoPE, SwiGLU, the residual add, each forward and backward) and of the adapters' dropout mask,
//! for `model`'s hot path. The scalar modules stay the reference: the math is theirs, and the
//! results match them within rounding (1e-6 of the values' scale; reductions are summed in
//! lanes, SwiGLU's `exp` is `attention_batch`'s polynomial).
//!
//! How it runs: the buffers are cut in blocks (whole rows for the row ops, [`BLOCK`] values for
//! the flat ones) handed to the backend's threads (`CpuBackend::for_each`) through a shared
//! iterator of disjoint pieces behind a `Mutex` (each work item takes the next block), so no
//! `unsafe` splits the outputs and nothing is allocated. Each block's loop is plain Rust compiled
//! three times by [`simd_fn!`]: portable (the scalar twin), and under `#[target_feature]` for
//! AVX2+FMA and AVX-512, chosen by the backend's `Isa`, so the compiler vectorizes it at the
//! CPU's width. Every reduction is written over fixed lanes and no product is fused unless the
//! reference fuses it, so the three instances give the same bits.

use crate::attention_batch::exp;
use crate::{check_len, Error, Result};
use cria_kernels::{CpuBackend, Isa, Rope};
use std::sync::Mutex;

/// Values per work item of the flat ops (64 KiB of f32); the row ops take as many whole rows.
pub const BLOCK: usize = 16 * 1024;

/// Lanes of the reductions (the vector width of AVX-512 in f32).
pub(crate) const LANES: usize = 16;

/// Defines `fn name(isa: Isa, args..) -> ret` running `body` compiled for `isa`: AVX-512 or
/// AVX2+FMA under `#[target_feature]`, else the portable instance. The body is an
/// `#[inline(always)]` function, so what it calls that is `#[inline(always)]` too (`exp`, the
/// lane helpers) is compiled at the instance's width.
macro_rules! simd_fn {
    ($(#[$m:meta])* $vis:vis fn $name:ident $(<const $c:ident: $ct:ty>)?
        ($($a:ident: $t:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name$(<const $c: $ct>)?(isa: cria_kernels::Isa, $($a: $t),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn imp$(<const $c: $ct>)?($($a: $t),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            fn avx512$(<const $c: $ct>)?($($a: $t),*) $(-> $ret)? {
                imp$(::<$c>)?($($a),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            fn avx2$(<const $c: $ct>)?($($a: $t),*) $(-> $ret)? {
                imp$(::<$c>)?($($a),*)
            }
            match isa {
                // SAFETY: callers pass `cpu.isa()` (`CpuBackend::with_isa` keeps an Isa only if
                // `available()` confirms it on this CPU, else Scalar) or `Isa::best()` (idem).
                #[cfg(target_arch = "x86_64")]
                cria_kernels::Isa::Avx512 => unsafe { avx512$(::<$c>)?($($a),*) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                cria_kernels::Isa::Avx2 => unsafe { avx2$(::<$c>)?($($a),*) },
                _ => imp$(::<$c>)?($($a),*),
            }
        }
    };
}
pub(crate) use simd_fn;

/// Runs `f` on every block `blocks` yields (disjoint pieces of the buffers), on `cpu`'s threads.
pub(crate) fn par<I: ExactSizeIterator + Send>(
    cpu: &CpuBackend,
    blocks: I,
    f: impl Fn(I::Item) + Sync,
) {
    let n = blocks.len();
    let blocks = Mutex::new(blocks);
    cpu.for_each(n, &|_, _| {
        let b = blocks.lock().unwrap_or_else(|e| e.into_inner()).next();
        if let Some(b) = b {
            f(b);
        }
    });
}

/// Rows of `width` values per work item.
fn rows_per(width: usize) -> usize {
    (BLOCK / width.max(1)).max(1)
}

/// `sum of (x[i]^2 as f64)`, in lanes.
#[inline(always)]
fn sum_sq(x: &[f32]) -> f64 {
    let mut acc = [0f64; LANES];
    let mut c = x.chunks_exact(LANES);
    for v in &mut c {
        for l in 0..LANES {
            acc[l] += (v[l] * v[l]) as f64;
        }
    }
    let tail: f64 = c.remainder().iter().map(|&v| (v * v) as f64).sum();
    tail + acc.iter().sum::<f64>()
}

/// `sum of g[i] * w[i] * x[i]` in f32, in lanes.
#[inline(always)]
fn dot3(g: &[f32], w: &[f32], x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (mut cg, mut cw, mut cx) = (
        g.chunks_exact(LANES),
        w.chunks_exact(LANES),
        x.chunks_exact(LANES),
    );
    for ((g, w), x) in (&mut cg).zip(&mut cw).zip(&mut cx) {
        for l in 0..LANES {
            acc[l] += g[l] * w[l] * x[l];
        }
    }
    let tail: f32 = (cg.remainder().iter().zip(cw.remainder()))
        .zip(cx.remainder())
        .map(|((&g, &w), &x)| g * w * x)
        .sum();
    tail + acc.iter().sum::<f32>()
}

simd_fn! {
    /// `norm::rmsnorm_forward` over a block of rows.
    fn rms_fwd(y: &mut [f32], rstd: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
        let d = w.len();
        for ((yr, xr), r) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)).zip(rstd) {
            *r = 1.0 / ((sum_sq(xr) / d as f64) as f32 + eps).sqrt();
            let r = *r;
            for ((y, &xv), &wv) in yr.iter_mut().zip(xr).zip(w) {
                *y = xv * r * wv;
            }
        }
    }
}

simd_fn! {
    /// `norm::rmsnorm_backward`'s dx over a block of rows.
    fn rms_bwd(dx: &mut [f32], dy: &[f32], x: &[f32], w: &[f32], rstd: &[f32]) {
        let d = w.len();
        let rows = dx.chunks_exact_mut(d).zip(dy.chunks_exact(d)).zip(x.chunks_exact(d));
        for (((dxr, dyr), xr), &r) in rows.zip(rstd) {
            let c = r * r * dot3(dyr, w, xr) / d as f32;
            for (((dx, &g), &w), &x) in dxr.iter_mut().zip(dyr).zip(w).zip(xr) {
                *dx += r * (g * w - x * c);
            }
        }
    }
}

simd_fn! {
    /// `norm::rmsnorm_backward`'s dw, over all rows in order (as the reference sums).
    fn rms_dw(dw: &mut [f32], dy: &[f32], x: &[f32], rstd: &[f32]) {
        let d = dw.len();
        for ((dyr, xr), &r) in dy.chunks_exact(d).zip(x.chunks_exact(d)).zip(rstd) {
            for ((dw, &g), &x) in dw.iter_mut().zip(dyr).zip(xr) {
                *dw += g * x * r;
            }
        }
    }
}

/// `norm::rmsnorm_forward` on `cpu`'s threads: `y` (overwritten) and `rstd` (each row's
/// `1 / sqrt(mean(x^2) + eps)`, kept for the backward) from `x` (rows of `w.len()`) and `w`.
pub fn rmsnorm_forward(
    cpu: &CpuBackend,
    y: &mut [f32],
    rstd: &mut [f32],
    x: &[f32],
    w: &[f32],
    eps: f32,
) -> Result<()> {
    const OP: &str = "ops_par::rmsnorm_forward";
    let d = crate::norm::check(OP, x.len(), w.len(), rstd.len())?;
    check_len(OP, "y", y.len(), x.len())?;
    let (r, isa) = (rows_per(d), cpu.isa());
    let blocks = y.chunks_mut(r * d).zip(rstd.chunks_mut(r));
    par(cpu, blocks.zip(x.chunks(r * d)), |((y, rs), x)| {
        rms_fwd(isa, y, rs, x, w, eps)
    });
    Ok(())
}

/// `norm::rmsnorm_backward` on `cpu`'s threads: `dx += r * (g - x * r^2 * mean(g * x))` with
/// `g = dy * w`, and `dw += sum over rows of dy * x * r` (that sum on the caller's thread).
pub fn rmsnorm_backward(
    cpu: &CpuBackend,
    dx: &mut [f32],
    dw: Option<&mut [f32]>,
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    rstd: &[f32],
) -> Result<()> {
    const OP: &str = "ops_par::rmsnorm_backward";
    let d = crate::norm::check(OP, x.len(), w.len(), rstd.len())?;
    check_len(OP, "dx", dx.len(), x.len())?;
    check_len(OP, "dy", dy.len(), x.len())?;
    if let Some(dw) = &dw {
        check_len(OP, "dw", dw.len(), w.len())?;
    }
    let (r, isa) = (rows_per(d), cpu.isa());
    let blocks = dx.chunks_mut(r * d).zip(dy.chunks(r * d));
    par(
        cpu,
        blocks.zip(x.chunks(r * d).zip(rstd.chunks(r))),
        |((dx, dy), (x, rs))| rms_bwd(isa, dx, dy, x, w, rs),
    );
    if let Some(dw) = dw {
        rms_dw(isa, dw, dy, x, rstd);
    }
    Ok(())
}

/// The pair (a, b) at angle (c, s): rotated forward as `cria_kernels::rotate` does (the same
/// fused products, so the same bits), or back by the transpose.
#[inline(always)]
fn turn<const BACK: bool>(a: f32, b: f32, c: f32, s: f32) -> (f32, f32) {
    if BACK {
        (a * c + b * s, b * c - a * s)
    } else {
        (a.mul_add(c, -(b * s)), a.mul_add(s, b * c))
    }
}

simd_fn! {
    /// RoPE over a block of rows of `width` values (heads of `head_dim`), `cs` their table.
    fn rope_rows<const BACK: bool>(
        x: &mut [f32],
        cs: &[(f32, f32)],
        width: usize,
        head_dim: usize,
        n_pairs: usize,
        interleaved: bool,
    ) {
        for (row, cs) in x.chunks_exact_mut(width).zip(cs.chunks_exact(n_pairs)) {
            for v in row.chunks_exact_mut(head_dim) {
                if interleaved {
                    for (p, &(c, s)) in v[..2 * n_pairs].chunks_exact_mut(2).zip(cs) {
                        (p[0], p[1]) = turn::<BACK>(p[0], p[1], c, s);
                    }
                } else {
                    let (a, b) = v.split_at_mut(n_pairs);
                    for ((a, b), &(c, s)) in a.iter_mut().zip(&mut b[..n_pairs]).zip(cs) {
                        (*a, *b) = turn::<BACK>(*a, *b, c, s);
                    }
                }
            }
        }
    }
}

/// `rope::rope_forward` / `rope_backward` (`BACK`) on `cpu`'s threads.
#[allow(clippy::too_many_arguments)]
fn rope_par<const BACK: bool>(
    op: &str,
    cpu: &CpuBackend,
    x: &mut [f32],
    t: usize,
    n_heads: usize,
    head_dim: usize,
    rope: &Rope,
    cs: &[(f32, f32)],
) -> Result<()> {
    let n_pairs = crate::rope::check(op, x.len(), t, n_heads, head_dim, rope, cs.len())?;
    if n_pairs == 0 || t == 0 {
        return Ok(());
    }
    let (width, isa, il) = (n_heads * head_dim, cpu.isa(), rope.interleaved);
    let r = rows_per(width);
    par(
        cpu,
        x.chunks_mut(r * width).zip(cs.chunks(r * n_pairs)),
        |(x, cs)| rope_rows::<BACK>(isa, x, cs, width, head_dim, n_pairs, il),
    );
    Ok(())
}

/// `rope::rope_forward` on `cpu`'s threads: rotates `x` (`t` rows of `n_heads x head_dim`) in
/// place, row `i` by the angles of `cs` row `i` (`rope::rope_table`).
pub fn rope_forward(
    cpu: &CpuBackend,
    x: &mut [f32],
    t: usize,
    n_heads: usize,
    head_dim: usize,
    rope: &Rope,
    cs: &[(f32, f32)],
) -> Result<()> {
    let op = "ops_par::rope_forward";
    rope_par::<false>(op, cpu, x, t, n_heads, head_dim, rope, cs)
}

/// `rope::rope_backward` on `cpu`'s threads: `dx` holds dY and becomes dX, in place.
pub fn rope_backward(
    cpu: &CpuBackend,
    dx: &mut [f32],
    t: usize,
    n_heads: usize,
    head_dim: usize,
    rope: &Rope,
    cs: &[(f32, f32)],
) -> Result<()> {
    let op = "ops_par::rope_backward";
    rope_par::<true>(op, cpu, dx, t, n_heads, head_dim, rope, cs)
}

/// `sigmoid(x)`, with the polynomial `exp`.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

simd_fn! {
    fn swiglu_fwd(out: &mut [f32], g: &[f32], u: &[f32]) {
        for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
            *o = g * sigmoid(g) * u;
        }
    }
}

simd_fn! {
    fn swiglu_bwd(dg: &mut [f32], du: &mut [f32], dout: &[f32], g: &[f32], u: &[f32]) {
        for ((((dg, du), &d), &g), &u) in dg.iter_mut().zip(du.iter_mut()).zip(dout).zip(g).zip(u)
        {
            let s = sigmoid(g);
            *dg += d * u * s * (1.0 + g * (1.0 - s));
            *du += d * g * s;
        }
    }
}

/// `Err` unless every length of `lens` (named) is `want`.
fn same_len(op: &str, want: usize, lens: &[(&str, usize)]) -> Result<()> {
    lens.iter()
        .try_for_each(|&(what, len)| check_len(op, what, len, want))
}

/// `out = kernel(a, b)` over blocks of values on `cpu`'s threads, lengths checked.
fn binary(
    op: &str,
    cpu: &CpuBackend,
    out: &mut [f32],
    a: &[f32],
    b: &[f32],
    kernel: fn(Isa, &mut [f32], &[f32], &[f32]),
) -> Result<()> {
    same_len(op, a.len(), &[("b", b.len()), ("out", out.len())])?;
    let isa = cpu.isa();
    let blocks = out.chunks_mut(BLOCK).zip(a.chunks(BLOCK));
    par(cpu, blocks.zip(b.chunks(BLOCK)), |((o, a), b)| {
        kernel(isa, o, a, b)
    });
    Ok(())
}

/// `swiglu::swiglu_forward` on `cpu`'s threads: `out = silu(g) * u` (overwritten).
pub fn swiglu_forward(cpu: &CpuBackend, out: &mut [f32], g: &[f32], u: &[f32]) -> Result<()> {
    binary("ops_par::swiglu_forward", cpu, out, g, u, swiglu_fwd)
}

/// `swiglu::swiglu_backward` on `cpu`'s threads:
/// `dg += dout * u * sigmoid(g) * (1 + g * (1 - sigmoid(g)))`, `du += dout * silu(g)`.
pub fn swiglu_backward(
    cpu: &CpuBackend,
    dg: &mut [f32],
    du: &mut [f32],
    dout: &[f32],
    g: &[f32],
    u: &[f32],
) -> Result<()> {
    let lens = [
        ("u", u.len()),
        ("dout", dout.len()),
        ("dg", dg.len()),
        ("du", du.len()),
    ];
    same_len("ops_par::swiglu_backward", g.len(), &lens)?;
    let isa = cpu.isa();
    let outs = dg.chunks_mut(BLOCK).zip(du.chunks_mut(BLOCK));
    let ins = dout.chunks(BLOCK).zip(g.chunks(BLOCK)).zip(u.chunks(BLOCK));
    par(cpu, outs.zip(ins), |((dg, du), ((d, g), u))| {
        swiglu_bwd(isa, dg, du, d, g, u)
    });
    Ok(())
}

simd_fn! {
    fn add(out: &mut [f32], a: &[f32], b: &[f32]) {
        for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
            *o = a + b;
        }
    }
}

simd_fn! {
    fn add_both(da: &mut [f32], db: &mut [f32], d: &[f32]) {
        for ((a, b), &d) in da.iter_mut().zip(db.iter_mut()).zip(d) {
            *a += d;
            *b += d;
        }
    }
}

/// `swiglu::residual_forward` on `cpu`'s threads: `out = a + b` (overwritten).
pub fn residual_forward(cpu: &CpuBackend, out: &mut [f32], a: &[f32], b: &[f32]) -> Result<()> {
    binary("ops_par::residual_forward", cpu, out, a, b, add)
}

/// `swiglu::residual_backward` on `cpu`'s threads: `da += dout`, `db += dout`.
pub fn residual_backward(
    cpu: &CpuBackend,
    da: &mut [f32],
    db: &mut [f32],
    dout: &[f32],
) -> Result<()> {
    let lens = [("da", da.len()), ("db", db.len())];
    same_len("ops_par::residual_backward", dout.len(), &lens)?;
    let isa = cpu.isa();
    let blocks = da.chunks_mut(BLOCK).zip(db.chunks_mut(BLOCK));
    par(cpu, blocks.zip(dout.chunks(BLOCK)), |((da, db), d)| {
        add_both(isa, da, db, d)
    });
    Ok(())
}

/// Dropout's multiplier of value `i` under `seed`: 0 (dropped, with probability `p`) or
/// `1 / (1 - p)`. A counter-based hash (SplitMix64's finalizer), so the backward regenerates the
/// forward's mask from the seed alone.
#[inline(always)]
pub fn dropout_keep(seed: u64, i: usize, p: f32) -> f32 {
    let mut z = seed.wrapping_add(
        (i as u64)
            .wrapping_add(1)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15),
    );
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let u = (z >> 40) as f32 * (1.0 / (1u64 << 24) as f32);
    if u < p {
        0.0
    } else {
        1.0 / (1.0 - p)
    }
}

simd_fn! {
    /// Values `i0..` of the mask applied: `out = x * keep` (ADD: `out += x * keep`).
    fn mask<const ADD: bool>(out: &mut [f32], x: &[f32], seed: u64, p: f32, i0: usize) {
        for (i, (o, &v)) in out.iter_mut().zip(x).enumerate() {
            let y = v * dropout_keep(seed, i0 + i, p);
            *o = if ADD { *o + y } else { y };
        }
    }
}

fn dropout_par<const ADD: bool>(
    op: &str,
    cpu: &CpuBackend,
    out: &mut [f32],
    x: &[f32],
    seed: u64,
    p: f32,
) -> Result<()> {
    check_len(op, "x", x.len(), out.len())?;
    if !(0.0..1.0).contains(&p) {
        return Err(Error(format!(
            "{op}: dropout probability {p} is not in [0, 1)"
        )));
    }
    let isa = cpu.isa();
    let blocks = out.chunks_mut(BLOCK).zip(x.chunks(BLOCK)).enumerate();
    par(cpu, blocks, |(b, (o, x))| {
        mask::<ADD>(isa, o, x, seed, p, b * BLOCK)
    });
    Ok(())
}

/// The adapters' inverted dropout on `cpu`'s threads: `out[i] = x[i] * dropout_keep(seed, i, p)`
/// (overwritten), the mask of `seed` over the flat index.
pub fn dropout_forward(
    cpu: &CpuBackend,
    out: &mut [f32],
    x: &[f32],
    seed: u64,
    p: f32,
) -> Result<()> {
    dropout_par::<false>("ops_par::dropout_forward", cpu, out, x, seed, p)
}

/// Backward of `dropout_forward`: `dx[i] += dy[i] * dropout_keep(seed, i, p)`.
pub fn dropout_backward(
    cpu: &CpuBackend,
    dx: &mut [f32],
    dy: &[f32],
    seed: u64,
    p: f32,
) -> Result<()> {
    dropout_par::<true>("ops_par::dropout_backward", cpu, dx, dy, seed, p)
}
