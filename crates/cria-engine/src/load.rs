//! Loading a model, in one place: a GGUF file (or split set) or a Hugging Face folder, with every
//! side file it comes with (tokenizer.json, tokenizer_config.json, chat_template.jinja,
//! generation_config.json), checked against each other. The CLI resolves a model spec to a local
//! path (downloads included) and the server is handed what this returns.

use crate::lora::{load_adapters, LoraSpec};
use anyhow::{bail, Context, Result};
use cria_core::gguf::GgufFile;
use cria_kernels::{Backend, CpuBackend};
use cria_model::{ActiveLora, AdapterFile, Config, KvCache, KvType, Logits, Model, Scratch};
use cria_tokenizer::Tokenizer;
use std::path::Path;
use std::time::{Duration, Instant};

/// How to load a model.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions {
    /// Weights converted to f32 at load (the reference path).
    pub f32: bool,
    /// Threads of the CPU backend (None: the physical cores).
    pub threads: Option<usize>,
    /// Element type of the KV caches made for this model (checked against its head size).
    pub kv_type: KvType,
}

/// A loaded model with its tokenizer and backend: what `run`, `chat`, `perplexity`, `bench` and
/// `serve` work with.
pub struct LoadedModel<B: Backend = CpuBackend> {
    pub model: Model<B>,
    pub tok: Tokenizer,
    pub backend: B,
    /// Element type of the KV caches made for this model.
    pub kv_type: KvType,
    pub load_time: Duration,
    /// The adapters every evaluation of this model runs with (`--lora` unmerged: `logits`,
    /// `perplexity`, and the generations of `run` and `chat`); empty for a plain or merged load.
    pub lora: Vec<ActiveLora<B>>,
}

/// The adapters a command loads with its model: `--lora [NAME=]PATH[:SCALE]` (repeatable) and
/// `--lora-merge`.
#[derive(Clone, Debug, Default)]
pub struct LoraOptions {
    pub specs: Vec<LoraSpec>,
    /// Fold the adapters into f32 copies of the weights they target at load
    /// (`Model::load_merged`) instead of applying them per token.
    pub merge: bool,
}

/// Physical cores: hyper-threads share a core's load/store units, and decode is memory-bound.
pub fn default_threads() -> usize {
    num_cpus::get_physical().max(1)
}

/// The GGUF metadata arrays only the tokenizer reads.
const VOCAB_ARRAYS: [&str; 4] = [
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
];

/// Loads the model at `path`: a Hugging Face folder, else a GGUF file (the first of a split set),
/// on the CPU backend with `o.threads` threads.
pub fn load(path: &Path, o: &LoadOptions) -> Result<LoadedModel> {
    let backend = CpuBackend::new(o.threads.unwrap_or_else(default_threads));
    load_on(path, o, backend)
}

/// [`load`] onto `backend` (`o.threads` is the CPU backend's, not read here).
pub fn load_on<B: Backend>(path: &Path, o: &LoadOptions, backend: B) -> Result<LoadedModel<B>> {
    load_with_lora_on(path, o, &LoraOptions::default(), backend)
}

/// [`load`] with the adapters of `lora`: merged into the weights, or loaded over the model into
/// [`LoadedModel::lora`]. A bad adapter is an error naming its file and the reason.
pub fn load_with_lora(path: &Path, o: &LoadOptions, lora: &LoraOptions) -> Result<LoadedModel> {
    let backend = CpuBackend::new(o.threads.unwrap_or_else(default_threads));
    load_with_lora_on(path, o, lora, backend)
}

/// [`load_with_lora`] onto `backend`.
pub fn load_with_lora_on<B: Backend>(
    path: &Path,
    o: &LoadOptions,
    lora: &LoraOptions,
    backend: B,
) -> Result<LoadedModel<B>> {
    let merged: Vec<(AdapterFile, f32)> = if lora.merge {
        lora.specs
            .iter()
            .map(|s| {
                let f = AdapterFile::open(&s.path)
                    .with_context(|| format!("reading the LoRA adapter {}", s.path.display()))?;
                Ok((f, s.scale))
            })
            .collect::<Result<_>>()?
    } else {
        Vec::new()
    };
    let mut lm = load_merged_on(path, o, &merged, backend)?;
    if !lora.merge {
        lm.lora = load_adapters(&lm, &lora.specs)?;
    }
    Ok(lm)
}

