//! LoRA adapters for the fronts: the `--lora [NAME=]PATH[:SCALE]` argument, and loading an
//! adapter file over a loaded model (checked against it, in the backend's memory).

use crate::load::LoadedModel;
use anyhow::{bail, Context, Result};
use cria_kernels::Backend;
use cria_model::{ActiveLora, AdapterFile, Lora};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest user scale accepted (llama.cpp accepts any float; beyond this an adapter only makes
/// noise, and a typo like `:100` should be told).
pub const MAX_SCALE: f32 = 16.0;

/// One adapter argument: `[NAME=]PATH[:SCALE]`.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraSpec {
    /// The name it is served under (`NAME=`); None: the file's stem.
    pub name: Option<String>,
    pub path: PathBuf,
    /// The user's scale (1.0 if not given), times the file's alpha / rank.
    pub scale: f32,
}

impl LoraSpec {
    /// Parses `[NAME=]PATH[:SCALE]`. A trailing `:X` is a scale only when X is a number, so a
    /// path containing ':' still works; NAME is `[A-Za-z0-9._-]+` (it goes into model ids).
    pub fn parse(s: &str) -> Result<LoraSpec> {
        let (name, rest) = match s.split_once('=') {
            Some((n, r)) if valid_name(n) => (Some(n.to_string()), r),
            Some((n, _)) if !n.contains('/') && !n.is_empty() => bail!(
                "--lora {s}: adapter name {n:?} may only have letters, digits, '.', '_' and '-'"
            ),
            _ => (None, s),
        };
        let (path, scale) = match rest.rsplit_once(':') {
            Some((p, x)) if !p.is_empty() => match x.parse::<f32>() {
                Ok(v) => (p, v),
                Err(_) => (rest, 1.0),
            },
            _ => (rest, 1.0),
        };
        if path.is_empty() {
            bail!("--lora {s}: no path");
        }
        check_scale(scale).with_context(|| format!("--lora {s}"))?;
        Ok(LoraSpec {
            name,
            path: PathBuf::from(path),
            scale,
        })
    }

    /// NAME, else the file's stem (a PEFT folder's name).
    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| stem(&self.path))
    }
}

/// A scale must be finite and within +-MAX_SCALE.
pub fn check_scale(scale: f32) -> Result<()> {
    if !scale.is_finite() || scale.abs() > MAX_SCALE {
        bail!("adapter scale {scale} (a finite number within +-{MAX_SCALE})");
    }
    Ok(())
}

/// Adapter names: what may follow `BASE:` in a model id.
pub fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn stem(p: &Path) -> String {
    let p = p.components().next_back().map(|c| c.as_os_str());
    let s = p
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    s.strip_suffix(".gguf").unwrap_or(&s).to_string()
}

/// Opens the adapter at `path` and builds it over `lm`'s model: refused (with the reason) when
/// it was made for another base, or its file is damaged.
pub fn load_adapter<B: Backend>(
    lm: &LoadedModel<B>,
    name: &str,
    path: &Path,
) -> Result<Arc<Lora<B>>> {
    let file = AdapterFile::open(path)
        .with_context(|| format!("reading the LoRA adapter {}", path.display()))?;
    let lora = Lora::build(name, file, &lm.model, &lm.backend)
        .with_context(|| format!("loading the LoRA adapter {}", path.display()))?;
    Ok(Arc::new(lora))
}

/// Every `--lora` of a command, loaded: the adapters its generations run with.
pub fn load_adapters<B: Backend>(
    lm: &LoadedModel<B>,
    specs: &[LoraSpec],
) -> Result<Vec<ActiveLora<B>>> {
    specs
        .iter()
        .map(|s| {
            Ok(ActiveLora {
                lora: load_adapter(lm, &s.display_name(), &s.path)?,
                scale: s.scale,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_name_path_scale() {
        let p = |s| LoraSpec::parse(s).unwrap();
        assert_eq!(
            p("a/b"),
            LoraSpec {
                name: None,
                path: "a/b".into(),
                scale: 1.0
            }
        );
        assert_eq!(p("x.gguf:0.5").scale, 0.5);
        assert_eq!(p("x.gguf:0.5").path, PathBuf::from("x.gguf"));
        assert_eq!(p("med=dir/ad:2").name.as_deref(), Some("med"));
        assert_eq!(p("med=dir/ad:2").scale, 2.0);
        assert_eq!(p("c:/weird:name").path, PathBuf::from("c:/weird:name"));
        assert_eq!(p("dir/my-adapter").display_name(), "my-adapter");
        assert_eq!(p("dir/ad.gguf:1").display_name(), "ad");
        assert_eq!(p("a=b/c=d").name.as_deref(), Some("a"));
        for bad in ["", "x:nan", "x:inf", "x:100", "bad name=x"] {
            assert!(LoraSpec::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
