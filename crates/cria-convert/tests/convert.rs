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
    let mut want: Vec<(String, Json)> = fx["metadata"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let a = e.as_array().unwrap();
            (
                a[0].as_str().unwrap().to_string(),
                Json::Array(a[1..].to_vec()),
            )
        })
        .collect();
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
    // tokenizer gives the same ids, so the same hash. This tiny tokenizer is not in the table:
    // like the converter, cria refuses it unless told the pre-tokenizer.
    let dir = root().join("tests/fixtures/tiny-llama31");
    let fx = fixture("tiny-llama31");
    let h = cria_convert::convert_vocab::chkhsh(&dir).unwrap();
    assert_eq!(h, fx["chkhsh"].as_str().unwrap());
    let err = HfSource::open(&dir)
        .err()
        .expect("unknown hash must be refused");
    let msg = err.to_string();
    assert!(msg.contains("not recognized") && msg.contains(&h), "{msg}");
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
