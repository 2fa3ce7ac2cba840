//! The real model: SmolLM2-135M-Instruct, Q4_1 (the file the default-model fetch provides), against
//! llama.cpp and transformers. Fixtures: tests/fixtures/smollm2 (see tests/fixtures/README.md).
//! The model itself is read from $CRIA_REF_DIR (default <repo>/ref, filled by scripts/fetch-refs.sh).

use cria_core::npy;
use cria_kernels::{CpuBackend, Isa};
use cria_model::{forward, KvCache, KvType, LoadOptions, Logits, Model, Scratch, Source};
use cria_tokenizer::Tokenizer;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{repo, smol};

fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures").join(name)
}

fn json(p: &Path) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
    )
    .unwrap()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn argmax(v: &[f32]) -> u32 {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b }) as u32
}

fn all_logits(m: &Model, b: &CpuBackend, toks: &[u32]) -> Vec<f32> {
    // llama.cpp's reference logits were made with an F32 cache (`-ctk f32 -ctv f32`).
    let mut kv = KvCache::with_type(m, toks.len(), KvType::F32);
    let mut s = Scratch::new(m, 128, Logits::All);
    let mut out = vec![];
    let mut pos = 0;
    for c in toks.chunks(128) {
        forward(m, b, c, pos, &mut kv, &mut s, Logits::All).unwrap();
        out.extend_from_slice(s.logits());
        pos += c.len();
    }
    out
}

