//! `cria chat` in a real terminal: tmux runs the binary, the test types keys and reads the screen.
//! Covers a streamed answer, the KV cache reused across turns, arrow-key history, a multi-line
//! message, Ctrl-C during an answer (the chat goes on), /save, the context overflow notice, the
//! context shift, and Ctrl-D leaving. Uses the real model (SmolLM2-135M-Instruct Q4_1) greedily.

use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::smol;

/// Runs tmux against the test's own server (`-S socket`), never the user's default one: a
/// default server left over from another process (or dying with it) cannot break the test.
fn tmux_at(sock: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new("tmux")
        .arg("-S")
        .arg(sock)
        .args(args)
        .output()
        .expect("tmux is needed for this test (apt-get install tmux)")
}

/// A chat running in its own tmux server and session, killed on drop.
struct Term {
    name: String,
    sock: std::path::PathBuf,
}

impl Term {
    fn start(tag: &str, extra: &str) -> Term {
        let name = format!("cria-chat-{tag}-{}", std::process::id());
        let sock = std::env::temp_dir().join(format!("{name}.sock"));
        let cmd = format!(
            "{} chat -m {} --no-history --temperature 0 -t 2 {extra}; echo CHAT-EXITED-$?; sleep 30",
            env!("CARGO_BIN_EXE_cria"),
            smol().display()
        );
        let args = [
            "new-session",
            "-d",
            "-s",
            &name,
            "-x",
            "150",
            "-y",
            "50",
            &cmd,
        ];
        // A fresh server can fail to come up on a busy machine; try a few times and say why.
        let mut why = String::new();
        let ok = (0..3).any(|i| {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(500));
            }
            let out = tmux_at(&sock, &args);
            why = String::from_utf8_lossy(&out.stderr).into_owned();
            out.status.success()
        });
        assert!(ok, "tmux new-session failed 3 times: {why}");
        let t = Term { name, sock };
        t.wait_for("the first prompt", Duration::from_secs(60), |s| {
            s.contains(">>> ")
        });
        t
    }

    fn tmux(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&tmux_at(&self.sock, args).stdout).into_owned()
    }

    /// The whole pane, scroll-back included.
    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-J", "-S", "-1000", "-t", &self.name])
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", &self.name];
        args.extend_from_slice(keys);
        self.tmux(&args);
    }

    /// Types `text` literally, then Enter.
    fn line(&self, text: &str) {
        self.tmux(&["send-keys", "-t", &self.name, "-l", text]);
        self.keys(&["Enter"]);
    }

    fn wait_for(&self, what: &str, limit: Duration, f: impl Fn(&str) -> bool) -> String {
        let t0 = Instant::now();
        loop {
            let s = self.screen();
            if f(&s) {
                return s;
            }
            if t0.elapsed() > limit {
                panic!("timed out waiting for {what}; screen:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the prompt is back after an answer: `n` prompts on the screen in all.
    fn wait_prompts(&self, n: usize) -> String {
        self.wait_for(
            &format!("prompt number {n}"),
            Duration::from_secs(120),
            |s| s.matches(">>> ").count() >= n,
        )
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        self.tmux(&["kill-server"]);
        let _ = std::fs::remove_file(&self.sock);
    }
}

#[test]
fn chat_in_a_terminal() {
    let dir = std::env::temp_dir().join(format!("cria-chat-tmux-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let t = Term::start("main", "-n 48");

    // A streamed answer with the model's own template.
    // (Greedy SmolLM2-135M answers this one right, as llama-cli does.)
    t.line("What is 2+2?");
    let s = t.wait_prompts(2);
    assert!(s.contains("is 4"), "no answer:\n{s}");

    // Second turn: only the new tokens are evaluated.
    t.line("/stats");
    let s = t.wait_for("stats", Duration::from_secs(10), |s| {
        s.contains("reused from the cache")
    });
    assert!(s.contains("(0 reused from the cache)"), "{s}");
    t.line("And 3+3?");
    t.wait_prompts(4);
    t.line("/stats");
    let s = t.wait_prompts(5);
    let reused: Vec<usize> = s
        .match_indices(" reused from the cache")
        .map(|(i, _)| {
            let head = &s[..i];
            let open = head.rfind('(').unwrap();
            head[open + 1..].trim().parse().unwrap()
        })
        .collect();
    assert_eq!(reused.len(), 2, "{s}");
    assert!(
        reused[1] > 30,
        "the second turn reused only {} tokens",
        reused[1]
    );

    // Arrow-key history: Up recalls "/stats".
    t.keys(&["Up"]);
    t.keys(&["Enter"]);
    let s = t.wait_prompts(6);
    assert_eq!(
        s.matches("context: ").count(),
        3,
        "Up did not recall /stats:\n{s}"
    );

    // A multi-line message, checked through /save.
    // Each continuation line is typed once its "... " prompt shows: keys typed while the REPL is
    // between two reads can be lost on a loaded machine (typeahead is not what is tested here).
    let continuation = |t: &Term, text: &str| {
        let before = t.screen().matches("... ").count();
        t.line(text);
        t.wait_for("the continuation prompt", Duration::from_secs(60), |s| {
            s.matches("... ").count() > before
        });
    };
    continuation(&t, "\"\"\"Repeat these two lines:");
    continuation(&t, "alpha one");
    t.line("beta two\"\"\"");
    t.wait_prompts(7);
    let saved = dir.join("conv.json");
    t.line(&format!("/save {}", saved.display()));
    t.wait_prompts(8);
    let conv: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    let msgs = conv["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 6, "{conv}");
    assert_eq!(
        msgs[4]["content"],
        "Repeat these two lines:\nalpha one\nbeta two"
    );
    assert_eq!(msgs[5]["role"], "assistant");

    t.line("/set temperature 2.5x");
    t.wait_for("the /set error", Duration::from_secs(10), |s| {
        s.contains("temperature")
    });
    t.wait_prompts(9);
    t.line("/clear");
    t.wait_prompts(10);
    t.keys(&["C-c"]); // at the prompt: a hint, not an exit
    t.wait_for("the Ctrl-C hint", Duration::from_secs(10), |s| {
        s.contains("Ctrl-D or /bye to leave")
    });
    t.line("/exit-not-a-command");
    let s = t.wait_for("the unknown-command error", Duration::from_secs(10), |s| {
        s.contains("unknown command /exit-not-a-command")
    });
    assert!(s.matches(">>> ").count() >= 11, "{s}");
    drop(t);

    // Ctrl-C mid-answer (no token limit, a long request).
    let t = Term::start("cancel", "");
    t.line("Write a very long story about a dragon who learns to bake bread. Make it at least 2000 words.");
    t.wait_for("the answer to start", Duration::from_secs(60), |s| {
        s.lines().filter(|l| !l.trim().is_empty()).count() >= 4
    });
    t.keys(&["C-c"]);
    let s = t.wait_for("the stop notice", Duration::from_secs(20), |s| {
        s.contains("[stopped]")
    });
    assert!(!s.contains("CHAT-EXITED"), "Ctrl-C ended the chat:\n{s}");
    t.wait_prompts(2);
    t.line("/stats");
    let s = t.wait_prompts(3);
    assert!(s.contains("context: "), "{s}");
    assert!(!s.contains("CHAT-EXITED"), "{s}");
    // Ctrl-D leaves, with exit code 0.
    t.keys(&["C-d"]);
    t.wait_for("the exit", Duration::from_secs(10), |s| {
        s.contains("CHAT-EXITED-0")
    });
    drop(t);

    // Overflow without --context-shift: a clear notice, no answer, the chat goes on.
    let t = Term::start("overflow", "-c 160 -n 16");
    let long = "Please summarize: ".to_string()
        + &"the quick brown fox jumps over the lazy dog ".repeat(20);
    t.line(&long);
    let s = t.wait_for("the overflow notice", Duration::from_secs(30), |s| {
        s.contains("the context holds 160")
    });
    assert!(s.contains("--context-shift"), "{s}");
    t.line("Hi");
    t.wait_prompts(3);
    drop(t);

    // With --context-shift: older turns are dropped, visibly.
    let t = Term::start("shift", "-c 256 -n 24 --context-shift");
    let mut n = 1;
    for q in [
        "Tell me about cats in two sentences.",
        "Tell me about dogs in two sentences.",
        "Tell me about birds in two sentences.",
        "Tell me about fish in two sentences.",
        "Tell me about horses in two sentences.",
        "Tell me about cows in two sentences.",
        "Tell me about frogs in two sentences.",
    ] {
        t.line(q);
        n += 1;
        t.wait_prompts(n);
    }
    let s = t.screen();
    assert!(s.contains("[context shift: dropped the"), "{s}");
    drop(t);
    std::fs::remove_dir_all(&dir).unwrap();
}
