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
use crate::{ops, reference, AttnShape, Backend, Rope};
use cria_core::{DType, Tensor};
use std::sync::Mutex;

/// Weight bytes per work item: small enough for many items per thread on 576-wide layers, large
/// enough to amortise the hand-out, and inside L1/L2 while a group of tokens passes over it.
const CHUNK_BYTES: usize = 16 * 1024;
/// Below this many multiply-adds an op runs on the calling thread: waking workers costs a few
/// microseconds.
const MIN_PARALLEL_MACS: usize = 64 * 1024;
/// Cap on rows per work item (bounds the on-stack result tile; tiny rows would otherwise make
/// items of thousands of rows).
const MAX_CHUNK_ROWS: usize = 256;

pub struct CpuBackend {
    /// Threads in all, the caller included.
    pub threads: usize,
    isa: Isa,
    pool: ThreadPool,
    /// Activations converted to the vec_dot_type (t rows), reused across calls.
    act: Mutex<Vec<u8>>,
    /// Per-thread attention scores (one row of keys each).
    scores: Vec<Mutex<Vec<f32>>>,
    /// RoPE cos/sin of one position.
    rope_cs: Mutex<Vec<(f32, f32)>>,
}

/// A raw output pointer the worker threads share. Sound because every element is written by
/// exactly one work item (see matmul) and the pool joins before the borrow ends.
#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: see above: disjoint writes only, lifetime bounded by ThreadPool::run.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}
impl SyncPtr {
    /// A method rather than `.0` so closures capture the Sync wrapper, not the raw pointer.
    fn get(self) -> *mut f32 {
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
        CpuBackend {
            threads,
            isa,
            pool: ThreadPool::new(threads),
            act: Mutex::new(Vec::new()),
            scores: (0..threads).map(|_| Mutex::new(Vec::new())).collect(),
            rope_cs: Mutex::new(Vec::new()),
        }
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The kernel `matmul` uses for weights of `dtype`, if any.
    pub fn kernel(&self, dtype: DType) -> Option<Kernel> {
        dot::kernel(self.isa, dtype)
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        format!("cpu-{} x{}", self.isa, self.threads)
    }

    fn supports(&self, dtype: DType) -> bool {
        // matmul needs a kernel; embed dequantizes rows through cria-core.
        self.kernel(dtype).is_some() && cria_core::quant::can_dequantize(dtype)
    }

    fn matmul(&self, out: &mut [f32], x: &[f32], w: &Tensor, t: usize) {
        let (n, k) = (w.rows(), w.cols());
        assert_eq!(
            x.len(),
            t * k,
            "matmul {}: x has {} values, want t={t} x k={k}",
            w.name,
            x.len()
        );
        assert_eq!(
            out.len(),
            t * n,
            "matmul {}: out has {} values, want t={t} x n={n}",
            w.name,
            out.len()
        );
        if t == 0 || n == 0 {
            return;
        }
        let kern = self.kernel(w.dtype).unwrap_or_else(|| {
            panic!("cria: the CPU backend has no matmul kernel for {} (tensor {}); callers must check Backend::supports", w.dtype, w.name)
        });
        let ab = kern
            .vec_dot_type
            .bytes_for(k)
            .unwrap_or_else(|e| panic!("matmul {}: {e}", w.name));
        let mut act_guard = self.act.lock().unwrap_or_else(|e| e.into_inner());
        let a: &[u8] = if kern.vec_dot_type == DType::F32 {
            bytemuck::cast_slice(x)
        } else {
            if act_guard.len() < t * ab {
                act_guard.resize(t * ab, 0);
            }
            for (xr, ar) in x
                .chunks_exact(k.max(1))
                .zip(act_guard.chunks_exact_mut(ab.max(1)))
                .take(t)
            {
                (kern.from_float)(xr, ar);
            }
            &act_guard[..t * ab]
        };
        let wb = w.bytes();
        let rb = w.row_bytes();
        // A multiple of 16 rows, so that (with a 64-byte-aligned `out`) each cache line of the
        // output belongs to one work item: no line ping-pong between threads, no line written
        // half by one item and half by the next.
        let rows_per_chunk = (CHUNK_BYTES / rb.max(1)).clamp(16, MAX_CHUNK_ROWS) / 16 * 16;
        let rows_per_chunk = rows_per_chunk.min(n);
        let n_chunks = n.div_ceil(rows_per_chunk);
        let outp = SyncPtr(out.as_mut_ptr());
        let job = |chunk: usize, _tid: usize| {
            let (j0, j1) = (
                chunk * rows_per_chunk,
                ((chunk + 1) * rows_per_chunk).min(n),
            );
            let rows = j1 - j0;
            let wrows = &wb[j0 * rb..j1 * rb];
            if t == 1 {
                // One token: the chunk's results are contiguous in `out`, write them in place.
                // SAFETY: j0..j1 lies inside `out` (len n) and belongs to this chunk alone; the
                // pool joins before `out`'s borrow ends.
                let o = unsafe { std::slice::from_raw_parts_mut(outp.get().add(j0), rows) };
                (kern.vec_dot)(k, wrows, rows, a, ab, o);
                return;
            }
            let mut tile = [0f32; MAX_CHUNK_ROWS * 4];
            let mut i = 0;
            while i < t {
                let cols = kern.max_cols.min(t - i).min(4);
                // tile[r * cols + c] = row j0 + r . token i + c
                (kern.vec_dot)(k, wrows, rows, &a[i * ab..], ab, &mut tile[..rows * cols]);
                for c in 0..cols {
                    for r in 0..rows {
                        // SAFETY: (i + c) < t and j0 + r < n, so the index is inside `out` (len
                        // t*n, checked above); this (token, row) belongs to this chunk alone.
                        unsafe { *outp.get().add((i + c) * n + j0 + r) = tile[r * cols + c] };
                    }
                }
                i += cols;
            }
        };
        if self.threads == 1 || n_chunks == 1 || n * k * t < MIN_PARALLEL_MACS {
            (0..n_chunks).for_each(|c| job(c, 0));
        } else {
            self.pool.for_each(n_chunks, &job);
        }
    }

    fn embed(&self, out: &mut [f32], table: &Tensor, tokens: &[u32]) {
        let (rows, k) = (table.rows(), table.cols());
        assert_eq!(
            out.len(),
            tokens.len() * k,
            "embed: out has {} values, want {} x {k}",
            out.len(),
            tokens.len()
        );
        for (o, &tok) in out.chunks_exact_mut(k.max(1)).zip(tokens) {
            assert!(
                (tok as usize) < rows,
                "embed: token id {tok} is outside the table ({rows} rows)"
            );
            table
                .dequantize_row(tok as usize, o)
                .unwrap_or_else(|e| panic!("embed {}: {e}", table.name));
        }
    }

    fn rmsnorm(&self, out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
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
            // SAFETY: self.isa is Avx2 only if Isa::available() confirmed AVX2/FMA/F16C.
            Isa::Avx2 => unsafe { ops::avx2::rmsnorm(out, x, w, eps) },
            _ => reference::rmsnorm(out, x, w, eps),
        }
    }

