//! Speculative decoding: a slot drafts a few tokens cheaply, and ONE batched forward of the
//! target model (the slot's pending token and its drafts, beside the other slots' rows) checks
//! them all; every weight is read once for several tokens.
//!
//! Two drafters: prompt lookup ([`Lookup`]: the tokens that followed the longest earlier match of
//! the context's last n-gram, in the prompt, the answer so far, and in the server the recent
//! answers of every slot) and a draft model ([`DraftModel`]: a small model of the same
//! vocabulary, greedy, with a KV cache of its own per slot).
//!
//! Exactness. The verify forward computes each row bit for bit as a single-token step does
//! (`Scratch::decode_exact`; tests/spec_verify_rows.rs asserts it), and the scheduler walks the
//! rows through [`crate::generate::Generation::step`] one at a time, exactly as plain decoding
//! does: each row's token is sampled by the request's own sampler chain (penalties, grammar,
//! logit bias, stop strings, the random stream: all see the tokens one at a time, as without
//! speculation). A draft is accepted when the sampled token equals it; the first token that
//! differs is kept (it is the next token) and the rows after it are dropped: their KV positions
//! are overwritten later.
//!
//! Both drafters draft deterministically (lookup copies, the draft model takes its argmax), so
//! the draft distribution q is a point mass on the draft d. The standard speculative sampling
//! rule then reads: accept d with probability min(1, p(d)/1) = p(d); on rejection sample from
//! normalize(max(0, p - q)) = p without d. Sampling t ~ p and accepting when t == d is that same
//! rule (P(accept) = p(d); a rejected t is distributed as p conditioned on t != d), and on full
//! acceptance the last row's token is the bonus token. With one uniform per token, as plain
//! decoding draws, a seeded request gives the SAME text with and without speculation, not only
//! the same distribution; greedy output is identical token for token.
//!
//! Adaptive: the draft length follows the slot's measured acceptance a (an average over recent
//! drafts): with k drafts a verify yields E(k) = 1 + a + ... + a^k tokens and costs
//! t(k + 1) (+ k draft-model steps), with t(r) the measured time of an r-row forward of this
//! model on this machine ([`Costs::measure`]); the k that maximizes tokens per second is used,
//! and k = 0 (no drafting) when nothing beats a plain step. A slot that stopped drafting probes
//! with one draft after [`PROBE_EVERY`] steps, so acceptance that comes back is noticed; each
//! probe that finds drafting still off doubles the wait (up to [`MAX_PROBE_EVERY`]), and probes
//! are paid from a budget of [`PROBE_SHARE`] of the slot's decode time (a request's first probe
//! is free). A draft model's probe first catches its cache up on the tokens decoded meanwhile
//! (at most [`DRAFT_WINDOW`]: a cache further behind is rebuilt on the last ones), and the last
//! [`OBSERVE`] of those are read with all their logits: the draft model's argmax at each,
//! against the token that came, is an acceptance observation, so a probe learns from up to 7
//! tokens rather than one. A draft model's head can be cut to the first ids
//! ([`DRAFT_VOCAB`], `Model::keep_head_rows`): a third of the head's cost, the same acceptance
//! on English text.
//!
//! The cost model can be wrong (a busy machine, caches the timing calls did not see, the draft
//! model catching up after a rejection), so the realised rate has the last word ([`Gate`]): the
//! scheduler alternates a few plain steps with phases of speculative steps, times both as they
//! really run, and keeps speculating only while its seconds per token beat the plain steps'.
//! When they do not, speculation stays off for [`GATE_OFF_MIN`] steps, then tries again, each
//! failed trial doubling the wait (up to [`GATE_OFF_MAX`]).

use cria_kernels::Backend;
use cria_model::{forward_batch, KvCache, KvType, Logits, Model, Scratch, SeqStep};
use cria_tokenizer::{Tokenizer, VocabDiff};
use std::collections::VecDeque;
use std::time::Instant;

