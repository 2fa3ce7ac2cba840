//! `cria quantize IN OUT.gguf TYPE`: llama-quantize's command, streaming one tensor at a time.

use anyhow::{Context, Result};
use clap::Args;
use cria_convert::mix::Ftype;
use cria_convert::quantize::{self, ImatrixInput, Options};
use cria_convert::source::{GgufSource, Source};
use cria_core::DType;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args)]
pub struct QuantizeArgs {
    /// The model to quantize: a GGUF file (or the first of a split set), or a Hugging Face folder
    /// (read as `cria convert` would write it, in the same pass: no intermediate file).
    pub input: PathBuf,
    /// The GGUF file to write (as OUT.partial until complete).
    pub output: PathBuf,
    /// Target type, as llama-quantize names it: F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K
    /// Q2_K_S Q3_K_S Q3_K_M Q3_K_L Q4_K_S Q4_K_M Q5_K_S Q5_K_M Q6_K IQ4_NL IQ4_XS, and with
    /// --imatrix IQ3_XXS IQ3_XS IQ3_S IQ3_M IQ2_XXS IQ2_XS IQ2_S IQ2_M IQ1_S IQ1_M (any case).
    #[arg(value_name = "TYPE")]
    pub ftype: String,
    /// An importance matrix (llama.cpp's imatrix GGUF) to steer the rounding.
    #[arg(long, value_name = "FILE")]
    pub imatrix: Option<PathBuf>,
    /// Accept an already quantized input (quality suffers).
    #[arg(long)]
    pub allow_requantize: bool,
    /// Every quantizable tensor gets TYPE's default type (no _S/_M/_L mixing).
    #[arg(long)]
    pub pure: bool,
    /// Type of output.weight.
    #[arg(long, value_name = "T", value_parser = parse_dtype)]
    pub output_tensor_type: Option<DType>,
    /// Type of token_embd.weight.
    #[arg(long, value_name = "T", value_parser = parse_dtype)]
    pub token_embedding_type: Option<DType>,
    /// Threads (default: all cores).
    #[arg(short = 't', long = "threads", value_name = "N")]
    pub threads: Option<usize>,
}

fn parse_dtype(s: &str) -> std::result::Result<DType, String> {
    match DType::from_name(s) {
        Some(d) if d.ggml_id() != DType::Q8_1.ggml_id() && d.ggml_id() != DType::Q8_K.ggml_id() => {
            Ok(d)
        }
        _ => Err(format!("unknown tensor type '{s}'")),
    }
}

/// The model behind IN: a GGUF file, or a Hugging Face folder read as llama.cpp's converter
/// would write it (`--outtype auto`), so one step replaces convert + quantize.
fn open_source(input: &Path) -> Result<Box<dyn Source>> {
    if input.is_dir() {
        return Ok(Box::new(
            cria_convert::convert::HfSource::open(input)
                .with_context(|| format!("reading the Hugging Face folder {}", input.display()))?,
        ));
    }
    Ok(Box::new(
        GgufSource::open(input).with_context(|| format!("reading {}", input.display()))?,
    ))
}

/// The importance matrix behind --imatrix (llama.cpp's GGUF imatrix or legacy .dat), with the
/// facts llama-quantize records in the output's metadata.
fn open_imatrix(path: &Path) -> Result<ImatrixInput<'static>> {
    let im = cria_core::imatrix::Imatrix::read(path)
        .with_context(|| format!("reading the importance matrix {}", path.display()))?;
    Ok(ImatrixInput {
        // llama-quantize records the path as it was given.
        file: path.to_string_lossy().into_owned(),
        dataset: im.datasets.first().cloned(),
        n_entries: im.entries.len(),
        n_chunks: im.chunk_count,
        weights: Box::new(move |name| im.quant_weights(name)),
    })
}

pub fn run(a: &QuantizeArgs) -> Result<()> {
    let ftype = Ftype::parse(&a.ftype)?;
    let source = open_source(&a.input)?;
    let imatrix = a.imatrix.as_deref().map(open_imatrix).transpose()?;
    let opts = Options {
        ftype,
        allow_requantize: a.allow_requantize,
        pure: a.pure,
        output_tensor_type: a.output_tensor_type,
        token_embedding_type: a.token_embedding_type,
        threads: a.threads.unwrap_or_else(num_cpus::get).max(1),
        imatrix,
    };
    let n = source.tensors().len() as u64;
    let bar = indicatif::ProgressBar::new(n);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} {wide_msg}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    let t0 = Instant::now();
    let report = quantize::quantize(source.as_ref(), &a.output, &opts, &mut |p| {
        bar.set_message(format!("{} {} -> {}", p.name, p.from, p.to));
        bar.inc(1);
    });
    bar.finish_and_clear();
    let report = report.with_context(|| format!("quantizing to {}", a.output.display()))?;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let types: Vec<String> = report
        .types
        .iter()
        .map(|(t, c)| format!("{t}: {c}"))
        .collect();
    eprintln!(
        "{} -> {} ({}): {} tensors ({})",
        a.input.display(),
        a.output.display(),
        ftype.name,
        report.n_tensors,
        types.join(", ")
    );
    eprintln!(
        "size {:.2} MiB ({:.2} bpw) -> {:.2} MiB ({:.2} bpw), {:.1} s, {} threads",
        mib(report.bytes_in),
        report.bpw_in(),
        mib(report.bytes_out),
        report.bpw_out(),
        t0.elapsed().as_secs_f64(),
        opts.threads
    );
    if report.n_fallback > 0 {
        eprintln!(
            "note: {} of {} tensors fell back to another type (row length not a multiple of the block)",
            report.n_fallback, report.n_tensors
        );
    }
    Ok(())
}
