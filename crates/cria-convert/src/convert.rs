//! `cria convert`: a Hugging Face LLaMA-family folder (config.json, safetensors, tokenizer) as a
//! GGUF, the way llama.cpp's `convert_hf_to_gguf.py` (LlamaModel, llama.cpp 0c1e570) writes it:
//! the same tensors in the same order (HF names sorted within each shard, shards in name order,
//! `rope_freqs.weight` first for LLaMA 3.1 rope), the Q/K rows permuted into llama.cpp's
//! interleaved-rope layout, the same types per `--outtype` (1-D tensors and norms F32; Q8_0 rows
//! that are not whole 32-blocks fall back to F16) with the same rounding, and the same
//! `llama.*`/`tokenizer.*` metadata (see [`crate::convert_vocab`]).
//!
//! [`HfSource`] reads one tensor at a time from the mapped safetensors; [`write_gguf`] streams any
//! [`Source`] into a GGUF (or gguf-py-style splits) through `GgufStreamWriter`.

use crate::convert_vocab::{read_json_opt, vocab_metadata};
use crate::source::{Source, SrcTensor};
use cria_core::gguf::{GgufStreamWriter, TensorInfo, Value};
use cria_core::safetensors::SafetensorsModel;
use cria_core::{DType, Error, Result};
use serde_json::Value as Json;
use std::borrow::Cow;
use std::path::{Path, PathBuf};

/// `--outtype`: the type of the matrices (1-D tensors and norms stay F32 whatever it says).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutType {
    F32,
    F16,
    Bf16,
    Q8_0,
    /// As the converter's default: BF16 or F16 after the first 2-D bf16/f16 tensor, else F16.
    Auto,
}

impl std::str::FromStr for OutType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "f32" => OutType::F32,
            "f16" => OutType::F16,
            "bf16" => OutType::Bf16,
            "q8_0" => OutType::Q8_0,
            "auto" => OutType::Auto,
            _ => {
                return Err(Error::Unsupported(format!(
                    "--outtype {s} (cria convert writes f32, f16, bf16, q8_0 or auto)"
                )))
            }
        })
    }
}

impl OutType {
    fn dtype(self) -> DType {
        match self {
            OutType::F32 => DType::F32,
            OutType::F16 | OutType::Auto => DType::F16,
            OutType::Bf16 => DType::BF16,
            OutType::Q8_0 => DType::Q8_0,
        }
    }
    /// `general.file_type` (llama_ftype) of the file.
    fn file_type(self) -> u32 {
        match self {
            OutType::F32 => 0,
            OutType::F16 | OutType::Auto => 1,
            OutType::Q8_0 => 7,
            OutType::Bf16 => 32,
        }
    }
}

/// Options of [`HfSource::open_with`].
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    pub outtype: OutType,
    /// `tokenizer.ggml.pre` to write for a BPE tokenizer whose check hash the converter's table
    /// does not know (the converter refuses those; this is the explicit way through).
    pub tokenizer_pre: Option<String>,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        Self {
            outtype: OutType::Auto,
            tokenizer_pre: None,
        }
    }
}

/// Where a tensor's bytes come from.
enum Plan {
    /// A safetensors tensor (index into `st.tensors`), its rows permuted for `n_head` heads when set.
    St { idx: usize, permute: Option<usize> },
    /// Computed at open (the llama3 rope factors), already in the output type.
    Data(Vec<u8>),
}

/// An HF LLaMA-family folder seen as the GGUF llama.cpp's converter would write.
pub struct HfSource {
    pub dir: PathBuf,
    st: SafetensorsModel,
    tensors: Vec<SrcTensor>,
    plan: Vec<Plan>,
    metadata: Vec<(String, Value)>,
    opts: ConvertOptions,
    /// The outtype after `auto` was resolved.
    pub outtype: OutType,
}

const ARCHS: &[&str] = &["LlamaForCausalLM", "LLaMAForCausalLM", "MistralForCausalLM"];

fn cfg_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        format: "config.json",
        msg: msg.into(),
    }
}

