//! LoRA adapters in the server: a batch mixing the base model and two adapters gives each
//! request exactly its text alone; an adapter loaded under load (16 streaming clients) loses no
//! request; bad adapters and bad requests get their HTTP status and the server keeps serving.
//!
//! The adapters are written here as llama.cpp GGUF adapters (general.type = adapter,
//! adapter.lora.alpha, `<weight>.lora_a` ne [cols, rank], `.lora_b` ne [rank, rows], f32) over
//! SmolLM2-135M's shapes, with seeded random values large enough to change its text.

mod common;

use common::*;
use cria_core::gguf::{GgufStreamWriter, TensorInfo, Value as Gv, DEFAULT_ALIGNMENT};
use cria_core::DType;
use cria_engine::lora::LoraSpec;
use cria_engine::LoadedModel;
use cria_server::Server;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::Duration;

/// The base weights an adapter pair may target, by layer: (GGUF name, rows, cols).
/// `kinds`: `attn_q`, `ffn_down`, ... (none: every weight of the layer).
fn targets(lm: &LoadedModel, layers: &[usize], kinds: &[&str]) -> Vec<(String, usize, usize)> {
    let mut out = vec![];
    for &l in layers {
        for w in lm.model.weights.layers[l].matrices() {
            let kind = w.name.split('.').nth(2).unwrap();
            if kinds.is_empty() || kinds.contains(&kind) {
                out.push((w.name.clone(), w.rows, w.cols));
            }
        }
    }
    out
}

/// How an adapter file is spoiled (for the bad-input test).
#[derive(Clone, Copy, PartialEq)]
enum Spoil {
    None,
    /// lora_a one column short of the base (an adapter for another base).
    WrongBase,
    /// One value of a lora_b is NaN.
    Nan,
    /// rank 0.
    RankZero,
}

/// Writes a GGUF LoRA adapter over `targets` with seeded values in +-amp.
fn write_adapter(
    path: &Path,
    targets: &[(String, usize, usize)],
    rank: usize,
    seed: u64,
    amp: f32,
    spoil: Spoil,
) {
    let rank = if spoil == Spoil::RankZero { 0 } else { rank };
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut rnd = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
    };
    let mut tensors = vec![];
    let mut data: Vec<Vec<f32>> = vec![];
    for (n, rows, cols) in targets {
        let cols = if spoil == Spoil::WrongBase {
            cols - 1
        } else {
            *cols
        };
        tensors.push(TensorInfo {
            name: format!("{n}.lora_a"),
            dtype: DType::F32,
            ne: vec![cols, rank],
        });
        data.push((0..cols * rank).map(|_| rnd()).collect());
        tensors.push(TensorInfo {
            name: format!("{n}.lora_b"),
            dtype: DType::F32,
            ne: vec![rank, *rows],
        });
        let mut b: Vec<f32> = (0..rank * rows).map(|_| rnd()).collect();
        if spoil == Spoil::Nan {
            b[rows / 2] = f32::NAN;
        }
        data.push(b);
    }
    let meta: Vec<(&str, Gv)> = vec![
        ("general.architecture", Gv::String("llama".into())),
        ("general.type", Gv::String("adapter".into())),
        ("adapter.type", Gv::String("lora".into())),
        ("adapter.lora.alpha", Gv::F32(rank as f32)),
    ];
    let meta: Vec<(&str, &Gv)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let mut w = GgufStreamWriter::create(path, &meta, &tensors, DEFAULT_ALIGNMENT).unwrap();
    for d in &data {
        let bytes: Vec<u8> = d.iter().flat_map(|x| x.to_le_bytes()).collect();
        w.write_tensor(&bytes).unwrap();
    }
    w.finish().unwrap();
}

