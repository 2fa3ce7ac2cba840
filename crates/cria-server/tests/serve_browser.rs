//! The built-in chat page in a real browser: headless Chromium (Debian's `chromium`, installed by
//! scripts/test.sh; another one with CRIA_CHROMIUM) driven over the DevTools protocol. The test
//! types a message and presses Enter as a user does, watches the answer arrive in pieces while
//! the Stop button is live, checks the finished answer is the model's greedy answer to the same
//! conversation through the API, stops a long answer midway with the Stop button, checks the
//! markdown renderer (and that model text cannot inject markup), and saves a screenshot to
//! target/web-chat.png.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("CRIA_CHROMIUM") {
        return p.into();
    }
    for p in [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    panic!(
        "no Chromium found: apt-get install chromium (scripts/test.sh does), or set CRIA_CHROMIUM"
    );
}

/// A headless Chromium with its own profile, killed on drop.
struct Browser {
    child: Child,
    profile: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// One page over the DevTools protocol.
struct Page {
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    next: u64,
}

impl Page {
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::text(msg)).expect("send to Chromium");
        loop {
            let m = self.ws.read().expect("read from Chromium");
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["id"].as_u64() == Some(id) {
                if let Some(e) = v.get("error") {
                    panic!("{method}: {e}");
                }
                return v["result"].clone();
            }
            // Anything else is an event we did not subscribe to: skipped.
        }
    }

    /// Evaluates JavaScript in the page; its value (promises awaited).
    fn eval(&mut self, js: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": js, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{js}: {e}");
        }
        r["result"]["value"].clone()
    }

    fn wait(&mut self, what: &str, limit: Duration, js: &str) {
        let t0 = Instant::now();
        while self.eval(js) != json!(true) {
            assert!(t0.elapsed() < limit, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn key(&mut self, key: &str, code: u32) {
        for kind in ["keyDown", "keyUp"] {
            self.call(
                "Input.dispatchKeyEvent",
                json!({"type": kind, "key": key, "code": key, "windowsVirtualKeyCode": code}),
            );
        }
    }

    /// Types into the focused element as a keyboard would (input events), then Enter.
    fn type_and_enter(&mut self, text: &str) {
        self.call("Input.insertText", json!({"text": text}));
        self.key("Enter", 13);
    }

    /// Clicks the centre of the element `sel` with the mouse.
    fn click(&mut self, sel: &str) {
        let r = self.eval(&format!(
            "(() => {{ const r = document.querySelector('{sel}').getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
        ));
        let (x, y) = (r[0].as_f64().unwrap(), r[1].as_f64().unwrap());
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            );
        }
    }
}

fn open(url: &str) -> (Browser, Page) {
    let profile = std::env::temp_dir().join(format!("cria-chromium-{}", std::process::id()));
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1000,800",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start Chromium");
    // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID"
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let port = loop {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "Chromium exited before it listened"
        );
        if let Some(rest) = line.split("ws://127.0.0.1:").nth(1) {
            break rest.split('/').next().unwrap().to_string();
        }
    };
    std::thread::spawn(move || {
        let mut sink = String::new();
        while err.read_line(&mut sink).unwrap_or(0) > 0 {
            sink.clear();
        }
    });
    let browser = Browser { child, profile };
    let (_, list) = get(&format!("http://127.0.0.1:{port}/json/list"));
    let list: Value = serde_json::from_str(&list).unwrap();
    let ws_url = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "page")
        .expect("a page target")["webSocketDebuggerUrl"]
        .as_str()
        .unwrap()
        .to_string();
    let (ws, _) = tungstenite::connect(ws_url.as_str()).expect("DevTools websocket");
    let mut page = Page { ws, next: 0 };
    page.call("Page.navigate", json!({"url": url}));
    page.wait(
        "the chat page",
        Duration::from_secs(30),
        "document.readyState === 'complete' && !!document.getElementById('input')",
    );
    (browser, page)
}

/// The text of the last assistant message and whether Stop is live.
fn last_answer(page: &mut Page) -> (String, bool) {
    let v = page.eval(
        "(() => { const b = [...document.querySelectorAll('.msg.assistant .body')].pop(); \
         return [b ? b.textContent : '', !document.getElementById('stop').disabled]; })()",
    );
    (v[0].as_str().unwrap().to_string(), v[1].as_bool().unwrap())
}

