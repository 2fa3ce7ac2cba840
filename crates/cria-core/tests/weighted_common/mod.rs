//! The fixture format shared by quantize_weighted.rs and quantize_iq.rs (written by
//! gen_weighted_quant_fixtures.py): inputs, importance matrices, and ggml_quantize_chunk's bytes.
#![allow(dead_code)]

use cria_core::quantize::quantize_rows;
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

pub struct Input {
    pub name: String,
    pub n_per_row: usize,
    pub data: Vec<f32>,
}

pub struct Imatrix {
    pub name: String,
    pub input: usize,
    pub w: Vec<f32>,
}

pub struct Case<'a> {
    pub input: usize,
    pub imatrix: Option<usize>,
    pub dtype: DType,
    pub want: &'a [u8],
}

pub struct Fixture<'a> {
    pub inputs: Vec<Input>,
    pub imatrices: Vec<Imatrix>,
    pub cases: Vec<Case<'a>>,
}

pub fn parse(data: &[u8]) -> Fixture<'_> {
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
        let input = le_u32(r) as usize;
        let n = inputs[input].n_per_row;
        imatrices.push(Imatrix {
            name,
            input,
            w: floats(r, n),
        });
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

impl Fixture<'_> {
    /// Quantizes every case whose type passes `which` (into an aligned buffer and one at an odd
    /// address): the case count per (type, with imatrix) and the cases that differ from ggml.
    #[allow(clippy::type_complexity)]
    pub fn check(
        &self,
        which: impl Fn(DType) -> bool,
    ) -> (BTreeMap<(String, bool), usize>, Vec<String>) {
        let mut per_type: BTreeMap<(String, bool), usize> = BTreeMap::new();
        let mut failures = Vec::new();
        for c in self.cases.iter().filter(|c| which(c.dtype)) {
            let input = &self.inputs[c.input];
            let imatrix = c.imatrix.map(|k| self.imatrices[k].w.as_slice());
            let what = format!(
                "{} {} imatrix {}",
                c.dtype,
                input.name,
                c.imatrix.map_or("none", |k| &self.imatrices[k].name)
            );
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
        (per_type, failures)
    }

    /// The SmolLM2 ffn_down rows (1536 wide) and their "rand" importance weights.
    pub fn ffn_down(&self) -> (&Input, &[f32]) {
        let k = self
            .inputs
            .iter()
            .position(|i| i.name == "smollm2:blk.3.ffn_down")
            .expect("SmolLM2 ffn_down rows in the fixture");
        let im = self
            .imatrices
            .iter()
            .find(|m| m.input == k && m.name == "rand")
            .expect("their imatrix");
        (&self.inputs[k], &im.w)
    }
}

/// The bytes of `tests/fixtures/NAME`.
pub fn fixture(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run tests/gen_weighted_quant_fixtures.py [--iq])",
            p.display()
        )
    })
}

