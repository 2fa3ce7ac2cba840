//! cria-tokenizer: LLaMA-family tokenizers (SentencePiece BPE, LLaMA-3 BPE, GPT-2 byte-level BPE),
//! built from GGUF metadata or a Hugging Face tokenizer.json, matching llama.cpp token for token.
//!
//! Both constructors fill one [`Tokenizer`]; there is one encoder per model type:
//! - `spm`: LLaMA 1/2, Mistral, TinyLlama (GGUF `tokenizer.ggml.model = "llama"`): score-driven
//!   merges over the whole text with spaces as U+2581 and a dummy leading space, bytes as
//!   `<0xNN>` tokens when no piece fits.
//! - `bpe(<pre>)`: GPT-2 byte-level BPE (`"gpt2"`): a pre-tokenizer splits words (LLaMA 3,
//!   GPT-2, SmolLM, ...), then rank-driven merges run inside each word.
//!
//! Special tokens (control and user-defined) are cut out of the text first, longest first, the
//! way llama.cpp's `tokenizer_st_partition` does; control tokens only when `parse_special`.
//! Which ids end generation (`is_eog`) follows llama.cpp's rules, including its list of
//! end-of-turn token texts.

mod bpe;
mod load_gguf;
mod load_hf;
mod pretok;
mod spm;
mod stream;
mod unicode;
mod unicode_table;

pub use pretok::PreTokenizer;
pub use stream::StreamDecoder;

use cria_core::{Error, Result};
use rustc_hash::FxHashMap;
use std::collections::BTreeSet;

/// Marks "no token" inside hot loops where `Option<u32>` would double the size of a symbol.
pub(crate) const NO_ID: u32 = u32::MAX;

/// Token attributes, as llama.cpp's `llama_token_attr` bits (GGUF `token_type` maps onto them).
pub(crate) mod attr {
    pub const UNDEFINED: u32 = 0;
    pub const UNKNOWN: u32 = 1 << 0;
    pub const UNUSED: u32 = 1 << 1;
    pub const NORMAL: u32 = 1 << 2;
    pub const CONTROL: u32 = 1 << 3;
    pub const USER_DEFINED: u32 = 1 << 4;
    pub const BYTE: u32 = 1 << 5;
    pub const LSTRIP: u32 = 1 << 7;
    pub const RSTRIP: u32 = 1 << 8;
}

#[derive(Clone, Debug)]
pub(crate) struct TokenData {
    pub text: String,
    /// SentencePiece score (higher merges first); unused by BPE.
    pub score: f32,
    pub attr: u32,
    /// May this token be the result of an SPM merge? Always true from GGUF (llama.cpp tries every
    /// vocabulary token); from tokenizer.json only tokens that some merge rule produces.
    pub mergeable: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Model {
    Spm,
    Bpe(PreTokenizer),
}

/// Everything a loader found, before the rules shared by both loaders are applied.
pub(crate) struct Spec<'a> {
    pub model: Model,
    pub tokens: Vec<TokenData>,
    /// BPE merges in rank order, borrowed from the loader's source (no copy of 280K strings).
    pub merges: Vec<(&'a str, &'a str)>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub eom: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    pub fim: [Option<u32>; 6], // pre, suf, mid, pad, rep, sep
    pub add_bos: bool,
    pub add_eos: bool,
    pub add_space_prefix: bool,
    pub clean_spaces: bool,
    pub ignore_merges: bool,
    pub chat_template: Option<String>,
    /// `general.name`, lower-cased: llama.cpp keys a few per-model token attributes on it.
    pub model_name: String,
}

/// The vocabulary as a built tokenizer keeps it: every token's text in one buffer (an end
/// offset each) beside its score and attributes, not a heap String per token: for SmolLM2's
/// 49K tokens ~1 MB instead of ~3.5 MB (LLaMA 3's 128K: ~3 MB instead of ~9).
struct Vocab {
    text: String,
    ends: Vec<u32>,
    info: Vec<TokenInfo>,
}

#[derive(Clone, Copy)]
struct TokenInfo {
    score: f32,
    /// `attr` bits, all below 2^16 (8 bytes a token with `mergeable`, not 12).
    attr: u16,
    mergeable: bool,
}