/// The hyperparameters the converter reads, as transformers' LlamaConfig fills them in.
struct Hparams {
    n_layer: u64,
    n_ctx: Option<u64>,
    n_embd: u64,
    n_ff: Option<u64>,
    n_head: u64,
    n_head_kv: u64,
    head_dim: u64,
    rope_theta: f64,
    rms_eps: f64,
    vocab_size: u64,
    rope: serde_json::Map<String, Json>,
}

fn hparams(path: &Path, c: &Json) -> Result<Hparams> {
    let arch = c["architectures"]
        .as_array()
        .and_then(|a| a.first())
        .and_then(|a| a.as_str())
        .ok_or_else(|| cfg_err(path, "no \"architectures\" list"))?;
    if !ARCHS.contains(&arch) {
        return Err(Error::Unsupported(format!(
            "{}: architecture {arch} (cria convert handles the LLaMA family: {})",
            path.display(),
            ARCHS.join(", ")
        )));
    }
    let int = |k: &str| -> Result<Option<u64>> {
        match &c[k] {
            Json::Null => Ok(None),
            v => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| cfg_err(path, format!("{k} is not a non-negative integer"))),
        }
    };
    let need = |k: &str| -> Result<u64> { int(k)?.ok_or_else(|| cfg_err(path, format!("no {k}"))) };
    let n_embd = need("hidden_size")?;
    let n_head = need("num_attention_heads")?;
    if n_head == 0 {
        return Err(cfg_err(path, "num_attention_heads is 0"));
    }
    let n_head_kv = int("num_key_value_heads")?.unwrap_or(n_head);
    if n_head_kv == 0 || n_head % n_head_kv != 0 {
        return Err(cfg_err(
            path,
            format!("num_key_value_heads {n_head_kv} does not divide num_attention_heads {n_head}"),
        ));
    }
    let head_dim = int("head_dim")?.unwrap_or(n_embd / n_head);
    let mut rope = match (&c["rope_parameters"], &c["rope_scaling"]) {
        (Json::Object(o), _) | (Json::Null, Json::Object(o)) => o.clone(),
        _ => Default::default(),
    };
    if !rope.contains_key("rope_type") {
        if let Some(t) = rope.get("type").cloned() {
            rope.insert("rope_type".into(), t);
        }
    }
    let rope_theta = c["rope_theta"]
        .as_f64()
        .or_else(|| rope.get("rope_theta").and_then(|v| v.as_f64()))
        .unwrap_or(10000.0);
    if let Some(o) = c["original_max_position_embeddings"].as_u64() {
        rope.entry("original_max_position_embeddings")
            .or_insert(Json::from(o));
    }
    Ok(Hparams {
        n_layer: need("num_hidden_layers")?,
        n_ctx: int("max_position_embeddings")?,
        n_embd,
        n_ff: int("intermediate_size")?,
        n_head,
        n_head_kv,
        head_dim,
        rope_theta,
        rms_eps: c["rms_norm_eps"].as_f64().unwrap_or(1e-6),
        vocab_size: int("vocab_size")?.unwrap_or(32000),
        rope,
    })
}

/// The llama3 rope frequency factors, computed as the converter computes them (float32 torch
/// arithmetic: `a / t` on a tensor is `t.reciprocal() * a`).
fn llama3_rope_factors(rope: &serde_json::Map<String, Json>, theta: f64, dim: u64) -> Vec<f32> {
    let g = |k: &str, d: f64| rope.get(k).and_then(|v| v.as_f64()).unwrap_or(d);
    let factor = g("factor", 8.0) as f32;
    let low = g("low_freq_factor", 1.0);
    let high = g("high_freq_factor", 4.0);
    let old_ctx = g("original_max_position_embeddings", 8192.0);
    let low_wavelen = old_ctx / low;
    let high_wavelen = old_ctx / high;
    let base = theta as f32;
    (0..dim)
        .step_by(2)
        .map(|i| {
            let freq = 1.0f32 * (1.0f32 / base.powf(i as f32 / dim as f32));
            let wavelen = (1.0f32 / freq) * (2.0 * std::f64::consts::PI) as f32;
            if (wavelen as f64) < high_wavelen {
                1.0
            } else if (wavelen as f64) > low_wavelen {
                factor
            } else {
                let smooth =
                    ((1.0f32 / wavelen) * old_ctx as f32 - low as f32) / (high - low) as f32;
                1.0f32 / ((1.0f32 - smooth) / factor + smooth)
            }
        })
        .collect()
}

