//! Tokenizer from a Hugging Face `tokenizer.json` (+ `tokenizer_config.json`).
//!
//! Only the BPE model is read, in the two shapes LLaMA-family checkpoints use:
//! - byte-level (LLaMA 3, GPT-2, SmolLM): a `ByteLevel` pre-tokenizer, alone or after a `Split`
//!   regex / `Digits`; the regex is recognised by its exact text and mapped to the same
//!   [`PreTokenizer`] the GGUF path uses, so both run one encoder;
//! - SentencePiece-style (LLaMA 2, Mistral, TinyLlama): `byte_fallback`, spaces replaced by U+2581
//!   (a `Metaspace` pre-tokenizer or `Replace`/`Prepend` normalizers). tokenizer.json keeps merges
//!   but no scores, so each token gets the score "earlier merge = higher"; SentencePiece's
//!   converter orders merges by score, so this reproduces the merge order of the GGUF scores.
//!
//! Anything else is an `Unsupported` error that names what was found.

use crate::pretok::PreTokenizer;
use crate::{attr, Model, Spec, TokenData, Tokenizer};
use cria_core::{Error, Result};
use rustc_hash::FxHashMap;
use serde_json::Value;
use std::path::Path;

const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

fn read_json(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Format {
        path: path.to_path_buf(),
        format: "json",
        msg: e.to_string(),
    })
}

fn ty(v: &Value) -> &str {
    v.get("type").and_then(Value::as_str).unwrap_or("")
}

/// A list of components: a `Sequence` (under `key`) flattened, a single one as a list of one.
fn components<'a>(v: &'a Value, key: &str) -> Vec<&'a Value> {
    if v.is_null() {
        return Vec::new();
    }
    if ty(v) == "Sequence" {
        return v
            .get(key)
            .and_then(Value::as_array)
            .map(|a| a.iter().flat_map(|c| components(c, key)).collect())
            .unwrap_or_default();
    }
    vec![v]
}

/// Special token text in tokenizer_config.json: a string, or an AddedToken object.
fn token_text(v: Option<&Value>) -> Option<&str> {
    match v? {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("content").and_then(Value::as_str),
        _ => None,
    }
}