/// The longest n-gram prompt lookup matches (it tries this length first, then shorter ones).
pub const NGRAM_MAX: usize = 4;
/// The shortest.
pub const NGRAM_MIN: usize = 1;
/// Recent answers the shared n-gram cache keeps (the server), and their total tokens at most.
pub const SHARED_ANSWERS: usize = 16;
pub const SHARED_TOKENS: usize = 1 << 15;
/// A slot whose drafting switched itself off tries one draft this often (steps).
pub const PROBE_EVERY: u32 = 16;
/// The longest wait between probes: each probe that finds drafting still not paying doubles
/// the wait, from [`PROBE_EVERY`] up to this.
pub const MAX_PROBE_EVERY: u32 = 256;
/// Probes spend at most this share of a slot's decode time (counted in plain steps' measured
/// cost): a probe waits until the slot has earned its estimated cost.
pub const PROBE_SHARE: f64 = 0.01;
/// A draft cache more than this many tokens behind its slot (drafting was off a while) is
/// rebuilt from the slot's last `DRAFT_WINDOW` tokens, not caught up on all of them: a catch-up
/// costs about a tenth of a target step per token, which would make every probe (and the first
/// draft after the realised-rate check turned drafting off) cost ~6% of the steps it waited.
/// Drafts only propose, so a shorter draft context changes acceptance, never the output.
pub const DRAFT_WINDOW: usize = 32;
/// A catch-up of the draft cache (before drafting) also gives the draft model's argmax at its
/// last this-many positions, each compared with the token that really followed: acceptance
/// observed on the tokens decoded while drafting was off, so that one probe tells about many
/// tokens, not one.
pub const OBSERVE: usize = 8;
/// Tokens per forward when [`Costs::measure`] fills a context.
pub const FILL_CHUNK: usize = 128;
/// The deeper context the row costs are measured at (or the context size, if smaller): their
/// growth with context (attention) is extrapolated linearly from there.
pub const COST_DEPTH: usize = 1024;
/// The realised-rate check ([`Gate`]): plain steps timed before each speculative phase.
pub const GATE_PLAIN: u32 = 4;
/// Speculative steps of the first phase (timed, then compared with the plain steps); each phase
/// that beats plain steps doubles the next, up to [`GATE_SPEC_MAX`], so the plain steps that
/// keep measuring cost little where speculation pays.
pub const GATE_SPEC: u32 = 16;
pub const GATE_SPEC_MAX: u32 = 256;
/// Speculative steps of a trial after an off period.
pub const GATE_TRIAL: u32 = 8;
/// Plain steps after a speculative phase that was slower than plain steps; doubled after each
/// such phase, up to [`GATE_OFF_MAX`].
pub const GATE_OFF_MIN: u32 = 16;
pub const GATE_OFF_MAX: u32 = 1024;
/// The draft model's head rows by default (`--draft-vocab`, `Model::keep_head_rows`).
pub const DRAFT_VOCAB: usize = 16384;
/// Most drafted tokens per verify (--draft-max, --lookup).
pub const MAX_DRAFT: usize = 64;

/// What a user asks for (`--lookup N`, `--draft-model M --draft-max --draft-min --draft-p-min`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SpecConfig {
    pub kind: SpecKind,
    /// Drafted tokens per verify at most.
    pub draft_max: usize,
    /// A draft model drafts at least this many tokens, whatever its confidence (lookup: the
    /// shortest continuation worth a verify).
    pub draft_min: usize,
    /// A draft model stops drafting when its top probability falls below this.
    pub draft_p_min: f32,
    /// The draft length follows acceptance and cost (off: always `draft_max`, for tests).
    pub adaptive: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecKind {
    Lookup,
    DraftModel,
}

impl SpecConfig {
    /// The settings the command-line flags ask for (`--lookup`, `--draft-model` given, its
    /// `--draft-max/--draft-min/--draft-p-min` when set, `--draft-fixed`), checked as far as
    /// they can be without the context size; None: no speculation. `cria run/chat/bench` and
    /// `cria serve` both build theirs here.
    pub fn from_flags(
        lookup: Option<usize>,
        draft_model: bool,
        draft_max: Option<usize>,
        draft_min: Option<usize>,
        draft_p_min: Option<f32>,
        fixed: bool,
    ) -> Result<Option<SpecConfig>, String> {
        let mut c = match (lookup, draft_model) {
            (Some(n), _) => SpecConfig::lookup(n),
            (None, true) => {
                let d = SpecConfig::draft_model();
                SpecConfig {
                    draft_max: draft_max.unwrap_or(d.draft_max),
                    draft_min: draft_min.unwrap_or(d.draft_min),
                    draft_p_min: draft_p_min.unwrap_or(d.draft_p_min),
                    ..d
                }
            }
            (None, false) => return Ok(None),
        };
        c.adaptive = !fixed;
        c.validate(usize::MAX)?;
        Ok(Some(c))
    }

    /// `--lookup n`.
    pub fn lookup(n: usize) -> Self {
        SpecConfig {
            kind: SpecKind::Lookup,
            draft_max: n,
            draft_min: 1,
            draft_p_min: 0.0,
            adaptive: true,
        }
    }

    /// `--draft-model` with llama.cpp's defaults.
    pub fn draft_model() -> Self {
        SpecConfig {
            kind: SpecKind::DraftModel,
            draft_max: 8,
            draft_min: 1,
            draft_p_min: 0.8,
            adaptive: true,
        }
    }

