//! Token sampling: a chain of stages over a candidate list, with llama.cpp's semantics and order.
//!
//! The chain that [`Sampler::new`] builds is the one llama.cpp's `common/sampling.cpp` builds
//! with its default `samplers` list:
//!
//! ```text
//! logits -> logit-bias -> penalties -> dry -> top-n-sigma -> top-k -> typical -> top-p
//!        -> min-p -> xtc -> temp (temp-ext with dynamic temperature) -> dist
//! ```
//!
//! and with mirostat on, `logits -> logit-bias -> temp -> mirostat` (or `mirostat-v2`): the
//! penalties and truncation stages are not used then, as in llama.cpp.
//!
//! Every stage works on one [`Candidates`] list (token id, logit, probability) that is filled from
//! the logits once per call and only ever shrinks or is reordered in place, so after the first call
//! sampling allocates nothing (history stages size their buffers at construction). A stage that
//! has nothing to do (top-k 0, top-p 1, ...) is left out of the chain rather than checked per
//! token. Other samplers (grammar) implement [`Stage`] and slot in with [`Sampler::with_stages`].
//!
//! DRY needs token text to turn its sequence breakers ("\n", ":", ...) into token sequences; the
//! caller supplies it through [`TokenText`] ([`Sampler::with_vocab`]), so this crate does not
//! depend on the tokenizer.
//!
//! Determinism: the only randomness is in `dist`, `mirostat` and XTC's coin, each driven by a
//! self-contained xoshiro256** generator seeded through splitmix64 from the `u64` seed, so a seed
//! gives the same tokens on every machine and at every thread count. Sorting breaks logit ties
//! by the lower token id, so no result depends on the sort algorithm either.
//!
//! Greedy decoding (`temperature <= 0` without dynamic temperature) ends the chain with
//! [`Greedy`]: the highest logit after the bias, penalty and DRY stages, the lowest token id on
//! ties. top-n-sigma, top-k, top-p and min-p are left out then, because they always keep the
//! highest logit (typical-p and XTC do not, so they stay, as in llama.cpp where `temp <= 0` turns
//! the temperature stage into an argmax over the survivors).
//!
//! # Limits
//!
//! Options come from CLI flags and from requests. [`SamplerConfig::set`] and
//! [`SamplerConfig::validate`] refuse values outside these ranges with an error naming the
//! option and its range ("repeat-last-n = 99999999 is out of range: expected -1 (the context,
//! up to 131072) or a whole number 0 to 131072 (0 = off)"); NaN and infinities are refused for every float.
//! [`Sampler::new`] clamps the history windows to [`MAX_LAST_N`] as well, so no config makes
//! it allocate more than the vocabulary and that window.
//!
//! | option | range |
//! |---|---|
//! | `repeat-last-n`, `dry-penalty-last-n` | -1 (= [`MAX_LAST_N`], the whole context up to it) or 0..=[`MAX_LAST_N`] = 131072 |
//! | `dry-allowed-length` | 0..=[`MAX_LAST_N`] |
//! | `top-k`, `min-keep` | 0..=[`MAX_TOP_K`] = 16777216 |
//! | `dry-sequence-breaker` | at most [`MAX_DRY_BREAKERS`] = 64 strings of at most [`MAX_DRY_BREAKER_BYTES`] = 256 bytes (matched on their first 40, as llama.cpp) |
//! | `logit-bias` | at most [`MAX_LOGIT_BIAS`] = 262144 entries |

use std::collections::VecDeque;

/// Longest token history the penalties and DRY look at (`repeat-last-n`, `dry-penalty-last-n`;
/// -1 means this many, i.e. the whole context of any model up to 128k tokens).
pub const MAX_LAST_N: usize = 1 << 17;
/// Largest `top-k` and `min-keep` (beyond any vocabulary; larger values mean "all" anyway).
pub const MAX_TOP_K: usize = 1 << 24;
/// Most DRY sequence breakers, and the longest one in bytes.
pub const MAX_DRY_BREAKERS: usize = 64;
pub const MAX_DRY_BREAKER_BYTES: usize = 256;
/// Most `logit-bias` entries (a whole vocabulary's worth).
pub const MAX_LOGIT_BIAS: usize = 1 << 18;

