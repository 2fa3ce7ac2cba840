//! A small Hugging Face Hub client: repo listings and resumable, verified file downloads into
//! the standard Hugging Face cache.
//!
//! Cache layout (the one `huggingface_hub` and `hf-hub` use, so files are shared with them):
//!
//! ```text
//! $HF_HUB_CACHE/models--ORG--REPO/
//!     blobs/<etag>                 the file's bytes; etag = SHA-256 (LFS files) or git blob SHA-1
//!     blobs/<etag>.incomplete      a download in progress (resumed with an HTTP Range request)
//!     snapshots/<commit>/<file>    a relative symlink to ../../blobs/<etag>
//!     refs/main                    the commit `main` pointed to when last fetched
//! ```
//!
//! Why our own client rather than hf-hub's: a download must be resumable across runs, report
//! progress, be checked against the checksum the Hub publishes (`lfs.sha256` for LFS files, the
//! git blob id for small ones) before it takes its final name, and fail with a clear message on
//! a missing or gated repo. The listing comes from `/api/models/ORG/REPO/revision/REV?blobs=true`
//! (commit, every file's size and checksum in one request); files from
//! `/ORG/REPO/resolve/COMMIT/FILE`, pinned to that commit so a folder's files belong together.

use anyhow::{bail, ensure, Context, Result};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How many times one file's download is tried before giving up (each retry resumes).
const ATTEMPTS: u32 = 3;

/// One file of a repo listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoFile {
    /// Path inside the repo ("model.gguf", "sub/x.json").
    pub path: String,
    pub size: Option<u64>,
    /// SHA-256 of the content, for files stored in Git LFS.
    pub sha256: Option<String>,
    /// The git blob id (SHA-1 of "blob LEN\0" + content).
    pub git_oid: Option<String>,
}

impl RepoFile {
    /// The name of its blob in the cache: the Hub's ETag for the file.
    fn etag(&self) -> Option<&str> {
        self.sha256.as_deref().or(self.git_oid.as_deref())
    }
}

#[derive(Debug, Clone)]
pub struct RepoInfo {
    pub repo: String,
    /// The commit the revision resolved to.
    pub commit: String,
    pub files: Vec<RepoFile>,
}

impl RepoInfo {
    pub fn file(&self, path: &str) -> Option<&RepoFile> {
        self.files.iter().find(|f| f.path == path)
    }
    /// The GGUF files of the repo, for "pick one" messages.
    pub fn ggufs(&self) -> Vec<&RepoFile> {
        self.files
            .iter()
            .filter(|f| f.path.to_ascii_lowercase().ends_with(".gguf"))
            .collect()
    }
}

/// What was checked about a downloaded file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    Sha256,
    GitSha1,
    /// The Hub gave no checksum; only the size was checked (when known).
    SizeOnly,
}

impl std::fmt::Display for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verified::Sha256 => "SHA-256 verified",
            Verified::GitSha1 => "git SHA-1 verified",
            Verified::SizeOnly => "no checksum published; size checked",
        })
    }
}

/// The result of [`Client::download`].
#[derive(Debug)]
pub struct Downloaded {
    /// The file in the snapshot folder.
    pub path: PathBuf,
    /// Bytes fetched over the network in this call (0 when it was already cached).
    pub fetched: u64,
    /// Bytes that were already in a `.incomplete` file and were not fetched again.
    pub resumed_from: u64,
    pub verified: Verified,
}

pub struct Client {
    endpoint: String,
    token: Option<String>,
    agent: ureq::Agent,
    cache: PathBuf,
}

/// `models--ORG--REPO`: a repo's folder name in the cache.
pub fn repo_folder(repo: &str) -> String {
    format!("models--{}", repo.replace('/', "--"))
}

/// The repo id back from a cache folder name (`models--ORG--REPO` -> `ORG/REPO`).
pub fn repo_from_folder(name: &str) -> Option<String> {
    let rest = name.strip_prefix("models--")?;
    let (org, repo) = rest.split_once("--")?;
    (!org.is_empty() && !repo.is_empty()).then(|| format!("{org}/{repo}"))
}

