//! `quantize_rows` against llama.cpp's `ggml_quantize_chunk`, byte for byte, with and without
//! importance matrices (fixture made by gen_weighted_quant_fixtures.py from libggml-base.so through
//! ctypes): every type `cria quantize` writes, awkward random rows and real SmolLM2 rows, importance
//! weights that are random, have zero groups, or are all zero.

use cria_core::quantize::{can_quantize_rows, quantize_rows};
use cria_core::DType;

mod weighted_common;
use weighted_common::parse;

fn fixture() -> Vec<u8> {
    weighted_common::fixture("quant_weighted.bin")
}

#[test]
fn quantize_rows_matches_ggml_quantize_chunk() {
    let data = fixture();
    let fx = parse(&data);
    let (per_type, failures) = fx.check(|t| {
        assert!(can_quantize_rows(t), "{t}");
        true
    });
    eprintln!("checked (type, with imatrix) -> cases: {per_type:?}");
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from ggml:\n{}",
        failures.len(),
        2 * fx.cases.len(),
        failures.join("\n")
    );
    // Every type llama-quantize can write here, with and without weights.
    for dt in [
        "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K",
        "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS",
    ] {
        for w in [false, true] {
            assert!(
                per_type.contains_key(&(dt.to_string(), w)),
                "no fixture case for {dt} (imatrix: {w})"
            );
        }
    }
}

/// Rows quantized on several threads at once give the same bytes as one call over all rows (the
/// quantizers hold no shared state).
#[test]
fn quantize_rows_is_the_same_from_many_threads() {
    let data = fixture();
    let fx = parse(&data);
    let (input, imatrix) = fx.ffn_down();
    let (n_per_row, data) = (&input.n_per_row, &input.data);
    for dt in [DType::Q4_K, DType::Q6_K, DType::Q3_K, DType::IQ4_XS] {
        let row_bytes = dt.bytes_for(*n_per_row).unwrap();
        let nrows = data.len() / n_per_row;
        let mut whole = vec![0u8; row_bytes * nrows];
        quantize_rows(dt, data, &mut whole, *n_per_row, Some(imatrix)).unwrap();
        let mut split = vec![0u8; row_bytes * nrows];
        std::thread::scope(|s| {
            for (x, y) in data
                .chunks_exact(*n_per_row)
                .zip(split.chunks_exact_mut(row_bytes))
            {
                s.spawn(move || quantize_rows(dt, x, y, *n_per_row, Some(imatrix)).unwrap());
            }
        });
        assert_eq!(whole, split, "{dt}");
    }
}

/// Throughput of the weighted quantizers on real rows (SmolLM2 ffn_down, 1536 wide, tiled to 512
/// rows), one thread, best of 7 runs per CPU second. Not a timed assertion: run with
/// `cargo test --profile ci -p cria-core --test quantize_weighted bench -- --ignored --nocapture`
/// and compare with `python3 crates/cria-core/tests/bench_weighted_quant.py` (ggml, same rows).
#[test]
#[ignore]
fn bench_rows_per_second() {
    let data = fixture();
    let fx = parse(&data);
    let types = [
        DType::Q4_K,
        DType::Q6_K,
        DType::Q5_K,
        DType::Q3_K,
        DType::Q2_K,
        DType::IQ4_XS,
        DType::Q4_0,
    ];
    weighted_common::bench_rows_per_second(&fx, &types, |_| true);
}

/// Whole SmolLM2-135M tensors (F16 GGUF), quantized with and without importance weights, against
/// the sha256 of ggml_quantize_chunk's output (fixtures/quant_weighted_smollm2.txt, made by
/// `gen_weighted_quant_fixtures.py --smollm2`): hundreds of thousands of real blocks per type.
/// Needs ref/bench/smollm2-F16.gguf (not in a clean checkout): skipped loudly without it.
#[test]
fn smollm2_whole_tensors_match_ggml_hashes() {
    if let Some(checked) = weighted_common::check_smollm2_hashes("quant_weighted_smollm2.txt") {
        assert!(checked >= 72, "only {checked} hashes listed");
    }
}
