//! The IQ grid dequantizers (cria_core::quant_iq) against llama.cpp's `dequantize_row_iq*`, bit
//! for bit, on the blocks of tests/fixtures/iq_dequant.bin (made by tests/gen_iq_fixtures.py
//! through ctypes on libggml-base): crafted blocks that decode every grid entry and every sign
//! pattern once, then random ones. Both sides do the same f32 operations in the same order.

use cria_core::quant::{can_dequantize, dequantize};
use cria_core::quant_iq::{self, IQ_TYPES};
use cria_core::DType;

mod iq_common;

#[test]
fn iq_dequantizers_match_llama_cpp_bit_for_bit() {
    let recs = iq_common::iq_records();
    let types: Vec<DType> = recs.iter().map(|r| r.0).collect();
    assert_eq!(types, IQ_TYPES, "the fixture covers every IQ type");
    for (t, raw, want) in recs {
        assert!(can_dequantize(t), "{t}");
        let mut got = vec![f32::NAN; want.len()];
        dequantize(t, &raw, &mut got).unwrap();
        let mut nonzero = 0;
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "{t}: element {i} (block {}): got {g:e}, llama.cpp {w:e}",
                i / 256
            );
            nonzero += (*w != 0.0) as usize;
        }
        assert!(nonzero > want.len() / 2, "{t}: the fixture is mostly zeros");
        // Unaligned source: the dequantizer reads bytes, whatever the address.
        let mut shifted = vec![0u8; raw.len() + 1];
        shifted[1..].copy_from_slice(&raw);
        let mut again = vec![0f32; want.len()];
        quant_iq::dequantize(t, &shifted[1..], &mut again).unwrap();
        assert!(again
            .iter()
            .zip(&got)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}

#[test]
fn iq_dequantize_rejects_wrong_sizes_and_types() {
    for t in IQ_TYPES {
        let bs = t.type_size();
        let src = vec![0u8; 2 * bs];
        let mut dst = vec![0f32; 512];
        assert!(dequantize(t, &src, &mut dst).is_ok());
        assert!(dequantize(t, &src[..bs + 1], &mut dst).is_err(), "{t}");
        assert!(
            quant_iq::dequantize(t, &src, &mut dst[..300]).is_err(),
            "{t}"
        );
    }
    assert!(quant_iq::dequantize(DType::Q4_K, &[0u8; 144], &mut [0f32; 256]).is_err());
}
