//! What `cria bench` measures, as llama.cpp's `llama-bench` does (pp: one batch of `n` random
//! tokens from an empty context; tg: `n` single-token steps of random tokens from an empty
//! context; a warm-up run first, then `reps` timed runs), plus what a memory-bound decode is
//! judged by: bytes read per token and the share of the machine's read bandwidth that reaches.

use crate::scheduler::{self, Done, GenParams, Job, NoEmbed, Request, Scheduler, Sink};
use crate::{LoadedModel, SamplerConfig};
use anyhow::Result;
use cria_core::DType;
use cria_kernels::Backend;
use cria_model::lora::lora_tensor;
use cria_model::{
    forward_batch, ActiveLora, AdapterFile, AdapterFormat, KvCache, Logits, LoraTensors, Model,
    Scratch, SeqStep, Target,
};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// One test of a model.
#[derive(Clone, Copy, Debug)]
pub enum Test {
    /// Prompt processing: one forward of `n` tokens.
    Prompt(usize),
    /// Generation: `n` forwards of one token.
    Gen(usize),
    /// `streams` concurrent generations of `n` tokens each through the batch scheduler (one
    /// random token of prompt each, greedy, end-of-text ignored): aggregate tokens/s.
    Streams { streams: usize, n: usize },
}

impl Test {
    /// Tokens each stream processes.
    pub fn n(self) -> usize {
        match self {
            Test::Prompt(n) | Test::Gen(n) | Test::Streams { n, .. } => n,
        }
    }

    /// Concurrent sequences.
    pub fn streams(self) -> usize {
        match self {
            Test::Streams { streams, .. } => streams,
            _ => 1,
        }
    }

    /// llama-bench's name: `pp512`, `tg128`; `tg128x8` for 8 streams.
    pub fn name(self) -> String {
        match self {
            Test::Prompt(n) => format!("pp{n}"),
            Test::Gen(n) => format!("tg{n}"),
            Test::Streams { streams, n } => format!("tg{n}x{streams}"),
        }
    }
}

/// What a row runs with besides the base model: per stream, the adapters of that stream
/// (single-stream tests use the first list; none or empty lists: the base alone).
#[derive(Clone, Default)]
pub struct Variant {
    /// How the table names it ("" for the base).
    pub label: String,
    pub streams: Vec<Vec<ActiveLora>>,
}

impl Variant {
    /// The adapters stream `i` runs with.
    fn of(&self, i: usize) -> &[ActiveLora] {
        if self.streams.is_empty() {
            &[]
        } else {
            &self.streams[i % self.streams.len()]
        }
    }

    /// Bytes of every adapter the first `streams` streams run with (each reads its own once per
    /// token; an adapter shared by several streams counts once per stream, as each applies it
    /// on its own rows).
    fn adapter_bytes(&self, streams: usize) -> usize {
        (0..streams)
            .flat_map(|i| self.of(i))
            .map(|a| a.lora.byte_len)
            .sum()
    }
}

/// Upper bound on the rank of a random adapter (`--lora-random`): far above what adapters use
/// (4..256), and its matrices stay a fraction of the model's.
pub const MAX_RANDOM_RANK: usize = 512;

