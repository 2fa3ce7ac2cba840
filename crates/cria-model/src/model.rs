//! Weights and loading. Weight fields carry the GGUF tensor names; a Hugging Face folder is read
//! through the one name table in names.rs. Quantized weights stay quantized (and mapped): the
//! backend's matmul runs them in their own type. `f32: true` dequantizes every matrix once, at
//! load, for the exact reference path.

use crate::config::{Config, RopeScaling};
use crate::lora::{AdapterFile, BaseShape};
use crate::lora_merge::Merge;
use crate::names::{self, layer_name};
use cria_core::gguf::GgufFile;
use cria_core::{DType, Error, Result, Tensor};
use cria_kernels::{Backend, CpuBackend, Rope, Weight};
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One transformer block's weights, in the backend's memory: matrices as `Weight`s, norm
/// weights and biases as backend buffers.
pub struct Layer<B: Backend = CpuBackend> {
    pub attn_norm: B::Buf,                // (dim)
    pub attn_q: Weight<B>,                // rows q_dim, cols dim
    pub attn_k: Weight<B>,                // rows kv_dim, cols dim
    pub attn_v: Weight<B>,                // rows kv_dim, cols dim
    pub attn_output: Weight<B>,           // rows dim, cols q_dim
    pub attn_q_bias: Option<B::Buf>,      // (q_dim)
    pub attn_k_bias: Option<B::Buf>,      // (kv_dim)
    pub attn_v_bias: Option<B::Buf>,      // (kv_dim)
    pub attn_output_bias: Option<B::Buf>, // (dim)
    pub ffn_norm: B::Buf,                 // (dim)
    pub ffn_gate: Weight<B>,              // rows ffn_dim, cols dim
    pub ffn_up: Weight<B>,                // rows ffn_dim, cols dim
    pub ffn_down: Weight<B>,              // rows dim, cols ffn_dim
    pub ffn_gate_bias: Option<B::Buf>,    // (ffn_dim)
    pub ffn_up_bias: Option<B::Buf>,      // (ffn_dim)
    pub ffn_down_bias: Option<B::Buf>,    // (dim)
}

impl<B: Backend> Layer<B> {
    /// The seven weight matrices, in the order the forward reads them.
    pub fn matrices(&self) -> [&Weight<B>; 7] {
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

    /// The norm weights and the biases there are.
    fn vectors(&self) -> impl Iterator<Item = &B::Buf> {
        [&self.attn_norm, &self.ffn_norm].into_iter().chain(
            [
                &self.attn_q_bias,
                &self.attn_k_bias,
                &self.attn_v_bias,
                &self.attn_output_bias,
                &self.ffn_gate_bias,
                &self.ffn_up_bias,
                &self.ffn_down_bias,
            ]
            .into_iter()
            .flatten(),
        )
    }
}

pub struct Weights<B: Backend = CpuBackend> {
    pub token_embd: Weight<B>, // rows vocab, cols dim
    pub output_norm: B::Buf,   // (dim)
    /// rows vocab, cols dim; the same bytes as token_embd when embeddings are tied (`tied`).
    pub output: Weight<B>,
    /// Whether `output` is the embedding table (counted once in `n_params`).
    pub tied: bool,
    pub layers: Vec<Layer<B>>,
}

/// Where the model came from (kept for `inspect`, tokenizer and template loading).
pub enum Source {
    Gguf(GgufFile),
    HfFolder { dir: PathBuf, config_json: String },
}

pub struct Model<B: Backend = CpuBackend> {
    pub config: Config,
    pub weights: Weights<B>,
    pub rope: Rope,
    pub source: Source,
    /// The backend's allocation handle: caches and scratch buffers are made from the model.
    pub device: B::Device,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions {
    /// Dequantize every weight to f32 at load (the exact path, for verification).
    pub f32: bool,
}

/// Builds weights from a name -> tensor lookup (GGUF names), checking every shape.
struct Builder<'a, B> {
    get: &'a dyn Fn(&str) -> Option<Tensor>,
    cfg: &'a Config,
    opts: LoadOptions,
    backend: &'a B,
}

impl<B: Backend> Builder<'_, B> {
    /// A weight matrix, checked and handed to the backend's `prepare` (its own layout, if any).
    fn tensor(&self, name: &str, ne: [usize; 2]) -> Result<Weight<B>> {
        Weight::prepare(self.backend, self.raw_tensor(name, ne)?)
    }
    /// A matrix as the file has it, checked.
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
    fn vector(&self, name: &str, n: usize) -> Result<B::Buf> {
        let t = (self.get)(name)
            .ok_or_else(|| Error::msg(format!("tensor {name} is missing from the model file")))?;
        self.vec_of(t, n)
    }
    fn opt_vector(&self, name: &str, n: usize) -> Result<Option<B::Buf>> {
        (self.get)(name).map(|t| self.vec_of(t, n)).transpose()
    }
    fn vec_of(&self, t: Tensor, n: usize) -> Result<B::Buf> {
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
        self.backend.upload(v)
    }

