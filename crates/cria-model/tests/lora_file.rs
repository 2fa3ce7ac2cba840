//! Adapter files (lora_file.rs) over the tiny LLaMA-2 fixture: PEFT folders and GGUF adapters
//! written here, opened, built over the model (GGUF and HF folder bases) and run. The reference
//! for every logit is the model with W + s * B @ A folded into a copy of its safetensors (and
//! modules_to_save matrices swapped in), computed here in f64 independently of cria's LoRA path.
//! Each refusal is checked by its message.

use cria_core::gguf::{GgufWriter, Value};
use cria_core::safetensors::{write_safetensors, SafetensorsModel};
use cria_core::{quant, DType};
use cria_kernels::CpuBackend;
use cria_model::{
    forward_batch, ActiveLora, AdapterFile, KvCache, KvType, LoadOptions, Logits, Lora, Model,
    Scratch, SeqStep,
};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

// The fixture's shapes (tests/fixtures/tiny-llama2/config.json).
const DIM: usize = 64;
const FFN: usize = 172;
const HEADS: usize = 4;
const LAYERS: usize = 2;
const VOCAB: usize = 512;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama2")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cria-lora-file-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Deterministic values in [-amp, amp).
fn vals(n: usize, seed: u64, amp: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
        })
        .collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// (out, in) of an HF module of the fixture.
fn module_shape(module: &str) -> (usize, usize) {
    match module.rsplit('.').next().unwrap() {
        "q_proj" | "k_proj" | "v_proj" | "o_proj" => (DIM, DIM),
        "gate_proj" | "up_proj" => (FFN, DIM),
        "down_proj" => (DIM, FFN),
        "lm_head" => (VOCAB, DIM),
        m => panic!("no module {m}"),
    }
}

fn layer_modules(layers: &[usize], kinds: &[&str]) -> Vec<String> {
    let mut v = Vec::new();
    for &l in layers {
        for k in kinds {
            let part = if k.ends_with("_proj") && ["gate_proj", "up_proj", "down_proj"].contains(k)
            {
                "mlp"
            } else {
                "self_attn"
            };
            v.push(format!("model.layers.{l}.{part}.{k}"));
        }
    }
    v
}

const ALL: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// One adapter's weights as the test made them: module -> (A [r][in], B [out][r], rank).
struct Pairs {
    pairs: Vec<(String, Vec<f32>, Vec<f32>, usize)>,
    /// modules_to_save: HF weight name -> matrix.
    whole: Vec<(String, Vec<f32>)>,
}

fn make_pairs(modules: &[String], rank: impl Fn(&str) -> usize, seed: u64) -> Pairs {
    let pairs = modules
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let (out, inp) = module_shape(m);
            let r = rank(m);
            (
                m.clone(),
                vals(r * inp, seed + 2 * i as u64, 0.2),
                vals(out * r, seed + 2 * i as u64 + 1, 0.2),
                r,
            )
        })
        .collect();
    Pairs {
        pairs,
        whole: vec![],
    }
}

/// A PEFT folder as `save_pretrained` writes it (key names checked against peft 0.21).
fn write_peft(dir: &Path, config: &serde_json::Value, p: &Pairs) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("adapter_config.json"),
        serde_json::to_string_pretty(config).unwrap(),
    )
    .unwrap();
    let mut owned: Owned = Vec::new();
    for (m, a, b, r) in &p.pairs {
        let (out, inp) = module_shape(m);
        owned.push((
            format!("base_model.model.{m}.lora_A.weight"),
            vec![*r, inp],
            f32_bytes(a),
        ));
        owned.push((
            format!("base_model.model.{m}.lora_B.weight"),
            vec![out, *r],
            f32_bytes(b),
        ));
    }
    for (name, w) in &p.whole {
        owned.push((
            format!("base_model.model.{name}"),
            vec![VOCAB, DIM],
            f32_bytes(w),
        ));
    }
    write_tensors(&dir.join("adapter_model.safetensors"), &owned);
}

fn write_tensors(path: &Path, owned: &[(String, Vec<usize>, Vec<u8>)]) {
    let list: Vec<(&str, DType, &[usize], &[u8])> = owned
        .iter()
        .map(|(n, s, b)| (n.as_str(), DType::F32, s.as_slice(), b.as_slice()))
        .collect();
    write_safetensors(path, &list).unwrap();
}

