//! Tokenizer from GGUF `tokenizer.*` metadata, with llama.cpp's defaults (llama-vocab.cpp
//! `llama_vocab::impl::load`) where a key is absent.

use crate::pretok::PreTokenizer;
use crate::{attr, Model, Spec, TokenData, Tokenizer};
use cria_core::gguf::{Array, GgufFile, StrArray};
use cria_core::{Error, Result};

/// Flags that depend on the pre-tokenizer name (llama.cpp sets them next to the pre type).
pub(crate) struct PreInfo {
    pub pre: PreTokenizer,
    pub ignore_merges: bool,
    pub clean_spaces: bool,
    pub add_bos: bool,
}

/// Maps GGUF `tokenizer.ggml.pre` to a pre-tokenizer family. Only names whose llama.cpp
/// regexes are one of the families implemented here are accepted.
pub(crate) fn pre_info(name: &str) -> Result<PreInfo> {
    let info = |pre, ignore_merges, clean_spaces, add_bos| PreInfo {
        pre,
        ignore_merges,
        clean_spaces,
        add_bos,
    };
    Ok(match name {
        "default" => info(PreTokenizer::Default, false, true, false),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" => info(PreTokenizer::Llama3, true, true, true),
        "dbrx" | "smaug-bpe" => info(PreTokenizer::Llama3, false, true, false),
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de"
        | "a.x-4.0" | "mellum" | "modern-bert" | "mpt" | "olmo" | "jais" | "exaone4" => {
            info(PreTokenizer::Gpt2, false, true, false)
        }
        "smollm" | "command-r" => info(PreTokenizer::Smollm, false, false, false),
        "starcoder" | "refact" | "codeshell" | "exaone" | "minerva" | "mellum2" => {
            info(PreTokenizer::Smollm, false, true, false)
        }
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" => {
            info(PreTokenizer::Qwen2, false, false, false)
        }
        "stablelm2" => info(PreTokenizer::Qwen2, false, true, false),
        other => {
            return Err(Error::Unsupported(format!(
                "tokenizer pre-tokenizer '{other}' (tokenizer.ggml.pre)"
            )))
        }
    })
}

fn strings<'a>(g: &'a GgufFile, key: &str) -> Result<Option<&'a StrArray>> {
    match g.get_array(key) {
        None if g.get(key).is_none() => Ok(None),
        Some(Array::String(v)) => Ok(Some(v)),
        _ => Err(Error::msg(format!(
            "{}: {key} is not an array of strings",
            g.path.display()
        ))),
    }
}

