//! `cria export`: any model cria reads (through [`Source`]) to a Hugging Face folder that
//! `transformers.AutoModelForCausalLM` and `AutoTokenizer` load.
//!
//! - `config.json` / `generation_config.json` from the `llama.*` / `tokenizer.ggml.*` metadata;
//!   LLaMA 3.1 RoPE scaling is recovered from the `rope_freqs` tensor when that is all there is
//!   ([`llama3_from_freqs`]).
//! - `model.safetensors` (or shards of at most `max_shard_bytes` with
//!   `model.safetensors.index.json`, named as `save_pretrained` names them): every tensor
//!   dequantized to f32, Q/K rows put back in HF's half-split RoPE layout ([`unpermute_rows`], the
//!   inverse of llama.cpp's converter's `permute`), cast to the output dtype. The header of each
//!   file is written first (sizes are known up front), then one tensor at a time, so memory stays
//!   near the largest tensor in f32.
//! - the tokenizer files ([`crate::export_tokenizer`]).
//!
//! Everything is written into `OUT.partial/`, renamed to `OUT` at the end; a failure removes it.

use crate::export_tokenizer;
use crate::source::{Source, SrcTensor};
use cria_core::gguf::{Array, Value};
use cria_core::{DType, Error, Result};
use cria_model::names;
use serde_json::{json, Map, Value as Json};
use std::io::Write;
use std::path::{Path, PathBuf};

/// `save_pretrained`'s default `max_shard_size` ("5GB", decimal).
pub const DEFAULT_SHARD_BYTES: u64 = 5_000_000_000;

#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// F32, F16 or BF16; `None`: [`default_dtype`].
    pub dtype: Option<DType>,
    /// Largest safetensors file (one tensor larger than this gets a file of its own).
    pub max_shard_bytes: u64,
    /// Write only the tokenizer files (a vocabulary-only GGUF has no weights).
    pub tokenizer_only: bool,
    /// Replace an existing non-empty OUT.
    pub force: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            dtype: None,
            max_shard_bytes: DEFAULT_SHARD_BYTES,
            tokenizer_only: false,
            force: false,
        }
    }
}

/// What was written.
#[derive(Clone, Debug, Default)]
pub struct ExportSummary {
    pub dtype: Option<DType>,
    pub n_tensors: usize,
    /// (file name, size in bytes), in the order written.
    pub files: Vec<(String, u64)>,
    /// What the folder cannot say as the source does (e.g. repeated token texts).
    pub warnings: Vec<String>,
}

/// The output dtype named on the command line.
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s.to_ascii_lowercase().as_str() {
        "f32" | "float32" => Ok(DType::F32),
        "f16" | "float16" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        _ => Err(Error::Unsupported(format!(
            "export dtype '{s}' (choose f32, f16 or bf16)"
        ))),
    }
}

/// The dtype a user wants when none is named: the type the source's matrices already have when
/// that is F32, F16 or BF16 (nothing lost, nothing grown); F16 for quantized sources (their
/// values are small multiples of f16 scales: f16 keeps all but the last bits, at half f32's size;
/// `--dtype f32` keeps every bit).
pub fn default_dtype(src: &dyn Source) -> DType {
    let mut bytes = [0usize; 3];
    let mut quantized = 0usize;
    for t in src.tensors().iter().filter(|t| t.ne.len() >= 2) {
        let n = t.dtype.bytes_for(t.n_elements()).unwrap_or(0);
        match t.dtype {
            DType::F32 => bytes[0] += n,
            DType::F16 => bytes[1] += n,
            DType::BF16 => bytes[2] += n,
            _ => quantized += n,
        }
    }
    if quantized > 0 {
        return DType::F16;
    }
    let types = [DType::F32, DType::F16, DType::BF16];
    let i = (0..3).max_by_key(|&i| (bytes[i], 3 - i)).unwrap_or(0);
    types[i]
}

/// Metadata lookups over a source's `(key, value)` list.
pub struct Meta<'a>(pub &'a [(String, Value)]);