/// FNV-1a 64 over a row's float32 bits (little-endian), as scripts/fixtures/llamacpp_logits.cpp
/// writes `row_fnv1a64`: equal hashes mean identical rows.
fn fnv1a64(row: &[f32]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in row {
        for b in x.to_bits().to_le_bytes() {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// `CRIA_REPACK=0` (weights in the file's layout, ggml's summation order) gives llama.cpp's
/// logits bit for bit, at all 478 positions of a text: every row's float32 bits against the
/// FNV-1a 64 hash llama.cpp's row got (llama.cpp 0c1e570, AVX2 build, F32 KV cache; see
/// tests/fixtures/README.md), the full rows at 4 positions (max difference 0), every top-1, and
/// the same tokens as llama.cpp's tokenizer. Checked on the AVX2 kernels and, where the CPU has
/// them, the AVX-512 ones (the same bits by design); an ISA the CPU lacks is reported as
/// SKIPPED. The scalar kernels sum in another order and are not bit-exact (see below).
#[test]
fn plain_q4_1_is_llama_cpp_bit_for_bit() {
    let r = json(&fixture("smollm2/llamacpp_logits.json"));
    let want_hash: Vec<&str> = r["row_fnv1a64"]
        .as_array()
        .expect("row_fnv1a64 in llamacpp_logits.json")
        .iter()
        .map(|h| h.as_str().unwrap())
        .collect();
    let want_top1 = u32s(&r["argmax"]);
    let (_, rows) = npy::read_f32(&fixture("smollm2/llamacpp_logits.npy")).unwrap();
    let positions = u32s(&r["positions"]);
    let mut tested = 0;
    for isa in [Isa::Avx2, Isa::Avx512] {
        let Some((b, m, ids)) = plain_on(isa, &r, "bit-for-bit check against llama.cpp") else {
            continue;
        };
        assert_eq!(want_hash.len(), ids.len());
        let v = m.config.vocab_size;
        let logits = all_logits(&m, &b, &ids);
        let n = ids.len();
        let differ: Vec<usize> = (0..n)
            .filter(|&p| fnv1a64(&logits[p * v..][..v]) != want_hash[p])
            .collect();
        let top1 = (0..n)
            .filter(|&p| argmax(&logits[p * v..][..v]) == want_top1[p])
            .count();
        let mut max_diff = 0f32;
        for (k, &p) in positions.iter().enumerate() {
            let got = &logits[p as usize * v..][..v];
            max_diff = got
                .iter()
                .zip(&rows[k * v..][..v])
                .map(|(a, b)| (a - b).abs())
                .fold(max_diff, f32::max);
        }
        eprintln!(
            "{} plain Q4_1 vs llama.cpp: {}/{n} rows bit-identical, top-1 {top1}/{n}, max |logit \
             diff| at {positions:?}: {max_diff}",
            isa.name(),
            n - differ.len()
        );
        assert!(
            differ.is_empty(),
            "{}: logits differ from llama.cpp's at {} positions: {differ:?}",
            isa.name(),
            differ.len()
        );
        assert_eq!(top1, n);
        assert_eq!(max_diff, 0.0);
        tested += 1;
    }
    if tested == 0 {
        skipped("the bit-for-bit check needs AVX2; this CPU has neither AVX2 nor AVX-512");
    }
}

/// llama.cpp with a LoRA adapter: a PEFT adapter over every linear layer of layers 0 and 29
/// (tests/fixtures/lora/smollm2/s_a), converted by llama.cpp's convert_lora_to_gguf.py to an f32
/// GGUF adapter, applied by llama.cpp and by cria (plain path) over the Q4_1 file, 478 positions
/// (scripts/fixtures/make_lora_q4_ref.sh). Not bit for bit: the adapter's products sum in another
/// order than ggml's, and this model amplifies last-bit differences through its 8-bit
/// activations and the cache (measured: the first 39 rows identical, then up to 1.02 logits of a
/// range of 37 at the saved positions, as any reordering of Q4_1's sums does). What is checked:
/// the top-1 token agrees at >= 93% of positions (measured 460/478), far above what the base
/// alone agrees with llama.cpp-with-the-adapter (395/478), so the adapter is applied as llama.cpp
/// applies it.
#[test]
fn plain_q4_1_with_adapter_follows_llama_cpp() {
    use cria_model::{forward_batch, ActiveLora, AdapterFile, Lora, SeqStep};
    use std::sync::Arc;
    let r = json(&fixture("lora/smollm2/llamacpp_q4_1_s_a.json"));
    let want_hash: Vec<&str> = r["row_fnv1a64"]
        .as_array()
        .expect("row_fnv1a64")
        .iter()
        .map(|h| h.as_str().unwrap())
        .collect();
    let mut tested = 0;
    for isa in [Isa::Avx2, Isa::Avx512] {
        let Some((b, m, ids)) = plain_on(isa, &r, "adapter check against llama.cpp") else {
            continue;
        };
        let file = AdapterFile::open(&fixture("lora/smollm2/s_a-f32.gguf")).unwrap();
        let lora = [ActiveLora {
            lora: Arc::new(Lora::build("s_a", file, &m, &b).unwrap()),
            scale: 1.0,
        }];
        let v = m.config.vocab_size;
        let mut kv = KvCache::with_type(&m, ids.len(), KvType::F32);
        let mut s = Scratch::new(&m, 128, Logits::All);
        let mut logits = vec![];
        let mut pos = 0;
        for c in ids.chunks(128) {
            let mut step = [SeqStep {
                tokens: c,
                pos,
                kv: &mut kv,
                lora: &lora,
            }];
            forward_batch(&m, &b, &mut step, &mut s, Logits::All).unwrap();
            logits.extend_from_slice(s.logits());
            pos += c.len();
        }
        let n = ids.len();
        let same = (0..n)
            .filter(|&p| fnv1a64(&logits[p * v..][..v]) == want_hash[p])
            .count();
        let want_top1 = u32s(&r["argmax"]);
        let top1 = (0..n)
            .filter(|&p| argmax(&logits[p * v..][..v]) == want_top1[p])
            .count();
        eprintln!(
            "{} plain Q4_1 + adapter vs llama.cpp: {same}/{n} rows bit-identical, top-1 {top1}/{n}",
            isa.name()
        );
        assert!(
            top1 * 100 >= n * 93,
            "{}: top-1 agrees with llama.cpp's (with the same adapter) at {top1}/{n} positions",
            isa.name()
        );
        tested += 1;
    }
    if tested == 0 {
        skipped(
            "the adapter check against llama.cpp needs AVX2; this CPU has neither AVX2 nor AVX-512",
        );
    }
}

/// On `isa` (None, said SKIPPED, if the CPU lacks it): the plain-path backend, SmolLM2 Q4_1 on
/// it, and `tests/fixtures/text/short.txt` tokenized, checked against llama.cpp's ids in `r`.
fn plain_on(isa: Isa, r: &Value, what: &str) -> Option<(CpuBackend, Model, Vec<u32>)> {
    if !isa.available() {
        skipped(&format!("{what} on {}: this CPU lacks it", isa.name()));
        return None;
    }
    let text = std::fs::read_to_string(fixture("text/short.txt")).unwrap();
    let b = CpuBackend::with_isa(2, isa).without_repack();
    let m = Model::load(&smol(), LoadOptions::default(), &b).unwrap();
    let Source::Gguf(g) = &m.source else {
        unreachable!()
    };
    let ids = Tokenizer::from_gguf(g).unwrap().encode(&text, true, false);
    assert_eq!(ids, u32s(&r["ids"]), "tokenization differs from llama.cpp");
    Some((b, m, ids))
}

/// "SKIPPED: <why>" on the process's stderr, past the test harness's output capture (which takes
/// only the print macros), so `cargo test` shows it for a passing test too.
fn skipped(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
}

/// The repacked Q4_1 kernels (what cria runs by default) against the plain path above, which
/// matches llama.cpp: they differ by the float summation order only. This model amplifies any
/// such reordering (the plain path's own scalar twin, the same arithmetic in another order,
/// moves logits by ~1), so the yardstick is that twin, measured here too: the repacked path must
/// keep every top-1 where the model is not near a tie, and stay within twice the twin's mean KL
/// divergence.
#[test]
fn repacked_q4_1_differs_from_the_plain_path_by_rounding_only() {
    let tok_m = Model::load(&smol(), LoadOptions::default(), &CpuBackend::new(1)).unwrap();
    let Source::Gguf(g) = &tok_m.source else {
        unreachable!()
    };
    let tok = Tokenizer::from_gguf(g).unwrap();
    let text = std::fs::read_to_string(fixture("text/short.txt")).unwrap();
    let ids = tok.encode(&text, true, false);
    let v = tok_m.config.vocab_size;
    let run = |b: CpuBackend| {
        let m = Model::load(&smol(), LoadOptions::default(), &b).unwrap();
        all_logits(&m, &b, &ids)
    };
    let plain = run(CpuBackend::new(2).without_repack());
    let packed = run(CpuBackend::new(2));
    let twin = run(CpuBackend::with_isa(2, Isa::Scalar).without_repack());
    assert_ne!(
        plain, packed,
        "the default backend should take the repacked path"
    );
    let twin = compare(&plain, &twin, v, "scalar twin of the plain path");
    let packed = compare(&plain, &packed, v, "repacked");
    for c in [&twin, &packed] {
        assert_eq!(c.confident_agree, c.confident, "a confident top-1 changed");
    }
    let n = ids.len();
    assert!(
        packed.agree as f64 >= 0.95 * n as f64,
        "top-1 {}/{n}",
        packed.agree
    );
    assert!(
        packed.kl_mean <= 2.0 * twin.kl_mean,
        "mean KL {} vs the twin's {}",
        packed.kl_mean,
        twin.kl_mean
    );
}

struct Agreement {
    agree: usize,
    confident: usize,
    confident_agree: usize,
    kl_mean: f64,
}

/// Top-1 agreement (overall, and where `a`'s margin is >= 0.5) and KL(a || b), printed.
fn compare(a: &[f32], b: &[f32], v: usize, what: &str) -> Agreement {
    let (mut agree, mut confident, mut confident_agree) = (0, 0, 0);
    let (mut kl_sum, mut kl_max, mut diff_max) = (0f64, 0f64, 0f32);
    for (la, lb) in a.chunks_exact(v).zip(b.chunks_exact(v)) {
        let top = argmax(la);
        let second = (0..v)
            .filter(|&i| i != top as usize)
            .map(|i| la[i])
            .fold(f32::MIN, f32::max);
        let same = argmax(lb) == top;
        agree += same as usize;
        if la[top as usize] - second >= 0.5 {
            confident += 1;
            confident_agree += same as usize;
        }
        let kl = kl_divergence(la, lb);
        kl_sum += kl;
        kl_max = kl_max.max(kl);
        diff_max = la
            .iter()
            .zip(lb)
            .map(|(x, y)| (x - y).abs())
            .fold(diff_max, f32::max);
    }
    let n = a.len() / v;
    let kl_mean = kl_sum / n as f64;
    eprintln!(
        "{what} vs plain Q4_1 over {n} positions: top-1 {agree}/{n}, where the plain margin \
         >= 0.5: {confident_agree}/{confident}; KL mean {kl_mean:.2e}, max {kl_max:.2e}; \
         max |logit diff| {diff_max:.3}"
    );
    Agreement {
        agree,
        confident,
        confident_agree,
        kl_mean,
    }
}

/// KL(p || q) of the softmaxes of two logit rows, in nats.
fn kl_divergence(p: &[f32], q: &[f32]) -> f64 {
    let lse = |l: &[f32]| {
        let m = l.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
        m + l.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln()
    };
    let (lp, lq) = (lse(p), lse(q));
    p.iter()
        .zip(q)
        .map(|(&a, &b)| {
            let (a, b) = (a as f64 - lp, b as f64 - lq);
            a.exp() * (a - b)
        })
        .sum()
}

/// `cria perplexity` on the same text and context as `llama-perplexity`: within 0.5% of both
/// llama.cpp's default run (f16 KV cache) and its f32-KV run.
#[test]
fn perplexity_within_half_percent_of_llama_cpp() {
    let r = json(&fixture("smollm2/llamacpp_ppl.json"));
    let out = Command::new(env!("CARGO_BIN_EXE_cria"))
        .args(["perplexity", "-m"])
        .arg(smol())
        .arg("-f")
        .arg(fixture("text/ppl.txt"))
        .args(["-c", "512"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cria perplexity failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap();
    let ppl: f64 = last
        .strip_prefix("PPL = ")
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("last line {last:?}"));
    for key in ["ppl_c512", "ppl_c512_f32kv"] {
        let want = r[key]["ppl"].as_f64().unwrap();
        let rel = (ppl - want).abs() / want;
        eprintln!(
            "cria PPL {ppl:.4} vs llama.cpp {key} {want:.4}: {:+.3}%",
            (ppl / want - 1.0) * 100.0
        );
        assert!(rel <= 0.005, "{key}: cria {ppl} vs llama.cpp {want}");
    }
}

/// `--f32` (every weight dequantized once at load) against transformers running the same GGUF
/// dequantized to f32 (eager attention): logits within 1e-4 of their range at the fixture's
/// positions of a chat prompt, and the same 32 greedy tokens.
#[test]
fn f32_path_matches_transformers() {
    let r = json(&fixture("smollm2/reference.json"));
    let b = CpuBackend::new(2);
    let m = Model::load(&smol(), LoadOptions { f32: true }, &b).unwrap();
    let Source::Gguf(g) = &m.source else {
        unreachable!()
    };
    let tok = Tokenizer::from_gguf(g).unwrap();
    let prompt = u32s(&r["prompt_ids"]);
    assert_eq!(
        tok.encode(r["prompt_text"].as_str().unwrap(), true, true),
        prompt,
        "chat prompt tokenization"
    );
    let v = m.config.vocab_size;
    let logits = all_logits(&m, &b, &prompt);
    let (_, want) = npy::read_f32(&fixture("smollm2/logits.npy")).unwrap();
    let range = r["logits_at_positions_max"].as_f64().unwrap()
        - r["logits_at_positions_min"].as_f64().unwrap();
    let mut max_diff = 0f32;
    for (k, &p) in u32s(&r["positions"]).iter().enumerate() {
        let got = &logits[p as usize * v..][..v];
        max_diff = got
            .iter()
            .zip(&want[k * v..][..v])
            .map(|(a, b)| (a - b).abs())
            .fold(max_diff, f32::max);
    }
    eprintln!("SmolLM2 f32 vs transformers: max |logit diff| {max_diff:.3e}, relative to range {range:.2}: {:.3e}", max_diff as f64 / range);
    assert!(max_diff as f64 / range <= 1e-4, "max diff {max_diff}");
    // Greedy: the prompt in one batch, then token by token through the KV cache.
    let n = 32;
    let mut kv = KvCache::with_type(&m, prompt.len() + n, KvType::F32);
    let mut s = Scratch::new(&m, prompt.len(), Logits::Last);
    forward(&m, &b, &prompt, 0, &mut kv, &mut s, Logits::Last).unwrap();
    let mut out = vec![];
    for i in 0..n {
        let t = argmax(s.logits());
        out.push(t);
        forward(
            &m,
            &b,
            &[t],
            prompt.len() + i,
            &mut kv,
            &mut s,
            Logits::Last,
        )
        .unwrap();
    }
    assert_eq!(
        out,
        u32s(&r["greedy_ids"]),
        "greedy continuation: {:?}",
        tok.decode(&out)
    );
}
