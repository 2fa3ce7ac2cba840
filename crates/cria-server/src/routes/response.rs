//! The scheduler's events as OpenAI-shaped answers, for chat and completions alike: collected
//! into one JSON body, or sent as SSE chunks; usage and log-probs JSON.

use crate::access::AccessLog;
use crate::error::ApiError;
use crate::sink::{Event, EventKind, Finish};
use crate::tools;
use axum::http::header;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cria_engine::generate::TokenLogprob;
use cria_engine::scheduler::STOPPED;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedReceiver;

/// What every response chunk repeats.
pub(super) struct RespCtx {
    pub(super) id: String,
    pub(super) created: u64,
    pub(super) model: String,
    pub(super) chat: bool,
    pub(super) n_choices: usize,
    pub(super) prompt_tokens: usize,
    pub(super) echo: Vec<String>,
    pub(super) n: usize,
    pub(super) tools: Option<tools::ToolCtx>,
    /// The request's access-log line, which gets its token counts.
    pub(super) log: Arc<AccessLog>,
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

pub(super) async fn collect_response(
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
            return Err(ApiError::unavailable(STOPPED));
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

pub(super) fn stream_response(
    ctx: RespCtx,
    rx: UnboundedReceiver<Event>,
    include_usage: bool,
) -> Response {
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
                    let e = ApiError::unavailable(STOPPED);
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
