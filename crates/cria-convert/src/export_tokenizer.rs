//! The tokenizer files of an exported folder, from a GGUF vocabulary (`tokenizer.ggml.*`):
//! `tokenizer.json` (what `tokenizers` / `PreTrainedTokenizerFast` run), `tokenizer_config.json`
//! and `special_tokens_map.json`.
//!
//! - `gpt2` (LLaMA 3, SmolLM2, ...): a byte-level BPE with the vocabulary and merges as they are,
//!   the pre-tokenizer the original tokenizer.json of that family has (`tokenizer.ggml.pre`:
//!   LLaMA 3's Split regex + ByteLevel, SmolLM's Digits + ByteLevel, ...), `ignore_merges` where
//!   llama.cpp ignores them (LLaMA 3).
//! - `llama` (SentencePiece: LLaMA 2, TinyLlama, Mistral): BPE with byte fallback as HF's
//!   `LlamaConverter` writes it: spaces replaced by U+2581 (and one prepended when the model adds
//!   a dummy prefix), merges derived from the scores as transformers' `generate_merges` derives
//!   them ([`spm_merges`]).
//!
//! Control and user-defined tokens become `added_tokens` (special = control); BOS/EOS are added
//! by a `TemplateProcessing` post-processor when `add_bos_token` / `add_eos_token` say so.

use crate::export::Meta;
use cria_core::gguf::Array;
use cria_core::{Error, Result};
use serde_json::{json, Map, Value as Json};
use std::collections::HashMap;

const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const SPACE: &str = "\u{2581}";

// GGUF token types.
const T_UNKNOWN: i64 = 2;
const T_CONTROL: i64 = 3;
const T_USER_DEFINED: i64 = 4;

/// The tokenizer files to write, (file name, content).
pub struct TokenizerFiles {
    pub files: Vec<(String, Json)>,
    /// What the files cannot say as the GGUF does (printed by the CLI).
    pub warnings: Vec<String>,
}

fn byte_level(add_prefix_space: bool, trim_offsets: bool, use_regex: bool) -> Json {
    json!({"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": trim_offsets, "use_regex": use_regex})
}

fn split(regex: &str) -> Json {
    json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false})
}

/// The pre-tokenizer of a byte-level vocabulary named `pre`, and whether llama.cpp ignores merges
/// for it (a whole word in the vocabulary is taken as it is).
fn gpt2_pre(pre: &str) -> Result<(Json, bool)> {
    let seq = |a: Json, b: Json| json!({"type": "Sequence", "pretokenizers": [a, b]});
    Ok(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" => (
            seq(split(LLAMA3_REGEX), byte_level(false, true, false)),
            true,
        ),
        "dbrx" | "smaug-bpe" => (
            seq(split(LLAMA3_REGEX), byte_level(false, true, false)),
            false,
        ),
        "qwen2" | "deepseek-r1-qwen" => (
            seq(split(QWEN2_REGEX), byte_level(false, true, false)),
            false,
        ),
        "smollm" | "starcoder" | "refact" | "command-r" => (
            seq(
                json!({"type": "Digits", "individual_digits": true}),
                byte_level(false, true, true),
            ),
            false,
        ),
        "gpt-2" | "phi-2" | "mpt" | "olmo" => (byte_level(false, true, true), false),
        other => {
            return Err(Error::Unsupported(format!(
                "exporting a tokenizer with pre-tokenizer '{other}' (tokenizer.ggml.pre)"
            )))
        }
    })
}

