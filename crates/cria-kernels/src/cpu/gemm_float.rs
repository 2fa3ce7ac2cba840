//! GEMM for float weights (F32, F16, BF16) in the file's layout. F16/BF16 matrices that
//! `prepare` repacked go to `gemm_half` instead; this serves F32 weights, and F16/BF16 with
//! repacking off (`CRIA_REPACK=0`) or not yet prepared.
//!
//! Activations stay f32 (no rounding to f16 as ggml does: more accurate, and the weight widening
//! is the only conversion in the inner loop). Weights are widened 8 at a time in registers
//! (F16C `vcvtph2ps`, BF16 a zero-extend and shift) and a register tile of `TR` rows x `TT`
//! tokens keeps 12 accumulators of 8 lanes in ymm registers: per 8 elements of k, 4 weight loads
//! and 3 activation loads feed 12 FMAs. Each accumulator is summed across lanes once at the end,
//! four rows at a time (`sum4`, a fixed order for every tile shape). The full tile's loop is
//! inline assembly because it needs all 16 ymm registers (see `main_4x3!`).
//!
//! Work items are (row block x token block) tiles of the output: a row block's weights and a
//! token block's activations are re-read from L1/L2 by every register tile inside the item.
//! Every output element is computed by one accumulator chain whose order depends only on k, so
//! results do not depend on the thread count.
//!
//! Scalar twin: on `Isa::Scalar` this returns false and matmul uses the per-element scalar dots
//! (tests/gemm_float.rs compares the two).

use super::{CpuBackend, SyncPtr};
#[cfg(target_arch = "x86_64")]
use crate::arch::avx2::gemm_float as avx2;
use cria_core::{DType, Tensor};

/// Register tile: rows x tokens (12 accumulators + 4 weights of the 16 ymm).
pub(crate) const TR: usize = 4;
pub(crate) const TT: usize = 3;
/// Rows per work item: a multiple of 16 so each 64-byte line of `out` belongs to one item.
const ROW_BLOCK: usize = 64;
/// Tokens per work item (a multiple of TT).
const TOK_BLOCK: usize = 48;

/// out (t, n) = x (t, k) @ w^T when this GEMM handles the case; false leaves it to the
/// per-row kernels of `matmul`.
pub(crate) fn gemm(b: &CpuBackend, out: &mut [f32], x: &[f32], w: &Tensor, t: usize) -> bool {
    // One token too: every token count then takes the same accumulation order, so a token's
    // result does not depend on the batch it is in (batched serving gives the same numbers as
    // a single request).
    if t == 0 || !b.isa().has_avx2() {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let (n, k) = (w.rows(), w.cols());
        if k == 0 {
            return false;
        }
        let run: unsafe fn(*mut f32, usize, &[f32], &[u8], usize, usize, usize, usize, usize) =
            match w.dtype {
                DType::F16 => avx2::block::<avx2::F16>,
                DType::BF16 => avx2::block::<avx2::Bf16>,
                DType::F32 => avx2::block::<avx2::F32>,
                _ => return false,
            };
        debug_assert_eq!(x.len(), t * k);
        debug_assert_eq!(out.len(), t * n);
        let wb = w.bytes();
        let n_rb = n.div_ceil(ROW_BLOCK);
        let n_tb = t.div_ceil(TOK_BLOCK);
        let outp = SyncPtr(out.as_mut_ptr());
        let job = |item: usize, _tid: usize| {
            // Row blocks vary fastest: consecutive items share a token block (kept in L2).
            let (rb, tb) = (item % n_rb, item / n_rb);
            let (r0, r1) = (rb * ROW_BLOCK, ((rb + 1) * ROW_BLOCK).min(n));
            let (t0, t1) = (tb * TOK_BLOCK, ((tb + 1) * TOK_BLOCK).min(t));
            // SAFETY: b.isa() == Avx2 means AVX2/FMA/F16C were detected. The item writes
            // out[tok * n + row] for tok in t0..t1, row in r0..r1 only: inside `out` (t*n) and
            // disjoint from every other item; the pool joins before `out`'s borrow ends.
            unsafe { run(outp.get(), n, x, wb, k, r0, r1, t0, t1) };
        };
        b.run_items(n_rb * n_tb, n * k * t, &job);
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (out, x, w);
        false
    }
}