/// The fixture as an HF folder with s * B @ A added to each adapted weight (f64 sums) and the
/// whole matrices swapped in: the model the adapter should behave as.
fn folded_model(dir: &Path, p: &Pairs, scale_of: impl Fn(&str, usize) -> f64) -> PathBuf {
    let st = SafetensorsModel::open_folder(&fixture()).unwrap();
    let mut w: HashMap<String, (Vec<usize>, Vec<f32>)> = st
        .tensors
        .iter()
        .map(|t| {
            let shape: Vec<usize> = t.ne.iter().rev().copied().collect();
            (t.name.clone(), (shape, t.to_f32_vec().unwrap()))
        })
        .collect();
    for (m, a, b, r) in &p.pairs {
        let (out, inp) = module_shape(m);
        let s = scale_of(m, *r);
        let wm = &mut w.get_mut(&format!("{m}.weight")).unwrap().1;
        for o in 0..out {
            for i in 0..inp {
                let d: f64 = (0..*r)
                    .map(|k| b[o * r + k] as f64 * a[k * inp + i] as f64)
                    .sum();
                wm[o * inp + i] = (wm[o * inp + i] as f64 + s * d) as f32;
            }
        }
    }
    for (name, m) in &p.whole {
        w.get_mut(name).unwrap().1 = m.clone();
    }
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(fixture().join("config.json"), dir.join("config.json")).unwrap();
    let mut names: Vec<&String> = w.keys().collect();
    names.sort();
    let owned: Owned = names
        .iter()
        .map(|n| (n.to_string(), w[*n].0.clone(), f32_bytes(&w[*n].1)))
        .collect();
    write_tensors(&dir.join("model.safetensors"), &owned);
    dir.to_path_buf()
}

/// Tensors to write: (name, PyTorch shape, F32 bytes).
type Named = (String, Vec<usize>, Vec<u8>);
type Owned = Vec<Named>;
/// A refusal case: label, what the file holds, the parts its message must have.
type Case<'a, T> = (&'a str, Vec<T>, Vec<&'a str>);

const TOKENS: [u32; 10] = [1, 17, 300, 42, 5, 511, 128, 77, 9, 260];

/// Logits of every position of TOKENS, with the given adapters.
fn logits(m: &Model, b: &CpuBackend, lora: &[ActiveLora]) -> Vec<f32> {
    let mut kv = KvCache::with_type(m, 32, KvType::F32);
    let mut s = Scratch::new(m, TOKENS.len(), Logits::All);
    forward_batch(
        m,
        b,
        &mut [SeqStep {
            tokens: &TOKENS,
            pos: 0,
            kv: &mut kv,
            lora,
        }],
        &mut s,
        Logits::All,
    )
    .unwrap();
    s.logits().to_vec()
}

/// Largest difference relative to the range of `want`.
fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let (lo, hi) = want
        .iter()
        .fold((f32::MAX, f32::MIN), |(l, h), &x| (l.min(x), h.max(x)));
    let d = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    d / (hi - lo)
}

fn open(path: &Path) -> AdapterFile {
    match AdapterFile::open(path) {
        Ok(a) => a,
        Err(e) => panic!("{}: {e}", path.display()),
    }
}

fn open_err(path: &Path) -> String {
    match AdapterFile::open(path) {
        Ok(_) => panic!("{} opened, should be refused", path.display()),
        Err(e) => e.to_string(),
    }
}

fn assert_has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message {msg:?} lacks {p:?}");
    }
}

fn build(file: AdapterFile, m: &Model, b: &CpuBackend) -> Arc<Lora> {
    match Lora::build("t", file, m, b) {
        Ok(l) => Arc::new(l),
        Err(e) => panic!("build: {e}"),
    }
}

/// Runs the adapter over the HF folder base and the GGUF base (Q/K rows in the other layout)
/// and compares both with the folded model.
fn check_against_folded(adapter: &Path, folded: &Path, label: &str) {
    let b = CpuBackend::new(1);
    let want = logits(
        &Model::load(folded, LoadOptions::default(), &b).unwrap(),
        &b,
        &[],
    );
    let mut base_logits = None;
    for base in [fixture(), fixture().join("model.gguf")] {
        let m = Model::load(&base, LoadOptions::default(), &b).unwrap();
        let lora = build(open(adapter), &m, &b);
        let got = logits(&m, &b, &[ActiveLora { lora, scale: 1.0 }]);
        let e = rel_err(&got, &want);
        eprintln!(
            "{label} over {}: max |diff| / range = {e:.2e}",
            base.display()
        );
        assert!(e <= 1e-4, "{label} over {}: {e:.2e}", base.display());
        base_logits.get_or_insert_with(|| logits(&m, &b, &[]));
    }
    // The adapter changes the output by far more than the tolerance (the check has teeth).
    let moved = rel_err(base_logits.as_ref().unwrap(), &want);
    assert!(
        moved > 1e-2,
        "{label}: the adapter moved the logits by only {moved:.2e}"
    );
}

