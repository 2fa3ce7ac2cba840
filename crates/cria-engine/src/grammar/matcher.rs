//! The recognizer: pushdown stacks over the grammar's elements, advanced one code point at a
//! time, and the token-level matcher built on it.
//!
//! A stack is a node id in an [`Arena`]: node = (element index of the top, parent node), with
//! node 0 the empty stack (the grammar has matched completely). Nodes are hash-consed, so equal
//! stacks are equal ids and a *set* of stacks is a small sorted `Vec<u32>`. For a stack whose top
//! is a character class, the stacks after one matching code point do not depend on which code
//! point matched, so they are computed once per node (`succ`) and memoized; the mask walk over
//! the whole vocabulary is then only class tests and set unions.
//!
//! The arena only grows during a generation; it is bounded by `Limits::max_matcher_nodes`
//! (nodes plus memo entries). Reaching it sets a flag that stops the work in progress; the
//! memo is then dropped (and, in `accept`, the nodes compacted to the live stacks) and the work
//! redone once. Only when the live state alone is past the bound does `accept` fail.

use super::{Clock, Elem, Grammar, GrammarError, Limits, TokenRef, TIME_BUDGET_MSG};
use crate::sampler::Candidates;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

const EMPTY: u32 = 0;

/// Longest token (in code points from a character boundary) a grammar may produce: longer ones
/// are never allowed, which bounds the depth of the vocabulary trie and of the walks over it
/// (they recurse once per code point, on threads that may have only a 2 MiB stack). Real
/// vocabularies stay far below it.
pub const MAX_TOKEN_CHARS: usize = 1024;

fn state_too_large(cap: usize) -> String {
    format!("the grammar's parser state exceeded {cap} stacks (max_matcher_nodes)")
}

/// Partial UTF-8 state between bytes: `remain` continuation bytes still expected, `value` the
/// bits so far, `len` the sequence's total length. `remain == 0`: at a character boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
struct Utf8 {
    value: u32,
    remain: u8,
    len: u8,
}

impl Utf8 {
    /// The code points this partial sequence can still complete to (empty range if none).
    fn completions(self) -> (u32, u32) {
        let n = u32::from(self.remain) * 6;
        let lo = self.value << n;
        let hi = lo | ((1 << n) - 1);
        // Overlong encodings are not completions of anything.
        let min = match self.len {
            2 => 0x80,
            3 => 0x800,
            _ => 0x10000,
        };
        (lo.max(min), hi.min(0x10FFFF))
    }
}

/// Decode `bytes` continuing from `state`, appending complete code points to `out`. Returns the
/// state after the last byte, or None for invalid UTF-8 (a stray continuation byte, a lead byte
/// where a continuation was due, a lead byte above 0xF4).
fn decode(bytes: &[u8], mut state: Utf8, out: &mut Vec<u32>) -> Option<Utf8> {
    for &b in bytes {
        if state.remain > 0 {
            if b >> 6 != 0b10 {
                return None;
            }
            state.value = (state.value << 6) | u32::from(b & 0x3F);
            state.remain -= 1;
            if state.remain == 0 {
                let (lo, hi) = Utf8 { remain: 0, ..state }.completions_full();
                if state.value < lo || state.value > hi {
                    return None;
                }
                out.push(state.value);
                state = Utf8::default();
            }
            continue;
        }
        let (len, value) = match b {
            0x00..=0x7F => {
                out.push(u32::from(b));
                continue;
            }
            0xC2..=0xDF => (2, b & 0x1F),
            0xE0..=0xEF => (3, b & 0x0F),
            0xF0..=0xF4 => (4, b & 0x07),
            _ => return None,
        };
        state = Utf8 {
            value: u32::from(value),
            remain: len - 1,
            len,
        };
    }
    Some(state)
}

