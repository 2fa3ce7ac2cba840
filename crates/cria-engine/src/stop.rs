//! Stop strings over streamed text.
//!
//! Generation produces text a token at a time, and a stop string can span several tokens
//! ("User:" may come as "\nUs" + "er" + ":"). [`StopMatcher`] takes each decoded piece, passes on
//! the text that can no longer be part of a stop string, and holds back the longest tail that is
//! still a proper prefix of one. When a stop string completes, the text before it is released and
//! the stop string and everything after it are dropped, as llama.cpp's server does.
//!
//! The pieces are `&str`: a streaming detokenizer has already joined UTF-8 characters split
//! across tokens. Held-back tails always start at a character boundary (a stop string begins with
//! a whole character), so the released text is valid UTF-8 too. One buffer, reserved at
//! construction and reused, so pushing pieces allocates nothing once it has grown to the longest
//! piece plus the longest stop string.
//!
//! Limits: requests should go through [`StopMatcher::try_new`] (or [`validate_stops`]), which
//! refuses more than [`MAX_STOPS`] stop strings or one longer than [`MAX_STOP_BYTES`] ("stop:
//! 65 strings, more than 64" / "stop[3]: 5000 bytes, more than 4096"). Whatever the list, the
//! work per piece is linear in the held text plus the total length of the stop strings (the
//! partial-match check runs each string's KMP automaton), never quadratic.

/// Most stop strings one generation may have.
pub const MAX_STOPS: usize = 64;
/// Longest stop string, in bytes.
pub const MAX_STOP_BYTES: usize = 4096;

/// How many stop strings, and how long each, a front accepts: the engine's own
/// ([`STOP_LIMITS`]) or a stricter front's (the server's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopLimits {
    pub strings: usize,
    pub bytes: usize,
}

/// [`MAX_STOPS`] strings of at most [`MAX_STOP_BYTES`] bytes.
pub const STOP_LIMITS: StopLimits = StopLimits {
    strings: MAX_STOPS,
    bytes: MAX_STOP_BYTES,
};

/// A list of stop strings over a [`StopLimits`]; each front words it its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopLimitError {
    /// `count` strings, more than the limit's `strings`.
    TooMany { count: usize },
    /// String `index` is `bytes` long, more than the limit's `bytes`.
    TooLong { index: usize, bytes: usize },
}

impl StopLimits {
    /// The first way `stops` goes over these limits: too many strings, else the first too long.
    pub fn check<S: AsRef<str>>(self, stops: &[S]) -> Result<(), StopLimitError> {
        if stops.len() > self.strings {
            return Err(StopLimitError::TooMany { count: stops.len() });
        }
        match stops.iter().position(|s| s.as_ref().len() > self.bytes) {
            Some(index) => Err(StopLimitError::TooLong {
                index,
                bytes: stops[index].as_ref().len(),
            }),
            None => Ok(()),
        }
    }
}

/// Check a list of stop strings against [`STOP_LIMITS`].
pub fn validate_stops<S: AsRef<str>>(stops: &[S]) -> Result<(), String> {
    STOP_LIMITS.check(stops).map_err(|e| match e {
        StopLimitError::TooMany { count } => {
            format!("stop: {count} strings, more than {MAX_STOPS}")
        }
        StopLimitError::TooLong { index, bytes } => {
            format!("stop[{index}]: {bytes} bytes, more than {MAX_STOP_BYTES}")
        }
    })
}

/// Why and where generation stopped on a stop string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopHit {
    /// Index of the stop string in the list given to [`StopMatcher::new`].
    pub index: usize,
}

/// Streaming matcher for a set of stop strings. See the module docs.
#[derive(Debug, Clone)]
pub struct StopMatcher {
    stops: Vec<String>, // non-empty stop strings, in the caller's order
    /// KMP failure function of each stop string: `fail[k][i]` = length of the longest proper
    /// border of `stops[k][..=i]`.
    fail: Vec<Vec<u32>>,
    /// Caller's index of each entry of `stops` (empty strings are dropped from `stops`).
    index: Vec<usize>,
    held: String, // text not yet released: a suffix that may start a stop string
    hit: Option<StopHit>,
}

impl StopMatcher {
    /// [`StopMatcher::new`] after [`validate_stops`]: the way to take stop strings from a
    /// request.
    pub fn try_new<S: AsRef<str>>(stops: &[S]) -> Result<Self, String> {
        validate_stops(stops)?;
        Ok(Self::new(stops))
    }