    /// The settings against a context of `ctx` tokens: clear errors for what cannot work.
    pub fn validate(&self, ctx: usize) -> Result<(), String> {
        let what = match self.kind {
            SpecKind::Lookup => "--lookup",
            SpecKind::DraftModel => "--draft-max",
        };
        if self.draft_max == 0 {
            return Err(format!(
                "{what} 0: at least 1 drafted token (leave the option out for no speculation)"
            ));
        }
        if self.draft_max > MAX_DRAFT {
            return Err(format!(
                "{what} {}: at most {MAX_DRAFT} drafted tokens per verify",
                self.draft_max
            ));
        }
        if self.draft_max + 1 >= ctx {
            return Err(format!(
                "{what} {}: a verify of {} tokens does not fit the context of {ctx} (lower it or \
                 raise --ctx-size)",
                self.draft_max,
                self.draft_max + 1
            ));
        }
        if self.draft_min > self.draft_max {
            return Err(format!(
                "--draft-min {} is above --draft-max {}",
                self.draft_min, self.draft_max
            ));
        }
        if !(0.0..=1.0).contains(&self.draft_p_min) {
            return Err(format!(
                "--draft-p-min {}: a probability in [0, 1]",
                self.draft_p_min
            ));
        }
        Ok(())
    }
}

/// A draft model refused for `target`: the first token whose text differs (id and both
/// strings), or the vocabulary sizes.
pub fn check_vocab(target: &Tokenizer, draft: &Tokenizer) -> Result<(), String> {
    let what = "the draft model's vocabulary differs from the model's";
    match target.vocab_diff(draft) {
        None => Ok(()),
        Some(VocabDiff::Token { id, ours, theirs }) => Err(format!(
            "{what}: token {id} is {ours:?} in the model but {theirs:?} in the draft model \
             (speculative decoding needs the same vocabulary)"
        )),
        Some(VocabDiff::Size { ours, theirs }) => Err(format!(
            "{what}: {theirs} tokens against {ours} (token {} is {})",
            ours.min(theirs),
            if ours > theirs {
                "the model's only"
            } else {
                "the draft model's only"
            }
        )),
    }
}

/// Prompt lookup: up to `k` tokens that followed the most recent earlier occurrence of the
/// longest suffix of `ctx` (NGRAM_MAX down to NGRAM_MIN tokens) in `ctx`, else in `shared` (the
/// recent answers, newest first). Empty when nothing matches.
pub fn lookup(ctx: &[u32], shared: &VecDeque<Vec<u32>>, k: usize, out: &mut Vec<u32>) {
    out.clear();
    if k == 0 || ctx.is_empty() {
        return;
    }
    for n in (NGRAM_MIN..=NGRAM_MAX.min(ctx.len())).rev() {
        let key = &ctx[ctx.len() - n..];
        // In the context itself (not the suffix itself: a match has a token after it).
        if let Some(at) = find_last(ctx, key) {
            let from = at + n;
            out.extend(ctx[from..].iter().take(k));
            return;
        }
        for s in shared {
            if let Some(at) = find_last(s, key) {
                let from = at + n;
                if from < s.len() {
                    out.extend(s[from..].iter().take(k));
                    return;
                }
            }
        }
    }
}

/// Start of the last occurrence of `key` in `hay` that has at least one token after it.
fn find_last(hay: &[u32], key: &[u32]) -> Option<usize> {
    let n = key.len();
    if hay.len() < n + 1 {
        return None;
    }
    let last = *key.last().expect("non-empty key");
    (0..hay.len() - n)
        .rev()
        .find(|&i| hay[i + n - 1] == last && &hay[i..i + n] == key)
}

/// The measured time of an r-row forward, r = 1..=rows (seconds), after [`Costs::DEPTH`]
/// positions of context, and what each further position of context adds to it (attention), for
/// the adaptive draft length; `draft_step`/`draft_slope`: the same for one step of the draft
/// model (0 for lookup).
#[derive(Clone, Debug)]
pub struct Costs {
    pub t: Vec<f64>,
    pub slope: Vec<f64>,
    pub draft_step: f64,
    pub draft_slope: f64,
}

impl Costs {
    /// The context of the first measurement.
    pub const DEPTH: usize = 64;

    /// Every extra row costs nothing: always draft the most (tests and fixed drafting).
    pub fn free(rows: usize) -> Self {
        Costs {
            t: vec![1.0; rows.max(1)],
            slope: vec![0.0; rows.max(1)],
            draft_step: 0.0,
            draft_slope: 0.0,
        }
    }

    /// Times of forwards of 1..=rows tokens at contexts [`Self::DEPTH`] and `deep` (when
    /// larger): (times at DEPTH, seconds per further position).
    pub fn measure_slope<B: Backend>(
        m: &Model<B>,
        b: &B,
        kv_type: KvType,
        rows: usize,
        s: &mut Scratch<B>,
        deep: usize,
    ) -> cria_core::Result<(Vec<f64>, Vec<f64>)> {
        let t = Self::measure(m, b, kv_type, rows, s, Self::DEPTH)?;
        if deep <= Self::DEPTH + 64 {
            return Ok((t.clone(), vec![0.0; t.len()]));
        }
        let td = Self::measure(m, b, kv_type, rows, s, deep)?;
        let span = (deep - Self::DEPTH) as f64;
        let slope = t
            .iter()
            .zip(&td)
            .map(|(a, d)| ((d - a) / span).max(0.0))
            .collect();
        Ok((t, slope))
    }

