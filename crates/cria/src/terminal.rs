//! The terminal as the engine's [`Sink`]: `cria run` and `cria chat` generate through the
//! engine's scheduler with one slot (a chat keeps it, and so its cache, between turns), and the
//! answer streams to stdout as its text becomes final.

use anyhow::{anyhow, bail, Result};
use cria_engine::generate::{GenStats, TokenLogprob};
use cria_engine::scheduler::{
    Config, Done, GenParams, Job, Metrics, NoEmbed, Request, Scheduler, Sink,
};
use cria_engine::{LoadedModel, Sampler};
use cria_model::ActiveLora;
use std::cell::RefCell;
use std::io::Write;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What an answer gave: its text, how it ended, or why it failed.
#[derive(Default)]
struct Outcome {
    answer: String,
    done: Option<Done>,
    failed: Option<anyhow::Error>,
}

/// Streams an answer to stdout; Ctrl-C (the `cancel` flag) or a stdout that fails cancels it.
pub struct Terminal {
    cancel: Option<Arc<AtomicBool>>,
    out: Rc<RefCell<Outcome>>,
}

impl Sink for Terminal {
    fn text(&mut self, text: &str, _: Option<TokenLogprob>) {
        let mut o = self.out.borrow_mut();
        if o.failed.is_some() {
            return;
        }
        let mut out = std::io::stdout().lock();
        match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
            Ok(()) => o.answer.push_str(text),
            Err(e) => o.failed = Some(e.into()),
        }
    }

    fn done(&mut self, d: Done) {
        self.out.borrow_mut().done = Some(d);
    }

    fn error(&mut self, msg: &str) {
        self.out.borrow_mut().failed = Some(anyhow!("{msg}"));
    }

    fn is_closed(&self) -> bool {
        self.out.borrow().failed.is_some()
            || self
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(Ordering::Relaxed))
    }
}

/// A scheduler with one slot, for `run` and `chat`.
pub type OneSlot<'a> = Scheduler<'a, Terminal, NoEmbed>;

/// A scheduler with one slot of `ctx_size` tokens, reading prompts `batch` tokens at a time.
pub fn one_slot(l: &LoadedModel, ctx_size: usize, batch: usize) -> Result<OneSlot<'_>> {
    let cfg = Config {
        parallel: 1,
        ctx_size,
        // No batch longer than the context: the buffers are sized by it.
        batch: batch.clamp(1, ctx_size.max(1)),
        kv_type: l.kv_type,
    };
    Ok(Scheduler::new(
        &l.model,
        &l.backend,
        &l.tok,
        cfg,
        Arc::new(Metrics::default()),
    )?)
}

/// Generates the answer to `prompt` in `s` with the adapters `lora` (the model's `--lora`),
/// streamed to stdout: how it ended (with the sampler and grammar back, even when it then
/// failed) and its text, or why it failed.
pub fn answer(
    s: &mut OneSlot,
    lora: &[ActiveLora],
    prompt: Vec<u32>,
    params: GenParams,
    sampler: Sampler,
    cancel: Option<Arc<AtomicBool>>,
) -> (Option<Done>, Result<String>) {
    let r = check_prompt(prompt.len(), s.ctx_size());
    if r.is_err() {
        let done = Done {
            stats: GenStats::not_started(),
            prompt_len: prompt.len(),
            sampler: Some(sampler),
            grammar: params.matcher,
        };
        return (Some(done), r.map(|_| String::new()));
    }
    let out = Rc::new(RefCell::new(Outcome::default()));
    s.submit(Request::Generate(Job {
        prompt: Arc::new(prompt),
        lora: lora.to_vec(),
        params,
        sampler: Some(sampler),
        sink: Terminal {
            cancel,
            out: out.clone(),
        },
    }));
    s.run_until_idle();
    let o = out.take();
    let text = match (o.failed, &o.done) {
        (Some(e), _) => Err(e),
        (None, Some(_)) => Ok(o.answer),
        (None, None) => Err(anyhow!("the answer ended without a result")),
    };
    (o.done, text)
}

/// A prompt must be tokens, and fewer than the context holds.
fn check_prompt(len: usize, ctx: usize) -> Result<()> {
    if len == 0 {
        bail!("the prompt is empty");
    }
    if len >= ctx {
        bail!(
            "the prompt is {len} tokens but the context holds {ctx} (raise --ctx-size; cria never truncates a prompt)"
        );
    }
    Ok(())
}
