//! POST /v1/chat/completions: the messages, tools and tool_choice read, the conversation
//! rendered with the model's template.

use super::generate::{generate, Generation};
use super::AppState;
use crate::access::AccessLog;
use crate::error::ApiError;
use crate::params::{self, get, opt_bool, Obj};
use crate::tools;
use axum::response::Response;
use cria_engine::template::Message;
use cria_engine::tools::CallSpec;
use serde_json::Value;
use std::sync::Arc;

/// Most messages in a chat request, and text parts in one message.
const MAX_MESSAGES: usize = 4096;
const MAX_PARTS: usize = 1024;

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

pub(super) async fn chat(
    st: Arc<AppState>,
    log: Arc<AccessLog>,
    o: Obj,
) -> Result<Response, ApiError> {
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
    let lora = st.adapters.choose(&o, &st.names)?;
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
        lora,
    };
    generate(&st, g, log).await
}
