//! Issue 19: one small request must not take the engine down. Each class of input that could
//! overflow the stack, allocate without bound or run for ever gets a clear error instead.
//!
//! Recursion tests run on a thread with a 2 MiB stack (a tokio worker's default), so a parser
//! that recursed per nesting level would overflow there and abort the test binary. Nothing
//! here depends on machine speed: deadlines are tested with one that has already passed, and
//! large inputs run without a time budget.

use cria_engine::grammar::{
    json_schema_to_gbnf, json_schema_to_gbnf_with_limits, CharClass, Grammar, Limits, Matcher,
    TokenTable, MAX_GRAMMAR_ELEMS, MAX_NESTING, MAX_SCHEMA_ENUM, MAX_SCHEMA_PROPERTIES,
    MAX_SCHEMA_REPEAT, MAX_TOKEN_CHARS,
};
use cria_engine::sampler::{Sampler, SamplerConfig, MAX_DRY_BREAKERS, MAX_LAST_N, MAX_LOGIT_BIAS};
use cria_engine::stop::{StopMatcher, MAX_STOPS, MAX_STOP_BYTES};
use cria_engine::template::{ChatTemplate, Message};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Instant;

const DEEP: usize = 10_000;

/// Run `f` on a thread with a 2 MiB stack.
fn on_small_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn_scoped(s, f)
            .expect("spawn")
            .join()
            .expect("the check itself must not panic")
    })
}

/// Build a (possibly very deep) JSON value and check it on a 2 MiB stack; building and dropping
/// happen on a big stack, as serde_json's own drop recurses.
fn check_deep(make: impl FnOnce() -> Value + Send, check: impl FnOnce(&Value) + Send) {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(256 << 20)
            .spawn_scoped(s, move || {
                let v = make();
                on_small_stack(|| check(&v));
            })
            .expect("spawn")
            .join()
            .expect("no panic")
    });
}

fn no_budget() -> Limits {
    Limits {
        time_budget: None,
        ..Limits::default()
    }
}

