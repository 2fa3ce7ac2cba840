//! The sampler options shared by `run` and `chat`: clap flags -> SamplerConfig.
//!
//! The flags are built from the engine's option table (names are llama.cpp's, help texts and
//! defaults the table's). Every flag is optional: what is not given keeps
//! `SamplerConfig::default()` (llama.cpp's defaults), so the defaults live in one place. Values
//! go through `SamplerConfig::set`, so range errors have the wording `/set` gives in chat.

use anyhow::{anyhow, Result};
use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};
use cria_engine::sampler::{random_seed, OptionValue, Sampler, SamplerConfig, SamplerOption};
use cria_tokenizer::Tokenizer;

#[derive(Args, Clone, Debug, Default)]
pub struct SamplerArgs {
    #[command(flatten)]
    options: SamplerFlags,
    /// Stop when this text is generated; it is not printed (repeatable). Escapes such as \n are
    /// processed.
    #[arg(long = "stop", value_name = "STRING", value_parser = escaped, allow_hyphen_values = true)]
    pub stop: Vec<String>,
}

/// One flag per sampler option of the engine's table ([`SamplerConfig::options`]): its first
/// name is the flag, the others visible aliases, the help the table's. What was given is kept as
/// text and applied through [`SamplerConfig::set`], so a new option needs nothing here.
#[derive(Clone, Debug, Default)]
struct SamplerFlags {
    /// (option, values) in the table's order; a repeatable option's list starts with "none", so
    /// the values given replace the default list.
    given: Vec<(&'static str, Vec<String>)>,
}

/// The clap argument of one option; numbers are checked for syntax here (clap's wording), for
/// range by `set` (its wording).
fn flag(o: &'static SamplerOption) -> Arg {
    let (name, aliases) = o.names.split_first().expect("an option has a name");
    let arg = Arg::new(*name)
        .long(*name)
        .visible_aliases(aliases.iter().copied())
        .help(o.help())
        .value_name("N")
        .allow_negative_numbers(true);
    match o.value() {
        OptionValue::Number => arg.value_parser(|s: &str| s.parse::<f32>().map(|_| s.to_string())),
        OptionValue::Count => arg.value_parser(move |s: &str| match s {
            "-1" if o.takes_context() => Ok(s.to_string()),
            _ => s.parse::<usize>().map(|_| s.to_string()),
        }),
        OptionValue::Seed => arg,
        OptionValue::LogitBias => arg
            .value_name("TOKEN_ID(+|-)BIAS")
            .action(ArgAction::Append)
            .allow_hyphen_values(true),
        OptionValue::DryBreaker => arg
            .value_name("STRING")
            .help(format!("{} Escapes such as \\n are processed.", o.help()))
            .value_parser(escaped)
            .action(ArgAction::Append)
            .allow_hyphen_values(true),
    }
}

impl Args for SamplerFlags {
    fn augment_args(cmd: Command) -> Command {
        SamplerConfig::options()
            .iter()
            .fold(cmd, |cmd, o| cmd.arg(flag(o)))
    }
    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for SamplerFlags {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut f = SamplerFlags::default();
        f.update_from_arg_matches(m)?;
        Ok(f)
    }
    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        for o in SamplerConfig::options() {
            let name = o.names[0];
            let Some(vs) = m.get_many::<String>(name) else {
                continue;
            };
            let list = matches!(o.value(), OptionValue::LogitBias | OptionValue::DryBreaker);
            let values = list
                .then(|| "none".to_string())
                .into_iter()
                .chain(vs.cloned());
            self.given.retain(|(n, _)| *n != name);
            self.given.push((name, values.collect()));
        }
        Ok(())
    }
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
    /// The sampler configuration the flags ask for, validated; the seed is a fresh one unless
    /// given.
    pub fn config(&self) -> Result<SamplerConfig> {
        let mut c = SamplerConfig {
            seed: random_seed(),
            ..SamplerConfig::default()
        };
        for (name, values) in &self.options.given {
            for v in values {
                c.set(name, v).map_err(|e| anyhow!("--{e}"))?;
            }
        }
        c.validate().map_err(|e| anyhow!("--{e}"))?;
        cria_engine::stop::validate_stops(&self.stop).map_err(|e| anyhow!("--{e}"))?;
        Ok(c)
    }
}

/// The sampler for `cfg` over a model vocabulary of `n_vocab` (the logits' length), with DRY's
/// sequence breakers tokenized against `tok` when DRY is on (the scan reads every token's text
/// once, a few milliseconds). A --logit-bias token outside the vocabulary is an error.
pub fn build_sampler(cfg: SamplerConfig, n_vocab: usize, tok: &Tokenizer) -> Result<Sampler> {
    if let Some(id) = cfg.bias_outside_vocab(n_vocab) {
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

    /// Every option of the engine's table is a flag under each of its names, read by `set`.
    #[test]
    fn every_option_name_is_a_flag() {
        for o in SamplerConfig::options() {
            let (value, list) = match o.value() {
                OptionValue::LogitBias => ("3+1", true),
                OptionValue::DryBreaker => ("x", true),
                _ => ("1", false),
            };
            for name in o.names {
                let flag = format!("--{name}");
                let c = parse(&[&flag, value]).unwrap_or_else(|e| panic!("{flag}: {e}"));
                let mut want = SamplerConfig {
                    seed: c.seed,
                    ..SamplerConfig::default()
                };
                if list {
                    want.set(name, "none").unwrap();
                }
                want.set(name, value).unwrap();
                assert_eq!(c, want, "{flag}");
            }
        }
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
