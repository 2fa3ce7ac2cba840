//! What llama.cpp and Ollama users type on day one, against the real binary and SmolLM2:
//! `cria run MODEL "prompt"`, prompts from -p, -f and stdin, `-n -1`, inline grammars and
//! schemas, why a run stopped, flags refused before the model loads, help text for every flag,
//! readable `inspect` and `tokenize` output, and `cria run` and `cria serve` agreeing on a
//! grammar-constrained answer.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};

mod common;
use common::smol;

fn smol_str() -> String {
    smol().to_str().unwrap().to_string()
}

/// Runs cria with `stdin` piped in (empty: closed at once).
fn cria(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cria"))
        .args(args)
        .env(
            "CRIA_CACHE",
            std::env::temp_dir().join("cria-first-day-cache"),
        )
        .env("HF_HUB_OFFLINE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

/// stdout and stderr of a run that must succeed.
fn ok(args: &[&str], stdin: &str) -> (String, String) {
    let o = cria(args, stdin);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{args:?} failed:\n{err}");
    (String::from_utf8(o.stdout).unwrap(), err)
}

/// stderr of a run that must fail.
fn fails(args: &[&str]) -> String {
    let o = cria(args, "");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "{args:?} succeeded:\n{err}");
    assert!(!err.contains("panicked"), "{args:?} panicked:\n{err}");
    err
}

const SEEDED: [&str; 6] = ["--seed", "7", "--temp", "0.8", "-t", "2"];

fn with_seed<'a>(args: &[&'a str]) -> Vec<&'a str> {
    args.iter().copied().chain(SEEDED).collect()
}

#[test]
fn the_model_is_the_first_word_and_the_prompt_comes_from_anywhere() {
    let m = smol_str();
    let prompt = "Name a color.";
    let (want, _) = ok(&with_seed(&["run", "-m", &m, "-n", "6", prompt]), "");
    assert!(!want.trim().is_empty());
    let file = std::env::temp_dir().join(format!("cria-first-day-{}.txt", std::process::id()));
    std::fs::write(&file, prompt).unwrap();
    let file = file.to_str().unwrap();
    // A GGUF file without the extension is known by its magic.
    let link = std::env::temp_dir().join(format!("cria-first-day-model-{}", std::process::id()));
    std::fs::remove_file(&link).ok();
    std::os::unix::fs::symlink(smol(), &link).unwrap();
    let link = link.to_str().unwrap();
    let ways: Vec<(Vec<&str>, &str)> = vec![
        (vec!["run", link, prompt], ""),
        // Ollama: the model, then the prompt as words.
        (vec!["run", &m, "Name", "a", "color."], ""),
        (vec!["run", &m, prompt, "--n-predict", "6"], ""),
        (vec!["run", &m, "-p", prompt], ""),
        (vec!["run", "-m", &m, "--prompt", prompt], ""),
        (vec!["run", &m, "-f", file], ""),
        (vec!["run", &m, "-f", "-"], prompt),
        // Piped stdin without any other prompt.
        (vec!["run", &m], prompt),
    ];
    for (args, stdin) in ways {
        let mut args = with_seed(&args);
        if !args.contains(&"--n-predict") {
            args.extend(["-n", "6"]);
        }
        let (got, err) = ok(&args, stdin);
        assert_eq!(got, want, "{args:?}\n{err}");
        assert!(
            err.contains("[stopped: the token limit (-n 6) was reached]"),
            "{args:?}: {err}"
        );
    }
    std::fs::remove_file(file).ok();
    std::fs::remove_file(link).ok();
    // Two prompts, or none at all, are errors that say what to do.
    let e = fails(&["run", &m, "words", "-p", "and a flag"]);
    assert!(e.starts_with("error: give the prompt once"), "{e}");
    let e = fails(&["run", &m]);
    assert!(
        e.starts_with("error: no prompt") && e.contains("stdin was empty"),
        "{e}"
    );
    let e = fails(&["run", &m, "-p", ""]);
    assert!(e.starts_with("error: the prompt is empty"), "{e}");
    // A .gguf path that does not exist is the model, and the error says so.
    let e = fails(&["run", "no-such-model.gguf", "hi"]);
    assert!(
        e.starts_with("error: no such file") && e.contains("no-such-model.gguf"),
        "{e}"
    );
}