pub(crate) fn load(g: &GgufFile) -> Result<Tokenizer> {
    let path = g.path.display();
    let model_name = g.get_str("tokenizer.ggml.model").ok_or_else(|| {
        Error::msg(format!(
            "{path}: no tokenizer.ggml.model (no tokenizer in this file)"
        ))
    })?;
    let pre_name = g.get_str("tokenizer.ggml.pre").unwrap_or("default");

    let texts = strings(g, "tokenizer.ggml.tokens")?
        .ok_or_else(|| Error::msg(format!("{path}: no tokenizer.ggml.tokens")))?;
    let n = texts.len();

    // llama.cpp's per-model-type defaults.
    let (model, mut bos, mut eos, mut unk, mut add_space_prefix, mut add_bos, clean_spaces, ignore_merges) = match model_name {
        "llama" => (Model::Spm, Some(1), Some(2), Some(0), true, true, false, false),
        "gpt2" => {
            let info = pre_info(pre_name)?;
            (Model::Bpe(info.pre), Some(11), Some(11), None, false, info.add_bos, info.clean_spaces, info.ignore_merges)
        }
        other => return Err(Error::Unsupported(format!("tokenizer model '{other}' (tokenizer.ggml.model); cria supports 'llama' (SentencePiece) and 'gpt2' (byte-level BPE)"))),
    };
    let mut add_eos = false;
    if let Some(v) = g.get_bool("tokenizer.ggml.add_space_prefix") {
        add_space_prefix = v;
    }

    let scores = match g.get_array("tokenizer.ggml.scores") {
        None => None,
        Some(a @ (Array::F32(_) | Array::F64(_) | Array::I32(_))) => {
            let s = a.to_f32().unwrap_or_default();
            if s.len() < n {
                return Err(Error::msg(format!(
                    "{path}: {} scores for {n} tokens",
                    s.len()
                )));
            }
            Some(s)
        }
        Some(_) => {
            return Err(Error::msg(format!(
                "{path}: tokenizer.ggml.scores is not an f32 or i32 array"
            )))
        }
    };
    let types = match g.get_array("tokenizer.ggml.token_type") {
        None => None,
        Some(a) => {
            let t = a.to_i64().ok_or_else(|| {
                Error::msg(format!(
                    "{path}: tokenizer.ggml.token_type is not an integer array"
                ))
            })?;
            if t.len() < n {
                return Err(Error::msg(format!(
                    "{path}: {} token types for {n} tokens",
                    t.len()
                )));
            }
            Some(t)
        }
    };

    let tokens = texts
        .iter()
        .enumerate()
        .map(|(i, text)| TokenData {
            text: text.to_string(),
            score: scores.as_ref().map_or(0.0, |s| s[i]),
            attr: match types.as_ref().map(|t| t[i]) {
                None => attr::NORMAL,
                // GGUF token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
                Some(1) => attr::NORMAL,
                Some(2) => attr::UNKNOWN,
                Some(3) => attr::CONTROL,
                Some(4) => attr::USER_DEFINED,
                Some(5) => attr::UNUSED,
                Some(6) => attr::BYTE,
                Some(_) => attr::UNDEFINED,
            },
            mergeable: true,
        })
        .collect();

    let mut merges = Vec::new();
    if let Model::Bpe(_) = model {
        let list = strings(g, "tokenizer.ggml.merges")?.ok_or_else(|| {
            Error::msg(format!(
                "{path}: byte-level BPE tokenizer without tokenizer.ggml.merges"
            ))
        })?;
        merges.reserve(list.len());
        for m in list.iter() {
            // "a b"; the first half is never empty, so the split is at the first space after byte 0.
            match m.as_bytes().iter().skip(1).position(|&b| b == b' ') {
                Some(p) => merges.push((&m[..p + 1], &m[p + 2..])),
                None => merges.push(("", "")),
            }
        }
    }

    // Special ids: defaults out of range are dropped; metadata out of range keeps the default.
    let in_range = |id: Option<u32>| id.filter(|&i| (i as usize) < n);
    let key_id = |key: &str, default: Option<u32>| -> Option<u32> {
        let default = in_range(default);
        match g.get_u64(key) {
            Some(v) if (v as usize) < n => Some(v as u32),
            _ => default,
        }
    };
    bos = key_id("tokenizer.ggml.bos_token_id", bos);
    eos = key_id("tokenizer.ggml.eos_token_id", eos);
    unk = key_id("tokenizer.ggml.unknown_token_id", unk);
    let eot = key_id("tokenizer.ggml.eot_token_id", None);
    let eom = key_id("tokenizer.ggml.eom_token_id", None);
    let pad = key_id("tokenizer.ggml.padding_token_id", None);
    // The deprecated prefix/suffix/middle keys are read after the fim_* ones, so they win.
    let fim_pre = key_id(
        "tokenizer.ggml.prefix_token_id",
        key_id("tokenizer.ggml.fim_pre_token_id", None),
    );
    let fim_suf = key_id(
        "tokenizer.ggml.suffix_token_id",
        key_id("tokenizer.ggml.fim_suf_token_id", None),
    );
    let fim_mid = key_id(
        "tokenizer.ggml.middle_token_id",
        key_id("tokenizer.ggml.fim_mid_token_id", None),
    );
    let fim = [
        fim_pre,
        fim_suf,
        fim_mid,
        key_id("tokenizer.ggml.fim_pad_token_id", None),
        key_id("tokenizer.ggml.fim_rep_token_id", None),
        key_id("tokenizer.ggml.fim_sep_token_id", None),
    ];
    if let Some(v) = g.get_bool("tokenizer.ggml.add_bos_token") {
        add_bos = v;
    }
    if let Some(v) = g.get_bool("tokenizer.ggml.add_eos_token") {
        add_eos = v;
    }
    if add_bos && bos.is_none() {
        return Err(Error::msg(format!(
            "{path}: the tokenizer adds a BOS token but has no valid bos_token_id"
        )));
    }
    if add_eos && eos.is_none() {
        return Err(Error::msg(format!(
            "{path}: the tokenizer adds an EOS token but has no valid eos_token_id"
        )));
    }

    Tokenizer::build(Spec {
        model,
        tokens,
        merges,
        bos,
        eos,
        eot,
        eom,
        unk,
        pad,
        fim,
        add_bos,
        add_eos,
        add_space_prefix,
        clean_spaces,
        ignore_merges,
        chat_template: g.get_str("tokenizer.chat_template").map(str::to_string),
        model_name: g.get_str("general.name").unwrap_or("").to_lowercase(),
    })
}