    /// Times forwards of 1..=rows tokens of `m` (the fastest of a few calls each) after `depth`
    /// positions of context, on a cache of its own, in `s` (which must hold `rows` rows of
    /// logits).
    pub fn measure<B: Backend>(
        m: &Model<B>,
        b: &B,
        kv_type: KvType,
        rows: usize,
        s: &mut Scratch<B>,
        depth: usize,
    ) -> cria_core::Result<Vec<f64>> {
        let all: Vec<usize> = (1..=rows).collect();
        Self::measure_rows(m, b, kv_type, &all, s, depth, Logits::All)
    }

    /// Times forwards of each of `rows` tokens (ascending) as [`Self::measure`] does, asking the
    /// forward for `logits` (`s` must hold them).
    pub fn measure_rows<B: Backend>(
        m: &Model<B>,
        b: &B,
        kv_type: KvType,
        rows: &[usize],
        s: &mut Scratch<B>,
        depth: usize,
        logits: Logits,
    ) -> cria_core::Result<Vec<f64>> {
        let ctx = depth + rows.iter().copied().max().unwrap_or(0);
        let mut kv = KvCache::try_with_type(m, ctx, kv_type)?;
        let v = m.config.vocab_size as u32;
        let toks: Vec<u32> = (0..ctx as u32).map(|i| (i * 7919 + 11) % v).collect();
        // The context first, as a generation has some, in chunks of a prompt's size.
        let mut fill = Scratch::try_new(m, crate::speculative::FILL_CHUNK, Logits::Last)?;
        for c0 in (0..depth).step_by(FILL_CHUNK) {
            let mut seq = [SeqStep {
                tokens: &toks[c0..(c0 + FILL_CHUNK).min(depth)],
                pos: c0,
                kv: &mut kv,
                lora: &[],
            }];
            forward_batch(m, b, &mut seq, &mut fill, Logits::Last)?;
        }
        drop(fill);
        let mut t = Vec::with_capacity(rows.len());
        for &r in rows {
            let mut best = f64::INFINITY;
            for _ in 0..3 {
                let mut seq = [SeqStep {
                    tokens: &toks[depth..depth + r],
                    pos: depth,
                    kv: &mut kv,
                    lora: &[],
                }];
                let t0 = Instant::now();
                forward_batch(m, b, &mut seq, s, logits)?;
                best = best.min(t0.elapsed().as_secs_f64());
            }
            t.push(best);
        }
        // Monotone: a longer call is never cheaper (noise on a busy machine).
        for i in 1..t.len() {
            t[i] = t[i].max(t[i - 1]);
        }
        Ok(t)
    }

    /// The time of a forward of `rows` rows (1..=the measured rows) after `depth` positions.
    pub fn at(&self, rows: usize, depth: usize) -> f64 {
        let r = rows.clamp(1, self.t.len()) - 1;
        let far = depth.saturating_sub(Self::DEPTH) as f64;
        self.t[r] + self.slope[r] * far
    }

    /// The time of one draft-model step after `depth` positions (0 for lookup).
    pub fn draft_at(&self, depth: usize) -> f64 {
        self.draft_step + self.draft_slope * depth.saturating_sub(Self::DEPTH) as f64
    }

    /// What one more draft costs, in plain steps, at a draft length up to `k` after `depth`
    /// positions: a draft-model step and a verify row (the average row of a `k + 1`-row verify
    /// beyond the first), over a plain step. A draft is worth making while the chance that it
    /// and every draft before it are accepted is at least this ([`Stop`]).
    pub fn draft_price(&self, k: usize, depth: usize) -> f64 {
        let k = k.clamp(1, self.t.len().saturating_sub(1).max(1));
        let t1 = self.at(1, depth);
        let row = (self.at(k + 1, depth) - t1).max(0.0) / k as f64;
        ((self.draft_at(depth) + row) / t1).min(1.0)
    }

    /// The draft length, at most `max`, that gives the most tokens per second at acceptance `a`
    /// (0: plain steps are better).
    pub fn best_k(&self, a: f64, max: usize, depth: usize) -> usize {
        let a = a.clamp(0.0, 0.999);
        let t = |r: usize| self.at(r + 1, depth);
        let draft = self.draft_at(depth);
        let plain = 1.0 / t(0);
        let mut best = (0.0, 0);
        let mut e = 1.0;
        let mut ak = 1.0;
        for k in 1..=max.min(self.t.len() - 1) {
            ak *= a;
            e += ak;
            let rate = e / (t(k) + k as f64 * draft);
            if rate > best.0 {
                best = (rate, k);
            }
        }
        // A few percent better than plain steps at least: drafting is not worth noise.
        if best.0 > plain * 1.03 {
            best.1
        } else {
            0
        }
    }
}

/// Which kind of steps the [`Gate`] runs now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Plain,
    Spec,
}