    fn rope(
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
            _ => {
                let mut cs = self.rope_cs.lock().unwrap_or_else(|e| e.into_inner());
                ops::rope(x, t, n_heads, head_dim, pos0, rope, &mut cs)
            }
        }
    }

    fn attention(&self, out: &mut [f32], q: &[f32], k: &[f32], v: &[f32], s: &AttnShape) {
        ops::check_attention(out, q, k, v, s);
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                let hd = s.head_dim;
                let items = s.t * s.n_heads;
                let outp = SyncPtr(out.as_mut_ptr());
                // llama.cpp multiplies probabilities by V with tinyBLAS when the batch has >= 2
                // tokens and head_dim % 4 == 0, else with vec_dot_f32; the two sum in different
                // orders, and we follow whichever it would use.
                let batched = s.t >= 2 && hd % 4 == 0;
                let job = |item: usize, tid: usize| {
                    let (r, h) = (item / s.n_heads, item % s.n_heads);
                    let mut scores = self.scores[tid].lock().unwrap_or_else(|e| e.into_inner());
                    // One row of keys, rounded up to whole blocks of 8 (the softmax works on
                    // 8-aligned blocks of positions).
                    let need = (s.pos0 + s.t).div_ceil(8) * 8;
                    if scores.len() < need {
                        scores.resize(need, 0.0);
                    }
                    // SAFETY: item (r, h) owns out[item*hd .. (item+1)*hd], inside `out`
                    // (check_attention); no other item touches it and run() joins before return.
                    let o =
                        unsafe { std::slice::from_raw_parts_mut(outp.get().add(item * hd), hd) };
                    let qh = &q[item * hd..][..hd];
                    // SAFETY: Avx2 is only selected when available; buffers checked above.
                    unsafe { ops::avx2::head(o, qh, k, v, s, r, h, &mut scores, batched) };
                };
                let work = items * (s.pos0 + s.t) * hd;
                if self.threads == 1 || items == 1 || work < MIN_PARALLEL_MACS {
                    (0..items).for_each(|i| job(i, 0));
                } else {
                    self.pool.for_each(items, &job);
                }
            }
            _ => reference::attention(out, q, k, v, s),
        }
    }

    fn silu_mul(&self, a: &mut [f32], b: &[f32]) {
        assert_eq!(a.len(), b.len(), "silu_mul: lengths differ");
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: Avx2 only when available.
            Isa::Avx2 => unsafe { ops::avx2::silu_mul(a, b) },
            _ => reference::silu_mul(a, b),
        }
    }

    fn add_assign(&self, a: &mut [f32], b: &[f32]) {
        assert_eq!(a.len(), b.len(), "add_assign: lengths differ");
        // Memory-bound and already vectorised by the compiler: the reference is the fast path.
        reference::add_assign(a, b)
    }
}
