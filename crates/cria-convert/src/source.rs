//! Where tensors come from: a model read one tensor at a time.

use cria_core::gguf::{GgufFile, Value};
use cria_core::{DType, Result};
use std::borrow::Cow;

/// One tensor of a source: its GGUF name, element type as stored, and shape (GGML order: `ne[0]`
/// is the row length).
#[derive(Clone, Debug, PartialEq)]
pub struct SrcTensor {
    pub name: String,
    pub dtype: DType,
    pub ne: Vec<usize>,
}

impl SrcTensor {
    pub fn n_elements(&self) -> usize {
        self.ne.iter().product()
    }
}

/// A model seen as GGUF: metadata in the order a GGUF file would hold it, and tensors (names,
/// layout and order as llama.cpp's GGUF has them) whose bytes are produced one at a time.
pub trait Source: Sync {
    /// The GGUF metadata (`general.*`, `llama.*`, `tokenizer.*`), in file order.
    fn metadata(&self) -> Cow<'_, [(String, Value)]>;
    /// The tensors, in file order.
    fn tensors(&self) -> &[SrcTensor];
    /// Tensor `i`'s data in its stored type and GGML layout (borrowed from an mmap where it can
    /// be; HF sources return owned bytes after any re-layout, e.g. the Q/K row permutation).
    fn bytes(&self, i: usize) -> Result<Cow<'_, [u8]>>;
    /// Drops from memory the pages of mapped input read so far (a hint; `cria quantize` calls it
    /// as it goes so the resident set stays near one tensor, not the model). Default: nothing.
    fn release_pages(&self) {}
}

/// A GGUF file (split files opened as one) as a [`Source`].
pub struct GgufSource {
    pub file: GgufFile,
    tensors: Vec<SrcTensor>,
}

impl GgufSource {
    pub fn open(path: &std::path::Path) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let tensors = file
            .tensors
            .iter()
            .map(|t| SrcTensor {
                name: t.name.clone(),
                dtype: t.dtype,
                ne: t.ne.clone(),
            })
            .collect();
        Ok(Self { file, tensors })
    }
}

impl Source for GgufSource {
    fn metadata(&self) -> Cow<'_, [(String, Value)]> {
        Cow::Owned(
            self.file
                .metadata
                .iter()
                .filter(|(k, _)| !k.starts_with("split."))
                .cloned()
                .collect(),
        )
    }
    fn tensors(&self) -> &[SrcTensor] {
        &self.tensors
    }
    fn bytes(&self, i: usize) -> Result<Cow<'_, [u8]>> {
        Ok(Cow::Borrowed(self.file.tensors[i].bytes()))
    }
    fn release_pages(&self) {
        self.file.release_pages_except(&[]);
    }
}
