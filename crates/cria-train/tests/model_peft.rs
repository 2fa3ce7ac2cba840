//! cria_train::model's gradients against PyTorch autograd through PEFT (fixtures from
//! tests/gen_model_fixture.py, f64 autograd): the summed cross-entropy within 1e-5 relative and
//! every adapter matrix's gradient within 1e-4 relative (norm of the difference over the norm;
//! 1e-3 on SmolLM2, where PyTorch's own f32 gradients are 2.2e-4 from its f64 ones),
//! for a chat-masked batch (three packed sequences of unequal length, prompt targets -100) and a
//! plain-text one, over
//! - a tiny LLaMA-2 shape (MHA, untied head, default RoPE) and a tiny LLaMA-3.1 shape (GQA,
//!   llama3 rope scaling, tied head), LoRA r 4 on all 7 targets, loaded from their HF folders
//!   (NeoX RoPE layout);
//! - SmolLM2-135M-Instruct's Q4_1 GGUF dequantized to f32 (LoadOptions { f32: true }; GGUF's
//!   interleaved Q/K rows, so the q/k B rows are permuted in and the gradients out), r 2 on q, v.

mod model_util;

use cria_kernels::CpuBackend;
use cria_model::lora::Target;
use cria_model::model::Model;
use cria_train::model::{TrainModel, TrainOptions};
use cria_train::optim::Rng;
use cria_train::params::LoraConfig;
use model_util::*;

/// `bound`: the worst per-matrix relative gradient difference allowed.
fn check(
    model: &Model,
    cpu: &CpuBackend,
    cfg: LoraConfig,
    batch_name: &str,
    grad_scale: f32,
    bound: f64,
) {
    let p = params(model, cfg);
    let ranges: Vec<_> = p.entries.iter().map(|e| e.range.clone()).collect();
    let opts = TrainOptions {
        max_rows: 32,
        max_seq: 16,
        grad_checkpoint: false,
        exact_forward: true,
    };
    let mut tm = TrainModel::new(model, cpu, p, opts).unwrap();
    let seqs = batch(batch_name);
    let (loss, n) = tm
        .forward_backward(&seqs, grad_scale, &mut Rng::new(1))
        .unwrap();
    let want_n = seqs
        .iter()
        .flat_map(|s| &s.targets)
        .filter(|&&g| g != -100)
        .count();
    assert_eq!(n, want_n);
    let want_loss = fx(&format!("{batch_name}_loss"))[0] as f64;
    let loss_rel = (loss - want_loss).abs() / want_loss;
    let flat = fx(&format!("{batch_name}_grads"));
    let want: Vec<Vec<f32>> = ranges
        .iter()
        .map(|r| flat[r.clone()].iter().map(|&g| g * grad_scale).collect())
        .collect();
    let got = hf_grads(model, tm.params());
    let worst = worst_rel(&got, &want);
    if std::env::var("CRIA_MODEL_DEBUG").is_ok() {
        for ((e, g), w) in tm.params().entries.iter().zip(&got).zip(&want) {
            let n: f64 = w.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            println!(
                "  {} {:?} {:?}: {:.2e} (norm {n:.3e})",
                e.layer,
                e.target,
                e.half,
                rel(g, w)
            );
        }
    }
    let all = rel(&got.concat(), &want.concat());
    println!(
        "{batch_name}: loss {loss:.6} (PyTorch {want_loss:.6}, {loss_rel:.1e}), {n} targets, \
         {} matrices, worst gradient {worst:.2e}, all together {all:.2e}",
        got.len()
    );
    assert!(loss_rel <= 1e-5, "{batch_name}: loss {loss} vs {want_loss}");
    assert!(
        worst <= bound,
        "{batch_name}: worst relative gradient {worst:.2e}"
    );
}

fn tiny_cfg() -> LoraConfig {
    LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: all_targets(),
        rslora: false,
    }
}

#[test]
fn tiny_llama2_gradients_are_pefts() {
    let cpu = CpuBackend::new(2);
    let model = tiny("tiny2", &cpu);
    assert!(!model.weights.tied && !model.config.rope_interleaved);
    check(&model, &cpu, tiny_cfg(), "tiny2_chat", 1.0, 1e-4);
    check(&model, &cpu, tiny_cfg(), "tiny2_text", 0.25, 1e-4);
}

#[test]
fn tiny_llama31_gradients_are_pefts() {
    let cpu = CpuBackend::new(2);
    let model = tiny("tiny3", &cpu);
    assert!(model.weights.tied && model.config.n_kv_heads < model.config.n_heads);
    check(&model, &cpu, tiny_cfg(), "tiny3_chat", 1.0, 1e-4);
    check(&model, &cpu, tiny_cfg(), "tiny3_text", 1.0, 1e-4);
}

#[test]
fn smollm2_f32_gradients_are_pefts() {
    let Some(path) = smol_path() else { return };
    let cpu = CpuBackend::new(2);
    let model = load(&path, true, &cpu);
    assert!(model.config.rope_interleaved);
    let cfg = LoraConfig {
        rank: 2,
        alpha: 4.0,
        dropout: 0.0,
        targets: vec![Target::Q, Target::V],
        rslora: false,
    };
    // SmolLM2 amplifies rounding: PyTorch itself in f32 is 2.2e-4 (worst matrix) from its f64
    // gradients on this batch (measured with the fixture's inputs), so 1e-4 per matrix is beyond
    // any f32 implementation here; cria measured 3.6e-4 worst, 1e-3 is the bound.
    check(&model, &cpu, cfg, "smol", 1.0, 1e-3);
}
