//! cria-convert: making model files. Every command here reads a model one tensor at a time
//! through [`source::Source`] and writes one tensor at a time, so memory stays near the largest
//! tensor, not the model.
//!
//! - [`quantize`]: GGUF or HF folder in, GGUF of any type out, with llama.cpp's per-tensor type
//!   rules ([`mix`]) and importance matrices; byte-identical to `llama-quantize`.
//! - [`convert`]: HF folder (config.json, safetensors, tokenizer) to GGUF, as llama.cpp's
//!   `convert_hf_to_gguf.py` writes it.
//! - [`export`]: any model cria reads to an HF folder that transformers loads.
//! - [`lora_source`]: any source with LoRA adapters merged (`cria merge`).

pub mod convert;
pub mod convert_vocab;
pub mod export;
pub mod export_tokenizer;
pub mod lora_source;
pub mod mix;
pub mod quantize;
pub mod source;
