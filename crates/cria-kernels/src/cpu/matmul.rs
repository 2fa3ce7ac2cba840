//! matmul on the CPU backend (see the module doc of `cpu`).

use super::{CpuBackend, SyncPtr};
use cria_core::{DType, Tensor};

/// Weight bytes per work item: small enough for many items per thread on 576-wide layers, large
/// enough to amortise the hand-out, and inside L1/L2 while a group of tokens passes over it.
const CHUNK_BYTES: usize = 16 * 1024;
/// Cap on rows per work item (bounds the on-stack result tile; tiny rows would otherwise make
/// items of thousands of rows).
const MAX_CHUNK_ROWS: usize = 256;

/// The layout `matmul` wants for a weight matrix on AVX2: quantized types repacked into 8-row
/// groups (`gemm_q`), F16/BF16 into 16-row panels (`gemm_half`), F32 as the file has it.
pub(crate) fn prepare(b: &CpuBackend, w: Tensor) -> cria_core::Result<Tensor> {
    Ok(super::gemm_half::prepare(b, super::gemm_q::prepare(b, w)))
}

/// Panics with the tensor's name when out or x do not fit (t, w.rows()) / (t, w.cols()).
pub(crate) fn check_shapes(out: &[f32], x: &[f32], w: &Tensor, t: usize) {
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
}

pub(crate) fn matmul(b: &CpuBackend, out: &mut [f32], x: &[f32], w: &Tensor, t: usize) {
    check_shapes(out, x, w, t);
    let (n, k) = (w.rows(), w.cols());
    if t == 0 || n == 0 {
        return;
    }
    if let Some(p) = super::gemm_q::packed(w) {
        super::gemm_q::matmul(b, out, x, p, t);
        return;
    }
    if let Some(p) = super::gemm_half::packed(w) {
        super::gemm_half::matmul(b, out, x, p, t);
        return;
    }
    // Float weights with several tokens: a register-tiled GEMM (when it takes the case).
    if super::gemm_float::gemm(b, out, x, w, t) {
        return;
    }
    let kern = b.kernel(w.dtype).unwrap_or_else(|| {
        panic!("cria: the CPU backend has no matmul kernel for {} (tensor {}); callers must check Backend::supports", w.dtype, w.name)
    });
    let ab = kern
        .vec_dot_type
        .bytes_for(k)
        .unwrap_or_else(|e| panic!("matmul {}: {e}", w.name));
    let mut act_guard = b.act.lock().unwrap_or_else(|e| e.into_inner());
    let a: &[u8] = if kern.vec_dot_type == DType::F32 {
        bytemuck::cast_slice(x)
    } else {
        if act_guard.len() < t * ab {
            act_guard.resize(t * ab, 0);
        }
        b.convert_rows(x, t, k, &mut act_guard[..t * ab], ab, &kern.from_float);
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
    b.run_items(n_chunks, n * k * t, &job);
}
