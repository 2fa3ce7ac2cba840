//! Constrained generation with the real model (SmolLM2-135M-Instruct Q4_1 from $CRIA_REF_DIR):
//! 100 seeded generations under each of json.gbnf, arithmetic.gbnf and a JSON Schema, at
//! temperature 1 over the whole vocabulary (no top-k/top-p/min-p), so the model is pushed
//! against the grammar at every step. Every output must be a prefix the grammar accepts, and
//! every completed one must parse (JSON with serde_json, checked against the schema by hand;
//! arithmetic with the recognizer). `grammar_speed_figures` (ignored) measures tokens/s with and
//! without the grammar.

use cria_engine::grammar::{self, json_schema_to_gbnf, Grammar, Matcher, TokenTable};
use cria_engine::sampler::{Sampler, SamplerConfig};
use cria_kernels::CpuBackend;
use cria_model::{forward, KvCache, LoadOptions, Logits, Model, Scratch, Source};
use cria_tokenizer::Tokenizer;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{repo, smol};

/// Runs per grammar; CRIA_GRAMMAR_GENS overrides it for a quick look.
fn generations() -> u64 {
    std::env::var("CRIA_GRAMMAR_GENS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100)
}
const MAX_TOKENS: usize = 48;

fn example_grammar(name: &str) -> Grammar {
    let p = repo()
        .join("crates/cria-engine/tests/fixtures/grammars")
        .join(name);
    Grammar::parse(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

struct Lm {
    m: Model,
    b: CpuBackend,
    tok: Tokenizer,
    table: Arc<TokenTable>,
}

/// The same table `cria run --grammar` builds (crates/cria/src/constraint_args.rs, which a test
/// of the binary crate cannot import).
fn load() -> Lm {
    let b = CpuBackend::new(2);
    let m = Model::load(&smol(), LoadOptions::default(), &b).unwrap();
    let Source::Gguf(g) = &m.source else {
        unreachable!()
    };
    let tok = Tokenizer::from_gguf(g).unwrap();
    let t0 = Instant::now();
    let eog: Vec<u32> = tok.eog_ids().collect();
    let table = TokenTable::from_vocab(
        tok.vocab_size() as u32,
        |t| tok.token_to_piece(t),
        &eog,
        |t| tok.is_control(t).then(|| tok.token_text(t).to_string()),
    );
    let table = Arc::new(table);
    eprintln!(
        "token table for {} tokens: {:?}",
        tok.vocab_size(),
        t0.elapsed()
    );
    Lm { m, b, tok, table }
}

struct Outcome {
    text: String,
    /// The output up to the last point where the grammar was complete (a run may go on past
    /// it, e.g. more arithmetic lines or trailing whitespace, and hit the token limit).
    complete: Option<String>,
}

struct Batch {
    outs: Vec<Outcome>,
    tokens: usize,
    decode: Duration, // sampling + forward, prompt excluded
}

/// `runs` seeded runs from one prefilled prompt (each run overwrites the positions after
/// it, so the prompt's keys and values are reused).
fn run(lm: &Lm, prompt: &str, g: Option<&Arc<Grammar>>, runs: u64) -> Batch {
    let ids = lm.tok.encode(prompt, false, true);
    let vocab = lm.m.config.vocab_size;
    let mut kv = KvCache::new(&lm.m, ids.len() + MAX_TOKENS + 1);
    let mut s = Scratch::new(&lm.m, 64, Logits::Last);
    for (k, c) in ids.chunks(64).enumerate() {
        forward(&lm.m, &lm.b, c, k * 64, &mut kv, &mut s, Logits::Last).unwrap();
    }
    let first = s.logits().to_vec();
    let mut batch = Batch {
        outs: Vec::new(),
        tokens: 0,
        decode: Duration::ZERO,
    };
    for seed in 0..runs {
        let cfg = SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed,
            ..Default::default()
        };
        let mut sampler = Sampler::new(cfg, vocab);
        let mut matcher = g.map(|g| Matcher::new(g.clone(), lm.table.clone()).unwrap());
        let mut logits = first.clone();
        let mut bytes = Vec::new();
        let mut pos = ids.len();
        let mut last_complete = None;
        let t0 = Instant::now();
        for _ in 0..MAX_TOKENS {
            let t = match &matcher {
                Some(m) => grammar::sample(&mut sampler, m, &logits),
                None => sampler.sample(&logits),
            };
            sampler.accept(t);
            batch.tokens += 1;
            if let Some(m) = &mut matcher {
                m.accept(t).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            }
            if lm.tok.is_eog(t) {
                break;
            }
            bytes.extend_from_slice(&lm.tok.token_to_piece(t));
            if matcher.as_ref().is_some_and(|m| m.is_complete()) {
                last_complete = Some(bytes.len());
            }
            if matcher.as_ref().is_some_and(|m| !m.can_continue()) {
                break;
            }
            forward(&lm.m, &lm.b, &[t], pos, &mut kv, &mut s, Logits::Last).unwrap();
            logits.copy_from_slice(s.logits());
            pos += 1;
        }
        batch.decode += t0.elapsed();
        let complete = last_complete.map(|n| String::from_utf8(bytes[..n].to_vec()).unwrap());
        // A run cut off by the token limit may end inside a character.
        let valid = match std::str::from_utf8(&bytes) {
            Ok(s) => s.len(),
            Err(e) => e.valid_up_to(),
        };
        let text = String::from_utf8(bytes[..valid].to_vec()).unwrap();
        assert!(
            valid + 4 > bytes.len(),
            "seed {seed}: invalid UTF-8 {bytes:?}"
        );
        batch.outs.push(Outcome { text, complete });
    }
    batch
}

fn rate(b: &Batch) -> f64 {
    b.tokens as f64 / b.decode.as_secs_f64()
}

/// Checks every output against `g` and `check` (for completed ones); returns how many completed.
fn check_all(
    name: &str,
    g: &Grammar,
    b: &Batch,
    check: impl Fn(&str) -> Result<(), String>,
) -> usize {
    let mut done = 0;
    for (seed, o) in b.outs.iter().enumerate() {
        assert!(
            g.accepts_prefix(&o.text),
            "{name} seed {seed}: {:?}",
            o.text
        );
        if let Some(c) = &o.complete {
            done += 1;
            assert!(g.accepts(c), "{name} seed {seed}: {c:?}");
            check(c).unwrap_or_else(|e| panic!("{name} seed {seed}: {e}: {c:?}"));
        }
    }
    eprintln!(
        "{name}: {done}/{} completed, {} tokens, {:.1} tok/s; e.g. {:?}",
        b.outs.len(),
        b.tokens,
        rate(b),
        b.outs.iter().find_map(|o| o.complete.as_deref())
    );
    done
}

fn chat(user: &str) -> String {
    format!(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    )
}

fn parse_json(s: &str) -> Result<Value, String> {
    serde_json::from_str(s).map_err(|e| e.to_string())
}

const SCHEMA: &str = r#"{
  "type": "object",
  "properties": {
    "name": {"type": "string", "minLength": 1, "maxLength": 12},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "city": {"enum": ["Paris", "Lima", "Oslo"]},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 2}
  },
  "required": ["name", "age"],
  "additionalProperties": false
}"#;

