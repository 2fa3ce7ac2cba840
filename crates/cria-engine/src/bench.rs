//! What `cria bench` measures, as llama.cpp's `llama-bench` does (pp: one batch of `n` random
//! tokens from an empty context; tg: `n` single-token steps of random tokens from an empty
//! context; a warm-up run first, then `reps` timed runs), plus what a memory-bound decode is
//! judged by: bytes read per token and the share of the machine's read bandwidth that reaches.

use crate::LoadedModel;
use anyhow::Result;
use cria_model::{forward, KvCache, Logits, Scratch};
use std::time::Instant;

/// One test of a model.
#[derive(Clone, Copy, Debug)]
pub enum Test {
    /// Prompt processing: one forward of `n` tokens.
    Prompt(usize),
    /// Generation: `n` forwards of one token.
    Gen(usize),
}

impl Test {
    pub fn n(self) -> usize {
        match self {
            Test::Prompt(n) | Test::Gen(n) => n,
        }
    }

    /// llama-bench's name: `pp512`, `tg128`.
    pub fn name(self) -> String {
        match self {
            Test::Prompt(n) => format!("pp{n}"),
            Test::Gen(n) => format!("tg{n}"),
        }
    }
}

/// One (model, threads, test) result.
pub struct Row {
    pub model: String,
    pub dtype: String,
    pub size_bytes: u64,
    pub params: usize,
    pub backend: String,
    pub threads: usize,
    pub test: String,
    pub tokens: usize,
    pub samples_ts: Vec<f64>,
    /// Bytes the forward reads per token (tg only).
    pub bytes_per_token: Option<f64>,
    /// Read bandwidth of this machine with `threads` threads, bytes/s.
    pub bandwidth: f64,
    /// [`hash`] of the last logits, the same in every run; "varies" if a repetition's differed.
    pub logits_hash: String,
    /// KV cache bytes of this test.
    pub kv_bytes: usize,
    /// Peak resident memory of loading the model and running this test (set by the caller,
    /// which owns the process).
    pub peak_rss: Option<u64>,
}

impl Row {
    pub fn mean(&self) -> f64 {
        self.samples_ts.iter().sum::<f64>() / self.samples_ts.len().max(1) as f64
    }
    pub fn stddev(&self) -> f64 {
        let n = self.samples_ts.len();
        if n < 2 {
            return 0.0;
        }
        let m = self.mean();
        (self.samples_ts.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    }
    pub fn gbps(&self) -> Option<f64> {
        self.bytes_per_token.map(|b| b * self.mean() / 1e9)
    }
    pub fn roofline(&self) -> Option<f64> {
        self.bytes_per_token
            .map(|b| b * self.mean() / self.bandwidth)
    }
}

/// A timed repetition whose logits hash differed from the warm-up run's.
pub struct Mismatch {
    pub rep: usize,
    pub hash: String,
    pub warm_up: String,
}

/// xorshift64*: random token ids without a dependency; any fixed sequence would do.
struct Rng(u64);
impl Rng {
    fn next(&mut self, n: usize) -> u32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as u32 % n as u32
    }
}

/// FNV-1a over the bits of the logits: a short regression signature of the numbers.
pub fn hash(v: &[f32]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in v {
        for b in x.to_bits().to_le_bytes() {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    format!("{:08x}", h >> 32)
}

/// Runs `test` on `l`: the warm-up and `reps` timed runs, with the KV cache and scratch made
/// first. `bandwidth` is the machine's read bandwidth with `l`'s threads (bytes/s), for the
/// row's roofline. The row's `peak_rss` is left for the caller.
pub fn measure(
    l: &LoadedModel,
    test: Test,
    reps: usize,
    bandwidth: f64,
) -> Result<(Row, Vec<Mismatch>)> {
    let m = &l.model;
    let c = &m.config;
    let (n, is_pp) = (test.n(), matches!(test, Test::Prompt(_)));
    let ctx = if is_pp { n } else { n + 1 };
    let mut kv = KvCache::try_with_type(m, ctx, l.kv_type)?;
    let mut s = Scratch::try_new(m, if is_pp { n } else { 1 }, Logits::Last)?;
    // One fixed token stream per test, the same in every repetition: the logits hash then
    // depends on the model, the test and the code only (not on -r, the thread count or
    // timing), so runs and repetitions can be compared.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let toks: Vec<u32> = (0..n).map(|_| rng.next(c.vocab_size)).collect();
    let mut samples = Vec::new();
    let mut first_hash = String::new();
    let mut mismatches = Vec::new();
    // Run 0 is the warm-up (page faults of the mapping, caches, thread wake-up).
    for rep in 0..=reps {
        let t0 = Instant::now();
        if is_pp {
            forward(m, &l.backend, &toks, 0, &mut kv, &mut s, Logits::Last)?;
        } else {
            for (pos, tok) in toks.iter().enumerate() {
                forward(m, &l.backend, &[*tok], pos, &mut kv, &mut s, Logits::Last)?;
            }
        }
        let dt = t0.elapsed().as_secs_f64();
        if rep > 0 {
            samples.push(n as f64 / dt);
        }
        let h = hash(s.logits());
        if rep == 0 {
            first_hash = h;
        } else if h != first_hash {
            mismatches.push(Mismatch {
                rep,
                hash: h,
                warm_up: first_hash.clone(),
            });
        }
    }
    // Attention reads the K/V of every earlier position: on average (n+1)/2 of them.
    let bytes_per_token = (!is_pp).then(|| {
        m.weight_bytes() as f64
            + m.weights.token_embd.row_bytes() as f64
            + kv.bytes_per_position() as f64 * (n + 1) as f64 / 2.0
    });
    let model = match &m.source {
        cria_model::Source::Gguf(g) => g.path.file_name(),
        cria_model::Source::HfFolder { dir, .. } => dir.file_name(),
    }
    .map(|s| s.to_string_lossy().into_owned())
    .unwrap_or_default();
    let size_bytes = match &m.source {
        cria_model::Source::Gguf(g) => g.file_bytes,
        _ => (m.weight_bytes() + m.weights.token_embd.byte_len) as u64,
    };
    let row = Row {
        model,
        dtype: m.main_dtype().to_string(),
        size_bytes,
        params: m.n_params(),
        backend: cria_kernels::Backend::name(&l.backend),
        threads: l.backend.threads,
        test: test.name(),
        tokens: n,
        samples_ts: samples,
        bytes_per_token,
        bandwidth,
        logits_hash: if mismatches.is_empty() {
            first_hash
        } else {
            "varies".into()
        },
        kv_bytes: kv.bytes_per_position() * ctx,
        peak_rss: None,
    };
    Ok((row, mismatches))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_depends_on_every_bit() {
        let a = [1.0f32, 2.0, 3.0];
        let mut b = a;
        b[2] = f32::from_bits(b[2].to_bits() ^ 1);
        assert_ne!(hash(&a), hash(&b));
        assert_eq!(hash(&a), hash(&[1.0, 2.0, 3.0]));
    }

    #[test]
    fn stats() {
        let r = Row {
            model: String::new(),
            dtype: String::new(),
            size_bytes: 0,
            params: 0,
            backend: String::new(),
            threads: 1,
            test: String::new(),
            tokens: 1,
            samples_ts: vec![2.0, 4.0, 6.0],
            bytes_per_token: Some(10.0),
            bandwidth: 80.0,
            logits_hash: String::new(),
            kv_bytes: 0,
            peak_rss: None,
        };
        assert_eq!(r.mean(), 4.0);
        assert_eq!(r.stddev(), 2.0);
        assert_eq!(r.roofline(), Some(0.5));
    }
}
