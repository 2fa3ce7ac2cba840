//! Quantizing whole rows the way llama.cpp's `ggml_quantize_chunk` does, with or without an
//! importance matrix: what `cria quantize` writes, byte for byte what `llama-quantize` writes.
//!
//! Without importance weights, most types use the reference rounding of [`crate::quant`] (ggml's
//! `quantize_row_*_ref`); with them, the weighted searches here (ports of ggml-quants.c's
//! `quantize_row_*_impl`, `make_qx_quants` with weights, `make_qkx3_quants`, `make_qp_quants`).
//! IQ4_NL and IQ4_XS always go through `quantize_row_iq4_nl_impl` (weights x^2 without an
//! importance matrix). Q8_0, F32, F16 and BF16 ignore the importance matrix, as ggml does.
//! The lattice IQ types (IQ3_XXS, IQ3_S, IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M) are in
//! `quantize_iq.rs`; IQ2_XXS, IQ2_XS and IQ1_S are an error without importance weights
//! (`ggml_quantize_chunk` asserts on it), the others fall back to ggml's default weights.
//!
//! Exactness: every f32 operation is written in ggml's order and without fused multiply-adds.
//! llama.cpp builds these quantizers into libggml-base, which CMake compiles without `-march`
//! (only the CPU backend gets the native flags), so on x86-64 GCC has no FMA instruction to
//! contract into and the C is strict IEEE: the fixtures in tests/quantize_weighted.rs hold cria to
//! the same bytes. The functions are pure (all scratch on the stack), so callers may quantize
//! different rows from many threads at once.

// The quantizers keep ggml's index loops so they can be read side by side with ggml-quants.c.
#![allow(clippy::needless_range_loop)]

use crate::quant::{
    self, make_qx_quants, nearest_int, pack_scale_min_k4, signed_absmax, BlockIQ4_NL, BlockIQ4_XS,
    BlockQ2_K, BlockQ3_K, BlockQ4_0, BlockQ4_1, BlockQ4_K, BlockQ5_0, BlockQ5_1, BlockQ5_K,
    QuantBlock, GROUP_MAX_EPS, KVALUES_IQ4NL, QK, QK_K,
};
use crate::{quantize_iq, DType, Error, Result};
use half::f16;

