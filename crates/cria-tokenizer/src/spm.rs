//! SentencePiece BPE as llama.cpp runs it (`llm_tokenizer_spm_session`): start from single code
//! points and repeatedly merge the adjacent pair whose concatenation is the vocabulary token with
//! the highest score (ties: the leftmost pair). Pieces left that are not tokens fall back to
//! their UTF-8 bytes as `<0xNN>` tokens.
//!
//! The candidate pairs live in a binary heap; a merged-away symbol is marked empty and stale
//! candidates are skipped when popped, so a text of n code points costs O(n log n).

use crate::Tokenizer;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

#[derive(Clone, Copy)]
struct Symbol {
    prev: usize, // usize::MAX: none
    next: usize,
    start: usize, // byte offset into the text
    len: usize,   // 0 once merged into its left neighbour
}

const NONE: usize = usize::MAX;

struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// Max-heap order: higher score first, then the smaller left index.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// Tokenizes one fragment whose spaces are already U+2581 (and dummy prefix added), appending ids.
pub(crate) fn tokenize(tok: &Tokenizer, text: &str, out: &mut Vec<u32>) {
    let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
    for (start, c) in text.char_indices() {
        let i = symbols.len();
        symbols.push(Symbol {
            prev: if i == 0 { NONE } else { i - 1 },
            next: i + 1,
            start,
            len: c.len_utf8(),
        });
    }
    if let Some(last) = symbols.last_mut() {
        last.next = NONE;
    }

    let mut heap = BinaryHeap::with_capacity(symbols.len());
    let try_add = |heap: &mut BinaryHeap<Bigram>, symbols: &[Symbol], left: usize, right: usize| {
        if left == NONE || right == NONE {
            return;
        }
        let (l, r) = (&symbols[left], &symbols[right]);
        let piece = &text[l.start..r.start + r.len];
        if let Some(id) = tok.token_id(piece) {
            let t = tok.tokens.tok(id);
            if t.mergeable {
                heap.push(Bigram {
                    score: t.score,
                    left,
                    right,
                    len: piece.len(),
                });
            }
        }
    };
    for i in 1..symbols.len() {
        try_add(&mut heap, &symbols, i - 1, i);
    }

    while let Some(b) = heap.pop() {
        let (l, r) = (symbols[b.left], symbols[b.right]);
        // Stale: one side was merged away, or grew since this pair was queued.
        if l.len == 0 || r.len == 0 || l.len + r.len != b.len {
            continue;
        }
        symbols[b.left].len += r.len;
        symbols[b.right].len = 0;
        symbols[b.left].next = r.next;
        if r.next != NONE {
            symbols[r.next].prev = b.left;
        }
        try_add(&mut heap, &symbols, l.prev, b.left);
        try_add(&mut heap, &symbols, b.left, symbols[b.left].next);
    }

    let mut i = if symbols.is_empty() { NONE } else { 0 };
    while i != NONE {
        let s = symbols[i];
        let piece = &text[s.start..s.start + s.len];
        match tok.token_id(piece) {
            Some(id) => out.push(id),
            None => {
                // Only single code points can be unknown here: every merge produced a token.
                for &byte in piece.as_bytes() {
                    if let Some(id) = tok.byte_token(byte) {
                        out.push(id);
                    }
                }
            }
        }
        i = s.next;
    }
}
