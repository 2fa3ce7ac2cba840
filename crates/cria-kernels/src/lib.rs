//! cria-kernels: the small `Backend` boundary the forward pass is written against, and the CPU
//! backend. Every op here has a scalar reference (`reference`), which is the spec the fast kernels
//! are tested against.
//!
//! Conventions: activations are row-major f32 `(t, n)` rows in the backend's buffers; weights
//! are `cria_core::Tensor`s in GGML order (`ne[0]` = in_features = cols, rows = out_features), in
//! whatever dtype the file has, which the backend prepares into its own `Backend::Matrix`.

/// The ISA-specific kernels: one folder per ISA, one file per kernel family (its doc says where
/// a new ISA or kernel family goes); the drivers that pick them at run time are outside it.
pub mod arch;
mod backend;
mod common;
pub mod cpu;
pub mod dot;
pub mod isa;
pub mod membw;
mod ops;
pub mod pool;
pub mod reference;
mod weight;

use cria_core::quant::{BlockQ4_0, BlockQ8_0, QK};

pub use backend::{Backend, Rows};
pub use cpu::kv::KvRows;
pub use cpu::CpuBackend;
pub use isa::Isa;
pub use weight::{LoraAdapter, Weight};

/// Rotary embedding parameters, precomputed once per model.
///
/// The angles follow ggml's rope cache exactly (llama.cpp's arithmetic, so that cria reproduces
/// its numbers): for position p, theta starts at p as f32 and is multiplied by `theta_scale` in
/// f32 from one pair to the next; pair i uses `freq_scale * (theta_i / freq_factors[i])`, and
/// cos/sin are libm's `cosf`/`sinf` of that, times `attn_factor`. (The repeated multiplication
/// drifts from the exact angle by a few ulps per pair; that drift is part of what llama.cpp
/// computes.)
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    /// Per rotated pair i (0..n_rot/2): the angular frequency, already divided by any RoPE scaling
    /// factor (linear, llama3, or GGUF `rope_freqs`), computed exactly. Informational (the
    /// kernels use the ggml recipe below); its length is the number of rotated pairs.
    pub inv_freq: Vec<f32>,
    /// Multiplies cos/sin (YaRN's attention factor; 1.0 for LLaMA).
    pub attn_factor: f32,
    /// true: rotate pairs (x[2i], x[2i+1]) (GGUF / llama.cpp "normal" mode, what cria stores);
    /// false: rotate (x[i], x[i + n_rot/2]) (GPT-NeoX / HF half-split).
    pub interleaved: bool,
    /// `powf(base, -2 / n_rot)` in f32.
    pub theta_scale: f32,
    /// Linear scaling: 1 / factor (1.0 without).
    pub freq_scale: f32,
    /// Per-pair divisors of the angle (GGUF `rope_freqs`, llama3 scaling), if any.
    pub freq_factors: Option<Vec<f32>>,
}

impl Rope {
    /// The parameters as llama.cpp derives them: `n_rot` rotated dimensions, frequency `base`,
    /// linear `freq_scale` (1/factor), optional per-pair `freq_factors`.
    pub fn new(
        n_rot: usize,
        base: f32,
        freq_scale: f32,
        freq_factors: Option<Vec<f32>>,
        attn_factor: f32,
        interleaved: bool,
    ) -> Rope {
        let n_pairs = n_rot / 2;
        let inv_freq = (0..n_pairs)
            .map(|i| {
                let f = (base as f64).powf(-((2 * i) as f64) / n_rot as f64) * freq_scale as f64;
                (f / freq_factors
                    .as_ref()
                    .and_then(|ff| ff.get(i))
                    .map_or(1.0, |&d| d as f64)) as f32
            })
            .collect();
        let theta_scale = base.powf(-2.0 / n_rot as f32);
        Rope {
            inv_freq,
            attn_factor,
            interleaved,
            theta_scale,
            freq_scale,
            freq_factors,
        }
    }

    /// (cos, sin) * attn_factor of every rotated pair at position `pos`, in ggml's arithmetic.
    pub fn table(&self, pos: usize, cs: &mut Vec<(f32, f32)>) {
        cs.clear();
        self.extend_table(pos, cs);
    }

    /// `table` for `pos`, appended to `cs`.
    pub fn extend_table(&self, pos: usize, cs: &mut Vec<(f32, f32)>) {
        let mut theta = pos as f32;
        for i in 0..self.inv_freq.len() {
            let ff = self
                .freq_factors
                .as_ref()
                .and_then(|f| f.get(i))
                .copied()
                .unwrap_or(1.0);
            let t = self.freq_scale * (theta / ff);
            cs.push((t.cos() * self.attn_factor, t.sin() * self.attn_factor));
            theta *= self.theta_scale;
        }
    }
}

/// One rotation as ggml's build computes it: (x0 cos - x1 sin, x0 sin + x1 cos), where GCC fuses
/// each expression into one FMA (vfmaddsub) with x1's product rounded first; which product is
/// fused was read off llama.cpp's outputs (all 36864 values of a 64-token SmolLM2 prompt equal).
#[inline]
pub fn rotate(x0: f32, x1: f32, c: f32, s: f32) -> (f32, f32) {
    (x0.mul_add(c, -(x1 * s)), x0.mul_add(s, x1 * c))
}

/// Geometry of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Queries in this call: rows of `q`.
    pub t: usize,
    /// Position of the first query; keys 0..pos0+t are in the cache.
    pub pos0: usize,
    /// Sliding window (Mistral): a query at p sees keys in (p - window, p]. None: full causal.
    pub window: Option<usize>,
    /// Usually 1/sqrt(head_dim).
    pub scale: f32,
}

