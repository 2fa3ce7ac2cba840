//! The batch scheduler: owns the model and N slots, and runs continuous batching. `cria serve`
//! runs it on a thread of its own ([`spawn`]); `cria run` and `cria chat` drive one with a
//! single slot ([`Scheduler::run_until_idle`]), whose cache a chat keeps between turns.
//!
//! Each slot has its own KV cache and remembers the tokens whose keys and values it holds. The
//! fronts submit [`Job`]s; each carries the [`Sink`] its text goes to. Every
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
//!
//! Every generation goes through [`Generation::step`], so the CLI and the server give the same
//! tokens, text and [`StopReason`] for the same request.

use crate::generate::{GenOptions, GenStats, Generation, StopReason, TokenLogprob};
use crate::grammar::LazyMatcher;
use crate::speculative::{
    self, Costs, DraftModel, Gate, SlotSpec, SpecConfig, SpecKind, SpecStats, Stop,
};
use crate::{Sampler, SamplerConfig, StopMatcher};
use cria_kernels::{Backend, CpuBackend};
use cria_model::lora::same_adapters;
use cria_model::{forward_batch, ActiveLora, KvCache, KvType, Logits, Model, Scratch, SeqStep};
use cria_tokenizer::Tokenizer;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// Where a generation's output goes: the server's reply channel, the terminal.
pub trait Sink {
    /// Text that is final now (may be empty when only log-probs are new).
    fn text(&mut self, text: &str, logprobs: Option<TokenLogprob>);
    /// The generation ended; the last call.
    fn done(&mut self, done: Done);
    /// The generation failed; the last call.
    fn error(&mut self, msg: &str);
    /// Nobody reads any more (a client went away, Ctrl-C): the generation is cancelled.
    fn is_closed(&self) -> bool;
}

/// A finished generation: what it measured, and the sampler and grammar it used (a chat keeps
/// them for its next answer).
pub struct Done {
    pub stats: GenStats,
    /// Prompt tokens in all (evaluated and reused).
    pub prompt_len: usize,
    pub sampler: Option<Sampler>,
    pub grammar: Option<LazyMatcher>,
}

/// One generation (one choice of a request).
pub struct Job<S, B: Backend = CpuBackend> {
    pub prompt: Arc<Vec<u32>>,
    /// The LoRA adapters it runs with, at their scales (empty: the base model). Its prompt
    /// reuses only cached prefixes computed with the same adapters.
    pub lora: Vec<ActiveLora<B>>,
    pub params: GenParams,
    /// A sampler to use instead of one made from `params.sampler` (a chat's, kept across
    /// answers, with DRY's sequence breakers).
    pub sampler: Option<Sampler>,
    pub sink: S,
}

/// Where an embedding goes.
pub trait EmbedSink {
    fn send(&mut self, vector: Result<Vec<f32>, String>);
    /// Nobody reads any more: the input is dropped.
    fn is_closed(&self) -> bool;
}

/// The embedding sink of a front without embeddings.
pub enum NoEmbed {}

impl EmbedSink for NoEmbed {
    fn send(&mut self, _: Result<Vec<f32>, String>) {
        match *self {}
    }
    fn is_closed(&self) -> bool {
        match *self {}
    }
}

/// One input of an embedding request: its mean-pooled, L2-normalized final hidden states. It
/// takes a slot and is read in chunks within each step's token budget, beside the generations;
/// when its client goes away (the sink closes) it is dropped.
pub struct EmbedJob<E> {
    pub input: Vec<u32>,
    pub sink: E,
}

#[allow(clippy::large_enum_variant)] // each request is moved once, into the queue
pub enum Request<S, E, B: Backend = CpuBackend> {
    Generate(Job<S, B>),
    Embed(EmbedJob<E>),
    /// The server is shutting down: end every generation now ([`StopReason::Cancelled`]),
    /// drop what is queued.
    Shutdown,
    /// Idle slots forget cached prefixes made with adapters that nothing but idle slots holds
    /// any more (the server unloaded them), so their memory is freed now rather than when the
    /// slots are next used.
    Release,
}

/// The scheduler's counters, for the server's `/metrics`. Plain atomics: no locks on the token
/// path.
#[derive(Default)]
pub struct Metrics {
    /// Generations that ended because the client went away.
    pub cancelled: AtomicU64,
    /// Prompt tokens of finished generations, and how many of them came from a cached prefix.
    pub prompt_tokens: AtomicU64,
    pub prompt_tokens_cached: AtomicU64,
    pub generated_tokens: AtomicU64,
    /// Jobs waiting for a slot, and slots working (gauges set every step).
    pub queue_depth: AtomicU64,
    pub slots_busy: AtomicU64,
    /// Time to first token, summed in microseconds, and its count.
    pub ttft_us_sum: AtomicU64,
    pub ttft_count: AtomicU64,
    /// Batched forward steps, the tokens they carried, and the time spent in them (microseconds).
    pub steps: AtomicU64,
    pub step_tokens: AtomicU64,
    pub busy_us: AtomicU64,
    /// Tokens generated per second over the scheduler's last ten seconds of work, times 1000.
    pub recent_tps_milli: AtomicU64,
}

/// The handlers' side of a scheduler thread: submit requests; the thread ends when every
/// clone is dropped.
pub struct Engine<S, E, B: Backend = CpuBackend> {
    tx: mpsc::Sender<Request<S, E, B>>,
    /// False once the scheduler thread has ended (set by a guard it drops, panic or not).
    alive: Arc<AtomicBool>,
}

