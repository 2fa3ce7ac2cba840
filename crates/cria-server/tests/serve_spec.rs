//! `cria serve --lookup` / `--draft-model`: requests batched in several slots give the same text
//! as a server without speculation (greedy and seeded sampling; drafts of several slots verified
//! in one forward).

mod common;

use common::*;
use serde_json::json;
use std::sync::Arc;

/// The answers of `reqs`, sent at once.
fn answers(url: &str, reqs: &[serde_json::Value]) -> Vec<String> {
    let chat = Arc::new(format!("{url}/v1/chat/completions"));
    let hs: Vec<_> = reqs
        .iter()
        .cloned()
        .map(|r| {
            let chat = chat.clone();
            std::thread::spawn(move || {
                let (s, v) = post(&chat, &r);
                assert_eq!(s, 200, "{v}");
                v["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
        })
        .collect();
    hs.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn speculation_does_not_change_served_text() {
    let msg = |text: &str, extra: serde_json::Value| {
        let mut r = json!({
            "messages": [{"role": "user", "content": text}],
            "max_tokens": 32, "ignore_eos": true,
        });
        r.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        r
    };
    let reqs = vec![
        msg(
            "Repeat exactly: the quick brown fox jumps over the lazy dog, twice.",
            json!({"temperature": 0}),
        ),
        msg(
            "Count from one to twenty in words.",
            json!({"temperature": 0}),
        ),
        msg(
            "Tell me a short story about a fox.",
            json!({"temperature": 0.9, "seed": 5}),
        ),
    ];
    let plain = {
        let srv = serve(|a| a.parallel = 3);
        answers(&srv.url(), &reqs)
    };
    let model = model_path();
    for spec in ["lookup", "draft"] {
        let srv = serve(|a| {
            a.parallel = 3;
            a.spec.draft_fixed = true;
            if spec == "lookup" {
                a.spec.lookup = Some(6);
            } else {
                a.spec.draft_model = Some(model.display().to_string());
                a.spec.draft_max = Some(4);
            }
        });
        let got = answers(&srv.url(), &reqs);
        assert_eq!(plain, got, "--{spec} changed the served text");
    }
}
