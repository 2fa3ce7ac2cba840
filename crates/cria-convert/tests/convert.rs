//! `cria convert` against llama.cpp's own `convert_hf_to_gguf.py` on the committed tiny HF folders
//! (fixtures: tests/fixtures/convert/*.json, made by scripts/fixtures/make_llamacpp_convert.py).
//!
//! Tensors: same names, order, types, shapes and sha256 of the bytes, for every --outtype.
//! Metadata: same keys in the same order with the same types and values, except [`MAY_DIFFER`].

use cria_convert::convert::{write_gguf, ConvertOptions, HfSource, OutType};
use cria_convert::source::Source;
use cria_core::gguf::{Array, GgufFile, Value};
use serde_json::Value as Json;
use sha2::Digest;
use std::path::{Path, PathBuf};

/// Metadata the converter derives from the model card / folder name / parameter count for
/// display only; llama.cpp never reads them to run the model. cria writes `general.name` (the
/// folder name title-cased, as gguf-py does without a model card) and `general.size_label`, but
/// gguf-py's full heuristics (README front matter, base models, tags, licence, languages) are
/// not reproduced, so these may differ or be missing on real folders.
const MAY_DIFFER: &[&str] = &[
    "general.name",
    "general.basename",
    "general.finetune",
    "general.version",
    "general.size_label",
    "general.author",
    "general.organization",
    "general.description",
    "general.license",
    "general.license.name",
    "general.license.link",
    "general.url",
    "general.repo_url",
    "general.tags",
    "general.languages",
    "general.datasets",
    "general.base_model.count",
    "general.quantized_by",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture(model: &str) -> Json {
    let p = root().join(format!("tests/fixtures/convert/{model}.json"));
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

/// `[[key, ...value]]` of a fixture as (key, value JSON) pairs.
fn fixture_metadata(v: &Json) -> Vec<(String, Json)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let a = e.as_array().unwrap();
            (
                a[0].as_str().unwrap().to_string(),
                Json::Array(a[1..].to_vec()),
            )
        })
        .collect()
}

fn type_name(id: u32) -> &'static str {
    [
        "UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32", "BOOL", "STRING",
        "ARRAY", "UINT64", "INT64", "FLOAT64",
    ][id as usize]
}

/// A value as the fixture's JSON holds it: `[type, value]` or `["ARRAY", elem type, [values]]`.
fn to_json(v: &Value) -> Json {
    let scalar = |v: &Value| -> Json {
        match v {
            Value::U8(x) => (*x).into(),
            Value::I8(x) => (*x).into(),
            Value::U16(x) => (*x).into(),
            Value::I16(x) => (*x).into(),
            Value::U32(x) => (*x).into(),
            Value::I32(x) => (*x).into(),
            Value::F32(x) => (*x as f64).into(),
            Value::Bool(x) => (*x).into(),
            Value::String(x) => x.as_str().into(),
            Value::U64(x) => (*x).into(),
            Value::I64(x) => (*x).into(),
            Value::F64(x) => (*x).into(),
            Value::Array(_) => unreachable!(),
        }
    };
    match v {
        Value::Array(a) => {
            let items: Vec<Json> = match a {
                Array::String(s) => s.iter().map(Json::from).collect(),
                Array::F32(x) => x.iter().map(|&f| Json::from(f as f64)).collect(),
                Array::I32(x) => x.iter().map(|&f| Json::from(f)).collect(),
                Array::U32(x) => x.iter().map(|&f| Json::from(f)).collect(),
                other => panic!("array type {} not expected here", other.elem_type_id()),
            };
            Json::Array(vec![
                "ARRAY".into(),
                type_name(a.elem_type_id()).into(),
                Json::Array(items),
            ])
        }
        v => Json::Array(vec![type_name(v.type_id()).into(), scalar(v)]),
    }
}

