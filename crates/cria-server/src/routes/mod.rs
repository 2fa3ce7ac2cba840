//! The HTTP side: the router, the server state and the helpers the endpoints share. `guard`:
//! what every request passes first (Host, CORS, API key, body limits, read timeout, panics).
//! One file per endpoint family: `chat` and `completions` read their requests and hand a
//! [`generate::Generation`] to `generate`, which submits the jobs; `response` turns the
//! scheduler's events into OpenAI-shaped JSON or an SSE stream; `embeddings`, `tokenize` (and
//! detokenize), `info` (health, metrics, models), `adapters` (LoRA adapters: list, scales, load,
//! unload).

mod adapters;
mod chat;
mod completions;
mod embeddings;
mod generate;
mod guard;
mod info;
mod response;
mod tokenize;

use crate::access::{AccessLog, Policy};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::params::{self, Common, Obj};
use crate::sink::Engine;
use crate::ServeArgs;
use anyhow::{bail, Context};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Extension, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get as get_route, post, MethodRouter};
use axum::Router;
use cria_engine::grammar::TokenTable;
use cria_engine::template::Message;
use cria_engine::tools::ChatFormat;
use cria_engine::LoadedModel;
use cria_model::Model;
use cria_tokenizer::Tokenizer;
use serde_json::Value;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// Grammar compilations (GBNF parsing, JSON schema conversion, matcher set-up) running at once.
const MAX_COMPILATIONS: usize = 2;

/// What /v1/models says about the model.
struct ModelInfo {
    n_ctx_train: usize,
    n_vocab: usize,
    n_embd: usize,
    n_params: usize,
}

impl ModelInfo {
    fn of(m: &Model) -> Self {
        ModelInfo {
            n_ctx_train: m.config.max_seq_len,
            n_vocab: m.config.vocab_size,
            n_embd: m.config.dim,
            n_params: m.n_params(),
        }
    }
}

