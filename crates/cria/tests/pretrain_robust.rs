//! The pretraining commands on bad input and bad luck (issue 24), through the binary, on the
//! stories fixture (tests/fixtures/pretrain; a BPE tokenizer of 600 tokens, a tiny LLaMA):
//!
//! - bad input (empty corpora, JSONL without "text", a chat template naming tokens the
//!   vocabulary lacks, shapes that do not divide or do not fit, corrupted or missing shards, a
//!   resume from another config): a clear error naming the problem, and every file of the
//!   folders involved unchanged (bytes and mtimes) or never created;
//! - a disk that fills while `cria pretrain` writes a checkpoint (CRIA_TEST_FAIL_WRITE_AFTER):
//!   a clear error, the previous checkpoint intact, and `--resume` from it ends bit for bit where
//!   an undisturbed run ends;
//! - GGUF: `cria convert RUN/final m.gguf` (tokenizer.ggml.pre llama-bpe for the fresh tokenizer) runs
//!   in `cria run` with the same greedy text as the folder;
//! - decoding: cria's tokenizer (whole and streaming) decodes any ids of the trained tokenizer as
//!   the `tokenizers` crate (transformers' backend) does, lone bytes and broken UTF-8 included.

mod common;

use common::train::{
    cria, fails, fixtures, ok, prepare, s, tok_and_data, train_tokenizer, TINY, TINY_STEP,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::SystemTime;

fn tmp(name: &str) -> PathBuf {
    common::train::tmp("probust", name)
}

/// Every file under `dir` (recursively): its bytes and mtime. Empty when `dir` does not exist.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, SystemTime)> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(snapshot(&p));
        } else {
            let m = std::fs::metadata(&p).unwrap().modified().unwrap();
            out.insert(p.clone(), (std::fs::read(&p).unwrap(), m));
        }
    }
    out
}

/// A tokenizer of the stories (vocabulary 600), in DIR/tok.
fn tokenizer(dir: &Path) -> PathBuf {
    let tok = dir.join("tok");
    train_tokenizer(&fixtures().join("stories.txt"), 600, &tok);
    tok
}

fn config(dir: &Path, name: &str, json: &str) -> PathBuf {
    let p = dir.join(format!("{name}.json"));
    std::fs::write(&p, json).unwrap();
    p
}

/// `cria pretrain` of `cfg`: 4 steps of 8 sequences of 32 tokens, a checkpoint every 2.
fn train(data: &Path, cfg: &Path, out: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut args = vec![
        "pretrain",
        "--data",
        s(data),
        "-o",
        s(out),
        "--config",
        s(cfg),
        "--max-steps",
        "4",
        "--micro-batch-tokens",
        "128",
        "--save-every",
        "2",
        "--seed",
        "3",
        "-t",
        "2",
    ];
    args.extend(TINY_STEP);
    args.extend_from_slice(extra);
    cria(&args, env)
}

