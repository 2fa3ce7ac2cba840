//! Speculative decoding flags shared by `run`, `chat` and `bench` (`cria serve` has its own copy
//! in its ServeArgs): `--lookup N`, or `--draft-model M [--draft-max N] [--draft-min N]
//! [--draft-p-min P]`. See cria_engine::speculative.

use anyhow::{anyhow, bail, Result};
use clap::Args;
use cria_engine::scheduler::{DraftSetup, NoEmbed, Scheduler, Sink};
use cria_engine::speculative::{SpecConfig, SpecStats};
use cria_engine::LoadedModel;

#[derive(Args, Clone, Default, Debug)]
pub struct SpecArgs {
    /// Speculative decoding by prompt lookup: draft up to N tokens by matching the last tokens
    /// against the prompt and the answer so far, verified in one batched forward (the output
    /// does not change; fastest when the answer copies the input: editing, summaries, code).
    #[arg(long, value_name = "N", conflicts_with = "draft_model")]
    pub lookup: Option<usize>,
    /// Speculative decoding with a draft model of the same vocabulary (a smaller model, or the
    /// same one in a smaller quantization); the output does not change.
    #[arg(long = "draft-model", value_name = "MODEL")]
    pub draft_model: Option<String>,
    /// Most tokens the draft model drafts per verify [default: 8].
    #[arg(long = "draft-max", value_name = "N", requires = "draft_model")]
    pub draft_max: Option<usize>,
    /// Fewest tokens it drafts, whatever its confidence [default: 1].
    #[arg(long = "draft-min", value_name = "N", requires = "draft_model")]
    pub draft_min: Option<usize>,
    /// It stops drafting when its top probability falls below this [default: 0.8].
    #[arg(long = "draft-p-min", value_name = "P", requires = "draft_model")]
    pub draft_p_min: Option<f32>,
    /// Always draft the most (no adaptation to acceptance and cost): for tests.
    #[arg(long = "draft-fixed", hide = true)]
    pub draft_fixed: bool,
}

impl SpecArgs {
    /// The settings asked for (None: no speculation), checked as far as they can be before a
    /// model loads.
    pub fn config(&self) -> Result<Option<SpecConfig>> {
        SpecConfig::from_flags(
            self.lookup,
            self.draft_model.is_some(),
            self.draft_max,
            self.draft_min,
            self.draft_p_min,
            self.draft_fixed,
        )
        .map_err(|e| anyhow!(e))
    }

    /// Loads the draft model (threads and cache type as the model's), if one is asked for.
    pub fn load_draft(&self, m: &crate::ModelArgs) -> Result<Option<LoadedModel>> {
        let Some(spec) = &self.draft_model else {
            return Ok(None);
        };
        let o = cria_engine::LoadOptions {
            f32: false,
            threads: m.threads,
            kv_type: m.kv_type(),
        };
        let d = crate::load::with(Some(spec), &o)
            .map_err(|e| anyhow!("the draft model {spec}: {e:#}"))?;
        Ok(Some(d))
    }

    /// Turns speculation on in `s` (one of run/chat/bench's schedulers).
    pub fn enable<'a, S: Sink>(
        &self,
        s: &mut Scheduler<'a, S, NoEmbed>,
        draft: Option<&'a LoadedModel>,
    ) -> Result<()> {
        let Some(c) = self.config()? else {
            return Ok(());
        };
        let d = draft.map(|d| DraftSetup {
            model: &d.model,
            backend: &d.backend,
            tok: &d.tok,
            kv_type: d.kv_type,
        });
        if c.kind == cria_engine::speculative::SpecKind::DraftModel && d.is_none() {
            bail!("--draft-model: the draft model was not loaded");
        }
        s.set_speculation(c, d).map_err(|e| anyhow!(e))
    }
}

/// The end-of-run line's part about speculation (empty when it was off).
pub fn summary(spec: Option<SpecStats>, generated: usize) -> String {
    spec.map_or(String::new(), |s| format!(" | {}", s.summary(generated)))
}
