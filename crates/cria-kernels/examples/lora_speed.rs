//! Where a decode step's adapter time goes: one token through `Backend::lora` for each linear
//! layer shape of a model (rank 16 by default), f32 / f16 storage, the transposed fast path and
//! the two-matmul path, in GB/s of adapter bytes; beside the base matmul of the same shape in
//! Q4_1 for scale.
//!
//! cargo run --profile ci -p cria-kernels --example lora_speed -- [THREADS] [RANK] [smol|1b]

use cria_core::tensor::{AlignedBuf, Bytes};
use cria_core::{DType, Tensor};
use cria_kernels::{Backend, CpuBackend, LoraAdapter, Rows};
use std::time::Instant;

fn tensor(dt: DType, rows: usize, cols: usize, seed: u32) -> Tensor {
    let v: Vec<f32> = (0..rows * cols)
        .map(|i| {
            ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32
                / (1u32 << 24) as f32
                - 0.5
        })
        .collect();
    let bytes: Vec<u8> = match dt {
        DType::F32 => bytemuck::cast_slice(&v).to_vec(),
        DType::F16 => v
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect(),
        _ => {
            let mut out = vec![0u8; dt.bytes_for(v.len()).unwrap()];
            cria_core::quantize::quantize_rows(dt, &v, &mut out, cols, None).unwrap();
            out
        }
    };
    Tensor::new(
        "w",
        dt,
        vec![cols, rows],
        Bytes::owned(AlignedBuf::from_slice(&bytes)),
    )
    .unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2);
    let rank: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(16);
    let (dim, kv, ffn) = match args.get(3).map(String::as_str) {
        Some("1b") => (2048, 512, 8192),
        _ => (576, 192, 1536),
    };
    let b = CpuBackend::new(threads);
    let shapes = [
        ("q", dim, dim),
        ("k", kv, dim),
        ("v", kv, dim),
        ("o", dim, dim),
        ("gate", ffn, dim),
        ("up", ffn, dim),
        ("down", dim, ffn),
    ];
    // Many copies of each, so the loop streams from memory (or L3) rather than L1/L2.
    let copies: usize = 32;
    for dt in [DType::F32, DType::F16] {
        let mut tot = [0f64; 3];
        let mut bytes = 0usize;
        for &(name, rows, cols) in &shapes {
            let mk = |fast: bool, s: u32| {
                let (a, w) = (tensor(dt, rank, cols, s), tensor(dt, rows, rank, s + 1));
                let (a, w) = if fast {
                    b.prepare_lora(a, w).unwrap()
                } else {
                    (
                        Backend::prepare(&b, a).unwrap(),
                        Backend::prepare(&b, w).unwrap(),
                    )
                };
                LoraAdapter::<CpuBackend> {
                    a,
                    b: w,
                    rank,
                    rows,
                    cols,
                    scale: 1.0,
                }
            };
            let fast: Vec<_> = (0..copies).map(|i| mk(true, i as u32)).collect();
            let slow: Vec<_> = (0..copies).map(|i| mk(false, i as u32)).collect();
            let base: Vec<_> = (0..copies)
                .map(|i| Backend::prepare(&b, tensor(DType::Q4_1, rows, cols, i as u32)).unwrap())
                .collect();
            let x = vec![0.5f32; cols];
            let mut out = vec![0f32; rows];
            let (mut t1, mut t2) = (vec![0f32; rank], vec![0f32; rows]);
            let reps = 200;
            let time = |f: &mut dyn FnMut(usize)| {
                let t0 = Instant::now();
                for r in 0..reps {
                    f(r % copies);
                }
                t0.elapsed().as_secs_f64() / reps as f64
            };
            let tf = time(&mut |i| {
                b.lora(
                    &mut out,
                    &x,
                    Rows::new(0, 1),
                    &fast[i],
                    1.0,
                    &mut t1,
                    &mut t2,
                )
            });
            let ts = time(&mut |i| {
                b.lora(
                    &mut out,
                    &x,
                    Rows::new(0, 1),
                    &slow[i],
                    1.0,
                    &mut t1,
                    &mut t2,
                )
            });
            let tb = time(&mut |i| b.matmul(&mut out, &x, &base[i], 1));
            let by = rank * (rows + cols) * dt.type_size();
            bytes += by;
            tot[0] += tf;
            tot[1] += ts;
            tot[2] += tb;
            println!(
                "{dt} {name:>4} {rows}x{cols}: fast {:6.2} us ({:5.1} GB/s)  two matmuls {:6.2} us  base Q4_1 matmul {:6.2} us",
                tf * 1e6,
                by as f64 / tf / 1e9,
                ts * 1e6,
                tb * 1e6
            );
        }
        println!(
            "{dt} one layer: fast {:.1} us ({:.1} GB/s), two matmuls {:.1} us, base {:.1} us: fast adds {:.1}% to the base's matmuls",
            tot[0] * 1e6,
            bytes as f64 / tot[0] / 1e9,
            tot[1] * 1e6,
            tot[2] * 1e6,
            tot[0] / tot[2] * 100.0
        );
    }
}
