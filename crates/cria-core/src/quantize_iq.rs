//! Quantizers for the lattice IQ types (ports of ggml-quants.c's `quantize_row_iq*_impl`), byte
//! for byte what `ggml_quantize_chunk` writes with or without an importance matrix.
//!
//! Each type searches, per group of 4 (IQ3) values, the nearest point of a grid of allowed
//! magnitude patterns. ggml keeps three tables per grid, built once (`iq3xs_init_impl`): the grid
//! itself as odd levels `2l+1`, a map from every packed level pattern to its grid index (or to
//! its list of nearest grid points when it is not on the grid) and those neighbour lists, made by
//! sorting all grid points by squared distance. Here the tables are built at first use behind a
//! [`OnceLock`] (thread-safe, shared by all rows) from the grids of [`crate::quant_iq`], so no
//! second copy of ggml's data lives in cria. ggml's sort comparator orders by (distance, index), a
//! total order, so its unstable `qsort` has no ties to reorder and a plain sort reproduces it.
//!
//! Exactness: f32 operations in ggml's order, no fused multiply-adds (see [`crate::quantize`]).
//! The functions are pure apart from the shared read-only tables.

// The quantizers keep ggml's index loops so they can be read side by side with ggml-quants.c.
#![allow(clippy::needless_range_loop)]

use crate::quant::nearest_int;
use crate::quant::GROUP_MAX_EPS;
use crate::quant_iq::{
    IQ1S_DELTA, IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID,
};
use crate::quantize::{c_max, make_qp_quants, sum_sq};
use half::f16;
use std::sync::OnceLock;

const QK_K: usize = 256;

/// The levels (0..nlev) of every entry of a grid given as little-endian magnitude bytes: ggml's
/// `kgrid_*` tables, recovered from the dequantization grid (whose magnitudes are an increasing
/// function of the level).
fn grid_levels<const N: usize>(entries: impl Iterator<Item = [u8; N]> + Clone) -> Vec<[u8; N]> {
    let mut vals: Vec<u8> = entries.clone().flatten().collect();
    vals.sort_unstable();
    vals.dedup();
    entries
        .map(|e| e.map(|v| vals.binary_search(&v).unwrap() as u8))
        .collect()
}

// ------------------------------------------------------------------------------------------------
// The grid tables (iq3xs_init_impl)
// ------------------------------------------------------------------------------------------------

/// One grid with ggml's lookup tables: `grid[j]` the odd levels `2l+1` of point j; `map[u]` for a
/// packed pattern `u` (BITS bits per level) is the grid index when `u` is on the grid, else
/// `-(offset + 1)` with `neighbours[offset]` the count and the next entries the nearest points.
struct Grid<const N: usize> {
    grid: Vec<[i8; N]>,
    map: Vec<i32>,
    neighbours: Vec<u16>,
}

impl<const N: usize> Grid<N> {
    /// Builds the tables for `levels` (the level pattern of each grid point), `bits` bits per
    /// level in the packed index, and neighbour lists covering the `nwant` smallest distances.
    /// Only patterns whose levels are all at most `max_level` get a neighbour list: the
    /// quantizers clamp to that level, so no other pattern is ever looked up (ggml builds lists
    /// for every index below its map size too; the lists it uses are the same).
    fn build(levels: &[[u8; N]], bits: u32, nwant: usize, max_level: usize) -> Self {
        let map_size = 1usize << (bits as usize * N);
        let grid: Vec<[i8; N]> = levels.iter().map(|l| l.map(|v| 2 * v as i8 + 1)).collect();
        let mut map = vec![-1i32; map_size];
        for (i, l) in levels.iter().enumerate() {
            let mut u = 0usize;
            for (k, &v) in l.iter().enumerate() {
                u |= (v as usize) << (bits as usize * k);
            }
            map[u] = i as i32;
        }
        let mask = (1usize << bits) - 1;
        let mut neighbours = Vec::new();
        let mut dist2: Vec<(i32, u16)> = Vec::with_capacity(grid.len());
        for i in 0..map_size {
            if map[i] >= 0 || (0..N).any(|k| (i >> (bits as usize * k)) & mask > max_level) {
                continue;
            }
            let pos: [i32; N] =
                std::array::from_fn(|k| 2 * ((i >> (bits as usize * k)) & mask) as i32 + 1);
            dist2.clear();
            for (j, pg) in grid.iter().enumerate() {
                let mut d2 = 0i32;
                for k in 0..N {
                    let d = pg[k] as i32 - pos[k];
                    d2 += d * d;
                }
                dist2.push((d2, j as u16));
            }
            // ggml's comparator: by distance, then by index (a total order).
            dist2.sort_unstable();
            let start = neighbours.len();
            map[i] = -(start as i32 + 1);
            neighbours.push(0);
            let (mut d2, mut nhave) = (dist2[0].0, 1);
            for &(d, j) in &dist2 {
                if d > d2 {
                    if nhave == nwant {
                        break;
                    }
                    d2 = d;
                    nhave += 1;
                }
                neighbours.push(j);
            }
            neighbours[start] = (neighbours.len() - start - 1) as u16;
        }
        Grid {
            grid,
            map,
            neighbours,
        }
    }

    /// The neighbour list (without its count) of an off-grid pattern (`map[u] < 0`).
    #[inline]
    fn neighbours_of(&self, m: i32) -> &[u16] {
        let o = (-m - 1) as usize;
        let n = self.neighbours[o] as usize;
        &self.neighbours[o + 1..o + 1 + n]
    }

    /// ggml `iq{2,3}_find_best_neighbour`: the neighbour minimising the weighted squared error of
    /// `scale * grid` against `xval` (the first one on ties); writes its levels into `l`.
    fn best_neighbour(
        &self,
        m: i32,
        xval: &[f32],
        weight: &[f32],
        scale: f32,
        l: &mut [i8],
    ) -> usize {
        let mut best_d2 = f32::MAX;
        let nb = self.neighbours_of(m);
        let mut grid_index = nb[0] as usize;
        for &j in nb {
            let pg = &self.grid[j as usize];
            let mut d2 = 0.0f32;
            for i in 0..N {
                let q = pg[i] as f32;
                let diff = scale * q - xval[i];
                d2 += weight[i] * diff * diff;
            }
            if d2 < best_d2 {
                best_d2 = d2;
                grid_index = j as usize;
            }
        }
        let pg = &self.grid[grid_index];
        for i in 0..N {
            l[i] = (pg[i] - 1) / 2;
        }
        grid_index
    }
}

