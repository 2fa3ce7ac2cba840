//! LoRA adapters: low-rank terms added to a base model's products, per sequence.
//!
//! An adapter file (a PEFT folder or a llama.cpp GGUF adapter, read by `lora_file`) becomes an
//! `AdapterFile`: host tensors under the base's GGUF names. `Lora::build` checks it against a
//! loaded model and hands its matrices to the backend. A forward applies the adapters each
//! sequence names (`SeqStep::lora`): y = W x + s * B (A x) for every targeted weight, the base
//! product once for the whole batch, each sequence's low-rank term on its own rows
//! (`forward.rs::project`). `merge` folds adapters into a dequantized copy of the base instead.

use crate::config::Config;
use crate::model::Model;
use cria_core::{DType, Error, Result, Tensor};
use cria_kernels::{Backend, CpuBackend, LoraAdapter, Weight};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The largest rank cria applies (the forward's scratch holds `ubatch * MAX_LORA_RANK` values
/// for the down-projected rows). PEFT adapters in the wild use 4..256.
pub const MAX_LORA_RANK: usize = 1024;

/// Which product of the model an adapter pair modifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
    /// The output head (lm_head).
    Output,
}

impl Target {
    /// The seven per-layer targets, in `Layer::matrices` order.
    pub const LAYER: [Target; 7] = [
        Target::Q,
        Target::K,
        Target::V,
        Target::O,
        Target::Gate,
        Target::Up,
        Target::Down,
    ];

    /// The GGUF name of the weight without its layer and suffix: `attn_q`, ..., `output`.
    pub fn gguf_stem(self) -> &'static str {
        match self {
            Target::Q => "attn_q",
            Target::K => "attn_k",
            Target::V => "attn_v",
            Target::O => "attn_output",
            Target::Gate => "ffn_gate",
            Target::Up => "ffn_up",
            Target::Down => "ffn_down",
            Target::Output => "output",
        }
    }

    /// Index in `Target::LAYER` (None for `Output`).
    pub fn layer_index(self) -> Option<usize> {
        Target::LAYER.iter().position(|&t| t == self)
    }

    /// (target, layer) of a GGUF weight name: `blk.3.attn_q.weight` -> (Q, Some(3)),
    /// `output.weight` -> (Output, None).
    pub fn of_gguf_name(name: &str) -> Option<(Target, Option<usize>)> {
        if name == "output.weight" {
            return Some((Target::Output, None));
        }
        let rest = name.strip_prefix("blk.")?;
        let (idx, tail) = rest.split_once('.')?;
        let l: usize = idx.parse().ok()?;
        let stem = tail.strip_suffix(".weight")?;
        let t = *Target::LAYER.iter().find(|t| t.gguf_stem() == stem)?;
        Some((t, Some(l)))
    }
}

/// Which file format an adapter came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdapterFormat {
    /// A PEFT folder: adapter_config.json + adapter_model.safetensors.
    Peft,
    /// A llama.cpp GGUF adapter (`general.type = adapter`, `adapter.type = lora`).
    Gguf,
}

/// One low-rank pair of an adapter file, on the host.
pub struct LoraTensors {
    /// The base weight it modifies, by GGUF name (`blk.3.attn_q.weight`, `output.weight`).
    pub target: String,
    /// The down projection: rank rows of the base's cols (GGML ne = [cols, rank]); f32/f16/bf16.
    pub a: Tensor,
    /// The up projection: the base's rows, rank cols (GGML ne = [rank, rows]).
    pub b: Tensor,
    /// The file's own factor: lora_alpha / r (alpha / sqrt(r) with rslora, per-module alpha and
    /// rank from alpha_pattern / rank_pattern); the user's scale multiplies it.
    pub scale: f32,
}

/// An adapter as its file has it, before any model is involved.
pub struct AdapterFile {
    pub path: PathBuf,
    pub format: AdapterFormat,
    /// The base model the file names (PEFT's base_model_name_or_path, GGUF's
    /// general.base_model.0.name / general.basename), for messages and `cria inspect`.
    pub base_model: Option<String>,
    /// Q/K rows in llama.cpp's interleaved layout (a GGUF adapter, made against a converted
    /// base) or in Hugging Face's half-split layout (a PEFT adapter). `Lora::build` permutes the
    /// up projections of attn_q/attn_k to the base model's layout.
    pub interleaved: bool,
    /// Every low-rank pair, base weight by base weight.
    pub pairs: Vec<LoraTensors>,
    /// Whole replacement matrices (PEFT modules_to_save: `token_embd.weight`, `output.weight`),
    /// by GGUF name.
    pub replace: Vec<Tensor>,
    /// What the file declares, for reports: rank, alpha, target module names, rslora...
    pub summary: Vec<(String, String)>,
}

