//! Reading LoRA adapter files into `AdapterFile` (lora.rs): a PEFT folder (adapter_config.json +
//! adapter_model.safetensors) or a llama.cpp GGUF adapter (`general.type = adapter`).
//!
//! PEFT (checked against peft 0.21: tuners/lora/{config,layer,model}.py,
//! utils/save_and_load.py, tuners/tuners_utils.py). `save_pretrained` writes
//! `base_model.model.<module>.lora_A.weight` ([r, in]) and `.lora_B.weight` ([out, r]), the
//! adapter name removed (older writers kept it: `.lora_A.<name>.weight`, read too);
//! modules_to_save as the module's whole weight (`base_model.model.lm_head.weight`,
//! `base_model.model.model.embed_tokens.weight`). Each module's factor is `lora_alpha / r`
//! (`/ sqrt(r)` with use_rslora), r and alpha per module from rank_pattern / alpha_pattern with
//! PEFT's `get_pattern_key` (the first key, in file order, that matches `(.*\.)?(KEY)$`). Every
//! config field that changes what a forward computes and that cria does not do is refused by
//! name (`check_fields`); the tensors present are what is applied, each checked to be one the
//! config targets with the rank the config gives it.
//!
//! GGUF (llama.cpp src/llama-adapter.cpp, convert_lora_to_gguf.py): tensors
//! `<base name>.lora_a` (ne [cols, rank]) and `.lora_b` (ne [rank, rows]); the factor is
//! `adapter.lora.alpha / rank`, or 1 when alpha is 0 or absent; `*_norm.weight` vectors are
//! skipped as llama.cpp skips them; Q/K rows are in the converted base's interleaved layout.

use crate::config::LLAMA_LIKE_GGUF;
use crate::lora::{AdapterFile, AdapterFormat, LoraTensors, Target, MAX_LORA_RANK};
use crate::names::hf_to_gguf;
use cria_core::gguf::GgufFile;
use cria_core::safetensors::SafetensorsModel;
use cria_core::{DType, Error, Result, Tensor};
use regex::Regex;
use serde_json::{Map, Value as Json};
use std::collections::BTreeMap;
use std::path::Path;

/// adapter_config.json files larger than this are refused (real ones are ~1 KB; a
/// target_modules list of every module of a 80-layer model is ~60 KB).
const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// Most keys of rank_pattern, of alpha_pattern (each a compiled regular expression), and most
/// names in target_modules, exclude_modules, modules_to_save.
const MAX_PATTERNS: usize = 4096;
const MAX_NAMES: usize = 1 << 16;
/// Compiled size limit of one pattern from a config (the regex crate's default is 10 MB).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

const PEFT_CONFIG: &str = "adapter_config.json";
const PEFT_WEIGHTS: &str = "adapter_model.safetensors";

/// PEFT's default target_modules for LLaMA and Mistral when the config has none
/// (peft.utils.constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING).
const DEFAULT_TARGETS: [&str; 2] = ["q_proj", "v_proj"];

/// The linear modules of a LLaMA layer: what "all-linear" selects (PEFT excludes the output
/// layer).
const LAYER_LINEAR: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

impl AdapterFile {
    /// Reads an adapter: a folder is a PEFT adapter, a file a llama.cpp GGUF adapter.
    pub fn open(path: &Path) -> Result<AdapterFile> {
        let meta = std::fs::metadata(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let name = path.file_name().and_then(|n| n.to_str());
        match path.parent() {
            _ if meta.is_dir() => open_peft(path),
            // A file of a PEFT folder stands for its folder.
            Some(dir) if matches!(name, Some(PEFT_CONFIG | PEFT_WEIGHTS)) => {
                open_peft(if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                })
            }
            _ => open_gguf(path),
        }
    }

    /// What the adapter is, as (label, value) lines for `cria inspect`: format, base model, the
    /// file's own declarations (`summary`), then what its tensors hold.
    pub fn describe(&self) -> Vec<(String, String)> {
        let mut d: Vec<(String, String)> = vec![
            (
                "format".into(),
                match self.format {
                    AdapterFormat::Peft => "PEFT LoRA folder (adapter_config.json + safetensors)",
                    AdapterFormat::Gguf => "llama.cpp GGUF LoRA adapter",
                }
                .into(),
            ),
            (
                "base model".into(),
                self.base_model
                    .clone()
                    .unwrap_or_else(|| "(not named)".into()),
            ),
        ];
        d.extend(self.summary.iter().cloned());
        let mut ranks: Vec<usize> = self.pairs.iter().map(|p| p.a.rows()).collect();
        ranks.sort_unstable();
        ranks.dedup();
        let mut scales: Vec<f32> = self.pairs.iter().map(|p| p.scale).collect();
        scales.sort_by(f32::total_cmp);
        scales.dedup();
        let mut kinds: Vec<&str> = Vec::new();
        let mut layers: Vec<usize> = Vec::new();
        for p in &self.pairs {
            let kind = p
                .target
                .strip_prefix("blk.")
                .and_then(|r| r.split_once('.'))
                .map_or(p.target.as_str(), |(_, t)| t)
                .trim_end_matches(".weight");
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
            if let Some((_, Some(l))) = Target::of_gguf_name(&p.target) {
                layers.push(l);
            }
        }
        // In the forward's order (Target::LAYER, then the head).
        let order = |k: &&str| {
            Target::LAYER
                .iter()
                .chain([&Target::Output])
                .position(|t| t.gguf_stem() == *k)
                .unwrap_or(usize::MAX)
        };
        kinds.sort_by_key(order);
        layers.sort_unstable();
        layers.dedup();
        let list = |v: Vec<String>| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        d.push((
            "rank".into(),
            list(ranks.iter().map(|r| r.to_string()).collect()),
        ));
        d.push((
            "scale (file)".into(),
            list(scales.iter().map(|s| format!("{s}")).collect()),
        ));
        d.push((
            "targets".into(),
            list(kinds.iter().map(|s| s.to_string()).collect()),
        ));
        d.push(("layers".into(), ranges(&layers)));
        d.push((
            "replaces".into(),
            list(self.replace.iter().map(|t| t.name.clone()).collect()),
        ));
        d.push((
            "tensors".into(),
            format!(
                "{} ({} LoRA pairs, {} whole matrices)",
                2 * self.pairs.len() + self.replace.len(),
                self.pairs.len(),
                self.replace.len()
            ),
        ));
        let bytes = self.byte_len();
        d.push((
            "size".into(),
            format!("{bytes} bytes ({:.2} MiB)", bytes as f64 / (1 << 20) as f64),
        ));
        d.push((
            "q/k row layout".into(),
            if self.interleaved {
                "llama.cpp interleaved".into()
            } else {
                "Hugging Face half-split".into()
            },
        ));
        d
    }
}