#[test]
fn peft_all_linear_patterns_and_modules_to_save_match_the_folded_model() {
    let d = tmp("peft-all");
    let modules = layer_modules(&[0, 1], &ALL);
    // rank_pattern {"q_proj": 2}; alpha_pattern for layer 1's v_proj only.
    let rank = |m: &str| if m.ends_with("q_proj") { 2 } else { 4 };
    let mut p = make_pairs(&modules, rank, 100);
    p.whole = vec![
        ("lm_head.weight".into(), vals(VOCAB * DIM, 7, 0.1)),
        (
            "model.embed_tokens.weight".into(),
            vals(VOCAB * DIM, 8, 0.5),
        ),
    ];
    let config = json!({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 8,
        "target_modules": modules, "rank_pattern": {"q_proj": 2},
        "alpha_pattern": {"model.layers.1.self_attn.v_proj": 3},
        "modules_to_save": ["lm_head", "embed_tokens"], "use_rslora": false, "bias": "none",
        "lora_dropout": 0.05, "fan_in_fan_out": false, "init_lora_weights": true,
        "base_model_name_or_path": "tiny-llama2", "use_dora": false, "lora_bias": false,
        "layer_replication": null, "peft_version": "0.21.2"
    });
    write_peft(&d.join("adapter"), &config, &p);

    let f = open(&d.join("adapter"));
    assert_eq!(f.pairs.len(), 14);
    assert!(!f.interleaved);
    assert_eq!(f.base_model.as_deref(), Some("tiny-llama2"));
    let by: HashMap<&str, f32> = f
        .pairs
        .iter()
        .map(|p| (p.target.as_str(), p.scale))
        .collect();
    assert_eq!(by["blk.0.attn_q.weight"], 4.0); // 8 / 2
    assert_eq!(by["blk.1.attn_q.weight"], 4.0);
    assert_eq!(by["blk.0.attn_v.weight"], 2.0); // 8 / 4
    assert_eq!(by["blk.1.attn_v.weight"], 0.75); // 3 / 4
    assert_eq!(by["blk.1.ffn_down.weight"], 2.0);
    let mut repl: Vec<&str> = f.replace.iter().map(|t| t.name.as_str()).collect();
    repl.sort();
    assert_eq!(repl, ["output.weight", "token_embd.weight"]);
    let desc: HashMap<String, String> = f.describe().into_iter().collect();
    assert_eq!(desc["rank"], "2, 4");
    assert_eq!(desc["layers"], "0-1");
    assert_eq!(
        desc["targets"],
        "attn_q, attn_k, attn_v, attn_output, ffn_gate, ffn_up, ffn_down"
    );

    let alpha = |m: &str| {
        if m == "model.layers.1.self_attn.v_proj" {
            3.0
        } else {
            8.0
        }
    };
    let folded = folded_model(&d.join("folded"), &p, |m, r| alpha(m) / r as f64);
    check_against_folded(
        &d.join("adapter"),
        &folded,
        "all-linear + patterns + modules_to_save",
    );
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn peft_rslora_regex_and_layer_subsets_match_the_folded_model() {
    let d = tmp("peft-rs");
    // layers_to_transform [1] with a list of module names: only layer 1's q/k/up are present.
    let modules = layer_modules(&[1], &["q_proj", "k_proj", "up_proj"]);
    let p = make_pairs(&modules, |_| 8, 200);
    let config = json!({
        "peft_type": "LORA", "r": 8, "lora_alpha": 16, "use_rslora": true,
        "target_modules": ["q_proj", "k_proj", "up_proj"], "layers_to_transform": [1],
        "layers_pattern": "layers", "init_lora_weights": "gaussian"
    });
    write_peft(&d.join("a"), &config, &p);
    let f = open(&d.join("a"));
    for q in &f.pairs {
        assert_eq!(q.scale, (16.0 / 8f64.sqrt()) as f32, "{}", q.target);
    }
    let folded = folded_model(&d.join("folded"), &p, |_, r| 16.0 / (r as f64).sqrt());
    check_against_folded(&d.join("a"), &folded, "rslora, layers_to_transform");

    // A regular-expression target_modules and a named adapter key (`lora_A.<name>.weight`),
    // as older PEFT wrote it.
    let modules = layer_modules(&[0, 1], &["v_proj", "down_proj"]);
    let p = make_pairs(&modules, |_| 3, 300);
    let config = json!({"peft_type": "LORA", "r": 3, "lora_alpha": 6,
        "target_modules": r".*\.(v_proj|down_proj)"});
    write_peft(&d.join("b"), &config, &p);
    let st = d.join("b/adapter_model.safetensors");
    let m = SafetensorsModel::open_file(&st).unwrap();
    let owned: Owned = m
        .tensors
        .iter()
        .map(|t| {
            (
                t.name.replace(".weight", ".default.weight"),
                t.ne.iter().rev().copied().collect(),
                t.bytes().to_vec(),
            )
        })
        .collect();
    drop(m);
    write_tensors(&st, &owned);
    let folded = folded_model(&d.join("folded-b"), &p, |_, r| 6.0 / r as f64);
    check_against_folded(&d.join("b"), &folded, "regex targets, named keys");
    std::fs::remove_dir_all(&d).ok();
}

/// convert_lora_to_gguf.py's permutation of q/k rows (`permute` in convert_hf_to_gguf.py:
/// reshape(heads, 2, hd/2, ...).swapaxes(1, 2)), written out independently of lora.rs.
fn to_interleaved(rows: &[f32], cols: usize, heads: usize) -> Vec<f32> {
    let n = rows.len() / cols;
    let (hd, half) = (n / heads, n / heads / 2);
    let mut out = vec![0f32; rows.len()];
    for h in 0..heads {
        for s in 0..2 {
            for i in 0..half {
                let src = h * hd + s * half + i;
                let dst = h * hd + 2 * i + s;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&rows[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

fn gguf_name(module: &str) -> String {
    cria_model::names::hf_to_gguf(&format!("{module}.weight")).unwrap()
}

/// A GGUF adapter as convert_lora_to_gguf.py writes it: metadata, then `.lora_a` ne [in, r] /
/// `.lora_b` ne [r, out] per base weight, q/k lora_b permuted. `dtype` for every tensor.
fn write_gguf_adapter(path: &Path, p: &Pairs, alpha: f32, dtype: DType, extra: &[(&str, Value)]) {
    let mut w = GgufWriter::new();
    w.add("general.architecture", "llama")
        .add("general.type", "adapter")
        .add("adapter.type", "lora")
        .add("adapter.lora.alpha", Value::F32(alpha))
        .add("general.base_model.0.name", "tiny-llama2");
    for (k, v) in extra {
        w.add(*k, v.clone());
    }
    for (m, a, b, r) in &p.pairs {
        let (out, inp) = module_shape(m);
        let b = if m.ends_with("q_proj") || m.ends_with("k_proj") {
            to_interleaved(b, *r, HEADS)
        } else {
            b.clone()
        };
        let g = gguf_name(m);
        for (suffix, ne, v) in [
            ("lora_a", vec![inp, *r], a.clone()),
            ("lora_b", vec![*r, out], b),
        ] {
            let mut bytes = vec![0u8; dtype.bytes_for(v.len()).unwrap()];
            quant::quantize(dtype, &v, &mut bytes).unwrap();
            w.add_tensor(format!("{g}.{suffix}"), dtype, ne, bytes)
                .unwrap();
        }
    }
    w.write(path).unwrap();
}

#[test]
fn gguf_adapter_matches_the_folded_model_over_both_bases() {
    let d = tmp("gguf");
    let modules = layer_modules(&[0, 1], &ALL);
    let p = make_pairs(&modules, |_| 4, 400);
    let path = d.join("adapter.gguf");
    write_gguf_adapter(&path, &p, 8.0, DType::F32, &[]);
    let f = open(&path);
    assert!(f.interleaved);
    assert_eq!(f.pairs.len(), 14);
    assert!(f.pairs.iter().all(|q| q.scale == 2.0));
    assert_eq!(f.base_model.as_deref(), Some("tiny-llama2"));
    let folded = folded_model(&d.join("folded"), &p, |_, r| 8.0 / r as f64);
    check_against_folded(&path, &folded, "GGUF adapter");

    // adapter.lora.alpha 0: llama.cpp's scale is 1.
    let modules = layer_modules(&[0], &["q_proj", "o_proj"]);
    let p = make_pairs(&modules, |_| 4, 500);
    let path0 = d.join("alpha0.gguf");
    write_gguf_adapter(&path0, &p, 0.0, DType::F32, &[]);
    assert!(open(&path0).pairs.iter().all(|q| q.scale == 1.0));
    let folded = folded_model(&d.join("folded0"), &p, |_, _| 1.0);
    check_against_folded(&path0, &folded, "GGUF adapter, alpha 0");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn q8_0_gguf_adapter_is_dequantized() {
    let d = tmp("q8");
    // Rank 32: both factors' rows are whole Q8_0 blocks.
    let modules = layer_modules(&[0, 1], &["q_proj", "k_proj", "v_proj"]);
    let mut p = make_pairs(&modules, |_| 32, 600);
    let path = d.join("q8.gguf");
    write_gguf_adapter(&path, &p, 16.0, DType::Q8_0, &[]);
    let f = open(&path);
    for q in &f.pairs {
        assert_eq!(
            (q.a.dtype, q.b.dtype),
            (DType::F32, DType::F32),
            "{}",
            q.target
        );
        assert_eq!(q.scale, 0.5);
    }
    // The values are Q8_0's dequantization: fold those in the reference.
    for (_, a, b, _) in p.pairs.iter_mut() {
        for v in [a, b] {
            let mut bytes = vec![0u8; DType::Q8_0.bytes_for(v.len()).unwrap()];
            quant::quantize(DType::Q8_0, v, &mut bytes).unwrap();
            quant::dequantize(DType::Q8_0, &bytes, v).unwrap();
        }
    }
    let folded = folded_model(&d.join("folded"), &p, |_, r| 16.0 / r as f64);
    check_against_folded(&path, &folded, "Q8_0 GGUF adapter");
    std::fs::remove_dir_all(&d).ok();
}

/// A small valid PEFT adapter (q_proj, v_proj of both layers, rank 4), its config edited.
fn small_peft(dir: &Path, edit: impl Fn(&mut serde_json::Value)) -> Pairs {
    let p = make_pairs(&layer_modules(&[0, 1], &["q_proj", "v_proj"]), |_| 4, 900);
    let mut c = json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8,
        "target_modules": ["q_proj", "v_proj"]});
    edit(&mut c);
    write_peft(dir, &c, &p);
    p
}

#[test]
fn peft_config_refusals_name_the_field() {
    let d = tmp("refuse");
    let cases: Vec<(&str, serde_json::Value, Vec<&str>)> = vec![
        ("use_dora", json!(true), vec!["use_dora", "DoRA"]),
        ("lora_bias", json!(true), vec!["lora_bias"]),
        ("bias", json!("all"), vec!["bias = \"all\""]),
        ("bias", json!("lora_only"), vec!["bias"]),
        ("peft_type", json!("IA3"), vec!["peft_type", "IA3"]),
        (
            "layer_replication",
            json!([[0, 2], [1, 2]]),
            vec!["layer_replication"],
        ),
        (
            "alora_invocation_tokens",
            json!([5, 6]),
            vec!["alora_invocation_tokens"],
        ),
        (
            "trainable_token_indices",
            json!([3]),
            vec!["trainable_token_indices"],
        ),
        (
            "target_parameters",
            json!(["mlp.experts"]),
            vec!["target_parameters"],
        ),
        ("use_qalora", json!(true), vec!["use_qalora"]),
        ("use_bdlora", json!({"nblocks": 2}), vec!["use_bdlora"]),
        ("arrow_config", json!({"top_k": 2}), vec!["arrow_config"]),
        ("kasa_config", json!({"x": 1}), vec!["kasa_config"]),
        (
            "init_lora_weights",
            json!("pissa"),
            vec!["init_lora_weights", "pissa"],
        ),
        (
            "init_lora_weights",
            json!("pissa_niter_4"),
            vec!["pissa_niter_4"],
        ),
        ("init_lora_weights", json!("olora"), vec!["olora"]),
        ("init_lora_weights", json!("loftq"), vec!["loftq"]),
        ("init_lora_weights", json!("corda"), vec!["corda"]),
        (
            "some_future_field",
            json!(0.5),
            vec!["unknown field some_future_field"],
        ),
        (
            "r",
            json!("eight"),
            vec!["r: expected a positive integer", "\"eight\""],
        ),
        ("r", json!(0), vec!["r is 0"]),
        ("r", json!(2.5), vec!["r: expected a positive integer"]),
        ("lora_alpha", json!("x"), vec!["lora_alpha"]),
        ("use_rslora", json!("yes"), vec!["use_rslora"]),
        (
            "rank_pattern",
            json!({"q_proj": -1}),
            vec!["rank_pattern[\"q_proj\"]"],
        ),
        (
            "rank_pattern",
            json!({"(unclosed": 2}),
            vec!["rank_pattern", "(unclosed"],
        ),
        ("target_modules", json!(42), vec!["target_modules"]),
    ];
    for (i, (field, value, parts)) in cases.iter().enumerate() {
        let dir = d.join(format!("c{i}"));
        small_peft(&dir, |c| c[*field] = value.clone());
        let msg = open_err(&dir);
        assert_has(&msg, parts);
        assert_has(&msg, &["adapter_config.json"]);
    }
    // What passes: fields that change nothing at inference.
    for (field, value) in [
        ("init_lora_weights", json!("eva")),
        ("init_lora_weights", json!(false)),
        ("fan_in_fan_out", json!(true)),
        ("lora_dropout", json!(0.1)),
        ("task_type", json!("CAUSAL_LM")),
        ("velora_config", json!({"num_groups": 32})),
        ("monteclora_config", json!({"num_samples": 4})),
        ("some_future_field", json!(null)),
        ("revision", json!("main")),
        ("inference_mode", json!(false)),
    ] {
        let dir = d.join(format!("ok-{field}"));
        small_peft(&dir, |c| c[field] = value.clone());
        open(&dir);
    }
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn peft_file_refusals_name_the_path_and_tensor() {
    let d = tmp("files");
    // Missing folder / file.
    let msg = open_err(&d.join("nope"));
    assert_has(&msg, &["nope"]);
    // An empty folder.
    std::fs::create_dir_all(d.join("empty")).unwrap();
    assert_has(&open_err(&d.join("empty")), &["no adapter_config.json"]);
    // A named adapter saved in a subfolder.
    small_peft(&d.join("named/myad"), |_| {});
    assert_has(&open_err(&d.join("named")), &["subfolders", "myad"]);
    // Only adapter_model.bin.
    let bin = d.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("adapter_config.json"), r#"{"peft_type":"LORA"}"#).unwrap();
    std::fs::write(bin.join("adapter_model.bin"), b"PK\x03\x04").unwrap();
    assert_has(&open_err(&bin), &["adapter_model.bin", "safetensors"]);
    // Malformed JSON.
    let dir = d.join("json");
    small_peft(&dir, |_| {});
    std::fs::write(
        dir.join("adapter_config.json"),
        r#"{"peft_type": "LORA", "r": "#,
    )
    .unwrap();
    assert_has(&open_err(&dir), &["adapter_config.json", "JSON"]);
    // A safetensors header that lies about its data.
    let dir = d.join("lies");
    small_peft(&dir, |_| {});
    let st = dir.join("adapter_model.safetensors");
    let mut bytes = std::fs::read(&st).unwrap();
    bytes.truncate(bytes.len() - 100);
    std::fs::write(&st, &bytes).unwrap();
    assert_has(&open_err(&dir), &["adapter_model.safetensors"]);
    // Missing safetensors next to a config.
    std::fs::remove_file(&st).unwrap();
    assert_has(&open_err(&dir), &["no adapter_model.safetensors"]);

    // Tensor-level problems, each written as its own safetensors.
    let cfg = json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8,
        "target_modules": ["q_proj", "v_proj", "rotary"]});
    let a = f32_bytes(&vals(4 * DIM, 1, 0.1));
    let b = f32_bytes(&vals(DIM * 4, 2, 0.1));
    let q = "base_model.model.model.layers.0.self_attn.q_proj";
    let cases: Vec<Case<Named>> = vec![
        (
            "only A",
            vec![(format!("{q}.lora_A.weight"), vec![4, DIM], a.clone())],
            vec!["q_proj.lora_A.weight has no lora_B"],
        ),
        (
            "only B",
            vec![(format!("{q}.lora_B.weight"), vec![DIM, 4], b.clone())],
            vec!["q_proj.lora_B.weight has no lora_A"],
        ),
        (
            "rank disagrees with r",
            vec![
                (format!("{q}.lora_A.weight"), vec![2, DIM * 2], a.clone()),
                (format!("{q}.lora_B.weight"), vec![DIM * 2, 2], b.clone()),
            ],
            vec!["q_proj.lora_A.weight", "rank 2", "rank 4"],
        ),
        (
            "duplicate target",
            vec![
                (format!("{q}.lora_A.weight"), vec![4, DIM], a.clone()),
                (format!("{q}.lora_B.weight"), vec![DIM, 4], b.clone()),
                (
                    format!("{q}.lora_A.default.weight"),
                    vec![4, DIM],
                    a.clone(),
                ),
            ],
            vec!["both lora_A of model.layers.0.self_attn.q_proj"],
        ),
        (
            "maps to nothing",
            vec![
                (
                    "base_model.model.model.layers.0.self_attn.rotary.lora_A.weight".into(),
                    vec![4, DIM],
                    a.clone(),
                ),
                (
                    "base_model.model.model.layers.0.self_attn.rotary.lora_B.weight".into(),
                    vec![DIM, 4],
                    b.clone(),
                ),
            ],
            vec!["rotary.lora_A.weight", "not a weight cria can adapt"],
        ),
        (
            "not targeted",
            vec![
                (
                    "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight".into(),
                    vec![4, DIM],
                    a.clone(),
                ),
                (
                    "base_model.model.model.layers.0.mlp.up_proj.lora_B.weight".into(),
                    vec![DIM, 4],
                    b.clone(),
                ),
            ],
            vec!["up_proj.lora_A.weight", "not one the config targets"],
        ),
        (
            "embedding LoRA",
            vec![(
                "base_model.model.model.embed_tokens.lora_embedding_A".into(),
                vec![4, DIM],
                a.clone(),
            )],
            vec!["lora_embedding_A", "embedding"],
        ),
        (
            "DoRA magnitude",
            vec![(
                format!("{q}.lora_magnitude_vector"),
                vec![DIM],
                f32_bytes(&[1.0; DIM]),
            )],
            vec!["lora_magnitude_vector", "DoRA"],
        ),
        (
            "lora_B bias",
            vec![(
                format!("{q}.lora_B.bias"),
                vec![DIM],
                f32_bytes(&[1.0; DIM]),
            )],
            vec!["lora_B.bias", "lora_bias"],
        ),
        (
            "unknown tensor",
            vec![(
                "base_model.model.model.norm.weight".into(),
                vec![DIM],
                f32_bytes(&[1.0; DIM]),
            )],
            vec!["model.norm.weight", "nothing to apply it to"],
        ),
        (
            "NaN in lm_head",
            vec![(
                "base_model.model.lm_head.weight".into(),
                vec![VOCAB, DIM],
                {
                    let mut v = vals(VOCAB * DIM, 3, 0.1);
                    v[DIM * 7 + 3] = f32::NAN;
                    f32_bytes(&v)
                },
            )],
            vec!["lm_head.weight", "non-finite", "row 7, column 3"],
        ),
        (
            "a 3-d factor",
            vec![
                (format!("{q}.lora_A.weight"), vec![4, DIM, 1], a.clone()),
                (format!("{q}.lora_B.weight"), vec![DIM, 4], b.clone()),
            ],
            vec!["q_proj.lora_A.weight", "not a matrix"],
        ),
    ];
    for (i, (label, tensors, parts)) in cases.iter().enumerate() {
        let dir = d.join(format!("t{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("adapter_config.json"), cfg.to_string()).unwrap();
        write_tensors(&dir.join("adapter_model.safetensors"), tensors);
        let msg = open_err(&dir);
        eprintln!("{label}: {msg}");
        assert_has(&msg, parts);
    }
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn wrong_base_and_nan_weights_are_refused_at_build() {
    let d = tmp("build");
    let b = CpuBackend::new(1);
    let m = Model::load(&fixture().join("model.gguf"), LoadOptions::default(), &b).unwrap();
    let q = "base_model.model.model.layers.0.self_attn.q_proj";
    let cfg = json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8,
        "target_modules": ["q_proj"]});
    let write = |name: &str, tensors: Owned| {
        let dir = d.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("adapter_config.json"), cfg.to_string()).unwrap();
        write_tensors(&dir.join("adapter_model.safetensors"), &tensors);
        dir
    };
    let build_err = |dir: &Path| match Lora::build("t", open(dir), &m, &b) {
        Ok(_) => panic!("{} built over the wrong base", dir.display()),
        Err(e) => e.to_string(),
    };
    // Made for a model twice as wide.
    let wide = write(
        "wide",
        vec![
            (
                format!("{q}.lora_A.weight"),
                vec![4, 2 * DIM],
                f32_bytes(&vals(8 * DIM, 1, 0.1)),
            ),
            (
                format!("{q}.lora_B.weight"),
                vec![2 * DIM, 4],
                f32_bytes(&vals(8 * DIM, 2, 0.1)),
            ),
        ],
    );
    assert_has(&build_err(&wide), &["blk.0.attn_q.weight", "another base"]);
    // Made for a deeper model.
    let q9 = "base_model.model.model.layers.9.self_attn.q_proj";
    let deep = write(
        "deep",
        vec![
            (
                format!("{q9}.lora_A.weight"),
                vec![4, DIM],
                f32_bytes(&vals(4 * DIM, 1, 0.1)),
            ),
            (
                format!("{q9}.lora_B.weight"),
                vec![DIM, 4],
                f32_bytes(&vals(4 * DIM, 2, 0.1)),
            ),
        ],
    );
    assert_has(
        &build_err(&deep),
        &["blk.9.attn_q.weight", &format!("{LAYERS} layers")],
    );
    // NaN in a factor.
    let mut a = vals(4 * DIM, 1, 0.1);
    a[5] = f32::NAN;
    let nan = write(
        "nan",
        vec![
            (format!("{q}.lora_A.weight"), vec![4, DIM], f32_bytes(&a)),
            (
                format!("{q}.lora_B.weight"),
                vec![DIM, 4],
                f32_bytes(&vals(4 * DIM, 2, 0.1)),
            ),
        ],
    );
    assert_has(
        &build_err(&nan),
        &["blk.0.attn_q.weight.lora_a", "non-finite"],
    );
    // A resized vocabulary in modules_to_save.
    let big = write(
        "vocab",
        vec![(
            "base_model.model.lm_head.weight".into(),
            vec![VOCAB + 8, DIM],
            f32_bytes(&vals((VOCAB + 8) * DIM, 3, 0.1)),
        )],
    );
    assert_has(&build_err(&big), &["output.weight", "shape"]);
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn gguf_refusals_name_the_file_and_tensor() {
    let d = tmp("gguf-refuse");
    // A model given as an adapter.
    let msg = open_err(&fixture().join("model.gguf"));
    assert_has(&msg, &["model.gguf", "GGUF model, not a LoRA adapter"]);
    // Not GGUF at all, and a PEFT file given instead of its folder.
    std::fs::write(d.join("junk.gguf"), b"not a gguf file at all").unwrap();
    assert_has(&open_err(&d.join("junk.gguf")), &["junk.gguf"]);
    // A file of a PEFT folder stands for the folder.
    small_peft(&d.join("peft"), |_| {});
    for f in ["adapter_model.safetensors", "adapter_config.json"] {
        let a = open(&d.join("peft").join(f));
        assert_eq!((a.path.clone(), a.pairs.len()), (d.join("peft"), 4), "{f}");
    }
    let p = make_pairs(&layer_modules(&[0], &["q_proj"]), |_| 4, 1);
    let cases: Vec<Case<(&str, Value)>> = vec![
        (
            "alora",
            vec![(
                "adapter.alora.invocation_tokens",
                Value::Array(cria_core::gguf::Array::U32(vec![5, 6])),
            )],
            vec!["invocation_tokens", "activated LoRA"],
        ),
        (
            "cvec",
            vec![("adapter.type", Value::from("control_vector"))],
            vec!["adapter.type"],
        ),
        (
            "arch",
            vec![("general.architecture", Value::from("qwen2"))],
            vec!["qwen2"],
        ),
        (
            "alpha",
            vec![("adapter.lora.alpha", Value::from("eight"))],
            vec!["adapter.lora.alpha"],
        ),
    ];
    for (name, extra, parts) in cases {
        let path = d.join(format!("{name}.gguf"));
        write_gguf_adapter(&path, &p, 8.0, DType::F32, &extra);
        let msg = open_err(&path);
        assert_has(&msg, &parts);
        assert_has(&msg, &[&format!("{name}.gguf")]);
    }
    // Tensor-level: only one factor, an embedding LoRA, an unknown suffix.
    let tensor_cases: Vec<Case<(&str, Vec<usize>)>> = vec![
        (
            "half",
            vec![("blk.0.attn_q.weight.lora_a", vec![DIM, 4])],
            vec!["blk.0.attn_q.weight", "missing"],
        ),
        (
            "embd",
            vec![
                ("token_embd.weight.lora_a", vec![4, VOCAB]),
                ("token_embd.weight.lora_b", vec![4, DIM]),
            ],
            vec!["token_embd.weight.lora_a", "token embedding"],
        ),
        (
            "suffix",
            vec![("blk.0.attn_q.weight.delta", vec![DIM, 4])],
            vec!["blk.0.attn_q.weight.delta", "suffix"],
        ),
        (
            "rank",
            vec![
                ("blk.0.attn_q.weight.lora_a", vec![DIM, 4]),
                ("blk.0.attn_q.weight.lora_b", vec![8, DIM]),
            ],
            vec!["disagree on the rank"],
        ),
        (
            "zero",
            vec![
                ("blk.0.attn_q.weight.lora_a", vec![DIM, 0]),
                ("blk.0.attn_q.weight.lora_b", vec![0, DIM]),
            ],
            vec!["blk.0.attn_q.weight.lora_a", "rank 0"],
        ),
    ];
    for (name, tensors, parts) in tensor_cases {
        let mut w = GgufWriter::new();
        w.add("general.architecture", "llama")
            .add("general.type", "adapter")
            .add("adapter.type", "lora")
            .add("adapter.lora.alpha", Value::F32(8.0));
        for (n, ne) in tensors {
            let count: usize = ne.iter().product();
            w.add_tensor(n, DType::F32, ne, f32_bytes(&vals(count, 4, 0.1)))
                .unwrap();
        }
        let path = d.join(format!("{name}.gguf"));
        w.write(&path).unwrap();
        assert_has(&open_err(&path), &parts);
    }
    // Norm vectors are skipped, as llama.cpp skips them.
    let path = d.join("norms.gguf");
    write_gguf_adapter(
        &path,
        &p,
        8.0,
        DType::F32,
        &[("adapter.lora.new_thing", Value::from("x"))],
    );
    let g = cria_core::gguf::GgufFile::open(&path).unwrap();
    let mut w = GgufWriter::from_gguf(&g);
    w.add_tensor(
        "blk.0.attn_norm.weight",
        DType::F32,
        vec![DIM],
        f32_bytes(&[1.0; DIM]),
    )
    .unwrap();
    let path2 = d.join("norms2.gguf");
    w.write(&path2).unwrap();
    let f = open(&path2);
    assert_eq!(f.pairs.len(), 1);
    assert!(f
        .summary
        .iter()
        .any(|(k, v)| k == "norm vectors" && v.starts_with('1')));
    assert!(f
        .summary
        .iter()
        .any(|(k, v)| k == "other adapter keys" && v.starts_with("adapter.lora.new_thing")));
    std::fs::remove_dir_all(&d).ok();
}
