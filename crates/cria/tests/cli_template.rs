//! `cria template` against transformers: the real model's template (SmolLM2, read from the GGUF)
//! renders every fixture conversation byte for byte as transformers' `apply_chat_template` did
//! (crates/cria-engine/tests/fixtures/template_cases.json, made by gen_template_fixtures.py).

use std::path::Path;
use std::process::Command;

mod common;
use common::smol;

fn cria(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cria"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn template_command_matches_transformers() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../cria-engine/tests/fixtures/template_cases.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&fixtures).unwrap()).unwrap();
    let dir = std::env::temp_dir().join(format!("cria-template-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = smol();
    let mut checked = 0;
    for case in doc["cases"].as_array().unwrap() {
        if case["template"] != "smollm2" || !case["tools"].is_null() {
            continue;
        }
        let conv = case["conversation"].as_str().unwrap();
        let f = dir.join(format!("{conv}.json"));
        std::fs::write(
            &f,
            serde_json::json!({ "messages": doc["conversations"][conv] }).to_string(),
        )
        .unwrap();
        let mut args = vec![
            "template",
            "-m",
            model.to_str().unwrap(),
            "--messages",
            f.to_str().unwrap(),
        ];
        if !case["add_generation_prompt"].as_bool().unwrap() {
            args.push("--no-generation-prompt");
        }
        let out = cria(&args);
        let stdout = String::from_utf8(out.stdout).unwrap();
        match case.get("expected") {
            Some(want) => {
                assert!(
                    out.status.success(),
                    "{conv}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                assert_eq!(stdout, want.as_str().unwrap(), "{conv}");
            }
            None => assert!(
                !out.status.success(),
                "{conv}: transformers failed, cria did not"
            ),
        }
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} cases");

    // Bad input: a clear message and a failing exit code.
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\"messages\": [").unwrap();
    let out = cria(&[
        "template",
        "-m",
        model.to_str().unwrap(),
        "--messages",
        bad.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("malformed JSON"));
    std::fs::write(&bad, r#"{"messages": [{"content": "no role"}]}"#).unwrap();
    let out = cria(&[
        "template",
        "-m",
        model.to_str().unwrap(),
        "--messages",
        bad.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"role\""));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `cria template --tools` prints exactly what the server renders: both go through
/// `ChatFormat::render` (here with SmolLM2's template, which does not know tools: the generic
/// form), and an assistant tool-call turn with `content: null` is accepted.
#[test]
fn template_with_tools_is_the_servers_prompt() {
    let dir = std::env::temp_dir().join(format!("cria-template-tools-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let messages = serde_json::json!({"messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]});
    let tools = serde_json::json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let (mf, tf) = (dir.join("messages.json"), dir.join("tools.json"));
    std::fs::write(&mf, messages.to_string()).unwrap();
    std::fs::write(&tf, tools.to_string()).unwrap();
    let model = smol();
    let out = cria(&[
        "template",
        "-m",
        model.to_str().unwrap(),
        "--messages",
        mf.to_str().unwrap(),
        "--tools",
        tf.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();

    let g = cria_core::gguf::GgufFile::open(&model).unwrap();
    let tok = cria_tokenizer::Tokenizer::from_gguf(&g).unwrap();
    let msgs: Vec<cria_engine::template::Message> =
        serde_json::from_value(messages["messages"].clone()).unwrap();
    let want = cria_engine::tools::ChatFormat::new(tok.chat_template())
        .unwrap()
        .render(&msgs, Some(&tools), true, tok.bos_text(), tok.eos_text())
        .unwrap();
    assert_eq!(stdout, want);
    assert!(stdout.contains("You can call these tools:"), "{stdout}");
    assert!(
        stdout.contains(r#"{"tool_calls":[{"name":"get_weather","arguments":{"city":"Paris"}}]}"#),
        "{stdout}"
    );
    assert!(!stdout.contains("None"), "{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}
