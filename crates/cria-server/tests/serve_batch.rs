//! Continuous batching: a seeded request gives the same text alone and batched with others, a
//! client that goes away mid-stream frees its slot at once, and embedding inputs are read beside
//! the generations (and dropped when their client leaves).

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

fn metric(url: &str, name: &str) -> f64 {
    let (_, m) = get(&format!("{url}/metrics"));
    m.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("{name} missing"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn seeded_text_is_the_same_alone_and_batched() {
    let srv = serve(|a| a.parallel = 4);
    let url = srv.url();
    let chat = format!("{url}/v1/chat/completions");
    let cmpl = format!("{url}/v1/completions");
    // Sampled (not greedy) with a seed: the random stream and the logits must both be the same.
    let target = json!({
        "messages": [{"role": "user", "content": "Tell me a short story about a fox."}],
        "temperature": 0.9, "top_k": 0, "top_p": 1.0, "min_p": 0.0,
        "seed": 42, "max_tokens": 40, "ignore_eos": true,
    });
    let (s, alone) = post(&chat, &target);
    assert_eq!(s, 200, "{alone}");
    let alone = alone["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(alone.len() > 40, "{alone:?}");

    // The same request among others that differ in prompt, length and seed, some of them
    // reading long prompts while it generates (prompt chunks and decode steps share batches).
    let long = "The history of the region is long and complicated. ".repeat(30);
    let others = vec![
        (
            cmpl.clone(),
            json!({"prompt": long, "max_tokens": 30, "seed": 1, "temperature": 1.0}),
        ),
        (
            chat.clone(),
            json!({"messages": [{"role": "user", "content": "Count to ten."}], "max_tokens": 50, "seed": 2}),
        ),
        (
            cmpl.clone(),
            json!({"prompt": "Once upon a time", "max_tokens": 60, "temperature": 0.7, "seed": 3, "n": 2}),
        ),
        (
            chat.clone(),
            json!({"messages": [{"role": "user", "content": "Why is the sky blue?"}], "max_tokens": 25, "temperature": 0}),
        ),
    ];
    for round in 0..2 {
        let go = Arc::new(Barrier::new(others.len() + 1));
        let mut hs = Vec::new();
        for (u, b) in others.clone() {
            let go = go.clone();
            hs.push(std::thread::spawn(move || {
                go.wait();
                let (s, v) = post(&u, &b);
                assert_eq!(s, 200, "{v}");
            }));
        }
        let (t_url, t_body) = (chat.clone(), target.clone());
        let go2 = go.clone();
        let t = std::thread::spawn(move || {
            go2.wait();
            // Start a little after the others in the second round, so it joins running batches.
            if round == 1 {
                std::thread::sleep(Duration::from_millis(300));
            }
            if round == 0 {
                let (_, v) = post(&t_url, &t_body);
                v["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap()
                    .to_string()
            } else {
                let mut b = t_body;
                b["stream"] = json!(true);
                stream_text(&post_stream(&t_url, &b), 1).remove(0)
            }
        });
        for h in hs {
            h.join().unwrap();
        }
        let batched = t.join().unwrap();
        assert_eq!(batched, alone, "round {round}: batched text differs");
    }
    // The batches really were shared: more tokens than steps.
    assert!(metric(&url, "cria_batch_tokens_total") > metric(&url, "cria_batch_steps_total"));
}

/// Starts a streamed completion of 1500 tokens; the function returns its next event's data.
fn endless_stream(url: &str) -> impl FnMut() -> String {
    let body = json!({
        "prompt": "Write forever:", "max_tokens": 1500, "ignore_eos": true, "stream": true,
    });
    let resp = ureq::post(&format!("{url}/v1/completions"))
        .set("Content-Type", "application/json")
        .send_string(&body.to_string())
        .unwrap();
    let mut lines = BufReader::new(resp.into_reader()).lines();
    move || loop {
        let l = lines.next().expect("stream open").unwrap();
        if let Some(d) = l.strip_prefix("data: ") {
            return d.to_string();
        }
    }
}

#[test]
fn disconnect_mid_stream_frees_the_slot() {
    // One slot: if the abandoned stream kept it, the next request would wait ~1500 tokens.
    let srv = serve(|a| {
        a.parallel = 1;
        a.ctx_size = Some(2048);
    });
    let url = srv.url();
    let mut next_event = endless_stream(&url);
    for _ in 0..3 {
        next_event();
    }
    drop(next_event); // the client goes away
                      // A deadline only against a hang (no speed is asserted): the slot must be freed at all.
    let t0 = Instant::now();
    while metric(&url, "cria_requests_cancelled_total") < 1.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the abandoned stream still holds its slot"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(metric(&url, "cria_slots_busy"), 0.0);
    let (s, v) = post(
        &format!("{url}/v1/completions"),
        &json!({"prompt": "Hello", "max_tokens": 4}),
    );
    assert_eq!(s, 200, "{v}");
    assert!(v["choices"][0]["text"].is_string());
    let _: Value = v;
}

/// An embedding batch of long inputs: `n` inputs of about `words` tokens each.
fn long_inputs(n: usize, words: usize) -> Value {
    let inputs: Vec<String> = (0..n)
        .map(|i| format!("{i} {}", "lorem ipsum dolor sit amet ".repeat(words / 5)))
        .collect();
    json!({ "input": inputs })
}

#[test]
fn generations_stream_while_a_long_embedding_batch_is_read() {
    let srv = serve(|a| {
        a.parallel = 2;
        a.ctx_size = Some(2048);
    });
    let url = srv.url();
    let mut next_event = endless_stream(&url);
    next_event();
    // 4 inputs of ~1000 tokens: some 4000 tokens to read in the one free slot.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let embed = {
        let (url, done) = (url.clone(), done.clone());
        std::thread::spawn(move || {
            let r = post(&format!("{url}/v1/embeddings"), &long_inputs(4, 1000));
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            r
        })
    };
    // Wait until the embedding has its slot, then count the tokens that arrive before it ends.
    while metric(&url, "cria_slots_busy") < 2.0 {
        assert!(
            !done.load(std::sync::atomic::Ordering::SeqCst),
            "embedding never seen"
        );
        next_event();
    }
    let mut during = 0;
    while !done.load(std::sync::atomic::Ordering::SeqCst) {
        let e = next_event();
        assert_ne!(e, "[DONE]", "the generation ended first");
        during += 1;
    }
    let (s, v) = embed.join().unwrap();
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"].as_array().unwrap().len(), 4);
    assert!(
        v["usage"]["prompt_tokens"].as_u64().unwrap() > 3500,
        "{}",
        v["usage"]
    );
    assert!(
        during >= 3,
        "only {during} tokens streamed while the embedding batch was read"
    );
}

#[test]
fn an_embedding_client_that_leaves_frees_its_slot() {
    use std::io::Write;
    let srv = serve(|a| {
        a.parallel = 1;
        a.ctx_size = Some(2048);
    });
    let url = srv.url();
    let body = long_inputs(32, 1000).to_string();
    let mut c = std::net::TcpStream::connect(srv.addr).unwrap();
    write!(
        c,
        "POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut polls = 0;
    while metric(&url, "cria_slots_busy") < 1.0 {
        polls += 1;
        assert!(polls < 10_000, "the embedding never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(c); // the client goes away while its inputs are being read
    polls = 0;
    while metric(&url, "cria_requests_cancelled_total") < 1.0
        || metric(&url, "cria_slots_busy") > 0.0
    {
        polls += 1;
        assert!(
            polls < 3_000,
            "the abandoned embedding still holds its slot"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (s, v) = post(
        &format!("{url}/v1/completions"),
        &json!({"prompt": "Hello", "max_tokens": 4}),
    );
    assert_eq!(s, 200, "{v}");
}