    fn build(&self) -> Result<Weights<B>> {
        let c = self.cfg;
        let (dim, q, kv, ffn) = (c.dim, c.q_dim(), c.kv_dim(), c.ffn_dim);
        let table = self.raw_tensor("token_embd.weight", [dim, c.vocab_size])?;
        let (output, token_embd, tied) = match (self.get)("output.weight") {
            Some(t) if !c.tied_embeddings => {
                let head = Weight::prepare(self.backend, self.check(t, [dim, c.vocab_size])?)?;
                (head, Weight::embedding(self.backend, table, None)?, false)
            }
            // Tied: the head is the table, prepared as a matrix; the table may share what the
            // backend made of it (so the weights are held once).
            _ => {
                let head = Weight::prepare(self.backend, table.clone())?;
                let embd = Weight::embedding(self.backend, table, Some(&head))?;
                (head, embd, true)
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
            tied,
            layers,
        })
    }
}

/// RoPE in llama.cpp's terms (base, linear freq_scale, per-pair freq factors), so the kernels can
/// reproduce ggml's angles; llama3 scaling becomes freq factors, as llama.cpp's converter writes.
pub fn make_rope(c: &Config) -> Rope {
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

impl<B: Backend> Model<B> {
    /// Logits per token: the output head's rows (the vocabulary, unless [`Model::keep_head_rows`]
    /// cut the head).
    pub fn n_logits(&self) -> usize {
        self.weights.output.rows
    }

    /// Keeps the first `n` rows of the output head: the forward then gives logits for token ids
    /// `0..n` only, and its head costs `n / vocab` of the full one. A draft model's cheaper head
    /// (speculative decoding): a byte-level BPE vocabulary numbers its tokens roughly in merge
    /// order, so the low ids are the frequent tokens (SmolLM2's first 16,384 of 49,152 cover ~96%
    /// of English text), and a draft only proposes. Every id still embeds (the table is not
    /// cut). `n` of 0 or at least the vocabulary: nothing changes. Re-reads the head from the
    /// model's file.
    pub fn keep_head_rows(&mut self, backend: &B, n: usize) -> Result<()> {
        if n == 0 || n >= self.n_logits() {
            return Ok(());
        }
        let name = if self.weights.tied {
            "token_embd.weight"
        } else {
            "output.weight"
        };
        let t = match &self.source {
            Source::Gguf(g) => g.tensor(name).cloned(),
            Source::HfFolder { dir, .. } => {
                cria_core::safetensors::SafetensorsModel::open_folder(dir)?
                    .tensors
                    .iter()
                    .find(|t| names::hf_to_gguf(&t.name).as_deref() == Some(name))
                    .cloned()
            }
        }
        .ok_or_else(|| Error::msg(format!("keep_head_rows: the model's file has no {name}")))?;
        if t.rows() != self.n_logits() {
            return Err(Error::msg(format!(
                "keep_head_rows: {name} has {} rows, the head {}",
                t.rows(),
                self.n_logits()
            )));
        }
        let bytes = &t.bytes()[..n * t.row_bytes()];
        let data =
            cria_core::tensor::Bytes::owned(cria_core::tensor::AlignedBuf::from_slice(bytes));
        let head = Tensor::new(name, t.dtype, vec![t.cols(), n], data)?;
        self.weights.output = Weight::prepare(backend, head)?;
        Ok(())
    }

    /// Loads a `.gguf` file (or split set), or a Hugging Face folder (config.json + safetensors).
    pub fn load(path: &Path, opts: LoadOptions, backend: &B) -> Result<Self> {
        Self::load_merged(path, opts, backend, &[])
    }

    /// [`Model::load`] with `adapters` (each at the user's scale) folded into the weights they
    /// target (`lora_merge`): those weights become f32, the rest load as they are.
    pub fn load_merged(
        path: &Path,
        opts: LoadOptions,
        backend: &B,
        adapters: &[(AdapterFile, f32)],
    ) -> Result<Self> {
        if path.is_dir() {
            Self::load_hf_folder_merged(path, opts, backend, adapters)
        } else {
            Self::load_gguf_merged(GgufFile::open(path)?, opts, backend, adapters)
        }
    }

    pub fn load_gguf(g: GgufFile, opts: LoadOptions, backend: &B) -> Result<Self> {
        Self::load_gguf_merged(g, opts, backend, &[])
    }

    /// [`Model::load_gguf`] with `adapters` merged (see [`Model::load_merged`]).
    pub fn load_gguf_merged(
        g: GgufFile,
        opts: LoadOptions,
        backend: &B,
        adapters: &[(AdapterFile, f32)],
    ) -> Result<Self> {
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
            &mut config,
            opts,
            backend,
            adapters,
        )?;
        // Every page of the file that no weight reads through the map any more (the header,
        // the prepared matrices' shared boundary pages) leaves the process.
        let mut read = vec![&weights.token_embd, &weights.output];
        for l in &weights.layers {
            read.extend(l.matrices());
        }
        let read: Vec<&Tensor> = read
            .into_iter()
            .filter_map(|w| B::mapped(&w.base))
            .collect();
        g.release_pages_except(&read);
        Ok(Model {
            rope: make_rope(&config),
            config,
            weights,
            source: Source::Gguf(g),
            device: backend.device(),
        })
    }

    /// The weights from `get`, with `adapters` merged: the merged tensors come from the merge,
    /// and a tied head that the merge changes becomes a head of its own (`cfg` untied).
    fn build(
        get: &dyn Fn(&str) -> Option<Tensor>,
        cfg: &mut Config,
        opts: LoadOptions,
        backend: &B,
        adapters: &[(AdapterFile, f32)],
    ) -> Result<Weights<B>> {
        if adapters.is_empty() {
            return Builder {
                get,
                cfg,
                opts,
                backend,
            }
            .build();
        }
        let merge = Merge::new(adapters, &BaseShape::of_config(cfg))?;
        let tied = cfg.tied_embeddings;
        cfg.tied_embeddings = tied && !merge.unties(tied);
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        // The merge's first error (the lookup can only say "missing"): reported over the
        // Builder's.
        let failed: RefCell<Option<Error>> = RefCell::new(None);
        let merged = |name: &str| match merge.tensor(name, get, tied, threads) {
            Ok(Some(t)) => Some(t),
            Ok(None) => get(name),
            Err(e) => {
                failed.borrow_mut().get_or_insert(e);
                None
            }
        };
        let built = Builder {
            get: &merged,
            cfg,
            opts,
            backend,
        }
        .build();
        match failed.into_inner() {
            Some(e) => Err(e),
            None => built,
        }
    }

    pub fn load_hf_folder(dir: &Path, opts: LoadOptions, backend: &B) -> Result<Self> {
        Self::load_hf_folder_merged(dir, opts, backend, &[])
    }

    /// [`Model::load_hf_folder`] with `adapters` merged (see [`Model::load_merged`]).
    pub fn load_hf_folder_merged(
        dir: &Path,
        opts: LoadOptions,
        backend: &B,
        adapters: &[(AdapterFile, f32)],
    ) -> Result<Self> {
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
            &mut config,
            opts,
            backend,
            adapters,
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
            device: backend.device(),
        })
    }

    /// Parameters: every matrix and norm, the tied output head counted once.
    pub fn n_params(&self) -> usize {
        let w = &self.weights;
        let mut n = w.token_embd.n_elements() + B::buf_len(&w.output_norm);
        if !w.tied {
            n += w.output.n_elements();
        }
        for l in &w.layers {
            n += l.matrices().iter().map(|t| t.n_elements()).sum::<usize>();
            n += l.vectors().map(B::buf_len).sum::<usize>();
        }
        n
    }

    /// The weight type holding most of the layers' bytes (what a file's quantization is called by).
    pub fn main_dtype(&self) -> cria_core::DType {
        let matrices = self.weights.layers.iter().flat_map(|l| l.matrices());
        cria_core::ftype::main_dtype(matrices.map(|w| (w.dtype, w.byte_len)))
            .unwrap_or(self.weights.output.dtype)
    }

    /// Bytes of the matrices one token's forward reads: every layer matrix and the output head.
    pub fn weight_bytes(&self) -> usize {
        let w = &self.weights;
        let mut n = w.output.byte_len;
        for l in &w.layers {
            for t in l.matrices() {
                n += t.byte_len;
            }
        }
        n
    }
}