/// Whether `path` looks like a LoRA adapter rather than a model: a folder with
/// adapter_config.json or adapter_model.* in it (or one of those files), or a GGUF file with
/// `general.type = adapter`.
pub fn looks_like_adapter(path: &Path) -> bool {
    if path.is_dir() {
        return [
            "adapter_config.json",
            "adapter_model.safetensors",
            "adapter_model.bin",
        ]
        .iter()
        .any(|f| path.join(f).is_file());
    }
    let name = path.file_name().and_then(|n| n.to_str());
    path.is_file()
        && (matches!(name, Some(PEFT_CONFIG | PEFT_WEIGHTS))
            || GgufFile::open(path).is_ok_and(|g| g.get_str("general.type") == Some("adapter")))
}

/// Sorted integers as ranges: "0-3, 7, 9-10".
fn ranges(v: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            v[i].to_string()
        } else {
            format!("{}-{}", v[i], v[j])
        });
        i = j + 1;
    }
    if out.is_empty() {
        "none".into()
    } else {
        out.join(", ")
    }
}

fn err_at(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::msg(format!("LoRA adapter {}: {msg}", path.display()))
}

fn unsupported_at(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Unsupported(format!("LoRA adapter {}: {msg}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// PEFT

fn open_peft(dir: &Path) -> Result<AdapterFile> {
    let cfg_path = dir.join(PEFT_CONFIG);
    let st_path = dir.join(PEFT_WEIGHTS);
    if !st_path.exists() && dir.join("adapter_model.bin").exists() {
        return Err(unsupported_at(
            dir,
            "its weights are adapter_model.bin, a pickle, which cria does not read (loading one \
             can run code); re-save the adapter as safetensors: \
             `model.save_pretrained(DIR, safe_serialization=True)`",
        ));
    }
    if !cfg_path.is_file() {
        let subs: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.path().join("adapter_config.json").is_file())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .take(8)
                    .collect()
            })
            .unwrap_or_default();
        return Err(if subs.is_empty() {
            err_at(
                dir,
                "no adapter_config.json: not a PEFT adapter folder (an adapter is a folder with \
                 adapter_config.json and adapter_model.safetensors, or a GGUF adapter file)",
            )
        } else {
            err_at(
                dir,
                format!(
                    "no adapter_config.json here, but in the subfolders {} (PEFT saves a named \
                     adapter in its own subfolder): give one of them",
                    subs.join(", ")
                ),
            )
        });
    }
    let size = std::fs::metadata(&cfg_path)
        .map_err(|source| Error::Io {
            path: cfg_path.clone(),
            source,
        })?
        .len();
    if size > MAX_CONFIG_BYTES {
        return Err(err_at(
            &cfg_path,
            format!("{size} bytes, more than the {MAX_CONFIG_BYTES}-byte limit for a config"),
        ));
    }
    let text = std::fs::read_to_string(&cfg_path).map_err(|source| Error::Io {
        path: cfg_path.clone(),
        source,
    })?;
    let cfg = PeftConfig::parse(&text).map_err(|e| match e {
        CfgError::Bad(m) => err_at(&cfg_path, m),
        CfgError::Refused(m) => unsupported_at(&cfg_path, m),
    })?;
    if !st_path.is_file() {
        return Err(err_at(dir, "no adapter_model.safetensors"));
    }
    let st = SafetensorsModel::open_file(&st_path)?;
    if let Some((name, dt)) = st.skipped.first() {
        return Err(unsupported_at(
            &st_path,
            format!("tensor {name} is {dt} (LoRA tensors are F32, F16 or BF16)"),
        ));
    }
    let (pairs, replace) = peft_tensors(&cfg, &st.tensors).map_err(|e| match e {
        CfgError::Bad(m) => err_at(&st_path, m),
        CfgError::Refused(m) => unsupported_at(&st_path, m),
    })?;
    if pairs.is_empty() && replace.is_empty() {
        return Err(err_at(&st_path, "holds no LoRA tensors"));
    }
    let mut summary = cfg.summary;
    summary.push(file_line(&st_path, &st.tensors));
    Ok(AdapterFile {
        path: dir.to_path_buf(),
        format: AdapterFormat::Peft,
        base_model: cfg.base_model.clone(),
        interleaved: false,
        pairs,
        replace,
        summary,
    })
}

/// A config error: malformed (`Bad`) or a feature cria does not do (`Refused`).
enum CfgError {
    Bad(String),
    Refused(String),
}

type CfgResult<T> = std::result::Result<T, CfgError>;

fn bad<T>(m: impl Into<String>) -> CfgResult<T> {
    Err(CfgError::Bad(m.into()))
}

fn refused<T>(m: impl Into<String>) -> CfgResult<T> {
    Err(CfgError::Refused(m.into()))
}

/// A Python regular expression as the regex crate reads it (the common subset: no look-around,
/// no back-references; a pattern outside it is an error naming the field).
fn regex(field: &str, pattern: &str) -> CfgResult<Regex> {
    regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .or_else(|e| bad(format!("{field}: pattern {pattern:?}: {e}")))
}

enum Targets {
    /// Module names: a key is targeted if it is one or ends with ".NAME".
    List(Vec<String>),
    /// A regular expression the whole key must match.
    Regex(Regex),
    /// "all-linear": every linear layer but the output head.
    AllLinear,
}

enum Exclude {
    None,
    List(Vec<String>),
    Regex(Regex),
}

