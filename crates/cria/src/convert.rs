//! `cria convert HF_FOLDER OUT.gguf [--outtype T] [--split-max-size N]`: a Hugging Face LLaMA
//! folder to the GGUF llama.cpp's `convert_hf_to_gguf.py` would write, one tensor in memory at a
//! time (cria_convert::convert).

use anyhow::{Context, Result};
use clap::Args;
use cria_convert::convert::{parse_split_size, write_gguf, ConvertOptions, HfSource};
use cria_convert::source::Source;
use std::path::PathBuf;

#[derive(Args)]
pub struct ConvertArgs {
    /// The Hugging Face model folder (config.json, *.safetensors, tokenizer.json or
    /// tokenizer.model, tokenizer_config.json).
    #[arg(value_name = "HF_FOLDER")]
    pub input: PathBuf,
    /// The GGUF to write (with --split-max-size: OUT-0000i-of-0000n.gguf beside it).
    #[arg(value_name = "OUT.gguf")]
    pub out: PathBuf,
    /// Type of the matrices: f32, f16, bf16, q8_0, or auto (bf16/f16 as the weights are stored,
    /// else f16). Norms and other 1-D tensors stay f32.
    #[arg(long, value_name = "TYPE", default_value = "auto")]
    pub outtype: String,
    /// Split the output into files of at most this many bytes of tensor data (K, M, G = powers
    /// of 1000), as llama.cpp's converter does.
    #[arg(long, value_name = "SIZE")]
    pub split_max_size: Option<String>,
    /// tokenizer.ggml.pre for a BPE tokenizer whose pre-tokenizer llama.cpp's hash table does not
    /// know (e.g. llama-bpe); by default such a tokenizer is refused, as by the converter.
    #[arg(long, value_name = "NAME")]
    pub tokenizer_pre: Option<String>,
}

pub fn run(a: &ConvertArgs) -> Result<()> {
    let split = a
        .split_max_size
        .as_deref()
        .map(parse_split_size)
        .transpose()?;
    let opts = ConvertOptions {
        outtype: a.outtype.parse()?,
        tokenizer_pre: a.tokenizer_pre.clone(),
    };
    let src = HfSource::open_with(&a.input, opts)
        .with_context(|| format!("reading {}", a.input.display()))?;
    let tensors = src.tensors();
    let total: u64 = tensors
        .iter()
        .map(|t| t.dtype.bytes_for(t.n_elements()).unwrap_or(0) as u64)
        .sum();
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(tensors.len() as u64),
        indicatif::ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} tensors {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let files = write_gguf(&src, &a.out, split, |i| {
        bar.set_message(tensors[i].name.clone());
        bar.inc(1);
    });
    bar.finish_and_clear();
    let files = files.with_context(|| format!("writing {}", a.out.display()))?;
    for f in &files {
        eprintln!("wrote {}", f.display());
    }
    eprintln!(
        "{} tensors, {:.1} MB of tensor data, outtype {:?}",
        tensors.len(),
        total as f64 / 1e6,
        src.outtype
    );
    Ok(())
}
