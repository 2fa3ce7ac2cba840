//! The token loop allocates nothing: after a warm-up, decode steps and a later prompt batch run
//! the whole forward (every op of the CPU backend, its thread pool, the KV cache) without a
//! single heap allocation, counted by a global allocator on every thread. Covered: the tiny
//! LLaMA-2 fixture as shipped (F32) and re-quantized here into mixed Q4_0 / Q4_1 / Q8_0 / F16
//! (the types whose matmul paths differ: repacked, plain quantized, float), at 1 and 2 threads,
//! with the f16 cache (flash attention) and the f32 one (llama.cpp's exact attention).
//!
//! One #[test] only: the counter is process-wide, so a second test running in parallel would be
//! counted too.

use cria_kernels::CpuBackend;
use cria_model::{forward, KvCache, KvType, LoadOptions, Logits, Model, Scratch};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

mod common;
use common::{quantized_copy, tiny};

struct Counting;
static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);

fn note(size: usize) {
    if COUNTING.load(Relaxed) {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(size, Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counters are atomics
// and never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note(l.size());
        System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        note(l.size());
        System.alloc_zeroed(l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        note(new);
        System.realloc(p, l, new)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations during `f`, on any thread.
fn count(f: impl FnOnce()) -> (usize, usize) {
    ALLOCS.store(0, Relaxed);
    BYTES.store(0, Relaxed);
    COUNTING.store(true, Relaxed);
    f();
    COUNTING.store(false, Relaxed);
    (ALLOCS.load(Relaxed), BYTES.load(Relaxed))
}

#[test]
fn forward_allocates_nothing_after_warm_up() {
    let dir = std::env::temp_dir().join(format!("cria-no-alloc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let models = [tiny(), quantized_copy(&dir)];
    for path in &models {
        for (threads, kv_type) in [(1, KvType::F16), (2, KvType::F16), (2, KvType::F32)] {
            let b = CpuBackend::new(threads);
            let m = Model::load(path, LoadOptions::default(), &b).unwrap();
            let ctx = 96;
            let mut kv = KvCache::with_type(&m, ctx, kv_type);
            let mut s = Scratch::new(&m, 16, Logits::Last);
            let prompt: Vec<u32> = (0..16).map(|i| 3 + i * 7).collect();
            // Warm-up: a full batch, a decode step (buffers reach their working sizes).
            forward(&m, &b, &prompt, 0, &mut kv, &mut s, Logits::Last).unwrap();
            forward(&m, &b, &[5], 16, &mut kv, &mut s, Logits::Last).unwrap();
            let (n, bytes) = count(|| {
                let mut pos = 17;
                let mut tok = 9;
                // Decode steps at growing positions (the cache read grows every step)...
                for _ in 0..40 {
                    forward(&m, &b, &[tok], pos, &mut kv, &mut s, Logits::Last).unwrap();
                    tok = (tok * 31 + 7) % 500;
                    pos += 1;
                }
                // ...then a prompt batch at a later position, then decoding again.
                forward(&m, &b, &prompt, pos, &mut kv, &mut s, Logits::Last).unwrap();
                pos += prompt.len();
                for _ in 0..8 {
                    forward(&m, &b, &[tok], pos, &mut kv, &mut s, Logits::Last).unwrap();
                    pos += 1;
                }
                assert!(pos <= ctx);
            });
            assert_eq!(
                (n, bytes),
                (0, 0),
                "{} at {threads} thread(s), {kv_type} cache: {n} allocations ({bytes} bytes) in the token loop",
                path.display()
            );
            // The counter does count: a deliberate allocation is seen.
            let (n, _) = count(|| drop(std::hint::black_box(vec![1u8; 10])));
            assert_eq!(n, 1);
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}