/// A fresh folder under the target directory for this test's files.
fn scratch_dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("serve_lora_{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Adapters "a" (attention, every other layer) and "b" (MLP, every third layer), and "c" (all
/// seven weights of a few layers) written under `dir`.
fn adapters(lm: &LoadedModel, dir: &Path) -> [PathBuf; 3] {
    let n = lm.model.config.n_layers;
    let even: Vec<usize> = (0..n).step_by(2).collect();
    let third: Vec<usize> = (0..n).step_by(3).collect();
    let a = dir.join("a.gguf");
    let b = dir.join("b.gguf");
    let c = dir.join("c.gguf");
    let attn = ["attn_q", "attn_k", "attn_v", "attn_output"];
    let mlp = ["ffn_gate", "ffn_up", "ffn_down"];
    let all = [attn.as_slice(), mlp.as_slice()].concat();
    write_adapter(&a, &targets(lm, &even, &attn), 8, 1, 0.5, Spoil::None);
    write_adapter(&b, &targets(lm, &third, &mlp), 16, 2, 0.06, Spoil::None);
    write_adapter(&c, &targets(lm, &[0, 5, 10], &all), 4, 3, 0.3, Spoil::None);
    [a, b, c]
}

fn start(f: impl FnOnce(&mut cria_server::ServeArgs), specs: &[String]) -> Server {
    serve(|a| {
        a.lora = specs.iter().map(|s| LoraSpec::parse(s).unwrap()).collect();
        f(a)
    })
}

/// Any method, JSON body or none, optional API key: (status, body as JSON).
fn call(method: &str, url: &str, body: Option<&str>, key: Option<&str>) -> (u16, Value) {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(300))
        .build();
    let mut r = agent.request(method, url);
    if let Some(k) = key {
        r = r.set("Authorization", &format!("Bearer {k}"));
    }
    let resp = match body {
        Some(b) => r.set("Content-Type", "application/json").send_string(b),
        None => r.call(),
    };
    let resp = match resp {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = resp.status();
    let text = resp.into_string().unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, v)
}

