//! Constrained output: GBNF grammars (llama.cpp's format), JSON Schema -> grammar, and a
//! token-level matcher that masks the logits of tokens that cannot continue the grammar.
//!
//! ```text
//! GBNF text --parse--> Grammar --Matcher::new(grammar, TokenTable)--> Matcher
//!                                    per step: grammar::sample(sampler, &matcher, logits)
//!                                              matcher.accept(token)
//! ```
//!
//! The recognizer is llama.cpp's: a set of pushdown stacks over the flattened rules, each stack's
//! top a terminal (a character class or a token reference), advanced one Unicode code point at
//! a time; partial UTF-8 at the end of a token (byte-fallback tokens, byte-level BPE pieces that
//! split a character) is carried into the next token. What differs is how the mask is computed:
//! stacks are hash-consed into an arena (a stack is a node `(element, parent)`), the successors of
//! a stack after a character are memoized per node, and the vocabulary is walked as a trie of
//! code points, so each distinct token prefix is checked once rather than once per token.
//!
//! # Limits
//!
//! Grammars and schemas come from requests, so everything they can make large is bounded
//! ([`Limits`], with these defaults); going past a bound is an error naming it, never a crash:
//!
//! | limit | default | error |
//! |---|---|---|
//! | nesting: GBNF groups `( ... )`, schema sub-schemas and `$ref` chains | [`MAX_NESTING`] = 128 | "groups nested deeper than 128 levels" / "schema nested deeper than 128 levels (sub-schemas and `$ref`s)" |
//! | compiled grammar size: elements and rules after repetitions are expanded | [`MAX_GRAMMAR_ELEMS`] = 1,048,576 | "the grammar is too large: more than 1048576 elements after expanding repetitions" |
//! | matcher state: parser stacks and memoized transitions, during a generation | [`MAX_MATCHER_NODES`] = 1,048,576 | "the grammar's parser state exceeded 1048576 stacks (max_matcher_nodes)" (from `Matcher::new` / `accept`) |
//! | tokens a grammar may produce | [`MAX_TOKEN_CHARS`] = 1024 characters (longer ones are never allowed) | "token N is not allowed by the grammar (longer than 1024 characters)" |
//! | compile time of `Grammar::parse`, `json_schema_to_gbnf`, `Matcher::new` | [`COMPILE_TIME_BUDGET`] = 2 s | "grammar compilation exceeded its time budget" |
//!
//! The JSON Schema converter has its own size limits (see `json_schema_to_gbnf`).

mod json_schema;
mod lazy;
mod matcher;
mod parse;

pub use json_schema::{
    json_schema_to_gbnf, json_schema_to_gbnf_with_limits, SchemaError, ANY_JSON_GBNF,
    MAX_SCHEMA_ENUM, MAX_SCHEMA_NAME, MAX_SCHEMA_PROPERTIES, MAX_SCHEMA_REPEAT,
};
pub use lazy::{LazyMatcher, Trigger};
pub use matcher::{Matcher, TokenTable, MAX_TOKEN_CHARS};

use crate::sampler::{Candidates, Sampler};
use std::fmt;
use std::time::{Duration, Instant};

/// Deepest nesting of GBNF groups, of schema sub-schemas and of `$ref` chains (the parsers
/// recurse once per level, on a thread that may have only a 2 MiB stack).
pub const MAX_NESTING: usize = 128;
/// Largest compiled grammar: elements (symbols and alternative ends) plus rules, counted after
/// repetitions `x{m,n}` are expanded into copies. Some tens of MB of memory at the limit.
pub const MAX_GRAMMAR_ELEMS: usize = 1 << 20;
/// Largest matcher state: parser stacks (arena nodes) plus memoized transitions. The memo is
/// dropped and the stacks compacted to the live ones when it is reached; only live stacks past
/// it are an error. About 50 MB of memory at the limit (a node is ~44 bytes with its index).
pub const MAX_MATCHER_NODES: usize = 1 << 20;
/// Default wall-clock budget of `Grammar::parse`, `json_schema_to_gbnf` and `Matcher::new`.
pub const COMPILE_TIME_BUDGET: Duration = Duration::from_secs(2);

/// The error text when compilation runs past its deadline.
pub(crate) const TIME_BUDGET_MSG: &str = "grammar compilation exceeded its time budget";

