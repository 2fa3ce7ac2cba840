//! `cria rm`: remove a model from whichever cache holds it, and the blobs no snapshot links to
//! any more.

use super::{parse_target, snapshots, walk, Target};
use crate::fetch::{self, hub};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Args, Clone, Debug)]
pub struct RmArgs {
    /// A short name, hf:ORG/REPO:FILE (one file), ORG/REPO or hf:ORG/REPO (the whole repo), or a
    /// name as `cria list` shows it.
    pub model: String,
}

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