/// One token of the vocabulary (the fields of `TokenData`, borrowed).
#[derive(Clone, Copy)]
pub(crate) struct Tok<'a> {
    pub text: &'a str,
    pub score: f32,
    pub attr: u32,
    pub mergeable: bool,
}

impl Vocab {
    fn new(tokens: Vec<TokenData>) -> Result<Vocab> {
        let len: usize = tokens.iter().map(|t| t.text.len()).sum();
        if u32::try_from(len).is_err() {
            return Err(Error::msg(format!(
                "tokenizer: the vocabulary's texts take {len} bytes (at most 4 GiB)"
            )));
        }
        let mut v = Vocab {
            text: String::with_capacity(len),
            ends: Vec::with_capacity(tokens.len()),
            info: Vec::with_capacity(tokens.len()),
        };
        for t in tokens {
            v.text.push_str(&t.text);
            v.ends.push(v.text.len() as u32);
            debug_assert!(t.attr <= u16::MAX as u32, "token attributes past 16 bits");
            v.info.push(TokenInfo {
                score: t.score,
                attr: t.attr as u16,
                mergeable: t.mergeable,
            });
        }
        Ok(v)
    }
    fn len(&self) -> usize {
        self.info.len()
    }
    /// Token `id`, if the vocabulary has it.
    pub(crate) fn get(&self, id: u32) -> Option<Tok<'_>> {
        let i = id as usize;
        let info = self.info.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        Some(Tok {
            text: &self.text[start..self.ends[i] as usize],
            score: info.score,
            attr: info.attr as u32,
            mergeable: info.mergeable,
        })
    }
    /// Token `id` (an id the tokenizer made: in range).
    pub(crate) fn tok(&self, id: u32) -> Tok<'_> {
        self.get(id).expect("token id in range")
    }
}

/// Token texts by id, for `TextIndex`: the loaders' `TokenData` while a tokenizer is built, its
/// `Vocab` after.
trait Texts {
    fn text_of(&self, id: u32) -> &str;
}

impl Texts for [TokenData] {
    fn text_of(&self, id: u32) -> &str {
        &self[id as usize].text
    }
}

impl Texts for Vec<TokenData> {
    fn text_of(&self, id: u32) -> &str {
        &self[id as usize].text
    }
}

impl Texts for Vocab {
    fn text_of(&self, id: u32) -> &str {
        self.tok(id).text
    }
}

/// Vocabulary string -> id. The table holds only ids and compares against the strings of
/// `tokens`, so a 128K vocabulary's index is ~1.3 MB rather than a second copy of every string in
/// a HashMap<String, u32> (~12 MB). A duplicated text maps to its last id (as in llama.cpp).
/// Fx hashing: the keys are the vocabulary's (fixed at load), so adversarial input text can only
/// hit the chains the vocabulary already has; SipHash would double encode time.
struct TextIndex(hashbrown::HashTable<u32>);

fn fx(s: &str) -> u64 {
    use std::hash::BuildHasher;
    rustc_hash::FxBuildHasher.hash_one(s)
}

impl TextIndex {
    fn build(tokens: &[TokenData]) -> Self {
        let text = |id: &u32| tokens[*id as usize].text.as_str();
        let mut t = hashbrown::HashTable::with_capacity(tokens.len());
        for (i, tok) in tokens.iter().enumerate() {
            let s = tok.text.as_str();
            match t.entry(fx(s), |id| text(id) == s, |id| fx(text(id))) {
                hashbrown::hash_table::Entry::Occupied(mut o) => *o.get_mut() = i as u32,
                hashbrown::hash_table::Entry::Vacant(v) => {
                    v.insert(i as u32);
                }
            }
        }
        TextIndex(t)
    }
    /// The id of `s` in the `tokens` this index was built from (or their `Vocab`).
    fn get<T: Texts + ?Sized>(&self, tokens: &T, s: &str) -> Option<u32> {
        self.0.find(fx(s), |&id| tokens.text_of(id) == s).copied()
    }
}