fn sha256(b: &[u8]) -> String {
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn outtype(s: &str) -> OutType {
    s.parse().unwrap()
}

fn open(model: &str, ot: &str) -> HfSource {
    let pre = (model == "tiny-llama31").then(|| "llama-bpe".to_string());
    HfSource::open_with(
        &root().join("tests/fixtures").join(model),
        ConvertOptions {
            outtype: outtype(ot),
            tokenizer_pre: pre,
        },
    )
    .unwrap()
}

/// Compares metadata; returns the keys that differed within MAY_DIFFER (for the report).
fn check_metadata(model: &str, ot: &str, ours: &[(String, Value)], fx: &Json) -> Vec<String> {
    let mut want: Vec<(String, Json)> = fixture_metadata(&fx["metadata"]);
    if let Some(over) = fx["metadata_by_outtype"][ot].as_object() {
        for (k, v) in over {
            want.iter_mut().find(|(kk, _)| kk == k).unwrap().1 = v.clone();
        }
    }
    let keep = |k: &str| !MAY_DIFFER.contains(&k);
    let w: Vec<&(String, Json)> = want.iter().filter(|(k, _)| keep(k)).collect();
    let o: Vec<(String, Json)> = ours
        .iter()
        .filter(|(k, _)| keep(k))
        .map(|(k, v)| (k.clone(), to_json(v)))
        .collect();
    let wk: Vec<&str> = w.iter().map(|(k, _)| k.as_str()).collect();
    let ok: Vec<&str> = o.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(ok, wk, "{model} {ot}: metadata keys/order");
    for ((k, a), (_, b)) in o.iter().zip(w) {
        assert_eq!(a, b, "{model} {ot}: metadata {k}");
    }
    let mut differ = Vec::new();
    for (k, v) in &want {
        if !keep(k)
            && ours.iter().find(|(kk, _)| kk == k).map(|(_, x)| to_json(x)) != Some(v.clone())
        {
            differ.push(k.clone());
        }
    }
    differ
}

fn check_tensors(model: &str, ot: &str, src: &HfSource, fx: &Json) {
    let want = fx["tensors"][ot].as_array().unwrap();
    let ts = src.tensors();
    assert_eq!(ts.len(), want.len(), "{model} {ot}: tensor count");
    for (i, (t, w)) in ts.iter().zip(want).enumerate() {
        let w = w.as_array().unwrap();
        assert_eq!(
            t.name,
            w[0].as_str().unwrap(),
            "{model} {ot}: tensor {i} name"
        );
        assert_eq!(
            t.dtype.name(),
            w[1].as_str().unwrap(),
            "{model} {ot}: {} type",
            t.name
        );
        let ne: Vec<usize> = w[2]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.ne, ne, "{model} {ot}: {} shape", t.name);
        let b = src.bytes(i).unwrap();
        assert_eq!(
            sha256(&b),
            w[3].as_str().unwrap(),
            "{model} {ot}: {} bytes",
            t.name
        );
    }
}

#[test]
fn same_tensors_and_metadata_as_llama_cpp_converter() {
    for model in ["tiny-llama2", "tiny-llama31", "tiny-variants"] {
        let fx = fixture(model);
        for ot in ["f32", "f16", "bf16", "q8_0"] {
            let src = open(model, ot);
            check_tensors(model, ot, &src, &fx);
            let differ = check_metadata(model, ot, &src.metadata(), &fx);
            assert!(
                differ.is_empty(),
                "{model} {ot}: display-only keys differ: {differ:?}"
            );
        }
    }
}