struct PeftConfig {
    r: usize,
    alpha: f64,
    rslora: bool,
    targets: Targets,
    exclude: Exclude,
    /// layers_to_transform (None: every layer).
    layers: Option<Vec<u64>>,
    /// layers_pattern (empty: any "<name>.<index>." segment).
    layers_pattern: Vec<Regex>,
    /// (key, compiled `^(.*\.)?(KEY)$`, value), in file order.
    rank_pattern: Vec<(Regex, usize)>,
    alpha_pattern: Vec<(Regex, f64)>,
    /// modules_to_save as PEFT matches them: `(^|.*\.)NAME($|\..*)`.
    modules_to_save: Vec<Regex>,
    ensure_weight_tying: bool,
    base_model: Option<String>,
    summary: Vec<(String, String)>,
}

/// Fields that change nothing a forward computes at inference (or only matter with a value
/// refused elsewhere): accepted as they are.
const PASS: &[&str] = &[
    "task_type",    // which head class PEFT wraps; the weights say what is there
    "peft_type",    // checked: LORA
    "auto_mapping", // the wrapper class
    "peft_version", // informational
    "base_model_name_or_path",
    "revision",        // of the base model on the Hub
    "inference_mode",  // requires_grad
    "lora_dropout",    // identity at inference
    "megatron_config", // parallel layer classes, same product
    "megatron_core",
    "loftq_config",      // only read with init_lora_weights = "loftq" (refused)
    "eva_config",        // EVA initialises B to zero: training only
    "corda_config",      // only with init_lora_weights = "corda" (refused)
    "lora_ga_config",    // only with init_lora_weights = "lora_ga" (refused)
    "qalora_group_size", // only with use_qalora (refused)
    "runtime_config",    // not saved; device offload
    // VeLoRA changes only the backward pass (variants.py: `lora_B(lora_A(x)) * scaling` when
    // not training).
    "velora_config",
    // MonteCLoRA samples perturbations of lora_A only in training mode.
    "monteclora_config",
    // PEFT turns fan_in_fan_out off for nn.Linear (LLaMA's layers) with a warning
    // (tuners/lora/layer.py `dispatch_default`), so it changes nothing here.
    "fan_in_fan_out",
    // Read below.
    "r",
    "lora_alpha",
    "use_rslora",
    "target_modules",
    "exclude_modules",
    "layers_to_transform",
    "layers_pattern",
    "rank_pattern",
    "alpha_pattern",
    "modules_to_save",
    "init_lora_weights",
    "ensure_weight_tying",
    "bias",
    "use_dora",
    "lora_bias",
    "use_qalora",
];

/// Fields whose non-empty / true value changes the forward in a way cria does not reproduce.
const REFUSED: &[(&str, &str)] = &[
    ("use_dora", "DoRA (a learned magnitude per output row)"),
    ("lora_bias", "a bias on lora_B"),
    ("use_qalora", "QALoRA (pooled inputs to lora_A)"),
    (
        "layer_replication",
        "layer replication (a model with repeated layers)",
    ),
    (
        "alora_invocation_tokens",
        "activated LoRA (applied only after invocation tokens)",
    ),
    (
        "invocation_string",
        "activated LoRA (applied only after an invocation string)",
    ),
    (
        "trainable_token_indices",
        "trainable tokens (new rows of the embedding table)",
    ),
    (
        "target_parameters",
        "LoRA on parameters (MoE experts) rather than modules",
    ),
    ("use_bdlora", "block-diagonal LoRA factors"),
    ("arrow_config", "Arrow routing between several LoRA experts"),
    (
        "kasa_config",
        "KaSA (truncated base weight and a learned singular-value diagonal)",
    ),
];

fn truthy(v: &Json) -> bool {
    match v {
        Json::Null => false,
        Json::Bool(b) => *b,
        Json::Number(n) => n.as_f64() != Some(0.0),
        Json::String(s) => !s.is_empty(),
        Json::Array(a) => !a.is_empty(),
        Json::Object(o) => !o.is_empty(),
    }
}

fn short(v: &Json) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 {
        format!("{}...", s.chars().take(77).collect::<String>())
    } else {
        s
    }
}

fn get_bool(o: &Map<String, Json>, k: &str) -> CfgResult<bool> {
    match o.get(k) {
        None | Some(Json::Null) => Ok(false),
        Some(Json::Bool(b)) => Ok(*b),
        Some(v) => bad(format!("{k}: expected true or false, got {}", short(v))),
    }
}

/// A positive integer (PEFT's `int` fields; 8.0 is read as 8).
fn as_rank(field: &str, v: &Json) -> CfgResult<usize> {
    let n = match v {
        Json::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                .map(|f| f as u64)
        }),
        _ => None,
    };
    // An upper bound is Lora::build's (MAX_LORA_RANK, naming the tensor); a rank here only has
    // to agree with the tensors' shapes.
    match n {
        Some(0) => bad(format!("{field} is 0: a LoRA rank is at least 1")),
        Some(n) => usize::try_from(n).or_else(|_| bad(format!("{field} is {n}"))),
        None => bad(format!(
            "{field}: expected a positive integer, got {}",
            short(v)
        )),
    }
}

fn as_alpha(field: &str, v: &Json) -> CfgResult<f64> {
    match v.as_f64() {
        Some(a) if a.is_finite() => Ok(a),
        _ => bad(format!("{field}: expected a number, got {}", short(v))),
    }
}

fn string_list(field: &str, v: &Json) -> CfgResult<Vec<String>> {
    match v {
        Json::Null => Ok(vec![]),
        Json::String(s) => Ok(vec![s.clone()]),
        Json::Array(a) if a.len() > MAX_NAMES => {
            bad(format!("{field}: {} names (at most {MAX_NAMES})", a.len()))
        }
        Json::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| CfgError::Bad(format!("{field}: {} is not a string", short(x))))
            })
            .collect(),
        _ => bad(format!(
            "{field}: expected a list of names, got {}",
            short(v)
        )),
    }
}

