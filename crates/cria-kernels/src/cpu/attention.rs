//! attention on the CPU backend: an F32 cache goes through llama.cpp's exact non-flash
//! arithmetic (one (token, head) pair per work item); an F16, Q8_0 or Q4_0 cache through the
//! blocked online-softmax kernel (one (KV head, run of tokens) tile per work item).

use super::{CpuBackend, SyncPtr};
use crate::isa::Isa;
use crate::{ops, reference, AttnShape, KvSlice};

pub(crate) fn attention(
    b: &CpuBackend,
    out: &mut [f32],
    q: &[f32],
    k: KvSlice,
    v: KvSlice,
    s: &AttnShape,
) {
    crate::common::check_attention(out, q, k.len(), v.len(), s);
    assert_eq!(
        k.kv_type(),
        v.kv_type(),
        "attention: K cache is {} but V cache is {}",
        k.kv_type(),
        v.kv_type()
    );
    match (k, v) {
        (KvSlice::F32(k), KvSlice::F32(v)) => attention_f32(b, out, q, k, v, s),
        _ => attention_flash(b, out, q, k, v, s),
    }
}

fn attention_f32(b: &CpuBackend, out: &mut [f32], q: &[f32], k: &[f32], v: &[f32], s: &AttnShape) {
    match b.isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 => {
            let hd = s.head_dim;
            let items = s.t * s.n_heads;
            let outp = SyncPtr(out.as_mut_ptr());
            // llama.cpp multiplies probabilities by V with tinyBLAS when the batch has >= 2
            // tokens and head_dim % 4 == 0, else with vec_dot_f32; the two sum in different
            // orders, and we follow whichever it would use.
            let batched = s.t >= 2 && hd % 4 == 0;
            // One row of keys, rounded up to whole blocks of 8 (the softmax works on 8-aligned
            // blocks of positions), for every position the cache holds: sized once per cache,
            // not grown as the context fills.
            let kv_stride = s.n_kv_heads * hd;
            b.reserve_scratch((k.len() / kv_stride).max(s.pos0 + s.t).div_ceil(8) * 8);
            let job = |item: usize, tid: usize| {
                let (r, h) = (item / s.n_heads, item % s.n_heads);
                let mut scores = b.scores[tid].lock().unwrap_or_else(|e| e.into_inner());
                // SAFETY: item (r, h) owns out[item*hd .. (item+1)*hd], inside `out`
                // (check_attention); no other item touches it and run() joins before return.
                let o = unsafe { std::slice::from_raw_parts_mut(outp.get().add(item * hd), hd) };
                let qh = &q[item * hd..][..hd];
                // SAFETY: Avx2 is only selected when available; buffers checked above.
                unsafe { crate::arch::avx2::ops::head(o, qh, k, v, s, r, h, &mut scores, batched) };
            };
            b.run_items(items, items * (s.pos0 + s.t) * hd, &job);
        }
        // Portable: the reference's per-head computation (same numbers), heads in parallel,
        // scores in per-thread scratch sized once per cache (no allocation per token).
        _ => {
            let hd = s.head_dim;
            let items = s.t * s.n_heads;
            b.reserve_scratch((k.len() / (s.n_kv_heads * hd)).max(s.pos0 + s.t));
            let outp = SyncPtr(out.as_mut_ptr());
            let job = |item: usize, tid: usize| {
                let mut scores = b.scores[tid].lock().unwrap_or_else(|e| e.into_inner());
                // SAFETY: item (r, h) owns out[item*hd .. (item+1)*hd], inside `out`
                // (check_attention); no other item touches it and run() joins before return.
                let o = unsafe { std::slice::from_raw_parts_mut(outp.get().add(item * hd), hd) };
                let (r, h) = (item / s.n_heads, item % s.n_heads);
                let qh = &q[item * hd..][..hd];
                let (k, v) = (KvSlice::F32(k), KvSlice::F32(v));
                reference::attention_head(o, qh, k, v, s, r, h, &mut scores);
            };
            b.run_items(items, items * (s.pos0 + s.t) * hd, &job);
        }
    }
}

/// An F16, Q8_0 or Q4_0 cache: the flash tiles, a key block widened (or dequantized) to f32 once
/// per tile.
fn attention_flash(
    b: &CpuBackend,
    out: &mut [f32],
    q: &[f32],
    k: KvSlice,
    v: KvSlice,
    s: &AttnShape,
) {
    let hd = s.head_dim;
    if let Err(e) = k.kv_type().check_head_dim(hd) {
        panic!("attention: {e}");
    }
    let g = s.n_heads / s.n_kv_heads;
    let per_tile = ops::flash_tokens_per_tile(s);
    let n_qb = s.t.div_ceil(per_tile);
    let items = s.n_kv_heads * n_qb;
    #[cfg(target_arch = "x86_64")]
    let (simd, wide) = (
        b.isa.has_avx2() && hd % 8 == 0,
        b.isa == Isa::Avx512 && hd % 16 == 0,
    );
    #[cfg(target_arch = "x86_64")]
    let (kb, vb) = (
        ops::KvBytes::of(k, hd).expect("flash cache"),
        ops::KvBytes::of(v, hd).expect("flash cache"),
    );
    #[cfg(not(target_arch = "x86_64"))]
    let (simd, wide) = (false, false);
    // Sized for the largest tile of this shape: it does not depend on the context length.
    b.reserve_scratch(ops::flash_scratch_len(hd, per_tile * g));
    let outp = SyncPtr(out.as_mut_ptr());
    let job = |item: usize, tid: usize| {
        // Last token blocks first: under the causal mask they see the most keys, and handing
        // them out early balances the threads.
        let (qb, kvh) = (n_qb - 1 - item / s.n_kv_heads, item % s.n_kv_heads);
        let (r0, r1) = (qb * per_tile, ((qb + 1) * per_tile).min(s.t));
        let rows = (r1 - r0) * g;
        let mut buf = b.scores[tid].lock().unwrap_or_else(|e| e.into_inner());
        let mut f = ops::FlashBuf::new(&mut buf, hd, rows);
        if wide {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: Avx512 is only selected when available; hd % 16 == 0 checked above;
            // buffers checked by check_attention; the scratch has flash_scratch_len floats.
            unsafe {
                crate::arch::avx512::ops::flash_tile(q, &kb, &vb, s, kvh, r0, r1, &mut f)
            };
        } else if simd {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: Avx2 is only selected when available; hd % 8 == 0 checked above; buffers
            // checked by check_attention; the scratch has flash_scratch_len floats.
            unsafe {
                crate::arch::avx2::ops::flash_tile(q, &kb, &vb, s, kvh, r0, r1, &mut f)
            };
        } else {
            crate::arch::scalar::ops::flash_tile_scalar(q, k, v, s, kvh, r0, r1, &mut f);
        }
        for r in r0..r1 {
            // The g query heads of KV head kvh are contiguous in a token's output row.
            let at = (r * s.n_heads + kvh * g) * hd;
            // SAFETY: tile (qb, kvh) owns out[at .. at + g*hd] for its tokens r, inside `out`
            // (check_attention); no other tile writes there and the pool joins before return.
            let o = unsafe { std::slice::from_raw_parts_mut(outp.get().add(at), g * hd) };
            o.copy_from_slice(&f.acc[(r - r0) * g * hd..][..g * hd]);
        }
    };
    let work = s.t * s.n_heads * (s.pos0 + s.t).min(s.window.unwrap_or(usize::MAX)) * hd;
    b.run_items(items, work, &job);
}