/// Why a request cannot be served: the scheduler thread is gone.
pub const STOPPED: &str = "the scheduler has stopped; the server cannot generate (see its log)";

impl<S, E, B: Backend> Clone for Engine<S, E, B> {
    fn clone(&self) -> Self {
        Engine {
            tx: self.tx.clone(),
            alive: self.alive.clone(),
        }
    }
}

impl<S, E, B: Backend> Engine<S, E, B> {
    pub fn submit(&self, r: Request<S, E, B>) -> Result<(), String> {
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

pub struct Config {
    pub parallel: usize,
    /// Context per slot, in tokens.
    pub ctx_size: usize,
    /// Tokens per batched forward at most.
    pub batch: usize,
    pub kv_type: KvType,
}

/// Starts the scheduler thread. It owns the model and backend; the tokenizer is shared with the
/// handlers (they tokenize, the scheduler detokenizes). Returns once the thread has allocated
/// its slots' caches and scratch, or with the reason it could not (a backend out of memory).
pub fn spawn<S: Sink + Send + 'static, E: EmbedSink + Send + 'static, B: Backend + 'static>(
    model: Model<B>,
    backend: B,
    tok: Arc<Tokenizer>,
    cfg: Config,
    metrics: Arc<Metrics>,
) -> cria_core::Result<Engine<S, E, B>> {
    spawn_shared(Arc::new(model), Arc::new(backend), tok, cfg, metrics)
}

/// [`spawn`] over a model and backend the caller keeps too (the server builds LoRA adapters
/// over them on other threads while the scheduler runs).
pub fn spawn_shared<
    S: Sink + Send + 'static,
    E: EmbedSink + Send + 'static,
    B: Backend + 'static,
>(
    model: Arc<Model<B>>,
    backend: Arc<B>,
    tok: Arc<Tokenizer>,
    cfg: Config,
    metrics: Arc<Metrics>,
) -> cria_core::Result<Engine<S, E, B>> {
    spawn_spec(model, backend, tok, cfg, metrics, None)
}

/// [`spawn_shared`] with speculative decoding on every slot (`cfg`, and the draft model for
/// [`SpecKind::DraftModel`]); a refused setting is the error.
pub fn spawn_spec<S: Sink + Send + 'static, E: EmbedSink + Send + 'static, B: Backend + 'static>(
    model: Arc<Model<B>>,
    backend: Arc<B>,
    tok: Arc<Tokenizer>,
    cfg: Config,
    metrics: Arc<Metrics>,
    spec: Option<(SpecConfig, Option<Arc<crate::LoadedModel<B>>>)>,
) -> cria_core::Result<Engine<S, E, B>> {
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    let alive = Arc::new(AtomicBool::new(true));
    let guard = AliveGuard(alive.clone());
    std::thread::Builder::new()
        .name("cria-scheduler".into())
        .spawn(move || {
            let (spec, draft) = match spec {
                Some((c, d)) => (Some(c), d),
                None => (None, None),
            };
            let mut s = match Scheduler::new(&model, &backend, &tok, cfg, metrics) {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            if let Some(c) = spec {
                let d = draft.as_deref().map(|d| DraftSetup {
                    model: &d.model,
                    backend: &d.backend,
                    tok: &d.tok,
                    kv_type: d.kv_type,
                });
                if let Err(e) = s.set_speculation(c, d) {
                    let _ = ready_tx.send(Err(cria_core::Error::msg(e)));
                    return;
                }
            }
            let _ = ready_tx.send(Ok(()));
            // Declared after the scheduler, so dropped before it (a panic included): the engine
            // reads as dead before the jobs' sinks are dropped and their clients answered.
            let _alive = guard;
            s.run(rx);
        })
        .map_err(|e| cria_core::Error::msg(format!("starting the scheduler thread: {e}")))?;
    ready_rx.recv().map_err(|_| {
        cria_core::Error::msg("the scheduler thread ended before it was ready".to_string())
    })??;
    Ok(Engine { tx, alive })
}

struct Slot<'t, S, E, B: Backend> {
    kv: KvCache<B>,
    /// Tokens whose keys and values are in `kv`, positions 0..len.
    cached: Vec<u32>,
    active: Option<Active<'t, S>>,
    /// An embedding input being read (a slot has `active` or `embed` or neither).
    embed: Option<Embedding<E>>,
    /// Step at which the slot was last given a job (least recently used goes first on ties).
    last_used: u64,
    /// The adapters `cached` was computed with (and the active job runs with).
    lora: Vec<ActiveLora<B>>,
}

struct Embedding<E> {
    job: EmbedJob<E>,
    /// Tokens read so far, and the sum of their hidden states.
    pos: usize,
    sum: Vec<f64>,
    started: Instant,
}

impl<S, E, B: Backend> Slot<'_, S, E, B> {
    fn busy(&self) -> bool {
        self.active.is_some() || self.embed.is_some()
    }
}

struct Active<'t, S> {
    prompt: Arc<Vec<u32>>,
    sink: S,
    gen: Generation<'t>,
    /// The sampled token not yet evaluated (None while the prompt is being read).
    next: Option<u32>,
    cached_prompt: usize,
    started: Instant,
    /// When the first token was sampled (the prompt read).
    first_token: Option<Instant>,
    /// What speculation did for it (None: off).
    spec: Option<SpecStats>,
}