/// The snapshot folder `refs/<revision>` names, if the repo was fetched at that revision. A
/// 40-hex revision is itself a commit.
pub fn cached_snapshot(cache: &Path, repo: &str, revision: &str) -> Option<PathBuf> {
    let dir = cache.join(repo_folder(repo));
    let commit = if is_commit(revision) {
        revision.to_string()
    } else {
        std::fs::read_to_string(dir.join("refs").join(revision))
            .ok()?
            .trim()
            .to_string()
    };
    let snap = dir.join("snapshots").join(commit);
    snap.is_dir().then_some(snap)
}

fn is_commit(rev: &str) -> bool {
    rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Percent-encodes one path segment (repo files may hold spaces and such).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn encode_path(p: &str) -> String {
    p.split('/')
        .map(encode_segment)
        .collect::<Vec<_>>()
        .join("/")
}

fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

impl Client {
    pub fn new(endpoint: String, token: Option<String>, cache: PathBuf) -> Self {
        let agent = ureq::AgentBuilder::new()
            // Redirects are followed by hand: the token must not travel to another host (the
            // Hub redirects LFS files to its CDN), and Range must survive the hop.
            .redirects(0)
            .timeout_connect(Duration::from_secs(10))
            .timeout_read(Duration::from_secs(60))
            .user_agent(concat!("cria/", env!("CARGO_PKG_VERSION")))
            .try_proxy_from_env(true)
            .build();
        Client {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token,
            agent,
            cache,
        }
    }

    /// GET with the token (to the endpoint's host only) and relative or absolute redirects
    /// followed by hand. HTTP errors come back as `Err(ureq::Error::Status)`.
    fn get(&self, url: &str, range_from: u64) -> std::result::Result<ureq::Response, ureq::Error> {
        let mut url = url.to_string();
        let mut hops = 0;
        loop {
            let mut req = self.agent.get(&url);
            if let Some(t) = &self.token {
                if host_of(&url) == host_of(&self.endpoint) {
                    req = req.set("Authorization", &format!("Bearer {t}"));
                }
            }
            if range_from > 0 {
                req = req.set("Range", &format!("bytes={range_from}-"));
            }
            let resp = req.call()?;
            if !(300..400).contains(&resp.status()) {
                return Ok(resp);
            }
            // Past 8 hops the 3xx itself goes back (and reads as an unexpected status).
            hops += 1;
            let Some(loc) = resp.header("Location").filter(|_| hops <= 8) else {
                return Ok(resp);
            };
            url = if loc.contains("://") {
                loc.to_string()
            } else if loc.starts_with('/') {
                let scheme_host =
                    &url[..url.find("://").map_or(0, |i| i + 3) + host_of(&url).len()];
                format!("{scheme_host}{loc}")
            } else {
                match url.rfind('/') {
                    Some(i) => format!("{}/{loc}", &url[..i]),
                    None => loc.to_string(),
                }
            };
        }
    }

    /// Turns an HTTP error of a repo request into a sentence.
    fn explain(&self, repo: &str, what: &str, e: ureq::Error) -> anyhow::Error {
        match e {
            ureq::Error::Status(code, resp) => {
                let code_hdr = resp.header("X-Error-Code").unwrap_or("").to_string();
                let msg = resp.header("X-Error-Message").unwrap_or("").to_string();
                let detail = if msg.is_empty() {
                    String::new()
                } else {
                    format!(": {msg}")
                };
                match code {
                    401 | 404 if code_hdr != "EntryNotFound" && code_hdr != "RevisionNotFound" => {
                        let auth = if self.token.is_some() {
                            ""
                        } else {
                            " (if it is private, set HF_TOKEN)"
                        };
                        anyhow::anyhow!(
                            "{repo} was not found on {}{auth} (HTTP {code}{detail})",
                            self.endpoint
                        )
                    }
                    404 => anyhow::anyhow!("{what}: not found (HTTP 404 {code_hdr}{detail})"),
                    403 => anyhow::anyhow!(
                        "{repo} is gated or forbidden (HTTP 403{detail}): accept its license on the Hub \
                         and set HF_TOKEN to a token with access"
                    ),
                    _ => anyhow::anyhow!("{what}: HTTP {code}{detail}"),
                }
            }
            ureq::Error::Transport(t) => {
                anyhow::anyhow!("{what}: cannot reach {}: {t}", self.endpoint)
            }
        }
    }

    /// The files of `repo` at `revision` (a branch, tag or commit), with sizes and checksums.
    pub fn repo_info(&self, repo: &str, revision: &str) -> Result<RepoInfo> {
        let url = format!(
            "{}/api/models/{repo}/revision/{}?blobs=true",
            self.endpoint,
            encode_segment(revision)
        );
        let what = format!("listing {repo} at {revision}");
        let resp = self
            .get(&url, 0)
            .map_err(|e| self.explain(repo, &what, e))?;
        let v: serde_json::Value = resp
            .into_json()
            .with_context(|| format!("{what}: the Hub's answer is not JSON"))?;
        parse_repo_info(repo, &v).with_context(|| what.clone())
    }

    /// Downloads `file` of `info` into the cache (unless already there) and returns its snapshot
    /// path. The bytes go to `blobs/<etag>.incomplete`, resumed from where an earlier attempt
    /// stopped; the blob only gets its final name once its size and checksum match.
    pub fn download(&self, info: &RepoInfo, file: &RepoFile, revision: &str) -> Result<Downloaded> {
        let repo_dir = self.cache.join(repo_folder(&info.repo));
        let etag = match file.etag() {
            Some(e) => e.to_string(),
            None => bail!(
                "{}:{}: the Hub listed no checksum or blob id for it",
                info.repo,
                file.path
            ),
        };
        ensure!(
            !etag.is_empty() && etag.bytes().all(|b| b.is_ascii_alphanumeric()),
            "{}:{}: unexpected blob id {etag:?}",
            info.repo,
            file.path
        );
        let snap_file = repo_dir
            .join("snapshots")
            .join(&info.commit)
            .join(&file.path);
        let blob = repo_dir.join("blobs").join(&etag);
        let size_ok = |p: &Path| {
            std::fs::metadata(p)
                .is_ok_and(|m| m.is_file() && file.size.is_none_or(|s| m.len() == s))
        };
        let verified = if file.sha256.is_some() {
            Verified::Sha256
        } else if file.git_oid.is_some() {
            Verified::GitSha1
        } else {
            Verified::SizeOnly
        };
        let mut out = Downloaded {
            path: snap_file.clone(),
            fetched: 0,
            resumed_from: 0,
            verified,
        };
        if size_ok(&snap_file) && size_ok(&blob) {
            self.write_ref(&repo_dir, revision, &info.commit)?;
            return Ok(out);
        }
        std::fs::create_dir_all(blob.parent().unwrap())
            .with_context(|| format!("creating {}", repo_dir.display()))?;
        if !size_ok(&blob) {
            let (fetched, resumed) = self.fetch_blob(info, file, &blob)?;
            out.fetched = fetched;
            out.resumed_from = resumed;
        }
        link_snapshot(&blob, &snap_file)?;
        self.write_ref(&repo_dir, revision, &info.commit)?;
        Ok(out)
    }

    fn write_ref(&self, repo_dir: &Path, revision: &str, commit: &str) -> Result<()> {
        if is_commit(revision) || revision.contains("..") {
            return Ok(());
        }
        let r = repo_dir.join("refs").join(revision);
        std::fs::create_dir_all(r.parent().unwrap())?;
        if std::fs::read_to_string(&r).ok().as_deref() != Some(commit) {
            std::fs::write(&r, commit).with_context(|| format!("writing {}", r.display()))?;
        }
        Ok(())
    }

    /// Fetches into `blob` (see `download`); returns (bytes fetched, bytes resumed from).
    fn fetch_blob(&self, info: &RepoInfo, file: &RepoFile, blob: &Path) -> Result<(u64, u64)> {
        let part = PathBuf::from(format!("{}.incomplete", blob.display()));
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&part)
            .with_context(|| format!("opening {}", part.display()))?;
        // Two cria processes appending to the same file would interleave bytes.
        match f.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => bail!(
                "{}:{} is being downloaded by another process ({} is locked)",
                info.repo,
                file.path,
                part.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", part.display()))
            }
        }
        let mut have = f.metadata()?.len();
        if file.size.is_some_and(|s| have > s) {
            f.set_len(0)?;
            have = 0;
        }
        let resumed_from = have;
        let url = format!(
            "{}/{}/resolve/{}/{}",
            self.endpoint,
            info.repo,
            info.commit,
            encode_path(&file.path)
        );
        let what = format!("downloading {} from {}", file.path, info.repo);
        let name = file
            .path
            .rsplit('/')
            .next()
            .unwrap_or(&file.path)
            .to_string();
        let bar = indicatif::ProgressBar::with_draw_target(
            file.size,
            indicatif::ProgressDrawTarget::stderr(),
        );
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(name.clone());
        bar.set_position(have);

        let mut fetched = 0u64;
        let mut attempt = 0;
        let result = loop {
            attempt += 1;
            match self.fetch_range(&url, &mut f, &mut have, file.size, &bar, &mut fetched) {
                Ok(()) => break Ok(()),
                Err(e) => {
                    let fatal = e.downcast_ref::<Fatal>().is_some();
                    if fatal || attempt >= ATTEMPTS {
                        break Err(e);
                    }
                    bar.suspend(|| {
                        eprintln!(
                            "cria: {what}: {e:#}; retrying from byte {have} ({attempt}/{ATTEMPTS})"
                        )
                    });
                    std::thread::sleep(Duration::from_millis(250 * attempt as u64));
                }
            }
        };
        bar.finish_and_clear();
        if let Err(e) = result {
            let e = match e.downcast::<Fatal>() {
                Ok(Fatal(inner)) => inner,
                Err(e) => e,
            };
            // A partial file stays for the next run to resume; an empty one is just litter.
            let kept = if have > 0 {
                format!(
                    "; {have} bytes kept in {} for the next try to resume",
                    part.display()
                )
            } else {
                drop(f);
                let _ = std::fs::remove_file(&part);
                String::new()
            };
            return Err(e.context(format!("{what}{kept}")));
        }

        if let Err(e) = verify(&mut f, file) {
            // A whole file with the wrong content cannot be resumed: start over next time.
            drop(f);
            let _ = std::fs::remove_file(&part);
            return Err(e.context(format!("{what}: the download is corrupt and was deleted")));
        }
        f.sync_all()?;
        drop(f);
        std::fs::rename(&part, blob)
            .with_context(|| format!("moving {} into place", blob.display()))?;
        Ok((fetched, resumed_from))
    }

    /// One GET from byte `have` on, appended to `f`.
    fn fetch_range(
        &self,
        url: &str,
        f: &mut File,
        have: &mut u64,
        size: Option<u64>,
        bar: &indicatif::ProgressBar,
        fetched: &mut u64,
    ) -> Result<()> {
        if size == Some(*have) && *have > 0 {
            return Ok(());
        }
        let resp = match self.get(url, *have) {
            Ok(r) => r,
            // Asked for bytes past the end: what we have is already the whole file (the
            // checksum decides).
            Err(ureq::Error::Status(416, _)) if *have > 0 => return Ok(()),
            Err(ureq::Error::Status(code, r)) => {
                let detail = r.header("X-Error-Message").unwrap_or("").to_string();
                return Err(Fatal(anyhow::anyhow!("HTTP {code} {detail}")).into());
            }
            Err(e) => return Err(anyhow::anyhow!("{e}")),
        };
        match resp.status() {
            206 => {
                let start = resp
                    .header("Content-Range")
                    .and_then(|c| c.strip_prefix("bytes "))
                    .and_then(|c| c.split('-').next())
                    .and_then(|s| s.trim().parse::<u64>().ok());
                if start != Some(*have) {
                    return Err(Fatal(anyhow::anyhow!(
                        "asked for bytes {have}- but the server sent {:?}",
                        resp.header("Content-Range")
                    ))
                    .into());
                }
            }
            200 => {
                if *have > 0 {
                    // No Range support: start over.
                    f.set_len(0)?;
                    *have = 0;
                    bar.set_position(0);
                }
            }
            s => return Err(Fatal(anyhow::anyhow!("unexpected HTTP status {s}")).into()),
        }
        let mut r = resp.into_reader();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            f.write_all(&buf[..n])?;
            *have += n as u64;
            *fetched += n as u64;
            bar.inc(n as u64);
            if size.is_some_and(|s| *have > s) {
                return Err(Fatal(anyhow::anyhow!(
                    "the server sent more than the {} bytes listed",
                    size.unwrap_or(0)
                ))
                .into());
            }
        }
        if let Some(s) = size {
            ensure!(*have == s, "connection closed at byte {have} of {s}");
        }
        Ok(())
    }
}