/// Quantizes `src` (whole rows of `n_per_row` values) into `dst` (exactly the bytes `dtype` takes
/// for them). `imatrix`, when given, holds `n_per_row` importance weights (per column, the mean of
/// squared activations) and steers the rounding as in llama.cpp. The result is byte for byte what
/// `ggml_quantize_chunk(dtype, src, dst, 0, nrows, n_per_row, imatrix)` writes.
pub fn quantize_rows(
    dtype: DType,
    src: &[f32],
    dst: &mut [u8],
    n_per_row: usize,
    imatrix: Option<&[f32]>,
) -> Result<()> {
    if !can_quantize_rows(dtype) {
        return Err(Error::Unsupported(format!("quantizing to {dtype}")));
    }
    if n_per_row == 0 || src.len() % n_per_row != 0 {
        return Err(Error::msg(format!(
            "quantize {dtype}: {} values are not whole rows of {n_per_row}",
            src.len()
        )));
    }
    if n_per_row % dtype.block_size() != 0 {
        return Err(Error::msg(format!(
            "quantize {dtype}: rows of {n_per_row} values are not whole blocks of {}",
            dtype.block_size()
        )));
    }
    let need = dtype.bytes_for(src.len())?;
    if dst.len() != need {
        return Err(Error::msg(format!(
            "quantize {dtype}: {} bytes for {} values, expected {need}",
            dst.len(),
            src.len()
        )));
    }
    if let Some(w) = imatrix {
        if w.len() != n_per_row {
            return Err(Error::msg(format!(
                "quantize {dtype}: {} importance weights for rows of {n_per_row}",
                w.len()
            )));
        }
        // llama-quantize refuses these when it loads the imatrix; refuse them here too.
        if let Some(i) = w.iter().position(|v| !v.is_finite()) {
            return Err(Error::msg(format!(
                "quantize {dtype}: importance weight {i} is {}",
                w[i]
            )));
        }
    }
    use DType::*;
    match (dtype, imatrix) {
        (IQ4_NL, qw) => rows(src, dst, n_per_row, |x, y: &mut [BlockIQ4_NL]| {
            for (i, b) in y.iter_mut().enumerate() {
                let qw = qw.map(|w| &w[QK * i..QK * (i + 1)]);
                let mut unused_h = 0u16;
                iq4_impl::<QK>(
                    &x[QK * i..QK * (i + 1)],
                    qw,
                    &mut b.d,
                    &mut b.qs,
                    &mut unused_h,
                    &mut [],
                );
            }
        }),
        (IQ4_XS, qw) => rows(src, dst, n_per_row, |x, y: &mut [BlockIQ4_XS]| {
            for (i, b) in y.iter_mut().enumerate() {
                let qw = qw.map(|w| &w[QK_K * i..QK_K * (i + 1)]);
                let xb = &x[QK_K * i..QK_K * (i + 1)];
                iq4_impl::<QK_K>(
                    xb,
                    qw,
                    &mut b.d,
                    &mut b.qs,
                    &mut b.scales_h,
                    &mut b.scales_l,
                );
            }
        }),
        (IQ3_XXS | IQ3_S | IQ2_S | IQ1_M, qw) => {
            let f = match dtype {
                IQ3_XXS => quantize_iq::iq3_xxs_row,
                IQ3_S => quantize_iq::iq3_s_row,
                IQ2_S => quantize_iq::iq2_s_row,
                _ => quantize_iq::iq1_m_row,
            };
            byte_rows(dtype, src, dst, n_per_row, |x, y| f(x, qw, y))?;
        }
        (IQ2_XXS | IQ2_XS | IQ1_S, Some(qw)) => {
            let f = match dtype {
                IQ2_XXS => quantize_iq::iq2_xxs_row,
                IQ2_XS => quantize_iq::iq2_xs_row,
                _ => quantize_iq::iq1_s_row,
            };
            byte_rows(dtype, src, dst, n_per_row, |x, y| f(x, qw, y))?;
        }
        // ggml_quantize_chunk asserts that these get an importance matrix.
        (IQ2_XXS | IQ2_XS | IQ1_S, None) => {
            return Err(Error::msg(format!(
                "quantize {dtype}: needs an importance matrix (--imatrix)"
            )))
        }
        (Q4_0, Some(qw)) => rows(src, dst, n_per_row, |x, y| legacy_row(x, qw, y, q4_0_block)),
        (Q4_1, Some(qw)) => rows(src, dst, n_per_row, |x, y| legacy_row(x, qw, y, q4_1_block)),
        (Q5_0, Some(qw)) => rows(src, dst, n_per_row, |x, y| legacy_row(x, qw, y, q5_0_block)),
        (Q5_1, Some(qw)) => rows(src, dst, n_per_row, |x, y| legacy_row(x, qw, y, q5_1_block)),
        (Q2_K, Some(qw)) => rows(src, dst, n_per_row, |x, y| {
            super_blocks(x, qw, y, q2_k_block)
        }),
        (Q3_K, Some(qw)) => rows(src, dst, n_per_row, |x, y| {
            super_blocks(x, qw, y, q3_k_block)
        }),
        (Q4_K, Some(qw)) => rows(src, dst, n_per_row, |x, y| {
            super_blocks(x, qw, y, q4_k_block)
        }),
        (Q5_K, Some(qw)) => rows(src, dst, n_per_row, |x, y| {
            super_blocks(x, qw, y, q5_k_block)
        }),
        (Q6_K, Some(qw)) => rows(src, dst, n_per_row, |x, y| {
            super_blocks(x, qw, y, |x, qw, b| quant::q6_k_block(x, Some(qw), b))
        }),
        // F32, F16, BF16, Q8_0 ignore the weights; without weights ggml uses the *_ref rounding.
        _ => return quant::quantize(dtype, src, dst),
    }
    Ok(())
}

