//! The HTTP side: routes, request parsing, OpenAI-shaped responses and SSE streams.

use crate::access::{self, AccessLog, Policy};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::params::{self, get, opt_bool, opt_str, Common, Obj};
use crate::scheduler::TokenLogprob;
use crate::scheduler::{EmbedJob, Engine, Event, EventKind, Finish, GenParams, Job, Request};
use crate::tools;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Extension, State};
use axum::http::header;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get as get_route, post, MethodRouter};
use axum::{Json, Router};
use cria_engine::grammar::{LazyMatcher, TokenTable, Trigger};
use cria_engine::template::Message;
use cria_engine::tools::{CallSpec, ChatFormat};
use cria_model::Model;
use cria_tokenizer::Tokenizer;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// Most bytes of text /tokenize takes.
pub const MAX_TOKENIZE_BYTES: usize = 1 << 20;
/// Most tokens /detokenize takes.
pub const MAX_DETOKENIZE: usize = 1 << 17;
/// Most messages in a chat request, and text parts in one message.
pub const MAX_MESSAGES: usize = 4096;
pub const MAX_PARTS: usize = 1024;

/// Grammar compilations (GBNF parsing, JSON schema conversion, matcher set-up) running at once.
const MAX_COMPILATIONS: usize = 2;

/// What /v1/models says about the model.
pub struct ModelInfo {
    n_ctx_train: usize,
    n_vocab: usize,
    n_embd: usize,
    n_params: usize,
}

impl ModelInfo {
    pub fn of(m: &Model) -> Self {
        ModelInfo {
            n_ctx_train: m.config.max_seq_len,
            n_vocab: m.config.vocab_size,
            n_embd: m.config.dim,
            n_params: m.n_params(),
        }
    }
}

pub struct AppState {
    engine: Engine,
    tok: Arc<Tokenizer>,
    /// The chat template, and how it takes tools.
    format: ChatFormat,
    /// Names the model answers to; the first is the one reported.
    names: Vec<String>,
    info: ModelInfo,
    ctx_size: usize,
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
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        engine: Engine,
        tok: Arc<Tokenizer>,
        names: Vec<String>,
        info: ModelInfo,
        ctx_size: usize,
        vocab: usize,
        parallel: usize,
        api_key: Option<String>,
        max_body: usize,
        read_timeout: std::time::Duration,
        policy: Policy,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
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
            parallel,
            api_key,
            max_body,
            read_timeout,
            policy,
            metrics,
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
                .get_or_init(|| Arc::new(token_table(&st.tok)))
                .clone()
        })
        .await
        .map_err(|e| ApiError::internal(format!("building the token table: {e}")))
    }
}

/// The vocabulary as the grammar matcher sees it: each token's bytes (control tokens none, so a
/// grammar never produces them), end-of-generation ids, control tokens' texts as names.
fn token_table(tok: &Tokenizer) -> TokenTable {
    let eog: Vec<u32> = tok.eog_ids().collect();
    TokenTable::from_vocab(
        tok.vocab_size() as u32,
        |t| tok.token_to_piece(t),
        &eog,
        |t| tok.is_control(t).then(|| tok.token_text(t).to_string()),
    )
}

pub fn router(st: Arc<AppState>) -> Router {
    let max_body = st.max_body;
    // The OpenAI paths answer with and without the /v1 prefix, as llama-server's do.
    let openai: [(&str, MethodRouter<Arc<AppState>>); 5] = [
        ("/chat/completions", post(chat)),
        ("/completions", post(completions)),
        ("/embeddings", post(embeddings)),
        ("/models", get_route(models)),
        ("/health", get_route(health)),
    ];
    let mut r = Router::new();
    for (path, handler) in openai {
        r = r
            .route(&format!("/v1{path}"), handler.clone())
            .route(path, handler);
    }
    r.route("/metrics", get_route(metrics))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .merge(crate::web::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(st.clone(), guard))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(st)
}

/// Around every request: the access-log line, CORS headers for an allowed origin, and a panic
/// in a handler answered as a 500 (the connection and the server go on).
async fn guard(
    State(st): State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let log = Arc::new(AccessLog::new(req.method().clone(), req.uri().path()));
    let cors = st.policy.cors_origin(req.headers());
    let mut resp = match admit(&st, req, &cors).await {
        Ok(mut req) => {
            req.extensions_mut().insert(log.clone());
            let run = next.run(req);
            match futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(run)).await {
                Ok(r) => r,
                Err(_) => {
                    st.metrics.errors.fetch_add(1, Relaxed);
                    ApiError::internal("internal error (a bug: the server's log has the details)")
                        .into_response()
                }
            }
        }
        Err(r) => {
            if !r.status().is_success() {
                st.metrics.errors.fetch_add(1, Relaxed);
            }
            r
        }
    };
    if let Some(o) = cors {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        h.insert(header::VARY, header::HeaderValue::from_static("Origin"));
    }
    log.set_status(resp.status().as_u16());
    // The line is written when the body is done with (a stream's at its end).
    let (parts, body) = resp.into_parts();
    let body = axum::body::Body::new(access::Logged::new(body, log));
    Response::from_parts(parts, body)
}