#[test]
fn chat_page_in_headless_chromium() {
    let srv = serve(|_| {});
    let url = srv.url();
    let (_browser, mut page) = open(&format!("{url}/"));

    // Greedy, so the answer can be checked against the API; set as a user would (change event).
    page.eval(
        "(() => { const t = document.getElementById('temperature'); t.value = '0'; \
         t.dispatchEvent(new Event('change')); document.getElementById('input').focus(); })()",
    );
    let question = "What is the capital of France? Answer in one sentence.";
    page.type_and_enter(question);

    // The answer arrives in pieces while Stop is live, then Stop goes off.
    let t0 = Instant::now();
    let mut partials = std::collections::BTreeSet::new();
    let answer = loop {
        let (text, live) = last_answer(&mut page);
        if live && !text.is_empty() {
            partials.insert(text.len());
        }
        if !live && !text.is_empty() {
            break text;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no answer: {text:?}"
        );
        std::thread::sleep(Duration::from_millis(15));
    };
    assert!(
        partials.len() >= 2,
        "the answer should be seen growing while streamed, saw lengths {partials:?}"
    );
    // The conversation the page keeps is the model's greedy answer through the API.
    let hist = page.eval("JSON.stringify(history)");
    let hist: Value = serde_json::from_str(hist.as_str().unwrap()).unwrap();
    assert_eq!(hist[0]["content"], question);
    let (st, api) = post(
        &format!("{url}/v1/chat/completions"),
        &json!({"messages": [{"role": "user", "content": question}], "temperature": 0}),
    );
    assert_eq!(st, 200);
    assert_eq!(hist[1]["content"], api["choices"][0]["message"]["content"]);
    assert!(answer.contains("Paris"), "{answer}");
    let user = page.eval("document.querySelector('.msg.user .body').textContent");
    assert_eq!(user, json!(question));

    // A long answer stopped midway with the Stop button: it stays as far as it got, and the
    // next message works.
    page.eval("document.getElementById('input').focus()");
    page.type_and_enter("Write a very long story about a dragon, with many chapters.");
    let t0 = Instant::now();
    loop {
        let (text, live) = last_answer(&mut page);
        if live && text.len() > 40 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the story did not start"
        );
        std::thread::sleep(Duration::from_millis(15));
    }
    page.click("#stop");
    page.wait(
        "Stop to take effect",
        Duration::from_secs(10),
        "document.getElementById('stop').disabled",
    );
    let (stopped, _) = last_answer(&mut page);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        last_answer(&mut page).0,
        stopped,
        "text kept coming after Stop"
    );
    let n = page.eval("history.length");
    assert_eq!(n, json!(4), "the stopped answer stays in the conversation");
    // The server let the stopped request go: no request is left running.
    let t0 = Instant::now();
    loop {
        let (_, m) = get(&format!("{url}/metrics"));
        let busy = m
            .lines()
            .find_map(|l| l.strip_prefix("cria_slots_busy "))
            .map(|v| v.trim().parse::<f64>().unwrap());
        if busy == Some(0.0) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the stopped request still runs: {busy:?}\n{m}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Markdown: code, bold, a fenced block; model text is escaped, never markup.
    let html = page.eval("renderMarkdown('**bold** and `x<y`\\n```\\nfn main() {}\\n```\\n<img src=x onerror=alert(1)>')");
    let html = html.as_str().unwrap();
    assert!(html.contains("<strong>bold</strong>"), "{html}");
    assert!(html.contains("<code>x&lt;y</code>"), "{html}");
    assert!(html.contains("<pre><code>fn main() {}"), "{html}");
    assert!(!html.contains("<img") && html.contains("&lt;img"), "{html}");

    // A screenshot of the conversation.
    let shot = page.call("Page.captureScreenshot", json!({"format": "png"}));
    use base64::Engine;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 1000, "a PNG");
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/web-chat.png");
    std::fs::write(&out, &png).unwrap();
    eprintln!("screenshot: {}", out.display());
}
