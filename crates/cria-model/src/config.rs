//! The LLaMA family as data: every variant (GQA, head_dim, RoPE base and scaling, tied embeddings,
//! biases, sliding window) is a field here, read from GGUF metadata or a Hugging Face config.json.

use cria_core::gguf::GgufFile;
use cria_core::{Error, Result};
use serde_json::Value as Json;

#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (HF "linear", GGUF rope.scaling.type = "linear").
    Linear {
        factor: f32,
    },
    /// LLaMA 3.1 frequency-dependent scaling (Meta's `apply_scaling`; HF rope_type "llama3").
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: f32,
    },
    /// GGUF: per-pair divisors stored in the `rope_freqs` tensor (how llama.cpp's converter stores
    /// llama3 scaling); filled in by the loader.
    FreqFactors(Vec<f32>),
}

#[derive(Clone, Debug)]
pub struct Config {
    /// As the file names it ("llama", "mistral").
    pub arch: String,
    pub vocab_size: usize,
    /// Residual stream width (HF hidden_size, GGUF embedding_length).
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    /// < n_heads means grouped-query attention.
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_dim: usize,
    pub norm_eps: f32,
    pub rope_theta: f32,
    /// Dimensions of each head that are rotated (all of them for LLaMA).
    pub n_rot: usize,
    pub rope_scaling: RopeScaling,
    /// true: rotate (x[2i], x[2i+1]) pairs, the layout of GGUF files (llama.cpp's converter permutes
    /// Q/K rows into it). false: rotate (x[i], x[i+d/2]), the layout of HF checkpoints. We keep each
    /// file's own layout and rotate accordingly instead of permuting rows at load: zero copies, same
    /// numbers (the GGUF-vs-HF logits test proves it).
    pub rope_interleaved: bool,
    /// Training context length.
    pub max_seq_len: usize,
    pub sliding_window: Option<usize>,
    /// The output head reuses token_embd (LLaMA 3.2, SmolLM2). Set by the loader from the tensors.
    pub tied_embeddings: bool,
}

fn gguf_usize(g: &GgufFile, key: &str) -> Result<usize> {
    gguf_opt_usize(g, key)?.ok_or_else(|| Error::msg(format!("GGUF metadata {key} is missing")))
}

/// An optional integer key: None when absent; present, it must be a non-negative integer (a
/// negative or fractional value is an error naming the key, not a silent default).
fn gguf_opt_usize(g: &GgufFile, key: &str) -> Result<Option<usize>> {
    g.get(key)
        .map(|v| {
            v.as_u64()
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| {
                    Error::msg(format!("GGUF metadata {key} is not a non-negative integer"))
                })
        })
        .transpose()
}

/// An optional number key (present but not a number: an error naming it).
fn gguf_opt_f32(g: &GgufFile, key: &str) -> Result<Option<f32>> {
    g.get(key)
        .map(|v| {
            v.as_f64()
                .map(|v| v as f32)
                .ok_or_else(|| Error::msg(format!("GGUF metadata {key} is not a number")))
        })
        .transpose()
}

/// A present, non-null config.json key, or None.
fn json_get<'a>(c: &'a Json, key: &str) -> Option<&'a Json> {
    c.get(key).filter(|v| !v.is_null())
}
fn json_usize(c: &Json, key: &str) -> Result<Option<usize>> {
    json_get(c, key)
        .map(|v| {
            v.as_u64()
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| {
                    Error::msg(format!(
                        "config.json: {key} is {v}, not a non-negative integer"
                    ))
                })
        })
        .transpose()
}
fn json_f32(c: &Json, key: &str) -> Result<Option<f32>> {
    json_get(c, key)
        .map(|v| {
            v.as_f64()
                .map(|v| v as f32)
                .ok_or_else(|| Error::msg(format!("config.json: {key} is {v}, not a number")))
        })
        .transpose()
}

/// Largest sizes `validate` accepts: far above any released LLaMA-family model, low enough that a
/// hostile file cannot make the loader or the KV cache size ask for absurd memory.
pub const MAX_VOCAB: usize = 1 << 24;
pub const MAX_DIM: usize = 1 << 20;
pub const MAX_FFN: usize = 1 << 22;
pub const MAX_LAYERS: usize = 4096;
pub const MAX_HEADS: usize = 4096;
pub const MAX_HEAD_DIM: usize = 4096;
pub const MAX_CONTEXT: usize = 1 << 24;