/// Before any handler: the `Host` (403), a CORS preflight, a body announced larger than the
/// limit (refused before it is read, no `100 Continue`; a body without a length is cut at the
/// limit later), the API key (401), the JSON content type of a POST (415), then the whole body
/// within the read timeout (408). Errors are the response to send.
async fn admit(
    st: &AppState,
    req: axum::extract::Request,
    cors: &Option<header::HeaderValue>,
) -> Result<axum::extract::Request, Response> {
    let h = req.headers();
    if !st.policy.host_ok(h) {
        return Err(ApiError::forbidden(
            "this server does not answer to that Host name (see --allowed-host)",
        )
        .into_response());
    }
    if req.method() == axum::http::Method::OPTIONS {
        return Err(match cors {
            Some(o) => (
                axum::http::StatusCode::NO_CONTENT,
                access::preflight_headers(o.clone()),
            )
                .into_response(),
            None => ApiError::forbidden(
                "cross-origin requests are not allowed from this origin (see --cors)",
            )
            .into_response(),
        });
    }
    let announced = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > st.max_body as u64) {
        return Err(ApiError::too_large().into_response());
    }
    if let Some(key) = &st.api_key {
        let path = req.uri().path();
        let open = matches!(path, "/health" | "/v1/health")
            || (matches!(
                *req.method(),
                axum::http::Method::GET | axum::http::Method::HEAD
            ) && crate::web::PUBLIC_PATHS.contains(&path));
        let given = access::bearer(h);
        if !open && !given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
            let msg = if given.is_none() {
                "no API key: send the header 'Authorization: Bearer YOUR_KEY'"
            } else {
                "incorrect API key"
            };
            return Err(ApiError::unauthorized(msg).into_response());
        }
    }
    if req.method() == axum::http::Method::POST && !access::is_json(h) {
        return Err(ApiError::unsupported_media_type().into_response());
    }
    // The whole body within the read timeout: a client trickling it byte by byte (slowloris) is
    // answered 408 and its connection closed, instead of holding a task and a buffer forever.
    let (parts, body) = req.into_parts();
    let read = axum::body::to_bytes(body, st.max_body);
    let bytes = match tokio::time::timeout(st.read_timeout, read).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            let inner = e.into_inner();
            if inner
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return Err(ApiError::too_large().into_response());
            }
            return Err(
                ApiError::bad(format!("cannot read the request body: {inner}")).into_response(),
            );
        }
        Err(_) => {
            let mut r = ApiError::timeout(st.read_timeout.as_secs()).into_response();
            r.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            return Err(r);
        }
    };
    if st.policy.log_prompts && !bytes.is_empty() {
        const SHOWN: usize = 16 << 10;
        let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(SHOWN)]);
        let more = if bytes.len() > SHOWN {
            format!(" ... ({} bytes)", bytes.len())
        } else {
            String::new()
        };
        eprintln!(
            "cria serve: {} {} body: {shown}{more}",
            parts.method,
            parts.uri.path()
        );
    }
    Ok(axum::extract::Request::from_parts(parts, bytes.into()))
}

/// Compares without an early exit, so the time taken says nothing about where keys differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn not_found(uri: axum::http::Uri) -> Response {
    ApiError::not_found(format!("no such endpoint: {}", uri.path())).into_response()
}

