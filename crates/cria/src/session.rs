//! A loaded model with its tokenizer and backend, and the generation loop the CLI commands share.

use crate::fetch;
use anyhow::{bail, Context, Result};
use cria_core::gguf::GgufFile;
use cria_kernels::CpuBackend;
use cria_model::{forward, Config, KvCache, KvType, LoadOptions, Logits, Model, Scratch, Source};
use cria_tokenizer::Tokenizer;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub struct Loaded {
    pub model: Model,
    pub tok: Tokenizer,
    pub backend: CpuBackend,
    pub load_time: Duration,
    /// Element type of the KV caches this session makes (f16 unless asked otherwise).
    pub kv_type: KvType,
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

pub fn load(spec: Option<&str>, f32: bool, threads: Option<usize>) -> Result<Loaded> {
    let t0 = Instant::now();
    let resolved = fetch::resolve(spec)?;
    let backend = CpuBackend::new(threads.unwrap_or_else(default_threads));
    let path = &resolved.path;
    let loading = || format!("loading {}", path.display());
    let (model, tok) = if path.is_dir() {
        let model = Model::load(path, LoadOptions { f32 }, &backend).with_context(loading)?;
        let cfg = path.join("tokenizer_config.json");
        let tok = Tokenizer::from_hf(
            &path.join("tokenizer.json"),
            cfg.exists().then_some(cfg.as_path()),
        )
        .context("reading tokenizer.json")?;
        (model, tok)
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
        let model = Model::load_gguf(g, LoadOptions { f32 }, &backend).with_context(loading)?;
        (model, tok)
    };
    let mut tok = tok;
    if let Source::HfFolder { dir, .. } = &model.source {
        set_jinja_template(&mut tok, dir)?;
        for id in generation_config_eos(dir)? {
            tok.add_eog(id);
        }
    }
    if tok.vocab_size() > model.config.vocab_size {
        bail!(
            "the tokenizer has {} tokens but the model only {} embeddings",
            tok.vocab_size(),
            model.config.vocab_size
        );
    }
    Ok(Loaded {
        model,
        tok,
        backend,
        load_time: t0.elapsed(),
        kv_type: KvType::default(),
    })
}

impl Loaded {
    /// Sets the type of the KV caches this session makes, if the model can have it (a quantized
    /// cache needs heads of whole 32-value blocks).
    pub fn set_kv_type(&mut self, kv_type: KvType) -> Result<()> {
        kv_type
            .check_head_dim(self.model.config.head_dim)
            .map_err(anyhow::Error::msg)?;
        self.kv_type = kv_type;
        Ok(())
    }

    /// Tokenizes a prompt as llama.cpp does for plain text: BOS if the model wants one.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        self.tok.encode(text, add_special, parse_special)
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
        let mut kv = KvCache::with_type(&self.model, tokens.len(), self.kv_type);
        let mut s = Scratch::new(&self.model, batch.min(tokens.len()), mode);
        s.probe = probe;
        let mut out = Vec::with_capacity(if all {
            tokens.len() * c.vocab_size
        } else {
            c.vocab_size
        });
        let mut pos = 0;
        for chunk in tokens.chunks(s.max_t) {
            forward(
                &self.model,
                &self.backend,
                chunk,
                pos,
                &mut kv,
                &mut s,
                mode,
            )?;
            if all || pos + chunk.len() == tokens.len() {
                out.extend_from_slice(s.logits());
            }
            pos += chunk.len();
        }
        Ok(out)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    Eog,
    MaxTokens,
    ContextFull,
    /// The user pressed Ctrl-C (the cancel flag was set).
    Cancelled,
    /// A stop string appeared (it and what followed are not part of the answer).
    StopString,
    /// The grammar is complete and admits nothing more.
    GrammarDone,
    /// The grammar admits no token of the vocabulary here (it cannot be spelled with it).
    GrammarStuck,
}

pub struct GenStats {
    pub stop: StopReason,
    /// Tokens evaluated for the prompt (after reusing the cached prefix).
    pub prompt_tokens: usize,
    /// Prompt tokens whose K/V came from the cache.
    pub reused_tokens: usize,
    pub prompt_time: Duration,
    pub gen_tokens: usize,
    pub gen_time: Duration,
}

pub struct GenOptions {
    pub max_tokens: usize,
    pub ignore_eos: bool,
}

/// What constrains an answer besides the sampler: stop strings and a grammar.
pub struct Constraints {
    pub stops: cria_engine::stop::StopMatcher,
    pub grammar: Option<cria_engine::grammar::Matcher>,
}

impl Constraints {
    /// Stop strings (as given on the command line) and a grammar (from
    /// [`ConstraintArgs::load`](crate::constraint_args::ConstraintArgs::load)) against the model's
    /// vocabulary.
    pub fn new(
        l: &Loaded,
        stops: &[String],
        grammar: Option<cria_engine::grammar::Grammar>,
    ) -> Result<Self> {
        let grammar = match grammar {
            Some(g) => {
                let table = std::sync::Arc::new(crate::constraint_args::token_table(&l.tok));
                Some(
                    cria_engine::grammar::Matcher::new(g, table)
                        .map_err(|e| anyhow::anyhow!("grammar: {e}"))?,
                )
            }
            None => None,
        };
        Ok(Constraints {
            stops: cria_engine::stop::StopMatcher::new(stops),
            grammar,
        })
    }

    /// Ready for a new answer.
    pub fn reset(&mut self) {
        self.stops.reset();
        if let Some(g) = &mut self.grammar {
            g.reset();
        }
    }
}

/// A KV cache together with the tokens it holds: what a chat keeps between turns so that only
/// new tokens are evaluated. Buffers are sized once, at creation.
pub struct KvState {
    kv: KvCache,
    s: Scratch,
    /// The tokens whose keys and values are in `kv`, in order; `s.logits()` belongs to the last.
    tokens: Vec<u32>,
}

impl KvState {
    pub fn new(l: &Loaded, ctx_size: usize, batch: usize) -> Self {
        KvState {
            kv: KvCache::with_type(&l.model, ctx_size, l.kv_type),
            s: Scratch::new(&l.model, batch.clamp(1, ctx_size.max(1)), Logits::Last),
            tokens: Vec::with_capacity(ctx_size),
        }
    }

    pub fn ctx_size(&self) -> usize {
        self.kv.max_seq
    }

    /// Tokens in the cache.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Forget everything (the buffers stay).
    pub fn clear(&mut self) {
        self.tokens.clear();
    }

    /// Makes the cache hold exactly `prompt`: keeps the longest prefix it shares with what is
    /// cached and evaluates only the rest (at least the last token, whose logits are needed).
    /// Returns (tokens evaluated, tokens reused).
    pub fn set_prompt(&mut self, l: &Loaded, prompt: &[u32]) -> Result<(usize, usize)> {
        if prompt.is_empty() {
            bail!("the prompt is empty");
        }
        if prompt.len() >= self.ctx_size() {
            bail!(
                "the prompt is {} tokens but the context holds {} (raise --ctx-size; cria never truncates a prompt)",
                prompt.len(),
                self.ctx_size()
            );
        }
        let common = self
            .tokens
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count()
            .min(prompt.len() - 1);
        // Positions past `common` are simply overwritten: attention never reads beyond the
        // positions of the tokens being evaluated.
        self.tokens.truncate(common);
        for chunk in prompt[common..].chunks(self.s.max_t) {
            self.eval(l, chunk)?;
        }
        Ok((prompt.len() - common, common))
    }

    /// Evaluates `tokens` after the cached ones.
    fn eval(&mut self, l: &Loaded, tokens: &[u32]) -> Result<()> {
        let pos = self.tokens.len();
        forward(
            &l.model,
            &l.backend,
            tokens,
            pos,
            &mut self.kv,
            &mut self.s,
            Logits::Last,
        )?;
        self.tokens.extend_from_slice(tokens);
        Ok(())
    }

    /// Logits after the last cached token.
    pub fn logits(&self) -> &[f32] {
        self.s.logits()
    }
}

/// Prefills `prompt` (reusing what `ctx` already holds), then samples until EOG, `max_tokens`,
/// a full context, a stop string, the end of the grammar or `cancel`; the answer's text goes to
/// `out` as soon as it is complete UTF-8 and cannot be the start of a stop string, and is
/// appended to `text`. The sampled tokens stay in the cache (the final end-of-generation token
/// is not evaluated).
#[allow(clippy::too_many_arguments)]
pub fn generate(
    l: &Loaded,
    ctx: &mut KvState,
    prompt: &[u32],
    sampler: &mut cria_engine::sampler::Sampler,
    cons: &mut Constraints,
    o: &GenOptions,
    cancel: Option<&AtomicBool>,
    out: &mut dyn Write,
    text: &mut String,
) -> Result<GenStats> {
    let t0 = Instant::now();
    let (evaluated, reused) = ctx.set_prompt(l, prompt)?;
    for &t in prompt {
        sampler.accept(t);
    }
    cons.reset();
    let prompt_time = t0.elapsed();
    let t1 = Instant::now();
    let mut dec = cria_tokenizer::StreamDecoder::new(&l.tok);
    // Text buffers for the whole loop: no allocation per token.
    let mut piece = String::with_capacity(64);
    let mut shown = String::with_capacity(256);
    let mut n = 0;
    let mut stop = StopReason::MaxTokens;
    let cancelled = || cancel.is_some_and(|c| c.load(Ordering::Relaxed));
    let mut emit = |shown: &mut String, text: &mut String| -> Result<()> {
        out.write_all(shown.as_bytes())?;
        out.flush()?;
        text.push_str(shown);
        shown.clear();
        Ok(())
    };
    while n < o.max_tokens {
        if cancelled() {
            stop = StopReason::Cancelled;
            break;
        }
        let next = match &cons.grammar {
            Some(g) => cria_engine::grammar::sample(sampler, g, ctx.logits()),
            None => sampler.sample(ctx.logits()),
        };
        sampler.accept(next);
        n += 1;
        // The grammar first, as the server does: a token it refuses (only sampled when it
        // allows nothing the vocabulary can spell) ends the answer without showing it, and an
        // end-of-generation token ends it only where the grammar is complete.
        if let Some(g) = &mut cons.grammar {
            if g.accept(next).is_err() {
                stop = StopReason::GrammarStuck;
                break;
            }
        }
        if !o.ignore_eos && l.tok.is_eog(next) {
            stop = StopReason::Eog;
            break;
        }
        piece.clear();
        dec.push_into(next, &mut piece);
        let hit = cons.stops.push(&piece, &mut shown);
        emit(&mut shown, text)?;
        if hit.is_some() {
            stop = StopReason::StopString;
            break;
        }
        if cons.grammar.as_ref().is_some_and(|g| !g.can_continue()) {
            stop = StopReason::GrammarDone;
            break;
        }
        if n == o.max_tokens {
            break;
        }
        if ctx.len() >= ctx.ctx_size() {
            stop = StopReason::ContextFull;
            break;
        }
        ctx.eval(l, &[next])?;
    }
    if stop != StopReason::StopString {
        let rest = dec.flush();
        cons.stops.push(&rest, &mut shown);
        cons.stops.flush(&mut shown);
        emit(&mut shown, text)?;
    }
    Ok(GenStats {
        prompt_tokens: evaluated,
        reused_tokens: reused,
        prompt_time,
        gen_tokens: n,
        gen_time: t1.elapsed(),
        stop,
    })
}

impl Loaded {
    /// The context size: `requested`, else the model's training context as far as its KV cache
    /// fits in half the free memory. Printed (with why) on stderr.
    pub fn ctx_size(&self, requested: Option<usize>) -> Result<usize> {
        let c = &self.model.config;
        let per_token = 2 * c.n_layers * self.kv_type.row_bytes(c.kv_dim());
        let (n, why) = cria_engine::memory::choose_ctx_size(c.max_seq_len, per_token, requested)?;
        eprintln!("{why}, {} cache", self.kv_type);
        Ok(n)
    }
}

/// A conversation rendered with the model's chat template (ChatML if it has none) and tokenized
/// as llama.cpp does: special tokens parsed, BOS added unless the template wrote it. Tools and
/// tool-call turns go through [`cria_engine::tools::ChatFormat`], as in the server.
pub fn render_chat(
    tok: &Tokenizer,
    messages: &[cria_engine::template::Message],
    add_generation_prompt: bool,
    tools: Option<&serde_json::Value>,
) -> Result<(String, Vec<u32>)> {
    let rendered = cria_engine::tools::ChatFormat::new(tok.chat_template())
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

/// The tokenizer of a model without loading its weights (GGUF metadata is read through the mmap).
pub fn load_tokenizer_only(spec: Option<&str>) -> Result<Tokenizer> {
    let resolved = fetch::resolve(spec)?;
    let p = &resolved.path;
    if p.is_dir() {
        let cfg = p.join("tokenizer_config.json");
        let mut tok = Tokenizer::from_hf(
            &p.join("tokenizer.json"),
            cfg.exists().then_some(cfg.as_path()),
        )?;
        set_jinja_template(&mut tok, p)?;
        Ok(tok)
    } else {
        let g = cria_core::gguf::GgufFile::open(p)?;
        Ok(Tokenizer::from_gguf(&g)?)
    }
}

/// A folder's chat_template.jinja, used when tokenizer_config.json carries no template.
fn set_jinja_template(tok: &mut Tokenizer, dir: &std::path::Path) -> Result<()> {
    let p = dir.join("chat_template.jinja");
    if tok.chat_template().is_none() && p.exists() {
        tok.set_chat_template(
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?,
        );
    }
    Ok(())
}

/// `eos_token_id` of a Hugging Face generation_config.json (an id or a list of ids), if present.
fn generation_config_eos(dir: &std::path::Path) -> Result<Vec<u32>> {
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
