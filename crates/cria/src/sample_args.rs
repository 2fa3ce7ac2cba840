//! The sampler options shared by `run`, `chat` (and later `serve`): clap flags -> SamplerConfig.
//!
//! Flag names are llama.cpp's. Every flag is optional: what is not given keeps
//! `SamplerConfig::default()` (llama.cpp's defaults), so the defaults live in one place. Range
//! errors come from `SamplerConfig::validate`, with the same wording `/set` gives in chat.

use anyhow::{anyhow, Result};
use clap::Args;
use cria_engine::sampler::{parse_logit_bias, random_seed, Sampler, SamplerConfig};
use cria_tokenizer::Tokenizer;

#[derive(Args, Clone, Debug, Default)]
pub struct SamplerArgs {
    /// Temperature (default 0.8; 0 = greedy).
    #[arg(
        long,
        visible_alias = "temp",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub temperature: Option<f32>,
    /// Keep the K most likely tokens (default 40; 0 = off).
    #[arg(long = "top-k", value_name = "N", allow_negative_numbers = true)]
    pub top_k: Option<usize>,
    /// Nucleus sampling (default 0.95; 1 = off).
    #[arg(long = "top-p", value_name = "N", allow_negative_numbers = true)]
    pub top_p: Option<f32>,
    /// Drop tokens below this fraction of the best one's probability (default 0.05; 0 = off).
    #[arg(long = "min-p", value_name = "N", allow_negative_numbers = true)]
    pub min_p: Option<f32>,
    /// Locally typical sampling (default 1 = off).
    #[arg(
        long = "typical",
        visible_alias = "typical-p",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub typical_p: Option<f32>,
    /// Top-n-sigma: drop logits more than N standard deviations below the best (default -1 = off).
    #[arg(
        long = "top-nsigma",
        visible_alias = "top-n-sigma",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub top_n_sigma: Option<f32>,
    /// XTC: chance per token of excluding the top choices (default 0 = off).
    #[arg(
        long = "xtc-probability",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub xtc_probability: Option<f32>,
    /// XTC: probability threshold of the choices to exclude (default 0.1; above 0.5 = off).
    #[arg(
        long = "xtc-threshold",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub xtc_threshold: Option<f32>,
    /// DRY repetition penalty multiplier (default 0 = off).
    #[arg(
        long = "dry-multiplier",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub dry_multiplier: Option<f32>,
    /// DRY base: penalty = multiplier * base^(repeat length - allowed length) (default 1.75).
    #[arg(long = "dry-base", value_name = "N", allow_negative_numbers = true)]
    pub dry_base: Option<f32>,
    /// DRY: repeats up to this length are not penalized (default 2).
    #[arg(
        long = "dry-allowed-length",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub dry_allowed_length: Option<usize>,
    /// DRY: how many recent tokens to scan (default 64; 0 = off).
    #[arg(
        long = "dry-penalty-last-n",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub dry_penalty_last_n: Option<usize>,
    /// DRY sequence breaker (repeatable; replaces the defaults '\n', ':', '"', '*'; "none" for
    /// none). Escapes such as \n are processed.
    #[arg(long = "dry-sequence-breaker", value_name = "STRING", value_parser = escaped, allow_hyphen_values = true)]
    pub dry_sequence_breaker: Vec<String>,
    /// Repetition penalty over the last --repeat-last-n tokens (default 1 = off).
    #[arg(
        long = "repeat-penalty",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub repeat_penalty: Option<f32>,
    /// Tokens the repetition penalties look back over (default 64; 0 = off).
    #[arg(
        long = "repeat-last-n",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub repeat_last_n: Option<usize>,
    /// Presence penalty (default 0 = off).
    #[arg(
        long = "presence-penalty",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub presence_penalty: Option<f32>,
    /// Frequency penalty (default 0 = off).
    #[arg(
        long = "frequency-penalty",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub frequency_penalty: Option<f32>,
    /// Mirostat: 0 = off, 1 = Mirostat, 2 = Mirostat 2.0 (replaces top-k/p, min-p, typical,
    /// penalties, DRY, XTC).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub mirostat: Option<u8>,
    /// Mirostat learning rate, eta (default 0.1).
    #[arg(long = "mirostat-lr", value_name = "N", allow_negative_numbers = true)]
    pub mirostat_lr: Option<f32>,
    /// Mirostat target entropy, tau (default 5).
    #[arg(long = "mirostat-ent", value_name = "N", allow_negative_numbers = true)]
    pub mirostat_ent: Option<f32>,
    /// Dynamic temperature range: temperature ± N by entropy (default 0 = off).
    #[arg(
        long = "dynatemp-range",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub dynatemp_range: Option<f32>,
    /// Dynamic temperature exponent (default 1).
    #[arg(long = "dynatemp-exp", value_name = "N", allow_negative_numbers = true)]
    pub dynatemp_exp: Option<f32>,
    /// Truncation samplers keep at least this many tokens (default 0).
    #[arg(long = "min-keep", value_name = "N", allow_negative_numbers = true)]
    pub min_keep: Option<usize>,
    /// Bias a token: TOKEN_ID+BIAS or TOKEN_ID-BIAS, e.g. 15043+1 or 2-inf (repeatable).
    #[arg(long = "logit-bias", value_name = "TOKEN_ID(+|-)BIAS", value_parser = parse_logit_bias, allow_hyphen_values = true)]
    pub logit_bias: Vec<(u32, f32)>,
    /// Seed of the random stages (default: a fresh one per run; the same seed and options give
    /// the same text).
    #[arg(long, allow_negative_numbers = true)]
    pub seed: Option<u64>,
    /// Stop when this text is generated; it is not printed (repeatable). Escapes such as \n are
    /// processed.
    #[arg(long = "stop", value_name = "STRING", value_parser = escaped, allow_hyphen_values = true)]
    pub stop: Vec<String>,
}

