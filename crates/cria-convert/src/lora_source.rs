//! A [`Source`] with LoRA adapters folded in (`cria merge`): every weight an adapter targets
//! comes out as W + s B A (`cria_model::lora_merge`), modules_to_save replacements take the
//! place of the embedding table or the output head, and a tied head that the adapters change
//! becomes an `output.weight` of its own. Everything else is the base's tensor as it is, so
//! `quantize`, `write_gguf` and `export` take the result unchanged.
//!
//! The merged tensors' type: F32 or F16 as asked; by default llama.cpp's `llama-export-lora`
//! rule (F32 where the base tensor is F32, else F16).

use crate::export::Meta;
use crate::source::{Source, SrcTensor};
use cria_core::gguf::Value;
use cria_core::{quant, DType, Error, Result};
use cria_model::lora::BaseShape;
use cria_model::lora_merge::Merge;
use cria_model::AdapterFile;
use std::borrow::Cow;

/// `base` with adapters merged.
pub struct LoraSource<'a> {
    base: Box<dyn Source + 'a>,
    merge: Merge,
    tensors: Vec<SrcTensor>,
    /// The base tensor each of `tensors` starts from (an untied head: the embedding table).
    from: Vec<usize>,
    threads: usize,
    /// `general.file_type` when the merge made F32 or F16 the type holding most bytes (the
    /// base's would misname the file); None: the base's.
    file_type: Option<u32>,
}

impl<'a> LoraSource<'a> {
    /// `base` with `adapters` (each at the user's scale) merged, checked against its tensors;
    /// merged tensors as `merged_type` (F32 or F16; None: F32 where the base tensor is F32,
    /// else F16). Merging runs on `threads` threads.
    pub fn new(
        base: Box<dyn Source + 'a>,
        adapters: &[(AdapterFile, f32)],
        merged_type: Option<DType>,
        threads: usize,
    ) -> Result<Self> {
        if let Some(d) = merged_type {
            if !matches!(d, DType::F32 | DType::F16) {
                return Err(Error::Unsupported(format!(
                    "merged tensors as {d} (f32 or f16)"
                )));
            }
        }
        let meta = base.metadata();
        let m = Meta(&meta);
        let arch = m.str("general.architecture").unwrap_or("llama");
        let k = |s: &str| format!("{arch}.{s}");
        let n_heads = m.need(&k("attention.head_count"))? as usize;
        let n_kv_heads = m
            .u64(&k("attention.head_count_kv"))?
            .map_or(n_heads, |v| v as usize);
        let n_layers = m.need(&k("block_count"))? as usize;
        let list = base.tensors();
        let find = |name: &str| list.iter().position(|t| t.name == name);
        let embd = find("token_embd.weight")
            .ok_or_else(|| Error::msg("the base model has no token_embd.weight"))?;
        let tied = find("output.weight").is_none();
        let rows_cols = |t: &SrcTensor| match t.ne.as_slice() {
            [c, r, rest @ ..] if rest.iter().all(|&d| d == 1) => Some((*r, *c)),
            _ => None,
        };
        let shape = |name: &str| {
            let i = match (name, tied) {
                ("output.weight", true) => Some(embd),
                _ => find(name),
            };
            rows_cols(&list[i?])
        };
        let merge = Merge::new(
            adapters,
            &BaseShape {
                n_layers,
                // A source is GGUF as llama.cpp writes it: Q/K rows interleaved.
                interleaved: true,
                n_heads,
                n_kv_heads,
                shape: Box::new(shape),
            },
        )?;
        let out_type = |t: &SrcTensor| {
            merged_type.unwrap_or(if t.dtype == DType::F32 {
                DType::F32
            } else {
                DType::F16
            })
        };
        let mut tensors = Vec::with_capacity(list.len() + 1);
        let mut from = Vec::with_capacity(list.len() + 1);
        for (i, t) in list.iter().enumerate() {
            let mut t = t.clone();
            if merge.changes(&t.name) {
                t.dtype = out_type(&t);
            }
            tensors.push(t);
            from.push(i);
            // The head a tied model gets, after the table (as convert_hf_to_gguf orders them).
            if i == embd && merge.unties(tied) {
                let mut head = list[embd].clone();
                head.name = "output.weight".into();
                head.dtype = out_type(&head);
                tensors.push(head);
                from.push(embd);
            }
        }
        let bytes = |t: &SrcTensor| t.dtype.bytes_for(t.n_elements()).unwrap_or(0);
        let main = cria_core::ftype::main_dtype(tensors.iter().map(|t| (t.dtype, bytes(t))));
        let file_type = match main {
            Some(DType::F32) => Some(0),
            Some(DType::F16) => Some(1),
            _ => None,
        };
        drop(meta);
        Ok(LoraSource {
            base,
            merge,
            tensors,
            from,
            threads: threads.max(1),
            file_type,
        })
    }
}

impl Source for LoraSource<'_> {
    fn metadata(&self) -> Cow<'_, [(String, Value)]> {
        let meta = self.base.metadata();
        let Some(ft) = self.file_type else {
            return meta;
        };
        let mut meta = meta.into_owned();
        match meta.iter_mut().find(|(k, _)| k == "general.file_type") {
            Some((_, v)) => *v = Value::U32(ft),
            None => meta.push(("general.file_type".into(), Value::U32(ft))),
        }
        Cow::Owned(meta)
    }

    fn tensors(&self) -> &[SrcTensor] {
        &self.tensors
    }

    fn bytes(&self, i: usize) -> Result<Cow<'_, [u8]>> {
        let t = &self.tensors[i];
        let j = self.from[i];
        let src = &self.base.tensors()[j];
        if t.name == src.name && !self.merge.changes(&t.name) {
            return self.base.bytes(j);
        }
        let mut v = vec![0f32; t.n_elements()];
        match self.merge.replacement(&t.name) {
            Some(r) => v.copy_from_slice(&r.to_f32_vec()?),
            None => quant::dequantize(src.dtype, &self.base.bytes(j)?, &mut v)?,
        }
        self.merge.add_terms(&t.name, &mut v, self.threads)?;
        if t.dtype == DType::F32 {
            return Ok(Cow::Owned(bytemuck::cast_slice(&v).to_vec()));
        }
        let mut out = vec![0u8; t.dtype.bytes_for(v.len())?];
        quant::quantize(t.dtype, &v, &mut out)?;
        Ok(Cow::Owned(out))
    }

    fn release_pages(&self) {
        self.base.release_pages()
    }
}
