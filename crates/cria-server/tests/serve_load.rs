//! Load: 1, 8, then 32 concurrent streaming clients on 8 slots for a bounded time (CRIA_LOAD_SECS,
//! default 60 s at 32 clients), each sending seeded 24-token requests back to back. Every stream
//! must be whole, in order, its own (one id, one choice index), and its text identical to the
//! same seeded request run alone; throughput and time to first token are printed per phase. `throughput_figures` (ignored; run with --ignored
//! --nocapture) prints aggregate tokens/s and time to first token at 1, 8 and 32 clients.

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
        .set("Content-Type", "application/json")
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

/// `clients` threads stream seeded requests back to back for `secs`; every answer must equal the
/// same request alone. Prints requests, tokens/s and time to first token; returns requests done.
fn phase(
    url: &str,
    alone: &Arc<Vec<String>>,
    bs: &Arc<Vec<Value>>,
    clients: usize,
    secs: f64,
) -> usize {
    let go = Arc::new(Barrier::new(clients));
    let t0 = Instant::now();
    let hs: Vec<_> = (0..clients)
        .map(|k| {
            let (url, bs, alone, go) = (url.to_string(), bs.clone(), alone.clone(), go.clone());
            std::thread::spawn(move || {
                go.wait();
                let start = Instant::now();
                let mut out = vec![];
                let mut i = k;
                while start.elapsed().as_secs_f64() < secs || out.is_empty() {
                    let (text, ttft, n) = stream_one(&url, &bs[i % bs.len()]);
                    assert_eq!(n, 24, "client {k}: tokens");
                    assert_eq!(
                        text,
                        alone[i % bs.len()],
                        "client {k}, request {}: text differs from the request alone",
                        out.len()
                    );
                    out.push((ttft, n));
                    i += clients;
                }
                out
            })
        })
        .collect();
    let res: Vec<(Duration, usize)> = hs
        .into_iter()
        .flat_map(|h| h.join().expect("client thread"))
        .collect();
    let wall = t0.elapsed().as_secs_f64();
    let tokens: usize = res.iter().map(|r| r.1).sum();
    let mut ttft: Vec<f64> = res.iter().map(|r| r.0.as_secs_f64() * 1e3).collect();
    ttft.sort_by(f64::total_cmp);
    eprintln!(
        "{clients:>2} clients, {wall:.0} s: {} requests, {tokens} tokens, {:.1} t/s aggregate; \
         time to first token median {:.0} ms, max {:.0} ms",
        res.len(),
        tokens as f64 / wall,
        ttft[ttft.len() / 2],
        ttft[ttft.len() - 1]
    );
    res.len()
}

/// 1, 8 and then 32 concurrent streaming clients (CRIA_LOAD_SECS, default 60, for the 32; a
/// sixth of it for 1 and 8) on 8 slots, each sending seeded 24-token requests back to back:
/// zero errors, every stream whole and its own, every text identical to the request alone.
#[test]
fn thirty_two_streaming_clients_get_their_own_seeded_answers() {
    let secs: f64 = std::env::var("CRIA_LOAD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60.0);
    let srv = serve(|a| {
        a.parallel = 8;
        a.ctx_size = Some(256);
    });
    let url = format!("{}/v1/chat/completions", srv.url());
    let bs = Arc::new(bodies(8, 24));
    let alone: Arc<Vec<String>> = Arc::new(bs.iter().map(|b| stream_one(&url, b).0).collect());
    let mut requests = 0;
    for (clients, t) in [(1, secs / 6.0), (8, secs / 6.0), (32, secs)] {
        requests += phase(&url, &alone, &bs, clients, t);
    }
    let (_, m) = get(&format!("{}/metrics", srv.url()));
    assert!(m.contains("cria_request_errors_total 0"), "{m}");
    assert!(m.contains("cria_requests_cancelled_total 0"), "{m}");
    assert!(requests >= 32 + 8 + 1);
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
    for clients in [1, 8, 32] {
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
                    lora: &[],
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