/// The converter's `model_weight_count_rounded_notation` (`general.size_label`).
fn size_label(n: u64) -> String {
    let n = n as f64;
    let (scaled, suffix) = if n > 1e12 {
        (n * 1e-12, "T")
    } else if n > 1e9 {
        (n * 1e-9, "B")
    } else if n > 1e6 {
        (n * 1e-6, "M")
    } else {
        (n * 1e-3, "K")
    };
    let rounded = format!("{:.0}", scaled);
    let fix = 2usize.saturating_sub(rounded.trim_start_matches('0').len());
    format!("{scaled:.fix$}{suffix}")
}

/// gguf-py's `Metadata.id_to_title` on the folder name (the converter's `general.name` when the
/// folder has no model card).
fn title(name: &str) -> String {
    name.trim()
        .replace('-', " ")
        .split_whitespace()
        .map(|w| {
            // re.match(r'^(v\d+(?:\.\d+)*|\d.*)$', w)
            let version = w.strip_prefix('v').is_some_and(|r| {
                !r.is_empty()
                    && r.split('.')
                        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            });
            let digit = w.starts_with(|c: char| c.is_ascii_digit());
            let lower = w.chars().any(char::is_lowercase) && !w.chars().any(char::is_uppercase);
            if lower && !version && !digit {
                // Python's str.title(): a letter after a non-letter is upper-cased.
                let mut prev_alpha = false;
                w.chars()
                    .map(|c| {
                        let r = if prev_alpha {
                            c.to_lowercase().to_string()
                        } else {
                            c.to_uppercase().to_string()
                        };
                        prev_alpha = c.is_alphabetic();
                        r
                    })
                    .collect::<String>()
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The safetensors files of the folder in the converter's order, with each file's tensor names.
fn shard_names(dir: &Path) -> Result<Vec<(String, Vec<String>)>> {
    let index = dir.join("model.safetensors.index.json");
    if let Some(j) = read_json_opt(&index)? {
        let map = j["weight_map"].as_object().ok_or_else(|| Error::Format {
            path: index.clone(),
            format: "safetensors index",
            msg: "no weight_map object".into(),
        })?;
        let mut files: Vec<(String, Vec<String>)> = Vec::new();
        for (t, f) in map {
            let f = f.as_str().unwrap_or_default();
            match files.iter_mut().find(|(n, _)| n == f) {
                Some((_, v)) => v.push(t.clone()),
                None => files.push((f.to_string(), vec![t.clone()])),
            }
        }
        files.sort();
        let missing: Vec<&str> = files
            .iter()
            .map(|(f, _)| f.as_str())
            .filter(|f| !dir.join(f).is_file())
            .collect();
        if !missing.is_empty() {
            return Err(Error::msg(format!(
                "{}: missing model shard(s) {} listed in model.safetensors.index.json",
                dir.display(),
                missing.join(", ")
            )));
        }
        return Ok(files);
    }
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("model") && n.ends_with(".safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        let bin = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .any(|n| n.starts_with("pytorch_model") && n.ends_with(".bin"));
        return Err(if bin {
            Error::Unsupported(format!(
                "{}: PyTorch .bin weights (cria convert reads safetensors; convert them with \
                 transformers' save_pretrained(safe_serialization=True))",
                dir.display()
            ))
        } else {
            Error::msg(format!(
                "{}: no model*.safetensors weights in this folder",
                dir.display()
            ))
        });
    }
    files
        .into_iter()
        .map(|f| {
            let names = header_names(&dir.join(&f))?;
            Ok((f, names))
        })
        .collect()
}

/// The tensor names in a safetensors file's header (u64 LE length, JSON object).
fn header_names(path: &Path) -> Result<Vec<String>> {
    use std::io::Read;
    let bad = |m: String| Error::Format {
        path: path.to_path_buf(),
        format: "safetensors",
        msg: m,
    };
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let file_len = f.metadata().map_err(io)?.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n)
        .map_err(|_| bad("file shorter than its 8-byte header length".into()))?;
    let n = u64::from_le_bytes(n);
    if n > file_len.saturating_sub(8) || n > 100 << 20 {
        return Err(bad(format!("header length {n} is larger than the file")));
    }
    let mut h = vec![0u8; n as usize];
    f.read_exact(&mut h).map_err(io)?;
    let v: Json = serde_json::from_slice(&h).map_err(|e| bad(format!("header JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| bad("header is not a JSON object".into()))?;
    Ok(obj
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect())
}

/// Skipped, as the converter skips them.
fn ignored(name: &str) -> bool {
    name.ends_with(".attention.masked_bias")
        || name.ends_with(".attention.bias")
        || name.ends_with(".rotary_emb.inv_freq")
}

impl HfSource {
    /// Opens `dir` with the converter's defaults (`--outtype auto`).
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, ConvertOptions::default())
    }

    /// The same folder with another stored type.
    pub fn with_outtype(self, outtype: OutType) -> Result<Self> {
        let opts = ConvertOptions {
            outtype,
            ..self.opts.clone()
        };
        Self::open_with(&self.dir, opts)
    }

    pub fn open_with(dir: &Path, opts: ConvertOptions) -> Result<Self> {
        let cpath = dir.join("config.json");
        let config = read_json_opt(&cpath)?.ok_or_else(|| {
            Error::msg(format!(
                "{}: no config.json (not a Hugging Face model folder)",
                dir.display()
            ))
        })?;
        let hp = hparams(&cpath, &config)?;
        let shards = shard_names(dir)?;
        let st = SafetensorsModel::open_folder(dir)?;
        let by_name: std::collections::HashMap<&str, usize> = st
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.as_str(), i))
            .collect();
        // Converter order: shards sorted by name, tensors sorted by name within each.
        let mut order: Vec<String> = Vec::new();
        for (_, mut names) in shards {
            names.sort();
            order.extend(names);
        }
        if let Some((n, dt)) = st.skipped.iter().find(|(n, _)| !ignored(n)) {
            return Err(Error::Unsupported(format!(
                "{}: tensor {n} has safetensors dtype {dt} (cria convert reads F32, F16, BF16)",
                dir.display()
            )));
        }

        // `auto`: the first 2-D+ tensor stored as bf16 or f16 decides, else f16.
        let mut outtype = opts.outtype;
        if outtype == OutType::Auto {
            outtype = order
                .iter()
                .filter_map(|n| by_name.get(n.as_str()).map(|&i| &st.tensors[i]))
                .filter(|t| t.ne.len() >= 2)
                .find_map(|t| match t.dtype {
                    DType::BF16 => Some(OutType::Bf16),
                    DType::F16 => Some(OutType::F16),
                    _ => None,
                })
                .unwrap_or(OutType::F16);
        }
        let wanted = outtype.dtype();

        let mut tensors = Vec::new();
        let mut plan = Vec::new();
        let rope_type = hp
            .rope
            .get("rope_type")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        if rope_type.eq_ignore_ascii_case("llama3") {
            let f = llama3_rope_factors(&hp.rope, hp.rope_theta, hp.head_dim);
            tensors.push(SrcTensor {
                name: "rope_freqs.weight".into(),
                dtype: DType::F32,
                ne: vec![f.len()],
            });
            plan.push(Plan::Data(bytemuck::cast_slice(&f).to_vec()));
        }
        for name in &order {
            if ignored(name) {
                continue;
            }
            let Some(&idx) = by_name.get(name.as_str()) else {
                return Err(Error::msg(format!(
                    "{}: tensor {name} is listed but not in the safetensors files",
                    dir.display()
                )));
            };
            let t = &st.tensors[idx];
            let gguf = cria_model::names::hf_to_gguf(name).ok_or_else(|| {
                Error::Unsupported(format!(
                    "{}: can not map tensor {name} to a GGUF name",
                    dir.display()
                ))
            })?;
            let permute = if name.ends_with("q_proj.weight") || name.ends_with("q_proj.bias") {
                Some(hp.n_head as usize)
            } else if name.ends_with("k_proj.weight") || name.ends_with("k_proj.bias") {
                Some(hp.n_head_kv as usize)
            } else {
                None
            };
            if let Some(h) = permute {
                let rows = t.ne.get(1).copied().unwrap_or(t.ne[0]);
                if rows % (2 * h) != 0 {
                    return Err(Error::msg(format!(
                        "{}: tensor {name} has {rows} rows, not a whole number of {h} heads of \
                         rotary pairs",
                        dir.display()
                    )));
                }
            }
            let dtype = if t.ne.len() <= 1
                || gguf.ends_with("_norm.weight")
                || !gguf.ends_with(".weight")
            {
                DType::F32
            } else if wanted == DType::Q8_0 && t.ne[0] % 32 != 0 {
                DType::F16 // the converter's QuantError fallback
            } else {
                wanted
            };
            tensors.push(SrcTensor {
                name: gguf,
                dtype,
                ne: t.ne.clone(),
            });
            plan.push(Plan::St { idx, permute });
        }
        let want_names = ["token_embd.weight", "output_norm.weight"];
        for w in want_names {
            if !tensors.iter().any(|t| t.name == w) {
                return Err(Error::msg(format!(
                    "{}: the weights have no {w} (HF {})",
                    dir.display(),
                    cria_model::names::GLOBAL
                        .iter()
                        .find(|(g, _)| *g == w)
                        .map(|(_, h)| *h)
                        .unwrap_or(w)
                )));
            }
        }

        let mut md: Vec<(String, Value)> = Vec::new();
        let mut put = |k: &str, v: Value| md.push((k.to_string(), v));
        put("general.architecture", Value::from("llama"));
        put("general.type", Value::from("model"));
        if let Some(g) = read_json_opt(&dir.join("generation_config.json"))
            .ok()
            .flatten()
        {
            let f = |k: &str| g[k].as_f64().map(|v| Value::F32(v as f32));
            let i = |k: &str| g[k].as_i64().map(|v| Value::I32(v as i32));
            let keys: [(&str, Option<Value>); 12] = [
                ("sequence", g["sequence"].as_str().map(Value::from)),
                ("top_k", i("top_k")),
                ("top_p", f("top_p")),
                ("min_p", f("min_p")),
                ("xtc_probability", f("xtc_probability")),
                ("xtc_threshold", f("xtc_threshold")),
                ("temp", f("temperature")),
                ("penalty_last_n", i("penalty_last_n")),
                (
                    "penalty_repeat",
                    f("penalty_repeat").or_else(|| f("repetition_penalty")),
                ),
                ("mirostat", i("mirostat")),
                ("mirostat_tau", f("mirostat_tau")),
                ("mirostat_eta", f("mirostat_eta")),
            ];
            for (k, v) in keys {
                if let Some(v) = v {
                    put(&format!("general.sampling.{k}"), v);
                }
            }
        }
        let dir_name = std::fs::canonicalize(dir)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default();
        put("general.name", Value::from(title(&dir_name).as_str()));
        let n_params: u64 = tensors.iter().map(|t| t.n_elements() as u64).sum();
        put(
            "general.size_label",
            Value::from(size_label(n_params).as_str()),
        );
        put("llama.block_count", Value::U32(hp.n_layer as u32));
        if let Some(n) = hp.n_ctx {
            put("llama.context_length", Value::U32(n as u32));
        }
        put("llama.embedding_length", Value::U32(hp.n_embd as u32));
        if let Some(n) = hp.n_ff {
            put("llama.feed_forward_length", Value::U32(n as u32));
        }
        put("llama.attention.head_count", Value::U32(hp.n_head as u32));
        put(
            "llama.attention.head_count_kv",
            Value::U32(hp.n_head_kv as u32),
        );
        let factor = hp.rope.get("factor").and_then(|v| v.as_f64());
        match (rope_type, factor) {
            ("linear", Some(f)) => {
                put("llama.rope.scaling.type", Value::from("linear"));
                put("llama.rope.scaling.factor", Value::F32(f as f32));
            }
            ("yarn", Some(f)) => {
                put("llama.rope.scaling.type", Value::from("yarn"));
                put("llama.rope.scaling.factor", Value::F32(f as f32));
                let orig = hp
                    .rope
                    .get("original_max_position_embeddings")
                    .and_then(|v| v.as_u64())
                    .ok_or_else(|| {
                        cfg_err(&cpath, "yarn rope without original_max_position_embeddings")
                    })?;
                put(
                    "llama.rope.scaling.original_context_length",
                    Value::U32(orig as u32),
                );
                let rf = |k: &str| hp.rope.get(k).and_then(|v| v.as_f64());
                if let Some(v) = rf("extrapolation_factor") {
                    put("llama.rope.scaling.yarn_ext_factor", Value::F32(v as f32));
                }
                if let Some(v) = rf("attention_factor").or_else(|| rf("attn_factor")) {
                    put("llama.rope.scaling.yarn_attn_factor", Value::F32(v as f32));
                }
                if let Some(v) = rf("beta_fast") {
                    put("llama.rope.scaling.yarn_beta_fast", Value::F32(v as f32));
                }
                if let Some(v) = rf("beta_slow") {
                    put("llama.rope.scaling.yarn_beta_slow", Value::F32(v as f32));
                }
            }
            ("su" | "longrope" | "dynamic", _) => {
                return Err(Error::Unsupported(format!(
                    "{}: rope type {rope_type} in a LLaMA model",
                    cpath.display()
                )))
            }
            _ => {}
        }
        put("llama.rope.freq_base", Value::F32(hp.rope_theta as f32));
        put(
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(hp.rms_eps as f32),
        );
        put("llama.attention.key_length", Value::U32(hp.head_dim as u32));
        put(
            "llama.attention.value_length",
            Value::U32(hp.head_dim as u32),
        );
        put("general.file_type", Value::U32(outtype.file_type()));
        put("llama.vocab_size", Value::U32(hp.vocab_size as u32));
        put("llama.rope.dimension_count", Value::U32(hp.head_dim as u32));
        put("general.quantization_version", Value::U32(2));
        md.extend(vocab_metadata(dir, &config, opts.tokenizer_pre.as_deref())?);

        Ok(HfSource {
            dir: dir.to_path_buf(),
            st,
            tensors,
            plan,
            metadata: md,
            opts,
            outtype,
        })
    }
}

/// The converter's `LlamaModel.permute` on GGML-order data: within each of `n_head` heads, row
/// `j * half + i` moves to `2 * i + j`.
fn permute_rows(src: &[f32], cols: usize, n_head: usize) -> Vec<f32> {
    let rows = src.len() / cols;
    let hd = rows / n_head;
    let half = hd / 2;
    let mut out = vec![0f32; src.len()];
    for h in 0..n_head {
        for j in 0..2 {
            for i in 0..half {
                let from = h * hd + j * half + i;
                let to = h * hd + 2 * i + j;
                out[to * cols..(to + 1) * cols]
                    .copy_from_slice(&src[from * cols..(from + 1) * cols]);
            }
        }
    }
    out
}

/// gguf-py's BF16 rounding (ggml_compute_fp32_to_bf16): NaN made quiet, round to nearest even.
fn f32_to_bf16(x: f32) -> u16 {
    let n = x.to_bits();
    let n = if n & 0x7fff_ffff > 0x7f80_0000 {
        (n & 0xffff_0000) | (64 << 16)
    } else {
        n
    };
    ((u64::from(n) + (0x7fff + u64::from((n >> 16) & 1))) >> 16) as u16
}

/// `values` (f32) in the stored type `dtype`, as the converter's numpy code writes them.
pub fn encode(dtype: DType, values: &[f32], row_len: usize) -> Result<Vec<u8>> {
    Ok(match dtype {
        DType::F32 => bytemuck::cast_slice(values).to_vec(),
        DType::F16 => values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        DType::BF16 => values
            .iter()
            .flat_map(|&v| f32_to_bf16(v).to_le_bytes())
            .collect(),
        DType::Q8_0 => {
            let mut out = vec![0u8; dtype.bytes_for(values.len())?];
            cria_core::quantize::quantize_rows(dtype, values, &mut out, row_len, None)?;
            out
        }
        other => return Err(Error::Unsupported(format!("cria convert storing {other}"))),
    })
}

impl Source for HfSource {
    fn metadata(&self) -> Cow<'_, [(String, Value)]> {
        Cow::Borrowed(&self.metadata)
    }
    fn tensors(&self) -> &[SrcTensor] {
        &self.tensors
    }
    fn bytes(&self, i: usize) -> Result<Cow<'_, [u8]>> {
        let out = &self.tensors[i];
        match &self.plan[i] {
            Plan::Data(b) => Ok(Cow::Borrowed(b)),
            Plan::St { idx, permute } => {
                // Owned bytes, and the mapped pages let go at once: a conversion reads every
                // page of the model once, and left mapped they would all stay resident (a
                // 1B model: 2.5 GB). Memory stays near the largest tensor.
                let t = &self.st.tensors[*idx];
                let bytes = if t.dtype == out.dtype && permute.is_none() {
                    t.bytes().to_vec()
                } else if let Some(h) = permute {
                    // Q/K (and their biases): small; permuted whole.
                    let cols = if t.ne.len() >= 2 { t.ne[0] } else { 1 };
                    let v = permute_rows(&t.to_f32_vec()?, cols, *h);
                    encode(out.dtype, &v, out.ne[0])?
                } else {
                    // A few MB of rows at a time: no f32 copy of a whole embedding table.
                    let cols = t.ne[0];
                    let chunk = (1usize << 20).div_ceil(cols).max(1);
                    let mut bytes = Vec::with_capacity(out.dtype.bytes_for(t.n_elements())?);
                    let mut buf = vec![0f32; chunk * cols];
                    let rows = t.n_elements() / cols;
                    for r0 in (0..rows).step_by(chunk) {
                        let n = chunk.min(rows - r0);
                        for r in 0..n {
                            t.dequantize_row(r0 + r, &mut buf[r * cols..(r + 1) * cols])?;
                        }
                        bytes.extend_from_slice(&encode(out.dtype, &buf[..n * cols], cols)?);
                    }
                    bytes
                };
                t.data.release_pages();
                Ok(Cow::Owned(bytes))
            }
        }
    }
}