fn load_merged_on<B: Backend>(
    path: &Path,
    o: &LoadOptions,
    merged: &[(AdapterFile, f32)],
    backend: B,
) -> Result<LoadedModel<B>> {
    let t0 = Instant::now();
    let loading = || {
        let with: Vec<String> = merged
            .iter()
            .map(|(f, _)| f.path.display().to_string())
            .collect();
        match with.is_empty() {
            true => format!("loading {}", path.display()),
            false => format!(
                "loading {} with the LoRA adapters {} merged",
                path.display(),
                with.join(", ")
            ),
        }
    };
    let opts = cria_model::LoadOptions { f32: o.f32 };
    let (model, tok) = if path.is_dir() {
        let model =
            Model::load_hf_folder_merged(path, opts, &backend, merged).with_context(loading)?;
        (model, folder_tokenizer(path)?)
    } else {
        let mut g = GgufFile::open(path).with_context(loading)?;
        Config::from_gguf(&g).with_context(loading)?;
        // The tokenizer first, while the weights are not loaded yet (building it briefly takes
        // twice its size), then the vocabulary arrays it was built from leave the metadata the
        // model keeps: peak memory is the weights plus what inference needs.
        let tok =
            Tokenizer::from_gguf(&g).context("reading the tokenizer from the GGUF metadata")?;
        for key in VOCAB_ARRAYS {
            g.remove_metadata(key);
        }
        let model = Model::load_gguf_merged(g, opts, &backend, merged).with_context(loading)?;
        (model, tok)
    };
    if tok.vocab_size() > model.config.vocab_size {
        bail!(
            "the tokenizer has {} tokens but the model only {} embeddings",
            tok.vocab_size(),
            model.config.vocab_size
        );
    }
    // A quantized cache needs heads of whole 32-value blocks.
    o.kv_type
        .check_head_dim(model.config.head_dim)
        .map_err(anyhow::Error::msg)?;
    Ok(LoadedModel {
        model,
        tok,
        backend,
        kv_type: o.kv_type,
        load_time: t0.elapsed(),
        lora: Vec::new(),
    })
}

/// The tokenizer of the model at `path` without loading its weights (GGUF metadata is read
/// through the mmap).
pub fn load_tokenizer_only(path: &Path) -> Result<Tokenizer> {
    if path.is_dir() {
        folder_tokenizer(path)
    } else {
        let g = GgufFile::open(path)?;
        Ok(Tokenizer::from_gguf(&g)?)
    }
}

/// A folder's tokenizer: tokenizer.json with tokenizer_config.json, chat_template.jinja when the
/// config carries no template, and generation_config.json's end-of-generation ids.
fn folder_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let cfg = dir.join("tokenizer_config.json");
    let mut tok = Tokenizer::from_hf(
        &dir.join("tokenizer.json"),
        cfg.exists().then_some(cfg.as_path()),
    )
    .context("reading tokenizer.json")?;
    let p = dir.join("chat_template.jinja");
    if tok.chat_template().is_none() && p.exists() {
        tok.set_chat_template(
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?,
        );
    }
    for id in generation_config_eos(dir)? {
        tok.add_eog(id);
    }
    Ok(tok)
}

/// `eos_token_id` of a Hugging Face generation_config.json (an id or a list of ids), if present.
fn generation_config_eos(dir: &Path) -> Result<Vec<u32>> {
    let p = dir.join("generation_config.json");
    let Ok(text) = std::fs::read_to_string(&p) else {
        return Ok(vec![]);
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: malformed JSON", p.display()))?;
    Ok(match v.get("eos_token_id") {
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().map(|x| vec![x as u32]).unwrap_or_default()
        }
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => vec![],
    })
}