fn iq3_grid(size: usize) -> &'static Grid<4> {
    static G256: OnceLock<Grid<4>> = OnceLock::new();
    static G512: OnceLock<Grid<4>> = OnceLock::new();
    let levels = |g: &[u32]| grid_levels(g.iter().map(|g| g.to_le_bytes()));
    if size == 256 {
        G256.get_or_init(|| Grid::build(&levels(&IQ3XXS_GRID), 3, 2, 7))
    } else {
        G512.get_or_init(|| Grid::build(&levels(&IQ3S_GRID), 3, 3, 7))
    }
}

// ------------------------------------------------------------------------------------------------
// IQ3_XXS / IQ3_S (quantize_row_iq3_xxs_impl, quantize_row_iq3_s_impl)
// ------------------------------------------------------------------------------------------------

/// The result for one group of 32 values.
struct Iq3Group {
    scale: f32,
    /// Grid index of each 4-value quad.
    index: [u16; 8],
    /// Sign bits per 8 values (IQ3_XXS: 7 bits, parity made even).
    signs: [u8; 4],
}

/// What every IQ group search starts from: the weights (`qw[i] * sqrt(sigma2 + x^2)`, or
/// `none(x)` without an importance matrix), their square roots, `xval = |x|` with the sign bits
/// (see [`abs_signs`]) and the largest `xval`.
struct Prep<const N: usize, const S: usize> {
    weight: [f32; N],
    waux: [f32; N],
    xval: [f32; N],
    signs: [u8; S],
    max: f32,
}

fn prep<const N: usize, const S: usize>(
    xb: &[f32],
    qw: Option<&[f32]>,
    sigma2: f32,
    none: impl Fn(f32) -> f32,
    even: bool,
) -> Prep<N, S> {
    let weight: [f32; N] = std::array::from_fn(|i| match qw {
        Some(qw) => qw[i] * (sigma2 + xb[i] * xb[i]).sqrt(),
        None => none(xb[i]),
    });
    let waux = weight.map(f32::sqrt);
    let mut xval = [0f32; N];
    let signs = abs_signs(xb, &weight, &mut xval, even);
    let mut max = xval[0];
    for i in 1..N {
        max = c_max(max, xval[i]);
    }
    Prep {
        weight,
        waux,
        xval,
        signs,
        max,
    }
}

/// `xval = |xb|` and the sign bits of each 8 values. With `even` (ggml's IQ2 / IQ3_XXS), an odd
/// number of negatives is made even by flipping the least important value (smallest `w*x*x`,
/// the first on ties), whose `xval` becomes negative, and only 7 bits are kept.
fn abs_signs<const S: usize>(xb: &[f32], weight: &[f32], xval: &mut [f32], even: bool) -> [u8; S] {
    let mut signs = [0u8; S];
    for k in 0..S {
        let mut nflip = 0;
        let mut s = 0u8;
        for i in 0..8 {
            let v = xb[8 * k + i];
            if v >= 0.0 {
                xval[8 * k + i] = v;
            } else {
                xval[8 * k + i] = -v;
                nflip += 1;
                s |= 1 << i;
            }
        }
        if even && nflip % 2 != 0 {
            let mut imin = 0;
            let mut min = weight[8 * k] * xb[8 * k] * xb[8 * k];
            for i in 1..8 {
                let ax = weight[8 * k + i] * xb[8 * k + i] * xb[8 * k + i];
                if ax < min {
                    min = ax;
                    imin = i;
                }
            }
            xval[8 * k + imin] = -xval[8 * k + imin];
            s ^= 1 << imin;
        }
        signs[k] = if even { s & 127 } else { s };
    }
    signs
}

/// `sum w*x*q` and `sum w*q*q` with `q = 2l+1`, in ggml's order.
#[inline]
fn sums_odd(weight: &[f32], xval: &[f32], l: &[i8]) -> (f32, f32) {
    let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
    for i in 0..weight.len() {
        let w = weight[i];
        let q = (2 * l[i] as i32 + 1) as f32;
        sumqx += w * xval[i] * q;
        sumq2 += w * q * q;
    }
    (sumqx, sumq2)
}

/// One group of 32 of `quantize_row_iq3_{xxs,s}_impl`; `None` when ggml skips it (scale 0).
/// `xxs` selects IQ3_XXS's differences: even sign parity, ntry 15, a threshold of 1e-8 on the
/// group maximum, quads already on the grid kept in the final pass.
fn iq3_group(
    g: &Grid<4>,
    xb: &[f32],
    qw: Option<&[f32]>,
    sigma2: f32,
    xxs: bool,
) -> Option<Iq3Group> {
    const KMAXQ: i32 = 8;
    let Prep {
        weight,
        waux,
        xval,
        mut signs,
        max,
    } = prep::<32, 4>(xb, qw, sigma2, |x| x * x, xxs);
    let skip = if xxs { max < 1e-8 } else { max == 0.0 };
    if skip {
        return None;
    }
    let mut l = [0i8; 32];
    let mut laux = [0i8; 32];
    let mut best = 0.0f32;
    let mut scale = max / (2 * KMAXQ - 1) as f32;
    let mut on_grid = [xxs; 8];
    let mut on_grid_aux = [true; 8];
    let ntry = if xxs { 15 } else { 9 };
    for is in -ntry..=ntry {
        let id = ((2 * KMAXQ - 1) as f32 + is as f32 * 0.2) / max;
        let this_scale = 1.0 / id;
        for k in 0..8 {
            let mut u = 0usize;
            for i in 0..4 {
                let li = nearest_int(0.5 * (id * xval[4 * k + i] - 1.0)).clamp(0, KMAXQ - 1);
                laux[4 * k + i] = li as i8;
                u |= (li as usize) << (3 * i);
            }
            let m = g.map[u];
            on_grid_aux[k] = m >= 0;
            if m < 0 {
                let r = 4 * k..4 * k + 4;
                g.best_neighbour(
                    m,
                    &xval[r.clone()],
                    &waux[r.clone()],
                    this_scale,
                    &mut laux[r],
                );
            }
        }
        let (sumqx, sumq2) = sums_odd(&weight, &xval, &laux);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            scale = sumqx / sumq2;
            best = scale * sumqx;
            l = laux;
            on_grid = on_grid_aux;
        }
    }
    if on_grid.iter().any(|&o| !o) && scale > 0.0 {
        let id = 1.0 / scale;
        for k in 0..8 {
            if xxs && on_grid[k] {
                continue;
            }
            let mut u = 0usize;
            for i in 0..4 {
                let li = nearest_int(0.5 * (id * xval[4 * k + i] - 1.0)).clamp(0, KMAXQ - 1);
                u |= (li as usize) << (3 * i);
            }
            let r = 4 * k..4 * k + 4;
            let m = g.map[u];
            let gi = if m >= 0 {
                m as usize
            } else {
                g.best_neighbour(
                    m,
                    &xval[r.clone()],
                    &waux[r.clone()],
                    scale,
                    &mut l[r.clone()],
                )
            };
            for (o, &p) in l[r].iter_mut().zip(&g.grid[gi]) {
                *o = (p - 1) / 2;
            }
        }
        let (sumqx, sumq2) = sums_odd(&weight, &xval, &l);
        if sumq2 > 0.0 {
            scale = sumqx / sumq2;
        }
    }
    if scale < 0.0 {
        // ggml: "should never happen": make the scale positive and flip the signs.
        scale = -scale;
        for s in &mut signs {
            *s = if xxs { !*s & 127 } else { !*s };
        }
    }
    let mut index = [0u16; 8];
    for k in 0..8 {
        let mut u = 0usize;
        for i in 0..4 {
            u |= (l[4 * k + i] as usize) << (3 * i);
        }
        // Every pattern in `l` came from the grid, so `map[u] >= 0` (ggml aborts otherwise).
        index[k] = g.map[u].max(0) as u16;
    }
    Some(Iq3Group {
        scale,
        index,
        signs,
    })
}

