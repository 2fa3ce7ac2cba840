//! Attention over a Q8_0 or Q4_0 KV cache: a key block dequantized to f32, then the F16 cache's
//! flash tiles. Checked three ways: the reference over quantized blocks reads exactly the
//! dequantized values (bitwise the f32 reference on them); every ISA's kernel and thread count
//! against that reference; each SIMD tile against its scalar twin, on awkward shapes (t 0, 1, 2,
//! 5, 7, 33 (every remainder of the 6-row register tiles), positions not multiples of 32, head_dim
//! 32/64/96/128, GQA 1/3/4, windows).
//!
//! Tolerance: as tests/flash.rs (1e-5 * max|v|): once dequantized, the values are plain f32 and
//! the kernels differ from the reference only in rounding (exp, summation order, online
//! rescaling). A wrong nibble, scale or block offset moves outputs by a sizeable part of max|v|.

mod common;

use common::Rng;
use cria_core::quant::{self, BlockQ4_0, BlockQ8_0};
use cria_kernels::{reference, AttnShape, Backend, CpuBackend, Isa, KvSlice, KvType};

/// K and V in both quantized types, and the values those blocks hold (dequantized).
struct Case {
    q: Vec<f32>,
    k8: Vec<BlockQ8_0>,
    v8: Vec<BlockQ8_0>,
    k4: Vec<BlockQ4_0>,
    v4: Vec<BlockQ4_0>,
    s: AttnShape,
}

impl Case {
    fn new(
        rng: &mut Rng,
        (nh, nkv, hd): (usize, usize, usize),
        t: usize,
        pos0: usize,
        window: Option<usize>,
        qscale: f32,
    ) -> Self {
        let s = common::attn_shape((nh, nkv, hd), t, pos0, window);
        let n = (pos0 + t) * nkv * hd;
        let q = (0..t * nh * hd).map(|_| rng.normal(qscale)).collect();
        let mut rows = || (0..n).map(|_| rng.normal(1.0)).collect::<Vec<f32>>();
        let (k, v) = (rows(), rows());
        let q8 = |x: &[f32]| {
            let mut b = vec![bytemuck::Zeroable::zeroed(); x.len() / 32];
            quant::quantize_row_q8_0_x86(x, &mut b);
            b
        };
        let q4 = |x: &[f32]| {
            let mut b = vec![bytemuck::Zeroable::zeroed(); x.len() / 32];
            quant::quantize_row_q4_0(x, &mut b);
            b
        };
        Case {
            q,
            k8: q8(&k),
            v8: q8(&v),
            k4: q4(&k),
            v4: q4(&v),
            s,
        }
    }
    fn kv(&self, ty: KvType) -> (KvSlice<'_>, KvSlice<'_>) {
        match ty {
            KvType::Q8_0 => (KvSlice::Q8_0(&self.k8), KvSlice::Q8_0(&self.v8)),
            _ => (KvSlice::Q4_0(&self.k4), KvSlice::Q4_0(&self.v4)),
        }
    }
    fn run(&self, b: &CpuBackend, ty: KvType) -> Vec<f32> {
        let mut o = vec![f32::NAN; self.q.len()];
        let (k, v) = self.kv(ty);
        b.attention(&mut o, &self.q, k, v, &self.s);
        o
    }
    fn reference(&self, ty: KvType) -> Vec<f32> {
        let mut o = vec![f32::NAN; self.q.len()];
        let (k, v) = self.kv(ty);
        reference::attention(&mut o, &self.q, k, v, &self.s);
        o
    }
    /// The largest |value| of V: outputs are convex combinations of V rows.
    fn vmax(&self, ty: KvType) -> f32 {
        let v = self.kv(ty).1;
        (0..v.len()).fold(0f32, |m, i| m.max(v.get(i).abs()))
    }
}

const TYPES: [KvType; 2] = [KvType::Q8_0, KvType::Q4_0];

