//! The CPU backend: a kernel table per weight type (`dot`), SIMD chosen once at construction
//! (`Isa`, overridable with `CRIA_CPU`), and a persistent thread pool.
//!
//! matmul(out (t, n), x (t, k), w (n rows of k)):
//! 1. each activation row is converted once into the weight's `vec_dot_type` (Q8_0, Q8_1, Q8_K,
//!    F16, BF16; F32 is used in place), into a scratch buffer that only ever grows;
//! 2. output rows are cut into chunks of about `CHUNK_BYTES` of weights, handed to threads
//!    dynamically; inside a chunk, tokens go by groups of `max_cols` (4 for quantized types) and
//!    each weight row is dotted against the whole group, so a chunk's weights stay in L1/L2 while
//!    every token passes over them and each block is decoded once per group.
//!
//! Every output element is computed by one `vec_dot` call whose inputs do not depend on the
//! chunking or on which thread runs it: results are bitwise identical for any thread count.

use crate::dot::{self, Kernel};
use crate::isa::Isa;
use crate::pool::ThreadPool;
use crate::{arch, ops, reference, AttnShape, KvSlice, Rope};
use cria_core::{DType, Tensor};
use std::sync::Mutex;

// Their SIMD bodies are x86-64 only; elsewhere the shared scaffolding would warn as unused.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_imports))]
mod attention;
mod backend;
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code, unused_imports))]
pub(crate) mod gemm_float;
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code, unused_imports))]
pub mod gemm_half;
pub mod gemm_q;
pub mod kv;
pub mod lora;
mod matmul;
mod train;

/// Below this many multiply-adds an op runs on the calling thread: waking workers costs a few
/// microseconds.
pub(crate) const MIN_PARALLEL_MACS: usize = 64 * 1024;

pub struct CpuBackend {
    /// Threads in all, the caller included.
    pub threads: usize,
    isa: Isa,
    /// Whether `prepare` repacks quantized weights into the interleaved layout (cpu/gemm_q.rs).
    /// Off (`CRIA_REPACK=0`, or `without_repack`), every matmul takes the plain-layout path,
    /// whose summation order is ggml's: llama.cpp's logits bit for bit on the types it covers.
    repack: bool,
    pool: ThreadPool,
    /// Activations converted to the vec_dot_type (t rows), reused across calls.
    act: Mutex<Vec<u8>>,
    /// Per-thread attention scratch (flash tiles' key blocks, scores and accumulators; the F32
    /// path's row of scores).
    scores: Vec<Mutex<Vec<f32>>>,
    /// Per-thread F16/BF16 weight panels widened to f32 (`gemm_half`, x86-64), and the matmul
    /// calls.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    panels: Vec<Mutex<WidePanels>>,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    calls: std::sync::atomic::AtomicUsize,
    /// RoPE cos/sin of the positions of the last call.
    rope_cs: Mutex<ops::RopeTable>,
}

/// One thread's F16/BF16 panels widened to f32, and which they are: (call, row block).
#[derive(Default)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct WidePanels {
    pub(crate) buf: Vec<f32>,
    pub(crate) holds: Option<(usize, usize)>,
}

/// A raw output pointer the worker threads share (f32 results, or activation bytes). Sound
/// because every element is written by exactly one work item (see matmul) and the pool joins
/// before the borrow ends.
pub(crate) struct SyncPtr<T = f32>(pub(crate) *mut T);
// Copy without requiring T: Copy (derive would add that bound).
impl<T> Clone for SyncPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SyncPtr<T> {}
// SAFETY: see above: disjoint writes only, lifetime bounded by ThreadPool::run.
unsafe impl<T> Send for SyncPtr<T> {}
unsafe impl<T> Sync for SyncPtr<T> {}
impl<T> SyncPtr<T> {
    /// A method rather than `.0` so closures capture the Sync wrapper, not the raw pointer.
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

impl CpuBackend {
    /// A backend with `threads` threads (the caller counts as one), on the best ISA the CPU has
    /// or the one `CRIA_CPU` names. A bad `CRIA_CPU` is reported on stderr and ignored; use
    /// `try_new` to get it as an error instead.
    pub fn new(threads: usize) -> Self {
        let isa = Isa::from_env().unwrap_or_else(|e| {
            eprintln!("cria: {e}; using {}", Isa::best());
            Isa::best()
        });
        Self::with_isa(threads, isa)
    }

    pub fn try_new(threads: usize) -> Result<Self, String> {
        Ok(Self::with_isa(threads, Isa::from_env()?))
    }

