//! `cria quantize` against `llama-quantize`: for every model and TYPE in tests/fixtures/quantize/
//! (made by scripts/fixtures/make_llamacpp_quantize.sh from llama.cpp 0c1e570), cria's output must
//! have the same metadata (keys, order, types, values), the same tensors (order, names, types,
//! shapes, sha256 of the bytes) and be the same file byte for byte.

use cria_convert::mix::Ftype;
use cria_convert::quantize::{quantize, ImatrixInput, Options};
use cria_convert::source::GgufSource;
use cria_core::gguf::{GgufFile, Value};
use cria_core::imatrix::Imatrix;
use cria_core::DType;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn ref_dir() -> PathBuf {
    std::env::var_os("CRIA_REF_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("ref"))
}

fn sha256(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cria-quantize-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn partial(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

/// One metadata entry against its fixture row `[key, type id, value]`.
fn check_value(key: &str, v: &Value, want_type: u64, want: &Json) {
    assert_eq!(v.type_id() as u64, want_type, "metadata {key}: type");
    match v {
        Value::Array(a) => {
            assert_eq!(
                a.elem_type_id() as u64,
                want["elem"].as_u64().unwrap(),
                "{key}"
            );
            assert_eq!(
                a.len() as u64,
                want["len"].as_u64().unwrap(),
                "{key}: length"
            );
        }
        Value::String(s) => assert_eq!(Some(s.as_str()), want.as_str(), "{key}"),
        Value::Bool(b) => assert_eq!(Some(*b), want.as_bool(), "{key}"),
        Value::F32(x) => assert_eq!(Some(*x as f64), want.as_f64(), "{key}"),
        Value::F64(x) => assert_eq!(Some(*x), want.as_f64(), "{key}"),
        v => assert_eq!(v.as_i64(), want.as_i64(), "{key}"),
    }
}

/// cria's file against llama-quantize's summary of its own.
fn check_output(label: &str, out: &Path, want: &Json) {
    let g = GgufFile::open(out).unwrap();
    let meta = want["metadata"].as_array().unwrap();
    let keys: Vec<&str> = g.metadata.iter().map(|(k, _)| k.as_str()).collect();
    let want_keys: Vec<&str> = meta.iter().map(|m| m[0].as_str().unwrap()).collect();
    assert_eq!(keys, want_keys, "{label}: metadata keys and order");
    for ((k, v), m) in g.metadata.iter().zip(meta) {
        check_value(k, v, m[1].as_u64().unwrap(), &m[2]);
    }
    let tensors = want["tensors"].as_array().unwrap();
    assert_eq!(g.tensors.len(), tensors.len(), "{label}: tensor count");
    for (t, w) in g.tensors.iter().zip(tensors) {
        assert_eq!(t.name, w[0].as_str().unwrap(), "{label}: tensor order");
        assert_eq!(
            t.dtype.name(),
            w[1].as_str().unwrap(),
            "{label}: {} type",
            t.name
        );
        let ne: Vec<usize> = w[2]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.ne, ne, "{label}: {} shape", t.name);
        assert_eq!(
            sha256(t.bytes()),
            w[3].as_str().unwrap(),
            "{label}: {} bytes ({})",
            t.name,
            t.dtype
        );
    }
    drop(g);
    let bytes = std::fs::read(out).unwrap();
    assert_eq!(
        bytes.len() as u64,
        want["file_size"].as_u64().unwrap(),
        "{label}: size"
    );
    assert_eq!(
        sha256(&bytes),
        want["file_sha256"].as_str().unwrap(),
        "{label}: file"
    );
}

/// `--imatrix FILE` of a fixture, read as `cria quantize --imatrix` reads it.
fn imatrix_input(arg: &str) -> ImatrixInput<'static> {
    let im = std::sync::Arc::new(Imatrix::read(&repo().join(arg)).unwrap());
    let w = im.clone();
    ImatrixInput {
        file: arg.to_string(),
        dataset: im.datasets.first().cloned(),
        n_entries: im.entries.len(),
        n_chunks: im.chunk_count,
        weights: Box::new(move |name| w.quant_weights(name)),
    }
}

/// Runs every TYPE of one fixture; returns how many were checked.
fn check_model(name: &str, threads: Option<usize>) -> Option<usize> {
    let doc: Json = serde_json::from_slice(
        &std::fs::read(repo().join(format!("tests/fixtures/quantize/{name}.json"))).unwrap(),
    )
    .unwrap();
    let input = doc["input"].as_str().unwrap();
    let path = match doc["input_in"].as_str().unwrap() {
        "ref" => ref_dir().join(input),
        _ => repo().join(input),
    };
    if !path.is_file() {
        eprintln!(
            "SKIPPED: {name}: {} is missing (set CRIA_REF_DIR to the folder holding smol/)",
            path.display()
        );
        return None;
    }
    assert_eq!(
        sha256(&std::fs::read(&path).unwrap()),
        doc["input_sha256"].as_str().unwrap(),
        "{}: not the file the fixture was made from",
        path.display()
    );
    let args: Vec<&str> = doc["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    for (f, sha) in doc["files_sha256"].as_object().into_iter().flatten() {
        let b = std::fs::read(repo().join(f)).unwrap();
        assert_eq!(
            sha256(&b),
            sha.as_str().unwrap(),
            "{f}: not the fixture's file"
        );
    }
    let imatrix = args
        .iter()
        .position(|&a| a == "--imatrix")
        .map(|i| args[i + 1]);
    let src = GgufSource::open(&path).unwrap();
    let mut checked = 0;
    for run in doc["runs"].as_array().unwrap() {
        let ty = run["type"].as_str().unwrap();
        let mut opts = Options::new(Ftype::parse(ty).unwrap());
        opts.allow_requantize = args.contains(&"--allow-requantize");
        opts.threads = threads.unwrap_or(doc["threads"].as_u64().unwrap() as usize);
        opts.imatrix = imatrix.map(imatrix_input);
        opts.pure = args.contains(&"--pure");
        let type_arg = |flag: &str| {
            let i = args.iter().position(|&a| a == flag)?;
            Some(DType::from_name(args[i + 1]).unwrap())
        };
        opts.output_tensor_type = type_arg("--output-tensor-type");
        opts.token_embedding_type = type_arg("--token-embedding-type");
        let out = tmp(&format!("{name}-{ty}.gguf"));
        let label = format!("{name} {ty}");
        let res = quantize(&src, &out, &opts, &mut |_| {});
        if let Some(err) = run.get("error") {
            let e = res.expect_err(&format!("{label}: llama-quantize refused it ({err})"));
            eprintln!("{label}: refused like llama-quantize: {e}");
            assert!(
                !out.exists() && !partial(&out).exists(),
                "{label}: output left behind"
            );
            checked += 1;
            continue;
        }
        match res {
            Err(e) => panic!("{label}: {e}"),
            Ok(report) => {
                check_output(&label, &out, &run["result"]);
                assert_eq!(report.n_tensors, src.file.tensors.len());
                std::fs::remove_file(&out).unwrap();
                checked += 1;
            }
        }
    }
    Some(checked)
}

fn all_types_checked(name: &str) {
    let checked = check_model(name, None).unwrap();
    eprintln!("{name}: {checked} types identical to llama-quantize");
    assert_eq!(checked, 20, "{name}");
}

#[test]
fn tiny_llama2_every_type_matches_llama_quantize() {
    all_types_checked("tiny-llama2");
}

#[test]
fn tiny_llama31_every_type_matches_llama_quantize() {
    all_types_checked("tiny-llama31");
}

#[test]
fn tiny_llama3_256_every_type_matches_llama_quantize() {
    all_types_checked("tiny-llama3-256");
}

/// Bytes do not depend on the thread count.
#[test]
fn tiny_llama3_256_same_bytes_on_1_and_3_threads() {
    for t in [1, 3] {
        check_model("tiny-llama3-256", Some(t)).unwrap();
    }
}

#[test]
fn smollm2_q4_1_requantized_matches_llama_quantize() {
    if let Some(checked) = check_model("smollm2-q4_1", None) {
        eprintln!("smollm2: {checked} types identical to llama-quantize");
        assert_eq!(checked, 7);
    }
}

#[test]
fn tiny_llama3_256_with_imatrix_matches_llama_quantize() {
    let checked = check_model("tiny-llama3-256-imatrix", None).unwrap();
    eprintln!("tiny-llama3-256 + imatrix: {checked} types identical to llama-quantize");
    assert_eq!(checked, 27);
}

/// --pure, --output-tensor-type and --token-embedding-type, on tied and untied models.
#[test]
fn mix_options_match_llama_quantize() {
    for (name, runs) in [
        ("tiny-llama3-256-pure", 5),
        ("tiny-llama2-tensor-types", 3),
        ("tiny-llama3-256-output-type", 2),
        ("tiny-llama3-256-embd-type", 2),
    ] {
        let checked = check_model(name, None).unwrap();
        eprintln!("{name}: {checked} types identical to llama-quantize");
        assert_eq!(checked, runs, "{name}");
    }
}