#[test]
fn empty_corpora_and_bad_jsonl_are_clear_errors() {
    let dir = tmp("empty");
    let tok = tokenizer(&dir);
    let tok_before = snapshot(&tok);
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let blank = dir.join("blank.txt");
    std::fs::write(&blank, "\n  \n\t\n\n").unwrap();
    let empty_dir = dir.join("nothing");
    std::fs::create_dir_all(empty_dir.join("sub")).unwrap();
    std::fs::write(empty_dir.join("notes.bin"), b"xx").unwrap();
    let no_text = dir.join("no_text.jsonl");
    std::fs::write(&no_text, "{\"content\": \"Once upon a time\"}\n").unwrap();
    let blank_text = dir.join("blank_text.jsonl");
    std::fs::write(&blank_text, "{\"text\": \"  \"}\n\n").unwrap();
    let not_json = dir.join("not_json.jsonl");
    std::fs::write(&not_json, "Once upon a time\n").unwrap();
    let cases: [(&Path, &[&str]); 6] = [
        (&empty, &["empty corpus"]),
        (&blank, &["empty corpus"]),
        (&empty_dir, &["no .txt", "nothing"]),
        (&no_text, &["no \"text\" string", "no_text.jsonl:1"]),
        (&blank_text, &["empty corpus"]),
        (&not_json, &["not a JSON line", "not_json.jsonl:1"]),
    ];
    for (corpus, want) in cases {
        let t = dir.join("tok-out");
        fails(
            &cria(
                &[
                    "tokenizer",
                    "train",
                    "--vocab-size",
                    "300",
                    "-o",
                    s(&t),
                    s(corpus),
                ],
                &[],
            ),
            want,
        );
        assert!(!t.exists(), "tokenizer train of {corpus:?} wrote {t:?}");
        let d = dir.join("data-out");
        fails(&prepare(corpus, &tok, &d), want);
        assert!(!d.exists(), "data prepare of {corpus:?} wrote {d:?}");
    }
    // A tokenizer folder that exists is not overwritten.
    fails(
        &cria(
            &[
                "tokenizer",
                "train",
                "-o",
                s(&tok),
                s(&fixtures().join("stories.txt")),
            ],
            &[],
        ),
        &["exists: not overwriting"],
    );
    assert!(snapshot(&tok) == tok_before, "the tokenizer folder changed");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The `<|name|>` tokens of a chat template (the rule `cria data prepare` checks).
fn template_tokens(t: &str) -> Vec<String> {
    let mut out = vec![];
    for (i, _) in t.match_indices("<|") {
        if let Some(j) = t[i..].find("|>") {
            let name = &t[i + 2..i + j];
            if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                out.push(t[i..i + j + 2].to_string());
            }
        }
    }
    out
}

