//! KL divergence against a reference model, in llama.cpp's way (tools/perplexity, `kl_divergence`)
//! and its file layout, so that either tool reads the other's base file:
//!
//! - "_logits_", then i32 little-endian: n_ctx, n_vocab, n_chunk, then the text's first
//!   n_ctx * n_chunk tokens (as i32, before any BOS replacement);
//! - for each chunk, for each scored row (ctx/2 ..= ctx-2, as [`crate::eval::chunked`] scores
//!   them), `nv = 2 * ((n_vocab + 1) / 2) + 4` u16: two f32 (scale, min log-prob), then each
//!   token's log-prob as `min + scale * q` (zero padding to an even count).
//!
//! The arithmetic (f32 where llama.cpp uses float, f64 where it uses double) follows llama.cpp's.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};

const MAGIC: &[u8; 8] = b"_logits_";

/// u16 per row: the log-probs padded to an even count, plus two f32.
pub fn row_len(n_vocab: usize) -> usize {
    2 * n_vocab.div_ceil(2) + 4
}

/// Rows a chunk of `ctx` contributes.
fn rows_per_chunk(ctx: usize) -> usize {
    ctx - 1 - ctx / 2
}

/// llama.cpp's `nearest_int`: round half to even through the f32 mantissa.
fn nearest_int(x: f32) -> i32 {
    let i = (x + 12582912.0).to_bits() as i32;
    (i & 0x007fffff) - 0x00400000
}

/// The base file's header.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    pub n_ctx: usize,
    pub n_vocab: usize,
    pub n_chunk: usize,
    pub tokens: Vec<u32>,
}

/// Writes the header: the first `n_ctx * n_chunk` of `tokens`.
pub fn write_header(
    w: &mut impl Write,
    n_ctx: usize,
    n_vocab: usize,
    n_chunk: usize,
    tokens: &[u32],
) -> Result<()> {
    w.write_all(MAGIC)?;
    for x in [n_ctx, n_vocab, n_chunk] {
        w.write_all(&i32::try_from(x)?.to_le_bytes())?;
    }
    for &t in &tokens[..n_ctx * n_chunk] {
        w.write_all(&t.to_le_bytes())?;
    }
    Ok(())
}

/// Compresses one row of logits into `out` (`row_len` u16), as llama.cpp's `log_softmax` with a
/// `log_prob` output does.
pub fn compress_row(logits: &[f32], out: &mut [u16]) {
    let (mut max, mut min) = (logits[0], logits[0]);
    for &l in &logits[1..] {
        max = max.max(l);
        min = min.min(l);
    }
    let min = min.max(max - 16.0);
    let sum: f64 = logits.iter().map(|&l| (l - max).exp() as f64).sum();
    let log_sum = sum.ln() as f32;
    let min_log_prob = min - max - log_sum;
    let scale = (max - min) / 65535.0;
    let (head, q) = out.split_at_mut(4);
    let s = scale.to_le_bytes();
    let m = min_log_prob.to_le_bytes();
    head[0] = u16::from_le_bytes([s[0], s[1]]);
    head[1] = u16::from_le_bytes([s[2], s[3]]);
    head[2] = u16::from_le_bytes([m[0], m[1]]);
    head[3] = u16::from_le_bytes([m[2], m[3]]);
    q.fill(0);
    if scale != 0.0 {
        let inv = 1.0 / scale;
        for (o, &l) in q.iter_mut().zip(logits) {
            *o = if l > min {
                nearest_int(inv * (l - min)) as u16
            } else {
                0
            };
        }
    }
}

/// Writes one compressed row.
pub fn write_row(w: &mut impl Write, logits: &[f32], buf: &mut Vec<u16>) -> Result<()> {
    buf.resize(row_len(logits.len()), 0);
    compress_row(logits, buf);
    // Little-endian through a stack buffer: no allocation per row.
    let mut bytes = [0u8; 2 * CHUNK];
    for part in buf.chunks(CHUNK) {
        for (b, x) in bytes.chunks_exact_mut(2).zip(part) {
            b.copy_from_slice(&x.to_le_bytes());
        }
        w.write_all(&bytes[..2 * part.len()])?;
    }
    Ok(())
}

/// u16 values converted per write or read of a row.
const CHUNK: usize = 1024;

fn read_i32(r: &mut impl Read, what: &str) -> Result<i32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)
        .with_context(|| format!("the base file ends before its {what}"))?;
    Ok(i32::from_le_bytes(b))
}

