//! Against llama.cpp itself (fixtures made by scripts/gen_fixtures.py from libllama): encoding
//! with every (add_special, parse_special) combination, detokenizing with every
//! (remove_special, unparse_special) combination, BOS/EOS/EOT, add flags and the full set of
//! end-of-generation ids, for the three test vocabularies and SmolLM2's real tokenizer.

mod common;
use common::*;

fn check(vocab: &str) {
    let fx = read_fixture(vocab);
    let tok = load_gguf(&fixture_model_path(vocab));
    let j = &fx.json;
    let opt = |k: &str| j[k].as_u64().map(|x| x as u32);
    assert_eq!(
        tok.vocab_size() as u64,
        j["vocab_size"].as_u64().unwrap(),
        "{vocab}: vocab size"
    );
    assert_eq!(tok.bos(), opt("bos"), "{vocab}: bos");
    assert_eq!(tok.eos(), opt("eos"), "{vocab}: eos");
    // EOT when the metadata names none: llama.cpp takes whichever candidate its hash map yields
    // first; cria takes the first in its priority list. Same id where there is one candidate;
    // otherwise both must be end-of-generation tokens.
    match (tok.eot(), opt("eot")) {
        (Some(ours), Some(theirs)) if ours != theirs => {
            assert!(
                tok.is_eog(ours) && tok.is_eog(theirs),
                "{vocab}: eot {ours} vs llama.cpp {theirs}"
            );
            eprintln!(
                "{vocab}: eot {ours} {:?} (llama.cpp picked {theirs} {:?})",
                tok.token_text(ours),
                tok.token_text(theirs)
            );
        }
        (ours, theirs) => assert_eq!(ours, theirs, "{vocab}: eot"),
    }
    assert_eq!(
        tok.add_bos(),
        j["add_bos"].as_bool().unwrap(),
        "{vocab}: add_bos"
    );
    assert_eq!(
        tok.add_eos(),
        j["add_eos"].as_bool().unwrap(),
        "{vocab}: add_eos"
    );
    let eog: Vec<u32> = j["eog"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(
        tok.eog_ids().collect::<Vec<_>>(),
        eog,
        "{vocab}: end-of-generation ids"
    );
    for &id in &eog {
        assert!(tok.is_eog(id));
    }

    let mut failures = Vec::new();
    let mut checks = 0;
    for c in &fx.cases {
        for (key, expected) in &c.enc {
            let (add, parse) = (key.as_bytes()[0] == b'1', key.as_bytes()[1] == b'1');
            let got = tok.encode(&c.text, add, parse);
            checks += 1;
            if &got != expected {
                failures.push(format!("encode({:?}, add_special={add}, parse_special={parse})\n    expected {expected:?}\n    got      {got:?}", c.text));
            }
        }
        let ids = &c.enc["11"];
        for (key, expected) in &c.dec {
            let (rs, us) = (key.as_bytes()[0] == b'1', key.as_bytes()[1] == b'1');
            let got = tok.detokenize(ids, rs, us);
            checks += 1;
            if &got != expected {
                failures.push(format!(
                    "detokenize({ids:?}, remove_special={rs}, unparse_special={us})\n    expected {:?}\n    got      {:?}",
                    String::from_utf8_lossy(expected),
                    String::from_utf8_lossy(&got)
                ));
            }
        }
        // decode() is detokenize(false, false), lossy.
        assert_eq!(tok.decode(ids), String::from_utf8_lossy(&c.dec["00"]));
    }
    eprintln!(
        "{vocab}: {}/{checks} encode/detokenize results match llama.cpp over {} texts",
        checks - failures.len(),
        fx.cases.len()
    );
    assert!(
        failures.is_empty(),
        "{vocab}: {} of {checks} differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn llama_spm() {
    check("llama-spm");
}

#[test]
fn llama_bpe() {
    check("llama-bpe");
}

#[test]
fn gpt_2() {
    check("gpt-2");
}

#[test]
fn smollm2() {
    check("smollm2");
}

/// Pre-tokenizers that none of the reference vocabularies use, checked on a copy of a vocabulary
/// whose tokenizer.ggml.pre was replaced (gen_fixtures.py VARIANTS); cria swaps its pre-tokenizer
/// with `with_pre`. The add flags stay the base file's, so only add_special = false and
/// remove_special = false are compared.
fn check_variant(base: &str, pre: &str, kind: &str) {
    let fx = read_fixture(&format!("{base}@{pre}"));
    let tok = load_gguf(&vocab_path(base)).with_pre(pre).unwrap();
    assert_eq!(tok.kind(), kind);
    let mut n = 0;
    for c in &fx.cases {
        for key in ["00", "01"] {
            let got = tok.encode(&c.text, false, key == "01");
            assert_eq!(&got, &c.enc[key], "{base}@{pre} {key}: {:?}", c.text);
            n += 1;
        }
        for key in ["00", "01"] {
            let expected = &c.dec[key];
            let got = tok.detokenize(&c.enc["11"], false, key == "01");
            assert_eq!(&got, expected, "{base}@{pre} dec {key}: {:?}", c.text);
            n += 1;
        }
    }
    eprintln!("{base}@{pre}: {n}/{n} encode/detokenize results match llama.cpp");
}

#[test]
fn default_pre_tokenizer() {
    check_variant("gpt-2", "default", "bpe(default)");
}

#[test]
fn qwen2_pre_tokenizer() {
    check_variant("llama-bpe", "qwen2", "bpe(qwen2)");
}