/// `quantize_row_iq3_xxs_impl(256, ...)` over one row: `y` holds the row's 98-byte blocks.
pub(crate) fn iq3_xxs_row(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    let g = iq3_grid(256);
    for (ibl, yb) in y.chunks_exact_mut(98).enumerate() {
        yb.fill(0);
        let xbl = &x[QK_K * ibl..QK_K * (ibl + 1)];
        let sigma2 = 2.0 * sum_sq(xbl) / QK_K as f32;
        let mut scales = [0f32; 8];
        let mut sas = [0u32; 8];
        let mut max_scale = 0.0f32;
        for ib in 0..8 {
            let qwb = qw.map(|w| &w[QK_K * ibl + 32 * ib..QK_K * ibl + 32 * ib + 32]);
            let Some(r) = iq3_group(g, &xbl[32 * ib..32 * ib + 32], qwb, sigma2, true) else {
                continue;
            };
            for k in 0..8 {
                yb[2 + 8 * ib + k] = r.index[k] as u8;
            }
            let s = &r.signs;
            sas[ib] = s[0] as u32 | (s[1] as u32) << 7 | (s[2] as u32) << 14 | (s[3] as u32) << 21;
            scales[ib] = r.scale;
            max_scale = c_max(max_scale, r.scale);
        }
        if max_scale == 0.0 {
            yb.fill(0);
            continue;
        }
        let d = max_scale / 31.0;
        yb[..2].copy_from_slice(&f16::from_f32(d * 1.0125).to_le_bytes());
        let id = 1.0 / d;
        for ib in 0..8 {
            let l = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 15);
            sas[ib] |= (l as u32) << 28;
            yb[66 + 4 * ib..70 + 4 * ib].copy_from_slice(&sas[ib].to_le_bytes());
        }
    }
}

/// `quantize_row_iq3_s_impl(32, ...)` over one row: `y` holds the row's 110-byte blocks
/// (d @0, qs[64] @2, qh[8] @66, signs[32] @74, scales[4] @106).
pub(crate) fn iq3_s_row(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    let g = iq3_grid(512);
    for (ibl, yb) in y.chunks_exact_mut(110).enumerate() {
        yb.fill(0);
        let xbl = &x[QK_K * ibl..QK_K * (ibl + 1)];
        let sigma2 = 2.0 * sum_sq(xbl) / QK_K as f32;
        let mut scales = [0f32; 8];
        let mut max_scale = 0.0f32;
        // ggml advances its qs / signs pointers only past groups it does not skip, so a skipped
        // (all-zero) group shifts the following groups' bytes down; qh and scales stay put.
        let (mut qs, mut signs) = (2usize, 74usize);
        for ib in 0..8 {
            let qwb = qw.map(|w| &w[QK_K * ibl + 32 * ib..QK_K * ibl + 32 * ib + 32]);
            let Some(r) = iq3_group(g, &xbl[32 * ib..32 * ib + 32], qwb, sigma2, false) else {
                continue;
            };
            for k in 0..8 {
                let gi = r.index[k] as usize;
                yb[qs + k] = gi as u8;
                yb[66 + ib] |= ((gi >> 8) << k) as u8;
            }
            qs += 8;
            yb[signs..signs + 4].copy_from_slice(&r.signs);
            signs += 4;
            scales[ib] = r.scale;
            max_scale = c_max(max_scale, r.scale);
        }
        if max_scale == 0.0 {
            continue;
        }
        let d = max_scale / 31.0;
        yb[..2].copy_from_slice(&f16::from_f32(d * 1.033).to_le_bytes());
        let id = 1.0 / d;
        for ib in (0..8).step_by(2) {
            let l1 = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 15);
            let l2 = nearest_int(0.5 * (id * scales[ib + 1] - 1.0)).clamp(0, 15);
            yb[106 + ib / 2] = (l1 | l2 << 4) as u8;
        }
    }
}

// ------------------------------------------------------------------------------------------------
// IQ2_XXS / IQ2_XS (quantize_row_iq2_xxs_impl, quantize_row_iq2_xs_impl)
// ------------------------------------------------------------------------------------------------

fn iq2_grid(t: u8) -> &'static Grid<8> {
    static G256: OnceLock<Grid<8>> = OnceLock::new();
    static G512: OnceLock<Grid<8>> = OnceLock::new();
    static G1024: OnceLock<Grid<8>> = OnceLock::new();
    let levels = |g: &[u64]| grid_levels(g.iter().map(|g| g.to_le_bytes()));
    match t {
        0 => G256.get_or_init(|| Grid::build(&levels(&IQ2XXS_GRID), 2, 2, 2)),
        1 => G512.get_or_init(|| Grid::build(&levels(&IQ2XS_GRID), 2, 2, 2)),
        _ => G1024.get_or_init(|| Grid::build(&levels(&IQ2S_GRID), 2, 1, 2)),
    }
}

