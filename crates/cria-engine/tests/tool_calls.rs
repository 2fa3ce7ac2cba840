//! Tool calls: the lazy grammar (free until a trigger, then the call grammar, a trigger ending
//! inside a token, control-token triggers), the call grammars of each template family
//! (parallel or one call), reading calls back (cut answers), and the one prompt path.

use cria_engine::grammar::{self, LazyMatcher, TokenTable};
use cria_engine::sampler::{Sampler, SamplerConfig};
use cria_engine::template::Message;
use cria_engine::tools::{
    call_grammar, parse_calls, CallForm, CallSpec, ChatFormat, ToolCall, FALLBACK_TEMPLATE,
};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;

fn tools() -> serde_json::Value {
    json!([{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"]}}}])
}

fn spec(t: &serde_json::Value, parallel: bool) -> CallSpec<'_> {
    CallSpec {
        tools: t,
        only: None,
        parallel,
    }
}

/// A vocabulary of the given pieces plus a control token `<|python_tag|>` and an EOG token.
struct Vocab {
    pieces: Vec<Vec<u8>>,
    table: Arc<TokenTable>,
    tag: u32,
    eog: u32,
}

fn vocab(words: &[&str]) -> Vocab {
    let mut pieces: Vec<Vec<u8>> = words.iter().map(|w| w.as_bytes().to_vec()).collect();
    // Every printable ASCII character alone, so any text can be spelled.
    for c in 0x20u8..0x7F {
        if !pieces.contains(&vec![c]) {
            pieces.push(vec![c]);
        }
    }
    pieces.push(b"\n".to_vec());
    let tag = pieces.len() as u32;
    pieces.push(Vec::new());
    let eog = pieces.len() as u32;
    pieces.push(b"</s>".to_vec());
    let mut table = TokenTable::new(pieces.clone(), &[eog]);
    table.add_name("<|python_tag|>", tag);
    Vocab {
        pieces,
        table: Arc::new(table),
        tag,
        eog,
    }
}

impl Vocab {
    fn id(&self, p: &str) -> u32 {
        self.pieces
            .iter()
            .position(|x| x == p.as_bytes())
            .unwrap_or_else(|| panic!("no token {p:?}")) as u32
    }
}

#[test]
fn lazy_matcher_is_free_until_the_trigger_then_follows_the_grammar() {
    let v = vocab(&[
        "Hello",
        " world",
        "{\"",
        "tool_calls",
        "\":",
        " [{\"",
        "name",
        "{}",
    ]);
    let t = tools();
    let g = call_grammar(CallForm::Generic, spec(&t, true), false).unwrap();
    let mut m = LazyMatcher::new(g.clone(), v.table.clone(), CallForm::Generic.triggers()).unwrap();
    // Waiting: every token is allowed, EOG included, and nothing is masked.
    assert!(!m.is_active() && m.can_continue());
    for tok in ["Hello", "x", "}", "{\""] {
        assert!(m.allows(v.id(tok)), "{tok}");
    }
    assert!(m.allows(v.eog));
    // Leading whitespace does not start it; the `{` of `{"` (trigger inside a token) does, and
    // the grammar is fed `{"` from the trigger on.
    m.accept(v.id(" ")).unwrap();
    assert!(!m.is_active());
    m.accept(v.id("{\"")).unwrap();
    assert!(m.is_active());
    assert!(m.allows(v.id("tool_calls")) && !m.allows(v.id("name")) && !m.allows(v.eog));
    assert!(!m.allows(v.id("Hello")));
    for tok in ["tool_calls", "\":", " [{\"", "name"] {
        m.accept(v.id(tok)).unwrap();
    }
    assert!(m.accept(v.id("}")).is_err(), "not a call");

    // `{` only counts at the start: after text, the answer stays free to the end.
    let mut m = LazyMatcher::new(g.clone(), v.table.clone(), CallForm::Generic.triggers()).unwrap();
    for tok in ["Hello", "{\"", "}", "Hello"] {
        m.accept(v.id(tok)).unwrap();
        assert!(!m.is_active());
    }
    m.accept(v.eog).unwrap();

    // The token that completes the trigger goes on with text the grammar refuses: an error,
    // the caller stops there.
    let mut m = LazyMatcher::new(g.clone(), v.table.clone(), CallForm::Generic.triggers()).unwrap();
    assert!(m.accept(v.id("{}")).is_err());

    // No triggers: active from the first token.
    let m = LazyMatcher::new(g, v.table.clone(), vec![]).unwrap();
    assert!(m.is_active() && !m.allows(v.id("Hello")) && m.allows(v.id("{\"")));
}

#[test]
fn lazy_matcher_samples_a_whole_call_that_conforms() {
    // Start the call by hand (free text could be anything), then let the grammar pick every
    // token; the result must parse as a call under the schema.
    let v = vocab(&[
        "{\"",
        "tool_calls",
        "\":",
        " [",
        "{\"name\": \"get_weather\"",
    ]);
    let t = tools();
    let g = call_grammar(CallForm::Generic, spec(&t, false), false).unwrap();
    let mut m = LazyMatcher::new(g.clone(), v.table.clone(), CallForm::Generic.triggers()).unwrap();
    let mut out = String::from("{\"");
    m.accept(v.id("{\"")).unwrap();
    let mut s = Sampler::new(
        SamplerConfig {
            seed: 7,
            ..Default::default()
        },
        v.pieces.len(),
    );
    // Closing tokens likelier, so that strings end soon.
    let mut logits = vec![0.0f32; v.pieces.len()];
    for tok in ["\"", "}", "]", "{\"name\": \"get_weather\""] {
        logits[v.id(tok) as usize] = 4.0;
    }
    logits[v.eog as usize] = 4.0;
    for _ in 0..400 {
        let tok = grammar::sample(&mut s, &m, &logits);
        m.accept(tok).unwrap();
        if tok == v.eog {
            break;
        }
        out.push_str(std::str::from_utf8(&v.pieces[tok as usize]).unwrap());
        if !m.can_continue() {
            break;
        }
    }
    assert!(m.matcher().is_complete(), "{out}");
    assert!(g.accepts(&out), "{out}");
    let p = parse_calls(CallForm::Generic, &out, &["get_weather".into()], false).unwrap();
    assert!(p.complete && p.calls.len() == 1, "{out}");
    let args: serde_json::Value = serde_json::from_str(&p.calls[0].arguments).unwrap();
    assert!(args["city"].is_string(), "{out}");
}

#[test]
fn llama31_and_hermes_triggers() {
    let v = vocab(&[
        "Sure",
        "<tool",
        "_call>",
        "\n{\"name\": ",
        "{\"name\"",
        "\":",
        "name",
    ]);
    let t = tools();
    let names = vec!["get_weather".to_string()];
    // LLaMA 3.1: the control token starts the grammar (fed nothing of it) ...
    let g = call_grammar(CallForm::Llama31, spec(&t, true), false).unwrap();
    let mut m = LazyMatcher::new(g.clone(), v.table.clone(), CallForm::Llama31.triggers()).unwrap();
    m.accept(v.id("Sure")).unwrap();
    assert!(!m.is_active());
    m.accept(v.tag).unwrap();
    assert!(m.is_active() && m.allows(v.id("{\"name\"")) && !m.allows(v.id("Sure")));
    // ... and so does `{"name"` at the start, kept.
    let mut m = LazyMatcher::new(g.clone(), v.table.clone(), CallForm::Llama31.triggers()).unwrap();
    m.accept(v.id("{\"name\"")).unwrap();
    assert!(m.is_active() && m.allows(v.id(":")) && !m.allows(v.id("{\"name\"")));
    // ... also when it is spread over tokens and ends inside one (`":`: the `:` is fed too).
    let mut m = LazyMatcher::new(g.clone(), v.table.clone(), CallForm::Llama31.triggers()).unwrap();
    for tok in [" ", "{", "\"", "name"] {
        m.accept(v.id(tok)).unwrap();
        assert!(!m.is_active(), "{tok}");
    }
    m.accept(v.id("\":")).unwrap();
    assert!(m.is_active() && !m.allows(v.id(":")) && m.allows(v.id(" ")));
    let call = r#"{"name": "get_weather", "parameters": {"city": "Oslo"}}"#;
    assert!(g.accepts(call) && !g.accepts(r#"{"name": "get_weather", "arguments": {}}"#));
    let p = parse_calls(CallForm::Llama31, &format!("Sure. {call}"), &names, true).unwrap();
    assert_eq!(p.content.as_deref(), Some("Sure."));
    assert_eq!(p.calls[0].arguments, r#"{"city":"Oslo"}"#);

    // Hermes: `<tool_call>` split over two tokens, after some text; the grammar starts after it
    // (here with the newline of the next token).
    let g = call_grammar(CallForm::Hermes, spec(&t, true), false).unwrap();
    let mut m = LazyMatcher::new(g.clone(), v.table.clone(), CallForm::Hermes.triggers()).unwrap();
    for tok in ["Sure", " ", "<tool"] {
        m.accept(v.id(tok)).unwrap();
        assert!(!m.is_active());
    }
    m.accept(v.id("_call>")).unwrap();
    assert!(m.is_active() && m.allows(v.id("\n{\"name\": ")) && !m.allows(v.id("Sure")));
    let one = "\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>";
    assert!(g.accepts(one));
    assert!(g.accepts(&format!("{one}\n<tool_call>{one}")), "parallel");
    let single = call_grammar(CallForm::Hermes, spec(&t, false), false).unwrap();
    assert!(single.accepts(one) && !single.accepts(&format!("{one}\n<tool_call>{one}")));
    let whole = call_grammar(CallForm::Hermes, spec(&t, true), true).unwrap();
    assert!(whole.accepts(&format!("<tool_call>{one}")) && !whole.accepts(one));
    let text = format!("Sure <tool_call>{one}\n<tool_call>{one}");
    let p = parse_calls(CallForm::Hermes, &text, &names, true).unwrap();
    assert_eq!((p.content.as_deref(), p.calls.len()), (Some("Sure"), 2));
    let p = parse_calls(CallForm::Hermes, &text, &names, false).unwrap();
    assert_eq!(p.calls.len(), 1);
    // Cut inside the second call: the first only, marked incomplete.
    let p = parse_calls(CallForm::Hermes, &text[..text.len() - 15], &names, true).unwrap();
    assert_eq!((p.calls.len(), p.complete), (1, false));
}

#[test]
fn parallel_false_allows_one_generic_call() {
    let t = tools();
    let call = r#"{"name": "get_weather", "arguments": {"city": "Oslo"}}"#;
    let two = format!(r#"{{"tool_calls": [{call}, {call}]}}"#);
    let one = format!(r#"{{"tool_calls": [{call}]}}"#);
    let g = call_grammar(CallForm::Generic, spec(&t, true), false).unwrap();
    assert!(g.accepts(&one) && g.accepts(&two));
    let g = call_grammar(CallForm::Generic, spec(&t, false), false).unwrap();
    assert!(g.accepts(&one) && !g.accepts(&two));
    // Arguments follow the schema.
    assert!(!g.accepts(r#"{"tool_calls": [{"name": "get_weather", "arguments": {"days": 2}}]}"#));
    let names = vec!["get_weather".to_string()];
    let p = parse_calls(CallForm::Generic, &two, &names, false).unwrap();
    let want = ToolCall {
        name: "get_weather".into(),
        arguments: r#"{"city":"Oslo"}"#.into(),
    };
    assert_eq!(p.calls, vec![want]);
}

fn template_fixture(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/templates")
        .join(format!("{name}.jinja"));
    std::fs::read_to_string(p).unwrap()
}

#[test]
fn call_forms_follow_the_template_family() {
    assert_eq!(CallForm::of(FALLBACK_TEMPLATE), CallForm::Generic);
    assert_eq!(
        CallForm::of(&template_fixture("smollm2")),
        CallForm::Generic
    );
    assert_eq!(
        CallForm::of(&template_fixture("llama31")),
        CallForm::Llama31
    );
    let hermes =
        "{% for m in messages %}{% if m.tool_calls %}<tool_call>{% endif %}{{ tools }}{% endfor %}";
    assert_eq!(CallForm::of(hermes), CallForm::Hermes);
}

#[test]
fn chat_format_renders_tools_and_null_content() {
    // A template without tools: the generic form, tools in the system message, an earlier call
    // as JSON content (its arguments given as JSON text, as OpenAI sends them), null content
    // rendered as nothing rather than "None".
    let f = ChatFormat::new(Some(&template_fixture("smollm2"))).unwrap();
    assert!(!f.native_tools());
    let msgs: Vec<Message> = serde_json::from_value(json!([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]))
    .unwrap();
    let t = tools();
    let text = f.render(&msgs, Some(&t), true, "", "<|im_end|>").unwrap();
    assert!(text.contains("You can call these tools:"), "{text}");
    assert!(text.contains("\"get_weather\""), "{text}");
    assert!(
        text.contains(r#"{"tool_calls":[{"name":"get_weather","arguments":{"city":"Paris"}}]}"#),
        "{text}"
    );
    assert!(!text.contains("None"), "{text}");
    // Without tools the call turn still renders (a saved conversation, `cria template`).
    let text = f.render(&msgs, None, true, "", "<|im_end|>").unwrap();
    assert!(
        !text.contains("None") && !text.contains("You can call"),
        "{text}"
    );
    // A template that knows tools gets them (and the call turn) itself.
    let f = ChatFormat::new(Some(&template_fixture("llama31"))).unwrap();
    assert!(f.native_tools());
    let text = f
        .render(&msgs, Some(&t), true, "<|begin_of_text|>", "")
        .unwrap();
    assert!(
        text.contains("get_weather") && text.contains("Paris"),
        "{text}"
    );
}