/// Sampling parameters. Defaults are llama.cpp's (`common_params_sampling` in common/common.h).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerConfig {
    /// Softmax temperature; `<= 0` means greedy (argmax, lowest id on ties) unless
    /// `dynatemp_range > 0`.
    pub temperature: f32,
    /// Dynamic temperature: the temperature moves within `temperature ± dynatemp_range` with the
    /// normalized entropy of the candidates (llama.cpp `temp-ext`); 0.0 disables.
    pub dynatemp_range: f32,
    /// How the normalized entropy maps to the temperature range: `t = lo + (hi - lo) * H^exp`.
    pub dynatemp_exponent: f32,
    /// Keep the `top_k` most likely tokens; 0 disables.
    pub top_k: usize,
    /// Nucleus sampling: keep the smallest prefix whose probability reaches `top_p`; 1.0 disables.
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` times the most likely one's; 0.0 disables.
    pub min_p: f32,
    /// Locally typical sampling; 1.0 disables.
    pub typical_p: f32,
    /// Top-n-sigma: mask logits more than `top_n_sigma` standard deviations below the highest;
    /// `<= 0` disables (llama.cpp's default is -1).
    pub top_n_sigma: f32,
    /// XTC ("exclude top choices"): with this probability per token, drop every candidate above
    /// `xtc_threshold` except the least likely of them; 0.0 disables.
    pub xtc_probability: f32,
    /// XTC probability threshold; above 0.5 XTC can never act and is left out.
    pub xtc_threshold: f32,
    /// Divide positive (multiply negative) logits of recent tokens by this; 1.0 disables.
    pub repeat_penalty: f32,
    /// Subtract this from the logit of every recent token; 0.0 disables.
    pub presence_penalty: f32,
    /// Subtract this times the recent count of a token from its logit; 0.0 disables.
    pub frequency_penalty: f32,
    /// How many of the last accepted tokens the penalties look at; 0 disables the penalties.
    pub repeat_last_n: usize,
    /// DRY ("don't repeat yourself"): penalty scale for tokens that would extend a repeated
    /// sequence; 0.0 disables.
    pub dry_multiplier: f32,
    /// DRY: the penalty grows as `dry_base ^ (repeat length - dry_allowed_length)`.
    pub dry_base: f32,
    /// DRY: repeats up to this length go unpenalized.
    pub dry_allowed_length: usize,
    /// DRY: how many of the last accepted tokens it scans; 0 disables.
    pub dry_penalty_last_n: usize,
    /// DRY: strings that end a repeated sequence (a repeat never spans one). Turning them into
    /// token sequences needs the vocabulary: see [`Sampler::with_vocab`].
    pub dry_sequence_breakers: Vec<String>,
    /// 0 = off, 1 = Mirostat, 2 = Mirostat 2.0. When on, the chain is logit-bias -> temperature
    /// -> mirostat, as in llama.cpp (the penalties and truncation stages are not used).
    pub mirostat: u8,
    /// Mirostat target surprise (entropy), llama.cpp `--mirostat-ent`.
    pub mirostat_tau: f32,
    /// Mirostat learning rate, llama.cpp `--mirostat-lr`.
    pub mirostat_eta: f32,
    /// Truncation stages keep at least this many candidates (llama.cpp's `min_keep`); 0 = no floor.
    pub min_keep: usize,
    /// Seed of the random stages. The same seed gives the same tokens on every machine.
    pub seed: u64,
    /// Added to the logits of the given token ids before anything else (`f32::NEG_INFINITY` bans).
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.8,
            dynatemp_range: 0.0,
            dynatemp_exponent: 1.0,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            typical_p: 1.0,
            top_n_sigma: -1.0,
            xtc_probability: 0.0,
            xtc_threshold: 0.1,
            repeat_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repeat_last_n: 64,
            dry_multiplier: 0.0,
            dry_base: 1.75,
            dry_allowed_length: 2,
            dry_penalty_last_n: 64,
            dry_sequence_breakers: ["\n", ":", "\"", "*"].map(String::from).to_vec(),
            mirostat: 0,
            mirostat_tau: 5.0,
            mirostat_eta: 0.1,
            min_keep: 0,
            seed: 0,
            logit_bias: Vec::new(),
        }
    }
}

/// How one option is read, written and range-checked; the table below drives `set`, `validate`,
/// the list of known names, the CLI's flags and the server's request fields, so they cannot
/// disagree.
#[derive(Clone, Copy)]
enum OptKind {
    /// A finite float in `lo..=hi` (`lo` itself excluded when `lo_open`).
    Float {
        get: fn(&SamplerConfig) -> f32,
        put: fn(&mut SamplerConfig, f32),
        lo: f32,
        lo_open: bool,
        hi: f32,
    },
    /// A whole number in `0..=max`.
    Count {
        get: fn(&SamplerConfig) -> usize,
        put: fn(&mut SamplerConfig, usize),
        max: usize,
    },
    Seed,
    LogitBias,
    DryBreaker,
}

/// What a front end reads before handing the text to [`SamplerConfig::set`] (a CLI checks the
/// syntax of numbers itself; `set` checks the range).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionValue {
    /// A number (f32).
    Number,
    /// A whole number (usize; -1 too where [`SamplerOption::takes_context`]).
    Count,
    /// A whole number, or -1 / "random".
    Seed,
    /// One `TOKEN_ID(+|-)BIAS` per use (repeatable; "none" clears).
    LogitBias,
    /// One string per use (repeatable; "none" clears).
    DryBreaker,
}

/// One sampler option: its names, what it does, what it takes. [`SamplerConfig::options`] lists
/// them all; adding an option is its `SamplerConfig` field and one entry in the table.
pub struct SamplerOption {
    /// Canonical (llama.cpp CLI) name first, then aliases; a request field is a name with `_`
    /// for `-`.
    pub names: &'static [&'static str],
    kind: OptKind,
    /// What the option does, for help texts.
    help: &'static str,
    /// The allowed values, for error messages and help texts.
    range: &'static str,
}

impl SamplerOption {
    /// A count that takes -1 for "the whole context" (llama.cpp's history windows).
    pub fn takes_context(&self) -> bool {
        matches!(self.kind, OptKind::Count { max, .. } if max == MAX_LAST_N)
            && self.names[0].ends_with("last-n")
    }

    pub fn value(&self) -> OptionValue {
        match self.kind {
            OptKind::Float { .. } => OptionValue::Number,
            OptKind::Count { .. } => OptionValue::Count,
            OptKind::Seed => OptionValue::Seed,
            OptKind::LogitBias => OptionValue::LogitBias,
            OptKind::DryBreaker => OptionValue::DryBreaker,
        }
    }

    /// A one-line help text: what it does, what it takes, and its default (read from
    /// `SamplerConfig::default()`).
    pub fn help(&self) -> String {
        let d = SamplerConfig::default();
        let default = match self.kind {
            OptKind::Float { get, .. } => get(&d).to_string(),
            OptKind::Count { get, .. } => get(&d).to_string(),
            OptKind::Seed => "a fresh one per run".into(),
            OptKind::LogitBias => "none".into(),
            OptKind::DryBreaker => {
                let b: Vec<String> = d
                    .dry_sequence_breakers
                    .iter()
                    .map(|b| format!("{b:?}"))
                    .collect();
                b.join(" ")
            }
        };
        format!("{}: {}; default {default}.", self.help, self.range)
    }
}

macro_rules! float_opt {
    ($names:expr, $field:ident, $lo:expr, $lo_open:expr, $hi:expr, $range:expr, $help:expr) => {
        SamplerOption {
            names: $names,
            help: $help,
            kind: OptKind::Float {
                get: |c| c.$field,
                put: |c, v| c.$field = v,
                lo: $lo,
                lo_open: $lo_open,
                hi: $hi,
            },
            range: $range,
        }
    };
}

macro_rules! count_opt {
    ($names:expr, $field:ident, $max:expr, $range:expr, $help:expr) => {
        SamplerOption {
            names: $names,
            help: $help,
            kind: OptKind::Count {
                get: |c| c.$field as usize,
                put: |c, v| c.$field = v as _,
                max: $max,
            },
            range: $range,
        }
    };
}

const INF: f32 = f32::INFINITY;

/// Every option `SamplerConfig::set` knows, with llama.cpp's CLI names.
static OPTIONS: &[SamplerOption] = &[
    float_opt!(
        &["temperature", "temp"],
        temperature,
        0.0,
        false,
        INF,
        "a number >= 0 (0 = greedy)",
        "Temperature"
    ),
    count_opt!(
        &["top-k"],
        top_k,
        MAX_TOP_K,
        "a whole number 0 to 16777216 (0 = off)",
        "Keep the K most likely tokens"
    ),
    float_opt!(
        &["top-p"],
        top_p,
        0.0,
        false,
        1.0,
        "0 to 1 (1 = off)",
        "Nucleus sampling: keep the most likely tokens up to this total probability"
    ),
    float_opt!(
        &["min-p"],
        min_p,
        0.0,
        false,
        1.0,
        "0 to 1 (0 = off)",
        "Drop tokens below this fraction of the best one's probability"
    ),
    float_opt!(
        &["typical-p", "typical", "typ-p"],
        typical_p,
        0.0,
        false,
        1.0,
        "0 to 1 (1 = off)",
        "Locally typical sampling"
    ),
    float_opt!(
        &["top-nsigma", "top-n-sigma"],
        top_n_sigma,
        -INF,
        false,
        INF,
        "a number (<= 0 = off)",
        "Top-n-sigma: drop logits more than N standard deviations below the best"
    ),
    float_opt!(
        &["xtc-probability"],
        xtc_probability,
        0.0,
        false,
        1.0,
        "0 to 1 (0 = off)",
        "XTC: chance per token of excluding the top choices"
    ),
    float_opt!(
        &["xtc-threshold"],
        xtc_threshold,
        0.0,
        false,
        1.0,
        "0 to 1 (above 0.5 = off)",
        "XTC: probability threshold of the choices to exclude"
    ),
    float_opt!(
        &["dry-multiplier"],
        dry_multiplier,
        0.0,
        false,
        INF,
        "a number >= 0 (0 = off)",
        "DRY repetition penalty multiplier"
    ),
    float_opt!(
        &["dry-base"],
        dry_base,
        1.0,
        false,
        INF,
        "a number >= 1",
        "DRY base: penalty = multiplier * base^(repeat length - allowed length)"
    ),
    count_opt!(
        &["dry-allowed-length"],
        dry_allowed_length,
        MAX_LAST_N,
        "a whole number 0 to 131072",
        "DRY: repeats up to this length are not penalized"
    ),
    count_opt!(
        &["dry-penalty-last-n"],
        dry_penalty_last_n,
        MAX_LAST_N,
        "-1 (the context, up to 131072) or a whole number 0 to 131072 (0 = off)",
        "DRY: how many recent tokens to scan"
    ),
    SamplerOption {
        names: &["dry-sequence-breaker"],
        kind: OptKind::DryBreaker,
        help: "DRY sequence breaker: a repeat never spans one (repeatable; replaces the defaults)",
        range: "a non-empty string of at most 256 bytes to add (at most 64 of them), or \"none\" to clear the list",
    },
    // 1/x must be finite too (llama.cpp's check): the smallest normal float is the floor.
    float_opt!(
        &["repeat-penalty"],
        repeat_penalty,
        f32::MIN_POSITIVE,
        false,
        INF,
        "a number > 0 (1 = off)",
        "Repetition penalty over the last repeat-last-n tokens"
    ),
    count_opt!(
        &["repeat-last-n"],
        repeat_last_n,
        MAX_LAST_N,
        "-1 (the context, up to 131072) or a whole number 0 to 131072 (0 = off)",
        "Tokens the repetition penalties look back over"
    ),
    float_opt!(
        &["presence-penalty"],
        presence_penalty,
        -INF,
        false,
        INF,
        "a finite number (0 = off)",
        "Presence penalty"
    ),
    float_opt!(
        &["frequency-penalty"],
        frequency_penalty,
        -INF,
        false,
        INF,
        "a finite number (0 = off)",
        "Frequency penalty"
    ),
    count_opt!(
        &["mirostat"],
        mirostat,
        2,
        "0 (off), 1 (Mirostat) or 2 (Mirostat 2.0)",
        "Mirostat (replaces top-k/p, min-p, typical, penalties, DRY, XTC)"
    ),
    float_opt!(
        &["mirostat-lr", "mirostat-eta"],
        mirostat_eta,
        0.0,
        false,
        INF,
        "a number >= 0",
        "Mirostat learning rate, eta"
    ),
    float_opt!(
        &["mirostat-ent", "mirostat-tau"],
        mirostat_tau,
        0.0,
        false,
        INF,
        "a number >= 0",
        "Mirostat target entropy, tau"
    ),
    float_opt!(
        &["dynatemp-range"],
        dynatemp_range,
        0.0,
        false,
        INF,
        "a number >= 0 (0 = off)",
        "Dynamic temperature range: temperature ± N by entropy"
    ),
    float_opt!(
        &["dynatemp-exp", "dynatemp-exponent"],
        dynatemp_exponent,
        0.0,
        false,
        INF,
        "a number >= 0",
        "Dynamic temperature exponent"
    ),
    SamplerOption {
        names: &["seed"],
        kind: OptKind::Seed,
        help: "Seed of the random stages (the same seed and options give the same text)",
        range: "a whole number 0 to 2^64-1, or -1 / \"random\" for a fresh one",
    },
    count_opt!(
        &["min-keep"],
        min_keep,
        MAX_TOP_K,
        "a whole number 0 to 16777216",
        "Truncation samplers keep at least this many tokens"
    ),
    SamplerOption {
        names: &["logit-bias"],
        kind: OptKind::LogitBias,
        help: "Bias a token (repeatable)",
        range: "TOKEN_ID+BIAS or TOKEN_ID-BIAS (e.g. 15043+1, 2-inf; at most 262144 entries), or \"none\" to clear",
    },
];

/// `--top_k`, `TOP-K`, `top_k` all name `top-k`.
fn normalize_name(name: &str) -> String {
    name.trim()
        .trim_start_matches('-')
        .to_ascii_lowercase()
        .replace('_', "-")
}

fn check_float(opt: &SamplerOption, v: f32) -> Result<(), String> {
    if let OptKind::Float {
        lo, lo_open, hi, ..
    } = opt.kind
    {
        let low_ok = if lo_open { v > lo } else { v >= lo };
        if !v.is_finite() || !low_ok || v > hi {
            return Err(format!(
                "{} = {v} is out of range: expected {}",
                opt.names[0], opt.range
            ));
        }
    }
    Ok(())
}

/// Parse `TOKEN_ID(+|-)BIAS` as llama.cpp's `--logit-bias` does; the bias may be `inf`.
pub fn parse_logit_bias(s: &str) -> Result<(u32, f32), String> {
    let bad = || {
        format!("logit-bias {s:?}: expected TOKEN_ID+BIAS or TOKEN_ID-BIAS (e.g. 15043+1, 2-inf)")
    };
    let s = s.trim();
    let split = s.find(['+', '-']).ok_or_else(bad)?;
    let id: u32 = s[..split].trim().parse().map_err(|_| bad())?;
    let mag: f32 = s[split + 1..].trim().parse().map_err(|_| bad())?;
    if mag.is_nan() || mag < 0.0 {
        return Err(bad());
    }
    let bias = if &s[split..split + 1] == "-" {
        -mag
    } else {
        mag
    };
    if bias == f32::INFINITY {
        return Err(format!(
            "logit-bias {s:?}: +inf would force the token; use a large finite bias"
        ));
    }
    Ok((id, bias))
}

impl SamplerConfig {
    /// The first `logit_bias` token that is not in a vocabulary of `n_vocab` tokens: the CLI
    /// and the server refuse it, each in its own words.
    pub fn bias_outside_vocab(&self, n_vocab: usize) -> Option<u32> {
        self.logit_bias
            .iter()
            .map(|&(id, _)| id)
            .find(|&id| id as usize >= n_vocab)
    }

    /// A configuration for greedy decoding (everything else at its default).
    pub fn greedy() -> Self {
        SamplerConfig {
            temperature: 0.0,
            ..Default::default()
        }
    }

    /// Whether the chain is deterministic argmax (temperature <= 0 without dynamic temperature).
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 && self.dynatemp_range <= 0.0
    }

    /// The option names `set` accepts (canonical names, llama.cpp's CLI spelling).
    pub fn option_names() -> impl Iterator<Item = &'static str> {
        OPTIONS.iter().map(|o| o.names[0])
    }

    /// Every option `set` knows: the one declaration the CLI's flags and the server's request
    /// fields are built from.
    pub fn options() -> &'static [SamplerOption] {
        OPTIONS
    }

    /// Set one option from text, by llama.cpp's CLI name (`temp`, `top-k`, `mirostat-lr`, ...;
    /// underscores and leading dashes are fine). Out-of-range values and unknown names give a
    /// message naming the option and what it accepts; on error the config is unchanged.
    /// `logit-bias` and `dry-sequence-breaker` add to their lists ("none" clears them).
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        let key = normalize_name(name);
        let Some(opt) = OPTIONS.iter().find(|o| o.names.contains(&key.as_str())) else {
            let known: Vec<&str> = Self::option_names().collect();
            return Err(format!(
                "unknown sampler option {name:?}; known options: {}",
                known.join(", ")
            ));
        };
        let v = value.trim();
        let parse_err = || {
            format!(
                "{} = {v:?} is not valid: expected {}",
                opt.names[0], opt.range
            )
        };
        match opt.kind {
            OptKind::Float { put, .. } => {
                let x: f32 = v.parse().map_err(|_| parse_err())?;
                check_float(opt, x)?;
                put(self, x);
            }
            OptKind::Count { put, max, .. } => {
                // -1 is llama.cpp's "the whole context" for the history windows.
                let context = opt.takes_context() && v == "-1";
                let x: usize = if context {
                    MAX_LAST_N
                } else {
                    v.parse().map_err(|_| parse_err())?
                };
                if x > max {
                    return Err(format!(
                        "{} = {x} is out of range: expected {}",
                        opt.names[0], opt.range
                    ));
                }
                put(self, x);
            }
            OptKind::Seed => {
                self.seed = if v == "-1" || v.eq_ignore_ascii_case("random") {
                    random_seed()
                } else {
                    v.parse().map_err(|_| parse_err())?
                };
            }
            OptKind::LogitBias => {
                if v.eq_ignore_ascii_case("none") {
                    self.logit_bias.clear();
                } else {
                    let b = parse_logit_bias(v)?;
                    if self.logit_bias.len() >= MAX_LOGIT_BIAS {
                        return Err(format!("logit-bias: more than {MAX_LOGIT_BIAS} entries"));
                    }
                    self.logit_bias.push(b);
                }
            }
            OptKind::DryBreaker => {
                // The raw value, not trimmed: "\n" and " " are meaningful breakers.
                if value == "none" {
                    self.dry_sequence_breakers.clear();
                } else if value.is_empty() || value.len() > MAX_DRY_BREAKER_BYTES {
                    return Err(parse_err());
                } else if self.dry_sequence_breakers.len() >= MAX_DRY_BREAKERS {
                    return Err(format!(
                        "dry-sequence-breaker: more than {MAX_DRY_BREAKERS} breakers"
                    ));
                } else {
                    self.dry_sequence_breakers.push(value.to_string());
                }
            }
        }
        Ok(())
    }

    /// Check every field against the ranges `set` enforces (for configs built in code).
    pub fn validate(&self) -> Result<(), String> {
        for opt in OPTIONS {
            match opt.kind {
                OptKind::Float { get, .. } => check_float(opt, get(self))?,
                OptKind::Count { get, max, .. } => {
                    if get(self) > max {
                        return Err(format!(
                            "{} = {} is out of range: expected {}",
                            opt.names[0],
                            get(self),
                            opt.range
                        ));
                    }
                }
                OptKind::Seed => {}
                OptKind::LogitBias => {
                    if self.logit_bias.len() > MAX_LOGIT_BIAS {
                        return Err(format!(
                            "logit-bias: {} entries, more than {MAX_LOGIT_BIAS}",
                            self.logit_bias.len()
                        ));
                    }
                    for &(id, b) in &self.logit_bias {
                        if b.is_nan() || b == f32::INFINITY {
                            return Err(format!(
                                "logit-bias for token {id} is {b}: expected a finite bias or -inf"
                            ));
                        }
                    }
                }
                OptKind::DryBreaker => {
                    let b = &self.dry_sequence_breakers;
                    if b.iter().any(|b| b.is_empty()) {
                        return Err("dry-sequence-breaker: empty strings are not allowed".into());
                    }
                    if b.len() > MAX_DRY_BREAKERS {
                        return Err(format!(
                            "dry-sequence-breaker: {} breakers, more than {MAX_DRY_BREAKERS}",
                            b.len()
                        ));
                    }
                    if b.iter().any(|b| b.len() > MAX_DRY_BREAKER_BYTES) {
                        return Err(format!(
                            "dry-sequence-breaker: a breaker is longer than {MAX_DRY_BREAKER_BYTES} bytes"
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The active settings on one line, in chain order, e.g.
    /// `temp 0.80, top-k 40, top-p 0.95, min-p 0.05, seed 42`. Stages that are off are left out.
    pub fn summary(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        if !self.logit_bias.is_empty() {
            parts.push(format!("logit-bias x{}", self.logit_bias.len()));
        }
        let mirostat = self.mirostat != 0;
        let penalties = self.repeat_last_n > 0
            && (self.repeat_penalty != 1.0
                || self.frequency_penalty != 0.0
                || self.presence_penalty != 0.0);
        if !mirostat && penalties {
            parts.push(format!(
                "repeat-penalty {} / presence {} / frequency {} over last {}",
                self.repeat_penalty,
                self.presence_penalty,
                self.frequency_penalty,
                self.repeat_last_n
            ));
        }
        if !mirostat && self.dry_enabled() {
            parts.push(format!(
                "dry x{} base {} allowed {} last {}",
                self.dry_multiplier,
                self.dry_base,
                self.dry_allowed_length,
                self.dry_penalty_last_n
            ));
        }
        if self.is_greedy() {
            if !mirostat && self.typical_p < 1.0 {
                parts.push(format!("typical-p {}", self.typical_p));
            }
            if !mirostat && self.xtc_enabled() {
                parts.push(format!(
                    "xtc {} > {}",
                    self.xtc_probability, self.xtc_threshold
                ));
            }
            parts.push("greedy".into());
            return parts.join(", ");
        }
        if mirostat {
            parts.push(format!("temp {}", self.temperature));
            parts.push(format!(
                "mirostat v{} tau {} eta {}",
                self.mirostat, self.mirostat_tau, self.mirostat_eta
            ));
        } else {
            if self.top_n_sigma > 0.0 {
                parts.push(format!("top-n-sigma {}", self.top_n_sigma));
            }
            if self.top_k > 0 {
                parts.push(format!("top-k {}", self.top_k));
            }
            if self.typical_p < 1.0 {
                parts.push(format!("typical-p {}", self.typical_p));
            }
            if self.top_p < 1.0 {
                parts.push(format!("top-p {}", self.top_p));
            }
            if self.min_p > 0.0 {
                parts.push(format!("min-p {}", self.min_p));
            }
            if self.xtc_enabled() {
                parts.push(format!(
                    "xtc {} > {}",
                    self.xtc_probability, self.xtc_threshold
                ));
            }
            if self.dynatemp_range > 0.0 {
                parts.push(format!(
                    "temp {} ± {} exp {}",
                    self.temperature, self.dynatemp_range, self.dynatemp_exponent
                ));
            } else {
                parts.push(format!("temp {}", self.temperature));
            }
        }
        if self.min_keep > 0 {
            parts.push(format!("min-keep {}", self.min_keep));
        }
        parts.push(format!("seed {}", self.seed));
        parts.join(", ")
    }

    pub fn dry_enabled(&self) -> bool {
        self.dry_multiplier != 0.0 && self.dry_base >= 1.0 && self.dry_penalty_last_n > 0
    }

    fn xtc_enabled(&self) -> bool {
        self.xtc_probability > 0.0 && self.xtc_threshold <= 0.5
    }
}

/// A seed from the clock and the address space, for callers that want a fresh one per run
/// (llama.cpp's `LLAMA_DEFAULT_SEED` behaviour). Not for anything that must be reproducible.
pub fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let local = 0u8;
    let addr = &local as *const u8 as u64;
    let mut s = nanos ^ addr.rotate_left(32) ^ u64::from(std::process::id());
    splitmix64(&mut s)
}

// ---------------------------------------------------------------------------------------------
// Candidates
// ---------------------------------------------------------------------------------------------

/// One token under consideration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub id: u32,
    pub logit: f32,
    /// Probability; only meaningful after a stage that computes a softmax (top-p, typical, dist).
    pub p: f32,
}

/// The working list the stages filter, llama.cpp's `llama_token_data_array`.
#[derive(Debug, Default, Clone)]
pub struct Candidates {
    pub data: Vec<Candidate>, // (n_candidates,), shrinks along the chain
    /// True when `data` is in descending logit order (ties: ascending id).
    pub sorted: bool,
    /// Index into `data` of the chosen token, set by the final stage.
    pub selected: Option<usize>,
}

/// Descending logit, then ascending id: a total order, so every sort gives one result.
fn by_logit_desc(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id))
}

impl Candidates {
    /// Refill from a row of logits (token id = index). NaN logits become -inf: a NaN would
    /// otherwise poison every softmax downstream.
    pub fn fill(&mut self, logits: &[f32]) {
        self.data.clear();
        self.data
            .extend(logits.iter().enumerate().map(|(i, &l)| Candidate {
                id: i as u32,
                logit: if l.is_nan() { f32::NEG_INFINITY } else { l },
                p: 0.0,
            }));
        self.sorted = false;
        self.selected = None;
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Sort the whole list in descending logit order.
    pub fn sort(&mut self) {
        if !self.sorted {
            self.data.sort_unstable_by(by_logit_desc);
            self.sorted = true;
        }
    }

    /// Put the `k` highest logits, sorted, at the front; the rest stay behind in any order.
    /// Selection is O(n), then only `k` elements are sorted.
    fn sort_prefix(&mut self, k: usize) {
        let k = k.min(self.data.len());
        if k == 0 || self.sorted {
            return;
        }
        if k < self.data.len() {
            self.data.select_nth_unstable_by(k - 1, by_logit_desc);
        }
        self.data[..k].sort_unstable_by(by_logit_desc);
        if k == self.data.len() {
            self.sorted = true;
        }
    }

    /// Keep the `k` highest logits, sorted.
    pub fn keep_top(&mut self, k: usize) {
        let k = k.min(self.data.len());
        self.sort_prefix(k);
        self.data.truncate(k);
        self.sorted = true;
    }

    /// Probabilities from the logits (max-subtracted softmax), optionally sorting first.
    /// An all -inf list gets probability 0 everywhere rather than NaN.
    pub fn softmax(&mut self, sort: bool) {
        if self.data.is_empty() {
            return;
        }
        if sort {
            self.sort();
        }
        let max = if self.sorted {
            self.data[0].logit
        } else {
            self.data
                .iter()
                .fold(f32::NEG_INFINITY, |m, c| m.max(c.logit))
        };
        if max == f32::NEG_INFINITY {
            self.data.iter_mut().for_each(|c| c.p = 0.0);
            return;
        }
        let mut sum = 0.0f32;
        for c in self.data.iter_mut() {
            c.p = (c.logit - max).exp();
            sum += c.p;
        }
        let inv = 1.0 / sum;
        self.data.iter_mut().for_each(|c| c.p *= inv);
    }

    /// Index of the highest logit, the lowest id on ties (independent of the current order).
    fn argmax(&self) -> Option<usize> {
        let mut best: Option<usize> = None;
        for (i, c) in self.data.iter().enumerate() {
            match best {
                None => best = Some(i),
                Some(b) => {
                    if by_logit_desc(c, &self.data[b]) == std::cmp::Ordering::Less {
                        best = Some(i);
                    }
                }
            }
        }
        best
    }
}

// ---------------------------------------------------------------------------------------------
// Stages
// ---------------------------------------------------------------------------------------------

/// One link of the chain. `apply` filters, reorders or rescales the candidates; a final stage sets
/// `selected`. `accept` sees every token that enters the context (for history-based stages),
/// `reset` forgets that history and restarts any random state from the seed.
pub trait Stage: Send {
    fn name(&self) -> &'static str;
    fn apply(&mut self, cands: &mut Candidates);
    fn accept(&mut self, _token: u32) {}
    fn reset(&mut self) {}
}

/// Adds fixed biases to chosen token logits (llama.cpp `logit-bias`).
pub struct LogitBias {
    pub bias: Vec<(u32, f32)>,
}

impl Stage for LogitBias {
    fn name(&self) -> &'static str {
        "logit-bias"
    }
    fn apply(&mut self, c: &mut Candidates) {
        for &(tok, b) in &self.bias {
            // Fast path: the list is still in vocabulary order (it is, as the first stage).
            let i = tok as usize;
            if i < c.data.len() && c.data[i].id == tok {
                c.data[i].logit += b;
            } else if let Some(cand) = c.data.iter_mut().find(|x| x.id == tok) {
                cand.logit += b;
            }
        }
        c.sorted = false;
    }
}

/// Repetition, frequency and presence penalties over the last `last_n` accepted tokens
/// (llama.cpp `penalties`). Multiplying negative logits (instead of dividing) keeps the penalty a
/// penalty for them, as llama.cpp does.
pub struct Penalties {
    last_n: usize,
    repeat: f32,
    frequency: f32,
    presence: f32,
    history: VecDeque<u32>, // (<= last_n,) ring of recent tokens
    counts: Vec<u32>,       // (vocab,) occurrences of each token in `history`
}

impl Penalties {
    pub fn new(
        vocab_size: usize,
        last_n: usize,
        repeat: f32,
        frequency: f32,
        presence: f32,
    ) -> Self {
        let last_n = last_n.min(MAX_LAST_N);
        Penalties {
            last_n,
            repeat,
            frequency,
            presence,
            history: VecDeque::with_capacity(last_n),
            counts: vec![0; vocab_size],
        }
    }

    fn is_disabled(&self) -> bool {
        self.last_n == 0 || (self.repeat == 1.0 && self.frequency == 0.0 && self.presence == 0.0)
    }
}

impl Stage for Penalties {
    fn name(&self) -> &'static str {
        "penalties"
    }
    fn accept(&mut self, token: u32) {
        if self.last_n == 0 {
            return;
        }
        if self.history.len() >= self.last_n {
            if let Some(old) = self.history.pop_front() {
                self.counts[old as usize] -= 1;
            }
        }
        let t = token as usize;
        if t >= self.counts.len() {
            if t >= MAX_TOP_K {
                // Not a token of any vocabulary: nothing can be penalized for it.
                return;
            }
            // A token beyond the declared vocabulary: grow rather than fail (rare, allocates once).
            self.counts.resize(t + 1, 0);
        }
        self.counts[t] += 1;
        self.history.push_back(token);
    }
    fn apply(&mut self, c: &mut Candidates) {
        if self.is_disabled() {
            return;
        }
        for cand in c.data.iter_mut() {
            let n = self.counts.get(cand.id as usize).copied().unwrap_or(0);
            if n == 0 {
                continue;
            }
            if cand.logit <= 0.0 {
                cand.logit *= self.repeat;
            } else {
                cand.logit /= self.repeat;
            }
            cand.logit -= n as f32 * self.frequency + self.presence;
        }
        c.sorted = false;
    }
    fn reset(&mut self) {
        self.history.clear();
        self.counts.iter_mut().for_each(|n| *n = 0);
    }
}

/// Keep the `k` highest logits (llama.cpp `top-k`).
pub struct TopK {
    pub k: usize,
}

impl Stage for TopK {
    fn name(&self) -> &'static str {
        "top-k"
    }
    fn apply(&mut self, c: &mut Candidates) {
        if self.k == 0 {
            return;
        }
        c.keep_top(self.k);
    }
}

/// Nucleus sampling (llama.cpp `top-p`): the smallest high-probability prefix whose mass reaches
/// `p`, but at least `min_keep` tokens.
pub struct TopP {
    pub p: f32,
    pub min_keep: usize,
}

impl Stage for TopP {
    fn name(&self) -> &'static str {
        "top-p"
    }
    fn apply(&mut self, c: &mut Candidates) {
        if self.p >= 1.0 || c.is_empty() {
            return;
        }
        c.softmax(false);
        // The nucleus is usually small: sort a prefix of 256 first and only sort everything when
        // the mass is not reached within it (llama.cpp's adaptive top-k heuristic).
        let mut k = if c.sorted { c.len() } else { 256.min(c.len()) };
        c.sort_prefix(k);
        let mut cum = 0.0f32;
        let mut last = c.len();
        let mut i = 0;
        while i < c.len() {
            if i == k {
                c.sort();
                k = c.len();
            }
            cum += c.data[i].p;
            if cum >= self.p && i + 1 >= self.min_keep {
                last = i + 1;
                break;
            }
            i += 1;
        }
        if last == c.len() {
            c.sort();
        }
        c.data.truncate(last);
        c.sorted = true;
    }
}

/// Drop tokens less likely than `p` times the most likely one (llama.cpp `min-p`). Works on
/// logits: `p_i >= p * p_max` is `logit_i >= logit_max + ln p`.
pub struct MinP {
    pub p: f32,
    pub min_keep: usize,
}

impl Stage for MinP {
    fn name(&self) -> &'static str {
        "min-p"
    }
    fn apply(&mut self, c: &mut Candidates) {
        if self.p <= 0.0 || c.is_empty() {
            return;
        }
        if !c.sorted {
            // Unsorted: filter in place, keeping the order (as llama.cpp's unsorted path does).
            let max = c.data.iter().fold(f32::NEG_INFINITY, |m, x| m.max(x.logit));
            let min_logit = max + self.p.ln();
            let n = c.data.iter().filter(|x| x.logit >= min_logit).count();
            if n > 0 && n >= self.min_keep {
                c.data.retain(|x| x.logit >= min_logit);
                return;
            }
            c.sort();
        }
        let min_logit = c.data[0].logit + self.p.ln();
        let mut i = 1; // the first token always stays
        while i < c.len() {
            if c.data[i].logit < min_logit && i >= self.min_keep {
                break;
            }
            i += 1;
        }
        c.data.truncate(i);
    }
}

/// Locally typical sampling (llama.cpp `typical`, Meister et al. 2022): keep the tokens whose
/// surprisal is closest to the entropy until their mass exceeds `p`.
pub struct Typical {
    pub p: f32,
    pub min_keep: usize,
    order: Vec<(f32, u32)>, // (n_candidates,) scratch: (|surprisal - entropy|, index)
    kept: Vec<Candidate>,   // (n_kept,) scratch
}

impl Typical {
    pub fn new(p: f32, min_keep: usize) -> Self {
        Typical {
            p,
            min_keep,
            order: Vec::new(),
            kept: Vec::new(),
        }
    }
}

impl Stage for Typical {
    fn name(&self) -> &'static str {
        "typical"
    }
    fn apply(&mut self, c: &mut Candidates) {
        if self.p >= 1.0 || c.is_empty() {
            return;
        }
        c.softmax(true);
        // 0 * ln 0 is taken as 0 (the limit), not NaN.
        let entropy: f32 = c
            .data
            .iter()
            .filter(|x| x.p > 0.0)
            .map(|x| -x.p * x.p.ln())
            .sum();
        self.order.clear();
        self.order.extend(
            c.data
                .iter()
                .enumerate()
                .map(|(i, x)| ((-x.p.ln() - entropy).abs(), i as u32)),
        );
        self.order
            .sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut cum = 0.0f32;
        let mut last = self.order.len();
        for (i, &(_, idx)) in self.order.iter().enumerate() {
            cum += c.data[idx as usize].p;
            if cum > self.p && (self.min_keep == 0 || i + 1 >= self.min_keep) {
                last = i + 1;
                break;
            }
        }
        self.kept.clear();
        self.kept.extend(
            self.order[..last]
                .iter()
                .map(|&(_, idx)| c.data[idx as usize]),
        );
        c.data.clear();
        c.data.extend_from_slice(&self.kept);
        c.sorted = false;
    }
}

/// Divide the logits by the temperature (llama.cpp `temp`). At `t <= 0` keep only the highest
/// logit (the others go to -inf), which makes any later random stage deterministic.
pub struct Temperature {
    pub t: f32,
}

impl Stage for Temperature {
    fn name(&self) -> &'static str {
        "temp"
    }
    fn apply(&mut self, c: &mut Candidates) {
        if self.t <= 0.0 {
            if let Some(best) = c.argmax() {
                for (i, x) in c.data.iter_mut().enumerate() {
                    if i != best {
                        x.logit = f32::NEG_INFINITY;
                    }
                }
            }
            return;
        }
        if self.t == 1.0 {
            return;
        }
        let inv = 1.0 / self.t;
        c.data.iter_mut().for_each(|x| x.logit *= inv);
    }
}

/// The candidate at cumulative probability `u` (in [0, 1)) of the mass in `p`, which the caller
/// has computed. Walks in f64 to the first point past `u * total`: strictly "past" so a
/// zero-probability candidate is never chosen, even for `u == 0`. If everything was banned (no
/// mass), the best logit rather than a failure.
fn pick(c: &Candidates, u: f64) -> Option<usize> {
    let total: f64 = c.data.iter().map(|x| f64::from(x.p)).sum();
    if total.is_nan() || total <= 0.0 {
        return c.argmax();
    }
    let target = u * total;
    let mut run = 0.0f64;
    for (i, x) in c.data.iter().enumerate() {
        run += f64::from(x.p);
        if run > target {
            return Some(i);
        }
    }
    // Rounding can leave `run` a hair short of `target` at the very end: take the last token
    // with any mass.
    c.data.iter().rposition(|x| x.p > 0.0)
}

/// A random stream that can restart from its seed (what `reset` does for every random stage).
struct Seeded {
    seed: u64,
    rng: Rng,
}

impl Seeded {
    fn new(seed: u64) -> Self {
        Seeded {
            seed,
            rng: Rng::new(seed),
        }
    }

    fn restart(&mut self) {
        self.rng = Rng::new(self.seed);
    }
}

/// Final stage: draw from the softmax of the remaining logits (llama.cpp `dist`). One uniform draw
/// per call, also when one candidate is left, so the random stream does not depend on how far the
/// filters cut.
pub struct Dist {
    rng: Seeded,
}

impl Dist {
    pub fn new(seed: u64) -> Self {
        Dist {
            rng: Seeded::new(seed),
        }
    }
}

impl Stage for Dist {
    fn name(&self) -> &'static str {
        "dist"
    }
    fn apply(&mut self, c: &mut Candidates) {
        let u = self.rng.rng.next_f64();
        if c.is_empty() {
            c.selected = None;
            return;
        }
        c.softmax(false);
        c.selected = pick(c, u);
    }
    fn reset(&mut self) {
        self.rng.restart();
    }
}

/// Final stage for greedy decoding: the highest logit, the lowest id on ties. No randomness.
pub struct Greedy;

impl Stage for Greedy {
    fn name(&self) -> &'static str {
        "greedy"
    }
    fn apply(&mut self, c: &mut Candidates) {
        c.selected = c.argmax();
    }
}

/// Top-n-sigma (Tang et al. 2024, llama.cpp `top-n-sigma`): mask (set to -inf) every logit more
/// than `n` standard deviations below the highest. Mean and deviation are over the finite
/// logits only, so earlier bans do not skew them. `n <= 0` does nothing.
pub struct TopNSigma {
    pub n: f32,
}

impl Stage for TopNSigma {
    fn name(&self) -> &'static str {
        "top-n-sigma"
    }
    fn apply(&mut self, c: &mut Candidates) {
        if self.n <= 0.0 || c.len() <= 1 {
            return;
        }
        let mut max = c.data[0].logit;
        let mut sum = 0.0f32;
        let mut count = 0usize;
        for x in c.data.iter().filter(|x| x.logit != f32::NEG_INFINITY) {
            max = max.max(x.logit);
            sum += x.logit;
            count += 1;
        }
        let mean = if count > 0 { sum / count as f32 } else { 0.0 };
        // llama.cpp squares in double (C++ `pow(float, int)`) and accumulates in float.
        let mut acc = 0.0f32;
        for x in c.data.iter().filter(|x| x.logit != f32::NEG_INFINITY) {
            acc = (f64::from(acc) + f64::from(x.logit - mean).powi(2)) as f32;
        }
        let std = if count > 0 {
            (acc / count as f32).sqrt()
        } else {
            0.0
        };
        let cut = max - self.n * std;
        for x in c.data.iter_mut() {
            if x.logit < cut {
                x.logit = f32::NEG_INFINITY;
            }
        }
    }
}

/// A second random stream from the same user seed, so that XTC's coin and the final draw are
/// not the same numbers (llama.cpp seeds both with the seed; with its mt19937 that is harmless,
/// with one shared xoshiro stream the two decisions would be correlated).
fn derived_seed(seed: u64, stream: u64) -> u64 {
    let mut s = seed ^ stream;
    splitmix64(&mut s)
}

/// XTC, "exclude top choices" (llama.cpp `xtc`): with probability `probability`, of the
/// candidates whose probability is at least `threshold`, drop all but the least likely one.
/// Nothing happens when fewer than two would be over the threshold, or when cutting would leave
/// fewer than `min_keep`.
pub struct Xtc {
    pub probability: f32,
    pub threshold: f32,
    pub min_keep: usize,
    rng: Seeded,
}

impl Xtc {
    const STREAM: u64 = 0x5854_435f_434f_494e; // "XTC_COIN"

    pub fn new(probability: f32, threshold: f32, min_keep: usize, seed: u64) -> Self {
        Xtc {
            probability,
            threshold,
            min_keep,
            rng: Seeded::new(derived_seed(seed, Self::STREAM)),
        }
    }
}

impl Stage for Xtc {
    fn name(&self) -> &'static str {
        "xtc"
    }
    fn apply(&mut self, c: &mut Candidates) {
        // As llama.cpp: no coin is drawn when the stage cannot act, so the stream only advances
        // on tokens where XTC was possible.
        if self.probability <= 0.0 || self.threshold > 0.5 || c.len() < 2 {
            return;
        }
        let chance = self.rng.rng.next_f32();
        if chance > self.probability {
            return;
        }
        c.softmax(true);
        // The last of the leading run at or above the threshold: everything before it goes.
        let mut last = 0;
        for (i, x) in c.data.iter().enumerate() {
            if x.p >= self.threshold {
                last = i;
            } else {
                break;
            }
        }
        if last > 0 && c.len() - last >= self.min_keep {
            c.data.drain(..last);
        }
    }
    fn reset(&mut self) {
        self.rng.restart();
    }
}

/// Dynamic temperature (llama.cpp `temp-ext`, "entropy-based" dynatemp): the temperature is
/// `lo + (hi - lo) * (H / H_max)^exponent`, with `lo = max(0, t - range)`, `hi = t + range`, `H`
/// the entropy of the candidates' softmax and `H_max = ln(n)`. Leaves the candidates sorted with
/// their probabilities at the new temperature.
pub struct DynamicTemperature {
    pub t: f32,
    pub range: f32,
    pub exponent: f32,
}

impl Stage for DynamicTemperature {
    fn name(&self) -> &'static str {
        "temp-ext"
    }
    fn apply(&mut self, c: &mut Candidates) {
        if self.range <= 0.0 {
            Temperature { t: self.t }.apply(c);
            return;
        }
        if c.len() <= 1 {
            return;
        }
        let lo = (self.t - self.range).max(0.0);
        let hi = self.t + self.range;
        let max_entropy = -(1.0f32 / c.len() as f32).ln();
        c.softmax(true);
        let entropy: f32 = c
            .data
            .iter()
            .filter(|x| x.p > 0.0)
            .map(|x| -x.p * x.p.ln())
            .sum();
        let t = lo + (hi - lo) * (entropy / max_entropy).powf(self.exponent);
        Temperature { t }.apply(c);
        // Probabilities at the new temperature, in double as llama.cpp does (the list is still
        // sorted: scaling by a positive factor, or the argmax mask at t = 0, keeps the order).
        let max = f64::from(c.data[0].logit);
        let mut sum = 0.0f64;
        for x in c.data.iter_mut() {
            let p = (f64::from(x.logit) - max).exp();
            x.p = p as f32;
            sum += p;
        }
        for x in c.data.iter_mut() {
            x.p = (f64::from(x.p) / sum) as f32;
        }
    }
}

/// What DRY needs from a vocabulary to turn its breaker strings into token sequences. cria's
/// tokenizer implements it in the caller; cria-engine does not depend on the tokenizer.
pub trait TokenText {
    /// Number of tokens in the vocabulary.
    fn n_tokens(&self) -> usize;
    /// The text of one token, special tokens rendered (llama.cpp `detokenize({id}, true)`),
    /// written into `out` (cleared first).
    fn piece(&self, id: u32, out: &mut Vec<u8>);
    /// Tokenize text without BOS and without parsing special tokens (llama.cpp
    /// `tokenize(text, false, false)`). `text` can end in the middle of a UTF-8 character when a
    /// breaker is cut at a token boundary; decode it lossily.
    fn tokenize(&self, text: &[u8]) -> Vec<u32>;
}

/// DRY's sequence breakers as token sequences: a head token and the tail that must follow it.
/// An empty tail is a single-token breaker.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DryBreakers {
    seqs: Vec<(u32, Vec<u32>)>, // sorted by head, no duplicates
}

impl DryBreakers {
    /// llama.cpp's limits: breakers are cut to 40 bytes and tails to 20 tokens, which keeps the
    /// restart scan linear in the history length.
    const MAX_BYTES: usize = 40;
    const MAX_TAIL: usize = 20;

    /// Breakers given directly as token sequences (head first), as llama.cpp's tests give them.
    pub fn from_token_sequences(seqs: &[Vec<u32>]) -> Self {
        let mut b = DryBreakers::default();
        for s in seqs.iter().filter(|s| !s.is_empty()) {
            b.insert(s[0], s[1..].to_vec());
        }
        b
    }

    /// Breaker strings the way llama.cpp processes them (koboldcpp's method): every token whose
    /// text contains a breaker is a single-token breaker; a token whose text ends with the start
    /// of a breaker is a head, and the tokenization of the rest of the breaker its tail.
    pub fn from_strings(breakers: &[String], vocab: &dyn TokenText) -> Self {
        let mut b = DryBreakers::default();
        let breakers: Vec<&[u8]> = breakers
            .iter()
            .take(MAX_DRY_BREAKERS)
            .map(|s| &s.as_bytes()[..s.len().min(Self::MAX_BYTES)])
            .filter(|s| !s.is_empty())
            .collect();
        if breakers.is_empty() {
            return b;
        }
        let mut word = Vec::new();
        // One pass over the vocabulary (each token's text is made once).
        for id in 0..vocab.n_tokens() as u32 {
            vocab.piece(id, &mut word);
            for s in &breakers {
                if !word.contains(&s[0]) {
                    continue;
                }
                if word.windows(s.len()).any(|w| w == *s) {
                    b.insert(id, Vec::new());
                    continue;
                }
                // Each position where the token's text ends with a proper prefix of the breaker.
                for pos in 0..word.len() {
                    let rest = &word[pos..];
                    if rest.len() < s.len() && s.starts_with(rest) {
                        let mut tail = vocab.tokenize(&s[rest.len()..]);
                        tail.truncate(Self::MAX_TAIL);
                        b.insert(id, tail);
                    }
                }
            }
        }
        b
    }

    fn insert(&mut self, head: u32, tail: Vec<u32>) {
        let at = self.seqs.partition_point(|(h, t)| (*h, t) < (head, &tail));
        if self
            .seqs
            .get(at)
            .is_some_and(|(h, t)| *h == head && *t == tail)
        {
            return;
        }
        self.seqs.insert(at, (head, tail));
    }

    /// The tails of breakers that start with `head`.
    fn tails(&self, head: u32) -> impl Iterator<Item = &[u32]> {
        let lo = self.seqs.partition_point(|(h, _)| *h < head);
        self.seqs[lo..]
            .iter()
            .take_while(move |(h, _)| *h == head)
            .map(|(_, t)| t.as_slice())
    }

    fn is_single_token(&self, token: u32) -> bool {
        self.tails(token).any(|t| t.is_empty())
    }

    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }
}

/// DRY, "don't repeat yourself" (koboldcpp, llama.cpp `dry`): when the recent history ends with
/// a sequence that already occurred earlier, the token that followed it then gets its logit
/// lowered by `multiplier * base^(length - allowed_length)` for repeats longer than
/// `allowed_length`. A sequence breaker in the history limits how far back a repeat can reach.
///
/// Buffers are sized at construction (history and repeat lengths by `last_n`, the per-token
/// maximum by the vocabulary), so `apply` and `accept` allocate nothing.
pub struct Dry {
    multiplier: f32,
    base: f32,
    allowed_length: usize,
    last_n: usize,
    breakers: DryBreakers,
    history: VecDeque<u32>, // (<= last_n,) recent tokens, oldest first
    repeat: Vec<usize>,     // (last_n,) scratch: repeat length ending at each history position
    max_repeat: Vec<u32>,   // (vocab,) longest repeat each token would extend; NONE = not one
    touched: Vec<u32>,      // (<= last_n,) tokens set in `max_repeat`, to clear them after
}

impl Dry {
    const NONE: u32 = u32::MAX;

    pub fn new(
        vocab_size: usize,
        multiplier: f32,
        base: f32,
        allowed_length: usize,
        last_n: usize,
        breakers: DryBreakers,
    ) -> Self {
        let enabled = multiplier != 0.0 && base >= 1.0 && last_n > 0;
        let n = if enabled { last_n.min(MAX_LAST_N) } else { 0 };
        Dry {
            multiplier,
            base,
            allowed_length,
            last_n: n,
            breakers,
            history: VecDeque::with_capacity(n),
            repeat: vec![0; n],
            max_repeat: if enabled {
                vec![Self::NONE; vocab_size]
            } else {
                Vec::new()
            },
            touched: Vec::with_capacity(n),
        }
    }

    fn is_disabled(&self) -> bool {
        self.last_n == 0
    }

    /// The `i`-th most recent token (0 = the last one).
    fn recent(&self, i: usize) -> u32 {
        self.history[self.history.len() - 1 - i]
    }

    /// How far back a repeat may reach: up to (not including) the most recent breaker.
    fn repeat_limit(&self, n: usize) -> usize {
        for i in 0..n {
            let mut longest: Option<usize> = None;
            for tail in self.breakers.tails(self.recent(i)) {
                // The tail follows the head, so it sits among the `i` tokens after it.
                let len = tail.len();
                if longest.is_some_and(|l| len <= l) || len > i {
                    continue;
                }
                if tail
                    .iter()
                    .enumerate()
                    .all(|(k, &t)| t == self.recent(i - k - 1))
                {
                    longest = Some(len);
                }
            }
            if let Some(len) = longest {
                return i - len;
            }
        }
        n
    }
}

impl Stage for Dry {
    fn name(&self) -> &'static str {
        "dry"
    }
    fn accept(&mut self, token: u32) {
        if self.is_disabled() {
            return;
        }
        if self.history.len() == self.last_n {
            self.history.pop_front();
        }
        self.history.push_back(token);
    }
    fn apply(&mut self, c: &mut Candidates) {
        let n = self.history.len();
        if self.is_disabled() || n <= self.allowed_length {
            return;
        }
        let limit = self.repeat_limit(n);
        if limit < self.allowed_length {
            return;
        }
        // Z-algorithm over the history read backwards (s[j] = recent(j)): z[k] is how many
        // tokens ending `k` back match the tokens ending now, capped at `limit`. Stored by
        // chronological position, repeat[n - 1 - k]. Linear time: `lo..=hi` is the rightmost
        // window known to match a prefix, and positions inside it reuse earlier values.
        let last = n - 1;
        let (mut lo, mut hi) = (0usize, 0usize);
        self.repeat[..n].iter_mut().for_each(|r| *r = 0);
        for k in 1..n {
            if k > hi {
                let mut m = 0;
                while m + k < n && self.recent(m) == self.recent(m + k) {
                    m += 1;
                }
                self.repeat[last - k] = m.min(limit);
                if m > 0 {
                    lo = k;
                    hi = k + m - 1;
                }
            } else {
                let mirrored = self.repeat[last - (k - lo)];
                let inside = hi - k + 1;
                if mirrored < inside {
                    self.repeat[last - k] = mirrored.min(limit);
                } else {
                    let mut j = hi + 1;
                    while j < n && self.recent(j) == self.recent(j - k) {
                        j += 1;
                    }
                    self.repeat[last - k] = (j - k).min(limit);
                    lo = k;
                    hi = j - 1;
                }
            }
        }
        // The token after each repeat (the next one in time) is the one that would extend it.
        for i in 0..n - 1 {
            let len = self.repeat[i];
            if len >= self.allowed_length {
                let token = self.recent(n - 2 - i) as usize;
                if token >= self.max_repeat.len() {
                    continue; // outside the vocabulary: no candidate can carry it
                }
                let slot = &mut self.max_repeat[token];
                if *slot == Self::NONE {
                    self.touched.push(token as u32);
                    *slot = len as u32;
                } else if (*slot as usize) < len {
                    *slot = len as u32;
                }
            }
        }
        // pow(base, e) overflows f32 past e = ln(f32::MAX) / ln(base): clamp there (llama.cpp).
        const F32_MAX_LN: f32 = 88.722_84;
        let max_exponent = if self.base > 1.000_001 {
            (F32_MAX_LN / self.base.ln()) as i64
        } else {
            0
        };
        for x in c.data.iter_mut() {
            let Some(&len) = self.max_repeat.get(x.id as usize) else {
                continue;
            };
            if len == Self::NONE || self.breakers.is_single_token(x.id) {
                continue;
            }
            let mut e = i64::from(len) - self.allowed_length as i64;
            if max_exponent > 0 && e > max_exponent {
                e = max_exponent;
            }
            // llama.cpp: float * std::pow(float, int), which C++ evaluates in double.
            let penalty = f64::from(self.multiplier) * f64::from(self.base).powf(e as f64);
            x.logit -= penalty as f32;
        }
        for &t in &self.touched {
            self.max_repeat[t as usize] = Self::NONE;
        }
        self.touched.clear();
        c.sorted = false;
    }
    fn reset(&mut self) {
        self.history.clear();
    }
}

/// Which Mirostat: 1.0 needs the vocabulary size and the number of top probabilities its Zipf
/// estimate reads.
#[derive(Debug, Clone, Copy, PartialEq)]
enum MirostatVersion {
    V1 { n_vocab: usize, m: usize },
    V2,
}

/// Mirostat (Basu et al. 2021), a final stage that steers the surprise of the drawn tokens
/// toward `tau`, keeping a running target `mu` (starting at `2 tau`):
///
/// - 1.0 (llama.cpp `mirostat`): estimate the Zipf exponent from the top `m` probabilities,
///   keep the top-k that gives surprise `mu`, draw;
/// - 2.0 (llama.cpp `mirostat-v2`): keep the tokens whose surprise `-log2 p` is at most `mu`
///   (at least one), draw.
///
/// Then `mu -= eta * (surprise of the drawn token - tau)`.
pub struct Mirostat {
    version: MirostatVersion,
    tau: f32,
    eta: f32,
    mu: f32,
    rng: Seeded,
}

impl Mirostat {
    /// Mirostat 1.0 over a vocabulary of `n_vocab` (llama.cpp uses `m = 100`).
    pub fn v1(n_vocab: usize, seed: u64, tau: f32, eta: f32, m: usize) -> Self {
        Self::build(MirostatVersion::V1 { n_vocab, m }, seed, tau, eta)
    }

    /// Mirostat 2.0.
    pub fn v2(seed: u64, tau: f32, eta: f32) -> Self {
        Self::build(MirostatVersion::V2, seed, tau, eta)
    }

    fn build(version: MirostatVersion, seed: u64, tau: f32, eta: f32) -> Self {
        Mirostat {
            version,
            tau,
            eta,
            mu: 2.0 * tau,
            rng: Seeded::new(seed),
        }
    }

    /// The current target surprise.
    pub fn mu(&self) -> f32 {
        self.mu
    }

    /// The truncation step alone: sort, keep what `mu` allows, renormalize. `apply` is this, a
    /// draw, then [`Mirostat::update`] with the drawn token's probability.
    pub fn truncate(&self, c: &mut Candidates) {
        if c.is_empty() {
            return;
        }
        c.softmax(true);
        let keep = match self.version {
            MirostatVersion::V1 { n_vocab, m } => {
                let mut sum_tb = 0.0f32;
                let mut sum_tt = 0.0f32;
                for i in 0..m.saturating_sub(1).min(c.len() - 1) {
                    let t = ((i + 2) as f32 / (i + 1) as f32).ln();
                    let b = (c.data[i].p / c.data[i + 1].p).ln();
                    sum_tb += t * b;
                    sum_tt += t * t;
                }
                let s_hat = sum_tb / sum_tt;
                let eps = s_hat - 1.0;
                let k = ((eps * 2f32.powf(self.mu)) / (1.0 - (n_vocab as f32).powf(-eps)))
                    .powf(1.0 / s_hat);
                // `as` saturates and sends NaN to 0 (one candidate gives 0/0): at least one.
                (k as i64).max(1) as usize
            }
            MirostatVersion::V2 => c
                .data
                .iter()
                .position(|x| -x.p.log2() > self.mu)
                .unwrap_or(c.len())
                .max(1),
        };
        c.keep_top(keep);
        c.softmax(true);
    }

    /// Move `mu` by the surprise of the chosen token's probability `p`.
    pub fn update(&mut self, p: f32) {
        self.mu -= self.eta * (-p.log2() - self.tau);
    }
}

impl Stage for Mirostat {
    fn name(&self) -> &'static str {
        match self.version {
            MirostatVersion::V1 { .. } => "mirostat",
            MirostatVersion::V2 => "mirostat-v2",
        }
    }
    fn apply(&mut self, c: &mut Candidates) {
        let u = self.rng.rng.next_f64();
        self.truncate(c);
        c.selected = pick(c, u);
        if let Some(i) = c.selected {
            self.update(c.data[i].p);
        }
    }
    fn reset(&mut self) {
        self.mu = 2.0 * self.tau;
        self.rng.restart();
    }
}

// ---------------------------------------------------------------------------------------------
// The chain
// ---------------------------------------------------------------------------------------------

/// A sampler: the chain of stages plus the reusable candidate buffer.
///
/// `sample` does not record the token it returns: call `accept` for every token that enters the
/// context (the prompt's too, if the penalties should see them, as llama-cli does).
pub struct Sampler {
    stages: Vec<Box<dyn Stage>>,
    cands: Candidates,
}

impl Sampler {
    /// The default llama.cpp chain for `cfg`. `vocab_size` sizes the candidate buffer and the
    /// penalty counters; biases for ids outside the vocabulary are ignored. DRY runs without
    /// sequence breakers here (turning breaker strings into tokens needs the vocabulary): use
    /// [`Sampler::with_vocab`] or [`Sampler::with_breakers`] to have them.
    pub fn new(cfg: SamplerConfig, vocab_size: usize) -> Self {
        Self::with_breakers(cfg, vocab_size, DryBreakers::default())
    }

    /// The default chain, with `cfg.dry_sequence_breakers` tokenized against `vocab` as
    /// llama.cpp does (only when DRY is on: the scan reads every token's text).
    pub fn with_vocab(cfg: SamplerConfig, vocab: &dyn TokenText) -> Self {
        let breakers = if cfg.dry_enabled() && cfg.mirostat == 0 {
            DryBreakers::from_strings(&cfg.dry_sequence_breakers, vocab)
        } else {
            DryBreakers::default()
        };
        Self::with_breakers(cfg, vocab.n_tokens(), breakers)
    }

    /// The default chain with DRY breakers already processed (e.g. kept across `/set` rebuilds).
    ///
    /// llama.cpp's order (`common_sampler_init` with its default `samplers` list):
    /// logit-bias, penalties, dry, top-n-sigma, top-k, typical, top-p, min-p, xtc, temperature
    /// (`temp-ext` when dynamic), dist. With mirostat: logit-bias, temp, mirostat(-v2). Stages
    /// that are off are left out. Greedy (temperature <= 0, no dynatemp) ends in [`Greedy`] and
    /// leaves out the stages that always keep the best token (top-n-sigma, top-k, top-p, min-p).
    pub fn with_breakers(cfg: SamplerConfig, vocab_size: usize, breakers: DryBreakers) -> Self {
        let mut stages: Vec<Box<dyn Stage>> = Vec::new();
        let bias: Vec<(u32, f32)> = cfg
            .logit_bias
            .iter()
            .copied()
            .filter(|&(t, _)| (t as usize) < vocab_size)
            .collect();
        if !bias.is_empty() {
            stages.push(Box::new(LogitBias { bias }));
        }
        let greedy = cfg.is_greedy();
        if cfg.mirostat != 0 {
            if greedy {
                stages.push(Box::new(Greedy));
            } else {
                stages.push(Box::new(Temperature { t: cfg.temperature }));
                stages.push(Box::new(if cfg.mirostat == 1 {
                    // m = 100: llama.cpp's fixed sample size for the Zipf estimate.
                    Mirostat::v1(
                        vocab_size,
                        cfg.seed,
                        cfg.mirostat_tau,
                        cfg.mirostat_eta,
                        100,
                    )
                } else {
                    Mirostat::v2(cfg.seed, cfg.mirostat_tau, cfg.mirostat_eta)
                }));
            }
            return Self::with_stages(stages, vocab_size);
        }
        let penalties = Penalties::new(
            vocab_size,
            cfg.repeat_last_n,
            cfg.repeat_penalty,
            cfg.frequency_penalty,
            cfg.presence_penalty,
        );
        if !penalties.is_disabled() {
            stages.push(Box::new(penalties));
        }
        if cfg.dry_enabled() {
            stages.push(Box::new(Dry::new(
                vocab_size,
                cfg.dry_multiplier,
                cfg.dry_base,
                cfg.dry_allowed_length,
                cfg.dry_penalty_last_n,
                breakers,
            )));
        }
        if !greedy && cfg.top_n_sigma > 0.0 {
            stages.push(Box::new(TopNSigma { n: cfg.top_n_sigma }));
        }
        if !greedy && cfg.top_k > 0 {
            stages.push(Box::new(TopK { k: cfg.top_k }));
        }
        if cfg.typical_p < 1.0 {
            stages.push(Box::new(Typical::new(cfg.typical_p, cfg.min_keep)));
        }
        if !greedy && cfg.top_p < 1.0 {
            stages.push(Box::new(TopP {
                p: cfg.top_p,
                min_keep: cfg.min_keep,
            }));
        }
        if !greedy && cfg.min_p > 0.0 {
            stages.push(Box::new(MinP {
                p: cfg.min_p,
                min_keep: cfg.min_keep,
            }));
        }
        if cfg.xtc_enabled() {
            stages.push(Box::new(Xtc::new(
                cfg.xtc_probability,
                cfg.xtc_threshold,
                cfg.min_keep,
                cfg.seed,
            )));
        }
        if greedy {
            stages.push(Box::new(Greedy));
        } else {
            if cfg.dynatemp_range > 0.0 {
                stages.push(Box::new(DynamicTemperature {
                    t: cfg.temperature,
                    range: cfg.dynatemp_range,
                    exponent: cfg.dynatemp_exponent,
                }));
            } else {
                stages.push(Box::new(Temperature { t: cfg.temperature }));
            }
            stages.push(Box::new(Dist::new(cfg.seed)));
        }
        Self::with_stages(stages, vocab_size)
    }

    /// A custom chain. The last stage must set `selected` (as [`Dist`] and [`Greedy`] do);
    /// if none does, `sample` falls back to the highest remaining logit.
    pub fn with_stages(stages: Vec<Box<dyn Stage>>, vocab_size: usize) -> Self {
        Sampler {
            stages,
            cands: Candidates {
                data: Vec::with_capacity(vocab_size),
                sorted: false,
                selected: None,
            },
        }
    }

    /// Choose the next token from one row of logits (token id = index). An empty row gives 0.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        self.sample_masked(logits, &mut |_| {})
    }

    /// Like `sample`, but `mask` edits the candidates (e.g. sets the logits of tokens a grammar
    /// forbids to `-inf`) before any stage runs. A constrained caller first tries `sample` and
    /// only comes here when the token it got is not allowed, as llama.cpp does.
    pub fn sample_masked(&mut self, logits: &[f32], mask: &mut dyn FnMut(&mut Candidates)) -> u32 {
        self.cands.fill(logits);
        mask(&mut self.cands);
        for s in self.stages.iter_mut() {
            s.apply(&mut self.cands);
        }
        let chosen = self.cands.selected.or_else(|| self.cands.argmax());
        chosen
            .and_then(|i| self.cands.data.get(i))
            .map_or(0, |c| c.id)
    }

    /// Record a token that entered the context (for the penalties and other history stages).
    pub fn accept(&mut self, token: u32) {
        for s in self.stages.iter_mut() {
            s.accept(token);
        }
    }

    /// Forget the history and restart the random stream from the seed.
    pub fn reset(&mut self) {
        for s in self.stages.iter_mut() {
            s.reset();
        }
    }

    /// The candidates as the last `sample` left them (after the final stage: the survivors with
    /// their probabilities), e.g. for log-probs.
    pub fn candidates(&self) -> &Candidates {
        &self.cands
    }

    /// The chain as text, llama.cpp style: "logits -> top-k -> ... -> dist".
    pub fn describe(&self) -> String {
        let mut s = String::from("logits");
        for st in &self.stages {
            s.push_str(" -> ");
            s.push_str(st.name());
        }
        s
    }
}

// ---------------------------------------------------------------------------------------------
// Random numbers
// ---------------------------------------------------------------------------------------------

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xoshiro256** (Blackman & Vigna), seeded by splitmix64 as its authors recommend. Small, fast,
/// and bit-identical on every platform, which `std`-less determinism needs.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut sm = seed;
        let s = [
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
        ];
        Rng { s }
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 24 random bits (an f32's mantissa).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    //! Stage tests marked "llama.cpp" are the cases of llama.cpp's tests/test-sampling.cpp, with
    //! its expected probabilities and its 1e-5 tolerance: inputs are logits ln(p), each stage
    //! runs, then a softmax over the survivors (what its `dist` stage leaves in `p`).
    use super::*;

    #[test]
    fn bias_outside_vocab_is_the_first_id_past_the_end() {
        let c = SamplerConfig {
            logit_bias: vec![(1, 1.0), (10, -1.0), (12, 0.5)],
            ..Default::default()
        };
        assert_eq!(c.bias_outside_vocab(11), Some(12));
        assert_eq!(c.bias_outside_vocab(10), Some(10));
        assert_eq!(c.bias_outside_vocab(13), None);
    }

    fn from_probs(probs: &[f32]) -> Candidates {
        let logits: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
        let mut c = Candidates::default();
        c.fill(&logits);
        c
    }

    fn check(c: &Candidates, expected: &[f32]) {
        let got: Vec<f32> = c.data.iter().map(|x| x.p).collect();
        assert_eq!(
            got.len(),
            expected.len(),
            "survivors {got:?}, expected {expected:?}"
        );
        for (g, e) in got.iter().zip(expected) {
            assert!(
                (g - e).abs() < 1e-5,
                "probabilities {got:?}, expected {expected:?}"
            );
        }
    }

    /// Run `stage` then a seeded `dist` (as the llama.cpp tests do) and check the probabilities.
    fn run(probs: &[f32], mut stage: impl Stage, expected: &[f32]) {
        let mut c = from_probs(probs);
        stage.apply(&mut c);
        Dist::new(0).apply(&mut c);
        check(&c, expected);
        let sel = c.selected.expect("dist selects");
        assert!(c.data[sel].p > 0.0, "selected a zero-probability token");
    }

    const P4: [f32; 4] = [0.1, 0.2, 0.3, 0.4];

    #[test]
    fn temperature_llama_cpp() {
        run(&P4, Temperature { t: 1.0 }, &[0.1, 0.2, 0.3, 0.4]);
        run(&P4, Temperature { t: 0.0 }, &[0.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn temperature_scales_logits() {
        // softmax(l / 2) = p^(1/2) normalized.
        let mut c = from_probs(&P4);
        Temperature { t: 2.0 }.apply(&mut c);
        c.softmax(false);
        let z: f32 = P4.iter().map(|p| p.sqrt()).sum();
        let expected: Vec<f32> = P4.iter().map(|p| p.sqrt() / z).collect();
        check(&c, &expected);
    }

    #[test]
    fn top_k_llama_cpp() {
        run(&P4, TopK { k: 1 }, &[1.0]);
        run(&P4, TopK { k: 3 }, &[0.44444, 0.33333, 0.22222]);
        run(&P4, TopK { k: 4 }, &[0.4, 0.3, 0.2, 0.1]);
        run(&P4, TopK { k: 0 }, &[0.1, 0.2, 0.3, 0.4]);
    }

    #[test]
    fn top_k_two_leaves_two_highest() {
        let mut c = Candidates::default();
        c.fill(&[0.5, 3.0, -1.0, 2.0, 1.0]);
        TopK { k: 2 }.apply(&mut c);
        let ids: Vec<u32> = c.data.iter().map(|x| x.id).collect();
        assert_eq!(ids, [1, 3]);
        assert!(c.sorted);
    }

    #[test]
    fn top_k_large_vocab_matches_full_sort() {
        // Selection + prefix sort must give exactly the first k of a full sort, ties included.
        let mut rng = Rng::new(7);
        let logits: Vec<f32> = (0..5000)
            .map(|_| (rng.next_u64() % 50) as f32 * 0.25)
            .collect();
        let mut full = Candidates::default();
        full.fill(&logits);
        full.sort();
        for k in [1, 2, 39, 40, 41, 256, 4999, 5000, 6000] {
            let mut c = Candidates::default();
            c.fill(&logits);
            TopK { k }.apply(&mut c);
            let n = k.min(5000);
            assert_eq!(c.data, full.data[..n], "k = {k}");
        }
    }

    #[test]
    fn top_p_llama_cpp() {
        run(
            &P4,
            TopP {
                p: 0.0,
                min_keep: 0,
            },
            &[1.0],
        );
        run(
            &P4,
            TopP {
                p: 0.7,
                min_keep: 0,
            },
            &[0.571429, 0.428571],
        );
        run(
            &P4,
            TopP {
                p: 0.8,
                min_keep: 0,
            },
            &[0.44444, 0.33333, 0.22222],
        );
        run(
            &P4,
            TopP {
                p: 1.0,
                min_keep: 0,
            },
            &[0.1, 0.2, 0.3, 0.4],
        );
    }

    #[test]
    fn top_p_min_keep() {
        run(
            &P4,
            TopP {
                p: 0.0,
                min_keep: 3,
            },
            &[0.44444, 0.33333, 0.22222],
        );
    }

    #[test]
    fn top_p_beyond_adaptive_prefix() {
        // 1000 equal tokens: p = 0.5 needs 500 of them, past the 256-token first try.
        let logits = vec![0.0f32; 1000];
        let mut c = Candidates::default();
        c.fill(&logits);
        TopP {
            p: 0.5,
            min_keep: 0,
        }
        .apply(&mut c);
        // Cumulative float sums of 0.001 reach 0.5 at 500 tokens, give or take one for rounding.
        assert!((499..=501).contains(&c.len()), "kept {}", c.len());
        // Ties sort by id, so the survivors are the lowest ids in order.
        assert!(c.data.iter().enumerate().all(|(i, x)| x.id == i as u32));
    }

    /// llama.cpp's `test_sampler_queue`: logits ln(id) over 10000 tokens (id 0 is -inf), the
    /// stages in the order the string gives ('k', 'p', 'm'), each followed by `dist`; after each
    /// stage the size and the first/last ids must be the ones worked out in closed form.
    fn sampler_queue(n_vocab: i64, seq: &str, top_k: i64, top_p: f32, min_p: f32) {
        let logits: Vec<f32> = (0..n_vocab).map(|i| (i as f32).ln()).collect();
        let mut c = Candidates::default();
        c.fill(&logits);
        let mut min_token_id: i64 = 0;
        let max_token_id = n_vocab - 1;
        for s in seq.chars() {
            match s {
                'k' => TopK { k: top_k as usize }.apply(&mut c),
                'p' => TopP {
                    p: top_p,
                    min_keep: 1,
                }
                .apply(&mut c),
                'm' => MinP {
                    p: min_p,
                    min_keep: 1,
                }
                .apply(&mut c),
                _ => unreachable!(),
            }
            Dist::new(0).apply(&mut c);
            let size = c.len() as i64;
            let first = c.data[0].id as i64;
            let last = c.data[size as usize - 1].id as i64;
            let ctx = format!("queue {seq:?} at {s:?}: size {size}, first {first}, last {last}");
            match s {
                'k' => {
                    let expected = size.min(top_k);
                    min_token_id = min_token_id.max(n_vocab - top_k);
                    assert_eq!(size, expected, "{ctx}");
                    assert_eq!(first, max_token_id, "{ctx}");
                    assert_eq!(last, min_token_id, "{ctx}");
                }
                'p' => {
                    let divisor =
                        n_vocab * (n_vocab - 1) / 2 - min_token_id * (min_token_id - 1) / 2;
                    let target = (top_p * divisor as f32).ceil() as i64;
                    min_token_id = n_vocab;
                    let mut expected = 0;
                    let mut cumsum = 0;
                    loop {
                        min_token_id -= 1;
                        expected += 1;
                        cumsum += min_token_id;
                        if cumsum >= target {
                            break;
                        }
                    }
                    if min_token_id == 1 {
                        min_token_id -= 1;
                        expected += 1;
                    }
                    assert_eq!(size, expected, "{ctx}");
                    assert!(!c.sorted || first == max_token_id, "{ctx}");
                    assert!(!c.sorted || last == min_token_id, "{ctx}");
                }
                'm' => {
                    let mut expected = ((1.0 - min_p) * n_vocab as f32).ceil() as i64;
                    expected = expected.max(1).min(size);
                    min_token_id = ((min_p * n_vocab as f32).floor() as i64).max(1);
                    min_token_id = min_token_id.max(n_vocab - size).min(n_vocab - 1);
                    assert_eq!(size, expected, "{ctx}");
                    assert!(!c.sorted || first == max_token_id, "{ctx}");
                    assert!(!c.sorted || last == min_token_id, "{ctx}");
                }
                _ => unreachable!(),
            }
        }
    }

    #[test]
    fn sampler_queue_llama_cpp() {
        let mp_edge = 9997.9f32 / 9999.0;
        sampler_queue(10000, "k", 10000, 1.0, 1.0);
        sampler_queue(10000, "k", 1, 1.0, 1.0);
        sampler_queue(10000, "p", 10000, 1.0, 1.0);
        sampler_queue(10000, "p", 10000, 0.0, 1.0);
        sampler_queue(10000, "m", 10000, 1.0, 1.0);
        sampler_queue(10000, "m", 10000, 1.0, 1e-12);
        sampler_queue(10000, "k", 100, 1.0, 1.0);
        sampler_queue(10000, "p", 10000, 0.0003, 1.0);
        sampler_queue(10000, "p", 10000, 0.8, 1.0);
        sampler_queue(10000, "m", 10000, 1.0, mp_edge);
        sampler_queue(10000, "m", 10000, 1.0, 0.1);
        for seq in [
            "kp", "km", "pk", "pm", "mk", "mp", "kpm", "kmp", "pkm", "pmk", "mkp", "mpk",
        ] {
            sampler_queue(10000, seq, 100, 0.8, 0.1);
        }
        sampler_queue(10000, "mp", 100, 0.8, mp_edge);
    }

    #[test]
    fn min_p_llama_cpp() {
        let cases: [(f32, &[f32]); 9] = [
            (0.00, &[0.1, 0.2, 0.3, 0.4]),
            (0.24, &[0.1, 0.2, 0.3, 0.4]),
            (0.26, &[0.2 / 0.9, 0.3 / 0.9, 0.4 / 0.9]),
            (0.49, &[0.2 / 0.9, 0.3 / 0.9, 0.4 / 0.9]),
            (0.51, &[0.3 / 0.7, 0.4 / 0.7]),
            (0.74, &[0.3 / 0.7, 0.4 / 0.7]),
            (0.76, &[1.0]),
            (1.00, &[1.0]),
            (1.05, &[1.0]),
        ];
        for (p, expected) in cases {
            run(&P4, MinP { p, min_keep: 0 }, expected);
        }
    }

    #[test]
    fn min_p_sorted_path_and_min_keep() {
        // Sorted input takes the second path; min_keep 3 overrides the cut.
        let mut c = from_probs(&P4);
        c.sort();
        MinP {
            p: 0.76,
            min_keep: 3,
        }
        .apply(&mut c);
        let ids: Vec<u32> = c.data.iter().map(|x| x.id).collect();
        assert_eq!(ids, [3, 2, 1]);
    }

    #[test]
    fn typical_llama_cpp() {
        // llama.cpp checks these right after the stage (no dist): the softmax it computed.
        let mut c = from_probs(&[0.97, 0.01, 0.01, 0.01]);
        Typical::new(0.5, 0).apply(&mut c);
        check(&c, &[0.97]);
        let mut c = from_probs(&[0.4, 0.2, 0.2, 0.2]);
        Typical::new(0.5, 0).apply(&mut c);
        check(&c, &[0.2, 0.2, 0.2]);
    }

    fn run_penalties(history: &[u32], repeat: f32, freq: f32, presence: f32, expected: &[f32]) {
        let probs = [0.2f32; 5];
        let mut pen = Penalties::new(probs.len(), history.len(), repeat, freq, presence);
        for &t in history {
            pen.accept(t);
        }
        run(&probs, pen, expected);
    }

    #[test]
    fn penalties_llama_cpp() {
        run_penalties(&[0], 50.0, 0.0, 0.0, &[0.0, 0.25, 0.25, 0.25, 0.25]);
        run_penalties(&[0, 1, 2], 50.0, 0.0, 0.0, &[0.0, 0.0, 0.0, 0.5, 0.5]);
        run_penalties(&[0, 1, 2, 0, 0], 50.0, 0.0, 0.0, &[0.0, 0.0, 0.0, 0.5, 0.5]);
        run_penalties(
            &[0],
            1.0,
            5.0,
            5.0,
            &[0.000011, 0.249997, 0.249997, 0.249997, 0.249997],
        );
        run_penalties(
            &[0, 1, 2],
            1.0,
            5.0,
            5.0,
            &[0.000023, 0.000023, 0.000023, 0.499966, 0.499966],
        );
        run_penalties(
            &[0, 1, 2, 0, 0],
            1.0,
            5.0,
            5.0,
            &[0.000000, 0.000023, 0.000023, 0.499977, 0.499977],
        );
    }

    #[test]
    fn penalties_arithmetic_and_window() {
        // Positive logits are divided, negative ones multiplied; then count*freq + presence.
        let mut pen = Penalties::new(4, 2, 2.0, 0.5, 0.25);
        for t in [3, 0, 1, 1] {
            pen.accept(t); // window of 2: only [1, 1] remain
        }
        let mut c = Candidates::default();
        c.fill(&[4.0, -4.0, 1.0, 2.0]);
        pen.apply(&mut c);
        let logits: Vec<f32> = c.data.iter().map(|x| x.logit).collect();
        assert_eq!(logits, [4.0, -8.0 - 2.0 * 0.5 - 0.25, 1.0, 2.0]);
        pen.reset();
        let mut c2 = Candidates::default();
        c2.fill(&[4.0, -4.0, 1.0, 2.0]);
        pen.apply(&mut c2);
        assert_eq!(c2.data, {
            let mut d = Candidates::default();
            d.fill(&[4.0, -4.0, 1.0, 2.0]);
            d.data
        });
    }

    #[test]
    fn logit_bias_applies_and_bans() {
        let cfg = SamplerConfig {
            logit_bias: vec![(2, 10.0), (0, f32::NEG_INFINITY), (99, 5.0)],
            ..SamplerConfig::greedy()
        };
        let mut s = Sampler::new(cfg, 4);
        assert_eq!(s.sample(&[5.0, 1.0, 0.0, 3.0]), 2);
        let cfg = SamplerConfig {
            logit_bias: vec![(0, f32::NEG_INFINITY)],
            ..SamplerConfig::greedy()
        };
        let mut s = Sampler::new(cfg, 4);
        assert_eq!(s.sample(&[5.0, 1.0, 0.0, 3.0]), 3);
    }

    #[test]
    fn greedy_argmax_lowest_index_on_ties() {
        let mut s = Sampler::new(SamplerConfig::greedy(), 6);
        assert_eq!(s.sample(&[0.0, 2.0, 1.0, 2.0, -1.0, 2.0]), 1);
        assert_eq!(s.sample(&[7.0, 7.0]), 0);
        assert_eq!(s.sample(&[f32::NAN, -3.0, f32::NAN]), 1);
        assert_eq!(s.sample(&[]), 0);
        // Temperature 0 inside a random chain agrees, through a full sort and the dist stage.
        let mut c = Candidates::default();
        c.fill(&[0.0, 2.0, 1.0, 2.0, -1.0, 2.0]);
        c.sort();
        c.data.reverse(); // any order
        c.sorted = false;
        Temperature { t: 0.0 }.apply(&mut c);
        Dist::new(3).apply(&mut c);
        assert_eq!(c.data[c.selected.unwrap()].id, 1);
    }

    #[test]
    fn greedy_sees_penalties() {
        let cfg = SamplerConfig {
            repeat_penalty: 4.0,
            ..SamplerConfig::greedy()
        };
        let mut s = Sampler::new(cfg, 3);
        let logits = [2.0, 1.0, 0.0];
        assert_eq!(s.sample(&logits), 0);
        s.accept(0); // 2.0 / 4 = 0.5 < 1.0
        assert_eq!(s.sample(&logits), 1);
        s.reset();
        assert_eq!(s.sample(&logits), 0);
    }

    #[test]
    fn all_banned_does_not_panic() {
        let cfg = SamplerConfig {
            seed: 1,
            ..Default::default()
        };
        let mut s = Sampler::new(cfg, 3);
        let t = s.sample(&[f32::NEG_INFINITY; 3]);
        assert!(t < 3);
    }

    #[test]
    fn default_chain_order() {
        let cfg = SamplerConfig {
            repeat_penalty: 1.1,
            typical_p: 0.9,
            logit_bias: vec![(1, 1.0)],
            ..Default::default()
        };
        let s = Sampler::new(cfg, 10);
        assert_eq!(
            s.describe(),
            "logits -> logit-bias -> penalties -> top-k -> typical -> top-p -> min-p -> temp -> dist"
        );
        assert_eq!(
            Sampler::new(SamplerConfig::greedy(), 10).describe(),
            "logits -> greedy"
        );
    }

    #[test]
    fn rng_reference_values() {
        // xoshiro256** from state {1, 2, 3, 4}: the reference vector the rand_xoshiro crate tests
        // against (computed with the authors' C code).
        let mut r = Rng { s: [1, 2, 3, 4] };
        let got: Vec<u64> = (0..4).map(|_| r.next_u64()).collect();
        assert_eq!(got, [11520, 0, 1509978240, 1215971899390074240]);
        // splitmix64 from 0: the first output of Vigna's splitmix64.c.
        let mut s = 0u64;
        assert_eq!(splitmix64(&mut s), 0xE220_A839_7B1D_CDAF);
        let mut r = Rng::new(0);
        for _ in 0..1000 {
            let u = r.next_f64();
            assert!((0.0..1.0).contains(&u));
        }
    }

    fn draw(seed: u64, n: usize, logits: &[f32]) -> Vec<u32> {
        let cfg = SamplerConfig {
            seed,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            temperature: 1.0,
            ..Default::default()
        };
        let mut s = Sampler::new(cfg, logits.len());
        (0..n).map(|_| s.sample(logits)).collect()
    }

    #[test]
    fn seeded_reproducibility() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let a = draw(1234, 200, &logits);
        assert_eq!(a, draw(1234, 200, &logits));
        assert_ne!(a, draw(1235, 200, &logits));
        // reset() restarts the stream.
        let cfg = SamplerConfig {
            seed: 1234,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            temperature: 1.0,
            ..Default::default()
        };
        let mut s = Sampler::new(cfg, logits.len());
        let first: Vec<u32> = (0..50).map(|_| s.sample(&logits)).collect();
        s.reset();
        let again: Vec<u32> = (0..50).map(|_| s.sample(&logits)).collect();
        assert_eq!(first, again);
        assert_eq!(first[..], a[..50]);
    }

    #[test]
    fn empirical_frequencies_match_softmax() {
        // 10000 draws at temperature 0.7 over 5 tokens. Each frequency is a binomial estimate with
        // standard deviation sqrt(p(1-p)/n) <= 0.005; 4 sigma (0.02) makes a false failure
        // essentially impossible while a wrong temperature or an off-by-one in the walk shows.
        let logits = [1.0f32, 0.5, 2.0, -1.0, 0.0];
        let t = 0.7f32;
        let n = 10_000;
        let cfg = SamplerConfig {
            seed: 99,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            temperature: t,
            ..Default::default()
        };
        let mut s = Sampler::new(cfg, logits.len());
        let mut counts = [0usize; 5];
        for _ in 0..n {
            counts[s.sample(&logits) as usize] += 1;
        }
        let z: f64 = logits
            .iter()
            .map(|&l| (f64::from(l) / f64::from(t)).exp())
            .sum();
        for (i, &l) in logits.iter().enumerate() {
            let p = (f64::from(l) / f64::from(t)).exp() / z;
            let f = counts[i] as f64 / n as f64;
            assert!(
                (f - p).abs() < 0.02,
                "token {i}: frequency {f}, softmax {p}"
            );
        }
    }

    #[test]
    fn default_chain_samples_only_survivors() {
        // With top_k = 2 only the two best tokens may ever come out.
        let logits = [0.1f32, 3.0, 2.9, 0.2, 2.8];
        let cfg = SamplerConfig {
            top_k: 2,
            seed: 5,
            ..Default::default()
        };
        let mut s = Sampler::new(cfg, logits.len());
        let mut seen = [false; 5];
        for _ in 0..500 {
            seen[s.sample(&logits) as usize] = true;
        }
        assert_eq!(seen, [false, true, true, false, false]);
        // And the survivors carry normalized probabilities.
        let total: f32 = s.candidates().data.iter().map(|c| c.p).sum();
        assert!((total - 1.0).abs() < 1e-6);
    }

    #[test]
    fn sample_does_not_reallocate() {
        let logits: Vec<f32> = (0..50_000)
            .map(|i| ((i * 7919) % 1000) as f32 * 0.01)
            .collect();
        let mut s = Sampler::new(
            SamplerConfig {
                typical_p: 0.9,
                seed: 3,
                ..Default::default()
            },
            logits.len(),
        );
        s.sample(&logits);
        let ptr = s.candidates().data.as_ptr();
        for _ in 0..20 {
            s.sample(&logits);
        }
        assert_eq!(ptr, s.candidates().data.as_ptr());
    }
}
