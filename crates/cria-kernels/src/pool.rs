//! A persistent thread pool for per-token work.
//!
//! Decoding one token calls ~200 small parallel ops (a 576x576 matmul is ~20 µs of work), so the
//! pool must cost little per op: workers are spawned once, wait for the next job by spinning a
//! short while (a job usually follows within microseconds) and then park on a condvar so an idle
//! pool burns no CPU.
//!
//! Work is handed out dynamically (`for_each`: an atomic item counter) and the caller works too.
//! A job is *open* while the caller is still taking items; when the caller finds none left it
//! closes the job and waits only for the workers that joined it. A worker that wakes late (parked,
//! or descheduled on a busy machine) finds the job closed and never touches it, so the caller is
//! never held up by a thread that did nothing, and the pool degrades to single-threaded speed
//! rather than to a scheduler round-trip per op.
//!
//! Sync protocol (all SeqCst on `open`/`active`): the caller writes `job`, sets `open`, bumps
//! `epoch` (the wake-up signal). A worker that sees a new epoch increments `active`, then reads
//! `open`: if closed it decrements and goes back to waiting; if open it reads `job`, runs it,
//! decrements `active`. The caller, done with its share, clears `open` and waits for `active == 0`.
//! In the single total order either the worker's increment precedes the close (the caller waits
//! for it) or it follows it (the worker sees the job closed). `job` is rewritten only while
//! `open` is false and `active` is 0 under `run_lock`, and read only by a worker that saw `open`.
//! Parking: a worker counts itself in `sleepers` under `lock` and re-checks `epoch` before
//! waiting; the caller notifies when it sees sleepers after its bump.

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
    open: AtomicBool,
    active: AtomicUsize,
    job: UnsafeCell<Option<Job>>,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    cv: Condvar,
    shutdown: AtomicBool,
    panicked: AtomicBool,
    /// Workers that have started running (see `new`).
    started: AtomicUsize,
}

// SAFETY: `job` is written only by the caller holding `run_lock` while `open` is false and
// `active` is 0, and read only by workers that incremented `active` and then saw `open` true
// (see the protocol above); the pointee is `Sync` and outlives the job.
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
            open: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            job: UnsafeCell::new(None),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            cv: Condvar::new(),
            shutdown: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            started: AtomicUsize::new(0),
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
        // Wait until every worker runs: a thread's start-up (std allocates its name and
        // bookkeeping there) then happens here, at construction, and never inside the first
        // jobs of the token loop.
        while shared.started.load(SeqCst) + 1 < threads {
            std::thread::yield_now();
        }
        ThreadPool {
            shared,
            workers,
            run_lock: Mutex::new(()),
        }
    }

    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f(thread_id)` on the caller (thread 0) and on every worker that arrives while the
    /// caller's own call is running; returns when all of those are done. So `f` must be a "take
    /// work until none is left" loop: a worker may run it after the caller found nothing left,
    /// or not at all. A panic in any of them is re-raised here.
    fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.workers.is_empty() {
            f(0);
            return;
        }
        let _one_at_a_time = self.run_lock.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        // SAFETY: erasing the lifetime is sound because this function does not return (or
        // unwind) before the job is closed and `active` is back to 0.
        let job: Job = unsafe {
            std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(f)
        };
        // SAFETY: we hold run_lock, `open` is false and `active` is 0 (the previous run waited
        // for both), so no worker reads `job` now.
        unsafe { *s.job.get() = Some(job) };
        s.open.store(true, SeqCst);
        s.epoch.fetch_add(1, SeqCst);
        if s.sleepers.load(SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.cv.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| f(0)));
        s.open.store(false, SeqCst);
        // Only workers that joined are waited for; they are mid-item, so spin (then yield, in case
        // one was descheduled on a busy machine).
        let t0 = Instant::now();
        let mut n = 0u32;
        while s.active.load(SeqCst) != 0 {
            n = n.wrapping_add(1);
            if n % 64 != 0 || t0.elapsed() < SPIN {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        // Clear the worker-panic flag before re-raising the caller's own panic, or it would
        // leak into the next job.
        let worker_panicked = s.panicked.swap(false, SeqCst);
        if let Err(p) = mine {
            resume_unwind(p);
        }
        if worker_panicked {
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
    s.started.fetch_add(1, SeqCst);
    let mut seen = 0u64;
    loop {
        // Wait for a new epoch (or shutdown).
        let t0 = Instant::now();
        let mut n = 0u32;
        loop {
            if s.shutdown.load(Acquire) {
                return;
            }
            let e = s.epoch.load(SeqCst);
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
        s.active.fetch_add(1, SeqCst);
        if s.open.load(SeqCst) {
            // SAFETY: `open` was set after `job` was written and the caller cannot rewrite or
            // drop it until we decrement `active`.
            let job = unsafe { (*s.job.get()).expect("cria pool: job open without a job") };
            // SAFETY: see above; the pointee outlives this call.
            if catch_unwind(AssertUnwindSafe(|| unsafe { (*job)(id) })).is_err() {
                s.panicked.store(true, SeqCst);
            }
        }
        s.active.fetch_sub(1, SeqCst);
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
            for round in 0..20 {
                for n in [0usize, 1, 2, 7, 1000] {
                    let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                    pool.for_each(n, &|i, tid| {
                        assert!(tid < threads);
                        hits[i].fetch_add(1, SeqCst);
                    });
                    assert!(
                        hits.iter().all(|h| h.load(SeqCst) == 1),
                        "threads={threads} n={n}"
                    );
                }
                if round % 5 == 0 {
                    // Let the workers park, so the condvar wake-up path is exercised too.
                    std::thread::sleep(SPIN * 3);
                }
            }
        }
    }

    #[test]
    fn workers_do_take_items_when_there_is_enough_work() {
        let pool = ThreadPool::new(2);
        let by_worker = AtomicUsize::new(0);
        for _ in 0..20 {
            pool.for_each(64, &|_, tid| {
                std::thread::sleep(Duration::from_micros(200));
                if tid == 1 {
                    by_worker.fetch_add(1, SeqCst);
                }
            });
        }
        assert!(by_worker.load(SeqCst) > 0, "the worker never took an item");
    }

    #[test]
    fn a_worker_panic_reaches_the_caller_and_the_pool_still_works() {
        let pool = ThreadPool::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.for_each(1000, &|i, tid| {
                if tid == 1 || i == 999 {
                    std::thread::sleep(Duration::from_micros(50));
                    panic!("boom (expected by the test)");
                }
            })
        }));
        assert!(r.is_err());
        let count = AtomicUsize::new(0);
        pool.for_each(10, &|_, _| {
            count.fetch_add(1, SeqCst);
        });
        assert_eq!(count.load(SeqCst), 10);
    }
}