impl Utf8 {
    /// Valid range of a complete sequence of this length.
    fn completions_full(self) -> (u32, u32) {
        match self.len {
            2 => (0x80, 0x7FF),
            3 => (0x800, 0xFFFF),
            _ => (0x10000, 0x10FFFF),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Stack arena
// ---------------------------------------------------------------------------------------------

/// Hash-consed stacks and the memoized transitions between them.
struct Arena {
    nodes: Vec<(u32, u32)>, // (element index of the top, parent node); nodes[0] = empty stack
    index: HashMap<(u32, u32), u32>,
    succ: Vec<(u32, u32)>, // per node: range in `pool` of the stacks after its top matched
    pool: Vec<u32>,
    /// Per node: the `stamp` of the last `step` that added it (duplicate check in O(1)).
    mark: Vec<u32>,
    stamp: u32,
    /// Bound on `nodes.len() + pool.len()`; `full` is set once it is passed, which stops
    /// expansions early: results computed while full are incomplete and must be redone.
    cap: usize,
    full: bool,
    /// Deadline of `Matcher::new`'s first expansion (none during generation).
    clock: Clock,
    timed_out: bool,
}

const NOT_YET: (u32, u32) = (u32::MAX, 0);

impl Arena {
    fn new(cap: usize) -> Self {
        Arena {
            nodes: vec![(u32::MAX, u32::MAX)],
            index: HashMap::new(),
            succ: vec![NOT_YET],
            pool: Vec::new(),
            mark: vec![0],
            stamp: 0,
            cap,
            full: false,
            clock: Clock::none(),
            timed_out: false,
        }
    }

    /// Has the work been cut short (size bound or deadline)?
    fn stopped(&self) -> bool {
        self.full || self.timed_out
    }

    fn check_size(&mut self) {
        if self.nodes.len() + self.pool.len() > self.cap {
            self.full = true;
        }
    }

    /// Forget the memoized transitions (they are only a cache).
    fn clear_memo(&mut self) {
        self.succ.iter_mut().for_each(|s| *s = NOT_YET);
        self.pool.clear();
        self.full = false;
        self.check_size();
    }

    /// Keep only the stacks of `set` (rewritten to their new ids) and an empty memo.
    fn compact(&mut self, set: &mut [u32]) {
        let old = std::mem::replace(self, Arena::new(self.cap));
        let mut chain = Vec::new();
        for s in set.iter_mut() {
            chain.clear();
            let mut x = *s;
            while x != EMPTY {
                chain.push(old.nodes[x as usize].0);
                x = old.nodes[x as usize].1;
            }
            let mut id = EMPTY;
            for &e in chain.iter().rev() {
                id = self.push(e, id);
            }
            *s = id;
        }
        set.sort_unstable();
    }

    fn push(&mut self, elem: u32, parent: u32) -> u32 {
        if let Some(&id) = self.index.get(&(elem, parent)) {
            return id;
        }
        let id = self.nodes.len() as u32;
        self.nodes.push((elem, parent));
        self.succ.push(NOT_YET);
        self.mark.push(0);
        self.index.insert((elem, parent), id);
        self.check_size();
        id
    }

    /// A new duplicate-check generation for `mark`.
    fn next_stamp(&mut self) -> u32 {
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.mark.iter_mut().for_each(|m| *m = 0);
            self.stamp = 1;
        }
        self.stamp
    }

    fn top(&self, g: &Grammar, s: u32) -> Elem {
        if s == EMPTY {
            Elem::End
        } else {
            g.elems[self.nodes[s as usize].0 as usize]
        }
    }

    /// The stack after the top element of `s` is done: pop it, and push the element after it
    /// unless that ends the alternative.
    fn pop_advance(&mut self, g: &Grammar, s: u32) -> u32 {
        let (e, parent) = self.nodes[s as usize];
        if g.elems[e as usize + 1] == Elem::End {
            parent
        } else {
            self.push(e + 1, parent)
        }
    }

    /// Expand rule references on top of `start` until every stack's top is a terminal (or the
    /// stack is empty); add the results to `out` (each once per call: callers merging several
    /// calls deduplicate). Stops early when the arena is full or the deadline passed.
    fn expand(&mut self, g: &Grammar, start: u32, out: &mut Vec<u32>) {
        let mut todo = vec![start];
        let mut seen = HashSet::new();
        while let Some(s) = todo.pop() {
            if self.clock.expired() {
                self.timed_out = true;
            }
            if self.stopped() {
                return;
            }
            if !seen.insert(s) {
                continue;
            }
            match self.top(g, s) {
                Elem::Ref(r) => {
                    let base = self.pop_advance(g, s);
                    for &a in &g.alts[r as usize] {
                        let next = if g.elems[a as usize] == Elem::End {
                            base
                        } else {
                            self.push(a, base)
                        };
                        todo.push(next);
                    }
                }
                _ => out.push(s),
            }
        }
    }

    /// Stacks after the top of `s` (a terminal) has been matched, as a range of `pool`.
    fn succ(&mut self, g: &Grammar, s: u32) -> (usize, usize) {
        let (a, n) = self.succ[s as usize];
        if a != u32::MAX {
            return (a as usize, a as usize + n as usize);
        }
        let next = self.pop_advance(g, s);
        let mut out = Vec::new();
        self.expand(g, next, &mut out);
        let a = self.pool.len();
        self.pool.extend_from_slice(&out);
        self.check_size();
        if !self.stopped() {
            // Only complete results are memoized.
            self.succ[s as usize] = (a as u32, out.len() as u32);
        }
        (a, a + out.len())
    }

    /// The stacks of `buf[a..b]` after code point `c`, appended to `buf` (free of duplicates
    /// among themselves). One buffer for input and output lets the trie walk keep every
    /// level's set on one stack of ids.
    #[inline]
    fn step(&mut self, g: &Grammar, buf: &mut Vec<u32>, a: usize, b: usize, c: u32) {
        let stamp = self.next_stamp();
        for i in a..b {
            let s = buf[i];
            if let Elem::Chars(k) = self.top(g, s) {
                if g.classes[k as usize].matches(c) {
                    let (pa, pb) = self.succ(g, s);
                    for j in pa..pb {
                        let t = self.pool[j];
                        // `succ` may have added nodes (and their marks) since the stamp.
                        let m = &mut self.mark[t as usize];
                        if *m != stamp {
                            *m = stamp;
                            buf.push(t);
                        }
                    }
                }
            }
        }
    }

    /// The stacks of `set` after the code points `cps` (only stacks with a character on top
    /// take part); empty when some code point is not allowed.
    fn run(&mut self, g: &Grammar, set: &[u32], cps: &[u32]) -> Vec<u32> {
        let mut buf: Vec<u32> = set
            .iter()
            .copied()
            .filter(|&s| matches!(self.top(g, s), Elem::Chars(_)))
            .collect();
        for &c in cps {
            let n = buf.len();
            self.step(g, &mut buf, 0, n, c);
            buf.drain(..n);
            if buf.is_empty() || self.stopped() {
                break;
            }
        }
        buf
    }

    /// Can some stack of `set` take a character that completes the partial sequence `u`?
    fn partial_ok(&self, g: &Grammar, set: &[u32], u: Utf8) -> bool {
        let (lo, hi) = u.completions();
        set.iter().any(|&s| match self.top(g, s) {
            Elem::Chars(k) => g.classes[k as usize].matches_any_in(lo, hi),
            _ => false,
        })
    }

    fn initial(&mut self, g: &Grammar) -> Vec<u32> {
        let mut out = Vec::new();
        for &a in &g.alts[g.root as usize] {
            let s = if g.elems[a as usize] == Elem::End {
                EMPTY
            } else {
                self.push(a, EMPTY)
            };
            self.expand(g, s, &mut out);
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// A character-level recognizer (no vocabulary): [`Grammar::accepts`].
pub(crate) struct CharMatcher<'g> {
    g: &'g Grammar,
    arena: Arena,
    set: Vec<u32>,
}

impl<'g> CharMatcher<'g> {
    pub(crate) fn new(g: &'g Grammar) -> Self {
        let mut arena = Arena::new(super::MAX_MATCHER_NODES);
        let set = arena.initial(g);
        CharMatcher { g, arena, set }
    }

    /// False when `c` cannot follow (or the state grew past the matcher's bound).
    pub(crate) fn feed(&mut self, c: u32) -> bool {
        let mut next = self.arena.run(self.g, &self.set, &[c]);
        if self.arena.full {
            self.arena.compact(&mut self.set);
            next = self.arena.run(self.g, &self.set, &[c]);
            if self.arena.full {
                next.clear();
            }
        }
        self.set = next;
        !self.set.is_empty()
    }

    pub(crate) fn can_end(&self) -> bool {
        self.set.contains(&EMPTY)
    }
}

// ---------------------------------------------------------------------------------------------
// Vocabulary
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Ordinary text.
    Text,
    /// End of generation: allowed exactly when the grammar can end.
    Eog,
    /// Never allowed: empty pieces (control tokens), pieces starting with NUL (llama.cpp treats
    /// those as empty too), and pieces that are invalid UTF-8 from a character boundary.
    Never,
}

/// A trie over the tokens' code points (decoded from a character boundary). `terms` are the
/// tokens that end at a node, with any partial UTF-8 left at their end.
#[derive(Debug, Default)]
struct Trie {
    nodes: Vec<TrieNode>,
    child_cp: Vec<u32>,
    child_node: Vec<u32>,
    terms: Vec<u32>,
}

#[derive(Debug, Clone, Copy)]
struct TrieNode {
    children: (u32, u32), // range in child_cp / child_node
    terms: (u32, u32),    // range in terms
}

/// The vocabulary as the matcher needs it, built once per model: every token's bytes, its code
/// points from a character boundary, and a trie over those.
#[derive(Debug)]
pub struct TokenTable {
    pieces: Vec<Vec<u8>>,
    kinds: Vec<Kind>,
    cp_off: Vec<u32>, // (n_tokens + 1,): token t's code points are cps[cp_off[t]..cp_off[t+1]]
    cps: Vec<u32>,
    tails: Vec<Utf8>, // partial UTF-8 at the end of each token
    names: HashMap<Vec<u8>, u32>,
    trie: Trie,
}

impl TokenTable {
    /// `pieces[t]` = the bytes token `t` stands for; control tokens should have empty pieces
    /// (they are never allowed under a grammar, as in llama.cpp). `eog` = end-of-generation ids.
    pub fn new(pieces: Vec<Vec<u8>>, eog: &[u32]) -> Self {
        let n = pieces.len();
        let mut kinds = Vec::with_capacity(n);
        let mut cp_off = Vec::with_capacity(n + 1);
        let mut cps = Vec::new();
        let mut tails = Vec::with_capacity(n);
        cp_off.push(0);
        for (t, p) in pieces.iter().enumerate() {
            let mut kind = if eog.contains(&(t as u32)) {
                Kind::Eog
            } else if p.is_empty() || p[0] == 0 {
                Kind::Never
            } else {
                Kind::Text
            };
            let mut tail = Utf8::default();
            if kind == Kind::Text {
                let mark = cps.len();
                match decode(p, Utf8::default(), &mut cps) {
                    Some(u) if cps.len() - mark <= MAX_TOKEN_CHARS => tail = u,
                    _ => {
                        cps.truncate(mark);
                        kind = Kind::Never;
                    }
                }
            }
            kinds.push(kind);
            tails.push(tail);
            cp_off.push(cps.len() as u32);
        }
        let mut names = HashMap::new();
        for (t, p) in pieces.iter().enumerate() {
            if !p.is_empty() {
                names.entry(p.clone()).or_insert(t as u32);
            }
        }
        let mut table = TokenTable {
            pieces,
            kinds,
            cp_off,
            cps,
            tails,
            names,
            trie: Trie::default(),
        };
        table.build_trie();
        table
    }

    /// From a vocabulary as a tokenizer offers it: `piece(t)` = token t's bytes (empty for
    /// control tokens), `control_text(t)` = a control token's text, which `<text>` references in
    /// a grammar may name (e.g. `<think>`). The one way callers (CLI, server) build the table.
    pub fn from_vocab(
        n: u32,
        piece: impl Fn(u32) -> Vec<u8>,
        eog: &[u32],
        control_text: impl Fn(u32) -> Option<String>,
    ) -> Self {
        let mut table = TokenTable::new((0..n).map(&piece).collect(), eog);
        for t in 0..n {
            if let Some(text) = control_text(t) {
                table.add_name(&text, t);
            }
        }
        table
    }

    /// Let `<text>` in a grammar name token `id` (e.g. a control token's text, whose piece is
    /// empty). Pieces already name their tokens.
    pub fn add_name(&mut self, text: &str, id: u32) {
        self.names.insert(text.as_bytes().to_vec(), id);
    }

    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    pub fn piece(&self, t: u32) -> &[u8] {
        self.pieces.get(t as usize).map_or(&[], |p| p)
    }

    /// The token a `<text>` reference in a grammar would name (a piece, or a control token's
    /// text given to [`TokenTable::add_name`]).
    pub fn named(&self, text: &str) -> Option<u32> {
        self.names.get(text.as_bytes()).copied()
    }

    fn token_cps(&self, t: usize) -> &[u32] {
        &self.cps[self.cp_off[t] as usize..self.cp_off[t + 1] as usize]
    }

    fn build_trie(&mut self) {
        let mut ids: Vec<u32> = (0..self.pieces.len() as u32)
            .filter(|&t| self.kinds[t as usize] == Kind::Text)
            .collect();
        ids.sort_by(|&a, &b| self.token_cps(a as usize).cmp(self.token_cps(b as usize)));
        let mut trie = Trie::default();
        self.build_node(&mut trie, &ids, 0);
        self.trie = trie;
    }

    /// Build the node for `ids` (sorted, sharing their first `depth` code points); returns its
    /// index. Children get contiguous slots, reserved before recursing.
    fn build_node(&self, trie: &mut Trie, ids: &[u32], depth: usize) -> u32 {
        let node = trie.nodes.len() as u32;
        trie.nodes.push(TrieNode {
            children: (0, 0),
            terms: (0, 0),
        });
        let n_end = ids
            .iter()
            .take_while(|&&t| self.token_cps(t as usize).len() == depth)
            .count();
        let t0 = trie.terms.len() as u32;
        trie.terms.extend_from_slice(&ids[..n_end]);
        let rest = &ids[n_end..];
        let mut groups: Vec<(u32, usize, usize)> = Vec::new();
        let mut i = 0;
        while i < rest.len() {
            let c = self.token_cps(rest[i] as usize)[depth];
            let mut j = i + 1;
            while j < rest.len() && self.token_cps(rest[j] as usize)[depth] == c {
                j += 1;
            }
            groups.push((c, i, j));
            i = j;
        }
        let c0 = trie.child_cp.len() as u32;
        for &(c, _, _) in &groups {
            trie.child_cp.push(c);
            trie.child_node.push(0);
        }
        for (k, &(_, a, b)) in groups.iter().enumerate() {
            let child = self.build_node(trie, &rest[a..b], depth + 1);
            trie.child_node[c0 as usize + k] = child;
        }
        trie.nodes[node as usize] = TrieNode {
            children: (c0, c0 + groups.len() as u32),
            terms: (t0, t0 + n_end as u32),
        };
        node
    }
}

// ---------------------------------------------------------------------------------------------
// Matcher
// ---------------------------------------------------------------------------------------------

/// A token reference resolved against the vocabulary.
#[derive(Debug, Clone, Copy)]
struct TokenSym {
    id: u32,
    negated: bool,
}

impl TokenSym {
    fn matches(self, t: u32) -> bool {
        (self.id == t) != self.negated
    }
}

/// The grammar state of one generation. `allows` / `mask` read it; `accept` moves it on.
///
/// The methods that only read take `&self`: the memo tables they fill live behind a mutex
/// (uncontended, locked once per call).
pub struct Matcher {
    g: Arc<Grammar>,
    tokens: Arc<TokenTable>,
    token_syms: Vec<TokenSym>,
    arena: Mutex<Arena>,
    set: Vec<u32>, // current stacks, sorted
    partial: Utf8,
    done: bool, // an end-of-generation token was accepted
}

impl Matcher {
    /// Start matching `grammar` over the vocabulary `tokens`, under the default [`Limits`].
    /// Fails when a `<text>` token reference names no token, when the grammar's first step
    /// expands past the matcher's size bound, or past the compile time budget.
    pub fn new(
        grammar: impl Into<Arc<Grammar>>,
        tokens: Arc<TokenTable>,
    ) -> Result<Self, GrammarError> {
        Self::new_with_limits(grammar, tokens, &Limits::default())
    }

    /// [`Matcher::new`] with explicit limits (`max_matcher_nodes` and the deadline apply).
    pub fn new_with_limits(
        grammar: impl Into<Arc<Grammar>>,
        tokens: Arc<TokenTable>,
        limits: &Limits,
    ) -> Result<Self, GrammarError> {
        let g: Arc<Grammar> = grammar.into();
        let mut clock = limits.clock();
        if clock.expired() {
            return Err(GrammarError {
                line: 1,
                col: 1,
                msg: TIME_BUDGET_MSG.into(),
            });
        }
        let mut token_syms = Vec::with_capacity(g.tokens.len());
        for t in &g.tokens {
            token_syms.push(match t {
                TokenRef::Id { id, negated } => TokenSym {
                    id: *id,
                    negated: *negated,
                },
                TokenRef::Text {
                    text,
                    negated,
                    line_col,
                } => match tokens.names.get(text.as_bytes()) {
                    Some(&id) => TokenSym {
                        id,
                        negated: *negated,
                    },
                    None => {
                        return Err(GrammarError {
                            line: line_col.0,
                            col: line_col.1,
                            msg: format!("token {text} is not a single token of this vocabulary"),
                        })
                    }
                },
            });
        }
        let mut arena = Arena::new(limits.max_matcher_nodes);
        arena.clock = clock;
        let set = arena.initial(&g);
        arena.clock = Clock::none();
        if arena.timed_out {
            return Err(GrammarError {
                line: 1,
                col: 1,
                msg: TIME_BUDGET_MSG.into(),
            });
        }
        if arena.full {
            return Err(GrammarError {
                line: 1,
                col: 1,
                msg: state_too_large(arena.cap),
            });
        }
        Ok(Matcher {
            g,
            tokens,
            token_syms,
            arena: Mutex::new(arena),
            set,
            partial: Utf8::default(),
            done: false,
        })
    }

    /// Back to the start of the grammar (the memo tables are kept).
    pub fn reset(&mut self) {
        let arena = self.arena.get_mut().unwrap_or_else(|e| e.into_inner());
        self.set = arena.initial(&self.g);
        if arena.full {
            // A fresh arena holds the start state: `new` checked that.
            *arena = Arena::new(arena.cap);
            self.set = arena.initial(&self.g);
        }
        self.partial = Utf8::default();
        self.done = false;
    }

    /// Has the output so far matched the whole grammar (an end-of-generation token is allowed
    /// now, or was accepted)?
    pub fn is_complete(&self) -> bool {
        self.done || (self.partial.remain == 0 && self.set.contains(&EMPTY))
    }

    /// Can anything but end-of-generation follow? False once the grammar is complete and admits
    /// no continuation: a caller may stop here without waiting for the model to choose EOG.
    pub fn can_continue(&self) -> bool {
        !self.done && self.set.iter().any(|&s| s != EMPTY)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Arena> {
        self.arena.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Is `token` a valid next token?
    pub fn allows(&self, token: u32) -> bool {
        let mut arena = self.lock();
        let ok = self.allows_locked(&mut arena, token, &mut Vec::new());
        if !arena.full {
            return ok;
        }
        arena.clear_memo();
        let ok = self.allows_locked(&mut arena, token, &mut Vec::new());
        ok && !arena.full
    }

    fn allows_locked(&self, arena: &mut Arena, token: u32, buf: &mut Vec<u32>) -> bool {
        if self.done {
            return false;
        }
        let t = token as usize;
        let g = &*self.g;
        if self.token_ref_admits(arena, token) {
            return true;
        }
        match self.tokens.kinds.get(t) {
            None | Some(Kind::Never) => {
                // A piece invalid from a character boundary may still continue a partial one.
                if self.partial.remain == 0 || self.tokens.kinds.get(t) != Some(&Kind::Never) {
                    return false;
                }
                let p = &self.tokens.pieces[t];
                // (Not an over-long piece: every path refuses those.)
                if p.is_empty() || p[0] == 0 || p.len() > MAX_TOKEN_CHARS {
                    return false;
                }
            }
            Some(Kind::Eog) => return self.is_complete(),
            Some(Kind::Text) => {}
        }
        let (cps, tail): (&[u32], Utf8) = if self.partial.remain == 0 {
            (self.tokens.token_cps(t), self.tokens.tails[t])
        } else {
            buf.clear();
            match decode(&self.tokens.pieces[t], self.partial, buf) {
                Some(u) => (&buf[..], u),
                None => return false,
            }
        };
        let cur = arena.run(g, &self.set, cps);
        if cur.is_empty() {
            return false;
        }
        tail.remain == 0 || arena.partial_ok(g, &cur, tail)
    }

    /// Does a token reference on top of a stack admit `token`? `<[id]>` admits exactly that
    /// token, control tokens included (that is what it is for, e.g. `<think>`); `!<[id]>` admits
    /// every other text token. End-of-generation follows the can-end rule only.
    fn token_ref_admits(&self, arena: &Arena, token: u32) -> bool {
        if self.partial.remain != 0 {
            return false;
        }
        let kind = self.tokens.kinds.get(token as usize).copied();
        if kind.is_none() || kind == Some(Kind::Eog) {
            return false;
        }
        self.set.iter().any(|&s| match arena.top(&self.g, s) {
            Elem::Token(k) => {
                let sym = self.token_syms[k as usize];
                sym.matches(token) && (!sym.negated || kind == Some(Kind::Text))
            }
            _ => false,
        })
    }

    /// Set the logit of every candidate the grammar does not allow to -inf. If the matcher's
    /// state outgrows its bound even after dropping its memo, every candidate is masked (the
    /// token then sampled is refused by [`Matcher::accept`], with the reason).
    pub fn mask(&self, cands: &mut Candidates) {
        let mut arena = self.lock();
        if self.mask_locked(&mut arena, cands) {
            return;
        }
        arena.clear_memo();
        if !self.mask_locked(&mut arena, cands) {
            cands
                .data
                .iter_mut()
                .for_each(|c| c.logit = f32::NEG_INFINITY);
        }
    }

    /// The mask; false, with `cands` untouched, when the arena filled up on the way.
    fn mask_locked(&self, arena: &mut Arena, cands: &mut Candidates) -> bool {
        if self.done {
            cands
                .data
                .iter_mut()
                .for_each(|c| c.logit = f32::NEG_INFINITY);
            return true;
        }
        // A short list (after truncation) is cheaper token by token; so is the rare state in
        // the middle of a character, where the trie (built from character boundaries) does
        // not apply.
        if cands.len() <= 64 || self.partial.remain != 0 {
            let mut buf = Vec::new();
            let mut ok = Vec::with_capacity(cands.len());
            for c in cands.data.iter() {
                ok.push(self.allows_locked(arena, c.id, &mut buf));
                if arena.full {
                    return false;
                }
            }
            for (c, ok) in cands.data.iter_mut().zip(ok) {
                if !ok {
                    c.logit = f32::NEG_INFINITY;
                }
            }
            return true;
        }
        let allowed = self.allowed_bits(arena);
        if arena.full {
            return false;
        }
        for c in cands.data.iter_mut() {
            let i = c.id as usize;
            let ok = allowed.get(i / 64).is_some_and(|w| w >> (i % 64) & 1 != 0);
            if !ok {
                c.logit = f32::NEG_INFINITY;
            }
        }
        true
    }

    /// Every allowed token as a bitset (at a character boundary), by one walk of the trie.
    fn allowed_bits(&self, arena: &mut Arena) -> Vec<u64> {
        let n = self.tokens.len();
        let mut bits = vec![0u64; n.div_ceil(64)];
        let set_bit = |bits: &mut Vec<u64>, t: usize| bits[t / 64] |= 1 << (t % 64);
        let g = &*self.g;
        // Token references on top of a stack: those ids (or all text tokens but one). Negated
        // references are gathered first, so the vocabulary is walked once however many
        // stacks hold one: two different excluded ids together allow every text token.
        let mut excluded: Option<Option<u32>> = None; // Some(Some(id)): all but id; Some(None): all
        for &s in &self.set {
            if let Elem::Token(k) = arena.top(g, s) {
                let sym = self.token_syms[k as usize];
                if !sym.negated {
                    if (sym.id as usize) < n && self.tokens.kinds[sym.id as usize] != Kind::Eog {
                        set_bit(&mut bits, sym.id as usize);
                    }
                    continue;
                }
                excluded = match excluded {
                    None => Some(Some(sym.id)),
                    Some(Some(id)) if id == sym.id => Some(Some(id)),
                    _ => Some(None),
                };
            }
        }
        if let Some(but) = excluded {
            for t in 0..n {
                if self.tokens.kinds[t] == Kind::Text && but != Some(t as u32) {
                    set_bit(&mut bits, t);
                }
            }
        }
        if self.is_complete() {
            for t in 0..n {
                if self.tokens.kinds[t] == Kind::Eog {
                    set_bit(&mut bits, t);
                }
            }
        }
        let mut scratch: Vec<u32> = self
            .set
            .iter()
            .copied()
            .filter(|&s| matches!(arena.top(g, s), Elem::Chars(_)))
            .collect();
        if !scratch.is_empty() {
            let len = scratch.len();
            self.walk(arena, 0, 0, len, &mut scratch, &mut bits);
        }
        bits
    }

    /// Depth-first over the trie from `node`, with the stacks `scratch[a..b]` (non-empty) after
    /// the node's prefix. Children's sets are appended to `scratch` and dropped on return.
    fn walk(
        &self,
        arena: &mut Arena,
        node: u32,
        a: usize,
        b: usize,
        scratch: &mut Vec<u32>,
        bits: &mut [u64],
    ) {
        let g = &*self.g;
        let tt = &self.tokens;
        let nd = tt.trie.nodes[node as usize];
        for k in nd.terms.0..nd.terms.1 {
            let t = tt.trie.terms[k as usize] as usize;
            let tail = tt.tails[t];
            if tail.remain == 0 || arena.partial_ok(g, &scratch[a..b], tail) {
                bits[t / 64] |= 1 << (t % 64);
            }
        }
        for k in nd.children.0..nd.children.1 {
            let c = tt.trie.child_cp[k as usize];
            let child = tt.trie.child_node[k as usize];
            debug_assert_eq!(scratch.len(), b);
            if arena.full {
                return;
            }
            arena.step(g, scratch, a, b, c);
            let e = scratch.len();
            if e > b {
                self.walk(arena, child, b, e, scratch, bits);
                scratch.truncate(b);
            }
        }
    }

    /// Move on by `token`. An error (and no change) if the grammar does not allow it.
    pub fn accept(&mut self, token: u32) -> cria_core::Result<()> {
        let not_allowed = |why: &str| {
            cria_core::Error::Msg(format!("token {token} is not allowed by the grammar{why}"))
        };
        if self.done {
            return Err(not_allowed(" (generation already ended)"));
        }
        let t = token as usize;
        let Some(&kind) = self.tokens.kinds.get(t) else {
            return Err(not_allowed(" (outside the vocabulary)"));
        };
        if kind == Kind::Eog {
            if !self.is_complete() {
                return Err(not_allowed(
                    " (end of generation before the grammar is complete)",
                ));
            }
            self.done = true;
            return Ok(());
        }
        if kind == Kind::Never && self.tokens.pieces[t].len() > MAX_TOKEN_CHARS {
            return Err(not_allowed(&format!(
                " (longer than {MAX_TOKEN_CHARS} characters)"
            )));
        }
        self.commit(|m, arena, g| m.accept_text(arena, g, token))
    }

    /// Runs `step` (which computes the stacks and partial UTF-8 after some input) in the arena,
    /// retrying once with a compacted arena if it filled up, and makes its result the state.
    fn commit(
        &mut self,
        step: impl Fn(&Self, &mut Arena, &Arc<Grammar>) -> cria_core::Result<(Vec<u32>, Utf8)>,
    ) -> cria_core::Result<()> {
        let g = self.g.clone();
        let slot = self.arena.get_mut().unwrap_or_else(|e| e.into_inner());
        let cap = slot.cap;
        let mut arena = std::mem::replace(slot, Arena::new(cap));
        let mut r = step(self, &mut arena, &g);
        if arena.full {
            // Drop the memo and every dead stack, then try again from the live ones.
            arena.compact(&mut self.set);
            r = step(self, &mut arena, &g);
            if arena.full {
                r = Err(cria_core::Error::Msg(state_too_large(cap)));
            }
        }
        if let Ok((set, tail)) = r.as_mut() {
            if arena.nodes.len() + arena.pool.len() > cap / 2 {
                // Leave room for the next mask.
                arena.compact(set);
            }
            self.set = std::mem::take(set);
            self.partial = *tail;
        }
        *self.arena.get_mut().unwrap_or_else(|e| e.into_inner()) = arena;
        r.map(|_| ())
    }

    /// The stacks (sorted) and partial UTF-8 after `token`; incomplete if `arena` filled up.
    fn accept_text(
        &self,
        arena: &mut Arena,
        g: &Arc<Grammar>,
        token: u32,
    ) -> cria_core::Result<(Vec<u32>, Utf8)> {
        let not_allowed = |why: &str| {
            cria_core::Error::Msg(format!("token {token} is not allowed by the grammar{why}"))
        };
        let t = token as usize;
        let mut new_set: Vec<u32> = Vec::new();
        if self.token_ref_admits(arena, token) {
            for &s in &self.set {
                if let Elem::Token(k) = arena.top(g, s) {
                    let sym = self.token_syms[k as usize];
                    if sym.matches(token) && (!sym.negated || self.tokens.kinds[t] == Kind::Text) {
                        let (a, b) = arena.succ(g, s);
                        new_set.extend_from_slice(&arena.pool[a..b]);
                    }
                }
            }
        }
        let tokens = self.tokens.clone();
        let piece = &tokens.pieces[t];
        if piece.is_empty() || piece[0] == 0 {
            if new_set.is_empty() {
                return Err(not_allowed(" (a control or empty token)"));
            }
            new_set.sort_unstable();
            new_set.dedup();
            return Ok((new_set, self.partial));
        }
        self.advance(arena, g, piece, new_set)
            .map_err(|why| not_allowed(&why))
    }

    /// Move on by the text `bytes`, as if a token spelled it (a lazy grammar is fed the output
    /// from its trigger on). An error (and no change) if the grammar does not allow it.
    pub fn accept_bytes(&mut self, bytes: &[u8]) -> cria_core::Result<()> {
        if self.done {
            return Err(cria_core::Error::Msg(
                "the grammar has already ended".into(),
            ));
        }
        self.commit(|m, arena, g| {
            m.advance(arena, g, bytes, Vec::new()).map_err(|why| {
                cria_core::Error::Msg(format!("text not allowed by the grammar{why}"))
            })
        })
    }

    /// The stacks (sorted, with `new_set`'s) and partial UTF-8 after `piece`; Err(why) if none.
    fn advance(
        &self,
        arena: &mut Arena,
        g: &Arc<Grammar>,
        piece: &[u8],
        mut new_set: Vec<u32>,
    ) -> Result<(Vec<u32>, Utf8), String> {
        let mut cps = Vec::new();
        let Some(tail) = decode(piece, self.partial, &mut cps) else {
            return Err(" (invalid UTF-8)".into());
        };
        let mut cur = arena.run(g, &self.set, &cps);
        if tail.remain != 0 {
            // Keep only the stacks the pending character can still satisfy.
            let (lo, hi) = tail.completions();
            cur.retain(|&s| match arena.top(g, s) {
                Elem::Chars(k) => g.classes[k as usize].matches_any_in(lo, hi),
                _ => false,
            });
        }
        new_set.extend_from_slice(&cur);
        if new_set.is_empty() {
            let text = String::from_utf8_lossy(piece);
            return Err(format!(" ({text:?} cannot continue the output)"));
        }
        new_set.sort_unstable();
        new_set.dedup();
        Ok((new_set, tail))
    }

    /// Number of live stacks (diagnostics).
    pub fn n_stacks(&self) -> usize {
        self.set.len()
    }
}
