//! The token loop allocates nothing: after a warm-up, decode steps and a later prompt batch run
//! the whole forward (every op of the CPU backend, its thread pool, the KV cache) without a
//! single heap allocation, counted by a global allocator on every thread. Covered: the tiny
//! LLaMA-2 fixture as shipped (F32) and re-quantized here into mixed Q4_0 / Q4_1 / Q8_0 / F16
//! (the types whose matmul paths differ: repacked, plain quantized, float), at 1 and 2 threads,
//! with the f16 cache (flash attention) and the f32 one (llama.cpp's exact attention).
//!
//! One #[test] only: the counter is process-wide, so a second test running in parallel would be
//! counted too.

use cria_core::gguf::{GgufFile, GgufWriter};
use cria_core::{quant, DType};
use cria_kernels::CpuBackend;
use cria_model::{forward, KvCache, KvType, LoadOptions, Logits, Model, Scratch};
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

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

fn tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama2/model.gguf")
}

/// The tiny model with its matrices re-quantized (rows of 64 take block types; ffn_down's rows
/// of 172 become F16).
fn quantized_copy(dir: &Path) -> PathBuf {
    let g = GgufFile::open(tiny()).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in &g.metadata {
        w.add(k.clone(), v.clone());
    }
    let mut datas = Vec::new();
    for t in &g.tensors {
        let dtype = match t.name.as_str() {
            n if t.ne.len() < 2 || n.ends_with("norm.weight") => t.dtype,
            "token_embd.weight" => DType::Q8_0,
            "output.weight" => DType::Q4_1,
            n if n.contains("ffn_down") => DType::F16,
            n if n.contains("ffn_") => DType::Q8_0,
            _ => DType::Q4_0,
        };
        let v = t.to_f32_vec().unwrap();
        let mut bytes = vec![0u8; dtype.bytes_for(v.len()).unwrap()];
        quant::quantize(dtype, &v, &mut bytes).unwrap();
        datas.push((t.name.clone(), dtype, t.ne.clone(), bytes));
    }
    for (name, dtype, ne, bytes) in datas {
        w.add_tensor(name, dtype, ne, bytes).unwrap();
    }
    let p = dir.join("tiny-mixed.gguf");
    w.write(&p).unwrap();
    p
}

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
