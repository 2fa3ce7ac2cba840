//! cria-core: the bottom of the workspace. Data types and their block layouts (the scalar
//! dequantizers here are the spec every kernel is tested against), GGUF and safetensors readers
//! over mmap, and the `Tensor` view the rest of cria passes around.

pub mod dtype;
pub mod error;
pub mod ftype;
pub mod gguf;
pub mod imatrix;
pub mod npy;
pub mod quant;
pub mod quant_iq;
pub mod quantize;
mod quantize_iq;
pub mod safetensors;
pub mod tensor;

pub use dtype::DType;
pub use error::{Error, Result};
pub use tensor::{Bytes, Tensor};