/// A rank-`rank` adapter of random values over every linear layer of `m` (q, k, v, o, gate, up,
/// down of each layer; not the output head, as PEFT's `all-linear`), its matrices in `dtype`
/// (F32, F16 or BF16), values from `seed`: A like PEFT's initialisation (uniform within
/// 1/sqrt(cols)), B small (a trained adapter's B is not zero), alpha = 2 * rank. For speed
/// measurements: the numbers are meaningless, the bytes and shapes are a real adapter's.
pub fn random_adapter<B: Backend>(
    m: &Model<B>,
    rank: usize,
    dtype: DType,
    seed: u64,
) -> Result<AdapterFile> {
    if rank == 0 || rank > MAX_RANDOM_RANK {
        anyhow::bail!("random adapter rank {rank} (1..={MAX_RANDOM_RANK})");
    }
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
        anyhow::bail!("random adapter type {dtype}: f32, f16 or bf16");
    }
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut uniform = |n: usize, bound: f32| -> Vec<f32> {
        (0..n)
            .map(|_| (rng.next(1 << 24) as f32 / (1u32 << 23) as f32 - 1.0) * bound)
            .collect()
    };
    let mut pairs = Vec::new();
    for (l, lw) in m.weights.layers.iter().enumerate() {
        for (w, t) in lw.matrices().iter().zip(Target::LAYER) {
            let target = format!("blk.{l}.{}.weight", t.gguf_stem());
            let (rows, cols) = (w.rows, w.cols);
            let a = uniform(rank * cols, 1.0 / (cols as f32).sqrt());
            let b = uniform(rows * rank, 0.02);
            pairs.push(LoraTensors {
                a: lora_tensor(format!("{target}.lora_a"), vec![cols, rank], &a, dtype)?,
                b: lora_tensor(format!("{target}.lora_b"), vec![rank, rows], &b, dtype)?,
                target,
                scale: 2.0,
            });
        }
    }
    Ok(AdapterFile {
        path: format!("random-r{rank}-{dtype}-{seed}").into(),
        format: AdapterFormat::Gguf,
        base_model: None,
        interleaved: m.config.rope_interleaved,
        pairs,
        replace: Vec::new(),
        summary: vec![("rank".into(), rank.to_string())],
    })
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
    /// What it ran with besides the base (its `Variant`'s label; "" for the base).
    pub lora: String,
    pub tokens: usize,
    /// Tokens/s of each timed repetition (all streams together for `Test::Streams`).
    pub samples_ts: Vec<f64>,
    /// Bytes the forward reads per token (tg only; adapters included; with several streams,
    /// a step's bytes over its tokens).
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
    fnv(v.iter().flat_map(|x| x.to_bits().to_le_bytes()))
}

/// FNV-1a of bytes, its high 32 bits in hex.
fn fnv(bytes: impl IntoIterator<Item = u8>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    format!("{:08x}", h >> 32)
}

