//! Byte-level BPE as llama.cpp runs it (`llm_tokenizer_bpe_session`): pre-tokenize, map each
//! word's bytes to GPT-2's printable alphabet, then within each word repeatedly merge the adjacent
//! pair with the lowest merge rank (ties: the leftmost pair). With `ignore_merges` (LLaMA 3) a word
//! that is itself a token is taken whole without merging.
//!
//! Same heap-with-lazy-deletion scheme as the SPM merger: O(n log n) per word.

use crate::pretok::PreTokenizer;
use crate::{Tokenizer, NO_ID};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

#[derive(Clone, Copy)]
struct Symbol {
    prev: usize,
    next: usize,
    start: usize,
    len: usize,
    /// Token id of this symbol's text, NO_ID when it is not a token (merge lookups use ids).
    id: u32,
}

const NONE: usize = usize::MAX;

/// Tokenizes one special-free fragment, appending ids.
pub(crate) fn tokenize(tok: &Tokenizer, pre: PreTokenizer, text: &str, out: &mut Vec<u32>) {
    let mut word = String::new();
    let mut symbols: Vec<Symbol> = Vec::new();
    // (rank, left, right, merged byte length) in a min-heap.
    let mut heap: BinaryHeap<Reverse<(u32, usize, usize, usize)>> = BinaryHeap::new();

    for raw in pre.split(text) {
        word.clear();
        for &b in raw.as_bytes() {
            word.push(crate::unicode::byte_to_char(b));
        }
        symbols.clear();
        heap.clear();

        let whole = if tok.ignore_merges {
            tok.token_id(&word)
        } else {
            None
        };
        if let Some(id) = whole {
            out.push(id);
            continue;
        }
        for (start, c) in word.char_indices() {
            let i = symbols.len();
            let len = c.len_utf8();
            let id = tok.token_id(&word[start..start + len]).unwrap_or(NO_ID);
            symbols.push(Symbol {
                prev: if i == 0 { NONE } else { i - 1 },
                next: i + 1,
                start,
                len,
                id,
            });
        }
        if let Some(last) = symbols.last_mut() {
            last.next = NONE;
        }

        let try_add = |heap: &mut BinaryHeap<Reverse<(u32, usize, usize, usize)>>,
                       symbols: &[Symbol],
                       left: usize,
                       right: usize| {
            if left == NONE || right == NONE {
                return;
            }
            let (l, r) = (&symbols[left], &symbols[right]);
            let rank = if l.id != NO_ID && r.id != NO_ID {
                tok.merges.get(&(l.id, r.id)).copied()
            } else if tok.merges_by_text.is_empty() {
                None
            } else {
                let lt = &word[l.start..l.start + l.len];
                let rt = &word[r.start..r.start + r.len];
                tok.merges_by_text
                    .get(&(lt.to_string(), rt.to_string()))
                    .copied()
            };
            if let Some(rank) = rank {
                heap.push(Reverse((rank, left, right, l.len + r.len)));
            }
        };
        for i in 1..symbols.len() {
            try_add(&mut heap, &symbols, i - 1, i);
        }

        while let Some(Reverse((_, left, right, len))) = heap.pop() {
            let (l, r) = (symbols[left], symbols[right]);
            if l.len == 0 || r.len == 0 || l.len + r.len != len {
                continue;
            }
            let merged_len = l.len + r.len;
            symbols[left].len = merged_len;
            symbols[left].id = tok
                .token_id(&word[l.start..l.start + merged_len])
                .unwrap_or(NO_ID);
            symbols[right].len = 0;
            symbols[left].next = r.next;
            if r.next != NONE {
                symbols[r.next].prev = left;
            }
            try_add(&mut heap, &symbols, l.prev, left);
            try_add(&mut heap, &symbols, left, symbols[left].next);
        }

        for s in symbols.iter().filter(|s| s.len > 0) {
            if s.id != NO_ID {
                out.push(s.id);
                continue;
            }
            // Not a token: llama.cpp looks each byte of the (already byte-encoded) text up as a
            // one-byte string; only ASCII bytes can be valid strings, so only those can match.
            let piece = &word[s.start..s.start + s.len];
            for &b in piece.as_bytes() {
                if b.is_ascii() {
                    if let Some(id) =
                        tok.token_id(std::str::from_utf8(std::slice::from_ref(&b)).unwrap_or(""))
                    {
                        out.push(id);
                    }
                }
            }
        }
    }
}