/// Levels 0..=2 of 8 values for inverse scale `id` (ggml: `nearest_int(0.5f*(id*x-1))`
/// clamped), and their packed 2-bit pattern.
#[inline]
fn levels8(id: f32, xval: &[f32], l: &mut [i8]) -> usize {
    let mut u = 0usize;
    for i in 0..8 {
        let li = nearest_int(0.5 * (id * xval[i] - 1.0)).clamp(0, 2);
        l[i] = li as i8;
        u |= (li as usize) << (2 * i);
    }
    u
}

/// Puts the 8 values `k` of `l` on the grid at `scale` (through the neighbour list when their
/// pattern `u` is off the grid); `true` when they were on it.
#[inline]
fn snap8(
    g: &Grid<8>,
    u: usize,
    k: usize,
    xval: &[f32],
    waux: &[f32],
    scale: f32,
    l: &mut [i8],
) -> bool {
    let m = g.map[u];
    if m < 0 {
        let r = 8 * k..8 * k + 8;
        g.best_neighbour(m, &xval[r.clone()], &waux[r.clone()], scale, &mut l[r]);
    }
    m >= 0
}

/// The grid index of the 8 values `k` of `l` (on the grid by construction; ggml aborts if not).
#[inline]
fn index8(g: &Grid<8>, l: &[i8], k: usize) -> usize {
    let mut u = 0usize;
    for i in 0..8 {
        u |= (l[8 * k + i] as usize) << (2 * i);
    }
    g.map[u].max(0) as usize
}

/// One group of 32 of `quantize_row_iq2_xxs_impl`: `None` when skipped, else the scale, the 4
/// grid indices and the 4 sign fields.
fn iq2_xxs_group(
    g: &Grid<8>,
    xb: &[f32],
    qw: &[f32],
    sigma2: f32,
) -> Option<(f32, [u8; 4], [u8; 4])> {
    const KMAXQ: i32 = 3;
    let Prep {
        weight,
        waux,
        xval,
        mut signs,
        max,
    } = prep::<32, 4>(xb, Some(qw), sigma2, |x| x * x, true);
    if max < GROUP_MAX_EPS {
        return None;
    }
    let mut lq = [0u8; 32];
    let mut scale = make_qp_quants(KMAXQ + 1, &xval, &mut lq, &weight);
    let mut l: [i8; 32] = lq.map(|v| v as i8);
    let eff_max = scale * KMAXQ as f32;
    if eff_max <= 0.0 {
        return None;
    }
    let mut laux = [0i8; 32];
    let mut best = 0.0f32;
    for is in -6..=6 {
        let id = ((2 * KMAXQ - 1) as f32 + is as f32 * 0.1) / eff_max;
        let this_scale = 1.0 / id;
        for k in 0..4 {
            let u = levels8(id, &xval[8 * k..], &mut laux[8 * k..8 * k + 8]);
            snap8(g, u, k, &xval, &waux, this_scale, &mut laux);
        }
        let (sumqx, sumq2) = sums_odd(&weight, &xval, &laux);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            scale = sumqx / sumq2;
            best = scale * sumqx;
            l = laux;
        }
    }
    if scale > 0.0 {
        let id = 1.0 / scale;
        for k in 0..4 {
            let u = levels8(id, &xval[8 * k..], &mut l[8 * k..8 * k + 8]);
            snap8(g, u, k, &xval, &waux, scale, &mut l);
        }
        let (sumqx, sumq2) = sums_odd(&weight, &xval, &l);
        if sumq2 > 0.0 {
            scale = sumqx / sumq2;
        }
    }
    if scale < 0.0 {
        scale = -scale;
        for s in &mut signs {
            *s = !*s & 127;
        }
    }
    let index = std::array::from_fn(|k| index8(g, &l, k) as u8);
    Some((scale, index, signs))
}

/// `quantize_row_iq2_xxs_impl` over one row: `y` holds the row's 66-byte blocks.
pub(crate) fn iq2_xxs_row(x: &[f32], qw: &[f32], y: &mut [u8]) {
    let g = iq2_grid(0);
    for (ibl, yb) in y.chunks_exact_mut(66).enumerate() {
        yb.fill(0);
        let xbl = &x[QK_K * ibl..QK_K * (ibl + 1)];
        let sigma2 = sum_sq(xbl) / QK_K as f32;
        let mut scales = [0f32; 8];
        let mut q2 = [0u32; 16];
        let mut max_scale = 0.0f32;
        for ib in 0..8 {
            let o = QK_K * ibl + 32 * ib;
            let Some((scale, index, signs)) =
                iq2_xxs_group(g, &xbl[32 * ib..32 * ib + 32], &qw[o..o + 32], sigma2)
            else {
                continue;
            };
            for k in 0..4 {
                q2[2 * ib] |= (index[k] as u32) << (8 * k);
                q2[2 * ib + 1] |= (signs[k] as u32) << (7 * k);
            }
            scales[ib] = scale;
            max_scale = c_max(max_scale, scale);
        }
        if max_scale == 0.0 {
            continue;
        }
        let d = max_scale / 31.0;
        yb[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
        let id = 1.0 / d;
        for ib in 0..8 {
            let l = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 15);
            q2[2 * ib + 1] |= (l as u32) << 28;
        }
        for (i, v) in q2.iter().enumerate() {
            yb[2 + 4 * i..6 + 4 * i].copy_from_slice(&v.to_le_bytes());
        }
    }
}

