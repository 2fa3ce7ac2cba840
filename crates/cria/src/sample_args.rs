//! The sampler options shared by `run`, `chat` (and later `serve`): clap flags -> SamplerConfig.

use anyhow::Result;
use clap::Args;
use cria_engine::sampler::SamplerConfig;

#[derive(Args, Clone, Debug)]
pub struct SamplerArgs {
    /// 0 = greedy (deterministic).
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    #[arg(long = "top-k", default_value_t = 40)]
    pub top_k: usize,
    #[arg(long = "top-p", default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long = "min-p", default_value_t = 0.05)]
    pub min_p: f32,
    #[arg(long = "repeat-penalty", default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Seed of the random stage (default: a fresh one per run).
    #[arg(long)]
    pub seed: Option<u64>,
}

impl SamplerArgs {
    pub fn config(&self) -> Result<SamplerConfig> {
        Ok(SamplerConfig {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            seed: self.seed.unwrap_or_else(cria_engine::sampler::random_seed),
            ..SamplerConfig::default()
        })
    }
}
