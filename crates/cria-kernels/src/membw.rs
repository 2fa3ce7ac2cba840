//! Measured memory read bandwidth: the roofline decode speed is judged against.
//!
//! Decoding reads every weight byte once per token, so bytes-per-token / read bandwidth is the
//! speed limit. The figure here is what `threads` threads reading a buffer far larger than any
//! cache achieve with plain sequential loads (the access pattern of a matmul over weights), the
//! best of reading each thread's share as 1, 2, 4 or 8 interleaved streams: on this kind of
//! machine (Zen 3) one core reads ~11 GB/s from one stream and ~15 GB/s from eight (more misses
//! in flight), and a kernel that reads several weight panels at once gets the higher figure, so
//! the one-stream figure would put the roofline too low.

use std::time::Instant;

/// Bytes per second that `threads` threads read from a `mib`-MiB buffer, best of `passes` and
/// of the stream counts. Allocates and fills the buffer first (the fill is not timed).
pub fn read_bandwidth(threads: usize, mib: usize, passes: usize) -> f64 {
    let threads = threads.max(1);
    let n = (mib.max(1) << 20) / 8;
    // Filled with distinct values so that no page is shared-zero or left unmapped.
    let buf: Vec<u64> = (0..n as u64).collect();
    let part = n.div_ceil(threads);
    let mut best = f64::MAX;
    let mut check = 0u64;
    let kinds: [fn(&[u64]) -> u64; 4] = [
        sum_streams::<1>,
        sum_streams::<2>,
        sum_streams::<4>,
        sum_streams::<8>,
    ];
    for _ in 0..passes.max(1) {
        for f in kinds {
            let t0 = Instant::now();
            let sums: Vec<u64> = std::thread::scope(|s| {
                let hs: Vec<_> = buf.chunks(part).map(|c| s.spawn(move || f(c))).collect();
                hs.into_iter().map(|h| h.join().unwrap_or(0)).collect()
            });
            best = best.min(t0.elapsed().as_secs_f64());
            check = check.wrapping_add(sums.iter().fold(0, |a, &b| a.wrapping_add(b)));
        }
    }
    std::hint::black_box(check);
    (n * 8) as f64 / best
}

/// The sum of `c`, read as S equal streams in lockstep (one 64-byte line of each per step), the
/// rest after. Eight independent accumulators, so the loop is bound by loads, not by the add
/// chain; the compiler vectorises it with whatever the build targets (SSE2 suffices to
/// saturate DRAM).
fn sum_streams<const S: usize>(c: &[u64]) -> u64 {
    let len = c.len() / S / 8 * 8;
    let streams: [&[u64]; S] = std::array::from_fn(|i| &c[i * len..(i + 1) * len]);
    let mut acc = [0u64; 8];
    for off in (0..len).step_by(8) {
        for st in streams {
            let line = &st[off..off + 8];
            for i in 0..8 {
                acc[i] = acc[i].wrapping_add(line[i]);
            }
        }
    }
    let tail = c[S * len..].iter().fold(0u64, |a, &b| a.wrapping_add(b));
    acc.iter().fold(tail, |a, &b| a.wrapping_add(b))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sums_every_element() {
        use super::sum_streams;
        for n in [0u64, 1, 7, 37, 64, 200, 1000] {
            let v: Vec<u64> = (1..=n).collect();
            let want = n * (n + 1) / 2;
            assert_eq!(sum_streams::<1>(&v), want, "n={n}, 1 stream");
            assert_eq!(sum_streams::<2>(&v), want, "n={n}, 2 streams");
            assert_eq!(sum_streams::<4>(&v), want, "n={n}, 4 streams");
            assert_eq!(sum_streams::<8>(&v), want, "n={n}, 8 streams");
        }
    }

    #[test]
    fn bandwidth_is_a_positive_rate() {
        let bw = super::read_bandwidth(2, 8, 2);
        assert!(bw.is_finite() && bw > 1e6, "{bw}");
    }
}