/// Whether [`quantize_rows`] can make `dtype` (with or without an importance matrix).
pub fn can_quantize_rows(dtype: DType) -> bool {
    use DType::*;
    matches!(
        dtype,
        F32 | F16
            | BF16
            | Q4_0
            | Q4_1
            | Q5_0
            | Q5_1
            | Q8_0
            | Q2_K
            | Q3_K
            | Q4_K
            | Q5_K
            | Q6_K
            | IQ4_NL
            | IQ4_XS
            | IQ3_XXS
            | IQ3_S
            | IQ2_XXS
            | IQ2_XS
            | IQ2_S
            | IQ1_S
            | IQ1_M
    )
}

/// Whether llama.cpp refuses to make `dtype` without an importance matrix (llama-quant.cpp's
/// `tensor_requires_imatrix`: IQ3_XXS, IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M, except for the token
/// embedding and output tensors). Q2_K needs one only inside a Q2_K_S mix, a rule of the mixing
/// layer, so it is `false` here.
pub fn needs_imatrix(dtype: DType) -> bool {
    use DType::*;
    matches!(dtype, IQ3_XXS | IQ2_XXS | IQ2_XS | IQ2_S | IQ1_S | IQ1_M)
}

/// Calls `f` on each row of `src` and that row's bytes in `dst`.
fn byte_rows(
    dtype: DType,
    src: &[f32],
    dst: &mut [u8],
    n_per_row: usize,
    mut f: impl FnMut(&[f32], &mut [u8]),
) -> Result<()> {
    let row_bytes = dtype.bytes_for(n_per_row)?;
    for (x, y) in src
        .chunks_exact(n_per_row)
        .zip(dst.chunks_exact_mut(row_bytes))
    {
        f(x, y);
    }
    Ok(())
}

/// Calls `f` on each row of `src` and that row's blocks of `B` in `dst` (any alignment).
fn rows<B: QuantBlock>(
    src: &[f32],
    dst: &mut [u8],
    n_per_row: usize,
    mut f: impl FnMut(&[f32], &mut [B]),
) {
    let per_row = n_per_row / B::QK;
    match bytemuck::try_cast_slice_mut::<u8, B>(dst) {
        Ok(blocks) => {
            for (x, y) in src
                .chunks_exact(n_per_row)
                .zip(blocks.chunks_exact_mut(per_row))
            {
                f(x, y);
            }
        }
        Err(_) => {
            // Unaligned output: one reused row of blocks, copied out.
            let mut row = vec![B::zeroed(); per_row];
            let row_bytes = per_row * std::mem::size_of::<B>();
            for (x, d) in src
                .chunks_exact(n_per_row)
                .zip(dst.chunks_exact_mut(row_bytes))
            {
                f(x, &mut row);
                d.copy_from_slice(bytemuck::cast_slice(&row));
            }
        }
    }
}

/// Calls `f` on each 256-value super-block of a row with its 256 importance weights.
fn super_blocks<B>(x: &[f32], qw: &[f32], y: &mut [B], f: fn(&[f32], &[f32], &mut B)) {
    for (i, b) in y.iter_mut().enumerate() {
        f(
            &x[QK_K * i..QK_K * (i + 1)],
            &qw[QK_K * i..QK_K * (i + 1)],
            b,
        );
    }
}

/// Sum of squares, accumulated in order from 0.
#[inline]
pub(crate) fn sum_sq(x: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for &v in x {
        s += v * v;
    }
    s
}

/// Sum accumulated in order from +0 (as the C loops do; `Iterator::sum` starts from -0).
#[inline]
fn sum(x: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for &v in x {
        s += v;
    }
    s
}