/// The first block where `got` and `want` differ, for the failure message.
pub fn first_diff(dtype: DType, n_per_row: usize, got: &[u8], want: &[u8]) -> Option<String> {
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

/// gen_weighted_quant_fixtures.py `smol_imatrix`: exact in f32 on both sides.
pub fn smol_imatrix(n: usize) -> Vec<f32> {
    (0..n)
        .map(|j| {
            if j % 11 == 0 {
                0.0
            } else {
                ((j * 7919) % 1009) as f32 / 64.0
            }
        })
        .collect()
}

/// Checks whole SmolLM2-135M tensors (F16 GGUF) quantized with and without the importance
/// weights [`smol_imatrix`] against the sha256 list `tests/fixtures/LIST` (lines "tensor type
/// imatrix(0/1) sha256", written by gen_weighted_quant_fixtures.py); panics on a difference and
/// returns how many were checked. Needs ref/bench/smollm2-F16.gguf (not in a clean checkout):
/// without it says SKIPPED and returns `None`.
pub fn check_smollm2_hashes(list_file: &str) -> Option<usize> {
    use sha2::{Digest, Sha256};
    let dir = std::env::var_os("CRIA_REF_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../ref")));
    let path = dir.join("bench/smollm2-F16.gguf");
    if !path.is_file() {
        eprintln!(
            "SKIPPED: {} is missing (set CRIA_REF_DIR); whole-tensor hashes not checked",
            path.display()
        );
        return None;
    }
    let f = cria_core::gguf::GgufFile::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(list_file);
    let list = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let (mut checked, mut failures) = (0, Vec::new());
    let mut cache: Option<(String, Vec<f32>, usize)> = None;
    for line in list.lines() {
        let [name, ty, weighted, want] = line.split(' ').collect::<Vec<_>>()[..] else {
            panic!("bad line {line:?}");
        };
        if cache.as_ref().map_or(true, |c| c.0 != name) {
            let t = f
                .tensor(name)
                .unwrap_or_else(|| panic!("{name} not in the model"));
            let mut x = vec![0f32; t.rows() * t.cols()];
            for (r, row) in x.chunks_exact_mut(t.cols()).enumerate() {
                t.dequantize_row(r, row).unwrap();
            }
            cache = Some((name.to_string(), x, t.cols()));
        }
        let (_, x, cols) = cache.as_ref().unwrap();
        let dt = DType::from_name(ty).unwrap();
        let imatrix = (weighted == "1").then(|| smol_imatrix(*cols));
        let mut out = vec![0u8; dt.bytes_for(x.len()).unwrap()];
        quantize_rows(dt, x, &mut out, *cols, imatrix.as_deref()).unwrap();
        let got: String = Sha256::digest(&out)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if got != want {
            failures.push(format!("{name} {ty} imatrix {weighted}"));
        }
        checked += 1;
    }
    assert!(failures.is_empty(), "differ from ggml: {failures:?}");
    Some(checked)
}

/// CPU seconds this thread has run (Linux: /proc/thread-self/schedstat, nanoseconds first).
pub fn thread_cpu_s() -> f64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").expect("Linux schedstat");
    s.split_whitespace().next().unwrap().parse::<u64>().unwrap() as f64 * 1e-9
}

/// Rows per second of `quantize_rows` for each of `types` (without importance weights only where
/// `unweighted` says so) on the SmolLM2 ffn_down rows tiled to 512 rows: one thread, best of 7
/// runs of 0.2 s of this thread's CPU time (the machine is shared: wall time would count other
/// processes' turns); bench_weighted_quant.py measures ggml the same way.
pub fn bench_rows_per_second(fx: &Fixture, types: &[DType], unweighted: impl Fn(DType) -> bool) {
    let (input, imatrix) = fx.ffn_down();
    let (n_per_row, data) = (&input.n_per_row, &input.data);
    let nrows = 512;
    let src: Vec<f32> = data
        .iter()
        .copied()
        .cycle()
        .take(nrows * n_per_row)
        .collect();
    for &dt in types {
        for w in [None, Some(imatrix)] {
            if w.is_none() && !unweighted(dt) {
                continue;
            }
            let mut dst = vec![0u8; dt.bytes_for(src.len()).unwrap()];
            // Best of 7 runs of 0.2 s of this thread's CPU time (the machine is shared: wall
            // time would count other processes' turns).
            let mut rows_s = 0f64;
            for _ in 0..7 {
                let (t0, mut reps) = (thread_cpu_s(), 0);
                while reps < 2 || thread_cpu_s() - t0 < 0.2 {
                    quantize_rows(dt, &src, &mut dst, *n_per_row, w).unwrap();
                    reps += 1;
                }
                rows_s = rows_s.max((reps * nrows) as f64 / (thread_cpu_s() - t0));
            }
            eprintln!(
                "cria {dt:7} imatrix {:5}: {rows_s:9.0} rows/s of {n_per_row}",
                w.is_some()
            );
        }
    }
}
