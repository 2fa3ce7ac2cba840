//! attention on the CPU backend.

use super::{CpuBackend, SyncPtr, MIN_PARALLEL_MACS};
use crate::isa::Isa;
use crate::{ops, reference, AttnShape};

pub(crate) fn attention(
    b: &CpuBackend,
    out: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: &AttnShape,
) {
    ops::check_attention(out, q, k, v, s);
    match b.isa {
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
                let mut scores = b.scores[tid].lock().unwrap_or_else(|e| e.into_inner());
                // One row of keys, rounded up to whole blocks of 8 (the softmax works on
                // 8-aligned blocks of positions).
                let need = (s.pos0 + s.t).div_ceil(8) * 8;
                if scores.len() < need {
                    scores.resize(need, 0.0);
                }
                // SAFETY: item (r, h) owns out[item*hd .. (item+1)*hd], inside `out`
                // (check_attention); no other item touches it and run() joins before return.
                let o = unsafe { std::slice::from_raw_parts_mut(outp.get().add(item * hd), hd) };
                let qh = &q[item * hd..][..hd];
                // SAFETY: Avx2 is only selected when available; buffers checked above.
                unsafe { ops::avx2::head(o, qh, k, v, s, r, h, &mut scores, batched) };
            };
            let work = items * (s.pos0 + s.t) * hd;
            if b.threads == 1 || items == 1 || work < MIN_PARALLEL_MACS {
                (0..items).for_each(|i| job(i, 0));
            } else {
                b.pool.for_each(items, &job);
            }
        }
        _ => reference::attention(out, q, k, v, s),
    }
}