/// rank_pattern / alpha_pattern: (compiled key, value) in file order. PEFT's
/// `get_pattern_key` matches a key as `re.match(rf"(.*\.)?({key})$", module key)`.
fn pattern_list<T>(
    o: &Map<String, Json>,
    field: &str,
    value: impl Fn(&str, &Json) -> CfgResult<T>,
) -> CfgResult<Vec<(Regex, T)>> {
    let m = match o.get(field) {
        None | Some(Json::Null) => return Ok(vec![]),
        Some(Json::Object(m)) => m,
        Some(v) => return bad(format!("{field}: expected an object, got {}", short(v))),
    };
    if m.len() > MAX_PATTERNS {
        return bad(format!(
            "{field}: {} keys (at most {MAX_PATTERNS})",
            m.len()
        ));
    }
    m.iter()
        .map(|(k, v)| {
            Ok((
                regex(field, &format!(r"^(?:.*\.)?(?:{k})$"))?,
                value(&format!("{field}[{k:?}]"), v)?,
            ))
        })
        .collect()
}

impl PeftConfig {
    fn parse(text: &str) -> CfgResult<PeftConfig> {
        let v: Json = serde_json::from_str(text).or_else(|e| bad(format!("JSON: {e}")))?;
        let Some(o) = v.as_object() else {
            return bad("not a JSON object");
        };
        match o.get("peft_type") {
            Some(Json::String(s)) if s == "LORA" => {}
            Some(t) => {
                return refused(format!(
                    "peft_type is {}: cria applies LoRA adapters (peft_type LORA) only",
                    short(t)
                ))
            }
            None => return bad("no peft_type: not a PEFT adapter config"),
        }
        check_fields(o)?;

        let r = match o.get("r") {
            None | Some(Json::Null) => 8, // LoraConfig's default
            Some(v) => as_rank("r", v)?,
        };
        let alpha = match o.get("lora_alpha") {
            None | Some(Json::Null) => 8.0,
            Some(v) => as_alpha("lora_alpha", v)?,
        };
        let rslora = get_bool(o, "use_rslora")?;
        let null = Json::Null;
        let targets = match o.get("target_modules").unwrap_or(&null) {
            Json::Null => Targets::List(DEFAULT_TARGETS.iter().map(|s| s.to_string()).collect()),
            Json::String(s) if s.eq_ignore_ascii_case("all-linear") => Targets::AllLinear,
            Json::String(s) => Targets::Regex(regex("target_modules", &format!("^(?:{s})$"))?),
            v => Targets::List(string_list("target_modules", v)?),
        };
        let exclude = match o.get("exclude_modules").unwrap_or(&null) {
            Json::Null => Exclude::None,
            Json::String(s) => Exclude::Regex(regex("exclude_modules", &format!("^(?:{s})$"))?),
            v => Exclude::List(string_list("exclude_modules", v)?),
        };
        let layers = match o.get("layers_to_transform").unwrap_or(&null) {
            Json::Null => None,
            Json::Number(n) => Some(vec![n.as_u64().ok_or_else(|| {
                CfgError::Bad(format!("layers_to_transform: {n} is not a layer index"))
            })?]),
            Json::Array(a) if a.is_empty() => None,
            Json::Array(a) => Some(
                a.iter()
                    .map(|x| {
                        x.as_u64().ok_or_else(|| {
                            CfgError::Bad(format!(
                                "layers_to_transform: {} is not a layer index",
                                short(x)
                            ))
                        })
                    })
                    .collect::<CfgResult<Vec<u64>>>()?,
            ),
            v => return bad(format!("layers_to_transform: {}", short(v))),
        };
        let layers_pattern: Vec<Regex> =
            string_list("layers_pattern", o.get("layers_pattern").unwrap_or(&null))?
                .iter()
                .filter(|p| !p.is_empty())
                .map(|p| {
                    regex(
                        "layers_pattern",
                        &format!(r"^(?:|.*?\.)(?:{p})\.(?P<idx>\d+)\."),
                    )
                })
                .collect::<CfgResult<_>>()?;
        // PEFT's LoraConfig.__post_init__ refuses these combinations; so does cria.
        if matches!(targets, Targets::Regex(_)) && (layers.is_some() || !layers_pattern.is_empty())
        {
            return bad(
                "layers_to_transform / layers_pattern with a regular-expression target_modules \
                 (PEFT refuses this config)",
            );
        }
        if !layers_pattern.is_empty() && layers.is_none() {
            return bad("layers_pattern without layers_to_transform (PEFT refuses this config)");
        }
        let rank_pattern = pattern_list(o, "rank_pattern", as_rank)?;
        let alpha_pattern = pattern_list(o, "alpha_pattern", as_alpha)?;
        let mts = string_list("modules_to_save", o.get("modules_to_save").unwrap_or(&null))?;
        let modules_to_save = mts
            .iter()
            .map(|m| regex("modules_to_save", &format!(r"^(?:^|.*\.)(?:{m})(?:$|\..*)")))
            .collect::<CfgResult<_>>()?;
        let base_model = o
            .get("base_model_name_or_path")
            .and_then(Json::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string);

        let mut summary: Vec<(String, String)> = vec![
            ("r".into(), r.to_string()),
            ("lora_alpha".into(), alpha.to_string()),
            (
                "use_rslora".into(),
                if rslora {
                    "yes (scale alpha / sqrt(r))".into()
                } else {
                    "no (scale alpha / r)".into()
                },
            ),
            (
                "target_modules".into(),
                match o.get("target_modules") {
                    None | Some(Json::Null) => "(none: PEFT's LLaMA default q_proj, v_proj)".into(),
                    Some(Json::Array(a)) => {
                        let mut names: Vec<String> = a
                            .iter()
                            .filter_map(Json::as_str)
                            .map(short_module)
                            .collect();
                        names.sort();
                        names.dedup();
                        names.join(", ")
                    }
                    Some(v) => short(v),
                },
            ),
        ];
        for f in [
            "exclude_modules",
            "layers_to_transform",
            "layers_pattern",
            "rank_pattern",
            "alpha_pattern",
            "modules_to_save",
        ] {
            if let Some(v) = o.get(f).filter(|v| truthy(v)) {
                summary.push((f.into(), short(v)));
            }
        }
        if get_bool(o, "fan_in_fan_out").unwrap_or(false) {
            summary.push((
                "fan_in_fan_out".into(),
                "true (PEFT turns it off for nn.Linear: no effect)".into(),
            ));
        }
        for f in ["task_type", "peft_version"] {
            if let Some(s) = o.get(f).and_then(Json::as_str) {
                summary.push((f.into(), s.into()));
            }
        }
        Ok(PeftConfig {
            r,
            alpha,
            rslora,
            targets,
            exclude,
            layers,
            layers_pattern,
            rank_pattern,
            alpha_pattern,
            modules_to_save,
            ensure_weight_tying: get_bool(o, "ensure_weight_tying")?,
            base_model,
            summary,
        })
    }