    /// A matcher for `stops`. Empty strings are ignored (they would match everywhere). Not
    /// size-checked: see [`StopMatcher::try_new`].
    pub fn new<S: AsRef<str>>(stops: &[S]) -> Self {
        let mut kept = Vec::new();
        let mut index = Vec::new();
        for (i, s) in stops.iter().enumerate() {
            if !s.as_ref().is_empty() {
                kept.push(s.as_ref().to_string());
                index.push(i);
            }
        }
        let longest = kept.iter().map(String::len).max().unwrap_or(0);
        let fail = kept.iter().map(|s| failure(s.as_bytes())).collect();
        StopMatcher {
            fail,
            stops: kept,
            index,
            // Room for the longest held tail plus a generous piece: no growth in normal use.
            held: String::with_capacity(2 * longest + 256),
            hit: None,
        }
    }

    /// Whether there is any stop string to look for.
    pub fn is_empty(&self) -> bool {
        self.stops.is_empty()
    }

    /// The stop string that ended generation, if one did.
    pub fn hit(&self) -> Option<StopHit> {
        self.hit
    }

    /// Feed one decoded piece; append to `out` the text that is now safe to show. Returns the
    /// hit when a stop string completed in this piece (and on every call after it; nothing more
    /// is released then).
    pub fn push(&mut self, piece: &str, out: &mut String) -> Option<StopHit> {
        if self.hit.is_some() {
            return self.hit;
        }
        if self.stops.is_empty() {
            out.push_str(piece);
            return None;
        }
        self.held.push_str(piece);
        // The earliest complete stop string wins; at the same start, the first listed.
        let mut best: Option<(usize, usize)> = None; // (byte offset, entry)
        for (k, s) in self.stops.iter().enumerate() {
            if let Some(at) = self.held.find(s.as_str()) {
                if best.is_none_or(|(b, _)| at < b) {
                    best = Some((at, k));
                }
            }
        }
        if let Some((at, k)) = best {
            out.push_str(&self.held[..at]);
            self.held.clear();
            self.hit = Some(StopHit {
                index: self.index[k],
            });
            return self.hit;
        }
        let keep = self.partial_tail();
        let release = self.held.len() - keep;
        out.push_str(&self.held[..release]);
        self.held.drain(..release);
        None
    }

    /// End of generation without a stop: release whatever was held back.
    pub fn flush(&mut self, out: &mut String) {
        if self.hit.is_none() {
            out.push_str(&self.held);
        }
        self.held.clear();
    }

    /// Start over for a new generation (keeps the buffer).
    pub fn reset(&mut self) {
        self.held.clear();
        self.hit = None;
    }

    /// Length in bytes of the longest suffix of `held` that is a proper prefix of some stop
    /// string (and so may still grow into one).
    ///
    /// Per stop string, its KMP automaton runs over the last `len - 1` bytes of `held`: the
    /// state at the end is the longest suffix that is a prefix (a complete match cannot occur,
    /// `push` has just looked for one, so the state stays below `len`).
    fn partial_tail(&self) -> usize {
        let h = self.held.as_bytes();
        let mut best = 0;
        for (s, fail) in self.stops.iter().zip(&self.fail) {
            let s = s.as_bytes();
            let max = (s.len() - 1).min(h.len());
            if max <= best {
                continue;
            }
            let mut k = 0usize; // bytes of `s` matched so far
            for &b in &h[h.len() - max..] {
                while k > 0 && (k == s.len() || s[k] != b) {
                    k = fail[k - 1] as usize;
                }
                if s[k] == b {
                    k += 1;
                }
            }
            // A full match ends here only if `push` missed it; keep its longest border then.
            if k == s.len() {
                k = fail[k - 1] as usize;
            }
            best = best.max(k);
        }
        best
    }
}

