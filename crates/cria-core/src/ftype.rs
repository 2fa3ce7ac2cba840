//! What a model file's quantization is called: llama.cpp's `general.file_type` names, else the
//! element type holding the most bytes.

use crate::gguf::GgufFile;
use crate::DType;

/// llama.cpp's `llama_ftype` (general.file_type) names.
pub fn ftype_name(t: u64) -> Option<&'static str> {
    Some(match t {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        _ => return None,
    })
}

/// The element type holding the most bytes of `tensors`, (type, bytes) pairs (on a tie, the type first seen later);
/// None when there are none.
pub fn main_dtype(tensors: impl IntoIterator<Item = (DType, usize)>) -> Option<DType> {
    let mut by: Vec<(DType, usize)> = Vec::new();
    for (dtype, bytes) in tensors {
        match by.iter_mut().find(|(d, _)| *d == dtype) {
            Some((_, n)) => *n += bytes,
            None => by.push((dtype, bytes)),
        }
    }
    by.into_iter().max_by_key(|&(_, n)| n).map(|(d, _)| d)
}

/// A GGUF's quantization: its `general.file_type` name, else the type holding the most bytes
/// of all its tensors; None for a file without either.
pub fn gguf_quant_name(g: &GgufFile) -> Option<&'static str> {
    g.get_u64("general.file_type")
        .and_then(ftype_name)
        .or_else(|| {
            main_dtype(g.tensors.iter().map(|t| (t.dtype, t.bytes().len()))).map(DType::name)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Tensor;

    #[test]
    fn ftype_names() {
        assert_eq!(ftype_name(3), Some("Q4_1"));
        assert_eq!(ftype_name(15), Some("Q4_K_M"));
        assert_eq!(ftype_name(5), None);
    }

    #[test]
    fn main_dtype_counts_bytes_not_tensors() {
        let f = |name: &str, n: usize| Tensor::from_f32(name, vec![n], &vec![0.0; n]).unwrap();
        let small = |name: &str| {
            Tensor::new(
                name,
                DType::Q8_0,
                vec![32],
                crate::Bytes::owned(crate::tensor::AlignedBuf::zeroed(34)),
            )
            .unwrap()
        };
        let ts = [small("a"), small("b"), f("c", 64)];
        let of = |ts: &[Tensor]| main_dtype(ts.iter().map(|t| (t.dtype, t.bytes().len())));
        assert_eq!(of(&ts), Some(DType::F32));
        assert_eq!(of(&ts[..2]), Some(DType::Q8_0));
        assert_eq!(of(&[]), None);
    }
}