    /// PEFT's `check_target_module_exists` for one module key (`model.layers.3.self_attn.q_proj`).
    fn targets(&self, key: &str) -> bool {
        let ends = |names: &[String]| {
            names
                .iter()
                .any(|t| key == t || key.ends_with(&format!(".{t}")))
        };
        match &self.exclude {
            Exclude::None => {}
            Exclude::Regex(r) if r.is_match(key) => return false,
            Exclude::List(l) if ends(l) => return false,
            _ => {}
        }
        if self.modules_to_save.iter().any(|r| r.is_match(key)) {
            return false;
        }
        match &self.targets {
            Targets::AllLinear => {
                let last = key.rsplit('.').next().unwrap_or(key);
                LAYER_LINEAR.contains(&last) && key.contains(".layers.")
            }
            Targets::Regex(r) => r.is_match(key),
            Targets::List(l) => {
                if l.iter().any(|t| t == key) {
                    return true; // named in full: no layer filter (PEFT's elif order)
                }
                if !ends(l) {
                    return false;
                }
                let Some(want) = &self.layers else {
                    return true;
                };
                let idx = if self.layers_pattern.is_empty() {
                    // Lazy: the first numbered segment is the layer index.
                    static ANY: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
                    ANY.get_or_init(|| Regex::new(r"^.*?\.[^.]*\.(?P<idx>\d+)\.").unwrap())
                        .captures(key)
                        .and_then(|c| c["idx"].parse::<u64>().ok())
                } else {
                    self.layers_pattern
                        .iter()
                        .find_map(|r| r.captures(key))
                        .and_then(|c| c["idx"].parse::<u64>().ok())
                };
                idx.is_some_and(|i| want.contains(&i))
            }
        }
    }

    /// (r, alpha) of a module: rank_pattern / alpha_pattern's first matching key, else r /
    /// lora_alpha (PEFT's `get_pattern_key` then `dict.get(key, default)`; a key that is the
    /// module's full name always matches its own pattern, so the fallback lookup adds nothing).
    fn rank_alpha(&self, key: &str) -> (usize, f64) {
        let r = self
            .rank_pattern
            .iter()
            .find(|(re, _)| re.is_match(key))
            .map_or(self.r, |p| p.1);
        let a = self
            .alpha_pattern
            .iter()
            .find(|(re, _)| re.is_match(key))
            .map_or(self.alpha, |p| p.1);
        (r, a)
    }
}

/// `model.layers.0.self_attn.q_proj` -> `q_proj` (a target_modules summary).
fn short_module(s: &str) -> String {
    s.rsplit('.').next().unwrap_or(s).to_string()
}

/// Every field of the config: refused ones by name, known ones passed, unknown ones refused
/// when set (a field from a newer PEFT cria cannot tell the effect of).
fn check_fields(o: &Map<String, Json>) -> CfgResult<()> {
    for (field, what) in REFUSED {
        if let Some(v) = o.get(*field).filter(|v| truthy(v)) {
            return refused(format!(
                "{field} = {}: {what}, which cria does not apply (refused rather than ignored: it \
                 changes the model's output)",
                short(v)
            ));
        }
    }
    match o.get("bias") {
        None | Some(Json::Null) => {}
        Some(Json::String(s)) if s == "none" => {}
        Some(v) => {
            return refused(format!(
                "bias = {}: trained biases of the base layers, which cria does not apply (only \
                 bias \"none\" is)",
                short(v)
            ))
        }
    }
    match o.get("init_lora_weights") {
        None | Some(Json::Null) | Some(Json::Bool(_)) => {}
        Some(Json::String(s)) => {
            let l = s.to_ascii_lowercase();
            // These initialisations rewrite the base weight at load (W - scaling * B0 A0, from
            // an SVD or a quantization of W), which PEFT redoes when it loads the adapter.
            if l.starts_with("pissa")
                || l.starts_with("corda")
                || l == "olora"
                || l == "loftq"
                || l == "lora_ga"
            {
                return refused(format!(
                    "init_lora_weights = {s:?}: PEFT rewrites the base weights at load for this \
                     initialisation, which cria does not reproduce; convert the adapter to plain \
                     LoRA when saving it (save_pretrained(..., \
                     path_initial_model_for_weight_conversion=...))"
                ));
            }
            // gaussian, eva, orthogonal: initial values only; mica: a frozen lora_B in
            // training, the same forward (variants.py MiCALinearVariant).
            if !matches!(l.as_str(), "gaussian" | "eva" | "orthogonal" | "mica") {
                return refused(format!(
                    "init_lora_weights = {s:?}: an initialisation cria does not know (it may \
                     change the base weights)"
                ));
            }
        }
        Some(v) => return bad(format!("init_lora_weights: {}", short(v))),
    }
    for (k, v) in o {
        let known = PASS.contains(&k.as_str()) || REFUSED.iter().any(|(f, _)| f == k);
        if !known && truthy(v) {
            return refused(format!(
                "unknown field {k} = {} (from a newer PEFT?): cria cannot tell whether it changes \
                 the model's output, so it refuses it",
                short(v)
            ));
        }
    }
    Ok(())
}

/// A LoRA pair being collected: (tensor name, tensor) of A and B.
#[derive(Default)]
struct Pair {
    a: Option<(String, Tensor)>,
    b: Option<(String, Tensor)>,
}