/// llama.cpp's `-ctk/-ctv` spellings run a quantized KV cache (the same as `--kv-type q8_0`).
#[test]
fn llama_cpp_cache_type_flags_run() {
    let m = smol_str();
    let run = |flags: &[&str]| {
        let mut a = vec!["run", m.as_str(), "-n", "6", "--temp", "0"];
        a.extend_from_slice(flags);
        a.push("Name a colour.");
        ok(&a, "").0
    };
    let ct = run(&["-ctk", "q8_0", "-ctv", "q8_0"]);
    assert!(!ct.trim().is_empty());
    assert_eq!(ct, run(&["--kv-type", "q8_0"]));
}

#[test]
fn a_run_says_why_it_stopped() {
    let m = smol_str();
    // -n -1 is "no limit": a grammar given inline (llama.cpp's --grammar) ends the answer.
    let (out, err) = ok(
        &with_seed(&[
            "run",
            &m,
            "-n",
            "-1",
            "--grammar",
            r#"root ::= "yes" | "no""#,
            "Is the sky blue?",
        ]),
        "",
    );
    assert!(matches!(out.trim(), "yes" | "no"), "{out:?}");
    assert!(err.contains("[stopped: the grammar is complete]"), "{err}");
    // JSON cut by the token limit is called incomplete (an object needs more than 2 tokens).
    let schema =
        r#"{"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}"#;
    let (out, err) = ok(
        &with_seed(&[
            "run",
            &m,
            "-n",
            "2",
            "--json-schema",
            schema,
            "A cat as JSON.",
        ]),
        "",
    );
    assert!(out.starts_with('{'), "{out:?}");
    assert!(
        err.contains("[stopped: the token limit (-n 2) was reached; output incomplete: the token limit cut the JSON]"),
        "{err}"
    );
    // No -n: the answer goes on until the end of generation or a full context (256 tokens was
    // the old default limit; the context here holds more).
    let (_, err) = ok(
        &with_seed(&["run", &m, "--ignore-eos", "-c", "300", "Count to ten."]),
        "",
    );
    assert!(
        err.contains("[stopped: the context of 300 tokens is full]"),
        "{err}"
    );
    let gen = generated(&err);
    assert!(gen > 256, "{gen} tokens: {err}");
    // A stop string.
    let (_, err) = ok(
        &with_seed(&[
            "run",
            &m,
            "-n",
            "64",
            "--grammar",
            r#"root ::= "a, b, c, d""#,
            "--stop",
            ", c",
            "Letters?",
        ]),
        "",
    );
    assert!(
        err.contains("[stopped: a stop string appeared; output incomplete: the stop string cut the grammar's output]"),
        "{err}"
    );
}