/// Bounds on the work a grammar or schema may cause (see the module docs). `Default` is the
/// documented limits and a [`COMPILE_TIME_BUDGET`] per call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Deepest nesting of groups / sub-schemas / `$ref` chains.
    pub max_nesting: usize,
    /// Largest compiled grammar (elements + rules after expansion).
    pub max_elems: usize,
    /// Largest matcher state (stacks + memoized transitions).
    pub max_matcher_nodes: usize,
    /// Time each compilation call may take, counted from its start; None: no budget.
    pub time_budget: Option<Duration>,
    /// An absolute deadline as well (e.g. the request's); None: only the budget applies.
    pub deadline: Option<Instant>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_nesting: MAX_NESTING,
            max_elems: MAX_GRAMMAR_ELEMS,
            max_matcher_nodes: MAX_MATCHER_NODES,
            time_budget: Some(COMPILE_TIME_BUDGET),
            deadline: None,
        }
    }
}

impl Limits {
    /// The deadline of a call starting now: the earlier of `now + time_budget` and `deadline`.
    pub(crate) fn clock(&self) -> Clock {
        let by_budget = self.time_budget.and_then(|b| Instant::now().checked_add(b));
        let deadline = match (by_budget, self.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Clock { deadline, ticks: 0 }
    }
}

/// A deadline checked every few hundred units of work (the clock read is not free).
#[derive(Debug, Clone)]
pub(crate) struct Clock {
    deadline: Option<Instant>,
    ticks: u32,
}

impl Clock {
    /// No deadline.
    pub(crate) fn none() -> Self {
        Clock {
            deadline: None,
            ticks: 0,
        }
    }

    /// Count one unit of work; true once the deadline has passed (checked on the first call
    /// and then every 256th).
    pub(crate) fn expired(&mut self) -> bool {
        let Some(d) = self.deadline else {
            return false;
        };
        let check = self.ticks.is_multiple_of(256);
        self.ticks = self.ticks.wrapping_add(1);
        check && Instant::now() >= d
    }
}

/// A parse or validation error in a grammar, with its 1-based line and column (in characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrammarError {
    pub line: usize,
    pub col: usize,
    pub msg: String,
}

impl GrammarError {
    pub(crate) fn line_col(src: &str, at: usize) -> (usize, usize) {
        let at = at.min(src.len());
        let before = &src[..at];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |k| k + 1);
        (line, before[line_start..].chars().count() + 1)
    }

    pub(crate) fn at(src: &str, at: usize, msg: impl Into<String>) -> Self {
        let (line, col) = Self::line_col(src, at);
        GrammarError {
            line,
            col,
            msg: msg.into(),
        }
    }
}

impl fmt::Display for GrammarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.col, self.msg)
    }
}

impl std::error::Error for GrammarError {}

/// A set of code points: sorted, merged inclusive ranges, possibly negated. `.` is the negated
/// empty set. The ASCII half is also kept as a bitmap since nearly every test is ASCII.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CharClass {
    negated: bool,
    ranges: Vec<(u32, u32)>,
    ascii: [u64; 2], // membership of 0..128, negation applied
}

impl CharClass {
    pub fn new(negated: bool, mut ranges: Vec<(u32, u32)>) -> Self {
        ranges.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        let mut c = CharClass {
            negated,
            ranges: merged,
            ascii: [0; 2],
        };
        for b in 0..128u32 {
            if c.slow_matches(b) {
                c.ascii[(b / 64) as usize] |= 1 << (b % 64);
            }
        }
        c
    }

    pub fn single(c: u32) -> Self {
        Self::new(false, vec![(c, c)])
    }

    pub fn any() -> Self {
        Self::new(true, Vec::new())
    }

    /// Index of the first range that ends at or after `c` (ranges are sorted and disjoint).
    fn first_ending_from(&self, c: u32) -> usize {
        if self.ranges.len() <= 8 {
            // Classes are short; a linear scan beats a binary search at these sizes.
            self.ranges.iter().take_while(|r| r.1 < c).count()
        } else {
            self.ranges.partition_point(|r| r.1 < c)
        }
    }

    fn slow_matches(&self, c: u32) -> bool {
        let inside = self
            .ranges
            .get(self.first_ending_from(c))
            .is_some_and(|r| r.0 <= c);
        inside != self.negated
    }

    #[inline]
    pub fn matches(&self, c: u32) -> bool {
        if c < 128 {
            return self.ascii[(c / 64) as usize] >> (c % 64) & 1 != 0;
        }
        self.slow_matches(c)
    }

    /// Can some code point in `lo..=hi` match? (For a partial UTF-8 sequence, whose completions
    /// are a contiguous range.)
    pub fn matches_any_in(&self, lo: u32, hi: u32) -> bool {
        if lo > hi {
            return false;
        }
        let from = self.first_ending_from(lo);
        if !self.negated {
            return self.ranges.get(from).is_some_and(|r| r.0 <= hi);
        }
        // Negated: some point of lo..=hi must lie outside every (sorted, merged) range. The
        // ranges before `from` end below `lo`; after the first overlapping one there is a gap.
        let mut next = lo;
        for &(a, b) in &self.ranges[from..] {
            if a > next {
                return true;
            }
            if b >= hi {
                return false;
            }
            next = b + 1;
        }
        next <= hi
    }
}

