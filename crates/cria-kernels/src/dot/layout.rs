//! Block geometry of the types the CPU kernels read, from ggml-common.h (all little-endian, no
//! padding). Byte offsets inside one block:
//!
//! ```text
//! | type    | bytes | elems | layout                                                           |
//! |---------|-------|-------|------------------------------------------------------------------|
//! | Q4_0    | 18    | 32    | d f16 @0, qs[16] @2: elem j = low nibble of qs[j], j+16 = high    |
//! | Q4_1    | 20    | 32    | d f16 @0, m f16 @2, qs[16] @4                                     |
//! | Q5_0    | 22    | 32    | d @0, qh u32 @2 (bit j = 5th bit of elem j), qs[16] @6            |
//! | Q5_1    | 24    | 32    | d @0, m @2, qh u32 @4, qs[16] @8                                  |
//! | Q8_0    | 34    | 32    | d @0, qs[32] i8 @2                                                |
//! | Q8_1    | 36    | 32    | d @0, s = d*sum(qs) @2, qs[32] @4                                  |
//! | IQ4_NL  | 18    | 32    | as Q4_0, nibbles index KVALUES_IQ4NL                              |
//! | Q2_K    | 84    | 256   | scales[16] @0 (lo: scale, hi: min), qs[64] @16, d @80, dmin @82   |
//! | Q3_K    | 110   | 256   | hmask[32] @0, qs[64] @32, scales[12] @96 (6-bit), d @108          |
//! | Q4_K    | 144   | 256   | d @0, dmin @2, scales[12] @4 (6-bit scale+min x8), qs[128] @16    |
//! | Q5_K    | 176   | 256   | d @0, dmin @2, scales[12] @4, qh[32] @16, qs[128] @48             |
//! | Q6_K    | 210   | 256   | ql[128] @0, qh[64] @128, scales[16] i8 @192, d @208               |
//! | IQ4_XS  | 136   | 256   | d @0, scales_h u16 @2, scales_l[4] @4, qs[128] @8                 |
//! | Q8_K    | 292   | 256   | d f32 @0, qs[256] i8 @4, bsums[16] i16 @260                       |
//! ```
//!
//! The IQ grid types (IQ2_XXS 66, IQ2_XS 74, IQ2_S 82, IQ3_XXS 98, IQ3_S 110, IQ1_S 50, IQ1_M 56
//! bytes per 256) are laid out in `cria_core::quant_iq`'s module doc.

pub const QK: usize = 32;
pub const QK_K: usize = 256;

pub const Q4_0_BYTES: usize = 18;
pub const Q4_1_BYTES: usize = 20;
pub const Q5_0_BYTES: usize = 22;
pub const Q5_1_BYTES: usize = 24;
pub const Q8_0_BYTES: usize = 34;
pub const Q8_1_BYTES: usize = 36;
pub const IQ4_NL_BYTES: usize = 18;
pub const Q2_K_BYTES: usize = 84;
pub const Q3_K_BYTES: usize = 110;
pub const Q4_K_BYTES: usize = 144;
pub const Q5_K_BYTES: usize = 176;
pub const Q6_K_BYTES: usize = 210;
pub const IQ4_XS_BYTES: usize = 136;
pub const Q8_K_BYTES: usize = 292;
pub const IQ2_XXS_BYTES: usize = 66;
pub const IQ2_XS_BYTES: usize = 74;
pub const IQ2_S_BYTES: usize = 82;
pub const IQ3_XXS_BYTES: usize = 98;
pub const IQ3_S_BYTES: usize = 110;
pub const IQ1_S_BYTES: usize = 50;
pub const IQ1_M_BYTES: usize = 56;

/// The 16 non-linear levels of IQ4_NL / IQ4_XS (ggml-common.h kvalues_iq4nl).
pub const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

#[cfg(test)]
mod tests {
    use super::*;
    use cria_core::DType;
    #[test]
    fn sizes_agree_with_cria_core() {
        for (t, b) in [
            (DType::Q4_0, Q4_0_BYTES),
            (DType::Q4_1, Q4_1_BYTES),
            (DType::Q5_0, Q5_0_BYTES),
            (DType::Q5_1, Q5_1_BYTES),
            (DType::Q8_0, Q8_0_BYTES),
            (DType::Q8_1, Q8_1_BYTES),
            (DType::IQ4_NL, IQ4_NL_BYTES),
            (DType::Q2_K, Q2_K_BYTES),
            (DType::Q3_K, Q3_K_BYTES),
            (DType::Q4_K, Q4_K_BYTES),
            (DType::Q5_K, Q5_K_BYTES),
            (DType::Q6_K, Q6_K_BYTES),
            (DType::IQ4_XS, IQ4_XS_BYTES),
            (DType::Q8_K, Q8_K_BYTES),
            (DType::IQ2_XXS, IQ2_XXS_BYTES),
            (DType::IQ2_XS, IQ2_XS_BYTES),
            (DType::IQ2_S, IQ2_S_BYTES),
            (DType::IQ3_XXS, IQ3_XXS_BYTES),
            (DType::IQ3_S, IQ3_S_BYTES),
            (DType::IQ1_S, IQ1_S_BYTES),
            (DType::IQ1_M, IQ1_M_BYTES),
        ] {
            assert_eq!(t.type_size(), b, "{t}");
        }
    }
}