/// A LLaMA-family tokenizer: vocabulary, merges, special tokens and flags.
/// How two vocabularies differ ([`Tokenizer::vocab_diff`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VocabDiff {
    /// The first id whose text differs: this vocabulary's text, the other's.
    Token {
        id: u32,
        ours: String,
        theirs: String,
    },
    /// The same texts as far as the shorter goes; the sizes.
    Size { ours: usize, theirs: usize },
}

pub struct Tokenizer {
    model: Model,
    pub(crate) tokens: Vocab,
    token_to_id: TextIndex,
    /// Merge ranks keyed by the ids of the two halves (every real vocabulary has both halves in
    /// the vocabulary; the few that do not are kept by text in `merges_by_text`).
    pub(crate) merges: FxHashMap<(u32, u32), u32>,
    pub(crate) merges_by_text: FxHashMap<(String, String), u32>,
    pub(crate) ignore_merges: bool,
    byte_tokens: Vec<u32>, // 256 entries, NO_ID where the vocabulary has no token for that byte
    /// Control, user-defined and unknown tokens, longest text first: the order they are cut out.
    specials: Vec<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    eom: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    eog: BTreeSet<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    clean_spaces: bool,
    chat_template: Option<String>,
    kind: String,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind)
            .field("vocab_size", &self.tokens.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eog", &self.eog)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

/// Texts llama.cpp treats as end-of-generation tokens wherever they appear in a vocabulary
/// (llama-vocab.cpp, "maintain a list of tokens that cause end-of-generation").
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];
/// Candidates for the end-of-turn id when the metadata names none.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
/// Fill-in-the-middle token candidates: prefix, suffix, middle, pad, repo, file separator.
const FIM_TEXTS: [&[&str]; 6] = [
    &[
        "<|fim_prefix|>",
        "<fim-prefix>",
        "<fim_prefix>",
        "<｜fim▁begin｜>",
        "<PRE>",
        "▁<PRE>",
        "<|code_prefix|>",
        "<|prefix|>",
    ],
    &[
        "<|fim_suffix|>",
        "<fim-suffix>",
        "<fim_suffix>",
        "<｜fim▁hole｜>",
        "<SUF>",
        "▁<SUF>",
        "<|code_suffix|>",
        "<|suffix|>",
    ],
    &[
        "<|fim_middle|>",
        "<fim-middle>",
        "<fim_middle>",
        "<｜fim▁end｜>",
        "<MID>",
        "▁<MID>",
        "<|code_middle|>",
        "<|middle|>",
    ],
    &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"],
    &[
        "<|fim_repo|>",
        "<|repo_name|>",
        "<fim-repo>",
        "<REPO>",
        "<reponame>",
    ],
    &["<|file_sep|>"],
];

enum Fragment {
    Text(usize, usize), // byte range of the input
    Token(u32),
}

impl Tokenizer {
    /// Builds the tokenizer from a GGUF file's `tokenizer.*` metadata.
    pub fn from_gguf(gguf: &cria_core::gguf::GgufFile) -> Result<Tokenizer> {
        load_gguf::load(gguf)
    }

    /// Builds the tokenizer from a Hugging Face `tokenizer.json` (BPE model, either byte-level or
    /// SentencePiece-style with byte fallback), with BOS/EOS, their add flags and the chat
    /// template from `tokenizer_config.json` when given.
    pub fn from_hf(
        tokenizer_json: &std::path::Path,
        tokenizer_config_json: Option<&std::path::Path>,
    ) -> Result<Tokenizer> {
        load_hf::load(tokenizer_json, tokenizer_config_json)
    }

