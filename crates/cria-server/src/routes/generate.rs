//! What chat and completions share once their request is read: one job per (prompt, choice)
//! submitted to the scheduler, answered whole or streamed.

use super::response::{collect_response, stream_response, RespCtx};
use super::{now_secs, AppState};
use crate::access::AccessLog;
use crate::error::ApiError;
use crate::lora::Choice;
use crate::params::Common;
use crate::sink::EventSink;
use crate::tools;
use axum::response::Response;
use cria_engine::grammar::{LazyMatcher, Trigger};
use cria_engine::scheduler::GenParams;
use std::sync::Arc;
use tokio::sync::mpsc::unbounded_channel;

/// What a handler asks the scheduler for, and how to answer.
pub(super) struct Generation {
    /// One or more prompts (a completion's list); each gets `n` choices.
    pub(super) prompts: Vec<Arc<Vec<u32>>>,
    /// Text to put before each prompt's choices (`echo`).
    pub(super) echo: Vec<String>,
    pub(super) c: Common,
    pub(super) chat: bool,
    pub(super) model: String,
    /// When the answer may be a tool call (parsed back into `tool_calls`).
    pub(super) tools: Option<tools::ToolCtx>,
    /// The grammar waits for one of these (tool calls under `tool_choice: "auto"`).
    pub(super) triggers: Vec<Trigger>,
    /// The LoRA adapters it runs with.
    pub(super) lora: Choice,
}

/// Submits one job per (prompt, choice) and answers, streamed or whole.
pub(super) async fn generate(
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
            jobs.push(EventSink::job(
                prompt.clone(),
                GenParams {
                    sampler,
                    max_tokens: c.max_tokens.unwrap_or(st.ctx_size),
                    stop: c.stop.clone(),
                    matcher,
                    logprobs: c.logprobs,
                    ignore_eos: c.ignore_eos,
                },
                pi * n + j,
                tx.clone(),
                g.lora.active(),
                Some(g.lora.lease.clone()),
            ));
        }
    }
    drop(tx);
    for j in jobs {
        st.engine.submit(j).map_err(ApiError::unavailable)?;
    }
    g.lora.lease.count_request();
    let ctx = RespCtx {
        id: st.id(if g.chat { "chatcmpl" } else { "cmpl" }),
        created: now_secs(),
        model: match &g.lora.named {
            Some(a) => format!("{}:{a}", g.model),
            None => g.model,
        },
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