    /// A backend on a given ISA (tests, benches). Falls back to scalar if the CPU lacks `isa`.
    pub fn with_isa(threads: usize, isa: Isa) -> Self {
        let threads = threads.max(1);
        let isa = if isa.available() { isa } else { Isa::Scalar };
        let repack = !matches!(std::env::var("CRIA_REPACK").as_deref(), Ok("0"));
        CpuBackend {
            threads,
            isa,
            repack,
            pool: ThreadPool::new(threads),
            act: Mutex::new(Vec::new()),
            scores: (0..threads).map(|_| Mutex::new(Vec::new())).collect(),
            panels: (0..threads)
                .map(|_| Mutex::new(WidePanels::default()))
                .collect(),
            calls: Default::default(),
            rope_cs: Mutex::new(ops::RopeTable::default()),
        }
    }

    /// Threads of the pool (the caller's included).
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// This backend with weight repacking off (see the `repack` field): for comparisons that
    /// need ggml's exact summation order.
    pub fn without_repack(mut self) -> Self {
        self.repack = false;
        self
    }

    pub fn repacks(&self) -> bool {
        self.repack
    }

    /// Runs `job(item, thread)` for items 0..items: on the pool, or on the calling thread when
    /// there is one thread, one item, or less than `MIN_PARALLEL_MACS` of `work` (waking the
    /// workers would cost more than it saves).
    pub(crate) fn run_items(&self, items: usize, work: usize, job: &(dyn Fn(usize, usize) + Sync)) {
        if self.threads == 1 || items == 1 || work < MIN_PARALLEL_MACS {
            (0..items).for_each(|i| job(i, 0));
        } else {
            self.pool.for_each(items, job);
        }
    }

    /// Converts the `t` rows of `x` (`k` values each) into `act` (`ab` bytes each) with `conv`:
    /// a prompt's rows by all threads (each row on its own: the same bytes either way); a few
    /// rows are not worth waking the pool for.
    pub(crate) fn convert_rows(
        &self,
        x: &[f32],
        t: usize,
        k: usize,
        act: &mut [u8],
        ab: usize,
        conv: &(dyn Fn(&[f32], &mut [u8]) + Sync),
    ) {
        assert!(
            x.len() >= t * k && act.len() >= t * ab,
            "convert_rows: bad sizes"
        );
        if self.threads == 1 || t < 4 * self.threads {
            for (xr, ar) in x
                .chunks_exact(k.max(1))
                .zip(act.chunks_exact_mut(ab.max(1)))
                .take(t)
            {
                conv(xr, ar);
            }
            return;
        }
        let rows_per = t.div_ceil(self.threads * 2);
        let actp = SyncPtr(act.as_mut_ptr());
        self.pool.for_each(t.div_ceil(rows_per), &|item, _tid| {
            for r in item * rows_per..((item + 1) * rows_per).min(t) {
                // SAFETY: r < t and act holds t * ab bytes (asserted above); row r's ab bytes
                // are written by this item alone, and the pool joins before `act` is used again.
                let ar = unsafe { std::slice::from_raw_parts_mut(actp.get().add(r * ab), ab) };
                conv(&x[r * k..(r + 1) * k], ar);
            }
        });
    }

    /// Grows every thread's scratch to `need` floats, here on the caller and for all threads at
    /// once, so that no work item allocates, whichever threads happen to take items.
    pub(crate) fn reserve_scratch(&self, need: usize) {
        for m in &self.scores {
            let mut buf = m.lock().unwrap_or_else(|e| e.into_inner());
            if buf.len() < need {
                buf.resize(need, 0.0);
            }
        }
    }

    /// Grows every thread's widened-panel scratch to `need` floats (as `reserve_scratch`) and
    /// returns a number unique to this call, which `WidePanels::holds` is keyed by.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn reserve_panels(&self, need: usize) -> usize {
        for m in &self.panels {
            let mut p = m.lock().unwrap_or_else(|e| e.into_inner());
            if p.buf.len() < need {
                p.buf.resize(need, 0.0);
            }
        }
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1
    }

    /// `matmul_many` as one `matmul` per matrix: the path for sets its fused kernel does not
    /// take.
    fn matmul_each(&self, outs: &mut [&mut [f32]], x: &[f32], ws: &[&Tensor], t: usize) {
        assert_eq!(
            outs.len(),
            ws.len(),
            "matmul_many: {} outputs for {} matrices",
            outs.len(),
            ws.len()
        );
        for (o, w) in outs.iter_mut().zip(ws) {
            self.matmul(o, x, w, t);
        }
    }

    /// The kernel `matmul` uses for weights of `dtype`, if any.
    pub fn kernel(&self, dtype: DType) -> Option<Kernel> {
        dot::kernel(self.isa, dtype)
    }
}

/// The slice-level ops (the kernels' tests and benches call them; `impl Backend` in
/// cpu/backend.rs runs the forward's ops through them).
impl CpuBackend {
    pub fn prepare(&self, w: Tensor) -> cria_core::Result<Tensor> {
        matmul::prepare(self, w)
    }

