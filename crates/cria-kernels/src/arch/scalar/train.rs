//! The scalar twin of the training GEMMs' register tile (`cpu::train`): the same packed panels,
//! the same operation per output element (one `mul_add` chain over the shared dimension, in
//! order, starting from the element's value in C), hence the same bits as the AVX2 and AVX-512
//! tiles whatever the tile shapes.

/// Rows of C per tile.
pub const MR: usize = 4;
/// Columns of C per tile (one B strip).
pub const NR: usize = 16;

/// `c[i * ldc + l] += sum_p a[p * MR + i] * b[p * NR + l]` for i < MR, l < NR, p < kc: `a` is
/// an A panel (kc x MR, row i of the tile interleaved), `b` one B strip (kc x NR), each output a
/// fused multiply-add chain over p in increasing order.
pub fn tile(kc: usize, a: &[f32], b: &[f32], c: &mut [f32], ldc: usize) {
    let (a, b) = (&a[..kc * MR], &b[..kc * NR]);
    for i in 0..MR {
        let ci = &mut c[i * ldc..i * ldc + NR];
        let mut acc = [0f32; NR];
        acc.copy_from_slice(ci);
        for (ap, bp) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
            let g = ap[i];
            for (s, &v) in acc.iter_mut().zip(bp) {
                *s = g.mul_add(v, *s);
            }
        }
        ci.copy_from_slice(&acc);
    }
}
