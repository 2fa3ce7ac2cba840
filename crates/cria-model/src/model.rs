//! Weights and loading. Weight fields carry the GGUF tensor names; a Hugging Face folder is read
//! through the one name table in names.rs. Quantized weights stay quantized (and mapped): the
//! backend's matmul runs them in their own type. `f32: true` dequantizes every matrix once, at
//! load, for the exact reference path.

use crate::config::{Config, RopeScaling};
use crate::names::{self, layer_name};
use cria_core::gguf::GgufFile;
use cria_core::{DType, Error, Result, Tensor};
use cria_kernels::{Backend, Rope};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub struct Layer {
    pub attn_norm: Vec<f32>,                // (dim)
    pub attn_q: Tensor,                     // rows q_dim, cols dim
    pub attn_k: Tensor,                     // rows kv_dim, cols dim
    pub attn_v: Tensor,                     // rows kv_dim, cols dim
    pub attn_output: Tensor,                // rows dim, cols q_dim
    pub attn_q_bias: Option<Vec<f32>>,      // (q_dim)
    pub attn_k_bias: Option<Vec<f32>>,      // (kv_dim)
    pub attn_v_bias: Option<Vec<f32>>,      // (kv_dim)
    pub attn_output_bias: Option<Vec<f32>>, // (dim)
    pub ffn_norm: Vec<f32>,                 // (dim)
    pub ffn_gate: Tensor,                   // rows ffn_dim, cols dim
    pub ffn_up: Tensor,                     // rows ffn_dim, cols dim
    pub ffn_down: Tensor,                   // rows dim, cols ffn_dim
    pub ffn_gate_bias: Option<Vec<f32>>,    // (ffn_dim)
    pub ffn_up_bias: Option<Vec<f32>>,      // (ffn_dim)
    pub ffn_down_bias: Option<Vec<f32>>,    // (dim)
}

impl Layer {
    /// The seven weight matrices, in the order the forward reads them.
    pub fn matrices(&self) -> [&Tensor; 7] {
        [
            &self.attn_q,
            &self.attn_k,
            &self.attn_v,
            &self.attn_output,
            &self.ffn_gate,
            &self.ffn_up,
            &self.ffn_down,
        ]
    }
}

pub struct Weights {
    pub token_embd: Tensor,    // rows vocab, cols dim
    pub output_norm: Vec<f32>, // (dim)
    /// rows vocab, cols dim; the same tensor as token_embd when embeddings are tied.
    pub output: Tensor,
    pub layers: Vec<Layer>,
}

/// Where the model came from (kept for `inspect`, tokenizer and template loading).
pub enum Source {
    Gguf(GgufFile),
    HfFolder { dir: PathBuf, config_json: String },
}

pub struct Model {
    pub config: Config,
    pub weights: Weights,
    pub rope: Rope,
    pub source: Source,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions {
    /// Dequantize every weight to f32 at load (the exact path, for verification).
    pub f32: bool,
}

/// Builds weights from a name -> tensor lookup (GGUF names), checking every shape.
struct Builder<'a> {
    get: &'a dyn Fn(&str) -> Option<Tensor>,
    cfg: &'a Config,
    opts: LoadOptions,
    backend: &'a dyn Backend,
}

