//! `FullModel::next_logits` (sample generations in `cria pretrain`) against the training
//! forward: for every prefix of a sequence, the cross-entropy of the next token computed from
//! next_logits equals `eval`'s loss of that prefix with only its last target kept (same layers,
//! same final norm and head); bad input is an error.

use cria_kernels::CpuBackend;
use cria_train::full::FullModel;
use cria_train::loss::IGNORE;
use cria_train::model::{Seq, TrainOptions};
use cria_train::pretrain::config_from_json;

#[test]
fn next_logits_match_the_training_forward() {
    let c = config_from_json(
        &serde_json::json!({"hidden_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 96}),
        50,
        16,
    )
    .unwrap();
    let opts = TrainOptions {
        max_rows: 16,
        max_seq: 16,
        grad_checkpoint: false,
        exact_forward: true,
    };
    let mut m = FullModel::from_config(&c, 0.5, 3, opts).unwrap();
    let cpu = CpuBackend::try_new(2).unwrap();
    let toks: Vec<u32> = (0..16).map(|i| (i * 7 + 3) % 50).collect();
    let full = m.next_logits(&cpu, &toks).unwrap();
    assert_eq!(full.len(), 50);
    for n in [1usize, 2, 7, 15] {
        let logits = m.next_logits(&cpu, &toks[..n]).unwrap();
        let target = toks[n] as usize;
        let max = logits.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
        let lse = max
            + logits
                .iter()
                .map(|&l| (l as f64 - max).exp())
                .sum::<f64>()
                .ln();
        let ce = lse - logits[target] as f64;
        let mut targets = vec![IGNORE; n];
        targets[n - 1] = target as i32;
        let seq = Seq {
            tokens: toks[..n].to_vec(),
            targets,
        };
        let (sum, count) = m.eval(&cpu, &[seq]).unwrap();
        assert_eq!(count, 1);
        assert!(
            (sum - ce).abs() < 1e-4 * ce.abs().max(1.0),
            "prefix {n}: {sum} vs {ce}"
        );
        assert!(logits.iter().all(|l| l.is_finite()));
    }
    // Deterministic, and an error (not a panic) on bad input.
    assert_eq!(m.next_logits(&cpu, &toks).unwrap(), full);
    assert!(m.next_logits(&cpu, &[]).is_err());
    assert!(m.next_logits(&cpu, &[50]).is_err());
    assert!(m.next_logits(&cpu, &[1; 17]).is_err());
}
