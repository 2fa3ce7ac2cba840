//! Adapter files written by `cria finetune` read back through cria's own adapter loader
//! (`AdapterFile::open` + the checks and Q/K row permutation `Lora::build` / `Merge` apply):
//! the low-rank term each weight gets is scale * B @ A of the trained parameters, in the base's
//! row order, for a half-split (HF) and an interleaved (GGUF) base, PEFT folder and GGUF adapter.

use cria_model::config::Config;
use cria_model::lora::{BaseShape, Target};
use cria_model::lora_merge::Merge;
use cria_model::AdapterFile;
use cria_train::adapter_io::{self, AdapterMeta, WriteBudget};
use cria_train::optim::Rng;
use cria_train::params::{target_shape, Half, LoraConfig, LoraParams};
use std::path::PathBuf;

fn config() -> Config {
    Config::from_hf_json(
        r#"{"model_type": "llama", "hidden_size": 16, "num_attention_heads": 4,
            "num_key_value_heads": 2, "intermediate_size": 24, "num_hidden_layers": 2,
            "vocab_size": 32, "rms_norm_eps": 1e-5, "max_position_embeddings": 64}"#,
    )
    .unwrap()
}

fn lora(rslora: bool) -> LoraConfig {
    LoraConfig {
        rank: 3,
        alpha: 6.0,
        dropout: 0.05,
        targets: Target::LAYER.to_vec(),
        rslora,
    }
}