pub struct AppState {
    pub(crate) engine: Engine,
    tok: Arc<Tokenizer>,
    /// The chat template, and how it takes tools.
    format: ChatFormat,
    /// Names the model answers to; the first is the one reported.
    pub(crate) names: Vec<String>,
    info: ModelInfo,
    /// Context per slot, in tokens.
    pub(crate) ctx_size: usize,
    vocab: usize,
    parallel: usize,
    api_key: Option<String>,
    /// Largest request body, in bytes.
    pub max_body: usize,
    /// Time a client has to send a request's body.
    read_timeout: std::time::Duration,
    /// Host names, CORS origins, prompt logging.
    policy: Policy,
    metrics: Arc<Metrics>,
    /// The LoRA adapters loaded over the model.
    pub(crate) adapters: crate::lora::Adapters,
    /// The vocabulary as grammars see it: built on the first constrained request.
    table: OnceLock<Arc<TokenTable>>,
    /// Grammar compilations running at once (each on a blocking thread, never on the async
    /// workers that serve HTTP).
    compiling: Arc<tokio::sync::Semaphore>,
    created: u64,
    next_id: AtomicU64,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl AppState {
    /// Checks the serve options, starts the scheduler thread over the model (the tokenizer is
    /// shared: the handlers tokenize, the scheduler detokenizes) and sets up what the handlers
    /// share.
    pub fn new(mut parts: LoadedModel, args: &ServeArgs) -> anyhow::Result<Self> {
        if args.parallel == 0 || args.parallel > 256 {
            bail!("--parallel must be from 1 to 256");
        }
        let ctx_size = args
            .ctx_size
            .unwrap_or(parts.model.config.max_seq_len.min(4096));
        if ctx_size < 16 {
            bail!("--ctx-size must be at least 16");
        }
        if args.batch == 0 {
            bail!("--batch-size must be at least 1");
        }
        let api_key = match (&args.api_key, &args.api_key_file) {
            (Some(k), _) => Some(k.clone()),
            (None, Some(f)) => {
                let t = std::fs::read_to_string(f)
                    .with_context(|| format!("reading the API key file {}", f.display()))?;
                let k = t.lines().next().unwrap_or("").trim().to_string();
                if k.is_empty() {
                    bail!("the API key file {} is empty", f.display());
                }
                Some(k)
            }
            (None, None) => None,
        };
        let name = parts.name();
        let mut names = vec![];
        if let Some(a) = &args.alias {
            names.push(a.clone());
        }
        names.push(name.clone());
        names.push(format!("{name}.gguf"));
        // Adapters given at start: those the binary loaded with the model (`cria serve --lora`,
        // in `LoadedModel::lora`), then `args.lora`, built over the model before the scheduler
        // takes it. Each is served as BASE:NAME, not applied to every request.
        let mut start: Vec<_> = std::mem::take(&mut parts.lora)
            .into_iter()
            .map(|a| {
                let spec = cria_engine::lora::LoraSpec {
                    name: Some(a.lora.name.clone()),
                    path: a.lora.path.clone(),
                    scale: a.scale,
                };
                (spec, a.lora)
            })
            .collect();
        for spec in &args.lora {
            let lora = cria_engine::lora::load_adapter(&parts, &spec.display_name(), &spec.path)?;
            start.push((spec.clone(), lora));
        }
        let tok = Arc::new(parts.tok);
        let metrics = Arc::new(Metrics::default());
        let info = ModelInfo::of(&parts.model);
        let vocab = parts.model.config.vocab_size;
        let (model, backend) = (Arc::new(parts.model), Arc::new(parts.backend));
        let adapters = crate::lora::Adapters::new(
            model.clone(),
            backend.clone(),
            start,
            args.lora_dir.as_deref(),
            args.lora_max_mib,
            api_key.is_some() || crate::access::is_loopback(&args.host),
        )?;
        let spec = match args.spec.config()? {
            None => None,
            Some(c) => {
                let draft = match &args.spec.draft_model {
                    None => None,
                    // A local path here (`cria serve` resolves hub names and short names).
                    Some(p) => {
                        let o = cria_engine::LoadOptions {
                            kv_type: parts.kv_type,
                            threads: Some(backend.threads()),
                            f32: false,
                        };
                        let mut d = cria_engine::load(std::path::Path::new(p), &o)
                            .with_context(|| format!("the draft model {p}"))?;
                        args.spec.cut_draft_head(&mut d)?;
                        Some(Arc::new(d))
                    }
                };
                Some((c, draft))
            }
        };
        let engine: Engine = cria_engine::scheduler::spawn_spec(
            model,
            backend,
            tok.clone(),
            cria_engine::scheduler::Config {
                parallel: args.parallel,
                ctx_size,
                batch: args.batch,
                kv_type: parts.kv_type,
            },
            metrics.sched.clone(),
            spec,
        )
        .context("starting the scheduler")?;
        let format = ChatFormat::new(tok.chat_template())
            .map_err(|e| anyhow::anyhow!("the model's chat template: {e}"))?;
        Ok(AppState {
            engine,
            tok,
            format,
            names,
            info,
            ctx_size,
            vocab,
            parallel: args.parallel,
            api_key,
            max_body: args.max_body,
            read_timeout: std::time::Duration::from_secs(args.read_timeout),
            policy: Policy::new(
                &args.host,
                &args.allowed_hosts,
                &args.cors,
                args.log_prompts,
            ),
            metrics,
            adapters,
            table: OnceLock::new(),
            compiling: Arc::new(tokio::sync::Semaphore::new(MAX_COMPILATIONS)),
            created: now_secs(),
            next_id: AtomicU64::new(1),
        })
    }

    fn id(&self, prefix: &str) -> String {
        let n = self.next_id.fetch_add(1, Relaxed);
        format!("{prefix}-{:x}{n:06x}", self.created)
    }

    /// The conversation rendered with the model's template (as `cria template` does) and
    /// tokenized as llama.cpp does: special tokens parsed, BOS added unless the template wrote it.
    fn render_chat(&self, msgs: &[Message], tools: Option<&Value>) -> Result<Vec<u32>, ApiError> {
        let tok = &self.tok;
        let text = self
            .format
            .render(msgs, tools, true, tok.bos_text(), tok.eos_text())
            .map_err(|e| ApiError::param("messages", e.to_string()))?;
        let add_bos = !tok.bos_text().is_empty() && !text.starts_with(tok.bos_text());
        Ok(tok.encode(&text, add_bos, true))
    }

    /// Never truncate: a prompt that does not leave room for one generated token is a 400.
    fn check_prompt(&self, prompt: &[u32], param: &str) -> Result<(), ApiError> {
        if prompt.is_empty() {
            return Err(ApiError::param(param, "the prompt is empty"));
        }
        if prompt.len() >= self.ctx_size {
            return Err(ApiError::param(
                param,
                format!(
                    "the prompt is {} tokens but the context holds {} (the server's --ctx-size); cria never truncates a prompt",
                    prompt.len(),
                    self.ctx_size
                ),
            )
            .with_code("context_length_exceeded"));
        }
        Ok(())
    }

    /// Runs a grammar or schema compilation on a blocking thread, at most [`MAX_COMPILATIONS`]
    /// at once (the rest wait their turn without holding a thread). A client that leaves does not
    /// stop a compilation already running, but it keeps its permit until done, so the bound holds.
    async fn compile<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let permit = self
            .compiling
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::internal("the server is shutting down"))?;
        let metrics = self.metrics.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            metrics.compiling.fetch_add(1, Relaxed);
            let r = f();
            metrics.compiling.fetch_sub(1, Relaxed);
            r
        })
        .await
        .map_err(|e| ApiError::internal(format!("compiling the grammar failed: {e}")))
    }

    /// The request's grammar compiled, unless one is set already (a tool call's).
    async fn compile_grammar(&self, c: &mut Common) -> Result<(), ApiError> {
        if let Some(g) = c.grammar_request.take() {
            if c.grammar.is_none() {
                c.grammar = Some(self.compile(move || g.compile()).await??);
            }
        }
        Ok(())
    }

    async fn token_table(self: &Arc<Self>) -> Result<Arc<TokenTable>, ApiError> {
        if let Some(t) = self.table.get() {
            return Ok(t.clone());
        }
        let st = self.clone();
        tokio::task::spawn_blocking(move || {
            st.table
                .get_or_init(|| Arc::new(cria_engine::load::token_table(&st.tok)))
                .clone()
        })
        .await
        .map_err(|e| ApiError::internal(format!("building the token table: {e}")))
    }
}