/// The realised-rate check: speculative steps timed against plain steps of the same run, as
/// they really run (see the module's documentation). The scheduler asks [`Gate::drafting`]
/// before a step and reports the step's time and generated tokens to [`Gate::record`].
#[derive(Clone, Debug)]
pub struct Gate {
    pub phase: Phase,
    /// Steps left in this phase.
    left: u32,
    /// This phase's timed steps: seconds and tokens.
    secs: f64,
    tokens: usize,
    /// Seconds per token of plain steps (an average over recent plain phases) and of the last
    /// speculative phase.
    pub plain_spt: Option<f64>,
    pub spec_spt: Option<f64>,
    /// The next off period, and the next speculative phase.
    off: u32,
    spec_len: u32,
    /// Steps run in each phase (for the report).
    pub plain_steps: u64,
    pub spec_steps: u64,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            phase: Phase::Plain,
            left: GATE_PLAIN,
            secs: 0.0,
            tokens: 0,
            plain_spt: None,
            spec_spt: None,
            off: GATE_OFF_MIN,
            spec_len: GATE_SPEC,
            plain_steps: 0,
            spec_steps: 0,
        }
    }
}

impl Gate {
    /// Whether this step may draft.
    pub fn drafting(&self) -> bool {
        self.phase == Phase::Spec
    }

    /// A step that generated `tokens` in `secs`; `timed`: it did nothing else (no prompt or
    /// embedding work, which would make its time say nothing about decoding). Steps that
    /// generate nothing do not count.
    pub fn record(&mut self, secs: f64, tokens: usize, timed: bool) {
        if tokens == 0 {
            return;
        }
        match self.phase {
            Phase::Plain => self.plain_steps += 1,
            Phase::Spec => self.spec_steps += 1,
        }
        if timed {
            self.secs += secs;
            self.tokens += tokens;
        }
        self.left -= 1;
        if self.left > 0 {
            return;
        }
        let spt = (self.tokens > 0).then(|| self.secs / self.tokens as f64);
        (self.secs, self.tokens) = (0.0, 0);
        match self.phase {
            Phase::Plain => {
                if let Some(t) = spt {
                    self.plain_spt = Some(self.plain_spt.map_or(t, |p| 0.5 * p + 0.5 * t));
                }
                self.phase = Phase::Spec;
                self.left = self.spec_len;
            }
            Phase::Spec => {
                if spt.is_some() {
                    self.spec_spt = spt;
                }
                self.phase = Phase::Plain;
                // Slower than plain steps (both measured): off for a while, longer each time.
                let slower = matches!((self.spec_spt, self.plain_spt), (Some(s), Some(p)) if s > p);
                if slower {
                    self.left = self.off;
                    self.off = (self.off * 2).min(GATE_OFF_MAX);
                    self.spec_len = GATE_TRIAL;
                } else {
                    self.left = GATE_PLAIN;
                    self.off = GATE_OFF_MIN;
                    self.spec_len = (self.spec_len * 2).min(GATE_SPEC_MAX);
                }
            }
        }
    }
}

/// A slot's drafting state: acceptance, counters, the draft model's cache.
pub struct SlotSpec<B: Backend> {
    /// Average acceptance of a drafted token (recent drafts weigh more).
    pub accept: f64,
    /// Steps since this slot last drafted (for the probe).
    pub idle: u32,
    /// Steps between probes now (doubles while probes fail).
    pub probe_every: u32,
    /// The draft model's cache and the tokens it holds: the slot's tokens from `draft_base` on
    /// (0 unless the cache was rebuilt on a window, see [`DRAFT_WINDOW`]), at positions from 0.
    pub draft_kv: Option<KvCache<B>>,
    pub draft_cached: Vec<u32>,
    pub draft_base: usize,
    /// The probe budget ([`PROBE_SHARE`]): seconds earned by decoding and spent on probes, and
    /// the slot's length when it last earned.
    pub probe_earned: f64,
    pub probe_spent: f64,
    pub seen: usize,
    /// This step's verify tokens: the pending token, then the drafts.
    pub verify: Vec<u32>,
}

impl<B: Backend> SlotSpec<B> {
    pub fn new(draft_kv: Option<KvCache<B>>) -> Self {
        SlotSpec {
            accept: 0.7,
            idle: 0,
            probe_every: PROBE_EVERY,
            draft_kv,
            draft_cached: Vec::new(),
            draft_base: 0,
            probe_earned: 0.0,
            probe_spent: 0.0,
            seen: 0,
            verify: Vec::new(),
        }
    }

    /// Earns the probe budget of the tokens the slot (now `len` tokens, a plain step costing
    /// `step` seconds) decoded since it last earned.
    pub fn earn(&mut self, len: usize, step: f64) {
        let new = len.saturating_sub(self.seen);
        self.seen = len;
        self.probe_earned += PROBE_SHARE * new as f64 * step;
    }

    /// Whether a probe estimated to cost `cost` seconds fits the budget. A request's first
    /// probe is free: it learns the acceptance the first drafts go by.
    pub fn can_probe(&self, cost: f64) -> bool {
        self.probe_spent == 0.0 || self.probe_spent + cost <= self.probe_earned
    }