    pub fn matmul(&self, out: &mut [f32], x: &[f32], w: &Tensor, t: usize) {
        matmul::matmul(self, out, x, w, t)
    }

    pub fn matmul_many(&self, outs: &mut [&mut [f32]], x: &[f32], ws: &[&Tensor], t: usize) {
        match gemm_q::packed_many(ws) {
            Some(ps) if t > 0 && outs.len() == ws.len() => {
                for (w, o) in ws.iter().zip(outs.iter()) {
                    matmul::check_shapes(o, x, w, t);
                }
                gemm_q::matmul_many(self, x, t, outs, &ps[..ws.len()])
            }
            _ => self.matmul_each(outs, x, ws, t),
        }
    }

    pub fn embed(&self, out: &mut [f32], table: &Tensor, tokens: &[u32]) {
        let (rows, k) = (table.rows(), table.cols());
        assert_eq!(
            out.len(),
            tokens.len() * k,
            "embed: out has {} values, want {} x {k}",
            out.len(),
            tokens.len()
        );
        // A table that shares the head's repacked copy (tied embeddings) is read from that copy,
        // block by block through the file's layout, so the same values come out and the file's
        // pages of the table stay out of the process.
        let packed = gemm_q::packed(table);
        let half = gemm_half::packed(table);
        for (o, &tok) in out.chunks_exact_mut(k.max(1)).zip(tokens) {
            assert!(
                (tok as usize) < rows,
                "embed: token id {tok} is outside the table ({rows} rows)"
            );
            if let Some(h) = half {
                h.row(tok as usize, o);
                continue;
            }
            let res = match packed {
                Some(p) => {
                    let mut blk = [0u8; 256];
                    let qk = p.kind.qk();
                    (0..k / qk).try_for_each(|b| {
                        p.plain_block(tok as usize, b, &mut blk);
                        let pb = &blk[..p.kind.plain_bytes()];
                        cria_core::quant::dequantize(table.dtype, pb, &mut o[b * qk..][..qk])
                    })
                }
                None => table.dequantize_row(tok as usize, o),
            };
            res.unwrap_or_else(|e| panic!("embed {}: {e}", table.name));
        }
    }

    pub fn rmsnorm(&self, out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
        assert_eq!(out.len(), x.len(), "rmsnorm: out and x differ in length");
        assert!(
            w.is_empty() || x.len() % w.len() == 0,
            "rmsnorm: {} values are not rows of {}",
            x.len(),
            w.len()
        );
        if w.is_empty() {
            return;
        }
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: self.isa is Avx2/Avx512 only if Isa::available() confirmed AVX2/FMA/F16C.
            Isa::Avx2 | Isa::Avx512 => unsafe { arch::avx2::ops::rmsnorm(out, x, w, eps) },
            _ => reference::rmsnorm(out, x, w, eps),
        }
    }

    pub fn rope(
        &self,
        x: &mut [f32],
        t: usize,
        n_heads: usize,
        head_dim: usize,
        pos0: usize,
        rope: &Rope,
    ) {
        match self.isa {
            Isa::Scalar => reference::rope(x, t, n_heads, head_dim, pos0, rope),
            isa => {
                let mut table = self.rope_cs.lock().unwrap_or_else(|e| e.into_inner());
                let cs = table.get(rope, pos0, t);
                match isa {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: Avx2/Avx512 only when available (both have AVX2/FMA/F16C).
                    Isa::Avx2 | Isa::Avx512 => unsafe {
                        arch::avx2::ops::rope(x, t, n_heads, head_dim, rope, cs)
                    },
                    _ => arch::scalar::ops::rope(x, t, n_heads, head_dim, rope, cs),
                }
            }
        }
    }

    pub fn attention(&self, out: &mut [f32], q: &[f32], k: KvSlice, v: KvSlice, s: &AttnShape) {
        attention::attention(self, out, q, k, v, s)
    }

    pub fn silu_mul(&self, a: &mut [f32], b: &[f32]) {
        assert_eq!(a.len(), b.len(), "silu_mul: lengths differ");
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: Avx2/Avx512 only when available (both have AVX2/FMA/F16C).
            Isa::Avx2 | Isa::Avx512 => unsafe { arch::avx2::ops::silu_mul(a, b) },
            _ => reference::silu_mul(a, b),
        }
    }

    pub fn add_assign(&self, a: &mut [f32], b: &[f32]) {
        assert_eq!(a.len(), b.len(), "add_assign: lengths differ");
        // Memory-bound and already vectorised by the compiler: the reference is the fast path.
        reference::add_assign(a, b)
    }
}