fn expired() -> Limits {
    Limits {
        time_budget: None,
        deadline: Some(Instant::now()),
        ..Limits::default()
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Recursion
// ---------------------------------------------------------------------------------------------

#[test]
fn deeply_nested_gbnf_groups_are_an_error() {
    let src = format!("root ::= {}\"a\"{}", "(".repeat(DEEP), ")".repeat(DEEP));
    let e = on_small_stack(|| Grammar::parse(&src)).unwrap_err();
    assert!(
        e.msg.contains(&format!("nested deeper than {MAX_NESTING}")),
        "{e}"
    );
    // Up to the limit is fine.
    let ok = format!("root ::= {}\"a\"{}", "(".repeat(100), ")".repeat(100));
    let g = on_small_stack(|| Grammar::parse(&ok)).unwrap();
    assert!(g.accepts("a"));
}

#[test]
fn ref_chains_are_an_error() {
    check_deep(
        || {
            let mut defs = Map::new();
            for i in 0..DEEP {
                defs.insert(
                    format!("a{i}"),
                    json!({"$ref": format!("#/$defs/a{}", i + 1)}),
                );
            }
            defs.insert(format!("a{DEEP}"), json!({"type": "string"}));
            json!({"$defs": defs, "$ref": "#/$defs/a0"})
        },
        |schema| {
            let e = json_schema_to_gbnf(schema).unwrap_err();
            assert!(e.msg.contains("nested deeper than"), "{e}");
        },
    );
}

/// A JSON object from its members (`json!` would copy a value it is given, quadratic here).
fn obj(members: Vec<(&str, Value)>) -> Value {
    Value::Object(
        members
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

/// Nest `DEEP` levels of one shape around a string schema.
fn nest(wrap: fn(Value) -> Value) -> Value {
    let mut v = json!({"type": "string"});
    for _ in 0..DEEP {
        v = wrap(v);
    }
    v
}

#[test]
fn deeply_nested_schemas_are_an_error() {
    let shapes: [fn(Value) -> Value; 4] = [
        |v| {
            obj(vec![
                ("type", json!("object")),
                ("properties", obj(vec![("a", v)])),
                ("required", json!(["a"])),
            ])
        },
        |v| obj(vec![("type", json!("array")), ("items", v)]),
        |v| {
            obj(vec![(
                "anyOf",
                Value::Array(vec![v, json!({"type": "null"})]),
            )])
        },
        |v| obj(vec![("type", json!("object")), ("additionalProperties", v)]),
    ];
    for wrap in shapes {
        check_deep(
            move || nest(wrap),
            |schema| {
                let e = json_schema_to_gbnf(schema).unwrap_err();
                assert!(e.msg.contains("nested deeper than"), "{e}");
            },
        );
    }
    // A schema of moderate depth still converts, and its grammar compiles.
    let mut v = json!({"type": "string"});
    for _ in 0..60 {
        v = json!({"type": "object", "properties": {"a": v}, "required": ["a"]});
    }
    let gbnf = on_small_stack(|| json_schema_to_gbnf(&v)).unwrap();
    let g = Grammar::parse(&gbnf).unwrap();
    let text = format!("{}\"x\"{}", "{\"a\":".repeat(60), "}".repeat(60));
    assert!(g.accepts(&text));
}

#[test]
fn deep_stacks_and_long_rule_chains_do_not_recurse() {
    // The matcher's stacks grow with the nesting of the output, not the thread's stack.
    let g = Grammar::parse(r#"root ::= "(" root ")" | "x""#).unwrap();
    let text = format!("{}x{}", "(".repeat(DEEP), ")".repeat(DEEP));
    assert!(on_small_stack(|| g.accepts(&text)));
    // A chain of 50,000 rules (the left-recursion check walks it without recursing).
    let n = 50_000;
    let mut src = String::new();
    for i in 0..n {
        src.push_str(&format!("r{i} ::= r{} \"a\"\n", i + 1));
    }
    src.push_str(&format!("r{n} ::= \"b\"\nroot ::= r0\n"));
    let g = on_small_stack(|| Grammar::parse_with_limits(&src, "root", &no_budget())).unwrap();
    assert!(g.accepts(&format!("b{}", "a".repeat(n))));
    // And a cycle at the end of it is still found.
    src.push_str(&format!("r{} ::= r0 \"c\"\n", n + 1));
    let cyclic = src.replace(
        &format!("r{n} ::= \"b\""),
        &format!("r{n} ::= r{} | \"b\"", n + 1),
    );
    let e =
        on_small_stack(|| Grammar::parse_with_limits(&cyclic, "root", &no_budget())).unwrap_err();
    assert!(e.msg.contains("left recursion"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// 2. Size
// ---------------------------------------------------------------------------------------------

#[test]
fn repetitions_are_bounded_before_they_expand() {
    // 1,000 characters x 2,000 copies: two million elements from a 1 kB grammar.
    let lit = "a".repeat(1000);
    for src in [
        format!("root ::= \"{lit}\"{{2000}}"),
        format!("root ::= \"{lit}\"{{0,2000}}"),
        format!("root ::= (\"{lit}\"{{1000}}){{1000}} x\nx ::= (\"{lit}\"{{1500}})"),
    ] {
        let e = Grammar::parse(&src).unwrap_err();
        let limit = format!("more than {MAX_GRAMMAR_ELEMS} elements");
        assert!(e.msg.contains("too large") && e.msg.contains(&limit), "{e}");
    }
    // A tighter limit through `Limits`.
    let small = Limits {
        max_elems: 100,
        ..no_budget()
    };
    assert!(Grammar::parse_with_limits(r#"root ::= "a"{20}"#, "root", &small).is_ok());
    let e = Grammar::parse_with_limits(r#"root ::= "a"{200}"#, "root", &small).unwrap_err();
    assert!(e.msg.contains("too large"), "{e}");
    // Normal use is far below the limit.
    let g = Grammar::parse(r#"root ::= [a-z]{0,2000} "!""#).unwrap();
    assert!(g.accepts(&format!("{}!", "q".repeat(2000))));
    assert!(!g.accepts(&format!("{}!", "q".repeat(2001))));
    // A maximum past the repetition bound is an error, not silently dropped (llama.cpp makes it
    // unbounded); a minimum past it too.
    let e = Grammar::parse(r#"root ::= [a-z]{0,2001} "!""#).unwrap_err();
    assert!(
        e.msg.contains("repetition maximum 2001 exceeds 2000"),
        "{e}"
    );
    let e = Grammar::parse(r#"root ::= [a-z]{2001,} "!""#).unwrap_err();
    assert!(
        e.msg.contains("repetition minimum 2001 exceeds 2000"),
        "{e}"
    );
    assert!(Grammar::parse(r#"root ::= [a-z]{2000,} "!""#).is_ok());
}

#[test]
fn schema_counts_are_bounded_and_honoured() {
    // maxLength is honoured up to the limit ...
    let gbnf =
        json_schema_to_gbnf(&json!({"type": "string", "maxLength": MAX_SCHEMA_REPEAT})).unwrap();
    let g = Grammar::parse(&gbnf).unwrap();
    let n = MAX_SCHEMA_REPEAT as usize;
    assert!(g.accepts(&format!("\"{}\"", "x".repeat(n))));
    assert!(!g.accepts(&format!("\"{}\"", "x".repeat(n + 1))));
    // ... and an error beyond it, never silently unbounded.
    for (kw, schema) in [
        (
            "maxLength",
            json!({"type": "string", "maxLength": MAX_SCHEMA_REPEAT + 1}),
        ),
        (
            "minLength",
            json!({"type": "string", "minLength": 1u64 << 40}),
        ),
        ("maxItems", json!({"type": "array", "maxItems": u64::MAX})),
        ("minItems", json!({"type": "array", "minItems": 5000})),
    ] {
        let e = json_schema_to_gbnf(&schema).unwrap_err();
        assert!(e.path.ends_with(kw) && e.msg.contains("2000"), "{kw}: {e}");
    }
    let big_enum: Vec<Value> = (0..=MAX_SCHEMA_ENUM).map(|i| json!(i)).collect();
    let e = json_schema_to_gbnf(&json!({"enum": big_enum})).unwrap_err();
    assert!(e.msg.contains("enum"), "{e}");
    let mut props = Map::new();
    for i in 0..=MAX_SCHEMA_PROPERTIES {
        props.insert(format!("p{i}"), json!({"type": "integer"}));
    }
    let e = json_schema_to_gbnf(&json!({"type": "object", "properties": props})).unwrap_err();
    assert!(e.msg.contains("properties"), "{e}");
    let long = "k".repeat(300);
    let e = json_schema_to_gbnf(&json!({
        "type": "object",
        "properties": {long: {"type": "integer"}},
        "additionalProperties": true
    }))
    .unwrap_err();
    assert!(e.msg.contains("longer than"), "{e}");
}

/// Single characters, plus an end-of-generation token.
fn ascii_vocab() -> (Arc<TokenTable>, u32) {
    let mut pieces: Vec<Vec<u8>> = (0x20u8..0x7F).map(|b| vec![b]).collect();
    pieces.push(b"</s>".to_vec());
    let eog = pieces.len() as u32 - 1;
    (Arc::new(TokenTable::new(pieces, &[eog])), eog)
}

fn tok(c: u8) -> u32 {
    u32::from(c - 0x20)
}

#[test]
fn matcher_state_is_bounded() {
    let (vocab, _) = ascii_vocab();
    let small = Limits {
        max_matcher_nodes: 400,
        ..no_budget()
    };
    // Live state that keeps growing (one stack level per '('): an error from accept, not OOM.
    let g = Grammar::parse(r#"root ::= "(" root ")" | "x""#).unwrap();
    let mut m = Matcher::new_with_limits(g, vocab.clone(), &small).unwrap();
    let mut err = None;
    for _ in 0..10_000 {
        if let Err(e) = m.accept(tok(b'(')) {
            err = Some(e.to_string());
            break;
        }
    }
    let err = err.expect("the state outgrew its bound");
    assert!(err.contains("parser state exceeded 400"), "{err}");
    // Memo growth with a small live state is dropped and the generation goes on: a long run
    // through a grammar with many paths, under the same small bound.
    let g = Grammar::parse(r#"root ::= ([a-z] | [a-m] [n-z] | "(" [a-z]* ")")*"#).unwrap();
    let mut m = Matcher::new_with_limits(g, vocab.clone(), &small).unwrap();
    let text = b"ab(cdef)gz(xyz)".repeat(200);
    let mut cands = cria_engine::sampler::Candidates::default();
    for (i, &c) in text.iter().enumerate() {
        if i % 50 == 0 {
            cands.fill(&vec![0.0; vocab.len()]);
            m.mask(&mut cands);
            let allowed = cands.data.iter().filter(|c| c.logit.is_finite()).count();
            assert!(allowed > 0);
        }
        assert!(m.allows(tok(c)));
        m.accept(tok(c)).unwrap();
    }
    assert!(m.is_complete());
    // A grammar whose first step alone is past the bound fails in `new`.
    let wide: String = (0..300).map(|i| format!(" | \"{i}\" r")).collect();
    let g = Grammar::parse(&format!("root ::= \"x\"{wide}\nr ::= \"y\" r | \"z\"")).unwrap();
    let tiny = Limits {
        max_matcher_nodes: 50,
        ..no_budget()
    };
    let e = Matcher::new_with_limits(g, vocab, &tiny).err().unwrap();
    assert!(e.msg.contains("parser state exceeded"), "{e}");
}

#[test]
fn overlong_tokens_are_never_allowed_and_do_not_recurse() {
    // A vocabulary (from a model file) with a 100,000-character token: building the table and
    // masking walk the token trie, which must not recurse per character.
    let mut pieces: Vec<Vec<u8>> = (0x20u8..0x7F).map(|b| vec![b]).collect();
    pieces.push("a".repeat(100_000).into_bytes());
    pieces.push("a".repeat(MAX_TOKEN_CHARS).into_bytes());
    let long = pieces.len() as u32 - 2;
    let ok = long + 1;
    let n = pieces.len();
    let (cands, err) = on_small_stack(move || {
        let vocab = Arc::new(TokenTable::new(pieces, &[]));
        let g = Grammar::parse(r#"root ::= [a]*"#).unwrap();
        let mut m = Matcher::new(g, vocab).unwrap();
        let mut cands = cria_engine::sampler::Candidates::default();
        cands.fill(&vec![0.0; n]);
        m.mask(&mut cands);
        assert!(!m.allows(long) && m.allows(ok));
        let err = m.accept(long).unwrap_err().to_string();
        (cands, err)
    });
    let allowed: Vec<u32> = cands
        .data
        .iter()
        .filter(|c| c.logit.is_finite())
        .map(|c| c.id)
        .collect();
    assert_eq!(allowed, vec![tok(b'a'), ok]);
    assert!(err.contains("longer than 1024"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// 3. Time
// ---------------------------------------------------------------------------------------------

#[test]
fn compilation_stops_at_its_deadline() {
    let e = Grammar::parse_with_limits(r#"root ::= "a""#, "root", &expired()).unwrap_err();
    assert_eq!(e.msg, "grammar compilation exceeded its time budget");
    let e = json_schema_to_gbnf_with_limits(&json!({"type": "string"}), &expired()).unwrap_err();
    assert_eq!(e.msg, "grammar compilation exceeded its time budget");
    let (vocab, _) = ascii_vocab();
    let g = Grammar::parse(r#"root ::= "a""#).unwrap();
    let e = Matcher::new_with_limits(g, vocab, &expired())
        .err()
        .unwrap();
    assert_eq!(e.msg, "grammar compilation exceeded its time budget");
}

#[test]
fn exponential_schemas_stop() {
    // Each definition uses the previous one twice through `allOf` (merged in place, not a
    // shared rule): 2^40 visits. Stopped by the deadline or the output bound, whichever first.
    let mut defs = Map::new();
    defs.insert(
        "d0".into(),
        json!({"type": "object", "properties": {"x": {"type": "integer"}}}),
    );
    for i in 1..40 {
        let prev = json!({"allOf": [{"$ref": format!("#/$defs/d{}", i - 1)}]});
        defs.insert(
            format!("d{i}"),
            json!({"type": "object", "properties": {"a": prev.clone(), "b": prev}}),
        );
    }
    let schema = json!({"$defs": defs, "$ref": "#/$defs/d39"});
    let limits = Limits {
        time_budget: Some(std::time::Duration::from_millis(200)),
        ..Limits::default()
    };
    let e = json_schema_to_gbnf_with_limits(&schema, &limits).unwrap_err();
    assert!(
        e.msg == "grammar compilation exceeded its time budget" || e.msg.contains("too large"),
        "{e}"
    );
}

#[test]
fn many_token_references_compile() {
    // 100,000 `<...>` references on one line: each records its line and column (found from
    // the previous one, not by rescanning the line).
    let n = 100_000;
    let src = format!("root ::= {}<zz>\n", "<a> ".repeat(n));
    let g = Grammar::parse_with_limits(&src, "root", &no_budget()).unwrap();
    // "<a>" is a token, "<zz>" is not.
    let vocab = Arc::new(TokenTable::new(vec![b"<a>".to_vec(), b"z".to_vec()], &[]));
    let e = Matcher::new_with_limits(g, vocab, &no_budget())
        .err()
        .unwrap();
    assert_eq!((e.line, e.col), (1, 10 + 4 * n), "{e}");
    assert!(e.msg.contains("<zz>"), "{e}");
}

#[test]
fn large_character_classes_agree_with_brute_force() {
    // A class of 30,000 ranges (a grammar can spell one in 300 kB) is searched, not scanned;
    // both the plain and the negated class must say what the ranges say.
    let ranges: Vec<(u32, u32)> = (0..30_000u32)
        .map(|i| (0x100 + 3 * i, 0x100 + 3 * i + 1))
        .collect();
    let inside = |c: u32| ranges.iter().any(|&(a, b)| a <= c && c <= b);
    for negated in [false, true] {
        let class = CharClass::new(negated, ranges.clone());
        for c in (0..0x100u32).chain(0x100..0x200).chain(0x16000..0x16300) {
            assert_eq!(class.matches(c), inside(c) != negated, "{negated} {c:#x}");
        }
        for lo in (0xF0..0x130u32).chain(0x15F80..0x16000) {
            for len in [0u32, 1, 2, 3, 64] {
                let hi = lo + len;
                let brute = (lo..=hi).any(|c| inside(c) != negated);
                assert_eq!(
                    class.matches_any_in(lo, hi),
                    brute,
                    "{negated} {lo:#x}..={hi:#x}"
                );
            }
        }
    }
}

#[test]
fn many_negated_token_references_mask_once() {
    // Thousands of stacks with `!<[id]>` on top: the mask walks the vocabulary once for all of
    // them, and still agrees with `allows` token by token.
    let (vocab, eog) = ascii_vocab();
    let x = tok(b'x');
    let y = tok(b'y');
    for (alts, expect_x, expect_y) in [
        (format!("!<[{x}]>"), false, true),
        (format!("!<[{x}]> | !<[{y}]>"), true, true),
    ] {
        let body: Vec<String> = (0..3000).map(|i| format!("{alts} \"{i}\"")).collect();
        let g = Grammar::parse(&format!("root ::= {}", body.join(" | "))).unwrap();
        let m = Matcher::new(g, vocab.clone()).unwrap();
        let mut cands = cria_engine::sampler::Candidates::default();
        cands.fill(&vec![0.0; vocab.len()]);
        m.mask(&mut cands);
        for c in &cands.data {
            assert_eq!(c.logit.is_finite(), m.allows(c.id), "token {}", c.id);
        }
        assert_eq!(m.allows(x), expect_x);
        assert_eq!(m.allows(y), expect_y);
        assert!(!m.allows(eog));
    }
}

#[test]
fn many_properties_compile() {
    // 8000 optional properties: the schema, its grammar and a matcher over it.
    let mut props = Map::new();
    for i in 0..8000 {
        props.insert(format!("p{i}"), json!({"type": "integer"}));
    }
    let schema = json!({"type": "object", "properties": props});
    let gbnf = json_schema_to_gbnf_with_limits(&schema, &no_budget()).unwrap();
    let g = Grammar::parse_with_limits(&gbnf, "root", &no_budget()).unwrap();
    assert!(g.accepts(r#"{"p7999": 1}"#));
    assert!(g.accepts(r#"{"p0": 1, "p5": 2, "p7999": 3}"#));
    assert!(!g.accepts(r#"{"p5": 2, "p0": 1}"#));
    let (vocab, _) = ascii_vocab();
    let mut m = Matcher::new_with_limits(g, vocab, &no_budget()).unwrap();
    for &c in br#"{"p7"# {
        m.accept(tok(c)).unwrap();
    }
    // All required too, and names that map to the same rule name (non-ASCII keys).
    let mut props = Map::new();
    let mut required = Vec::new();
    for i in 0..8000 {
        let k = format!("ключ{i}");
        props.insert(k.clone(), json!({"type": "boolean"}));
        required.push(k);
    }
    let schema = json!({"type": "object", "properties": props, "required": required});
    let gbnf = json_schema_to_gbnf_with_limits(&schema, &no_budget()).unwrap();
    Grammar::parse_with_limits(&gbnf, "root", &no_budget()).unwrap();
}

// ---------------------------------------------------------------------------------------------
// 4. Chat templates
// ---------------------------------------------------------------------------------------------

fn render(src: &str) -> Result<String, String> {
    let t = ChatTemplate::new(src).map_err(|e| e.to_string())?;
    let msgs = [Message::new("user", "hi")];
    on_small_stack(|| t.render(&msgs, true, "<s>", "</s>", None)).map_err(|e| e.to_string())
}

#[test]
fn templates_run_out_of_fuel() {
    let e =
        render("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}")
            .unwrap_err();
    assert!(e.contains("ran out of fuel (infinite loop?)"), "{e}");
    // Doubling a string: each copy is paid for, so it stops long before memory runs out.
    let e = render(
        "{% set ns = namespace(s='xxxxxxxx') %}{% for i in range(60) %}\
         {% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
    )
    .unwrap_err();
    assert!(e.contains("ran out of fuel"), "{e}");
    // Recursion through a macro.
    let e =
        render("{% macro f(n) %}{{ f(n + 1) }}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}").unwrap_err();
    assert!(e.contains("fuel") || e.contains("recursion"), "{e}");
}

#[test]
fn template_output_and_ranges_are_bounded() {
    let e = render("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}").unwrap_err();
    assert!(e.contains("output exceeded"), "{e}");
    let e = render("{% for i in range(1000000000000) %}{% endfor %}").unwrap_err();
    assert!(e.contains("range has too many elements"), "{e}");
    let e = render(
        "{% set ns = namespace(x=[]) %}{% for i in range(3000) %}{% set ns.x = [ns.x] %}\
         {% endfor %}{{ ns.x | tojson }}",
    )
    .unwrap_err();
    assert!(e.contains("nested deeper than"), "{e}");
    let out = render(
        "{% set ns = namespace(x=[]) %}{% for i in range(3000) %}{% set ns.x = [ns.x] %}\
         {% endfor %}{{ ns.x }}",
    )
    .unwrap();
    assert!(out.len() < 3000 && out.contains("[...]"), "{out}");
}

#[test]
fn real_templates_render_long_conversations() {
    // Every fixture template, 512 turns of 2 kB: 1 MiB of text, well inside the bounds.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/templates");
    let mut msgs = Vec::new();
    for i in 0..512 {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        msgs.push(Message::new(role, format!("{i} {}", "word ".repeat(420))));
    }
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let src = std::fs::read_to_string(&path).unwrap();
        let t = ChatTemplate::new(&src).unwrap();
        let out = t.render(&msgs, true, "<s>", "</s>", None);
        let out = out.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(out.len() > 1 << 20, "{}: {}", path.display(), out.len());
        n += 1;
    }
    assert!(n >= 5);
}

// ---------------------------------------------------------------------------------------------
// 5. Samplers
// ---------------------------------------------------------------------------------------------

#[test]
fn sampler_options_refuse_out_of_range_values() {
    let bad = [
        "18446744073709551615",
        "18446744073709551616",
        "99999999999",
        "1e30",
        "NaN",
        "nan",
        "inf",
        "-inf",
        "-1e30",
        "-5",
    ];
    let logits: Vec<f32> = (0..1000).map(|i| (i % 37) as f32 * 0.1).collect();
    for name in SamplerConfig::option_names() {
        for v in bad {
            let mut c = SamplerConfig::default();
            match c.set(name, v) {
                Err(e) => assert!(e.contains(name), "{name} = {v}: {e}"),
                Ok(()) => {
                    // Accepted (a seed, a signed penalty...): the sampler must still work.
                    c.validate().unwrap_or_else(|e| panic!("{name} = {v}: {e}"));
                    let mut s = Sampler::new(c, 1000);
                    let t = s.sample(&logits);
                    assert!(t < 1000);
                    s.accept(t);
                }
            }
        }
    }
    // The history windows: -1 is the whole context, up to the cap; beyond the cap an error.
    let mut c = SamplerConfig::default();
    c.set("repeat-last-n", "-1").unwrap();
    assert_eq!(c.repeat_last_n, MAX_LAST_N);
    c.set("dry-penalty-last-n", "-1").unwrap();
    assert_eq!(c.dry_penalty_last_n, MAX_LAST_N);
    for name in ["repeat-last-n", "dry-penalty-last-n", "top-k", "min-keep"] {
        let e = c.set(name, &(1u64 << 40).to_string()).unwrap_err();
        assert!(e.contains(name) && e.contains("out of range"), "{e}");
    }
    // Fields set in code are checked by validate, and the sampler clamps them regardless.
    let c = SamplerConfig {
        repeat_last_n: usize::MAX,
        repeat_penalty: 1.1,
        dry_multiplier: 0.8,
        dry_penalty_last_n: usize::MAX,
        dry_allowed_length: usize::MAX,
        top_k: usize::MAX,
        min_keep: usize::MAX,
        ..SamplerConfig::default()
    };
    let e = c.validate().unwrap_err();
    assert!(e.contains("top-k") || e.contains("last-n"), "{e}");
    let mut s = Sampler::new(c, 1000);
    for _ in 0..10 {
        let t = s.sample(&logits);
        s.accept(t);
    }
    s.accept(u32::MAX);
    s.sample(&logits);
}

#[test]
fn sampler_lists_are_bounded() {
    let mut c = SamplerConfig::default();
    c.set("dry-sequence-breaker", "none").unwrap();
    for i in 0..MAX_DRY_BREAKERS {
        c.set("dry-sequence-breaker", &format!("b{i}")).unwrap();
    }
    let e = c.set("dry-sequence-breaker", "one more").unwrap_err();
    assert!(e.contains("dry-sequence-breaker"), "{e}");
    let mut c = SamplerConfig::default();
    let e = c.set("dry-sequence-breaker", &"x".repeat(300)).unwrap_err();
    assert!(e.contains("dry-sequence-breaker"), "{e}");
    c.dry_sequence_breakers = vec!["x".repeat(300)];
    assert!(c.validate().is_err());
    let mut c = SamplerConfig {
        logit_bias: vec![(1, -1.0); MAX_LOGIT_BIAS],
        ..SamplerConfig::default()
    };
    c.validate().unwrap();
    let e = c.set("logit-bias", "5+1").unwrap_err();
    assert!(e.contains("logit-bias"), "{e}");
    c.logit_bias.push((2, 1.0));
    assert!(c.validate().is_err());
}

// ---------------------------------------------------------------------------------------------
// Stop strings
// ---------------------------------------------------------------------------------------------

#[test]
fn stop_strings_are_bounded() {
    let many: Vec<String> = (0..=MAX_STOPS).map(|i| format!("s{i}")).collect();
    assert!(StopMatcher::try_new(&many).unwrap_err().contains("stop"));
    let long = ["a".repeat(MAX_STOP_BYTES + 1)];
    assert!(StopMatcher::try_new(&long).unwrap_err().contains("stop[0]"));
    // The longest allowed stop string, fed a byte at a time: found, with nothing released
    // that belongs to it.
    let stop = format!("{}b", "a".repeat(MAX_STOP_BYTES - 1));
    let mut m = StopMatcher::try_new(&[stop.as_str()]).unwrap();
    let mut out = String::new();
    let text = format!("x{}{}", "a".repeat(3 * MAX_STOP_BYTES), "b");
    let mut hit = None;
    for ch in text.chars() {
        hit = m.push(&ch.to_string(), &mut out);
        if hit.is_some() {
            break;
        }
    }
    assert!(hit.is_some());
    assert_eq!(out.len(), text.len() - stop.len());
}
