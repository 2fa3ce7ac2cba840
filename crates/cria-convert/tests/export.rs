//! `cria_convert::export` over the `Source` trait: split GGUFs export as the single file does, a
//! source failing mid-way leaves neither OUT nor OUT.partial, quantized tensors are dequantized
//! and Q/K rows un-permuted (checked against the GGUF's own values).

use cria_convert::export::{export, gguf_to_hf, unpermute_rows, ExportOptions};
use cria_convert::source::{GgufSource, Source, SrcTensor};
use cria_core::gguf::{GgufFile, GgufWriter, Value};
use cria_core::{DType, Error, Result};
use std::borrow::Cow;
use std::path::{Path, PathBuf};

fn tiny(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../tests/fixtures/{name}/model.gguf"))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cria-convert-export-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(src: &dyn Source, out: &Path, opts: &ExportOptions) -> Result<()> {
    export(src, out, opts, &mut |_, _, _| {}).map(|_| ())
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn split_gguf_exports_as_the_single_file() {
    let dir = tmp("split");
    let g = GgufFile::open(tiny("tiny-llama2")).unwrap();
    let parts = GgufWriter::from_gguf(&g)
        .write_split(dir.join("m"), 3)
        .unwrap();
    assert_eq!(parts.len(), 3);
    let opts = ExportOptions::default();
    let one = GgufSource::open(&tiny("tiny-llama2")).unwrap();
    run(&one, &dir.join("one"), &opts).unwrap();
    run(
        &GgufSource::open(&parts[1]).unwrap(),
        &dir.join("split"),
        &opts,
    )
    .unwrap();
    let files = names(&dir.join("one"));
    assert!(files.contains(&"model.safetensors".to_string()));
    for f in files {
        assert_eq!(
            std::fs::read(dir.join("one").join(&f)).unwrap(),
            std::fs::read(dir.join("split").join(&f)).unwrap(),
            "{f}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// A GGUF source whose tensor `fail_at` cannot be read (a disk error half-way).
struct Failing {
    inner: GgufSource,
    fail_at: usize,
}

impl Source for Failing {
    fn metadata(&self) -> Cow<'_, [(String, Value)]> {
        self.inner.metadata()
    }
    fn tensors(&self) -> &[SrcTensor] {
        self.inner.tensors()
    }
    fn bytes(&self, i: usize) -> Result<Cow<'_, [u8]>> {
        if i == self.fail_at {
            return Err(Error::msg("simulated read error"));
        }
        self.inner.bytes(i)
    }
}

#[test]
fn a_failure_half_way_leaves_nothing() {
    let dir = tmp("fail");
    let src = Failing {
        inner: GgufSource::open(&tiny("tiny-llama31")).unwrap(),
        fail_at: 9,
    };
    let err = run(&src, &dir.join("out"), &ExportOptions::default()).unwrap_err();
    assert!(err.to_string().contains("simulated read error"), "{err}");
    assert!(names(&dir).is_empty(), "{:?}", names(&dir));
    // With force over an existing folder: the old folder stays as it was.
    std::fs::create_dir_all(dir.join("out")).unwrap();
    std::fs::write(dir.join("out/old.txt"), "x").unwrap();
    let force = ExportOptions {
        force: true,
        ..Default::default()
    };
    assert!(run(&src, &dir.join("out"), &force).is_err());
    assert_eq!(names(&dir), ["out"]);
    assert_eq!(names(&dir.join("out")), ["old.txt"]);
    std::fs::remove_dir_all(&dir).ok();
}

/// Every matrix of tiny-llama2 quantized to Q8_0 in a GGUF, exported (default dtype: f16 for a
/// quantized source; f32 compared value for value): each HF tensor is the GGUF tensor
/// dequantized, with llama.cpp's Q/K permutation undone.
#[test]
fn quantized_tensors_are_dequantized_and_unpermuted() {
    let dir = tmp("q8");
    let g = GgufFile::open(tiny("tiny-llama2")).unwrap();
    let mut quantized = Vec::new();
    for t in &g.tensors {
        let mut f = vec![0f32; t.ne.iter().product()];
        cria_core::quant::dequantize(t.dtype, t.bytes(), &mut f).unwrap();
        let (dt, bytes) = if t.ne.len() == 2 && t.ne[0] % 32 == 0 {
            let mut q = vec![0u8; DType::Q8_0.bytes_for(f.len()).unwrap()];
            cria_core::quantize::quantize_rows(DType::Q8_0, &f, &mut q, t.ne[0], None).unwrap();
            (DType::Q8_0, q)
        } else {
            (t.dtype, t.bytes().to_vec())
        };
        quantized.push((t.name.clone(), dt, t.ne.clone(), bytes));
    }
    let mut w = GgufWriter::new();
    for (k, v) in &g.metadata {
        w.add(k.clone(), v.clone());
    }
    for (name, dt, ne, bytes) in &quantized {
        w.add_tensor(name.clone(), *dt, ne.clone(), bytes.as_slice())
            .unwrap();
    }
    let q8 = dir.join("q8.gguf");
    w.write(&q8).unwrap();
    let src = GgufSource::open(&q8).unwrap();
    run(&src, &dir.join("out"), &ExportOptions::default()).unwrap();
    let cfg = std::fs::read_to_string(dir.join("out/config.json")).unwrap();
    assert!(cfg.contains("\"torch_dtype\": \"float16\""), "{cfg}");
    let f32opts = ExportOptions {
        dtype: Some(DType::F32),
        ..Default::default()
    };
    run(&src, &dir.join("out32"), &f32opts).unwrap();
    let st = cria_core::safetensors::SafetensorsModel::open_folder(&dir.join("out32")).unwrap();
    let n_head = 4;
    let mut n_quantized = 0;
    for (name, dt, ne, bytes) in &quantized {
        let mut want = vec![0f32; ne.iter().product()];
        cria_core::quant::dequantize(*dt, bytes, &mut want).unwrap();
        if name.contains("attn_q") || name.contains("attn_k") {
            let mut un = vec![0f32; want.len()];
            unpermute_rows(&want, &mut un, n_head, ne[0]).unwrap();
            want = un;
        }
        n_quantized += (*dt == DType::Q8_0) as usize;
        let got = st
            .get(&gguf_to_hf(name).unwrap())
            .unwrap()
            .to_f32_vec()
            .unwrap();
        assert_eq!(got, want, "{name}");
    }
    assert!(n_quantized >= 14, "{n_quantized}");
    std::fs::remove_dir_all(&dir).ok();
}
