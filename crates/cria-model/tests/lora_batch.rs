//! Per-sequence LoRA adapters in one batch: a sequence's logits do not depend on which adapters
//! its neighbours run with (same bits as alone), an adapter at scale 0 gives the base's bits, and
//! an adapter does move the logits. What lets the server batch requests with different adapters.

use cria_kernels::CpuBackend;
use cria_model::{
    forward_batch, ActiveLora, KvCache, LoadOptions, Logits, Lora, Model, Scratch, SeqStep,
};
use std::sync::Arc;

mod common;
use common::{adapter, quantized_copy, tiny};

fn toks(n: usize, seed: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (seed * 13 + i * 29 + 3) % 500)
        .collect()
}

#[test]
fn each_sequence_gets_its_own_adapters_bitwise() {
    let dir = std::env::temp_dir().join(format!("cria-lora-batch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for path in [tiny(), quantized_copy(&dir)] {
        let b = CpuBackend::new(2);
        let m = Model::load(&path, LoadOptions::default(), &b).unwrap();
        let la = Arc::new(Lora::build("a", adapter(&m, 4, 1), &m, &b).unwrap());
        let lb = Arc::new(Lora::build("b", adapter(&m, 3, 2), &m, &b).unwrap());
        let on = |l: &Arc<Lora>, scale| ActiveLora {
            lora: l.clone(),
            scale,
        };
        let sets: Vec<Vec<ActiveLora>> = vec![
            vec![],
            vec![on(&la, 1.0)],
            vec![on(&lb, 0.7)],
            vec![on(&la, 0.5), on(&lb, 1.0)],
            vec![on(&la, 0.0)],
        ];
        let prompts: Vec<Vec<u32>> = (0..sets.len()).map(|i| toks(6 + i, i as u32)).collect();
        // Alone: every position's logits.
        let alone: Vec<Vec<f32>> = sets
            .iter()
            .zip(&prompts)
            .map(|(set, p)| {
                let mut kv = KvCache::new(&m, 32);
                let mut s = Scratch::new(&m, 16, Logits::All);
                let mut step = [SeqStep {
                    tokens: p,
                    pos: 0,
                    kv: &mut kv,
                    lora: set,
                }];
                forward_batch(&m, &b, &mut step, &mut s, Logits::All).unwrap();
                s.logits().to_vec()
            })
            .collect();
        // Together in one call.
        let mut kvs: Vec<KvCache> = sets.iter().map(|_| KvCache::new(&m, 32)).collect();
        let mut s = Scratch::new(&m, 64, Logits::All);
        let mut steps: Vec<SeqStep> = kvs
            .iter_mut()
            .zip(sets.iter().zip(&prompts))
            .map(|(kv, (set, p))| SeqStep {
                tokens: p,
                pos: 0,
                kv,
                lora: set,
            })
            .collect();
        forward_batch(&m, &b, &mut steps, &mut s, Logits::All).unwrap();
        let all = s.logits();
        let mut at = 0;
        for (i, a) in alone.iter().enumerate() {
            assert_eq!(
                &all[at..at + a.len()],
                &a[..],
                "{}: sequence {i} batched differs from alone",
                path.display()
            );
            at += a.len();
        }
        // Scale 0 is the base, bit for bit; an adapter moves the logits.
        let base = |p: &[u32]| {
            let mut kv = KvCache::new(&m, 32);
            let mut s = Scratch::new(&m, 16, Logits::All);
            let mut step = [SeqStep {
                tokens: p,
                pos: 0,
                kv: &mut kv,
                lora: &[],
            }];
            forward_batch(&m, &b, &mut step, &mut s, Logits::All).unwrap();
            s.logits().to_vec()
        };
        assert_eq!(
            base(&prompts[4]),
            alone[4],
            "scale 0 must give the base's logits"
        );
        let moved = base(&prompts[1])
            .iter()
            .zip(&alone[1])
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            moved > 1e-2,
            "the adapter changed the logits by only {moved}"
        );
    }
}
