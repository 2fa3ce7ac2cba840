//! Pre-tokenizers for byte-level BPE: split text into words before merges run on each word.
//!
//! Each model family's Hugging Face tokenizer splits with a regex; llama.cpp replaces the common
//! ones with hand-written scanners (unicode.cpp `unicode_regex_split_custom_*`) and runs the rest
//! through std::regex over a text whose non-ASCII code points are "collapsed" to one byte per
//! category. Where llama.cpp and the regex disagree (they do, on corner cases), we follow
//! llama.cpp, since that is what the GGUF ids are checked against. The scanners below re-derive
//! those rules; a pipeline is a list of stages, each refining the previous stage's pieces, the way
//! llama.cpp applies its `regex_exprs` one after the other.

use crate::unicode::Flags;

/// Which split rules a BPE vocabulary uses (GGUF `tokenizer.ggml.pre`, mapped to families).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreTokenizer {
    /// GPT-2: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
    Gpt2,
    /// LLaMA 3 (tiktoken cl100k-style): case-insensitive contractions, a letter run with one
    /// optional non-letter prefix, digits in groups of up to 3, newlines kept with their spaces.
    Llama3,
    /// Qwen2: LLaMA 3's rules with single digits.
    Qwen2,
    /// SmolLM / StarCoder: every digit on its own, then GPT-2's rules.
    Smollm,
    /// llama.cpp's fallback for BPE vocabularies without a known pre-tokenizer: punctuation runs,
    /// then GPT-2's rules, then number runs, then groups of three ASCII digits.
    Default,
}

impl PreTokenizer {
    pub fn name(self) -> &'static str {
        match self {
            PreTokenizer::Gpt2 => "gpt2",
            PreTokenizer::Llama3 => "llama3",
            PreTokenizer::Qwen2 => "qwen2",
            PreTokenizer::Smollm => "smollm",
            PreTokenizer::Default => "default",
        }
    }

    /// Splits `text` into words; their concatenation is `text`.
    pub fn split(self, text: &str) -> Vec<&str> {
        let cpts: Vec<char> = text.chars().collect();
        let flags: Vec<Flags> = cpts.iter().map(|&c| Flags::of(c)).collect();
        let mut pieces = vec![(0, cpts.len())];
        let s = Scan {
            cpts: &cpts,
            flags: &flags,
        };
        let stages: &[Stage] = match self {
            PreTokenizer::Gpt2 => &[Stage::Gpt2],
            PreTokenizer::Llama3 => &[Stage::Llama3 { max_digits: 3 }],
            PreTokenizer::Qwen2 => &[Stage::Llama3 { max_digits: 1 }],
            PreTokenizer::Smollm => &[Stage::EachNumber, Stage::Gpt2],
            PreTokenizer::Default => &[
                Stage::PunctRuns,
                Stage::Gpt2,
                Stage::NumberRuns,
                Stage::AsciiDigitTriples,
            ],
        };
        for stage in stages {
            let mut out = Vec::with_capacity(pieces.len() * 2);
            for &(ini, end) in &pieces {
                s.run(*stage, ini, end, &mut out);
            }
            pieces = out;
        }
        // Code point indices -> byte offsets.
        let mut byte_at = Vec::with_capacity(cpts.len() + 1);
        let mut b = 0;
        for c in &cpts {
            byte_at.push(b);
            b += c.len_utf8();
        }
        byte_at.push(b);
        pieces
            .into_iter()
            .filter(|&(i, e)| e > i)
            .map(|(i, e)| &text[byte_at[i]..byte_at[e]])
            .collect()
    }
}

#[derive(Clone, Copy)]
enum Stage {
    Gpt2,
    Llama3 {
        max_digits: usize,
    },
    /// `\p{N}`: each number code point is a piece; the text between is a piece.
    EachNumber,
    /// `[\p{P}\$\+<=>\^~\|]+` as llama.cpp's std::regex sees it (see `is_default_punct`).
    PunctRuns,
    /// `\p{N}+`.
    NumberRuns,
    /// `[0-9][0-9][0-9]`, leftmost non-overlapping.
    AsciiDigitTriples,
}

struct Scan<'a> {
    cpts: &'a [char],
    flags: &'a [Flags],
}

/// Emits pieces of one range [ini, end), tracking where the last piece ended.
struct Emit<'o> {
    out: &'o mut Vec<(usize, usize)>,
    prev_end: usize,
}

impl Emit<'_> {
    /// Ends a piece at `end` (nothing if empty); returns its length.
    fn add(&mut self, end: usize) -> usize {
        let len = end - self.prev_end;
        if len > 0 {
            self.out.push((self.prev_end, end));
        }
        self.prev_end = end;
        len
    }
}