impl AdapterFile {
    /// Bytes of every tensor of the adapter.
    pub fn byte_len(&self) -> usize {
        self.pairs
            .iter()
            .map(|p| p.a.bytes().len() + p.b.bytes().len())
            .chain(self.replace.iter().map(|t| t.bytes().len()))
            .sum()
    }

    /// The largest rank of its pairs.
    pub fn max_rank(&self) -> usize {
        self.pairs.iter().map(|p| p.a.rows()).max().unwrap_or(0)
    }
}

/// An adapter loaded over one model, in the backend's memory.
pub struct Lora<B: Backend = CpuBackend> {
    /// The name it is known by (CLI: the file stem; server: NAME of `--lora NAME=PATH`).
    pub name: String,
    pub path: PathBuf,
    /// Per layer, per `Target::LAYER` index: the pair over that weight, if any.
    pub layers: Vec<[Option<LoraAdapter<B>>; 7]>,
    /// The pair over the output head, if any.
    pub output: Option<LoraAdapter<B>>,
    /// modules_to_save: the embedding table this adapter uses instead of the base's.
    pub token_embd: Option<Weight<B>>,
    /// modules_to_save: the output head this adapter uses instead of the base's.
    pub output_replace: Option<Weight<B>>,
    /// Bytes of the adapter's tensors as loaded.
    pub byte_len: usize,
    pub max_rank: usize,
}

impl<B: Backend> Lora<B> {
    /// The pair over `target` of layer `layer` (None for `Target::Output`'s layer).
    pub fn pair(&self, target: Target, layer: Option<usize>) -> Option<&LoraAdapter<B>> {
        match (target.layer_index(), layer) {
            (Some(i), Some(l)) => self.layers.get(l)?[i].as_ref(),
            (None, _) => self.output.as_ref(),
            _ => None,
        }
    }

    /// `file` checked against `model` (every target a weight of the model, every shape its
    /// shape, ranks within `MAX_LORA_RANK`, values finite), Q/K up projections permuted to the
    /// model's layout, matrices prepared by `backend`.
    pub fn build(name: &str, file: AdapterFile, model: &Model<B>, backend: &B) -> Result<Self> {
        let c = &model.config;
        let mut layers: Vec<[Option<LoraAdapter<B>>; 7]> =
            (0..c.n_layers).map(|_| Default::default()).collect();
        let mut output = None;
        let max_rank = file.max_rank();
        let byte_len = file.byte_len();
        let base = BaseShape::of_config(c);
        for p in &file.pairs {
            let CheckedPair {
                target,
                layer,
                rank,
                rows,
                cols,
                a,
                b,
            } = check_pair(&file, p, &base)?;
            // Kept in the file's element type (f16 / bf16 halve the bytes each token reads;
            // the values above came from that type, so converting back is exact).
            let (a, b) = backend.prepare_lora(
                lora_tensor(
                    format!("{}.lora_a", p.target),
                    vec![cols, rank],
                    &a,
                    p.a.dtype,
                )?,
                lora_tensor(
                    format!("{}.lora_b", p.target),
                    vec![rank, rows],
                    &b,
                    p.b.dtype,
                )?,
            )?;
            let adapter = LoraAdapter {
                a,
                b,
                rank,
                rows,
                cols,
                scale: p.scale,
            };
            match (target.layer_index(), layer) {
                (Some(i), Some(l)) => layers[l][i] = Some(adapter),
                _ => output = Some(adapter),
            }
        }
        let mut token_embd = None;
        let mut output_replace = None;
        for t in file.replace {
            check_replacement(&file.path, &t, c.dim, c.vocab_size)?;
            match t.name.as_str() {
                "token_embd.weight" => token_embd = Some(Weight::embedding(backend, t, None)?),
                _ => output_replace = Some(Weight::prepare(backend, t)?),
            }
        }
        Ok(Lora {
            name: name.to_string(),
            path: file.path.clone(),
            layers,
            output,
            token_embd,
            output_replace,
            byte_len,
            max_rank,
        })
    }
}

