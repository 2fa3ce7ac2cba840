//! The activation quantizers of `gemm_q`: one f32 row into A8 blocks (the weights of the
//! 32-element kinds) or A8K super-blocks (the K-quants and IQ4_XS), see its module doc.

use crate::dot::layout::{Q8_1_BYTES, Q8_K_BYTES, QK, QK_K};
use crate::Isa;
use cria_core::DType;

/// Bytes of an A8 activation block: 32 quants, d (f32) @32, sum of quants (i32) @36, and
/// Q8_1's s = f16(d * sum) (as f32) @40, which the Q4_1/Q5_1 min term uses as llama.cpp does.
pub const A8_BLOCK: usize = QK + 12;
/// Bytes of an A8K activation super-block: d (f32) @0, 256 quants @4, 8 sub-block sums (i16)
/// @260, 16 pairs (16 * group sum as i16, twice) @276. The i16 list there reads s0 s0 s1 s1 ..,
/// so the 4 bytes at `A8K_PAIR2 + 8j` are (s_2j, s_2j+1): the two-group pair the AVX-512 Q2_K,
/// Q3_K and Q6_K kernels' min and offset terms take per `vpdpwssd`, once per super-block.
pub const A8K_BLOCK: usize = 4 + QK_K + 16 + 64;
/// Offset of the (s_0, s_1) pair inside the doubled group sums of an A8K block.
pub const A8K_PAIR2: usize = 276 + 2;

/// Quantizes one f32 row into A8 blocks (`out.len() == x.len() / 32 * A8_BLOCK`), through the
/// ISA's Q8_1 converter, so the quants and d are exactly the plain path's Q8_0/Q8_1 ones (the
/// two share quants and d) and s is Q8_1's.
pub fn quantize_a8(isa: Isa, x: &[f32], out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if isa.has_avx2() {
        // One pass, no staging copy, F16C for the f16 rounding (tests: the same bytes as below).
        crate::arch::avx2::dot::quantize_a8(x, out, A8_BLOCK);
        return;
    }
    quantize_a8_generic(isa, x, out)
}

/// `quantize_a8` through the ISA's Q8_1 converter and a copy: the definition the fused AVX2
/// version is tested against.
pub fn quantize_a8_generic(isa: Isa, x: &[f32], out: &mut [u8]) {
    let nb = x.len() / QK;
    assert!(
        x.len() % QK == 0 && out.len() == nb * A8_BLOCK,
        "quantize_a8: bad sizes"
    );
    let kern = crate::dot::kernel(isa, DType::Q4_1).expect("Q4_1 kernel");
    let mut tmp = [0u8; Q8_1_BYTES * 8];
    // Eight blocks at a time through the Q8_1 converter (blocks are independent).
    for (xs, os) in x.chunks(QK * 8).zip(out.chunks_mut(A8_BLOCK * 8)) {
        let m = xs.len() / QK;
        (kern.from_float)(xs, &mut tmp[..m * Q8_1_BYTES]);
        for i in 0..m {
            let src = &tmp[i * Q8_1_BYTES..][..Q8_1_BYTES];
            let o = &mut os[i * A8_BLOCK..][..A8_BLOCK];
            o[..QK].copy_from_slice(&src[4..]);
            let h = |j: usize| half::f16::from_le_bytes([src[j], src[j + 1]]).to_f32();
            let sum: i32 = src[4..].iter().map(|&q| q as i8 as i32).sum();
            o[QK..QK + 4].copy_from_slice(&h(0).to_le_bytes());
            o[QK + 4..QK + 8].copy_from_slice(&sum.to_le_bytes());
            o[QK + 8..].copy_from_slice(&h(2).to_le_bytes());
        }
    }
}

/// Quantizes one f32 row into A8K super-blocks (`out.len() == x.len() / 256 * A8K_BLOCK`),
/// through the ISA's Q8_K converter (the plain path's quants and d).
pub fn quantize_a8k(isa: Isa, x: &[f32], out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if isa.has_avx2() {
        // Vectorised Q8_K rounding in one pass (tests: the same bytes as below).
        crate::arch::avx2::dot::quantize_a8k(x, out, A8K_BLOCK);
        return;
    }
    quantize_a8k_generic(isa, x, out)
}

/// `quantize_a8k` through the ISA's Q8_K converter and a copy: the definition the AVX2 version
/// is tested against.
pub fn quantize_a8k_generic(isa: Isa, x: &[f32], out: &mut [u8]) {
    let nb = x.len() / QK_K;
    assert!(
        x.len() % QK_K == 0 && out.len() == nb * A8K_BLOCK,
        "quantize_a8k: bad sizes"
    );
    let kern = crate::dot::kernel(isa, DType::Q4_K).expect("Q4_K kernel");
    let mut tmp = [0u8; Q8_K_BYTES];
    for (xs, o) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(A8K_BLOCK)) {
        (kern.from_float)(xs, &mut tmp);
        o[..4 + QK_K].copy_from_slice(&tmp[..4 + QK_K]);
        let bs16 = |g: usize| i16::from_le_bytes([tmp[260 + 2 * g], tmp[261 + 2 * g]]);
        for j in 0..8 {
            // |sum of 32 quants| <= 32 * 128: fits i16.
            let s = bs16(2 * j) + bs16(2 * j + 1);
            o[260 + 2 * j..][..2].copy_from_slice(&s.to_le_bytes());
        }
        for g in 0..16 {
            // |16 * sum of 16 quants| <= 16 * 16 * 127 = 32512: fits i16.
            let v = (16 * bs16(g)).to_le_bytes();
            o[276 + 4 * g..][..4].copy_from_slice(&[v[0], v[1], v[0], v[1]]);
        }
    }
}