/// A draft model for [`Scheduler::set_speculation`]: the model, its backend and tokenizer (checked
/// against the target's), the element type of its caches.
pub struct DraftSetup<'a, B: Backend> {
    pub model: &'a Model<B>,
    pub backend: &'a B,
    pub tok: &'a Tokenizer,
    pub kv_type: KvType,
}

/// Speculative decoding's state (see [`crate::speculative`]).
struct Spec<'a, B: Backend> {
    cfg: SpecConfig,
    draft: Option<DraftModel<'a, B>>,
    /// The verify forward's buffers: every slot's pending token and drafts, all rows' logits,
    /// each row computed exactly as a single step.
    scratch: Scratch<B>,
    costs: Costs,
    /// The realised-rate check (adaptive only).
    gate: Gate,
    /// Tokens the current step generated (for the gate).
    step_tokens: usize,
    /// Whether this step is a plain one of the gate's.
    gated: bool,
    /// Recent answers (the n-gram cache prompt lookup searches after the slot's own tokens).
    shared: VecDeque<Vec<u32>>,
    slots: Vec<SlotSpec<B>>,
    /// Buffers: a slot's context, its drafts.
    ctx: Vec<u32>,
    drafts: Vec<u32>,
}

/// The slots, the queue and the step loop (see the module's documentation).
pub struct Scheduler<'a, S, E, B: Backend = CpuBackend> {
    m: &'a Model<B>,
    b: &'a B,
    tok: &'a Tokenizer,
    metrics: Arc<Metrics>,
    slots: Vec<Slot<'a, S, E, B>>,
    queue: VecDeque<Request<S, E, B>>,
    scratch: Scratch<B>,
    step: u64,
    /// (time, generated tokens) of recent steps, for the tokens/s gauge.
    recent: VecDeque<(Instant, usize)>,
    spec: Option<Spec<'a, B>>,
}

