//! `cria perplexity`: the text's perplexity by llama.cpp's method (`cria_engine::eval`), printed
//! as llama-perplexity prints it.

use anyhow::Result;
use cria_engine::eval::{n_chunks, perplexity, PplResult};
use cria_engine::LoadedModel;
use std::io::Write;

pub fn run(
    l: &LoadedModel,
    text: &str,
    ctx: usize,
    batch: usize,
    max_chunks: Option<usize>,
    out: &mut dyn Write,
) -> Result<PplResult> {
    let tokens = l.tok.encode(text, true, false);
    eprintln!(
        "{} tokens, {} chunks of {ctx}",
        tokens.len(),
        n_chunks(tokens.len(), ctx, max_chunks)
    );
    let t0 = std::time::Instant::now();
    let r = perplexity(l, &tokens, ctx, batch, max_chunks, |i, p| {
        let _ = write!(out, "[{i}]{p:.4},");
        let _ = out.flush();
    })?;
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