impl Builder<'_> {
    /// A weight matrix, checked and handed to the backend's `prepare` (its own layout, if any).
    fn tensor(&self, name: &str, ne: [usize; 2]) -> Result<Tensor> {
        self.prepare(self.raw_tensor(name, ne)?)
    }
    /// `Backend::prepare`; when the backend made its own copy, the mapped pages of the original
    /// are released so the process holds the weights once, not twice.
    fn prepare(&self, t: Tensor) -> Result<Tensor> {
        let t = self.backend.prepare(t)?;
        if t.prepared.is_some() {
            t.data.release_pages();
        }
        Ok(t)
    }
    /// A matrix as the file has it (the embedding table, read row by row by `embed`).
    fn raw_tensor(&self, name: &str, ne: [usize; 2]) -> Result<Tensor> {
        let t = (self.get)(name)
            .ok_or_else(|| Error::msg(format!("tensor {name} is missing from the model file")))?;
        self.check(t, ne)
    }
    fn check(&self, t: Tensor, ne: [usize; 2]) -> Result<Tensor> {
        let shape: Vec<usize> = t.ne.iter().copied().collect();
        let trimmed: Vec<usize> = if shape.len() > 2 && shape[2..].iter().all(|&d| d == 1) {
            shape[..2].to_vec()
        } else {
            shape.clone()
        };
        if trimmed != ne {
            return Err(Error::msg(format!(
                "tensor {}: shape {:?}, expected {:?} (GGML order)",
                t.name, shape, ne
            )));
        }
        let t = if self.opts.f32 && t.dtype != DType::F32 {
            let v = t.to_f32_vec()?;
            Tensor::from_f32(t.name.clone(), vec![ne[0], ne[1]], &v)?
        } else {
            t
        };
        if !self.backend.supports(t.dtype) {
            return Err(Error::Unsupported(format!(
                "tensor {} has type {}, which the {} backend does not run yet",
                t.name,
                t.dtype,
                self.backend.name()
            )));
        }
        Ok(t)
    }
    fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>> {
        let t = (self.get)(name)
            .ok_or_else(|| Error::msg(format!("tensor {name} is missing from the model file")))?;
        self.vec_of(t, n)
    }
    fn opt_vector(&self, name: &str, n: usize) -> Result<Option<Vec<f32>>> {
        (self.get)(name).map(|t| self.vec_of(t, n)).transpose()
    }
    fn vec_of(&self, t: Tensor, n: usize) -> Result<Vec<f32>> {
        if t.n_elements() != n {
            return Err(Error::msg(format!(
                "tensor {}: {} elements, expected {n}",
                t.name,
                t.n_elements()
            )));
        }
        let v = t.to_f32_vec()?;
        // Norm weights are copied: their mapped pages (and the fault-around's neighbours) would
        // stay resident for nothing.
        t.data.release_pages();
        Ok(v)
    }

    fn build(&self) -> Result<Weights> {
        let c = self.cfg;
        let (dim, q, kv, ffn) = (c.dim, c.q_dim(), c.kv_dim(), c.ffn_dim);
        let mut token_embd = self.raw_tensor("token_embd.weight", [dim, c.vocab_size])?;
        // `embed` reads a few rows per token: no read-ahead of the rest.
        token_embd.data.advise_random();
        let output = match (self.get)("output.weight") {
            Some(t) if !c.tied_embeddings => self.prepare(self.check(t, [dim, c.vocab_size])?)?,
            // Tied: the same bytes, unless the backend wants its own layout for the head; then
            // the table shares that copy (embed reads rows from it) and the file's pages of the
            // table are never touched again, so the weights are held once.
            _ => {
                let head = self.prepare(token_embd.clone())?;
                token_embd.prepared = head.prepared.clone();
                head
            }
        };
        let mut layers = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let n = |p: &str| layer_name(p, i);
            layers.push(Layer {
                attn_norm: self.vector(&n("blk.{}.attn_norm.weight"), dim)?,
                attn_q: self.tensor(&n("blk.{}.attn_q.weight"), [dim, q])?,
                attn_k: self.tensor(&n("blk.{}.attn_k.weight"), [dim, kv])?,
                attn_v: self.tensor(&n("blk.{}.attn_v.weight"), [dim, kv])?,
                attn_output: self.tensor(&n("blk.{}.attn_output.weight"), [q, dim])?,
                attn_q_bias: self.opt_vector(&n("blk.{}.attn_q.bias"), q)?,
                attn_k_bias: self.opt_vector(&n("blk.{}.attn_k.bias"), kv)?,
                attn_v_bias: self.opt_vector(&n("blk.{}.attn_v.bias"), kv)?,
                attn_output_bias: self.opt_vector(&n("blk.{}.attn_output.bias"), dim)?,
                ffn_norm: self.vector(&n("blk.{}.ffn_norm.weight"), dim)?,
                ffn_gate: self.tensor(&n("blk.{}.ffn_gate.weight"), [dim, ffn])?,
                ffn_up: self.tensor(&n("blk.{}.ffn_up.weight"), [dim, ffn])?,
                ffn_down: self.tensor(&n("blk.{}.ffn_down.weight"), [ffn, dim])?,
                ffn_gate_bias: self.opt_vector(&n("blk.{}.ffn_gate.bias"), ffn)?,
                ffn_up_bias: self.opt_vector(&n("blk.{}.ffn_up.bias"), ffn)?,
                ffn_down_bias: self.opt_vector(&n("blk.{}.ffn_down.bias"), dim)?,
            });
        }
        Ok(Weights {
            token_embd,
            output_norm: self.vector("output_norm.weight", dim)?,
            output,
            layers,
        })
    }
}

/// RoPE in llama.cpp's terms (base, linear freq_scale, per-pair freq factors), so the kernels can
/// reproduce ggml's angles; llama3 scaling becomes freq factors, as llama.cpp's converter writes.
fn make_rope(c: &Config) -> Rope {
    let (freq_scale, ff) = match &c.rope_scaling {
        RopeScaling::None => (1.0, None),
        RopeScaling::Linear { factor } => (1.0 / factor, None),
        RopeScaling::FreqFactors(ff) => (1.0, Some(ff.clone())),
        RopeScaling::Llama3 { .. } => {
            let plain = Config {
                rope_scaling: RopeScaling::None,
                ..c.clone()
            }
            .rope_inv_freq();
            (
                1.0,
                Some(
                    plain
                        .iter()
                        .zip(c.rope_inv_freq())
                        .map(|(&p, s)| (p as f64 / s as f64) as f32)
                        .collect(),
                ),
            )
        }
    };
    Rope::new(
        c.n_rot,
        c.rope_theta,
        freq_scale,
        ff,
        1.0,
        c.rope_interleaved,
    )
}

