//! The server's side of the engine's batch scheduler ([`cria_engine::scheduler`]): requests as
//! the handlers make them (a job with its choice index and the channel its events go back on),
//! turned into engine jobs whose sinks send [`Event`]s over tokio channels; the engine's stop
//! reasons as OpenAI's finish_reason.

use cria_engine::generate::StopReason;
pub use cria_engine::generate::TokenLogprob; // merge shim (issue 20)
use cria_engine::scheduler as engine;
pub use cria_engine::scheduler::GenParams; // merge shim (issue 20)
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedSender;

pub use engine::STOPPED;

/// One generation (one choice of a request).
pub struct Job {
    pub prompt: Arc<Vec<u32>>,
    pub params: GenParams,
    /// The choice index its events carry.
    pub index: usize,
    pub tx: UnboundedSender<Event>,
}

/// One input of an embedding request (see [`engine::EmbedJob`]).
pub struct EmbedJob {
    pub input: Vec<u32>,
    /// The input's place in the request, sent back with its vector.
    pub index: usize,
    pub tx: UnboundedSender<(usize, Result<Vec<f32>, String>)>,
}

#[allow(clippy::large_enum_variant)] // each request is moved once, into the queue
pub enum Request {
    Generate(Job),
    Embed(EmbedJob),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// End-of-generation token, a stop string, or a grammar that admits nothing more.
    Stop,
    /// max_tokens reached, the context is full, or the server shut down.
    Length,
}

impl Finish {
    /// OpenAI's finish_reason for why an answer ended.
    pub fn of(stop: StopReason) -> Finish {
        if stop.is_cut() {
            Finish::Length
        } else {
            Finish::Stop
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

pub struct Event {
    pub index: usize,
    pub kind: EventKind,
}

pub enum EventKind {
    /// Text that is final now (may be empty when only log-probs are new).
    Text {
        text: String,
        logprobs: Option<TokenLogprob>,
    },
    Done {
        finish: Finish,
        cached_tokens: usize,
        completion_tokens: usize,
    },
    Error(String),
}

/// Test hooks: a generation with this seed panics in the scheduler (while sending its text),
/// and one with the other kills the scheduler thread. Compiled into unit tests only.
#[cfg(test)]
pub const PANIC_SEED: u64 = 0xdead_0001;
#[cfg(test)]
pub const KILL_SEED: u64 = 0xdead_0002;

/// A job's events, sent over its channel with its choice index.
pub struct EventSink {
    tx: UnboundedSender<Event>,
    index: usize,
    #[cfg(test)]
    seed: u64,
}

impl EventSink {
    fn send(&self, kind: EventKind) {
        let _ = self.tx.send(Event {
            index: self.index,
            kind,
        });
    }

    #[cfg(test)]
    fn hook(&self, seed: u64, what: &str) {
        if self.seed == seed {
            panic!("test hook: {what}");
        }
    }
}

impl engine::Sink for EventSink {
    fn text(&mut self, text: &str, logprobs: Option<TokenLogprob>) {
        #[cfg(test)]
        self.hook(PANIC_SEED, "a panic while generating");
        let text = text.to_string();
        self.send(EventKind::Text { text, logprobs });
    }

    fn done(&mut self, d: engine::Done) {
        #[cfg(test)]
        self.hook(PANIC_SEED, "a panic while generating");
        self.send(EventKind::Done {
            finish: Finish::of(d.stats.stop),
            cached_tokens: d.stats.reused_tokens,
            completion_tokens: d.stats.gen_tokens,
        });
    }

    fn error(&mut self, msg: &str) {
        self.send(EventKind::Error(msg.to_string()));
    }

    fn is_closed(&self) -> bool {
        // Asked outside any job's guard: a panic here ends the scheduler thread.
        #[cfg(test)]
        self.hook(KILL_SEED, "the scheduler thread dies");
        self.tx.is_closed()
    }
}

/// An embedding input's vector, sent over its channel with its place in the request.
pub struct EmbedSink {
    tx: UnboundedSender<(usize, Result<Vec<f32>, String>)>,
    index: usize,
}

impl engine::EmbedSink for EmbedSink {
    fn send(&mut self, vector: Result<Vec<f32>, String>) {
        let _ = self.tx.send((self.index, vector));
    }

    fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// The handlers' side: submit requests; the thread ends when every `Engine` clone is dropped.
#[derive(Clone)]
pub struct Engine(engine::Engine<EventSink, EmbedSink>);

impl Engine {
    pub fn submit(&self, r: Request) -> Result<(), String> {
        self.0.submit(match r {
            Request::Generate(j) => engine::Request::Generate(engine::Job {
                sink: EventSink {
                    tx: j.tx,
                    index: j.index,
                    #[cfg(test)]
                    seed: j.params.sampler.seed,
                },
                prompt: j.prompt,
                params: j.params,
                sampler: None,
            }),
            Request::Embed(e) => engine::Request::Embed(engine::EmbedJob {
                input: e.input,
                sink: EmbedSink {
                    tx: e.tx,
                    index: e.index,
                },
            }),
        })
    }

    /// The server is shutting down: end every generation now (finish_reason "length"), drop
    /// what is queued (those clients get a 503).
    pub fn shutdown(&self) {
        self.0.shutdown()
    }

    /// Whether the scheduler thread still runs (/health reports it).
    pub fn is_alive(&self) -> bool {
        self.0.is_alive()
    }
}

/// Starts the scheduler thread over the loaded model; the tokenizer is shared with the handlers
/// (they tokenize, the scheduler detokenizes).
pub fn spawn(
    model: cria_model::Model,
    backend: cria_kernels::CpuBackend,
    tok: Arc<cria_tokenizer::Tokenizer>,
    cfg: engine::Config,
    metrics: Arc<engine::Metrics>,
) -> std::io::Result<Engine> {
    engine::spawn(model, backend, tok, cfg, metrics).map(Engine)
}
