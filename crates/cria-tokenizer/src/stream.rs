//! Incremental detokenization for streaming output.
//!
//! A character can be split over several tokens (an emoji is often four `<0xNN>` byte tokens, a
//! CJK character two or three byte-level pieces), so printing each token's bytes as they come
//! would print broken characters. The decoder keeps the incomplete tail of a UTF-8 sequence and
//! returns only whole characters; bytes that can never become a character are replaced by U+FFFD.

use crate::Tokenizer;

pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    pending: Vec<u8>,
    special: bool,
}

impl<'a> StreamDecoder<'a> {
    /// Control tokens render as nothing (like llama.cpp's `token_to_piece(special = false)`).
    /// No leading space is removed: a stream continues a text that already exists.
    pub fn new(tok: &'a Tokenizer) -> Self {
        StreamDecoder {
            tok,
            pending: Vec::new(),
            special: false,
        }
    }

    /// Render control tokens as their text (`<|im_end|>`) too.
    pub fn with_special(mut self, special: bool) -> Self {
        self.special = special;
        self
    }

    /// Feeds one token; returns the text that is complete now (possibly empty).
    pub fn push(&mut self, id: u32) -> String {
        let mut out = String::new();
        self.push_into(id, &mut out);
        out
    }

    /// Feeds one token and appends the text that is complete now to `out`. With `out` reused
    /// (cleared by the caller) this allocates nothing once `out` and the held-back tail have
    /// grown to their working size: the generation loop's form.
    pub fn push_into(&mut self, id: u32, out: &mut String) {
        self.tok.push_piece(id, self.special, &mut self.pending);
        let mut start = 0;
        loop {
            let rest = &self.pending[start..];
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&rest[..valid]).unwrap_or_default());
                    match e.error_len() {
                        // An incomplete sequence at the end: wait for more bytes.
                        None => {
                            start += valid;
                            break;
                        }
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start += valid + bad;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
    }

    /// Returns what is still held back (an unfinished character becomes U+FFFD) and resets.
    pub fn flush(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }

    /// Bytes held back waiting for the rest of a character.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}
