//! cria-server: `cria serve`, an OpenAI-compatible HTTP API over a continuous-batching scheduler.
//!
//! ```text
//! HTTP (axum, tokio) --Job + reply channel--> scheduler thread (model, N slots, one batched
//!   handlers: parse, validate,                  forward per step, samplers, stop strings,
//!   template, tokenize          <--Events----   grammars, detokenization)
//! ```
//!
//! The binary loads the model and hands it over with [`run`] (blocks) or [`start`] (returns a
//! [`Server`] handle, as the tests use it).

mod access;
mod error;
mod lora;
mod metrics;
#[cfg(test)]
mod panic_tests;
mod params;
mod routes;
mod sink;
mod tools;
mod web;

pub use error::ApiError;
pub use sink::Finish;

use anyhow::{Context, Result};
use cria_engine::LoadedModel;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// `cria serve` options (the model options come from the binary's own flags).
#[derive(clap::Args, Clone, Debug)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port).
    #[arg(long, value_name = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// Requests generated at the same time (slots, each with its own KV cache).
    #[arg(
        long = "parallel",
        short = 'P',
        visible_alias = "np",
        value_name = "N",
        default_value_t = 4
    )]
    pub parallel: usize,
    /// Context per slot in tokens (default: the model's training context, capped at 4096).
    #[arg(short = 'c', long = "ctx-size", value_name = "TOKENS")]
    pub ctx_size: Option<usize>,
    /// Tokens per batched forward pass at most (prompt chunks and generating slots together).
    #[arg(
        short = 'b',
        long = "batch-size",
        value_name = "TOKENS",
        default_value_t = 512
    )]
    pub batch: usize,
    /// Require `Authorization: Bearer KEY` on every endpoint but /health and the chat page at /.
    #[arg(long = "api-key", value_name = "KEY", conflicts_with = "api_key_file")]
    pub api_key: Option<String>,
    /// Read the API key from a file (its first line).
    #[arg(long = "api-key-file", value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// The model name /v1/models reports and requests may use (default: the file name).
    #[arg(long, value_name = "NAME")]
    pub alias: Option<String>,
    /// Largest request body accepted, in bytes (larger: 413).
    #[arg(long = "max-body", value_name = "BYTES", default_value_t = 8 << 20)]
    pub max_body: usize,
    /// Seconds a client has to send a request's headers, and again its body; slower ones are
    /// cut off (slowloris), so they cannot hold connections or memory.
    #[arg(long = "read-timeout", value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub read_timeout: u64,
    /// A `Host` name requests may carry besides the listen address, localhost, 127.0.0.1 and
    /// [::1] (repeatable; `*`: any). Others get 403, which stops DNS-rebinding pages. Bound to
    /// 0.0.0.0 or :: without this flag, any Host is accepted.
    #[arg(long = "allowed-host", value_name = "NAME")]
    pub allowed_hosts: Vec<String>,
    /// Let web pages from ORIGIN call the API (repeatable; `*`: any origin): CORS headers and
    /// preflight answers for it. Without it no page of another origin can read an answer.
    #[arg(long = "cors", value_name = "ORIGIN")]
    pub cors: Vec<String>,
    /// Write request bodies (prompts included) to the access log on stderr.
    #[arg(long = "log-prompts")]
    pub log_prompts: bool,
    /// Adapters served over the model, besides those the binary loaded with it (`--lora
    /// NAME=PATH[:SCALE]`, handed over in `LoadedModel::lora`): each is the model id BASE:NAME.
    #[arg(skip)]
    pub lora: Vec<cria_engine::lora::LoraSpec>,
    /// Load adapters at run time (POST /v1/adapters) only from this folder; without it the
    /// server reads any path an (authenticated) client names.
    #[arg(long = "lora-dir", value_name = "DIR")]
    pub lora_dir: Option<PathBuf>,
    /// Memory all LoRA adapters may take together, in MiB (default: the base model's weights;
    /// adapters are held in f32, a rank-16 adapter on every linear layer of a 135M model takes
    /// 19 MiB).
    #[arg(long = "lora-max-mib", value_name = "MIB")]
    pub lora_max_mib: Option<usize>,
    /// Speculative decoding (per slot, drafts verified in the batched forward).
    #[command(flatten)]
    pub spec: SpecFlags,
}

