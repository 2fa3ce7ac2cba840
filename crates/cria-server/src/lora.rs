//! LoRA adapters in the server: the adapters loaded over the model (given at start with
//! `--lora NAME=PATH[:SCALE]`, or loaded and unloaded at run time through `/v1/adapters`), which
//! adapters a request runs with, and how many requests use each.
//!
//! Each adapter has a stable id (0.. in load order, never reused), a name (served as the model
//! id `BASE:NAME`), the scale a request naming `BASE:NAME` runs it at, and a global scale
//! (llama-server's `POST /lora-adapters`, 0 at start) that requests choosing no adapter run it
//! at. A request runs with:
//! - `"lora": [{"id", "scale"}, ...]` (llama-server): the adapters listed, at those scales;
//!   every other one at 0 for that request;
//! - `"model": "BASE:NAME"` (or `"NAME"`): that adapter at its scale (a `lora` list in the same
//!   request is applied on top);
//! - neither: the adapters whose global scale is not 0 (none at start: the base model).
//!
//! Loading reads the file and builds the adapter on a blocking thread (never the scheduler's);
//! jobs then carry `Arc<Lora>`s. An adapter is unloaded only while no request uses it (409
//! otherwise); the scheduler is then told to drop the prefixes its idle slots cached with it,
//! which frees its memory.

use crate::error::ApiError;
use crate::params::{get, Obj};
use axum::http::StatusCode;
use cria_engine::lora::{check_scale, valid_name, LoraSpec};
use cria_kernels::CpuBackend;
use cria_model::{ActiveLora, AdapterFile, Lora, Model};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

/// Adapters loaded at once at most (start and run time together).
pub const MAX_ADAPTERS: usize = 64;

/// Counters of one adapter, shared with the requests that use it.
#[derive(Default)]
pub struct AdapterStats {
    /// Requests running with it now (their jobs not all ended).
    pub in_use: AtomicUsize,
    /// Requests queued with it since it was loaded.
    pub requests: AtomicU64,
}

/// One adapter loaded over the served model.
pub struct Adapter {
    pub id: u64,
    pub name: String,
    pub path: PathBuf,
    pub lora: Arc<Lora>,
    /// The scale a request naming `BASE:NAME` runs it at.
    pub model_scale: f32,
    /// Its global scale: what requests choosing no adapter run it at (0: not applied).
    pub global: f32,
    /// Memory it takes (its matrices in f32, replaced embedding/head in their type).
    pub bytes: usize,
    pub stats: Arc<AdapterStats>,
}

struct Registry {
    list: Vec<Adapter>,
    next_id: u64,
    bytes: usize,
}

/// The server's adapters, and what it needs to build new ones.
pub struct Adapters {
    reg: RwLock<Registry>,
    model: Arc<Model>,
    backend: Arc<CpuBackend>,
    /// Bytes all adapters may take together (`--lora-max-mib`, default the base model's
    /// weights).
    pub budget: usize,
    /// `--lora-dir`, canonical: run-time loads must name a path inside it.
    dir: Option<PathBuf>,
    /// Whether run-time loads are allowed without `--lora-dir`: only behind an API key, or on a
    /// server that listens on loopback alone (else any host on the network could make it read
    /// any file).
    anywhere: bool,
    /// One run-time load at a time (each reads a file and builds matrices); held by the blocking
    /// task, so a client that leaves mid-load does not let the next one start early.
    loading: Arc<tokio::sync::Mutex<()>>,
}

/// The adapters one request holds: their `in_use` counts drop when the last of its jobs ends
/// (every job's sink holds the lease).
pub struct Lease(Vec<Arc<AdapterStats>>);

