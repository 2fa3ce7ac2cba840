//! LoRA adapters: low-rank terms added to a base model's products, per sequence.
//!
//! An adapter file (a PEFT folder or a llama.cpp GGUF adapter, read by `lora_file`) becomes an
//! `AdapterFile`: host tensors under the base's GGUF names. `Lora::build` checks it against a
//! loaded model and hands its matrices to the backend. A forward applies the adapters each
//! sequence names (`SeqStep::lora`): y = W x + s * B (A x) for every targeted weight, the base
//! product once for the whole batch, each sequence's low-rank term on its own rows
//! (`forward.rs::project`). `merge` folds adapters into a dequantized copy of the base instead.

use crate::model::Model;
use cria_core::{DType, Error, Result, Tensor};
use cria_kernels::{Backend, CpuBackend, LoraAdapter, Weight};
use std::path::PathBuf;
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
        let t = match tail {
            "attn_q.weight" => Target::Q,
            "attn_k.weight" => Target::K,
            "attn_v.weight" => Target::V,
            "attn_output.weight" => Target::O,
            "ffn_gate.weight" => Target::Gate,
            "ffn_up.weight" => Target::Up,
            "ffn_down.weight" => Target::Down,
            _ => return None,
        };
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
        let what = |msg: String| Error::msg(format!("LoRA adapter {}: {msg}", file.path.display()));
        for p in file.pairs {
            let (target, layer) = Target::of_gguf_name(&p.target).ok_or_else(|| {
                what(format!(
                    "tensor {} targets no weight cria can adapt (attention, MLP, output head)",
                    p.target
                ))
            })?;
            let base = match (target.layer_index(), layer) {
                (Some(i), Some(l)) => {
                    let lw = model.weights.layers.get(l).ok_or_else(|| {
                        what(format!(
                            "tensor {} is for layer {l}, the base model has {} layers (an \
                             adapter for another base?)",
                            p.target, c.n_layers
                        ))
                    })?;
                    lw.matrices()[i]
                }
                _ => &model.weights.output,
            };
            let rank = p.a.rows();
            if rank == 0 || rank > MAX_LORA_RANK {
                return Err(what(format!(
                    "tensor {}: rank {rank} (1..={MAX_LORA_RANK})",
                    p.target
                )));
            }
            if p.a.cols() != base.cols || p.b.rows() != base.rows || p.b.cols() != rank {
                return Err(what(format!(
                    "tensor {}: lora_a is {}x{} and lora_b {}x{}, the base weight is {}x{} (an \
                     adapter for another base?)",
                    p.target,
                    p.a.rows(),
                    p.a.cols(),
                    p.b.rows(),
                    p.b.cols(),
                    base.rows,
                    base.cols
                )));
            }
            if !p.scale.is_finite() {
                return Err(what(format!("tensor {}: scale {}", p.target, p.scale)));
            }
            let a = host_matrix(&p.a, &p.target, "lora_a")?;
            let mut b = host_matrix(&p.b, &p.target, "lora_b")?;
            if file.interleaved != c.rope_interleaved {
                let heads = match target {
                    Target::Q => Some(c.n_heads),
                    Target::K => Some(c.n_kv_heads),
                    _ => None,
                };
                if let Some(h) = heads {
                    b = permute_rows(&b, rank, h, file.interleaved);
                }
            }
            // Kept in the file's element type (f16 / bf16 halve the bytes each token reads;
            // the values above came from that type, so converting back is exact).
            let (a, b) = backend.prepare_lora(
                lora_tensor(
                    format!("{}.lora_a", p.target),
                    vec![base.cols, rank],
                    &a,
                    p.a.dtype,
                )?,
                lora_tensor(
                    format!("{}.lora_b", p.target),
                    vec![rank, base.rows],
                    &b,
                    p.b.dtype,
                )?,
            )?;
            let adapter = LoraAdapter {
                a,
                b,
                rank,
                rows: base.rows,
                cols: base.cols,
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
            let want = [c.dim, c.vocab_size];
            let shape: Vec<usize> = t.ne.iter().copied().collect();
            if shape != want {
                return Err(what(format!(
                    "{}: shape {shape:?}, the base's is {want:?} (GGML order)",
                    t.name
                )));
            }
            match t.name.as_str() {
                "token_embd.weight" => token_embd = Some(Weight::embedding(backend, t, None)?),
                "output.weight" => output_replace = Some(Weight::prepare(backend, t)?),
                other => {
                    return Err(what(format!(
                        "modules_to_save {other}: cria replaces only the embedding table and \
                         the output head"
                    )))
                }
            }
        }
        Ok(Lora {
            name: name.to_string(),
            path: file.path,
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
        DType::F16 => v.iter().map(|&x| half::f16::from_f32(x).to_bits()).collect(),
        DType::BF16 => v.iter().map(|&x| half::bf16::from_f32(x).to_bits()).collect(),
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

// By hand: a derive would ask `B: Clone` (CpuBackend is not; the adapter is shared by Arc).
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
