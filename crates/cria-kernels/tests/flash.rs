//! Attention over an F16 KV cache (the blocked online-softmax kernel): the AVX2+F16C tile
//! against its scalar twin, and both against the f32 reference on the f16-rounded K/V.
//!
//! Tolerance, and why: outputs are convex combinations of V rows, so errors are measured
//! against max|v|. The kernels and the reference differ only in rounding: exp8 vs libm expf
//! (<= 2 ulp), dot products and sums of up to FLASH_KEYS terms per block summed in other orders
//! (relative error ~ sqrt(n) * 2^-24 typical, n * 2^-24 worst: ~4e-6 for the 250 keys here), the
//! online rescaling by e^(m_old - m_new) (one more rounding per block) and 1/l times instead of
//! division. 1e-5 * max|v| covers these with margin; a real bug (a wrong mask, a missed block,
//! a bad rescale) moves outputs by a sizeable fraction of max|v|.

mod common;

use common::{all_isas_or_skip, isas_or_skip, Rng};
use cria_kernels::{reference, AttnShape, Backend, CpuBackend, Isa, KvSlice};
use half::f16;

struct Case {
    q: Vec<f32>,
    k: Vec<u16>,
    v: Vec<u16>,
    s: AttnShape,
}

impl Case {
    fn new(
        rng: &mut Rng,
        nh: usize,
        nkv: usize,
        hd: usize,
        t: usize,
        pos0: usize,
        window: Option<usize>,
        qscale: f32,
    ) -> Self {
        let s = common::attn_shape((nh, nkv, hd), t, pos0, window);
        let n = (pos0 + t) * nkv * hd;
        let q = (0..t * nh * hd).map(|_| rng.normal(qscale)).collect();
        let mut h = |_| f16::from_f32(rng.normal(1.0)).to_bits();
        let k = (0..n).map(&mut h).collect();
        let v = (0..n).map(&mut h).collect();
        Case { q, k, v, s }
    }
    fn run(&self, b: &CpuBackend) -> Vec<f32> {
        let mut o = vec![f32::NAN; self.q.len()];
        b.attention(
            &mut o,
            &self.q,
            KvSlice::F16(&self.k),
            KvSlice::F16(&self.v),
            &self.s,
        );
        o
    }
    fn vmax(&self) -> f32 {
        self.v
            .iter()
            .fold(0f32, |m, &x| m.max(f16::from_bits(x).to_f32().abs()))
    }
}

/// The awkward shapes: head_dim 64/48/24/16 (24: a half-width tail in the SIMD tile); t 1, 2, 5,
/// 7, 33 (every remainder of the SIMD tile's 6-row register tiles) and one long prompt crossing several
/// tiles and key blocks; pos0 0 and > 0; GQA ratios 1, 3, 4; with and without a window.
fn cases() -> Vec<Case> {
    let mut rng = Rng::new(31);
    let mut v = Vec::new();
    for &hd in &[64, 48, 24, 16] {
        for &(nh, nkv) in &[(4, 4), (9, 3), (8, 2)] {
            for &t in &[1, 2, 5, 7, 33] {
                for &pos0 in &[0, 70] {
                    for &window in &[None, Some(5), Some(80)] {
                        v.push(Case::new(&mut rng, nh, nkv, hd, t, pos0, window, 1.0));
                    }
                }
            }
        }
    }
    // Peaky softmax (scores ~ N(0, 16)): the running max changes often, rescaling matters.
    v.push(Case::new(&mut rng, 9, 3, 64, 100, 150, None, 4.0));
    v.push(Case::new(&mut rng, 8, 2, 64, 1, 250, None, 4.0));
    v.push(Case::new(&mut rng, 8, 2, 128, 130, 0, Some(90), 1.0));
    // head_dim 80: the AVX-512 tile's outputs in a 64-wide and a 16-wide pass.
    v.push(Case::new(&mut rng, 8, 2, 80, 37, 60, None, 1.0));
    v
}

