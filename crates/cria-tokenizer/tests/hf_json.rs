//! `Tokenizer::from_hf` on tokenizer.json files that transformers made from the same GGUF
//! vocabularies (scripts/gguf_to_hf.py writes them to tests/fixtures/hf/<vocab>/, the
//! tokenizer.json gzipped). Where the Hugging Face tokenizer itself agrees with
//! llama.cpp (the fixture records both), from_hf must give llama.cpp's ids, i.e. the same ids as
//! from_gguf; where HF differs, the difference is the conversion's (lost pre-tokenizer rules,
//! Metaspace "first"), and from_hf may follow either.

mod common;
use common::*;
use cria_tokenizer::Tokenizer;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The committed fixture, unpacked into this test's scratch directory (from_hf reads files).
fn load_hf(vocab: &str) -> Tokenizer {
    let src = fixture("hf").join(vocab);
    let gz = src.join("tokenizer.json.gz");
    let mut text = String::new();
    std::fs::File::open(&gz)
        .map(flate2::read::GzDecoder::new)
        .and_then(|mut d| d.read_to_string(&mut text))
        .unwrap_or_else(|e| panic!("{}: {e}", gz.display()));
    // A folder per call: tests run in parallel, and two of them may load the same vocabulary
    // (one writing the file while the other reads it failed as "EOF while parsing").
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, Ordering::Relaxed);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("hf")
        .join(format!("{vocab}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("tokenizer.json");
    std::fs::write(&json, text).unwrap();
    let config = src.join("tokenizer_config.json");
    let tok = Tokenizer::from_hf(&json, Some(&config))
        .unwrap_or_else(|e| panic!("{}: {e}", gz.display()));
    std::fs::remove_dir_all(&dir).ok();
    tok
}

fn check(vocab: &str, expected_kind: &str) {
    let hf = load_hf(vocab);
    let gg = load_gguf(&fixture_model_path(vocab));
    let fx = read_fixture(vocab);
    assert_eq!(hf.kind(), expected_kind);
    // transformers may append tokens of its own (it adds "<|endoftext|>" as a pad token to the
    // LLaMA 3 conversion); the GGUF ids must all be there unchanged.
    assert!(
        hf.vocab_size() >= gg.vocab_size(),
        "{vocab}: {} < {}",
        hf.vocab_size(),
        gg.vocab_size()
    );
    assert_eq!(hf.bos(), gg.bos(), "{vocab}: bos");
    assert_eq!(hf.eos(), gg.eos(), "{vocab}: eos");
    for id in 0..gg.vocab_size() as u32 {
        assert_eq!(hf.token_text(id), gg.token_text(id), "{vocab}: token {id}");
        assert_eq!(
            hf.token_to_piece_special(id, true),
            gg.token_to_piece_special(id, true),
            "{vocab}: piece of {id}"
        );
    }

    let (mut hf_right, mut same) = (0, 0);
    for c in &fx.cases {
        let reference = &c.enc["01"];
        let hf_ids =
            c.hf.as_ref()
                .expect("fixture has HF ids (run gen_fixtures.py after gguf_to_hf.py)");
        let ours = hf.encode(&c.text, false, true);
        if hf_ids == reference {
            hf_right += 1;
            assert_eq!(&ours, reference, "{vocab}: from_hf on {:?}", c.text);
        }
        if ours == gg.encode(&c.text, false, true) {
            same += 1;
        }
    }
    eprintln!("{vocab}: HF agrees with llama.cpp on {hf_right}/{n}; cria from_hf == llama.cpp on all of those; from_hf == from_gguf on {same}/{n}", n = fx.cases.len());
}

#[test]
fn llama_spm() {
    check("llama-spm", "spm");
}

#[test]
fn llama_bpe() {
    check("llama-bpe", "bpe(llama3)");
}

#[test]
fn gpt_2() {
    check("gpt-2", "bpe(gpt2)");
}

#[test]
fn smollm2() {
    // The conversion drops SmolLM's Digits pre-tokenizer, so the json says plain GPT-2 splitting.
    check("smollm2", "bpe(gpt2)");
}

/// On llama.cpp's own test vectors (add_special = parse_special = false) the GPT-2 conversion
/// loses nothing, so from_hf must reproduce every .out line.
#[test]
fn gpt_2_vectors() {
    let hf = load_hf("gpt-2");
    let vectors = read_vectors(&vocab_path("gpt-2"));
    for (text, expected) in &vectors {
        assert_eq!(&hf.encode(text, false, false), expected, "{text:?}");
    }
}