/// gguf-py's `--split-max-size` grouping: a new file when the current one holds at least one
/// tensor and this tensor's bytes would take it over `max` (bytes of data, no padding).
pub fn split_groups(tensors: &[SrcTensor], max: Option<u64>) -> Result<Vec<usize>> {
    let mut group = Vec::with_capacity(tensors.len());
    let (mut g, mut in_group, mut bytes) = (0usize, 0usize, 0u64);
    for t in tensors {
        let n = t.dtype.bytes_for(t.n_elements())? as u64;
        if let Some(max) = max {
            if in_group > 0 && bytes + n > max {
                g += 1;
                in_group = 0;
                bytes = 0;
            }
        }
        group.push(g);
        in_group += 1;
        bytes += n;
    }
    Ok(group)
}

/// The file names gguf-py gives `n` splits of `out`: `STEM-0000i-of-0000n.gguf`.
pub fn split_names(out: &Path, n: usize) -> Vec<PathBuf> {
    if n == 1 {
        return vec![out.to_path_buf()];
    }
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    (0..n)
        .map(|i| out.with_file_name(format!("{stem}-{:05}-of-{n:05}.gguf", i + 1)))
        .collect()
}

/// Parses a gguf-py size: a number with an optional K, M or G suffix (powers of 1000).
pub fn parse_split_size(s: &str) -> Result<u64> {
    let (num, mul) = match s.chars().last() {
        Some('K') => (&s[..s.len() - 1], 1000),
        Some('M') => (&s[..s.len() - 1], 1000 * 1000),
        Some('G') => (&s[..s.len() - 1], 1000 * 1000 * 1000),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| {
            Error::msg(format!(
                "invalid split size {s:?}: a number, optionally followed by K, M or G"
            ))
        })
}