/// Element type of the KV cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KvType {
    /// IEEE half (llama.cpp's default): half the memory and half the bytes a long-context
    /// decode step reads; attention runs the blocked online-softmax kernel.
    #[default]
    F16,
    /// f32: attention follows llama.cpp's F32-KV arithmetic bit for bit.
    F32,
    /// ggml's Q8_0 blocks (32 values, an f16 scale and 32 int8: 34 bytes), quantized as
    /// llama.cpp's x86 `quantize_row_q8_0` does when it copies K and V into the cache; attention
    /// dequantizes a key block to f32 and runs the F16 cache's kernel on it.
    Q8_0,
    /// ggml's Q4_0 blocks (32 values, an f16 scale and 32 4-bit values: 18 bytes), quantized as
    /// `quantize_row_q4_0_ref`; attention as for Q8_0.
    Q4_0,
}

impl KvType {
    pub const ALL: [KvType; 4] = [KvType::F16, KvType::F32, KvType::Q8_0, KvType::Q4_0];
    /// The name used on the command line and in reports ("f16", "f32", "q8_0", "q4_0").
    pub fn name(self) -> &'static str {
        match self {
            KvType::F16 => "f16",
            KvType::F32 => "f32",
            KvType::Q8_0 => "q8_0",
            KvType::Q4_0 => "q4_0",
        }
    }
    /// Values per block: 32 for the quantized types, 1 for the float ones.
    pub fn block_len(self) -> usize {
        match self {
            KvType::F16 | KvType::F32 => 1,
            KvType::Q8_0 | KvType::Q4_0 => cria_core::quant::QK,
        }
    }
    /// Bytes of `n` cached values (`n` a multiple of `block_len`).
    pub fn row_bytes(self, n: usize) -> usize {
        n / self.block_len()
            * match self {
                KvType::F16 => 2,
                KvType::F32 => 4,
                KvType::Q8_0 => std::mem::size_of::<BlockQ8_0>(),
                KvType::Q4_0 => std::mem::size_of::<BlockQ4_0>(),
            }
    }
    /// Whether a model with heads of `head_dim` values can use this cache: the quantized types
    /// need whole blocks per head (head_dim a multiple of 32, as llama.cpp requires).
    pub fn check_head_dim(self, head_dim: usize) -> Result<(), String> {
        if head_dim % self.block_len() == 0 {
            Ok(())
        } else {
            Err(format!(
                "a {self} KV cache needs a head dimension that is a multiple of {}; this model's \
                 is {head_dim} (use --kv-type f16)",
                self.block_len()
            ))
        }
    }
}

impl std::fmt::Display for KvType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KvType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.to_ascii_lowercase();
        KvType::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| format!("unknown KV cache type {s:?} (f16, f32, q8_0 or q4_0)"))
    }
}

/// One layer's K or V cache as attention reads it: rows of `n_kv_heads * head_dim` values, IEEE
/// half bits, f32, or ggml blocks of 32 values (a head is whole blocks: `KvType::check_head_dim`).
#[derive(Clone, Copy, Debug)]
pub enum KvSlice<'a> {
    F16(&'a [u16]),
    F32(&'a [f32]),
    Q8_0(&'a [BlockQ8_0]),
    Q4_0(&'a [BlockQ4_0]),
}

impl KvSlice<'_> {
    /// Values held.
    pub fn len(&self) -> usize {
        match self {
            KvSlice::F16(x) => x.len(),
            KvSlice::F32(x) => x.len(),
            KvSlice::Q8_0(x) => x.len() * QK,
            KvSlice::Q4_0(x) => x.len() * QK,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn kv_type(&self) -> KvType {
        match self {
            KvSlice::F16(_) => KvType::F16,
            KvSlice::F32(_) => KvType::F32,
            KvSlice::Q8_0(_) => KvType::Q8_0,
            KvSlice::Q4_0(_) => KvType::Q4_0,
        }
    }
    /// Value i as f32 (exact for the float types; a quantized value dequantized as ggml does,
    /// q * d in f32).
    #[inline]
    pub fn get(&self, i: usize) -> f32 {
        match self {
            KvSlice::F16(x) => arch::scalar::dot::f16_to_f32(x[i]),
            KvSlice::F32(x) => x[i],
            KvSlice::Q8_0(x) => {
                let b = &x[i / QK];
                b.qs[i % QK] as f32 * b.d.to_f32()
            }
            KvSlice::Q4_0(x) => {
                let (b, j) = (&x[i / QK], i % QK);
                let q = if j < QK / 2 {
                    b.qs[j] & 0xF
                } else {
                    b.qs[j - QK / 2] >> 4
                };
                (q as i32 - 8) as f32 * b.d.to_f32()
            }
        }
    }
    /// Values `at .. at + out.len()` as f32, into `out` (what `get` gives each).
    pub fn widen(&self, at: usize, out: &mut [f32]) {
        let n = out.len();
        match self {
            KvSlice::F16(x) => {
                for (o, &h) in out.iter_mut().zip(&x[at..at + n]) {
                    *o = arch::scalar::dot::f16_to_f32(h);
                }
            }
            KvSlice::F32(x) => out.copy_from_slice(&x[at..at + n]),
            _ => {
                for (e, o) in out.iter_mut().enumerate() {
                    *o = self.get(at + e);
                }
            }
        }
    }
}
