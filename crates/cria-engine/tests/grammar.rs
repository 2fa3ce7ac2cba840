//! Grammars: llama.cpp's example grammars parse; the recognizer accepts and rejects what
//! llama.cpp's own integration tests say it should (tests/fixtures/grammars/llama_cases.json,
//! extracted by extract_llama_cases.py); malformed grammars are errors with line and column;
//! JSON Schema conversion; the token-level matcher (partial UTF-8, EOG, mask == allows).

use cria_engine::grammar::{self, json_schema_to_gbnf, Grammar, Matcher, TokenTable};
use cria_engine::sampler::{Candidates, Sampler, SamplerConfig};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/grammars")
}

fn ref_dir() -> PathBuf {
    std::env::var_os("CRIA_REF_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ref"))
}

fn load(name: &str) -> Grammar {
    let p = fixtures().join(name);
    let src = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    Grammar::parse(&src).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn llama_cpp_integration_cases() {
    let p = fixtures().join("llama_cases.json");
    let cases: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    let mut checked = 0;
    let mut failures = Vec::new();
    for c in &cases {
        let desc = c["desc"].as_str().unwrap();
        let source = c["source"].as_str().unwrap();
        let gbnf = if c["kind"] == "schema" {
            let schema: Value = serde_json::from_str(source).unwrap();
            match json_schema_to_gbnf(&schema) {
                Ok(g) => g,
                // Deliberately unsupported (llama.cpp drops it silently): a clear error instead.
                Err(e) if desc == "required props" => {
                    assert_eq!(
                        e.to_string(),
                        "#/properties/tags/uniqueItems: unsupported keyword `uniqueItems`"
                    );
                    continue;
                }
                Err(e) => {
                    failures.push(format!("{desc}: conversion failed: {e}"));
                    continue;
                }
            }
        } else {
            source.to_string()
        };
        let g = match Grammar::parse(&gbnf) {
            Ok(g) => g,
            Err(e) => {
                failures.push(format!("{desc}: {e}\n{gbnf}"));
                continue;
            }
        };
        for s in c["pass"].as_array().unwrap() {
            let s = s.as_str().unwrap();
            checked += 1;
            if !g.accepts(s) {
                failures.push(format!("{desc}: should accept {s:?}\n{gbnf}"));
            }
        }
        for s in c["fail"].as_array().unwrap() {
            let s = s.as_str().unwrap();
            checked += 1;
            if g.accepts(s) {
                failures.push(format!("{desc}: should reject {s:?}\n{gbnf}"));
            }
        }
    }
    eprintln!("{} cases, {checked} strings", cases.len());
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

const EXAMPLES: [&str; 5] = ["json", "arithmetic", "list", "c", "chess"];

/// The five example grammars CI carries (copied from llama.cpp's grammars/, MIT).
#[test]
fn example_grammars_parse() {
    for name in EXAMPLES {
        let g = load(&format!("{name}.gbnf"));
        assert!(g.n_rules() > 1, "{name}");
    }
}

/// Every grammar llama.cpp ships (from $CRIA_REF_DIR/llama.cpp/grammars).
#[test]
fn all_llama_cpp_grammars_parse() {
    let dir = ref_dir().join("llama.cpp/grammars");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (set CRIA_REF_DIR to the reference data)",
            dir.display()
        )
    });
    let mut n = 0;
    for e in entries {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "gbnf") {
            let src = std::fs::read_to_string(&p).unwrap();
            Grammar::parse(&src).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 8, "only {n} grammars in {}", dir.display());
}

