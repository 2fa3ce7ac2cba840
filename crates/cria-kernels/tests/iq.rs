//! The IQ grid types' dot kernels (IQ3_XXS, IQ3_S, IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M) on the
//! blocks of cria-core's tests/fixtures/iq_dequant.bin, whose crafted blocks decode every grid
//! entry and sign pattern, with llama.cpp's own dequantization of each block beside them.
//!
//! Each kernel's integer sums are exact, so on every ISA each block's dot must equal the f64 dot
//! of llama.cpp's dequantized weights with the dequantized Q8_K activations, up to f32 rounding
//! (1e-5 of sum |w * a|; the dequantized weights are themselves rounded to f32). Random-byte
//! blocks, multi-row / multi-column calls and the matmul path are covered for these types by
//! kernels.rs, which runs over every type in `dot::SUPPORTED`.

mod common;
#[path = "../../cria-core/tests/iq_common/mod.rs"]
mod iq_common;

use common::*;
use cria_core::quant_iq::IQ_TYPES;
use cria_core::DType;
use cria_kernels::dot;

#[test]
fn iq_dots_equal_the_dequantized_dot_on_every_grid_entry() {
    let mut rng = Rng::new(21);
    let recs = iq_common::iq_records();
    assert_eq!(recs.iter().map(|r| r.0).collect::<Vec<_>>(), IQ_TYPES);
    let mut worst = 0f64;
    for isa in all_isas_or_skip("IQ dots") {
        for (t, raw, want) in &recs {
            let kern = dot::kernel(isa, *t).unwrap_or_else(|| panic!("{t} on {isa}"));
            assert_eq!(kern.vec_dot_type, DType::Q8_K);
            let bs = t.type_size();
            for (b, (x, wf)) in raw.chunks_exact(bs).zip(want.chunks_exact(256)).enumerate() {
                let acts = random_acts(&mut rng, 1, 256);
                let mut a = vec![0u8; 292];
                (kern.from_float)(&acts, &mut a);
                let af = dequant_act(DType::Q8_K, &a, 256);
                let exact: f64 = wf.iter().zip(&af).map(|(&w, &q)| w as f64 * q as f64).sum();
                let scale: f64 = wf
                    .iter()
                    .zip(&af)
                    .map(|(&w, &q)| (w as f64 * q as f64).abs())
                    .sum();
                let mut got = [0f32];
                (kern.vec_dot)(256, x, 1, &a, 292, &mut got);
                let err = (got[0] as f64 - exact).abs();
                assert!(
                    err <= 1e-5 * scale + 1e-30,
                    "{t} on {isa}, block {b}: kernel {} vs exact {exact} (sum |w*a| {scale})",
                    got[0]
                );
                if scale > 0.0 {
                    worst = worst.max(err / scale);
                }
            }
            // The whole run of blocks as one row: the super-block sums add up.
            let n = want.len();
            let acts = random_acts(&mut rng, 1, n);
            let mut a = vec![0u8; n / 256 * 292];
            (kern.from_float)(&acts, &mut a);
            let af = dequant_act(DType::Q8_K, &a, n);
            let exact: f64 = want
                .iter()
                .zip(&af)
                .map(|(&w, &q)| w as f64 * q as f64)
                .sum();
            let scale: f64 = want
                .iter()
                .zip(&af)
                .map(|(&w, &q)| (w as f64 * q as f64).abs())
                .sum();
            let mut got = [0f32];
            (kern.vec_dot)(n, raw, 1, &a, a.len(), &mut got);
            assert!(
                (got[0] as f64 - exact).abs() <= 1e-5 * scale,
                "{t} on {isa}: row of {n}"
            );
        }
    }
    eprintln!("IQ dots vs exact: worst |err| / sum|w*a| = {worst:e}");
}

