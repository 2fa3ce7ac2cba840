//! What the server lets in: the `Host` check, the JSON content type, CORS, the bearer scheme,
//! HEAD; the bounds on every field that sizes memory or work (a 400 naming the field); and
//! grammar compilation kept off the threads that serve HTTP.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

/// Sends `head` (the request line and headers, without the blank line) and `body`; returns the
/// status, the headers (lower case) and the body.
fn raw(addr: SocketAddr, head: &str, body: &str) -> (u16, String, String) {
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let req = format!(
        "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    c.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (h, b) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = h[9..12].parse().unwrap();
    (status, h.to_ascii_lowercase(), b.to_string())
}

const CHAT: &str = r#"{"messages":[{"role":"user","content":"Hi"}],"max_tokens":1}"#;

#[test]
fn host_content_type_cors_bearer_and_head() {
    let srv = serve(|a| {
        a.cors = vec!["https://app.example".into()];
        a.api_key = Some("k3y".into());
    });
    let a = srv.addr;
    let post = |host: &str, extra: &str| {
        raw(
            a,
            &format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: bearer k3y{extra}"
            ),
            CHAT,
        )
    };
    let json_ct = "\r\nContent-Type: application/json";
    // A page on another name that resolves to 127.0.0.1 (DNS rebinding): 403.
    let (s, _, b) = post("evil.example:8080", json_ct);
    assert_eq!(s, 403, "{b}");
    assert!(b.contains("allowed-host"), "{b}");
    // Loopback names pass, and the bearer scheme is read in any case.
    for host in ["127.0.0.1:1", "localhost", "[::1]:8080"] {
        let (s, _, b) = post(host, json_ct);
        assert_eq!(s, 200, "{host}: {b}");
    }
    // A form or text/plain body (what a page can send cross-site without a preflight): 415.
    for ct in ["text/plain", "application/x-www-form-urlencoded"] {
        let (s, _, b) = post("localhost", &format!("\r\nContent-Type: {ct}"));
        assert_eq!(s, 415, "{ct}: {b}");
        assert!(b.contains("application/json"), "{b}");
    }
    let (s, _, b) = post("localhost", "");
    assert_eq!(s, 415, "no content type: {b}");
    // CORS only for the --cors origin: its requests get the header, and its preflight an answer.
    let (s, h, _) = post(
        "localhost",
        &format!("{json_ct}\r\nOrigin: https://app.example"),
    );
    assert_eq!(s, 200);
    assert!(
        h.contains("access-control-allow-origin: https://app.example"),
        "{h}"
    );
    let (s, h, _) = post(
        "localhost",
        &format!("{json_ct}\r\nOrigin: https://evil.example"),
    );
    assert_eq!(s, 200, "a non-browser client may send any Origin");
    assert!(!h.contains("access-control-allow-origin"), "{h}");
    let preflight = |origin: &str| {
        raw(
            a,
            &format!(
                "OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nOrigin: {origin}\r\n\
                 Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization, content-type"
            ),
            "",
        )
    };
    let (s, h, _) = preflight("https://app.example");
    assert_eq!(s, 204, "{h}");
    assert!(
        h.contains("access-control-allow-origin: https://app.example")
            && h.contains("access-control-allow-headers: authorization, content-type")
            && h.contains("post"),
        "{h}"
    );
    let (s, h, _) = preflight("https://evil.example");
    assert_eq!(s, 403, "{h}");
    assert!(!h.contains("access-control-allow-origin"), "{h}");
    // HEAD is GET without a body.
    for path in ["/health", "/"] {
        let (s, h, b) = raw(a, &format!("HEAD {path} HTTP/1.1\r\nHost: localhost"), "");
        assert_eq!(s, 200, "HEAD {path}: {h}");
        assert!(b.is_empty(), "HEAD {path} has a body: {b}");
    }
}

#[test]
fn no_cors_headers_without_the_flag() {
    let srv = serve(|_| {});
    let (s, h, _) = raw(
        srv.addr,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nOrigin: https://app.example",
        CHAT,
    );
    assert_eq!(s, 200);
    assert!(!h.contains("access-control"), "{h}");
    let (s, _, _) = raw(
        srv.addr,
        "OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: https://app.example",
        "",
    );
    assert_eq!(s, 403);
}

fn assert_param(r: (u16, Value), param: &str, says: &str) {
    let (s, v) = r;
    assert_eq!(s, 400, "{param}: {v}");
    assert_eq!(v["error"]["param"], param, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains(says), "{msg:?} should say {says:?}");
}

