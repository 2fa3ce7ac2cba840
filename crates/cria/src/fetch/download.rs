//! The Hugging Face Hub: whether it can be used (offline, reachable, token) and pulling a file or
//! a Transformers folder into the Hugging Face cache.

use super::{env_path, hf_cache_dir, home_dir, hub, human_size};
use anyhow::{bail, ensure, Context, Result};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub(super) const HUB_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

pub(super) fn hub_endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "https://huggingface.co".into())
}

pub(super) fn hub_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| matches!(v.trim(), "1" | "true" | "TRUE" | "yes" | "ON" | "on"))
}

/// Whether `endpoint`'s host resolves and accepts a TCP connection within `timeout`. DNS runs on
/// a helper thread because `getaddrinfo` has no timeout of its own.
pub(super) fn hub_reachable(endpoint: &str, timeout: Duration) -> bool {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let hostport = rest.split('/').next().unwrap_or(rest).to_string();
    let default_port = if endpoint.starts_with("http://") {
        80
    } else {
        443
    };
    let target = if hostport.contains(':') {
        hostport
    } else {
        format!("{hostport}:{default_port}")
    };
    let start = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let addrs: Vec<_> = target
            .to_socket_addrs()
            .map(|a| a.collect())
            .unwrap_or_default();
        let _ = tx.send(addrs);
    });
    let addrs = match rx.recv_timeout(timeout) {
        Ok(a) => a,
        Err(_) => return false,
    };
    addrs.iter().any(|a| {
        let left = timeout.saturating_sub(start.elapsed());
        !left.is_zero() && TcpStream::connect_timeout(a, left).is_ok()
    })
}