#[test]
fn iq_simd_dots_equal_the_scalar_twin_bitwise() {
    // The SIMD kernels reduce each block's integer sum exactly and do the f32 part in the scalar
    // order, so every result is the same bits; on awkward sizes (0, 1, 3, 17 blocks), 1..=4
    // columns, several rows, random-byte and crafted blocks.
    let mut rng = Rng::new(22);
    let recs = iq_common::iq_records();
    for isa in all_isas_or_skip("IQ SIMD dots") {
        if isa == cria_kernels::Isa::Scalar {
            continue;
        }
        for (t, raw, _) in &recs {
            let (ks, kv) = (
                dot::kernel(cria_kernels::Isa::Scalar, *t).unwrap(),
                dot::kernel(isa, *t).unwrap(),
            );
            let bs = t.type_size();
            for nb in [0usize, 1, 3, 17] {
                for rows in [1usize, 3] {
                    let w: Vec<u8> = if rows == 1 && nb <= raw.len() / bs {
                        raw[..nb * bs].to_vec()
                    } else {
                        let rw = random_weights(&mut rng, *t, rows, nb * 256);
                        (0..rows).flat_map(|r| rw.row(r).to_vec()).collect()
                    };
                    let n = nb * 256;
                    let cols = kv.max_cols;
                    let x = random_acts(&mut rng, cols, n.max(1));
                    let ab = nb * 292;
                    let mut a = vec![0u8; cols * ab];
                    for c in 0..cols {
                        (ks.from_float)(&x[c * n.max(1)..][..n], &mut a[c * ab..][..ab]);
                    }
                    for c in 1..=cols {
                        let (mut os, mut ov) = (vec![0f32; rows * c], vec![0f32; rows * c]);
                        (ks.vec_dot)(n, &w, rows, &a, ab, &mut os);
                        (kv.vec_dot)(n, &w, rows, &a, ab, &mut ov);
                        for (j, (s, v)) in os.iter().zip(&ov).enumerate() {
                            assert_eq!(s.to_bits(), v.to_bits(), "{t} {isa} nb={nb} rows={rows} cols={c} out {j}: scalar {s} simd {v}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn iq_simd_dots_stay_exact_at_the_largest_sums() {
    // Blocks of all-0xFF bytes (every scale field at its maximum, every sign or delta bit set)
    // beside all-zero and random ones, against activations of +-127 only whose signs follow the
    // weights' (the largest integer sums the kernels can meet), oppose them, are all +, or are
    // random: where a saturating pair sum, or IQ1_S / IQ1_M's folding of the delta term into
    // one integer total (8 * sumi + sumi1), would go wrong, the bits would differ from the
    // scalar twin's.
    let mut rng = Rng::new(23);
    for isa in all_isas_or_skip("IQ SIMD dots at the largest sums") {
        if isa == cria_kernels::Isa::Scalar {
            continue;
        }
        for t in IQ_TYPES {
            let (ks, kv) = (
                dot::kernel(cria_kernels::Isa::Scalar, t).unwrap(),
                dot::kernel(isa, t).unwrap(),
            );
            let (bs, nb) = (t.type_size(), 4);
            let mut w = vec![0xFFu8; nb * bs];
            w[bs..2 * bs].fill(0);
            rng.bytes(&mut w[2 * bs..]);
            // A finite scale d = 1.0 (f16 0x3C00) in each block: IQ1_M keeps it in the top
            // nibbles of its four scale words, the others in bytes 0..2.
            for blk in w.chunks_exact_mut(bs) {
                if t == DType::IQ1_M {
                    for (k, nib) in [0u16, 0, 0xC, 0x3].into_iter().enumerate() {
                        let o = 48 + 2 * k;
                        let v = u16::from_le_bytes([blk[o], blk[o + 1]]) & 0x0FFF | nib << 12;
                        blk[o..o + 2].copy_from_slice(&v.to_le_bytes());
                    }
                } else {
                    blk[..2].copy_from_slice(&0x3C00u16.to_le_bytes());
                }
            }
            let n = nb * 256;
            let mut wf = vec![0f32; n];
            cria_core::quant::dequantize(t, &w, &mut wf).unwrap();
            let follow: Vec<f32> = wf
                .iter()
                .map(|&v| if v < 0.0 { -1.0 } else { 1.0 })
                .collect();
            let cols: [Vec<f32>; 4] = [
                follow.clone(),
                follow.iter().map(|v| -v).collect(),
                vec![1.0; n],
                (0..n)
                    .map(|_| if rng.u64() & 1 == 0 { -1.0 } else { 1.0 })
                    .collect(),
            ];
            let ab = nb * 292;
            let mut a = vec![0u8; 4 * ab];
            for (c, x) in cols.iter().enumerate() {
                (ks.from_float)(x, &mut a[c * ab..][..ab]);
            }
            let q = dequant_act(DType::Q8_K, &a[..ab], n);
            let d = q[0].abs();
            assert!(
                q.iter().all(|v| v.abs() == d),
                "{t}: activations not all +-127"
            );
            for c in 1..=kv.max_cols.min(4) {
                let (mut os, mut ov) = (vec![0f32; c], vec![0f32; c]);
                (ks.vec_dot)(n, &w, 1, &a, ab, &mut os);
                (kv.vec_dot)(n, &w, 1, &a, ab, &mut ov);
                for (j, (s, v)) in os.iter().zip(&ov).enumerate() {
                    assert_eq!(
                        s.to_bits(),
                        v.to_bits(),
                        "{t} {isa} cols={c} out {j}: scalar {s} simd {v}"
                    );
                }
            }
        }
    }
}