/// Converting the same folder (so the same general.name), cria's file is byte for byte the
/// converter's: header, metadata, tensor table, alignment padding and data.
#[test]
fn whole_files_are_byte_identical() {
    let d = tmp("bytes");
    for model in ["tiny-llama2", "tiny-llama31", "tiny-variants"] {
        let fx = fixture(model);
        for ot in ["f32", "f16", "bf16", "q8_0"] {
            let out = d.join(format!("{model}-{ot}.gguf"));
            write_gguf(&open(model, ot), &out, None, |_| {}).unwrap();
            let got = sha256(&std::fs::read(&out).unwrap());
            assert_eq!(got, fx["file_sha256"][ot].as_str().unwrap(), "{model} {ot}");
        }
    }
    // The split, named as the script named it (out.gguf).
    let src = open("tiny-llama2", "f32");
    let files = write_gguf(&src, &d.join("out.gguf"), Some(300_000), |_| {}).unwrap();
    let shards = fixture("tiny-llama2")["split"]["shards"].clone();
    for (f, s) in files.iter().zip(shards.as_array().unwrap()) {
        let got = sha256(&std::fs::read(f).unwrap());
        assert_eq!(got, s["file_sha256"].as_str().unwrap(), "{}", f.display());
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn auto_outtype_follows_the_weights() {
    // f32 weights -> f16 (the converter's fallback); bf16 shards -> bf16.
    let a = HfSource::open(&root().join("tests/fixtures/tiny-llama2")).unwrap();
    assert_eq!(a.outtype, OutType::F16);
    let b = HfSource::open(&root().join("tests/fixtures/tiny-variants")).unwrap();
    assert_eq!(b.outtype, OutType::Bf16);
    let fx = fixture("tiny-variants");
    check_tensors("tiny-variants", "bf16", &b, &fx);
}

#[test]
fn pre_tokenizer_hash_is_the_converters() {
    // The converter hashed the ids of its check text with transformers' tokenizer; cria's
    // tokenizer gives the same ids, so the same hash. This tiny tokenizer is not in the table,
    // but it is built exactly as LLaMA 3's (regex, ByteLevel, ignore_merges): cria names it
    // llama-bpe (llama.cpp's converter would refuse it).
    let dir = root().join("tests/fixtures/tiny-llama31");
    let fx = fixture("tiny-llama31");
    let h = cria_convert::convert_vocab::chkhsh(&dir).unwrap();
    assert_eq!(h, fx["chkhsh"].as_str().unwrap());
    let src = HfSource::open(&dir).unwrap();
    let pre = src
        .metadata()
        .iter()
        .find(|(k, _)| k == "tokenizer.ggml.pre")
        .map(|(_, v)| to_json(v));
    assert_eq!(pre, Some(serde_json::json!(["STRING", "llama-bpe"])));
    // The same vocabulary without ignore_merges is not LLaMA 3's: refused as by the converter.
    let d = tmp("no-ignore-merges");
    for f in ["config.json", "model.safetensors", "tokenizer_config.json"] {
        std::fs::copy(dir.join(f), d.join(f)).unwrap();
    }
    let mut j: Json =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap())
            .unwrap();
    j["model"]["ignore_merges"] = Json::Bool(false);
    std::fs::write(d.join("tokenizer.json"), j.to_string()).unwrap();
    let h = cria_convert::convert_vocab::chkhsh(&d).unwrap();
    let err = HfSource::open(&d)
        .err()
        .expect("unknown hash must be refused");
    let msg = err.to_string();
    assert!(msg.contains("not recognized") && msg.contains(&h), "{msg}");
    std::fs::remove_dir_all(&d).unwrap();
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cria-convert-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn written_file_reads_back_and_splits_as_gguf_py() {
    let src = open("tiny-llama2", "f32");
    let d = tmp("write");
    let out = d.join("out.gguf");
    let mut seen = 0;
    let files = write_gguf(&src, &out, None, |_| seen += 1).unwrap();
    assert_eq!(files, vec![out.clone()]);
    assert_eq!(seen, src.tensors().len());
    let g = GgufFile::open(&out).unwrap();
    assert_eq!(g.metadata.as_slice(), &*src.metadata());
    for (i, t) in src.tensors().iter().enumerate() {
        let r = g.tensor(&t.name).unwrap();
        assert_eq!((r.dtype, &r.ne), (t.dtype, &t.ne));
        assert_eq!(r.bytes(), &*src.bytes(i).unwrap());
    }
    // cria's model loader and tokenizer take the file.
    let tok = cria_tokenizer::Tokenizer::from_gguf(&g).unwrap();
    assert_eq!(tok.bos(), Some(1));

    // --split-max-size 300K: the same shards, split keys and tensors as gguf-py.
    let fx = fixture("tiny-llama2");
    let files = write_gguf(&src, &out, Some(300_000), |_| {}).unwrap();
    let shards = fx["split"]["shards"].as_array().unwrap();
    assert_eq!(files.len(), shards.len());
    for (f, s) in files.iter().zip(shards) {
        assert_eq!(
            f.file_name().unwrap().to_str().unwrap(),
            s["file"].as_str().unwrap()
        );
        // Read the header only (a shard alone: GgufFile::open would gather all splits).
        let bytes = std::fs::read(f).unwrap();
        let n_kv = u64::from_le_bytes(bytes[16..24].try_into().unwrap());
        let keys = s["split_keys"].as_array().unwrap().len() as u64;
        assert_eq!(n_kv, keys + s["n_other_keys"].as_u64().unwrap());
        let n_t = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
        assert_eq!(n_t as usize, s["tensors"].as_array().unwrap().len());
    }
    // All shards opened together are the model.
    let g = GgufFile::open(&files[0]).unwrap();
    assert_eq!(g.tensors.len(), src.tensors().len());
    for s in shards {
        let no = s["split_keys"][0][2].as_u64().unwrap();
        for (name, h) in s["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .zip(s["tensor_sha256"].as_array().unwrap())
        {
            let t = g.tensor(name.as_str().unwrap()).unwrap();
            assert_eq!(sha256(t.bytes()), h.as_str().unwrap(), "split {no}: {name}");
        }
    }
    std::fs::remove_dir_all(&d).unwrap();
}

// ------------------------------------------------------------------ real LLaMA vocabularies

/// The digest form of the fixture (make_llamacpp_convert.py `digest`): arrays as their length and
/// the sha256 of their elements (strings: UTF-8 + NUL each; numbers: 4 bytes little-endian).
fn digest(v: &Value) -> Json {
    let Value::Array(a) = v else {
        return to_json(v);
    };
    let mut h = sha2::Sha256::new();
    match a {
        Array::String(s) => s.iter().for_each(|x| {
            h.update(x.as_bytes());
            h.update([0u8]);
        }),
        Array::I32(x) => x.iter().for_each(|v| h.update(v.to_le_bytes())),
        Array::U32(x) => x.iter().for_each(|v| h.update(v.to_le_bytes())),
        Array::F32(x) => x.iter().for_each(|v| h.update(v.to_le_bytes())),
        other => panic!("array type {} not expected here", other.elem_type_id()),
    }
    let hex: String = h.finalize().iter().map(|x| format!("{x:02x}")).collect();
    serde_json::json!(["ARRAY", type_name(a.elem_type_id()), {"n": a.len(), "sha256": hex}])
}

/// The HF folders of make_llamacpp_convert.py's `vocab_folders`, rebuilt from committed files.
fn vocab_folder(name: &str, into: &Path) -> PathBuf {
    use std::io::Read;
    let gunzip = |p: &Path| -> Vec<u8> {
        let mut v = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(p).unwrap())
            .read_to_end(&mut v)
            .unwrap();
        v
    };
    let d = into.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let fx = root().join("tests/fixtures");
    let (tiny, vocab_size) = if name == "llama-bpe" {
        let hf = root().join("crates/cria-tokenizer/tests/fixtures/hf/llama-bpe");
        let mut tj: Json = serde_json::from_slice(&gunzip(&hf.join("tokenizer.json.gz"))).unwrap();
        // The patches of the script: drop the export's extra added token at 128256, add the BOS
        // Meta-Llama-3's tokenizer.json adds.
        let added: Vec<Json> = tj["added_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["id"].as_u64().unwrap() < 128256)
            .cloned()
            .collect();
        tj["added_tokens"] = Json::Array(added);
        tj["post_processor"] = serde_json::json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [128000],
                                                     "tokens": ["<|begin_of_text|>"]}}
        });
        std::fs::write(d.join("tokenizer.json"), serde_json::to_vec(&tj).unwrap()).unwrap();
        std::fs::copy(
            hf.join("tokenizer_config.json"),
            d.join("tokenizer_config.json"),
        )
        .unwrap();
        ("tiny-llama31", 128256)
    } else {
        let m = gunzip(&fx.join("convert/llama-spm.tokenizer.model.gz"));
        std::fs::write(d.join("tokenizer.model"), m).unwrap();
        std::fs::copy(
            fx.join("tiny-llama2/tokenizer_config.json"),
            d.join("tokenizer_config.json"),
        )
        .unwrap();
        ("tiny-llama2", 32000)
    };
    std::fs::copy(
        fx.join(tiny).join("model.safetensors"),
        d.join("model.safetensors"),
    )
    .unwrap();
    let mut cfg: Json =
        serde_json::from_str(&std::fs::read_to_string(fx.join(tiny).join("config.json")).unwrap())
            .unwrap();
    cfg["vocab_size"] = vocab_size.into();
    if name == "llama-bpe" {
        cfg["bos_token_id"] = 128000.into();
        cfg["eos_token_id"] = 128001.into();
    }
    std::fs::write(d.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    d
}