/// The pairs and whole matrices of a PEFT state dict, under GGUF names.
fn peft_tensors(
    cfg: &PeftConfig,
    tensors: &[Tensor],
) -> CfgResult<(Vec<LoraTensors>, Vec<Tensor>)> {
    let mut pairs: BTreeMap<String, Pair> = BTreeMap::new();
    let mut replace: Vec<Tensor> = Vec::new();
    for t in tensors {
        let name = t.name.as_str();
        let rest = name.strip_prefix("base_model.model.").unwrap_or(name);
        if rest.contains(".lora_embedding_A") || rest.contains(".lora_embedding_B") {
            return refused(format!(
                "tensor {name}: LoRA on the embedding table (lora_embedding_A/B), which cria \
                 does not apply"
            ));
        }
        if rest.contains(".lora_magnitude_vector") {
            return refused(format!("tensor {name}: DoRA, which cria does not apply"));
        }
        let mut found = None;
        for (tag, is_a) in [(".lora_A.", true), (".lora_B.", false)] {
            if let Some(i) = rest.find(tag) {
                found = Some((&rest[..i], &rest[i + tag.len()..], is_a));
                break;
            }
        }
        if let Some((module, tail, is_a)) = found {
            // "weight", or "<adapter name>.weight" as older PEFT wrote it.
            let leaf = tail.rsplit('.').next().unwrap_or(tail);
            let parts = tail.split('.').count();
            if leaf == "bias" {
                return refused(format!(
                    "tensor {name}: a bias on lora_B (lora_bias), which cria does not apply"
                ));
            }
            if leaf != "weight" || parts > 2 {
                return bad(format!("tensor {name}: not a LoRA weight (…lora_A.weight)"));
            }
            let slot = pairs.entry(module.to_string()).or_default();
            let s = if is_a { &mut slot.a } else { &mut slot.b };
            if let Some((other, _)) = s {
                return bad(format!(
                    "tensors {other} and {name} are both lora_{} of {module}",
                    if is_a { "A" } else { "B" }
                ));
            }
            *s = Some((name.to_string(), t.clone()));
            continue;
        }
        // A whole matrix: modules_to_save (`lm_head.weight`, older writers:
        // `lm_head.modules_to_save.<adapter>.weight`) or a saved embedding layer. A targeted
        // embedding layer's own weight is saved as `lm_head.base_layer.weight` (save_pretrained's
        // default save_embedding_layers="auto" when lm_head / embed_tokens is in target_modules);
        // PEFT loads it back into the base layer, so it replaces that matrix too.
        let mut hf = rest.to_string();
        if let Some(m) = hf.strip_suffix(".base_layer.weight") {
            hf = format!("{m}.weight");
        }
        if let Some(i) = hf.find(".modules_to_save.") {
            let tail = &hf[i + ".modules_to_save.".len()..];
            if let Some(leaf) = tail.split_once('.').map(|(_, l)| l.to_string()) {
                hf = format!("{}.{leaf}", &hf[..i]);
            }
        }
        match to_gguf(&hf).as_deref() {
            Some(g @ ("token_embd.weight" | "output.weight")) => {
                if replace.iter().any(|r: &Tensor| r.name == g) {
                    return bad(format!("tensor {name}: a second {hf}"));
                }
                check_finite(t, name)?;
                let mut t = t.clone();
                t.name = g.to_string();
                replace.push(t);
            }
            _ => {
                return refused(format!(
                    "tensor {name} is neither a LoRA pair (…lora_A.weight / …lora_B.weight) \
                     nor a whole embedding or lm_head matrix: cria has nothing to apply it to"
                ))
            }
        }
    }
    if cfg.ensure_weight_tying
        && (!replace.is_empty() || pairs.keys().any(|k| k.ends_with("lm_head")))
    {
        return refused(
            "ensure_weight_tying = true with lm_head / embed_tokens in the adapter: cria does \
             not reproduce PEFT's tying of those modules",
        );
    }
    let mut out = Vec::with_capacity(pairs.len());
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (module, p) in pairs {
        let (a_name, a) = match p.a {
            Some(a) => a,
            None => {
                let b = p.b.map(|b| b.0).unwrap_or_default();
                return bad(format!("tensor {b} has no lora_A beside it"));
            }
        };
        let Some((b_name, b)) = p.b else {
            return bad(format!("tensor {a_name} has no lora_B beside it"));
        };
        let target = to_gguf(&format!("{module}.weight"))
            .filter(|g| Target::of_gguf_name(g).is_some())
            .ok_or_else(|| {
                CfgError::Refused(format!(
                    "tensor {a_name}: module {module} is not a weight cria can adapt (the \
                     q/k/v/o, gate/up/down projections of a layer, lm_head)"
                ))
            })?;
        if let Some(other) = seen.insert(target.clone(), a_name.clone()) {
            return bad(format!("tensors {other} and {a_name} both adapt {target}"));
        }
        if !cfg.targets(&module) {
            return bad(format!(
                "tensor {a_name}: module {module} is not one the config targets \
                 (target_modules / exclude_modules / layers_to_transform / modules_to_save): \
                 PEFT would not apply it"
            ));
        }
        for (n, t) in [(&a_name, &a), (&b_name, &b)] {
            if t.ne.len() != 2 {
                return bad(format!("tensor {n}: shape {:?} is not a matrix", t.ne));
            }
        }
        let (r, alpha) = cfg.rank_alpha(&module);
        // A is [r, in] (ne [in, r]), B is [out, r] (ne [r, out]).
        if a.rows() != r || b.cols() != r {
            return bad(format!(
                "tensor {}: rank {} in the file, the config gives {module} rank {r} (r / \
                 rank_pattern)",
                if a.rows() != r { &a_name } else { &b_name },
                if a.rows() != r { a.rows() } else { b.cols() }
            ));
        }
        let scale = if cfg.rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        };
        out.push(LoraTensors {
            target,
            a,
            b,
            scale: scale as f32,
        });
    }
    Ok((out, replace))
}