/// Runs `test` on `l` once per variant (the base: `Variant::default()`): for each, the KV
/// caches and scratch made first and a warm-up run; then `reps` rounds, each timing every
/// variant once in turn, so that a slow spell of a shared machine falls on all of them alike.
/// `bandwidth` is the machine's read bandwidth with `l`'s threads (bytes/s), for the rows'
/// roofline. The rows' `peak_rss` is left for the caller.
pub fn measure(
    l: &LoadedModel,
    test: Test,
    reps: usize,
    bandwidth: f64,
    variants: &[Variant],
) -> Result<Vec<(Row, Vec<Mismatch>)>> {
    let m = &l.model;
    let c = &m.config;
    let n = test.n();
    if n == 0 || test.streams() == 0 {
        anyhow::bail!("{}: nothing to run", test.name());
    }
    // One fixed token stream per test, the same in every repetition: the logits hash then
    // depends on the model, the test and the code only (not on -r, the thread count or
    // timing), so runs and repetitions can be compared.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let toks: Vec<u32> = (0..n.max(test.streams()))
        .map(|_| rng.next(c.vocab_size))
        .collect();
    let mut runs = variants
        .iter()
        .map(|v| Runner::new(l, test, v))
        .collect::<Result<Vec<_>>>()?;
    let mut samples = vec![Vec::new(); variants.len()];
    let mut hashes: Vec<String> = vec![String::new(); variants.len()];
    let mut mismatches: Vec<Vec<Mismatch>> = (0..variants.len()).map(|_| Vec::new()).collect();
    // Round 0 is the warm-up (page faults of the mapping, caches, thread wake-up).
    for rep in 0..=reps {
        for (i, (r, v)) in runs.iter_mut().zip(variants).enumerate() {
            let t0 = Instant::now();
            let (tokens, h) = r.run(l, test, &toks, v)?;
            let dt = t0.elapsed().as_secs_f64();
            if rep == 0 {
                hashes[i] = h;
                continue;
            }
            samples[i].push(tokens as f64 / dt);
            if h != hashes[i] {
                mismatches[i].push(Mismatch {
                    rep,
                    hash: h,
                    warm_up: hashes[i].clone(),
                });
            }
        }
    }
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
    let mut out = Vec::new();
    for (((v, r), samples), (hash, mism)) in variants
        .iter()
        .zip(&runs)
        .zip(samples)
        .zip(hashes.into_iter().zip(mismatches))
    {
        let s = test.streams();
        // Per step: the weights once, each stream's embedding row, adapters and K/V;
        // attention reads the K/V of every earlier position: on average (n+1)/2 of them.
        let bytes_per_token = (!matches!(test, Test::Prompt(_))).then(|| {
            (m.weight_bytes() as f64
                + (v.adapter_bytes(s) + s * m.weights.token_embd.row_bytes()) as f64
                + r.kv_per_position as f64 * s as f64 * (n + 1) as f64 / 2.0)
                / s as f64
        });
        let row = Row {
            model: model.clone(),
            dtype: m.main_dtype().to_string(),
            size_bytes,
            params: m.n_params(),
            backend: cria_kernels::Backend::name(&l.backend),
            threads: l.backend.threads,
            test: test.name(),
            lora: v.label.clone(),
            tokens: n,
            samples_ts: samples,
            bytes_per_token,
            bandwidth,
            logits_hash: if mism.is_empty() {
                hash
            } else {
                "varies".into()
            },
            kv_bytes: r.kv_bytes,
            peak_rss: None,
        };
        out.push((row, mism));
    }
    Ok(out)
}

/// One variant's buffers for a test: a KV cache and scratch (pp, tg), or a scheduler's worth
/// (streams: made per run, as the scheduler owns its slots).
struct Runner {
    kv: Option<(KvCache, Scratch)>,
    kv_per_position: usize,
    kv_bytes: usize,
}

impl Runner {
    fn new(l: &LoadedModel, test: Test, _v: &Variant) -> Result<Runner> {
        let m = &l.model;
        let n = test.n();
        let per_pos = KvCache::try_with_type(m, 1, l.kv_type)?.bytes_per_position();
        Ok(match test {
            Test::Prompt(_) | Test::Gen(_) => {
                let is_pp = matches!(test, Test::Prompt(_));
                let ctx = if is_pp { n } else { n + 1 };
                let kv = KvCache::try_with_type(m, ctx, l.kv_type)?;
                let s = Scratch::try_new(m, if is_pp { n } else { 1 }, Logits::Last)?;
                Runner {
                    kv_per_position: kv.bytes_per_position(),
                    kv_bytes: kv.bytes_per_position() * ctx,
                    kv: Some((kv, s)),
                }
            }
            Test::Streams { streams, .. } => Runner {
                kv: None,
                kv_per_position: per_pos,
                kv_bytes: per_pos * (n + 1) * streams,
            },
        })
    }

    /// One timed run: (tokens processed, hash of what it produced).
    fn run(
        &mut self,
        l: &LoadedModel,
        test: Test,
        toks: &[u32],
        v: &Variant,
    ) -> Result<(usize, String)> {
        let m = &l.model;
        match (test, self.kv.as_mut()) {
            (Test::Prompt(n), Some((kv, s))) => {
                let mut step = [SeqStep {
                    tokens: &toks[..n],
                    pos: 0,
                    kv,
                    lora: v.of(0),
                }];
                forward_batch(m, &l.backend, &mut step, s, Logits::Last)?;
                Ok((n, hash(s.logits())))
            }
            (Test::Gen(n), Some((kv, s))) => {
                for (pos, tok) in toks[..n].iter().enumerate() {
                    let mut step = [SeqStep {
                        tokens: std::slice::from_ref(tok),
                        pos,
                        kv: &mut *kv,
                        lora: v.of(0),
                    }];
                    forward_batch(m, &l.backend, &mut step, s, Logits::Last)?;
                }
                Ok((n, hash(s.logits())))
            }
            (Test::Streams { streams, n }, _) => streams_run(l, streams, n, toks, v),
            _ => unreachable!("a runner is made for its test"),
        }
    }
}