/// An owned tensor of `v` in `dtype`: F32 as it is, F16 / BF16 rounded to nearest even (exact
/// for values that came from that type); any other type is F32.
pub fn lora_tensor(name: String, ne: Vec<usize>, v: &[f32], dtype: DType) -> Result<Tensor> {
    let halves: Vec<u16> = match dtype {
        DType::F16 => v
            .iter()
            .map(|&x| half::f16::from_f32(x).to_bits())
            .collect(),
        DType::BF16 => v
            .iter()
            .map(|&x| half::bf16::from_f32(x).to_bits())
            .collect(),
        _ => return Tensor::from_f32(name, ne, v),
    };
    Tensor::new(
        name,
        dtype,
        ne,
        cria_core::tensor::Bytes::owned(cria_core::tensor::AlignedBuf::from_slice(
            bytemuck::cast_slice(&halves),
        )),
    )
}

/// An adapter error naming the file.
pub(crate) fn adapter_error(path: &Path, msg: String) -> Error {
    Error::msg(format!("LoRA adapter {}: {msg}", path.display()))
}

/// (rows, cols) of a weight by GGUF name (None: the base has no such weight).
pub type ShapeOf<'a> = Box<dyn Fn(&str) -> Option<(usize, usize)> + 'a>;

/// What an adapter is checked against: the base's layer count, its Q/K row layout and head
/// counts, and the shapes of its weights.
pub struct BaseShape<'a> {
    pub n_layers: usize,
    /// Q/K rows in llama.cpp's interleaved layout (a GGUF base) or HF's half-split one.
    pub interleaved: bool,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    /// (rows, cols) of a weight by GGUF name; `output.weight` of a tied model is the table's.
    pub shape: ShapeOf<'a>,
}

impl BaseShape<'_> {
    /// The shapes a model of config `c` has (what `Model::load` checks).
    pub fn of_config(c: &Config) -> BaseShape<'static> {
        let (dim, q, kv, ffn, vocab) = (c.dim, c.q_dim(), c.kv_dim(), c.ffn_dim, c.vocab_size);
        let n_layers = c.n_layers;
        let shape = move |name: &str| -> Option<(usize, usize)> {
            if name == "token_embd.weight" {
                return Some((vocab, dim));
            }
            let (t, layer) = Target::of_gguf_name(name)?;
            if layer.is_some_and(|l| l >= n_layers) {
                return None;
            }
            Some(match t {
                Target::Q => (q, dim),
                Target::K | Target::V => (kv, dim),
                Target::O => (dim, q),
                Target::Gate | Target::Up => (ffn, dim),
                Target::Down => (dim, ffn),
                Target::Output => (vocab, dim),
            })
        };
        BaseShape {
            n_layers,
            interleaved: c.rope_interleaved,
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            shape: Box::new(shape),
        }
    }
}

/// A pair checked against a base: what it targets, its shape, and its matrices as f32 with the
/// up projection's rows in the base's Q/K layout.
pub(crate) struct CheckedPair {
    pub target: Target,
    pub layer: Option<usize>,
    pub rank: usize,
    pub rows: usize,
    pub cols: usize,
    /// rank x cols, row-major.
    pub a: Vec<f32>,
    /// rows x rank, row-major.
    pub b: Vec<f32>,
}