/// The GGUF name of a module's weight as PEFT names it: under a causal LM
/// (`model.layers.3.self_attn.q_proj.weight`, `lm_head.weight`) or, for an adapter trained on
/// the bare `LlamaModel` (task_type FEATURE_EXTRACTION), without the `model.` prefix.
fn to_gguf(hf: &str) -> Option<String> {
    hf_to_gguf(hf).or_else(|| {
        (hf.starts_with("layers.") || hf.starts_with("embed_tokens."))
            .then(|| hf_to_gguf(&format!("model.{hf}")))
            .flatten()
    })
}

/// A whole matrix must hold finite values (Lora::build checks the pairs).
fn check_finite(t: &Tensor, name: &str) -> CfgResult<()> {
    let mut row = vec![0f32; t.cols()];
    for i in 0..t.rows() {
        t.dequantize_row(i, &mut row)
            .or_else(|e| bad(format!("tensor {name}: {e}")))?;
        if let Some(j) = row.iter().position(|x| !x.is_finite()) {
            return bad(format!(
                "tensor {name} holds a non-finite value ({}) at row {i}, column {j}",
                row[j]
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// GGUF

fn open_gguf(path: &Path) -> Result<AdapterFile> {
    let g = GgufFile::open(path).map_err(|e| {
        err_at(
            path,
            format!("not a PEFT adapter folder nor a GGUF adapter ({e})"),
        )
    })?;
    match g.get_str("general.type") {
        Some("adapter") => {}
        Some("model") | None if g.tensors.iter().any(|t| t.name == "token_embd.weight") => {
            return Err(err_at(
                path,
                "a GGUF model, not a LoRA adapter (an adapter has general.type = adapter): give \
                 it as the model, and the adapter with --lora",
            ))
        }
        t => {
            return Err(err_at(
                path,
                format!(
                    "general.type is {}, not adapter: not a GGUF LoRA adapter",
                    t.map_or("missing".to_string(), |t| format!("{t:?}"))
                ),
            ))
        }
    }
    match g.get_str("adapter.type") {
        Some("lora") => {}
        t => {
            return Err(unsupported_at(
                path,
                format!(
                    "adapter.type is {}: cria reads LoRA adapters (adapter.type = lora)",
                    t.map_or("missing".to_string(), |t| format!("{t:?}"))
                ),
            ))
        }
    }
    let arch = g.architecture().unwrap_or("");
    if !LLAMA_LIKE_GGUF.contains(&arch) {
        return Err(unsupported_at(
            path,
            format!(
                "made for architecture {arch:?}; cria runs the LLaMA family ({})",
                LLAMA_LIKE_GGUF.join(", ")
            ),
        ));
    }
    if g.get("adapter.alora.invocation_tokens").is_some() {
        return Err(unsupported_at(
            path,
            "adapter.alora.invocation_tokens: an activated LoRA (applied only after its \
             invocation tokens), which cria does not do",
        ));
    }
    // llama.cpp: `alpha ? adapter_scale * alpha / rank : adapter_scale`, alpha 0 when absent.
    let alpha = match g.get("adapter.lora.alpha") {
        None => 0.0,
        Some(v) => match v.as_f64() {
            Some(a) if a.is_finite() => a as f32,
            _ => {
                return Err(err_at(
                    path,
                    format!("adapter.lora.alpha is {}, not a number", v.summary()),
                ))
            }
        },
    };
    let mut summary = vec![(
        "adapter.lora.alpha".to_string(),
        if alpha == 0.0 {
            "0 or absent (scale 1)".to_string()
        } else {
            format!("{alpha} (scale alpha / rank)")
        },
    )];
    summary.push(("architecture".into(), arch.to_string()));
    for k in [
        "general.name",
        "adapter.lora.task_name",
        "adapter.lora.prompt_prefix",
    ] {
        if let Some(s) = g.get_str(k) {
            summary.push((k.to_string(), s.to_string()));
        }
    }
    // Other adapter.* keys: llama.cpp reads none but these (llama-adapter.cpp), so none changes
    // its results; listed, not applied.
    let others: Vec<&str> = g
        .metadata
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| {
            k.starts_with("adapter.")
                && !matches!(
                    *k,
                    "adapter.type"
                        | "adapter.lora.alpha"
                        | "adapter.lora.task_name"
                        | "adapter.lora.prompt_prefix"
                )
        })
        .take(16)
        .collect();
    if !others.is_empty() {
        summary.push((
            "other adapter keys".into(),
            format!("{} (llama.cpp does not read them)", others.join(", ")),
        ));
    }
    let mut pairs: BTreeMap<String, Pair> = BTreeMap::new();
    let mut norms = 0usize;
    for t in &g.tensors {
        let n = t.name.as_str();
        let (base, is_a) = if let Some(b) = n.strip_suffix(".lora_a") {
            (b, true)
        } else if let Some(b) = n.strip_suffix(".lora_b") {
            (b, false)
        } else if n.ends_with("_norm.weight") {
            // llama.cpp skips norm vectors (mergekit-extract-lora writes them): so does cria,
            // to give llama.cpp's results.
            norms += 1;
            continue;
        } else {
            return Err(err_at(
                path,
                format!("tensor {n} has an unexpected suffix (an adapter has NAME.lora_a / NAME.lora_b)"),
            ));
        };
        let slot = pairs.entry(base.to_string()).or_default();
        let s = if is_a { &mut slot.a } else { &mut slot.b };
        if s.is_some() {
            return Err(err_at(path, format!("tensor {n} appears twice")));
        }
        *s = Some((n.to_string(), t.clone()));
    }
    if norms > 0 {
        summary.push((
            "norm vectors".into(),
            format!("{norms} (skipped, as llama.cpp does)"),
        ));
    }
    let mut out = Vec::with_capacity(pairs.len());
    for (base, p) in pairs {
        let (Some((a_name, a)), Some((b_name, b))) = (p.a, p.b) else {
            return Err(err_at(
                path,
                format!("the LoRA pair of {base} is missing its lora_a or its lora_b"),
            ));
        };
        if base == "token_embd.weight" {
            return Err(unsupported_at(
                path,
                format!("tensor {a_name}: LoRA on the token embedding, which cria does not apply"),
            ));
        }
        if Target::of_gguf_name(&base).is_none() {
            return Err(unsupported_at(
                path,
                format!(
                    "tensor {a_name} adapts {base}, not a weight cria can adapt (attention, MLP, \
                     output head)"
                ),
            ));
        }
        for (n, t) in [(&a_name, &a), (&b_name, &b)] {
            if t.ne.len() != 2 {
                return Err(err_at(
                    path,
                    format!("tensor {n}: shape {:?} is not a matrix", t.ne),
                ));
            }
        }
        // ne: a [cols, rank], b [rank, rows].
        let rank = a.ne[1];
        if b.ne[0] != rank {
            return Err(err_at(
                path,
                format!(
                    "tensors {a_name} {:?} and {b_name} {:?} disagree on the rank (lora_a is \
                     ne [cols, rank], lora_b ne [rank, rows])",
                    a.ne, b.ne
                ),
            ));
        }
        if rank == 0 || rank > MAX_LORA_RANK {
            return Err(err_at(
                path,
                format!("tensor {a_name}: rank {rank} (1..={MAX_LORA_RANK})"),
            ));
        }
        let scale = if alpha != 0.0 {
            alpha / rank as f32
        } else {
            1.0
        };
        out.push(LoraTensors {
            target: base,
            a: float_tensor(a)?,
            b: float_tensor(b)?,
            scale,
        });
    }
    if out.is_empty() {
        return Err(err_at(path, "holds no LoRA pairs"));
    }
    summary.push(file_line(path, &g.tensors));
    let base_model = [
        "general.base_model.0.name",
        "general.base_model.0.repo_url",
        "general.basename",
    ]
    .iter()
    .find_map(|k| g.get_str(k))
    .map(str::to_string);
    Ok(AdapterFile {
        path: path.to_path_buf(),
        format: AdapterFormat::Gguf,
        base_model,
        interleaved: true,
        pairs: out,
        replace: vec![],
        summary,
    })
}

/// ("file", "N bytes, F16 tensors"): the size on disk and the types as stored (quantized ones
/// are dequantized to f32 at open, so the adapter's `byte_len` can be larger).
fn file_line(path: &Path, tensors: &[Tensor]) -> (String, String) {
    let mut types: Vec<&str> = tensors.iter().map(|t| t.dtype.name()).collect();
    types.sort_unstable();
    types.dedup();
    let bytes = std::fs::metadata(path).map_or(0, |m| m.len());
    let quantized = tensors
        .iter()
        .any(|t| !matches!(t.dtype, DType::F32 | DType::F16 | DType::BF16));
    (
        "file".into(),
        format!(
            "{bytes} bytes, {} tensors{}",
            types.join(" + "),
            if quantized {
                " (quantized ones dequantized to F32)"
            } else {
                ""
            }
        ),
    )
}

/// A tensor as f32/f16/bf16: quantized ones (convert_lora_to_gguf.py --outtype q8_0)
/// dequantized to f32.
fn float_tensor(t: Tensor) -> Result<Tensor> {
    if matches!(t.dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Ok(t);
    }
    let v = t.to_f32_vec()?;
    Tensor::from_f32(t.name.clone(), t.ne.clone(), &v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> PeftConfig {
        let text = format!(r#"{{"peft_type":"LORA","r":4,"lora_alpha":8{extra}}}"#);
        match PeftConfig::parse(&text) {
            Ok(c) => c,
            Err(CfgError::Bad(m) | CfgError::Refused(m)) => panic!("{m}"),
        }
    }

    #[test]
    fn target_matching_follows_peft() {
        let k = "model.layers.1.self_attn.q_proj";
        let list = cfg(r#","target_modules":["q_proj","v_proj"]"#);
        assert!(list.targets(k));
        assert!(!list.targets("model.layers.1.self_attn.k_proj"));
        let layer0 = cfg(r#","target_modules":["q_proj"],"layers_to_transform":[0]"#);
        assert!(!layer0.targets(k));
        assert!(layer0.targets("model.layers.0.self_attn.q_proj"));
        let one = cfg(
            r#","target_modules":["q_proj"],"layers_to_transform":1,"layers_pattern":"layers""#,
        );
        assert!(one.targets(k));
        assert!(!one.targets("model.layers.0.self_attn.q_proj"));
        let re = cfg(r#","target_modules":".*\\.(q|v)_proj""#);
        assert!(re.targets(k) && re.targets("model.layers.0.self_attn.v_proj"));
        assert!(!re.targets("model.layers.0.mlp.up_proj"));
        let all = cfg(r#","target_modules":"all-linear""#);
        assert!(all.targets("model.layers.0.mlp.down_proj") && !all.targets("lm_head"));
        let ex = cfg(r#","target_modules":"all-linear","exclude_modules":["down_proj"]"#);
        assert!(!ex.targets("model.layers.0.mlp.down_proj") && ex.targets(k));
        let mts = cfg(r#","target_modules":["q_proj","lm_head"],"modules_to_save":["lm_head"]"#);
        assert!(!mts.targets("lm_head") && mts.targets(k));
    }

    #[test]
    fn pattern_keys_follow_get_pattern_key() {
        // First key in file order that matches (.*\.)?(KEY)$.
        let c = cfg(
            r#","rank_pattern":{"q_proj":2,"layers.1.self_attn.q_proj":16},"alpha_pattern":{"model.layers.1.self_attn.v_proj":3}"#,
        );
        assert_eq!(c.rank_alpha("model.layers.1.self_attn.q_proj"), (2, 8.0));
        assert_eq!(c.rank_alpha("model.layers.1.self_attn.v_proj"), (4, 3.0));
        assert_eq!(c.rank_alpha("model.layers.0.self_attn.v_proj"), (4, 8.0));
        // "proj" alone does not match "q_proj" (the key must follow a dot or start the name).
        let d = cfg(r#","rank_pattern":{"proj":2}"#);
        assert_eq!(d.rank_alpha("model.layers.0.self_attn.q_proj").0, 4);
    }

    #[test]
    fn ranges_are_compact() {
        assert_eq!(ranges(&[0, 1, 2, 5, 7, 8]), "0-2, 5, 7-8");
        assert_eq!(ranges(&[]), "none");
    }
}
