//! Reading adapter files (PEFT folders, llama.cpp GGUF adapters) into `AdapterFile`.
//! PLACEHOLDER on main until the `lorafile` branch lands (it replaces this file).

use crate::lora::AdapterFile;
use cria_core::{Error, Result};
use std::path::Path;

impl AdapterFile {
    /// A PEFT adapter folder or a llama.cpp GGUF adapter.
    pub fn open(path: &Path) -> Result<AdapterFile> {
        Err(Error::msg(format!(
            "{}: reading adapter files is not on this branch yet",
            path.display()
        )))
    }
}
