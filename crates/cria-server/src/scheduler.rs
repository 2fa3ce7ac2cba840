//! The engine thread: owns the model and N slots, and runs continuous batching.
//!
//! Each slot has its own KV cache and remembers the tokens whose keys and values it holds. HTTP
//! handlers send [`Job`]s over a channel; each job carries the sender its text goes back on. Every
//! step, each busy slot contributes its next tokens to ONE batched forward (a chunk of the prompt
//! for a slot still reading it, the last sampled token for a slot that is generating); new jobs
//! take free slots between steps and finished ones leave. A new job goes to the free slot whose
//! cached tokens share the longest prefix with its prompt, and only the rest is evaluated; when a
//! busy slot shares a longer prefix (a common system prompt), its rows are copied instead of
//! computed again.
//!
//! A token's logits do not depend on what else is in the batch (the forward is batch-invariant),
//! and each job has its own sampler and random stream, so a seeded request gives the same text
//! alone or batched with others.

use crate::metrics::Metrics;
use cria_engine::grammar::{self, LazyMatcher};
use cria_engine::{Sampler, SamplerConfig, StopMatcher};
use cria_kernels::CpuBackend;
use cria_model::{forward_batch, KvCache, KvType, Logits, Model, Scratch, SeqStep};
use cria_tokenizer::{StreamDecoder, Tokenizer};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// What one generation needs besides its prompt.
pub struct GenParams {
    pub sampler: SamplerConfig,
    /// Tokens to generate at most (the context may end it sooner).
    pub max_tokens: usize,
    pub stop: Vec<String>,
    /// Output constrained to a grammar (response_format, `grammar`, tool calls), ready to
    /// match; it may wait for a trigger (tool calls under `tool_choice: "auto"`).
    pub matcher: Option<LazyMatcher>,
    /// Log-probabilities: None = off; Some(k) = the chosen token's and the k most likely.
    pub logprobs: Option<usize>,
    pub ignore_eos: bool,
}

/// One generation (one choice of a request).
pub struct Job {
    pub prompt: Arc<Vec<u32>>,
    pub params: GenParams,
    /// The choice index its events carry.
    pub index: usize,
    pub tx: UnboundedSender<Event>,
}

/// One input of an embedding request: its mean-pooled, L2-normalized final hidden states. It
/// takes a slot and is read in chunks within each step's token budget, beside the generations;
/// when its client goes away (the receiver is dropped) it is dropped.
pub struct EmbedJob {
    pub input: Vec<u32>,
    /// The input's place in the request, sent back with its vector.
    pub index: usize,
    pub tx: UnboundedSender<(usize, Result<Vec<f32>, String>)>,
}

#[allow(clippy::large_enum_variant)] // each request is moved once, into the queue
pub enum Request {
    Generate(Job),
    Embed(EmbedJob),
    /// The server is shutting down: end every generation now (finish_reason "length"), drop
    /// what is queued (those clients get a 503).
    Shutdown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// End-of-generation token, a stop string, or a grammar that admits nothing more.
    Stop,
    /// max_tokens reached or the context is full.
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// The log-probability of a token under the model (before the sampler's stages).
#[derive(Clone, Debug)]
pub struct TokenLogprob {
    pub bytes: Vec<u8>,
    pub logprob: f32,
    /// The most likely tokens at this position: (bytes, logprob), most likely first.
    pub top: Vec<(Vec<u8>, f32)>,
}

pub struct Event {
    pub index: usize,
    pub kind: EventKind,
}

pub enum EventKind {
    /// Text that is final now (may be empty when only log-probs are new).
    Text {
        text: String,
        logprobs: Option<TokenLogprob>,
    },
    Done {
        finish: Finish,
        cached_tokens: usize,
        completion_tokens: usize,
    },
    Error(String),
}

/// The handlers' side: submit requests; the thread ends when every `Engine` clone is dropped.
#[derive(Clone)]
pub struct Engine {
    tx: mpsc::Sender<Request>,
    /// False once the scheduler thread has ended (set by a guard it drops, panic or not).
    alive: Arc<AtomicBool>,
}

/// Why a request cannot be served: the scheduler thread is gone.
pub const STOPPED: &str = "the scheduler has stopped; the server cannot generate (see its log)";

impl Engine {
    pub fn submit(&self, r: Request) -> Result<(), String> {
        if !self.is_alive() {
            return Err(STOPPED.into());
        }
        self.tx.send(r).map_err(|_| STOPPED.to_string())
    }