pub fn router(st: Arc<AppState>) -> Router {
    let max_body = st.max_body;
    // The OpenAI paths answer with and without the /v1 prefix, as llama-server's do.
    let openai: [(&str, MethodRouter<Arc<AppState>>); 5] = [
        (
            "/chat/completions",
            post_json(|m| &m.requests_chat, true, chat::chat),
        ),
        (
            "/completions",
            post_json(|m| &m.requests_completion, true, completions::completions),
        ),
        (
            "/embeddings",
            post_json(|m| &m.requests_embedding, true, embeddings::embeddings),
        ),
        ("/models", get_route(info::models)),
        ("/health", get_route(info::health)),
    ];
    let mut r = Router::new();
    for (path, handler) in openai {
        r = r
            .route(&format!("/v1{path}"), handler.clone())
            .route(path, handler);
    }
    r.route("/metrics", get_route(info::metrics))
        .route(
            "/tokenize",
            post_json(|m| &m.requests_other, false, tokenize::tokenize),
        )
        .route(
            "/detokenize",
            post_json(|m| &m.requests_other, false, tokenize::detokenize),
        )
        .route(
            "/lora-adapters",
            get_route(adapters::list).post(adapters::set_global),
        )
        .route(
            "/v1/adapters",
            get_route(adapters::list).merge(post_json(
                |m| &m.requests_other,
                false,
                adapters::load,
            )),
        )
        .route(
            "/v1/adapters/{name}",
            axum::routing::delete(adapters::unload),
        )
        .merge(crate::web::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            st.clone(),
            guard::guard,
        ))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(st)
}

async fn not_found(uri: axum::http::Uri) -> Response {
    ApiError::not_found(format!("no such endpoint: {}", uri.path())).into_response()
}

/// Runs a handler body; errors become OpenAI-shaped responses and are counted.
fn respond(st: &AppState, r: Result<Response, ApiError>) -> Response {
    r.unwrap_or_else(|e| {
        st.metrics.errors.fetch_add(1, Relaxed);
        e.into_response()
    })
}

/// A list of token ids, each inside the vocabulary.
fn token_ids(v: &Value, param: &str, vocab: usize) -> Result<Vec<u32>, ApiError> {
    let bad = || {
        ApiError::param(
            param,
            format!("'{param}' must be a list of token ids (0..{vocab})"),
        )
    };
    let a = v.as_array().ok_or_else(bad)?;
    a.iter()
        .map(|x| {
            x.as_u64()
                .filter(|&id| (id as usize) < vocab)
                .map(|id| id as u32)
                .ok_or_else(bad)
        })
        .collect()
}

/// A POST endpoint taking a JSON object: the request counted (`count` picks the counter), the
/// body parsed (and its `model` checked when `model` is set), then `f`; an error from any of them
/// is answered OpenAI-shaped and counted.
fn post_json<F, Fut>(
    count: fn(&Metrics) -> &AtomicU64,
    model: bool,
    f: F,
) -> MethodRouter<Arc<AppState>>
where
    F: Fn(Arc<AppState>, Arc<AccessLog>, Obj) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response, ApiError>> + Send + 'static,
{
    post(
        move |State(st): State<Arc<AppState>>,
              Extension(log): Extension<Arc<AccessLog>>,
              body: Result<Bytes, BytesRejection>| {
            let f = f.clone();
            async move {
                count(&st.metrics).fetch_add(1, Relaxed);
                let r = async {
                    let o = params::parse_body(&body?)?;
                    if model {
                        params::check_model(&o)?;
                    }
                    f(st.clone(), log, o).await
                }
                .await;
                respond(&st, r)
            }
        },
    )
}
