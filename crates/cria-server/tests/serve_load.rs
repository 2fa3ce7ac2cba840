//! Load: 32 concurrent streaming clients on 8 slots (bounded: 32 requests of 24 tokens). Every
//! stream must be whole, in order, its own (one id, one choice index), and its text identical to
//! the same seeded request run alone. `throughput_figures` (ignored; run with --ignored
//! --nocapture) prints aggregate tokens/s and time to first token at 1, 4 and 8 clients.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

fn bodies(n: usize, max_tokens: usize) -> Vec<Value> {
    let topics = [
        "the sea",
        "a mountain",
        "bread",
        "a train",
        "winter",
        "a robot",
        "music",
        "a garden",
    ];
    (0..n)
        .map(|i| {
            json!({
                "messages": [{"role": "user", "content": format!("Write about {}.", topics[i % topics.len()])}],
                "temperature": 0.8, "seed": 100 + i, "max_tokens": max_tokens, "ignore_eos": true,
                "stream": true, "stream_options": {"include_usage": true},
            })
        })
        .collect()
}

/// One streamed request: (text, time to first content, chunks' ids and indices all consistent).
fn stream_one(url: &str, body: &Value) -> (String, Duration, usize) {
    let t0 = Instant::now();
    let resp = ureq::post(url)
        .send_string(&body.to_string())
        .expect("request");
    let mut text = String::new();
    let mut ttft = None;
    let mut id = None;
    let mut done = false;
    let mut tokens = 0;
    for line in BufReader::new(resp.into_reader()).lines() {
        let line = line.expect("stream cut");
        let Some(d) = line.strip_prefix("data: ") else {
            continue;
        };
        assert!(!done, "data after [DONE]");
        if d == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value = serde_json::from_str(d).expect("chunk is JSON");
        assert!(v.get("error").is_none(), "{v}");
        let this = v["id"].as_str().unwrap().to_string();
        assert_eq!(
            id.get_or_insert(this.clone()),
            &this,
            "chunks of two streams mixed"
        );
        if let Some(c) = v["choices"].get(0) {
            assert_eq!(c["index"], 0);
            if let Some(p) = c["delta"]["content"].as_str() {
                if !p.is_empty() && ttft.is_none() {
                    ttft = Some(t0.elapsed());
                }
                text.push_str(p);
            }
        } else {
            tokens = v["usage"]["completion_tokens"].as_u64().unwrap() as usize;
        }
    }
    assert!(done, "the stream ended without [DONE]");
    (text, ttft.unwrap_or_default(), tokens)
}

#[test]
fn thirty_two_streaming_clients_get_their_own_seeded_answers() {
    let srv = serve(|a| {
        a.parallel = 8;
        a.ctx_size = Some(256);
    });
    let url = format!("{}/v1/chat/completions", srv.url());
    let bs = bodies(8, 24);
    let alone: Vec<String> = bs.iter().map(|b| stream_one(&url, b).0).collect();
    let go = Arc::new(Barrier::new(32));
    let hs: Vec<_> = (0..32)
        .map(|k| {
            let (url, b, go) = (url.clone(), bs[k % 8].clone(), go.clone());
            std::thread::spawn(move || {
                go.wait();
                stream_one(&url, &b)
            })
        })
        .collect();
    for (k, h) in hs.into_iter().enumerate() {
        let (text, _, n) = h.join().expect("client thread");
        assert_eq!(n, 24);
        assert_eq!(
            text,
            alone[k % 8],
            "client {k}: text differs from the request alone"
        );
    }
    let (_, m) = get(&format!("{}/metrics", srv.url()));
    assert!(m.contains("cria_request_errors_total 0"), "{m}");
}

#[test]
#[ignore = "a measurement: prints figures"]
fn throughput_figures() {
    let srv = serve(|a| {
        a.parallel = 8;
        a.ctx_size = Some(512);
    });
    // LLAMA_SERVER_URL: the same clients against a running llama-server, side by side.
    let mut targets = vec![("cria", format!("{}/v1/chat/completions", srv.url()))];
    if let Ok(u) = std::env::var("LLAMA_SERVER_URL") {
        targets.push(("llama-server", format!("{u}/v1/chat/completions")));
    }
    for (name, url) in targets {
        println!("{name}:");
        measure(&url);
    }
}

fn measure(url: &str) {
    stream_one(url, &bodies(1, 8)[0]); // warm-up
    for clients in [1, 4, 8] {
        let bs = bodies(clients, 128);
        let t0 = Instant::now();
        let hs: Vec<_> = bs
            .into_iter()
            .map(|b| {
                let url = url.to_string();
                std::thread::spawn(move || stream_one(&url, &b))
            })
            .collect();
        let res: Vec<_> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        let wall = t0.elapsed().as_secs_f64();
        let tokens: usize = res.iter().map(|r| r.2).sum();
        let ttft = res.iter().map(|r| r.1.as_secs_f64()).sum::<f64>() / res.len() as f64;
        println!(
            "{clients} clients: {tokens} tokens in {wall:.2} s = {:.1} t/s aggregate, mean TTFT {:.0} ms",
            tokens as f64 / wall,
            ttft * 1e3
        );
    }
}

#[test]
#[ignore = "a measurement: prints figures"]
fn raw_batched_decode_figures() {
    // The forward alone, for comparison with the server's figures on the same machine.
    use cria_model::{forward_batch, KvCache, Logits, Scratch, SeqStep};
    let p = load();
    let m = &p.model;
    for n in [1usize, 4, 8] {
        let mut kvs: Vec<KvCache> = (0..n).map(|_| KvCache::new(m, 256)).collect();
        let mut s = Scratch::with_seqs(m, 64, n);
        let toks = vec![1u32; n];
        let t0 = Instant::now();
        for step in 0..64 {
            let mut seqs: Vec<SeqStep> = kvs
                .iter_mut()
                .enumerate()
                .map(|(i, kv)| SeqStep {
                    tokens: &toks[i..i + 1],
                    pos: step,
                    kv,
                })
                .collect();
            forward_batch(m, &p.backend, &mut seqs, &mut s, Logits::Last).unwrap();
        }
        let dt = t0.elapsed().as_secs_f64();
        println!(
            "raw forward_batch, {n} seqs: {:.1} t/s",
            (64 * n) as f64 / dt
        );
    }
}