/// Streams `src` into `out` (or, with `split_max_size`, into gguf-py-style splits: the first
/// carries all metadata, each carries `split.no`/`split.count`/`split.tensors.count`), one tensor
/// in memory at a time. Every file is written as `NAME.partial` and renamed only once all are
/// complete; on any error none is left. `progress(i)` is called after tensor `i` is written.
pub fn write_gguf(
    src: &dyn Source,
    out: &Path,
    split_max_size: Option<u64>,
    mut progress: impl FnMut(usize),
) -> Result<Vec<PathBuf>> {
    let tensors = src.tensors();
    let groups = split_groups(tensors, split_max_size.filter(|&m| m > 0))?;
    let n_files = groups.last().map_or(1, |g| g + 1);
    let names = split_names(out, n_files);
    let meta = src.metadata();
    let n_tensors = i32::try_from(tensors.len())
        .map_err(|_| Error::msg("too many tensors for split.tensors.count"))?;
    let n_files_u16 = u16::try_from(n_files)
        .map_err(|_| Error::msg(format!("{n_files} splits: split.count is a u16")))?;
    let mut writers = Vec::with_capacity(n_files);
    for (f, name) in names.iter().enumerate() {
        let mut kv: Vec<(String, Value)> = if f == 0 {
            meta.iter()
                .filter(|(k, _)| !k.starts_with("split."))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        if n_files > 1 {
            kv.push(("split.no".into(), Value::U16(f as u16)));
            kv.push(("split.count".into(), Value::U16(n_files_u16)));
            kv.push(("split.tensors.count".into(), Value::I32(n_tensors)));
        }
        let kv_refs: Vec<(&str, &Value)> = kv.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let infos: Vec<TensorInfo> = tensors
            .iter()
            .zip(&groups)
            .filter(|(_, &g)| g == f)
            .map(|(t, _)| TensorInfo {
                name: t.name.clone(),
                dtype: t.dtype,
                ne: t.ne.clone(),
            })
            .collect();
        writers.push(GgufStreamWriter::create(name, &kv_refs, &infos, 32)?);
    }
    for (i, g) in groups.iter().enumerate() {
        let data = src.bytes(i)?;
        writers[*g].write_tensor(&data)?;
        drop(data);
        progress(i);
    }
    let mut done: Vec<&PathBuf> = Vec::new();
    for (w, name) in writers.into_iter().zip(&names) {
        if let Err(e) = w.finish() {
            for d in done {
                let _ = std::fs::remove_file(d);
            }
            return Err(e);
        }
        done.push(name);
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permute_matches_the_converters_reshape() {
        // 2 heads of head_dim 4, 1 column: per head rows [0,1,2,3] -> [0,2,1,3].
        let v: Vec<f32> = (0..8).map(|x| x as f32).collect();
        assert_eq!(permute_rows(&v, 1, 2), [0., 2., 1., 3., 4., 6., 5., 7.]);
    }

    #[test]
    fn size_labels_as_gguf_py() {
        assert_eq!(size_label(164672), "165K");
        assert_eq!(size_label(134_515_008), "135M");
        assert_eq!(size_label(1_235_814_400), "1.2B");
        assert_eq!(size_label(8_030_261_248), "8.0B");
    }

    #[test]
    fn titles_as_gguf_py() {
        assert_eq!(title("tiny-llama2"), "Tiny Llama2");
        assert_eq!(title("Meta-Llama-3-8B"), "Meta Llama 3 8B");
        assert_eq!(title("llama-v2.1-chat"), "Llama v2.1 Chat");
        assert_eq!(title("smol-lm2b"), "Smol Lm2B");
    }

    #[test]
    fn split_sizes() {
        assert_eq!(parse_split_size("2G").unwrap(), 2_000_000_000);
        assert_eq!(parse_split_size("300K").unwrap(), 300_000);
        assert_eq!(parse_split_size("12345").unwrap(), 12345);
        assert!(parse_split_size("2GB").is_err());
        assert!(parse_split_size("").is_err());
    }

    #[test]
    fn bf16_rounding() {
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is a tie: rounds to even (down); 1 + 3*2^-8 rounds up.
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(f32_to_bf16(f32::from_bits(0x7f80_0001)) & 0x7fc0, 0x7fc0);
    }
}
