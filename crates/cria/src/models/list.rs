//! `cria list`: the models in cria's cache and the Hugging Face cache, or the short names cria
//! knows (`--known`).

use super::{snapshots, walk};
use crate::fetch::{self, hub};
use anyhow::Result;
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Args, Clone, Debug)]
pub struct ListArgs {
    /// One JSON object per model, in an array (sizes in bytes).
    #[arg(long)]
    pub json: bool,
    /// The short names cria knows (pulled or not) instead.
    #[arg(long)]
    pub known: bool,
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_names() {
        assert!(!is_later_split("m-00001-of-00003.gguf"));
        assert!(is_later_split("m-00002-of-00003.gguf"));
        assert!(!is_later_split("model.gguf"));
        assert!(!is_later_split("m-2-of-3.gguf"));
    }
}