/// Reads and checks the header of a base file of `file_len` bytes against the model's vocab:
/// the sizes must be positive, the tokens in the vocab, and the file exactly as long as its header
/// says (so nothing is allocated beyond what the file holds).
pub fn read_header(r: &mut impl Read, file_len: u64, vocab: usize) -> Result<Header> {
    let mut magic = [0u8; 8];
    if r.read_exact(&mut magic).is_err() || &magic != MAGIC {
        bail!("not a llama.cpp log-probabilities file (no \"_logits_\" at its start)");
    }
    let n_ctx = read_i32(r, "context size")?;
    let n_vocab = read_i32(r, "vocab size")?;
    let n_chunk = read_i32(r, "chunk count")?;
    if n_vocab as i64 != vocab as i64 {
        bail!("the base file is for a vocab of {n_vocab} tokens; this model has {vocab}");
    }
    if n_ctx < 4 || n_chunk < 1 {
        bail!("the base file says context {n_ctx}, {n_chunk} chunks: not a valid base file");
    }
    // u128: 2^31 chunks of 2^31 tokens must not wrap around to a small size.
    let (n_ctx, n_chunk) = (n_ctx as u128, n_chunk as u128);
    let rows = n_chunk * rows_per_chunk(n_ctx as usize) as u128;
    let want = 20 + 4 * n_ctx * n_chunk + rows * 2 * row_len(vocab) as u128;
    if file_len as u128 != want {
        bail!(
            "the base file is {file_len} bytes; its header (context {n_ctx}, {n_chunk} chunks, \
             vocab {vocab}) needs {want}: truncated or not a base file"
        );
    }
    let mut raw = vec![0u8; 4 * (n_ctx * n_chunk) as usize];
    r.read_exact(&mut raw)?;
    let tokens: Vec<u32> = raw
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if let Some(t) = tokens.iter().find(|&&t| t as usize >= vocab) {
        bail!("the base file holds token {t}, outside the vocab of {vocab}");
    }
    Ok(Header {
        n_ctx: n_ctx as usize,
        n_vocab: vocab,
        n_chunk: n_chunk as usize,
        tokens,
    })
}

/// Reads one compressed row (`row_len` u16) into `buf`.
pub fn read_row(r: &mut impl Read, n_vocab: usize, buf: &mut Vec<u16>) -> Result<()> {
    buf.resize(row_len(n_vocab), 0);
    let mut bytes = [0u8; 2 * CHUNK];
    for part in buf.chunks_mut(CHUNK) {
        let bytes = &mut bytes[..2 * part.len()];
        r.read_exact(bytes)
            .context("the base file ends before its last row")?;
        for (x, b) in part.iter_mut().zip(bytes.chunks_exact(2)) {
            *x = u16::from_le_bytes([b[0], b[1]]);
        }
    }
    Ok(())
}

/// llama.cpp's running sums (`kl_divergence_result`) plus each row's KLD and delta-p.
#[derive(Clone, Debug, Default)]
pub struct KldStats {
    sum_nll: f64,
    sum_nll2: f64,
    sum_nll_base: f64,
    sum_nll_base2: f64,
    sum_nll_nll_base: f64,
    sum_kld: f64,
    sum_kld2: f64,
    sum_p_diff: f64,
    sum_p_diff2: f64,
    sum_p_diff4: f64,
    n_same_top: usize,
    kld: Vec<f32>,
    p_diff: Vec<f32>,
}

impl KldStats {
    /// Adds one row: the candidate's `logits`, the base's compressed row, the next token.
    pub fn add(&mut self, logits: &[f32], base: &[u16], tok: u32) {
        let mut max = logits[0];
        let mut imax = 0;
        for (i, &l) in logits.iter().enumerate().skip(1) {
            if l > max {
                max = l;
                imax = i;
            }
        }
        let sum: f64 = logits.iter().map(|&l| (l - max).exp() as f64).sum();
        let log_sum = sum.ln() as f32;
        let f = |k: usize| {
            f32::from_le_bytes({
                let (a, b) = (base[k].to_le_bytes(), base[k + 1].to_le_bytes());
                [a[0], a[1], b[0], b[1]]
            })
        };
        let (scale, min_log_prob) = (f(0), f(2));
        let q = &base[4..];
        let tok = tok as usize;

        let nll = max + log_sum - logits[tok];
        self.sum_nll += nll as f64;
        self.sum_nll2 += (nll * nll) as f64;
        let nll_base = -(scale * q[tok] as f32 + min_log_prob);
        self.sum_nll_base += nll_base as f64;
        self.sum_nll_base2 += (nll_base * nll_base) as f64;
        self.sum_nll_nll_base += (nll * nll_base) as f64;

        let max = max + log_sum;
        let mut kld = 0f64;
        let (mut imax_base, mut base_max) = (0, 0f32);
        for (i, &l) in logits.iter().enumerate() {
            let lp = scale * q[i] as f32 + min_log_prob;
            if i == 0 || lp > base_max {
                base_max = lp;
                imax_base = i;
            }
            if lp > -16.0 {
                kld += (lp.exp() * (lp - l + max)) as f64;
            }
        }
        self.sum_kld += kld;
        self.sum_kld2 += kld * kld;
        self.n_same_top += (imax == imax_base) as usize;

        let p_diff = (-nll).exp() - (-nll_base).exp();
        self.sum_p_diff += p_diff as f64;
        let p2 = (p_diff * p_diff) as f64;
        self.sum_p_diff2 += p2;
        self.sum_p_diff4 += p2 * p2;
        self.kld.push(kld as f32);
        self.p_diff.push(p_diff);
    }