impl<B: Backend> LoadedModel<B> {
    /// Tokenizes a prompt as llama.cpp does for plain text: BOS if the model wants one.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        self.tok.encode(text, add_special, parse_special)
    }

    /// The model's name: the file name without .gguf, or the folder's name.
    pub fn name(&self) -> String {
        let name = match &self.model.source {
            cria_model::Source::Gguf(g) => g.path.file_stem(),
            cria_model::Source::HfFolder { dir, .. } => dir.file_name(),
        };
        name.map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "cria".into())
    }

    /// Logits for `tokens` from position 0: (n, vocab) with `all`, else (vocab) of the last token.
    pub fn logits(
        &self,
        tokens: &[u32],
        all: bool,
        batch: usize,
        probe: Option<cria_model::Probe>,
    ) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            bail!("no tokens to evaluate");
        }
        let c = &self.model.config;
        let mode = if all { Logits::All } else { Logits::Last };
        let mut kv = KvCache::try_with_type(&self.model, tokens.len(), self.kv_type)?;
        let mut s = Scratch::try_new(&self.model, batch.min(tokens.len()), mode)?;
        s.probe = probe;
        let mut out = Vec::with_capacity(if all {
            tokens.len() * c.vocab_size
        } else {
            c.vocab_size
        });
        crate::eval::forward_from_start(self, tokens, &mut kv, &mut s, mode, |_, logits| {
            if !all {
                out.clear();
            }
            out.extend_from_slice(logits);
            Ok(())
        })?;
        Ok(out)
    }
}

/// The vocabulary as the grammar matcher sees it: each token's bytes (control tokens none, so a
/// grammar never produces them by accident), the end-of-generation ids, and control tokens'
/// texts as names for `<think>`-style token references. Build once per model; share via `Arc`.
pub fn token_table(tok: &Tokenizer) -> crate::grammar::TokenTable {
    let eog: Vec<u32> = tok.eog_ids().collect();
    crate::grammar::TokenTable::from_vocab(
        tok.vocab_size() as u32,
        |t| tok.token_to_piece(t),
        &eog,
        |t| tok.is_control(t).then(|| tok.token_text(t).to_string()),
    )
}

/// A conversation rendered with the model's chat template (ChatML if it has none) and tokenized
/// as llama.cpp does: special tokens parsed, BOS added unless the template wrote it. Tools and
/// tool-call turns go through [`crate::tools::ChatFormat`].
pub fn render_chat(
    tok: &Tokenizer,
    messages: &[crate::template::Message],
    add_generation_prompt: bool,
    tools: Option<&serde_json::Value>,
) -> Result<(String, Vec<u32>)> {
    let rendered = crate::tools::ChatFormat::new(tok.chat_template())
        .and_then(|f| {
            f.render(
                messages,
                tools,
                add_generation_prompt,
                tok.bos_text(),
                tok.eos_text(),
            )
        })
        .context("rendering the chat template")?;
    // Templates that write the BOS token themselves must not get a second one.
    let add_bos = !tok.bos_text().is_empty() && !rendered.starts_with(tok.bos_text());
    let ids = tok.encode(&rendered, add_bos, true);
    Ok((rendered, ids))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn generation_config_eos_forms() {
        let dir = std::env::temp_dir().join(format!("cria-gencfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(generation_config_eos(&dir).unwrap(), Vec::<u32>::new());
        std::fs::write(
            dir.join("generation_config.json"),
            r#"{"eos_token_id": [128001, 128008, 128009]}"#,
        )
        .unwrap();
        assert_eq!(
            generation_config_eos(&dir).unwrap(),
            vec![128001, 128008, 128009]
        );
        std::fs::write(dir.join("generation_config.json"), r#"{"eos_token_id": 2}"#).unwrap();
        assert_eq!(generation_config_eos(&dir).unwrap(), vec![2]);
        std::fs::write(dir.join("generation_config.json"), "{").unwrap();
        assert!(generation_config_eos(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