/// llama.cpp's escape processing for strings given on the command line: \n \r \t \' \" \\ and
/// \xHH (ASCII only here, so the result stays UTF-8); any other backslash is kept as written.
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let (mut i, mut run) = (0, 0); // `run`: start of the literal text not yet copied
    while i + 1 < b.len() {
        if b[i] != b'\\' {
            i += 1;
            continue;
        }
        let hex = || {
            let h = s.get(i + 2..i + 4)?;
            let v = u8::from_str_radix(h, 16).ok()?;
            (h.bytes().all(|c| c.is_ascii_hexdigit()) && v.is_ascii()).then_some(char::from(v))
        };
        let (c, len) = match b[i + 1] {
            b'n' => ('\n', 2),
            b'r' => ('\r', 2),
            b't' => ('\t', 2),
            b'\'' => ('\'', 2),
            b'"' => ('"', 2),
            b'\\' => ('\\', 2),
            b'x' => match hex() {
                Some(c) => (c, 4),
                None => {
                    i += 2;
                    continue;
                }
            },
            _ => {
                i += 1;
                continue;
            }
        };
        out.push_str(&s[run..i]);
        out.push(c);
        i += len;
        run = i;
    }
    out.push_str(&s[run..]);
    out
}

/// clap value parser: the string with escapes processed.
fn escaped(s: &str) -> Result<String, String> {
    Ok(unescape(s))
}

impl SamplerArgs {
    /// The sampler configuration the flags ask for, validated.
    pub fn config(&self) -> Result<SamplerConfig> {
        let mut c = SamplerConfig::default();
        macro_rules! take {
            ($($flag:ident => $field:ident),* $(,)?) => {
                $(if let Some(v) = self.$flag { c.$field = v; })*
            };
        }
        take!(
            temperature => temperature,
            top_k => top_k,
            top_p => top_p,
            min_p => min_p,
            typical_p => typical_p,
            top_n_sigma => top_n_sigma,
            xtc_probability => xtc_probability,
            xtc_threshold => xtc_threshold,
            dry_multiplier => dry_multiplier,
            dry_base => dry_base,
            dry_allowed_length => dry_allowed_length,
            dry_penalty_last_n => dry_penalty_last_n,
            repeat_penalty => repeat_penalty,
            repeat_last_n => repeat_last_n,
            presence_penalty => presence_penalty,
            frequency_penalty => frequency_penalty,
            mirostat => mirostat,
            mirostat_lr => mirostat_eta,
            mirostat_ent => mirostat_tau,
            dynatemp_range => dynatemp_range,
            dynatemp_exp => dynatemp_exponent,
            min_keep => min_keep,
        );
        if !self.dry_sequence_breaker.is_empty() {
            c.dry_sequence_breakers.clear();
            for b in &self.dry_sequence_breaker {
                if b != "none" {
                    c.dry_sequence_breakers.push(b.clone());
                }
            }
        }
        c.logit_bias = self.logit_bias.clone();
        c.seed = self.seed.unwrap_or_else(random_seed);
        c.validate().map_err(|e| anyhow!("--{e}"))?;
        cria_engine::stop::validate_stops(&self.stop).map_err(|e| anyhow!("--{e}"))?;
        Ok(c)
    }
}