impl Lease {
    /// Counts the request for each of its adapters (once its jobs are queued).
    pub fn count_request(&self) {
        for s in &self.0 {
            s.requests.fetch_add(1, Relaxed);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        for s in &self.0 {
            s.in_use.fetch_sub(1, Relaxed);
        }
    }
}

/// What a request runs with.
pub struct Choice {
    /// The adapters and scales, in id order (empty: the base model).
    pub lora: Vec<ActiveLora>,
    /// The adapter its `model` named (answers report `BASE:NAME`).
    pub named: Option<String>,
    pub lease: Arc<Lease>,
}

impl Choice {
    /// The adapters for one job (`ActiveLora` is not `Clone` over a backend that is not).
    pub fn active(&self) -> Vec<ActiveLora> {
        self.lora
            .iter()
            .map(|a| ActiveLora {
                lora: a.lora.clone(),
                scale: a.scale,
            })
            .collect()
    }
}

/// Memory an adapter takes once built.
fn resident_bytes(l: &Lora) -> usize {
    let pairs = l
        .layers
        .iter()
        .flat_map(|ps| ps.iter().flatten())
        .chain(l.output.iter())
        .map(|p| p.rank * (p.rows + p.cols) * 4)
        .sum::<usize>();
    let whole = l
        .token_embd
        .iter()
        .chain(l.output_replace.iter())
        .map(|w| w.byte_len)
        .sum::<usize>();
    pairs + whole
}

/// Bytes of a file, or of the files directly in a folder (a PEFT adapter): what loading it reads.
fn size_on_disk(p: &Path) -> std::io::Result<u64> {
    let m = std::fs::metadata(p)?;
    if !m.is_dir() {
        return Ok(m.len());
    }
    let mut n = 0;
    for e in std::fs::read_dir(p)? {
        let m = e?.metadata()?;
        if m.is_file() {
            n += m.len();
        }
    }
    Ok(n)
}

fn conflict(msg: impl Into<String>) -> ApiError {
    ApiError {
        status: StatusCode::CONFLICT,
        ..ApiError::bad(msg)
    }
}

fn too_large(msg: impl Into<String>) -> ApiError {
    ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        ..ApiError::bad(msg)
    }
}

fn mib(n: usize) -> String {
    format!("{:.1} MiB", n as f64 / (1 << 20) as f64)
}

