//! `cria merge -m BASE --lora A[:S] [--lora B[:S]] -o OUT [--type TYPE | --hf]`: a model with
//! LoRA adapters folded into its weights (`cria_convert::lora_source`), written as a GGUF or,
//! with --hf, as a Hugging Face folder.
//!
//! Types: without --type, as llama.cpp's `llama-export-lora` writes it: each merged tensor F16
//! (F32 where the base tensor is F32), every other tensor as the base has it. `--type TYPE`
//! quantizes the merged model as `cria quantize` does (merged tensors from f32). `--hf` writes
//! safetensors in `--dtype` (default as `cria export`: the matrices' float type, f16 for a
//! quantized base).

use anyhow::{Context, Result};
use clap::Args;
use cria_convert::convert::{ConvertOptions, HfSource, OutType};
use cria_convert::export::{self, ExportOptions};
use cria_convert::lora_source::LoraSource;
use cria_convert::mix::Ftype;
use cria_convert::quantize::{self, Options};
use cria_convert::source::{GgufSource, Source};
use cria_core::safetensors::SafetensorsModel;
use cria_core::DType;
use cria_engine::lora::LoraSpec;
use cria_model::AdapterFile;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct MergeArgs {
    /// The base model: a .gguf file, a Hugging Face folder, hf:ORG/REPO[:FILE] or a short name.
    #[arg(short = 'm', long = "model", value_name = "MODEL")]
    pub model: String,
    /// An adapter to merge (repeatable): a PEFT folder or a llama.cpp GGUF adapter, at SCALE
    /// (default 1) times the file's alpha / rank.
    #[arg(long = "lora", value_name = "PATH[:SCALE]", required = true, value_parser = crate::parse_lora)]
    pub lora: Vec<LoraSpec>,
    /// The GGUF file to write (with --hf: the folder).
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    pub out: PathBuf,
    /// Quantize the merged model to TYPE, as `cria quantize` names them (F32, F16, Q8_0,
    /// Q4_K_M...). Default: merged tensors F16 (F32 where the base's are), the rest as they are.
    #[arg(long = "type", value_name = "TYPE", conflicts_with = "hf")]
    pub ftype: Option<String>,
    /// Write a Hugging Face folder (config.json, safetensors, tokenizer files) instead.
    #[arg(long)]
    pub hf: bool,
    /// With --hf: the safetensors type, f32, f16 or bf16.
    #[arg(long, value_name = "TYPE", requires = "hf", value_parser = parse_dtype)]
    pub dtype: Option<DType>,
    /// With --type: accept a quantized base for a quantized TYPE (quality suffers; float types
    /// never need it).
    #[arg(long, requires = "ftype")]
    pub allow_requantize: bool,
    /// With --hf: replace OUT if it exists and is not empty.
    #[arg(long, requires = "hf")]
    pub force: bool,
    /// With a Hugging Face folder as the base: tokenizer.ggml.pre for a BPE tokenizer whose
    /// pre-tokenizer llama.cpp's hash table does not know (as `cria convert --tokenizer-pre`).
    #[arg(long, value_name = "NAME")]
    pub tokenizer_pre: Option<String>,
    /// Threads (default: all cores).
    #[arg(short = 't', long = "threads", value_name = "N", value_parser = crate::run::thread_count)]
    pub threads: Option<usize>,
}

/// The base as a source: a GGUF file, or a Hugging Face folder seen as `cria convert` writes it
/// with its matrices' stored type kept (f32 stays f32: the converter's `auto` would round it to
/// f16).
fn open_base(path: &Path, tokenizer_pre: Option<String>) -> Result<Box<dyn Source>> {
    if !path.is_dir() {
        return Ok(Box::new(
            GgufSource::open(path).with_context(|| format!("reading {}", path.display()))?,
        ));
    }
    let reading = || format!("reading the Hugging Face folder {}", path.display());
    let st = SafetensorsModel::open_folder(path).with_context(reading)?;
    let f32 = st
        .tensors
        .iter()
        .find(|t| t.ne.len() == 2)
        .is_some_and(|t| t.dtype == DType::F32);
    let opts = ConvertOptions {
        outtype: if f32 { OutType::F32 } else { OutType::Auto },
        tokenizer_pre,
    };
    drop(st);
    Ok(Box::new(
        HfSource::open_with(path, opts).with_context(reading)?,
    ))
}

fn parse_dtype(s: &str) -> Result<DType, String> {
    export::parse_dtype(s).map_err(|e| e.to_string())
}

pub fn run(a: &MergeArgs) -> Result<()> {
    let ftype = a.ftype.as_deref().map(Ftype::parse).transpose()?;
    let threads = a.threads.unwrap_or_else(num_cpus::get).max(1);
    let base_path = crate::fetch::resolve(Some(&a.model))?.path;
    let base = open_base(&base_path, a.tokenizer_pre.clone())?;
    let adapters = a
        .lora
        .iter()
        .map(|s| {
            let f = AdapterFile::open(&s.path)
                .with_context(|| format!("reading the LoRA adapter {}", s.path.display()))?;
            Ok((f, s.scale))
        })
        .collect::<Result<Vec<_>>>()?;
    let names: Vec<String> = a
        .lora
        .iter()
        .map(|s| s.path.display().to_string())
        .collect();
    // Merged tensors stay f32 where something else decides the output type.
    let merged_type = (ftype.is_some() || a.hf).then_some(DType::F32);
    let src = LoraSource::new(base, &adapters, merged_type, threads)
        .with_context(|| format!("merging {} into {}", names.join(", "), base_path.display()))?;
    drop(adapters);
    let t0 = std::time::Instant::now();
    let writing = || format!("writing {}", a.out.display());
    let bar = indicatif::ProgressBar::new(src.tensors().len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {wide_msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let what = if a.hf {
        let opts = ExportOptions {
            dtype: a.dtype,
            force: a.force,
            ..Default::default()
        };
        let s = export::export(&src, &a.out, &opts, &mut |i, _, name| {
            src.release_pages();
            bar.set_position(i as u64);
            bar.set_message(name.to_string());
        });
        bar.finish_and_clear();
        let s = s.with_context(writing)?;
        for w in &s.warnings {
            eprintln!("warning: {w}");
        }
        format!(
            "a Hugging Face folder ({} tensors{})",
            s.n_tensors,
            s.dtype.map(|d| format!(" as {d}")).unwrap_or_default()
        )
    } else if let Some(ftype) = ftype {
        let float = matches!(ftype.default, DType::F32 | DType::F16 | DType::BF16);
        let mut opts = Options::new(ftype);
        opts.allow_requantize = a.allow_requantize || float;
        opts.threads = threads;
        let r = quantize::quantize(&src, &a.out, &opts, &mut |p| {
            bar.set_message(format!("{} {} -> {}", p.name, p.from, p.to));
            bar.inc(1);
        });
        bar.finish_and_clear();
        let r = r.with_context(writing)?;
        format!("{} ({} tensors)", ftype.name, r.n_tensors)
    } else {
        let tensors = src.tensors();
        let files = cria_convert::convert::write_gguf(&src, &a.out, None, |i| {
            src.release_pages();
            bar.set_message(tensors[i].name.clone());
            bar.inc(1);
        });
        bar.finish_and_clear();
        files.with_context(writing)?;
        format!("a GGUF ({} tensors)", tensors.len())
    };
    eprintln!(
        "merged {} into {}: wrote {} as {what} in {:.1}s",
        names.join(", "),
        base_path.display(),
        a.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
