//! Tool calls on the real model (SmolLM2, whose template does not know tools: the generic JSON
//! form): `tool_choice: "auto"` constrains a call once the answer starts one (a lazy grammar),
//! `parallel_tool_calls: false` gives one call, a call cut by max_tokens never leaks into
//! `content`, streamed or not, and `content: null` in an assistant tool-call turn is accepted.

mod common;
use common::{post, post_stream, serve};
use serde_json::{json, Value};

fn tools() -> Value {
    json!([{"type": "function", "function": {
        "name": "get_weather",
        "description": "The weather forecast of a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
            },
            "required": ["city", "unit", "days"],
            "additionalProperties": false,
        },
    }}])
}

/// The arguments of a call conform to get_weather's schema.
fn assert_conforms(call: &Value) {
    assert_eq!(call["type"], "function", "{call}");
    assert_eq!(call["function"]["name"], "get_weather", "{call}");
    let text = call["function"]["arguments"].as_str().unwrap();
    let args: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert!(args["city"].is_string(), "{args}");
    assert!(
        args["unit"] == "celsius" || args["unit"] == "fahrenheit",
        "{args}"
    );
    assert!(args["days"].is_i64(), "{args}");
    assert_eq!(args.as_object().unwrap().len(), 3, "{args}");
}

const ASK: &str = "What will the weather be in Paris for the next 3 days, in celsius?";

/// SmolLM2 at temperature 0.7 answers this with a call for some seeds (1 and 3 here) and
/// with text for others.
const ASK_JSON: &str =
    "Answer with only a JSON object: call get_weather for Paris, 3 days, in celsius.";

#[test]
fn auto_constrains_a_call_once_it_starts() {
    let srv = serve(|_| {});
    let url = format!("{}/v1/chat/completions", srv.url());
    let mut calls_seen = 0;
    for seed in 1..=4 {
        let body = json!({
            "messages": [{"role": "user", "content": ASK_JSON}],
            "tools": tools(), "tool_choice": "auto", "parallel_tool_calls": false,
            "temperature": 0.7, "seed": seed, "max_tokens": 150,
        });
        let (s, v) = post(&url, &body);
        assert_eq!(s, 200, "{v}");
        let c = &v["choices"][0];
        match c["message"]["tool_calls"].as_array() {
            // Once the answer starts a call, the call follows the schema.
            Some(calls) => {
                assert_eq!(c["finish_reason"], "tool_calls", "{v}");
                assert!(c["message"]["content"].is_null(), "{v}");
                assert_eq!(calls.len(), 1, "{v}");
                assert_conforms(&calls[0]);
                calls_seen += 1;
            }
            // Otherwise the answer is free text that never started one.
            None => {
                let text = c["message"]["content"].as_str().unwrap();
                assert!(!text.trim_start().starts_with('{'), "{v}");
            }
        }
    }
    assert!(calls_seen >= 1, "no answer started a call");

    // A plain question stays free text.
    let body = json!({
        "messages": [{"role": "user", "content": "Say hello."}],
        "tools": tools(), "temperature": 0, "max_tokens": 30,
    });
    let (_, v) = post(&url, &body);
    let c = &v["choices"][0];
    assert!(c["message"]["tool_calls"].is_null(), "{v}");
    assert!(!c["message"]["content"].as_str().unwrap().is_empty(), "{v}");
}