/// 200 `{"status": "ok"}`, or 503 `{"status": "error"}` once the scheduler thread is gone (the
/// server answers HTTP but can no longer generate: a supervisor should restart it).
async fn health(State(st): State<Arc<AppState>>) -> Response {
    if st.engine.is_alive() {
        Json(json!({"status": "ok"})).into_response()
    } else {
        let body = json!({"status": "error", "error": crate::scheduler::STOPPED});
        (axum::http::StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    st.metrics.requests_other.fetch_add(1, Relaxed);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(st.parallel),
    )
        .into_response()
}

async fn models(State(st): State<Arc<AppState>>) -> Response {
    st.metrics.requests_other.fetch_add(1, Relaxed);
    let i = &st.info;
    Json(json!({
        "object": "list",
        "data": [{
            "id": st.names[0],
            "object": "model",
            "created": st.created,
            "owned_by": "cria",
            "meta": {
                "n_ctx_train": i.n_ctx_train,
                "n_ctx": st.ctx_size,
                "n_vocab": i.n_vocab,
                "n_embd": i.n_embd,
                "n_params": i.n_params,
                "slots": st.parallel,
            }
        }]
    }))
    .into_response()
}

/// Runs a handler body; errors become OpenAI-shaped responses and are counted.
fn respond(st: &AppState, r: Result<Response, ApiError>) -> Response {
    r.unwrap_or_else(|e| {
        st.metrics.errors.fetch_add(1, Relaxed);
        e.into_response()
    })
}

async fn tokenize(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    st.metrics.requests_other.fetch_add(1, Relaxed);
    let r = async {
        let o = params::parse_body(&body?)?;
        let text = opt_str(&o, "content")?
            .ok_or_else(|| ApiError::param("content", "'content' (a string) is required"))?;
        if text.len() > MAX_TOKENIZE_BYTES {
            return Err(ApiError::param(
                "content",
                format!(
                    "'content' is {} bytes; /tokenize takes at most {MAX_TOKENIZE_BYTES}",
                    text.len()
                ),
            ));
        }
        let text = text.to_string();
        let add_special = opt_bool(&o, "add_special")?.unwrap_or(false);
        let parse_special = opt_bool(&o, "parse_special")?.unwrap_or(true);
        let pieces = opt_bool(&o, "with_pieces")?.unwrap_or(false);
        let st2 = st.clone();
        // Tokenized and written out as JSON text on a blocking thread, without a JSON value per
        // token in between (a megabyte of text is some 250000 of them).
        let body = tokio::task::spawn_blocking(move || {
            let ids = st2.tok.encode(&text, add_special, parse_special);
            tokens_json(&st2.tok, &ids, pieces)
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
    }
    .await;
    respond(&st, r)
}

/// `{"tokens": [ids]}`, or with pieces `{"tokens": [{"id", "piece"}]}` (a piece that is not
/// UTF-8 as its list of bytes), as JSON text.
fn tokens_json(tok: &Tokenizer, ids: &[u32], pieces: bool) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(16 + ids.len() * if pieces { 24 } else { 7 });
    out.push_str("{\"tokens\":[");
    for (i, &id) in ids.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if pieces {
            let piece = match String::from_utf8(tok.token_to_piece_special(id, true)) {
                Ok(s) => Value::String(s).to_string(),
                Err(e) => json!(e.into_bytes()).to_string(),
            };
            let _ = write!(out, "{{\"id\":{id},\"piece\":{piece}}}");
        } else {
            let _ = write!(out, "{id}");
        }
    }
    out.push_str("]}");
    out
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

async fn detokenize(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    st.metrics.requests_other.fetch_add(1, Relaxed);
    let r = (|| {
        let o = params::parse_body(&body?)?;
        let v = get(&o, "tokens")
            .ok_or_else(|| ApiError::param("tokens", "'tokens' (a list of ids) is required"))?;
        if v.as_array().is_some_and(|a| a.len() > MAX_DETOKENIZE) {
            return Err(ApiError::param(
                "tokens",
                format!("/detokenize takes at most {MAX_DETOKENIZE} tokens"),
            ));
        }
        let ids = token_ids(v, "tokens", st.vocab)?;
        let bytes = st.tok.detokenize(&ids, false, true);
        let content = String::from_utf8_lossy(&bytes).into_owned();
        Ok(Json(json!({ "content": content })).into_response())
    })();
    respond(&st, r)
}

/// OpenAI message content: a string, null, or a list of parts of which only text is supported.
fn content_text(v: &Value, i: usize) -> Result<Option<String>, ApiError> {
    let param = format!("messages[{i}].content");
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Array(parts) if parts.len() > MAX_PARTS => Err(ApiError::param(
            &param,
            format!("'{param}' may hold at most {MAX_PARTS} parts"),
        )),
        Value::Array(parts) => {
            let mut texts = Vec::new();
            for p in parts {
                match (p.get("type").and_then(Value::as_str), p.get("text")) {
                    (Some("text"), Some(Value::String(t))) => texts.push(t.as_str()),
                    (Some(kind), _) if kind != "text" => {
                        return Err(ApiError::param(
                            &param,
                            format!("content parts of type '{kind}' are not supported (text only)"),
                        ))
                    }
                    _ => {
                        return Err(ApiError::param(
                            &param,
                            format!(
                                "'{param}' parts must be {{\"type\": \"text\", \"text\": ...}}"
                            ),
                        ))
                    }
                }
            }
            Ok(Some(texts.join("\n")))
        }
        _ => Err(ApiError::param(
            &param,
            format!("'{param}' must be a string, null or a list of text parts"),
        )),
    }
}

fn parse_messages(o: &Obj) -> Result<Vec<Message>, ApiError> {
    let Some(Value::Array(ms)) = get(o, "messages") else {
        return Err(ApiError::param(
            "messages",
            "'messages' (a list of {role, content}) is required",
        ));
    };
    if ms.is_empty() {
        return Err(ApiError::param("messages", "'messages' is empty"));
    }
    if ms.len() > MAX_MESSAGES {
        return Err(ApiError::param(
            "messages",
            format!("'messages' may hold at most {MAX_MESSAGES} messages"),
        ));
    }
    let mut out = Vec::with_capacity(ms.len());
    for (i, m) in ms.iter().enumerate() {
        let Value::Object(m) = m else {
            return Err(ApiError::param(
                &format!("messages[{i}]"),
                format!("messages[{i}] must be an object with 'role' and 'content'"),
            ));
        };
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                ApiError::param(
                    &format!("messages[{i}].role"),
                    format!("messages[{i}] needs a 'role' string"),
                )
            })?
            .to_string();
        let content = content_text(m.get("content").unwrap_or(&Value::Null), i)?;
        let mut extra = serde_json::Map::new();
        for (k, v) in m {
            if k == "role" || k == "content" {
                continue;
            }
            extra.insert(k.clone(), v.clone());
        }
        out.push(Message {
            role,
            content,
            extra,
        });
    }
    Ok(out)
}

