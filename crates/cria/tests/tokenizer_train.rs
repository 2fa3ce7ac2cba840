//! `cria tokenizer train` (issue 24): a byte-level BPE tokenizer trained on the story fixture,
//! loaded by cria's own tokenizer (cria-tokenizer, the HF-folder path) and by the `tokenizers`
//! crate from the same tokenizer.json: both give the same ids on every text tried, with and
//! without special tokens; bad input is a clear error and overwrites nothing.

mod common;

use common::train::fixtures;
use std::path::PathBuf;

fn tmp(name: &str) -> PathBuf {
    let d = common::train::tmp("toktrain", name);
    std::fs::remove_dir(&d).unwrap();
    d
}

/// (success, stderr) of `cria ARGS`.
fn cria(args: &[&str]) -> (bool, String) {
    let out = common::train::cria(args, &[]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// transformers' `clean_up_tokenization`.
fn clean_up(t: &str) -> String {
    let mut s = t.to_string();
    for (a, b) in [
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ] {
        s = s.replace(a, b);
    }
    s
}

#[test]
fn trained_tokenizer_agrees_with_the_tokenizers_crate() {
    let out = tmp("ok");
    let fx = fixtures();
    let (ok, err) = cria(&[
        "tokenizer",
        "train",
        "--vocab-size",
        "700",
        "-o",
        out.to_str().unwrap(),
        fx.join("stories.txt").to_str().unwrap(),
        fx.join("stories.jsonl").to_str().unwrap(),
    ]);
    assert!(ok, "cria tokenizer train failed: {err}");
    eprintln!("{err}");
    let tj = out.join("tokenizer.json");
    let cria_tok =
        cria_tokenizer::Tokenizer::from_hf(&tj, Some(&out.join("tokenizer_config.json"))).unwrap();
    let hf = tokenizers::Tokenizer::from_file(&tj).unwrap();
    assert_eq!(cria_tok.vocab_size(), 700, "the corpus gives 700 tokens");
    assert_eq!(hf.get_vocab_size(true), 700);
    // Special tokens at the end, BOS/EOS from tokenizer_config.json.
    let specials = [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
    ];
    for (k, s) in specials.iter().enumerate() {
        assert_eq!(cria_tok.token_id(s), Some(695 + k as u32), "{s}");
        assert_eq!(hf.token_to_id(s), Some(695 + k as u32), "{s}");
    }
    assert_eq!(cria_tok.bos(), Some(695));
    assert_eq!(cria_tok.eos(), Some(696));
    assert!(cria_tok.is_eog(699), "<|eot_id|> ends a chat turn");
    assert!(cria_tok
        .chat_template()
        .unwrap()
        .contains("<|start_header_id|>"));

    let story = std::fs::read_to_string(fx.join("stories.txt")).unwrap();
    let mut texts: Vec<String> = story.split("\n\n").take(40).map(str::to_string).collect();
    for t in [
        "",
        " ",
        "\n\n\n",
        "Hello world",
        "  two  spaces   and\ttabs\t\tand\r\nCRLF",
        "Le chat de Zoé était très content. Ça alors !",
        "小猫很高兴。 Ünïcödé ß ǅ",
        "🐸🎈 emoji 👩‍👩‍👧",
        "Numbers 1234567 and 3.14159, 00042",
        "I'm sure it's they'll we've You'RE",
        "<|begin_of_text|>Hi<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nx",
        "unseen: qzxjv wkkk pfft Xylophone QUIZZICAL",
        "a\u{0}b\u{7f}c\u{ffff}",
    ] {
        texts.push(t.to_string());
    }
    let mut n = 0;
    for t in &texts {
        for special in [false, true] {
            // The tokenizers crate always matches special-token text (its flag adds BOS only).
            let ours = cria_tok.encode(t, special, true);
            let theirs = hf.encode(t.as_str(), special).unwrap().get_ids().to_vec();
            assert_eq!(ours, theirs, "text {t:?}, special {special}");
            n += ours.len();
            if !special {
                // Byte-level: lossless in the tokenizers crate; cria (and transformers, with
                // clean_up_tokenization_spaces as LLaMA 3 sets it) also drop " !"-style spaces.
                assert_eq!(hf.decode(&theirs, false).unwrap(), *t, "decode of {t:?}");
                let back = cria_tok.detokenize(&ours, false, true);
                assert_eq!(
                    String::from_utf8_lossy(&back),
                    clean_up(t),
                    "decode of {t:?}"
                );
            }
        }
    }
    eprintln!(
        "{} texts, {n} tokens: cria-tokenizer == tokenizers",
        texts.len()
    );
    // Without parse_special (what `cria data prepare` uses) special-token text stays text.
    let lit = cria_tok.encode("<|eot_id|><|end_of_text|>", false, false);
    assert!(lit.len() > 2 && lit.iter().all(|&i| i < 695), "{lit:?}");
    // BOS leads an encoding with special tokens, as LLaMA 3's post-processor does.
    assert_eq!(cria_tok.encode("Hi", true, true)[0], 695);
    // A second run into the same folder overwrites nothing.
    let before = std::fs::read(&tj).unwrap();
    let (ok, err) = cria(&[
        "tokenizer",
        "train",
        "--vocab-size",
        "300",
        "-o",
        out.to_str().unwrap(),
        fx.join("stories.txt").to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("not overwriting"), "{err}");
    assert_eq!(std::fs::read(&tj).unwrap(), before);
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = tmp("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let blank = dir.join("blank.txt");
    std::fs::write(&blank, "\n  \n\t\n").unwrap();
    let blank_jsonl = dir.join("blank.jsonl");
    std::fs::write(&blank_jsonl, "{\"text\": \"  \"}\n\n").unwrap();
    let bad_jsonl = dir.join("bad.jsonl");
    std::fs::write(&bad_jsonl, "{\"text\": \"ok\"}\n{\"txt\": \"no\"}\n").unwrap();
    let story = fixtures().join("stories.txt");
    let out = dir.join("out");
    let o = out.to_str().unwrap();
    let missing = dir.join("missing.txt");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![empty.to_str().unwrap()], "empty corpus"),
        (vec![blank.to_str().unwrap()], "empty corpus"),
        (vec![blank_jsonl.to_str().unwrap()], "empty corpus"),
        (
            vec![bad_jsonl.to_str().unwrap()],
            "bad.jsonl:2: no \"text\"",
        ),
        (vec![missing.to_str().unwrap()], "no such file"),
        (
            vec!["--vocab-size", "200", story.to_str().unwrap()],
            "out of range",
        ),
        (
            vec!["--vocab-size", "300000", story.to_str().unwrap()],
            "out of range",
        ),
    ];
    for (args, want) in cases {
        let mut all = vec!["tokenizer", "train", "-o", o];
        all.extend(&args);
        let (ok, err) = cria(&all);
        assert!(!ok, "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err:?} lacks {want:?}");
        assert!(
            !out.join("tokenizer.json").exists(),
            "{args:?} wrote a tokenizer"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
