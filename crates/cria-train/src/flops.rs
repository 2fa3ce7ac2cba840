//! Training FLOPs and this machine's peak, for MFU (model FLOPs utilisation) and `cria plan`.
//!
//! FLOPs per trained token ([`train_flops_per_token`]), as PaLM (appendix B) and llm.c count
//! them:
//!
//! ```text
//! flops/token = 6 * N  +  6 * L * ctx * q_dim
//! ```
//!
//! - `N` = the parameters of the matrices a token goes through: every layer's q, k, v, o, gate,
//!   up and down projections, plus the output head (`vocab * dim`, tied or not: the head product
//!   runs either way). Not counted: the embedding lookup (a gather, no product) and the norm
//!   weights (elementwise). A matrix costs 2 FLOPs per parameter per token forward and 4
//!   backward (dX and dW): 6 N.
//! - Attention: per layer and token, `Q K^T` and `P V` over the `ctx` positions are 2 products
//!   of `2 * ctx * q_dim` FLOPs forward; causal masking halves the useful part (llm.c's count,
//!   half of PaLM's `12 L H Q T`), and the backward doubles it again: `3 * 2 * ctx * q_dim`.
//!
//! MFU = tokens/s * flops/token / peak, where peak ([`peak_flops`]) is MEASURED: the best
//! FLOP/s of the training GEMM (`CpuBackend::gemm_nt`, f32) over a few runs of two shapes near
//! its plateau ([`PEAK_SHAPES`]), on the backend's threads, timed once per process and thread
//! count. Two shapes because on a shared machine the larger one runs well below its best (a
//! 256x512x512 product fits in a scheduler time slice and in cache; measured here under load:
//! 98 GFLOP/s vs 25 for 512x1024x1024 on 2 threads), and on an idle one the larger may lead.

use cria_kernels::CpuBackend;
use cria_model::config::Config;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Parameter counts of a LLaMA of config `c` (no allocation): (all parameters, tied head counted
/// once; the matrices `N` of [`train_flops_per_token`]: layers' projections + head).
pub fn param_counts(c: &Config) -> (u64, u64) {
    let (dim, qd, kvd, ff) = (
        c.dim as u64,
        c.q_dim() as u64,
        c.kv_dim() as u64,
        c.ffn_dim as u64,
    );
    let (l, v) = (c.n_layers as u64, c.vocab_size as u64);
    let layer_mats = 2 * dim * qd + 2 * dim * kvd + 3 * dim * ff;
    let head = v * dim;
    let embed_and_head = if c.tied_embeddings { head } else { 2 * head };
    let total = embed_and_head + l * (layer_mats + 2 * dim) + dim;
    (total, l * layer_mats + head)
}

/// Training FLOPs (forward + backward) per token at sequence length `ctx` (see the module doc).
pub fn train_flops_per_token(c: &Config, ctx: usize) -> f64 {
    let (_, n) = param_counts(c);
    6.0 * n as f64 + 6.0 * c.n_layers as f64 * ctx as f64 * c.q_dim() as f64
}

/// The GEMMs timed for the peak, `(t, k, n)`: `(t, k) x (n, k)^T`, a micro-batch's rows through
/// a projection of a 5M..20M-parameter model.
pub const PEAK_SHAPES: [(usize, usize, usize); 2] = [(256, 512, 512), (512, 1024, 1024)];

/// The best f32 FLOP/s of `cpu.gemm_nt` on `shape` over about `budget` (at least 3 runs after a
/// warm-up one). Not cached: see [`peak_flops`].
pub fn measure_gemm_flops(cpu: &CpuBackend, shape: (usize, usize, usize), budget: Duration) -> f64 {
    let (t, k, n) = shape;
    let a: Vec<f32> = (0..t * k)
        .map(|i| ((i % 97) as f32 - 48.0) * 1e-3)
        .collect();
    let b: Vec<f32> = (0..n * k)
        .map(|i| ((i % 89) as f32 - 44.0) * 1e-3)
        .collect();
    let mut c = vec![0f32; t * n];
    cpu.gemm_nt(&mut c, &a, &b, t, k, n);
    let flops = 2.0 * (t * k * n) as f64;
    let start = Instant::now();
    let mut best = f64::MAX;
    let mut runs = 0;
    while runs < 3 || start.elapsed() < budget {
        let t0 = Instant::now();
        cpu.gemm_nt(&mut c, &a, &b, t, k, n);
        best = best.min(t0.elapsed().as_secs_f64());
        runs += 1;
        if runs >= 1000 {
            break;
        }
    }
    std::hint::black_box(&c);
    flops / best.max(1e-12)
}

/// This machine's peak training FLOP/s on `cpu`'s threads: the best [`measure_gemm_flops`] of
/// [`PEAK_SHAPES`], about 0.15 s each, measured once per process and thread count.
pub fn peak_flops(cpu: &CpuBackend) -> f64 {
    static CACHE: OnceLock<Mutex<HashMap<usize, f64>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let threads = cpu.threads;
    if let Some(&p) = cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&threads)
    {
        return p;
    }
    let p = PEAK_SHAPES
        .iter()
        .map(|&s| measure_gemm_flops(cpu, s, Duration::from_millis(150)))
        .fold(0.0, f64::max);
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(threads, p);
    p
}