impl Adapters {
    /// The registry over `model`, with the adapters given at start (already built over it) at
    /// their `--lora` scales; their global scales are 0 (requests choose them). `max_mib`:
    /// the memory they may take (None: the base model's weights). `anywhere`: see the field.
    pub fn new(
        model: Arc<Model>,
        backend: Arc<CpuBackend>,
        start: Vec<(LoraSpec, Arc<Lora>)>,
        dir: Option<&Path>,
        max_mib: Option<usize>,
        anywhere: bool,
    ) -> anyhow::Result<Self> {
        let budget = max_mib.map_or(model.weight_bytes(), |m| m.saturating_mul(1 << 20));
        let dir = match dir {
            Some(d) => Some(
                std::fs::canonicalize(d)
                    .map_err(|e| anyhow::anyhow!("--lora-dir {}: {e}", d.display()))?,
            ),
            None => None,
        };
        let a = Adapters {
            reg: RwLock::new(Registry {
                list: vec![],
                next_id: 0,
                bytes: 0,
            }),
            model,
            backend,
            budget,
            dir,
            anywhere,
            loading: Arc::new(tokio::sync::Mutex::new(())),
        };
        for (spec, lora) in start {
            let name = spec.display_name();
            if !valid_name(&name) {
                anyhow::bail!(
                    "--lora {}: adapter name '{name}' may only have letters, digits, '.', '_' and '-' (it goes into model ids): give NAME=PATH",
                    spec.path.display()
                );
            }
            a.insert(&name, &spec.path, lora, spec.scale)
                .map_err(|e| anyhow::anyhow!("--lora {}: {}", spec.path.display(), e.message))?;
        }
        Ok(a)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.reg.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.reg.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks a new adapter against the bounds and the names taken.
    fn room(r: &Registry, name: &str, bytes: usize, budget: usize) -> Result<(), ApiError> {
        if r.list.iter().any(|a| a.name == name) {
            return Err(conflict(format!(
                "an adapter named '{name}' is loaded already (DELETE /v1/adapters/{name} first, or choose another name)"
            )));
        }
        if r.list.len() >= MAX_ADAPTERS {
            return Err(conflict(format!(
                "{MAX_ADAPTERS} adapters are loaded, the most the server holds; unload one first"
            )));
        }
        if r.bytes + bytes > budget {
            return Err(too_large(format!(
                "adapter '{name}' takes {}; the adapters loaded take {} of the {} allowed (--lora-max-mib; default the base model's size)",
                mib(bytes),
                mib(r.bytes),
                mib(budget)
            )));
        }
        Ok(())
    }

    fn insert(
        &self,
        name: &str,
        path: &Path,
        lora: Arc<Lora>,
        scale: f32,
    ) -> Result<Value, ApiError> {
        let bytes = resident_bytes(&lora);
        let mut r = self.write();
        Self::room(&r, name, bytes, self.budget)?;
        let id = r.next_id;
        r.next_id += 1;
        r.bytes += bytes;
        r.list.push(Adapter {
            id,
            name: name.to_string(),
            path: path.to_path_buf(),
            lora,
            model_scale: scale,
            global: 0.0,
            bytes,
            stats: Arc::default(),
        });
        Ok(entry(r.list.last().expect("pushed")))
    }

    /// `POST /v1/adapters`: the adapter at `path` read and built on a blocking thread, then
    /// added under `name` (default: the file's stem).
    pub async fn load(&self, o: &Obj) -> Result<Value, ApiError> {
        let path = match get(o, "path") {
            Some(Value::String(p)) if !p.is_empty() => PathBuf::from(p),
            _ => return Err(ApiError::param("path", "'path' (a string) is required")),
        };
        let scale = match get(o, "scale") {
            None => 1.0,
            Some(v) => v
                .as_f64()
                .ok_or_else(|| ApiError::param("scale", "'scale' must be a number"))?
                as f32,
        };
        check_scale(scale).map_err(|e| ApiError::param("scale", e.to_string()))?;
        let name = match get(o, "name") {
            None => LoraSpec {
                name: None,
                path: path.clone(),
                scale,
            }
            .display_name(),
            Some(Value::String(n)) => n.clone(),
            Some(_) => return Err(ApiError::param("name", "'name' must be a string")),
        };
        if !valid_name(&name) {
            return Err(ApiError::param(
                "name",
                format!("adapter name '{name}': 1 to 64 letters, digits, '.', '_' or '-'"),
            ));
        }
        let path = self.resolve(&path)?;
        let disk = size_on_disk(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ApiError::not_found(format!("no adapter at {}: no such file", path.display()))
            } else {
                ApiError::bad(format!(
                    "cannot read the adapter at {}: {e}",
                    path.display()
                ))
            }
        })?;
        let one = self.loading.clone().lock_owned().await;
        // Refused before reading anything: a name taken, too many adapters, a file far larger
        // than the room left (built, an adapter takes at least its file's size, its values in
        // f32; half of it is asked here, as a PEFT folder may hold other files).
        {
            let r = self.read();
            Self::room(&r, &name, 0, self.budget)?;
            if r.bytes.saturating_add(disk as usize / 2) > self.budget {
                return Err(too_large(format!(
                    "the adapter at {} is {} on disk, more than the {} left of the {} adapters may take (--lora-max-mib; default the base model's size)",
                    path.display(),
                    mib(disk as usize),
                    mib(self.budget - r.bytes),
                    mib(self.budget)
                )));
            }
        }
        let (model, backend, p, n) = (
            self.model.clone(),
            self.backend.clone(),
            path.clone(),
            name.clone(),
        );
        let built = tokio::task::spawn_blocking(move || -> Result<Lora, String> {
            let _one = one;
            let file = AdapterFile::open(&p)
                .map_err(|e| format!("reading the LoRA adapter {}: {e}", p.display()))?;
            Lora::build(&n, file, &model, &backend)
                .map_err(|e| format!("loading the LoRA adapter {}: {e}", p.display()))
        })
        .await
        .map_err(|e| ApiError::internal(format!("loading the adapter failed: {e}")))?
        .map_err(|e| ApiError::param("path", e))?;
        let v = self.insert(&name, &path, Arc::new(built), scale)?;
        eprintln!(
            "cria serve: loaded LoRA adapter '{name}' from {}",
            path.display()
        );
        Ok(v)
    }

    /// The path a client named, inside `--lora-dir` when one is set (relative paths are
    /// relative to it); without it, any path the server can read.
    fn resolve(&self, p: &Path) -> Result<PathBuf, ApiError> {
        let Some(dir) = &self.dir else {
            if !self.anywhere {
                return Err(ApiError::forbidden(
                    "this server listens beyond loopback without --api-key: give it --api-key or --lora-dir to load adapters at run time",
                ));
            }
            return Ok(p.to_path_buf());
        };
        let full = dir.join(p);
        let canon = std::fs::canonicalize(&full).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ApiError::not_found(format!("no adapter at {}: no such file", p.display()))
            } else {
                ApiError::bad(format!("cannot read the adapter at {}: {e}", p.display()))
            }
        })?;
        if !canon.starts_with(dir) {
            return Err(ApiError::forbidden(format!(
                "{} is outside the folder adapters are loaded from (--lora-dir)",
                p.display()
            )));
        }
        Ok(canon)
    }

    /// `DELETE /v1/adapters/NAME`: removed when no request uses it (409 while one does).
    pub fn unload(&self, name: &str) -> Result<Value, ApiError> {
        let mut r = self.write();
        let i =
            r.list.iter().position(|a| a.name == name).ok_or_else(|| {
                ApiError::not_found(format!("no adapter named '{name}' is loaded"))
            })?;
        let n = r.list[i].stats.in_use.load(Relaxed);
        if n > 0 {
            return Err(conflict(format!(
                "adapter '{name}' is in use by {n} request(s); unload it when they have ended"
            )));
        }
        let a = r.list.remove(i);
        r.bytes -= a.bytes;
        eprintln!("cria serve: unloaded LoRA adapter '{name}'");
        Ok(json!({"id": a.id, "name": a.name, "deleted": true}))
    }

    /// `GET /lora-adapters`: llama-server's list (id, path, scale) with name, model id and
    /// the scale a request naming it gets.
    pub fn list(&self, base: &str) -> Value {
        let r = self.read();
        Value::Array(
            r.list
                .iter()
                .map(|a| {
                    let mut e = entry(a);
                    e["model"] = json!(format!("{base}:{}", a.name));
                    e
                })
                .collect(),
        )
    }

    /// `/v1/models` entries of the adapters: (model id, id, path).
    pub fn models(&self, base: &str) -> Vec<(String, u64, String)> {
        self.read()
            .list
            .iter()
            .map(|a| {
                (
                    format!("{base}:{}", a.name),
                    a.id,
                    a.path.display().to_string(),
                )
            })
            .collect()
    }

    /// `POST /lora-adapters`: `[{"id", "scale"}]` sets the global scales; adapters not listed
    /// get 0 (llama-server's rule).
    pub fn set_global(&self, body: &Value) -> Result<Value, ApiError> {
        let list = body.as_array().ok_or_else(|| {
            ApiError::bad("the request body must be a list of {\"id\": N, \"scale\": S} objects")
        })?;
        let mut r = self.write();
        let wanted = pairs(list, "", &r.list)?;
        for a in r.list.iter_mut() {
            a.global = wanted
                .iter()
                .rev()
                .find(|(id, _)| *id == a.id)
                .map_or(0.0, |&(_, s)| s);
        }
        Ok(json!({"success": true}))
    }

    /// The adapters a request runs with (see the module's documentation); its lease counted.
    pub fn choose(&self, o: &Obj, base_names: &[String]) -> Result<Choice, ApiError> {
        let r = self.read();
        let named = named(&r, o, base_names)?;
        let listed = match get(o, "lora") {
            None => vec![],
            Some(Value::Array(l)) => pairs(l, "lora", &r.list)?,
            Some(_) => {
                return Err(ApiError::param(
                    "lora",
                    "'lora' must be a list of {\"id\": N, \"scale\": S} objects",
                ))
            }
        };
        let scales: Vec<(&Adapter, f32)> = if named.is_none() && listed.is_empty() {
            r.list.iter().map(|a| (a, a.global)).collect()
        } else {
            r.list
                .iter()
                .map(|a| {
                    let s = listed.iter().rev().find(|(id, _)| *id == a.id).map_or_else(
                        || match named {
                            Some(n) if n.id == a.id => a.model_scale,
                            _ => 0.0,
                        },
                        |&(_, s)| s,
                    );
                    (a, s)
                })
                .collect()
        };
        let mut lora = vec![];
        let mut stats = vec![];
        for (a, scale) in scales.into_iter().filter(|&(_, s)| s != 0.0) {
            a.stats.in_use.fetch_add(1, Relaxed);
            stats.push(a.stats.clone());
            lora.push(ActiveLora {
                lora: a.lora.clone(),
                scale,
            });
        }
        Ok(Choice {
            lora,
            named: named.map(|a| a.name.clone()),
            lease: Arc::new(Lease(stats)),
        })
    }

    /// An embedding request runs on the base model: one that names an adapter (by `model` or
    /// `lora`) is refused rather than answered without it.
    pub fn refuse_for_embeddings(&self, o: &Obj, base_names: &[String]) -> Result<(), ApiError> {
        let r = self.read();
        let listed = get(o, "lora").is_some_and(|l| l.as_array().is_none_or(|l| !l.is_empty()));
        if listed || named(&r, o, base_names)?.is_some() {
            return Err(ApiError::bad(
                "embeddings are computed by the base model: LoRA adapters do not apply to them",
            ));
        }
        Ok(())
    }

    /// Prometheus lines: adapters loaded, their bytes, and requests per adapter.
    pub fn metrics(&self) -> (usize, usize, Vec<(String, u64, usize)>) {
        let r = self.read();
        let per = r
            .list
            .iter()
            .map(|a| {
                (
                    a.name.clone(),
                    a.stats.requests.load(Relaxed),
                    a.stats.in_use.load(Relaxed),
                )
            })
            .collect();
        (r.list.len(), r.bytes, per)
    }
}