#[test]
fn example_grammars_accept_and_reject() {
    let cases: &[(&str, &[&str], &[&str])] = &[
        (
            "json",
            &[
                r#"{"a": [1, 2.5, "x\n", true, null], "b": {}}"#,
                "{}",
                "{\n  \"k\": -0.5e+3\n}",
                r#"{"u": "\u00e9é"}"#,
            ],
            &[
                r#"{"a": }"#,
                "[1]",
                r#"{"a" 1}"#,
                r#"{"a": 01}"#,
                r#"{"a": "\q"}"#,
                "{",
            ],
        ),
        (
            "arithmetic",
            &["1+2=3\n", "(a+b)*c= d\nx=1\n", "foo /(bar -2)=baz\n"],
            &["1+2=3", "+1=2\n", "1=\n", "A=1\n"],
        ),
        (
            "list",
            &["- one\n", "- one\n- two words\n"],
            &["one\n", "- \n", "- a\r\n", "- a"],
        ),
        (
            "chess",
            &[
                "1. e4 e5\n2. Nf3 Nc6\n",
                "1. d4 d5\n2. c4 dxc4\n3. O-O Qxd1+\n",
            ],
            &[
                "1. e4 e5\n",
                "1. e9 e5\n2. Nf3 Nc6\n",
                "2. e4 e5\n2. Nf3 Nc6\n",
            ],
        ),
        (
            "c",
            &[
                "int main(){return 0;}",
                "int f(int x){x = x+1;while(x>0){x = x-1;}}",
            ],
            &["int main(){return 0}", "main(){}"],
        ),
    ];
    for (name, good, bad) in cases {
        let g = load(&format!("{name}.gbnf"));
        for s in *good {
            assert!(g.accepts(s), "{name} should accept {s:?}");
        }
        for s in *bad {
            assert!(!g.accepts(s), "{name} should reject {s:?}");
        }
    }
}

#[test]
fn repetitions_classes_and_escapes() {
    let g = Grammar::parse(
        r#"root ::= "a"{2,4} [^x-z\]]? "é"{0,1} [\u00E0-\U000000FF]* "\x41"{2} . "!"{3,}"#,
    )
    .unwrap();
    for s in ["aaAA.!!!", "aaaaqéàÿAA.!!!!", "aawAA]!!!", "aaaAA\n!!!"] {
        assert!(g.accepts(s), "{s:?}");
    }
    for s in [
        "aAA.!!!",
        "aaaaaaAA.!!!",
        "aayAA.!!!",
        "aa]AAx!!!",
        "aaAA.!!",
        "aaAA!!!",
    ] {
        assert!(!g.accepts(s), "{s:?}");
    }
    // Newlines end a rule unless inside parentheses or after `|`; comments anywhere.
    let g =
        Grammar::parse("root ::= ( \"a\"\n  \"b\" ) | # c\n \"c\"\nx ::= \"y\" # tail\n").unwrap();
    assert!(g.accepts("ab") && g.accepts("c") && !g.accepts("a"));
    assert!(g.accepts_prefix("a") && !g.accepts_prefix("b"));
}