    /// See [`Request::Shutdown`].
    pub fn shutdown(&self) {
        let _ = self.tx.send(Request::Shutdown);
    }

    /// Whether the scheduler thread still runs (/health reports it).
    pub fn is_alive(&self) -> bool {
        self.alive.load(Relaxed)
    }
}

/// Marks the engine dead when the scheduler thread ends, however it ends.
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Relaxed);
    }
}

/// Runs one job's piece of work; a panic in it is caught (and its message logged by the panic
/// hook) so that only that job fails, never the scheduler and everyone else's requests.
fn guarded<T>(f: impl FnOnce() -> T) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok()
}

/// What a job whose work panicked is told (the details are in the server's log).
const PANICKED: &str = "internal error while generating (a bug: the server's log has the details)";

/// Test hooks: a generation with this seed panics in the scheduler (while sampling), and one
/// with the other kills the scheduler thread. Compiled into unit tests only.
#[cfg(test)]
pub const PANIC_SEED: u64 = 0xdead_0001;
#[cfg(test)]
pub const KILL_SEED: u64 = 0xdead_0002;

pub struct Config {
    pub parallel: usize,
    /// Context per slot, in tokens.
    pub ctx_size: usize,
    /// Tokens per batched forward at most.
    pub batch: usize,
    pub kv_type: KvType,
}

/// Starts the scheduler thread. It owns the model and backend; the tokenizer is shared with the
/// handlers (they tokenize, the scheduler detokenizes).
pub fn spawn(
    model: Model,
    backend: CpuBackend,
    tok: Arc<Tokenizer>,
    cfg: Config,
    metrics: Arc<Metrics>,
) -> std::io::Result<Engine> {
    let (tx, rx) = mpsc::channel();
    let alive = Arc::new(AtomicBool::new(true));
    let guard = AliveGuard(alive.clone());
    std::thread::Builder::new()
        .name("cria-scheduler".into())
        .spawn(move || {
            let mut s = Scheduler::new(&model, &backend, &tok, cfg, metrics, guard);
            s.run(rx);
        })?;
    Ok(Engine { tx, alive })
}

struct Slot<'t> {
    kv: KvCache,
    /// Tokens whose keys and values are in `kv`, positions 0..len.
    cached: Vec<u32>,
    active: Option<Active<'t>>,
    /// An embedding input being read (a slot has `active` or `embed` or neither).
    embed: Option<Embedding>,
    /// Step at which the slot was last given a job (least recently used goes first on ties).
    last_used: u64,
}

struct Embedding {
    job: EmbedJob,
    /// Tokens read so far, and the sum of their hidden states.
    pos: usize,
    sum: Vec<f64>,
    started: Instant,
}

impl Slot<'_> {
    fn busy(&self) -> bool {
        self.active.is_some() || self.embed.is_some()
    }
}

struct Active<'t> {
    job: Job,
    sampler: Sampler,
    stop: StopMatcher,
    dec: StreamDecoder<'t>,
    /// The sampled token not yet evaluated (None while the prompt is being read).
    next: Option<u32>,
    generated: usize,
    cached_prompt: usize,
    started: Instant,
    first_token: bool,
    /// The current token's text (reused buffer).
    piece: String,
}

struct Scheduler<'a> {
    /// First, so that it is dropped first: the engine reads as dead before the jobs' senders
    /// are dropped and their clients answered.
    _alive: AliveGuard,
    m: &'a Model,
    b: &'a CpuBackend,
    tok: &'a Tokenizer,
    metrics: Arc<Metrics>,
    slots: Vec<Slot<'a>>,
    queue: VecDeque<Request>,
    scratch: Scratch,
    step: u64,
    /// (time, generated tokens) of recent steps, for the tokens/s gauge.
    recent: VecDeque<(Instant, usize)>,
}

