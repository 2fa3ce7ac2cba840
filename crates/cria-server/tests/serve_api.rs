//! `cria serve` end to end on the real model: a server on a random port, driven over HTTP.
//! Answers are checked against greedy generation run directly through the forward pass.

mod common;

use common::*;
use serde_json::{json, Value};

const Q: &str = "What is the capital of France?";

fn assert_error(status: u16, v: &Value, want: u16, param: Option<&str>, says: &str) {
    assert_eq!(status, want, "{v}");
    let e = &v["error"];
    assert!(e["message"].is_string(), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
    if let Some(p) = param {
        assert_eq!(e["param"], p, "{v}");
    }
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains(says), "{msg:?} should mention {says:?}");
}

#[test]
fn chat_and_completion_match_direct_generation() {
    let reference = load();
    let srv = serve(|_| {});
    let url = srv.url();

    // Chat, not streamed: the text is exactly greedy decoding of the templated prompt.
    let prompt = chat_tokens(&reference.tok, &[("user", Q)]);
    let (want, n_gen) = greedy_reference(&reference, &prompt, 24);
    let body = json!({
        "model": "SmolLM2-135M-Instruct.Q4_1",
        "messages": [{"role": "user", "content": Q}],
        "temperature": 0, "max_tokens": 24,
    });
    let (s, v) = post(&format!("{url}/v1/chat/completions"), &body);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    let c = &v["choices"][0];
    assert_eq!(c["message"]["role"], "assistant");
    assert_eq!(c["message"]["content"], want.as_str());
    assert!(!want.is_empty());
    let fin = if n_gen == 24 { "length" } else { "stop" };
    assert_eq!(c["finish_reason"], fin);
    assert_eq!(v["usage"]["prompt_tokens"], prompt.len());
    assert_eq!(v["usage"]["completion_tokens"], n_gen);
    assert_eq!(v["usage"]["total_tokens"], prompt.len() + n_gen);

    // The same, streamed, with usage: same text, role first, finish and usage at the end.
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    sb["stream_options"] = json!({"include_usage": true});
    let ev = post_stream(&format!("{url}/v1/chat/completions"), &sb);
    assert_eq!(ev.last().unwrap(), "[DONE]");
    assert_eq!(stream_text(&ev, 1)[0], want);
    let first: Value = serde_json::from_str(&ev[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    let usage: Value = serde_json::from_str(&ev[ev.len() - 2]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], n_gen);
    // The prompt was just computed for the first request: the second reuses all but its last
    // token from the slot's cache.
    assert_eq!(
        usage["usage"]["prompt_tokens_details"]["cached_tokens"],
        prompt.len() - 1
    );
    let last: Value = serde_json::from_str(&ev[ev.len() - 3]).unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], fin);

    // Completion of plain text.
    let text = "The three primary colors are";
    let ptoks = reference.tok.encode(text, true, true);
    let (want, _) = greedy_reference(&reference, &ptoks, 12);
    let (s, v) = post(
        &format!("{url}/v1/completions"),
        &json!({"prompt": text, "max_tokens": 12, "temperature": 0.0}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], want.as_str());
    assert_eq!(v["usage"]["prompt_tokens"], ptoks.len());
    // Streamed completion, echoing the prompt.
    let ev = post_stream(
        &format!("{url}/v1/completions"),
        &json!({"prompt": text, "max_tokens": 12, "temperature": 0.0, "stream": true, "echo": true}),
    );
    assert_eq!(stream_text(&ev, 1)[0], format!("{text}{want}"));
    // Token-id prompts are the same prompt.
    let (_, v) = post(
        &format!("{url}/v1/completions"),
        &json!({"prompt": ptoks, "max_tokens": 12, "temperature": 0.0}),
    );
    assert_eq!(v["choices"][0]["text"], want.as_str());
}

