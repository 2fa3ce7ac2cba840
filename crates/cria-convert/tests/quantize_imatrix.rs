//! Importance matrices in `cria quantize`: checked as llama-quantize checks them, before any
//! output exists, and recorded in the metadata under llama-quantize's keys.

use cria_convert::mix::Ftype;
use cria_convert::quantize::{out_metadata, quantize, ImatrixInput, Options};
use cria_convert::source::GgufSource;
use cria_core::gguf::Value;
use std::path::PathBuf;

fn model() -> GgufSource {
    GgufSource::open(&PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/quantize/tiny-llama3-256.gguf"
    )))
    .unwrap()
}

fn imatrix(weights: impl Fn(&str) -> Option<Vec<f32>> + Sync + 'static) -> ImatrixInput<'static> {
    ImatrixInput {
        file: "calib.imatrix.gguf".into(),
        dataset: Some("wiki.train.raw".into()),
        n_entries: 14,
        n_chunks: 10,
        weights: Box::new(weights),
    }
}

/// Runs a quantization that must fail; returns its message, checking nothing was left behind.
fn fails(opts: &Options, tag: &str) -> String {
    let out = std::env::temp_dir().join(format!("cria-qimat-{}-{tag}.gguf", std::process::id()));
    let e = quantize(&model(), &out, opts, &mut |_| {})
        .unwrap_err()
        .to_string();
    let mut partial = out.clone().into_os_string();
    partial.push(".partial");
    assert!(
        !out.exists() && !PathBuf::from(partial).exists(),
        "{tag}: output left behind"
    );
    e
}

#[test]
fn imatrix_row_length_must_match() {
    let mut opts = Options::new(Ftype::Q4_K_M);
    opts.imatrix = Some(imatrix(|name| {
        Some(vec![
            1.0;
            if name == "blk.1.ffn_up.weight" {
                255
            } else {
                256
            }
        ])
    }));
    let e = fails(&opts, "len");
    assert!(
        e.contains("size 255 is different from tensor size 256 for blk.1.ffn_up.weight"),
        "{e}"
    );
}

#[test]
fn token_embd_size_mismatch_is_ignored_as_in_llama_cpp() {
    // token_embd's entry (never a matmul input in llama.cpp's imatrix) may not fit: llama-quantize
    // drops it. (Until cria_core's weighted quantizers land, the run stops there instead.)
    let mut opts = Options::new(Ftype::Q4_K_M);
    opts.imatrix = Some(imatrix(|name| {
        Some(vec![1.0; if name == "token_embd.weight" { 7 } else { 256 }])
    }));
    let out = std::env::temp_dir().join(format!("cria-qimat-{}-embd.gguf", std::process::id()));
    match quantize(&model(), &out, &opts, &mut |_| {}) {
        Ok(_) => std::fs::remove_file(&out).unwrap(),
        Err(e) => {
            let e = e.to_string();
            assert!(!e.contains("token_embd"), "{e}");
            assert!(
                e.contains("with an importance matrix: not supported yet"),
                "{e}"
            );
        }
    }
}

#[test]
fn non_finite_imatrix_is_refused() {
    let mut opts = Options::new(Ftype::Q4_K_M);
    opts.imatrix = Some(imatrix(|_| {
        let mut v = vec![1.0; 256];
        v[3] = f32::NAN;
        Some(v)
    }));
    let e = fails(&opts, "nan");
    assert!(e.contains("non-finite value NaN"), "{e}");
}

#[test]
fn very_low_bit_types_need_an_entry_per_tensor() {
    let mut opts = Options::new(Ftype::IQ2_XXS);
    let e = fails(&opts, "none");
    assert!(e.contains("IQ2_XXS requires an importance matrix"), "{e}");
    opts.imatrix = Some(imatrix(|name| {
        (!name.contains("attn_q")).then(|| vec![1.0; 256])
    }));
    let e = fails(&opts, "missing");
    assert!(
        e.contains("Missing importance matrix for tensor blk.0.attn_q.weight"),
        "{e}"
    );
}

#[test]
fn imatrix_metadata_keys_as_llama_quantize_writes_them() {
    // llama-quantize (tools/quantize/quantize.cpp) appends, after general.quantization_version and
    // general.file_type: file and dataset (strings, 127 bytes at most), entries_count and
    // chunks_count (u32, written through its INT override which becomes u32).
    let src = model();
    let mut opts = Options::new(Ftype::Q4_K_M);
    let mut im = imatrix(|_| None);
    im.file = "x".repeat(200);
    opts.imatrix = Some(im);
    let meta = out_metadata(&src, &opts);
    let tail: Vec<(&str, &Value)> = meta[meta.len() - 6..]
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    assert_eq!(
        tail,
        vec![
            ("general.quantization_version", &Value::U32(2)),
            ("general.file_type", &Value::U32(15)),
            ("quantize.imatrix.file", &Value::String("x".repeat(127))),
            (
                "quantize.imatrix.dataset",
                &Value::String("wiki.train.raw".into())
            ),
            ("quantize.imatrix.entries_count", &Value::U32(14)),
            ("quantize.imatrix.chunks_count", &Value::U32(10)),
        ]
    );
    // Every other key is the input's, in its order.
    let input: Vec<&str> = src
        .file
        .metadata
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| !["general.quantization_version", "general.file_type"].contains(k))
        .collect();
    let kept: Vec<&str> = meta[..meta.len() - 6]
        .iter()
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(kept, input);
}