/// The schema above, checked by hand (serde_json keeps key order).
fn valid_person(v: &Value) -> Result<(), String> {
    let o = v.as_object().ok_or("not an object")?;
    let keys: Vec<&str> = o.keys().map(|k| k.as_str()).collect();
    let order = ["name", "age", "city", "tags"];
    let mut last = 0;
    for k in &keys {
        let i = order
            .iter()
            .position(|x| x == k)
            .ok_or(format!("extra key {k}"))?;
        if i < last {
            return Err(format!("key {k} out of order"));
        }
        last = i;
    }
    let name = o.get("name").and_then(Value::as_str).ok_or("name")?;
    if name.chars().count() > 12 || name.is_empty() {
        return Err("name length".into());
    }
    let age = o.get("age").and_then(Value::as_i64).ok_or("age")?;
    if !(0..=120).contains(&age) {
        return Err("age range".into());
    }
    if let Some(c) = o.get("city") {
        if !["Paris", "Lima", "Oslo"].contains(&c.as_str().ok_or("city")?) {
            return Err("city".into());
        }
    }
    if let Some(t) = o.get("tags") {
        let t = t.as_array().ok_or("tags")?;
        if t.len() > 2
            || t.iter()
                .any(|x| x.as_str().is_none_or(|s| s.chars().count() > 8))
        {
            return Err("tags".into());
        }
    }
    Ok(())
}

#[test]
fn constrained_generation_parses() {
    let lm = load();
    // JSON (llama.cpp's json.gbnf).
    let json = Arc::new(example_grammar("json.gbnf"));
    let p = chat("Describe a cat as a JSON object.");
    let n = generations();
    let constrained = run(&lm, &p, Some(&json), n);
    let done_json = check_all("json.gbnf", &json, &constrained, |s| {
        match parse_json(s) {
            Ok(_) => Ok(()),
            // JSON numbers have no range; serde_json's f64 does.
            Err(e) if e.starts_with("number out of range") => Ok(()),
            Err(e) => Err(e),
        }
    });
    // Arithmetic.
    let arith = Arc::new(example_grammar("arithmetic.gbnf"));
    let b = run(
        &lm,
        &chat("Write three equations like x=1+2, one per line."),
        Some(&arith),
        n,
    );
    let done_arith = check_all("arithmetic.gbnf", &arith, &b, |s| {
        // Complete means the recognizer accepted it (checked above); and every line is one.
        let lines = s.split_inclusive('\n').count();
        if lines > 0 && s.ends_with('\n') {
            Ok(())
        } else {
            Err("not newline-terminated lines".into())
        }
    });
    // A JSON Schema.
    let schema: Value = serde_json::from_str(SCHEMA).unwrap();
    let person = Arc::new(Grammar::parse(&json_schema_to_gbnf(&schema).unwrap()).unwrap());
    let b = run(
        &lm,
        &chat("Give a person as JSON with name and age."),
        Some(&person),
        n,
    );
    let done_schema = check_all("schema", &person, &b, |s| valid_person(&parse_json(s)?));

    // Most runs should finish within the token budget; none may break the grammar (above).
    for (name, done) in [
        ("json", done_json),
        ("arithmetic", done_arith),
        ("schema", done_schema),
    ] {
        assert!(
            done * 5 >= n as usize,
            "{name}: only {done} of {n} runs completed"
        );
    }
}

/// The issue's bar, masking must not halve generation speed, as a measurement (tests assert no
/// timings): tokens/s with and without json.gbnf over the same seeded runs.
/// `cargo test --profile ci -p cria --test grammar_gen -- --ignored --nocapture`
#[test]
#[ignore = "a measurement: prints figures"]
fn grammar_speed_figures() {
    let lm = load();
    let json = Arc::new(example_grammar("json.gbnf"));
    let p = chat("Describe a cat as a JSON object.");
    let n = generations().div_ceil(5);
    let free = run(&lm, &p, None, n);
    let constrained = run(&lm, &p, Some(&json), n);
    println!(
        "speed: {:.1} tok/s free, {:.1} tok/s under json.gbnf: ratio {:.3} (the bar: > 0.5)",
        rate(&free),
        rate(&constrained),
        rate(&constrained) / rate(&free)
    );
}
