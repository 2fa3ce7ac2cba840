//! cria's sampler stages against llama.cpp and against values worked out by hand.
//!
//! `fixtures/samplers_llama_cpp.json` is what libllama's own samplers did to fixed candidate
//! lists (written by `gen_sampler_fixtures.cpp` / `.sh`): DRY (token and string breakers), XTC,
//! top-n-sigma, dynamic temperature, mirostat 1 and 2. Each case here rebuilds the same inputs,
//! runs the cria stage and compares the survivors: ids exactly (same order), logits and
//! probabilities to 1e-5 relative (both sides compute in f32 with the same formulas; the slack
//! covers summation order and libm differences).

use cria_engine::sampler::{
    Candidate, Candidates, Dist, Dry, DryBreakers, DynamicTemperature, Mirostat, Sampler,
    SamplerConfig, Stage, TokenText, TopNSigma, Xtc,
};
use serde_json::Value;
use std::collections::HashMap;

const TOL: f32 = 1e-5;

fn fixture() -> Value {
    let text = include_str!("fixtures/samplers_llama_cpp.json");
    serde_json::from_str(text).expect("samplers_llama_cpp.json parses")
}

fn ints(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("int") as u32)
        .collect()
}

/// Floats with `null` standing for -inf.
fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().map_or(f32::NEG_INFINITY, |f| f as f32))
        .collect()
}

fn bytes(v: &Value) -> Vec<u8> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("byte") as u8)
        .collect()
}

fn param(case: &Value, k: &str) -> f64 {
    case["params"][k]
        .as_f64()
        .unwrap_or_else(|| panic!("param {k}"))
}

fn candidates(step: &Value) -> Candidates {
    let ids = ints(&step["ids"]);
    let logits = floats(&step["logits"]);
    Candidates {
        data: ids
            .iter()
            .zip(&logits)
            .map(|(&id, &logit)| Candidate { id, logit, p: 0.0 })
            .collect(),
        sorted: false,
        selected: None,
    }
}

/// Largest relative difference seen, per sampler kind, for the report line.
#[derive(Default)]
struct Diffs(HashMap<String, f32>);

impl Diffs {
    fn close(&mut self, kind: &str, what: &str, got: f32, want: f32) {
        if got == want {
            return; // includes -inf == -inf
        }
        assert!(
            got.is_finite() && want.is_finite(),
            "{what}: got {got}, llama.cpp {want}"
        );
        let rel = (got - want).abs() / want.abs().max(1.0);
        assert!(
            rel <= TOL,
            "{what}: got {got}, llama.cpp {want} (rel {rel:e})"
        );
        let e = self.0.entry(kind.to_string()).or_insert(0.0);
        *e = e.max(rel);
    }
}

/// Compare the candidates with the step's recorded output. `logits`/`probs` select what the
/// stage defines (DRY and top-n-sigma leave `p` alone; llama.cpp's stays 0 then).
fn compare(
    d: &mut Diffs,
    kind: &str,
    name: &str,
    c: &Candidates,
    step: &Value,
    logits: bool,
    probs: bool,
) {
    let ids: Vec<u32> = c.data.iter().map(|x| x.id).collect();
    assert_eq!(ids, ints(&step["out_ids"]), "{name}: surviving ids");
    if logits {
        for (x, want) in c.data.iter().zip(floats(&step["out_logits"])) {
            d.close(kind, &format!("{name}: logit of {}", x.id), x.logit, want);
        }
    }
    if probs {
        for (x, want) in c.data.iter().zip(floats(&step["out_probs"])) {
            d.close(kind, &format!("{name}: p of {}", x.id), x.p, want);
        }
    }
}

/// The token texts and tokenizations llama.cpp's DRY breaker processing looked at.
struct FixtureVocab {
    n_tokens: usize,
    pieces: HashMap<u32, Vec<u8>>,
    tokenized: HashMap<Vec<u8>, Vec<u32>>,
}

