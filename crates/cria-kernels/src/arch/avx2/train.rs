//! The AVX2 register tile of the training GEMMs (`cpu::train`): 6 rows x 16 columns of C in 12
//! ymm accumulators; per step of the shared dimension two B vectors are loaded and each row's A
//! value broadcast into 2 FMAs. Every output is one FMA chain over p in order, as the scalar
//! twin's `mul_add` chain (the same bits).

use std::arch::x86_64::*;

/// Rows of C per tile.
pub const MR: usize = 6;
/// Columns of C per tile (one B strip: two ymm).
pub const NR: usize = 16;

avx2_fn! {
    /// `c[i * ldc + l] += sum_p a[p * MR + i] * b[p * NR + l]` for i < MR, l < NR, p < kc (the
    /// scalar twin's contract).
    ///
    /// # Safety
    /// AVX2 + FMA present; `a` holds kc * MR values, `b` kc * NR, and rows 0..MR of `c` (`ldc`
    /// apart) NR values each, which no other thread touches during the call.
    pub(crate) unsafe fn tile(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize) {
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        for (i, r) in acc.iter_mut().enumerate() {
            r[0] = _mm256_loadu_ps(c.add(i * ldc));
            r[1] = _mm256_loadu_ps(c.add(i * ldc + 8));
        }
        for p in 0..kc {
            let b0 = _mm256_loadu_ps(b.add(p * NR));
            let b1 = _mm256_loadu_ps(b.add(p * NR + 8));
            let ap = a.add(p * MR);
            for (i, r) in acc.iter_mut().enumerate() {
                let g = _mm256_broadcast_ss(&*ap.add(i));
                r[0] = _mm256_fmadd_ps(g, b0, r[0]);
                r[1] = _mm256_fmadd_ps(g, b1, r[1]);
            }
        }
        for (i, r) in acc.iter().enumerate() {
            _mm256_storeu_ps(c.add(i * ldc), r[0]);
            _mm256_storeu_ps(c.add(i * ldc + 8), r[1]);
        }
    }
}
