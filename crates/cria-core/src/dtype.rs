//! Element types as GGML numbers them (the ids are the on-disk values in GGUF), with their block
//! geometry: `block_size` elements are stored in `type_size` bytes. Layouts follow ggml-common.h.

use crate::{Error, Result};

#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F32,
    F16,
    BF16,
    F64,
    I8,
    I16,
    I32,
    I64,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    IQ1_M,
    TQ1_0,
    TQ2_0,
    MXFP4,
}

use DType::*;

/// (ggml id, dtype, name, block_size, type_size)
const TABLE: &[(u32, DType, &str, usize, usize)] = &[
    (0, F32, "F32", 1, 4),
    (1, F16, "F16", 1, 2),
    (2, Q4_0, "Q4_0", 32, 18),
    (3, Q4_1, "Q4_1", 32, 20),
    (6, Q5_0, "Q5_0", 32, 22),
    (7, Q5_1, "Q5_1", 32, 24),
    (8, Q8_0, "Q8_0", 32, 34),
    (9, Q8_1, "Q8_1", 32, 36),
    (10, Q2_K, "Q2_K", 256, 84),
    (11, Q3_K, "Q3_K", 256, 110),
    (12, Q4_K, "Q4_K", 256, 144),
    (13, Q5_K, "Q5_K", 256, 176),
    (14, Q6_K, "Q6_K", 256, 210),
    (15, Q8_K, "Q8_K", 256, 292),
    (16, IQ2_XXS, "IQ2_XXS", 256, 66),
    (17, IQ2_XS, "IQ2_XS", 256, 74),
    (18, IQ3_XXS, "IQ3_XXS", 256, 98),
    (19, IQ1_S, "IQ1_S", 256, 50),
    (20, IQ4_NL, "IQ4_NL", 32, 18),
    (21, IQ3_S, "IQ3_S", 256, 110),
    (22, IQ2_S, "IQ2_S", 256, 82),
    (23, IQ4_XS, "IQ4_XS", 256, 136),
    (24, I8, "I8", 1, 1),
    (25, I16, "I16", 1, 2),
    (26, I32, "I32", 1, 4),
    (27, I64, "I64", 1, 8),
    (28, F64, "F64", 1, 8),
    (29, IQ1_M, "IQ1_M", 256, 56),
    (30, BF16, "BF16", 1, 2),
    (34, TQ1_0, "TQ1_0", 256, 54),
    (35, TQ2_0, "TQ2_0", 256, 66),
    (39, MXFP4, "MXFP4", 32, 17),
];

impl DType {
    fn entry(self) -> &'static (u32, DType, &'static str, usize, usize) {
        TABLE
            .iter()
            .find(|e| e.1 == self)
            .expect("every DType is in TABLE")
    }
    pub fn from_ggml(id: u32) -> Option<DType> {
        TABLE.iter().find(|e| e.0 == id).map(|e| e.1)
    }
    pub fn ggml_id(self) -> u32 {
        self.entry().0
    }
    pub fn name(self) -> &'static str {
        self.entry().2
    }
    pub fn from_name(s: &str) -> Option<DType> {
        TABLE
            .iter()
            .find(|e| e.2.eq_ignore_ascii_case(s))
            .map(|e| e.1)
    }
    /// Elements per block.
    pub fn block_size(self) -> usize {
        self.entry().3
    }
    /// Bytes per block.
    pub fn type_size(self) -> usize {
        self.entry().4
    }
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }
    /// Bytes taken by `n` elements; an error when `n` is not a whole number of blocks or overflows.
    pub fn bytes_for(self, n: usize) -> Result<usize> {
        let bs = self.block_size();
        if n % bs != 0 {
            return Err(Error::msg(format!(
                "{} elements is not a multiple of the {} block size {}",
                n,
                self.name(),
                bs
            )));
        }
        (n / bs)
            .checked_mul(self.type_size())
            .ok_or_else(|| Error::msg("tensor size overflows"))
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn ids_round_trip() {
        for e in TABLE {
            assert_eq!(DType::from_ggml(e.0), Some(e.1));
            assert_eq!(e.1.ggml_id(), e.0);
            assert_eq!(DType::from_name(e.2), Some(e.1));
        }
        assert_eq!(DType::from_ggml(4), None); // Q4_2, removed from ggml
        assert_eq!(Q4_K.bytes_for(512).unwrap(), 288);
        assert!(Q4_K.bytes_for(100).is_err());
    }
}