/// Prefix shared by two token lists.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// log-softmax of the chosen token and the `k` most likely, from raw logits.
fn logprobs(tok: &Tokenizer, logits: &[f32], chosen: u32, k: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let lse = max as f64 + sum.ln();
    let lp = |id: u32| (logits[id as usize] as f64 - lse) as f32;
    let mut top = Vec::with_capacity(k);
    if k > 0 {
        let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
        let by = |a: &u32, b: &u32| {
            logits[*b as usize]
                .total_cmp(&logits[*a as usize])
                .then(a.cmp(b))
        };
        let k = k.min(ids.len());
        ids.select_nth_unstable_by(k - 1, by);
        ids[..k].sort_unstable_by(by);
        top.extend(ids[..k].iter().map(|&id| (tok.token_to_piece(id), lp(id))));
    }
    TokenLogprob {
        bytes: tok.token_to_piece(chosen),
        logprob: lp(chosen),
        top,
    }
}

impl<'a> Scheduler<'a> {
    fn new(
        m: &'a Model,
        b: &'a CpuBackend,
        tok: &'a Tokenizer,
        cfg: Config,
        metrics: Arc<Metrics>,
        alive: AliveGuard,
    ) -> Self {
        let slots = (0..cfg.parallel)
            .map(|_| Slot {
                kv: KvCache::with_type(m, cfg.ctx_size, cfg.kv_type),
                cached: Vec::with_capacity(cfg.ctx_size),
                active: None,
                embed: None,
                last_used: 0,
            })
            .collect();
        let scratch = Scratch::with_seqs(m, cfg.batch.max(cfg.parallel), cfg.parallel);
        Scheduler {
            _alive: alive,
            m,
            b,
            tok,
            metrics,
            slots,
            queue: VecDeque::new(),
            scratch,
            step: 0,
            recent: VecDeque::new(),
        }
    }