/// The adapter a request's `model` names: `BASE:NAME` (404 if no such adapter), or a bare
/// `NAME` that is an adapter's (as vLLM serves them); any other name is the base model
/// (llama-server ignores it).
fn named<'r>(
    r: &'r Registry,
    o: &Obj,
    base_names: &[String],
) -> Result<Option<&'r Adapter>, ApiError> {
    let Some(m) = get(o, "model").and_then(Value::as_str) else {
        return Ok(None);
    };
    if base_names.iter().any(|b| b == m) {
        return Ok(None);
    }
    let after_base = base_names
        .iter()
        .find_map(|b| m.strip_prefix(b.as_str())?.strip_prefix(':'));
    match after_base {
        Some(n) => r
            .list
            .iter()
            .find(|a| a.name == n)
            .map(Some)
            .ok_or_else(|| {
                ApiError::not_found(format!(
                "model '{m}': no adapter named '{n}' is loaded (GET /v1/models lists the models)"
            ))
                .with_code("model_not_found")
            }),
        None => Ok(r.list.iter().find(|a| a.name == m)),
    }
}

/// An adapter as the list endpoints show it.
fn entry(a: &Adapter) -> Value {
    json!({
        "id": a.id,
        "name": a.name,
        "path": a.path.display().to_string(),
        "scale": a.global,
        "model_scale": a.model_scale,
        "bytes": a.bytes,
    })
}

