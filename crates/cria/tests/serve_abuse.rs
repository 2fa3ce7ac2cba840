//! `cria serve` against a catalogue of bad clients, round after round, for CRIA_ABUSE_SECS
//! (default 60; the issue's 5-minute run is `CRIA_ABUSE_SECS=300`): issue 19's hostile requests
//! (cross-site posts, wrong content types, megabyte /tokenize with pieces, n x max_tokens x
//! logprobs, deep and huge schemas and grammars, huge sampler windows, an embedding batch whose
//! client leaves), malformed JSON, invalid
//! UTF-8, huge and negative numbers, wrong types, deep nesting, 10 MB bodies (with and without a
//! length), slowloris clients trickling headers or a body, clients that hang up mid-stream, and
//! garbage that is not HTTP at all. After every round the server must still answer a seeded
//! request with the same text, every bad request must get its 4xx (or a clean close), and the
//! server's resident memory must stay bounded and stop growing.
//!
//! The server is the real binary in its own process, so its memory is its own.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::smol;

/// The read timeout given to the server: slow clients are cut after this many seconds.
const READ_TIMEOUT: u64 = 2;

struct Server {
    child: Child,
    addr: SocketAddr,
    /// The server's stderr lines so far (the last 20000).
    log: Arc<Mutex<VecDeque<String>>>,
    /// Answers by status (None: closed without one).
    stats: Mutex<BTreeMap<Option<u16>, usize>>,
}