impl Model {
    /// Loads a `.gguf` file (or split set), or a Hugging Face folder (config.json + safetensors).
    pub fn load(path: &Path, opts: LoadOptions, backend: &dyn Backend) -> Result<Model> {
        if path.is_dir() {
            Self::load_hf_folder(path, opts, backend)
        } else {
            Self::load_gguf(GgufFile::open(path)?, opts, backend)
        }
    }

    pub fn load_gguf(g: GgufFile, opts: LoadOptions, backend: &dyn Backend) -> Result<Model> {
        let mut config = Config::from_gguf(&g)?;
        if let Some(f) = g.tensor("rope_freqs.weight") {
            let ff = f.to_f32_vec()?;
            if ff.len() != config.n_rot / 2 {
                return Err(Error::msg(format!(
                    "rope_freqs has {} values, expected {}",
                    ff.len(),
                    config.n_rot / 2
                )));
            }
            if config.rope_scaling != RopeScaling::None {
                return Err(Error::Unsupported(
                    "rope_freqs together with another RoPE scaling".into(),
                ));
            }
            config.rope_scaling = RopeScaling::FreqFactors(ff);
            config.validate()?;
        }
        let weights = Self::build(
            &|name: &str| g.tensor(name).cloned(),
            &config,
            opts,
            backend,
        )?;
        // Every page of the file that no weight reads through the map any more (the header,
        // the repacked matrices' shared boundary pages) leaves the process.
        let mut read = vec![&weights.token_embd, &weights.output];
        for l in &weights.layers {
            read.extend(l.matrices());
        }
        read.retain(|t| t.prepared.is_none());
        g.release_pages_except(&read);
        Ok(Model {
            rope: make_rope(&config),
            config,
            weights,
            source: Source::Gguf(g),
        })
    }

    fn build(
        get: &dyn Fn(&str) -> Option<Tensor>,
        cfg: &Config,
        opts: LoadOptions,
        backend: &dyn Backend,
    ) -> Result<Weights> {
        Builder {
            get,
            cfg,
            opts,
            backend,
        }
        .build()
    }

    pub fn load_hf_folder(dir: &Path, opts: LoadOptions, backend: &dyn Backend) -> Result<Model> {
        let cfg_path = dir.join("config.json");
        let config_json = std::fs::read_to_string(&cfg_path).map_err(|source| Error::Io {
            path: cfg_path.clone(),
            source,
        })?;
        let mut config = Config::from_hf_json(&config_json)?;
        let st = cria_core::safetensors::SafetensorsModel::open_folder(dir)?;
        let mut by_gguf: HashMap<String, Tensor> = HashMap::new();
        for t in &st.tensors {
            if let Some(g) = names::hf_to_gguf(&t.name) {
                let mut t = t.clone();
                t.name = g.clone();
                by_gguf.insert(g, t);
            }
        }
        if !by_gguf.contains_key("output.weight") {
            config.tied_embeddings = true;
        }
        let weights = Self::build(
            &|name: &str| by_gguf.get(name).cloned(),
            &config,
            opts,
            backend,
        )?;
        let source = Source::HfFolder {
            dir: dir.to_path_buf(),
            config_json,
        };
        Ok(Model {
            rope: make_rope(&config),
            config,
            weights,
            source,
        })
    }

    /// Parameters: every matrix and norm, the tied output head counted once.
    pub fn n_params(&self) -> usize {
        let w = &self.weights;
        let elems = |t: &Tensor| t.ne.iter().product::<usize>();
        let tied = self.config.tied_embeddings
            || std::ptr::eq(w.output.bytes().as_ptr(), w.token_embd.bytes().as_ptr());
        let mut n = elems(&w.token_embd) + w.output_norm.len();
        if !tied {
            n += elems(&w.output);
        }
        for l in &w.layers {
            n += l.attn_norm.len() + l.ffn_norm.len();
            for t in l.matrices() {
                n += elems(t);
            }
            for b in [
                &l.attn_q_bias,
                &l.attn_k_bias,
                &l.attn_v_bias,
                &l.attn_output_bias,
                &l.ffn_gate_bias,
                &l.ffn_up_bias,
                &l.ffn_down_bias,
            ] {
                n += b.as_ref().map_or(0, |b| b.len());
            }
        }
        n
    }

    /// The weight type holding most of the layers' bytes (what a file's quantization is called by).
    pub fn main_dtype(&self) -> cria_core::DType {
        let matrices = self.weights.layers.iter().flat_map(|l| l.matrices());
        cria_core::ftype::main_dtype(matrices).unwrap_or(self.weights.output.dtype)
    }

    /// Bytes of the matrices one token's forward reads: every layer matrix and the output head.
    pub fn weight_bytes(&self) -> usize {
        let w = &self.weights;
        let mut n = w.output.bytes().len();
        for l in &w.layers {
            for t in l.matrices() {
                n += t.bytes().len();
            }
        }
        n
    }
}