#[test]
fn stop_strings_logprobs_and_choices() {
    let reference = load();
    let srv = serve(|_| {});
    let url = format!("{}/v1/completions", srv.url());
    let text = "1, 2, 3, 4, 5,";
    let ptoks = reference.tok.encode(text, true, true);
    let (want, _) = greedy_reference(&reference, &ptoks, 20);
    // Stop at the first "9": the text before it, nothing after, finish "stop".
    let cut = want.find('9').expect("the model counts on past 9");
    let (_, v) = post(
        &url,
        &json!({"prompt": text, "max_tokens": 20, "temperature": 0, "stop": ["9", "never"]}),
    );
    assert_eq!(v["choices"][0]["text"], &want[..cut]);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    // Log-probs: the greedy token is the most likely one; top lists are sorted; probabilities
    // are below 1.
    let (_, v) = post(
        &url,
        &json!({"prompt": text, "max_tokens": 4, "temperature": 0, "logprobs": 3}),
    );
    let lp = &v["choices"][0]["logprobs"];
    let toks = lp["tokens"].as_array().unwrap();
    assert_eq!(toks.len(), 4);
    let joined: String = toks.iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(joined, v["choices"][0]["text"].as_str().unwrap());
    for (i, top) in lp["top_logprobs"].as_array().unwrap().iter().enumerate() {
        let top = top.as_object().unwrap();
        assert_eq!(top.len(), 3);
        let best = top
            .values()
            .map(|x| x.as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        let chosen = lp["token_logprobs"][i].as_f64().unwrap();
        assert!((best - chosen).abs() < 1e-6 && chosen <= 0.0, "{lp}");
    }

    // Chat log-probs and n choices with a seed: n distinct seeded streams, reproducible.
    let chat = format!("{}/v1/chat/completions", srv.url());
    let body = json!({
        "messages": [{"role": "user", "content": "Write a word."}],
        "n": 3, "seed": 7, "temperature": 1.0, "max_tokens": 8,
        "logprobs": true, "top_logprobs": 2,
    });
    let (s, a) = post(&chat, &body);
    assert_eq!(s, 200, "{a}");
    let (_, b) = post(&chat, &body);
    assert_eq!(a["choices"].as_array().unwrap().len(), 3);
    for i in 0..3 {
        assert_eq!(a["choices"][i]["message"], b["choices"][i]["message"]);
        let content = a["choices"][i]["logprobs"]["content"].as_array().unwrap();
        assert!(!content.is_empty());
        assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 2);
    }
}