#[test]
fn parallel_false_gives_one_call_and_cut_calls_do_not_leak() {
    let srv = serve(|_| {});
    let url = format!("{}/v1/chat/completions", srv.url());
    let ask = "Get the weather in Paris, in London and in Rome, for 2 days, in celsius.";
    let body = json!({
        "messages": [{"role": "user", "content": ask}],
        "tools": tools(), "tool_choice": "required", "parallel_tool_calls": false,
        "temperature": 0, "max_tokens": 200,
    });
    let (s, v) = post(&url, &body);
    assert_eq!(s, 200, "{v}");
    let c = &v["choices"][0];
    assert_eq!(c["finish_reason"], "tool_calls", "{v}");
    let calls = c["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{v}");
    assert_conforms(&calls[0]);

    let mut bad = body.clone();
    bad["parallel_tool_calls"] = json!("no");
    let (s, v) = post(&url, &bad);
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["param"], "parallel_tool_calls", "{v}");

    // Cut by max_tokens inside the call: finish "length", no raw JSON as content, no call.
    for auto in [false, true] {
        let mut cut = body.clone();
        cut["max_tokens"] = json!(8);
        if auto {
            cut["tool_choice"] = json!("auto");
            cut["messages"] = json!([{"role": "user", "content": ASK_JSON}]);
            cut["temperature"] = json!(0.7);
            cut["seed"] = json!(1);
        }
        let (s, v) = post(&url, &cut);
        assert_eq!(s, 200, "{v}");
        let c = &v["choices"][0];
        assert_eq!(c["finish_reason"], "length", "{v}");
        assert!(c["message"]["content"].is_null(), "{v}");
        assert!(c["message"]["tool_calls"].is_null(), "{v}");

        cut["stream"] = json!(true);
        let events = post_stream(&url, &cut);
        let mut content = String::new();
        let mut finish = Value::Null;
        for e in events.iter().filter(|e| *e != "[DONE]") {
            let v: Value = serde_json::from_str(e).unwrap();
            let c = &v["choices"][0];
            content.push_str(c["delta"]["content"].as_str().unwrap_or(""));
            assert!(c["delta"]["tool_calls"].is_null(), "{e}");
            if !c["finish_reason"].is_null() {
                finish = c["finish_reason"].clone();
            }
        }
        assert_eq!(finish, "length");
        assert_eq!(content, "", "the cut call leaked");
    }
}

#[test]
fn null_content_in_a_tool_call_turn_is_accepted() {
    let srv = serve(|_| {});
    let url = format!("{}/v1/chat/completions", srv.url());
    let (s, v) = post(
        &url,
        &json!({
            "messages": [
                {"role": "user", "content": ASK},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\", \"days\": 3}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
            ],
            "tools": tools(), "temperature": 0, "max_tokens": 5,
        }),
    );
    assert_eq!(s, 200, "{v}");
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
}

/// Cut after the first of several calls: that call is kept (finish "length"), streamed or not,
/// and nothing of the cut one shows.
#[test]
fn a_cut_answer_keeps_its_complete_calls() {
    let srv = serve(|_| {});
    let url = format!("{}/v1/chat/completions", srv.url());
    let ask = "Get the weather in Paris, in London and in Rome, for 2 days, in celsius.";
    let mut body = json!({
        "messages": [{"role": "user", "content": ask}],
        "tools": tools(), "tool_choice": "required",
        "temperature": 0, "max_tokens": 400,
    });
    let (_, v) = post(&url, &body);
    let whole = v["choices"][0]["message"]["tool_calls"]
        .as_array()
        .unwrap()
        .len();
    assert!(whole >= 2, "the model makes one call only: {v}");
    // Shorten the answer until it is cut with some but not all of its calls.
    let n = v["usage"]["completion_tokens"].as_u64().unwrap();
    let mut kept = None;
    for max_tokens in (1..n).rev() {
        body["max_tokens"] = json!(max_tokens);
        let (_, v) = post(&url, &body);
        let c = &v["choices"][0];
        if c["finish_reason"] == "tool_calls" {
            continue; // only the end-of-generation token (or whitespace) was cut
        }
        assert_eq!(c["finish_reason"], "length", "{v}");
        assert!(c["message"]["content"].is_null(), "{v}");
        if let Some(calls) = c["message"]["tool_calls"].as_array() {
            if calls.len() < whole {
                calls.iter().for_each(assert_conforms);
                kept = Some((max_tokens, calls.len()));
                break;
            }
        }
    }
    let (max_tokens, k) = kept.expect("no cut kept a call");
    assert!(k >= 1);
    body["max_tokens"] = json!(max_tokens);
    body["stream"] = json!(true);
    let events = post_stream(&url, &body);
    let mut calls = vec![];
    let mut content = String::new();
    for e in events.iter().filter(|e| *e != "[DONE]") {
        let v: Value = serde_json::from_str(e).unwrap();
        let c = &v["choices"][0];
        content.push_str(c["delta"]["content"].as_str().unwrap_or(""));
        if let Some(tc) = c["delta"]["tool_calls"].as_array() {
            calls.extend(tc.iter().cloned());
            assert_eq!(c["finish_reason"], "length", "{e}");
        }
    }
    assert_eq!((calls.len(), content.as_str()), (k, ""));
    calls.iter().for_each(assert_conforms);
}
