//! Tool calls, shared by the server and `cria template --tools` so that both render the same
//! prompt: how a conversation with tools becomes the template's input, the form a model answers
//! a call in, that form's grammar and triggers (for a lazy grammar under `tool_choice: "auto"`),
//! and reading calls back out of an answer.
//!
//! Templates that know tools (LLaMA 3.1, Mistral, Qwen ...) render them and the conversation's
//! tool calls themselves. For a template that does not (SmolLM2's ChatML), the generic JSON form
//! is used, as llama-server does: the tools are described in a system message, earlier calls are
//! written as JSON content, and the model answers a call as `{"tool_calls": [{"name", "arguments"}]}`.
//!
//! The form of a call follows the template family:
//! - generic: `{"tool_calls": [{"name": ..., "arguments": {...}}]}`, the whole answer;
//! - LLaMA 3.1 (the template writes `<|python_tag|>`): `{"name": ..., "parameters": {...}}`,
//!   after `<|python_tag|>` (a control token, which renders as nothing) or as the whole answer;
//! - Hermes / Qwen (`<tool_call>`): `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`,
//!   possibly after some text.

use crate::grammar::{json_schema_to_gbnf, Grammar, Trigger};
use crate::template::{ChatTemplate, Message};
use cria_core::Result;
use serde_json::{json, Value};

/// ChatML, which llama.cpp also falls back to when a model carries no chat template.
pub const FALLBACK_TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// Whether a chat template renders tools itself.
pub fn template_knows_tools(src: &str) -> bool {
    src.contains("tools") || src.contains("tool_calls")
}

/// How a model answers a tool call (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallForm {
    Generic,
    Llama31,
    Hermes,
}

impl CallForm {
    /// The form for a chat template's source.
    pub fn of(src: &str) -> Self {
        if !template_knows_tools(src) {
            CallForm::Generic
        } else if src.contains("<tool_call>") {
            CallForm::Hermes
        } else if src.contains("<|python_tag|>") {
            CallForm::Llama31
        } else {
            CallForm::Generic
        }
    }

    /// What starts a call, for a lazy grammar. The grammar of [`call_grammar`] starts at the
    /// triggers that keep their text, after the others.
    pub fn triggers(self) -> Vec<Trigger> {
        match self {
            CallForm::Generic => vec![Trigger::new("{", true, true)],
            CallForm::Llama31 => vec![
                Trigger::new("<|python_tag|>", false, false),
                Trigger::new("{\"name\"", true, true),
            ],
            CallForm::Hermes => vec![Trigger::new("<tool_call>", false, false)],
        }
    }
}

/// A chat template with the knowledge of how it takes tools: the one way a conversation becomes
/// prompt text, for the server and the CLI.
#[derive(Debug)]
pub struct ChatFormat {
    template: ChatTemplate,
    native_tools: bool,
    form: CallForm,
}

impl ChatFormat {
    /// The model's template source, or None for the ChatML fallback.
    pub fn new(src: Option<&str>) -> Result<Self> {
        let src = src.unwrap_or(FALLBACK_TEMPLATE);
        Ok(ChatFormat {
            template: ChatTemplate::new(src)?,
            native_tools: template_knows_tools(src),
            form: CallForm::of(src),
        })
    }

    /// The template renders tools itself (else the generic JSON form is used).
    pub fn native_tools(&self) -> bool {
        self.native_tools
    }

    pub fn call_form(&self) -> CallForm {
        self.form
    }