/// One group of 16 of `quantize_row_iq2_xs_impl` (`s` false) or `quantize_row_iq2_s_impl`
/// (`s`: plain 8 sign bits, a 1e-8 threshold, weights `sigma2/4 + x^2` without an imatrix):
/// `None` when skipped, else the scale, the two grid indices and their sign bytes.
fn iq2_16_group(
    g: &Grid<8>,
    xb: &[f32],
    qw: Option<&[f32]>,
    sigma2: f32,
    s: bool,
) -> Option<(f32, [u16; 2], [u8; 2])> {
    const KMAXQ: i32 = 3;
    let Prep {
        weight,
        waux,
        xval,
        mut signs,
        max,
    } = prep::<16, 2>(xb, qw, sigma2, |x| 0.25 * sigma2 + x * x, !s);
    if max < if s { 1e-8 } else { GROUP_MAX_EPS } {
        return None;
    }
    let mut l = [0i8; 16];
    let mut laux = [0i8; 16];
    let mut best = 0.0f32;
    let mut scale = max / (2 * KMAXQ - 1) as f32;
    let mut on_grid = [true; 2];
    let mut on_grid_aux = [true; 2];
    for is in -9..=9 {
        let id = ((2 * KMAXQ - 1) as f32 + is as f32 * 0.1) / max;
        let this_scale = 1.0 / id;
        for k in 0..2 {
            let u = levels8(id, &xval[8 * k..], &mut laux[8 * k..8 * k + 8]);
            on_grid_aux[k] = snap8(g, u, k, &xval, &waux, this_scale, &mut laux);
        }
        let (sumqx, sumq2) = sums_odd(&weight, &xval, &laux);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            scale = sumqx / sumq2;
            best = scale * sumqx;
            l = laux;
            on_grid = on_grid_aux;
        }
    }
    if on_grid.iter().any(|&o| !o) && scale > 0.0 {
        let id = 1.0 / scale;
        for k in 0..2 {
            if on_grid[k] {
                continue;
            }
            let u = levels8(id, &xval[8 * k..], &mut l[8 * k..8 * k + 8]);
            snap8(g, u, k, &xval, &waux, scale, &mut l);
        }
        let (sumqx, sumq2) = sums_odd(&weight, &xval, &l);
        if sumq2 > 0.0 {
            scale = sumqx / sumq2;
        }
    }
    if scale < 0.0 {
        scale = -scale;
        for b in &mut signs {
            *b = if s { !*b } else { !*b & 127 };
        }
    }
    Some((
        scale,
        std::array::from_fn(|k| index8(g, &l, k) as u16),
        signs,
    ))
}

/// The 16 group scales as 4-bit `l` with `scale ~ d * (2l+1)`, two per byte (low nibble first).
fn pack_scales16(id: f32, scales: &[f32; 16], out: &mut [u8]) {
    for ib in 0..16 {
        let l = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 15) as u8;
        out[ib / 2] |= if ib % 2 == 0 { l } else { l << 4 };
    }
}

/// `quantize_row_iq2_xs_impl` over one row: `y` holds the row's 74-byte blocks (d @0, qs
/// u16[32] @2, scales[8] @66).
pub(crate) fn iq2_xs_row(x: &[f32], qw: &[f32], y: &mut [u8]) {
    let g = iq2_grid(1);
    for (ibl, yb) in y.chunks_exact_mut(74).enumerate() {
        yb.fill(0);
        let xbl = &x[QK_K * ibl..QK_K * (ibl + 1)];
        let sigma2 = sum_sq(xbl) / QK_K as f32;
        let mut scales = [0f32; 16];
        let mut q2 = [0u16; 32];
        let mut max_scale = 0.0f32;
        for ib in 0..16 {
            let o = QK_K * ibl + 16 * ib;
            let Some((scale, index, signs)) = iq2_16_group(
                g,
                &xbl[16 * ib..16 * ib + 16],
                Some(&qw[o..o + 16]),
                sigma2,
                false,
            ) else {
                continue;
            };
            for k in 0..2 {
                q2[2 * ib + k] = index[k] | (signs[k] as u16) << 9;
            }
            scales[ib] = scale;
            max_scale = c_max(max_scale, scale);
        }
        if max_scale == 0.0 {
            continue;
        }
        let d = max_scale / 31.0;
        yb[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
        pack_scales16(1.0 / d, &scales, &mut yb[66..74]);
        for (i, v) in q2.iter().enumerate() {
            yb[2 + 2 * i..4 + 2 * i].copy_from_slice(&v.to_le_bytes());
        }
    }
}

/// `quantize_row_iq2_s_impl` over one row: `y` holds the row's 82-byte blocks (d @0, qs[32]
/// @2 (index low bytes), signs[32] @34, qh[8] @66 (2 index bits each), scales[8] @74).
pub(crate) fn iq2_s_row(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    let g = iq2_grid(2);
    for (ibl, yb) in y.chunks_exact_mut(82).enumerate() {
        yb.fill(0);
        let xbl = &x[QK_K * ibl..QK_K * (ibl + 1)];
        let sigma2 = 2.0 * sum_sq(xbl) / QK_K as f32;
        let mut scales = [0f32; 16];
        let mut max_scale = 0.0f32;
        for ib in 0..16 {
            let o = QK_K * ibl + 16 * ib;
            let qwb = qw.map(|w| &w[o..o + 16]);
            let Some((scale, index, signs)) =
                iq2_16_group(g, &xbl[16 * ib..16 * ib + 16], qwb, sigma2, true)
            else {
                continue;
            };
            for k in 0..2 {
                let i8 = 2 * ib + k;
                let gi = index[k] as usize;
                yb[2 + i8] = gi as u8;
                yb[66 + i8 / 4] |= ((gi >> 8) << (2 * (i8 % 4))) as u8;
                yb[34 + i8] = signs[k];
            }
            scales[ib] = scale;
            max_scale = c_max(max_scale, scale);
        }
        if max_scale == 0.0 {
            continue;
        }
        let d = max_scale / 31.0;
        yb[..2].copy_from_slice(&f16::from_f32(d * 0.9875).to_le_bytes());
        pack_scales16(1.0 / d, &scales, &mut yb[74..82]);
    }
}

// ------------------------------------------------------------------------------------------------
// IQ1_S / IQ1_M (quantize_row_iq1_s_impl, quantize_row_iq1_m_impl)
// ------------------------------------------------------------------------------------------------

/// The IQ1 grid (ggml's kgrid_1bit_2048; levels are the grid's values -1, 0, 1 plus one).
fn iq1_grid() -> &'static Grid<8> {
    static G: OnceLock<Grid<8>> = OnceLock::new();
    G.get_or_init(|| {
        let levels = grid_levels(
            IQ1S_GRID
                .iter()
                .map(|g| g.to_le_bytes().map(|v| (v as i8 + 1) as u8)),
        );
        Grid::build(&levels, 2, 3, 2)
    })
}

/// The values of levels 0, 1, 2 with the shift +delta (`x_p`) or -delta (`x_m`).
const IQ1_XP: [f32; 3] = [-1.0 + IQ1S_DELTA, IQ1S_DELTA, 1.0 + IQ1S_DELTA];
const IQ1_XM: [f32; 3] = [-1.0 - IQ1S_DELTA, -IQ1S_DELTA, 1.0 - IQ1S_DELTA];