#[test]
fn every_field_that_sizes_work_is_bounded() {
    let srv = serve(|a| a.ctx_size = Some(4096));
    let url = srv.url();
    let chat = format!("{url}/v1/chat/completions");
    let msgs = json!([{"role": "user", "content": "Hi"}]);
    let with = |k: &str, v: Value| {
        let mut b = json!({"messages": msgs, "max_tokens": 1});
        b[k] = v;
        b
    };
    // /tokenize: a megabyte of text at most; /detokenize: 131072 tokens.
    let big = "a ".repeat(600_000);
    assert_param(
        post(
            &format!("{url}/tokenize"),
            &json!({"content": big, "with_pieces": true}),
        ),
        "content",
        "at most 1048576",
    );
    assert_param(
        post(
            &format!("{url}/detokenize"),
            &json!({"tokens": vec![1; 131_073]}),
        ),
        "tokens",
        "at most 131072",
    );
    // Within the bound, pieces come back in the same shape as before.
    let (s, v) = post(
        &format!("{url}/tokenize"),
        &json!({"content": "Hi \u{1F600}", "with_pieces": true}),
    );
    assert_eq!(s, 200, "{v}");
    let toks = v["tokens"].as_array().unwrap();
    assert!(
        toks.iter()
            .all(|t| t["id"].is_u64() && !t["piece"].is_null()),
        "{v}"
    );
    let (s, plain) = post(&format!("{url}/tokenize"), &json!({"content": "Hi there"}));
    assert_eq!(s, 200);
    assert!(
        plain["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .all(Value::is_u64),
        "{plain}"
    );
    // Chat fields.
    let many: Vec<Value> = (0..4097)
        .map(|_| json!({"role": "user", "content": "x"}))
        .collect();
    assert_param(
        post(&chat, &json!({"messages": many})),
        "messages",
        "at most 4096",
    );
    assert_param(
        post(&chat, &with("stop", json!(["x".repeat(1025)]))),
        "stop",
        "1024 bytes",
    );
    let bias: serde_json::Map<String, Value> =
        (0..1025).map(|i| (i.to_string(), json!(1))).collect();
    assert_param(
        post(&chat, &with("logit_bias", json!(bias))),
        "logit_bias",
        "at most 1024",
    );
    assert_param(
        post(&chat, &with("samplers", json!(vec!["top_k"; 257]))),
        "samplers",
        "at most 256",
    );
    // n x max_tokens x (1 + top_logprobs) log-probs kept or queued for one answer: bounded.
    let mut b = with("n", json!(64));
    b["max_tokens"] = json!(4000);
    b["logprobs"] = json!(true);
    b["top_logprobs"] = json!(20);
    assert_param(post(&chat, &b), "top_logprobs", "more log-probs");
    b["stream"] = json!(true);
    assert_param(post(&chat, &b), "top_logprobs", "more log-probs");
    let cmpl = format!("{url}/v1/completions");
    assert_param(
        post(
            &cmpl,
            &json!({"prompt": vec!["a"; 64], "max_tokens": 4000, "logprobs": 5}),
        ),
        "logprobs",
        "more log-probs",
    );
    // A prompt of token ids longer than the context is refused before it is read.
    assert_param(
        post(&cmpl, &json!({"prompt": vec![1; 5000]})),
        "prompt",
        "longer than the context",
    );
    assert_param(
        post(&cmpl, &json!({"prompt": vec!["a"; 129]})),
        "prompt",
        "at most 128",
    );
    // Still serving.
    let (s, v) = post(&chat, &with("max_tokens", json!(2)));
    assert_eq!(s, 200, "{v}");
}

#[test]
fn grammar_errors_are_400_and_compilation_is_off_the_http_threads() {
    let srv = serve(|_| {});
    let chat = format!("{}/v1/chat/completions", srv.url());
    let msgs = json!([{"role": "user", "content": "Hi"}]);
    // A grammar reference to a token the vocabulary does not have: found when matching starts.
    let (s, v) = post(
        &chat,
        &json!({"messages": msgs, "max_tokens": 1, "grammar": "root ::= <[no-such-token]>"}),
    );
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["param"], "grammar", "{v}");
    // Grammars that take a while to compile, several at once: /health and an unconstrained chat
    // are answered while they are still running (the HTTP threads are not the ones compiling).
    let alts: Vec<String> = (0..40_000).map(|i| format!("\"w{i}x\"")).collect();
    let grammar = format!("root ::= ({})+", alts.join(" | "));
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let (chat, g, msgs) = (chat.clone(), grammar.clone(), msgs.clone());
            std::thread::spawn(move || {
                post(
                    &chat,
                    &json!({"messages": msgs, "max_tokens": 2, "grammar": g}),
                )
                .0
            })
        })
        .collect();
    // Between two scrapes that both see compilations running, /health and the token count of a
    // text are answered: the HTTP threads are free while grammars compile.
    let running = || metric(&srv.url(), "cria_grammar_compilations ");
    let mut polls = 0;
    while running() < 1.0 {
        polls += 1;
        assert!(polls < 100_000, "no compilation was ever seen running");
    }
    let health = get(&format!("{}/health", srv.url()));
    let tok = post(
        &format!("{}/tokenize", srv.url()),
        &json!({"content": "Hi"}),
    );
    let still = running();
    assert_eq!((health.0, tok.0), (200, 200));
    assert!(
        still >= 1.0,
        "the compilations ended before /health was answered"
    );
    assert!(still <= 2.0, "at most 2 compilations at once, saw {still}");
    for h in slow {
        assert!(matches!(h.join().unwrap(), 200 | 400));
    }
}

fn metric(url: &str, name: &str) -> f64 {
    let (_, text) = get(&format!("{url}/metrics"));
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}