/// `p` of `file` checked against `base`: every target a weight of the base, every shape its
/// shape, the rank within `MAX_LORA_RANK`, scale and values finite; Q/K up projections permuted
/// to the base's layout.
pub(crate) fn check_pair(
    file: &AdapterFile,
    p: &LoraTensors,
    base: &BaseShape,
) -> Result<CheckedPair> {
    let what = |msg: String| adapter_error(&file.path, msg);
    let (target, layer) = Target::of_gguf_name(&p.target).ok_or_else(|| {
        what(format!(
            "tensor {} targets no weight cria can adapt (attention, MLP, output head)",
            p.target
        ))
    })?;
    let (rows, cols) = (base.shape)(&p.target).ok_or_else(|| {
        what(format!(
            "tensor {} is for layer {}, the base model has {} layers (an adapter for another \
             base?)",
            p.target,
            layer.unwrap_or(0),
            base.n_layers
        ))
    })?;
    let rank = p.a.rows();
    if rank == 0 || rank > MAX_LORA_RANK {
        return Err(what(format!(
            "tensor {}: rank {rank} (1..={MAX_LORA_RANK})",
            p.target
        )));
    }
    if p.a.cols() != cols || p.b.rows() != rows || p.b.cols() != rank {
        return Err(what(format!(
            "tensor {}: lora_a is {}x{} and lora_b {}x{}, the base weight is {rows}x{cols} (an \
             adapter for another base?)",
            p.target,
            p.a.rows(),
            p.a.cols(),
            p.b.rows(),
            p.b.cols(),
        )));
    }
    if !p.scale.is_finite() {
        return Err(what(format!("tensor {}: scale {}", p.target, p.scale)));
    }
    let a = host_matrix(&p.a, &p.target, "lora_a")?;
    let mut b = host_matrix(&p.b, &p.target, "lora_b")?;
    if file.interleaved != base.interleaved {
        let heads = match target {
            Target::Q => Some(base.n_heads),
            Target::K => Some(base.n_kv_heads),
            _ => None,
        };
        if let Some(h) = heads {
            b = permute_rows(&b, rank, h, file.interleaved);
        }
    }
    Ok(CheckedPair {
        target,
        layer,
        rank,
        rows,
        cols,
        a,
        b,
    })
}

/// A modules_to_save replacement checked: the embedding table or the output head, of the base's
/// shape ([dim, vocab] in GGML order).
pub(crate) fn check_replacement(path: &Path, t: &Tensor, dim: usize, vocab: usize) -> Result<()> {
    let want = [dim, vocab];
    let shape = t.ne.to_vec();
    if shape != want {
        return Err(adapter_error(
            path,
            format!(
                "{}: shape {shape:?}, the base's is {want:?} (GGML order)",
                t.name
            ),
        ));
    }
    if !matches!(t.name.as_str(), "token_embd.weight" | "output.weight") {
        return Err(adapter_error(
            path,
            format!(
                "modules_to_save {}: cria replaces only the embedding table and the output head",
                t.name
            ),
        ));
    }
    Ok(())
}

/// A tensor's values as f32, refused if any is NaN or infinite.
fn host_matrix(t: &Tensor, target: &str, which: &str) -> Result<Vec<f32>> {
    if !matches!(t.dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Err(Error::Unsupported(format!(
            "LoRA tensor {target}.{which} has type {}: cria reads f32, f16 and bf16 adapters",
            t.dtype
        )));
    }
    let v = t.to_f32_vec()?;
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(Error::msg(format!(
            "LoRA tensor {target}.{which} holds a non-finite value ({}) at index {i}",
            v[i]
        )));
    }
    Ok(v)
}

/// The rows of an up projection (rows = heads * head_dim, `cols` values each) moved between
/// Hugging Face's half-split RoPE layout and llama.cpp's interleaved pairs (its converter's
/// `permute`). `from_interleaved`: undo it.
pub fn permute_rows(v: &[f32], cols: usize, heads: usize, from_interleaved: bool) -> Vec<f32> {
    let rows = v.len() / cols;
    let hd = rows / heads;
    let half = hd / 2;
    let mut out = vec![0f32; v.len()];
    for h in 0..heads {
        for i in 0..half {
            for s in 0..2 {
                // HF row: h*hd + s*half + i; interleaved row: h*hd + 2*i + s.
                let hf = h * hd + s * half + i;
                let il = h * hd + 2 * i + s;
                let (src, dst) = if from_interleaved { (il, hf) } else { (hf, il) };
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&v[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// An adapter a sequence runs with, at the user's scale (the file's own factor multiplies it).
pub struct ActiveLora<B: Backend = CpuBackend> {
    pub lora: Arc<Lora<B>>,
    pub scale: f32,
}

// Not derived: that would ask `B: Clone`, and only the `Arc` is cloned.
impl<B: Backend> Clone for ActiveLora<B> {
    fn clone(&self) -> Self {
        ActiveLora {
            lora: self.lora.clone(),
            scale: self.scale,
        }
    }
}

/// Whether two adapter lists are the same adapters at the same scales, in the same order (a KV
/// cache computed with one serves the other).
pub fn same_adapters<B: Backend>(a: &[ActiveLora<B>], b: &[ActiveLora<B>]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| Arc::ptr_eq(&x.lora, &y.lora) && x.scale.to_bits() == y.scale.to_bits())
}