/// An error not worth retrying (an HTTP status, a server that ignores Range semantics).
#[derive(Debug)]
struct Fatal(anyhow::Error);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for Fatal {}

/// Size and checksum of the finished `.incomplete` file against the listing.
fn verify(f: &mut File, file: &RepoFile) -> Result<()> {
    let len = f.metadata()?.len();
    if let Some(s) = file.size {
        ensure!(len == s, "{}: {len} bytes, the Hub lists {s}", file.path);
    }
    f.seek(SeekFrom::Start(0))?;
    if let Some(want) = &file.sha256 {
        let got = digest_of(f, Sha256::new())?;
        ensure!(
            got.eq_ignore_ascii_case(want),
            "{}: SHA-256 {got}, the Hub lists {want}",
            file.path
        );
    } else if let Some(want) = &file.git_oid {
        let mut h = Sha1::new();
        h.update(format!("blob {len}\0").as_bytes());
        let got = digest_of(f, h)?;
        ensure!(
            got.eq_ignore_ascii_case(want),
            "{}: git blob id {got}, the Hub lists {want}",
            file.path
        );
    }
    Ok(())
}

/// The hex digest of the rest of `f`, fed to `h`.
pub(crate) fn digest_of<D: Digest>(f: &mut File, mut h: D) -> Result<String> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// `snapshots/<commit>/<file>` -> `../../blobs/<etag>` (relative, as huggingface_hub makes it);
/// a copy where symlinks are not available.
fn link_snapshot(blob: &Path, snap_file: &Path) -> Result<()> {
    let dir = snap_file.parent().context("snapshot path has no folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if std::fs::symlink_metadata(snap_file).is_ok() {
        std::fs::remove_file(snap_file)
            .with_context(|| format!("replacing {}", snap_file.display()))?;
    }
    #[cfg(unix)]
    {
        // From snapshots/<commit>/<a>/<b>/file up to the repo folder, then into blobs/.
        let repo_dir = blob.parent().and_then(Path::parent).context("blob path")?;
        let depth = snap_file
            .strip_prefix(repo_dir)
            .map(|p| p.components().count() - 1)
            .unwrap_or(2);
        let mut rel = PathBuf::new();
        for _ in 0..depth {
            rel.push("..");
        }
        rel.push("blobs");
        rel.push(blob.file_name().context("blob name")?);
        std::os::unix::fs::symlink(&rel, snap_file)
            .with_context(|| format!("linking {}", snap_file.display()))?;
    }
    #[cfg(not(unix))]
    std::fs::copy(blob, snap_file)
        .with_context(|| format!("copying to {}", snap_file.display()))?;
    Ok(())
}