    pub fn count(&self) -> usize {
        self.kld.len()
    }

    /// The summary llama.cpp prints at the end.
    pub fn summary(&self) -> KldSummary {
        let n = self.count();
        let mu = |s: f64, s2: f64| mean_and_uncertainty(s, s2, n);
        let log_ppl = mu(self.sum_nll, self.sum_nll2);
        let log_base = mu(self.sum_nll_base, self.sum_nll_base2);
        let cov = if n < 10 {
            0.0
        } else {
            (self.sum_nll_nll_base / n as f64
                - (self.sum_nll / n as f64) * (self.sum_nll_base / n as f64))
                / (n - 1) as f64
        };
        let ln_ratio = log_ppl.0 - log_base.0;
        let ln_ratio_unc = (log_ppl.1 * log_ppl.1 + log_base.1 * log_base.1 - 2.0 * cov).sqrt();
        let ppl = log_ppl.0.exp();
        let ppl_base = log_base.0.exp();
        let ppl_unc = ppl * log_ppl.1;
        let ppl_base_unc = ppl_base * log_base.1;
        let mse = mu(self.sum_p_diff2, self.sum_p_diff4);
        let rms = mse.0.sqrt();
        let same = self.n_same_top as f64 / n as f64;
        let mut kld = self.kld.clone();
        let mut pd = self.p_diff.clone();
        kld.sort_by(f32::total_cmp);
        pd.sort_by(f32::total_cmp);
        KldSummary {
            ppl: (ppl, ppl_unc),
            ppl_base: (ppl_base, ppl_base_unc),
            cor: cov / (log_ppl.1 * log_base.1),
            ln_ratio: (ln_ratio, ln_ratio_unc),
            ratio: (ln_ratio.exp(), ln_ratio.exp() * ln_ratio_unc),
            diff: (
                ppl - ppl_base,
                (ppl_unc * ppl_unc + ppl_base_unc * ppl_base_unc - 2.0 * ppl * ppl_base * cov)
                    .sqrt(),
            ),
            kld: mu(self.sum_kld, self.sum_kld2),
            p_diff: mu(self.sum_p_diff, self.sum_p_diff2),
            rms: (rms, 0.5 / rms * mse.1),
            same_top: (same, (same * (1.0 - same) / (n as f64 - 1.0)).sqrt()),
            kld_sorted: kld,
            p_diff_sorted: pd,
        }
    }
}

/// llama.cpp's `mean_and_uncertainty`.
fn mean_and_uncertainty(sum: f64, sum2: f64, n: usize) -> (f64, f64) {
    if n < 1 {
        return (0.0, 0.0);
    }
    let f = sum / n as f64;
    let df = sum2 / n as f64 - f * f;
    let df = if df > 0.0 && n > 10 {
        (df / (n - 1) as f64).sqrt()
    } else {
        0.0
    };
    (f, df)
}

/// The end-of-run statistics, each a (value, uncertainty) where llama.cpp gives one.
#[derive(Clone, Debug)]
pub struct KldSummary {
    pub ppl: (f64, f64),
    pub ppl_base: (f64, f64),
    pub cor: f64,
    pub ln_ratio: (f64, f64),
    pub ratio: (f64, f64),
    pub diff: (f64, f64),
    pub kld: (f64, f64),
    pub p_diff: (f64, f64),
    pub rms: (f64, f64),
    pub same_top: (f64, f64),
    pub kld_sorted: Vec<f32>,
    pub p_diff_sorted: Vec<f32>,
}

/// llama.cpp's `percentile` (linear between neighbours, in f32) of sorted values.
pub fn percentile(v: &[f32], fraction: f32) -> f32 {
    if fraction <= 0.0 {
        return v[0];
    }
    if fraction >= 1.0 {
        return v[v.len() - 1];
    }
    let p = fraction * (v.len() - 1) as f32;
    let ip = p as usize;
    let p = p - ip as f32;
    (1.0 - p) * v[ip] + p * v[(ip + 1).min(v.len() - 1)]
}