/// The speculative decoding flags of `cria serve`, `run`, `chat` and `bench`: `--lookup N`, or
/// `--draft-model M [--draft-max N] [--draft-min N] [--draft-p-min P]` (see
/// cria_engine::speculative).
#[derive(clap::Args, Clone, Default, Debug)]
pub struct SpecFlags {
    /// Speculative decoding by prompt lookup: draft up to N tokens by matching the last tokens
    /// against the prompt and the answer so far (in `serve`, also recent answers of every
    /// slot), verified in one batched forward (the output does not change; fastest when the
    /// answer copies the input: editing, summaries, code).
    #[arg(long, value_name = "N", conflicts_with = "draft_model")]
    pub lookup: Option<usize>,
    /// Speculative decoding with a draft model of the same vocabulary (a smaller model, or the
    /// same one in a smaller quantization), named as -m names a model; the output does not
    /// change.
    #[arg(long = "draft-model", value_name = "MODEL")]
    pub draft_model: Option<String>,
    /// Most tokens the draft model drafts per verify [default: 8].
    #[arg(long = "draft-max", value_name = "N", requires = "draft_model")]
    pub draft_max: Option<usize>,
    /// Fewest tokens it drafts, whatever its confidence [default: 1].
    #[arg(long = "draft-min", value_name = "N", requires = "draft_model")]
    pub draft_min: Option<usize>,
    /// It stops drafting when its top probability falls below this [default: 0.8].
    #[arg(long = "draft-p-min", value_name = "P", requires = "draft_model")]
    pub draft_p_min: Option<f32>,
    /// The draft model's output head computes the logits of the first N token ids only (0: of
    /// all): in a BPE vocabulary these are the frequent tokens, and a draft only proposes, so a
    /// third of SmolLM2's head drafts ~96% of English tokens at a third of the head's cost; the
    /// output does not change [default: 16384].
    #[arg(long = "draft-vocab", value_name = "N", requires = "draft_model")]
    pub draft_vocab: Option<usize>,
    /// Always draft the most (no adaptation to acceptance and cost): for tests.
    #[arg(long = "draft-fixed", hide = true)]
    pub draft_fixed: bool,
}

impl SpecFlags {
    /// Cuts a loaded draft model's head to `--draft-vocab` rows.
    pub fn cut_draft_head(&self, d: &mut cria_engine::LoadedModel) -> Result<()> {
        let n = self
            .draft_vocab
            .unwrap_or(cria_engine::speculative::DRAFT_VOCAB);
        d.model
            .keep_head_rows(&d.backend, n)
            .map_err(|e| anyhow::anyhow!("--draft-vocab {n}: {e}"))
    }

    /// The settings asked for (None: no speculation), checked as far as they can be before a
    /// model loads (the context size is checked later).
    pub fn config(&self) -> Result<Option<cria_engine::speculative::SpecConfig>> {
        cria_engine::speculative::SpecConfig::from_flags(
            self.lookup,
            self.draft_model.is_some(),
            self.draft_max,
            self.draft_min,
            self.draft_p_min,
            self.draft_fixed,
        )
        .map_err(anyhow::Error::msg)
    }
}

impl Default for ServeArgs {
    fn default() -> Self {
        ServeArgs {
            host: "127.0.0.1".into(),
            port: 8080,
            parallel: 4,
            ctx_size: None,
            batch: 512,
            api_key: None,
            api_key_file: None,
            alias: None,
            max_body: 8 << 20,
            read_timeout: 30,
            allowed_hosts: vec![],
            cors: vec![],
            log_prompts: false,
            lora: vec![],
            lora_dir: None,
            lora_max_mib: None,
            spec: SpecFlags::default(),
        }
    }
}

