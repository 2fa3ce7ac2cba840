//! The lattice IQ quantizers of `quantize_rows` against llama.cpp's `ggml_quantize_chunk`, byte
//! for byte (fixture tests/fixtures/quant_iq.bin, made by `gen_weighted_quant_fixtures.py --iq`
//! from libggml-base.so through ctypes): awkward random rows (zeros, a huge outlier, 1e-30 values,
//! one-signed rows, mixed group scales, quarter steps) and real SmolLM2 ffn_down rows, importance
//! weights that are random, have zero groups, or are all zero, and none where ggml allows it.

use cria_core::quant_iq::IQ_TYPES;
use cria_core::quantize::{can_quantize_rows, quantize_rows};
use cria_core::DType;

mod weighted_common;
use weighted_common::parse;

fn fixture() -> Vec<u8> {
    weighted_common::fixture("quant_iq.bin")
}

#[test]
fn iq_quantizers_match_ggml_quantize_chunk() {
    let data = fixture();
    let fx = parse(&data);
    let (per_type, failures) = fx.check(can_quantize_rows);
    eprintln!("checked (type, with imatrix) -> cases: {per_type:?}");
    assert!(
        failures.is_empty(),
        "{} cases differ from ggml:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let on: Vec<DType> = IQ_TYPES
        .into_iter()
        .filter(|&t| can_quantize_rows(t))
        .collect();
    eprintln!("IQ types quantized: {on:?}");
    // Each type switched on has fixture cases with importance weights, and without where ggml
    // quantizes without one (IQ3_XXS, IQ3_S, IQ2_S, IQ1_M).
    for t in [
        DType::IQ3_XXS,
        DType::IQ3_S,
        DType::IQ2_XXS,
        DType::IQ2_XS,
        DType::IQ2_S,
    ] {
        assert!(on.contains(&t), "{t}");
    }
    for t in on {
        assert!(
            per_type.get(&(t.name().to_string(), true)) >= Some(&9),
            "{t}"
        );
        if matches!(
            t,
            DType::IQ3_XXS | DType::IQ3_S | DType::IQ2_S | DType::IQ1_M
        ) {
            assert!(
                per_type.get(&(t.name().to_string(), false)) >= Some(&3),
                "{t}"
            );
        }
    }
}

/// IQ2_XXS, IQ2_XS and IQ1_S without an importance matrix are an error (ggml_quantize_chunk
/// asserts on it); the others quantize without one, as in ggml.
#[test]
fn iq_types_without_imatrix() {
    let x: Vec<f32> = (0..256).map(|i| (i as f32 * 0.37).sin()).collect();
    for t in IQ_TYPES {
        let mut y = vec![0u8; t.type_size()];
        let r = quantize_rows(t, &x, &mut y, 256, None);
        let needs = matches!(t, DType::IQ2_XXS | DType::IQ2_XS | DType::IQ1_S);
        assert_eq!(r.is_err(), needs, "{t}: {r:?}");
        if needs {
            let e = r.unwrap_err().to_string();
            assert!(e.contains("importance matrix"), "{t}: {e}");
        }
    }
}

/// Rows quantized on several threads at once (the grid tables are built once, behind a lock)
/// give the same bytes as one call over all rows.
#[test]
fn iq_rows_are_the_same_from_many_threads() {
    let data = fixture();
    let fx = parse(&data);
    let (input, imatrix) = fx.ffn_down();
    let n = input.n_per_row;
    for t in IQ_TYPES.into_iter().filter(|&t| can_quantize_rows(t)) {
        let row_bytes = t.bytes_for(n).unwrap();
        let nrows = input.data.len() / n;
        let mut whole = vec![0u8; row_bytes * nrows];
        quantize_rows(t, &input.data, &mut whole, n, Some(imatrix)).unwrap();
        let mut split = vec![0u8; row_bytes * nrows];
        std::thread::scope(|s| {
            for (x, y) in input
                .data
                .chunks_exact(n)
                .zip(split.chunks_exact_mut(row_bytes))
            {
                s.spawn(move || quantize_rows(t, x, y, n, Some(imatrix)).unwrap());
            }
        });
        assert_eq!(whole, split, "{t}");
    }
}

/// Whole SmolLM2-135M ffn_down tensors (576 rows of 1536) in every lattice IQ type, with the
/// formula importance weights and, where ggml allows it, without, against the sha256 of
/// ggml_quantize_chunk's output (fixtures/quant_iq_smollm2.txt, made by
/// `gen_weighted_quant_fixtures.py --iq-smollm2`). Skipped loudly without ref/bench/smollm2-F16.gguf.
#[test]
fn smollm2_whole_tensors_match_ggml_hashes() {
    if let Some(checked) = weighted_common::check_smollm2_hashes("quant_iq_smollm2.txt") {
        assert!(checked >= 33, "only {checked} hashes listed");
    }
}

/// Throughput of the IQ quantizers on the SmolLM2 ffn_down rows (1536 wide, tiled to 512 rows),
/// one thread. Not a timed assertion: run with
/// `cargo test --profile ci -p cria-core --test quantize_iq bench -- --ignored --nocapture`
/// and compare with `python3 crates/cria-core/tests/bench_weighted_quant.py --iq` (ggml).
#[test]
#[ignore]
fn bench_rows_per_second() {
    let data = fixture();
    let fx = parse(&data);
    // Build the grid tables outside the timing (the first call per grid builds them).
    for t in IQ_TYPES {
        let x = vec![1.0f32; 256];
        let mut y = vec![0u8; t.type_size()];
        let t0 = std::time::Instant::now();
        quantize_rows(t, &x, &mut y, 256, Some(&x)).unwrap();
        eprintln!(
            "{t}: first block (grid tables) {:.1} ms",
            t0.elapsed().as_secs_f64() * 1e3
        );
    }
    weighted_common::bench_rows_per_second(&fx, &IQ_TYPES, |t| {
        !matches!(t, DType::IQ2_XXS | DType::IQ2_XS | DType::IQ1_S)
    });
}
