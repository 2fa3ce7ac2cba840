//! The server's sinks for the engine's batch scheduler ([`cria_engine::scheduler`]): a job's
//! text and end sent as [`Event`]s over a tokio channel with its choice index, an embedding's
//! vector with its place in the request; the engine's stop reasons as OpenAI's finish_reason.

use cria_engine::generate::{StopReason, TokenLogprob};
use cria_engine::scheduler::{self as engine, GenParams};
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedSender;

/// The scheduler as the handlers hold it: generations and embeddings with the sinks below.
pub type Engine = engine::Engine<EventSink, EmbedSink>;

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
    /// A generation job for choice `index` of a request, its events sent on `tx`.
    pub fn job(
        prompt: Arc<Vec<u32>>,
        params: GenParams,
        index: usize,
        tx: UnboundedSender<Event>,
    ) -> engine::Request<EventSink, EmbedSink> {
        engine::Request::Generate(engine::Job {
            sink: EventSink {
                tx,
                index,
                #[cfg(test)]
                seed: params.sampler.seed,
            },
            prompt,
            lora: Vec::new(),
            params,
            sampler: None,
        })
    }

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
    pub tx: UnboundedSender<(usize, Result<Vec<f32>, String>)>,
    pub index: usize,
}

impl engine::EmbedSink for EmbedSink {
    fn send(&mut self, vector: Result<Vec<f32>, String>) {
        let _ = self.tx.send((self.index, vector));
    }

    fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}
