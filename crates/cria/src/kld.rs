//! `cria kld`: KL divergence of one or more candidate models against a base model over a text,
//! side by side chunk by chunk (`cria_engine::kld::side_by_side`), with no log-probs file; one
//! table row per candidate. The figures are those `cria perplexity --kl-divergence-base` then
//! `--kl-divergence` print for each pair (llama.cpp's statistics).

use anyhow::{bail, Context, Result};
use clap::Args;
use cria_engine::eval::n_chunks;
use cria_engine::kld::{median, percentile, side_by_side, KldSummary};
use cria_engine::LoadOptions;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args, Clone)]
pub struct KldArgs {
    /// The reference model (e.g. the F16 or BF16 original).
    #[arg(long = "base", value_name = "MODEL")]
    base: String,
    /// A candidate model (repeat for several).
    #[arg(short = 'm', long = "model", value_name = "MODEL", required = true)]
    models: Vec<String>,
    /// The text file.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: PathBuf,
    /// Tokens per chunk.
    #[arg(short = 'c', long = "ctx-size", value_name = "N", default_value_t = 512, value_parser = crate::run::at_least_one)]
    ctx_size: usize,
    /// Tokens per forward call.
    #[arg(short = 'b', long = "batch-size", value_name = "N", default_value_t = 512, value_parser = crate::run::at_least_one)]
    batch: usize,
    /// Stop after this many chunks.
    #[arg(long = "chunks", value_name = "N")]
    chunks: Option<usize>,
    /// Threads (default: physical cores; at most 512).
    #[arg(short = 't', long, value_name = "N", value_parser = crate::run::thread_count)]
    threads: Option<usize>,
    /// Dequantize every model to f32 at load, F32 KV cache (unless --kv-type).
    #[arg(long)]
    f32: bool,
    /// KV cache element type of every model: f16 (default), f32, q8_0, q4_0.
    #[arg(long = "kv-type", value_name = "TYPE")]
    kv_type: Option<cria_model::KvType>,
}

pub fn run(a: &KldArgs, out: &mut dyn Write) -> Result<()> {
    let bytes = std::fs::read(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let o = LoadOptions {
        f32: a.f32,
        threads: a.threads,
        kv_type: match (a.kv_type, a.f32) {
            (Some(t), _) => t,
            (None, true) => cria_model::KvType::F32,
            (None, false) => cria_model::KvType::default(),
        },
    };
    let base = crate::load::with(Some(&a.base), &o)?;
    let cands = a
        .models
        .iter()
        .map(|m| crate::load::with(Some(m), &o))
        .collect::<Result<Vec<_>>>()?;
    let tokens = base.tok.encode(&text, true, false);
    let n = n_chunks(tokens.len(), a.ctx_size, a.chunks);
    eprintln!(
        "{} tokens, {n} chunks of {}; {} candidate(s) against {}",
        tokens.len(),
        a.ctx_size,
        cands.len(),
        a.base
    );
    let refs: Vec<_> = cands.iter().collect();
    let stats = side_by_side(&base, &refs, &tokens, a.ctx_size, a.batch, a.chunks, |c| {
        let _ = write!(out, "[{c}]");
        let _ = out.flush();
    })?;
    writeln!(out)?;
    if stats[0].count() < 100 {
        bail!(
            "{} scored tokens: too few for statistics (llama.cpp wants 100)",
            stats[0].count()
        );
    }
    let sums: Vec<KldSummary> = stats.iter().map(|s| s.summary()).collect();
    writeln!(
        out,
        "base {}: PPL {:.4} ± {:.4} ({} tokens scored)",
        a.base,
        sums[0].ppl_base.0,
        sums[0].ppl_base.1,
        stats[0].count()
    )?;
    write!(out, "{}", table(&a.models, &sums))?;
    Ok(())
}

/// One row per candidate: PPL, PPL(Q)/PPL(base), mean KLD ± uncertainty, 99.9% / 99% / median
/// KLD, same top token share and RMS Δp (in llama.cpp's units and digits: KLD in nats, shares
/// in %), so each figure reads as `--kl-divergence` prints it for that pair.
pub fn table(names: &[String], sums: &[KldSummary]) -> String {
    let w = names.iter().map(|n| n.len()).max().unwrap_or(5).max(5);
    let mut s = format!(
        "{:w$} | {:>11} | {:>9} | {:>21} | {:>9} | {:>9} | {:>9} | {:>8} | {:>8}\n",
        "model",
        "PPL",
        "PPL/base",
        "mean KLD",
        "99.9% KLD",
        "99% KLD",
        "med KLD",
        "same top",
        "RMS Δp"
    );
    s.push_str(&format!("{}\n", "-".repeat(w + 112)));
    for (name, x) in names.iter().zip(sums) {
        s.push_str(&format!(
            "{name:w$} | {:>11.6} | {:>9.6} | {:>10.6} ± {:>8.6} | {:>9.6} | {:>9.6} | {:>9.6} | {:>7.3}% | {:>7.3}%\n",
            x.ppl.0,
            x.ratio.0,
            x.kld.0,
            x.kld.1,
            percentile(&x.kld_sorted, 0.999),
            percentile(&x.kld_sorted, 0.99),
            median(&x.kld_sorted),
            100.0 * x.same_top.0,
            100.0 * x.rms.0,
        ));
    }
    s
}