impl Grid<8> {
    /// ggml `iq1_find_best_neighbour2`: the neighbour minimising `sum w (scale*xg[level] - x)^2`
    /// (the first one on ties); writes its levels into `l`. ggml falls back to a scan of the
    /// whole grid when every distance is NaN or infinite (reading past its 8 values there), a
    /// case that only non-finite input reaches; here the first neighbour is taken then.
    fn best_neighbour2(
        &self,
        m: i32,
        xval: &[f32],
        weight: &[f32],
        scale: f32,
        xg: &[f32; 3],
        l: &mut [i8],
    ) -> usize {
        let nb = self.neighbours_of(m);
        let mut best = f32::MAX;
        let mut grid_index = nb[0] as usize;
        for &j in nb {
            let pg = &self.grid[j as usize];
            let mut d2 = 0.0f32;
            for i in 0..8 {
                let q = xg[((pg[i] - 1) / 2) as usize];
                let w = weight[i];
                let diff = scale * q - xval[i];
                d2 += w * diff * diff;
            }
            if d2 < best {
                best = d2;
                grid_index = j as usize;
            }
        }
        for (o, &p) in l.iter_mut().zip(&self.grid[grid_index]) {
            *o = (p - 1) / 2;
        }
        grid_index
    }
}

/// The positions of `xb` sorted by value, ties in their original order: ggml's `qsort` of
/// (value, index) pairs with a value-only comparator, which glibc runs as a (stable) merge sort
/// for arrays this small (glibc 2.37-2.38 aside, whose introsort is not stable).
fn sorted_positions<const N: usize>(xb: &[f32]) -> [usize; N] {
    let mut idx: [usize; N] = std::array::from_fn(|j| j);
    idx.sort_by(|&a, &b| {
        let (l, r) = (xb[a], xb[b]);
        if l < r {
            std::cmp::Ordering::Less
        } else if l > r {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    });
    idx
}

/// `max |x|` with ggml's `MAX` / `fabsf`.
fn abs_max(xb: &[f32]) -> f32 {
    let mut max = xb[0].abs();
    for &v in &xb[1..] {
        max = c_max(max, v.abs());
    }
    max
}

/// Levels 0 / 1 / 2 for the sorted positions below `i1`, from `i1` to `i2`, and from `i2`.
fn split_levels<const N: usize>(idx: &[usize; N], i1: usize, i2: usize) -> [i8; N] {
    let mut l = [0i8; N];
    for (j, &i) in idx.iter().enumerate() {
        l[i] = if j < i1 {
            0
        } else if j < i2 {
            1
        } else {
            2
        };
    }
    l
}

/// Puts each 8 values of `l` on the grid (`xx(k)`: the level values of group k) and refits the
/// scale when any was off it, as both IQ1 quantizers do. Returns the grid indices.
fn iq1_snap<const N: usize, const K: usize>(
    g: &Grid<8>,
    xb: &[f32],
    weight: &[f32; N],
    l: &mut [i8; N],
    scale: &mut f32,
    xx: impl Fn(usize) -> &'static [f32; 3],
) -> [u16; K] {
    let mut index = [0u16; K];
    let mut all_on_grid = true;
    for k in 0..K {
        let mut u = 0usize;
        for j in 0..8 {
            u |= (l[8 * k + j] as usize) << (2 * j);
        }
        let m = g.map[u];
        index[k] = if m >= 0 {
            m as u16
        } else {
            all_on_grid = false;
            let r = 8 * k..8 * k + 8;
            g.best_neighbour2(
                m,
                &xb[r.clone()],
                &weight[r.clone()],
                *scale,
                xx(k),
                &mut l[r],
            ) as u16
        };
    }
    if !all_on_grid {
        let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
        for k in 0..K {
            let pg = &g.grid[index[k] as usize];
            for j in 0..8 {
                let w = weight[8 * k + j];
                let q = xx(k)[((pg[j] - 1) / 2) as usize];
                sumqx += w * q * xb[8 * k + j];
                sumq2 += w * q * q;
            }
        }
        if sumqx > 0.0 && sumq2 > 0.0 {
            *scale = sumqx / sumq2;
        }
    }
    index
}

/// One group of 32 of `quantize_row_iq1_s_impl`: `None` when skipped, else the scale, the 4
/// grid indices and the shift (+1: `x_p`, -1: `x_m`).
fn iq1_s_group(g: &Grid<8>, xb: &[f32], qw: &[f32], sigma2: f32) -> Option<(f32, [u16; 4], i8)> {
    const N: usize = 32;
    let weight: [f32; N] = std::array::from_fn(|i| qw[i] * (sigma2 + xb[i] * xb[i]).sqrt());
    let max = abs_max(xb);
    if max < 1e-12 {
        return None;
    }
    let idx = sorted_positions::<N>(xb);
    let mut sumx = [0f32; N + 1];
    let mut sumw = [0f32; N + 1];
    for j in 0..N {
        let i = idx[j];
        sumx[j + 1] = sumx[j] + weight[i] * xb[i];
        sumw[j + 1] = sumw[j] + weight[i];
    }
    let (mut best_score, mut scale) = (-f32::MAX, max);
    let mut best: Option<(usize, usize, i8)> = None;
    for i1 in 0..=N {
        for i2 in i1..=N {
            for (xv, shift) in [(&IQ1_XP, 1i8), (&IQ1_XM, -1)] {
                let sumqx = (sumx[i1] - sumx[0]) * xv[0]
                    + (sumx[i2] - sumx[i1]) * xv[1]
                    + (sumx[N] - sumx[i2]) * xv[2];
                let sumq2 = (sumw[i1] - sumw[0]) * xv[0] * xv[0]
                    + (sumw[i2] - sumw[i1]) * xv[1] * xv[1]
                    + (sumw[N] - sumw[i2]) * xv[2] * xv[2];
                if sumq2 > 0.0 && sumqx * sumqx > best_score * sumq2 {
                    scale = sumqx / sumq2;
                    best_score = scale * sumqx;
                    best = Some((i1, i2, shift));
                }
            }
        }
    }
    let (i1, i2, mut shift) = best?;
    let mut l = split_levels(&idx, i1, i2);
    if scale < 0.0 {
        for v in &mut l {
            *v = 2 - *v;
        }
        scale = -scale;
        shift = -shift;
    }
    let xx: &'static [f32; 3] = if shift == 1 { &IQ1_XP } else { &IQ1_XM };
    let index = iq1_snap::<N, 4>(g, xb, &weight, &mut l, &mut scale, |_| xx);
    Some((scale, index, shift))
}

/// `quantize_row_iq1_s_impl` over one row: `y` holds the row's 50-byte blocks (d @0, qs[32]
/// @2, qh u16[8] @34: 3 index bits per group of 8, the scale << 12, the minus shift << 15).
pub(crate) fn iq1_s_row(x: &[f32], qw: &[f32], y: &mut [u8]) {
    let g = iq1_grid();
    for (ibl, yb) in y.chunks_exact_mut(50).enumerate() {
        yb.fill(0);
        let xbl = &x[QK_K * ibl..QK_K * (ibl + 1)];
        let sigma2 = 2.0 * sum_sq(xbl) / QK_K as f32;
        let mut scales = [0f32; 8];
        let mut shifts = [1i8; 8];
        let mut qh = [0u16; 8];
        let mut max_scale = 0.0f32;
        for ib in 0..8 {
            let o = QK_K * ibl + 32 * ib;
            let Some((scale, index, shift)) =
                iq1_s_group(g, &xbl[32 * ib..32 * ib + 32], &qw[o..o + 32], sigma2)
            else {
                continue;
            };
            for k in 0..4 {
                yb[2 + 4 * ib + k] = index[k] as u8;
                qh[ib] |= (index[k] >> 8) << (3 * k);
            }
            scales[ib] = scale;
            shifts[ib] = shift;
            max_scale = c_max(max_scale, scale);
        }
        if max_scale != 0.0 {
            let d = max_scale / 15.0;
            yb[..2].copy_from_slice(&f16::from_f32(d * 1.125).to_le_bytes());
            let id = 1.0 / d;
            for ib in 0..8 {
                let mut l = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 7) as u16;
                if shifts[ib] == -1 {
                    l |= 8;
                }
                qh[ib] |= l << 12;
            }
        }
        for ib in 0..8 {
            yb[34 + 2 * ib..36 + 2 * ib].copy_from_slice(&qh[ib].to_le_bytes());
        }
    }
}

