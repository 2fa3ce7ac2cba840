//! `quantize_rows` against llama.cpp's `ggml_quantize_chunk`, byte for byte, with and without
//! importance matrices (fixture made by gen_weighted_quant_fixtures.py from libggml-base.so through
//! ctypes): every type `cria quantize` writes, awkward random rows and real SmolLM2 rows, importance
//! weights that are random, have zero groups, or are all zero.

use cria_core::quantize::{can_quantize_rows, quantize_rows};
use cria_core::DType;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Splits `n` bytes off the front of `b`.
fn take<'a>(b: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (head, rest) = b.split_at(n);
    *b = rest;
    head
}

fn le_u32(b: &mut &[u8]) -> u32 {
    u32::from_le_bytes(take(b, 4).try_into().unwrap())
}

fn string(b: &mut &[u8]) -> String {
    let n = le_u32(b) as usize;
    String::from_utf8(take(b, n).to_vec()).expect("utf-8 name")
}

fn floats(b: &mut &[u8], n: usize) -> Vec<f32> {
    let raw = take(b, 4 * n);
    (0..n)
        .map(|i| f32::from_le_bytes(raw[4 * i..4 * i + 4].try_into().unwrap()))
        .collect()
}

struct Input {
    name: String,
    n_per_row: usize,
    data: Vec<f32>,
}

struct Case<'a> {
    input: usize,
    imatrix: Option<usize>,
    dtype: DType,
    want: &'a [u8],
}

struct Fixture<'a> {
    inputs: Vec<Input>,
    imatrices: Vec<(String, Vec<f32>)>,
    cases: Vec<Case<'a>>,
}

fn parse(data: &[u8]) -> Fixture<'_> {
    let r = &mut &data[..];
    assert_eq!(take(r, 4), b"CRWQ");
    assert_eq!(le_u32(r), 1, "fixture version");
    let mut inputs = Vec::new();
    for _ in 0..le_u32(r) {
        let name = string(r);
        let (n_per_row, nrows) = (le_u32(r) as usize, le_u32(r) as usize);
        let data = floats(r, n_per_row * nrows);
        inputs.push(Input {
            name,
            n_per_row,
            data,
        });
    }
    let mut imatrices = Vec::new();
    for _ in 0..le_u32(r) {
        let name = string(r);
        let n = inputs[le_u32(r) as usize].n_per_row;
        imatrices.push((name, floats(r, n)));
    }
    let mut cases = Vec::new();
    for _ in 0..le_u32(r) {
        let input = le_u32(r) as usize;
        let imatrix = Some(le_u32(r))
            .filter(|&k| k != u32::MAX)
            .map(|k| k as usize);
        let dtype = DType::from_ggml(le_u32(r)).expect("ggml type id");
        let n = le_u32(r) as usize;
        let want = take(r, n);
        cases.push(Case {
            input,
            imatrix,
            dtype,
            want,
        });
    }
    assert!(r.is_empty(), "trailing bytes in the fixture");
    Fixture {
        inputs,
        imatrices,
        cases,
    }
}

fn fixture() -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quant_weighted.bin");
    std::fs::read(&p).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run tests/gen_weighted_quant_fixtures.py)",
            p.display()
        )
    })
}

/// The first block where `got` and `want` differ, for the failure message.
fn first_diff(dtype: DType, n_per_row: usize, got: &[u8], want: &[u8]) -> Option<String> {
    let ts = dtype.type_size();
    let per_row = n_per_row / dtype.block_size();
    let i = got.iter().zip(want).position(|(g, w)| g != w)?;
    let b = i / ts;
    Some(format!(
        "row {} block {} (byte {} of the block): got {:02x?}, want {:02x?}",
        b / per_row,
        b % per_row,
        i % ts,
        &got[b * ts..(b + 1) * ts],
        &want[b * ts..(b + 1) * ts]
    ))
}

#[test]
fn quantize_rows_matches_ggml_quantize_chunk() {
    let data = fixture();
    let fx = parse(&data);
    let mut per_type: BTreeMap<(String, bool), usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for c in &fx.cases {
        let input = &fx.inputs[c.input];
        let imatrix = c.imatrix.map(|k| fx.imatrices[k].1.as_slice());
        let what = format!(
            "{} {} imatrix {}",
            c.dtype,
            input.name,
            c.imatrix.map_or("none", |k| &fx.imatrices[k].0)
        );
        assert!(can_quantize_rows(c.dtype), "{what}");
        // An aligned output buffer, and one at an odd address (the copy-per-row path).
        let mut buf = vec![0u64; c.want.len().div_ceil(8) + 1];
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut buf);
        for off in [0usize, 1] {
            let got = &mut bytes[off..off + c.want.len()];
            got.fill(0xAA);
            quantize_rows(c.dtype, &input.data, got, input.n_per_row, imatrix)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            if let Some(d) = first_diff(c.dtype, input.n_per_row, got, c.want) {
                failures.push(format!("{what} (offset {off}): {d}"));
            }
        }
        *per_type
            .entry((c.dtype.name().to_string(), c.imatrix.is_some()))
            .or_default() += 1;
    }
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
    let input = fx
        .inputs
        .iter()
        .position(|i| i.name.starts_with("smollm2:") && i.n_per_row % 256 == 0)
        .expect("a SmolLM2 input of whole super-blocks");
    let Input {
        n_per_row, data, ..
    } = &fx.inputs[input];
    let imatrix = fx.imatrices[fx
        .cases
        .iter()
        .find_map(|c| (c.input == input).then_some(c.imatrix).flatten())
        .unwrap()]
    .1
    .as_slice();
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
