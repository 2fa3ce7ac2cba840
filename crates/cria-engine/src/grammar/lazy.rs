//! A lazy grammar, as llama.cpp's grammar triggers: generation is free until a trigger appears in
//! the output, and from there on it must match the grammar.
//!
//! A trigger is a text (`<tool_call>`, `{"name"`), possibly only at the start of the output
//! (leading whitespace aside), or a control token (`<|python_tag|>`, whose piece is empty). A
//! text trigger may end in the middle of a token; as in llama.cpp, the grammar is then fed the
//! output from the trigger's start on (or from its end, for a trigger the grammar does not
//! spell), the rest of that token included. A [`LazyMatcher`] with no triggers is an ordinary
//! [`Matcher`], active from the first token.

use super::{Grammar, GrammarError, Matcher, TokenTable};
use crate::sampler::Candidates;
use std::sync::Arc;

/// What starts the grammar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    /// The text, or the text of a control token.
    pub text: String,
    /// Only when the output begins with it (after whitespace).
    pub at_start: bool,
    /// The grammar spells the trigger itself (it is fed from the trigger's start); else the
    /// grammar starts after it.
    pub keep: bool,
}

impl Trigger {
    pub fn new(text: &str, at_start: bool, keep: bool) -> Self {
        Trigger {
            text: text.into(),
            at_start,
            keep,
        }
    }
}

/// Chooses tokens with a grammar that may wait for a trigger: the scheduler's and the CLI's
/// constraint.
pub struct LazyMatcher {
    inner: Matcher,
    /// Until a trigger appears.
    waiting: Option<Box<Waiting>>,
}

struct Waiting {
    tokens: Arc<TokenTable>,
    /// Text triggers (control-token triggers are in `ids`).
    triggers: Vec<Trigger>,
    ids: Vec<u32>,
    /// The end of the output, long enough to hold a trigger that ends in the next token.
    tail: Vec<u8>,
    /// The output so far is whitespace and the start of an `at_start` trigger.
    at_start: bool,
}

impl From<Matcher> for LazyMatcher {
    /// Active from the start.
    fn from(inner: Matcher) -> Self {
        LazyMatcher {
            inner,
            waiting: None,
        }
    }
}

impl LazyMatcher {
    /// `grammar` over `tokens`, waiting for one of `triggers` (none: active at once). A trigger
    /// that is the text of a control token of the vocabulary is that token.
    pub fn new(
        grammar: impl Into<Arc<Grammar>>,
        tokens: Arc<TokenTable>,
        triggers: Vec<Trigger>,
    ) -> Result<Self, GrammarError> {
        let inner = Matcher::new(grammar, tokens.clone())?;
        if triggers.is_empty() {
            return Ok(LazyMatcher::from(inner));
        }
        let mut w = Waiting {
            tokens,
            triggers: Vec::new(),
            ids: Vec::new(),
            tail: Vec::new(),
            at_start: true,
        };
        for t in triggers {
            match w.tokens.named(&t.text) {
                Some(id) if w.tokens.piece(id).is_empty() => w.ids.push(id),
                _ if t.text.is_empty() => {}
                _ => w.triggers.push(t),
            }
        }
        Ok(LazyMatcher {
            inner,
            waiting: Some(Box::new(w)),
        })
    }

    /// Has a trigger appeared (or were there none)?
    pub fn is_active(&self) -> bool {
        self.waiting.is_none()
    }

    /// The grammar matcher (at its start until a trigger appears).
    pub fn matcher(&self) -> &Matcher {
        &self.inner
    }

    /// The grammar matcher, as it is now (an answer that keeps it for the next one resets it).
    pub fn into_matcher(self) -> Matcher {
        self.inner
    }

    /// Is `token` a valid next token? Any is, until a trigger appears.
    pub fn allows(&self, token: u32) -> bool {
        self.waiting.is_some() || self.inner.allows(token)
    }

    /// Mask the candidates the grammar does not allow (none, until a trigger appears).
    pub fn mask(&self, cands: &mut Candidates) {
        if self.waiting.is_none() {
            self.inner.mask(cands);
        }
    }

    /// Can anything but end-of-generation follow?
    pub fn can_continue(&self) -> bool {
        self.waiting.is_some() || self.inner.can_continue()
    }

    /// Move on by `token`. While waiting, the token is only looked at for a trigger; when one
    /// appears the grammar is fed the output from it on, and an error means that text does
    /// not match the grammar (the caller stops there).
    pub fn accept(&mut self, token: u32) -> cria_core::Result<()> {
        let Some(w) = self.waiting.as_mut() else {
            return self.inner.accept(token);
        };
        if w.ids.contains(&token) {
            self.waiting = None;
            return Ok(());
        }
        match w.push(token) {
            Some(text) => {
                self.waiting = None;
                self.inner.accept_bytes(&text)
            }
            None => Ok(()),
        }
    }
}

impl Waiting {
    /// Add a token's text; the text the grammar is to be fed if that completes a trigger.
    fn push(&mut self, token: u32) -> Option<Vec<u8>> {
        self.tail.extend_from_slice(self.tokens.piece(token));
        if let Some(from) = self.find_trigger() {
            return Some(self.tail.split_off(from));
        }
        let ws = self
            .tail
            .iter()
            .take_while(|b| b.is_ascii_whitespace())
            .count();
        let rest = &self.tail[ws..];
        self.at_start = self.at_start
            && self
                .triggers
                .iter()
                .any(|t| t.at_start && t.text.as_bytes().starts_with(rest));
        // Keep only what a trigger completed by a later token could start in.
        let keep = self
            .triggers
            .iter()
            .map(|t| t.text.len())
            .max()
            .unwrap_or(0);
        if self.tail.len() > keep {
            self.tail.drain(..self.tail.len() - keep);
        }
        None
    }

    /// Where in `tail` the grammar starts, if a trigger is complete: the earliest trigger wins.
    fn find_trigger(&self) -> Option<usize> {
        let mut best: Option<(usize, usize)> = None; // (trigger start, grammar start)
        for t in &self.triggers {
            let pat = t.text.as_bytes();
            let pos = if t.at_start {
                if !self.at_start {
                    continue;
                }
                let ws = self
                    .tail
                    .iter()
                    .take_while(|b| b.is_ascii_whitespace())
                    .count();
                self.tail[ws..].starts_with(pat).then_some(ws)
            } else {
                self.tail.windows(pat.len()).position(|w| w == pat)
            };
            if let Some(p) = pos {
                let from = if t.keep { p } else { p + pat.len() };
                if best.is_none_or(|(b, _)| p < b) {
                    best = Some((p, from));
                }
            }
        }
        best.map(|(_, from)| from)
    }
}