/// A generation or embedding request's body, with its `model` checked.
fn model_request(body: Result<Bytes, BytesRejection>) -> Result<Obj, ApiError> {
    let o = params::parse_body(&body?)?;
    params::check_model(&o)?;
    Ok(o)
}

/// What a handler asks the scheduler for, and how to answer.
struct Generation {
    /// One or more prompts (a completion's list); each gets `n` choices.
    prompts: Vec<Arc<Vec<u32>>>,
    /// Text to put before each prompt's choices (`echo`).
    echo: Vec<String>,
    c: Common,
    chat: bool,
    model: String,
    /// When the answer may be a tool call (parsed back into `tool_calls`).
    tools: Option<tools::ToolCtx>,
    /// The grammar waits for one of these (tool calls under `tool_choice: "auto"`).
    triggers: Vec<Trigger>,
}

async fn chat(
    State(st): State<Arc<AppState>>,
    Extension(log): Extension<Arc<AccessLog>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    st.metrics.requests_chat.fetch_add(1, Relaxed);
    let r = async {
        let o = model_request(body)?;
        let msgs = parse_messages(&o)?;
        let tools = match get(&o, "tools") {
            None => None,
            Some(t @ Value::Array(a)) if !a.is_empty() => Some(t.clone()),
            Some(Value::Array(_)) => None,
            Some(_) => return Err(ApiError::param("tools", "'tools' must be a list")),
        };
        let names = match &tools {
            Some(t) => tools::tool_names(t)?,
            None => vec![],
        };
        // tool_choice: "none", "auto" (default), "required", or {"function": {"name"}}.
        let (use_tools, required, only) = match get(&o, "tool_choice") {
            None => (true, false, None),
            Some(Value::String(s)) if s == "none" => (false, false, None),
            Some(Value::String(s)) if s == "auto" => (true, false, None),
            Some(Value::String(s)) if s == "required" => (true, true, None),
            Some(Value::Object(c)) if c.get("function").and_then(|f| f["name"].as_str()).is_some() => {
                (true, true, c["function"]["name"].as_str().map(String::from))
            }
            Some(_) => {
                return Err(ApiError::param(
                    "tool_choice",
                    "'tool_choice' must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}",
                ))
            }
        };
        let parallel = opt_bool(&o, "parallel_tool_calls")?.unwrap_or(true);
        let tools = tools.filter(|_| use_tools);
        let mut c = params::common(&o, true, st.ctx_size, st.vocab)?;
        let form = st.format.call_form();
        let mut triggers = vec![];
        // Under "auto" a grammar the request gives (response_format) wins over the call grammar.
        if let Some(t) = tools
            .clone()
            .filter(|_| required || c.grammar_request.is_none())
        {
            let only = only.clone();
            let (g, trig) = st
                .compile(move || {
                    let spec = CallSpec {
                        tools: &t,
                        only: only.as_deref(),
                        parallel,
                    };
                    tools::grammar(form, spec, required)
                })
                .await??;
            c.grammar = Some(g);
            triggers = trig;
        }
        st.compile_grammar(&mut c).await?;
        let st2 = st.clone();
        let tools2 = tools.clone();
        let prompt = tokio::task::spawn_blocking(move || st2.render_chat(&msgs, tools2.as_ref()))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))??;
        st.check_prompt(&prompt, "messages")?;
        let g = Generation {
            prompts: vec![Arc::new(prompt)],
            echo: vec![],
            c,
            chat: true,
            model: st.names[0].clone(),
            tools: tools.map(|_| tools::ToolCtx {
                names,
                form,
                parallel,
            }),
            triggers,
        };
        generate(&st, g, log).await
    }
    .await;
    respond(&st, r)
}

