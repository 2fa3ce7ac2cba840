//! Evaluating a model over a token stream by llama.cpp's perplexity method (tools/perplexity): the
//! stream is cut into non-overlapping chunks of `ctx` tokens; each chunk is evaluated from an
//! empty cache, its first token replaced by BOS when the model uses one, and only the second half
//! of each chunk is scored (logits at j predict token j+1, for j in ctx/2 .. ctx-1), so every
//! scored token has at least ctx/2 tokens of context. [`chunked`] hands each scored row to a
//! consumer; [`perplexity`] is one.

use crate::LoadedModel;
use anyhow::{bail, Result};
use cria_kernels::Backend;
use cria_model::{forward_batch, KvCache, Logits, Probe, Scratch, SeqStep};

/// Runs `tokens` through the model (with its adapters, `l.lora`) from position 0, `s.max_t` at a time, handing the position of
/// each forward's first token and its logits (`s.logits()`) to `f`.
pub(crate) fn forward_from_start<B: Backend>(
    l: &LoadedModel<B>,
    tokens: &[u32],
    kv: &mut KvCache<B>,
    s: &mut Scratch<B>,
    mode: Logits,
    mut f: impl FnMut(usize, &[f32]) -> Result<()>,
) -> Result<()> {
    let mut pos = 0;
    for part in tokens.chunks(s.max_t) {
        let mut seq = [SeqStep {
            tokens: part,
            pos,
            kv: &mut *kv,
            lora: &l.lora,
        }];
        forward_batch(&l.model, &l.backend, &mut seq, s, mode)?;
        f(pos, s.logits())?;
        pos += part.len();
    }
    Ok(())
}

/// One scored row of a chunk.
pub struct Scored<'a> {
    /// The chunk's index.
    pub chunk: usize,
    /// The row's position in its chunk (ctx/2 ..= ctx-2).
    pub pos: usize,
    /// The logits at `pos` (vocab).
    pub logits: &'a [f32],
    /// The token they predict: the text's token at `pos + 1` of the chunk.
    pub next: u32,
    /// Whether this is the chunk's last scored row.
    pub chunk_end: bool,
}

/// The chunk count [`chunked`] evaluates: whole chunks of `ctx`, at most `max_chunks`.
pub fn n_chunks(tokens: usize, ctx: usize, max_chunks: Option<usize>) -> usize {
    (tokens / ctx).min(max_chunks.unwrap_or(usize::MAX))
}

/// Checks `ctx` against the text's length as [`chunked`] does.
pub fn check_ctx(n_tokens: usize, ctx: usize) -> Result<()> {
    if ctx < 4 {
        bail!("--ctx-size {ctx} is too small for perplexity");
    }
    if n_tokens < 2 * ctx {
        bail!(
            "the text is {n_tokens} tokens; perplexity with a context of {ctx} needs at least {}",
            2 * ctx
        );
    }
    Ok(())
}

/// One model's state for evaluating chunks of `ctx` tokens one at a time (the module's method):
/// a KV cache and scratch sized once, reused for every chunk. [`chunked`] is a loop over it;
/// `cria kld` runs several models' evaluators over the same chunk side by side.
pub struct ChunkEval<'a, B: Backend> {
    l: &'a LoadedModel<B>,
    ctx: usize,
    bos: Option<u32>,
    kv: KvCache<B>,
    s: Scratch<B>,
    chunk: Vec<u32>,
}

impl<'a, B: Backend> ChunkEval<'a, B> {
    /// Forwards of at most `batch` tokens per call.
    pub fn new(l: &'a LoadedModel<B>, ctx: usize, batch: usize) -> Result<Self> {
        let m = &l.model;
        Ok(ChunkEval {
            l,
            ctx,
            bos: if l.tok.add_bos() { l.tok.bos() } else { None },
            kv: KvCache::try_with_type(m, ctx, l.kv_type)?,
            s: Scratch::try_new(m, batch.min(ctx), Logits::All)?,
            chunk: vec![0u32; ctx],
        })
    }

    /// Sets the forward's probe (called after each op with its llama.cpp name, layer and values:
    /// `cria imatrix` collects the matrices' inputs through it).
    pub fn set_probe(&mut self, probe: Option<Probe>) {
        self.s.probe = probe;
    }

