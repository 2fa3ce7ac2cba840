//! Hugging Face safetensors (single file or sharded with model.safetensors.index.json) over mmap.