/// `prompt` / `input`: a string, a list of strings, a list of ids, or a list of lists of ids.
fn prompt_inputs(
    st: &AppState,
    v: Option<&Value>,
    param: &str,
) -> Result<Vec<(Vec<u32>, String)>, ApiError> {
    let v = v.ok_or_else(|| ApiError::param(param, format!("'{param}' is required")))?;
    let text = |s: &str| (st.tok.encode(s, true, true), s.to_string());
    let ids = |v: &Value| -> Result<(Vec<u32>, String), ApiError> {
        // Checked before the ids are read and their text made (a body may hold millions).
        if v.as_array().is_some_and(|a| a.len() > st.ctx_size) {
            return Err(ApiError::param(
                param,
                format!(
                    "a prompt of token ids is longer than the context ({})",
                    st.ctx_size
                ),
            )
            .with_code("context_length_exceeded"));
        }
        let ids = token_ids(v, param, st.vocab)?;
        let t = String::from_utf8_lossy(&st.tok.detokenize(&ids, false, true)).into_owned();
        Ok((ids, t))
    };
    let bad = || {
        ApiError::param(
            param,
            format!("'{param}' must be a string, a list of strings, a list of token ids or a list of lists of token ids"),
        )
    };
    let out = match v {
        Value::String(s) => vec![text(s)],
        Value::Array(a) if a.is_empty() => {
            return Err(ApiError::param(param, format!("'{param}' is empty")))
        }
        Value::Array(a) if !a[0].is_number() && a.len() > params::MAX_N as usize => {
            return Err(ApiError::param(
                param,
                format!("at most {} inputs per request", params::MAX_N),
            ))
        }
        Value::Array(a) => match &a[0] {
            Value::String(_) => a
                .iter()
                .map(|x| x.as_str().map(text).ok_or_else(bad))
                .collect::<Result<_, _>>()?,
            Value::Number(_) => vec![ids(v)?],
            Value::Array(_) => a.iter().map(ids).collect::<Result<_, _>>()?,
            _ => return Err(bad()),
        },
        _ => return Err(bad()),
    };
    if out.len() > params::MAX_N as usize {
        return Err(ApiError::param(
            param,
            format!("at most {} inputs per request", params::MAX_N),
        ));
    }
    Ok(out)
}

/// [`prompt_inputs`] off the async threads (a long text takes a while to tokenize).
async fn tokenize_inputs(
    st: &Arc<AppState>,
    v: Option<Value>,
    param: &'static str,
) -> Result<Vec<(Vec<u32>, String)>, ApiError> {
    let st = st.clone();
    tokio::task::spawn_blocking(move || prompt_inputs(&st, v.as_ref(), param))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
}

async fn completions(
    State(st): State<Arc<AppState>>,
    Extension(log): Extension<Arc<AccessLog>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    st.metrics.requests_completion.fetch_add(1, Relaxed);
    let r = async {
        let o = model_request(body)?;
        let mut c = params::common(&o, false, st.ctx_size, st.vocab)?;
        st.compile_grammar(&mut c).await?;
        let echo = opt_bool(&o, "echo")?.unwrap_or(false);
        let inputs = tokenize_inputs(&st, get(&o, "prompt").cloned(), "prompt").await?;
        if inputs.len() * c.n > params::MAX_N as usize {
            return Err(ApiError::param(
                "n",
                format!("prompts x n is at most {}", params::MAX_N),
            ));
        }
        params::logprob_budget(&c, inputs.len() * c.n, false, st.ctx_size)?;
        for (p, _) in &inputs {
            st.check_prompt(p, "prompt")?;
        }
        let (prompts, texts): (Vec<_>, Vec<_>) = inputs.into_iter().unzip();
        let g = Generation {
            prompts: prompts.into_iter().map(Arc::new).collect(),
            echo: if echo { texts } else { vec![] },
            c,
            chat: false,
            model: st.names[0].clone(),
            tools: None,
            triggers: vec![],
        };
        generate(&st, g, log).await
    }
    .await;
    respond(&st, r)
}