fn parse_err(src: &str) -> String {
    match Grammar::parse(src) {
        Ok(_) => panic!("{src:?} should not parse"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn malformed_grammars_report_line_and_column() {
    let cases = [
        ("root ::= \"abc", "1:10: unterminated string literal"),
        ("root ::= foo", "1:10: undefined rule 'foo'"),
        (
            "root ::= \"a\"\nfoo ::= bar baz\nbar ::= \"b\"",
            "2:13: undefined rule 'baz'",
        ),
        ("root ::= [a-", "1:10: unterminated character class"),
        (
            "root ::= \"a\"\n  b ::= \"\\q\"",
            "2:10: unknown escape '\\q'",
        ),
        (
            "root := \"a\"",
            "1:6: expecting '::=' after 'root', found ':= \"a\"'",
        ),
        (
            "root ::= \"a\"{2,1}",
            "1:16: repetition maximum is below its minimum",
        ),
        (
            "root ::= *\"a\"",
            "1:10: '*' has nothing before it to repeat",
        ),
        (
            "root ::= (\"a\"",
            "1:14: expecting ')' to close the group at 1:10, found end of input",
        ),
        (
            "root ::= \"a\"{2",
            "1:15: expecting ',' or '}' in a repetition, found end of input",
        ),
        (
            "root ::= \"\\x4\"",
            "1:13: expecting 2 hex digits after the escape",
        ),
        (
            "root ::= \"a\" )",
            "1:14: expecting end of line after the rule, found ')'",
        ),
        (
            "root ::= \"a\"\nroot ::= \"b\"",
            "2:1: rule 'root' is already defined at 1:1",
        ),
        ("rot ::= \"a\"", "1:1: the grammar has no 'root' rule"),
        ("", "1:1: the grammar has no 'root' rule"),
        (
            "root ::= \"a\"\n| \"b\"",
            "2:1: expecting a rule name, found '| \"b\"'",
        ),
        ("root ::= [z-a]", "1:13: character range is reversed"),
        ("root ::= <think", "1:10: unterminated token reference"),
    ];
    for (src, want) in cases {
        assert_eq!(parse_err(src), want, "{src:?}");
    }
}

/// llama.cpp's left-recursion cases (tests/test-grammar-integration.cpp).
#[test]
fn left_recursion_is_rejected() {
    for src in [
        "root ::= \"a\" | root \"a\"",
        "root ::= asdf\nasdf ::= \"a\" | asdf \"a\"\n",
        "root ::= asdf\nasdf ::= \"a\" | foo \"b\"\nfoo ::= \"c\" | asdf \"d\" | \"e\"",
        "root ::= asdf\nasdf ::= \"a\" | foo \"b\"\nfoo ::= \"c\" | empty asdf \"d\" | \"e\"\nempty ::= \"blah\" | ",
    ] {
        let e = parse_err(src);
        assert!(e.contains("left recursion"), "{src:?}: {e}");
    }
    assert_eq!(
        parse_err("root ::= x\nx ::= \"a\" | x \"b\""),
        "2:1: left recursion in rule 'x' (not supported, as in llama.cpp)"
    );
    // A cycle of tail references is harmless (llama.cpp accepts it too).
    assert!(Grammar::parse("root ::= ( [x]* )*").unwrap().accepts("xxx"));
}

#[test]
fn json_schema_cases() {
    let p = fixtures().join("schema_cases.json");
    let data: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    let mut n = 0;
    for c in data["cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let gbnf = json_schema_to_gbnf(&c["schema"]).unwrap_or_else(|e| panic!("{name}: {e}"));
        let g = Grammar::parse(&gbnf).unwrap_or_else(|e| panic!("{name}: {e}\n{gbnf}"));
        for v in c["valid"].as_array().unwrap() {
            for text in [
                serde_json::to_string(v).unwrap(),
                serde_json::to_string_pretty(v).unwrap(),
            ] {
                assert!(g.accepts(&text), "{name}: should accept {text}\n{gbnf}");
                n += 1;
            }
        }
        for v in c["invalid"].as_array().unwrap() {
            for text in [
                serde_json::to_string(v).unwrap(),
                serde_json::to_string_pretty(v).unwrap(),
            ] {
                assert!(!g.accepts(&text), "{name}: should reject {text}\n{gbnf}");
                n += 1;
            }
        }
    }
    for u in data["unsupported"].as_array().unwrap() {
        let e = json_schema_to_gbnf(&u["schema"]).expect_err(&u["schema"].to_string());
        assert_eq!(e.path, u["path"].as_str().unwrap(), "{e}");
        let kw = u["keyword"].as_str().unwrap();
        assert!(e.msg.contains(kw), "{e} should name {kw}");
    }
    eprintln!("{n} instances checked");
}

#[test]
fn any_json_grammar() {
    let g = Grammar::any_json();
    for s in ["1", "\"x\"", "[]", "{\"a\": [null, true, -1.5e3]}", "null "] {
        assert!(g.accepts(s), "{s:?}");
    }
    for s in ["", "[1,]", "{'a': 1}", "nul", "01"] {
        assert!(!g.accepts(s), "{s:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// The token-level matcher
// ---------------------------------------------------------------------------------------------

/// A toy vocabulary: single chars, some multi-char pieces, the two bytes of "é" as separate
/// byte-fallback tokens, a control token (empty piece), a NUL byte token and an EOG token.
fn toy_vocab() -> (Vec<Vec<u8>>, u32) {
    let mut pieces: Vec<Vec<u8>> = Vec::new();
    for b in 0x20u8..0x7F {
        pieces.push(vec![b]);
    }
    for s in [
        "\n",
        "\t",
        "{\"",
        "\":",
        "\", \"",
        "true",
        "false",
        "null",
        "12",
        "3.",
        "e+",
        "\"a\"",
        "ab",
        "é",
        "€",
        "\u{1F600}",
        "},",
        "[{",
        "]}",
        "  ",
        " \"",
        "\\n",
        "\\u00",
        "xy\n",
    ] {
        pieces.push(s.as_bytes().to_vec());
    }
    pieces.push(vec![0xC3]); // first byte of é
    pieces.push(vec![0xA9]); // its continuation
    pieces.push(vec![0xE2, 0x82]); // two of the three bytes of €
    pieces.push(vec![0xAC, b'"']); // € ends, then a quote
    pieces.push(Vec::new()); // control token
    pieces.push(vec![0]); // NUL
    pieces.push(b"</s>".to_vec()); // EOG (its piece is irrelevant)
    let eog = pieces.len() as u32 - 1;
    (pieces, eog)
}

fn id_of(pieces: &[Vec<u8>], p: &[u8]) -> u32 {
    pieces.iter().position(|x| x == p).unwrap() as u32
}

#[test]
fn matcher_partial_utf8_eog_and_control_tokens() {
    let (pieces, eog) = toy_vocab();
    let table = Arc::new(TokenTable::new(pieces.clone(), &[eog]));
    let g = Grammar::parse(r#"root ::= "\"" [é€a]+ "\"""#).unwrap();
    let mut m = Matcher::new(g, table).unwrap();
    let t = |p: &[u8]| id_of(&pieces, p);
    assert!(!m.allows(eog) && !m.is_complete());
    assert!(m.accept(eog).is_err());
    assert!(m.allows(t(b"\"")) && m.allows(t(b"\"a\"")) && !m.allows(t(b"a")));
    m.accept(t(b"\"")).unwrap();
    // A lead byte alone is allowed (é can follow); its continuation is not, yet.
    assert!(m.allows(t(&[0xC3])) && !m.allows(t(&[0xA9])));
    assert!(m.allows(t(&[0xE2, 0x82])));
    m.accept(t(&[0xC3])).unwrap();
    assert!(!m.is_complete());
    assert!(m.allows(t(&[0xA9])) && !m.allows(t(b"a")) && !m.allows(t(&[0xC3])));
    assert!(
        !m.allows(t(&[0xAC, b'"'])),
        "0xC3 0xAC is ì, not in the class"
    );
    m.accept(t(&[0xA9])).unwrap();
    m.accept(t(&[0xE2, 0x82])).unwrap();
    assert!(m.allows(t(&[0xAC, b'"'])));
    m.accept(t(&[0xAC, b'"'])).unwrap();
    assert!(m.is_complete() && !m.can_continue());
    assert!(m.allows(eog));
    for p in [b"".as_slice(), &[0], b"a"] {
        assert!(!m.allows(t(p)), "{p:?}");
    }
    m.accept(eog).unwrap();
    assert!(m.accept(t(b"a")).is_err());
    // Control and NUL tokens are never allowed, even where any char is.
    let table = Arc::new(TokenTable::new(pieces.clone(), &[eog]));
    let m = Matcher::new(Grammar::parse("root ::= .*").unwrap(), table).unwrap();
    assert!(!m.allows(t(b"")) && !m.allows(t(&[0])) && m.allows(eog) && m.allows(t(b"xy\n")));
}

#[test]
fn matcher_token_references() {
    let (pieces, eog) = toy_vocab();
    let mut table = TokenTable::new(pieces.clone(), &[eog]);
    let ctl = id_of(&pieces, b"");
    table.add_name("<think>", ctl);
    let table = Arc::new(table);
    let t = |p: &[u8]| id_of(&pieces, p);
    let g = Grammar::parse(&format!(
        r#"root ::= <think> (!<[{}]>)* <[{}]> "!""#,
        t(b"x"),
        t(b"x")
    ))
    .unwrap();
    let mut m = Matcher::new(g, table.clone()).unwrap();
    // A token reference admits exactly that token, even a control token.
    assert!(m.allows(ctl) && !m.allows(t(b"a")));
    m.accept(ctl).unwrap();
    assert!(m.allows(t(b"a")) && m.allows(t(b"xy\n")) && m.allows(t(b"x")));
    m.accept(t(b"true")).unwrap();
    m.accept(t(b"x")).unwrap();
    assert!(m.allows(t(b"!")) && !m.allows(t(b"x")) && !m.allows(eog));
    m.accept(t(b"!")).unwrap();
    assert!(m.allows(eog));
    let bad = Grammar::parse("root ::= \"a\"\n  <nope>").unwrap_err();
    assert_eq!(bad.line, 2);
    let g = Grammar::parse("root ::= <nope> \"a\"").unwrap();
    let e = Matcher::new(g, table).err().unwrap();
    assert_eq!(
        e.to_string(),
        "1:10: token <nope> is not a single token of this vocabulary"
    );
}

/// The trie walk (mask over the whole vocabulary) and the per-token check agree at every step
/// of random walks under the JSON grammar, and every walk's text is a prefix the character-level
/// recognizer accepts.
#[test]
fn mask_agrees_with_allows_on_random_walks() {
    let (pieces, eog) = toy_vocab();
    let n = pieces.len();
    let table = Arc::new(TokenTable::new(pieces.clone(), &[eog]));
    let g = Arc::new(load("json.gbnf"));
    let mut rng = cria_engine::sampler::Rng::new(7);
    let mut completed = 0;
    for _walk in 0..40 {
        let mut m = Matcher::new(g.clone(), table.clone()).unwrap();
        let mut text: Vec<u8> = Vec::new();
        for _step in 0..60 {
            let mut c = Candidates::default();
            c.fill(&vec![0.0; n]);
            m.mask(&mut c);
            let allowed: Vec<u32> = c
                .data
                .iter()
                .filter(|x| x.logit == 0.0)
                .map(|x| x.id)
                .collect();
            for t in 0..n as u32 {
                assert_eq!(
                    allowed.contains(&t),
                    m.allows(t),
                    "token {t} {:?} after {:?}",
                    String::from_utf8_lossy(&pieces[t as usize]),
                    String::from_utf8_lossy(&text)
                );
            }
            // A short candidate list takes the per-token path: same answer.
            let mut few = Candidates::default();
            few.fill(&vec![0.0; 40]);
            m.mask(&mut few);
            for x in &few.data {
                assert_eq!(x.logit == 0.0, allowed.contains(&x.id));
            }
            assert!(
                !allowed.is_empty(),
                "dead end after {:?}",
                String::from_utf8_lossy(&text)
            );
            let t = allowed[(rng.next_u64() % allowed.len() as u64) as usize];
            m.accept(t).unwrap();
            if t == eog {
                completed += 1;
                let s = String::from_utf8(text.clone()).unwrap();
                assert!(g.accepts(&s), "{s:?}");
                if let Err(e) = serde_json::from_str::<Value>(&s) {
                    // JSON has no range limit; serde_json's f64 does (e.g. 24e481).
                    assert!(
                        e.to_string().starts_with("number out of range"),
                        "{s:?}: {e}"
                    );
                }
                break;
            }
            text.extend_from_slice(&pieces[t as usize]);
            if let Ok(s) = std::str::from_utf8(&text) {
                assert!(g.accepts_prefix(s), "{s:?}");
            }
        }
    }
    eprintln!("{completed} of 40 walks completed");
}

#[test]
fn grammar_sample_only_returns_allowed_tokens() {
    let (pieces, eog) = toy_vocab();
    let n = pieces.len();
    let table = Arc::new(TokenTable::new(pieces.clone(), &[eog]));
    let g = Arc::new(load("arithmetic.gbnf"));
    let mut rng = cria_engine::sampler::Rng::new(3);
    for seed in 0..10 {
        let mut sampler = Sampler::new(
            SamplerConfig {
                temperature: 1.5,
                seed,
                ..Default::default()
            },
            n,
        );
        let mut m = Matcher::new(g.clone(), table.clone()).unwrap();
        for _ in 0..50 {
            let logits: Vec<f32> = (0..n).map(|_| (rng.next_f64() * 8.0) as f32).collect();
            let t = grammar::sample(&mut sampler, &m, &logits);
            assert!(m.allows(t), "token {t}");
            m.accept(t).unwrap();
            sampler.accept(t);
            if t == eog {
                break;
            }
        }
    }
}
