//! Prints a table of matmul speed per weight type at SmolLM2-135M shapes: GB/s of weights for
//! t = 1, GFLOP/s for t = 64, for 1 and 2 threads (best of several runs: the machine is shared).
//!
//! cargo run --release -p cria-kernels --example matmul_speed [-- TYPE ...]
//! CRIA_CPU=scalar to time the scalar twins.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{random_acts, random_weights, Rng};
use cria_core::DType;
use cria_kernels::{dot, Backend, CpuBackend};
use std::time::{Duration, Instant};

const SHAPES: [(usize, usize); 4] = [(576, 576), (1536, 576), (576, 1536), (49152, 576)];

/// Best time of repeated calls within a budget.
fn best(mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut best = f64::MAX;
    let mut runs = 0;
    while runs < 3 || (start.elapsed() < Duration::from_millis(400) && runs < 200) {
        let t0 = Instant::now();
        f();
        best = best.min(t0.elapsed().as_secs_f64());
        runs += 1;
    }
    best
}

/// `--kernel`: one weight row of 4096 elements (L1-resident) against 1 and 4 activation rows,
/// reported as ns per weight block per column: the kernel alone, without memory or threads.
fn kernel_only(types: &[DType]) {
    let mut rng = Rng::new(8);
    let isa = CpuBackend::new(1).isa();
    println!("vec_dot on {isa}, n=4096, L1-resident: ns per block per column (best of many)");
    for &wt in types {
        let kern = dot::kernel(isa, wt).unwrap();
        let n = 4096;
        let w = random_weights(&mut rng, wt, 1, n);
        let x = random_acts(&mut rng, 4, n);
        let ab = kern.vec_dot_type.bytes_for(n).unwrap();
        let mut a = vec![0u8; 4 * ab];
        for r in 0..4 {
            (kern.from_float)(&x[r * n..(r + 1) * n], &mut a[r * ab..(r + 1) * ab]);
        }
        let blocks = (n / wt.block_size()) as f64;
        print!("{:>7}", wt.name());
        for cols in [1usize, kern.max_cols] {
            let mut out = [0f32; 4];
            let reps = 200;
            let s = best(|| {
                for _ in 0..reps {
                    (kern.vec_dot)(n, std::hint::black_box(w.row(0)), 1, &a, ab, &mut out[..cols]);
                }
            });
            print!("  {cols} col: {:>6.2} ns", s / reps as f64 / blocks / cols as f64 * 1e9);
        }
        println!();
    }
}

fn main() {
    if std::env::args().any(|a| a == "--kernel") {
        let want: Vec<DType> = std::env::args().skip(1).filter_map(|a| DType::from_name(&a)).collect();
        let types: Vec<DType> = dot::SUPPORTED.into_iter().filter(|t| want.is_empty() || want.contains(t)).collect();
        return kernel_only(&types);
    }
    let want: Vec<DType> = std::env::args().skip(1).filter_map(|a| DType::from_name(&a)).collect();
    let types: Vec<DType> = dot::SUPPORTED.into_iter().filter(|t| want.is_empty() || want.contains(t)).collect();
    let mut rng = Rng::new(7);
    let backends = [CpuBackend::new(1), CpuBackend::new(2)];
    println!("backend {} / {}; t=1: GB/s of weights read; t=64: GFLOP/s", backends[0].name(), backends[1].name());
    print!("{:>7} {:>10}", "type", "shape");
    for b in &backends {
        print!(" | {:>6} t=1 {:>6} t=64 ", format!("x{}", b.threads), "");
    }
    println!();
    for wt in types {
        for (n, k) in SHAPES {
            let k = if wt.block_size() == 256 { k / 256 * 256 } else { k };
            let w = random_weights(&mut rng, wt, n, k);
            print!("{:>7} {:>10}", wt.name(), format!("{n}x{k}"));
            for b in &backends {
                let mut cells = vec![];
                for t in [1usize, 64] {
                    let x = random_acts(&mut rng, t, k);
                    let mut out = vec![0f32; t * n];
                    let s = best(|| b.matmul(&mut out, &x, &w, t));
                    cells.push(if t == 1 { w.bytes().len() as f64 / s / 1e9 } else { (2 * n * k * t) as f64 / s / 1e9 });
                }
                print!(" | {:>6.1} GB/s {:>6.1} GF/s", cells[0], cells[1]);
            }
            println!();
        }
    }
}