/// `v` must be a finite number > 0; the error names `field`.
fn positive(field: &str, v: f32) -> Result<()> {
    let why = if v.is_nan() {
        "NaN".to_string()
    } else if v.is_infinite() {
        "infinite".to_string()
    } else if v <= 0.0 {
        format!("{v}")
    } else {
        return Ok(());
    };
    Err(Error::msg(format!(
        "invalid model file: {field} is {why} (it must be a finite number > 0)"
    )))
}

/// Architectures that are the LLaMA graph under another name.
pub(crate) const LLAMA_LIKE_GGUF: &[&str] = &["llama", "mistral"];
const LLAMA_LIKE_HF: &[&str] = &["llama", "mistral"];

impl Config {
    pub fn from_gguf(g: &GgufFile) -> Result<Config> {
        let arch = g
            .architecture()
            .ok_or_else(|| Error::msg("GGUF has no general.architecture"))?
            .to_string();
        if !LLAMA_LIKE_GGUF.contains(&arch.as_str()) {
            return Err(Error::Unsupported(format!(
                "architecture '{arch}' (cria runs the LLaMA family: {})",
                LLAMA_LIKE_GGUF.join(", ")
            )));
        }
        let k = |s: &str| format!("{arch}.{s}");
        let dim = gguf_usize(g, &k("embedding_length"))?;
        let n_heads = gguf_usize(g, &k("attention.head_count"))?;
        let n_kv_heads = gguf_opt_usize(g, &k("attention.head_count_kv"))?.unwrap_or(n_heads);
        let head_dim = gguf_opt_usize(g, &k("attention.key_length"))?.unwrap_or(if n_heads > 0 {
            dim / n_heads
        } else {
            0
        });
        let vocab_size = match gguf_opt_usize(g, &k("vocab_size"))? {
            Some(v) => v,
            None => g
                .get_array("tokenizer.ggml.tokens")
                .map(|a| a.len())
                .or_else(|| g.tensor("token_embd.weight").map(|t| t.rows()))
                .unwrap_or(0),
        };
        let rope_scaling = match g.get_str(&k("rope.scaling.type")) {
            None | Some("none") => RopeScaling::None,
            Some("linear") => {
                let factor = gguf_opt_f32(g, &k("rope.scaling.factor"))?.unwrap_or(1.0);
                if factor == 1.0 {
                    RopeScaling::None
                } else {
                    RopeScaling::Linear { factor }
                }
            }
            Some(other) => return Err(Error::Unsupported(format!("RoPE scaling type '{other}'"))),
        };
        let value_length = gguf_opt_usize(g, &k("attention.value_length"))?;
        let c = Config {
            vocab_size,
            dim,
            n_layers: gguf_usize(g, &k("block_count"))?,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_dim: gguf_usize(g, &k("feed_forward_length"))?,
            norm_eps: gguf_opt_f32(g, &k("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
            rope_theta: gguf_opt_f32(g, &k("rope.freq_base"))?.unwrap_or(10000.0),
            n_rot: gguf_opt_usize(g, &k("rope.dimension_count"))?.unwrap_or(head_dim),
            rope_scaling,
            rope_interleaved: true,
            max_seq_len: gguf_opt_usize(g, &k("context_length"))?.unwrap_or(2048),
            sliding_window: gguf_opt_usize(g, &k("attention.sliding_window"))?.filter(|&w| w > 0),
            tied_embeddings: g.tensor("output.weight").is_none(),
            arch,
        };
        c.validate()?;
        if let Some(v) = value_length {
            if v != head_dim {
                return Err(Error::Unsupported(format!(
                    "value length {v} different from key length {head_dim}"
                )));
            }
        }
        Ok(c)
    }

    pub fn from_hf_json(text: &str) -> Result<Config> {
        let c: Json =
            serde_json::from_str(text).map_err(|e| Error::msg(format!("config.json: {e}")))?;
        let model_type = c
            .get("model_type")
            .and_then(Json::as_str)
            .unwrap_or("")
            .to_string();
        if !LLAMA_LIKE_HF.contains(&model_type.as_str()) {
            let archs = c
                .get("architectures")
                .map(|a| a.to_string())
                .unwrap_or_default();
            return Err(Error::Unsupported(format!(
                "model_type '{model_type}' {archs} (cria runs the LLaMA family: {})",
                LLAMA_LIKE_HF.join(", ")
            )));
        }
        let need = |key: &str| {
            json_usize(&c, key)?.ok_or_else(|| Error::msg(format!("config.json: {key} is missing")))
        };
        let dim = need("hidden_size")?;
        let n_heads = need("num_attention_heads")?;
        let n_kv_heads = json_usize(&c, "num_key_value_heads")?.unwrap_or(n_heads);
        let head_dim =
            json_usize(&c, "head_dim")?.unwrap_or(if n_heads > 0 { dim / n_heads } else { 0 });
        // transformers >= 5 writes `rope_parameters` {rope_type, rope_theta, factor...}; older
        // configs have `rope_scaling` and a top-level `rope_theta`. Read both.
        let rope_params = c.get("rope_parameters").filter(|v| v.is_object());
        let rope_scaling = match c
            .get("rope_scaling")
            .filter(|v| !v.is_null())
            .or(rope_params)
        {
            None => RopeScaling::None,
            Some(rs) => {
                let ty = rs
                    .get("rope_type")
                    .or_else(|| rs.get("type"))
                    .and_then(Json::as_str)
                    .unwrap_or("default");
                let f = |key: &str| {
                    json_f32(rs, key)?.ok_or_else(|| {
                        Error::msg(format!("config.json: rope_scaling.{key} missing"))
                    })
                };
                match ty {
                    "default" => RopeScaling::None,
                    "linear" => RopeScaling::Linear {
                        factor: f("factor")?,
                    },
                    "llama3" => RopeScaling::Llama3 {
                        factor: f("factor")?,
                        low_freq_factor: f("low_freq_factor")?,
                        high_freq_factor: f("high_freq_factor")?,
                        original_max_position_embeddings: f("original_max_position_embeddings")?,
                    },
                    other => {
                        return Err(Error::Unsupported(format!("rope_scaling type '{other}'")))
                    }
                }
            }
        };
        let partial = json_f32(&c, "partial_rotary_factor")?.unwrap_or(1.0);
        if !(partial > 0.0 && partial <= 1.0) {
            return Err(Error::msg(format!(
                "invalid model file: partial_rotary_factor is {partial} (it must be in (0, 1])"
            )));
        }
        let rope_theta = match json_f32(&c, "rope_theta")? {
            Some(t) => Some(t),
            None => rope_params
                .map(|p| json_f32(p, "rope_theta"))
                .transpose()?
                .flatten(),
        };
        let cfg = Config {
            arch: model_type,
            vocab_size: need("vocab_size")?,
            dim,
            n_layers: need("num_hidden_layers")?,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_dim: need("intermediate_size")?,
            norm_eps: json_f32(&c, "rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta: rope_theta.unwrap_or(10000.0),
            n_rot: (head_dim as f32 * partial) as usize,
            rope_scaling,
            rope_interleaved: false,
            max_seq_len: json_usize(&c, "max_position_embeddings")?.unwrap_or(2048),
            sliding_window: json_usize(&c, "sliding_window")?.filter(|&w| w > 0),
            tied_embeddings: c
                .get("tie_word_embeddings")
                .and_then(Json::as_bool)
                .unwrap_or(false),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Rejects what the forward could not run, or would run into garbage: sizes that are 0,
    /// absurd (above the `MAX_*` limits) or inconsistent, and hyper-parameters that are NaN,
    /// infinite, zero or negative where they must be positive. Each error names the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::msg(format!("invalid model file: {m}")));
        for (field, v, max) in [
            ("vocabulary size", self.vocab_size, MAX_VOCAB),
            ("embedding length", self.dim, MAX_DIM),
            ("layer count", self.n_layers, MAX_LAYERS),
            ("attention head count", self.n_heads, MAX_HEADS),
            ("KV head count", self.n_kv_heads, MAX_HEADS),
            ("head dimension", self.head_dim, MAX_HEAD_DIM),
            ("feed-forward length", self.ffn_dim, MAX_FFN),
            ("context length", self.max_seq_len, MAX_CONTEXT),
        ] {
            if v == 0 {
                return bad(format!("{field} is 0"));
            }
            if v > max {
                return bad(format!("{field} is {v}, above the limit of {max}"));
            }
        }
        if self.n_heads % self.n_kv_heads != 0 {
            return bad(format!(
                "KV head count {} does not divide the attention head count {}",
                self.n_kv_heads, self.n_heads
            ));
        }
        if self.n_rot > self.head_dim || self.n_rot % 2 != 0 {
            return bad(format!(
                "rotary dimension count {} (it must be even and at most the head dimension {})",
                self.n_rot, self.head_dim
            ));
        }
        positive("rms epsilon", self.norm_eps)?;
        positive("rope base (freq_base)", self.rope_theta)?;
        match &self.rope_scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => positive("rope scaling factor", *factor)?,
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                positive("rope scaling factor", *factor)?;
                positive("rope scaling low_freq_factor", *low_freq_factor)?;
                positive("rope scaling high_freq_factor", *high_freq_factor)?;
                positive(
                    "rope scaling original context (original_max_position_embeddings)",
                    *original_max_position_embeddings,
                )?;
                if high_freq_factor <= low_freq_factor {
                    return bad(format!(
                        "rope scaling high_freq_factor {high_freq_factor} is not above \
                         low_freq_factor {low_freq_factor}"
                    ));
                }
            }
            RopeScaling::FreqFactors(ff) => {
                for (i, &f) in ff.iter().enumerate() {
                    positive(&format!("rope_freqs value {i}"), f)?;
                }
            }
        }
        Ok(())
    }

    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Angular frequency per rotated pair, with scaling applied. Computed in f64 and rounded once.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let d = self.n_rot as f64;
        let base: Vec<f64> = (0..self.n_rot / 2)
            .map(|i| (self.rope_theta as f64).powf(-((2 * i) as f64) / d))
            .collect();
        match &self.rope_scaling {
            RopeScaling::None => base.iter().map(|&f| f as f32).collect(),
            RopeScaling::Linear { factor } => {
                base.iter().map(|&f| (f / *factor as f64) as f32).collect()
            }
            RopeScaling::FreqFactors(ff) => base
                .iter()
                .zip(ff)
                .map(|(&f, &s)| (f / s as f64) as f32)
                .collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                // Meta's llama3 `apply_scaling` (as in HF `_compute_llama3_parameters`): long
                // wavelengths are divided by `factor`, short ones kept, the band between blended.
                let (factor, lo, hi, old) = (
                    *factor as f64,
                    *low_freq_factor as f64,
                    *high_freq_factor as f64,
                    *original_max_position_embeddings as f64,
                );
                let low_wavelen = old / lo;
                let high_wavelen = old / hi;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        let r = if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - lo) / (hi - lo);
                            (1.0 - smooth) * f / factor + smooth * f
                        };
                        r as f32
                    })
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"{"model_type":"llama","hidden_size":64,"num_attention_heads":4,"num_key_value_heads":2,
        "num_hidden_layers":2,"intermediate_size":128,"vocab_size":100,"rms_norm_eps":1e-5,"rope_theta":500000.0}"#;

    fn with(extra: &str) -> String {
        format!("{},{}", &BASE[..BASE.len() - 1], &extra[1..])
    }

    #[test]
    fn reads_hf_config() {
        let c = Config::from_hf_json(BASE).unwrap();
        assert_eq!(
            (c.dim, c.n_heads, c.n_kv_heads, c.head_dim, c.n_rot),
            (64, 4, 2, 16, 16)
        );
        assert!(!c.rope_interleaved && !c.tied_embeddings && c.rope_scaling == RopeScaling::None);
    }

    #[test]
    fn unknown_architecture_is_named() {
        let e = Config::from_hf_json(&BASE.replace("\"llama\"", "\"gpt_neox\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("gpt_neox"), "{e}");
        let e = Config::from_hf_json(&with(
            r#"{"rope_scaling":{"rope_type":"yarn","factor":4.0}}"#,
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("yarn"), "{e}");
    }

    #[test]
    fn hostile_values_are_errors() {
        for bad in [
            r#"{"num_key_value_heads":3}"#, // 4 heads not a multiple of 3
            r#"{"num_attention_heads":0}"#,
            r#"{"hidden_size":"64"}"#, // wrong type
            r#"{"vocab_size":1e30}"#,
            r#"{"hidden_size":100000000000}"#,
            r#"{"head_dim":7,"partial_rotary_factor":1.0}"#, // odd rotary dims
        ] {
            assert!(Config::from_hf_json(&with(bad)).is_err(), "{bad} accepted");
        }
        assert!(Config::from_hf_json("{").is_err());
        assert!(Config::from_hf_json("[]").is_err());
    }

    /// Each hyper-parameter that cannot be right is refused with its field named.
    #[test]
    fn bad_hyper_parameters_name_the_field() {
        let llama3 = |lo: &str, hi: &str, orig: &str| {
            format!(
                r#"{{"rope_scaling":{{"rope_type":"llama3","factor":8.0,"low_freq_factor":{lo},"high_freq_factor":{hi},"original_max_position_embeddings":{orig}}}}}"#
            )
        };
        for (bad, want) in [
            (
                r#"{"rms_norm_eps":-1e-5}"#.to_string(),
                "rms epsilon is -0.00001",
            ),
            (r#"{"rms_norm_eps":0}"#.into(), "rms epsilon is 0"),
            (
                r#"{"rms_norm_eps":"small"}"#.into(),
                "rms_norm_eps is \"small\", not a number",
            ),
            (r#"{"rope_theta":0.0}"#.into(), "rope base (freq_base) is 0"),
            (
                r#"{"rope_theta":1e39}"#.into(),
                "rope base (freq_base) is infinite",
            ),
            (
                r#"{"rope_scaling":{"rope_type":"linear","factor":-2}}"#.into(),
                "rope scaling factor is -2",
            ),
            (llama3("-1", "4", "8192"), "low_freq_factor is -1"),
            (llama3("1", "0", "8192"), "high_freq_factor is 0"),
            (llama3("1", "4", "0"), "original context"),
            (
                llama3("4", "1", "8192"),
                "high_freq_factor 1 is not above low_freq_factor 4",
            ),
            (
                r#"{"num_key_value_heads":3}"#.into(),
                "KV head count 3 does not divide",
            ),
            (
                r#"{"num_key_value_heads":-2}"#.into(),
                "num_key_value_heads is -2",
            ),
            (
                r#"{"num_attention_heads":0}"#.into(),
                "attention head count is 0",
            ),
            (r#"{"head_dim":0}"#.into(), "head dimension is 0"),
            (r#"{"hidden_size":0}"#.into(), "embedding length is 0"),
            (
                r#"{"intermediate_size":0}"#.into(),
                "feed-forward length is 0",
            ),
            (r#"{"vocab_size":0}"#.into(), "vocabulary size is 0"),
            (r#"{"num_hidden_layers":0}"#.into(), "layer count is 0"),
            (
                r#"{"num_hidden_layers":100000}"#.into(),
                "layer count is 100000, above",
            ),
            (
                r#"{"max_position_embeddings":0}"#.into(),
                "context length is 0",
            ),
            (
                r#"{"partial_rotary_factor":0}"#.into(),
                "partial_rotary_factor is 0",
            ),
        ] {
            let e = Config::from_hf_json(&with(&bad)).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e:?} lacks {want:?}");
        }
        // null is "not given": the default applies.
        let c = Config::from_hf_json(&with(r#"{"head_dim":null,"sliding_window":null}"#)).unwrap();
        assert_eq!((c.head_dim, c.sliding_window), (16, None));
    }

    #[test]
    fn transformers5_rope_parameters() {
        let c = Config::from_hf_json(&BASE.replace(
            r#""rope_theta":500000.0"#,
            r#""rope_parameters":{"rope_type":"linear","factor":2.0,"rope_theta":1000.0}"#,
        ))
        .unwrap();
        assert_eq!(
            (c.rope_theta, c.rope_scaling.clone()),
            (1000.0, RopeScaling::Linear { factor: 2.0 })
        );
        let c = Config::from_hf_json(&BASE.replace(
            r#""rope_theta":500000.0"#,
            r#""rope_parameters":{"rope_type":"default","rope_theta":1000.0}"#,
        ))
        .unwrap();
        assert_eq!(
            (c.rope_theta, c.rope_scaling.clone()),
            (1000.0, RopeScaling::None)
        );
    }

    /// Meta's reference values for LLaMA 3.1 (theta 500000, factor 8, low 1, high 4, original 8192):
    /// the highest frequencies are untouched, the lowest divided by 8, the band between blended.
    #[test]
    fn llama3_scaling_bands() {
        let c = Config::from_hf_json(&with(r#"{"rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}}"#)).unwrap();
        let plain = Config {
            rope_scaling: RopeScaling::None,
            ..c.clone()
        }
        .rope_inv_freq();
        let scaled = c.rope_inv_freq();
        assert_eq!(scaled[0], plain[0]); // wavelength 2*pi < 8192/4
        let last = plain.len() - 1; // wavelength ~ 2*pi*500000^(14/16) >> 8192
        assert!((scaled[last] * 8.0 - plain[last]).abs() <= plain[last] * 1e-6);
        assert!(scaled
            .iter()
            .zip(&plain)
            .all(|(s, p)| s <= p && *s >= p / 8.0 * (1.0 - 1e-6)));
    }
}