/// Model FLOPs utilisation: `tokens_per_s * flops_per_token / peak` (0 when peak is not > 0).
pub fn mfu(tokens_per_s: f64, flops_per_token: f64, peak: f64) -> f64 {
    if peak > 0.0 {
        tokens_per_s * flops_per_token / peak
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::full::FullParams;

    fn cfg(tied: bool) -> Config {
        let mut c = crate::pretrain::config_from_json(
            &serde_json::json!({"hidden_size": 64, "num_hidden_layers": 3,
                "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 160,
                "tie_word_embeddings": tied}),
            100,
            32,
        )
        .unwrap();
        c.tied_embeddings = tied;
        c
    }

    /// The counts agree with the tensors `FullParams` allocates; the FLOPs with the formula
    /// written out by hand.
    #[test]
    fn counts_match_the_parameters_and_the_formula() {
        for tied in [true, false] {
            let c = cfg(tied);
            let p = FullParams::zeros(&c).unwrap();
            let (total, mats) = param_counts(&c);
            assert_eq!(total as usize, p.n_params(), "tied {tied}");
            let by_kind: usize = p
                .entries
                .iter()
                .filter(|e| matches!(e.kind, crate::full::Kind::Matrix | crate::full::Kind::Head))
                .map(|e| e.range.len())
                .sum();
            // The tied head is the embedding entry: counted as a matrix here.
            let head = if tied { 100 * 64 } else { 0 };
            assert_eq!(mats as usize, by_kind + head, "tied {tied}");
        }
        let c = cfg(true);
        // q 64x64, k/v 32x64 each, o 64x64, gate/up/down 160x64: per layer
        let layer = 64 * 64 * 2 + 32 * 64 * 2 + 3 * 160 * 64;
        let n = 3 * layer + 100 * 64;
        let want = 6.0 * n as f64 + 6.0 * 3.0 * 32.0 * 64.0;
        assert_eq!(train_flops_per_token(&c, 32), want);
        assert_eq!(mfu(10.0, 1e9, 1e11), 0.1);
        assert_eq!(mfu(10.0, 1e9, 0.0), 0.0);
    }

    /// The peak is positive, finite and cached per thread count (the second call is the same
    /// number). No timing is asserted.
    #[test]
    fn peak_is_measured_once() {
        let cpu = CpuBackend::try_new(1).unwrap();
        let p = peak_flops(&cpu);
        assert!(p.is_finite() && p > 0.0, "{p}");
        assert_eq!(peak_flops(&cpu), p);
        let small = measure_gemm_flops(&cpu, (3, 5, 7), Duration::ZERO);
        assert!(small.is_finite() && small > 0.0, "{small}");
    }
}