    /// About how many tokens of `ctx` (the slot's tokens) the draft cache lacks, as many as a
    /// draft would read first (at most [`DRAFT_WINDOW`] after a rebuild): from the lengths
    /// alone (no scan per step while a probe waits for its budget), so a rejected draft's
    /// tokens still in the cache count as held (at most `--draft-max` too few).
    pub fn draft_gap(&self, ctx: &[u32]) -> usize {
        let held = self.draft_base + self.draft_cached.len();
        ctx.len().saturating_sub(held).min(DRAFT_WINDOW)
    }

    /// After a verify of `drafted` tokens, of which the first `accepted` were taken.
    pub fn record(&mut self, drafted: usize, accepted: usize) {
        // Positions up to the first rejection tell about acceptance; those after it nothing.
        observe(
            &mut self.accept,
            (0..drafted.min(accepted + 1)).map(|i| i < accepted),
        );
    }
}

/// A draft model shared by every slot (each has its own cache in [`SlotSpec`]).
pub struct DraftModel<'a, B: Backend> {
    pub m: &'a Model<B>,
    pub b: &'a B,
    pub kv_type: KvType,
    pub scratch: Scratch<B>,
    /// Measured seconds per token of a draft-cache catch-up (None until one was timed).
    pub catch_spt: Option<f64>,
}

impl<B: Backend> DraftModel<'_, B> {
    /// The estimated seconds a one-token draft for a slot holding `ctx` costs (catch-up and one
    /// step; `step`: the measured draft step at this depth).
    pub fn probe_cost(&self, st: &SlotSpec<B>, ctx: &[u32], step: f64) -> f64 {
        // Untimed yet: a token of catch-up costs at most a step.
        let per = self.catch_spt.unwrap_or(step);
        (st.draft_gap(ctx) + 1) as f64 * per + step
    }

    /// Greedy drafts after `ctx` (the slot's tokens and its pending one): up to `k` tokens while
    /// the top probability is at least `p_min` (the first `min` whatever it is). The draft
    /// cache is brought to `ctx` first (its common prefix kept): all of it for `k = 0` (a
    /// prompt), else at most [`DRAFT_WINDOW`] tokens, rebuilding the cache on the window when
    /// it is further behind. Before drafting (`k > 0`), the last [`OBSERVE`] tokens of a
    /// catch-up are read with every row's logits, and the draft model's argmax at each is
    /// compared with the token that followed (into the slot's acceptance average, as
    /// [`SlotSpec::record`] adds verified drafts); `self.scratch` holds
    /// OBSERVE rows of logits.
    pub fn draft(
        &mut self,
        st: &mut SlotSpec<B>,
        ctx: &[u32],
        k: usize,
        min: usize,
        stop: Stop,
        out: &mut Vec<u32>,
    ) -> cria_core::Result<()> {
        out.clear();
        let kv = st.draft_kv.as_mut().expect("a draft cache");
        // A prompt is read whole; a cache on a window that no longer fits starts over.
        if (k == 0 && st.draft_base > 0) || st.draft_base >= ctx.len() {
            st.draft_base = 0;
            st.draft_cached.clear();
        }
        let mut keep = common_prefix(&st.draft_cached, &ctx[st.draft_base..]);
        if k > 0 && ctx.len() - st.draft_base - keep > DRAFT_WINDOW {
            st.draft_base = ctx.len() - DRAFT_WINDOW;
            keep = 0;
        }
        let ctx = &ctx[st.draft_base..];
        if ctx.len() + k > kv.max_seq {
            return Ok(());
        }
        let keep = keep.min(ctx.len() - 1);
        st.draft_cached.truncate(keep);
        let mut pos = keep;
        let t0 = Instant::now();
        // The observed tail: its own call, all rows' logits.
        let tail = if k > 0 && ctx.len() - keep >= 2 {
            OBSERVE.min(ctx.len() - keep)
        } else {
            0
        };
        let mut last_row = 0;
        while pos < ctx.len() {
            let split = ctx.len() - tail;
            let (end, mode) = if pos < split {
                ((pos + self.scratch.max_t).min(split), Logits::Last)
            } else {
                (ctx.len(), Logits::All)
            };
            let mut seq = [SeqStep {
                tokens: &ctx[pos..end],
                pos,
                kv: &mut *kv,
                lora: &[],
            }];
            forward_batch(self.m, self.b, &mut seq, &mut self.scratch, mode)?;
            if mode == Logits::All {
                let got = (0..end - pos - 1).map(|i| argmax(self.scratch.seq_logits(i)));
                observe(
                    &mut st.accept,
                    got.zip(&ctx[pos + 1..end]).map(|(d, &t)| d == t),
                );
                last_row = end - pos - 1;
            }
            st.draft_cached.extend_from_slice(&ctx[pos..end]);
            pos = end;
        }
        // Catch-ups of a window's size and less are what probes pay for.
        let n = ctx.len() - keep;
        if (8..=DRAFT_WINDOW + 1).contains(&n) {
            let spt = t0.elapsed().as_secs_f64() / n as f64;
            self.catch_spt = Some(self.catch_spt.map_or(spt, |c| 0.5 * c + 0.5 * spt));
        }
        // The probability that every draft so far is accepted, by the draft model's confidence.
        let mut all = 1.0f64;
        while out.len() < k {
            let (t, p) = top(self.scratch.seq_logits(std::mem::take(&mut last_row)));
            all *= p as f64;
            if out.len() >= min && (p < stop.p_min || all < stop.all_min) {
                break;
            }
            out.push(t);
            if out.len() == k {
                break;
            }
            let mut seq = [SeqStep {
                tokens: std::slice::from_ref(&t),
                pos,
                kv: &mut *kv,
                lora: &[],
            }];
            forward_batch(self.m, self.b, &mut seq, &mut self.scratch, Logits::Last)?;
            st.draft_cached.push(t);
            pos += 1;
        }
        Ok(())
    }
}