#[test]
fn bad_requests_get_openai_errors() {
    let srv = serve(|a| {
        a.ctx_size = Some(64);
        a.max_body = 1 << 20;
    });
    let chat = format!("{}/v1/chat/completions", srv.url());
    let msgs = json!([{"role": "user", "content": "hi"}]);
    let (s, v) = post_raw(&chat, "{\"messages\": [", None);
    assert_error(s, &v, 400, None, "not valid JSON");
    let (s, v) = post_raw(&chat, "[1, 2]", None);
    assert_error(s, &v, 400, None, "JSON object");
    let (s, v) = post_raw(&chat, "{\"messages\": \"\u{ff}\"}", None);
    assert_error(s, &v, 400, Some("messages"), "messages");
    // Invalid UTF-8 bytes in the body.
    let r = ureq::post(&chat)
        .set("Content-Type", "application/json")
        .send_bytes(b"{\"messages\": \"\xff\xfe\"}");
    match r {
        Err(ureq::Error::Status(400, resp)) => {
            let v: Value = resp.into_json().unwrap();
            assert_error(400, &v, 400, None, "not valid JSON");
        }
        other => panic!("invalid UTF-8: {other:?}"),
    }
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"messages": msgs, "temperature": "hot"}),
            "temperature",
            "number",
        ),
        (
            json!({"messages": msgs, "temperature": 7}),
            "temperature",
            "from 0 to 2",
        ),
        (json!({"messages": msgs, "model": 4}), "model", "string"),
        (json!({"messages": msgs, "n": 0}), "n", "n"),
        (json!({"messages": msgs, "n": 100000}), "n", "n"),
        (
            json!({"messages": msgs, "max_tokens": 0}),
            "max_tokens",
            "max_tokens",
        ),
        (
            json!({"messages": msgs, "max_tokens": -3}),
            "max_tokens",
            "max_tokens",
        ),
        (
            json!({"messages": msgs, "max_tokens": 1e300}),
            "max_tokens",
            "integer",
        ),
        (
            json!({"messages": msgs, "max_tokens": 100000}),
            "max_tokens",
            "max_tokens",
        ),
        (json!({"messages": msgs, "stop": 5}), "stop", "stop"),
        (json!({"messages": msgs, "top_k": -1}), "top_k", "top-k"),
        (
            json!({"messages": msgs, "logit_bias": {"999999": 1}}),
            "logit_bias",
            "token id",
        ),
        (
            json!({"messages": msgs, "top_logprobs": 3}),
            "top_logprobs",
            "logprobs",
        ),
        (json!({"messages": []}), "messages", "empty"),
        (
            json!({"messages": [{"content": "x"}]}),
            "messages[0].role",
            "role",
        ),
        (json!({"prompt": "x"}), "messages", "required"),
        (
            json!({"messages": msgs, "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object", "patternProperties": {"a": {}}}}}}),
            "response_format.json_schema",
            "schema",
        ),
        (
            json!({"messages": msgs, "response_format": {"type": "xml"}}),
            "response_format",
            "json_object",
        ),
        (
            json!({"messages": msgs, "grammar": "root ::= [a-"}),
            "grammar",
            "grammar",
        ),
        (
            json!({"messages": [{"role": "user", "content": "word ".repeat(200)}]}),
            "messages",
            "context holds 64",
        ),
    ];
    for (body, param, says) in cases {
        let (s, v) = post(&chat, &body);
        assert_eq!(s, 400, "{body} gave {v}");
        assert_error(s, &v, 400, Some(param), says);
    }
    let cmpl = format!("{}/v1/completions", srv.url());
    let (s, v) = post(&cmpl, &json!({"prompt": [1, 2, 99999999]}));
    assert_error(s, &v, 400, Some("prompt"), "token ids");
    let (s, v) = post(&cmpl, &json!({"prompt": ""}));
    assert_error(s, &v, 400, Some("prompt"), "empty");
    // Over the body limit: 413, in the same JSON shape, before the body is sent.
    let (s, v) = post_announced(srv.addr, "/v1/completions", 10 << 20);
    assert_error(s, &v, 413, None, "larger");
    let (s, body) = get(&format!("{}/v1/nothing", srv.url()));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_error(s, &v, 404, None, "no such endpoint");
    // The server still answers after all that; any model name is taken (a single-model
    // server, as llama-server), and the answer names the model it really is.
    let (s, v) = post(
        &chat,
        &json!({"messages": msgs, "max_tokens": 2, "model": "gpt-4o"}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["model"], "SmolLM2-135M-Instruct.Q4_1", "{v}");
}

#[test]
fn api_key_is_required_when_set() {
    let key_file = std::env::temp_dir().join(format!("cria-serve-key-{}", std::process::id()));
    std::fs::write(&key_file, "sekret-123\n").unwrap();
    let srv = serve(|a| a.api_key_file = Some(key_file.clone()));
    let url = format!("{}/v1/completions", srv.url());
    let body = r#"{"prompt": "Hi", "max_tokens": 1}"#;
    let (s, v) = post_raw(&url, body, None);
    assert_error(s, &v, 401, None, "API key");
    let (s, v) = post_raw(&url, body, Some("wrong"));
    assert_error(s, &v, 401, None, "incorrect");
    let (s, v) = post_raw(&url, body, Some("sekret-123"));
    assert_eq!(s, 200, "{v}");
    // /health stays open for probes.
    assert_eq!(get(&format!("{}/health", srv.url())).0, 200);
    assert_eq!(get(&format!("{}/v1/models", srv.url())).0, 401);
    std::fs::remove_file(&key_file).unwrap();
}