impl Server {
    fn start() -> Server {
        Self::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cria"))
            .args(["serve", "-m"])
            .arg(smol())
            .args(["--port", "0", "--parallel", "2", "-c", "512", "-t", "2"])
            .args(["--max-body", "1048576", "--read-timeout"])
            .arg(READ_TIMEOUT.to_string())
            .args(extra)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start cria serve");
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let mut line = String::new();
        let addr = loop {
            line.clear();
            if err.read_line(&mut line).unwrap() == 0 {
                panic!("cria serve exited before listening");
            }
            log.lock().unwrap().push_back(line.clone());
            if let Some(rest) = line.split("listening on http://").nth(1) {
                break rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        };
        // Keep reading stderr so the server never blocks on a full pipe.
        let keep = log.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while err.read_line(&mut line).unwrap_or(0) > 0 {
                let mut l = keep.lock().unwrap();
                if l.len() == 20_000 {
                    l.pop_front();
                }
                l.push_back(std::mem::take(&mut line));
            }
        });
        Server {
            child,
            addr,
            log,
            stats: Mutex::default(),
        }
    }

    /// The first log line that contains `what`, waiting for it (lines come as requests end).
    fn log_line(&self, what: &str) -> String {
        for _ in 0..3000 {
            if let Some(l) = self.log.lock().unwrap().iter().find(|l| l.contains(what)) {
                return l.clone();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("no log line with {what:?}: {:?}", self.log.lock().unwrap());
    }

    fn log_has(&self, what: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(what))
    }

    fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let l = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        l.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        s
    }

    /// Sends raw bytes, reads the answer to the end (the request says `Connection: close`);
    /// the status code, or None when the server closed without an answer.
    fn raw(&self, bytes: &[u8]) -> (Option<u16>, String) {
        let mut s = self.connect();
        // A server that answers early (413 before the body) may reset the rest of the upload.
        let _ = s.write_all(bytes);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text
            .strip_prefix("HTTP/1.1 ")
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse().ok());
        *self.stats.lock().unwrap().entry(status).or_default() += 1;
        (status, text)
    }

    fn post(&self, path: &str, body: &[u8]) -> (Option<u16>, String) {
        self.post_with(
            path,
            "Host: 127.0.0.1\r\nContent-Type: application/json\r\n",
            body,
        )
    }

    /// A POST with the given header lines (each ending in CRLF) besides the length.
    fn post_with(&self, path: &str, headers: &str, body: &[u8]) -> (Option<u16>, String) {
        let mut req = format!(
            "POST {path} HTTP/1.1\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        self.raw(&req)
    }

    /// Sends SIGTERM.
    fn terminate(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM");
    }

    /// Waits for the process to end (a bounded wait, so a hang fails rather than blocks).
    fn exit_status(&mut self) -> std::process::ExitStatus {
        for _ in 0..1200 {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("cria serve did not exit after SIGTERM");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The JSON body of an HTTP answer.
fn json_of(resp: &str) -> serde_json::Value {
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {resp}"))
}

fn expect_status(what: &str, got: (Option<u16>, String), want: u16) {
    assert_eq!(got.0, Some(want), "{what}: {}", got.1);
    let err = json_of(&got.1);
    assert!(
        err["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: an OpenAI error object: {}",
        got.1
    );
}

/// A seeded request whose text must never change.
fn probe(s: &Server) -> String {
    let body = br#"{"messages":[{"role":"user","content":"Name a color."}],"max_tokens":12,"seed":7,"temperature":0.8}"#;
    let (st, resp) = s.post("/v1/chat/completions", body);
    assert_eq!(st, Some(200), "{resp}");
    json_of(&resp)["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Opens a connection, sends `fast` at once and then `slow` a byte at a time (over and over),
/// slower than the server allows; returns how long the server took to close it (or answer it).
fn slowloris(
    addr: SocketAddr,
    fast: &'static [u8],
    slow: &'static [u8],
) -> std::thread::JoinHandle<Duration> {
    std::thread::spawn(move || {
        let t0 = Instant::now();
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        s.write_all(fast).unwrap();
        let mut buf = [0u8; 4096];
        for b in slow.iter().cycle() {
            if s.write_all(&[*b]).is_err() {
                break; // reset
            }
            match s.read(&mut buf) {
                Ok(_) => break, // closed (0) or answered (408)
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break, // reset
            }
            std::thread::sleep(Duration::from_millis(300));
            assert!(
                t0.elapsed() < Duration::from_secs(READ_TIMEOUT * 10),
                "a slow client was never cut off"
            );
        }
        t0.elapsed()
    })
}

/// A status that is a refusal naming the problem or a success, never a server error or a close.
fn refused_or_ok(what: &str, got: (Option<u16>, String)) {
    assert!(
        matches!(got.0, Some(200 | 400)),
        "{what}: want 200 or 400: {}",
        &got.1[..got.1.len().min(400)]
    );
}

/// A chat body with `field` (JSON text) added.
fn chat_with(field: &str) -> Vec<u8> {
    format!(r#"{{"messages":[{{"role":"user","content":"hi"}}],"max_tokens":2,{field}}}"#)
        .into_bytes()
}

/// Issue 19's hostile requests that the server itself must refuse or survive: cross-site posts,
/// wrong content types, huge /tokenize bodies with pieces (several at once), answers that would
/// hold n x max_tokens x logprobs, big and deep JSON schemas, a long embedding batch whose client
/// leaves.
fn hostile(s: &Server) {
    let chat = "/v1/chat/completions";
    let ok_body = chat_with(r#""seed":1"#);
    // DNS rebinding (a page on another name that resolves here) and a page's form post.
    let (st, _) = s.post_with(
        chat,
        "Host: evil.example:8080\r\nContent-Type: application/json\r\n",
        &ok_body,
    );
    assert_eq!(st, Some(403), "a foreign Host");
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let h =
            format!("Host: 127.0.0.1\r\nOrigin: https://evil.example\r\nContent-Type: {ct}\r\n");
        expect_status(ct, s.post_with(chat, &h, &ok_body), 415);
    }
    expect_status(
        "no content type",
        s.post_with("/tokenize", "Host: 127.0.0.1\r\n", br#"{"content":"a"}"#),
        415,
    );
    // A megabyte of text to /tokenize with pieces, four at once; one just over the limit.
    tokenize_burst(s, &"ab cd ".repeat(1_000_000 / 6));
    let over = format!(r#"{{"content":"{}"}}"#, "a".repeat((1 << 20) + 1));
    let (st, _) = s.post("/tokenize", over.as_bytes());
    assert!(
        matches!(st, Some(400 | 413)),
        "/tokenize over 1 MiB: {st:?}"
    );
    // n x max_tokens x top_logprobs past what one answer may hold; a big one that fits.
    expect_status(
        "n x max_tokens x logprobs",
        s.post(
            chat,
            &chat_with(r#""n":128,"max_tokens":500,"logprobs":true,"top_logprobs":20"#),
        ),
        400,
    );
    let (st, resp) = s.post(
        chat,
        &chat_with(r#""n":8,"max_tokens":60,"logprobs":true,"top_logprobs":20,"ignore_eos":true"#),
    );
    assert_eq!(st, Some(200), "{}", &resp[..resp.len().min(300)]);
    // Schemas: a chain of 2000 $refs, and 8000 properties.
    let mut defs = serde_json::Map::new();
    for i in 0..2000 {
        defs.insert(
            format!("a{i}"),
            serde_json::json!({"$ref": format!("#/definitions/a{}", i + 1)}),
        );
    }
    defs.insert("a2000".into(), serde_json::json!({"type": "string"}));
    let schema = serde_json::json!({"$ref": "#/definitions/a0", "definitions": defs});
    refused_or_ok(
        "2000 $refs",
        s.post(chat, &chat_with(&format!(r#""json_schema":{schema}"#))),
    );
    let props: serde_json::Map<String, serde_json::Value> = (0..8000)
        .map(|i| (format!("p{i}"), serde_json::json!({"type": "integer"})))
        .collect();
    let schema = serde_json::json!({"type": "object", "properties": props});
    refused_or_ok(
        "8000 properties",
        s.post(chat, &chat_with(&format!(r#""json_schema":{schema}"#))),
    );
    // A long embedding batch whose client leaves once it is sent.
    let inputs: Vec<String> = (0..64)
        .map(|i| format!("{i} {}", "lorem ipsum ".repeat(150)))
        .collect();
    let body = serde_json::json!({ "input": inputs }).to_string();
    let mut c = s.connect();
    let _ = write!(
        c,
        "POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    std::thread::sleep(Duration::from_millis(200));
    drop(c);
}

/// Hostile requests refused by cria-engine's limits (grammar depth and size, `{N}` repetition,
/// sampler windows): without them a request aborts the process (a stack overflow, or an
/// allocation of exabytes), which no catch_unwind can stop.
fn hostile_engine(s: &Server) {
    let chat = "/v1/chat/completions";
    let deep = format!(
        r#""grammar":"root ::= {}\"a\"{}""#,
        "(".repeat(5000),
        ")".repeat(5000)
    );
    expect_status("deep GBNF nesting", s.post(chat, &chat_with(&deep)), 400);
    let blowup = r#""grammar":"root ::= ((\"a\"{0,1000}){0,1000}){0,1000}""#;
    expect_status("{N} blowup", s.post(chat, &chat_with(blowup)), 400);
    for field in [
        r#""repeat_last_n":1e19"#,
        r#""repeat_last_n":1000000000000000000"#,
        r#""dry_multiplier":1,"dry_penalty_last_n":1000000000000"#,
    ] {
        expect_status(field, s.post(chat, &chat_with(field)), 400);
    }
}

fn round(s: &Server, want: &str) {
    hostile(s);
    hostile_engine(s);
    let chat = "/v1/chat/completions";
    // Not JSON, not UTF-8, wrong shapes.
    expect_status(
        "malformed JSON",
        s.post(chat, br#"{"messages": [{"role": "user""#),
        400,
    );
    expect_status(
        "invalid UTF-8",
        s.post(
            chat,
            b"{\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\xc3\x28\"}]}",
        ),
        400,
    );
    expect_status("not an object", s.post(chat, b"[1,2,3]"), 400);
    expect_status("empty body", s.post(chat, b""), 400);
    expect_status(
        "messages is a string",
        s.post(chat, br#"{"messages":"hi"}"#),
        400,
    );
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    expect_status("100000 nested arrays", s.post(chat, deep.as_bytes()), 400);
    // Huge and negative numbers.
    for field in [
        r#""max_tokens":1e300"#,
        r#""max_tokens":99999999999999999999999"#,
        r#""max_tokens":-1"#,
        r#""n":-3"#,
        r#""n":1000000"#,
        r#""temperature":1e309"#,
        r#""temperature":-1"#,
        r#""top_p":-0.5"#,
        r#""logprobs":true,"top_logprobs":-2"#,
        r#""seed":-1e40"#,
        r#""logit_bias":{"99999999999":5}"#,
        r#""stop":[1,2]"#,
    ] {
        let body = format!(r#"{{"messages":[{{"role":"user","content":"hi"}}],{field}}}"#);
        expect_status(field, s.post(chat, body.as_bytes()), 400);
    }
    expect_status(
        "completions with a negative max_tokens",
        s.post("/v1/completions", br#"{"prompt":"a","max_tokens":-5}"#),
        400,
    );
    expect_status(
        "tokenize with a number",
        s.post("/tokenize", br#"{"content":12}"#),
        400,
    );
    expect_status(
        "detokenize of a token that does not exist",
        s.post("/detokenize", br#"{"tokens":[4294967295]}"#),
        400,
    );
    // 10 MB: announced (refused before it is read) and chunked without a length (cut at the limit).
    let big = vec![b' '; 10 << 20];
    let (st, resp) = s.post(chat, &big);
    assert_eq!(st, Some(413), "10 MB with a length: {resp}");
    let mut chunked = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..10 {
        chunked.extend_from_slice(format!("{:x}\r\n", 1 << 20).as_bytes());
        chunked.extend(std::iter::repeat_n(b' ', 1 << 20));
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (st, resp) = s.raw(&chunked);
    assert!(
        st.is_none() || st == Some(413),
        "10 MB chunked: 413 or a close: {resp}"
    );
    // Not HTTP at all; a header of 1 MB (past hyper's ~400 KB read buffer).
    let (st, _) = s.raw(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n");
    assert!(st.is_none() || st == Some(400), "garbage: {st:?}");
    let long_header = format!(
        "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Long: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let (st, _) = s.raw(long_header.as_bytes());
    assert!(matches!(st, None | Some(400 | 431)), "huge header: {st:?}");
    // Unknown endpoint and method.
    let (st, _) =
        s.raw(b"DELETE /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    assert!(matches!(st, Some(404 | 405)), "{st:?}");

    // Slowloris: headers and a body trickled in, while normal requests go on.
    let slow = [
        slowloris(
            s.addr,
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n",
            b"X-Slow: a\r\n",
        ),
        slowloris(
            s.addr,
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n",
            b"{\"messages\":[",
        ),
    ];
    // Clients that hang up mid-stream: read the first event, then close.
    for _ in 0..3 {
        let body = br#"{"messages":[{"role":"user","content":"Count to one hundred."}],"max_tokens":400,"stream":true}"#;
        let mut req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        let mut c = s.connect();
        c.write_all(&req).unwrap();
        let mut r = BufReader::new(c);
        let mut line = String::new();
        loop {
            line.clear();
            assert!(r.read_line(&mut line).unwrap() > 0, "stream ended early");
            if line.starts_with("data:") {
                break;
            }
        }
        drop(r);
    }
    // The server still serves, with the same text for the same seed.
    assert_eq!(probe(s), want, "the seeded answer changed");
    for h in slow {
        let took = h.join().unwrap();
        assert!(
            took < Duration::from_secs(READ_TIMEOUT + 8),
            "a slow client was cut off after {took:?}, not about {READ_TIMEOUT} s"
        );
    }
}

/// CRIA_ABUSE_SECS of rounds (default 60; the issue's 5-minute run is `CRIA_ABUSE_SECS=300`).
#[test]
fn bad_clients_do_not_hurt_the_server() {
    let secs: u64 = std::env::var("CRIA_ABUSE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let mut s = Server::start();
    let rss_start = s.rss_kib();
    let want = probe(&s);
    assert!(!want.is_empty());

    // Two warm-up rounds: the allocator's pools and the grammar-free paths reach their size.
    round(&s, &want);
    round(&s, &want);
    let rss0 = s.rss_kib();
    let t0 = Instant::now();
    let mut rounds = 0;
    let mut rss = vec![rss0];
    while t0.elapsed() < Duration::from_secs(secs) || rounds == 0 {
        round(&s, &want);
        rounds += 1;
        assert!(s.alive(), "the server died in round {rounds}");
        rss.push(s.rss_kib());
    }
    let last = *rss.last().unwrap();
    let peak = *rss.iter().max().unwrap();
    let stats = s.stats.lock().unwrap().clone();
    eprintln!(
        "{rounds} rounds (+2 warm-up) in {:.0} s, {} requests, answers by status {stats:?}; server RSS \
         at start {} MiB, after warm-up {} MiB, at the end {} MiB, peak {} MiB (after a round)",
        t0.elapsed().as_secs_f64(),
        stats.values().sum::<usize>(),
        rss_start / 1024,
        rss0 / 1024,
        last / 1024,
        peak / 1024
    );
    assert!(
        !stats.keys().any(|k| k.is_some_and(|c| c >= 500)),
        "server errors: {stats:?}"
    );
    // Bounded: never more than 128 MiB over the warm-up figure, and growth that stops: over the
    // last third of a long run, at most 16 MiB. (Before `cria serve` fixed glibc's mmap threshold,
    // the 5-minute run kept 250 MiB after warm-up and 319 MiB after 15 rounds in malloc's arenas;
    // `memory_returns_after_a_burst` checks the return to idle itself.)
    assert!(
        peak <= rss0 + 128 * 1024,
        "server memory grew from {rss0} KiB to {peak} KiB over {rounds} rounds: {rss:?}"
    );
    if rounds >= 12 {
        let two_thirds = rss[rss.len() * 2 / 3];
        assert!(
            last <= two_thirds + 16 * 1024,
            "server memory still grows: {two_thirds} KiB two thirds in, {last} KiB at the end: {rss:?}"
        );
    }
}

/// Four clients at once asking /tokenize for the pieces of `text`; each must get a 200. Their
/// answers.
fn tokenize_burst(s: &Server, text: &str) -> Vec<String> {
    let body = format!(
        r#"{{"content":{},"with_pieces":true}}"#,
        serde_json::to_string(text).unwrap()
    );
    std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|_| sc.spawn(|| s.post("/tokenize", body.as_bytes())))
            .collect();
        hs.into_iter()
            .map(|h| {
                let (st, resp) = h.join().unwrap();
                assert_eq!(st, Some(200), "{}", &resp[..resp.len().min(300)]);
                resp
            })
            .collect()
    })
}

/// Resident memory comes back to near its idle level after a burst: four clients at once asking
/// /tokenize for the pieces of 0.9 MB of text (9 MB answers), three times. With glibc's default
/// (a moving mmap threshold) the freed blocks stayed in per-thread arenas: 104 MiB idle, 213 MiB
/// after such bursts for good; `cria serve` now fixes the threshold (main.rs).
#[test]
fn memory_returns_after_a_burst() {
    let s = Server::start();
    let text = "The quick brown fox jumps over the lazy dog; 12345. ".repeat(18_000);
    let (st, _) = s.post(
        "/tokenize",
        b"{\"content\":\"warm up\",\"with_pieces\":true}",
    );
    assert_eq!(st, Some(200));
    let idle = s.rss_kib();
    let mut high = 0;
    for _ in 0..3 {
        for resp in tokenize_burst(&s, &text[..900_000]) {
            assert!(
                resp.len() > 5_000_000,
                "a short answer: {} bytes",
                resp.len()
            );
        }
        high = high.max(s.rss_kib());
    }
    let after = s.rss_kib();
    eprintln!(
        "server RSS: idle {} MiB, after the bursts {} MiB (highest seen between them {} MiB)",
        idle / 1024,
        after / 1024,
        high / 1024
    );
    assert!(
        after <= idle + 24 * 1024,
        "memory stayed up after the burst: idle {idle} KiB, after {after} KiB"
    );
}

/// The startup lines, one access-log line per request (without the prompt), and a graceful
/// shutdown on SIGTERM: a stream in flight ends with a last chunk and `[DONE]`, exit status 0.
#[test]
fn access_log_and_graceful_shutdown() {
    let mut s = Server::start();
    let start = s.log_line("cria serve: model ");
    assert!(
        start.contains("SmolLM2-135M-Instruct.Q4_1") && start.contains("512 tokens of context"),
        "{start}"
    );
    let body = br#"{"messages":[{"role":"user","content":"Say xylophonequartz."}],"max_tokens":3,"model":"anything"}"#;
    let (st, resp) = s.post("/v1/chat/completions", body);
    assert_eq!(st, Some(200), "{resp}");
    assert_eq!(json_of(&resp)["model"], "SmolLM2-135M-Instruct.Q4_1");
    let line = s.log_line("POST /v1/chat/completions 200");
    assert!(
        line.contains("prompt=") && line.contains("completion=3") && line.contains(" ms"),
        "{line}"
    );
    let (st, _) = s.raw(b"GET /nowhere HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    assert_eq!(st, Some(404));
    s.log_line("GET /nowhere 404");
    assert!(!s.log_has("xylophonequartz"), "the prompt was logged");

    // A stream in flight when SIGTERM comes.
    let body = br#"{"prompt":"Write forever:","max_tokens":480,"ignore_eos":true,"stream":true}"#;
    let mut c = s.connect();
    write!(
        c,
        "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    c.write_all(body).unwrap();
    let mut r = BufReader::new(c);
    let mut events = Vec::new();
    let mut line = String::new();
    while events.is_empty() {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "stream ended early");
        if let Some(d) = line.strip_prefix("data: ") {
            events.push(d.trim().to_string());
        }
    }
    s.terminate();
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        if let Some(d) = line.strip_prefix("data: ") {
            events.push(d.trim().to_string());
        }
    }
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let last: serde_json::Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert!(
        last["choices"][0]["finish_reason"].is_string(),
        "the last chunk says why the stream ended: {last}"
    );
    let status = s.exit_status();
    assert!(status.success(), "exit status {status:?}");
    assert!(s.log_has("shutting down"));
    assert!(
        TcpStream::connect(s.addr).is_err(),
        "still accepting after the shutdown"
    );
}

/// `--log-prompts` writes request bodies to the log.
#[test]
fn log_prompts_writes_the_bodies() {
    let s = Server::start_with(&["--log-prompts"]);
    let body = br#"{"messages":[{"role":"user","content":"Say xylophonequartz."}],"max_tokens":1}"#;
    assert_eq!(s.post("/v1/chat/completions", body).0, Some(200));
    let l = s.log_line("xylophonequartz");
    assert!(l.contains("POST /v1/chat/completions body:"), "{l}");
}