/// IQ1_M's level values for group `k` (of 2) under shift code `best_k` (bit 1: first group
/// minus, bit 0: second group minus).
fn iq1_m_xx(best_k: usize, k: usize) -> &'static [f32; 3] {
    let minus = if k == 0 { best_k >= 2 } else { best_k % 2 != 0 };
    if minus {
        &IQ1_XM
    } else {
        &IQ1_XP
    }
}

fn iq1_m_weights(xb: &[f32], qw: Option<&[f32]>, sigma2: f32) -> [f32; 16] {
    std::array::from_fn(|i| match qw {
        Some(qw) => qw[i] * (sigma2 + xb[i] * xb[i]).sqrt(),
        None => xb[i] * xb[i],
    })
}

/// One group of 16 of `quantize_row_iq1_m_impl`: `None` when skipped, else the scale, the 2
/// grid indices and the shift code (0..4).
fn iq1_m_group(
    g: &Grid<8>,
    xb: &[f32],
    qw: Option<&[f32]>,
    sigma2: f32,
) -> Option<(f32, [u16; 2], usize)> {
    const N: usize = 16;
    let weight = iq1_m_weights(xb, qw, sigma2);
    let max = abs_max(xb);
    if max < 1e-7 {
        return None;
    }
    let idx = sorted_positions::<N>(xb);
    // Prefix sums per half (each half has its own shift).
    let mut px = [[0f32; N + 1]; 2];
    let mut pw = [[0f32; N + 1]; 2];
    for j in 0..N {
        let i = idx[j];
        let h = usize::from(i >= N / 2);
        px[h][j + 1] = px[h][j] + weight[i] * xb[i];
        px[1 - h][j + 1] = px[1 - h][j];
        pw[h][j + 1] = pw[h][j] + weight[i];
        pw[1 - h][j + 1] = pw[1 - h][j];
    }
    let txs = [px[0][N], px[1][N]];
    let tws = [pw[0][N], pw[1][N]];
    let (p2, m2) = (IQ1_XP[2], IQ1_XM[2]);
    let cp1 = IQ1_XP[0] * IQ1_XP[0] - IQ1_XP[1] * IQ1_XP[1];
    let cp2 = IQ1_XP[1] * IQ1_XP[1] - IQ1_XP[2] * IQ1_XP[2];
    let cm1 = IQ1_XM[0] * IQ1_XM[0] - IQ1_XM[1] * IQ1_XM[1];
    let cm2 = IQ1_XM[1] * IQ1_XM[1] - IQ1_XM[2] * IQ1_XM[2];
    let (mut best_score, mut scale) = (-f32::MAX, max);
    let mut best: Option<(usize, usize, usize)> = None;
    for i1 in 0..=N {
        for i2 in i1..=N {
            let (mut qx_p, mut qx_m, mut q2_p, mut q2_m) =
                ([0f32; 2], [0f32; 2], [0f32; 2], [0f32; 2]);
            for h in 0..2 {
                let sx = px[h][i1] + px[h][i2];
                qx_p[h] = txs[h] * p2 - sx;
                qx_m[h] = txs[h] * m2 - sx;
                q2_p[h] = tws[h] * p2 * p2 + pw[h][i1] * cp1 + pw[h][i2] * cp2;
                q2_m[h] = tws[h] * m2 * m2 + pw[h][i1] * cm1 + pw[h][i2] * cm2;
            }
            let sumqx = [
                qx_p[0] + qx_p[1],
                qx_p[0] + qx_m[1],
                qx_m[0] + qx_p[1],
                qx_m[0] + qx_m[1],
            ];
            let sumq2 = [
                q2_p[0] + q2_p[1],
                q2_p[0] + q2_m[1],
                q2_m[0] + q2_p[1],
                q2_m[0] + q2_m[1],
            ];
            for k in 0..4 {
                if sumq2[k] > 0.0 && sumqx[k] * sumqx[k] > best_score * sumq2[k] {
                    scale = sumqx[k] / sumq2[k];
                    best_score = scale * sumqx[k];
                    best = Some((i1, i2, k));
                }
            }
        }
    }
    let (i1, i2, mut best_k) = best?;
    let mut l = split_levels(&idx, i1, i2);
    if scale < 0.0 {
        for v in &mut l {
            *v = 2 - *v;
        }
        scale = -scale;
        best_k = 3 - best_k;
    }
    let index = iq1_snap::<N, 2>(g, xb, &weight, &mut l, &mut scale, |k| iq1_m_xx(best_k, k));
    Some((scale, index, best_k))
}

