//! `cria convert HF_FOLDER OUT.gguf`: the written file holds the tensors llama.cpp's converter
//! writes (sha256 from tests/fixtures/convert), cria runs it, and bad input (missing shard,
//! unknown architecture, truncated safetensors, no tokenizer, bad --outtype) fails with a clear
//! message, exit != 0 and no output file, partial or not.

use cria_core::gguf::GgufFile;
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn cria(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cria"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cria-cli-convert-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.path()
            .extension()
            .is_some_and(|x| x == "gguf" || x == "npy")
        {
            continue; // only the HF files
        }
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn converts_as_llama_cpp_and_runs() {
    let d = scratch("ok");
    let out = d.join("tiny.gguf");
    let src = root().join("tests/fixtures/tiny-variants");
    let o = cria(&[
        "convert",
        src.to_str().unwrap(),
        out.to_str().unwrap(),
        "--outtype",
        "q8_0",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let fx: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/convert/tiny-variants.json")).unwrap(),
    )
    .unwrap();
    let g = GgufFile::open(&out).unwrap();
    let want = fx["tensors"]["q8_0"].as_array().unwrap();
    assert_eq!(g.tensors.len(), want.len());
    for (t, w) in g.tensors.iter().zip(want) {
        assert_eq!(t.name, w[0].as_str().unwrap());
        assert_eq!(t.dtype.name(), w[1].as_str().unwrap());
        let h: String = sha2::Sha256::digest(t.bytes())
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect();
        assert_eq!(h, w[3].as_str().unwrap(), "{}", t.name);
    }
    assert!(!d.join("tiny.gguf.partial").exists());

    // The f32 conversion runs in cria (f32 KV cache) and gives transformers' logits (tests/fixtures/README.md:
    // logits.npy, float32 [24, 512] for reference.json's prompt ids).
    let out32 = d.join("tiny32.gguf");
    let o = cria(&[
        "convert",
        src.to_str().unwrap(),
        out32.to_str().unwrap(),
        "--outtype",
        "f32",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("reference.json")).unwrap())
            .unwrap();
    let ids: Vec<String> = reference["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    let npy = d.join("logits.npy");
    let o = cria(&[
        "logits",
        "-m",
        out32.to_str().unwrap(),
        "--all",
        "--kv-type",
        "f32",
        "--tokens",
        &ids.join(","),
        "--out",
        npy.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ours = cria_core::npy::read_f32(&npy).unwrap();
    let theirs = cria_core::npy::read_f32(&src.join("logits.npy")).unwrap();
    assert_eq!(ours.1.len(), theirs.1.len());
    let max = ours
        .1
        .iter()
        .zip(&theirs.1)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("tiny-variants converted f32: max |cria - transformers| = {max:e}");
    assert!(max < 1e-4, "max logit difference {max}");
    std::fs::remove_dir_all(&d).unwrap();
}

/// Runs `cria convert DIR OUT` expecting failure with `needle` in stderr and nothing written.
fn fails(dir: &Path, extra: &[&str], needle: &str) {
    let out = dir.parent().unwrap().join(format!(
        "{}.gguf",
        dir.file_name().unwrap().to_str().unwrap()
    ));
    let mut args = vec!["convert", dir.to_str().unwrap(), out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = cria(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{args:?} succeeded");
    assert!(
        err.contains(needle),
        "{args:?}: stderr lacks {needle:?}: {err}"
    );
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    let leftovers: Vec<_> = std::fs::read_dir(dir.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.path()
                .extension()
                .is_some_and(|x| x == "gguf" || x == "partial")
        })
        .map(|e| e.path())
        .collect();
    assert!(leftovers.is_empty(), "{args:?} left {leftovers:?}");
}

#[test]
fn bad_input_is_a_clear_error_and_leaves_nothing() {
    let d = scratch("bad");
    let fixtures = root().join("tests/fixtures");

    // A shard listed in the index is missing.
    let m = d.join("missing-shard");
    copy_dir(&fixtures.join("tiny-variants"), &m);
    std::fs::remove_file(m.join("model-00002-of-00003.safetensors")).unwrap();
    fails(
        &m,
        &[],
        "missing model shard(s) model-00002-of-00003.safetensors",
    );

    // An architecture that is not LLaMA.
    let m = d.join("arch");
    copy_dir(&fixtures.join("tiny-llama2"), &m);
    let cfg = std::fs::read_to_string(m.join("config.json")).unwrap();
    std::fs::write(
        m.join("config.json"),
        cfg.replace("LlamaForCausalLM", "GPTNeoXForCausalLM"),
    )
    .unwrap();
    fails(&m, &[], "architecture GPTNeoXForCausalLM");

    // A safetensors file cut short.
    let m = d.join("truncated");
    copy_dir(&fixtures.join("tiny-llama2"), &m);
    let st = m.join("model.safetensors");
    let len = std::fs::metadata(&st).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&st)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    fails(&m, &[], "malformed safetensors file");

    // No tokenizer at all.
    let m = d.join("notok");
    copy_dir(&fixtures.join("tiny-llama2"), &m);
    std::fs::remove_file(m.join("tokenizer.model")).unwrap();
    fails(&m, &[], "no tokenizer");

    // Unsupported --outtype, and a bad --split-max-size.
    let m = d.join("opts");
    copy_dir(&fixtures.join("tiny-llama2"), &m);
    fails(&m, &["--outtype", "q4_0"], "--outtype q4_0");
    fails(&m, &["--split-max-size", "2GB"], "invalid split size");

    // Only PyTorch .bin weights.
    let m = d.join("bin");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::copy(
        fixtures.join("tiny-llama2/config.json"),
        m.join("config.json"),
    )
    .unwrap();
    std::fs::write(m.join("pytorch_model.bin"), b"not read").unwrap();
    fails(&m, &[], "PyTorch .bin weights");

    // A BPE tokenizer whose pre-tokenizer hash llama.cpp does not know, and not built exactly as
    // LLaMA 3's (no ignore_merges): refused as there. (tiny-llama31 itself converts: llama-bpe.)
    let m = d.join("unknown-pre");
    copy_dir(&fixtures.join("tiny-llama31"), &m);
    let tj = m.join("tokenizer.json");
    let t = std::fs::read_to_string(&tj).unwrap();
    assert!(t.contains("\"ignore_merges\": true"));
    std::fs::write(
        &tj,
        t.replace("\"ignore_merges\": true", "\"ignore_merges\": false"),
    )
    .unwrap();
    fails(&m, &[], "BPE pre-tokenizer was not recognized");

    std::fs::remove_dir_all(&d).unwrap();
}

/// A full disk: the write fails part-way, the error says so, and no file is left behind.
#[cfg(target_os = "linux")]
#[test]
fn full_disk_leaves_nothing() {
    // RLIMIT_FSIZE through the shell: writes past 64 KiB fail with EFBIG (SIGXFSZ ignored).
    let d = scratch("full");
    let out = d.join("out.gguf");
    let src = root().join("tests/fixtures/tiny-llama2");
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "trap '' XFSZ; ulimit -f 64; exec '{}' convert '{}' '{}' --outtype f32",
            env!("CARGO_BIN_EXE_cria"),
            src.display(),
            out.display()
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "convert succeeded under a 64 KiB file size limit"
    );
    assert!(err.contains("out.gguf.partial"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let left: Vec<_> = std::fs::read_dir(&d).unwrap().collect();
    assert!(left.is_empty(), "left {left:?}");
    std::fs::remove_dir_all(&d).unwrap();
}