    /// Applies llama.cpp's vocabulary-wide rules (end-of-generation detection, attribute fixes)
    /// and builds the lookup tables.
    pub(crate) fn build(spec: Spec<'_>) -> Result<Tokenizer> {
        let Spec {
            model,
            mut tokens,
            merges,
            bos,
            eos,
            mut eot,
            mut eom,
            unk,
            pad,
            mut fim,
            add_bos,
            add_eos,
            add_space_prefix,
            clean_spaces,
            ignore_merges,
            chat_template,
            model_name,
        } = spec;
        if tokens.is_empty() {
            return Err(Error::msg("tokenizer: empty vocabulary"));
        }
        if tokens.len() >= NO_ID as usize {
            return Err(Error::msg(format!(
                "tokenizer: vocabulary of {} tokens is too large",
                tokens.len()
            )));
        }
        let n = tokens.len() as u32;
        for (name, id) in [
            ("bos", bos),
            ("eos", eos),
            ("eot", eot),
            ("eom", eom),
            ("unk", unk),
            ("pad", pad),
        ] {
            if let Some(id) = id {
                if id >= n {
                    return Err(Error::msg(format!(
                        "tokenizer: {name} id {id} out of range (vocabulary has {n} tokens)"
                    )));
                }
            }
        }
        for (i, t) in tokens.iter_mut().enumerate() {
            if t.text.is_empty() {
                t.text = format!("[EMPTY_{i}]");
            }
        }
        let token_to_id = TextIndex::build(&tokens);
        // Ids that own their text (a duplicated text maps to its last id, as in llama.cpp), in id
        // order: llama.cpp walks a hash map here, so where two candidates exist its choice is
        // arbitrary; ascending ids make ours deterministic.
        let owners: Vec<u32> = (0..n)
            .filter(|&i| token_to_id.get(&tokens, &tokens[i as usize].text) == Some(i))
            .collect();

        let mark_control =
            |tokens: &mut Vec<TokenData>, id: u32| tokens[id as usize].attr |= attr::CONTROL;
        // Where the metadata names no EOT/EOM/FIM token, recognise one by its text. llama.cpp
        // takes the first candidate in hash-map order, which is arbitrary when a vocabulary has
        // several (SmolLM2 has both <|endoftext|> and <|im_end|>); we take the first in the
        // candidate list's order, which puts the chat end-of-turn markers first.
        let by_priority = |tokens: &[TokenData], texts: &[&str]| {
            texts.iter().find_map(|t| token_to_id.get(tokens, t))
        };
        for (slot, texts) in [(&mut eot, EOT_TEXTS), (&mut eom, EOM_TEXTS)] {
            if slot.is_none() {
                *slot = by_priority(&tokens, texts);
                if let Some(id) = *slot {
                    mark_control(&mut tokens, id);
                }
            }
        }
        for (slot, texts) in fim.iter_mut().zip(FIM_TEXTS) {
            if slot.is_none() {
                *slot = by_priority(&tokens, texts);
                if let Some(id) = *slot {
                    mark_control(&mut tokens, id);
                }
            }
        }
        // Control tokens named "unused" are unused.
        for &id in &owners {
            let t = &mut tokens[id as usize];
            if t.attr & attr::CONTROL != 0 && t.text.contains("unused") {
                t.attr |= attr::UNUSED;
            }
        }
        let mut eog = BTreeSet::new();
        eog.extend(fim[3..].iter().flatten().copied());
        for &id in &owners {
            if EOG_TEXTS.contains(&tokens[id as usize].text.as_str()) {
                eog.insert(id);
                mark_control(&mut tokens, id);
            }
        }
        // gpt-oss renders these markers as text.
        for &id in &owners {
            if matches!(
                tokens[id as usize].text.as_str(),
                "<|channel|>" | "<|message|>" | "<|start|>" | "<|constrain|>"
            ) {
                tokens[id as usize].attr = attr::USER_DEFINED;
            }
        }
        eog.extend([eos, eot, eom].into_iter().flatten());
        // o200k_harmony / solar-open: "<|end|>" ends a message, not the generation.
        let has = |t: &str| eog.iter().any(|&id| tokens[id as usize].text == t);
        if (has("<|return|>") && has("<|call|>") && has("<|end|>"))
            || ((has("<|call|>") || has("<|calls|>")) && has("<|flush|>") && has("<|end|>"))
        {
            if let Some(&end) = eog
                .iter()
                .find(|&&id| tokens[id as usize].text == "<|end|>")
            {
                eog.remove(&end);
                tokens[end as usize].attr = attr::USER_DEFINED;
            }
        }
        // Gemma 4 / PLaMo: "</s>" is an ordinary token there.
        let has = |t: &str| eog.iter().any(|&id| tokens[id as usize].text == t);
        if has("<|tool_response>") || has("<|plamo:eos|>") {
            if let Some(&s) = eog.iter().find(|&&id| tokens[id as usize].text == "</s>") {
                eog.remove(&s);
                tokens[s as usize].attr = attr::NORMAL;
            }
        }

        let mut specials: Vec<u32> = (0..n)
            .filter(|&i| {
                tokens[i as usize].attr & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0
            })
            .collect();
        specials.sort_by_key(|&i| std::cmp::Reverse(tokens[i as usize].text.len()));

        if model_name.contains("phi-3") || model_name.contains("phi3") {
            for &id in &specials {
                tokens[id as usize].attr |= attr::RSTRIP;
            }
            if let Some(id) = token_to_id.get(&tokens, "</s>") {
                tokens[id as usize].attr |= attr::RSTRIP;
            }
            for t in ["<unk>", "<s>", "<|endoftext|>"] {
                if let Some(id) = token_to_id.get(&tokens, t) {
                    tokens[id as usize].attr &= !attr::RSTRIP;
                }
            }
        }

        let mut merge_ids = FxHashMap::with_capacity_and_hasher(merges.len(), Default::default());
        let mut merges_by_text = FxHashMap::default();
        for (rank, &(a, b)) in merges.iter().enumerate() {
            let rank = rank as u32;
            match (token_to_id.get(&tokens, a), token_to_id.get(&tokens, b)) {
                (Some(ia), Some(ib)) => {
                    merge_ids.entry((ia, ib)).or_insert(rank);
                }
                _ => {
                    merges_by_text
                        .entry((a.to_string(), b.to_string()))
                        .or_insert(rank);
                }
            }
        }

        let mut byte_tokens = vec![NO_ID; 256];
        for (b, slot) in byte_tokens.iter_mut().enumerate() {
            let b = b as u8;
            let found = match model {
                Model::Spm => token_to_id
                    .get(&tokens, &format!("<0x{b:02X}>"))
                    .or_else(|| {
                        if b.is_ascii() {
                            token_to_id.get(&tokens, &(b as char).to_string())
                        } else {
                            None
                        }
                    }),
                Model::Bpe(_) => token_to_id.get(&tokens, &unicode::byte_to_char(b).to_string()),
            };
            *slot = found.or(unk).unwrap_or(NO_ID);
        }

        let kind = match model {
            Model::Spm => "spm".to_string(),
            Model::Bpe(pre) => format!("bpe({})", pre.name()),
        };
        let tok = Tokenizer {
            model,
            tokens: Vocab::new(tokens)?,
            token_to_id,
            merges: merge_ids,
            merges_by_text,
            ignore_merges,
            byte_tokens,
            specials,
            bos,
            eos,
            eot,
            eom,
            unk,
            pad,
            eog,
            add_bos,
            add_eos,
            add_space_prefix,
            clean_spaces,
            chat_template,
            kind,
        };
        Ok(tok)
    }