/// llama.cpp's tokenizer vectors (models/ggml-vocab-NAME.gguf.inp/.out, copied to
/// tests/fixtures/convert/vectors/).
fn vectors(name: &str) -> Vec<(String, Vec<u32>)> {
    let v = root().join("tests/fixtures/convert/vectors");
    let inp = std::fs::read_to_string(v.join(format!("{name}.inp"))).unwrap();
    let out = std::fs::read_to_string(v.join(format!("{name}.out"))).unwrap();
    let mut texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    if texts.last() == Some(&"") {
        texts.pop();
    }
    texts
        .iter()
        .zip(out.split('\n'))
        .map(|(t, ids)| {
            (
                t.to_string(),
                ids.split_whitespace().map(|x| x.parse().unwrap()).collect(),
            )
        })
        .collect()
}

#[test]
fn real_llama_vocabularies_as_the_converter_and_tokenize_as_llama_cpp() {
    let d = tmp("vocab");
    for name in ["llama-bpe", "llama-spm"] {
        let dir = vocab_folder(name, &d);
        // No --tokenizer-pre: the BPE pre-tokenizer is found by its hash, as by the converter.
        let src = HfSource::open_with(
            &dir,
            ConvertOptions {
                outtype: OutType::F32,
                tokenizer_pre: None,
            },
        )
        .unwrap();
        let fx = fixture(&format!("vocab-{name}"));
        let want: Vec<(String, Json)> = fixture_metadata(&fx["metadata"])
            .into_iter()
            .filter(|(k, _)| !MAY_DIFFER.contains(&k.as_str()))
            .collect();
        let ours: Vec<(String, Json)> = src
            .metadata()
            .iter()
            .filter(|(k, _)| !MAY_DIFFER.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), digest(v)))
            .collect();
        let wk: Vec<&str> = want.iter().map(|(k, _)| k.as_str()).collect();
        let ok: Vec<&str> = ours.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(ok, wk, "{name}: metadata keys");
        for ((k, a), (_, b)) in ours.iter().zip(&want) {
            assert_eq!(a, b, "{name}: metadata {k}");
        }
        // The file cria writes tokenizes llama.cpp's vectors as llama.cpp does.
        let out = d.join(format!("{name}.gguf"));
        write_gguf(&src, &out, None, |_| {}).unwrap();
        let tok = cria_tokenizer::Tokenizer::from_gguf(&GgufFile::open(&out).unwrap()).unwrap();
        let v = vectors(name);
        let bad: Vec<&String> = v
            .iter()
            .filter(|(t, ids)| &tok.encode(t, false, false) != ids)
            .map(|(t, _)| t)
            .collect();
        eprintln!("{name}: {}/{} vectors match", v.len() - bad.len(), v.len());
        assert!(bad.is_empty(), "{name}: vectors differ: {bad:?}");
        assert!(v.len() > 20);
    }
    std::fs::remove_dir_all(&d).unwrap();
}

