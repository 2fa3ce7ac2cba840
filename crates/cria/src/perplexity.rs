//! `cria perplexity`: the text's perplexity by llama.cpp's method (`cria_engine::eval`), printed
//! as llama-perplexity prints it; with `--kl-divergence-base FILE` it also saves the model's
//! log-probs there (llama.cpp's layout), and with `--kl-divergence` it reads them back and prints
//! llama.cpp's KL-divergence statistics of this model against that base.

use anyhow::{bail, Context, Result};
use cria_engine::eval::{chunked, n_chunks, nll, perplexity, NllSum, PplResult};
use cria_engine::kld::{self, median, percentile, KldStats};
use cria_engine::LoadedModel;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;

pub fn run(
    l: &LoadedModel,
    text: &str,
    ctx: usize,
    batch: usize,
    max_chunks: Option<usize>,
    base: Option<&Path>,
    out: &mut dyn Write,
) -> Result<PplResult> {
    let tokens = l.tok.encode(text, true, false);
    eprintln!(
        "{} tokens, {} chunks of {ctx}",
        tokens.len(),
        n_chunks(tokens.len(), ctx, max_chunks)
    );
    let t0 = std::time::Instant::now();
    let r = match base {
        None => perplexity(l, &tokens, ctx, batch, max_chunks, |i, p| {
            let _ = write!(out, "[{i}]{p:.4},");
            let _ = out.flush();
        })?,
        Some(path) => {
            save_base(l, &tokens, ctx, batch, max_chunks, path, out).inspect_err(|_| {
                // No half-written base file left behind.
                let _ = std::fs::remove_file(path);
            })?
        }
    };
    writeln!(out)?;
    writeln!(out, "PPL = {:.4} +/- {:.5}", r.ppl, r.stderr)?;
    eprintln!(
        "{} tokens scored over {} chunks in {:.1} s",
        r.scored,
        r.chunks,
        t0.elapsed().as_secs_f64()
    );
    Ok(r)
}

/// Perplexity, saving each scored row's compressed log-probs to `path`.
fn save_base(
    l: &LoadedModel,
    tokens: &[u32],
    ctx: usize,
    batch: usize,
    max_chunks: Option<usize>,
    path: &Path,
    out: &mut dyn Write,
) -> Result<PplResult> {
    let n = n_chunks(tokens.len(), ctx, max_chunks);
    let vocab = l.model.config.vocab_size;
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = BufWriter::new(f);
    if n > 0 {
        kld::write_header(&mut w, ctx, vocab, n, tokens)?;
    }
    let mut acc = NllSum::default();
    let mut buf = Vec::new();
    let chunks = chunked(l, tokens, ctx, batch, max_chunks, |r| {
        kld::write_row(&mut w, r.logits, &mut buf)?;
        acc.add(nll(r.logits, r.next));
        if r.chunk_end {
            let _ = write!(out, "[{}]{:.4},", r.chunk + 1, acc.ppl());
            let _ = out.flush();
        }
        Ok(())
    })?;
    w.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("saved the log-probs to {}", path.display());
    Ok(PplResult {
        ppl: acc.ppl(),
        stderr: acc.stderr(),
        chunks,
        scored: acc.count(),
    })
}