/// The sampler for `cfg` over a model vocabulary of `n_vocab` (the logits' length), with DRY's
/// sequence breakers tokenized against `tok` when DRY is on (the scan reads every token's text
/// once, a few milliseconds). A --logit-bias token outside the vocabulary is an error.
pub fn build_sampler(cfg: SamplerConfig, n_vocab: usize, tok: &Tokenizer) -> Result<Sampler> {
    if let Some((id, _)) = cfg
        .logit_bias
        .iter()
        .find(|(id, _)| *id as usize >= n_vocab)
    {
        return Err(anyhow!(
            "--logit-bias: token {id} is not in the model's vocabulary (0..{n_vocab})"
        ));
    }
    Ok(cria_engine::generate::sampler(cfg, n_vocab, tok))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use cria_engine::generate::TokText;
    use cria_engine::sampler::{DryBreakers, TokenText};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        s: SamplerArgs,
    }

    fn parse(args: &[&str]) -> Result<SamplerConfig> {
        let cli = Cli::try_parse_from(std::iter::once("cria").chain(args.iter().copied()))?;
        cli.s.config()
    }

    #[test]
    fn flags_are_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_are_llama_cpps() {
        let c = parse(&["--seed", "1"]).unwrap();
        assert_eq!(
            c,
            SamplerConfig {
                seed: 1,
                ..Default::default()
            }
        );
    }

    #[test]
    fn every_flag_lands_in_its_field() {
        let c = parse(&[
            "--temp",
            "0.5",
            "--top-k",
            "10",
            "--top-p",
            "0.9",
            "--min-p",
            "0.1",
            "--typical",
            "0.8",
            "--top-nsigma",
            "1.5",
            "--xtc-probability",
            "0.3",
            "--xtc-threshold",
            "0.2",
            "--dry-multiplier",
            "0.8",
            "--dry-base",
            "2",
            "--dry-allowed-length",
            "3",
            "--dry-penalty-last-n",
            "100",
            "--dry-sequence-breaker",
            "\\n\\n",
            "--dry-sequence-breaker",
            "###",
            "--repeat-penalty",
            "1.2",
            "--repeat-last-n",
            "32",
            "--presence-penalty",
            "-0.5",
            "--frequency-penalty",
            "0.25",
            "--mirostat",
            "2",
            "--mirostat-lr",
            "0.2",
            "--mirostat-ent",
            "4",
            "--dynatemp-range",
            "0.4",
            "--dynatemp-exp",
            "1.5",
            "--min-keep",
            "2",
            "--logit-bias",
            "15043+1",
            "--logit-bias",
            "2-inf",
            "--seed",
            "7",
        ])
        .unwrap();
        let want = SamplerConfig {
            temperature: 0.5,
            top_k: 10,
            top_p: 0.9,
            min_p: 0.1,
            typical_p: 0.8,
            top_n_sigma: 1.5,
            xtc_probability: 0.3,
            xtc_threshold: 0.2,
            dry_multiplier: 0.8,
            dry_base: 2.0,
            dry_allowed_length: 3,
            dry_penalty_last_n: 100,
            dry_sequence_breakers: vec!["\n\n".into(), "###".into()],
            repeat_penalty: 1.2,
            repeat_last_n: 32,
            presence_penalty: -0.5,
            frequency_penalty: 0.25,
            mirostat: 2,
            mirostat_eta: 0.2,
            mirostat_tau: 4.0,
            dynatemp_range: 0.4,
            dynatemp_exponent: 1.5,
            min_keep: 2,
            logit_bias: vec![(15043, 1.0), (2, f32::NEG_INFINITY)],
            seed: 7,
        };
        assert_eq!(c, want);
        // --temperature is the same flag as --temp; "none" clears the breakers.
        let c = parse(&["--temperature", "0", "--dry-sequence-breaker", "none"]).unwrap();
        assert_eq!(c.temperature, 0.0);
        assert!(c.dry_sequence_breakers.is_empty());
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let e = parse(&["--top-p", "1.5"]).unwrap_err().to_string();
        assert_eq!(
            e,
            "--top-p = 1.5 is out of range: expected 0 to 1 (1 = off)"
        );
        let e = parse(&["--mirostat", "3"]).unwrap_err().to_string();
        assert!(e.starts_with("--mirostat = 3 is out of range"), "{e}");
        let e = parse(&["--logit-bias", "abc"]).unwrap_err().to_string();
        assert!(e.contains("expected TOKEN_ID+BIAS"), "{e}");
        let e = parse(&["--top-k", "-1"]).unwrap_err().to_string();
        assert!(e.contains("invalid value '-1' for '--top-k <N>'"), "{e}");
        let e = parse(&["--temp", "-0.5"]).unwrap_err().to_string();
        assert!(e.starts_with("--temperature = -0.5 is out of range"), "{e}");
    }

    #[test]
    fn stop_strings_and_escapes() {
        let cli = Cli::try_parse_from([
            "cria",
            "--stop",
            "\\nUser:",
            "--stop",
            "",
            "--stop",
            "-end-",
            "--stop",
            "a\\x41\\q",
        ])
        .unwrap();
        assert_eq!(cli.s.stop, ["\nUser:", "", "-end-", "aA\\q"]);
        assert_eq!(unescape("\\t\\\"\\'\\\\\\r"), "\t\"'\\\r");
        assert_eq!(unescape("end\\"), "end\\");
        assert_eq!(unescape("\\xzz\\xff"), "\\xzz\\xff");
    }

    /// DRY's breaker processing reads token texts and tokenizations; with cria's tokenizer they
    /// must be llama.cpp's. The fixture holds what libllama gave on its GPT-2 test vocabulary
    /// (every token whose text holds a breaker's first byte, and each breaker suffix's tokens).
    #[test]
    fn token_text_matches_llama_cpp_for_dry() {
        use serde_json::Value;
        let ref_dir = std::env::var_os("CRIA_REF_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../../ref").into());
        let path = ref_dir.join("llama.cpp/models/ggml-vocab-gpt-2.gguf");
        assert!(
            path.exists(),
            "reference vocabulary missing: {} (set CRIA_REF_DIR)",
            path.display()
        );
        let g = cria_core::gguf::GgufFile::open(&path).expect("open vocab");
        let tok = Tokenizer::from_gguf(&g).expect("load vocab");
        let f: Value = serde_json::from_str(include_str!(
            "../../cria-engine/tests/fixtures/samplers_llama_cpp.json"
        ))
        .unwrap();
        let bytes = |v: &Value| -> Vec<u8> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u8)
                .collect()
        };
        let v = &f["dry_vocab"];
        let breakers: Vec<Vec<u8>> = v["breakers"]
            .as_array()
            .unwrap()
            .iter()
            .map(bytes)
            .collect();
        let text = TokText(&tok);
        assert_eq!(text.n_tokens() as u64, v["n_tokens"].as_u64().unwrap());
        let mut piece = Vec::new();
        let mut want_ids = Vec::new();
        for e in v["pieces"].as_array().unwrap() {
            let id = e[0].as_u64().unwrap() as u32;
            text.piece(id, &mut piece);
            assert_eq!(piece, bytes(&e[1]), "text of token {id}");
            want_ids.push(id);
        }
        // The same set of tokens holds a breaker's first byte.
        let got_ids: Vec<u32> = (0..text.n_tokens() as u32)
            .filter(|&id| {
                text.piece(id, &mut piece);
                breakers.iter().any(|b| piece.contains(&b[0]))
            })
            .collect();
        assert_eq!(got_ids, want_ids);
        for e in v["tokenize"].as_array().unwrap() {
            let ids: Vec<u32> = e[1]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(text.tokenize(&bytes(&e[0])), ids, "tokens of {:?}", e[0]);
        }
        // And the sampler builds with them: "\n" (GPT-2 id 198) is a single-token breaker.
        let cfg = SamplerConfig {
            dry_multiplier: 0.8,
            ..SamplerConfig::default()
        };
        let s = build_sampler(cfg, tok.vocab_size(), &tok).unwrap();
        assert!(s.describe().contains("dry"));
        // GPT-2 has three tokens holding "\n" (each a single-token breaker) and none ending in
        // a proper prefix of it (a one-byte breaker has none).
        let b = DryBreakers::from_strings(&["\n".to_string()], &text);
        assert_eq!(b.len(), 3);
        // A bias on a token the model does not have is refused.
        let cfg = SamplerConfig {
            logit_bias: vec![(tok.vocab_size() as u32, 1.0)],
            ..SamplerConfig::default()
        };
        let e = build_sampler(cfg, tok.vocab_size(), &tok).err().unwrap();
        assert!(
            e.to_string()
                .starts_with("--logit-bias: token 50257 is not"),
            "{e}"
        );
    }
}