/// `[{"id": N, "scale": S}]` checked against the adapters loaded: (id, scale) in order. A
/// missing scale is 0, as in llama-server. `field` names the request field in errors ("" for a
/// whole body).
fn pairs(l: &[Value], field: &str, loaded: &[Adapter]) -> Result<Vec<(u64, f32)>, ApiError> {
    let err = |m: String| {
        if field.is_empty() {
            ApiError::bad(m)
        } else {
            ApiError::param(field, m)
        }
    };
    let what = if field.is_empty() {
        "the list"
    } else {
        "'lora'"
    };
    if l.len() > MAX_ADAPTERS {
        return Err(err(format!(
            "{what} may hold at most {MAX_ADAPTERS} entries"
        )));
    }
    l.iter()
        .enumerate()
        .map(|(i, e)| {
            let o = e.as_object().ok_or_else(|| {
                err(format!(
                    "{what}[{i}] must be an object {{\"id\": N, \"scale\": S}}"
                ))
            })?;
            let id = get(o, "id").and_then(Value::as_u64).ok_or_else(|| {
                err(format!(
                    "{what}[{i}].id must be an adapter id (GET /lora-adapters lists them)"
                ))
            })?;
            if !loaded.iter().any(|a| a.id == id) {
                return Err(err(format!(
                    "{what}[{i}]: no adapter with id {id} is loaded (GET /lora-adapters lists them)"
                )));
            }
            let scale = match get(o, "scale") {
                None => 0.0,
                Some(v) => v
                    .as_f64()
                    .ok_or_else(|| err(format!("{what}[{i}].scale must be a number")))?
                    as f32,
            };
            check_scale(scale).map_err(|e| err(format!("{what}[{i}]: {e}")))?;
            Ok((id, scale))
        })
        .collect()
}