#[test]
fn models_health_metrics_tokenize() {
    let reference = load();
    let srv = serve(|_| {});
    let url = srv.url();
    let (s, body) = get(&format!("{url}/v1/models"));
    assert_eq!(s, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"][0]["id"], "SmolLM2-135M-Instruct.Q4_1");
    assert_eq!(v["data"][0]["meta"]["n_vocab"], 49152);
    let (s, body) = get(&format!("{url}/health"));
    assert_eq!((s, body.as_str()), (200, r#"{"status":"ok"}"#));

    let text = "Hello world, <|im_start|>ok";
    let (s, v) = post(&format!("{url}/tokenize"), &json!({"content": text}));
    assert_eq!(s, 200);
    let ids: Vec<u32> = serde_json::from_value(v["tokens"].clone()).unwrap();
    assert_eq!(ids, reference.tok.encode(text, false, true));
    let (_, v) = post(&format!("{url}/detokenize"), &json!({"tokens": ids}));
    assert_eq!(v["content"], text);
    let (_, v) = post(
        &format!("{url}/tokenize"),
        &json!({"content": "Hi there", "with_pieces": true}),
    );
    assert_eq!(v["tokens"][1]["piece"], " there");

    let (_, _) = post(
        &format!("{url}/v1/completions"),
        &json!({"prompt": "One", "max_tokens": 3, "temperature": 0, "ignore_eos": true}),
    );
    let (s, m) = get(&format!("{url}/metrics"));
    assert_eq!(s, 200);
    let value = |name: &str| -> f64 {
        m.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .unwrap_or_else(|| panic!("{name} missing in\n{m}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(value("cria_tokens_generated_total"), 3.0);
    assert_eq!(value("cria_requests_total{endpoint=\"completion\"}"), 1.0);
    assert_eq!(value("cria_time_to_first_token_seconds_count"), 1.0);
    assert_eq!(value("cria_slots"), 4.0);
    assert!(m.contains("# TYPE cria_queue_depth gauge"));
}

#[test]
fn embeddings_are_normalized_mean_pooled_hidden_states() {
    let reference = load();
    let srv = serve(|_| {});
    let url = format!("{}/v1/embeddings", srv.url());
    let inputs = ["The cat sat on the mat.", "Quantum chromodynamics"];
    let (s, v) = post(&url, &json!({"input": inputs}));
    assert_eq!(s, 200, "{v}");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    // Reference: the final-normed hidden states of the whole input, averaged, unit length.
    let m = &reference.model;
    for (i, text) in inputs.iter().enumerate() {
        let ids = reference.tok.encode(text, true, true);
        let mut kv = cria_model::KvCache::new(m, 64);
        let mut s = cria_model::Scratch::new(m, 64, cria_model::Logits::Hidden);
        cria_model::forward(
            m,
            &reference.backend,
            &ids,
            0,
            &mut kv,
            &mut s,
            cria_model::Logits::Hidden,
        )
        .unwrap();
        let dim = m.config.dim;
        let mut mean = vec![0f64; dim];
        for row in s.hidden().chunks(dim) {
            mean.iter_mut().zip(row).for_each(|(a, &b)| *a += b as f64);
        }
        let norm = mean.iter().map(|x| x * x).sum::<f64>().sqrt();
        let got: Vec<f64> = serde_json::from_value(data[i]["embedding"].clone()).unwrap();
        assert_eq!(got.len(), dim);
        let len: f64 = got.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((len - 1.0).abs() < 1e-5, "norm {len}");
        for (g, w) in got.iter().zip(&mean) {
            assert!((g - w / norm).abs() < 1e-5);
        }
    }
    // base64 (the openai client's default) carries the same floats.
    let (_, b) = post(
        &url,
        &json!({"input": inputs[0], "encoding_format": "base64"}),
    );
    let b64 = b["data"][0]["embedding"].as_str().unwrap();
    let floats: Vec<f64> = serde_json::from_value(data[0]["embedding"].clone()).unwrap();
    assert_eq!(b64.len(), (floats.len() * 4).div_ceil(3) * 4);
}

#[test]
fn json_schema_output_is_valid_json() {
    let srv = serve(|_| {});
    let url = format!("{}/v1/chat/completions", srv.url());
    let schema = json!({
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": false,
    });
    let (s, v) = post(
        &url,
        &json!({
            "messages": [{"role": "user", "content": "Give me a person as JSON."}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": true}},
            "temperature": 0, "max_tokens": 60,
        }),
    );
    assert_eq!(s, 200, "{v}");
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    let p: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert!(p["name"].is_string() && p["age"].is_i64(), "{p}");
    assert_eq!(p.as_object().unwrap().len(), 2);
    let (_, v) = post(
        &url,
        &json!({
            "messages": [{"role": "user", "content": "List three fruits."}],
            "response_format": {"type": "json_object"},
            "temperature": 0, "max_tokens": 60,
        }),
    );
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    if v["choices"][0]["finish_reason"] == "stop" {
        serde_json::from_str::<Value>(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    }
}