#[test]
fn bad_flags_are_refused_before_the_model_loads() {
    // The model does not exist: each error must be about the flag, so it came first.
    let dir = std::env::temp_dir().join(format!("cria-first-day-flags-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let gbnf = dir.join("g.gbnf");
    std::fs::write(&gbnf, "root ::= \"x\"\n").unwrap();
    let gbnf = gbnf.to_str().unwrap();
    let missing = "/nonexistent/model.gguf";
    let long_stop = "x".repeat(5000);
    let cases: &[(&[&str], &str)] = &[
        // Sizes of the sampler's and stop matcher's buffers are bounded (cria-engine's limits).
        (&["--repeat-last-n", "100000000000"], "repeat-last-n"),
        (&["--stop", long_stop.as_str()], "--stop[0]"),
        // llama.cpp's cache-type flags: cria keeps K and V in one type.
        (&["-ctk", "q8_0", "-ctv", "q4_0"], "must be the same"),
        (&["-ctk", "q5_1"], "--kv-type"),
        (&["--temp", "abc"], "--temperature"),
        (&["--top-k", "-5"], "--top-k"),
        (&["--ctx-size", "0"], "--ctx-size"),
        (&["--batch-size", "0"], "--batch-size"),
        (&["-t", "100000"], "--threads"),
        (&["-n", "-2"], "--n-predict"),
        (&["--top-p", "1.5"], "--top-p"),
        (
            &["--grammar-file", "/nonexistent/g.gbnf"],
            "/nonexistent/g.gbnf",
        ),
        (&["--grammar", "root ::= foo"], "--grammar"),
        // The old --grammar FILE is pointed at --grammar-file.
        (&["--grammar", gbnf], "--grammar-file"),
        (&["--json-schema", "{\"type\": "], "--json-schema:1:"),
        (
            &["--json-schema", r#"{"type": "object", "not": {}}"#],
            "not",
        ),
        (
            &["--json-schema-file", "/nonexistent/s.json"],
            "/nonexistent/s.json",
        ),
    ];
    for (flags, needle) in cases {
        let mut args = vec!["run", "-m", missing];
        args.extend_from_slice(flags);
        args.push("hi");
        let e = fails(&args);
        assert!(e.starts_with("error: "), "{args:?}: {e}");
        assert!(e.contains(needle), "{args:?}: no {needle:?} in {e}");
        assert!(
            !e.contains("model.gguf"),
            "{args:?} loaded the model first: {e}"
        );
        // chat checks the same flags first too.
        let mut args = vec!["chat", "-m", missing];
        args.extend_from_slice(flags);
        let e = fails(&args);
        assert!(
            e.contains(needle) && !e.contains("model.gguf"),
            "{args:?}: {e}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn flags_checked_against_the_model_are_errors_not_aborts() {
    let m = smol_str();
    // A KV cache far beyond any memory (was an allocation failure and an abort).
    let e = fails(&["run", &m, "-c", "100000000", "hi"]);
    assert!(
        e.contains("error: --ctx-size 100000000 needs a KV cache of"),
        "{e}"
    );
    // A bias on a token the model does not have (was silently ignored).
    let e = fails(&["run", &m, "--logit-bias", "99999999+1", "hi"]);
    assert!(
        e.contains("error: --logit-bias: token 99999999 is not"),
        "{e}"
    );
}

/// The subcommands `cria --help` lists.
fn subcommands() -> Vec<String> {
    let (help, _) = ok(&["--help"], "");
    help.split("Commands:")
        .nth(1)
        .unwrap()
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn every_flag_has_help_and_no_internal_names() {
    let subs = subcommands();
    assert!(subs.len() >= 10, "{subs:?}");
    let mut pages = vec![(String::new(), ok(&["--help"], "").0)];
    for s in &subs {
        for h in ["-h", "--help"] {
            pages.push((format!("{s} {h}"), ok(&[s, h], "").0));
        }
    }
    for (which, page) in &pages {
        let lines: Vec<&str> = page.lines().collect();
        let mut section = "";
        for (i, l) in lines.iter().enumerate() {
            if !l.starts_with(' ') && l.ends_with(':') {
                section = l;
                continue;
            }
            if !matches!(section, "Options:" | "Arguments:" | "Commands:") {
                continue;
            }
            // An entry starts 2 spaces in (6 for a long-only flag); its help follows two or
            // more spaces later on the same line, or on the lines below, 10 spaces in.
            let indent = |l: &str| l.len() - l.trim_start().len();
            if !matches!(indent(l), 2 | 6) || l.trim().is_empty() {
                continue;
            }
            let entry = l.trim_start();
            let same_line = entry
                .split_once("  ")
                .is_some_and(|(_, h)| !h.trim().is_empty());
            let next_line = lines
                .get(i + 1)
                .is_some_and(|n| indent(n) >= 10 && !n.trim().is_empty());
            assert!(
                same_line || next_line,
                "cria {which}: {:?} has no help text",
                entry.trim()
            );
        }
        // Placeholders clap derives from field names (value_name missing).
        let field_names = [
            "<MAX_TOKENS>",
            "<CTX_SIZE>",
            "<KV_TYPE>",
            "<BATCH>",
            "<API_KEY>",
            "<MAX_BODY>",
            "<READ_TIMEOUT>",
            "<PARALLEL>",
        ];
        for bad in ["Some(", "None)"].iter().chain(&field_names) {
            assert!(!page.contains(bad), "cria {which} shows {bad:?}:\n{page}");
        }
        // A Rust path (`cria_model::KvType`), not an IPv6 address (`[::1]`, `::`).
        let rust_path = page.match_indices("::").any(|(i, _)| {
            page[..i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_')
        });
        assert!(!rust_path, "cria {which} shows a Rust path:\n{page}");
    }
}

#[test]
fn inspect_and_tokenize_read_as_text() {
    let m = smol_str();
    let (a, _) = ok(&["inspect", "-m", &m], "");
    let (b, _) = ok(&["inspect", &m], "");
    assert_eq!(a, b);
    for bad in ["Some(", "None", "[576", "Gguf(", "add_bos"] {
        assert!(!a.contains(bad), "inspect shows {bad:?}:\n{a}");
    }
    assert!(a.contains("134.5M params"), "{a}");
    assert!(a.contains("bos 1 '<|im_start|>'"), "{a}");
    let at = |name: &str| {
        a.find(&format!("  {name} "))
            .unwrap_or_else(|| panic!("{name}"))
    };
    assert!(at("blk.2.attn_k.weight") < at("blk.10.attn_k.weight"));
    assert!(at("blk.9.ffn_up.weight") < at("blk.10.attn_k.weight"));
    let e = fails(&["inspect", "-m", &m, &m]);
    assert!(e.starts_with("error: "), "{e}");

    let (t, _) = ok(
        &["tokenize", "-m", &m, "--parse-special", "<|im_start|>Hi\n"],
        "",
    );
    let lines: Vec<&str> = t.lines().map(str::trim).collect();
    assert_eq!(lines[0], "1 '<|im_start|>'", "{t}");
    assert!(lines.iter().any(|l| l.ends_with(" '\\n'")), "{t}");

    // chat takes the model as its first word (and leaves at end of input).
    let (_, err) = ok(&["chat", &m, "--no-history", "-c", "256"], "/bye\n");
    assert!(err.contains("(134.5M params)"), "{err}");
    let e = fails(&["chat", &m, "-m", &m]);
    assert!(e.starts_with("error: give the model once"), "{e}");
}

#[test]
fn a_reader_that_goes_away_is_no_error() {
    // `cria tokenize ... | head -1`: far more output than a pipe holds, and the reader leaves.
    let text = std::env::temp_dir().join(format!("cria-first-day-pipe-{}.txt", std::process::id()));
    std::fs::write(
        &text,
        "one two three four five six seven eight nine ten\n".repeat(20_000),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cria"))
        .args(["tokenize", "-m", &smol_str(), "-f", text.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(
        first.trim_start().starts_with(char::is_numeric),
        "{first:?}"
    );
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.is_empty(),
        "{:?}: {err}",
        out.status
    );
    std::fs::remove_file(&text).ok();
}

// ---------------------------------------------------------------------------------------------
// `cria run` and `cria serve`: the same seeded, grammar-constrained answer and stop reason.
// ---------------------------------------------------------------------------------------------

struct Server {
    child: std::process::Child,
    addr: String,
}

impl Server {
    fn start() -> Server {
        Server::start_with(&[])
    }

    /// `cria serve` with `extra` flags.
    fn start_with(extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cria"))
            .args([
                "serve",
                "-m",
                &smol_str(),
                "--port",
                "0",
                "-c",
                "512",
                "-t",
                "2",
            ])
            .args(extra)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while !line.contains("listening on http://") {
            line.clear();
            assert!(err.read_line(&mut line).unwrap() > 0, "cria serve exited");
        }
        let addr = line
            .split("http://")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next();
        let addr = addr.unwrap().to_string();
        std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
        Server { child, addr }
    }

    /// (content, finish_reason) of a chat completion.
    fn chat(&self, prompt: &str, grammar: &str, max_tokens: usize) -> (String, String) {
        let fields = serde_json::json!({"grammar": grammar, "max_tokens": max_tokens});
        let (text, fin, _) = self.chat_with(prompt, fields);
        (text, fin)
    }

    /// (content, finish_reason, completion_tokens) of a seeded chat completion with `fields`.
    fn chat_with(&self, prompt: &str, fields: serde_json::Value) -> (String, String, u64) {
        let mut body = serde_json::json!({
            "messages": [{"role": "user", "content": prompt}], "seed": 7, "temperature": 0.8,
        });
        for (k, v) in fields.as_object().unwrap() {
            body[k] = v.clone();
        }
        let body = body.to_string();
        let mut s = TcpStream::connect(&self.addr).unwrap();
        write!(
            s,
            "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let json = resp.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|_| panic!("{resp}"));
        let c = &v["choices"][0];
        let text = c["message"]["content"].as_str().unwrap_or("").to_string();
        let fin = c["finish_reason"].as_str().unwrap().to_string();
        (text, fin, v["usage"]["completion_tokens"].as_u64().unwrap())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (text, "stop" or "length") of `cria run` with the same request, and the tokens generated.
fn run_cli(prompt: &str, grammar: &str, max_tokens: usize) -> ((String, String), usize) {
    let n = max_tokens.to_string();
    run_flags(prompt, &["-n", &n, "--grammar", grammar])
}

/// (text, "stop" or "length") of `cria run` with `flags`, and the tokens generated.
fn run_flags(prompt: &str, flags: &[&str]) -> ((String, String), usize) {
    let m = smol_str();
    let mut args = vec!["run", "-m", &m, "-c", "512"];
    args.extend_from_slice(flags);
    args.push(prompt);
    let (out, err) = ok(&with_seed(&args), "");
    let text = out.strip_suffix('\n').unwrap().to_string();
    let length = err.contains("[stopped: the token limit") || err.contains("tokens is full]");
    let fin = if length { "length" } else { "stop" };
    ((text, fin.to_string()), generated(&err))
}

/// The generated-token count of `cria run`'s summary line.
fn generated(err: &str) -> usize {
    err.split("generation ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no generation count in {err}"))
}

#[test]
fn run_and_serve_agree_under_a_grammar() {
    let server = Server::start();
    let prompt = "Is the sky blue? Answer in a sentence.";
    let grammar =
        r#"root ::= "The answer is " ("yes" | "no" | "maybe") ", because " [a-z ]{1,40} ".""#;
    let (full, n) = run_cli(prompt, grammar, 128);
    assert_eq!(full.1, "stop", "{full:?}");
    assert_eq!(server.chat(prompt, grammar, 128), full);
    // The grammar completed by the last token allowed: "stop" from both (the server said
    // "length"); one token fewer: "length" from both, with the same cut text.
    for (max, want) in [(n, "stop"), (n - 1, "length")] {
        let (cli, _) = run_cli(prompt, grammar, max);
        assert_eq!(cli.1, want, "-n {max}: {cli:?}");
        assert_eq!(server.chat(prompt, grammar, max), cli, "max_tokens {max}");
    }
    // A grammar no token can continue (its class is empty): both end with "stop" and show
    // only what the grammar allowed (`cria run` used to fail with an error).
    let stuck = r#"root ::= "The " [^\x00-\U0010FFFF]"#;
    let (cli, _) = run_cli(prompt, stuck, 16);
    assert_eq!(cli, ("The ".to_string(), "stop".to_string()));
    assert_eq!(server.chat(prompt, stuck, 16), cli);
}

/// Where the CLI's and the server's generation loops used to differ, they now give the same
/// result (both run the engine's one step function).
#[test]
fn run_and_serve_agree_where_their_loops_differed() {
    let server = Server::start();
    let prompt = "Name three fruits, one per line, and say why you like each.";
    // A limit of no tokens: the server sampled and sent one token anyway.
    let (cli, n) = run_flags(prompt, &["-n", "0"]);
    assert_eq!((&cli.0[..], &cli.1[..], n), ("", "length", 0), "{cli:?}");
    let srv = server.chat_with(prompt, serde_json::json!({"n_predict": 0}));
    assert_eq!(srv, (String::new(), "length".to_string(), 0));
    // DRY: the server ran it without its sequence breakers ("\n", ":", ...).
    let (cli, n) = run_flags(prompt, &["-n", "64", "--dry-multiplier", "2"]);
    let fields = serde_json::json!({"max_tokens": 64, "dry_multiplier": 2});
    let srv = server.chat_with(prompt, fields);
    assert_eq!((srv.0, srv.1, srv.2 as usize), (cli.0, cli.1, n));
}

/// `cria serve --lora NAME=PATH` serves the adapter as the model NAME (BASE:NAME), and a request
/// for it gives what `cria run --lora PATH` gives; a request naming no adapter gets the base.
#[test]
fn run_and_serve_agree_with_an_adapter() {
    let fixtures = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/lora/smollm2"
    );
    let a = format!("{fixtures}/s_b");
    let server = Server::start_with(&["--lora", &format!("sb={a}")]);
    let prompt = "Write one sentence about rivers.";
    let (with, n) = run_flags(prompt, &["-n", "32", "--lora", &a]);
    let (base, _) = run_flags(prompt, &["-n", "32"]);
    assert_ne!(with.0, base.0, "the adapter changed nothing");
    let srv = server.chat_with(prompt, serde_json::json!({"max_tokens": 32, "model": "sb"}));
    assert_eq!((srv.0, srv.1, srv.2 as usize), (with.0, with.1, n));
    let srv = server.chat_with(prompt, serde_json::json!({"max_tokens": 32}));
    assert_eq!((srv.0, srv.1), base);
}