// ------------------------------------------------------------------ chat templates, sampling

/// make_llamacpp_convert.py's EXTRAS folders: a tiny folder plus a chat template, add_eos_token
/// and generation_config.json sampling defaults.
fn extras_folder(name: &str, into: &Path) -> PathBuf {
    let (base, files, tcfg): (&str, Vec<(&str, String)>, Json) = match name {
        "spm-extras" => (
            "tiny-llama2",
            vec![(
                "generation_config.json",
                r#"{"do_sample": true, "top_k": 40, "top_p": 0.95, "temperature": 0.7, "repetition_penalty": 1.1}"#.into(),
            )],
            serde_json::json!({
                "chat_template": "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}",
                "add_eos_token": true
            }),
        ),
        "yarn-extras" => ("tiny-llama2", vec![], serde_json::json!({})),
        _ => (
            "tiny-llama31",
            vec![
                (
                    "generation_config.json",
                    r#"{"bos_token_id": 510, "eos_token_id": [511], "temperature": 0.6, "top_p": 0.9, "do_sample": true}"#.into(),
                ),
                (
                    "chat_template.jinja",
                    "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}".into(),
                ),
            ],
            serde_json::json!({}),
        ),
    };
    let d = into.join(name);
    std::fs::create_dir_all(&d).unwrap();
    for e in std::fs::read_dir(root().join("tests/fixtures").join(base)).unwrap() {
        let p = e.unwrap().path();
        let n = p.file_name().unwrap().to_str().unwrap().to_string();
        if n.ends_with(".gguf") || n.ends_with(".npy") || n == "reference.json" {
            continue;
        }
        std::fs::copy(&p, d.join(&n)).unwrap();
    }
    for (f, text) in files {
        std::fs::write(d.join(f), text).unwrap();
    }
    let mut cfg: Json =
        serde_json::from_str(&std::fs::read_to_string(d.join("tokenizer_config.json")).unwrap())
            .unwrap();
    for (k, v) in tcfg.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    std::fs::write(d.join("tokenizer_config.json"), cfg.to_string()).unwrap();
    if name == "yarn-extras" {
        let mut c: Json =
            serde_json::from_str(&std::fs::read_to_string(d.join("config.json")).unwrap()).unwrap();
        c["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0,
            "original_max_position_embeddings": 64, "beta_fast": 32.0, "beta_slow": 1.0});
        std::fs::write(d.join("config.json"), c.to_string()).unwrap();
    }
    d
}

