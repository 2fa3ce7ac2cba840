//! PLACEHOLDER for `cria_train::model` (the whole LLaMA forward + backward over LoRA adapters),
//! which another helper is writing (issue 23, helper "model"). This file only carries the
//! signatures of API.md so the trainer and `cria finetune` compile and test against a mock;
//! every body returns `Err(Error("placeholder"))`. The lead REPLACES this file with the real one
//! at merge (the `impl Trainable for TrainModel` lives in trainer.rs so it survives that).

use crate::optim::Rng;
use crate::params::{LoraConfig, LoraParams};
use crate::{Error, Result};
use cria_kernels::CpuBackend;
use cria_model::config::Config;
use cria_model::Model;

/// One training sequence: `targets[i]` is the token predicted AFTER position i, or -100 (not
/// trained); same length as `tokens` (HF labels shifted by one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seq {
    pub tokens: Vec<u32>,
    pub targets: Vec<i32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrainOptions {
    /// Rows (tokens) per micro-batch: sizes buffers.
    pub max_rows: usize,
    /// Longest sequence (ctx).
    pub max_seq: usize,
    pub grad_checkpoint: bool,
}

pub struct TrainModel<'m> {
    _model: &'m Model,
    _cpu: &'m CpuBackend,
    params: LoraParams,
    _opts: TrainOptions,
}

impl<'m> TrainModel<'m> {
    pub fn new(
        model: &'m Model,
        cpu: &'m CpuBackend,
        params: LoraParams,
        opts: TrainOptions,
    ) -> Result<Self> {
        let _ = (model, cpu, params, opts);
        Err(Error("placeholder".into()))
    }

    pub fn params(&self) -> &LoraParams {
        &self.params
    }

    pub fn params_mut(&mut self) -> &mut LoraParams {
        &mut self.params
    }

    pub fn into_params(self) -> LoraParams {
        self.params
    }

    /// Forward + backward of one micro-batch; ADDS d(loss_sum * grad_scale)/d(adapters) into
    /// params.grads; returns (sum of CE over trained targets, their count).
    pub fn forward_backward(
        &mut self,
        seqs: &[Seq],
        grad_scale: f32,
        rng: &mut Rng,
    ) -> Result<(f64, usize)> {
        let _ = (seqs, grad_scale, rng);
        Err(Error("placeholder".into()))
    }

    /// Forward only, no dropout: (sum of CE, count).
    pub fn eval(&mut self, seqs: &[Seq]) -> Result<(f64, usize)> {
        let _ = seqs;
        Err(Error("placeholder".into()))
    }

    /// Bytes the training buffers take (activations per micro-batch + scratch), for --dry-run.
    pub fn activation_bytes(cfg: &Config, lora: &LoraConfig, opts: &TrainOptions) -> usize {
        let _ = (cfg, lora, opts);
        0
    }
}