/// The pre-tokenizer of a byte-level tokenizer.json, or an error describing what is there.
fn byte_level_pre(pre: &Value) -> Result<PreTokenizer> {
    let parts = components(pre, "pretokenizers");
    let describe = || serde_json::to_string(pre).unwrap_or_default();
    let is_byte_level = |v: &Value, use_regex: bool| {
        ty(v) == "ByteLevel"
            && v.get("use_regex").and_then(Value::as_bool).unwrap_or(true) == use_regex
            && !v
                .get("add_prefix_space")
                .and_then(Value::as_bool)
                .unwrap_or(false)
    };
    match parts.as_slice() {
        [b] if is_byte_level(b, true) => Ok(PreTokenizer::Gpt2),
        [d, b]
            if ty(d) == "Digits"
                && d.get("individual_digits").and_then(Value::as_bool) == Some(true)
                && is_byte_level(b, true) =>
        {
            Ok(PreTokenizer::Smollm)
        }
        [s, b] if ty(s) == "Split" && is_byte_level(b, false) => {
            let regex = s
                .get("pattern")
                .and_then(|p| p.get("Regex"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let behavior = s.get("behavior").and_then(Value::as_str).unwrap_or("");
            if behavior != "Isolated" || s.get("invert").and_then(Value::as_bool).unwrap_or(false) {
                return Err(Error::Unsupported(format!(
                    "tokenizer.json Split pre-tokenizer with behavior {behavior:?}"
                )));
            }
            match regex {
                LLAMA3_REGEX => Ok(PreTokenizer::Llama3),
                QWEN2_REGEX => Ok(PreTokenizer::Qwen2),
                GPT2_REGEX => Ok(PreTokenizer::Gpt2),
                other => Err(Error::Unsupported(format!(
                    "tokenizer.json pre-tokenizer regex {other:?}"
                ))),
            }
        }
        _ => Err(Error::Unsupported(format!(
            "tokenizer.json pre-tokenizer {}",
            describe()
        ))),
    }
}

/// Is this a SentencePiece-style tokenizer (spaces as U+2581), and does it add a dummy prefix?
fn spm_style(j: &Value) -> Option<bool> {
    let normalizers = components(&j["normalizer"], "normalizers");
    let pres = components(&j["pre_tokenizer"], "pretokenizers");
    let replaces_space = normalizers.iter().any(|n| {
        ty(n) == "Replace"
            && n["pattern"]["String"].as_str() == Some(" ")
            && n["content"].as_str() == Some("\u{2581}")
    });
    let prepends = normalizers
        .iter()
        .any(|n| ty(n) == "Prepend" && n["prepend"].as_str() == Some("\u{2581}"));
    if replaces_space && pres.is_empty() {
        return Some(prepends);
    }
    if let [m] = pres.as_slice() {
        if ty(m) == "Metaspace" && m["replacement"].as_str().unwrap_or("\u{2581}") == "\u{2581}" {
            let prefix = match m.get("prepend_scheme").and_then(Value::as_str) {
                Some(scheme) => scheme != "never",
                None => m
                    .get("add_prefix_space")
                    .and_then(Value::as_bool)
                    .unwrap_or(true),
            };
            return Some(prefix);
        }
    }
    None
}

fn is_byte_token(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 6
        && b.starts_with(b"<0x")
        && b[5] == b'>'
        && b[3].is_ascii_hexdigit()
        && b[4].is_ascii_hexdigit()
}

pub(crate) fn load(json_path: &Path, config_path: Option<&Path>) -> Result<Tokenizer> {
    let j = read_json(json_path)?;
    let bad = |msg: String| Error::Format {
        path: json_path.to_path_buf(),
        format: "tokenizer.json",
        msg,
    };
    let config = match config_path {
        Some(p) => read_json(p)?,
        None => Value::Null,
    };

    let m = &j["model"];
    if ty(m) != "BPE" && !(m.get("type").is_none() && m.get("merges").is_some()) {
        return Err(Error::Unsupported(format!(
            "tokenizer.json model type {:?} (cria reads BPE)",
            ty(m)
        )));
    }
    let byte_fallback = m["byte_fallback"].as_bool().unwrap_or(false);
    let spm = if byte_fallback { spm_style(&j) } else { None };
    let model = match spm {
        Some(_) => Model::Spm,
        None => Model::Bpe(byte_level_pre(&j["pre_tokenizer"])?),
    };
    let add_space_prefix = spm.unwrap_or(false);

    // Vocabulary: model.vocab plus added_tokens, by id; holes become unused placeholders.
    let vocab = m["vocab"]
        .as_object()
        .ok_or_else(|| bad("model.vocab is not an object".into()))?;
    let added = j["added_tokens"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let id_of = |v: &Value| {
        v.as_u64()
            .filter(|&id| id < u32::MAX as u64 / 2)
            .map(|id| id as usize)
    };
    let mut n = 0usize;
    for (text, id) in vocab {
        let id = id_of(id).ok_or_else(|| bad(format!("bad id for token {text:?}")))?;
        n = n.max(id + 1);
    }
    for t in added {
        let id = id_of(&t["id"]).ok_or_else(|| bad("added token without a valid id".into()))?;
        n = n.max(id + 1);
    }
    if n > 16 << 20 {
        return Err(bad(format!("vocabulary of {n} ids is implausibly large")));
    }
    let mut slots: Vec<Option<TokenData>> = vec![None; n];
    for (text, id) in vocab {
        let attr = if byte_fallback && is_byte_token(text) {
            attr::BYTE
        } else {
            attr::NORMAL
        };
        slots[id_of(id).unwrap_or(0)] = Some(TokenData {
            text: text.clone(),
            score: 0.0,
            attr,
            mergeable: false,
        });
    }
    let unk_text = token_text(config.get("unk_token")).or_else(|| m["unk_token"].as_str());
    for t in added {
        let id = id_of(&t["id"]).unwrap_or(0);
        let text = t["content"]
            .as_str()
            .ok_or_else(|| bad(format!("added token {id} has no content")))?
            .to_string();
        let mut a = if t["special"].as_bool().unwrap_or(false) {
            attr::CONTROL
        } else {
            attr::USER_DEFINED
        };
        if Some(text.as_str()) == unk_text {
            a = attr::UNKNOWN;
        }
        if t["lstrip"].as_bool().unwrap_or(false) {
            a |= attr::LSTRIP;
        }
        if t["rstrip"].as_bool().unwrap_or(false) {
            a |= attr::RSTRIP;
        }
        slots[id] = Some(TokenData {
            text,
            score: 0.0,
            attr: a,
            mergeable: false,
        });
    }
    let mut tokens: Vec<TokenData> = slots
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            t.unwrap_or_else(|| TokenData {
                text: format!("[PAD{i}]"),
                score: 0.0,
                attr: attr::UNUSED,
                mergeable: false,
            })
        })
        .collect();

    let mut merges = Vec::new();
    for (i, mv) in m["merges"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .enumerate()
    {
        let pair = match mv {
            Value::String(s) => s.split_once(' '),
            Value::Array(a) if a.len() == 2 => a[0].as_str().zip(a[1].as_str()),
            _ => None,
        };
        merges.push(pair.ok_or_else(|| bad(format!("merge {i} is neither \"a b\" nor [a, b]")))?);
    }

    if model == Model::Spm {
        // Score = -(rank of the first merge that makes the token): earlier merges win.
        let index: FxHashMap<&str, usize> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.text.as_str(), i))
            .collect();
        let mut score: Vec<Option<f32>> = vec![None; tokens.len()];
        let mut joined = String::new();
        for (rank, (a, b)) in merges.iter().enumerate() {
            joined.clear();
            joined.push_str(a);
            joined.push_str(b);
            if let Some(&id) = index.get(joined.as_str()) {
                score[id].get_or_insert(-(rank as f32));
            }
        }
        for (t, s) in tokens.iter_mut().zip(score) {
            if let Some(s) = s {
                t.score = s;
                t.mergeable = true;
            }
        }
        merges.clear();
    }

    let find = |text: Option<&str>| {
        text.and_then(|t| tokens.iter().rposition(|d| d.text == t))
            .map(|i| i as u32)
    };
    // BOS/EOS added by the post-processor template, if there is one.
    let template = components(&j["post_processor"], "processors")
        .into_iter()
        .find(|p| ty(p) == "TemplateProcessing");
    let (tpl_bos, tpl_eos) = match template.and_then(|t| t["single"].as_array()) {
        Some(single) => {
            fn special(v: Option<&Value>) -> Option<&str> {
                v.and_then(|v| v.get("SpecialToken"))
                    .and_then(|s| s["id"].as_str())
            }
            (Some(special(single.first())), Some(special(single.last())))
        }
        None => (None, None),
    };

    let default_bos = if model == Model::Spm {
        Some("<s>")
    } else {
        tpl_bos.flatten()
    };
    let default_eos = if model == Model::Spm {
        Some("</s>")
    } else {
        tpl_eos.flatten()
    };
    let bos = find(token_text(config.get("bos_token")).or(default_bos));
    let eos = find(token_text(config.get("eos_token")).or(default_eos));
    let unk = find(unk_text);
    let pad = find(token_text(config.get("pad_token")));

    let type_default_bos = matches!(model, Model::Spm | Model::Bpe(PreTokenizer::Llama3));
    let add_bos = config["add_bos_token"].as_bool().unwrap_or(match tpl_bos {
        Some(t) => t.is_some(),
        None => type_default_bos,
    });
    let add_eos = config["add_eos_token"]
        .as_bool()
        .unwrap_or(matches!(tpl_eos, Some(Some(_))));
    if add_bos && bos.is_none() {
        return Err(Error::msg(format!(
            "{}: the tokenizer adds a BOS token but names none that is in the vocabulary",
            json_path.display()
        )));
    }
    if add_eos && eos.is_none() {
        return Err(Error::msg(format!(
            "{}: the tokenizer adds an EOS token but names none that is in the vocabulary",
            json_path.display()
        )));
    }

    // chat_template: a string, or a list of {name, template}; newer transformers write it to
    // chat_template.jinja beside the config instead.
    let chat_template = match &config["chat_template"] {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => {
            let pick = list
                .iter()
                .find(|t| t["name"].as_str() == Some("default"))
                .or(list.first());
            pick.and_then(|t| t["template"].as_str())
                .map(str::to_string)
        }
        _ => {
            let dir = config_path.or(Some(json_path)).and_then(Path::parent);
            dir.and_then(|d| std::fs::read_to_string(d.join("chat_template.jinja")).ok())
        }
    };

    // Flags that llama.cpp ties to the pre-tokenizer; same values as the GGUF path.
    let (clean_spaces, ignore_default) = match model {
        Model::Spm => (false, false),
        Model::Bpe(PreTokenizer::Llama3 | PreTokenizer::Gpt2 | PreTokenizer::Default) => {
            (true, false)
        }
        Model::Bpe(PreTokenizer::Smollm | PreTokenizer::Qwen2) => (false, false),
    };
    let ignore_merges = m["ignore_merges"].as_bool().unwrap_or(ignore_default);

    Tokenizer::build(Spec {
        model,
        tokens,
        merges,
        bos,
        eos,
        eot: None,
        eom: None,
        unk,
        pad,
        fim: [None; 6],
        add_bos,
        add_eos,
        add_space_prefix,
        clean_spaces,
        ignore_merges,
        chat_template,
        model_name: String::new(),
    })
}
