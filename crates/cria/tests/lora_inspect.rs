//! `cria inspect ADAPTER`: a PEFT folder and a GGUF adapter written here (shapes of the tiny
//! LLaMA-2 fixture, which is not needed: inspect reads only the adapter) are described: format,
//! rank, alpha, scale, rslora, targets, layers, base model, tensor count, size; a refused
//! adapter is a failing exit with the reason.

use cria_core::gguf::{GgufWriter, Value};
use cria_core::safetensors::write_safetensors;
use cria_core::DType;
use std::path::{Path, PathBuf};
use std::process::Command;

const DIM: usize = 64;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cria-lora-inspect-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn bytes(n: usize, seed: u32) -> Vec<u8> {
    (0..n)
        .flat_map(|i| {
            ((((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 1e4 - 0.05)
                .to_le_bytes()
        })
        .collect()
}

/// q_proj (rank 2 by rank_pattern) and v_proj (rank 4) of layers 0 and 1.
fn write_peft(dir: &Path, config: serde_json::Value) -> usize {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for l in 0..2 {
        for (m, r) in [("q_proj", 2), ("v_proj", 4)] {
            let k = format!("base_model.model.model.layers.{l}.self_attn.{m}");
            owned.push((
                format!("{k}.lora_A.weight"),
                vec![r, DIM],
                bytes(r * DIM, 1),
            ));
            owned.push((
                format!("{k}.lora_B.weight"),
                vec![DIM, r],
                bytes(r * DIM, 2),
            ));
        }
    }
    let list: Vec<(&str, DType, &[usize], &[u8])> = owned
        .iter()
        .map(|(n, s, b)| (n.as_str(), DType::F32, s.as_slice(), b.as_slice()))
        .collect();
    write_safetensors(&dir.join("adapter_model.safetensors"), &list).unwrap();
    owned.iter().map(|o| o.2.len()).sum()
}

fn inspect(path: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cria"))
        .arg("inspect")
        .arg(path)
        .env(
            "CRIA_CACHE",
            std::env::temp_dir().join("cria-lora-inspect-cache"),
        )
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap()
}

fn lines_of(path: &Path) -> Vec<String> {
    let out = inspect(path);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "inspect {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    text.lines().map(str::to_string).collect()
}

fn assert_line(lines: &[String], want: &str) {
    assert!(
        lines.iter().any(|l| l == want),
        "no line {want:?} in:\n{}",
        lines.join("\n")
    );
}

#[test]
fn inspect_describes_a_peft_adapter() {
    let d = tmp("peft");
    let size = write_peft(
        &d,
        serde_json::json!({"peft_type": "LORA", "r": 4, "lora_alpha": 16, "use_rslora": true,
            "target_modules": ["q_proj", "v_proj"], "rank_pattern": {"q_proj": 2},
            "base_model_name_or_path": "org/tiny-llama2", "task_type": "CAUSAL_LM"}),
    );
    let l = lines_of(&d);
    assert_line(&l, &format!("adapter: {}", d.display()));
    assert_line(
        &l,
        "format: PEFT LoRA folder (adapter_config.json + safetensors)",
    );
    assert_line(&l, "base model: org/tiny-llama2");
    assert_line(&l, "r: 4");
    assert_line(&l, "lora_alpha: 16");
    assert_line(&l, "use_rslora: yes (scale alpha / sqrt(r))");
    assert_line(&l, "target_modules: q_proj, v_proj");
    assert_line(&l, "rank: 2, 4");
    // 16 / sqrt(4) and 16 / sqrt(2) as f32.
    assert_line(
        &l,
        &format!("scale (file): 8, {}", (16.0 / 2f64.sqrt()) as f32),
    );
    assert_line(&l, "targets: attn_q, attn_v");
    assert_line(&l, "layers: 0-1");
    assert_line(&l, "tensors: 8 (4 LoRA pairs, 0 whole matrices)");
    assert_eq!(size, 6144);
    assert_line(&l, "size: 6144 bytes (0.01 MiB)");
    assert_line(&l, "q/k row layout: Hugging Face half-split");
    let on_disk = std::fs::metadata(d.join("adapter_model.safetensors"))
        .unwrap()
        .len();
    assert_line(&l, &format!("file: {on_disk} bytes, F32 tensors"));
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn inspect_describes_a_gguf_adapter() {
    let d = tmp("gguf");
    let path = d.join("a.gguf");
    let mut w = GgufWriter::new();
    w.add("general.architecture", "llama")
        .add("general.type", "adapter")
        .add("adapter.type", "lora")
        .add("adapter.lora.alpha", Value::F32(8.0))
        .add("general.base_model.0.name", "Tiny Llama2");
    for l in [0, 3] {
        w.add_tensor(
            format!("blk.{l}.ffn_down.weight.lora_a"),
            DType::F32,
            vec![172, 4],
            bytes(172 * 4, 3),
        )
        .unwrap();
        w.add_tensor(
            format!("blk.{l}.ffn_down.weight.lora_b"),
            DType::F32,
            vec![4, DIM],
            bytes(4 * DIM, 4),
        )
        .unwrap();
    }
    w.write(&path).unwrap();
    let l = lines_of(&path);
    assert_line(&l, "format: llama.cpp GGUF LoRA adapter");
    assert_line(&l, "base model: Tiny Llama2");
    assert_line(&l, "adapter.lora.alpha: 8 (scale alpha / rank)");
    assert_line(&l, "rank: 4");
    assert_line(&l, "scale (file): 2");
    assert_line(&l, "targets: ffn_down");
    assert_line(&l, "layers: 0, 3");
    assert_line(&l, "tensors: 4 (2 LoRA pairs, 0 whole matrices)");
    assert_line(
        &l,
        &format!("size: {} bytes (0.01 MiB)", 2 * 4 * (172 + DIM) * 4),
    );
    assert_line(&l, "q/k row layout: llama.cpp interleaved");
    let on_disk = std::fs::metadata(&path).unwrap().len();
    assert_line(&l, &format!("file: {on_disk} bytes, F32 tensors"));
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn inspect_refuses_an_adapter_it_cannot_apply() {
    let d = tmp("dora");
    write_peft(
        &d,
        serde_json::json!({"peft_type": "LORA", "r": 4, "lora_alpha": 16, "use_dora": true,
            "target_modules": ["q_proj", "v_proj"]}),
    );
    let out = inspect(&d);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a DoRA adapter was described");
    assert!(
        err.contains("use_dora") && err.contains("adapter_config.json"),
        "stderr: {err}"
    );
    std::fs::remove_dir_all(&d).ok();
}