    /// Evaluates chunk `c` of `tokens` (tokens `c*ctx .. (c+1)*ctx`, the first replaced by BOS
    /// when the model uses one), handing each scored row to `f` in order.
    pub fn run(
        &mut self,
        tokens: &[u32],
        c: usize,
        mut f: impl FnMut(Scored<'_>) -> Result<()>,
    ) -> Result<()> {
        let ctx = self.ctx;
        let first = ctx / 2;
        let v = self.l.model.config.vocab_size;
        self.chunk.copy_from_slice(&tokens[c * ctx..(c + 1) * ctx]);
        if let Some(b) = self.bos {
            self.chunk[0] = b;
        }
        let ChunkEval {
            l, kv, s, chunk, ..
        } = self;
        forward_from_start(l, chunk, kv, s, Logits::All, |pos, logits| {
            for (i, row) in logits.chunks_exact(v).enumerate() {
                let j = pos + i;
                if j >= first && j + 1 < ctx {
                    f(Scored {
                        chunk: c,
                        pos: j,
                        logits: row,
                        next: tokens[c * ctx + j + 1],
                        chunk_end: j + 2 == ctx,
                    })?;
                }
            }
            Ok(())
        })
    }
}

/// Evaluates `tokens` chunk by chunk (the module's method), in forwards of at most `batch`
/// tokens, handing each scored row to `f` in order. Returns the number of chunks.
pub fn chunked<B: Backend>(
    l: &LoadedModel<B>,
    tokens: &[u32],
    ctx: usize,
    batch: usize,
    max_chunks: Option<usize>,
    mut f: impl FnMut(Scored<'_>) -> Result<()>,
) -> Result<usize> {
    check_ctx(tokens.len(), ctx)?;
    let n_chunks = n_chunks(tokens.len(), ctx, max_chunks);
    let mut e = ChunkEval::new(l, ctx, batch)?;
    for c in 0..n_chunks {
        e.run(tokens, c, &mut f)?;
    }
    Ok(n_chunks)
}

/// -log softmax(logits)[tok], as llama.cpp computes it (f32 max, f64 sum of f32 exps).
pub fn nll(logits: &[f32], tok: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| (l - max).exp() as f64).sum();
    -((logits[tok as usize] - max) as f64 - sum.ln())
}

/// Running sums of the scored tokens' NLL.
#[derive(Clone, Copy, Debug, Default)]
pub struct NllSum {
    sum: f64,
    sum2: f64,
    count: usize,
}

impl NllSum {
    pub fn add(&mut self, x: f64) {
        self.sum += x;
        self.sum2 += x * x;
        self.count += 1;
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// exp(mean NLL).
    pub fn ppl(&self) -> f64 {
        (self.sum / self.count as f64).exp()
    }

    /// llama.cpp's "+/-": the standard error of the mean NLL, times ppl.
    pub fn stderr(&self) -> f64 {
        let mean = self.sum / self.count as f64;
        let var = self.sum2 / self.count as f64 - mean * mean;
        if var > 0.0 && self.count > 1 {
            (var / (self.count - 1) as f64).sqrt() * self.ppl()
        } else {
            0.0
        }
    }
}

#[derive(Clone, Debug)]
pub struct PplResult {
    pub ppl: f64,
    /// llama.cpp's "+/-": the standard error of the mean NLL, times ppl.
    pub stderr: f64,
    pub chunks: usize,
    pub scored: usize,
}

/// Perplexity of the model over `tokens` by the module's method; `progress` gets each finished
/// chunk's number (from 1) and the perplexity so far.
pub fn perplexity<B: Backend>(
    l: &LoadedModel<B>,
    tokens: &[u32],
    ctx: usize,
    batch: usize,
    max_chunks: Option<usize>,
    mut progress: impl FnMut(usize, f64),
) -> Result<PplResult> {
    let mut acc = NllSum::default();
    let chunks = chunked(l, tokens, ctx, batch, max_chunks, |r| {
        acc.add(nll(r.logits, r.next));
        if r.chunk_end {
            progress(r.chunk + 1, acc.ppl());
        }
        Ok(())
    })?;
    Ok(PplResult {
        ppl: acc.ppl(),
        stderr: acc.stderr(),
        chunks,
        scored: acc.count(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nll_is_minus_log_softmax() {
        let x = nll(&[0.0, 0.0], 1);
        assert!((x - 2f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn ppl_and_stderr() {
        let mut a = NllSum::default();
        for x in [1.0, 2.0, 3.0] {
            a.add(x);
        }
        assert_eq!(a.count(), 3);
        assert!((a.ppl() - 2f64.exp()).abs() < 1e-12);
        // var = 14/3 - 4 = 2/3; / (n-1) = 1/3.
        assert!((a.stderr() - (1.0f64 / 3.0).sqrt() * 2f64.exp()).abs() < 1e-12);
    }
}