    /// The prompt text of a conversation, with `tools` (OpenAI's list) if any. Tool-call
    /// arguments sent as JSON text (as OpenAI does) are given to the template as objects;
    /// `content: null` is accepted.
    pub fn render(
        &self,
        msgs: &[Message],
        tools: Option<&Value>,
        add_generation_prompt: bool,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<String> {
        let mut msgs = msgs.to_vec();
        msgs.iter_mut().for_each(arguments_as_objects);
        let (msgs, tools) = if self.native_tools {
            (msgs, tools)
        } else {
            (generic_messages(msgs, tools), None)
        };
        self.template
            .render(&msgs, add_generation_prompt, bos_token, eos_token, tools)
    }
}

/// OpenAI sends a call's arguments as a JSON string; templates expect the object.
fn arguments_as_objects(m: &mut Message) {
    let Some(Value::Array(calls)) = m.extra.get_mut("tool_calls") else {
        return;
    };
    for f in calls.iter_mut().filter_map(|c| c.get_mut("function")) {
        if let Some(Value::String(a)) = f.get("arguments") {
            if let Ok(parsed) = serde_json::from_str::<Value>(a) {
                f["arguments"] = parsed;
            }
        }
    }
}

/// The conversation in the generic form for a template without tool support.
pub fn generic_messages(msgs: Vec<Message>, tools: Option<&Value>) -> Vec<Message> {
    let mut out = Vec::with_capacity(msgs.len() + 1);
    if let Some(t) = tools {
        let desc = format!(
            "You can call these tools:\n{}\nTo call tools, answer with only a JSON object: \
             {{\"tool_calls\": [{{\"name\": \"<tool name>\", \"arguments\": {{...}}}}]}}. \
             Otherwise answer normally.",
            serde_json::to_string_pretty(t).unwrap_or_default()
        );
        match msgs.first() {
            Some(m) if m.role == "system" => {}
            _ => out.push(Message::new("system", desc.clone())),
        }
        for (i, m) in msgs.into_iter().enumerate() {
            out.push(if i == 0 && m.role == "system" {
                Message::new("system", format!("{}\n\n{desc}", m.text()))
            } else {
                m
            });
        }
    } else {
        out = msgs;
    }
    for m in &mut out {
        if let Some(calls) = m.extra.remove("tool_calls") {
            let calls: Vec<Value> = calls
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| json!({"name": c["function"]["name"], "arguments": c["function"]["arguments"]}))
                .collect();
            m.content = Some(json!({ "tool_calls": calls }).to_string());
        }
        m.extra.remove("tool_call_id");
        if m.content.is_none() {
            m.content = Some(String::new());
        }
    }
    out
}

/// Which calls a grammar admits.
#[derive(Clone, Copy, Debug)]
pub struct CallSpec<'a> {
    /// OpenAI's `tools` list.
    pub tools: &'a Value,
    /// Only this function (`tool_choice: {"function": {"name"}}`).
    pub only: Option<&'a str>,
    /// More than one call (`parallel_tool_calls`, default true).
    pub parallel: bool,
}

/// The grammar of a call in `form`, from the triggers on (see [`CallForm::triggers`]); with
/// `whole`, of a whole answer that must be a call (`tool_choice: "required"`). Arguments follow
/// each tool's parameter schema (any JSON object where a schema is not supported). Err: no tool
/// is left (`only` names none of them).
pub fn call_grammar(
    form: CallForm,
    spec: CallSpec,
    whole: bool,
) -> std::result::Result<Grammar, String> {
    let args_key = if form == CallForm::Llama31 {
        "parameters"
    } else {
        "arguments"
    };
    let mut alts = Vec::new();
    for t in spec.tools.as_array().into_iter().flatten() {
        let name = t["function"]["name"].as_str().unwrap_or_default();
        if spec.only.is_some_and(|o| o != name) {
            continue;
        }
        let params = match t["function"].get("parameters") {
            Some(p) if !p.is_null() && json_schema_to_gbnf(p).is_ok() => p.clone(),
            _ => json!({"type": "object"}),
        };
        alts.push(json!({
            "type": "object",
            "properties": {"name": {"const": name}, args_key: params},
            "required": ["name", args_key],
        }));
    }
    if alts.is_empty() {
        return Err("'tool_choice' names a function that is not in 'tools'".into());
    }
    let call = json!({"anyOf": alts});
    let schema = match form {
        CallForm::Generic => {
            let mut list = json!({"type": "array", "items": call, "minItems": 1});
            if !spec.parallel {
                list["maxItems"] = json!(1);
            }
            json!({
                "type": "object",
                "properties": {"tool_calls": list},
                "required": ["tool_calls"],
            })
        }
        CallForm::Llama31 | CallForm::Hermes => call,
    };
    let gbnf = json_schema_to_gbnf(&schema).map_err(|e| format!("tool grammar: {e}"))?;
    let (gbnf, root) = match form {
        CallForm::Hermes => {
            let one = r#""\n"? root "</tool_call>""#;
            let more = if spec.parallel {
                format!(r#"("\n"? "<tool_call>" {one})*"#)
            } else {
                String::new()
            };
            let open = if whole { r#""<tool_call>""# } else { "" };
            (
                format!("{gbnf}tool-calls ::= {open} {one} {more}\n"),
                "tool-calls",
            )
        }
        _ => (gbnf, "root"),
    };
    Grammar::parse_with_root(&gbnf, root).map_err(|e| format!("tool grammar: {e}"))
}

/// One call read from an answer: the function's name and its arguments as JSON text (as
/// OpenAI sends them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    pub name: String,
    pub arguments: String,
}

/// An answer that started a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedCalls {
    /// Text before the call, if any.
    pub content: Option<String>,
    /// The complete calls (at most one unless parallel): all of them unless the answer was cut.
    pub calls: Vec<ToolCall>,
    /// Every call was complete (false: the answer ended inside one).
    pub complete: bool,
}