#[test]
fn chat_templates_and_sampling_defaults_as_the_converter() {
    let d = tmp("extras");
    let fx = fixture("extras");
    let big = [
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.scores",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
    ];
    for name in ["spm-extras", "bpe-extras", "yarn-extras"] {
        let dir = extras_folder(name, &d);
        let src = HfSource::open_with(
            &dir,
            ConvertOptions {
                outtype: OutType::F32,
                tokenizer_pre: (name == "bpe-extras").then(|| "llama-bpe".into()),
            },
        )
        .unwrap();
        let keep = |k: &str| !MAY_DIFFER.contains(&k) && !big.contains(&k);
        let want: Vec<(String, Json)> = fixture_metadata(&fx[name])
            .into_iter()
            .filter(|(k, _)| keep(k))
            .collect();
        let ours: Vec<(String, Json)> = src
            .metadata()
            .iter()
            .filter(|(k, _)| keep(k))
            .map(|(k, v)| (k.clone(), to_json(v)))
            .collect();
        assert_eq!(ours, want, "{name}");
        if name == "yarn-extras" {
            assert!(ours
                .iter()
                .any(|(k, _)| k == "llama.rope.scaling.yarn_beta_fast"));
        } else {
            assert!(ours.iter().any(|(k, _)| k == "tokenizer.chat_template"));
            assert!(ours.iter().any(|(k, _)| k == "general.sampling.temp"));
        }
    }
    std::fs::remove_dir_all(&d).unwrap();
}

/// Several safetensors files without an index: the converter takes `model*.safetensors` in name
/// order, tensors sorted by name within each; so does cria.
#[test]
fn unindexed_shards_in_the_converters_order() {
    use cria_core::safetensors::{write_safetensors, SafetensorsModel};
    let d = tmp("unindexed");
    let base = root().join("tests/fixtures/tiny-llama2");
    for f in ["config.json", "tokenizer.model", "tokenizer_config.json"] {
        std::fs::copy(base.join(f), d.join(f)).unwrap();
    }
    let st = SafetensorsModel::open_file(&base.join("model.safetensors")).unwrap();
    let mut names: Vec<&str> = st.tensors.iter().map(|t| t.name.as_str()).collect();
    names.sort();
    // Interleave the names over two files, so file order and name order disagree.
    let mut parts: [Vec<&str>; 2] = [Vec::new(), Vec::new()];
    for (i, n) in names.iter().enumerate() {
        parts[i % 2].push(n);
    }
    for (i, part) in parts.iter().enumerate() {
        let shapes: Vec<Vec<usize>> = part
            .iter()
            .map(|n| st.get(n).unwrap().ne.iter().rev().copied().collect())
            .collect();
        let entries: Vec<(&str, cria_core::DType, &[usize], &[u8])> = part
            .iter()
            .zip(&shapes)
            .map(|(n, s)| {
                let t = st.get(n).unwrap();
                (*n, t.dtype, s.as_slice(), t.bytes())
            })
            .collect();
        write_safetensors(
            &d.join(format!("model-part{}.safetensors", i + 1)),
            &entries,
        )
        .unwrap();
    }
    let src = HfSource::open_with(
        &d,
        ConvertOptions {
            outtype: OutType::F32,
            tokenizer_pre: None,
        },
    )
    .unwrap();
    let gguf = |hf: &str| cria_model::names::hf_to_gguf(hf).unwrap();
    let want: Vec<String> = parts.iter().flatten().map(|n| gguf(n)).collect();
    let got: Vec<&str> = src.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(got, want);
    // Each tensor's bytes are still the converter's (f32 hashes of the one-file folder).
    let fx = fixture("tiny-llama2");
    for (i, t) in src.tensors().iter().enumerate() {
        let w = fx["tensors"]["f32"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w[0] == t.name.as_str())
            .unwrap();
        assert_eq!(
            sha256(&src.bytes(i).unwrap()),
            w[3].as_str().unwrap(),
            "{}",
            t.name
        );
    }
    std::fs::remove_dir_all(&d).unwrap();
}
