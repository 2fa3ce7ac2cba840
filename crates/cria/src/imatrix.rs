//! `cria imatrix`: the importance matrix of a model over a calibration text
//! (`cria_engine::imatrix`), written in llama.cpp's GGUF imatrix format, printing the per-chunk
//! perplexity as llama-imatrix does.

use anyhow::{bail, Context, Result};
use clap::Args;
use cria_engine::eval::n_chunks;
use cria_engine::imatrix::{compute, Params};
use std::io::Write;
use std::path::PathBuf;

#[derive(Args, Clone)]
pub struct ImatrixArgs {
    #[command(flatten)]
    m: crate::ModelArgs,
    /// The calibration text file.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: PathBuf,
    /// The imatrix file to write (llama.cpp's GGUF imatrix format).
    #[arg(
        short = 'o',
        long = "output",
        value_name = "FILE",
        default_value = "imatrix.gguf"
    )]
    out: PathBuf,
    /// Tokens per chunk (the context each chunk is evaluated in).
    #[arg(short = 'c', long = "ctx-size", value_name = "N", default_value_t = 512, value_parser = crate::run::at_least_one)]
    ctx_size: usize,
    /// Tokens per forward call.
    #[arg(short = 'b', long = "batch-size", value_name = "N", default_value_t = 512, value_parser = crate::run::at_least_one)]
    batch: usize,
    /// Stop after this many chunks.
    #[arg(long = "chunks", value_name = "N")]
    chunks: Option<usize>,
    /// Also collect output.weight (skipped when the output head is tied to the embeddings, as
    /// llama.cpp does).
    #[arg(long = "process-output")]
    process_output: bool,
    /// Also write the file after every N chunks (llama-imatrix's default: 10; 0: only at the end).
    #[arg(long = "output-frequency", value_name = "N", default_value_t = 10)]
    output_frequency: usize,
}

pub fn run(a: &ImatrixArgs, out: &mut dyn Write) -> Result<()> {
    let bytes = std::fs::read(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        bail!("{}: the calibration text is empty", a.file.display());
    }
    let text = String::from_utf8_lossy(&bytes);
    if a.out.is_dir() {
        bail!(
            "{} is a directory; -o names the imatrix file",
            a.out.display()
        );
    }
    let l = crate::load::model(a.m.model.as_deref(), &a.m)?;
    let tokens = l.tok.encode(&text, true, false);
    let n = n_chunks(tokens.len(), a.ctx_size, a.chunks);
    eprintln!(
        "{} tokens, computing over {n} chunks of {}",
        tokens.len(),
        a.ctx_size
    );
    let p = Params {
        ctx: a.ctx_size,
        batch: a.batch,
        max_chunks: a.chunks,
        process_output: a.process_output,
        dataset: a.file.to_string_lossy().into_owned(),
    };
    let t0 = std::time::Instant::now();
    let (m, r) = compute(&l, &tokens, &p, |i, ppl, col| {
        let _ = write!(out, "[{i}]{ppl:.4},");
        let _ = out.flush();
        if a.output_frequency > 0 && i % a.output_frequency == 0 && i < n {
            col.imatrix()
                .write(&a.out)
                .with_context(|| format!("writing {}", a.out.display()))?;
        }
        Ok(())
    })?;
    writeln!(out)?;
    writeln!(
        out,
        "Final estimate: PPL = {:.4} +/- {:.5}",
        r.ppl, r.stderr
    )?;
    m.write(&a.out)
        .with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!(
        "stored {} entries after {} chunks of {} in {} ({:.1} s)",
        m.entries.len(),
        m.chunk_count,
        m.chunk_size,
        a.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