    fn run(&mut self, rx: mpsc::Receiver<Request>) {
        loop {
            let idle = self.queue.is_empty() && !self.slots.iter().any(Slot::busy);
            if idle {
                self.metrics.recent_tps_milli.store(0, Relaxed);
                match rx.recv() {
                    Ok(r) => self.queue.push_back(r),
                    Err(_) => return, // every handle dropped: the server is gone
                }
            }
            while let Ok(r) = rx.try_recv() {
                self.queue.push_back(r);
            }
            #[cfg(test)]
            if self
                .queue
                .iter()
                .any(|r| matches!(r, Request::Generate(j) if j.params.sampler.seed == KILL_SEED))
            {
                panic!("test hook: the scheduler thread dies");
            }
            if self.queue.iter().any(|r| matches!(r, Request::Shutdown)) {
                self.cut_all();
            }
            self.drop_cancelled();
            self.admit();
            self.metrics
                .queue_depth
                .store(self.queue.len() as u64, Relaxed);
            let busy = self.slots.iter().filter(|s| s.busy()).count();
            self.metrics.slots_busy.store(busy as u64, Relaxed);
            if busy > 0 {
                let t0 = Instant::now();
                self.step();
                self.metrics
                    .busy_us
                    .fetch_add(t0.elapsed().as_micros() as u64, Relaxed);
            } else if !self.queue.is_empty() {
                // Everything queued waits for a slot that is busy... which cannot be: admit()
                // fills every free slot. Guard against a spin anyway.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// Clients that went away free their slot (and queue place) at once.
    fn drop_cancelled(&mut self) {
        for s in &mut self.slots {
            if s.active.as_ref().is_some_and(|a| a.job.tx.is_closed()) {
                s.active = None;
                self.metrics.cancelled.fetch_add(1, Relaxed);
            }
            if s.embed.as_ref().is_some_and(|e| e.job.tx.is_closed()) {
                s.embed = None;
                s.cached.clear();
                self.metrics.cancelled.fetch_add(1, Relaxed);
            }
        }
        let before = self.queue.len();
        self.queue.retain(|r| match r {
            Request::Generate(j) => !j.tx.is_closed(),
            Request::Embed(e) => !e.tx.is_closed(),
            Request::Shutdown => false,
        });
        self.metrics
            .cancelled
            .fetch_add((before - self.queue.len()) as u64, Relaxed);
    }

    /// Context per slot, in tokens.
    fn ctx(&self) -> usize {
        self.slots.first().map_or(0, |s| s.kv.max_seq)
    }

    /// Ends every generation where it is and forgets the queue and the embeddings (a shutdown).
    fn cut_all(&mut self) {
        self.queue.clear();
        for i in 0..self.slots.len() {
            if self.slots[i].embed.take().is_some() {
                self.slots[i].cached.clear();
            }
            if let Some(a) = self.slots[i].active.take() {
                let m = &self.metrics;
                if guarded(|| Self::finish(a, Finish::Length, m)).is_none() {
                    self.slots[i].cached.clear();
                }
            }
        }
    }

    /// Gives queued requests free slots, in arrival order.
    fn admit(&mut self) {
        while let Some(free) = self.slots.iter().position(|s| !s.busy()) {
            let Some(r) = self.queue.pop_front() else {
                return;
            };
            match r {
                Request::Generate(job) => {
                    let (tx, index) = (job.tx.clone(), job.index);
                    if guarded(|| self.start(job)).is_none() {
                        fail(&tx, index, PANICKED);
                    }
                }
                Request::Embed(job) if job.input.is_empty() || job.input.len() > self.ctx() => {
                    let msg = format!(
                        "an input of {} tokens does not fit the context of {}",
                        job.input.len(),
                        self.ctx()
                    );
                    let _ = job.tx.send((job.index, Err(msg)));
                }
                Request::Embed(job) => {
                    // The least recently used free slot: its cache is overwritten.
                    let si = (0..self.slots.len())
                        .filter(|&i| !self.slots[i].busy())
                        .min_by_key(|&i| self.slots[i].last_used)
                        .unwrap_or(free);
                    self.step += 1;
                    let slot = &mut self.slots[si];
                    slot.cached.clear();
                    slot.last_used = self.step;
                    slot.embed = Some(Embedding {
                        job,
                        pos: 0,
                        sum: vec![0.0; self.m.config.dim],
                        started: Instant::now(),
                    });
                }
                Request::Shutdown => {}
            }
        }
    }

    /// Puts a job into the free slot whose cache shares the longest prefix with its prompt.
    fn start(&mut self, job: Job) {
        self.step += 1;
        let prompt = job.prompt.clone();
        let mut best: Option<(usize, usize)> = None; // (slot, shared prefix)
        for (i, s) in self.slots.iter().enumerate() {
            if s.busy() {
                continue;
            }
            let c = common_prefix(&s.cached, &prompt);
            let better = match best {
                None => true,
                Some((b, bc)) => c > bc || (c == bc && s.last_used < self.slots[b].last_used),
            };
            if better {
                best = Some((i, c));
            }
        }
        let Some((si, mut common)) = best else {
            self.queue.push_front(Request::Generate(job));
            return;
        };
        // A busy slot may hold a longer prefix (the same system prompt in flight): copy its rows.
        let donor = self
            .slots
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != si)
            .map(|(i, s)| (i, common_prefix(&s.cached, &prompt)))
            .max_by_key(|&(_, c)| c);
        if let Some((di, dc)) = donor {
            // Copying is a memcpy per layer; worth it for anything beyond a few tokens.
            if dc > common + 8 {
                let (dst, src) = if si < di {
                    let (l, r) = self.slots.split_at_mut(di);
                    (&mut l[si], &r[0])
                } else {
                    let (l, r) = self.slots.split_at_mut(si);
                    (&mut r[0], &l[di])
                };
                dst.kv.copy_prefix_from(&src.kv, dc);
                dst.cached.clear();
                dst.cached.extend_from_slice(&src.cached[..dc]);
                common = dc;
            }
        }
        // The last prompt token is always evaluated: its logits give the first token.
        let common = common.min(prompt.len().saturating_sub(1));
        let slot = &mut self.slots[si];
        slot.cached.truncate(common);
        slot.last_used = self.step;
        let mut sampler = Sampler::new(job.params.sampler.clone(), self.m.config.vocab_size);
        for &t in prompt.iter() {
            sampler.accept(t);
        }
        let stop = StopMatcher::new(&job.params.stop);
        slot.active = Some(Active {
            job,
            sampler,
            stop,
            dec: StreamDecoder::new(self.tok),
            next: None,
            generated: 0,
            cached_prompt: common,
            started: Instant::now(),
            first_token: false,
            piece: String::new(),
        });
    }

    /// One step: the generations' batched forward, then embedding inputs in what is left of the
    /// batch's token budget.
    fn step(&mut self) {
        let used = self.step_generate();
        self.step_embed(self.scratch.max_t.saturating_sub(used));
    }

    /// One batched forward over every generating slot, then sampling for those that need a
    /// token. Returns the tokens it carried.
    fn step_generate(&mut self) -> usize {
        // Generating slots first (one token each: they keep streaming while prompts are read),
        // then prompt chunks, oldest request first, in what is left of the batch.
        let budget = self.scratch.max_t;
        let mut plan: Vec<(usize, usize)> = Vec::new(); // (slot, tokens this step)
        let mut used = 0;
        for (i, s) in self.slots.iter().enumerate() {
            if let Some(a) = &s.active {
                if a.next.is_some() {
                    plan.push((i, 1));
                    used += 1;
                }
            }
        }
        let mut prefill: Vec<usize> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.active.as_ref().is_some_and(|a| a.next.is_none()))
            .map(|(i, _)| i)
            .collect();
        prefill.sort_by_key(|&i| self.slots[i].active.as_ref().map(|a| a.started));
        for i in prefill {
            if used >= budget {
                break;
            }
            let s = &self.slots[i];
            let a = s.active.as_ref().expect("busy");
            let left = a.job.prompt.len() - s.cached.len();
            let n = left.min(budget - used);
            plan.push((i, n));
            used += n;
        }
        if plan.is_empty() {
            return 0;
        }
        plan.sort_unstable();
        // Borrow each planned slot's cache mutably and its tokens immutably (disjoint fields).
        let mut seqs: Vec<SeqStep> = Vec::with_capacity(plan.len());
        for (s, n) in planned(&mut self.slots, &plan) {
            let Slot {
                kv, cached, active, ..
            } = s;
            let a = active.as_ref().expect("busy");
            let pos = cached.len();
            let tokens: &[u32] = match &a.next {
                Some(t) => std::slice::from_ref(t),
                None => &a.job.prompt[pos..pos + n],
            };
            seqs.push(SeqStep { tokens, pos, kv });
        }
        let (m, b, metrics) = (self.m, self.b, &self.metrics);
        let res = run_forward(m, b, &mut seqs, &mut self.scratch, Logits::Last, metrics);
        drop(seqs);
        if let Err(e) = res {
            // Not expected (inputs are checked on the way in); fail the jobs of this step.
            for &(i, _) in &plan {
                self.fail_slot(i, &e);
            }
            return used;
        }
        let mut generated = 0;
        for (row, &(i, n)) in plan.iter().enumerate() {
            let slot = &mut self.slots[i];
            let a = slot.active.as_mut().expect("busy");
            match a.next.take() {
                Some(t) => slot.cached.push(t),
                None => {
                    let pos = slot.cached.len();
                    slot.cached.extend_from_slice(&a.job.prompt[pos..pos + n]);
                    if slot.cached.len() < a.job.prompt.len() {
                        continue; // more of the prompt to read next step
                    }
                }
            }
            generated += 1;
            let logits = self.scratch.seq_logits(row);
            let (tok, metrics) = (self.tok, &self.metrics);
            let done = guarded(|| {
                if let Some(fin) = Self::sample(tok, slot, logits, metrics) {
                    let a = slot.active.take().expect("busy");
                    Self::finish(a, fin, metrics);
                }
            });
            if done.is_none() {
                self.fail_slot(i, PANICKED);
            }
        }
        self.track_rate(generated);
        used
    }

    /// The embedding inputs' next chunks, oldest input first, in `budget` tokens: one forward
    /// that gives hidden states (a forward gives logits or hidden states, not both), each row
    /// added to its input's sum; a finished input's vector goes back to its client.
    fn step_embed(&mut self, budget: usize) {
        let mut order: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].embed.is_some())
            .collect();
        order.sort_by_key(|&i| self.slots[i].embed.as_ref().map(|e| e.started));
        let mut plan: Vec<(usize, usize)> = Vec::new(); // (slot, tokens this step)
        let mut used = 0;
        for i in order {
            if used >= budget {
                break;
            }
            let e = self.slots[i].embed.as_ref().expect("embedding");
            let n = (e.job.input.len() - e.pos).min(budget - used);
            plan.push((i, n));
            used += n;
        }
        if plan.is_empty() {
            return;
        }
        plan.sort_unstable();
        let mut seqs: Vec<SeqStep> = Vec::with_capacity(plan.len());
        for (s, n) in planned(&mut self.slots, &plan) {
            let Slot { kv, embed, .. } = s;
            let e = embed.as_ref().expect("embedding");
            seqs.push(SeqStep {
                tokens: &e.job.input[e.pos..e.pos + n],
                pos: e.pos,
                kv,
            });
        }
        let (m, b, metrics) = (self.m, self.b, &self.metrics);
        let res = run_forward(m, b, &mut seqs, &mut self.scratch, Logits::Hidden, metrics);
        drop(seqs);
        if let Err(e) = res {
            for &(i, _) in &plan {
                self.fail_slot(i, &e);
            }
            return;
        }
        let mut rows = self.scratch.hidden().chunks_exact(self.m.config.dim);
        for &(i, n) in &plan {
            let slot = &mut self.slots[i];
            let e = slot.embed.as_mut().expect("embedding");
            for row in rows.by_ref().take(n) {
                e.sum.iter_mut().zip(row).for_each(|(s, &x)| *s += x as f64);
            }
            e.pos += n;
            if e.pos == e.job.input.len() {
                let e = slot.embed.take().expect("embedding");
                let _ = e
                    .job
                    .tx
                    .send((e.job.index, Ok(mean_normalized(&e.sum, e.pos))));
            }
        }
    }

    /// Ends slot `i`'s job with an error; what its cache holds is no longer trusted.
    fn fail_slot(&mut self, i: usize, msg: &str) {
        let slot = &mut self.slots[i];
        if let Some(a) = slot.active.take() {
            fail(&a.job.tx, a.job.index, msg);
        }
        if let Some(e) = slot.embed.take() {
            let _ = e.job.tx.send((e.job.index, Err(msg.to_string())));
        }
        slot.cached.clear();
    }

    fn track_rate(&mut self, generated: usize) {
        let now = Instant::now();
        self.recent.push_back((now, generated));
        while self
            .recent
            .front()
            .is_some_and(|&(t, _)| now.duration_since(t) > Duration::from_secs(10))
        {
            self.recent.pop_front();
        }
        let n: usize = self.recent.iter().map(|&(_, g)| g).sum();
        let span = self
            .recent
            .front()
            .map_or(0.0, |&(t, _)| now.duration_since(t).as_secs_f64());
        if span > 0.05 {
            self.metrics
                .recent_tps_milli
                .store((n as f64 / span * 1e3) as u64, Relaxed);
        }
    }

    /// Samples the slot's next token and sends its text; returns why it stops, if it does.
    fn sample(tok: &Tokenizer, slot: &mut Slot, logits: &[f32], m: &Metrics) -> Option<Finish> {
        let ctx = slot.kv.max_seq;
        let a = slot.active.as_mut().expect("busy");
        let p = &a.job.params;
        #[cfg(test)]
        if p.sampler.seed == PANIC_SEED {
            panic!("test hook: a panic while sampling");
        }
        let t = match &p.matcher {
            Some(g) => grammar::sample(&mut a.sampler, g, logits),
            None => a.sampler.sample(logits),
        };
        if !a.first_token {
            a.first_token = true;
            m.ttft_us_sum
                .fetch_add(a.started.elapsed().as_micros() as u64, Relaxed);
            m.ttft_count.fetch_add(1, Relaxed);
        }
        a.sampler.accept(t);
        a.generated += 1;
        let lp = p.logprobs.map(|k| logprobs(tok, logits, t, k));
        if let Some(g) = a.job.params.matcher.as_mut() {
            if g.accept(t).is_err() {
                // Nothing the grammar allows could be sampled (a grammar the vocabulary cannot
                // spell): end here rather than emit text outside it.
                return Some(Finish::Stop);
            }
        }
        let p = &a.job.params;
        if tok.is_eog(t) && !p.ignore_eos {
            if let Some(lp) = lp {
                a.send_text(String::new(), Some(lp));
            }
            return Some(Finish::Stop);
        }
        a.piece.clear();
        a.dec.push_into(t, &mut a.piece);
        let mut out = String::new();
        let hit = a.stop.push(&a.piece, &mut out);
        if !out.is_empty() || lp.is_some() {
            a.send_text(out, lp);
        }
        if hit.is_some() {
            return Some(Finish::Stop);
        }
        let p = &a.job.params;
        // A grammar completed by the last token allowed is a complete answer: "stop", as in
        // `cria run` (tests/cli_first_day.rs pins the two loops together).
        if p.matcher.as_ref().is_some_and(|g| !g.can_continue()) {
            return Some(Finish::Stop);
        }
        if a.generated >= p.max_tokens {
            return Some(Finish::Length);
        }
        // The sampled token is evaluated next step: it needs a free position.
        if slot.cached.len() >= ctx {
            return Some(Finish::Length);
        }
        a.next = Some(t);
        None
    }

    fn finish(mut a: Active, fin: Finish, m: &Metrics) {
        if a.stop.hit().is_none() {
            let mut rest = a.dec.flush();
            let mut out = String::new();
            a.stop.push(&rest, &mut out);
            if a.stop.hit().is_none() {
                a.stop.flush(&mut out);
            }
            rest = out;
            if !rest.is_empty() {
                a.send_text(rest, None);
            }
        }
        let prompt = a.job.prompt.len();
        m.prompt_tokens.fetch_add(prompt as u64, Relaxed);
        m.prompt_tokens_cached
            .fetch_add(a.cached_prompt as u64, Relaxed);
        m.generated_tokens.fetch_add(a.generated as u64, Relaxed);
        let _ = a.job.tx.send(Event {
            index: a.job.index,
            kind: EventKind::Done {
                finish: fin,
                cached_tokens: a.cached_prompt,
                completion_tokens: a.generated,
            },
        });
    }
}