    /// Replaces a byte-level BPE tokenizer's pre-tokenizer by the one a GGUF
    /// `tokenizer.ggml.pre` name selects (with the flags llama.cpp ties to that name:
    /// `ignore_merges`, space clean-up), for files converted with a missing or wrong name.
    pub fn with_pre(mut self, gguf_pre_name: &str) -> Result<Tokenizer> {
        let Model::Bpe(_) = self.model else {
            return Err(Error::Unsupported(
                "a pre-tokenizer for a SentencePiece tokenizer".into(),
            ));
        };
        let info = load_gguf::pre_info(gguf_pre_name)?;
        self.model = Model::Bpe(info.pre);
        self.ignore_merges = info.ignore_merges;
        self.clean_spaces = info.clean_spaces;
        self.kind = format!("bpe({})", info.pre.name());
        Ok(self)
    }

    // ---------------------------------------------------------------- encoding

    /// Tokenizes `text`. `add_special`: add BOS/EOS as the model's add flags say.
    /// `parse_special`: control tokens written in the text (`<|im_start|>`) become their ids;
    /// otherwise they are tokenized as plain text. User-defined tokens are always matched whole.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        let fragments = if text.is_empty() {
            Vec::new()
        } else {
            self.partition(text, parse_special)
        };
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        match self.model {
            Model::Spm => {
                // A dummy space goes before the first text and before text that follows a special
                // token, like SentencePiece's add_dummy_prefix at the start of every text.
                let mut prev_special = true;
                let mut buf = String::new();
                for f in &fragments {
                    match *f {
                        Fragment::Text(a, b) => {
                            buf.clear();
                            if self.add_space_prefix && prev_special {
                                buf.push('\u{2581}');
                            }
                            for c in text[a..b].chars() {
                                buf.push(if c == ' ' { '\u{2581}' } else { c });
                            }
                            spm::tokenize(self, &buf, &mut out);
                            prev_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                    }
                }
            }
            Model::Bpe(pre) => {
                for f in &fragments {
                    match *f {
                        Fragment::Text(a, b) => bpe::tokenize(self, pre, &text[a..b], &mut out),
                        Fragment::Token(id) => out.push(id),
                    }
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        out
    }

    /// Cuts special tokens out of the text (llama.cpp `tokenizer_st_partition`): for each special
    /// token, longest first, every occurrence in every still-unprocessed text fragment.
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        let bytes = text.as_bytes();
        let mut frags = vec![Fragment::Text(0, bytes.len())];
        let is_space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r');
        for &id in &self.specials {
            let t = self.tokens.tok(id);
            if !parse_special && t.attr & (attr::CONTROL | attr::UNKNOWN) != 0 {
                continue;
            }
            let pat = t.text.as_bytes();
            if pat.is_empty() || pat.len() > bytes.len() {
                continue;
            }
            let finder = memchr::memmem::Finder::new(pat);
            // Cheap exit for the common case: the token appears nowhere.
            if !frags
                .iter()
                .any(|f| matches!(*f, Fragment::Text(a, b) if finder.find(&bytes[a..b]).is_some()))
            {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                let Fragment::Text(mut a, b) = f else {
                    next.push(f);
                    continue;
                };
                while a < b {
                    let Some(m) = finder.find(&bytes[a..b]).map(|m| a + m) else {
                        next.push(Fragment::Text(a, b));
                        break;
                    };
                    let mut left_end = m;
                    if t.attr & attr::LSTRIP != 0 {
                        while left_end > a && is_space(bytes[left_end - 1]) {
                            left_end -= 1;
                        }
                    }
                    if left_end > a {
                        next.push(Fragment::Text(a, left_end));
                    }
                    next.push(Fragment::Token(id));
                    a = m + pat.len();
                    if t.attr & attr::RSTRIP != 0 {
                        while a < b && is_space(bytes[a]) {
                            a += 1;
                        }
                    }
                }
            }
            frags = next;
        }
        frags
    }

    // ---------------------------------------------------------------- decoding

    /// The bytes a token stands for. Control and unknown tokens give nothing; see
    /// [`Tokenizer::token_to_piece_special`] to render them. Out-of-range ids give nothing.
    pub fn token_to_piece(&self, id: u32) -> Vec<u8> {
        self.token_to_piece_special(id, false)
    }

    /// Like [`Tokenizer::token_to_piece`]; with `special` control tokens render as their text.
    pub fn token_to_piece_special(&self, id: u32, special: bool) -> Vec<u8> {
        let mut out = Vec::new();
        self.push_piece(id, special, &mut out);
        out
    }

    /// Appends llama.cpp's `token_to_piece(id, special)` to `out`: computed from the token's
    /// text on each call (a few byte operations; keeping every piece would hold a second copy
    /// of the vocabulary), allocating nothing once `out` has room.
    pub(crate) fn push_piece(&self, id: u32, special: bool, out: &mut Vec<u8>) {
        let Some(t) = self.tokens.get(id) else {
            return;
        };
        if !special && t.attr & (attr::UNKNOWN | attr::CONTROL) != 0 {
            return;
        }
        if t.attr & (attr::UNKNOWN | attr::CONTROL | attr::USER_DEFINED) != 0 {
            out.extend_from_slice(t.text.as_bytes());
            return;
        }
        if t.attr & attr::NORMAL != 0 {
            match self.model {
                Model::Spm => {
                    for (i, part) in t.text.split('\u{2581}').enumerate() {
                        if i > 0 {
                            out.push(b' ');
                        }
                        out.extend_from_slice(part.as_bytes());
                    }
                }
                Model::Bpe(_) => {
                    for c in t.text.chars() {
                        match unicode::char_to_byte(c) {
                            Some(b) => out.push(b),
                            None => {
                                // llama.cpp's marker for a char outside the byte alphabet.
                                let mut buf = [0u8; 4];
                                out.extend_from_slice(b"[UNK_BYTE_0x");
                                for b in c.encode_utf8(&mut buf).bytes() {
                                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                                }
                                out.extend_from_slice(t.text.as_bytes());
                                out.push(b']');
                            }
                        }
                    }
                }
            }
            return;
        }
        if t.attr & attr::BYTE != 0 {
            // "<0xNN>"
            let hex = t.text.get(3..5).unwrap_or("");
            out.push(u8::from_str_radix(hex, 16).unwrap_or(0));
        }
    }

    /// Text of a token sequence, as llama.cpp's `llama_detokenize(remove_special = false,
    /// unparse_special = false)`: control tokens render as nothing, the dummy-prefix space of an
    /// SPM sequence's first token is dropped, and BPE vocabularies whose tokenizer cleans up
    /// spaces (" ," -> ",") do so. Invalid UTF-8 is replaced (lossy); out-of-range ids give nothing.
    pub fn decode(&self, ids: &[u32]) -> String {
        String::from_utf8_lossy(&self.detokenize(ids, false, false)).into_owned()
    }

    /// llama.cpp's `llama_detokenize`. `remove_special`: drop a leading BOS / trailing EOS the
    /// model would add; `unparse_special`: render control tokens as their text.
    pub fn detokenize(&self, ids: &[u32], remove_special: bool, unparse_special: bool) -> Vec<u8> {
        let mut ids = ids;
        let mut remove_space = self.add_space_prefix;
        if remove_special && self.add_bos && !ids.is_empty() && Some(ids[0]) == self.bos {
            remove_space = false;
            ids = &ids[1..];
        }
        if remove_special && self.add_eos && !ids.is_empty() && Some(ids[ids.len() - 1]) == self.eos
        {
            ids = &ids[..ids.len() - 1];
        }
        let mut text = Vec::new();
        for &id in ids {
            let start = text.len();
            self.push_piece(id, unparse_special, &mut text);
            if remove_space && text.get(start) == Some(&b' ') {
                text.remove(start);
            }
            remove_space = false;
        }
        if self.clean_spaces {
            clean_up_spaces(&mut text);
        }
        text
    }

    /// Where `other`'s vocabulary differs from this one: the first id whose text differs, or
    /// else the sizes; None when the two are the same (token for token, specials included).
    pub fn vocab_diff(&self, other: &Tokenizer) -> Option<VocabDiff> {
        let (n, m) = (self.vocab_size(), other.vocab_size());
        for id in 0..n.min(m) as u32 {
            let (a, b) = (
                self.token_to_piece_special(id, true),
                other.token_to_piece_special(id, true),
            );
            if a != b {
                let text = |v: Vec<u8>| String::from_utf8_lossy(&v).into_owned();
                return Some(VocabDiff::Token {
                    id,
                    ours: text(a),
                    theirs: text(b),
                });
            }
        }
        (n != m).then_some(VocabDiff::Size { ours: n, theirs: m })
    }

    // ---------------------------------------------------------------- accessors

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }
    /// The raw vocabulary string of a token ("" for an out-of-range id).
    pub fn token_text(&self, id: u32) -> &str {
        self.tokens.get(id).map(|t| t.text).unwrap_or("")
    }
    /// The id whose vocabulary string is exactly `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(&self.tokens, text)
    }
    pub(crate) fn byte_token(&self, b: u8) -> Option<u32> {
        let id = self.byte_tokens[b as usize];
        (id != NO_ID).then_some(id)
    }
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }
    /// End-of-turn token (`<|eot_id|>`, `<|im_end|>`, ...), from metadata or recognised by text.
    pub fn eot(&self) -> Option<u32> {
        self.eot
    }
    pub fn eom(&self) -> Option<u32> {
        self.eom
    }
    pub fn unk(&self) -> Option<u32> {
        self.unk
    }
    pub fn pad(&self) -> Option<u32> {
        self.pad
    }
    /// Does this token end generation (EOS, EOT, EOM and the end-of-turn texts llama.cpp knows)?
    /// Adds end-of-generation ids from outside the vocabulary files (a Hugging Face
    /// generation_config.json lists e.g. LLaMA 3.1's `<|eom_id|>` and `<|eot_id|>` there).
    /// Ids outside the vocabulary are ignored.
    pub fn add_eog(&mut self, id: u32) {
        if (id as usize) < self.vocab_size() {
            self.eog.insert(id);
        }
    }
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }
    /// All end-of-generation ids, ascending.
    pub fn eog_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.eog.iter().copied()
    }
    /// Is this a control (or unknown) token, which renders as nothing by default?
    pub fn is_control(&self, id: u32) -> bool {
        self.tokens
            .get(id)
            .is_some_and(|t| t.attr & (attr::CONTROL | attr::UNKNOWN) != 0)
    }
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }
    pub fn add_space_prefix(&self) -> bool {
        self.add_space_prefix
    }
    /// `"spm"`, or `"bpe(<pre-tokenizer>)"` such as `"bpe(llama3)"`, `"bpe(gpt2)"`, `"bpe(smollm)"`.
    pub fn kind(&self) -> &str {
        &self.kind
    }
    pub fn pre_tokenizer(&self) -> Option<PreTokenizer> {
        match self.model {
            Model::Spm => None,
            Model::Bpe(p) => Some(p),
        }
    }
    /// Sets the chat template (transformers >= 4.43 may save it as chat_template.jinja beside
    /// tokenizer_config.json instead of inside it).
    pub fn set_chat_template(&mut self, template: String) {
        self.chat_template = Some(template);
    }
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }
    /// BOS token text for chat templates ("" when the model has none).
    pub fn bos_text(&self) -> &str {
        self.bos.map_or("", |id| self.token_text(id))
    }
    /// EOS token text for chat templates ("" when the model has none).
    pub fn eos_text(&self) -> &str {
        self.eos.map_or("", |id| self.token_text(id))
    }
}

