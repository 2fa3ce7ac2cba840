//! Model files whose hyper-parameters cannot be right (NaN, zero, negative, absurd, inconsistent)
//! are refused at load with the field named, instead of running into garbage logits.

use cria_core::gguf::Value;
use cria_kernels::CpuBackend;
use cria_model::{LoadOptions, Model};
use std::path::PathBuf;

mod common;

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("cria-config-checks-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Loads `path`, expects an error, returns its text.
fn load_err(path: &std::path::Path) -> String {
    match Model::load(path, LoadOptions::default(), &CpuBackend::new(1)) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_gguf_hyper_parameters_name_the_field() {
    let d = dir();
    let k = |s: &str| format!("llama.{s}");
    let cases: Vec<(String, Value, &str)> = vec![
        (
            k("attention.layer_norm_rms_epsilon"),
            f32::NAN.into(),
            "rms epsilon is NaN",
        ),
        (
            k("attention.layer_norm_rms_epsilon"),
            (-1e-5f32).into(),
            "rms epsilon is -0.00001",
        ),
        (
            k("attention.layer_norm_rms_epsilon"),
            0f32.into(),
            "rms epsilon is 0",
        ),
        (k("rope.freq_base"), f32::NAN.into(), "rope base"),
        (k("rope.freq_base"), (-10000f32).into(), "rope base"),
        (
            k("rope.freq_base"),
            f64::MAX.into(),
            "rope base (freq_base) is infinite",
        ),
        (
            k("attention.head_count"),
            0u32.into(),
            "attention head count is 0",
        ),
        (
            k("attention.head_count_kv"),
            3u32.into(),
            "KV head count 3 does not divide",
        ),
        (
            k("attention.head_count_kv"),
            0u32.into(),
            "KV head count is 0",
        ),
        (
            k("attention.head_count_kv"),
            (-1i32).into(),
            "head_count_kv is not a non-negative integer",
        ),
        (
            k("attention.key_length"),
            0u32.into(),
            "head dimension is 0",
        ),
        (k("context_length"), 0u32.into(), "context length is 0"),
        (k("vocab_size"), 0u32.into(), "vocabulary size is 0"),
        (k("embedding_length"), 0u32.into(), "embedding length is 0"),
        (
            k("feed_forward_length"),
            0u32.into(),
            "feed-forward length is 0",
        ),
        (k("block_count"), 0u32.into(), "layer count is 0"),
        (
            k("block_count"),
            1_000_000u32.into(),
            "layer count is 1000000, above the limit",
        ),
        (
            k("rope.dimension_count"),
            7u32.into(),
            "rotary dimension count 7",
        ),
        (
            k("rope.freq_base"),
            "ten thousand".into(),
            "rope.freq_base is not a number",
        ),
    ];
    for (i, (key, value, want)) in cases.into_iter().enumerate() {
        let p = d.join(format!("bad-{i}.gguf"));
        common::edited_copy(
            &common::tiny(),
            &p,
            &[(&key, Some(value.clone()))],
            |_, _| {},
        );
        let e = load_err(&p);
        assert!(
            e.contains(want),
            "{key} = {value:?}: error {e:?} lacks {want:?}"
        );
    }
    // Linear RoPE scaling with a zero or NaN factor.
    for f in [0f32, f32::NAN, -2.0] {
        let p = d.join("bad-linear.gguf");
        common::edited_copy(
            &common::tiny(),
            &p,
            &[
                (&k("rope.scaling.type"), Some("linear".into())),
                (&k("rope.scaling.factor"), Some(f.into())),
            ],
            |_, _| {},
        );
        let e = load_err(&p);
        assert!(e.contains("rope scaling factor is"), "factor {f}: {e}");
    }
    // The llama3 frequency factors of tiny-llama31, one of them NaN or 0.
    for bad in [f32::NAN, 0.0] {
        let p = d.join("bad-freqs.gguf");
        common::edited_copy(&common::tiny31(), &p, &[], |name, bytes| {
            if name == "rope_freqs.weight" {
                bytes[4..8].copy_from_slice(&bad.to_le_bytes());
            }
        });
        let e = load_err(&p);
        assert!(e.contains("rope_freqs value 1 is"), "{bad}: {e}");
    }
    // The unedited copies load: the checks refuse only what is wrong.
    let p = d.join("good.gguf");
    common::edited_copy(&common::tiny31(), &p, &[], |_, _| {});
    Model::load(&p, LoadOptions::default(), &CpuBackend::new(1)).unwrap();
    let _ = std::fs::remove_dir_all(&d);
}