fn cases() -> Vec<Case> {
    let mut rng = Rng::new(41);
    let mut v = Vec::new();
    for hd in [32, 64, 96, 128] {
        for (nh, nkv) in [(4, 4), (9, 3), (8, 2)] {
            for t in [0, 1, 2, 5, 7, 33] {
                for pos0 in [0, 31, 70] {
                    for window in [None, Some(5), Some(80)] {
                        v.push(Case::new(&mut rng, (nh, nkv, hd), t, pos0, window, 1.0));
                    }
                }
            }
        }
    }
    // Peaky softmax (scores ~ N(0, 16)) over several key blocks, and a long window.
    v.push(Case::new(&mut rng, (9, 3, 64), 100, 150, None, 4.0));
    v.push(Case::new(&mut rng, (8, 2, 64), 1, 251, None, 4.0));
    v.push(Case::new(&mut rng, (8, 2, 128), 130, 3, Some(90), 1.0));
    v
}

#[test]
fn quantized_reference_is_the_f32_reference_on_dequantized_values() {
    let mut rng = Rng::new(40);
    let c = Case::new(&mut rng, (9, 3, 64), 5, 27, Some(9), 1.0);
    for ty in TYPES {
        let (k, v) = c.kv(ty);
        // cria-core's dequantizer, ggml's dequantize_row_*: KvSlice must read the same values.
        let deq = |x: KvSlice| {
            let (bytes, dt): (&[u8], _) = match x {
                KvSlice::Q8_0(b) => (bytemuck::cast_slice(b), cria_core::DType::Q8_0),
                KvSlice::Q4_0(b) => (bytemuck::cast_slice(b), cria_core::DType::Q4_0),
                _ => unreachable!(),
            };
            let mut out = vec![0f32; x.len()];
            quant::dequantize(dt, bytes, &mut out).unwrap();
            let mut widened = vec![0f32; x.len()];
            x.widen(0, &mut widened);
            assert!(out
                .iter()
                .zip(&widened)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
            out
        };
        let (kf, vf) = (deq(k), deq(v));
        let mut want = vec![0f32; c.q.len()];
        reference::attention(&mut want, &c.q, KvSlice::F32(&kf), KvSlice::F32(&vf), &c.s);
        let got = c.reference(ty);
        assert!(
            got.iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{ty}"
        );
    }
}

#[test]
fn quantized_flash_kernels_match_the_reference() {
    let backends: Vec<CpuBackend> = Isa::ALL
        .into_iter()
        .filter(|i| i.available())
        .flat_map(|i| [CpuBackend::with_isa(1, i), CpuBackend::with_isa(3, i)])
        .collect();
    for ty in TYPES {
        let mut worst_seen = 0f32;
        for c in cases() {
            let r = c.reference(ty);
            let tol = 1e-5 * c.vmax(ty);
            for b in &backends {
                let w = common::worst_diff(&c.run(b, ty), &r);
                worst_seen = worst_seen.max(w / c.vmax(ty));
                assert!(
                    w <= tol,
                    "{ty} {}: {:?}: max |diff| {w} > {tol}",
                    b.name(),
                    c.s
                );
            }
        }
        eprintln!("{ty}: worst |diff| / max|v| = {worst_seen:e}");
    }
}

#[test]
fn quantized_simd_flash_tile_matches_its_scalar_twin() {
    let twin = CpuBackend::with_isa(2, Isa::Scalar);
    for isa in [Isa::Avx2, Isa::Avx512] {
        if !isa.available() {
            eprintln!("no {isa}: nothing to compare");
            continue;
        }
        let simd = CpuBackend::with_isa(2, isa);
        for ty in TYPES {
            for c in cases() {
                let w = common::worst_diff(&c.run(&simd, ty), &c.run(&twin, ty));
                assert!(
                    w <= 1e-5 * c.vmax(ty),
                    "{isa} {ty} {:?}: SIMD vs twin {w}",
                    c.s
                );
            }
        }
    }
}

#[test]
fn quantized_cache_needs_whole_blocks_per_head() {
    for ty in TYPES {
        let e = ty.check_head_dim(80).unwrap_err();
        assert!(e.contains("multiple of 32") && e.contains("80"), "{e}");
        assert!(ty.check_head_dim(64).is_ok());
    }
    assert!(KvType::F16.check_head_dim(80).is_ok());
    assert_eq!(
        (KvType::Q8_0.row_bytes(64), KvType::Q4_0.row_bytes(64)),
        (68, 36)
    );
    assert_eq!("Q4_0".parse::<KvType>(), Ok(KvType::Q4_0));
    assert!("q5_0".parse::<KvType>().unwrap_err().contains("q8_0"));
}
