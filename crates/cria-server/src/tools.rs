//! Tool calls (`tools`, `tool_choice`).
//!
//! Templates that know tools (LLaMA 3.1, Mistral, Qwen ...) render them and the conversation's
//! tool calls themselves. For a template that does not (SmolLM2's ChatML), the generic JSON form
//! is used, as llama-server does: the tools are described in a system message, earlier calls are
//! written as JSON content, and the model answers a call as `{"tool_calls": [{"name", "arguments"}]}`.
//! Either way the answer is parsed back into OpenAI's `tool_calls`: the generic form, a bare
//! `{"name", "arguments"}`, and LLaMA 3.1's `{"name", "parameters"}` (after `<|python_tag|>`,
//! which renders as nothing).

use crate::error::ApiError;
use cria_engine::grammar::{json_schema_to_gbnf, Grammar};
use cria_engine::template::Message;
use serde_json::{json, Value};

/// Whether a chat template renders tools itself.
pub fn template_knows_tools(src: &str) -> bool {
    src.contains("tools") || src.contains("tool_calls")
}

/// The function names of an OpenAI `tools` list, checked.
pub fn tool_names(tools: &Value) -> Result<Vec<String>, ApiError> {
    let bad = |i: usize| {
        ApiError::param(
            "tools",
            format!("tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\", \"parameters\"}}}}"),
        )
    };
    let list = tools.as_array().ok_or_else(|| bad(0))?;
    list.iter()
        .enumerate()
        .map(|(i, t)| {
            t["function"]["name"]
                .as_str()
                .map(String::from)
                .ok_or_else(|| bad(i))
        })
        .collect()
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

/// With `tool_choice` "required" or a named function, the answer must be a call: a grammar for
/// the generic form over those tools' parameter schemas (any JSON object where a schema is not
/// supported).
pub fn required_grammar(tools: &Value, only: Option<&str>) -> Result<Grammar, ApiError> {
    let mut alts = Vec::new();
    for t in tools.as_array().into_iter().flatten() {
        let name = t["function"]["name"].as_str().unwrap_or_default();
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let params = match t["function"].get("parameters") {
            Some(p) if !p.is_null() && json_schema_to_gbnf(p).is_ok() => p.clone(),
            _ => json!({"type": "object"}),
        };
        alts.push(json!({
            "type": "object",
            "properties": {"name": {"const": name}, "arguments": params},
            "required": ["name", "arguments"],
        }));
    }
    if alts.is_empty() {
        return Err(ApiError::param(
            "tool_choice",
            "'tool_choice' names a function that is not in 'tools'",
        ));
    }
    let schema = json!({
        "type": "object",
        "properties": {"tool_calls": {"type": "array", "items": {"anyOf": alts}, "minItems": 1}},
        "required": ["tool_calls"],
    });
    let g =
        json_schema_to_gbnf(&schema).unwrap_or_else(|_| cria_engine::grammar::ANY_JSON_GBNF.into());
    Grammar::parse(&g).map_err(|e| ApiError::internal(format!("tool grammar: {e}")))
}

/// Tool calls in a model's answer: (name, arguments as JSON text), or None for plain text.
pub fn parse_tool_calls(text: &str, names: &[String]) -> Option<Vec<(String, String)>> {
    let t = text.trim();
    let v: Value = serde_json::from_str(t).ok()?;
    let one = |c: &Value| -> Option<(String, String)> {
        let name = c.get("name")?.as_str()?.to_string();
        if !names.contains(&name) {
            return None;
        }
        let args = c.get("arguments").or_else(|| c.get("parameters"))?;
        // Arguments are sent as JSON text, as OpenAI does.
        let args = match args {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        Some((name, args))
    };
    match v.get("tool_calls") {
        Some(Value::Array(calls)) if !calls.is_empty() => calls.iter().map(one).collect(),
        Some(_) => None,
        None => one(&v).map(|c| vec![c]),
    }
}

/// OpenAI's `tool_calls` list for a message or a stream delta.
pub fn tool_calls_json(calls: &[(String, String)], id_prefix: &str, delta: bool) -> Value {
    calls
        .iter()
        .enumerate()
        .map(|(i, (name, args))| {
            let mut c = json!({
                "id": format!("call_{id_prefix}_{i}"),
                "type": "function",
                "function": {"name": name, "arguments": args},
            });
            if delta {
                c["index"] = json!(i);
            }
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_generic_bare_and_llama31_forms() {
        let names = vec!["get_weather".to_string()];
        let want = vec![("get_weather".to_string(), r#"{"city":"Paris"}"#.to_string())];
        for text in [
            r#"{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}"#,
            r#" {"name": "get_weather", "arguments": {"city": "Paris"}} "#,
            r#"{"name": "get_weather", "parameters": {"city": "Paris"}}"#,
            r#"{"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}"#,
        ] {
            assert_eq!(parse_tool_calls(text, &names), Some(want.clone()), "{text}");
        }
        assert_eq!(parse_tool_calls("It is sunny.", &names), None);
        assert_eq!(
            parse_tool_calls(r#"{"name": "other", "arguments": {}}"#, &names),
            None
        );
        assert_eq!(parse_tool_calls(r#"{"tool_calls": []}"#, &names), None);
    }

    #[test]
    fn required_grammar_accepts_only_calls() {
        let tools = json!([{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}}}]);
        let g = required_grammar(&tools, None).unwrap();
        assert!(g.accepts(r#"{"tool_calls": [{"name": "f", "arguments": {"x": 3}}]}"#));
        assert!(!g.accepts(r#"{"tool_calls": [{"name": "g", "arguments": {"x": 3}}]}"#));
        assert!(!g.accepts("hello"));
        assert!(required_grammar(&tools, Some("nope")).is_err());
    }
}
