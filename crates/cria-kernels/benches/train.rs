//! The training products (cpu/train.rs) beside the forward's matmul on the same shape, in
//! GFLOP/s (criterion "elements" = 2 * multiply-adds), on the backend's threads (default 2):
//! - `dx/TYPE/NxK/tT`: matmul_dx, dx (T, K) += dy (T, N) @ W (N x K), and `fwd/...` the forward
//!   matmul out (T, N) = x (T, K) @ W^T through the same prepared W (int8 activations for a
//!   quantized W), and `f32act/...` the forward with f32 activations (`matmul_f32act`, QLoRA's);
//! - `tn|nn|nt/...`: the f32 GEMMs at the LoRA shapes (rank 16) and a full weight gradient,
//!   each beside `fwd/F32/...`, the forward F32 matmul doing the same multiply-adds.
//!
//! `cargo bench --profile ci -p cria-kernels --bench train -- 'dx/Q8_0'` filters;
//! `CRIA_BENCH_THREADS=1` (default 2), `CRIA_BENCH_T=2048` (default 512) pick threads and rows.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{random_weights, Rng};
use cria_core::DType;
use cria_kernels::{Backend, CpuBackend};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;

/// (rows N = out_features, cols K = in_features): SmolLM2-135M ffn up/gate and down, LLaMA-3.2-1B
/// q/o and ffn up.
const DX_SHAPES: [(usize, usize); 4] = [(1536, 576), (576, 1536), (2048, 2048), (8192, 2048)];
const DX_TYPES: [DType; 4] = [DType::F32, DType::Q8_0, DType::Q4_K, DType::Q4_1];

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}

fn acts(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal(1.0)).collect()
}

/// A group of 10 short samples, its throughput in FLOP.
fn group<'c>(
    c: &'c mut Criterion,
    label: &str,
    name: &str,
    flops: usize,
) -> criterion::BenchmarkGroup<'c, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(format!("{name}/{label}"));
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1500))
        .throughput(Throughput::Elements(flops as u64));
    g
}

fn bench(c: &mut Criterion) {
    let b = CpuBackend::new(env("CRIA_BENCH_THREADS", 2));
    let t = env("CRIA_BENCH_T", 512);
    let mut rng = Rng::new(5);
    let label = format!("{}/t{t}", b.name());
    for (n, k) in DX_SHAPES {
        for wt in DX_TYPES {
            if k % wt.block_size() != 0 {
                continue;
            }
            let w = b.prepare(random_weights(&mut rng, wt, n, k)).unwrap();
            let (x, dy) = (acts(&mut rng, t * k), acts(&mut rng, t * n));
            let (mut out, mut dx) = (vec![0f32; t * n], vec![0f32; t * k]);
            let mut g = group(c, &label, "dx", 2 * t * n * k);
            let id = |what: &str| BenchmarkId::new(what, format!("{}/{n}x{k}", wt.name()));
            g.bench_function(id("fwd"), |bch| bch.iter(|| b.matmul(&mut out, &x, &w, t)));
            g.bench_function(id("f32act"), |bch| {
                bch.iter(|| b.matmul_f32act(&mut out, &x, &w, t))
            });
            g.bench_function(id("dx"), |bch| {
                bch.iter(|| b.matmul_dx(&mut dx, &dy, &w, t))
            });
            g.finish();
        }
    }
    // (name, m, k, n) of C (m, n) += A (m, k) B (k, n), as each GEMM lays them out.
    let r = 16;
    let gemms = [
        ("tn dB smol up", 1536, t, r),
        ("tn dA smol", r, t, 576),
        ("tn dB 1B up", 8192, t, r),
        ("tn dA 1B", r, t, 2048),
        ("tn dW smol up", 1536, t, 576),
        ("nn dH smol up", t, 1536, r),
        ("nn dx smol", t, r, 576),
        ("nn dx 1B", t, r, 2048),
        ("nt H smol", t, 576, r),
        ("nt HB smol up", t, r, 1536),
        ("nt HB 1B up", t, r, 8192),
    ];
    for (name, m, kk, n) in gemms {
        let op = &name[..2];
        let (a, bm) = (acts(&mut rng, m * kk), acts(&mut rng, kk * n));
        let mut cm = vec![0f32; m * n];
        // The forward doing the same multiply-adds: out (m, n) = x (m, kk) @ W (n x kk)^T.
        let w = random_weights(&mut rng, DType::F32, n, kk);
        let mut g = group(c, &label, op, 2 * m * n * kk);
        let id = |what: &str| BenchmarkId::new(what, format!("{name} {m}x{kk}x{n}"));
        g.bench_function(id("fwd"), |bch| bch.iter(|| b.matmul(&mut cm, &a, &w, m)));
        g.bench_function(id(op), |bch| {
            bch.iter(|| match op {
                // a (t=kk, m)^T b (t=kk, n)
                "tn" => b.gemm_tn(&mut cm, &a, &bm, kk, m, n),
                "nn" => b.gemm_nn(&mut cm, &a, &bm, m, kk, n),
                _ => b.gemm_nt(&mut cm, &a, &bm, m, kk, n),
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
