//! `cria bench`: prompt-processing and generation throughput, as llama.cpp's `llama-bench`
//! measures it (pp: one batch of `p` random tokens from an empty context; tg: `n` single-token
//! steps of random tokens from an empty context; a warm-up run first, then `r` timed runs), plus
//! what a memory-bound decode is judged by: bytes read per token and the share of the machine's
//! measured read bandwidth that reaches.

use anyhow::{bail, Result};
use cria_model::{forward, KvCache, Logits, Scratch};
use std::io::Write;
use std::time::Instant;

pub struct BenchOptions {
    pub models: Vec<Option<String>>,
    pub prompt: usize,
    pub gen: usize,
    pub threads: Vec<usize>,
    pub reps: usize,
    pub json: bool,
    pub kv_type: cria_model::KvType,
}

/// One (model, threads, test) line.
struct Row {
    model: String,
    dtype: String,
    size_bytes: u64,
    params: usize,
    backend: String,
    threads: usize,
    test: String,
    tokens: usize,
    samples_ts: Vec<f64>,
    /// Bytes the forward reads per token (tg only).
    bytes_per_token: Option<f64>,
    /// Read bandwidth of this machine with `threads` threads, bytes/s.
    bandwidth: f64,
    logits_hash: String,
    /// KV cache bytes of this test.
    kv_bytes: usize,
    /// Peak resident memory of loading the model and running this test: the larger of the two
    /// peaks (the mark is reset before each).
    peak_rss: Option<u64>,
}

/// Resets the peak-RSS mark to the current RSS (Linux >= 4.0; elsewhere a no-op, and the marks
/// below then cover the whole process so far).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident memory of this process since the last reset (Linux `VmHWM`), bytes.
fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

