//! Block layouts and the scalar (reference) dequantizers/quantizers: this file is the spec that
//! every SIMD kernel in cria-kernels is tested against. Layouts follow ggml-common.h.

use crate::{DType, Error, Result};
use half::{bf16, f16};

/// Dequantizes `src` (whole blocks of `dtype`) into `dst`; `dst.len()` must be the element count.
pub fn dequantize(dtype: DType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    let need = dtype.bytes_for(dst.len())?;
    if src.len() != need {
        return Err(Error::msg(format!("dequantize {dtype}: {} bytes for {} elements, expected {need}", src.len(), dst.len())));
    }
    match dtype {
        DType::F32 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            }
        }
        DType::F16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f16::from_le_bytes([s[0], s[1]]).to_f32();
            }
        }
        DType::BF16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = bf16::from_le_bytes([s[0], s[1]]).to_f32();
            }
        }
        other => return Err(Error::Unsupported(format!("dequantize of tensor type {other}"))),
    }
    Ok(())
}
