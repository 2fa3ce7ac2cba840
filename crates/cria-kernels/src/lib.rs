//! cria-kernels: the small `Backend` boundary the forward pass is written against, and the CPU
//! backend. Every op here has a scalar reference (`reference`), which is the spec the fast kernels
//! are tested against.
//!
//! Conventions: activations are row-major f32 `(t, n)` slices; weights are `cria_core::Tensor`s in
//! GGML order (`ne[0]` = in_features = cols, rows = out_features), in whatever dtype the file has.

pub mod cpu;
pub mod dot;
pub mod isa;
pub mod membw;
mod ops;
pub mod pool;
pub mod reference;

use cria_core::{DType, Tensor};

pub use cpu::CpuBackend;
pub use isa::Isa;

/// Rotary embedding parameters, precomputed once per model.
///
/// The angles follow ggml's rope cache exactly (llama.cpp's arithmetic, so that cria reproduces
/// its numbers): for position p, theta starts at p as f32 and is multiplied by `theta_scale` in
/// f32 from one pair to the next; pair i uses `freq_scale * (theta_i / freq_factors[i])`, and
/// cos/sin are libm's `cosf`/`sinf` of that, times `attn_factor`. (The repeated multiplication
/// drifts from the exact angle by a few ulps per pair; that drift is part of what llama.cpp
/// computes.)
#[derive(Clone, Debug)]
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

/// The ops a LLaMA forward needs. Implementations may use threads internally; every call is
/// synchronous. Slices are row-major f32 unless stated.
pub trait Backend: Send + Sync {
    fn name(&self) -> String;
    /// Whether `matmul`/`embed` run weights of this type.
    fn supports(&self, dtype: DType) -> bool;
    /// Called once per weight matrix at load, after `supports`: the backend may return it in a
    /// layout of its own (e.g. rows interleaved for its GEMM), which only its `matmul` reads.
    /// The embedding table is not passed here (`embed` reads the file's layout). Default: as is.
    fn prepare(&self, w: Tensor) -> cria_core::Result<Tensor> {
        Ok(w)
    }
    /// out (t, w.rows()) = x (t, w.cols()) @ w^T.
    fn matmul(&self, out: &mut [f32], x: &[f32], w: &Tensor, t: usize);
    /// out (tokens.len(), table.cols()) = rows `tokens` of `table`, dequantized.
    fn embed(&self, out: &mut [f32], table: &Tensor, tokens: &[u32]);
    /// Per row of length `w.len()`: out = x / sqrt(mean(x^2) + eps) * w.
    fn rmsnorm(&self, out: &mut [f32], x: &[f32], w: &[f32], eps: f32);
    /// In place on x (t, n_heads * head_dim); row r is at position pos0 + r.
    fn rope(
        &self,
        x: &mut [f32],
        t: usize,
        n_heads: usize,
        head_dim: usize,
        pos0: usize,
        rope: &Rope,
    );
    /// out (t, n_heads*head_dim) = softmax(q k^T * scale, causal [+ window]) v, GQA: query head h
    /// reads kv head h / (n_heads / n_kv_heads). `k`, `v`: the layer's cache, (>= pos0+t, n_kv_heads*head_dim).
    fn attention(&self, out: &mut [f32], q: &[f32], k: &[f32], v: &[f32], s: &AttnShape);
    /// a = silu(a) * b.
    fn silu_mul(&self, a: &mut [f32], b: &[f32]);
    /// a += b.
    fn add_assign(&self, a: &mut [f32], b: &[f32]);
}