/// `quantize_row_iq1_m_impl` over one row: `y` holds the row's 56-byte blocks (qs[32] @0,
/// qh[16] @32: 3 index bits + shift bit per group of 8, scales u16[4] @48: 3-bit group scales
/// and, in the top nibbles, the f16 super-block scale).
pub(crate) fn iq1_m_row(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    const MASKS: [u8; 4] = [0x00, 0x80, 0x08, 0x88];
    let g = iq1_grid();
    for (ibl, yb) in y.chunks_exact_mut(56).enumerate() {
        yb.fill(0);
        let xbl = &x[QK_K * ibl..QK_K * (ibl + 1)];
        let sigma2 = 2.0 * sum_sq(xbl) / QK_K as f32;
        let qwb = |ib: usize| qw.map(|w| &w[QK_K * ibl + 16 * ib..QK_K * ibl + 16 * ib + 16]);
        let mut scales = [0f32; 16];
        let mut shifts = [0usize; 16];
        let mut max_scale = 0.0f32;
        for ib in 0..16 {
            let Some((scale, index, best_k)) =
                iq1_m_group(g, &xbl[16 * ib..16 * ib + 16], qwb(ib), sigma2)
            else {
                continue;
            };
            yb[2 * ib] = index[0] as u8;
            yb[2 * ib + 1] = index[1] as u8;
            yb[32 + ib] = ((index[0] >> 8) | ((index[1] >> 8) << 4)) as u8;
            scales[ib] = scale;
            shifts[ib] = best_k;
            max_scale = c_max(max_scale, scale);
        }
        if max_scale == 0.0 {
            continue;
        }
        let mut sc = [0u16; 4];
        let mut d = max_scale / 15.0;
        let id = 1.0 / d;
        let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
        for ib in 0..16 {
            let l = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 7);
            sc[ib / 4] |= (l as u16) << (3 * (ib % 4));
            yb[32 + ib] |= MASKS[shifts[ib]];
            let xb = &xbl[16 * ib..16 * ib + 16];
            let weight = iq1_m_weights(xb, qwb(ib), sigma2);
            let qh = yb[32 + ib] as usize;
            for k in 0..2 {
                let xx = iq1_m_xx(shifts[ib], k);
                let gi = yb[2 * ib + k] as usize + ((qh << (8 - 4 * k)) & 0x700);
                let pg = &g.grid[gi];
                for j in 0..8 {
                    let w = weight[8 * k + j];
                    let q = xx[((pg[j] - 1) / 2) as usize] * (2 * l + 1) as f32;
                    sumqx += w * q * xb[8 * k + j];
                    sumq2 += w * q * q;
                }
            }
        }
        if sumq2 > 0.0 {
            d = sumqx / sumq2;
        }
        let s = f16::from_f32(d * 1.1125).to_bits();
        sc[0] |= (s & 0x000f) << 12;
        sc[1] |= (s & 0x00f0) << 8;
        sc[2] |= (s & 0x0f00) << 4;
        sc[3] |= s & 0xf000;
        for (i, v) in sc.iter().enumerate() {
            yb[48 + 2 * i..50 + 2 * i].copy_from_slice(&v.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iq3_levels_match_ggml_kgrid() {
        // First and last entries of ggml's kgrid_256 / kgrid_512 (3 bits per level).
        let pack = |l: &[u8; 4]| {
            l.iter()
                .enumerate()
                .map(|(k, &v)| (v as u16) << (3 * k))
                .sum::<u16>()
        };
        let l256 = grid_levels(IQ3XXS_GRID.iter().map(|g| g.to_le_bytes()));
        let l512 = grid_levels(IQ3S_GRID.iter().map(|g| g.to_le_bytes()));
        let k256: Vec<u16> = l256.iter().map(pack).collect();
        let k512: Vec<u16> = l512.iter().map(pack).collect();
        assert_eq!(&k256[..5], &[0, 2, 4, 9, 11]);
        assert_eq!(&k256[251..], &[3873, 3904, 3906, 3924, 3992]);
        assert_eq!(&k512[..5], &[0, 1, 2, 5, 7]);
        assert_eq!(k512[511], 4032);
        assert!(k256.windows(2).all(|w| w[0] < w[1]) && k512.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn iq2_levels_match_ggml_kgrid() {
        // First entries of ggml's kgrid_2bit_256 / kgrid_2bit_512 (2 bits per level).
        let pack = |l: &[u8; 8]| {
            l.iter()
                .enumerate()
                .map(|(k, &v)| (v as u16) << (2 * k))
                .sum::<u16>()
        };
        let k256: Vec<u16> = grid_levels(IQ2XXS_GRID.iter().map(|g| g.to_le_bytes()))
            .iter()
            .map(pack)
            .collect();
        let k512: Vec<u16> = grid_levels(IQ2XS_GRID.iter().map(|g| g.to_le_bytes()))
            .iter()
            .map(pack)
            .collect();
        assert_eq!(&k256[..8], &[0, 2, 5, 8, 10, 17, 20, 32]);
        assert_eq!(&k512[..8], &[0, 2, 5, 8, 10, 17, 20, 22]);
        // kgrid_1bit_2048 (the IQ1 grid's values -1, 0, 1 are levels 0, 1, 2).
        let g = iq1_grid();
        let k1: Vec<u16> = g
            .grid
            .iter()
            .map(|p| {
                p.iter()
                    .enumerate()
                    .map(|(k, &v)| (((v - 1) / 2) as u16) << (2 * k))
                    .sum()
            })
            .collect();
        assert_eq!(&k1[..8], &[0, 2, 5, 8, 10, 17, 21, 32]);
        assert!(k256.windows(2).all(|w| w[0] < w[1]) && k512.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn neighbour_lists_cover_every_off_grid_pattern() {
        for size in [256, 512] {
            let g = iq3_grid(size);
            let mut on = 0;
            for u in 0..4096 {
                let m = g.map[u];
                if m >= 0 {
                    on += 1;
                } else {
                    assert!(!g.neighbours_of(m).is_empty());
                }
            }
            assert_eq!(on, size);
        }
    }
}