/// KL divergence of this model against the base file's log-probs, over the base file's tokens and
/// context (as llama.cpp's `--kl-divergence` does; the text is not needed).
pub fn kl_divergence(
    l: &LoadedModel,
    path: &Path,
    batch: usize,
    out: &mut dyn Write,
) -> Result<()> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = f.metadata()?.len();
    let mut r = BufReader::new(f);
    let vocab = l.model.config.vocab_size;
    let h = kld::read_header(&mut r, len, vocab)
        .with_context(|| format!("reading {}", path.display()))?;
    if h.n_chunk < 2 {
        bail!(
            "{}: one chunk only; KL statistics need at least two",
            path.display()
        );
    }
    eprintln!(
        "{} chunks of {} from {}",
        h.n_chunk,
        h.n_ctx,
        path.display()
    );
    let mut st = KldStats::default();
    let mut row = Vec::new();
    chunked(l, &h.tokens, h.n_ctx, batch, None, |s| {
        kld::read_row(&mut r, vocab, &mut row)?;
        st.add(s.logits, &row, s.next);
        if s.chunk_end {
            let _ = write!(out, "[{}]", s.chunk + 1);
            let _ = out.flush();
        }
        Ok(())
    })?;
    writeln!(out)?;
    if st.count() < 100 {
        bail!(
            "{} scored tokens: too few for statistics (llama.cpp wants 100)",
            st.count()
        );
    }
    let s = st.summary();
    let pm = |x: (f64, f64)| format!("{:10.6} ± {:10.6}", x.0, x.1);
    writeln!(out, "====== Perplexity statistics ======")?;
    writeln!(out, "Mean PPL(Q)                   : {}", pm(s.ppl))?;
    writeln!(out, "Mean PPL(base)                : {}", pm(s.ppl_base))?;
    writeln!(
        out,
        "Cor(ln(PPL(Q)), ln(PPL(base))): {:6.2}%",
        100.0 * s.cor
    )?;
    writeln!(out, "Mean ln(PPL(Q)/PPL(base))     : {}", pm(s.ln_ratio))?;
    writeln!(out, "Mean PPL(Q)/PPL(base)         : {}", pm(s.ratio))?;
    writeln!(out, "Mean PPL(Q)-PPL(base)         : {}", pm(s.diff))?;
    writeln!(out)?;
    writeln!(out, "====== KL divergence statistics ======")?;
    writeln!(out, "Mean    KLD: {}", pm(s.kld))?;
    for (name, v) in quantiles(&s.kld_sorted, false) {
        writeln!(out, "{name} KLD: {v:10.6}")?;
    }
    writeln!(out)?;
    writeln!(out, "====== Token probability statistics ======")?;
    writeln!(
        out,
        "Mean    Δp: {:6.3} ± {:5.3} %",
        100.0 * s.p_diff.0,
        100.0 * s.p_diff.1
    )?;
    for (name, v) in quantiles(&s.p_diff_sorted, true) {
        writeln!(out, "{name} Δp: {:6.3}%", 100.0 * v)?;
    }
    writeln!(
        out,
        "RMS Δp    : {:6.3} ± {:5.3} %",
        100.0 * s.rms.0,
        100.0 * s.rms.1
    )?;
    writeln!(
        out,
        "Same top p: {:6.3} ± {:5.3} %",
        100.0 * s.same_top.0,
        100.0 * s.same_top.1
    )?;
    Ok(())
}

/// llama.cpp's rows of quantiles of sorted values, from the maximum down (its Δp table adds the
/// quartiles; its median is the mean of the middle two).
fn quantiles(v: &[f32], quartiles: bool) -> Vec<(&'static str, f32)> {
    const ROWS: [(&str, f32); 13] = [
        ("Maximum", 1.0),
        ("99.9%  ", 0.999),
        ("99.0%  ", 0.99),
        ("95.0%  ", 0.95),
        ("90.0%  ", 0.9),
        ("75.0%  ", 0.75),
        ("Median ", 0.5),
        ("25.0%  ", 0.25),
        ("10.0%  ", 0.1),
        (" 5.0%  ", 0.05),
        (" 1.0%  ", 0.01),
        (" 0.1%  ", 0.001),
        ("Minimum", 0.0),
    ];
    ROWS.iter()
        .filter(|&&(_, f)| quartiles || (f != 0.75 && f != 0.25))
        .map(|&(name, f)| {
            (
                name,
                if f == 0.5 {
                    median(v)
                } else {
                    percentile(v, f)
                },
            )
        })
        .collect()
}
