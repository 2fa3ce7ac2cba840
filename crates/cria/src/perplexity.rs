//! Perplexity by llama.cpp's method (tools/perplexity): the text is tokenized once (BOS as the model
//! says), cut into non-overlapping chunks of `ctx` tokens; each chunk is evaluated from an empty
//! cache, its first token replaced by BOS when the model uses one, and only the second half of each
//! chunk is scored (logits at j predict token j+1, for j in ctx/2 .. ctx-1), so every scored token
//! has at least ctx/2 tokens of context.

use anyhow::{bail, Result};
use cria_engine::LoadedModel;
use cria_model::{forward, KvCache, Logits, Scratch};
use std::io::Write;

pub struct PplResult {
    pub ppl: f64,
    /// llama.cpp's "+/-": the standard error of the mean NLL, times ppl.
    pub stderr: f64,
    pub chunks: usize,
    pub scored: usize,
}

/// -log softmax(logits)[tok], as llama.cpp computes it (f32 max, f64 sum of f32 exps).
pub fn nll(logits: &[f32], tok: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| (l - max).exp() as f64).sum();
    -((logits[tok as usize] - max) as f64 - sum.ln())
}

pub fn compute(
    l: &LoadedModel,
    tokens: &[u32],
    ctx: usize,
    batch: usize,
    max_chunks: Option<usize>,
    mut progress: impl FnMut(usize, f64),
) -> Result<PplResult> {
    if ctx < 4 {
        bail!("--ctx-size {ctx} is too small for perplexity");
    }
    if tokens.len() < 2 * ctx {
        bail!(
            "the text is {} tokens; perplexity with a context of {ctx} needs at least {}",
            tokens.len(),
            2 * ctx
        );
    }
    let bos = if l.tok.add_bos() { l.tok.bos() } else { None };
    let n_chunks = (tokens.len() / ctx).min(max_chunks.unwrap_or(usize::MAX));
    let m = &l.model;
    let first = ctx / 2;
    let mut kv = KvCache::with_type(m, ctx, l.kv_type);
    let mut s = Scratch::new(m, batch.min(ctx), Logits::All);
    let v = m.config.vocab_size;
    let (mut sum, mut sum2, mut count) = (0f64, 0f64, 0usize);
    let mut chunk = vec![0u32; ctx];
    for c in 0..n_chunks {
        chunk.copy_from_slice(&tokens[c * ctx..(c + 1) * ctx]);
        if let Some(b) = bos {
            chunk[0] = b;
        }
        let mut pos = 0;
        for part in chunk.chunks(s.max_t) {
            forward(m, &l.backend, part, pos, &mut kv, &mut s, Logits::All)?;
            let logits = s.logits();
            for (i, row) in logits.chunks_exact(v).enumerate() {
                let j = pos + i;
                if j >= first && j + 1 < ctx {
                    let x = nll(row, tokens[c * ctx + j + 1]);
                    sum += x;
                    sum2 += x * x;
                    count += 1;
                }
            }
            pos += part.len();
        }
        progress(c + 1, (sum / count as f64).exp());
    }
    let mean = sum / count as f64;
    let var = sum2 / count as f64 - mean * mean;
    let ppl = mean.exp();
    let stderr = if var > 0.0 && count > 1 {
        (var / (count - 1) as f64).sqrt() * ppl
    } else {
        0.0
    };
    Ok(PplResult {
        ppl,
        stderr,
        chunks: n_chunks,
        scored: count,
    })
}

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
        (tokens.len() / ctx).min(max_chunks.unwrap_or(usize::MAX))
    );
    let t0 = std::time::Instant::now();
    let r = compute(l, &tokens, ctx, batch, max_chunks, |i, p| {
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