/// transformers' `generate_merges(vocab, vocab_scores)`: for each piece (in id order), every
/// split into two pieces of the vocabulary (ordered by their ids), then all of them sorted by
/// (score, length of the left part, length of the right part), highest first, ties kept in order.
pub fn spm_merges(tokens: &[&str], scores: &[f32]) -> Vec<(String, String)> {
    let mut id: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        id.entry(t).or_insert(i);
    }
    // Python builds dicts from the lists, so a repeated piece keeps its last score, first place.
    let mut score: HashMap<&str, f32> = HashMap::with_capacity(tokens.len());
    for (t, &s) in tokens.iter().zip(scores) {
        score.insert(t, s);
    }
    let mut merges: Vec<(&str, &str, f32, usize, usize)> = Vec::new();
    for (i, piece) in tokens.iter().enumerate() {
        if id.get(piece) != Some(&i) {
            continue;
        }
        let s = score[piece];
        let mut local: Vec<(&str, &str, f32, usize, usize)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| {
                let (l, r) = piece.split_at(at);
                (id.contains_key(l) && id.contains_key(r))
                    .then(|| (l, r, s, l.chars().count(), r.chars().count()))
            })
            .collect();
        local.sort_by_key(|m| (id[m.0], id[m.1]));
        merges.extend(local);
    }
    merges.sort_by(|a, b| {
        (b.2, b.3, b.4)
            .partial_cmp(&(a.2, a.3, a.4))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    merges
        .into_iter()
        .map(|(l, r, ..)| (l.to_string(), r.to_string()))
        .collect()
}

fn added_token(id: usize, text: &str, special: bool) -> Json {
    json!({"id": id, "content": text, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": special})
}

/// TemplateProcessing adding BOS / EOS around one sequence (and a pair).
fn template(bos: Option<(&str, usize)>, eos: Option<(&str, usize)>) -> Json {
    let mut single = Vec::new();
    let mut pair = Vec::new();
    let mut specials = Map::new();
    let tok = |t: &str, type_id: u32| json!({"SpecialToken": {"id": t, "type_id": type_id}});
    let seq = |s: &str, type_id: u32| json!({"Sequence": {"id": s, "type_id": type_id}});
    for (s, type_id) in [("A", 0), ("B", 1)] {
        if let Some((t, _)) = bos {
            pair.push(tok(t, type_id));
            if s == "A" {
                single.push(tok(t, 0));
            }
        }
        pair.push(seq(s, type_id));
        if s == "A" {
            single.push(seq(s, 0));
        }
        if let Some((t, _)) = eos {
            pair.push(tok(t, type_id));
            if s == "A" {
                single.push(tok(t, 0));
            }
        }
    }
    for (t, id) in bos.into_iter().chain(eos) {
        specials.insert(t.into(), json!({"id": t, "ids": [id], "tokens": [t]}));
    }
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials})
}

/// The tokenizer files of a GGUF vocabulary.
pub fn build(meta: &Meta) -> Result<TokenizerFiles> {
    let model = meta.str("tokenizer.ggml.model").ok_or_else(|| {
        Error::msg("no tokenizer.ggml.model: the model has no tokenizer to export")
    })?;
    let tokens: Vec<&str> = match meta.array("tokenizer.ggml.tokens") {
        Some(Array::String(s)) => s.iter().collect(),
        _ => {
            return Err(Error::msg(
                "tokenizer.ggml.tokens is missing or not strings",
            ))
        }
    };
    let n = tokens.len();
    let types: Vec<i64> = match meta.array("tokenizer.ggml.token_type") {
        None => vec![1; n],
        Some(a) => a
            .to_i64()
            .filter(|t| t.len() == n)
            .ok_or_else(|| Error::msg("tokenizer.ggml.token_type is not one integer per token"))?,
    };
    let spm = match model {
        "llama" => true,
        "gpt2" => false,
        other => {
            return Err(Error::Unsupported(format!(
                "exporting tokenizer model '{other}' (cria exports 'llama' and 'gpt2')"
            )))
        }
    };
    let pre_name = meta.str("tokenizer.ggml.pre").unwrap_or("default");
    let id_key = |k: &str| -> Result<Option<usize>> {
        let v = meta.u64(&format!("tokenizer.ggml.{k}"))?;
        match v {
            Some(i) if i as usize >= n => Err(Error::msg(format!(
                "tokenizer.ggml.{k} = {i} is outside the vocabulary of {n}"
            ))),
            v => Ok(v.map(|i| i as usize)),
        }
    };
    let (def_bos, def_eos, def_unk) = if spm {
        (Some(1), Some(2), Some(0))
    } else {
        (None, None, None)
    };
    let bos = id_key("bos_token_id")?.or(def_bos.filter(|&i| i < n));
    let eos = id_key("eos_token_id")?.or(def_eos.filter(|&i| i < n));
    let unk = id_key("unknown_token_id")?.or(def_unk.filter(|&i| i < n));
    let pad = id_key("padding_token_id")?;
    let (pre_tokenizer, ignore_merges) = if spm {
        (Json::Null, false)
    } else {
        gpt2_pre(pre_name)?
    };
    let add_bos = meta
        .bool("tokenizer.ggml.add_bos_token")
        .unwrap_or(spm || ignore_merges);
    let add_eos = meta.bool("tokenizer.ggml.add_eos_token").unwrap_or(false);
    let add_prefix = meta.bool("tokenizer.ggml.add_space_prefix").unwrap_or(spm);

    let is_added = |i: usize| matches!(types[i], T_CONTROL | T_USER_DEFINED | T_UNKNOWN);
    let added: Vec<Json> = (0..n)
        .filter(|&i| is_added(i))
        .map(|i| added_token(i, tokens[i], types[i] != T_USER_DEFINED))
        .collect();
    let mut vocab = Map::with_capacity(n);
    let mut duplicates = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if vocab.contains_key(*t) {
            duplicates.push(i);
        }
        // Every token, added ones included: `tokenizers` gives an added token that is not in
        // the model's vocabulary a new id after it, ignoring the id written (SmolLM2's control
        // tokens are ids 0-16). No merge leads to an added token, so BPE never produces one.
        if !vocab.contains_key(*t) {
            vocab.insert(t.to_string(), json!(i));
        }
    }
    let merges: Vec<Json> = if spm {
        let scores = meta
            .array("tokenizer.ggml.scores")
            .and_then(Array::to_f32)
            .filter(|s| s.len() == n)
            .ok_or_else(|| Error::msg("tokenizer.ggml.scores is missing or not one per token"))?;
        spm_merges(&tokens, &scores)
            .into_iter()
            .map(|(l, r)| json!([l, r]))
            .collect()
    } else {
        match meta.array("tokenizer.ggml.merges") {
            Some(Array::String(m)) => m
                .iter()
                .map(|s| {
                    s.split_once(' ')
                        .map(|(l, r)| json!([l, r]))
                        .ok_or_else(|| Error::msg(format!("merge {s:?} is not \"a b\"")))
                })
                .collect::<Result<_>>()?,
            _ => return Err(Error::msg("tokenizer.ggml.merges is missing")),
        }
    };
    let text = |i: Option<usize>| i.map(|i| tokens[i]);
    let bos_t = bos.map(|i| (tokens[i], i)).filter(|_| add_bos);
    let eos_t = eos.map(|i| (tokens[i], i)).filter(|_| add_eos);
    let template = (bos_t.is_some() || eos_t.is_some()).then(|| template(bos_t, eos_t));

    let (normalizer, post_processor, decoder, bpe) = if spm {
        let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": SPACE});
        let normalizer = if add_prefix {
            json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": SPACE}, replace]})
        } else {
            replace
        };
        let mut decoders = vec![
            json!({"type": "Replace", "pattern": {"String": SPACE}, "content": " "}),
            json!({"type": "ByteFallback"}),
            json!({"type": "Fuse"}),
        ];
        if add_prefix {
            decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
        }
        let bpe = json!({"type": "BPE", "dropout": null, "unk_token": text(unk), "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab, "merges": merges});
        (
            normalizer,
            template.unwrap_or(Json::Null),
            json!({"type": "Sequence", "decoders": decoders}),
            bpe,
        )
    } else {
        let bl = byte_level(true, false, true);
        let post = match template {
            Some(t) => json!({"type": "Sequence", "processors": [bl, t]}),
            None => bl,
        };
        let bpe = json!({"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": ignore_merges,
            "vocab": vocab, "merges": merges});
        (Json::Null, post, byte_level(true, true, true), bpe)
    };
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": decoder,
        "model": bpe,
    });

    // tokenizer_config.json and special_tokens_map.json
    let mut decoder_map = Map::new();
    for i in (0..n).filter(|&i| is_added(i)) {
        decoder_map.insert(
            i.to_string(),
            json!({"content": tokens[i], "lstrip": false, "normalized": false, "rstrip": false,
                   "single_word": false, "special": types[i] != T_USER_DEFINED}),
        );
    }
    let mut cfg = Map::new();
    cfg.insert("add_bos_token".into(), json!(add_bos));
    cfg.insert("add_eos_token".into(), json!(add_eos));
    cfg.insert("added_tokens_decoder".into(), Json::Object(decoder_map));
    let mut map = Map::new();
    for (key, id) in [
        ("bos_token", bos),
        ("eos_token", eos),
        ("unk_token", unk),
        ("pad_token", pad),
    ] {
        if let Some(t) = text(id) {
            cfg.insert(key.into(), json!(t));
            map.insert(
                key.into(),
                json!({"content": t, "lstrip": false, "normalized": false, "rstrip": false, "single_word": false}),
            );
        }
    }
    if let Some(t) = meta.str("tokenizer.chat_template") {
        cfg.insert("chat_template".into(), json!(t));
    }
    cfg.insert("clean_up_tokenization_spaces".into(), json!(false));
    if spm {
        cfg.insert("legacy".into(), json!(true));
    }
    let arch = meta.str("general.architecture").unwrap_or("llama");
    if let Some(ctx) = meta.u64(&format!("{arch}.context_length"))? {
        cfg.insert("model_max_length".into(), json!(ctx));
    }
    cfg.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    let mut warnings = Vec::new();
    if let Some(&first) = duplicates.first() {
        warnings.push(format!(
            "{} tokens repeat the text of an earlier token (first: id {first}, {:?}); \
             tokenizer.json maps each text to one id, so transformers never produces them",
            duplicates.len(),
            tokens[first]
        ));
    }
    Ok(TokenizerFiles {
        warnings,
        files: vec![
            ("special_tokens_map.json".into(), Json::Object(map)),
            ("tokenizer.json".into(), tokenizer),
            ("tokenizer_config.json".into(), Json::Object(cfg)),
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cria_core::gguf::Value;

    fn meta(tokens: &[&str], types: &[i32]) -> Vec<(String, Value)> {
        let strs = |v: &[&str]| Value::Array(Array::String(v.iter().copied().collect()));
        vec![
            ("general.architecture".into(), Value::String("llama".into())),
            ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
            (
                "tokenizer.ggml.pre".into(),
                Value::String("llama-bpe".into()),
            ),
            ("tokenizer.ggml.tokens".into(), strs(tokens)),
            (
                "tokenizer.ggml.token_type".into(),
                Value::Array(Array::I32(types.to_vec())),
            ),
            ("tokenizer.ggml.merges".into(), strs(&["a b"])),
            ("tokenizer.ggml.bos_token_id".into(), Value::U32(0)),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(1)),
        ]
    }

    #[test]
    fn byte_level_vocabulary_keeps_every_id() {
        // Control tokens first (as SmolLM2's), a user-defined one, a repeated text.
        let m = meta(
            &["<s>", "</s>", "a", "b", "ab", "<u>", "b"],
            &[3, 3, 1, 1, 1, 4, 1],
        );
        let t = build(&Meta(&m)).unwrap();
        let file = |name: &str| &t.files.iter().find(|(n, _)| n == name).unwrap().1;
        let j = file("tokenizer.json");
        let vocab = j["model"]["vocab"].as_object().unwrap();
        assert_eq!(vocab["<s>"], 0);
        assert_eq!(vocab["b"], 3);
        assert_eq!(vocab.len(), 6);
        assert_eq!(j["model"]["ignore_merges"], true);
        assert_eq!(j["model"]["merges"], json!([["a", "b"]]));
        let added: Vec<(u64, bool)> = j["added_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| (a["id"].as_u64().unwrap(), a["special"].as_bool().unwrap()))
            .collect();
        assert_eq!(added, [(0, true), (1, true), (5, false)]);
        // LLaMA 3 adds BOS: ByteLevel then the template.
        let post = &j["post_processor"]["processors"];
        assert_eq!(post[1]["single"][0]["SpecialToken"]["id"], "<s>");
        assert_eq!(
            j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"],
            LLAMA3_REGEX
        );
        let cfg = file("tokenizer_config.json");
        assert_eq!(
            (cfg["bos_token"].as_str(), cfg["add_bos_token"].as_bool()),
            (Some("<s>"), Some(true))
        );
        assert_eq!(cfg["added_tokens_decoder"]["5"]["special"], false);
        assert_eq!(t.warnings.len(), 1);
        assert!(t.warnings[0].contains("id 6"), "{}", t.warnings[0]);
    }

    #[test]
    fn unknown_families_are_refused() {
        let mut m = meta(&["a", "b"], &[1, 1]);
        m[2].1 = Value::String("gemma4".into());
        let err = build(&Meta(&m)).err().unwrap().to_string();
        assert!(err.contains("pre-tokenizer 'gemma4'"), "{err}");
        m[1].1 = Value::String("t5".into());
        let err = build(&Meta(&m)).err().unwrap().to_string();
        assert!(err.contains("tokenizer model 't5'"), "{err}");
    }

    #[test]
    fn merges_follow_transformers_order() {
        // pieces: a b c ab bc abc; scores rank abc above ab above bc.
        let tokens = ["a", "b", "c", "ab", "bc", "abc"];
        let scores = [0.0, 0.0, 0.0, -2.0, -3.0, -1.0];
        let m = spm_merges(&tokens, &scores);
        let m: Vec<(&str, &str)> = m.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        // abc: ("ab","c") has the longer left part, so it comes before ("a","bc").
        assert_eq!(m, [("ab", "c"), ("a", "bc"), ("a", "b"), ("b", "c")]);
    }
}
