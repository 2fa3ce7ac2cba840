//! Continuous batching: several sequences in one `forward_batch` give each sequence exactly the
//! logits (and hidden states) it gets alone: same bits, at 1 and 2 threads, F32 and mixed
//! quantized weights, f16 and f32 caches. This is what lets a server promise that a seeded
//! request gives the same text alone or batched with others.

use cria_kernels::CpuBackend;
use cria_model::{
    forward, forward_batch, KvCache, KvType, LoadOptions, Logits, Model, Scratch, SeqStep,
};

mod common;
use common::{quantized_copy, tiny};

fn toks(n: usize, seed: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (seed * 13 + i * 29 + 3) % 500)
        .collect()
}

#[test]
fn batched_sequences_match_each_alone_bitwise() {
    let dir = std::env::temp_dir().join(format!("cria-batch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for path in [tiny(), quantized_copy(&dir)] {
        for (threads, kv_type) in [(1, KvType::F16), (2, KvType::F16), (2, KvType::F32)] {
            let b = CpuBackend::new(threads);
            let m = Model::load(&path, LoadOptions::default(), &b).unwrap();
            let ctx = 64;
            // Histories already in each sequence's cache, then this step's new tokens: a fresh
            // prompt, a decode step, a prompt continued at a later position.
            let hist = [toks(0, 1), toks(7, 2), toks(4, 3)];
            let new = [toks(5, 4), toks(1, 5), toks(9, 6)];
            let label = format!("{} {threads} thr {kv_type}", path.display());

            // Alone.
            let mut alone = Vec::new();
            for (h, n) in hist.iter().zip(&new) {
                let mut kv = KvCache::with_type(&m, ctx, kv_type);
                let mut s = Scratch::new(&m, 16, Logits::Last);
                if !h.is_empty() {
                    forward(&m, &b, h, 0, &mut kv, &mut s, Logits::Last).unwrap();
                }
                forward(&m, &b, n, h.len(), &mut kv, &mut s, Logits::Last).unwrap();
                alone.push(s.logits().to_vec());
            }

            // Together: histories first (each alone), then one batched step.
            let mut kvs: Vec<KvCache> = (0..3)
                .map(|_| KvCache::with_type(&m, ctx, kv_type))
                .collect();
            let mut s = Scratch::with_seqs(&m, 32, 3);
            for (h, kv) in hist.iter().zip(kvs.iter_mut()) {
                if !h.is_empty() {
                    forward(&m, &b, h, 0, kv, &mut s, Logits::Last).unwrap();
                }
            }
            let mut steps: Vec<SeqStep> = kvs
                .iter_mut()
                .zip(hist.iter().zip(&new))
                .map(|(kv, (h, n))| SeqStep {
                    tokens: n,
                    pos: h.len(),
                    kv,
                    lora: &[],
                })
                .collect();
            forward_batch(&m, &b, &mut steps, &mut s, Logits::Last).unwrap();
            assert_eq!(s.logits().len(), 3 * m.config.vocab_size);
            for (i, want) in alone.iter().enumerate() {
                let got = s.seq_logits(i);
                let same = got
                    .iter()
                    .zip(want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{label}: sequence {i} differs in a batch");
            }

            // Hidden states (embeddings): the same rows alone and batched.
            let mut kv = KvCache::with_type(&m, ctx, kv_type);
            let mut sa = Scratch::new(&m, 16, Logits::Hidden);
            forward(&m, &b, &new[2], 0, &mut kv, &mut sa, Logits::Hidden).unwrap();
            assert_eq!(sa.hidden().len(), new[2].len() * m.config.dim);
            assert!(sa.logits().is_empty());
            let mut kva = KvCache::with_type(&m, ctx, kv_type);
            let mut kvb = KvCache::with_type(&m, ctx, kv_type);
            let mut steps = [
                SeqStep {
                    tokens: &new[0],
                    pos: 0,
                    kv: &mut kva,
                    lora: &[],
                },
                SeqStep {
                    tokens: &new[2],
                    pos: 0,
                    kv: &mut kvb,
                    lora: &[],
                },
            ];
            forward_batch(&m, &b, &mut steps, &mut s, Logits::Hidden).unwrap();
            let rows = &s.hidden()[new[0].len() * m.config.dim..];
            assert_eq!(
                rows,
                sa.hidden(),
                "{label}: hidden states differ in a batch"
            );
        }
    }

    // Bad batches are errors, not panics.
    let b = CpuBackend::new(1);
    let m = Model::load(&tiny(), LoadOptions::default(), &b).unwrap();
    let mut kv = KvCache::new(&m, 8);
    let mut kv2 = KvCache::new(&m, 8);
    let mut s = Scratch::with_seqs(&m, 8, 1);
    let t = toks(3, 1);
    let two = &mut [
        SeqStep {
            tokens: &t,
            pos: 0,
            kv: &mut kv,
            lora: &[],
        },
        SeqStep {
            tokens: &t,
            pos: 0,
            kv: &mut kv2,
            lora: &[],
        },
    ];
    assert!(
        forward_batch(&m, &b, two, &mut s, Logits::Last).is_err(),
        "2 rows of logits, room for 1"
    );
    assert!(forward_batch(&m, &b, &mut [], &mut s, Logits::Last).is_err());
    let mut kv = KvCache::new(&m, 8);
    let step = &mut [SeqStep {
        tokens: &t,
        pos: 6,
        kv: &mut kv,
        lora: &[],
    }];
    assert!(
        forward_batch(&m, &b, step, &mut s, Logits::Last).is_err(),
        "past the context"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A prompt longer than `UBATCH` runs as micro-batches (the scratch holds activations for
/// `UBATCH` tokens only): the same logits and the same KV cache, bit for bit, as one pass over
/// the whole prompt; and a call that cannot be split is refused with an error, not a panic.
#[test]
fn micro_batched_prompt_matches_one_pass_bitwise() {
    use cria_model::UBATCH;
    let dir = std::env::temp_dir().join(format!("cria-ubatch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let n = 2 * UBATCH + 37;
    for path in [tiny(), quantized_copy(&dir)] {
        for threads in [1, 2] {
            let b = CpuBackend::new(threads);
            let m = Model::load(&path, LoadOptions::default(), &b).unwrap();
            let prompt = toks(n, 9);
            let mut kv_micro = KvCache::new(&m, n + 1);
            let mut micro = Scratch::new(&m, n, Logits::Last);
            forward(&m, &b, &prompt, 0, &mut kv_micro, &mut micro, Logits::Last).unwrap();
            let mut kv_one = KvCache::new(&m, n + 1);
            let mut one = Scratch::with_seqs(&m, n, 1);
            forward(&m, &b, &prompt, 0, &mut kv_one, &mut one, Logits::Last).unwrap();
            let same = |a: &[f32], b: &[f32]| {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
            };
            assert!(
                same(micro.logits(), one.logits()),
                "{}: logits differ",
                path.display()
            );
            let filled = n * m.config.kv_dim();
            let vals = |r: &cria_kernels::KvRows| {
                let s = r.slice(filled);
                (0..filled).map(|i| s.get(i)).collect::<Vec<f32>>()
            };
            for l in 0..kv_one.k.len() {
                assert!(
                    same(&vals(&kv_micro.k[l]), &vals(&kv_one.k[l]))
                        && same(&vals(&kv_micro.v[l]), &vals(&kv_one.v[l])),
                    "layer {l}: cache differs"
                );
            }
            // Every row's logits from a scratch sized for one micro-batch: refused.
            let err = forward(&m, &b, &prompt, 0, &mut kv_micro, &mut micro, Logits::All);
            assert!(err.is_err(), "an unsplittable call must be refused");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}