/// The slots of a step's plan ((slot, tokens), sorted by slot), each with its token count.
fn planned<'s, 't: 's>(
    slots: &'s mut [Slot<'t>],
    plan: &'s [(usize, usize)],
) -> impl Iterator<Item = (&'s mut Slot<'t>, usize)> + 's {
    slots.iter_mut().enumerate().filter_map(move |(i, s)| {
        let k = plan.binary_search_by_key(&i, |p| p.0).ok()?;
        Some((s, plan[k].1))
    })
}

/// One batched forward; an error or a panic in it comes back as the message for its jobs.
fn run_forward(
    m: &Model,
    b: &CpuBackend,
    seqs: &mut [SeqStep],
    scratch: &mut Scratch,
    mode: Logits,
    metrics: &Metrics,
) -> Result<(), String> {
    let tokens: usize = seqs.iter().map(|q| q.tokens.len()).sum();
    metrics.steps.fetch_add(1, Relaxed);
    metrics.step_tokens.fetch_add(tokens as u64, Relaxed);
    guarded(|| {
        forward_batch(m, b, seqs, scratch, mode).map_err(|e| format!("forward pass failed: {e}"))
    })
    .unwrap_or_else(|| Err(PANICKED.into()))
}

/// The mean of `n` rows summed in `sum`, scaled to unit length (all zeros stay zeros).
fn mean_normalized(sum: &[f64], n: usize) -> Vec<f32> {
    let n = n as f64;
    let norm = sum.iter().map(|x| (x / n) * (x / n)).sum::<f64>().sqrt();
    let scale = if norm > 0.0 { 1.0 / (n * norm) } else { 0.0 };
    sum.iter().map(|&x| (x * scale) as f32).collect()
}

fn fail(tx: &UnboundedSender<Event>, index: usize, msg: &str) {
    let _ = tx.send(Event {
        index,
        kind: EventKind::Error(msg.to_string()),
    });
}

impl Active<'_> {
    fn send_text(&mut self, text: String, logprobs: Option<TokenLogprob>) {
        let _ = self.job.tx.send(Event {
            index: self.job.index,
            kind: EventKind::Text { text, logprobs },
        });
    }
}