/// The KMP failure function of `s`.
fn failure(s: &[u8]) -> Vec<u32> {
    let mut f = vec![0u32; s.len()];
    let mut k = 0usize;
    for i in 1..s.len() {
        while k > 0 && s[i] != s[k] {
            k = f[k - 1] as usize;
        }
        if s[i] == s[k] {
            k += 1;
        }
        f[i] = k as u32;
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_report_the_first_breach() {
        let l = StopLimits {
            strings: 2,
            bytes: 3,
        };
        assert_eq!(l.check(&["abc", ""]), Ok(()));
        assert_eq!(
            l.check(&["a", "b", "c"]),
            Err(StopLimitError::TooMany { count: 3 })
        );
        assert_eq!(
            l.check(&["a", "abcd"]),
            Err(StopLimitError::TooLong { index: 1, bytes: 4 })
        );
        assert_eq!(
            validate_stops(&["x".repeat(MAX_STOP_BYTES + 1)]).unwrap_err(),
            format!(
                "stop[0]: {} bytes, more than {MAX_STOP_BYTES}",
                MAX_STOP_BYTES + 1
            )
        );
    }

    /// Feed `pieces` and return (released text, hit).
    fn run(stops: &[&str], pieces: &[&str]) -> (String, Option<usize>) {
        let mut m = StopMatcher::new(stops);
        let mut out = String::new();
        for p in pieces {
            if let Some(h) = m.push(p, &mut out) {
                return (out, Some(h.index));
            }
        }
        m.flush(&mut out);
        (out, None)
    }

    /// The partial-match check by brute force (the quadratic loop it replaced).
    fn naive_tail(m: &StopMatcher) -> usize {
        let h = m.held.as_bytes();
        let mut best = 0;
        for s in &m.stops {
            let s = s.as_bytes();
            for len in 1..s.len().min(h.len() + 1) {
                if h[h.len() - len..] == s[..len] {
                    best = best.max(len);
                }
            }
        }
        best
    }

    #[test]
    fn kmp_tail_agrees_with_brute_force() {
        // Small alphabets make borders (aab / aabaab ...) common.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for _ in 0..300 {
            let word = |rnd: &mut dyn FnMut(u64) -> u64, len: u64| -> String {
                (0..1 + rnd(len))
                    .map(|_| ['a', 'b', 'c'][rnd(3) as usize])
                    .collect()
            };
            let stops: Vec<String> = (0..1 + rnd(3)).map(|_| word(&mut rnd, 7)).collect();
            let mut m = StopMatcher::new(&stops);
            let mut out = String::new();
            for _ in 0..20 {
                let piece = word(&mut rnd, 4);
                if m.push(&piece, &mut out).is_some() {
                    break;
                }
                assert_eq!(m.partial_tail(), naive_tail(&m), "{stops:?} {:?}", m.held);
                assert_eq!(m.held.len(), naive_tail(&m));
            }
        }
    }

    #[test]
    fn stop_inside_one_piece() {
        assert_eq!(
            run(&["</s>"], &["Hello", " world</s> and more"]),
            ("Hello world".to_string(), Some(0))
        );
    }

    #[test]
    fn stop_spanning_pieces_is_not_printed() {
        let mut m = StopMatcher::new(&["\nUser:"]);
        let mut out = String::new();
        assert_eq!(m.push("Sure.", &mut out), None);
        assert_eq!(out, "Sure.");
        assert_eq!(m.push("\nUs", &mut out), None);
        assert_eq!(out, "Sure.", "a possible stop start is held back");
        assert_eq!(m.push("er", &mut out), None);
        assert_eq!(m.push(": hi", &mut out), Some(StopHit { index: 0 }));
        assert_eq!(out, "Sure.");
        // After the hit, nothing more comes out.
        assert_eq!(m.push("more", &mut out), Some(StopHit { index: 0 }));
        assert_eq!(out, "Sure.");
    }

    #[test]
    fn false_start_is_released() {
        // "\nUs" looked like the start of "\nUser:" but went elsewhere.
        assert_eq!(
            run(&["\nUser:"], &["a", "\nUs", "ually", " fine"]),
            ("a\nUsually fine".to_string(), None)
        );
        // Held text comes out with flush at the end.
        assert_eq!(run(&["STOP"], &["ab", "ST"]), ("abST".to_string(), None));
    }

    #[test]
    fn overlapping_prefix_restarts() {
        // "aab" in "aaab": the match starts one byte later than the first candidate.
        assert_eq!(
            run(&["aab"], &["a", "a", "a", "b", "c"]),
            ("a".to_string(), Some(0))
        );
    }

    #[test]
    fn earliest_stop_wins_and_index_is_callers() {
        // "" is ignored but keeps its place in the numbering.
        assert_eq!(
            run(&["", "world", "lo w"], &["hello world"]),
            ("hel".to_string(), Some(2))
        );
    }

    #[test]
    fn multibyte_stop_across_pieces() {
        // Pieces split at char boundaries of multi-byte text; the stop string is multi-byte too.
        let text = "naïve «fin» après";
        let stop = "«fin»";
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let pieces: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(run(&[stop], &pieces), ("naïve ".to_string(), Some(0)));
        // A held tail that is a partial multi-byte prefix never splits a character.
        let mut m = StopMatcher::new(&["ée!"]);
        let mut out = String::new();
        m.push("caf", &mut out);
        m.push("é", &mut out);
        assert_eq!(out, "caf");
        m.push("é?", &mut out);
        assert_eq!(out, "caféé?");
    }

    #[test]
    fn no_stops_passes_through() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".to_string(), None));
    }

    #[test]
    fn reset_starts_over() {
        let mut m = StopMatcher::new(&["x"]);
        let mut out = String::new();
        assert!(m.push("ax", &mut out).is_some());
        m.reset();
        out.clear();
        assert!(m.push("b", &mut out).is_none());
        assert_eq!(out, "b");
    }
}