/// What the std::regex class `[\p{P}\$\+<=>\^~\|]` matches in llama.cpp's collapsed text: ASCII
/// punctuation and `$+<=>^~|` (so every ASCII symbol but the backtick), and non-ASCII code points
/// of category P only.
fn is_default_punct(c: char, f: Flags) -> bool {
    if c.is_ascii() {
        matches!(c, '!'..='#' | '%'..='*' | ','..='/' | ':' | ';' | '?' | '@' | '['..=']' | '_' | '{' | '}' | '$' | '+' | '<' | '=' | '>' | '^' | '~' | '|')
    } else {
        !f.is_whitespace() && f.is_punctuation()
    }
}

const OUT_OF_RANGE: Option<char> = None;

impl Scan<'_> {
    fn run(&self, stage: Stage, ini: usize, end: usize, out: &mut Vec<(usize, usize)>) {
        match stage {
            Stage::Gpt2 => self.gpt2(ini, end, out),
            Stage::Llama3 { max_digits } => self.llama3(ini, end, max_digits, out),
            Stage::EachNumber => {
                let mut e = Emit { out, prev_end: ini };
                for i in ini..end {
                    if self.flags[i].is_number() {
                        e.add(i);
                        e.add(i + 1);
                    }
                }
                e.add(end);
            }
            Stage::PunctRuns => self.runs(ini, end, out, is_default_punct),
            Stage::NumberRuns => self.runs(ini, end, out, |_, f| f.is_number()),
            Stage::AsciiDigitTriples => {
                let mut e = Emit { out, prev_end: ini };
                let mut i = ini;
                while i + 3 <= end {
                    if self.cpts[i..i + 3].iter().all(|c| c.is_ascii_digit()) {
                        e.add(i);
                        e.add(i + 3);
                        i += 3;
                    } else {
                        i += 1;
                    }
                }
                e.add(end);
            }
        }
    }

    /// Maximal runs where `pred` holds are pieces, and so is the text between them.
    fn runs(
        &self,
        ini: usize,
        end: usize,
        out: &mut Vec<(usize, usize)>,
        pred: impl Fn(char, Flags) -> bool,
    ) {
        let mut e = Emit { out, prev_end: ini };
        let mut i = ini;
        while i < end {
            let v = pred(self.cpts[i], self.flags[i]);
            let start = i;
            while i < end && pred(self.cpts[i], self.flags[i]) == v {
                i += 1;
            }
            e.add(start);
            e.add(i);
        }
        e.add(end);
    }

    /// GPT-2's split (llama.cpp `unicode_regex_split_custom_gpt2`).
    fn gpt2(&self, ini: usize, end: usize, out: &mut Vec<(usize, usize)>) {
        let cpt = |p: usize| {
            if p >= ini && p < end {
                Some(self.cpts[p])
            } else {
                OUT_OF_RANGE
            }
        };
        let flags = |p: usize| {
            if p >= ini && p < end {
                self.flags[p]
            } else {
                Flags::NONE
            }
        };
        let mut e = Emit { out, prev_end: ini };
        let mut pos = ini;
        while pos < end {
            let c = cpt(pos);
            let f = flags(pos);
            // 's|'t|'re|'ve|'m|'ll|'d (case-sensitive)
            if c == Some('\'') && pos + 1 < end {
                let next = cpt(pos + 1);
                if matches!(next, Some('s' | 't' | 'm' | 'd')) {
                    pos += e.add(pos + 2);
                    continue;
                }
                if pos + 2 < end {
                    let nn = cpt(pos + 2);
                    if matches!(
                        (next, nn),
                        (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l'))
                    ) {
                        pos += e.add(pos + 3);
                        continue;
                    }
                }
            }
            let space = c == Some(' ');
            let mut f2 = if space { flags(pos + 1) } else { f };
            // ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+'
            if f2.is_letter() || f2.is_number() || f2.is_other() {
                let class: fn(Flags) -> bool = if f2.is_letter() {
                    Flags::is_letter
                } else if f2.is_number() {
                    Flags::is_number
                } else {
                    Flags::is_other
                };
                pos += space as usize;
                while class(f2) {
                    pos += 1;
                    f2 = flags(pos);
                }
                e.add(pos);
                continue;
            }
            let mut n_ws = 0;
            while flags(pos + n_ws).is_whitespace() {
                n_ws += 1;
            }
            // '\s+(?!\S)': a whitespace run before a non-space leaves its last char to that word.
            if n_ws > 1 && cpt(pos + n_ws).is_some() {
                pos += n_ws - 1;
                e.add(pos);
                continue;
            }
            // '\s+'
            if n_ws > 0 {
                pos += n_ws;
                e.add(pos);
                continue;
            }
            pos += 1;
            e.add(pos);
        }
    }

    /// LLaMA 3's split (llama.cpp `unicode_regex_split_custom_llama3`; with `max_digits` 1 it is
    /// `..._qwen2`).
    fn llama3(&self, ini: usize, end: usize, max_digits: usize, out: &mut Vec<(usize, usize)>) {
        let cpt = |p: usize| {
            if p >= ini && p < end {
                Some(self.cpts[p])
            } else {
                OUT_OF_RANGE
            }
        };
        let flags = |p: usize| {
            if p >= ini && p < end {
                self.flags[p]
            } else {
                Flags::NONE
            }
        };
        // The case folding only needs to recognise the ASCII letters of the contractions; no other
        // code point lower-cases to one of them.
        let lower = |c: Option<char>| c.map(|c| c.to_ascii_lowercase());
        let mut e = Emit { out, prev_end: ini };
        let mut pos = ini;
        while pos < end {
            let c = cpt(pos);
            let f = flags(pos);
            // (?i:'s|'t|'re|'ve|'m|'ll|'d)
            if c == Some('\'') && pos + 1 < end {
                let next = lower(cpt(pos + 1));
                if matches!(next, Some('s' | 't' | 'm' | 'd')) {
                    pos += e.add(pos + 2);
                    continue;
                }
                if pos + 2 < end {
                    let nn = lower(cpt(pos + 2));
                    if matches!(
                        (next, nn),
                        (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l'))
                    ) {
                        pos += e.add(pos + 3);
                        continue;
                    }
                }
            }
            // [^\r\n\p{L}\p{N}]?\p{L}+
            if !(c == Some('\r') || c == Some('\n') || f.is_number())
                && (f.is_letter() || flags(pos + 1).is_letter())
            {
                pos += 1;
                while flags(pos).is_letter() {
                    pos += 1;
                }
                e.add(pos);
                continue;
            }
            // \p{N}{1,max_digits}
            if f.is_number() {
                let mut run_start = pos;
                while flags(pos).is_number() {
                    pos += 1;
                    if pos - run_start >= max_digits {
                        e.add(pos);
                        run_start = pos;
                    }
                }
                e.add(pos);
                continue;
            }
            // ' ?[^\s\p{L}\p{N}]+[\r\n]*'. llama.cpp tests the first char's own flags for "is a
            // character" here (not those after the optional space); kept as is.
            let space = c == Some(' ');
            let mut f2 = if space { flags(pos + 1) } else { f };
            let other = |f: Flags| !(f.is_whitespace() || f.is_letter() || f.is_number());
            if other(f2) && !f.is_none() {
                pos += space as usize;
                while f2.is_other() {
                    pos += 1;
                    f2 = flags(pos);
                }
                while matches!(cpt(pos), Some('\r' | '\n')) {
                    pos += 1;
                }
                e.add(pos);
                continue;
            }
            let mut n_ws = 0;
            let mut last_newline_end = 0;
            while flags(pos + n_ws).is_whitespace() {
                if matches!(cpt(pos + n_ws), Some('\r' | '\n')) {
                    last_newline_end = pos + n_ws + 1;
                }
                n_ws += 1;
            }
            // \s*[\r\n]+
            if last_newline_end > 0 {
                pos = last_newline_end;
                e.add(pos);
                continue;
            }
            // \s+(?!\S)
            if n_ws > 1 && cpt(pos + n_ws).is_some() {
                pos += n_ws - 1;
                e.add(pos);
                continue;
            }
            // \s+
            if n_ws > 0 {
                pos += n_ws;
                e.add(pos);
                continue;
            }
            pos += 1;
            e.add(pos);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PreTokenizer::*;

    #[test]
    fn gpt2_words() {
        assert_eq!(Gpt2.split("Hello world"), ["Hello", " world"]);
        assert_eq!(
            Gpt2.split("I'm   here!!\n"),
            ["I", "'m", "  ", " here", "!!", "\n"]
        );
        assert_eq!(Gpt2.split("x 12345"), ["x", " 12345"]);
        assert_eq!(Gpt2.split(""), [] as [&str; 0]);
    }

    #[test]
    fn llama3_words() {
        assert_eq!(Llama3.split("Hello world"), ["Hello", " world"]);
        assert_eq!(
            Llama3.split("I'M 1234567"),
            ["I", "'M", " ", "123", "456", "7"]
        );
        assert_eq!(Llama3.split("a  \n\n b"), ["a", "  \n\n", " b"]);
        assert_eq!(Llama3.split("(x)"), ["(x", ")"]);
        assert_eq!(Qwen2.split("123"), ["1", "2", "3"]);
    }

    #[test]
    fn smollm_and_default() {
        assert_eq!(Smollm.split("ab 12"), ["ab", " ", "1", "2"]);
        assert_eq!(
            Default.split("a+b 12345"),
            ["a", "+", "b", " ", "123", "45"]
        );
    }
}
