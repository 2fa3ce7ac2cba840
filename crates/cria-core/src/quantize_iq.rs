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
use crate::quant_iq::{IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID};
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
