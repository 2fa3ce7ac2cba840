//! Chat templates against transformers: every case in tests/fixtures/template_cases.json was
//! rendered by transformers' `render_jinja_template` (what `apply_chat_template` calls) by
//! tests/gen_template_fixtures.py; cria must produce the same bytes, or fail where it failed with
//! the same message.

use std::path::PathBuf;

use cria_engine::template::{render, ChatTemplate, Message};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn load() -> serde_json::Value {
    let path = fixtures().join("template_cases.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run tests/gen_template_fixtures.py)",
            path.display()
        )
    });
    serde_json::from_str(&text).expect("fixture is JSON")
}

fn messages(v: &serde_json::Value) -> Vec<Message> {
    serde_json::from_value(v.clone()).expect("conversation is a list of {role, content}")
}

/// Show where two strings first differ, for a readable failure.
fn first_difference(a: &str, b: &str) -> String {
    let i = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    let lo = i.saturating_sub(40);
    let clip = |s: &str| {
        let mut hi = (i + 40).min(s.len());
        while !s.is_char_boundary(hi) {
            hi -= 1;
        }
        let mut l = lo.min(hi);
        while !s.is_char_boundary(l) {
            l -= 1;
        }
        format!("{:?}", &s[l..hi])
    };
    format!(
        "first difference at byte {i}:\n  cria:         {}\n  transformers: {}",
        clip(a),
        clip(b)
    )
}

#[test]
fn templates_match_transformers() {
    let doc = load();
    let convs = &doc["conversations"];
    let cases = doc["cases"].as_array().expect("cases");
    assert!(cases.len() >= 80, "only {} cases", cases.len());
    let mut failures = Vec::new();
    let mut n_ok = 0;
    let mut n_err = 0;
    for case in cases {
        let name = case["template"].as_str().unwrap();
        let conv = case["conversation"].as_str().unwrap();
        let agp = case["add_generation_prompt"].as_bool().unwrap();
        let label = format!("{name}/{conv}/agp={agp}/tools={}", !case["tools"].is_null());
        let src =
            std::fs::read_to_string(fixtures().join(format!("templates/{name}.jinja"))).unwrap();
        let tools = if case["tools"].is_null() {
            None
        } else {
            Some(&case["tools"])
        };
        let got = render(
            &src,
            &messages(&convs[conv]),
            agp,
            case["bos_token"].as_str().unwrap(),
            case["eos_token"].as_str().unwrap(),
            tools,
        );
        match (got, case.get("expected"), case.get("error")) {
            (Ok(text), Some(want), _) => {
                let want = want.as_str().unwrap();
                if text == want {
                    n_ok += 1;
                } else {
                    failures.push(format!("{label}: {}", first_difference(&text, want)));
                }
            }
            (Err(e), None, Some(want)) => {
                // "TemplateError: <message>": the template's own message must come through.
                let want = want.as_str().unwrap();
                let msg = want.split_once(": ").map_or(want, |(_, m)| m);
                if e.to_string().contains(msg) {
                    n_err += 1;
                } else {
                    failures.push(format!("{label}: error {e} lacks {msg:?}"));
                }
            }
            (Ok(text), None, _) => {
                failures.push(format!("{label}: rendered {text:?}, transformers failed"))
            }
            (Err(e), Some(_), _) => failures.push(format!("{label}: failed: {e}")),
            (Err(_), None, None) => {
                failures.push(format!("{label}: fixture has neither output nor error"))
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert!(n_err >= 10, "only {n_err} error cases checked");
    eprintln!("{n_ok} outputs byte-identical, {n_err} errors matched");
}

#[test]
fn smollm2_template_from_fixture_renders_default_system_prompt() {
    // The template stored from the model's GGUF: a conversation without a system turn gets
    // SmolLM's default one, and the generation prompt opens an assistant turn.
    let src = std::fs::read_to_string(fixtures().join("templates/smollm2.jinja")).unwrap();
    let t = ChatTemplate::new(&src).unwrap();
    let out = t
        .render(
            &[Message::new("user", "Hi")],
            true,
            "<|im_start|>",
            "<|im_end|>",
            None,
        )
        .unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn error_messages_are_clear() {
    let src = std::fs::read_to_string(fixtures().join("templates/llama2.jinja")).unwrap();
    let msgs = [Message::new("user", "a"), Message::new("user", "b")];
    let err = render(&src, &msgs, true, "<s>", "</s>", None)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("chat template error (line 1): "), "{err}");
    assert!(
        err.contains("Conversation roles must alternate user/assistant/user/assistant/..."),
        "{err}"
    );
    // A syntax error names the line it is on.
    let err = ChatTemplate::new("line one\n{% if x %}\n{{ y }")
        .unwrap_err()
        .to_string();
    assert!(err.contains("(line 3): syntax error"), "{err}");
    eprintln!("{err}");
}
