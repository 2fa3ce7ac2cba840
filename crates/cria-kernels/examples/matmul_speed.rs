//! Prints a table of matmul speed per weight type at SmolLM2-135M shapes: GB/s of weights for
//! t = 1, GFLOP/s for t = 64, for 1 thread (per CPU-second of the thread, so time spent
//! descheduled on a shared machine does not count) and 2 threads (best wall time).
//!
//! cargo run --release -p cria-kernels --example matmul_speed [-- TYPE ...]
//! CRIA_CPU=scalar to time the scalar twins.
//! `--one N K T TYPE [plain]`: one shape for a profiler; `--ab N K T TYPE [THREADS]`: the file's
//! layout against the prepared one, interleaved; `--isa N K T TYPE [THREADS]`: the AVX2 kernels
//! against the AVX-512 ones (both on their prepared weights), interleaved.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{random_acts, random_weights, Rng};
use cria_core::DType;
use cria_kernels::{dot, Backend, CpuBackend, Isa};
use std::time::{Duration, Instant};

const SHAPES: [(usize, usize); 4] = [(576, 576), (1536, 576), (576, 1536), (49152, 576)];

/// CPU time of the calling thread, in seconds.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Single-threaded: CPU seconds per call of the calling thread, averaged over >= 0.3 s of CPU
/// time (time the thread spent descheduled on a busy machine does not count).
fn cpu_time(mut f: impl FnMut()) -> f64 {
    f();
    let c0 = thread_cpu();
    let mut runs = 0;
    while runs < 3 || thread_cpu() - c0 < 0.3 {
        f();
        runs += 1;
    }
    (thread_cpu() - c0) / runs as f64
}

/// Best wall time of repeated calls within a budget.
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
                    (kern.vec_dot)(
                        n,
                        std::hint::black_box(w.row(0)),
                        1,
                        &a,
                        ab,
                        &mut out[..cols],
                    );
                }
            });
            print!(
                "  {cols} col: {:>6.2} ns",
                s / reps as f64 / blocks / cols as f64 * 1e9
            );
        }
        println!();
    }
}

/// `--one N K T TYPE [plain]`: loops one matmul for ~3 s (for perf), on the weights as
/// `Backend::prepare` leaves them (repacked where the backend does that) or, with `plain`, as the
/// file has them.
fn one(args: &[String]) {
    let (n, k, t, wt) = shape_args(args);
    let mut rng = Rng::new(9);
    let w = random_weights(&mut rng, wt, n, k);
    let x = random_acts(&mut rng, t, k);
    let mut out = vec![0f32; t * n];
    let b = CpuBackend::new(1);
    let w = if args.get(4).map(String::as_str) == Some("plain") {
        w
    } else {
        b.prepare(w).unwrap()
    };
    let start = Instant::now();
    let mut runs = 0;
    while start.elapsed() < Duration::from_secs(3) {
        b.matmul(&mut out, &x, &w, t);
        runs += 1;
    }
    let s = start.elapsed().as_secs_f64() / runs as f64;
    println!(
        "{wt} {n}x{k} t={t}: {:.3} ms, {:.1} GFLOP/s",
        s * 1e3,
        (2 * n * k * t) as f64 / s / 1e9
    );
}

/// N K T TYPE from the command line (`--one`, `--ab`).
fn shape_args(args: &[String]) -> (usize, usize, usize, DType) {
    let num = |i: usize| -> usize { args[i].parse().expect("N K T are numbers") };
    let wt = DType::from_name(&args[3]).expect("a weight type name");
    (num(0), num(1), num(2), wt)
}

/// Calls `f(0)` and `f(1)` alternately for ~4 s: the best wall time of each.
fn interleaved(mut f: impl FnMut(usize)) -> [f64; 2] {
    let mut best = [f64::MAX; 2];
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        for (i, b) in best.iter_mut().enumerate() {
            let t0 = Instant::now();
            f(i);
            *b = b.min(t0.elapsed().as_secs_f64());
        }
    }
    best
}

/// `--ab N K T TYPE [THREADS]`: the file's layout against the backend's own (repacked) one on the
/// same weights, alternating calls in one process, best time of each over ~4 s: an A/B that the
/// load of a shared machine moves for both sides alike.
fn ab(args: &[String]) {
    let (n, k, t, wt) = shape_args(args);
    let threads = args.get(4).map_or(1, |v| v.parse().unwrap());
    let mut rng = Rng::new(9);
    let plain = random_weights(&mut rng, wt, n, k);
    let x = random_acts(&mut rng, t, k);
    let mut out = vec![0f32; t * n];
    let b = CpuBackend::new(threads);
    let packed = b.prepare(plain.clone()).unwrap();
    let best = interleaved(|i| b.matmul(&mut out, &x, [&plain, &packed][i], t));
    let gf = |s: f64| (2 * n * k * t) as f64 / s / 1e9;
    println!(
        "{wt} {n}x{k} t={t} x{threads}: file layout {:.1} GFLOP/s, prepared {:.1} GFLOP/s ({:.2}x)",
        gf(best[0]),
        gf(best[1]),
        best[0] / best[1]
    );
}