/// What a stream's generation came to: its token count and text, or its error.
type StreamResult = std::result::Result<(usize, String), String>;

/// A stream's sink: its text, kept until `done`.
struct Collect {
    text: String,
    out: Arc<Mutex<Vec<StreamResult>>>,
}

impl Sink for Collect {
    fn text(&mut self, text: &str, _: Option<crate::generate::TokenLogprob>) {
        self.text.push_str(text);
    }
    fn done(&mut self, d: Done) {
        let text = std::mem::take(&mut self.text);
        lock(&self.out).push(Ok((d.stats.gen_tokens, text)));
    }
    fn error(&mut self, msg: &str) {
        lock(&self.out).push(Err(msg.to_string()));
    }
    fn is_closed(&self) -> bool {
        false
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `streams` greedy generations of `n` tokens through the scheduler, stream i's prompt the one
/// token toks[i] and its adapters `v.of(i)`: (tokens generated in all, hash of the texts).
fn streams_run(
    l: &LoadedModel,
    streams: usize,
    n: usize,
    toks: &[u32],
    v: &Variant,
) -> Result<(usize, String)> {
    let cfg = scheduler::Config {
        parallel: streams,
        ctx_size: n + 2,
        batch: streams,
        kv_type: l.kv_type,
    };
    let metrics = Arc::new(scheduler::Metrics::default());
    let mut sch: Scheduler<Collect, NoEmbed> =
        Scheduler::new(&l.model, &l.backend, &l.tok, cfg, metrics)?;
    let out = Arc::new(Mutex::new(Vec::new()));
    for (i, &tok) in toks.iter().enumerate().take(streams) {
        sch.submit(Request::Generate(Job {
            prompt: Arc::new(vec![tok]),
            lora: v.of(i).to_vec(),
            params: GenParams {
                sampler: SamplerConfig::greedy(),
                max_tokens: n,
                stop: Vec::new(),
                matcher: None,
                logprobs: None,
                ignore_eos: true,
            },
            sampler: None,
            sink: Collect {
                text: String::new(),
                out: out.clone(),
            },
        }));
    }
    sch.run_until_idle();
    let results = std::mem::take(&mut *lock(&out));
    let mut tokens = 0;
    let mut text = Vec::new();
    for r in results {
        let (k, t) = r.map_err(|e| anyhow::anyhow!("a bench stream failed: {e}"))?;
        tokens += k;
        text.extend(t.into_bytes());
    }
    Ok((tokens, fnv(text)))
}

/// What `cria bench --lookup/--draft-model` measured: decode tokens/s of each timed run
/// without and with speculation (alternating, same prompt, greedy, `n` tokens), what the
/// speculation did over the timed runs, and whether both gave the same text.
pub struct SpecBench {
    pub plain_tps: Vec<f64>,
    pub spec_tps: Vec<f64>,
    pub stats: crate::speculative::SpecStats,
    pub gen_tokens: usize,
    pub same_output: bool,
    /// The measured time of an r-row forward, r = 1.. (adaptive runs).
    pub row_costs: Vec<f64>,
}

/// One greedy answer of `n` tokens to `prompt` in `s`: (text, stats).
fn answer_in(
    s: &mut Scheduler<Collect1, NoEmbed>,
    prompt: &[u32],
    n: usize,
    sampler: &SamplerConfig,
) -> Result<(String, crate::generate::GenStats)> {
    let out = Arc::new(Mutex::new(None));
    s.clear();
    s.submit(Request::Generate(Job {
        prompt: Arc::new(prompt.to_vec()),
        lora: vec![],
        params: GenParams {
            sampler: sampler.clone(),
            max_tokens: n,
            stop: Vec::new(),
            matcher: None,
            logprobs: None,
            ignore_eos: true,
        },
        sampler: None,
        sink: Collect1 {
            text: String::new(),
            out: out.clone(),
        },
    }));
    s.run_until_idle();
    let r = lock(&out).take();
    r.unwrap_or_else(|| Err("no result".into()))
        .map_err(|e| anyhow::anyhow!("the benchmark's generation failed: {e}"))
}

/// A single answer: its text and stats, or why it failed.
type Answer1 = std::result::Result<(String, crate::generate::GenStats), String>;

/// A single answer's sink.
struct Collect1 {
    text: String,
    out: Arc<Mutex<Option<Answer1>>>,
}

impl Sink for Collect1 {
    fn text(&mut self, text: &str, _: Option<crate::generate::TokenLogprob>) {
        self.text.push_str(text);
    }
    fn done(&mut self, d: Done) {
        *lock(&self.out) = Some(Ok((std::mem::take(&mut self.text), d.stats)));
    }
    fn error(&mut self, msg: &str) {
        *lock(&self.out) = Some(Err(msg.to_string()));
    }
    fn is_closed(&self) -> bool {
        false
    }
}

/// Decode speed of `n` greedy tokens after `prompt`, without and with speculation `cfg` (a warm-up
/// answer each, then `reps` timed ones, alternating), in one-slot schedulers as `cria run` uses.
pub fn spec_bench(
    l: &LoadedModel,
    draft: Option<&LoadedModel>,
    prompt: &[u32],
    n: usize,
    cfg: crate::speculative::SpecConfig,
    reps: usize,
    sampler: &SamplerConfig,
) -> Result<SpecBench> {
    let ctx = prompt.len() + n + cfg.draft_max + 2;
    let make = || {
        let c = scheduler::Config {
            parallel: 1,
            ctx_size: ctx,
            batch: 512.min(ctx),
            kv_type: l.kv_type,
        };
        Scheduler::<Collect1, NoEmbed>::new(
            &l.model,
            &l.backend,
            &l.tok,
            c,
            Arc::new(scheduler::Metrics::default()),
        )
    };
    let mut plain = make()?;
    let mut spec = make()?;
    let d = draft.map(|d| scheduler::DraftSetup {
        model: &d.model,
        backend: &d.backend,
        tok: &d.tok,
        kv_type: d.kv_type,
    });
    spec.set_speculation(cfg, d)
        .map_err(|e| anyhow::anyhow!(e))?;
    let (want, _) = answer_in(&mut plain, prompt, n, sampler)?;
    let (got, _) = answer_in(&mut spec, prompt, n, sampler)?;
    let mut same = want == got;
    let tps =
        |st: &crate::generate::GenStats| st.gen_tokens as f64 / st.gen_time.as_secs_f64().max(1e-9);
    let mut r = SpecBench {
        plain_tps: vec![],
        spec_tps: vec![],
        stats: Default::default(),
        gen_tokens: 0,
        same_output: true,
        row_costs: spec.spec_costs().map(<[f64]>::to_vec).unwrap_or_default(),
    };
    for _ in 0..reps {
        let (a, st) = answer_in(&mut plain, prompt, n, sampler)?;
        r.plain_tps.push(tps(&st));
        let (b, st) = answer_in(&mut spec, prompt, n, sampler)?;
        r.spec_tps.push(tps(&st));
        same &= a == want && b == want;
        let s = st.spec.unwrap_or_default();
        r.stats.drafted += s.drafted;
        r.stats.accepted += s.accepted;
        r.stats.forwards += s.forwards;
        r.stats.gated += s.gated;
        r.gen_tokens += st.gen_tokens;
    }
    r.same_output = same;
    Ok(r)
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
            lora: String::new(),
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
