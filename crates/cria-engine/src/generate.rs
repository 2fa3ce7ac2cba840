//! One answer being generated, token by token: the sampler, the grammar, stop strings, the
//! streaming detokenizer, the token limit and log-probabilities, behind one step function
//! (logits in; the token, the text that is final now, its log-probabilities and why the answer
//! stops, if it does). The scheduler ([`crate::scheduler`]) runs every answer through it, for
//! `cria run`, `cria chat` and `cria serve` alike.

use crate::grammar::{self, LazyMatcher};
use crate::sampler::Sampler;
use crate::stop::StopMatcher;
use cria_tokenizer::{StreamDecoder, Tokenizer};
use std::time::Duration;

/// Why an answer ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The model's end-of-generation token.
    Eog,
    MaxTokens,
    /// The sampled token has no position left in the context.
    ContextFull,
    /// Cancelled by the caller (Ctrl-C, a client gone, a server shutting down).
    Cancelled,
    /// A stop string appeared (it and what followed are not part of the answer).
    StopString,
    /// The grammar is complete and admits nothing more.
    GrammarDone,
    /// The grammar admits no token of the vocabulary here (it cannot be spelled with it).
    GrammarStuck,
}

impl StopReason {
    /// Was the answer cut (OpenAI's finish_reason "length") rather than ended ("stop")?
    pub fn is_cut(self) -> bool {
        matches!(
            self,
            StopReason::MaxTokens | StopReason::ContextFull | StopReason::Cancelled
        )
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

/// log-softmax of the chosen token and the `k` most likely, from raw logits.
pub fn logprobs(tok: &Tokenizer, logits: &[f32], chosen: u32, k: usize) -> TokenLogprob {
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

/// The tokenizer as the token text DRY's sequence breakers are matched against (llama.cpp's
/// `detokenize({id}, special = true)` and `tokenize(text, add_special = false,
/// parse_special = false)`).
pub struct TokText<'a>(pub &'a Tokenizer);

impl crate::sampler::TokenText for TokText<'_> {
    fn n_tokens(&self) -> usize {
        self.0.vocab_size()
    }
    fn piece(&self, id: u32, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.0.detokenize(&[id], false, true));
    }
    fn tokenize(&self, text: &[u8]) -> Vec<u32> {
        self.0.encode(&String::from_utf8_lossy(text), false, false)
    }
}

/// The sampler for `cfg` over `n_vocab` logits, with DRY's sequence breakers tokenized against
/// `tok` when DRY is on (the scan reads every token's text once, a few milliseconds).
pub fn sampler(cfg: crate::SamplerConfig, n_vocab: usize, tok: &Tokenizer) -> Sampler {
    let breakers = if cfg.dry_enabled() && cfg.mirostat == 0 {
        crate::sampler::DryBreakers::from_strings(&cfg.dry_sequence_breakers, &TokText(tok))
    } else {
        Default::default()
    };
    Sampler::with_breakers(cfg, n_vocab, breakers)
}

/// What ends or shapes an answer besides the sampler.
#[derive(Clone, Copy, Debug)]
pub struct GenOptions {
    /// Tokens to generate at most (0: none).
    pub max_tokens: usize,
    /// Go on past end-of-generation tokens.
    pub ignore_eos: bool,
    /// Log-probabilities: None = off; Some(k) = the chosen token's and the k most likely.
    pub logprobs: Option<usize>,
}

/// What one step gave.
pub struct Step {
    /// The sampled token (None when the answer ended before sampling: a limit of 0 tokens).
    pub token: Option<u32>,
    pub logprobs: Option<TokenLogprob>,
    /// Why the answer ends here, if it does (the token is then not evaluated).
    pub stop: Option<StopReason>,
}

/// One answer being generated. Feed it the logits after the prompt, then after each token it
/// returned; [`Generation::text`] is the text each step made final; [`Generation::finish`]
/// releases what was held back (an incomplete character, the start of a stop string).
pub struct Generation<'t> {
    tok: &'t Tokenizer,
    sampler: Sampler,
    stops: StopMatcher,
    grammar: Option<LazyMatcher>,
    dec: StreamDecoder<'t>,
    o: GenOptions,
    generated: usize,
    /// The current token's text, and the text made final by the last call (reused buffers: no
    /// allocation per token).
    piece: String,
    out: String,
}

