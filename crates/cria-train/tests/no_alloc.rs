//! The ops allocate nothing: every forward and backward of the crate, run once over buffers made
//! beforehand, makes no heap allocation (counted by a global allocator). `rope_table` is the one
//! function that fills a Vec, and it is made once per batch layout, outside the step.
//!
//! One #[test] only: the counter is process-wide, so a second test running in parallel would be
//! counted too.

use cria_core::quantize::quantize_rows;
use cria_core::tensor::AlignedBuf;
use cria_core::{Bytes, DType, Tensor};
use cria_kernels::Rope;
use cria_train::attention::*;
use cria_train::loss::{cross_entropy, CrossEntropy, IGNORE};
use cria_train::matmul::*;
use cria_train::norm::*;
use cria_train::rope::*;
use cria_train::swiglu::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

struct Counting;
static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is an atomic
// and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNTING.load(Relaxed) {
            ALLOCS.fetch_add(1, Relaxed);
        }
        System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if COUNTING.load(Relaxed) {
            ALLOCS.fetch_add(1, Relaxed);
        }
        System.alloc_zeroed(l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if COUNTING.load(Relaxed) {
            ALLOCS.fetch_add(1, Relaxed);
        }
        System.realloc(p, l, new)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn filled(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

#[test]
fn no_op_allocates() {
    let (t, d, ff, rank, vocab) = (9, 64, 96, 4, 50);
    let (nh, nkv, hd) = (4, 2, 16);
    // Buffers: everything an op reads or writes, made here.
    let x = filled(t * d, 1);
    let w = filled(ff * d, 2);
    let (a, b) = (filled(rank * d, 3), filled(ff * rank, 4));
    let mut wq = vec![0u8; DType::Q8_0.bytes_for(ff * d).unwrap()];
    quantize_rows(DType::Q8_0, &w, &mut wq, d, None).unwrap();
    let wq = Tensor::new(
        "w",
        DType::Q8_0,
        vec![d, ff],
        Bytes::owned(AlignedBuf::from_slice(&wq)),
    )
    .unwrap();
    let (mut y, dy) = (vec![0f32; t * ff], filled(t * ff, 5));
    let (mut h, mut dh) = (vec![0f32; t * rank], vec![0f32; t * rank]);
    let (mut dx, mut dw, mut da, mut db) = (
        vec![0f32; t * d],
        vec![0f32; ff * d],
        vec![0f32; rank * d],
        vec![0f32; ff * rank],
    );
    let mut row = vec![0f32; d];
    let (nw, mut rstd, mut dnw) = (filled(d, 6), vec![0f32; t], vec![0f32; d]);
    let (mut g2, mut u2) = (vec![0f32; t * ff], vec![0f32; t * ff]);
    let q = filled(t * nh * hd, 7);
    let (k, v) = (filled(t * nkv * hd, 8), filled(t * nkv * hd, 9));
    let (mut out, mut att, mut lse) = (
        vec![0f32; q.len()],
        vec![0f32; nh * t * t],
        vec![0f32; t * nh],
    );
    let (mut dq, mut dk, mut dv) = (
        vec![0f32; q.len()],
        vec![0f32; k.len()],
        vec![0f32; v.len()],
    );
    let mut qr = q.clone();
    let rope = Rope::new(
        hd,
        10000.0,
        1.0,
        Some(vec![1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0, 8.0]),
        1.0,
        false,
    );
    let positions: Vec<usize> = (0..t).collect();
    let mut cs = Vec::new();
    rope_table(&rope, &positions, &mut cs);
    let logits = filled(t * vocab, 10);
    let mut dlogits = vec![0f32; logits.len()];
    let labels: Vec<i32> = (0..t as i32)
        .map(|i| if i == 2 { IGNORE } else { i * 5 })
        .collect();
    let mut ce = CrossEntropy::new(t, vocab).unwrap();
    let chunk = logits[..t * 10].to_vec();
    let mut dchunk = vec![0f32; chunk.len()];
    let (ms, ad) = (
        MatShape {
            t,
            rows: ff,
            cols: d,
        },
        AttnDims {
            t,
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
            scale: 0.25,
        },
    );
    let ls = LoraShape {
        mat: ms,
        rank,
        scale: 2.0,
    };

    ALLOCS.store(0, Relaxed);
    COUNTING.store(true, Relaxed);
    matmul_forward(&mut y, &x, &w, ms).unwrap();
    lora_forward(&mut y, &mut h, &x, &a, &b, ls).unwrap();
    matmul_backward(Some(&mut dx), Some(&mut dw), &dy, &x, &w, ms).unwrap();
    matmul_backward_dx_frozen(&mut dx, &dy, &wq, t, &mut row).unwrap();
    lora_backward(
        Some(&mut dx),
        &mut da,
        &mut db,
        &mut dh,
        &dy,
        &x,
        &h,
        &a,
        &b,
        ls,
    )
    .unwrap();
    rmsnorm_forward(&mut dx, &mut rstd, &x, &nw, 1e-5).unwrap();
    rmsnorm_backward(&mut dx, Some(&mut dnw), &x, &x, &nw, &rstd).unwrap();
    swiglu_forward(&mut y, &dy, &dy).unwrap();
    swiglu_backward(&mut g2, &mut u2, &y, &dy, &dy).unwrap();
    residual_forward(&mut g2, &y, &dy).unwrap();
    residual_backward(&mut g2, &mut u2, &dy).unwrap();
    rope_forward(&mut qr, t, nh, hd, &rope, &cs).unwrap();
    rope_backward(&mut qr, t, nh, hd, &rope, &cs).unwrap();
    attention_forward(&mut out, &mut att, &q, &k, &v, ad).unwrap();
    attention_backward(&mut dq, &mut dk, &mut dv, &out, &q, &k, &v, &att, ad).unwrap();
    flash_attention_forward(&mut out, &mut lse, &q, &k, &v, ad).unwrap();
    flash_attention_backward(&mut dq, &mut dk, &mut dv, &out, &q, &k, &v, &out, &lse, ad).unwrap();
    cross_entropy(&mut dlogits, &mut ce, &logits, &labels, 16).unwrap();
    ce.reset();
    ce.forward_chunk(&chunk, 0, &labels).unwrap();
    ce.backward_chunk(&mut dchunk, &chunk, 0, &labels, 0.1)
        .unwrap();
    COUNTING.store(false, Relaxed);
    assert_eq!(ALLOCS.load(Relaxed), 0, "the ops allocated");
    // The ops ran (and wrote what they should).
    assert!(dx
        .iter()
        .chain(&dw)
        .chain(&da)
        .chain(&db)
        .chain(&dq)
        .all(|v| v.is_finite()));
    assert!(da.iter().any(|&v| v != 0.0) && dk.iter().any(|&v| v != 0.0));
}