/// `--isa N K T TYPE [THREADS]`: AVX2 against AVX-512 on the same weights and activations,
/// alternating calls, best time of each over ~4 s.
fn isa_ab(args: &[String]) {
    let (n, k, t, wt) = shape_args(args);
    let threads = args.get(4).map_or(1, |v| v.parse().unwrap());
    if !Isa::Avx512.available() {
        println!("no AVX-512 on this CPU");
        return;
    }
    let mut rng = Rng::new(9);
    let plain = random_weights(&mut rng, wt, n, k);
    let x = random_acts(&mut rng, t, k);
    let bs = [Isa::Avx2, Isa::Avx512].map(|i| CpuBackend::with_isa(threads, i));
    let ws = bs.each_ref().map(|b| b.prepare(plain.clone()).unwrap());
    let mut outs = [vec![0f32; t * n], vec![0f32; t * n]];
    let best = interleaved(|i| bs[i].matmul(&mut outs[i], &x, &ws[i], t));
    let same = outs[0]
        .iter()
        .zip(&outs[1])
        .all(|(a, b)| a.to_bits() == b.to_bits());
    let gf = |s: f64| (2 * n * k * t) as f64 / s / 1e9;
    println!(
        "{wt} {n}x{k} t={t} x{threads}: avx2 {:.1} GFLOP/s, avx512 {:.1} GFLOP/s ({:.2}x), same bits: {same}",
        gf(best[0]),
        gf(best[1]),
        best[0] / best[1]
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--ab") {
        return ab(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("--isa") {
        return isa_ab(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("--one") {
        return one(&args[1..]);
    }
    if std::env::args().any(|a| a == "--kernel") {
        let want: Vec<DType> = std::env::args()
            .skip(1)
            .filter_map(|a| DType::from_name(&a))
            .collect();
        let types: Vec<DType> = dot::SUPPORTED
            .into_iter()
            .filter(|t| want.is_empty() || want.contains(t))
            .collect();
        return kernel_only(&types);
    }
    let want: Vec<DType> = std::env::args()
        .skip(1)
        .filter_map(|a| DType::from_name(&a))
        .collect();
    let types: Vec<DType> = dot::SUPPORTED
        .into_iter()
        .filter(|t| want.is_empty() || want.contains(t))
        .collect();
    let mut rng = Rng::new(7);
    let backends = [CpuBackend::new(1), CpuBackend::new(2)];
    println!(
        "backend {} / {}; t=1: GB/s of weights read; t=64: GFLOP/s",
        backends[0].name(),
        backends[1].name()
    );
    println!(
        "x1: per thread-CPU-second (mean); x2: best wall time (pessimistic on a busy machine)"
    );
    print!("{:>7} {:>10}", "type", "shape");
    for b in &backends {
        print!(" | {:>6} t=1 {:>6} t=64 ", format!("x{}", b.threads), "");
    }
    println!();
    for wt in types {
        for (n, k) in SHAPES {
            let k = if wt.block_size() == 256 {
                k / 256 * 256
            } else {
                k
            };
            // As the model loader hands them over (the backend's own layout, if it has one).
            let w = backends[0]
                .prepare(random_weights(&mut rng, wt, n, k))
                .unwrap();
            print!("{:>7} {:>10}", wt.name(), format!("{n}x{k}"));
            for b in &backends {
                let mut cells = vec![];
                for t in [1usize, 64] {
                    let x = random_acts(&mut rng, t, k);
                    let mut out = vec![0f32; t * n];
                    // One thread: CPU time (robust to a busy machine); more: best wall time.
                    let s = if b.threads == 1 {
                        cpu_time(|| b.matmul(&mut out, &x, &w, t))
                    } else {
                        best(|| b.matmul(&mut out, &x, &w, t))
                    };
                    cells.push(if t == 1 {
                        w.bytes().len() as f64 / s / 1e9
                    } else {
                        (2 * n * k * t) as f64 / s / 1e9
                    });
                }
                print!(" | {:>6.1} GB/s {:>6.1} GF/s", cells[0], cells[1]);
            }
            println!();
        }
    }
}