/// When a draft model stops drafting (after its first `min` drafts): when its top probability
/// falls below `p_min` (`--draft-p-min`, as llama.cpp's), or when the product of its top
/// probabilities so far (the chance that every draft is accepted, were the draft model
/// calibrated) falls below `all_min`: the adaptive policy sets that to what one more draft costs
/// (a draft-model step and a verify row) over what a plain step costs, so a draft is made while
/// the token it is expected to add is worth its price.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stop {
    pub p_min: f32,
    pub all_min: f64,
}

impl Stop {
    /// llama.cpp's rule alone.
    pub fn p(p_min: f32) -> Self {
        Stop {
            p_min,
            all_min: 0.0,
        }
    }
}

/// How many leading tokens `a` and `b` share.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// `accept`, the average acceptance, after `hits` (see [`SlotSpec::record`]).
fn observe(accept: &mut f64, hits: impl IntoIterator<Item = bool>) {
    for hit in hits {
        *accept = 0.85 * *accept + if hit { 0.15 } else { 0.0 };
    }
}

/// The argmax (lowest id on ties).
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// The argmax (lowest id on ties) and its softmax probability.
fn top(logits: &[f32]) -> (u32, f32) {
    let best = argmax(logits) as usize;
    let max = logits[best];
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    (best as u32, (1.0 / sum) as f32)
}

/// What a generation's speculation did (the end-of-run line).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpecStats {
    /// Tokens drafted and accepted.
    pub drafted: usize,
    pub accepted: usize,
    /// Target forwards that produced this generation's tokens (plain steps and verifies).
    pub forwards: usize,
    /// Of those, the plain steps the realised-rate check ran ([`Gate`]: timing plain steps, or
    /// speculation off because it did not pay).
    pub gated: usize,
}

impl SpecStats {
    pub fn acceptance(&self) -> f64 {
        if self.drafted == 0 {
            0.0
        } else {
            self.accepted as f64 / self.drafted as f64
        }
    }