/// Read tool calls from an answer in `form`: None when the answer is not a call (no call starts
/// in it, it is not the call JSON it looks like, or it names a function not in `names`).
/// Only the first call is kept without `parallel`.
pub fn parse_calls(
    form: CallForm,
    text: &str,
    names: &[String],
    parallel: bool,
) -> Option<ParsedCalls> {
    let (start, body) = call_start(form, text)?;
    let content = Some(text[..start].trim().to_string()).filter(|c| !c.is_empty());
    let (values, complete) = match form {
        CallForm::Hermes => hermes_values(body),
        _ => json_values(body)?,
    };
    let mut calls = Vec::new();
    for v in &values {
        calls.extend(calls_in(v, names)?);
    }
    if complete && calls.is_empty() {
        return None;
    }
    if !parallel {
        calls.truncate(1);
    }
    Some(ParsedCalls {
        content,
        calls,
        complete,
    })
}

/// Where the call starts in `text`, and the text of the call(s).
fn call_start(form: CallForm, text: &str) -> Option<(usize, &str)> {
    let lead = text.len() - text.trim_start().len();
    match form {
        CallForm::Hermes => {
            let p = text.find("<tool_call>")?;
            Some((p, &text[p..]))
        }
        _ if text[lead..].starts_with('{') => Some((lead, &text[lead..])),
        // After `<|python_tag|>`, which renders as nothing.
        CallForm::Llama31 => {
            let p = text.find("{\"name\"")?;
            Some((p, &text[p..]))
        }
        CallForm::Generic => None,
    }
}

/// The JSON call at the start of `body`: (values, complete). A cut answer gives the complete
/// items of a `tool_calls` list so far; None for text that is not JSON at all.
fn json_values(body: &str) -> Option<(Vec<Value>, bool)> {
    let mut it = serde_json::Deserializer::from_str(body).into_iter::<Value>();
    match it.next()? {
        Ok(v) => Some((vec![v], true)),
        Err(e) if e.is_eof() => Some((partial_list(body), false)),
        Err(_) => None,
    }
}

/// The complete items of a cut `{"tool_calls": [item, item, ...` as `{"tool_calls": [...]}`.
fn partial_list(body: &str) -> Vec<Value> {
    let Some(rest) = body.trim_start().strip_prefix('{') else {
        return vec![];
    };
    let Some(rest) = rest.trim_start().strip_prefix("\"tool_calls\"") else {
        return vec![];
    };
    let Some(mut rest) = rest
        .trim_start()
        .strip_prefix(':')
        .and_then(|r| r.trim_start().strip_prefix('['))
    else {
        return vec![];
    };
    let mut items = Vec::new();
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ',');
        let mut it = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        match it.next() {
            Some(Ok(v)) => {
                items.push(v);
                rest = &rest[it.byte_offset()..];
            }
            _ => break,
        }
    }
    if items.is_empty() {
        return vec![];
    }
    vec![json!({ "tool_calls": items })]
}

/// The JSON of each complete `<tool_call>...</tool_call>` block; complete unless the last one
/// is cut (text between blocks is skipped).
fn hermes_values(body: &str) -> (Vec<Value>, bool) {
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(p) = rest.find("<tool_call>") {
        let after = &rest[p + "<tool_call>".len()..];
        let Some(end) = after.find("</tool_call>") else {
            return (out, false);
        };
        match serde_json::from_str(after[..end].trim()) {
            Ok(v) => out.push(v),
            Err(_) => out.push(Value::Null), // not a call: the answer is not one either
        }
        rest = &after[end + "</tool_call>".len()..];
    }
    (out, true)
}

/// The calls in one JSON value: the generic `{"tool_calls": [...]}`, or one bare
/// `{"name", "arguments"}` / `{"name", "parameters"}`. None if any is not a call to one of
/// `names`.
fn calls_in(v: &Value, names: &[String]) -> Option<Vec<ToolCall>> {
    let one = |c: &Value| -> Option<ToolCall> {
        let name = c.get("name")?.as_str()?.to_string();
        if !names.contains(&name) {
            return None;
        }
        let args = c.get("arguments").or_else(|| c.get("parameters"))?;
        let arguments = match args {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        Some(ToolCall { name, arguments })
    };
    match v.get("tool_calls") {
        Some(Value::Array(calls)) if !calls.is_empty() => calls.iter().map(one).collect(),
        Some(_) => None,
        None => one(v).map(|c| vec![c]),
    }
}
