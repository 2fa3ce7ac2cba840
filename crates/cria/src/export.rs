//! `cria export MODEL OUT_DIR`: a model cria reads, as a Hugging Face folder
//! (`cria_convert::export`).

use crate::fetch;
use anyhow::{bail, Context, Result};
use clap::Args;
use cria_convert::export::{self, ExportOptions};
use cria_convert::source::{GgufSource, Source};
use std::path::PathBuf;

#[derive(Args, Clone, Debug)]
pub struct ExportArgs {
    /// The model: a .gguf file (any type, split files by their first part), hf:ORG/REPO:FILE or
    /// a short name.
    #[arg(value_name = "MODEL")]
    pub model: String,
    /// The folder to write (config.json, model.safetensors, tokenizer files).
    #[arg(value_name = "OUT_DIR")]
    pub out: PathBuf,
    /// Tensor type in the safetensors files: f32, f16 or bf16. Default: the type the model's
    /// matrices have when that is one of these (nothing lost), f16 for quantized models
    /// (f32 keeps every bit of the dequantized values, at twice the size).
    #[arg(long, value_name = "TYPE", value_parser = parse_dtype)]
    pub dtype: Option<cria_core::DType>,
    /// Largest safetensors file; bigger models are sharded with model.safetensors.index.json, as
    /// save_pretrained does (e.g. 5G, 500M).
    #[arg(long, value_name = "SIZE", default_value = "5G", value_parser = parse_size)]
    pub max_shard_size: u64,
    /// Write only the tokenizer files (tokenizer.json, tokenizer_config.json,
    /// special_tokens_map.json); works on a vocabulary-only GGUF.
    #[arg(long)]
    pub tokenizer_only: bool,
    /// Replace OUT_DIR if it exists and is not empty.
    #[arg(long)]
    pub force: bool,
}

fn parse_dtype(s: &str) -> Result<cria_core::DType, String> {
    export::parse_dtype(s).map_err(|e| e.to_string())
}

/// "5G", "500M", "2GB", "1000" (bytes): decimal units, as save_pretrained's max_shard_size.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_uppercase();
    let t = t.strip_suffix('B').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('K') => (&t[..t.len() - 1], 1e3),
        Some('M') => (&t[..t.len() - 1], 1e6),
        Some('G') => (&t[..t.len() - 1], 1e9),
        Some('T') => (&t[..t.len() - 1], 1e12),
        _ => (t, 1.0),
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && (v * mult) >= 1.0 && (v * mult) < 1e18 => Ok((v * mult) as u64),
        _ => Err(format!("'{s}' is not a size (e.g. 5G, 500M)")),
    }
}

pub fn run(a: &ExportArgs) -> Result<()> {
    let resolved = fetch::resolve(Some(&a.model))?;
    if resolved.kind != fetch::ModelKind::Gguf {
        bail!(
            "{} is a Hugging Face folder already; cria export reads GGUF files",
            resolved.path.display()
        );
    }
    let src = GgufSource::open(&resolved.path)
        .with_context(|| format!("reading {}", resolved.path.display()))?;
    let opts = ExportOptions {
        dtype: a.dtype,
        max_shard_bytes: a.max_shard_size,
        tokenizer_only: a.tokenizer_only,
        force: a.force,
    };
    let bar = indicatif::ProgressBar::new(src.tensors().len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = std::time::Instant::now();
    let summary = export::export(&src, &a.out, &opts, &mut |i, _, name| {
        // Nothing of the tensors before `i` is borrowed any more: give their mapped pages back,
        // so resident memory stays near one tensor, not the model.
        src.file.release_pages_except(&[]);
        bar.set_position(i as u64);
        bar.set_message(name.to_string());
    });
    bar.finish_and_clear();
    let summary = summary.with_context(|| format!("exporting to {}", a.out.display()))?;
    for w in &summary.warnings {
        eprintln!("warning: {w}");
    }
    let total: u64 = summary.files.iter().map(|(_, n)| n).sum();
    eprintln!(
        "wrote {} ({} tensors{}, {} files, {:.1} MB) in {:.1}s",
        a.out.display(),
        summary.n_tensors,
        summary
            .dtype
            .map(|d| format!(" as {d}"))
            .unwrap_or_default(),
        summary.files.len(),
        total as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        assert_eq!(super::parse_size("5G"), Ok(5_000_000_000));
        assert_eq!(super::parse_size("500mb"), Ok(500_000_000));
        assert_eq!(super::parse_size("1000"), Ok(1000));
        assert!(super::parse_size("x").is_err() && super::parse_size("0").is_err());
    }
}