fn parse_repo_info(repo: &str, v: &serde_json::Value) -> Result<RepoInfo> {
    let commit = v
        .get("sha")
        .and_then(|s| s.as_str())
        .context("the listing has no commit (\"sha\")")?
        .to_string();
    ensure!(
        is_commit(&commit),
        "the listing's commit {commit:?} is not a commit id"
    );
    let siblings = v
        .get("siblings")
        .and_then(|s| s.as_array())
        .context("the listing has no file list (\"siblings\")")?;
    let mut files = Vec::with_capacity(siblings.len());
    for s in siblings {
        let Some(path) = s.get("rfilename").and_then(|p| p.as_str()) else {
            continue;
        };
        // Names that would escape the snapshot folder are not files we will write.
        if path.is_empty()
            || path.starts_with('/')
            || path
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            continue;
        }
        let lfs = s.get("lfs");
        let sha256 = lfs
            .and_then(|l| l.get("sha256").or_else(|| l.get("oid")))
            .and_then(|x| x.as_str())
            .map(|x| x.trim_start_matches("sha256:").to_ascii_lowercase());
        let size = lfs
            .and_then(|l| l.get("size"))
            .or_else(|| s.get("size"))
            .and_then(|x| x.as_u64());
        let git_oid = s
            .get("blobId")
            .and_then(|x| x.as_str())
            .map(str::to_ascii_lowercase);
        files.push(RepoFile {
            path: path.to_string(),
            size,
            sha256,
            git_oid,
        });
    }
    Ok(RepoInfo {
        repo: repo.to_string(),
        commit,
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_parse() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"sha":"0123456789abcdef0123456789abcdef01234567","siblings":[
              {"rfilename":"config.json","size":12,"blobId":"AB12"},
              {"rfilename":"m.gguf","size":99,"blobId":"cd","lfs":{"sha256":"EF01","size":1000,"pointerSize":130}},
              {"rfilename":"../evil"},{"rfilename":"a//b"}]}"#,
        )
        .unwrap();
        let info = parse_repo_info("o/r", &v).unwrap();
        assert_eq!(info.files.len(), 2);
        assert_eq!(
            info.files[0],
            RepoFile {
                path: "config.json".into(),
                size: Some(12),
                sha256: None,
                git_oid: Some("ab12".into())
            }
        );
        // LFS: the real size and SHA-256 (not the pointer's), and the etag is the SHA-256.
        assert_eq!(info.files[1].size, Some(1000));
        assert_eq!(info.files[1].etag(), Some("ef01"));
        assert_eq!(info.ggufs().len(), 1);
        let bad: serde_json::Value = serde_json::from_str(r#"{"sha":"x","siblings":[]}"#).unwrap();
        assert!(parse_repo_info("o/r", &bad).is_err());
    }

    #[test]
    fn folder_names() {
        assert_eq!(repo_folder("Org/Re-po"), "models--Org--Re-po");
        assert_eq!(
            repo_from_folder("models--Org--Re-po").as_deref(),
            Some("Org/Re-po")
        );
        assert_eq!(repo_from_folder("datasets--a--b"), None);
        assert_eq!(encode_path("a b/c+d.gguf"), "a%20b/c%2Bd.gguf");
    }

    #[test]
    fn git_blob_id() {
        // `git hash-object` of "hello\n" is ce013625030ba8dba906f756967f9e9ca394464a.
        let d = std::env::temp_dir().join(format!("cria-hub-oid-{}", std::process::id()));
        std::fs::write(&d, b"hello\n").unwrap();
        let mut f = File::open(&d).unwrap();
        let file = RepoFile {
            path: "x".into(),
            size: Some(6),
            sha256: None,
            git_oid: Some("ce013625030ba8dba906f756967f9e9ca394464a".into()),
        };
        verify(&mut f, &file).unwrap();
        let wrong = RepoFile {
            git_oid: Some("ce013625030ba8dba906f756967f9e9ca394464b".into()),
            ..file
        };
        assert!(verify(&mut f, &wrong).is_err());
        let _ = std::fs::remove_file(&d);
    }
}
