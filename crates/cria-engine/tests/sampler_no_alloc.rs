//! Sampling allocates nothing per token: after one warm-up call, 200 samples through the full
//! chain with every stage on (logit bias, penalties, DRY with multi-token breakers, top-n-sigma,
//! top-k, typical, top-p, min-p, XTC, dynamic temperature, dist), then 200 through each mirostat
//! chain, each token also accepted and its text pushed through a stop-string matcher, run
//! without a single heap allocation, counted by a global allocator.
//!
//! One #[test] only: the counter is process-wide, so a second test running in parallel would be
//! counted too.

use cria_engine::sampler::{DryBreakers, Sampler, SamplerConfig};
use cria_engine::stop::StopMatcher;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

struct Counting;
static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

fn note() {
    if COUNTING.load(Relaxed) {
        ALLOCS.fetch_add(1, Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is an atomic
// and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note();
        System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        note();
        System.alloc_zeroed(l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        note();
        System.realloc(p, l, new)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const VOCAB: usize = 5000;

/// Per-step logits, made before counting starts: a peaked, shifting distribution.
fn logits(steps: usize) -> Vec<Vec<f32>> {
    (0..steps)
        .map(|s| {
            (0..VOCAB)
                .map(|i| {
                    let x = ((i * 7919 + s * 104_729) % 1000) as f32 * 0.003;
                    if (i + s) % 97 == 0 {
                        x + 4.0
                    } else {
                        x
                    }
                })
                .collect()
        })
        .collect()
}

/// Token texts for the stop matcher: a fixed table, built before counting.
fn pieces() -> Vec<String> {
    (0..VOCAB)
        .map(|i| match i % 7 {
            0 => " the".to_string(),
            1 => "\nUs".to_string(),
            2 => "er".to_string(),
            3 => "ñ".to_string(),
            _ => format!("w{i}"),
        })
        .collect()
}

fn run(
    s: &mut Sampler,
    steps: &[Vec<f32>],
    text: &[String],
    stop: &mut StopMatcher,
    out: &mut String,
) -> usize {
    let mut stops = 0;
    for l in steps {
        let t = s.sample(l);
        s.accept(t);
        out.clear();
        if stop.push(&text[t as usize], out).is_some() {
            stop.reset();
            stops += 1;
        }
    }
    stops
}

#[test]
fn sampling_allocates_nothing_after_warm_up() {
    let everything = SamplerConfig {
        seed: 3,
        temperature: 0.9,
        dynatemp_range: 0.4,
        top_k: 200,
        top_p: 0.98,
        min_p: 0.001,
        typical_p: 0.99,
        top_n_sigma: 4.0,
        xtc_probability: 0.5,
        xtc_threshold: 0.05,
        repeat_penalty: 1.1,
        presence_penalty: 0.2,
        frequency_penalty: 0.1,
        repeat_last_n: 64,
        dry_multiplier: 0.8,
        dry_penalty_last_n: 128,
        logit_bias: vec![(5, 2.0), (6, f32::NEG_INFINITY)],
        ..Default::default()
    };
    // Breakers with tails, so the restart scan's matching path runs too.
    let breakers = DryBreakers::from_token_sequences(&[vec![0], vec![7, 14], vec![21, 28, 35]]);
    let mut chains = [
        Sampler::with_breakers(everything.clone(), VOCAB, breakers),
        Sampler::new(
            SamplerConfig {
                mirostat: 1,
                ..everything.clone()
            },
            VOCAB,
        ),
        Sampler::new(
            SamplerConfig {
                mirostat: 2,
                ..everything.clone()
            },
            VOCAB,
        ),
    ];
    let steps = logits(200);
    let text = pieces();
    let mut stop = StopMatcher::new(&["\nUser", "ññ"]);
    let mut out = String::with_capacity(256);
    for s in chains.iter_mut() {
        // Warm-up: the first call sizes the scratch buffers; fill the histories to the window.
        for l in steps.iter().take(130) {
            let t = s.sample(l);
            s.accept(t);
            stop.push(&text[t as usize], &mut out);
            out.clear();
        }
        stop.reset();
    }
    ALLOCS.store(0, Relaxed);
    COUNTING.store(true, Relaxed);
    let mut stops = 0;
    for s in chains.iter_mut() {
        stops += run(s, &steps, &text, &mut stop, &mut out);
    }
    COUNTING.store(false, Relaxed);
    let n = ALLOCS.load(Relaxed);
    assert_eq!(n, 0, "{n} allocations in 600 sampled tokens");
    // The matcher did real work: stop strings spanning two tokens ("\nUs" + "er", "ñ" + "ñ")
    // completed along the way.
    assert!(stops > 0, "no stop string completed in 600 tokens");
}