#[test]
fn f16_reference_is_the_f32_reference_on_rounded_values() {
    let mut rng = Rng::new(30);
    let c = Case::new(&mut rng, 9, 3, 16, 5, 20, Some(9), 1.0);
    let widen = |x: &[u16]| {
        x.iter()
            .map(|&h| f16::from_bits(h).to_f32())
            .collect::<Vec<_>>()
    };
    let (kf, vf) = (widen(&c.k), widen(&c.v));
    let (mut a, mut b) = (vec![0f32; c.q.len()], vec![0f32; c.q.len()]);
    reference::attention(&mut a, &c.q, KvSlice::F16(&c.k), KvSlice::F16(&c.v), &c.s);
    reference::attention(&mut b, &c.q, KvSlice::F32(&kf), KvSlice::F32(&vf), &c.s);
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
}

#[test]
fn flash_kernels_match_the_reference_on_f16_rounded_kv() {
    let backends: Vec<CpuBackend> = all_isas_or_skip("flash attention vs the reference")
        .into_iter()
        .flat_map(|i| [CpuBackend::with_isa(1, i), CpuBackend::with_isa(3, i)])
        .collect();
    let mut worst_seen = 0f32;
    for c in cases() {
        let mut r = vec![0f32; c.q.len()];
        reference::attention(&mut r, &c.q, KvSlice::F16(&c.k), KvSlice::F16(&c.v), &c.s);
        let tol = 1e-5 * c.vmax();
        for b in &backends {
            let o = c.run(b);
            let w = common::worst_diff(&o, &r);
            worst_seen = worst_seen.max(w / c.vmax());
            assert!(w <= tol, "{}: {:?}: max |diff| {w} > {tol}", b.name(), c.s);
        }
    }
    eprintln!("worst |diff| / max|v| = {worst_seen:e}");
}

#[test]
fn simd_flash_tile_matches_its_scalar_twin() {
    let twin = CpuBackend::with_isa(2, Isa::Scalar);
    for isa in isas_or_skip(&[Isa::Avx2, Isa::Avx512], "SIMD flash tile vs scalar twin") {
        let simd = CpuBackend::with_isa(2, isa);
        let mut worst_seen = 0f32;
        for c in cases() {
            let (a, b) = (c.run(&simd), c.run(&twin));
            let w = common::worst_diff(&a, &b);
            worst_seen = worst_seen.max(w / c.vmax());
            assert!(
                w <= 1e-5 * c.vmax(),
                "{isa} {:?}: SIMD vs scalar twin max |diff| {w}",
                c.s
            );
        }
        eprintln!("{isa}: worst |diff| / max|v| = {worst_seen:e}");
    }
}

#[test]
fn flash_attention_is_bitwise_independent_of_threads() {
    let mut rng = Rng::new(32);
    let c = Case::new(&mut rng, 9, 3, 64, 70, 100, None, 1.0);
    for isa in all_isas_or_skip("flash attention across threads") {
        let one = c.run(&CpuBackend::with_isa(1, isa));
        for th in [2, 4] {
            let o = c.run(&CpuBackend::with_isa(th, isa));
            assert!(
                o.iter().zip(&one).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{isa}: depends on threads"
            );
        }
    }
}

#[test]
#[should_panic(expected = "K cache is f16 but V cache is f32")]
fn mixed_kv_types_are_refused() {
    let s = AttnShape {
        n_heads: 1,
        n_kv_heads: 1,
        head_dim: 8,
        t: 1,
        pos0: 0,
        window: None,
        scale: 1.0,
    };
    let mut o = [0f32; 8];
    CpuBackend::with_isa(1, Isa::Scalar).attention(
        &mut o,
        &[0.0; 8],
        KvSlice::F16(&[0; 8]),
        KvSlice::F32(&[0.0; 8]),
        &s,
    );
}
