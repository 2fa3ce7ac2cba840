//! matmul per weight type at SmolLM2-135M shapes, t = 1 (decode: reports weight GB/s, the
//! roofline for a memory-bound op) and t = 64 (prefill: reports FLOP/s as "elements" = 2*n*k*t).
//!
//! `cargo bench -p cria-kernels --bench matmul -- 'Q4_1'` filters; `CRIA_CPU=scalar` benches the
//! scalar twins; `CRIA_BENCH_THREADS=1,2` picks thread counts (default 1,2).

#[path = "../tests/common/mod.rs"]
mod common;

use common::{random_acts, random_weights, Rng};
use cria_core::DType;
use cria_kernels::{dot, Backend, CpuBackend};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;

/// (out_features n, in_features k): attn q/o, ffn gate/up, ffn down, tied output head.
const SHAPES: [(usize, usize); 4] = [(576, 576), (1536, 576), (576, 1536), (49152, 576)];

fn threads() -> Vec<usize> {
    std::env::var("CRIA_BENCH_THREADS")
        .ok()
        .map(|s| s.split(',').filter_map(|t| t.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![1, 2])
}

fn bench(c: &mut Criterion) {
    let mut rng = Rng::new(42);
    for th in threads() {
        let b = CpuBackend::new(th);
        for wt in dot::SUPPORTED {
            for (n, k) in SHAPES {
                let k = if wt.block_size() == 256 {
                    k / 256 * 256
                } else {
                    k
                };
                let w = random_weights(&mut rng, wt, n, k);
                for t in [1usize, 64] {
                    let mut g = c.benchmark_group(format!("matmul/{}/t{t}", b.name()));
                    g.sample_size(10)
                        .warm_up_time(Duration::from_millis(200))
                        .measurement_time(Duration::from_millis(800));
                    g.throughput(if t == 1 {
                        Throughput::Bytes(w.bytes().len() as u64)
                    } else {
                        Throughput::Elements((2 * n * k * t) as u64)
                    });
                    let x = random_acts(&mut rng, t, k);
                    let mut out = vec![0f32; t * n];
                    g.bench_function(BenchmarkId::new(wt.name(), format!("{n}x{k}")), |bch| {
                        bch.iter(|| b.matmul(&mut out, &x, &w, t))
                    });
                    g.finish();
                }
            }
        }
    }
    let _ = DType::F32;
}

criterion_group!(benches, bench);
criterion_main!(benches);