/// Submits one job per (prompt, choice) and answers, streamed or whole.
async fn generate(
    st: &Arc<AppState>,
    g: Generation,
    log: Arc<AccessLog>,
) -> Result<Response, ApiError> {
    let c = &g.c;
    let count = g.prompts.len() * c.n;
    // One matcher per choice, set up off the async threads (the grammar's start may be costly).
    let mut matchers: Vec<Option<LazyMatcher>> = match c.grammar.clone() {
        Some(gr) => {
            let table = st.token_table().await?;
            let gr = Arc::new(gr);
            let triggers = g.triggers.clone();
            st.compile(move || {
                (0..count)
                    .map(|_| {
                        LazyMatcher::new(gr.clone(), table.clone(), triggers.clone()).map(Some)
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?
            .map_err(|e| ApiError::param("grammar", format!("grammar: {e}")))?
        }
        None => (0..count).map(|_| None).collect(),
    };
    let (tx, rx) = unbounded_channel();
    let n = c.n;
    let mut jobs = Vec::with_capacity(count);
    for (pi, prompt) in g.prompts.iter().enumerate() {
        for j in 0..n {
            let mut sampler = c.sampler.clone();
            // Choices differ from each other, yet a seeded request is reproducible.
            sampler.seed = if c.seeded {
                c.sampler.seed.wrapping_add(j as u64)
            } else {
                cria_engine::sampler::random_seed()
            };
            let matcher = matchers[pi * n + j].take();
            jobs.push(Job {
                prompt: prompt.clone(),
                params: GenParams {
                    sampler,
                    max_tokens: c.max_tokens.unwrap_or(st.ctx_size),
                    stop: c.stop.clone(),
                    matcher,
                    logprobs: c.logprobs,
                    ignore_eos: c.ignore_eos,
                },
                index: pi * n + j,
                tx: tx.clone(),
            });
        }
    }
    drop(tx);
    for j in jobs {
        st.engine
            .submit(Request::Generate(j))
            .map_err(ApiError::unavailable)?;
    }
    let ctx = RespCtx {
        id: st.id(if g.chat { "chatcmpl" } else { "cmpl" }),
        created: now_secs(),
        model: g.model,
        chat: g.chat,
        n_choices: g.prompts.len() * n,
        prompt_tokens: g.prompts.iter().map(|p| p.len()).sum(),
        echo: g.echo,
        n,
        tools: g.tools,
        log,
    };
    ctx.log.tokens(ctx.prompt_tokens, 0);
    if c.stream {
        Ok(stream_response(ctx, rx, c.include_usage))
    } else {
        collect_response(ctx, rx).await
    }
}

/// What every response chunk repeats.
struct RespCtx {
    id: String,
    created: u64,
    model: String,
    chat: bool,
    n_choices: usize,
    prompt_tokens: usize,
    echo: Vec<String>,
    n: usize,
    tools: Option<tools::ToolCtx>,
    /// The request's access-log line, which gets its token counts.
    log: Arc<AccessLog>,
}

fn usage(prompt: usize, completion: usize, cached: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

/// The bytes of a token as a (lossy) string, as OpenAI's `token` field.
fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Chat log-probs: `{"content": [{"token", "logprob", "bytes", "top_logprobs"}]}`.
fn chat_logprobs(lps: &[TokenLogprob]) -> Value {
    let one = |b: &[u8], lp: f32| json!({"token": lossy(b), "logprob": lp, "bytes": b});
    json!({
        "content": lps.iter().map(|t| {
            let mut v = one(&t.bytes, t.logprob);
            v["top_logprobs"] = t.top.iter().map(|(b, lp)| one(b, *lp)).collect();
            v
        }).collect::<Vec<_>>()
    })
}

/// Completion log-probs: parallel lists, as the legacy API has them.
fn completion_logprobs(lps: &[TokenLogprob], offset0: usize) -> Value {
    let mut offsets = Vec::with_capacity(lps.len());
    let mut off = offset0;
    for t in lps {
        offsets.push(off);
        off += lossy(&t.bytes).len();
    }
    json!({
        "tokens": lps.iter().map(|t| lossy(&t.bytes)).collect::<Vec<_>>(),
        "token_logprobs": lps.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": lps.iter().map(|t| {
            let m: serde_json::Map<String, Value> =
                t.top.iter().map(|(b, lp)| (lossy(b), json!(lp))).collect();
            Value::Object(m)
        }).collect::<Vec<_>>(),
        "text_offset": offsets,
    })
}

#[derive(Default)]
struct ChoiceAcc {
    text: String,
    logprobs: Vec<TokenLogprob>,
    finish: Option<Finish>,
}

async fn collect_response(
    ctx: RespCtx,
    mut rx: UnboundedReceiver<Event>,
) -> Result<Response, ApiError> {
    let mut acc: Vec<ChoiceAcc> = (0..ctx.n_choices).map(|_| ChoiceAcc::default()).collect();
    for (i, a) in acc.iter_mut().enumerate() {
        if let Some(e) = ctx.echo.get(i / ctx.n) {
            a.text.push_str(e);
        }
    }
    let (mut completion, mut cached, mut done) = (0, 0, 0);
    while done < ctx.n_choices {
        let Some(ev) = rx.recv().await else {
            return Err(ApiError::unavailable(crate::scheduler::STOPPED));
        };
        let a = &mut acc[ev.index];
        match ev.kind {
            EventKind::Text { text, logprobs } => {
                a.text.push_str(&text);
                a.logprobs.extend(logprobs);
            }
            EventKind::Done {
                finish,
                cached_tokens,
                completion_tokens,
                ..
            } => {
                a.finish = Some(finish);
                completion += completion_tokens;
                ctx.log.tokens(0, completion_tokens);
                if ev.index % ctx.n == 0 {
                    cached += cached_tokens;
                }
                done += 1;
            }
            EventKind::Error(e) => return Err(ApiError::internal(e)),
        }
    }
    let want_lp = |a: &ChoiceAcc| !a.logprobs.is_empty();
    let choices: Vec<Value> = acc
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let mut finish = a.finish.map(Finish::as_str);
            if ctx.chat {
                let mut message = json!({"role": "assistant", "content": a.text});
                if let Some(t) = tool_answer(&ctx, &a.text, a.finish) {
                    message["content"] = json!(t.content);
                    if !t.calls.is_empty() {
                        message["tool_calls"] = tools::tool_calls_json(&t.calls, &ctx.id, false);
                    }
                    finish = Some(t.finish_reason);
                }
                json!({
                    "index": i,
                    "message": message,
                    "logprobs": if want_lp(a) { chat_logprobs(&a.logprobs) } else { Value::Null },
                    "finish_reason": finish,
                })
            } else {
                let off = ctx.echo.get(i / ctx.n).map_or(0, String::len);
                json!({
                    "index": i,
                    "text": a.text,
                    "logprobs": if want_lp(a) { completion_logprobs(&a.logprobs, off) } else { Value::Null },
                    "finish_reason": finish,
                })
            }
        })
        .collect();
    Ok(Json(json!({
        "id": ctx.id,
        "object": if ctx.chat { "chat.completion" } else { "text_completion" },
        "created": ctx.created,
        "model": ctx.model,
        "system_fingerprint": "cria",
        "choices": choices,
        "usage": usage(ctx.prompt_tokens, completion, cached),
    }))
    .into_response())
}

/// A chat answer with tools that is (or began) a call.
fn tool_answer(ctx: &RespCtx, text: &str, finish: Option<Finish>) -> Option<tools::Answer> {
    let t = ctx.tools.as_ref().filter(|_| ctx.chat)?;
    tools::answer(t, text, finish.unwrap_or(Finish::Stop))
}

/// One SSE chunk for choice `i`: a delta (chat) or a text piece (completion).
fn chunk(
    ctx: &RespCtx,
    i: usize,
    text: Option<&str>,
    role: bool,
    lp: &[TokenLogprob],
    finish: Option<Finish>,
    with_usage: bool,
) -> Value {
    // Log-probs only on chunks that carry tokens; an empty list is `null`.
    let lp = (!lp.is_empty()).then_some(lp);
    let choice = if ctx.chat {
        let mut delta = serde_json::Map::new();
        if role {
            delta.insert("role".into(), json!("assistant"));
        }
        if let Some(t) = text {
            delta.insert("content".into(), json!(t));
        }
        json!({
            "index": i,
            "delta": delta,
            "logprobs": lp.map_or(Value::Null, chat_logprobs),
            "finish_reason": finish.map(Finish::as_str),
        })
    } else {
        json!({
            "index": i,
            "text": text.unwrap_or(""),
            "logprobs": lp.map_or(Value::Null, |l| completion_logprobs(l, 0)),
            "finish_reason": finish.map(Finish::as_str),
        })
    };
    let mut v = json!({
        "id": ctx.id,
        "object": if ctx.chat { "chat.completion.chunk" } else { "text_completion" },
        "created": ctx.created,
        "model": ctx.model,
        "system_fingerprint": "cria",
        "choices": [choice],
    });
    if with_usage {
        // OpenAI sends "usage": null on every chunk but the last when usage is asked for.
        v["usage"] = Value::Null;
    }
    v
}

struct StreamState {
    ctx: RespCtx,
    rx: UnboundedReceiver<Event>,
    out: VecDeque<String>,
    left: usize,
    include_usage: bool,
    completion: usize,
    cached: usize,
    ended: bool,
    /// Per choice: text held back while it may be a tool call, and its tokens' log-probs.
    held: Vec<(String, Vec<TokenLogprob>)>,
}

fn stream_response(ctx: RespCtx, rx: UnboundedReceiver<Event>, include_usage: bool) -> Response {
    let mut out = VecDeque::new();
    for i in 0..ctx.n_choices {
        // Chat streams open with the role; completions with echoed prompt text, if any.
        if ctx.chat {
            out.push_back(chunk(&ctx, i, Some(""), true, &[], None, include_usage).to_string());
        } else if let Some(e) = ctx.echo.get(i / ctx.n) {
            out.push_back(chunk(&ctx, i, Some(e), false, &[], None, include_usage).to_string());
        }
    }
    let st = StreamState {
        held: vec![(String::new(), Vec::new()); ctx.n_choices],
        left: ctx.n_choices,
        ctx,
        rx,
        out,
        include_usage,
        completion: 0,
        cached: 0,
        ended: false,
    };
    let stream = futures_util::stream::unfold(st, |mut s| async move {
        loop {
            if let Some(d) = s.out.pop_front() {
                return Some((Ok::<_, Infallible>(SseEvent::default().data(d)), s));
            }
            if s.ended {
                return None;
            }
            if s.left == 0 {
                if s.include_usage {
                    let u = json!({
                        "id": s.ctx.id,
                        "object": if s.ctx.chat { "chat.completion.chunk" } else { "text_completion" },
                        "created": s.ctx.created,
                        "model": s.ctx.model,
                        "system_fingerprint": "cria",
                        "choices": [],
                        "usage": usage(s.ctx.prompt_tokens, s.completion, s.cached),
                    });
                    s.out.push_back(u.to_string());
                }
                s.out.push_back("[DONE]".into());
                s.ended = true;
                continue;
            }
            let ev = match s.rx.recv().await {
                Some(ev) => ev,
                None => {
                    let e = ApiError::unavailable(crate::scheduler::STOPPED);
                    s.out.push_back(e.body().to_string());
                    s.out.push_back("[DONE]".into());
                    s.ended = true;
                    continue;
                }
            };
            let iu = s.include_usage;
            match ev.kind {
                // With tools the answer may be a call: held back until it is complete.
                EventKind::Text { text, logprobs } if s.ctx.tools.is_some() => {
                    let h = &mut s.held[ev.index];
                    h.0.push_str(&text);
                    h.1.extend(logprobs);
                }
                EventKind::Text { text, logprobs } => {
                    let c = chunk(
                        &s.ctx,
                        ev.index,
                        Some(&text),
                        false,
                        logprobs.as_slice(),
                        None,
                        iu,
                    );
                    s.out.push_back(c.to_string());
                }
                EventKind::Done {
                    finish,
                    cached_tokens,
                    completion_tokens,
                    ..
                } => {
                    s.completion += completion_tokens;
                    s.ctx.log.tokens(0, completion_tokens);
                    if ev.index % s.ctx.n == 0 {
                        s.cached += cached_tokens;
                    }
                    s.left -= 1;
                    let (held, held_lp) = std::mem::take(&mut s.held[ev.index]);
                    let text = if s.ctx.chat { None } else { Some("") };
                    let mut last = chunk(&s.ctx, ev.index, text, false, &[], Some(finish), iu);
                    if let Some(t) = tool_answer(&s.ctx, &held, Some(finish)) {
                        if let Some(text) = &t.content {
                            let c = chunk(&s.ctx, ev.index, Some(text), false, &[], None, iu);
                            s.out.push_back(c.to_string());
                        }
                        let c = &mut last["choices"][0];
                        if !t.calls.is_empty() {
                            c["delta"]["tool_calls"] =
                                tools::tool_calls_json(&t.calls, &s.ctx.id, true);
                        }
                        c["finish_reason"] = json!(t.finish_reason);
                        if !held_lp.is_empty() && s.ctx.chat {
                            c["logprobs"] = chat_logprobs(&held_lp);
                        }
                    } else if !held.is_empty() {
                        let c = chunk(&s.ctx, ev.index, Some(&held), false, &held_lp, None, iu);
                        s.out.push_back(c.to_string());
                    }
                    s.out.push_back(last.to_string());
                }
                EventKind::Error(e) => {
                    s.out.push_back(ApiError::internal(e).body().to_string());
                    s.out.push_back("[DONE]".into());
                    s.ended = true;
                }
            }
        }
    });
    let mut r = Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, "no-cache".parse().expect("valid"));
    r
}