/// A running server. Dropping it (or [`Server::stop`]) shuts it down.
pub struct Server {
    pub addr: SocketAddr,
    /// The name the model is served under, and the context per slot in tokens.
    pub model: String,
    pub ctx_size: usize,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Server {
    /// Base URL, e.g. `http://127.0.0.1:8080`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serve until the process ends, the server fails, or (with signals handled) Ctrl-C or
    /// SIGTERM has shut it down.
    pub fn wait(mut self) -> Result<()> {
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow::anyhow!("the server thread panicked"))?,
            None => Ok(()),
        }
    }

    pub fn stop(mut self) -> Result<()> {
        self.shutdown.take().map(|s| s.send(()));
        self.wait()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts serving in the background: listens, starts the scheduler, returns.
pub fn start(parts: LoadedModel, args: &ServeArgs) -> Result<Server> {
    start_with(parts, args, false)
}

/// Blocking threads (tokenizing, templates, grammar compilation) at most: each thread that ever
/// ran keeps a malloc arena, so a burst of requests must not leave hundreds behind.
const MAX_BLOCKING_THREADS: usize = 4;

/// [`start`], and with `signals` Ctrl-C and SIGTERM shut the server down gracefully.
fn start_with(parts: LoadedModel, args: &ServeArgs, signals: bool) -> Result<Server> {
    let state = routes::AppState::new(parts, args)?;
    let (engine, ctx_size, model) = (state.engine.clone(), state.ctx_size, state.names[0].clone());
    let listener = std::net::TcpListener::bind((args.host.as_str(), args.port))
        .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let app = routes::router(Arc::new(state));
    let read_timeout = std::time::Duration::from_secs(args.read_timeout);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let thread =
        std::thread::Builder::new()
            .name("cria-http".into())
            .spawn(move || -> Result<()> {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .max_blocking_threads(MAX_BLOCKING_THREADS)
                    .thread_name("cria-http-worker")
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let l = tokio::net::TcpListener::from_std(listener)?;
                    let stop = async move {
                        if signals {
                            stop_signal(rx).await
                        } else {
                            let _ = rx.await;
                        }
                    };
                    accept_loop(l, app, read_timeout, stop, engine).await;
                    Ok(())
                })
            })?;
    Ok(Server {
        addr,
        model,
        ctx_size,
        shutdown: Some(tx),
        thread: Some(thread),
    })
}

/// Resolves on the stop message, Ctrl-C or SIGTERM.
async fn stop_signal(rx: tokio::sync::oneshot::Receiver<()>) {
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = rx => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// How long requests in flight may go on after a shutdown began, before the generations still
/// running are cut (ended with finish_reason "length"), and again before connections are dropped.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Accepts connections until `stop` fires, each served by hyper's HTTP/1 with keep-alive and a
/// deadline for the request head (axum::serve sets none: a client trickling headers would hold
/// its connection forever). The body's deadline is in the router's guard. Accept errors (out of
/// file descriptors, a connection reset before accept) pause the loop briefly, never end it.
///
/// Then a graceful shutdown: no new connections; idle ones are closed, requests in flight get
/// [`SHUTDOWN_GRACE`] to finish, then the scheduler ends the generations still running (their
/// streams get a last chunk and `[DONE]`), and the connections get as long again to close.
async fn accept_loop(
    l: tokio::net::TcpListener,
    app: axum::Router,
    read_timeout: std::time::Duration,
    stop: impl std::future::Future<Output = ()>,
    engine: sink::Engine,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    // Every connection task holds a clone; recv() answers None once all are gone.
    let (open_tx, mut open) = tokio::sync::mpsc::channel::<()>(1);
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            r = l.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let svc = TowerToHyperService::new(app.clone());
        let (mut closing, open) = (closing.clone(), open_tx.clone());
        tokio::spawn(async move {
            let _open = open;
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(read_timeout)
                .keep_alive(true);
            let conn = b.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            // The connection's end (client gone, timeout, bad request) is no error of the server.
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = async { let _ = closing.wait_for(|&c| c).await; } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(l);
    eprintln!("cria serve: shutting down");
    let _ = closing_tx.send(true);
    drop(open_tx);
    if tokio::time::timeout(SHUTDOWN_GRACE, open.recv())
        .await
        .is_err()
    {
        engine.shutdown();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, open.recv()).await;
    }
}

/// `cria serve`: serve until killed, or until Ctrl-C / SIGTERM end it gracefully (then Ok).
pub fn run(parts: LoadedModel, args: &ServeArgs) -> Result<()> {
    let s = start_with(parts, args, true)?;
    eprintln!(
        "cria serve: model {} ({} tokens of context per slot, {} slots, batches of {} tokens)",
        s.model, s.ctx_size, args.parallel, args.batch
    );
    eprintln!(
        "cria serve: listening on {} ({} slots); OpenAI API at {}/v1",
        s.url(),
        args.parallel,
        s.url()
    );
    s.wait()
}