impl Row {
    fn mean(&self) -> f64 {
        self.samples_ts.iter().sum::<f64>() / self.samples_ts.len().max(1) as f64
    }
    fn stddev(&self) -> f64 {
        let n = self.samples_ts.len();
        if n < 2 {
            return 0.0;
        }
        let m = self.mean();
        (self.samples_ts.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    }
    fn gbps(&self) -> Option<f64> {
        self.bytes_per_token.map(|b| b * self.mean() / 1e9)
    }
    fn roofline(&self) -> Option<f64> {
        self.bytes_per_token
            .map(|b| b * self.mean() / self.bandwidth)
    }
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
fn hash(v: &[f32]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in v {
        for b in x.to_bits().to_le_bytes() {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    format!("{:08x}", h >> 32)
}

pub fn run(o: &BenchOptions, out: &mut dyn Write) -> Result<()> {
    if o.reps == 0 {
        bail!("-r must be at least 1");
    }
    if o.prompt == 0 && o.gen == 0 {
        bail!("nothing to measure: both -p and -n are 0");
    }
    if o.threads.contains(&0) {
        bail!("thread counts must be at least 1");
    }
    let mut bw = Vec::new();
    for &t in &o.threads {
        // 1 GiB: far beyond any L3, so this is DRAM.
        bw.push((t, cria_kernels::membw::read_bandwidth(t, 1024, 5)));
        eprintln!(
            "read bandwidth, {t} thread(s): {:.1} GB/s",
            bw.last().unwrap().1 / 1e9
        );
    }
    // Each row's peak memory is what loading the model and running that one test takes: the
    // mark is reset before each load (after the bandwidth probe's 1 GiB is freed) and before
    // each test, and a row reports max(load peak, test peak). Without the per-test reset a tg
    // row would carry the pp test's larger KV cache and activations, run before it in this
    // process.
    let mut rows = Vec::new();
    if !o.json {
        writeln!(
            out,
            "| model | size | params | backend | threads | test | t/s | GB/s | roofline | logits |"
        )?;
        writeln!(out, "|---|---:|---:|---|---:|---:|---:|---:|---:|---|")?;
    }
    for spec in &o.models {
        for &(threads, bandwidth) in &bw {
            reset_peak_rss();
            let l = crate::load::with(
                spec.as_deref(),
                &cria_engine::LoadOptions {
                    f32: false,
                    threads: Some(threads),
                    kv_type: o.kv_type,
                },
            )?;
            let load_peak = peak_rss();
            let m = &l.model;
            let c = &m.config;
            let name = match &m.source {
                cria_model::Source::Gguf(g) => g.path.file_name(),
                cria_model::Source::HfFolder { dir, .. } => dir.file_name(),
            }
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
            let size = match &m.source {
                cria_model::Source::Gguf(g) => g.file_bytes,
                _ => (m.weight_bytes() + m.weights.token_embd.byte_len) as u64,
            };
            let mut tests = Vec::new();
            if o.prompt > 0 {
                tests.push((format!("pp{}", o.prompt), o.prompt, true));
            }
            if o.gen > 0 {
                tests.push((format!("tg{}", o.gen), o.gen, false));
            }
            for (test, n, is_pp) in tests {
                let ctx = if is_pp { n } else { n + 1 };
                if ctx > c.max_seq_len.max(ctx) {
                    bail!("{test} needs {ctx} positions");
                }
                reset_peak_rss();
                let mut kv = KvCache::try_with_type(m, ctx, l.kv_type)?;
                let mut s = Scratch::new(m, if is_pp { n } else { 1 }, Logits::Last);
                // One fixed token stream per test, the same in every repetition: the logits
                // hash then depends on the model, the test and the code only (not on -r, the
                // thread count or timing), so runs and repetitions can be compared.
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
                let toks: Vec<u32> = (0..n).map(|_| rng.next(c.vocab_size)).collect();
                let mut samples = Vec::new();
                let (mut first_hash, mut varies) = (String::new(), false);
                // Run 0 is the warm-up (page faults of the mapping, caches, thread wake-up).
                for rep in 0..=o.reps {
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
                        eprintln!(
                            "warning: {name} {test} t={threads}: repetition {rep} gave logits \
                             hash {h}, the warm-up run {first_hash}: not deterministic"
                        );
                        varies = true;
                    }
                }
                // Attention reads the K/V of every earlier position: on average (n+1)/2 of them.
                let bytes_per_token = (!is_pp).then(|| {
                    m.weight_bytes() as f64
                        + m.weights.token_embd.row_bytes() as f64
                        + kv.bytes_per_position() as f64 * (n + 1) as f64 / 2.0
                });
                let row = Row {
                    model: name.clone(),
                    dtype: m.main_dtype().to_string(),
                    size_bytes: size,
                    params: m.n_params(),
                    backend: cria_kernels::Backend::name(&l.backend),
                    threads,
                    test,
                    tokens: n,
                    samples_ts: samples,
                    bytes_per_token,
                    bandwidth,
                    logits_hash: if varies { "varies".into() } else { first_hash },
                    kv_bytes: kv.bytes_per_position() * ctx,
                    peak_rss: peak_rss().max(load_peak),
                };
                if !o.json {
                    print_md(&row, out)?;
                }
                rows.push(row);
            }
        }
    }
    if o.json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "model": r.model, "type": r.dtype, "size_bytes": r.size_bytes,
                    "params": r.params, "backend": r.backend, "threads": r.threads,
                    "test": r.test, "n_tokens": r.tokens, "avg_ts": r.mean(),
                    "stddev_ts": r.stddev(), "samples_ts": r.samples_ts,
                    "bytes_per_token": r.bytes_per_token, "read_bandwidth": r.bandwidth,
                    "gbps": r.gbps(), "roofline": r.roofline(), "logits_hash": r.logits_hash,
                    "kv_bytes": r.kv_bytes, "kv_type": o.kv_type.name(), "peak_rss_bytes": r.peak_rss,
                })
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    }
    Ok(())
}

fn print_md(r: &Row, out: &mut dyn Write) -> Result<()> {
    let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("".to_string(), f);
    writeln!(
        out,
        "| {} {} | {:.1} MiB | {} | {} | {} | {} | {:.2} ± {:.2} | {} | {} | {} |",
        r.model,
        r.dtype,
        r.size_bytes as f64 / (1 << 20) as f64,
        crate::inspect::params(r.params),
        r.backend,
        r.threads,
        r.test,
        r.mean(),
        r.stddev(),
        opt(r.gbps(), &|g| format!("{g:.1}")),
        opt(r.roofline(), &|x| format!("{:.0}%", x * 100.0)),
        r.logits_hash
    )?;
    out.flush()?;
    Ok(())
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