impl TokenText for FixtureVocab {
    fn n_tokens(&self) -> usize {
        self.n_tokens
    }
    fn piece(&self, id: u32, out: &mut Vec<u8>) {
        out.clear();
        // Tokens not in the fixture hold no breaker's first byte: their text cannot matter, so
        // empty text stands in for it.
        if let Some(p) = self.pieces.get(&id) {
            out.extend_from_slice(p);
        }
    }
    fn tokenize(&self, text: &[u8]) -> Vec<u32> {
        self.tokenized
            .get(text)
            .unwrap_or_else(|| panic!("no llama.cpp tokenization of {text:?} in the fixture"))
            .clone()
    }
}

fn fixture_vocab(f: &Value) -> (FixtureVocab, Vec<String>) {
    let v = &f["dry_vocab"];
    let pieces = v["pieces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e[0].as_u64().unwrap() as u32, bytes(&e[1])))
        .collect();
    let tokenized = v["tokenize"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (bytes(&e[0]), ints(&e[1])))
        .collect();
    let breakers = v["breakers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| String::from_utf8(bytes(b)).unwrap())
        .collect();
    let vocab = FixtureVocab {
        n_tokens: v["n_tokens"].as_u64().unwrap() as usize,
        pieces,
        tokenized,
    };
    (vocab, breakers)
}

#[test]
fn stages_match_llama_cpp_fixtures() {
    let f = fixture();
    let (vocab, string_breakers) = fixture_vocab(&f);
    let processed = DryBreakers::from_strings(&string_breakers, &vocab);
    assert!(
        processed.len() > 50,
        "breakers processed: {}",
        processed.len()
    );
    let mut d = Diffs::default();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for case in f["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let kind = case["sampler"].as_str().unwrap();
        *counts.entry(kind.to_string()).or_default() += 1;
        let steps = case["steps"].as_array().unwrap();
        let history = ints(&case["history"]);
        // Single-step stages: the stage, and whether it defines probabilities.
        let single: Option<(Box<dyn Stage>, bool)> = match kind {
            "dry_tokens" | "dry_strings" => {
                let breakers = if kind == "dry_tokens" {
                    let seqs: Vec<Vec<u32>> = case["params"]["breakers"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(ints)
                        .collect();
                    DryBreakers::from_token_sequences(&seqs)
                } else {
                    processed.clone()
                };
                let mut dry = Dry::new(
                    vocab.n_tokens,
                    param(case, "multiplier") as f32,
                    param(case, "base") as f32,
                    param(case, "allowed_length") as usize,
                    param(case, "last_n") as usize,
                    breakers,
                );
                for &t in &history {
                    dry.accept(t);
                }
                Some((Box::new(dry), false))
            }
            "xtc" => Some((
                Box::new(Xtc::new(
                    param(case, "probability") as f32,
                    param(case, "threshold") as f32,
                    param(case, "min_keep") as usize,
                    0,
                )),
                true,
            )),
            "top_n_sigma" => Some((
                Box::new(TopNSigma {
                    n: param(case, "n") as f32,
                }),
                false,
            )),
            "temp_ext" => Some((
                Box::new(DynamicTemperature {
                    t: param(case, "temp") as f32,
                    range: param(case, "range") as f32,
                    exponent: param(case, "exponent") as f32,
                }),
                true,
            )),
            _ => None,
        };
        if let Some((mut stage, probs)) = single {
            let step = &steps[0];
            let mut c = candidates(step);
            stage.apply(&mut c);
            compare(&mut d, stage.name(), name, &c, step, true, probs);
            continue;
        }
        match kind {
            "mirostat" | "mirostat_v2" => {
                let (tau, eta) = (param(case, "tau") as f32, param(case, "eta") as f32);
                let mut m = if kind == "mirostat" {
                    Mirostat::v1(
                        param(case, "n_vocab") as usize,
                        0,
                        tau,
                        eta,
                        param(case, "m") as usize,
                    )
                } else {
                    Mirostat::v2(0, tau, eta)
                };
                for (k, step) in steps.iter().enumerate() {
                    let mut c = candidates(step);
                    m.truncate(&mut c);
                    compare(
                        &mut d,
                        kind,
                        &format!("{name} step {k}"),
                        &c,
                        step,
                        true,
                        true,
                    );
                    // Follow llama.cpp's draw so that mu moves the same way.
                    let sel = step["selected"].as_i64().unwrap() as usize;
                    m.update(c.data[sel].p);
                }
            }
            other => panic!("unknown sampler {other} in the fixture"),
        }
    }
    for kind in [
        "dry_tokens",
        "dry_strings",
        "xtc",
        "top_n_sigma",
        "temp_ext",
        "mirostat",
        "mirostat_v2",
    ] {
        assert!(
            counts.get(kind).copied().unwrap_or(0) > 0,
            "no {kind} cases"
        );
    }
    let mut report: Vec<_> = d.0.iter().collect();
    report.sort_by(|a, b| a.0.cmp(b.0));
    eprintln!("max relative difference vs llama.cpp: {report:?}; cases: {counts:?}");
}

#[test]
fn dry_string_breakers_cut_repeats() {
    // The text "Name: Bob\nAge: 3\n..." repeats, but ":" and "\n" are breakers: a repeat cannot
    // reach back across them, so with allowed length 2 no candidate is penalized at all after
    // "Age:" (the history ends in a breaker). Checked here on the fixture vocabulary directly.
    let f = fixture();
    let (vocab, breakers) = fixture_vocab(&f);
    let b = DryBreakers::from_strings(&breakers, &vocab);
    let colon = 25; // GPT-2 ":"
    let newline = 198; // GPT-2 "\n"
    let history = [
        7, 8, colon, 9, newline, 7, 8, colon, 9, newline, 7, 8, colon,
    ];
    let penalized = |breakers: DryBreakers| {
        let mut dry = Dry::new(50257, 1.0, 2.0, 2, 64, breakers);
        for &t in &history {
            dry.accept(t);
        }
        let mut c = Candidates::default();
        c.fill(&[0.0; 200]);
        dry.apply(&mut c);
        c
    };
    let c = penalized(b);
    assert!(
        c.data.iter().all(|x| x.logit == 0.0),
        "the breaker ends the repeat"
    );
    // Without breakers, the token that followed the earlier "7 8 :" (9) is penalized: the
    // longest earlier repeat of the history's end is "7 8 : 9 \n 7 8 :" (8 tokens, ending at the
    // second ":"), so 1 * 2^(8 - 2) = 64.
    let c = penalized(DryBreakers::default());
    assert_eq!(c.data[9].logit, -64.0);
    assert_eq!(c.data.iter().filter(|x| x.logit != 0.0).count(), 1);
}

// ---------------------------------------------------------------------------------------------
// Hand-made logits, values worked out in the comments
// ---------------------------------------------------------------------------------------------

fn from_probs(probs: &[f32]) -> Candidates {
    let logits: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
    let mut c = Candidates::default();
    c.fill(&logits);
    c
}

fn probs_after_dist(mut c: Candidates) -> Vec<f32> {
    Dist::new(0).apply(&mut c);
    c.data.iter().map(|x| x.p).collect()
}

fn assert_probs(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "got {got:?}, want {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-5, "got {got:?}, want {want:?}");
    }
}

#[test]
fn top_n_sigma_by_hand() {
    // logits 0,1,2,3: mean 1.5, std sqrt((2.25 + 0.25 + 0.25 + 2.25) / 4) = 1.1180; n = 1 cuts
    // below 3 - 1.118 = 1.882: tokens 2 and 3 stay (softmax e^2, e^3 -> 0.268941, 0.731059).
    let mut c = Candidates::default();
    c.fill(&[0.0, 1.0, 2.0, 3.0]);
    TopNSigma { n: 1.0 }.apply(&mut c);
    let logits: Vec<f32> = c.data.iter().map(|x| x.logit).collect();
    assert_eq!(logits, [f32::NEG_INFINITY, f32::NEG_INFINITY, 2.0, 3.0]);
    assert_probs(&probs_after_dist(c), &[0.0, 0.0, 0.268941, 0.731059]);
    // llama.cpp test-sampling: n = 0 is a no-op, n = 3 keeps everything (3 sigma > range).
    for n in [0.0, 3.0] {
        let mut c = from_probs(&[0.1, 0.2, 0.3, 0.4]);
        TopNSigma { n }.apply(&mut c);
        assert_probs(&probs_after_dist(c), &[0.1, 0.2, 0.3, 0.4]);
    }
    // -inf logits are left out of the statistics: [-inf, 0, 2] has mean 1, std 1; n = 0.5 cuts
    // below 1.5, leaving only token 2.
    let mut c = Candidates::default();
    c.fill(&[f32::NEG_INFINITY, 0.0, 2.0]);
    TopNSigma { n: 0.5 }.apply(&mut c);
    assert_eq!(c.data[1].logit, f32::NEG_INFINITY);
    assert_eq!(c.data[2].logit, 2.0);
}

#[test]
fn xtc_by_hand() {
    // p = 0.4, 0.3, 0.2, 0.1 (llama.cpp test-sampling's cases, probability 0.99 ~ always).
    // threshold 0.09: all four are above it, all but the last (0.1) go.
    let cases: [(f32, &[f32]); 5] = [
        (0.09, &[1.0]),
        (0.19, &[0.2 / 0.3, 0.1 / 0.3]),
        (0.29, &[0.5, 0.2 / 0.6, 0.1 / 0.6]),
        // threshold 0.39: only 0.4 is above it -> nothing to exclude.
        (0.39, &[0.4, 0.3, 0.2, 0.1]),
        // threshold 0.5: same, and above 0.5 XTC never acts.
        (0.5, &[0.4, 0.3, 0.2, 0.1]),
    ];
    for (t, want) in cases {
        let mut c = from_probs(&[0.4, 0.3, 0.2, 0.1]);
        Xtc::new(1.0, t, 0, 7).apply(&mut c);
        assert_probs(&probs_after_dist(c), want);
    }
    // min_keep 4 forbids leaving 3.
    let mut c = from_probs(&[0.4, 0.3, 0.2, 0.1]);
    Xtc::new(1.0, 0.29, 4, 7).apply(&mut c);
    assert_eq!(c.len(), 4);
    // Probability 0.5: the coin comes up about half the time (2000 draws, 4 sigma = 0.045).
    let mut acted = 0;
    let mut x = Xtc::new(0.5, 0.19, 0, 11);
    for _ in 0..2000 {
        let mut c = from_probs(&[0.4, 0.3, 0.2, 0.1]);
        x.apply(&mut c);
        acted += usize::from(c.len() == 2);
    }
    let f = acted as f64 / 2000.0;
    assert!((f - 0.5).abs() < 0.045, "XTC acted {f} of the time");
}

#[test]
fn dynamic_temperature_by_hand() {
    // p = 0.25, 0.75: entropy H = -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.562335, H_max = ln 2 =
    // 0.693147, H / H_max = 0.811278. t = 0.8 ± 0.5, exponent 1: 0.3 + 1.0 * 0.811278 =
    // 1.111278. Logits ln 0.25, ln 0.75 divided by it; softmax: p1 / p0 = 3^(1 / 1.111278) =
    // 2.687476, so p = 0.271188, 0.728812.
    let mut c = from_probs(&[0.25, 0.75]);
    DynamicTemperature {
        t: 0.8,
        range: 0.5,
        exponent: 1.0,
    }
    .apply(&mut c);
    // Sorted, with the probabilities at the new temperature already in place.
    assert_eq!(c.data[0].id, 1);
    assert_probs(&[c.data[0].p, c.data[1].p], &[0.728812, 0.271188]);
    // Exponent 2: t = 0.3 + 0.811278^2 = 0.958172; 3^(1 / 0.958172) = 3.147381, so
    // p0 = 1 / (1 + 3.147381) = 0.241116.
    let mut c = from_probs(&[0.25, 0.75]);
    DynamicTemperature {
        t: 0.8,
        range: 0.5,
        exponent: 2.0,
    }
    .apply(&mut c);
    assert_probs(&[c.data[1].p], &[0.241116]);
    // A uniform distribution has H / H_max = 1: the top of the range, t + range.
    let mut c = Candidates::default();
    c.fill(&[1.0, 1.0, 1.0]);
    DynamicTemperature {
        t: 1.0,
        range: 0.5,
        exponent: 1.0,
    }
    .apply(&mut c);
    assert!(c.data.iter().all(|x| (x.logit - 1.0 / 1.5).abs() < 1e-6));
}

#[test]
fn mirostat_v1_by_hand() {
    // Zipf probabilities p_i ∝ 1 / (i + 1)^2 over 10 tokens: every b_i = ln(p_i / p_{i+1}) is
    // exactly 2 t_i, so s_hat = 2 and eps = 1. tau = 2 -> mu = 4:
    // k = (1 * 2^4 / (1 - 10^-1))^(1/2) = (17.777...)^(1/2) = 4.216 -> top 4.
    let z: f32 = (1..=10).map(|i| 1.0 / (i * i) as f32).sum();
    let probs: Vec<f32> = (1..=10).map(|i| 1.0 / (i * i) as f32 / z).collect();
    let m = Mirostat::v1(10, 0, 2.0, 0.1, 100);
    let mut c = from_probs(&probs);
    m.truncate(&mut c);
    let ids: Vec<u32> = c.data.iter().map(|x| x.id).collect();
    assert_eq!(ids, [0, 1, 2, 3]);
    // Renormalized: 1/(1 + 1/4 + 1/9 + 1/16) = 0.702439 for token 0.
    assert!((c.data[0].p - 0.702439).abs() < 1e-5);
    // mu moves by eta * (surprise - tau): choosing token 0, surprise -log2(0.702439) = 0.509559,
    // mu = 4 - 0.1 * (0.509559 - 2) = 4.149044.
    let mut m = m;
    m.update(c.data[0].p);
    assert!((m.mu() - 4.149044).abs() < 1e-5, "mu {}", m.mu());
}

#[test]
fn mirostat_v2_by_hand() {
    // p = 0.5, 0.25, 0.125, 0.125 have surprises 1, 2, 3, 3 bits. tau = 1 -> mu = 2: the tokens
    // of surprise <= 2 stay, renormalized to 2/3, 1/3.
    let m = Mirostat::v2(0, 1.0, 0.5);
    let mut c = from_probs(&[0.5, 0.25, 0.125, 0.125]);
    m.truncate(&mut c);
    assert_probs(
        &c.data.iter().map(|x| x.p).collect::<Vec<_>>(),
        &[2.0 / 3.0, 1.0 / 3.0],
    );
    // Choosing 1/3: surprise log2 3 = 1.584963; mu = 2 - 0.5 * (1.584963 - 1) = 1.707519.
    let mut m = m;
    m.update(1.0 / 3.0);
    assert!((m.mu() - 1.707519).abs() < 1e-5);
    // mu below every surprise still keeps one token.
    let m = Mirostat::v2(0, 0.1, 0.5);
    let mut c = from_probs(&[0.5, 0.25, 0.125, 0.125]);
    m.truncate(&mut c);
    assert_eq!(c.len(), 1);
    assert_eq!(c.data[0].id, 0);
}

#[test]
fn dry_llama_cpp_test_sampling_cases() {
    // llama.cpp test-sampling.cpp's DRY cases, with its expected probabilities after dist.
    struct Case {
        probs: &'static [f32],
        history: &'static [u32],
        want: &'static [f32],
        mult: f32,
        base: f32,
        allowed: usize,
        last_n: usize,
        breakers: &'static [&'static [u32]],
    }
    let cases = [
        Case {
            probs: &[0.25; 4],
            history: &[0, 1],
            want: &[0.25; 4],
            mult: 1.0,
            base: 1.1,
            allowed: 2,
            last_n: 4,
            breakers: &[],
        },
        // "0 1" repeats, 2 followed it: penalty 1 * 1.1^0 = 1 -> e^-1 relative weight.
        Case {
            probs: &[0.25; 4],
            history: &[0, 1, 2, 0, 1],
            want: &[0.296923, 0.296923, 0.109232, 0.296923],
            mult: 1.0,
            base: 1.1,
            allowed: 2,
            last_n: 5,
            breakers: &[],
        },
        Case {
            probs: &[0.2; 5],
            history: &[0, 1, 3, 4, 0, 1],
            want: &[0.2; 5],
            mult: 1.0,
            base: 1.1,
            allowed: 2,
            last_n: 6,
            breakers: &[&[3]],
        },
        Case {
            probs: &[0.2; 5],
            history: &[0, 1, 2, 0, 1],
            want: &[0.241818, 0.241818, 0.032727, 0.241818, 0.241818],
            mult: 2.0,
            base: 1.1,
            allowed: 2,
            last_n: 5,
            breakers: &[],
        },
        Case {
            probs: &[0.2; 5],
            history: &[0, 1, 2, 3, 4, 0, 1],
            want: &[0.2; 5],
            mult: 1.0,
            base: 1.1,
            allowed: 4,
            last_n: 7,
            breakers: &[],
        },
    ];
    for c in cases {
        let seqs: Vec<Vec<u32>> = c.breakers.iter().map(|b| b.to_vec()).collect();
        let mut dry = Dry::new(
            c.probs.len(),
            c.mult,
            c.base,
            c.allowed,
            c.last_n,
            DryBreakers::from_token_sequences(&seqs),
        );
        for &t in c.history {
            dry.accept(t);
        }
        let mut cands = from_probs(c.probs);
        dry.apply(&mut cands);
        assert_probs(&probs_after_dist(cands), c.want);
    }
}

// ---------------------------------------------------------------------------------------------
// The whole chain
// ---------------------------------------------------------------------------------------------

/// Every stage on: bias, penalties, DRY, top-n-sigma, top-k, typical, top-p, min-p, XTC,
/// dynamic temperature, dist.
fn everything(seed: u64) -> SamplerConfig {
    SamplerConfig {
        seed,
        temperature: 0.9,
        dynatemp_range: 0.3,
        top_k: 60,
        top_p: 0.97,
        min_p: 0.01,
        typical_p: 0.98,
        top_n_sigma: 3.0,
        xtc_probability: 0.5,
        xtc_threshold: 0.1,
        repeat_penalty: 1.1,
        presence_penalty: 0.1,
        frequency_penalty: 0.1,
        dry_multiplier: 0.8,
        logit_bias: vec![(3, 1.0), (4, f32::NEG_INFINITY)],
        ..Default::default()
    }
}

fn logits_for(step: usize, n: usize) -> Vec<f32> {
    // Deterministic, varying per step, with a few strong tokens.
    (0..n)
        .map(|i| {
            (((i * 7919 + step * 104_729) % 1000) as f32 * 0.004)
                + if i % 17 == 0 { 2.0 } else { 0.0 }
        })
        .collect()
}

fn generate(cfg: SamplerConfig, n: usize) -> Vec<u32> {
    let vocab = 300;
    let mut s = Sampler::new(cfg, vocab);
    let mut out = Vec::with_capacity(n);
    for step in 0..n {
        let t = s.sample(&logits_for(step % 50, vocab));
        s.accept(t);
        out.push(t);
    }
    out
}

#[test]
fn seeded_chain_is_deterministic() {
    for cfg in [
        everything(42),
        SamplerConfig {
            mirostat: 1,
            ..everything(42)
        },
        SamplerConfig {
            mirostat: 2,
            ..everything(42)
        },
    ] {
        let a = generate(cfg.clone(), 1000);
        assert_eq!(a, generate(cfg.clone(), 1000), "same seed, same tokens");
        let other = SamplerConfig {
            seed: 43,
            ..cfg.clone()
        };
        assert_ne!(a, generate(other, 1000), "another seed, other tokens");
        // The banned token never comes out, and more than a handful of distinct tokens do.
        assert!(!a.contains(&4), "token 4 is banned");
        let mut distinct = a.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(
            distinct.len() > 10,
            "only {} distinct tokens",
            distinct.len()
        );
    }
    // The same on another thread (nothing in the sampler depends on the thread).
    let here = generate(everything(7), 300);
    let there = std::thread::spawn(|| generate(everything(7), 300))
        .join()
        .unwrap();
    assert_eq!(here, there);
}

#[test]
fn chain_order_matches_llama_cpp() {
    let chain = |cfg: SamplerConfig| Sampler::new(cfg, 300).describe();
    assert_eq!(
        chain(everything(1)),
        "logits -> logit-bias -> penalties -> dry -> top-n-sigma -> top-k -> typical -> top-p \
         -> min-p -> xtc -> temp-ext -> dist"
    );
    let mirostat = |version: u8, logit_bias: Vec<(u32, f32)>| {
        chain(SamplerConfig {
            mirostat: version,
            logit_bias,
            ..everything(1)
        })
    };
    assert_eq!(
        mirostat(2, vec![(1, 1.0)]),
        "logits -> logit-bias -> temp -> mirostat-v2"
    );
    assert_eq!(mirostat(1, vec![]), "logits -> temp -> mirostat");
    // Greedy keeps the stages that can remove the best token (typical, XTC) and those that
    // change logits (penalties, DRY).
    assert_eq!(
        chain(SamplerConfig {
            temperature: 0.0,
            dynatemp_range: 0.0,
            ..everything(1)
        }),
        "logits -> logit-bias -> penalties -> dry -> typical -> xtc -> greedy"
    );
}

// ---------------------------------------------------------------------------------------------
// Options by name
// ---------------------------------------------------------------------------------------------

#[test]
fn set_accepts_llama_cpp_names() {
    let mut c = SamplerConfig::default();
    for (name, value) in [
        ("temp", "0.7"),
        ("top_k", "20"),
        ("--top-p", "0.9"),
        ("min-p", "0.1"),
        ("typical", "0.95"),
        ("top-nsigma", "1.5"),
        ("xtc-probability", "0.5"),
        ("xtc_threshold", "0.2"),
        ("dry-multiplier", "0.8"),
        ("dry-base", "2"),
        ("dry-allowed-length", "3"),
        ("dry-penalty-last-n", "128"),
        ("repeat-penalty", "1.1"),
        ("repeat-last-n", "32"),
        ("presence-penalty", "0.5"),
        ("frequency-penalty", "-0.5"),
        ("mirostat", "2"),
        ("mirostat-lr", "0.2"),
        ("mirostat-ent", "4"),
        ("dynatemp-range", "0.3"),
        ("dynatemp-exp", "1.5"),
        ("seed", "99"),
        ("min-keep", "2"),
        ("logit-bias", "15+1.5"),
        ("logit-bias", "16-inf"),
    ] {
        c.set(name, value)
            .unwrap_or_else(|e| panic!("{name} {value}: {e}"));
    }
    let want = SamplerConfig {
        temperature: 0.7,
        top_k: 20,
        top_p: 0.9,
        min_p: 0.1,
        typical_p: 0.95,
        top_n_sigma: 1.5,
        xtc_probability: 0.5,
        xtc_threshold: 0.2,
        dry_multiplier: 0.8,
        dry_base: 2.0,
        dry_allowed_length: 3,
        dry_penalty_last_n: 128,
        repeat_penalty: 1.1,
        repeat_last_n: 32,
        presence_penalty: 0.5,
        frequency_penalty: -0.5,
        mirostat: 2,
        mirostat_eta: 0.2,
        mirostat_tau: 4.0,
        dynatemp_range: 0.3,
        dynatemp_exponent: 1.5,
        seed: 99,
        min_keep: 2,
        logit_bias: vec![(15, 1.5), (16, f32::NEG_INFINITY)],
        ..Default::default()
    };
    assert_eq!(c, want);
    assert!(c.validate().is_ok());
    c.set("dry-sequence-breaker", "none").unwrap();
    c.set("dry-sequence-breaker", "\n\n").unwrap();
    assert_eq!(c.dry_sequence_breakers, ["\n\n"]);
    c.set("logit-bias", "none").unwrap();
    assert!(c.logit_bias.is_empty());
    assert_eq!(
        c.summary(),
        "temp 0.7, mirostat v2 tau 4 eta 0.2, min-keep 2, seed 99"
    );
    assert_eq!(
        SamplerConfig {
            seed: 5,
            ..Default::default()
        }
        .summary(),
        "top-k 40, top-p 0.95, min-p 0.05, temp 0.8, seed 5"
    );
    assert_eq!(SamplerConfig::greedy().summary(), "greedy");
}

#[test]
fn set_rejects_bad_input_clearly() {
    let mut c = SamplerConfig::default();
    let before = c.clone();
    let cases = [
        (
            "top-p",
            "1.5",
            "top-p = 1.5 is out of range: expected 0 to 1",
        ),
        ("temp", "-1", "temperature = -1 is out of range"),
        ("temp", "nan", "temperature = NaN is out of range"),
        (
            "top-k",
            "-3",
            "top-k = \"-3\" is not valid: expected a whole number",
        ),
        (
            "mirostat",
            "3",
            "mirostat = 3 is out of range: expected 0 (off), 1",
        ),
        ("repeat-penalty", "0", "repeat-penalty = 0 is out of range"),
        (
            "dry-base",
            "0.5",
            "dry-base = 0.5 is out of range: expected a number >= 1",
        ),
        (
            "xtc-probability",
            "abc",
            "xtc-probability = \"abc\" is not valid",
        ),
        ("seed", "x", "seed = \"x\" is not valid"),
        (
            "logit-bias",
            "12",
            "logit-bias \"12\": expected TOKEN_ID+BIAS",
        ),
        ("logit-bias", "12+inf", "+inf would force the token"),
        (
            "dry-sequence-breaker",
            "",
            "dry-sequence-breaker = \"\" is not valid",
        ),
    ];
    for (name, value, msg) in cases {
        let e = c.set(name, value).expect_err(name);
        assert!(e.contains(msg), "{name} {value}: {e}");
    }
    assert_eq!(c, before, "failed sets change nothing");
    let e = c.set("top-q", "1").unwrap_err();
    assert!(e.starts_with("unknown sampler option \"top-q\"; known options: temperature, top-k"));
    assert!(
        e.contains("mirostat-lr") && e.contains("dry-sequence-breaker"),
        "{e}"
    );
    // validate() catches what a struct literal can get wrong.
    let bad = SamplerConfig {
        min_p: 2.0,
        ..Default::default()
    };
    assert!(bad.validate().unwrap_err().contains("min-p = 2"));
    let bad = SamplerConfig {
        logit_bias: vec![(1, f32::NAN)],
        ..Default::default()
    };
    assert!(bad
        .validate()
        .unwrap_err()
        .contains("logit-bias for token 1"));
    assert!(SamplerConfig::default().validate().is_ok());
}
