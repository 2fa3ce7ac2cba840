//! Tool calls (`tools`, `tool_choice`, `parallel_tool_calls`): the request's side. How tools
//! enter the prompt, the call grammars and reading calls back are cria-engine's
//! ([`cria_engine::tools`]), shared with `cria template --tools`.
//!
//! Under `tool_choice: "auto"` the call grammar is lazy: the answer is free until it starts a
//! call (the template family's triggers), and the call then follows the tools' schemas. Under
//! "required" (or a named function) the whole answer is a call.

use crate::error::ApiError;
use crate::sink::Finish;
use cria_engine::grammar::{Grammar, Trigger};
use cria_engine::tools::{call_grammar, parse_calls, CallForm, CallSpec, ToolCall};
use serde_json::{json, Value};

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

/// The grammar for a request with tools, and its triggers (none: the whole answer is a call).
pub fn grammar(
    form: CallForm,
    spec: CallSpec,
    required: bool,
) -> Result<(Grammar, Vec<Trigger>), ApiError> {
    if let Some(only) = spec.only {
        let names = tool_names(spec.tools)?;
        if !names.iter().any(|n| n == only) {
            return Err(ApiError::param(
                "tool_choice",
                format!("'tool_choice' names the function '{only}', which is not in 'tools'"),
            ));
        }
    }
    let g = call_grammar(form, spec, required).map_err(|e| ApiError::param("tools", e))?;
    let triggers = if required { vec![] } else { form.triggers() };
    Ok((g, triggers))
}

/// How the answer of a request with tools is read back.
#[derive(Clone, Debug)]
pub struct ToolCtx {
    pub names: Vec<String>,
    pub form: CallForm,
    pub parallel: bool,
}

/// A chat answer that is (or began) a call.
#[derive(Debug, PartialEq)]
pub struct Answer {
    /// Text before the call, if any.
    pub content: Option<String>,
    /// The complete calls.
    pub calls: Vec<ToolCall>,
    pub finish_reason: &'static str,
}

/// Read a chat answer with tools: None for a plain answer. A call cut short (max_tokens) keeps
/// its finish reason and only what was complete: the raw call text never becomes content.
pub fn answer(ctx: &ToolCtx, text: &str, finish: Finish) -> Option<Answer> {
    let p = parse_calls(ctx.form, text, &ctx.names, ctx.parallel)?;
    Some(Answer {
        content: p.content,
        calls: p.calls,
        finish_reason: if p.complete {
            "tool_calls"
        } else {
            finish.as_str()
        },
    })
}

/// OpenAI's `tool_calls` list for a message or a stream delta.
pub fn tool_calls_json(calls: &[ToolCall], id_prefix: &str, delta: bool) -> Value {
    calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut v = json!({
                "id": format!("call_{id_prefix}_{i}"),
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            });
            if delta {
                v["index"] = json!(i);
            }
            v
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(parallel: bool) -> ToolCtx {
        ToolCtx {
            names: vec!["get_weather".into()],
            form: CallForm::Generic,
            parallel,
        }
    }

    #[test]
    fn parses_the_generic_bare_and_llama31_forms() {
        let want = vec![ToolCall {
            name: "get_weather".into(),
            arguments: r#"{"city":"Paris"}"#.into(),
        }];
        for text in [
            r#"{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}"#,
            r#" {"name": "get_weather", "arguments": {"city": "Paris"}} "#,
            r#"{"name": "get_weather", "parameters": {"city": "Paris"}}"#,
            r#"{"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}"#,
        ] {
            let got = answer(&ctx(true), text, Finish::Stop).unwrap();
            assert_eq!((got.content, got.calls), (None, want.clone()), "{text}");
            assert_eq!(got.finish_reason, "tool_calls");
        }
        assert_eq!(answer(&ctx(true), "It is sunny.", Finish::Stop), None);
        let other = r#"{"name": "other", "arguments": {}}"#;
        assert_eq!(answer(&ctx(true), other, Finish::Stop), None);
        assert_eq!(
            answer(&ctx(true), r#"{"tool_calls": []}"#, Finish::Stop),
            None
        );
    }

    #[test]
    fn a_cut_call_is_never_content_and_parallel_false_keeps_one() {
        let two = r#"{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_weather", "arguments": {"city": "Rome"}}]}"#;
        let a = answer(&ctx(true), two, Finish::Stop).unwrap();
        assert_eq!((a.calls.len(), a.finish_reason), (2, "tool_calls"));
        let a = answer(&ctx(false), two, Finish::Stop).unwrap();
        assert_eq!(a.calls.len(), 1);
        // Cut inside the second call: the first is kept, the rest dropped, finish stays.
        let cut = &two[..two.len() - 20];
        let a = answer(&ctx(true), cut, Finish::Length).unwrap();
        assert_eq!(
            (a.content, a.calls.len(), a.finish_reason),
            (None, 1, "length")
        );
        // Cut inside the first: no call, no content.
        let cut = &two[..30];
        let a = answer(&ctx(true), cut, Finish::Length).unwrap();
        assert_eq!(
            (a.content, a.calls.len(), a.finish_reason),
            (None, 0, "length")
        );
    }

    #[test]
    fn required_grammar_accepts_only_calls() {
        let tools = json!([{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}}}]);
        let spec = CallSpec {
            tools: &tools,
            only: None,
            parallel: true,
        };
        let (g, triggers) = grammar(CallForm::Generic, spec, true).unwrap();
        assert!(triggers.is_empty());
        assert!(g.accepts(r#"{"tool_calls": [{"name": "f", "arguments": {"x": 3}}]}"#));
        assert!(!g.accepts(r#"{"tool_calls": [{"name": "g", "arguments": {"x": 3}}]}"#));
        assert!(!g.accepts("hello"));
        let only = CallSpec {
            only: Some("nope"),
            ..spec
        };
        let e = grammar(CallForm::Generic, only, true).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tool_choice"));
    }
}