#[test]
fn chat_template_tokens_must_be_in_the_vocabulary() {
    let dir = tmp("template");
    let (tok, data) = tok_and_data(&dir);
    // `cria tokenizer train`'s own template writes only the special tokens it adds.
    let read_json = |p: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let cfg = read_json(&tok.join("tokenizer_config.json"));
    let added: Vec<&str> = cfg["added_tokens_decoder"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v["content"].as_str().unwrap())
        .collect();
    let used = template_tokens(cfg["chat_template"].as_str().unwrap());
    assert_eq!(
        used,
        [
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
            "<|start_header_id|>",
            "<|end_header_id|>"
        ]
    );
    for u in &used {
        assert!(added.contains(&u.as_str()), "{u} not added: {added:?}");
    }
    let tj = read_json(&tok.join("tokenizer.json"));
    let specials: Vec<&str> = tj["added_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["special"] == true)
        .map(|a| a["content"].as_str().unwrap())
        .collect();
    for u in &used {
        assert!(
            specials.contains(&u.as_str()),
            "{u} not special in tokenizer.json"
        );
    }

    // A template naming ChatML tokens this vocabulary lacks: data prepare refuses the tokenizer.
    let bad = dir.join("bad-tok");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::copy(tok.join("tokenizer.json"), bad.join("tokenizer.json")).unwrap();
    let mut c = cfg.clone();
    c["chat_template"] = serde_json::json!("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}");
    std::fs::write(bad.join("tokenizer_config.json"), c.to_string()).unwrap();
    let out = dir.join("data-bad");
    fails(
        &prepare(&fixtures().join("stories.txt"), &bad, &out),
        &["<|im_start|>, <|im_end|>", "not a token of its vocabulary"],
    );
    assert!(!out.exists());

    // The same tokenizer spoiled after the data was prepared: pretrain refuses it too, before
    // writing anything.
    let tok_cfg = tok.join("tokenizer_config.json");
    std::fs::copy(bad.join("tokenizer_config.json"), &tok_cfg).unwrap();
    let data_before = snapshot(&data);
    let run = dir.join("run");
    let cfgp = config(&dir, "tiny", TINY);
    fails(
        &train(&data, &cfgp, &run, &[], &[]),
        &["<|im_start|>", "not a token of its vocabulary"],
    );
    assert!(!run.exists());
    assert!(snapshot(&data) == data_before);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_shapes_and_damaged_data_are_clear_errors() {
    let dir = tmp("shapes");
    let (_tok, data) = tok_and_data(&dir);
    let data_before = snapshot(&data);
    let run = dir.join("run");
    let shape = |heads: usize, kv: usize, dim: usize, layers: usize, ffn: usize| {
        format!(
            r#"{{"hidden_size": {dim}, "num_hidden_layers": {layers}, "num_attention_heads": {heads},
                "num_key_value_heads": {kv}, "intermediate_size": {ffn}}}"#
        )
    };
    let cases: [(String, &[&str]); 7] = [
        (
            shape(3, 1, 64, 2, 128),
            &["num_attention_heads 3 does not divide hidden_size 64"],
        ),
        (
            shape(4, 3, 64, 2, 128),
            &["KV head count 3 does not divide the attention head count 4"],
        ),
        (shape(0, 0, 64, 2, 128), &["does not divide"]),
        (shape(4, 2, 0, 2, 128), &["embedding length is 0"]),
        (shape(4, 2, 64, 0, 128), &["layer count is 0"]),
        (shape(4, 2, 64, 2, 0), &["feed-forward length is 0"]),
        // Within every per-field limit, far beyond any memory: refused before allocating.
        (
            shape(64, 8, 65536, 4096, 262144),
            &["parameters: training it needs at least", "GiB"],
        ),
    ];
    for (i, (json, want)) in cases.iter().enumerate() {
        let c = config(&dir, &format!("shape{i}"), json);
        fails(&train(&data, &c, &run, &[], &[]), want);
        assert!(!run.exists(), "case {i} wrote the run folder");
    }
    // The memory bound counts parameters without allocating them: the same count as the model's.
    for (name, ..) in cria_train::pretrain::PRESETS {
        for tied in [true, false] {
            let mut j = cria_train::pretrain::preset(name, 600, 32).unwrap();
            j["tie_word_embeddings"] = serde_json::json!(tied);
            let c = cria_train::pretrain::config_from_json(&j, 600, 32).unwrap();
            assert_eq!(
                cria_train::pretrain::param_count_u128(&c),
                cria_train::pretrain::param_count(&c).unwrap() as u128,
                "{name} tied {tied}"
            );
        }
    }
    let c = config(
        &dir,
        "huge-vocab",
        &TINY.replace('}', r#", "vocab_size": 1000}"#),
    );
    fails(
        &train(&data, &c, &run, &[], &[]),
        &["vocab_size 1000 differs from the data's 600"],
    );
    let c = config(&dir, "not-json", "{\"hidden_size\": 64,");
    fails(
        &train(&data, &c, &run, &[], &[]),
        &["parsing", "not-json.json"],
    );
    assert!(!run.exists());

    // Damaged data: each case a copy of the prepared folder with one thing broken.
    let tiny = config(&dir, "tiny", TINY);
    let broken = |name: &str, f: &dyn Fn(&Path)| -> PathBuf {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for e in std::fs::read_dir(&data).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
        }
        f(&d);
        d
    };
    let shard = "train_000000.bin";
    let truncated = broken("truncated", &|d| {
        let b = std::fs::read(d.join(shard)).unwrap();
        std::fs::write(d.join(shard), &b[..b.len() - 3]).unwrap();
    });
    let bad_magic = broken("magic", &|d| {
        let mut b = std::fs::read(d.join(shard)).unwrap();
        b[0] = b'X';
        std::fs::write(d.join(shard), b).unwrap();
    });
    let header_only = broken("short", &|d| {
        std::fs::write(d.join(shard), b"CRIATOK").unwrap()
    });
    let missing = broken("missing", &|d| std::fs::remove_file(d.join(shard)).unwrap());
    let bad_vocab = broken("vocab", &|d| {
        let mut b = std::fs::read(d.join(shard)).unwrap();
        b[24..28].copy_from_slice(&7u32.to_le_bytes()); // every token must be below 7
        std::fs::write(d.join(shard), b).unwrap();
    });
    let bad_manifest = broken("manifest", &|d| {
        std::fs::write(d.join("data.json"), "{\"done\": true, \"train\": ").unwrap()
    });
    let cases: [(&Path, &[&str]); 6] = [
        (&truncated, &[shard, "truncated"]),
        (&bad_magic, &[shard, "bad magic"]),
        (&header_only, &[shard, "shorter than the 32-byte header"]),
        (&missing, &["data.json", shard, "missing"]),
        (
            &bad_vocab,
            &[shard, "over a vocabulary of 7; data.json says"],
        ),
        (&bad_manifest, &["data.json"]),
    ];
    for (d, want) in cases {
        let before = snapshot(d);
        fails(&train(d, &tiny, &run, &[], &[]), want);
        assert!(!run.exists(), "{d:?} wrote the run folder");
        assert!(snapshot(d) == before, "{d:?} changed");
    }
    assert!(snapshot(&data) == data_before);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The `cria run` text for `model` (greedy, raw prompt: the model is a base model).
fn greedy(model: &Path) -> String {
    let o = cria(
        &[
            "run",
            "-m",
            s(model),
            "--raw",
            "-p",
            "Once upon a time",
            "-n",
            "24",
            "--temp",
            "0",
            "-t",
            "2",
        ],
        &[],
    );
    ok(&o);
    let mut t = String::from_utf8(o.stdout).expect("cria run printed invalid UTF-8");
    assert_eq!(t.pop(), Some('\n'), "cria run ends its text with a newline");
    t
}

/// The disk fills at the second checkpoint: a clear error, the first intact, --resume from it
/// ends as the undisturbed run; a resume with another config is refused and changes nothing;
/// the result converts to a GGUF that generates the same greedy text.
#[test]
fn disk_full_resume_and_gguf() {
    let dir = tmp("full");
    let (_tok, data) = tok_and_data(&dir);
    let cfg = config(&dir, "tiny", TINY);
    let (a, b) = (dir.join("straight"), dir.join("full"));
    ok(&train(&data, &cfg, &a, &[], &[]));
    let ck: u64 = std::fs::read_dir(a.join("checkpoint-2"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    let limit = (ck + ck / 2).to_string();
    fails(
        &train(
            &data,
            &cfg,
            &b,
            &[],
            &[("CRIA_TEST_FAIL_WRITE_AFTER", &limit)],
        ),
        &["No space left on device", "checkpoint-2 is intact"],
    );
    let names: Vec<String> = std::fs::read_dir(&b)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.contains("checkpoint-4") || n.contains("tmp") || n == "final"),
        "{names:?}"
    );
    let ck2 = snapshot(&b.join("checkpoint-2"));
    let ck2_a = snapshot(&a.join("checkpoint-2"));
    assert_eq!(ck2.len(), ck2_a.len());
    for ((_, (x, _)), (_, (y, _))) in ck2.iter().zip(&ck2_a) {
        assert!(x == y, "checkpoint-2 differs from the undisturbed run's");
    }

    // A resume with another config: refused, nothing in the run changes.
    let before = snapshot(&b);
    let other = config(
        &dir,
        "other",
        &TINY.replace("\"num_attention_heads\": 4", "\"num_attention_heads\": 2"),
    );
    fails(
        &train(&data, &other, &b, &["--resume"], &[]),
        &["another model config"],
    );
    assert!(
        snapshot(&b) == before,
        "a refused resume changed the run folder"
    );

    let err = ok(&train(&data, &cfg, &b, &["--resume"], &[]));
    assert!(err.contains("(step 2)"), "{err}");
    for f in ["checkpoint-4/params.safetensors", "final/model.safetensors"] {
        assert!(
            std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(),
            "{f} differs after the resume"
        );
    }

    // GGUF: converted at f32, the same greedy text as the folder.
    let fin = a.join("final");
    let gguf = dir.join("m.gguf");
    ok(&cria(
        &["convert", s(&fin), s(&gguf), "--outtype", "f32"],
        &[],
    ));
    let g = cria_core::gguf::GgufFile::open(&gguf).unwrap();
    let pre = g.get_str("tokenizer.ggml.pre");
    assert_eq!(pre, Some("llama-bpe"));
    let (tf, tg) = (greedy(&fin), greedy(&gguf));
    assert!(!tf.is_empty());
    assert_eq!(tf, tg, "the folder and its GGUF generate differently");
    let _ = std::fs::remove_dir_all(&dir);
}

/// transformers' `clean_up_tokenization` (tokenizer_config `clean_up_tokenization_spaces`, which
/// `cria tokenizer train` sets as LLaMA 3 does; cria's whole-text decode applies it).
fn clean_up(s: &str) -> String {
    let mut s = s.to_string();
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

/// cria's decode of `ids` (whole, and streamed token by token) against the `tokenizers` crate's
/// (transformers' backend; skip_special_tokens as cria renders control tokens as nothing).
fn check_decode(cria_tok: &cria_tokenizer::Tokenizer, hf: &tokenizers::Tokenizer, ids: &[u32]) {
    let want = hf.decode(ids, true).unwrap();
    let mut st = cria_tokenizer::StreamDecoder::new(cria_tok);
    let mut streamed: String = ids.iter().map(|&i| st.push(i)).collect();
    streamed.push_str(&st.flush());
    assert_eq!(streamed, want, "streamed decode of {ids:?}");
    assert_eq!(cria_tok.decode(ids), clean_up(&want), "decode of {ids:?}");
}

/// Greedy ids of a tiny pretrained model, and any ids at all (lone bytes, broken UTF-8, special
/// tokens), decode in cria as in the `tokenizers` crate; `cria run` prints that text.
#[test]
fn decoding_matches_the_tokenizers_crate() {
    let dir = tmp("decode");
    let (tok, data) = tok_and_data(&dir);
    let cria_tok = cria_engine::load_tokenizer_only(&tok).unwrap();
    let hf = tokenizers::Tokenizer::from_file(tok.join("tokenizer.json")).unwrap();
    let n = cria_tok.vocab_size() as u32;
    assert_eq!(n as usize, hf.get_vocab_size(true));
    for id in 0..n {
        check_decode(&cria_tok, &hf, &[id]);
    }
    // Byte tokens (the 256 symbols of the byte alphabet) and a few others, in random runs.
    let bytes: Vec<u32> = (0..=255u8)
        .map(|b| cria_tok.encode(&String::from_utf8_lossy(&[b]), false, false)[0])
        .collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |m: u32| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % m as u64) as u32
    };
    for _ in 0..2000 {
        let len = 1 + next(12) as usize;
        let ids: Vec<u32> = (0..len)
            .map(|_| match next(3) {
                0 => next(n),
                _ => 128 + next(128), // a high byte, for the byte token below
            })
            .map(|v| {
                if (128..256).contains(&v) {
                    bytes[v as usize]
                } else {
                    v
                }
            })
            .collect();
        check_decode(&cria_tok, &hf, &ids);
    }
    let text = "Café “naïve” 日本語 🦙🚀 don't , it's 3.14 !";
    let ids = cria_tok.encode(text, true, false);
    assert_eq!(ids, hf.encode(text, true).unwrap().get_ids());
    for i in 0..=ids.len() {
        check_decode(&cria_tok, &hf, &ids[..i]);
        check_decode(&cria_tok, &hf, &ids[i..]);
    }

    // A model of 4 steps: its greedy ids (from the logits), decoded, are what `cria run` prints.
    let cfg = config(&dir, "tiny", TINY);
    let run = dir.join("run");
    ok(&train(&data, &cfg, &run, &[], &[]));
    let fin = run.join("final");
    let m = cria_engine::load::load(
        &fin,
        &cria_engine::load::LoadOptions {
            threads: Some(1),
            ..Default::default()
        },
    )
    .unwrap();
    let prompt = "Once upon a time";
    let mut toks = m.encode(prompt, true, false);
    let start = toks.len();
    for _ in 0..24 {
        let l = m.logits(&toks, false, 64, None).unwrap();
        let best = (0..l.len()).fold(0, |b, i| if l[i] > l[b] { i } else { b }) as u32;
        if m.tok.is_eog(best) {
            break;
        }
        toks.push(best);
    }
    let gen = &toks[start..];
    check_decode(&cria_tok, &hf, gen);
    assert_eq!(
        greedy(&fin),
        hf.decode(gen, true).unwrap(),
        "cria run's text, ids {gen:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