/// A token reference in a grammar: `<[id]>` or `<text>` (resolved against the vocabulary when a
/// [`Matcher`] is built), `!` negated.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenRef {
    Id {
        id: u32,
        negated: bool,
    },
    Text {
        text: String,
        negated: bool,
        line_col: (usize, usize),
    },
}

/// One element of the flattened rules.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Elem {
    /// A code point in `classes[k]`.
    Chars(u32),
    /// Rule `r`.
    Ref(u32),
    /// `tokens[k]`.
    Token(u32),
    /// End of an alternative.
    End,
}

/// A parsed grammar: rules flattened into one element array, each alternative ending in `End`.
#[derive(Debug, Clone)]
pub struct Grammar {
    pub(crate) elems: Vec<Elem>,
    pub(crate) alts: Vec<Vec<u32>>, // per rule: start of each alternative in `elems`
    pub(crate) names: Vec<String>,
    pub(crate) root: u32,
    pub(crate) classes: Vec<CharClass>,
    pub(crate) tokens: Vec<TokenRef>,
}

impl Grammar {
    /// Parse GBNF text with `root` as the start rule.
    /// Parse GBNF text with `root` as the start rule, under the default [`Limits`].
    pub fn parse(src: &str) -> Result<Grammar, GrammarError> {
        parse::parse(src, "root", &Limits::default())
    }

    /// Parse GBNF text with another start rule.
    pub fn parse_with_root(src: &str, root: &str) -> Result<Grammar, GrammarError> {
        parse::parse(src, root, &Limits::default())
    }

    /// Parse GBNF text with start rule `root` under explicit limits.
    pub fn parse_with_limits(
        src: &str,
        root: &str,
        limits: &Limits,
    ) -> Result<Grammar, GrammarError> {
        parse::parse(src, root, limits)
    }

    /// The grammar for any JSON value (`--json`).
    pub fn any_json() -> Grammar {
        let no_budget = Limits {
            time_budget: None,
            ..Limits::default()
        };
        parse::parse(ANY_JSON_GBNF, "root", &no_budget).expect("the built-in JSON grammar parses")
    }

    /// Number of rules, generated ones (groups, repetitions) included.
    pub fn n_rules(&self) -> usize {
        self.alts.len()
    }

    /// Rule names, generated ones included (`name_N`).
    pub fn rule_names(&self) -> &[String] {
        &self.names
    }

    /// Does the whole of `text` match? (A character-level check, without a vocabulary: tests,
    /// and validating output after the fact.) Token references never match here.
    pub fn accepts(&self, text: &str) -> bool {
        let mut m = matcher::CharMatcher::new(self);
        text.chars().all(|c| m.feed(c as u32)) && m.can_end()
    }

    /// Is `text` a prefix of something the grammar accepts?
    pub fn accepts_prefix(&self, text: &str) -> bool {
        let mut m = matcher::CharMatcher::new(self);
        text.chars().all(|c| m.feed(c as u32))
    }
}

/// Choose the next token under a grammar, as llama.cpp's `common_sampler_sample` does: sample
/// the unconstrained chain first and keep the token when the grammar allows it (the common case,
/// one cheap check); only otherwise mask every disallowed token and sample again. The sampler's
/// random stream advances for both draws, so results are reproducible per seed.
///
/// If nothing at all is allowed (a grammar the vocabulary cannot spell), the returned token is
/// not allowed either and [`Matcher::accept`] will refuse it; callers stop there.
pub fn sample(sampler: &mut Sampler, m: &impl Allowed, logits: &[f32]) -> u32 {
    let t = sampler.sample(logits);
    if m.allows(t) {
        return t;
    }
    sampler.sample_masked(logits, &mut |c| m.mask(c))
}

/// What [`sample`] asks of a constraint: [`Matcher`], [`LazyMatcher`].
pub trait Allowed {
    fn allows(&self, token: u32) -> bool;
    fn mask(&self, cands: &mut Candidates);
}

impl Allowed for Matcher {
    fn allows(&self, token: u32) -> bool {
        Matcher::allows(self, token)
    }
    fn mask(&self, cands: &mut Candidates) {
        Matcher::mask(self, cands)
    }
}

impl Allowed for LazyMatcher {
    fn allows(&self, token: u32) -> bool {
        LazyMatcher::allows(self, token)
    }
    fn mask(&self, cands: &mut Candidates) {
        LazyMatcher::mask(self, cands)
    }
}
