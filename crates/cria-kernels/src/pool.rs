//! A persistent thread pool for per-token work.
//!
//! Decoding one token calls ~200 small parallel ops (a 576x576 matmul is ~20 µs of work), so the
//! pool must cost little per op: workers are spawned once, wait for the next job by spinning a
//! short while (a job usually follows within microseconds) and then park on a condvar so an idle
//! pool burns no CPU. The calling thread takes part as thread 0; `run` returns only when every
//! thread has finished, which is what makes lending the workers a reference to the caller's stack
//! sound.
//!
//! Sync protocol: the caller writes the job, sets `pending`, then bumps `epoch` (SeqCst). A worker
//! that sees a new epoch runs the job and decrements `pending`. A worker going to sleep counts
//! itself in `sleepers` under `lock` and re-checks `epoch` before waiting; the caller notifies
//! when it sees sleepers after its bump. With SeqCst on both sides, either the caller sees the
//! sleeper or the sleeper sees the new epoch, so no wake-up is lost.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before parking. Long enough to bridge the gap between the ops
/// of one token (norms, rope, attention run on the caller between matmuls), short enough that an
/// idle engine does not hold cores that other processes could use.
const SPIN: Duration = Duration::from_micros(200);

type Job = *const (dyn Fn(usize) + Sync);

struct Shared {
    epoch: AtomicU64,
    /// Written by the caller only while no worker can read it (all finished the previous job,
    /// none has seen the next epoch yet).
    job: UnsafeCell<Option<Job>>,
    pending: AtomicUsize,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    cv: Condvar,
    shutdown: AtomicBool,
    panicked: AtomicBool,
}

// SAFETY: `job` is only written by the thread holding `ThreadPool::run_lock` while `pending == 0`
// and before the epoch bump that publishes it (Release via SeqCst); workers read it only after
// observing that bump (Acquire). The pointee is `Sync`, and `run` keeps it alive until every
// worker has decremented `pending`.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// One job at a time: `Backend` is `Sync`, two callers must not interleave.
    run_lock: Mutex<()>,
}

impl ThreadPool {
    /// A pool of `threads` threads in all, counting the caller (so `threads - 1` workers).
    pub fn new(threads: usize) -> ThreadPool {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: UnsafeCell::new(None),
            pending: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            cv: Condvar::new(),
            shutdown: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
        });
        let workers = (1..threads)
            .map(|id| {
                let s = shared.clone();
                std::thread::Builder::new()
                    .name(format!("cria-cpu-{id}"))
                    .spawn(move || worker(&s, id))
                    .expect("cria: could not spawn a CPU worker thread")
            })
            .collect();
        ThreadPool { shared, workers, run_lock: Mutex::new(()) }
    }

    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f(thread_id)` once on each of the `threads()` threads (the caller is thread 0) and
    /// returns when all are done. A panic in any of them is re-raised here.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.workers.is_empty() {
            f(0);
            return;
        }
        let _one_at_a_time = self.run_lock.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        // SAFETY: erasing the lifetime is sound because this function does not return (or
        // unwind) before `pending` is back to 0, i.e. before the last worker is done with `f`.
        let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(f) };
        // SAFETY: we hold run_lock and pending == 0 (the previous run waited for it), so no worker
        // reads `job` until the epoch bump below publishes it.
        unsafe { *s.job.get() = Some(job) };
        s.pending.store(self.workers.len(), SeqCst);
        s.epoch.fetch_add(1, SeqCst);
        if s.sleepers.load(SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.cv.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| f(0)));
        // Wait for the workers: spin briefly (they finish at about the same time as we do), then
        // yield so that a descheduled worker on a busy machine gets the core back.
        let t0 = Instant::now();
        let mut n = 0u32;
        while s.pending.load(Acquire) != 0 {
            n = n.wrapping_add(1);
            if n % 64 != 0 || t0.elapsed() < SPIN {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        if let Err(p) = mine {
            resume_unwind(p);
        }
        if s.panicked.swap(false, SeqCst) {
            panic!("cria: a CPU worker thread panicked (see its message above)");
        }
    }

    /// Calls `f(item, thread_id)` for every item in `0..n_items`, items handed out dynamically
    /// (an atomic counter), so a thread slowed by a noisy neighbour simply takes fewer. Which
    /// thread runs an item never changes what the item computes.
    pub fn for_each(&self, n_items: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        if n_items == 0 {
            return;
        }
        if n_items == 1 || self.workers.is_empty() {
            (0..n_items).for_each(|i| f(i, 0));
            return;
        }
        let next = AtomicUsize::new(0);
        self.run(&|tid| loop {
            let i = next.fetch_add(1, Relaxed);
            if i >= n_items {
                break;
            }
            f(i, tid);
        });
    }
}

fn worker(s: &Shared, id: usize) {
    let mut seen = 0u64;
    loop {
        // Wait for a new epoch (or shutdown).
        let t0 = Instant::now();
        let mut n = 0u32;
        loop {
            if s.shutdown.load(Acquire) {
                return;
            }
            let e = s.epoch.load(Acquire);
            if e != seen {
                seen = e;
                break;
            }
            n = n.wrapping_add(1);
            if n % 64 != 0 || t0.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            let g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.sleepers.fetch_add(1, SeqCst);
            if s.epoch.load(SeqCst) == seen && !s.shutdown.load(SeqCst) {
                drop(s.cv.wait(g).unwrap_or_else(|e| e.into_inner()));
            } else {
                drop(g);
            }
            s.sleepers.fetch_sub(1, SeqCst);
        }
        // SAFETY: the epoch we just observed (Acquire) was bumped after `job` was written, and the
        // caller keeps the job alive until we decrement `pending`.
        let job = unsafe { (*s.job.get()).expect("cria pool: epoch bumped without a job") };
        // SAFETY: see above; the pointee outlives this call.
        let r = catch_unwind(AssertUnwindSafe(|| unsafe { (*job)(id) }));
        if r.is_err() {
            s.panicked.store(true, SeqCst);
        }
        s.pending.fetch_sub(1, Release);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, SeqCst);
        {
            let _g = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.cv.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_runs_exactly_once() {
        for threads in [1, 2, 3, 5] {
            let pool = ThreadPool::new(threads);
            assert_eq!(pool.threads(), threads);
            for n in [0usize, 1, 2, 7, 1000] {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                pool.for_each(n, &|i, tid| {
                    assert!(tid < threads);
                    hits[i].fetch_add(1, SeqCst);
                });
                assert!(hits.iter().all(|h| h.load(SeqCst) == 1), "threads={threads} n={n}");
            }
        }
    }

    #[test]
    fn run_reaches_every_thread_and_survives_parking() {
        let pool = ThreadPool::new(3);
        for round in 0..50 {
            let seen: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
            pool.run(&|tid| {
                seen[tid].fetch_add(1, SeqCst);
            });
            assert!(seen.iter().all(|h| h.load(SeqCst) == 1));
            if round % 10 == 0 {
                // Let the workers park, so the condvar wake-up path is exercised too.
                std::thread::sleep(SPIN * 5);
            }
        }
    }

    #[test]
    fn a_worker_panic_reaches_the_caller_and_the_pool_still_works() {
        let pool = ThreadPool::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(&|tid| {
                if tid == 1 {
                    panic!("boom (expected by the test)");
                }
            })
        }));
        assert!(r.is_err());
        let count = AtomicUsize::new(0);
        pool.run(&|_| {
            count.fetch_add(1, SeqCst);
        });
        assert_eq!(count.load(SeqCst), 2);
    }
}