/// ggml's importance weights: `qw[j] * sqrt(sigma2 + x[j]^2)`.
#[inline]
fn weights<const N: usize>(x: &[f32], qw: &[f32], sigma2: f32) -> [f32; N] {
    let mut w = [0f32; N];
    for j in 0..N {
        w[j] = qw[j] * (sigma2 + x[j] * x[j]).sqrt();
    }
    w
}

/// ggml's `MAX(a, b)` macro (`a > b ? a : b`, which keeps `b` when either is NaN).
#[inline]
pub(crate) fn c_max(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

// ------------------------------------------------------------------------------------------------
// The weighted searches
// ------------------------------------------------------------------------------------------------

/// ggml `make_qkx3_quants(n, nmax, x, weights, L, &the_min, Laux, -0.9, 0.05, 36, false)`: scale
/// and min of an asymmetric group, 37 candidate scales refined by weighted least squares. Levels
/// 0..=nmax go to `l`; returns (scale, the_min), the dequantized value being scale*l - the_min.
/// With weights given, ggml's make_qkx3_quants is make_qkx2_quants step for step (the early exit
/// `max <= min` equals `max == min` since min <= max always), so the reference search serves.
#[inline]
fn make_qkx3_quants(nmax: i32, x: &[f32], w: &[f32], l: &mut [u8], laux: &mut [u8]) -> (f32, f32) {
    quant::make_qkx2_quants(nmax, x, w, l, laux, -0.9, 0.05, 36, false)
}

/// ggml `make_qp_quants`: quantizes non-negative `x` (the sub-block scales or mins of a k-quant
/// super-block) to levels 0..=nmax with weights `qw`, a 9-scale search then 5 rounds of
/// coordinate descent; returns the scale. As in C, `l` is a byte array: a negative level wraps.
pub(crate) fn make_qp_quants(nmax: i32, x: &[f32], l: &mut [u8], qw: &[f32]) -> f32 {
    let n = x.len();
    let mut max = 0.0f32;
    for &v in x {
        max = c_max(max, v);
    }
    if max < GROUP_MAX_EPS {
        l[..n].fill(0);
        return 0.0;
    }
    let mut iscale = nmax as f32 / max;
    for i in 0..n {
        l[i] = nearest_int(iscale * x[i]) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0.0f32;
    for i in 0..n {
        let diff = x[i] - scale * l[i] as f32;
        best_mse += qw[i] * diff * diff;
    }
    for is in -4..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1 * is as f32 + nmax as f32) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0.0f32;
        for i in 0..n {
            let q = nearest_int(iscale_is * x[i]).min(nmax);
            let diff = x[i] - scale_is * q as f32;
            mse += qw[i] * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for i in 0..n {
        let q = nearest_int(iscale * x[i]).min(nmax);
        l[i] = q as u8;
        let (w, q) = (qw[i], q as f32);
        sumlx += w * x[i] * q;
        suml2 += w * q * q;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..n {
            let w = qw[i];
            let li = l[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            let mut sl2 = suml2 - w * li * li;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != l[i] as i32 {
                    let nl = new_l as f32;
                    slx += w * x[i] * nl;
                    sl2 += w * nl * nl;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l[i] = new_l as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

// ------------------------------------------------------------------------------------------------
// Legacy 32-value blocks (quantize_row_q4_0_impl .. q5_1_impl): sigma2 is the row's mean square
// ------------------------------------------------------------------------------------------------

/// The weighted loop of `quantize_row_q4_0_impl` .. `q5_1_impl`: sigma2 is the row's mean
/// square; `f` quantizes one block of 32 with its weights `qw * sqrt(sigma2 + x^2)`.
fn legacy_row<B>(x: &[f32], qw: &[f32], y: &mut [B], f: fn(&[f32], &[f32; QK], &mut B)) {
    let sigma2 = sum_sq(x) / x.len() as f32;
    for (ib, b) in y.iter_mut().enumerate() {
        let r = QK * ib..QK * (ib + 1);
        let w = weights::<QK>(&x[r.clone()], &qw[r.clone()], sigma2);
        f(&x[r], &w, b);
    }
}

fn q4_0_block(x: &[f32], w: &[f32; QK], b: &mut BlockQ4_0) {
    let mut l = [0i8; QK];
    b.d = f16::from_f32(make_qx_quants(8, x, &mut l, 1, Some(w)));
    for j in 0..QK / 2 {
        b.qs[j] = l[j] as u8 | ((l[j + 16] as u8) << 4);
    }
}

fn q4_1_block(x: &[f32], w: &[f32; QK], b: &mut BlockQ4_1) {
    let (mut l, mut laux) = ([0u8; QK], [0u8; QK]);
    let (d, the_min) = make_qkx3_quants(15, x, w, &mut l, &mut laux);
    b.d = f16::from_f32(d);
    b.m = f16::from_f32(-the_min);
    for j in 0..QK / 2 {
        b.qs[j] = l[j] | (l[j + 16] << 4);
    }
}

/// Q5_0/Q5_1 packing of 32 levels 0..32: low nibbles in `qs`, fifth bits in `qh`.
fn pack_q5(l: &[u8; QK], qs: &mut [u8; QK / 2], qh: &mut [u8; 4]) {
    let mut h = 0u32;
    for j in 0..QK / 2 {
        let (l0, l1) = (l[j], l[j + 16]);
        qs[j] = (l0 & 0x0F) | ((l1 & 0x0F) << 4);
        h |= (((l0 & 0x10) >> 4) as u32) << j;
        h |= (((l1 & 0x10) >> 4) as u32) << (j + QK / 2);
    }
    *qh = h.to_le_bytes();
}

fn q5_0_block(x: &[f32], w: &[f32; QK], b: &mut BlockQ5_0) {
    let mut l = [0i8; QK];
    b.d = f16::from_f32(make_qx_quants(16, x, &mut l, 1, Some(w)));
    pack_q5(&bytemuck::cast(l), &mut b.qs, &mut b.qh);
}

fn q5_1_block(x: &[f32], w: &[f32; QK], b: &mut BlockQ5_1) {
    let (mut l, mut laux) = ([0u8; QK], [0u8; QK]);
    let (d, the_min) = make_qkx3_quants(31, x, w, &mut l, &mut laux);
    b.d = f16::from_f32(d);
    b.m = f16::from_f32(-the_min);
    pack_q5(&l, &mut b.qs, &mut b.qh);
}

// ------------------------------------------------------------------------------------------------
// k-quants (quantize_row_q2_K_impl .. q6_K_impl), one 256-value super-block at a time
// ------------------------------------------------------------------------------------------------

fn q2_k_block(x: &[f32], qw: &[f32], b: &mut BlockQ2_K) {
    let mut l = [0u8; QK_K];
    let mut laux = [0u8; 16];
    let (mut scales, mut mins, mut sw) = ([0f32; 16], [0f32; 16], [0f32; 16]);
    let (mut ls, mut lm) = ([0u8; 16], [0u8; 16]);
    let sigma2 = sum_sq(x) / QK_K as f32;
    for j in 0..QK_K / 16 {
        let xs = &x[16 * j..16 * j + 16];
        let w = weights::<16>(xs, &qw[16 * j..16 * j + 16], sigma2);
        sw[j] = sum(&w);
        (scales[j], mins[j]) = make_qkx3_quants(3, xs, &w, &mut l[16 * j..16 * j + 16], &mut laux);
    }
    let dm = make_qp_quants(15, &scales, &mut ls, &sw);
    let mm = make_qp_quants(15, &mins, &mut lm, &sw);
    b.d = f16::from_f32(dm);
    b.dmin = f16::from_f32(mm);
    for j in 0..QK_K / 16 {
        b.scales[j] = ls[j] | (lm[j] << 4);
    }
    quant::q2_k_requantize_pack(x, &mut l, b);
}

fn q3_k_block(x: &[f32], qw: &[f32], b: &mut BlockQ3_K) {
    let mut l = [0i8; QK_K];
    let (mut scales, mut sw) = ([0f32; 16], [0f32; 16]);
    let mut ls = [0i8; 16];
    let sigma2 = 2.0 * sum_sq(x) / QK_K as f32;
    for j in 0..QK_K / 16 {
        let xs = &x[16 * j..16 * j + 16];
        let w = weights::<16>(xs, &qw[16 * j..16 * j + 16], sigma2);
        sw[j] = sum(&w);
        scales[j] = make_qx_quants(4, xs, &mut l[16 * j..16 * j + 16], 1, Some(&w));
    }
    b.scales = [0; 12];
    let d_block = make_qx_quants(32, &scales, &mut ls, 1, Some(&sw));
    for j in 0..QK_K / 16 {
        let q = ls[j] as u8;
        if j < 8 {
            b.scales[j] = q & 0xF;
        } else {
            b.scales[j - 8] |= (q & 0xF) << 4;
        }
        b.scales[j % 4 + 8] |= (q >> 4) << (2 * (j / 4));
    }
    b.d = f16::from_f32(d_block);
    quant::q3_k_requantize_pack(x, &mut l, b);
}

/// The first half of Q4_K/Q5_K with weights: per group of 32, (scale, min) by make_qkx3_quants,
/// then the 8 scales and 8 mins quantized to 6 bits by make_qp_quants; requantized levels 0..=nmax
/// are returned. `cap63` is Q5_K's extra MIN(63, ...) on the 6-bit values.
fn q45_k_scales(
    x: &[f32],
    qw: &[f32],
    nmax: i32,
    cap63: bool,
    d_out: &mut f16,
    dmin_out: &mut f16,
    scales_out: &mut [u8; 12],
) -> [u8; QK_K] {
    let mut l = [0u8; QK_K];
    let mut laux = [0u8; 32];
    let (mut scales, mut mins, mut sw) = ([0f32; 8], [0f32; 8], [0f32; 8]);
    let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
    let sigma2 = 2.0 * sum_sq(x) / QK_K as f32;
    for j in 0..QK_K / 32 {
        let xs = &x[32 * j..32 * j + 32];
        let w = weights::<32>(xs, &qw[32 * j..32 * j + 32], sigma2);
        sw[j] = sum(&w);
        (scales[j], mins[j]) =
            make_qkx3_quants(nmax, xs, &w, &mut l[32 * j..32 * j + 32], &mut laux);
    }
    let d_block = make_qp_quants(63, &scales, &mut ls, &sw);
    let m_block = make_qp_quants(63, &mins, &mut lm, &sw);
    if cap63 {
        for v in ls.iter_mut().chain(lm.iter_mut()) {
            *v = (*v).min(63);
        }
    }
    *scales_out = pack_scale_min_k4(&ls, &lm);
    *d_out = f16::from_f32(d_block);
    *dmin_out = f16::from_f32(m_block);
    quant::k_requantize(x, nmax, *d_out, *dmin_out, scales_out, &mut l);
    l
}

fn q4_k_block(x: &[f32], qw: &[f32], b: &mut BlockQ4_K) {
    let l = q45_k_scales(x, qw, 15, false, &mut b.d, &mut b.dmin, &mut b.scales);
    quant::q4_k_pack(&l, b);
}

fn q5_k_block(x: &[f32], qw: &[f32], b: &mut BlockQ5_K) {
    let l = q45_k_scales(x, qw, 31, true, &mut b.d, &mut b.dmin, &mut b.scales);
    quant::q5_k_pack(&l, b);
}

// ------------------------------------------------------------------------------------------------
// IQ4_NL / IQ4_XS (quantize_row_iq4_nl_impl with ntry = 7)
// ------------------------------------------------------------------------------------------------

/// ggml `best_index_int8(16, kvalues_iq4nl, x)`: the nearest of the 16 non-linear levels (the
/// upper one on ties), by bisection.
#[inline]
fn best_index_iq4nl(x: f32) -> u8 {
    let v = |i: usize| KVALUES_IQ4NL[i] as f32;
    if x <= v(0) {
        return 0;
    }
    if x >= v(15) {
        return 15;
    }
    let (mut ml, mut mu) = (0usize, 15usize);
    while mu - ml > 1 {
        let mav = (ml + mu) / 2;
        if x < v(mav) {
            mu = mav;
        } else {
            ml = mav;
        }
    }
    if x - v(mu - 1) < v(mu) - x {
        (mu - 1) as u8
    } else {
        mu as u8
    }
}

/// ggml `quantize_row_iq4_nl_impl(SB, 32, x, ...)` with `ntry = 7`, for one super-block of `SB`
/// values: IQ4_NL is SB = 32 (one scale, `scales_l` empty), IQ4_XS SB = 256 (eight 6-bit scales).
/// Without `qw` the weights are x^2.
fn iq4_impl<const SB: usize>(
    x: &[f32],
    qw: Option<&[f32]>,
    dh: &mut f16,
    q4: &mut [u8],
    scales_h: &mut u16,
    scales_l: &mut [u8],
) {
    const NTRY: i32 = 7;
    let v0 = KVALUES_IQ4NL[0] as f32;
    let mut l = [0u8; QK_K];
    let mut scales = [0f32; QK_K / 32];
    let mut sigma2 = sum_sq(x);
    sigma2 *= 2.0 / SB as f32;
    let (mut max_scale, mut amax_scale) = (0.0f32, 0.0f32);
    for ib in 0..SB / 32 {
        let xb = &x[32 * ib..32 * ib + 32];
        let weight = match qw {
            Some(qw) => weights::<32>(xb, &qw[32 * ib..32 * ib + 32], sigma2),
            None => std::array::from_fn(|j| xb[j] * xb[j]),
        };
        let (amax, max) = signed_absmax(xb);
        if amax < GROUP_MAX_EPS {
            scales[ib] = 0.0;
            continue;
        }
        // The first pass's levels are recomputed below whenever ntry > 0, so only its sums count.
        let mut d = -max / v0;
        let mut id = 1.0 / d;
        let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
        for j in 0..32 {
            let q = KVALUES_IQ4NL[best_index_iq4nl(id * xb[j]) as usize] as f32;
            let w = weight[j];
            sumqx += w * q * xb[j];
            sumq2 += w * q * q;
        }
        d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
        let mut best = d * sumqx;
        for itry in -NTRY..=NTRY {
            id = (itry + KVALUES_IQ4NL[0] as i32) as f32 / max;
            sumqx = 0.0;
            sumq2 = 0.0;
            for j in 0..32 {
                let q = KVALUES_IQ4NL[best_index_iq4nl(id * xb[j]) as usize] as f32;
                let w = weight[j];
                sumqx += w * q * xb[j];
                sumq2 += w * q * q;
            }
            if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
                d = sumqx / sumq2;
                best = d * sumqx;
            }
        }
        scales[ib] = d;
        if d.abs() > amax_scale {
            amax_scale = d.abs();
            max_scale = d;
        }
    }
    if SB / 32 > 1 {
        *scales_h = 0;
        let d = -max_scale / 32.0;
        *dh = f16::from_f32(d);
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for ib in 0..SB / 32 {
            let li = nearest_int(id * scales[ib]).clamp(-32, 31);
            let dl = d * li as f32;
            let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
            for j in 0..32 {
                l[32 * ib + j] = best_index_iq4nl(idl * x[32 * ib + j]);
            }
            let li = (li + 32) as u8;
            if ib % 2 == 0 {
                scales_l[ib / 2] = li & 0xF;
            } else {
                scales_l[ib / 2] |= (li & 0xF) << 4;
            }
            *scales_h |= ((li >> 4) as u16) << (2 * (ib % 8));
        }
    } else {
        *dh = f16::from_f32(scales[0]);
        let id = if scales[0] != 0.0 {
            1.0 / scales[0]
        } else {
            0.0
        };
        for j in 0..SB {
            l[j] = best_index_iq4nl(id * x[j]);
        }
    }
    for i in 0..SB / 32 {
        for j in 0..16 {
            q4[16 * i + j] = l[32 * i + j] | (l[32 * i + 16 + j] << 4);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_arguments_are_errors_not_panics() {
        let x = [0.5f32; 256];
        let mut out = vec![0u8; DType::Q4_K.bytes_for(256).unwrap()];
        // Importance weights of the wrong length.
        assert!(quantize_rows(DType::Q4_K, &x, &mut out, 256, Some(&[1.0; 255])).is_err());
        // A row length the type cannot take (Q4_K needs multiples of 256).
        let mut out2 = vec![0u8; DType::Q4_0.bytes_for(256).unwrap()];
        assert!(quantize_rows(DType::Q4_K, &x, &mut out2, 128, None).is_err());
        // Not whole rows; wrong output size.
        assert!(quantize_rows(DType::Q4_K, &x[..200], &mut out, 256, None).is_err());
        assert!(quantize_rows(DType::Q4_K, &x, &mut out[1..], 256, None).is_err());
        // Types that cannot be made.
        // IQ2 without an importance matrix (ggml asserts on it).
        let mut out3 = vec![0u8; DType::IQ2_XXS.bytes_for(256).unwrap()];
        assert!(quantize_rows(DType::IQ2_XXS, &x, &mut out3, 256, None).is_err());
        for dt in [DType::Q8_K, DType::I32] {
            assert!(matches!(
                quantize_rows(dt, &x, &mut out, 256, None),
                Err(Error::Unsupported(_))
            ));
        }
    }

    #[test]
    fn non_finite_values_do_not_panic() {
        let mut x: Vec<f32> = (0..512)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01)
            .collect();
        x[3] = f32::NAN;
        x[40] = f32::INFINITY;
        x[300] = f32::NEG_INFINITY;
        x[301] = 1e38;
        let w: Vec<f32> = (0..256).map(|i| (i % 7) as f32).collect();
        for dt in [
            DType::Q4_0,
            DType::Q4_1,
            DType::Q5_0,
            DType::Q5_1,
            DType::Q8_0,
            DType::Q2_K,
            DType::Q3_K,
            DType::Q4_K,
            DType::Q5_K,
            DType::Q6_K,
            DType::IQ4_NL,
            DType::IQ4_XS,
        ] {
            let mut out = vec![0u8; dt.bytes_for(x.len()).unwrap()];
            for qw in [None, Some(w.as_slice())] {
                quantize_rows(dt, &x, &mut out, 256, qw).unwrap();
            }
        }
        let mut bad = w.clone();
        bad[5] = f32::NAN;
        let mut out = vec![0u8; DType::Q4_K.bytes_for(512).unwrap()];
        assert!(quantize_rows(DType::Q4_K, &x, &mut out, 256, Some(&bad)).is_err());
    }

    #[test]
    fn imatrix_requirements_follow_llama_quant() {
        assert!(needs_imatrix(DType::IQ2_XXS) && needs_imatrix(DType::IQ1_M));
        assert!(!needs_imatrix(DType::Q2_K) && !needs_imatrix(DType::IQ4_XS));
    }

    #[test]
    fn best_index_picks_the_nearest_level() {
        for (i, &v) in KVALUES_IQ4NL.iter().enumerate() {
            assert_eq!(best_index_iq4nl(v as f32) as usize, i);
        }
        assert_eq!(best_index_iq4nl(-1000.0), 0);
        assert_eq!(best_index_iq4nl(1000.0), 15);
        // Halfway between -10 and 1 goes up, as in ggml.
        assert_eq!(best_index_iq4nl(-4.5), 8);
        assert_eq!(best_index_iq4nl(-4.6), 7);
    }
}