fn params(c: &Config, rslora: bool) -> LoraParams {
    let mut p = LoraParams::zeros(lora(rslora), c).unwrap();
    let mut rng = Rng::new(3);
    for x in p.data.iter_mut() {
        *x = rng.uniform(-1.0, 1.0);
    }
    p
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cria-adio-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// scale * B @ A of (layer, target) in the parameters' (base) order.
fn term(p: &LoraParams, c: &Config, layer: usize, t: Target) -> Vec<f32> {
    let (rows, cols) = target_shape(c, t);
    let r = p.cfg.rank;
    let (a, b) = p.pair(layer, t).unwrap();
    let s = p.cfg.scale();
    let mut w = vec![0f32; rows * cols];
    for i in 0..rows {
        for j in 0..cols {
            let v: f32 = (0..r).map(|k| b[i * r + k] * a[k * cols + j]).sum();
            w[i * cols + j] = s * v;
        }
    }
    w
}

fn check_loads_as_trained(file: AdapterFile, p: &LoraParams, c: &Config) {
    let merge = Merge::new(&[(file, 1.0)], &BaseShape::of_config(c)).unwrap();
    for layer in 0..c.n_layers {
        for &t in &p.cfg.targets {
            let (rows, cols) = target_shape(c, t);
            let mut w = vec![0f32; rows * cols];
            let name = format!("blk.{layer}.{}.weight", t.gguf_stem());
            merge.add_terms(&name, &mut w, 1).unwrap();
            let want = term(p, c, layer, t);
            let err = w
                .iter()
                .zip(&want)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(err < 1e-5, "{name}: loaded term differs by {err}");
        }
    }
}

#[test]
fn peft_and_gguf_load_back_as_trained() {
    for interleaved in [false, true] {
        for rslora in [false, true] {
            let mut c = config();
            c.rope_interleaved = interleaved;
            let p = params(&c, rslora);
            let meta = AdapterMeta::of_config(&c, "tiny-base");
            let dir = tmp(&format!("peft{interleaved}{rslora}"));
            adapter_io::write_peft(&dir, &p, &meta, &WriteBudget::unlimited()).unwrap();
            check_loads_as_trained(AdapterFile::open(&dir).unwrap(), &p, &c);
            let g = dir.join("adapter.gguf");
            adapter_io::write_gguf(&g, &p, &meta).unwrap();
            let gf = AdapterFile::open(&g).unwrap();
            assert!(gf.interleaved);
            check_loads_as_trained(gf, &p, &c);
            // Read back into fresh parameters: the same bits, from either file.
            for src in [&dir, &g] {
                let mut q = LoraParams::zeros(lora(rslora), &c).unwrap();
                adapter_io::read_into(src, &mut q, &meta).unwrap();
                assert_eq!(q.data, p.data, "{}", src.display());
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

#[test]
fn peft_names_and_config() {
    let c = config();
    let p = params(&c, false);
    let dir = tmp("names");
    adapter_io::write_peft(
        &dir,
        &p,
        &AdapterMeta::of_config(&c, "org/base"),
        &WriteBudget::unlimited(),
    )
    .unwrap();
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["base_model_name_or_path"], "org/base");
    assert_eq!(cfg["r"], 3);
    assert_eq!(cfg["lora_alpha"], 6.0);
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["bias"], "none");
    assert_eq!(cfg["use_rslora"], false);
    assert_eq!(cfg["fan_in_fan_out"], false);
    assert_eq!(cfg["init_lora_weights"], true);
    assert_eq!(
        cfg["target_modules"],
        serde_json::json!([
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj"
        ])
    );
    // The safetensors header: PEFT's names, f32, [r, in] and [out, r].
    let st = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    let n = u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
    let h: serde_json::Value = serde_json::from_slice(&st[8..8 + n]).unwrap();
    let h = h.as_object().unwrap();
    assert_eq!(h.len(), 1 + 2 * 7 * c.n_layers);
    let q = &h["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"];
    assert_eq!(q["dtype"], "F32");
    assert_eq!(q["shape"], serde_json::json!([3, 16]));
    let d = &h["base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"];
    assert_eq!(d["shape"], serde_json::json!([16, 3]));
    assert_eq!(
        adapter_io::peft_tensor_name(2, Target::K, Half::B).unwrap(),
        "base_model.model.model.layers.2.self_attn.k_proj.lora_B.weight"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn init_adapter_mismatches_are_errors() {
    let c = config();
    let meta = AdapterMeta::of_config(&c, "b");
    let dir = tmp("mismatch");
    adapter_io::write_peft(&dir, &params(&c, false), &meta, &WriteBudget::unlimited()).unwrap();
    // Another rank.
    let mut other = lora(false);
    other.rank = 4;
    other.alpha = 8.0;
    let mut q = LoraParams::zeros(other, &c).unwrap();
    let e = adapter_io::read_into(&dir, &mut q, &meta).unwrap_err();
    assert!(e.0.contains("--lora-r"), "{e}");
    // Another alpha: another scale.
    let mut other = lora(false);
    other.alpha = 12.0;
    let mut q = LoraParams::zeros(other, &c).unwrap();
    let e = adapter_io::read_into(&dir, &mut q, &meta).unwrap_err();
    assert!(e.0.contains("scale"), "{e}");
    // Fewer targets in this run than in the file.
    let mut other = lora(false);
    other.targets = vec![Target::Q, Target::V];
    let mut q = LoraParams::zeros(other, &c).unwrap();
    let e = adapter_io::read_into(&dir, &mut q, &meta).unwrap_err();
    assert!(e.0.contains("does not train"), "{e}");
    // More targets in this run than in the file.
    let mut few = lora(false);
    few.targets = vec![Target::Q];
    let pf = LoraParams::zeros(few, &c).unwrap();
    let dir2 = tmp("mismatch2");
    adapter_io::write_peft(&dir2, &pf, &meta, &WriteBudget::unlimited()).unwrap();
    let mut q = LoraParams::zeros(lora(false), &c).unwrap();
    let e = adapter_io::read_into(&dir2, &mut q, &meta).unwrap_err();
    assert!(e.0.contains("has no pair"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&dir2);
}

/// A PEFT folder and a GGUF adapter for tests/fixtures/tiny-llama31 (random A and B), left in
/// `$CARGO_TARGET_TMPDIR/peft-tiny-llama31` for `check_peft_load.py`, which loads the folder
/// with `PeftModel.from_pretrained` and compares its logits with `cria logits --lora`.
#[test]
fn tiny_llama31_adapter_for_the_peft_check() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = std::fs::read_to_string(root.join("tests/fixtures/tiny-llama31/config.json"))
        .expect("tests/fixtures/tiny-llama31/config.json");
    let c = Config::from_hf_json(&text).unwrap();
    let mut p = LoraParams::zeros(lora(false), &c).unwrap();
    let mut rng = Rng::new(11);
    for x in p.data.iter_mut() {
        *x = rng.uniform(-0.2, 0.2);
    }
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("peft-tiny-llama31");
    let _ = std::fs::remove_dir_all(&dir);
    let meta = AdapterMeta::of_config(&c, "tests/fixtures/tiny-llama31");
    adapter_io::write_peft(&dir, &p, &meta, &WriteBudget::unlimited()).unwrap();
    adapter_io::write_gguf(&dir.join("adapter.gguf"), &p, &meta).unwrap();
    check_loads_as_trained(AdapterFile::open(&dir).unwrap(), &p, &c);
    check_loads_as_trained(
        AdapterFile::open(&dir.join("adapter.gguf")).unwrap(),
        &p,
        &c,
    );
}
