//! `cria pull`: fetch a model into the Hugging Face cache (or cria's, for the default model).

use super::{parse_target, Target};
use crate::fetch;
use anyhow::{bail, Result};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args, Clone, Debug)]
pub struct PullArgs {
    /// A short name (smollm2, tinyllama, llama3.2:1b...; see `cria list --known`), ORG/REPO or
    /// hf:ORG/REPO (a Transformers folder: config, tokenizer, safetensors), or hf:ORG/REPO:FILE
    /// (one file, a GGUF).
    pub model: String,
    /// Branch, tag or commit of the Hub repo.
    #[arg(long, default_value = "main")]
    pub revision: String,
}

pub fn pull(a: &PullArgs) -> Result<()> {
    let target = parse_target(&a.model)?;
    let mut out = std::io::stdout().lock();
    match target {
        Target::Default => {
            if let Some(p) =
                fetch::find_cached_default(&fetch::cria_cache_dir(), &fetch::hf_cache_dir())
            {
                eprintln!("cria: the default model is already here");
                writeln!(out, "{}", p.display())?;
                return Ok(());
            }
            let p = fetch::default_model()?;
            writeln!(out, "{}", p.display())?;
        }
        Target::HfFile { repo, file } => {
            if let Some(why) = fetch::hub_unavailable() {
                return cached_or(
                    fetch::hf_cached_file(&repo, &a.revision, &file),
                    &format!("{repo}:{file}"),
                    &why,
                    &mut out,
                );
            }
            if let Some(k) = fetch::known_model_for(&repo, &file) {
                eprintln!(
                    "cria: {} is {} ({})",
                    a.model.trim(),
                    k.about,
                    k.approx_size
                );
            }
            let p = fetch::pull_hf_file(&fetch::hub_client(), &repo, &file, &a.revision)?;
            writeln!(out, "{}", p.display())?;
        }
        Target::HfRepo { repo } => {
            if let Some(why) = fetch::hub_unavailable() {
                return cached_or(
                    fetch::hf_cached_folder(&repo, &a.revision),
                    &repo,
                    &why,
                    &mut out,
                );
            }
            let p = fetch::pull_hf_folder(&fetch::hub_client(), &repo, &a.revision)?;
            writeln!(out, "{}", p.display())?;
        }
    }
    Ok(())
}

/// Offline: a cached copy is fine (said so), none is an error.
fn cached_or(cached: Option<PathBuf>, what: &str, why: &str, out: &mut dyn Write) -> Result<()> {
    match cached {
        Some(p) => {
            eprintln!("cria: {what} is in the cache; not checked for updates ({why})");
            writeln!(out, "{}", p.display())?;
            Ok(())
        }
        None => bail!(
            "cannot pull {what}: {why}, and it is not in the Hugging Face cache ({})",
            fetch::hf_cache_dir().display()
        ),
    }
}
