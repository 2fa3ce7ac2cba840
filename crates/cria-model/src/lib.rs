//! cria-model: the LLaMA family as one config, its weights (GGUF or Hugging Face folder), and the
//! forward pass over preallocated buffers.

pub mod config;
pub mod forward;
pub mod lora;
pub mod lora_file;
pub mod lora_merge;
pub mod model;
pub mod names;

pub use config::{Config, RopeScaling};
pub use cria_kernels::{KvType, LoraAdapter, Weight};
pub use forward::{forward, forward_batch, KvCache, Logits, Probe, Scratch, SeqStep, UBATCH};
pub use lora::{ActiveLora, AdapterFile, AdapterFormat, Lora, LoraTensors, Target, MAX_LORA_RANK};
pub use model::{Layer, LoadOptions, Model, Source, Weights};
