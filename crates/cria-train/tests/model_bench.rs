//! Speed of cria_train::model on SmolLM2-135M (not a test: `--ignored` runs it and prints
//! tokens/s of forward_backward and the share of time per op, for the Q4_1 GGUF and its f32
//! dequantization, batches of 1 x 512 and 4 x 128 rows, 2 threads, LoRA r 8 on all 7 targets).
//!   cargo test --profile ci -p cria-train --test model_bench -- --ignored --nocapture

mod model_util;

use cria_kernels::CpuBackend;
use cria_train::model::{Seq, TrainModel, TrainOptions};
use cria_train::optim::Rng;
use cria_train::params::{LoraConfig, LoraParams};
use model_util::*;
use std::time::Instant;

#[test]
#[ignore]
fn smollm2_forward_backward_speed() {
    let Some(path) = smol_path() else { return };
    let cpu = CpuBackend::new(2);
    for f32 in [false, true] {
        let model = load(&path, f32, &cpu);
        for (n, len) in [(1usize, 512usize), (4, 128)] {
            let cfg = LoraConfig {
                rank: 8,
                alpha: 16.0,
                dropout: 0.0,
                targets: all_targets(),
                rslora: false,
            };
            let mut rng = Rng::new(5);
            let mut p = LoraParams::zeros(cfg, &model.config).unwrap();
            p.init_peft(&mut rng).unwrap();
            let opts = TrainOptions {
                max_rows: n * len,
                max_seq: len,
                grad_checkpoint: false,
                exact_forward: true,
            };
            let mut tm = TrainModel::new(&model, &cpu, p, opts).unwrap();
            let seqs: Vec<Seq> = (0..n)
                .map(|s| {
                    let tokens: Vec<u32> = (0..len)
                        .map(|i| ((i * 7919 + s * 104729) % 49152) as u32)
                        .collect();
                    let mut targets: Vec<i32> = tokens[1..].iter().map(|&v| v as i32).collect();
                    targets.push(-100);
                    Seq { tokens, targets }
                })
                .collect();
            let t0 = Instant::now();
            tm.forward_backward(&seqs, 1.0, &mut rng).unwrap();
            let secs = t0.elapsed().as_secs_f64();
            let tt = tm.times();
            let total = tt.total.as_secs_f64();
            let pct = |d: std::time::Duration| 100.0 * d.as_secs_f64() / total;
            println!(
                "{} {n} x {len}: {:.1} tokens/s ({secs:.2} s); matmul fwd {:.0}%, matmul_dx {:.0}%, \
                 adapters {:.0}%, attention {:.0}%, head+CE {:.0}%, elementwise {:.0}%",
                if f32 { "f32 " } else { "Q4_1" },
                (n * len) as f64 / secs,
                pct(tt.matmul_fwd),
                pct(tt.matmul_dx),
                pct(tt.adapters),
                pct(tt.attention),
                pct(tt.head),
                pct(tt.elementwise),
            );
        }
    }
}