/// Prefix shared by two token lists.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl<'a, S: Sink, E: EmbedSink, B: Backend> Scheduler<'a, S, E, B> {
    pub fn new(
        m: &'a Model<B>,
        b: &'a B,
        tok: &'a Tokenizer,
        cfg: Config,
        metrics: Arc<Metrics>,
    ) -> cria_core::Result<Self> {
        let slots = (0..cfg.parallel)
            .map(|_| {
                Ok(Slot {
                    kv: KvCache::try_with_type(m, cfg.ctx_size, cfg.kv_type)?,
                    cached: Vec::with_capacity(cfg.ctx_size),
                    active: None,
                    embed: None,
                    last_used: 0,
                    lora: Vec::new(),
                })
            })
            .collect::<cria_core::Result<_>>()?;
        let scratch = Scratch::try_with_seqs(m, cfg.batch.max(cfg.parallel), cfg.parallel)?;
        Ok(Scheduler {
            m,
            b,
            tok,
            metrics,
            slots,
            queue: VecDeque::new(),
            scratch,
            step: 0,
            recent: VecDeque::new(),
            spec: None,
        })
    }

    /// Turns speculative decoding on for every slot (see [`crate::speculative`]): prompt
    /// lookup, or `draft`'s model. Refuses settings that cannot work and a draft model of
    /// another vocabulary. With `cfg.adaptive`, times forwards of 1..=draft_max+1 rows of the
    /// model (and a step of the draft model) here, for the draft length.
    pub fn set_speculation(
        &mut self,
        cfg: SpecConfig,
        draft: Option<DraftSetup<'a, B>>,
    ) -> Result<(), String> {
        cfg.validate(self.ctx_size())?;
        let draft = match (cfg.kind, draft) {
            (SpecKind::Lookup, _) => None,
            (SpecKind::DraftModel, None) => return Err("speculation: no draft model".into()),
            (SpecKind::DraftModel, Some(d)) => {
                speculative::check_vocab(self.tok, d.tok)?;
                if d.model.config.vocab_size != self.m.config.vocab_size {
                    return Err(format!(
                        "the draft model has {} logits per token, the model {}: not the same \
                         vocabulary",
                        d.model.config.vocab_size, self.m.config.vocab_size
                    ));
                }
                Some(d)
            }
        };
        let err = |e: cria_core::Error| e.to_string();
        let rows = self.slots.len() * (cfg.draft_max + 1);
        let mut scratch = Scratch::try_with_seqs(self.m, rows, rows).map_err(err)?;
        scratch.decode_exact = true;
        let kv_type = self
            .slots
            .first()
            .map_or(KvType::default(), |s| s.kv.kv_type());
        let ctx = self.ctx_size();
        // The deeper measurement's context: COST_DEPTH, or what the context holds.
        let deep = speculative::COST_DEPTH.min(ctx.saturating_sub(cfg.draft_max + 2));
        let mut costs = if cfg.adaptive {
            let (t, slope) = Costs::measure_slope(
                self.m,
                self.b,
                kv_type,
                cfg.draft_max + 1,
                &mut scratch,
                deep,
            )
            .map_err(err)?;
            Costs {
                t,
                slope,
                draft_step: 0.0,
                draft_slope: 0.0,
            }
        } else {
            Costs::free(cfg.draft_max + 1)
        };
        let draft = match draft {
            None => None,
            Some(d) => {
                let mut ds =
                    Scratch::try_with_seqs(d.model, self.scratch.max_t, speculative::OBSERVE)
                        .map_err(err)?;
                let mut catch_spt = None;
                if cfg.adaptive {
                    let (t, slope) =
                        Costs::measure_slope(d.model, d.backend, d.kv_type, 1, &mut ds, deep)
                            .map_err(err)?;
                    costs.draft_step = t[0];
                    costs.draft_slope = slope[0];
                    // What a probe's catch-up of a window costs per token.
                    let w = speculative::DRAFT_WINDOW.min(ds.max_t);
                    let (m, b, kv) = (d.model, d.backend, d.kv_type);
                    let tw =
                        Costs::measure_rows(m, b, kv, &[w], &mut ds, Costs::DEPTH, Logits::Last)
                            .map_err(err)?;
                    catch_spt = Some(tw[0] / w as f64);
                }
                Some(DraftModel {
                    m: d.model,
                    b: d.backend,
                    kv_type: d.kv_type,
                    scratch: ds,
                    catch_spt,
                })
            }
        };
        let slots = (0..self.slots.len())
            .map(|_| {
                let kv = match &draft {
                    Some(d) => Some(KvCache::try_with_type(d.m, ctx, d.kv_type).map_err(err)?),
                    None => None,
                };
                Ok(SlotSpec::new(kv))
            })
            .collect::<Result<_, String>>()?;
        self.spec = Some(Spec {
            cfg,
            draft,
            scratch,
            costs,
            gate: Gate::default(),
            step_tokens: 0,
            gated: false,
            shared: VecDeque::new(),
            slots,
            ctx: Vec::with_capacity(ctx),
            drafts: Vec::with_capacity(cfg.draft_max),
        });
        Ok(())
    }

    /// The measured cost of an r-row forward, r = 1..=draft_max+1, in seconds (speculation on
    /// and adaptive), for reports.
    pub fn spec_costs(&self) -> Option<&[f64]> {
        self.spec.as_ref().map(|s| &s.costs.t[..])
    }

    /// Queues a request (served by the next [`run_until_idle`](Self::run_until_idle)).
    pub fn submit(&mut self, r: Request<S, E, B>) {
        self.queue.push_back(r);
    }

    /// Runs steps until every queued and running job has ended.
    pub fn run_until_idle(&mut self) {
        while self.tick() {}
    }

    /// Context per slot, in tokens.
    pub fn ctx_size(&self) -> usize {
        self.slots.first().map_or(0, |s| s.kv.max_seq)
    }

    /// Tokens cached in the first slot (what a one-slot chat holds).
    pub fn cached(&self) -> usize {
        self.slots.first().map_or(0, |s| s.cached.len())
    }

    /// Forgets what every idle slot holds (the buffers stay).
    pub fn clear(&mut self) {
        for s in self.slots.iter_mut().filter(|s| !s.busy()) {
            s.cached.clear();
        }
    }

    /// Serves requests from `rx` until every sender is dropped.
    fn run(&mut self, rx: mpsc::Receiver<Request<S, E, B>>) {
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
            if !self.tick() && !self.queue.is_empty() {
                // Everything queued waits for a slot that is busy... which cannot be: admit()
                // fills every free slot. Guard against a spin anyway.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// Admits what it can and runs one step; false when no slot is busy.
    fn tick(&mut self) -> bool {
        if self.queue.iter().any(|r| matches!(r, Request::Shutdown)) {
            self.cut_all();
        }
        if self.queue.iter().any(|r| matches!(r, Request::Release)) {
            self.queue.retain(|r| !matches!(r, Request::Release));
            self.release_adapters();
        }
        self.drop_cancelled();
        self.admit();
        self.metrics
            .queue_depth
            .store(self.queue.len() as u64, Relaxed);
        let busy = self.slots.iter().filter(|s| s.busy()).count();
        self.metrics.slots_busy.store(busy as u64, Relaxed);
        if busy == 0 {
            return false;
        }
        let t0 = Instant::now();
        self.step();
        self.metrics
            .busy_us
            .fetch_add(t0.elapsed().as_micros() as u64, Relaxed);
        true
    }

    /// Clients that went away free their slot (and queue place) at once; their generations end
    /// as [`StopReason::Cancelled`] (the text held back is released, the sink told).
    fn drop_cancelled(&mut self) {
        for i in 0..self.slots.len() {
            let s = &mut self.slots[i];
            if s.active.as_ref().is_some_and(|a| a.sink.is_closed()) {
                let a = s.active.take().expect("busy");
                self.metrics.cancelled.fetch_add(1, Relaxed);
                self.end(i, a, StopReason::Cancelled, false);
            }
            let s = &mut self.slots[i];
            if s.embed.as_ref().is_some_and(|e| e.job.sink.is_closed()) {
                s.embed = None;
                s.cached.clear();
                self.metrics.cancelled.fetch_add(1, Relaxed);
            }
        }
        let before = self.queue.len();
        self.queue.retain_mut(|r| match r {
            Request::Generate(j) if j.sink.is_closed() => {
                // Told all the same, and given back what it brought (a chat's sampler and
                // grammar): every job ends with `done` or `error`.
                j.sink.done(Done {
                    stats: GenStats::not_started(),
                    prompt_len: j.prompt.len(),
                    sampler: j.sampler.take(),
                    grammar: j.params.matcher.take(),
                });
                false
            }
            Request::Generate(_) => true,
            Request::Embed(e) => !e.sink.is_closed(),
            Request::Shutdown | Request::Release => false,
        });
        self.metrics
            .cancelled
            .fetch_add((before - self.queue.len()) as u64, Relaxed);
    }

    /// See [`Request::Release`]: an idle slot whose adapters are held by idle slots alone (no
    /// job, queued or running, and not the front's list of adapters) drops them and its cache.
    fn release_adapters(&mut self) {
        let held_by_idle = |l: &Arc<cria_model::Lora<B>>, slots: &[Slot<S, E, B>]| {
            slots
                .iter()
                .filter(|s| !s.busy())
                .flat_map(|s| s.lora.iter())
                .filter(|a| Arc::ptr_eq(&a.lora, l))
                .count()
        };
        for i in 0..self.slots.len() {
            let s = &self.slots[i];
            if s.busy() {
                continue;
            }
            let orphan = s
                .lora
                .iter()
                .any(|a| Arc::strong_count(&a.lora) == held_by_idle(&a.lora, &self.slots));
            if orphan {
                let s = &mut self.slots[i];
                s.lora.clear();
                s.cached.clear();
            }
        }
    }

    /// Ends every generation where it is and forgets the queue and the embeddings (a shutdown).
    fn cut_all(&mut self) {
        self.queue.clear();
        for i in 0..self.slots.len() {
            if self.slots[i].embed.take().is_some() {
                self.slots[i].cached.clear();
            }
            if let Some(a) = self.slots[i].active.take() {
                self.end(i, a, StopReason::Cancelled, true);
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
                    // The job moves into its slot last: a panic before leaves it here.
                    let mut job = Some(job);
                    if guarded(|| self.start(&mut job)).is_none() {
                        if let Some(mut j) = job {
                            j.sink.error(PANICKED);
                        }
                    }
                }
                Request::Embed(mut job)
                    if job.input.is_empty() || job.input.len() > self.ctx_size() =>
                {
                    let msg = format!(
                        "an input of {} tokens does not fit the context of {}",
                        job.input.len(),
                        self.ctx_size()
                    );
                    job.sink.send(Err(msg));
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
                    slot.lora.clear();
                    slot.last_used = self.step;
                    slot.embed = Some(Embedding {
                        job,
                        pos: 0,
                        sum: vec![0.0; self.m.config.dim],
                        started: Instant::now(),
                    });
                }
                Request::Shutdown | Request::Release => {}
            }
        }
    }

    /// Puts a job into the free slot whose cache shares the longest prefix with its prompt.
    fn start(&mut self, job: &mut Option<Job<S, B>>) {
        self.step += 1;
        let prompt = job.as_ref().expect("a job").prompt.clone();
        let lora = std::mem::take(&mut job.as_mut().expect("a job").lora);
        // A cache computed with other adapters shares nothing with this prompt.
        let shared = |s: &Slot<S, E, B>| {
            if same_adapters(&s.lora, &lora) {
                common_prefix(&s.cached, &prompt)
            } else {
                0
            }
        };
        let mut best: Option<(usize, usize)> = None; // (slot, shared prefix)
        for (i, s) in self.slots.iter().enumerate() {
            if s.busy() {
                continue;
            }
            let c = shared(s);
            let better = match best {
                None => true,
                Some((b, bc)) => c > bc || (c == bc && s.last_used < self.slots[b].last_used),
            };
            if better {
                best = Some((i, c));
            }
        }
        let Some((si, mut common)) = best else {
            let mut j = job.take().expect("a job");
            j.lora = lora;
            self.queue.push_front(Request::Generate(j));
            return;
        };
        // A busy slot may hold a longer prefix (the same system prompt in flight): copy its rows.
        let donor = self
            .slots
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != si)
            .map(|(i, s)| (i, shared(s)))
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
        slot.lora = lora;
        let j = job.as_mut().expect("a job");
        let p = &mut j.params;
        let sampler = j.sampler.take().unwrap_or_else(|| {
            crate::generate::sampler(p.sampler.clone(), self.m.config.vocab_size, self.tok)
        });
        let o = GenOptions {
            max_tokens: p.max_tokens,
            ignore_eos: p.ignore_eos,
            logprobs: p.logprobs,
        };
        let stops = StopMatcher::new(&p.stop);
        let mut gen = Generation::new(self.tok, sampler, stops, p.matcher.take(), o);
        gen.accept_prompt(&prompt);
        let j = job.take().expect("a job");
        slot.active = Some(Active {
            prompt: j.prompt,
            sink: j.sink,
            gen,
            next: None,
            cached_prompt: common,
            started: Instant::now(),
            first_token: None,
            spec: self.spec.as_ref().map(|_| SpecStats::default()),
        });
        if let Some(sp) = &mut self.spec {
            let d = sp.slots[si].draft_kv.take();
            sp.slots[si] = SlotSpec {
                draft_kv: d,
                draft_cached: std::mem::take(&mut sp.slots[si].draft_cached),
                draft_base: sp.slots[si].draft_base,
                ..SlotSpec::new(None)
            };
        }
    }

    /// One step: the generations' batched forward, then embedding inputs in what is left of the
    /// batch's token budget.
    fn step(&mut self) {
        let t0 = Instant::now();
        // Only a step that decodes and does nothing else says how fast decoding is.
        let timed = self
            .slots
            .iter()
            .all(|s| s.embed.is_none() && s.active.as_ref().is_none_or(|a| a.next.is_some()));
        let drafting = match &mut self.spec {
            None => false,
            Some(sp) => {
                sp.step_tokens = 0;
                sp.gated = sp.cfg.adaptive && !sp.gate.drafting();
                !sp.gated
            }
        };
        let used = if drafting && self.make_drafts() {
            // The verify forward of the generating slots, then the prompts in a forward of
            // their own (a prompt chunk gives one row of logits, a verify all of them).
            self.step_verify() + self.step_generate(true)
        } else {
            self.step_generate(false)
        };
        self.step_embed(self.scratch.max_t.saturating_sub(used));
        if let Some(sp) = self.spec.as_mut().filter(|sp| sp.cfg.adaptive) {
            let secs = t0.elapsed().as_secs_f64();
            sp.gate.record(secs, sp.step_tokens, timed);
        }
    }

    /// Drafts for every generating slot, as long as the adaptive length says (see
    /// [`crate::speculative`]); whether any slot has drafts. A drafting failure fails its slot.
    fn make_drafts(&mut self) -> bool {
        let sp = self.spec.as_mut().expect("speculation on");
        let mut any = false;
        let mut failed = Vec::new();
        for (i, slot) in self.slots.iter().enumerate() {
            let st = &mut sp.slots[i];
            st.verify.clear();
            let Some(a) = &slot.active else { continue };
            let Some(t) = a.next else { continue };
            let room = slot.kv.max_seq.saturating_sub(slot.cached.len() + 1);
            let kmax = sp
                .cfg
                .draft_max
                .min(room)
                .min(a.gen.remaining().saturating_sub(1));
            let depth = slot.cached.len();
            st.earn(depth, sp.costs.at(1, depth));
            let mut probe = None;
            let k = if !sp.cfg.adaptive {
                kmax
            } else {
                match sp.costs.best_k(st.accept, kmax, depth) {
                    // A probe, when the slot has earned its cost (PROBE_SHARE of its decode
                    // time); each one that finds drafting still off waits twice as long for the
                    // next (at most MAX_PROBE_EVERY), so a prompt where drafts fail pays for
                    // fewer and fewer of them.
                    0 if st.idle >= st.probe_every && kmax > 0 => {
                        let verify = sp.costs.at(2, depth) - sp.costs.at(1, depth);
                        let draft = sp.draft.as_ref().map_or(0.0, |d| {
                            d.probe_cost(st, &slot.cached, sp.costs.draft_at(depth))
                        });
                        if st.can_probe(verify + draft) {
                            st.probe_every = (st.probe_every * 2).min(speculative::MAX_PROBE_EVERY);
                            probe = Some((Instant::now(), verify));
                            1
                        } else {
                            0
                        }
                    }
                    0 => 0,
                    k => {
                        st.probe_every = speculative::PROBE_EVERY;
                        k
                    }
                }
            };
            if k == 0 {
                st.idle += 1;
                continue;
            }
            sp.ctx.clear();
            sp.ctx.extend_from_slice(&slot.cached);
            sp.ctx.push(t);
            match &mut sp.draft {
                None => {
                    speculative::lookup(&sp.ctx, &sp.shared, k, &mut sp.drafts);
                    if sp.drafts.len() < sp.cfg.draft_min.min(k) {
                        sp.drafts.clear();
                    }
                }
                Some(d) => {
                    let min = sp.cfg.draft_min.min(k);
                    let stop = Stop {
                        p_min: sp.cfg.draft_p_min,
                        all_min: if sp.cfg.adaptive {
                            sp.costs.draft_price(k, depth)
                        } else {
                            0.0
                        },
                    };
                    let r = guarded(|| d.draft(st, &sp.ctx, k, min, stop, &mut sp.drafts));
                    match r {
                        Some(Ok(())) => {}
                        Some(Err(e)) => {
                            failed.push((i, format!("the draft model failed: {e}")));
                            continue;
                        }
                        None => {
                            failed.push((i, PANICKED.to_string()));
                            continue;
                        }
                    }
                }
            }
            if let Some((t0, verify)) = probe {
                st.probe_spent += t0.elapsed().as_secs_f64() + verify;
            }
            if sp.drafts.is_empty() {
                st.idle += 1;
                continue;
            }
            st.idle = 0;
            st.verify.push(t);
            st.verify.extend_from_slice(&sp.drafts);
            any = true;
        }
        for (i, msg) in failed {
            self.fail_slot(i, &msg);
        }
        any
    }

    /// The verify forward: every generating slot's pending token and drafts in ONE batched
    /// forward (all rows' logits), then each slot's rows walked through its generation one token
    /// at a time while the sampled token is the draft (see [`crate::speculative`]). Returns the
    /// tokens it carried.
    fn step_verify(&mut self) -> usize {
        let sp = self.spec.as_mut().expect("speculation on");
        let mut plan: Vec<(usize, usize)> = Vec::new();
        for (i, s) in self.slots.iter().enumerate() {
            if let Some(t) = s.active.as_ref().and_then(|a| a.next) {
                let v = &mut sp.slots[i].verify;
                if v.is_empty() {
                    v.push(t);
                }
                plan.push((i, v.len()));
            }
        }
        let used: usize = plan.iter().map(|p| p.1).sum();
        let mut seqs: Vec<SeqStep<B>> = Vec::with_capacity(plan.len());
        for ((s, _), st) in planned(&mut self.slots, &plan).zip(plan.iter().map(|p| &sp.slots[p.0]))
        {
            let Slot {
                kv, cached, lora, ..
            } = s;
            seqs.push(SeqStep {
                tokens: &st.verify,
                pos: cached.len(),
                kv,
                lora,
            });
        }
        let (m, b, metrics) = (self.m, self.b, &self.metrics);
        let res = run_forward(m, b, &mut seqs, &mut sp.scratch, Logits::All, metrics);
        drop(seqs);
        if let Err(e) = res {
            for &(i, _) in &plan {
                self.fail_slot(i, &e);
            }
            return used;
        }
        let vocab = self.m.config.vocab_size;
        let mut generated = 0;
        let mut ended = Vec::new();
        let mut r0 = 0;
        for &(i, n) in &plan {
            let slot = &mut self.slots[i];
            let st = &mut sp.slots[i];
            let mut accepted = 0;
            for j in 0..n {
                slot.cached.push(st.verify[j]);
                let a = slot.active.as_mut().expect("busy");
                a.next = None;
                generated += 1;
                let logits = &sp.scratch.logits()[(r0 + j) * vocab..(r0 + j + 1) * vocab];
                let metrics = &self.metrics;
                match guarded(|| Self::sample(slot, logits, metrics)) {
                    None => {
                        ended.push((i, None));
                        break;
                    }
                    Some(Some(stop)) => {
                        ended.push((i, Some(stop)));
                        break;
                    }
                    Some(None) => {}
                }
                let a = slot.active.as_ref().expect("busy");
                if j + 1 < n && a.next == Some(st.verify[j + 1]) {
                    accepted += 1;
                } else {
                    break;
                }
            }
            r0 += n;
            st.record(n - 1, accepted);
            if let Some(s) = slot.active.as_mut().and_then(|a| a.spec.as_mut()) {
                s.drafted += n - 1;
                s.accepted += accepted;
                s.forwards += 1;
            }
        }
        for (i, stop) in ended {
            match stop {
                None => self.fail_slot(i, PANICKED),
                Some(stop) => {
                    let a = self.slots[i].active.take().expect("busy");
                    self.end(i, a, stop, true);
                }
            }
        }
        self.track_rate(generated);
        used
    }

    /// One batched forward over every generating slot (none with `prefill_only`: they were
    /// verified), then sampling for those that need a token. Returns the tokens it carried.
    fn step_generate(&mut self, prefill_only: bool) -> usize {
        // Generating slots first (one token each: they keep streaming while prompts are read),
        // then prompt chunks, oldest request first, in what is left of the batch.
        let budget = self.scratch.max_t;
        let mut plan: Vec<(usize, usize)> = Vec::new(); // (slot, tokens this step)
        let mut used = 0;
        for (i, s) in self.slots.iter().enumerate() {
            if let Some(a) = s.active.as_ref().filter(|_| !prefill_only) {
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
            let left = a.prompt.len() - s.cached.len();
            let n = left.min(budget - used);
            plan.push((i, n));
            used += n;
        }
        if plan.is_empty() {
            return 0;
        }
        plan.sort_unstable();
        // Borrow each planned slot's cache mutably and its tokens immutably (disjoint fields).
        let mut seqs: Vec<SeqStep<B>> = Vec::with_capacity(plan.len());
        for (s, n) in planned(&mut self.slots, &plan) {
            let Slot {
                kv,
                cached,
                active,
                lora,
                ..
            } = s;
            let a = active.as_ref().expect("busy");
            let pos = cached.len();
            let tokens: &[u32] = match &a.next {
                Some(t) => std::slice::from_ref(t),
                None => &a.prompt[pos..pos + n],
            };
            seqs.push(SeqStep {
                tokens,
                pos,
                kv,
                lora,
            });
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
        let gated = self.spec.as_ref().is_some_and(|sp| sp.gated);
        for (row, &(i, n)) in plan.iter().enumerate() {
            let slot = &mut self.slots[i];
            let a = slot.active.as_mut().expect("busy");
            let decoding = a.next.is_some();
            match a.next.take() {
                Some(t) => slot.cached.push(t),
                None => {
                    let pos = slot.cached.len();
                    slot.cached.extend_from_slice(&a.prompt[pos..pos + n]);
                    if slot.cached.len() < a.prompt.len() {
                        continue; // more of the prompt to read next step
                    }
                    // The draft model reads the prompt now, with the prompt's processing, so
                    // that the first drafts do not pay for it in decode time. A failure here
                    // shows again (and fails the slot) at the first draft.
                    if let Some(sp) = self.spec.as_mut() {
                        if let Some(d) = sp.draft.as_mut() {
                            let (st, drafts) = (&mut sp.slots[i], &mut sp.drafts);
                            let _ =
                                guarded(|| d.draft(st, &slot.cached, 0, 0, Stop::p(1.0), drafts));
                        }
                    }
                }
            }
            generated += 1;
            if let Some(s) = slot.active.as_mut().and_then(|a| a.spec.as_mut()) {
                s.forwards += 1;
                s.gated += usize::from(gated && decoding);
            }
            let logits = self.scratch.seq_logits(row);
            let metrics = &self.metrics;
            match guarded(|| Self::sample(slot, logits, metrics)) {
                None => self.fail_slot(i, PANICKED),
                Some(None) => {}
                Some(Some(stop)) => {
                    let a = self.slots[i].active.take().expect("busy");
                    self.end(i, a, stop, true);
                }
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
        let mut seqs: Vec<SeqStep<B>> = Vec::with_capacity(plan.len());
        for (s, n) in planned(&mut self.slots, &plan) {
            let Slot { kv, embed, .. } = s;
            let e = embed.as_ref().expect("embedding");
            seqs.push(SeqStep {
                tokens: &e.job.input[e.pos..e.pos + n],
                pos: e.pos,
                kv,
                lora: &[],
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
                let mut e = slot.embed.take().expect("embedding");
                e.job.sink.send(Ok(mean_normalized(&e.sum, e.pos)));
            }
        }
    }

    /// Ends slot `i`'s job with an error; what its cache holds is no longer trusted.
    fn fail_slot(&mut self, i: usize, msg: &str) {
        let slot = &mut self.slots[i];
        if let Some(mut a) = slot.active.take() {
            a.sink.error(msg);
        }
        if let Some(mut e) = slot.embed.take() {
            e.job.sink.send(Err(msg.to_string()));
        }
        slot.cached.clear();
    }

    fn track_rate(&mut self, generated: usize) {
        if let Some(sp) = &mut self.spec {
            sp.step_tokens += generated;
        }
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
    fn sample(slot: &mut Slot<S, E, B>, logits: &[f32], m: &Metrics) -> Option<StopReason> {
        // The sampled token is evaluated next step: it needs a free position.
        let room = slot.cached.len() < slot.kv.max_seq;
        let a = slot.active.as_mut().expect("busy");
        if a.first_token.is_none() {
            a.first_token = Some(Instant::now());
            m.ttft_us_sum
                .fetch_add(a.started.elapsed().as_micros() as u64, Relaxed);
            m.ttft_count.fetch_add(1, Relaxed);
        }
        let step = a.gen.step(logits, room);
        if !a.gen.text().is_empty() || step.logprobs.is_some() {
            a.sink.text(a.gen.text(), step.logprobs);
        }
        if step.stop.is_none() {
            a.next = step.token;
        }
        step.stop
    }

    /// Ends slot `i`'s generation `a` (taken out of the slot): the text held back, then
    /// [`Sink::done`]; `count` it in the metrics. A panic fails the job instead.
    fn end(&mut self, i: usize, a: Active<'a, S>, stop: StopReason, count: bool) {
        if let Some(sp) = &mut self.spec {
            // The answer joins the n-gram cache prompt lookup searches (newest first).
            let c = &self.slots[i].cached;
            if c.len() > a.prompt.len() && sp.draft.is_none() {
                sp.shared.push_front(c[a.prompt.len()..].to_vec());
                let mut total: usize = sp.shared.iter().map(Vec::len).sum();
                while sp.shared.len() > speculative::SHARED_ANSWERS
                    || total > speculative::SHARED_TOKENS
                {
                    total -= sp.shared.pop_back().map_or(0, |v| v.len());
                }
            }
        }
        let m = &self.metrics;
        let mut a = Some(a);
        if guarded(|| Self::finish(a.take().expect("active"), stop, m, count)).is_none() {
            if let Some(mut a) = a {
                a.sink.error(PANICKED);
            }
            self.slots[i].cached.clear();
        }
    }

    fn finish(mut a: Active<S>, stop: StopReason, m: &Metrics, count: bool) {
        let now = Instant::now();
        let rest = a.gen.finish();
        if !rest.is_empty() {
            a.sink.text(rest, None);
        }
        let prompt = a.prompt.len();
        let generated = a.gen.generated();
        if count {
            m.prompt_tokens.fetch_add(prompt as u64, Relaxed);
            m.prompt_tokens_cached
                .fetch_add(a.cached_prompt as u64, Relaxed);
            m.generated_tokens.fetch_add(generated as u64, Relaxed);
        }
        let first = a.first_token.unwrap_or(now);
        let stats = GenStats {
            stop,
            prompt_tokens: prompt - a.cached_prompt,
            reused_tokens: a.cached_prompt,
            prompt_time: first.duration_since(a.started),
            gen_tokens: generated,
            gen_time: now.duration_since(first),
            spec: a.spec,
        };
        let (sampler, grammar) = a.gen.into_parts();
        a.sink.done(Done {
            stats,
            prompt_len: prompt,
            sampler: Some(sampler),
            grammar,
        });
    }
}

/// The slots of a step's plan ((slot, tokens), sorted by slot), each with its token count.
fn planned<'s, 't: 's, S, E, B: Backend>(
    slots: &'s mut [Slot<'t, S, E, B>],
    plan: &'s [(usize, usize)],
) -> impl Iterator<Item = (&'s mut Slot<'t, S, E, B>, usize)> + 's {
    slots.iter_mut().enumerate().filter_map(move |(i, s)| {
        let k = plan.binary_search_by_key(&i, |p| p.0).ok()?;
        Some((s, plan[k].1))
    })
}

/// One batched forward; an error or a panic in it comes back as the message for its jobs.
fn run_forward<B: Backend>(
    m: &Model<B>,
    b: &B,
    seqs: &mut [SeqStep<B>],
    scratch: &mut Scratch<B>,
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