impl<'a> Meta<'a> {
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    pub fn str(&self, key: &str) -> Option<&'a str> {
        self.get(key)?.as_str()
    }
    pub fn u64(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| Error::msg(format!("metadata {key} is not an unsigned integer"))),
        }
    }
    pub fn f32(&self, key: &str) -> Result<Option<f32>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(|x| Some(x as f32))
                .ok_or_else(|| Error::msg(format!("metadata {key} is not a number"))),
        }
    }
    pub fn bool(&self, key: &str) -> Option<bool> {
        self.get(key)?.as_bool()
    }
    pub fn array(&self, key: &str) -> Option<&'a Array> {
        self.get(key)?.as_array()
    }
    pub fn need(&self, key: &str) -> Result<u64> {
        self.u64(key)?
            .ok_or_else(|| Error::msg(format!("metadata {key} is missing")))
    }
}

/// An f32 as JSON the way Python prints the value it was written from (1e-05, not
/// 9.999999747378752e-06).
pub(crate) fn json_f32(x: f32) -> Json {
    let v: f64 = x.to_string().parse().unwrap_or(x as f64);
    json!(v)
}

/// LLaMA 3.1 RoPE scaling as HF's config.json holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct Llama3Rope {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

/// llama.cpp's converter's `rope_freqs` (per rotated pair, the divisor of its frequency) for
/// these parameters, in f64.
pub fn llama3_freqs(r: &Llama3Rope, theta: f64, n_rot: usize) -> Vec<f64> {
    let (lo, hi, l) = (
        r.low_freq_factor,
        r.high_freq_factor,
        r.original_max_position_embeddings,
    );
    (0..n_rot / 2)
        .map(|i| {
            let freq = 1.0 / theta.powf((2 * i) as f64 / n_rot as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            if wavelen < l / hi {
                1.0
            } else if wavelen > l / lo {
                r.factor
            } else {
                let smooth = (l / wavelen - lo) / (hi - lo);
                1.0 / ((1.0 - smooth) / r.factor + smooth)
            }
        })
        .collect()
}

/// The LLaMA 3.1 parameters that reproduce a `rope_freqs` tensor. The divisors depend on
/// (low, high, original context) only through where the smooth ramp starts and ends, so
/// Meta's low = 1, high = 4 are kept and the original context is solved from a ramp value
/// (8192 when no divisor lies on the ramp and 8192 fits); the result is checked by recomputing
/// every divisor. Not of this form: an error.
pub fn llama3_from_freqs(freqs: &[f32], theta: f64, n_rot: usize) -> Result<Llama3Rope> {
    let bad = |why: &str| {
        Error::Unsupported(format!(
            "rope_freqs {freqs:?} is not LLaMA 3.1 RoPE scaling ({why}); transformers has no \
             other way to express it"
        ))
    };
    if freqs.len() != n_rot / 2 || freqs.is_empty() {
        return Err(bad("length is not half the rotated dimensions"));
    }
    let factor = freqs.iter().fold(1.0f32, |a, &b| a.max(b)) as f64;
    if factor <= 1.0 {
        return Err(bad("no divisor above 1"));
    }
    let (lo, hi) = (1.0, 4.0);
    let mut orig = 8192.0;
    for (i, &f) in freqs.iter().enumerate() {
        let f = f as f64;
        if (f - 1.0).abs() > 1e-6 && (f - factor).abs() > 1e-6 * factor {
            // 1/f = (1 - s)/factor + s  =>  s = (1/f - 1/factor) / (1 - 1/factor)
            let s = (1.0 / f - 1.0 / factor) / (1.0 - 1.0 / factor);
            let freq = 1.0 / theta.powf((2 * i) as f64 / n_rot as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            orig = wavelen * (s * (hi - lo) + lo);
            // Python's json.dump writes floats; a context is an integer when it is close to one.
            if (orig - orig.round()).abs() < 1e-3 * orig.max(1.0) {
                orig = orig.round();
            }
            break;
        }
    }
    let r = Llama3Rope {
        factor,
        low_freq_factor: lo,
        high_freq_factor: hi,
        original_max_position_embeddings: orig,
    };
    let again = llama3_freqs(&r, theta, n_rot);
    let fits = again
        .iter()
        .zip(freqs)
        .all(|(&a, &b)| (a - b as f64).abs() <= 1e-5 * a.abs().max(1.0));
    if !fits {
        return Err(bad("recomputed divisors differ"));
    }
    Ok(r)
}

/// Puts the rows of a GGUF attn_q/attn_k tensor (llama.cpp's interleaved RoPE pairs) back in HF's
/// order: within each head of `hd` rows, HF row `s * hd/2 + i` is GGUF row `2 i + s`. `row_len`
/// is 1 for a bias.
pub fn unpermute_rows(src: &[f32], dst: &mut [f32], n_head: usize, row_len: usize) -> Result<()> {
    let rows = src.len() / row_len.max(1);
    if n_head == 0 || rows % (2 * n_head) != 0 || src.len() != dst.len() {
        return Err(Error::msg(format!(
            "cannot un-permute {rows} rows into {n_head} heads"
        )));
    }
    let hd = rows / n_head;
    let half = hd / 2;
    for h in 0..n_head {
        for s in 0..2 {
            for i in 0..half {
                let to = (h * hd + s * half + i) * row_len;
                let from = (h * hd + 2 * i + s) * row_len;
                dst[to..to + row_len].copy_from_slice(&src[from..from + row_len]);
            }
        }
    }
    Ok(())
}

/// One output tensor: where it comes from and what it becomes.
struct Plan {
    src: usize,
    hf_name: String,
    /// PyTorch order.
    shape: Vec<usize>,
    /// Heads to un-permute over (attn_q/attn_k), or none.
    unpermute: Option<usize>,
    bytes: u64,
}

/// The HF name of a GGUF tensor name, through the one table in `cria_model::names`.
pub fn gguf_to_hf(name: &str) -> Option<String> {
    if let Some((_, h)) = names::GLOBAL.iter().find(|(g, _)| *g == name) {
        return Some(h.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (idx, tail) = rest.split_once('.')?;
    let i: usize = idx.parse().ok()?;
    names::LAYER
        .iter()
        .find(|(g, _)| g.strip_prefix("blk.{}.") == Some(tail))
        .map(|(_, h)| names::layer_name(h, i))
}

/// The architecture facts export needs from the metadata.
struct Arch {
    name: String,
    n_heads: usize,
    n_kv_heads: usize,
}

fn arch_of(meta: &Meta) -> Result<Arch> {
    let name = meta
        .str("general.architecture")
        .ok_or_else(|| Error::msg("metadata general.architecture is missing"))?
        .to_string();
    if name != "llama" && name != "mistral" {
        return Err(Error::Unsupported(format!(
            "exporting architecture '{name}' (cria exports llama and mistral)"
        )));
    }
    let n_heads = meta.need(&format!("{name}.attention.head_count"))? as usize;
    let n_kv_heads = meta
        .u64(&format!("{name}.attention.head_count_kv"))?
        .map_or(n_heads, |v| v as usize);
    Ok(Arch {
        name,
        n_heads,
        n_kv_heads,
    })
}

fn plan(src: &dyn Source, arch: &Arch, dtype: DType) -> Result<Vec<Plan>> {
    let mut out = Vec::new();
    for (i, t) in src.tensors().iter().enumerate() {
        if t.name == "rope_freqs.weight" {
            continue; // becomes config.json's rope_scaling
        }
        let hf_name = gguf_to_hf(&t.name).ok_or_else(|| {
            Error::Unsupported(format!(
                "tensor {} has no Hugging Face LLaMA name (cria_model::names)",
                t.name
            ))
        })?;
        let unpermute = if t.name.contains(".attn_q.") {
            Some(arch.n_heads)
        } else if t.name.contains(".attn_k.") {
            Some(arch.n_kv_heads)
        } else {
            None
        };
        let shape: Vec<usize> = t.ne.iter().rev().copied().collect();
        let n = t.n_elements() as u64;
        out.push(Plan {
            src: i,
            hf_name,
            shape,
            unpermute,
            bytes: n * dtype.type_size() as u64,
        });
    }
    Ok(out)
}

fn st_dtype(d: DType) -> &'static str {
    match d {
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        _ => "F32",
    }
}

/// Groups tensors into files as `save_pretrained` does: a new file when the next tensor would
/// push the current one past the limit.
fn shard(plans: &[Plan], max: u64) -> Vec<std::ops::Range<usize>> {
    let mut shards = Vec::new();
    let (mut start, mut size) = (0, 0u64);
    for (i, p) in plans.iter().enumerate() {
        if i > start && size + p.bytes > max {
            shards.push(start..i);
            start = i;
            size = 0;
        }
        size += p.bytes;
    }
    if start < plans.len() {
        shards.push(start..plans.len());
    }
    shards
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The safetensors header of a file holding `plans` in order.
fn header(plans: &[Plan], dtype: DType) -> Vec<u8> {
    let mut h = Map::new();
    h.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0u64;
    for p in plans {
        h.insert(
            p.hf_name.clone(),
            json!({"dtype": st_dtype(dtype), "shape": p.shape, "data_offsets": [offset, offset + p.bytes]}),
        );
        offset += p.bytes;
    }
    let mut b = serde_json::to_vec(&Json::Object(h)).unwrap_or_default();
    b.resize(b.len().div_ceil(8) * 8, b' ');
    b
}

/// Elements converted at a time for tensors that need no row permutation (~4 MB of f32).
const CHUNK_ELEMS: usize = 1 << 20;

/// Reused buffers of [`write_tensor`].
#[derive(Default)]
struct Buffers {
    f32s: Vec<f32>,
    tmp: Vec<f32>,
    out: Vec<u8>,
}

fn cast_into(vals: &[f32], dtype: DType, out: &mut Vec<u8>) {
    out.clear();
    out.reserve(vals.len() * dtype.type_size());
    match dtype {
        DType::F32 => vals
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DType::F16 => vals
            .iter()
            .for_each(|&v| out.extend_from_slice(&half::f16::from_f32(v).to_le_bytes())),
        _ => vals
            .iter()
            .for_each(|&v| out.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes())),
    }
}

/// Writes tensor `p` of `src` as `dtype` in HF layout to `w`; returns the bytes written. Tensors
/// without a row permutation go through in chunks of whole rows, so memory stays at a few MB
/// whatever their size; attn_q/attn_k (square at most) are un-permuted whole.
fn write_tensor(
    src: &dyn Source,
    t: &SrcTensor,
    p: &Plan,
    dtype: DType,
    bufs: &mut Buffers,
    w: &mut dyn Write,
) -> Result<u64> {
    let ctx = |e: Error| Error::msg(format!("tensor {}: {e}", t.name));
    let bytes = src.bytes(p.src)?;
    if p.unpermute.is_none() && t.dtype == dtype {
        w.write_all(&bytes)
            .map_err(|e| ctx(Error::msg(format!("writing: {e}"))))?;
        return Ok(bytes.len() as u64);
    }
    let n = t.n_elements();
    let row_len = if t.ne.len() >= 2 { t.ne[0] } else { n.max(1) };
    let row_bytes = t.dtype.bytes_for(row_len).map_err(ctx)?;
    let (rows_per_chunk, heads) = match p.unpermute {
        Some(heads) => (n / row_len.max(1), Some(heads)),
        None => ((CHUNK_ELEMS / row_len.max(1)).max(1), None),
    };
    if bytes.len() != row_bytes * (n / row_len.max(1)) {
        return Err(ctx(Error::msg(format!(
            "{} bytes for {n} {} elements",
            bytes.len(),
            t.dtype
        ))));
    }
    let mut written = 0u64;
    for chunk in bytes.chunks(rows_per_chunk.max(1) * row_bytes.max(1)) {
        let m = chunk.len() / row_bytes.max(1) * row_len;
        bufs.f32s.clear();
        bufs.f32s.resize(m, 0.0);
        cria_core::quant::dequantize(t.dtype, chunk, &mut bufs.f32s).map_err(ctx)?;
        let vals: &[f32] = match heads {
            Some(heads) => {
                bufs.tmp.clear();
                bufs.tmp.resize(m, 0.0);
                let rl = if t.ne.len() >= 2 { row_len } else { 1 };
                unpermute_rows(&bufs.f32s, &mut bufs.tmp, heads, rl).map_err(ctx)?;
                &bufs.tmp
            }
            None => &bufs.f32s,
        };
        cast_into(vals, dtype, &mut bufs.out);
        w.write_all(&bufs.out)
            .map_err(|e| ctx(Error::msg(format!("writing: {e}"))))?;
        written += bufs.out.len() as u64;
    }
    Ok(written)
}

fn write_json(dir: &Path, name: &str, v: &Json, files: &mut Vec<(String, u64)>) -> Result<()> {
    let path = dir.join(name);
    let mut text = serde_json::to_string_pretty(v).map_err(|e| Error::msg(e.to_string()))?;
    text.push('\n');
    std::fs::write(&path, &text).map_err(io_err(&path))?;
    files.push((name.to_string(), text.len() as u64));
    Ok(())
}

/// config.json of a LLaMA (or Mistral) model.
fn config_json(src: &dyn Source, meta: &Meta, arch: &Arch, dtype: DType) -> Result<Json> {
    let a = &arch.name;
    let k = |s: &str| format!("{a}.{s}");
    let tensors = src.tensors();
    let find = |name: &str| tensors.iter().position(|t| t.name == name);
    let dim = meta.need(&k("embedding_length"))? as usize;
    let head_dim = meta
        .u64(&k("attention.key_length"))?
        .map_or(dim / arch.n_heads.max(1), |v| v as usize);
    let n_rot = meta
        .u64(&k("rope.dimension_count"))?
        .map_or(head_dim, |v| v as usize);
    if n_rot != head_dim {
        return Err(Error::Unsupported(format!(
            "partial RoPE ({n_rot} of {head_dim} dimensions): LlamaForCausalLM rotates all"
        )));
    }
    let vocab = match meta.u64(&k("vocab_size"))? {
        Some(v) => v as usize,
        None => match meta.array("tokenizer.ggml.tokens") {
            Some(t) => t.len(),
            None => find("token_embd.weight")
                .map(|i| tensors[i].ne.get(1).copied().unwrap_or(0))
                .ok_or_else(|| Error::msg("no vocabulary size"))?,
        },
    };
    let theta = meta.f32(&k("rope.freq_base"))?.unwrap_or(10000.0);
    let rope_scaling = match (meta.str(&k("rope.scaling.type")), find("rope_freqs.weight")) {
        (Some("linear"), _) => {
            let f = meta.f32(&k("rope.scaling.factor"))?.unwrap_or(1.0);
            if f == 1.0 {
                Json::Null
            } else {
                json!({"factor": json_f32(f), "rope_type": "linear"})
            }
        }
        (None | Some("none"), None) => Json::Null,
        (None | Some("none"), Some(i)) => {
            let t = &tensors[i];
            let mut f = vec![0f32; t.n_elements()];
            cria_core::quant::dequantize(t.dtype, &src.bytes(i)?, &mut f)?;
            let r = llama3_from_freqs(&f, theta as f64, n_rot)?;
            json!({
                "factor": r.factor,
                "high_freq_factor": r.high_freq_factor,
                "low_freq_factor": r.low_freq_factor,
                "original_max_position_embeddings": r.original_max_position_embeddings as u64,
                "rope_type": "llama3"
            })
        }
        (Some(other), _) => return Err(Error::Unsupported(format!("RoPE scaling type '{other}'"))),
    };
    let has = |suffix: &str| tensors.iter().any(|t| t.name.ends_with(suffix));
    let attn_bias = [
        "attn_q.bias",
        "attn_k.bias",
        "attn_v.bias",
        "attn_output.bias",
    ];
    let n_attn_bias = attn_bias.iter().filter(|s| has(s)).count();
    if n_attn_bias != 0 && n_attn_bias != attn_bias.len() {
        return Err(Error::Unsupported(
            "attention biases on some of q/k/v/o only (LlamaForCausalLM has all or none)".into(),
        ));
    }
    let ffn_bias = ["ffn_gate.bias", "ffn_up.bias", "ffn_down.bias"];
    let n_ffn_bias = ffn_bias.iter().filter(|s| has(s)).count();
    if n_ffn_bias != 0 && n_ffn_bias != ffn_bias.len() {
        return Err(Error::Unsupported(
            "MLP biases on some of gate/up/down only (LlamaForCausalLM has all or none)".into(),
        ));
    }
    let id = |key: &str| -> Result<Json> {
        Ok(meta
            .u64(&format!("tokenizer.ggml.{key}"))?
            .map_or(Json::Null, |v| json!(v)))
    };
    let (class, model_type) = if a == "mistral" {
        ("MistralForCausalLM", "mistral")
    } else {
        ("LlamaForCausalLM", "llama")
    };
    let torch_dtype = match dtype {
        DType::F32 => "float32",
        DType::F16 => "float16",
        _ => "bfloat16",
    };
    let mut c = Map::new();
    c.insert("architectures".into(), json!([class]));
    c.insert("attention_bias".into(), json!(n_attn_bias > 0));
    c.insert("attention_dropout".into(), json!(0.0));
    c.insert("bos_token_id".into(), id("bos_token_id")?);
    c.insert("eos_token_id".into(), eos_ids(meta)?);
    c.insert("head_dim".into(), json!(head_dim));
    c.insert("hidden_act".into(), json!("silu"));
    c.insert("hidden_size".into(), json!(dim));
    c.insert("initializer_range".into(), json!(0.02));
    c.insert(
        "intermediate_size".into(),
        json!(meta.need(&k("feed_forward_length"))?),
    );
    c.insert(
        "max_position_embeddings".into(),
        json!(meta.u64(&k("context_length"))?.unwrap_or(2048)),
    );
    c.insert("mlp_bias".into(), json!(n_ffn_bias > 0));
    c.insert("model_type".into(), json!(model_type));
    c.insert("num_attention_heads".into(), json!(arch.n_heads));
    c.insert(
        "num_hidden_layers".into(),
        json!(meta.need(&k("block_count"))?),
    );
    c.insert("num_key_value_heads".into(), json!(arch.n_kv_heads));
    c.insert("pad_token_id".into(), id("padding_token_id")?);
    c.insert("pretraining_tp".into(), json!(1));
    c.insert(
        "rms_norm_eps".into(),
        json_f32(
            meta.f32(&k("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-5),
        ),
    );
    c.insert("rope_scaling".into(), rope_scaling);
    c.insert("rope_theta".into(), json_f32(theta));
    if a == "mistral" {
        let w = meta.u64(&k("attention.sliding_window"))?.filter(|&w| w > 0);
        c.insert("sliding_window".into(), w.map_or(Json::Null, |w| json!(w)));
    }
    c.insert(
        "tie_word_embeddings".into(),
        json!(find("output.weight").is_none()),
    );
    c.insert("torch_dtype".into(), json!(torch_dtype));
    c.insert("use_cache".into(), json!(true));
    c.insert("vocab_size".into(), json!(vocab));
    Ok(Json::Object(c))
}

/// Every end-of-generation id the GGUF names (EOS, EOT, EOM): one id, a list, or null.
fn eos_ids(meta: &Meta) -> Result<Json> {
    let mut eos: Vec<u64> = Vec::new();
    for key in ["eos_token_id", "eot_token_id", "eom_token_id"] {
        if let Some(v) = meta.u64(&format!("tokenizer.ggml.{key}"))? {
            if !eos.contains(&v) {
                eos.push(v);
            }
        }
    }
    Ok(match eos.as_slice() {
        [] => Json::Null,
        [one] => json!(one),
        many => json!(many),
    })
}

/// generation_config.json: BOS, the end-of-generation ids, PAD. Not marked `_from_model_config`,
/// so `generate` keeps it as written.
fn generation_config(meta: &Meta) -> Result<Json> {
    let mut g = Map::new();
    if let Some(b) = meta.u64("tokenizer.ggml.bos_token_id")? {
        g.insert("bos_token_id".into(), json!(b));
    }
    let eos = eos_ids(meta)?;
    if !eos.is_null() {
        g.insert("eos_token_id".into(), eos);
    }
    if let Some(p) = meta.u64("tokenizer.ggml.padding_token_id")? {
        g.insert("pad_token_id".into(), json!(p));
    }
    Ok(Json::Object(g))
}

/// A folder being written: removed on drop unless marked done (renamed into place).
struct PartialDir {
    path: PathBuf,
    done: bool,
}

impl Drop for PartialDir {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn partial_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_os_string();
    s.push(".partial");
    PathBuf::from(s)
}

/// Checks OUT before any work: it may not exist, be an empty folder, or (with `force`) anything
/// that is a folder.
fn check_out(out: &Path, force: bool) -> Result<()> {
    match std::fs::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() && !force {
                return Err(Error::msg(format!(
                    "{} exists and is not empty (pass --force to replace it)",
                    out.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) if out.exists() => Err(Error::msg(format!(
            "{} exists and is not a folder",
            out.display()
        ))),
        Err(e) => Err(io_err(out)(e)),
    }
}

/// Exports `src` into the folder `out`. `progress(i, n, name)` is called before tensor `i` of `n`
/// is read, when no bytes of earlier tensors are borrowed any more (a GGUF source may drop their
/// mapped pages there).
pub fn export(
    src: &dyn Source,
    out: &Path,
    opts: &ExportOptions,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<ExportSummary> {
    if let Some(d) = opts.dtype {
        if !matches!(d, DType::F32 | DType::F16 | DType::BF16) {
            return Err(Error::Unsupported(format!(
                "export dtype {d} (choose f32, f16 or bf16)"
            )));
        }
    }
    check_out(out, opts.force)?;
    let metadata = src.metadata();
    let meta = Meta(&metadata);
    // Everything that can be refused is refused before a byte is written.
    let tok = export_tokenizer::build(&meta)?;
    let model = if opts.tokenizer_only {
        None
    } else {
        let arch = arch_of(&meta)?;
        let dtype = opts.dtype.unwrap_or_else(|| default_dtype(src));
        let plans = plan(src, &arch, dtype)?;
        let config = config_json(src, &meta, &arch, dtype)?;
        Some((dtype, plans, config))
    };

    let tmp = partial_path(out);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    let mut guard = PartialDir {
        path: tmp.clone(),
        done: false,
    };
    let mut summary = ExportSummary {
        warnings: tok.warnings.clone(),
        ..Default::default()
    };
    if let Some((dtype, plans, config)) = &model {
        summary.dtype = Some(*dtype);
        summary.n_tensors = plans.len();
        write_json(&tmp, "config.json", config, &mut summary.files)?;
        write_json(
            &tmp,
            "generation_config.json",
            &generation_config(&meta)?,
            &mut summary.files,
        )?;
        write_weights(
            src,
            &tmp,
            plans,
            *dtype,
            opts.max_shard_bytes,
            progress,
            &mut summary,
        )?;
    }
    for (name, v) in &tok.files {
        write_json(&tmp, name, v, &mut summary.files)?;
    }
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(io_err(out))?;
    }
    std::fs::rename(&tmp, out).map_err(io_err(out))?;
    guard.done = true;
    Ok(summary)
}

fn write_weights(
    src: &dyn Source,
    dir: &Path,
    plans: &[Plan],
    dtype: DType,
    max_shard: u64,
    progress: &mut dyn FnMut(usize, usize, &str),
    summary: &mut ExportSummary,
) -> Result<()> {
    let shards = shard(plans, max_shard.max(1));
    let n_files = shards.len();
    let file_name = |i: usize| {
        if n_files == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{n_files:05}.safetensors", i + 1)
        }
    };
    let mut bufs = Buffers::default();
    let mut weight_map: Vec<(&str, String)> = Vec::new();
    for (fi, range) in shards.iter().enumerate() {
        let name = file_name(fi);
        let path = dir.join(&name);
        let file = std::fs::File::create(&path).map_err(io_err(&path))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        let h = header(&plans[range.clone()], dtype);
        let mut size = 8 + h.len() as u64;
        w.write_all(&(h.len() as u64).to_le_bytes())
            .and_then(|_| w.write_all(&h))
            .map_err(io_err(&path))?;
        for p in &plans[range.clone()] {
            let t = &src.tensors()[p.src];
            progress(p.src, src.tensors().len(), &t.name);
            let n = write_tensor(src, t, p, dtype, &mut bufs, &mut w)
                .map_err(|e| Error::msg(format!("{}: {e}", path.display())))?;
            if n != p.bytes {
                return Err(Error::msg(format!(
                    "tensor {}: {n} bytes, expected {}",
                    t.name, p.bytes
                )));
            }
            size += p.bytes;
            weight_map.push((&p.hf_name, name.clone()));
        }
        w.into_inner()
            .map_err(|e| io_err(&path)(e.into_error()))?
            .sync_all()
            .map_err(io_err(&path))?;
        summary.files.push((name, size));
    }
    if n_files > 1 {
        weight_map.sort();
        let mut m = Map::new();
        for (k, v) in weight_map {
            m.insert(k.to_string(), json!(v));
        }
        let total: u64 = plans.iter().map(|p| p.bytes).sum();
        let index = json!({"metadata": {"total_size": total}, "weight_map": Json::Object(m)});
        write_json(
            dir,
            "model.safetensors.index.json",
            &index,
            &mut summary.files,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llamacpp_permute() {
        // llama.cpp: w.reshape(n_head, 2, hd/2, rest).swapaxes(1, 2).reshape(w.shape)
        let (n_head, hd, row) = (3, 8, 2);
        let hf: Vec<f32> = (0..n_head * hd * row).map(|x| x as f32).collect();
        let mut gguf = vec![0f32; hf.len()];
        for h in 0..n_head {
            for i in 0..hd / 2 {
                for s in 0..2 {
                    // permuted row (h, i, s) holds original row (h, s, i)
                    let to = (h * hd + i * 2 + s) * row;
                    let from = (h * hd + s * hd / 2 + i) * row;
                    gguf[to..to + row].copy_from_slice(&hf[from..from + row]);
                }
            }
        }
        let mut back = vec![0f32; hf.len()];
        unpermute_rows(&gguf, &mut back, n_head, row).unwrap();
        assert_eq!(back, hf);
        assert!(unpermute_rows(&gguf[..10], &mut back[..10], n_head, row).is_err());
    }

    #[test]
    fn llama3_parameters_come_back_from_rope_freqs() {
        for (theta, n_rot, orig) in [(500000.0, 128, 8192.0), (500000.0, 8, 256.0)] {
            let r = Llama3Rope {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: orig,
            };
            let f: Vec<f32> = llama3_freqs(&r, theta, n_rot)
                .iter()
                .map(|&x| x as f32)
                .collect();
            assert_eq!(llama3_from_freqs(&f, theta, n_rot).unwrap(), r);
        }
        let err = llama3_from_freqs(&[1.0, 3.0, 1.0, 3.0], 500000.0, 8).unwrap_err();
        assert!(err.to_string().contains("not LLaMA 3.1"), "{err}");
    }

    #[test]
    fn shards_like_save_pretrained() {
        let p = |bytes| Plan {
            src: 0,
            hf_name: String::new(),
            shape: vec![],
            unpermute: None,
            bytes,
        };
        let plans = [p(4), p(4), p(9), p(1), p(1)];
        assert_eq!(shard(&plans, 8), vec![0..2, 2..3, 3..5]);
        assert_eq!(shard(&plans, 100), vec![0..5]);
        assert_eq!(parse_dtype("BF16").unwrap(), DType::BF16);
        assert!(parse_dtype("q4_0").is_err());
    }
}
