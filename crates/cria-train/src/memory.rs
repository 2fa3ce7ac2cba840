//! The memory a fine-tune needs, predicted from the model's config and file sizes alone (what
//! `cria finetune --dry-run` prints before loading anything), and the peak it measured
//! (`VmHWM` of /proc/self/status).
//!
//! Peak = weights (as loaded: a quantized file stays quantized; `--base-type` counts the layer
//! matrices at the target type) + adapters, their gradients and AdamW's two moments (4 x params
//! x 4 bytes) + the activations of one micro-batch (`TrainModel::activation_bytes`) + a fixed
//! runtime allowance (tokenizer, thread stacks, allocator slack) + the tokenized data.

use crate::params::{target_shape, LoraConfig};
use cria_model::config::Config;

/// Runtime allowance: the binary, tokenizer tables, thread stacks, allocator slack (a run over
/// the 0.5 MB tiny-llama31 fixture measured 10.6 MiB VmHWM in all; not yet calibrated on a real
/// model, since the trainer's model lands separately).
pub const RUNTIME_BYTES: u64 = 24 << 20;

/// The parts of the predicted peak, in bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    pub weights: u64,
    /// Adapter values (f32).
    pub adapters: u64,
    pub grads: u64,
    /// AdamW's exp_avg and exp_avg_sq.
    pub adam: u64,
    /// Activations + scratch of one micro-batch without / with --grad-checkpoint.
    pub activations: u64,
    pub activations_ckpt: u64,
    /// Tokenized data (4 bytes per token and target, from the data file's size: at most one
    /// token per byte) and the runtime allowance.
    pub other: u64,
    pub grad_checkpoint: bool,
}

impl MemoryPlan {
    /// The predicted peak of the run as configured.
    pub fn peak(&self) -> u64 {
        let act = if self.grad_checkpoint {
            self.activations_ckpt
        } else {
            self.activations
        };
        self.weights + self.adapters + self.grads + self.adam + act + self.other
    }

    /// The peak with the other --grad-checkpoint setting.
    pub fn peak_other_mode(&self) -> u64 {
        let mut p = self.clone();
        p.grad_checkpoint = !p.grad_checkpoint;
        p.peak()
    }

    /// The dry-run report: `label: N bytes (X MiB)` per line (scripts parse it).
    pub fn report(&self) -> String {
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        let mut s = String::new();
        let mut line = |k: &str, b: u64| {
            s.push_str(&format!("{k:<34} {b:>14} bytes ({:>9.1} MiB)\n", mib(b)));
        };
        line("weights:", self.weights);
        line("adapters:", self.adapters);
        line("gradients:", self.grads);
        line("adamw moments:", self.adam);
        line("activations per micro-batch:", self.activations);
        line("activations with --grad-checkpoint:", self.activations_ckpt);
        line("data + runtime:", self.other);
        let (with, without) = if self.grad_checkpoint {
            (self.peak(), self.peak_other_mode())
        } else {
            (self.peak_other_mode(), self.peak())
        };
        line("peak without --grad-checkpoint:", without);
        line("peak with --grad-checkpoint:", with);
        line("peak:", self.peak());
        s
    }
}

/// Trainable values of a LoRA config over a model: per layer and target, r x (in + out).
pub fn lora_param_count(c: &Config, lora: &LoraConfig) -> u64 {
    let per_layer: u64 = lora
        .targets
        .iter()
        .map(|&t| {
            let (out, inp) = target_shape(c, t);
            (lora.rank as u64) * (out as u64 + inp as u64)
        })
        .sum();
    per_layer * c.n_layers as u64
}

/// The plan from its inputs: `weights` as loaded, the activation bytes both ways, the data
/// file's size in bytes.
pub fn plan(
    c: &Config,
    lora: &LoraConfig,
    weights: u64,
    activations: u64,
    activations_ckpt: u64,
    data_bytes: u64,
    grad_checkpoint: bool,
) -> MemoryPlan {
    let n = lora_param_count(c, lora);
    MemoryPlan {
        weights,
        adapters: 4 * n,
        grads: 4 * n,
        adam: 8 * n,
        activations,
        activations_ckpt,
        other: RUNTIME_BYTES + 8 * data_bytes,
        grad_checkpoint,
    }
}

/// The process's peak resident set (VmHWM), if the system reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
