//! Measured memory read bandwidth: the roofline decode speed is judged against.
//!
//! Decoding reads every weight byte once per token, so bytes-per-token / read bandwidth is the
//! speed limit. The figure here is what `threads` threads reading a buffer far larger than any
//! cache achieve with plain sequential loads (the access pattern of a matmul over weights).

use std::time::Instant;

/// Bytes per second that `threads` threads read from a `mib`-MiB buffer, best of `passes`.
/// Allocates and fills the buffer first (the fill is not timed).
pub fn read_bandwidth(threads: usize, mib: usize, passes: usize) -> f64 {
    let threads = threads.max(1);
    let n = (mib.max(1) << 20) / 8;
    // Filled with distinct values so that no page is shared-zero or left unmapped.
    let buf: Vec<u64> = (0..n as u64).collect();
    let part = n.div_ceil(threads);
    let mut best = f64::MAX;
    let mut check = 0u64;
    for _ in 0..passes.max(1) {
        let t0 = Instant::now();
        let sums: Vec<u64> = std::thread::scope(|s| {
            let hs: Vec<_> = buf.chunks(part).map(|c| s.spawn(move || sum(c))).collect();
            hs.into_iter().map(|h| h.join().unwrap_or(0)).collect()
        });
        best = best.min(t0.elapsed().as_secs_f64());
        check = check.wrapping_add(sums.iter().fold(0, |a, &b| a.wrapping_add(b)));
    }
    std::hint::black_box(check);
    (n * 8) as f64 / best
}

/// Eight independent accumulators, so the loop is bound by loads, not by the add chain; the
/// compiler vectorises it with whatever the build targets (SSE2 suffices to saturate DRAM).
fn sum(c: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let mut it = c.chunks_exact(8);
    for b in &mut it {
        for i in 0..8 {
            acc[i] = acc[i].wrapping_add(b[i]);
        }
    }
    let tail = it.remainder().iter().fold(0u64, |a, &b| a.wrapping_add(b));
    acc.iter().fold(tail, |a, &b| a.wrapping_add(b))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sums_every_element() {
        let v: Vec<u64> = (1..=37).collect();
        assert_eq!(super::sum(&v), 37 * 38 / 2);
        assert_eq!(super::sum(&[]), 0);
    }

    #[test]
    fn bandwidth_is_a_positive_rate() {
        let bw = super::read_bandwidth(2, 8, 2);
        assert!(bw.is_finite() && bw > 1e6, "{bw}");
    }
}