/// llama.cpp's median of sorted values.
pub fn median(v: &[f32]) -> f32 {
    let n = v.len();
    if n.is_multiple_of(2) {
        0.5 * (v[n / 2] + v[n / 2 - 1])
    } else {
        v[n / 2]
    }
}

/// KL divergence of several candidate models against a base model with no base file (`cria kld`):
/// chunk by chunk, the base evaluates the chunk and its scored rows are compressed exactly as
/// [`write_row`] would store them (held in memory for that one chunk only), then each candidate
/// evaluates the same chunk against them. The statistics are therefore the very ones the
/// file-based path (`--kl-divergence-base` then `--kl-divergence`) gives for each pair. All models
/// are loaded at once (mapped, not copied); `progress` gets each finished chunk's number.
pub fn side_by_side<B: cria_kernels::Backend>(
    base: &crate::LoadedModel<B>,
    candidates: &[&crate::LoadedModel<B>],
    tokens: &[u32],
    ctx: usize,
    batch: usize,
    max_chunks: Option<usize>,
    mut progress: impl FnMut(usize),
) -> Result<Vec<KldStats>> {
    use crate::eval::{check_ctx, n_chunks, ChunkEval};
    let vocab = base.model.config.vocab_size;
    for (i, c) in candidates.iter().enumerate() {
        if c.model.config.vocab_size != vocab {
            bail!(
                "candidate {} has a vocab of {} tokens, the base {vocab}: KL divergence needs the same vocab",
                i + 1,
                c.model.config.vocab_size
            );
        }
        let (bt, ct) = (&base.tok, &c.tok);
        if bt.vocab_size() != ct.vocab_size()
            || (0..bt.vocab_size() as u32).any(|id| bt.token_text(id) != ct.token_text(id))
        {
            bail!(
                "candidate {} has another tokenizer vocab than the base: KL divergence compares the same tokens",
                i + 1
            );
        }
    }
    check_ctx(tokens.len(), ctx)?;
    let n = n_chunks(tokens.len(), ctx, max_chunks);
    if n < 2 {
        bail!("{n} chunk(s): KL statistics need at least two");
    }
    let rl = row_len(vocab);
    let rows = rows_per_chunk(ctx);
    let mut base_rows = vec![0u16; rows * rl];
    let mut base_eval = ChunkEval::new(base, ctx, batch)?;
    let mut evals = candidates
        .iter()
        .map(|l| ChunkEval::new(l, ctx, batch))
        .collect::<Result<Vec<_>>>()?;
    let mut stats = vec![KldStats::default(); candidates.len()];
    for c in 0..n {
        let mut i = 0;
        base_eval.run(tokens, c, |r| {
            compress_row(r.logits, &mut base_rows[i * rl..(i + 1) * rl]);
            i += 1;
            Ok(())
        })?;
        for (e, st) in evals.iter_mut().zip(&mut stats) {
            let mut i = 0;
            e.run(tokens, c, |r| {
                st.add(r.logits, &base_rows[i * rl..(i + 1) * rl], r.next);
                i += 1;
                Ok(())
            })?;
        }
        progress(c + 1);
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_self_kld_is_zero() {
        let logits: Vec<f32> = (0..7).map(|i| (i as f32 * 1.3).sin() * 5.0).collect();
        let mut row = vec![0u16; row_len(7)];
        assert_eq!(row.len(), 12);
        compress_row(&logits, &mut row);
        let mut s = KldStats::default();
        s.add(&logits, &row, 3);
        assert!(s.sum_kld.abs() < 1e-3, "{}", s.sum_kld);
        assert_eq!(s.n_same_top, 1);
        let mut file = Vec::new();
        write_header(&mut file, 4, 7, 1, &[1, 2, 3, 4, 5]).unwrap();
        for _ in 0..rows_per_chunk(4) {
            write_row(&mut file, &logits, &mut Vec::new()).unwrap();
        }
        let h = read_header(&mut &file[..], file.len() as u64, 7).unwrap();
        assert_eq!(h.tokens, [1, 2, 3, 4]);
        assert!(read_header(&mut &file[..], file.len() as u64 - 1, 7).is_err());
        assert!(read_header(&mut &file[..], file.len() as u64, 8).is_err());
        // 2^31 - 1 chunks of 2^31 - 1 tokens: refused by length, with no overflow.
        let mut huge = file.clone();
        huge[8..12].copy_from_slice(&i32::MAX.to_le_bytes());
        huge[16..20].copy_from_slice(&i32::MAX.to_le_bytes());
        assert!(read_header(&mut &huge[..], huge.len() as u64, 7).is_err());
    }

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(3.5), 4);
        assert_eq!(nearest_int(65534.7), 65535);
    }
}