    /// "draft acceptance 71.2% (402/565), 2.31 tokens per forward, 8 of 200 forwards plain
    /// (realised-rate check)".
    pub fn summary(&self, generated: usize) -> String {
        format!(
            "draft acceptance {:.1}% ({}/{}), {:.2} tokens per forward, {} of {} forwards plain \
             (realised-rate check)",
            100.0 * self.acceptance(),
            self.accepted,
            self.drafted,
            generated as f64 / self.forwards.max(1) as f64,
            self.gated,
            self.forwards
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_spend_a_share_of_decode_time() {
        let mut st = SlotSpec::<cria_kernels::CpuBackend>::new(None);
        // The first probe is free, whatever it costs.
        assert!(st.can_probe(1.0));
        // 100 tokens at 10 ms a step earn 1% of a second.
        st.earn(100, 0.01);
        assert!((st.probe_earned - PROBE_SHARE).abs() < 1e-12);
        st.probe_spent = 1e-9;
        assert!(st.can_probe(0.5 * PROBE_SHARE) && !st.can_probe(2.0 * PROBE_SHARE));
        st.probe_spent = 0.5 * PROBE_SHARE;
        assert!(!st.can_probe(0.6 * PROBE_SHARE));
        // The same length again earns nothing; 100 more tokens earn as much again.
        st.earn(100, 0.01);
        assert!(!st.can_probe(0.6 * PROBE_SHARE));
        st.earn(200, 0.01);
        assert!(st.can_probe(0.6 * PROBE_SHARE));
    }

    #[test]
    fn lookup_takes_the_longest_most_recent_match() {
        let none = VecDeque::new();
        let mut out = vec![];
        // No 4- or 3-gram match; the 2-gram [3 4] last occurs before "7 6 3".
        let ctx = [1, 2, 3, 4, 9, 5, 2, 3, 4, 7, 6, 3, 4];
        lookup(&ctx, &none, 3, &mut out);
        assert_eq!(out, vec![7, 6, 3]);
        // A 3-gram match beats a more recent 2-gram one.
        let ctx = [5, 3, 4, 1, 1, 3, 4, 2, 8, 5, 3, 4];
        lookup(&ctx, &none, 2, &mut out);
        assert_eq!(out, vec![1, 1]);
        // Nothing: empty; the shared answers are searched next.
        let ctx = [10, 11, 12];
        lookup(&ctx, &none, 4, &mut out);
        assert!(out.is_empty());
        let shared: VecDeque<Vec<u32>> = [vec![12, 40, 41], vec![7]].into();
        lookup(&ctx, &shared, 4, &mut out);
        assert_eq!(out, vec![40, 41]);
    }

    #[test]
    fn best_k_follows_acceptance_and_cost() {
        // A verify of r rows costs 1 + 0.1 (r - 1).
        let c = Costs {
            t: (0..9).map(|r| 1.0 + 0.1 * r as f64).collect(),
            slope: vec![0.0; 9],
            draft_step: 0.0,
            draft_slope: 0.0,
        };
        assert_eq!(c.best_k(0.0, 8, 64), 0);
        assert!(c.best_k(0.9, 8, 64) >= 6);
        let k5 = c.best_k(0.5, 8, 64);
        assert!((1..=4).contains(&k5), "{k5}");
        // The best length, not the first whose next one gains less than 3%: with a draft
        // step of 0.3, 7 drafts give 8 / 3.8 tokens per unit of time and 8 give 9 / 4.2 (+1.8%).
        let drafted = Costs {
            draft_step: 0.3,
            ..c.clone()
        };
        assert_eq!(drafted.best_k(0.999, 8, 64), 8);
        // One more draft costs a draft step and a verify row, over a plain step.
        assert!((drafted.draft_price(4, 64) - 0.4).abs() < 1e-12);
        assert!((drafted.draft_price(8, 64) - 0.4).abs() < 1e-12);
        // Rows as dear as steps: never worth it.
        let dear = Costs {
            t: (1..=9).map(|r| r as f64).collect(),
            slope: vec![0.0; 9],
            draft_step: 0.0,
            draft_slope: 0.0,
        };
        assert_eq!(dear.best_k(0.9, 8, 64), 0);
    }

    /// Runs `steps` steps through a gate whose plain steps take `plain` s/token and speculative
    /// ones `spec`; returns (plain steps, speculative steps).
    fn gate_run(plain: f64, spec: f64, steps: usize) -> (u64, u64) {
        let mut g = Gate::default();
        for _ in 0..steps {
            let t = if g.drafting() { spec } else { plain };
            g.record(t, 1, true);
        }
        (g.plain_steps, g.spec_steps)
    }

    #[test]
    fn gate_keeps_speculation_that_pays_and_stops_what_does_not() {
        // Faster: GATE_PLAIN plain steps between ever longer speculative phases (16, 32, .. 256
        // steps): 7 plain phases in the first 1000 steps.
        let (p, s) = gate_run(1.0, 0.5, 1000);
        assert_eq!(
            (p, s),
            (7 * GATE_PLAIN as u64, 1000 - 7 * GATE_PLAIN as u64)
        );
        // Slower: one phase, then off periods that double up to GATE_OFF_MAX, each followed by
        // a GATE_TRIAL-step trial: in the long run 8 speculative steps of every 1032.
        let (p, s) = gate_run(1.0, 1.1, 20_000);
        assert!(
            s > 0 && (s as f64) < 0.012 * 20_000.0,
            "{s} speculative steps of 20000"
        );
        assert!(p > 19_000, "{p}");
        // Equal is kept (not slower).
        let (_, s) = gate_run(1.0, 1.0, 1000);
        assert!(s > 800, "{s}");
        // Untimed steps (prompt work) advance the phases but are not measured; steps without
        // tokens do not count at all.
        let mut g = Gate::default();
        for _ in 0..GATE_PLAIN {
            g.record(9.0, 1, false);
        }
        assert!(g.drafting() && g.plain_spt.is_none());
        g.record(1.0, 0, true);
        assert_eq!((g.plain_steps, g.spec_steps), (GATE_PLAIN as u64, 0));
        // Speculation after a slower phase comes back once it pays again.
        let mut g = Gate::default();
        let mut spec_cost = 2.0;
        let mut spec_late = 0;
        for step in 0..6000 {
            if step == 3000 {
                spec_cost = 0.5;
            }
            let t = if g.drafting() { spec_cost } else { 1.0 };
            if step >= 4500 && g.drafting() {
                spec_late += 1;
            }
            g.record(t, 1, true);
        }
        assert!(
            spec_late > 1000,
            "{spec_late} speculative steps of the last 1500"
        );
    }

    #[test]
    fn bad_settings_are_refused() {
        let mut c = SpecConfig::lookup(0);
        assert!(c.validate(100).unwrap_err().contains("--lookup 0"));
        c.draft_max = 200;
        assert!(c.validate(100).unwrap_err().contains("at most"));
        c.draft_max = 60;
        c.kind = SpecKind::DraftModel;
        assert!(c.validate(50).unwrap_err().contains("context of 50"));
        assert!(SpecConfig::draft_model().validate(100).is_ok());
    }
}