impl<'t> Generation<'t> {
    /// `stops` is reset here; a grammar waiting for a trigger starts waiting.
    pub fn new(
        tok: &'t Tokenizer,
        sampler: Sampler,
        mut stops: StopMatcher,
        grammar: Option<LazyMatcher>,
        o: GenOptions,
    ) -> Self {
        stops.reset();
        Generation {
            tok,
            sampler,
            stops,
            grammar,
            dec: StreamDecoder::new(tok),
            o,
            generated: 0,
            piece: String::with_capacity(64),
            out: String::with_capacity(256),
        }
    }

    /// The prompt's tokens, for the sampler's penalties.
    pub fn accept_prompt(&mut self, prompt: &[u32]) {
        for &t in prompt {
            self.sampler.accept(t);
        }
    }

    /// Tokens sampled so far.
    pub fn generated(&self) -> usize {
        self.generated
    }

    /// Tokens it may still sample (the token limit's; the context may end it sooner).
    pub fn remaining(&self) -> usize {
        self.o.max_tokens.saturating_sub(self.generated)
    }

    /// The grammar, if the answer has one.
    pub fn grammar(&self) -> Option<&LazyMatcher> {
        self.grammar.as_ref()
    }

    /// The sampler and the grammar back (a chat keeps them between answers).
    pub fn into_parts(self) -> (Sampler, Option<LazyMatcher>) {
        (self.sampler, self.grammar)
    }

    /// The text the last [`step`](Self::step) or [`finish`](Self::finish) made final.
    pub fn text(&self) -> &str {
        &self.out
    }

    /// Samples the next token from `logits`. `room`: whether the context has a position left
    /// for the token to be evaluated.
    ///
    /// The grammar goes first: a token it refuses (only sampled when it allows nothing the
    /// vocabulary can spell) ends the answer without being shown, and an end-of-generation
    /// token ends it only where the grammar allows one. Then, in order: end-of-generation
    /// (its log-probabilities still reported), a stop string, a complete grammar, the token
    /// limit, a full context.
    pub fn step(&mut self, logits: &[f32], room: bool) -> Step {
        self.out.clear();
        if self.generated >= self.o.max_tokens {
            return Step {
                token: None,
                logprobs: None,
                stop: Some(StopReason::MaxTokens),
            };
        }
        let sampler = &mut self.sampler;
        let t = match &self.grammar {
            Some(g) => grammar::sample(sampler, g, logits),
            None => sampler.sample(logits),
        };
        sampler.accept(t);
        self.generated += 1;
        let lp = self.o.logprobs.map(|k| logprobs(self.tok, logits, t, k));
        let step = |logprobs, stop| Step {
            token: Some(t),
            logprobs,
            stop,
        };
        if let Some(g) = &mut self.grammar {
            if g.accept(t).is_err() {
                return step(None, Some(StopReason::GrammarStuck));
            }
        }
        if !self.o.ignore_eos && self.tok.is_eog(t) {
            return step(lp, Some(StopReason::Eog));
        }
        self.piece.clear();
        self.dec.push_into(t, &mut self.piece);
        if self.stops.push(&self.piece, &mut self.out).is_some() {
            return step(lp, Some(StopReason::StopString));
        }
        if self.grammar.as_ref().is_some_and(|g| !g.can_continue()) {
            return step(lp, Some(StopReason::GrammarDone));
        }
        if self.generated >= self.o.max_tokens {
            return step(lp, Some(StopReason::MaxTokens));
        }
        if !room {
            return step(lp, Some(StopReason::ContextFull));
        }
        step(lp, None)
    }

    /// The end of the answer: releases the text held back (unless a stop string ended it);
    /// [`text`](Self::text) has it.
    pub fn finish(&mut self) -> &str {
        self.out.clear();
        if self.stops.hit().is_none() {
            let rest = self.dec.flush();
            self.stops.push(&rest, &mut self.out);
            self.stops.flush(&mut self.out);
        }
        &self.out
    }
}

/// What a finished answer measured.
#[derive(Clone, Copy, Debug)]
pub struct GenStats {
    pub stop: StopReason,
    /// Tokens evaluated for the prompt (after reusing the cached prefix).
    pub prompt_tokens: usize,
    /// Prompt tokens whose K/V came from the cache.
    pub reused_tokens: usize,
    pub prompt_time: Duration,
    pub gen_tokens: usize,
    pub gen_time: Duration,
    /// What speculative decoding did (None: it was off).
    pub spec: Option<crate::speculative::SpecStats>,
}

impl GenStats {
    /// Those of an answer cancelled before it started.
    pub fn not_started() -> Self {
        GenStats {
            stop: StopReason::Cancelled,
            prompt_tokens: 0,
            reused_tokens: 0,
            prompt_time: Duration::ZERO,
            gen_tokens: 0,
            gen_time: Duration::ZERO,
            spec: None,
        }
    }
}