/// llama.cpp's `clean_spaces` passes over detokenized bytes: drop the space in " ?", " !", " .",
/// " ,"; in " ' " drop both spaces; and before "'s", "'m", "'re", "'ve".
fn clean_up_spaces(text: &mut Vec<u8>) {
    // Pass 1: space before ?!.,
    let mut out = Vec::with_capacity(text.len());
    for (i, &x) in text.iter().enumerate() {
        if i > 0 && text[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            out.pop();
        }
        out.push(x);
    }
    // Pass 2: " ' " -> "'". Written over the same buffer as llama.cpp does, so a removed space
    // is seen as '\0' by the next comparison.
    let t = &mut out;
    let n = t.len();
    let mut w = if n > 0 { 1 } else { 0 };
    let mut i = 1;
    while i < n {
        let x = t[i];
        if x == b'\'' && i + 1 < n && t[i - 1] == b' ' && t[i + 1] == b' ' {
            w -= 1;
            i += 1;
            t[i] = 0;
            t[w] = x;
            w += 1;
            i += 1;
            continue;
        }
        t[w] = x;
        w += 1;
        i += 1;
    }
    t.truncate(w);
    // Pass 3: " 's", " 'm", " 're", " 've" lose the space.
    let src = std::mem::take(t);
    let n = src.len();
    let mut res = Vec::with_capacity(n);
    for i in 0..n {
        let x = src[i];
        if i > 0 && src[i - 1] == b' ' && x == b'\'' && i + 1 < n {
            let x1 = src[i + 1];
            let drop = matches!(x1, b's' | b'm')
                || (i + 2 < n && matches!((x1, src[i + 2]), (b'r', b'e') | (b'v', b'e')));
            if drop {
                res.pop();
            }
        }
        res.push(x);
    }
    *text = res;
}