async fn embeddings(
    State(st): State<Arc<AppState>>,
    Extension(log): Extension<Arc<AccessLog>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    st.metrics.requests_embedding.fetch_add(1, Relaxed);
    let r = async {
        let o = model_request(body)?;
        let base64 = match opt_str(&o, "encoding_format")? {
            None | Some("float") => false,
            Some("base64") => true,
            Some(f) => {
                return Err(ApiError::param(
                    "encoding_format",
                    format!("'encoding_format' must be 'float' or 'base64', not '{f}'"),
                ))
            }
        };
        let inputs = tokenize_inputs(&st, get(&o, "input").cloned(), "input").await?;
        let mut ids = Vec::with_capacity(inputs.len());
        for (p, _) in inputs {
            if p.is_empty() {
                return Err(ApiError::param("input", "an input is empty"));
            }
            if p.len() > st.ctx_size {
                return Err(ApiError::param(
                    "input",
                    format!(
                        "an input is {} tokens but the context holds {}; cria never truncates",
                        p.len(),
                        st.ctx_size
                    ),
                )
                .with_code("context_length_exceeded"));
            }
            ids.push(p);
        }
        let n_tokens: usize = ids.iter().map(Vec::len).sum();
        log.tokens(n_tokens, 0);
        // One job per input: each takes a slot and is read within the steps' token budget,
        // beside the generations; if this client goes away, `rx` is dropped and so are they.
        let (tx, mut rx) = unbounded_channel();
        let count = ids.len();
        for (index, input) in ids.into_iter().enumerate() {
            st.engine
                .submit(Request::Embed(EmbedJob {
                    input,
                    index,
                    tx: tx.clone(),
                }))
                .map_err(ApiError::unavailable)?;
        }
        drop(tx);
        let mut vecs: Vec<Vec<f32>> = vec![Vec::new(); count];
        for _ in 0..count {
            let (i, v) = rx
                .recv()
                .await
                .ok_or_else(|| ApiError::unavailable(crate::scheduler::STOPPED))?;
            vecs[i] = v.map_err(ApiError::internal)?;
        }
        let data: Vec<Value> = vecs
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let e = if base64 {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    json!(base64_encode(&bytes))
                } else {
                    json!(v)
                };
                json!({"object": "embedding", "index": i, "embedding": e})
            })
            .collect();
        Ok(Json(json!({
            "object": "list",
            "data": data,
            "model": st.names[0],
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
        }))
        .into_response())
    }
    .await;
    respond(&st, r)
}

/// Standard base64 with padding (the OpenAI client's default embedding encoding).
fn base64_encode(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(b.len().div_ceil(3) * 4);
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for k in 0..4 {
            if k <= c.len() {
                s.push(A[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(i.as_bytes()), o);
        }
    }

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
