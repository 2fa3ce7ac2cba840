//! Speculative decoding in `run`, `chat` and `bench`: the flags (cria_server's SpecFlags, which
//! `cria serve` takes too), loading the draft model, turning speculation on in a scheduler. See
//! cria_engine::speculative.

use anyhow::{anyhow, bail, Result};
use cria_engine::scheduler::{DraftSetup, NoEmbed, Scheduler, Sink};
use cria_engine::speculative::SpecStats;
use cria_engine::LoadedModel;

pub use cria_server::SpecFlags as SpecArgs;

/// Loads the draft model (threads and cache type as the model's), if one is asked for.
pub fn load_draft(f: &SpecArgs, m: &crate::ModelArgs) -> Result<Option<LoadedModel>> {
    let o = cria_engine::LoadOptions {
        f32: false,
        threads: m.threads,
        kv_type: m.kv_type(),
    };
    load_draft_with(f, &o)
}

/// Loads the draft model with `o` and cuts its head to `--draft-vocab` (None: no draft model).
pub fn load_draft_with(f: &SpecArgs, o: &cria_engine::LoadOptions) -> Result<Option<LoadedModel>> {
    let Some(spec) = &f.draft_model else {
        return Ok(None);
    };
    let mut d =
        crate::load::with(Some(spec), o).map_err(|e| anyhow!("the draft model {spec}: {e:#}"))?;
    f.cut_draft_head(&mut d)?;
    Ok(Some(d))
}

/// Turns speculation on in `s` (one of run/chat/bench's schedulers).
pub fn enable<'a, S: Sink>(
    f: &SpecArgs,
    s: &mut Scheduler<'a, S, NoEmbed>,
    draft: Option<&'a LoadedModel>,
) -> Result<()> {
    let Some(c) = f.config()? else {
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

/// The end-of-run line's part about speculation (empty when it was off).
pub fn summary(spec: Option<SpecStats>, generated: usize) -> String {
    spec.map_or(String::new(), |s| format!(" | {}", s.summary(generated)))
}