fn metric(url: &str, key: Option<&str>, line: &str) -> f64 {
    let agent = ureq::AgentBuilder::new().build();
    let mut r = agent.get(&format!("{url}/metrics"));
    if let Some(k) = key {
        r = r.set("Authorization", &format!("Bearer {k}"));
    }
    let text = r.call().unwrap().into_string().unwrap();
    text.lines()
        .find(|l| l.starts_with(line) && l[line.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("{line} missing from /metrics:\n{text}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// A completion's text (200 required).
fn complete(url: &str, body: &Value, key: Option<&str>) -> String {
    let (s, v) = call(
        "POST",
        &format!("{url}/v1/completions"),
        Some(&body.to_string()),
        key,
    );
    assert_eq!(s, 200, "{body}: {v}");
    v["choices"][0]["text"].as_str().unwrap().to_string()
}

fn req(model: Option<&str>, lora: Option<Value>, seed: Option<u64>, temp: f32) -> Value {
    let mut b = json!({
        "prompt": "The old lighthouse keeper looked at the sea and",
        "max_tokens": 24, "ignore_eos": true, "temperature": temp,
        "top_k": 0, "top_p": 1.0, "min_p": 0.0,
    });
    if let Some(m) = model {
        b["model"] = json!(m);
    }
    if let Some(l) = lora {
        b["lora"] = l;
    }
    if let Some(s) = seed {
        b["seed"] = json!(s);
    }
    b
}

#[test]
fn a_batch_mixing_adapters_gives_each_request_its_text_alone() {
    let dir = scratch_dir("batch");
    let lm = load();
    let [a, b, _] = adapters(&lm, &dir);
    drop(lm);
    let srv = start(
        |s| s.parallel = 6,
        &[
            format!("A={}", a.display()),
            format!("B={}:0.8", b.display()),
        ],
    );
    let url = srv.url();
    let base = srv.model.clone();

    // Listed as models and as llama-server's adapters.
    let (s, m) = call("GET", &format!("{url}/v1/models"), None, None);
    assert_eq!(s, 200);
    let ids: Vec<String> = m["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids,
        [base.clone(), format!("{base}:A"), format!("{base}:B")]
    );
    let (s, l) = call("GET", &format!("{url}/lora-adapters"), None, None);
    assert_eq!(s, 200);
    assert_eq!(l[0]["id"], 0);
    assert_eq!(l[0]["name"], "A");
    assert_eq!(l[0]["path"], a.display().to_string());
    assert_eq!(l[0]["scale"], 0.0, "global scales start at 0: {l}");
    assert_eq!(l[1]["model_scale"].as_f64().unwrap() as f32, 0.8);

    let ma = format!("{base}:A");
    let mb = format!("{base}:B");
    // Greedy and seeded-sampled requests over the base, A (by model id and by "lora") and B.
    let reqs = [
        req(None, None, None, 0.0),
        req(Some(&ma), None, None, 0.0),
        req(Some(&mb), None, None, 0.0),
        req(None, Some(json!([{"id": 1, "scale": 0.8}])), Some(7), 0.9),
        req(None, None, Some(7), 0.9),
        req(
            None,
            Some(json!([{"id": 0, "scale": 1.0}, {"id": 1, "scale": 0.5}])),
            Some(9),
            0.7,
        ),
    ];
    let alone: Vec<String> = reqs.iter().map(|r| complete(&url, r, None)).collect();
    for (i, t) in alone.iter().enumerate() {
        assert!(!t.is_empty(), "request {i} gave no text");
    }
    // The adapters change the text (else this test would prove nothing).
    assert_ne!(
        alone[1], alone[0],
        "adapter A left the greedy text as it was"
    );
    assert_ne!(
        alone[2], alone[0],
        "adapter B left the greedy text as it was"
    );
    assert_ne!(
        alone[3], alone[4],
        "adapter B left the sampled text as it was"
    );
    // "lora" with B at its model scale is the same request as "model": "BASE:B".
    assert_eq!(
        complete(
            &url,
            &req(None, Some(json!([{"id": 1, "scale": 0.8}])), None, 0.0),
            None
        ),
        alone[2]
    );

    let steps0 = metric(&url, None, "cria_batch_steps_total");
    let gen0 = metric(&url, None, "cria_tokens_generated_total");
    for round in 0..2 {
        let go = Arc::new(Barrier::new(reqs.len()));
        let hs: Vec<_> = reqs
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, r)| {
                let (go, url) = (go.clone(), url.clone());
                std::thread::spawn(move || {
                    go.wait();
                    // Second round: staggered, so requests join batches already running.
                    if round == 1 {
                        std::thread::sleep(Duration::from_millis(60 * i as u64));
                    }
                    complete(&url, &r, None)
                })
            })
            .collect();
        for (i, h) in hs.into_iter().enumerate() {
            assert_eq!(
                h.join().unwrap(),
                alone[i],
                "round {round}: request {i} batched with the others gave another text"
            );
        }
    }
    // They ran in shared batches: far fewer forward steps than tokens generated.
    let steps = metric(&url, None, "cria_batch_steps_total") - steps0;
    let gen = metric(&url, None, "cria_tokens_generated_total") - gen0;
    assert!(
        steps < gen / 2.0,
        "{steps} steps for {gen} generated tokens: the requests were not batched"
    );
    // Requests per adapter: A ran in requests 1 and 5, B in 2, 3 and 5 (alone, the extra
    // B request, then twice batched).
    assert_eq!(
        metric(&url, None, "cria_lora_requests_total{adapter=\"A\"}"),
        6.0
    );
    assert_eq!(
        metric(&url, None, "cria_lora_requests_total{adapter=\"B\"}"),
        10.0
    );
    assert_eq!(metric(&url, None, "cria_lora_adapters"), 2.0);

    // Global scales (POST /lora-adapters): a request naming no adapter runs with them.
    let (s, v) = call(
        "POST",
        &format!("{url}/lora-adapters"),
        Some(r#"[{"id": 0, "scale": 1.0}]"#),
        None,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(complete(&url, &reqs[0], None), alone[1]);
    // ... unless it says otherwise: "model" names the base with another adapter.
    assert_eq!(complete(&url, &reqs[2], None), alone[2]);
    let (_, l) = call("GET", &format!("{url}/lora-adapters"), None, None);
    assert_eq!(l[0]["scale"], 1.0);
    assert_eq!(l[1]["scale"], 0.0);
    // An empty list sets every global scale to 0: the base again.
    let (s, _) = call("POST", &format!("{url}/lora-adapters"), Some("[]"), None);
    assert_eq!(s, 200);
    assert_eq!(complete(&url, &reqs[0], None), alone[0]);
}

/// One streamed completion read to its end: (text, finish_reason, [DONE] seen).
fn stream(url: &str, body: &Value, key: Option<&str>) -> (String, Option<String>, bool) {
    let mut r = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(600))
        .build()
        .post(&format!("{url}/v1/completions"))
        .set("Content-Type", "application/json");
    if let Some(k) = key {
        r = r.set("Authorization", &format!("Bearer {k}"));
    }
    let resp = r
        .send_string(&body.to_string())
        .unwrap_or_else(|e| panic!("stream request failed: {e}"));
    let mut text = String::new();
    let mut finish = None;
    let mut done = false;
    for line in BufReader::new(resp.into_reader()).lines() {
        let line = line.expect("stream cut");
        let Some(d) = line.strip_prefix("data: ") else {
            continue;
        };
        if d == "[DONE]" {
            done = true;
            break;
        }
        let v: Value = serde_json::from_str(d).unwrap();
        assert!(v.get("error").is_none(), "error in a stream: {v}");
        if let Some(c) = v["choices"].get(0) {
            text.push_str(c["text"].as_str().unwrap_or(""));
            if let Some(f) = c["finish_reason"].as_str() {
                finish = Some(f.to_string());
            }
        }
    }
    (text, finish, done)
}

#[test]
fn loading_an_adapter_under_load_loses_no_request() {
    let dir = scratch_dir("load");
    let lm = load();
    let [a, _, c] = adapters(&lm, &dir);
    drop(lm);
    let key = "k3y";
    let srv = start(
        |s| {
            s.parallel = 4;
            s.api_key = Some(key.into());
        },
        &[format!("A={}", a.display())],
    );
    let url = srv.url();
    let base = srv.model.clone();
    // Expected texts of the streams: seeded requests alone, before any load.
    let body = |i: usize| {
        let mut b = req(
            (i % 2 == 1).then(|| format!("{base}:A")).as_deref(),
            None,
            Some(100 + i as u64),
            0.8,
        );
        b["max_tokens"] = json!(16);
        b["stream"] = json!(true);
        b
    };
    let k = Some(key);
    let load_body = json!({"name": "C", "path": c.display().to_string(), "scale": 1.0}).to_string();
    // Loading needs the API key (as every endpoint does once one is set).
    let (s, v) = call(
        "POST",
        &format!("{url}/v1/adapters"),
        Some(&load_body),
        None,
    );
    assert_eq!(s, 401, "{v}");
    let expect: Vec<String> = (0..16).map(|i| stream(&url, &body(i), k).0).collect();
    let go = Arc::new(Barrier::new(17));
    let hs: Vec<_> = (0..16)
        .map(|i| {
            let (go, url, b) = (go.clone(), url.clone(), body(i));
            std::thread::spawn(move || {
                go.wait();
                stream(&url, &b, Some(key))
            })
        })
        .collect();
    go.wait();
    std::thread::sleep(Duration::from_millis(300));
    let running = metric(&url, k, "cria_slots_busy");
    let (s, v) = call("POST", &format!("{url}/v1/adapters"), Some(&load_body), k);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["name"], "C");
    assert_eq!(v["id"], 1);
    let with_c = complete(&url, &req(Some(&format!("{base}:C")), None, None, 0.0), k);
    let base_text = complete(&url, &req(None, None, None, 0.0), k);
    assert_ne!(with_c, base_text, "adapter C changed nothing");
    for (i, h) in hs.into_iter().enumerate() {
        let (text, finish, done) = h.join().unwrap();
        assert!(done, "stream {i} ended without [DONE]");
        assert_eq!(finish.as_deref(), Some("length"), "stream {i}");
        assert_eq!(
            text, expect[i],
            "stream {i} changed while an adapter was loaded"
        );
    }
    assert!(running > 0.0, "the load did not happen under load");
    assert_eq!(metric(&url, k, "cria_lora_adapters"), 2.0);
    assert_eq!(
        metric(&url, k, "cria_lora_requests_total{adapter=\"C\"}"),
        1.0
    );
    // The model list has it.
    let (_, m) = call("GET", &format!("{url}/v1/models"), None, k);
    assert_eq!(m["data"][2]["id"], format!("{base}:C"));
}

#[test]
fn bad_adapters_and_requests_get_their_status_and_the_server_keeps_serving() {
    let dir = scratch_dir("bad");
    let lm = load();
    let [a, b, _] = adapters(&lm, &dir);
    let few = targets(&lm, &[0, 1], &["attn_q", "ffn_down"]);
    let wrong = dir.join("wrong.gguf");
    write_adapter(&wrong, &few, 4, 5, 0.1, Spoil::WrongBase);
    let nan = dir.join("nan.gguf");
    write_adapter(&nan, &few, 4, 6, 0.1, Spoil::Nan);
    let rank0 = dir.join("rank0.gguf");
    write_adapter(&rank0, &few, 4, 7, 0.1, Spoil::RankZero);
    let corrupt = dir.join("corrupt.gguf");
    let mut bytes = std::fs::read(&a).unwrap();
    bytes.truncate(bytes.len() / 3);
    std::fs::write(&corrupt, &bytes).unwrap();
    let garbage = dir.join("garbage.gguf");
    std::fs::write(&garbage, b"not a gguf at all, just text").unwrap();
    // A 2 GB adapter for a 135M model (sparse: refused by its size, never read).
    let huge = dir.join("huge.gguf");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    drop(lm);

    let srv = start(|s| s.parallel = 2, &[format!("A={}", a.display())]);
    let url = srv.url();
    let base = srv.model.clone();
    let greedy = req(None, None, None, 0.0);
    let base_text = complete(&url, &greedy, None);
    let adapters_url = format!("{url}/v1/adapters");
    let load = |body: String| call("POST", &adapters_url, Some(&body), None);
    let load_path = |name: &str, p: &Path| {
        load(json!({"name": name, "path": p.display().to_string()}).to_string())
    };
    let still_serving = |what: &str| {
        assert_eq!(
            complete(&url, &greedy, None),
            base_text,
            "after {what}: the base text changed"
        );
    };
    let msg = |v: &Value| v["error"]["message"].as_str().unwrap_or("").to_string();

    let (s, v) = load_path("x", &dir.join("missing.gguf"));
    assert_eq!(s, 404, "{v}");
    assert!(msg(&v).contains("missing.gguf"), "{v}");
    still_serving("a missing file");
    for (what, p) in [
        ("a truncated file", &corrupt),
        ("a file that is no GGUF", &garbage),
        ("an adapter for another base", &wrong),
        ("NaN weights", &nan),
        ("rank 0", &rank0),
    ] {
        let (s, v) = load_path("x", p);
        assert_eq!(s, 400, "{what}: {v}");
        assert!(msg(&v).contains(&p.display().to_string()), "{what}: {v}");
        still_serving(what);
    }
    let (_, v) = load_path("x", &wrong);
    assert!(
        msg(&v).contains("blk.0.attn_q.weight"),
        "names the tensor: {v}"
    );
    let (_, v) = load_path("x", &nan);
    assert!(msg(&v).contains("non-finite"), "{v}");
    let (s, v) = load_path("x", &huge);
    assert_eq!(s, 413, "{v}");
    still_serving("a 2 GB adapter");
    // Bad bodies.
    for (what, body, status) in [
        ("malformed JSON", "{\"path\": ".to_string(), 400),
        ("no path", json!({"name": "x"}).to_string(), 400),
        (
            "a bad name",
            json!({"name": "a b", "path": b.display().to_string()}).to_string(),
            400,
        ),
        (
            "a scale out of bounds",
            json!({"name": "x", "path": b.display().to_string(), "scale": 100}).to_string(),
            400,
        ),
        (
            "a name taken",
            json!({"name": "A", "path": b.display().to_string()}).to_string(),
            409,
        ),
    ] {
        let (s, v) = load(body);
        assert_eq!(s, status, "{what}: {v}");
        still_serving(what);
    }
    // Unknown adapters and bad scales in requests.
    let cmpl = format!("{url}/v1/completions");
    for (what, body, status) in [
        (
            "an unknown adapter name",
            req(Some(&format!("{base}:nope")), None, None, 0.0),
            404,
        ),
        (
            "an unknown adapter id",
            req(None, Some(json!([{"id": 7, "scale": 1.0}])), None, 0.0),
            400,
        ),
        (
            "a scale out of bounds",
            req(None, Some(json!([{"id": 0, "scale": 1e9}])), None, 0.0),
            400,
        ),
        (
            "a scale that is no number",
            req(None, Some(json!([{"id": 0, "scale": "x"}])), None, 0.0),
            400,
        ),
        (
            "'lora' that is no list",
            req(None, Some(json!({"id": 0})), None, 0.0),
            400,
        ),
    ] {
        let (s, v) = call("POST", &cmpl, Some(&body.to_string()), None);
        assert_eq!(s, status, "{what}: {v}");
        still_serving(what);
    }
    let (_, v) = call(
        "POST",
        &cmpl,
        Some(&req(Some(&format!("{base}:nope")), None, None, 0.0).to_string()),
        None,
    );
    assert!(msg(&v).contains("nope"), "{v}");
    for (what, body) in [
        ("malformed JSON", "[{"),
        ("not a list", r#"{"id": 0}"#),
        ("an unknown id", r#"[{"id": 3, "scale": 1}]"#),
        ("a bad scale", r#"[{"id": 0, "scale": -40}]"#),
    ] {
        let (s, v) = call("POST", &format!("{url}/lora-adapters"), Some(body), None);
        assert_eq!(s, 400, "POST /lora-adapters with {what}: {v}");
    }
    still_serving("bad global scales");

    // DELETE: unknown 404; in use 409; then unloaded, its name free again.
    let (s, _) = call("DELETE", &format!("{adapters_url}/nope"), None, None);
    assert_eq!(s, 404);
    let (url2, base2) = (url.clone(), base.clone());
    let long = std::thread::spawn(move || {
        let mut b = req(Some(&format!("{base2}:A")), None, None, 0.0);
        b["max_tokens"] = json!(200);
        b["stream"] = json!(true);
        stream(&url2, &b, None)
    });
    // Wait until it runs.
    let t0 = std::time::Instant::now();
    while metric(&url, None, "cria_lora_requests_running{adapter=\"A\"}") < 1.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the request never ran"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (s, v) = call("DELETE", &format!("{adapters_url}/A"), None, None);
    assert_eq!(s, 409, "DELETE of an adapter in use: {v}");
    let (text, finish, done) = long.join().unwrap();
    assert!(done && finish.is_some() && !text.is_empty());
    // The request has ended for its client; the scheduler lets go of it a moment later.
    let t0 = std::time::Instant::now();
    let (s, v) = loop {
        let (s, v) = call("DELETE", &format!("{adapters_url}/A"), None, None);
        if s != 409 || t0.elapsed() > Duration::from_secs(2) {
            break (s, v);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(
        "POST",
        &cmpl,
        Some(&req(Some(&format!("{base}:A")), None, None, 0.0).to_string()),
        None,
    );
    assert_eq!(s, 404, "a request for an unloaded adapter: {v}");
    let (_, l) = call("GET", &format!("{url}/lora-adapters"), None, None);
    assert_eq!(l, json!([]));
    assert_eq!(metric(&url, None, "cria_lora_adapter_bytes"), 0.0);
    still_serving("unloading");
    // Loaded again under the same name: a new id, the same text as before.
    let (s, v) = load_path("A", &a);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["id"], 1);
}

#[test]
fn lora_dir_chat_and_embeddings() {
    let dir = scratch_dir("dir");
    let lm = load();
    let [_, _, c] = adapters(&lm, &dir);
    drop(lm);
    let srv = start(|s| s.lora_dir = Some(dir.clone()), &[]);
    let url = srv.url();
    let base = srv.model.clone();
    let adapters_url = format!("{url}/v1/adapters");
    // Relative to --lora-dir; the name defaults to the file's stem.
    let (s, v) = call("POST", &adapters_url, Some(r#"{"path": "c.gguf"}"#), None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["name"], "c");
    assert_eq!(
        v["path"],
        std::fs::canonicalize(&c).unwrap().display().to_string()
    );
    // Outside it: refused, whether named directly or through "..".
    let model = model_path().display().to_string();
    let (s, v) = call(
        "POST",
        &adapters_url,
        Some(&json!({"name": "m", "path": model}).to_string()),
        None,
    );
    assert_eq!(s, 403, "{v}");
    let up = format!("../{}/c.gguf", dir.file_name().unwrap().to_str().unwrap());
    let (s, v) = call(
        "POST",
        &adapters_url,
        Some(&json!({"name": "c2", "path": up}).to_string()),
        None,
    );
    assert_eq!(
        s, 200,
        "a path through '..' that ends inside the folder is fine: {v}"
    );
    let (s, v) = call(
        "POST",
        &adapters_url,
        Some(r#"{"name": "e", "path": "../../../../../../../../etc/hostname"}"#),
        None,
    );
    assert!(s == 403 || s == 404, "{s}: {v}");
    drop(srv);
    // Listening beyond loopback with no API key and no --lora-dir: no run-time loads (any
    // host could make the server read any file); adapters given at start still serve.
    let srv = start(
        |s| s.host = "0.0.0.0".into(),
        &[format!("c={}", c.display())],
    );
    let open_url = format!("http://127.0.0.1:{}", srv.addr.port());
    let (s, v) = call(
        "POST",
        &format!("{open_url}/v1/adapters"),
        Some(&json!({"name": "c2", "path": c.display().to_string()}).to_string()),
        None,
    );
    assert_eq!(s, 403, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--api-key"));
    let (s, _) = call("GET", &format!("{open_url}/lora-adapters"), None, None);
    assert_eq!(s, 200);
    drop(srv);
    let srv = start(|s| s.lora_dir = Some(dir.clone()), &[]);
    let url = srv.url();
    let (s, v) = call(
        "POST",
        &format!("{url}/v1/adapters"),
        Some(r#"{"path": "c.gguf"}"#),
        None,
    );
    assert_eq!(s, 200, "{v}");
    // Chat picks adapters as completions do, and reports the adapter's model id.
    let chat = |model: &str| {
        call(
            "POST",
            &format!("{url}/v1/chat/completions"),
            Some(
                &json!({"model": model, "messages": [{"role": "user", "content": "Hi"}],
                         "max_tokens": 12, "temperature": 0})
                .to_string(),
            ),
            None,
        )
    };
    let (s, with_c) = chat(&format!("{base}:c"));
    assert_eq!(s, 200, "{with_c}");
    assert_eq!(with_c["model"], format!("{base}:c"));
    let (s, by_name) = chat("c");
    assert_eq!(s, 200);
    assert_eq!(by_name["model"], format!("{base}:c"));
    assert_eq!(
        by_name["choices"][0]["message"]["content"],
        with_c["choices"][0]["message"]["content"]
    );
    let (s, plain) = chat("anything");
    assert_eq!(s, 200);
    assert_eq!(plain["model"], base);
    assert_ne!(
        plain["choices"][0]["message"]["content"],
        with_c["choices"][0]["message"]["content"]
    );
    // Embeddings are the base model's: naming an adapter is refused, not ignored.
    let emb = format!("{url}/v1/embeddings");
    let (s, v) = call(
        "POST",
        &emb,
        Some(&json!({"model": format!("{base}:c"), "input": "x"}).to_string()),
        None,
    );
    assert_eq!(s, 400, "{v}");
    let (s, v) = call("POST", &emb, Some(r#"{"input": "x"}"#), None);
    assert_eq!(s, 200, "{v}");
}

/// The GGUF adapter at `gguf` (over attn_v / ffn_down only, alpha = rank) rewritten as the PEFT
/// folder `save_pretrained` makes: the same matrices under Hugging Face names.
fn gguf_to_peft(gguf: &Path, dir: &Path, rank: usize) {
    let g = cria_core::gguf::GgufFile::open(gguf).unwrap();
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = vec![];
    for t in &g.tensors {
        let (base, ab) = t.name.rsplit_once(".weight.").unwrap();
        let (l, kind) = base.strip_prefix("blk.").unwrap().split_once('.').unwrap();
        let module = match kind {
            "attn_v" => "self_attn.v_proj",
            "ffn_down" => "mlp.down_proj",
            k => panic!("{k}: not in this adapter"),
        };
        let key = if ab == "lora_a" { "lora_A" } else { "lora_B" };
        let v = t.to_f32_vec().unwrap();
        owned.push((
            format!("base_model.model.model.layers.{l}.{module}.{key}.weight"),
            vec![t.ne[1], t.ne[0]],
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ));
    }
    std::fs::create_dir_all(dir).unwrap();
    let list: Vec<(&str, DType, &[usize], &[u8])> = owned
        .iter()
        .map(|(n, s, b)| (n.as_str(), DType::F32, s.as_slice(), b.as_slice()))
        .collect();
    cria_core::safetensors::write_safetensors(&dir.join("adapter_model.safetensors"), &list)
        .unwrap();
    let config = json!({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": rank,
        "target_modules": ["v_proj", "down_proj"], "use_rslora": false, "bias": "none",
        "fan_in_fan_out": false, "base_model_name_or_path": "SmolLM2-135M-Instruct",
    });
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
}

#[test]
fn a_peft_folder_loads_and_gives_its_gguf_twin_text() {
    let dir = scratch_dir("peft");
    let lm = load();
    let n = lm.model.config.n_layers;
    let all: Vec<usize> = (0..n).collect();
    let gguf = dir.join("vd.gguf");
    write_adapter(
        &gguf,
        &targets(&lm, &all, &["attn_v", "ffn_down"]),
        8,
        11,
        0.3,
        Spoil::None,
    );
    drop(lm);
    let peft = dir.join("vd-peft");
    gguf_to_peft(&gguf, &peft, 8);
    let srv = start(|_| {}, &[]);
    let url = srv.url();
    let base = srv.model.clone();
    for (name, p) in [("g", &gguf), ("p", &peft)] {
        let body = json!({"name": name, "path": p.display().to_string()}).to_string();
        let (s, v) = call("POST", &format!("{url}/v1/adapters"), Some(&body), None);
        assert_eq!(s, 200, "{v}");
    }
    let plain = complete(&url, &req(None, None, None, 0.0), None);
    for (seed, temp) in [(None, 0.0), (Some(5), 0.9)] {
        let g = complete(
            &url,
            &req(Some(&format!("{base}:g")), None, seed, temp),
            None,
        );
        let p = complete(
            &url,
            &req(Some(&format!("{base}:p")), None, seed, temp),
            None,
        );
        assert_eq!(g, p, "PEFT folder and GGUF file of the same adapter differ");
        if seed.is_none() {
            assert_ne!(g, plain, "the adapter changed nothing");
        }
    }
}

/// Figures (ignored; run with --ignored --nocapture): the time POST /v1/adapters takes for a
/// rank-16 adapter on every linear layer, and the aggregate tokens/s of 8 concurrent greedy
/// requests over the base, over one adapter, and over 8 different adapters.
#[test]
#[ignore]
fn mixed_adapter_throughput_figures() {
    let dir = scratch_dir("figures");
    let lm = load();
    let n = lm.model.config.n_layers;
    let all_layers: Vec<usize> = (0..n).collect();
    let t = targets(&lm, &all_layers, &[]);
    let paths: Vec<PathBuf> = (0..8)
        .map(|i| {
            let p = dir.join(format!("r16-{i}.gguf"));
            write_adapter(&p, &t, 16, 100 + i, 0.05, Spoil::None);
            p
        })
        .collect();
    drop(lm);
    let srv = start(
        |s| {
            s.parallel = 8;
            s.lora_max_mib = Some(512);
        },
        &[],
    );
    let url = srv.url();
    let base = srv.model.clone();
    for (i, p) in paths.iter().enumerate() {
        let body = json!({"name": format!("r{i}"), "path": p.display().to_string()}).to_string();
        let t0 = std::time::Instant::now();
        let (s, v) = call("POST", &format!("{url}/v1/adapters"), Some(&body), None);
        assert_eq!(s, 200, "{v}");
        if i == 0 {
            println!(
                "POST /v1/adapters, rank 16 on all {} linear weights ({:.1} MiB): {:.0} ms",
                t.len(),
                v["bytes"].as_f64().unwrap() / (1 << 20) as f64,
                t0.elapsed().as_secs_f64() * 1e3
            );
        }
    }
    let run = |what: &str, model: &dyn Fn(usize) -> Option<String>| {
        let tokens = 64;
        let t0 = std::time::Instant::now();
        let hs: Vec<_> = (0..8)
            .map(|i| {
                let mut b = req(model(i).as_deref(), None, None, 0.0);
                b["max_tokens"] = json!(tokens);
                let url = url.clone();
                std::thread::spawn(move || complete(&url, &b, None))
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        let tps = (8 * tokens) as f64 / t0.elapsed().as_secs_f64();
        println!("8 streams x {tokens} tokens, {what}: {tps:.1} tokens/s");
        tps
    };
    run("warm-up", &|_| None);
    let plain = run("base", &|_| None);
    let one = run("one adapter", &|_| Some(format!("{base}:r0")));
    let eight = run("8 different adapters", &|i| Some(format!("{base}:r{i}")));
    println!(
        "one adapter: {:.0}% of the base; 8 adapters: {:.0}% of the base",
        100.0 * one / plain,
        100.0 * eight / plain
    );
}