/// The Hub token: `$HF_TOKEN`, else the file `huggingface-cli login` writes
/// (`$HF_TOKEN_PATH`, else `$HF_HOME/token`, else `~/.cache/huggingface/token`).
fn hub_token() -> Option<String> {
    if let Ok(t) = std::env::var("HF_TOKEN") {
        let t = t.trim().to_string();
        if !t.is_empty() {
            return Some(t);
        }
    }
    let path = env_path("HF_TOKEN_PATH").unwrap_or_else(|| {
        env_path("HF_HOME")
            .unwrap_or_else(|| home_dir().join(".cache").join("huggingface"))
            .join("token")
    });
    std::fs::read_to_string(path)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// A Hub client on `HF_ENDPOINT`, `HF_TOKEN` and the Hugging Face cache.
pub fn hub_client() -> hub::Client {
    hub::Client::new(hub_endpoint(), hub_token(), hf_cache_dir())
}

/// Fail fast, with the reason, when the Hub cannot be used.
pub(super) fn ensure_hub_usable(what: &str) -> Result<()> {
    ensure!(
        !hub_offline(),
        "{what} is not in the Hugging Face cache ({}) and HF_HUB_OFFLINE is set",
        hf_cache_dir().display()
    );
    let endpoint = hub_endpoint();
    ensure!(
        hub_reachable(&endpoint, HUB_PROBE_TIMEOUT),
        "{what} is not in the Hugging Face cache ({}) and {endpoint} cannot be reached",
        hf_cache_dir().display()
    );
    Ok(())
}

/// Why the Hub cannot be asked right now, if it cannot (offline mode, or no connection).
pub fn hub_unavailable() -> Option<String> {
    if hub_offline() {
        return Some("HF_HUB_OFFLINE is set".into());
    }
    let endpoint = hub_endpoint();
    (!hub_reachable(&endpoint, HUB_PROBE_TIMEOUT)).then(|| format!("{endpoint} cannot be reached"))
}

/// A file of a repo at `revision` already in the HF cache (refs/<revision> names the snapshot).
pub fn hf_cached_file(repo: &str, revision: &str, file: &str) -> Option<PathBuf> {
    let p = hub::cached_snapshot(&hf_cache_dir(), repo, revision)?.join(file);
    p.is_file().then_some(p)
}

/// A whole Transformers folder of `repo` at `revision` in the HF cache.
pub fn hf_cached_folder(repo: &str, revision: &str) -> Option<PathBuf> {
    let dir = hub::cached_snapshot(&hf_cache_dir(), repo, revision)?;
    (dir.join("config.json").is_file() && folder_complete(&dir)).then_some(dir)
}

/// "pick one" lines for the GGUF files of a repo.
fn gguf_choices(info: &hub::RepoInfo) -> String {
    info.ggufs()
        .iter()
        .map(|f| {
            let size = f.size.map(human_size).unwrap_or_default();
            format!("\n  cria pull hf:{}:{}   {size}", info.repo, f.path)
        })
        .collect()
}

/// Downloads (or finds up to date) one file of a Hub repo; returns its snapshot path. Prints a
/// line per file saying what was fetched and verified.
pub fn pull_hf_file(
    client: &hub::Client,
    repo: &str,
    file: &str,
    revision: &str,
) -> Result<PathBuf> {
    let info = client.repo_info(repo, revision)?;
    let Some(entry) = info.file(file) else {
        let ggufs = gguf_choices(&info);
        if ggufs.is_empty() {
            bail!("{repo} has no file {file:?}");
        }
        bail!("{repo} has no file {file:?}; its GGUF files:{ggufs}");
    };
    let d = client.download(&info, entry, revision)?;
    report_download(repo, entry, &d);
    Ok(d.path)
}

/// Downloads the Transformers files of a repo (config, tokenizer, safetensors); returns the
/// snapshot folder. A repo of GGUF files only is an error that lists them.
pub fn pull_hf_folder(client: &hub::Client, repo: &str, revision: &str) -> Result<PathBuf> {
    let info = client.repo_info(repo, revision)?;
    let files: Vec<&hub::RepoFile> = info
        .files
        .iter()
        .filter(|f| wanted_hf_file(&f.path))
        .collect();
    let has_config = files.iter().any(|f| f.path == "config.json");
    let has_weights = files.iter().any(|f| f.path.ends_with(".safetensors"));
    if !has_config || !has_weights {
        let ggufs = gguf_choices(&info);
        let missing = if has_config {
            "no .safetensors weights"
        } else {
            "no config.json"
        };
        if !ggufs.is_empty() {
            bail!("{repo} has {missing} but GGUF files: pick one with{ggufs}");
        }
        bail!("{repo} has {missing}: not a Transformers model repo, and it has no GGUF files");
    }
    let total: u64 = files.iter().filter_map(|f| f.size).sum();
    eprintln!(
        "cria: {repo} at {}: {} files, {}",
        &info.commit[..12],
        files.len(),
        human_size(total)
    );
    let mut dir = None;
    for f in files {
        let d = client.download(&info, f, revision)?;
        report_download(repo, f, &d);
        if f.path == "config.json" {
            dir = d.path.parent().map(Path::to_path_buf);
        }
    }
    dir.context("config.json was not downloaded")
}

pub(super) fn report_download(repo: &str, f: &hub::RepoFile, d: &hub::Downloaded) {
    let size = f.size.map(human_size).unwrap_or_else(|| "?".into());
    if d.fetched == 0 && d.resumed_from == 0 {
        eprintln!("cria: {repo}:{} ({size}) already in the cache", f.path);
    } else if d.resumed_from > 0 {
        eprintln!(
            "cria: {repo}:{} ({size}): resumed at byte {}, fetched {} bytes, {}",
            f.path, d.resumed_from, d.fetched, d.verified
        );
    } else {
        eprintln!(
            "cria: {repo}:{} ({size}): fetched {} bytes, {}",
            f.path, d.fetched, d.verified
        );
    }
}

/// The files of a Transformers repo that inference needs (no .bin/.pt/.onnx duplicates).
pub fn wanted_hf_file(f: &str) -> bool {
    if f.contains('/') {
        return false; // subfolders hold other formats (onnx/, original/) or other models
    }
    matches!(
        f,
        "config.json"
            | "generation_config.json"
            | "tokenizer.json"
            | "tokenizer_config.json"
            | "special_tokens_map.json"
            | "tokenizer.model"
            | "vocab.json"
            | "merges.txt"
            | "added_tokens.json"
            | "chat_template.jinja"
            | "chat_template.json"
            | "model.safetensors.index.json"
    ) || f.ends_with(".safetensors")
}

/// A cached HF snapshot is usable when its weights are all there.
pub fn folder_complete(dir: &Path) -> bool {
    let index = dir.join("model.safetensors.index.json");
    if let Ok(text) = std::fs::read_to_string(&index) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            return false;
        };
        let Some(map) = v.get("weight_map").and_then(|m| m.as_object()) else {
            return false;
        };
        return map
            .values()
            .filter_map(|f| f.as_str())
            .all(|f| dir.join(f).is_file());
    }
    dir.join("model.safetensors").is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_file_selection() {
        for f in [
            "config.json",
            "tokenizer.json",
            "model-00001-of-00002.safetensors",
            "model.safetensors.index.json",
        ] {
            assert!(wanted_hf_file(f), "{f}");
        }
        for f in [
            "pytorch_model.bin",
            "onnx/model.onnx",
            "original/consolidated.safetensors",
            "README.md",
        ] {
            assert!(!wanted_hf_file(f), "{f}");
        }
    }

    #[test]
    fn hub_probe_fails_fast_offline() {
        // .invalid never resolves (RFC 2606); the probe must answer within its timeout.
        let t0 = Instant::now();
        assert!(!hub_reachable(
            "https://cria-test.invalid",
            Duration::from_secs(2)
        ));
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "took {:?}",
            t0.elapsed()
        );
        // A closed local port is refused at once.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(hub_reachable(
            &format!("http://127.0.0.1:{port}"),
            Duration::from_secs(2)
        ));
        drop(l);
        assert!(!hub_reachable(
            &format!("http://127.0.0.1:{port}"),
            Duration::from_secs(2)
        ));
    }
}
