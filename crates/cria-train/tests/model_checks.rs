//! cria_train::model beyond the PyTorch fixtures: gradient checkpointing gives the same
//! gradients; dropout's gradient against central finite differences of the loss under the same
//! rng state (the masks regenerate from it); QLoRA (a quantized base) against LoRA over the same
//! weights dequantized; bad input answered with errors or well-defined results; the buffers'
//! size as `activation_bytes` predicts.

mod model_util;

use cria_kernels::CpuBackend;
use cria_model::lora::Target;
use cria_model::model::Model;
use cria_train::model::{Seq, TrainModel, TrainOptions};
use cria_train::optim::Rng;
use cria_train::params::LoraConfig;
use model_util::*;

fn cfg(rank: usize, dropout: f32, targets: Vec<Target>) -> LoraConfig {
    LoraConfig {
        rank,
        alpha: 2.0 * rank as f32,
        dropout,
        targets,
        rslora: false,
    }
}

fn opts(grad_checkpoint: bool) -> TrainOptions {
    TrainOptions {
        max_rows: 32,
        max_seq: 16,
        grad_checkpoint,
    }
}

/// (loss, count, gradients) of one forward_backward from `rng`'s state.
fn run(
    model: &Model,
    cpu: &CpuBackend,
    c: LoraConfig,
    o: TrainOptions,
    seqs: &[Seq],
    rng: &Rng,
) -> (f64, usize, Vec<f32>) {
    let mut tm = TrainModel::new(model, cpu, params(model, c), o).unwrap();
    let (loss, n) = tm.forward_backward(seqs, 1.0, &mut rng.clone()).unwrap();
    (loss, n, tm.into_params().grads)
}

#[test]
fn checkpointing_gives_the_same_gradients_with_and_without_dropout() {
    let cpu = CpuBackend::new(2);
    let model = tiny("tiny3", &cpu);
    let seqs = batch("tiny3_chat");
    for p in [0.0, 0.2] {
        let rng = Rng::new(3);
        let c = cfg(4, p, all_targets());
        let (l0, _, g0) = run(&model, &cpu, c.clone(), opts(false), &seqs, &rng);
        let (l1, _, g1) = run(&model, &cpu, c, opts(true), &seqs, &rng);
        let worst = g0
            .iter()
            .zip(&g1)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        println!("dropout {p}: loss {l0} / {l1}, largest gradient difference {worst:e}");
        assert_eq!(l0, l1);
        assert_eq!(g0, g1, "checkpointed gradients differ");
    }
}

#[test]
fn dropout_gradient_matches_finite_differences() {
    let cpu = CpuBackend::new(2);
    let model = tiny("tiny2", &cpu);
    let seqs = batch("tiny2_chat");
    let c = cfg(2, 0.3, vec![Target::Q, Target::V, Target::Up, Target::Down]);
    let rng = Rng::new(17);
    let base = params(&model, c.clone());
    let mut tm = TrainModel::new(&model, &cpu, base, opts(false)).unwrap();
    let (loss, _) = tm.forward_backward(&seqs, 1.0, &mut rng.clone()).unwrap();
    let no_drop = {
        let mut t2 = TrainModel::new(&model, &cpu, params(&model, c.clone()), opts(false)).unwrap();
        t2.eval(&seqs).unwrap().0
    };
    println!("loss with dropout {loss}, without {no_drop}");
    assert!((loss - no_drop).abs() > 1e-3, "dropout changed nothing");
    let grads = tm.params().grads.clone();
    // The largest few gradients of each matrix kind (A and B of several targets and layers).
    let mut idx = Vec::new();
    for e in tm.params().entries.clone() {
        let r = e.range.clone();
        let best = r
            .clone()
            .max_by(|&i, &j| grads[i].abs().total_cmp(&grads[j].abs()))
            .unwrap();
        idx.push(best);
    }
    let scale = idx.iter().fold(0f32, |m, &i| m.max(grads[i].abs())) as f64;
    let mut worst = 0f64;
    for &i in &idx {
        let x = tm.params().data[i];
        let eps = 1e-2f32;
        let mut f = |v: f32| {
            tm.params_mut().data[i] = v;
            tm.forward_backward(&seqs, 1.0, &mut rng.clone()).unwrap().0
        };
        let (hi, lo) = (x + eps, x - eps);
        let fd = (f(hi) - f(lo)) / (hi - lo) as f64;
        f(x);
        let err = (fd - grads[i] as f64).abs() / scale;
        worst = worst.max(err);
        assert!(
            err < 2e-3,
            "value {i}: finite difference {fd} vs {}",
            grads[i]
        );
    }
    println!(
        "{} values checked, worst error {worst:.2e} of max |grad| {scale:.3}",
        idx.len()
    );
}

#[test]
fn qlora_gradients_are_those_over_the_dequantized_weights() {
    let Some(path) = smol_path() else { return };
    let cpu = CpuBackend::new(2);
    let seqs = batch("smol");
    let c = cfg(2, 0.0, vec![Target::Q, Target::V]);
    let rng = Rng::new(1);
    let o = opts(false);
    let (gq, gf) = {
        let q = load(&path, false, &cpu);
        let (lq, _, gq) = run(&q, &cpu, c.clone(), o, &seqs, &rng);
        drop(q);
        let f = load(&path, true, &cpu);
        let (lf, _, gf) = run(&f, &cpu, c, o, &seqs, &rng);
        println!("loss over Q4_1 {lq:.5}, over its f32 dequantization {lf:.5}");
        assert!((lq - lf).abs() / lf < 1e-2);
        (gq, gf)
    };
    let r = rel(&gq, &gf);
    println!("QLoRA (Q4_1) vs LoRA over the dequantized weights: gradient {r:.2e} relative");
    // The quantized forward kernels round activations to 8 bits per block: each product moves by
    // about 3.5e-3 relative (measured on SmolLM2's Q4_1 q/down/head; `matmul_dx` through the
    // quantized weight itself is exact, 0 difference). SmolLM2's adapter gradients amplify a
    // perturbation of the forward about 100-fold over its 30 layers (f32 rounding, ~1e-6 per
    // product, gives 1e-4 against f64 PyTorch), so the gradients differ by about 0.25 (measured
    // 2.48e-1, loss 4.8e-3); 0.5 still catches a wrong weight or row order (O(1) and above).
    assert!(r < 0.5, "QLoRA gradients differ by {r:.2e}");
}

#[test]
fn bad_input_is_an_error_or_well_defined() {
    let cpu = CpuBackend::new(2);
    let model = tiny("tiny2", &cpu);
    let c = cfg(2, 0.0, all_targets());
    let mut tm = TrainModel::new(&model, &cpu, params(&model, c.clone()), opts(false)).unwrap();
    let mut rng = Rng::new(1);
    let seq = |n: usize, tok: u32, tgt: i32| Seq {
        tokens: vec![tok; n],
        targets: vec![tgt; n],
    };
    let mut fb = |s: &[Seq]| tm.forward_backward(s, 1.0, &mut rng);
    let cases: Vec<(&str, Vec<Seq>)> = vec![
        ("longer than max_seq", vec![seq(17, 1, 2)]),
        (
            "more rows than max_rows",
            vec![seq(16, 1, 2), seq(16, 1, 2), seq(1, 1, 2)],
        ),
        ("token >= vocab", vec![seq(4, 96, 2)]),
        ("target >= vocab", vec![seq(4, 1, 96)]),
        ("negative target", vec![seq(4, 1, -5)]),
        (
            "lengths differ",
            vec![Seq {
                tokens: vec![1, 2],
                targets: vec![3],
            }],
        ),
    ];
    for (what, s) in cases {
        let e = fb(&s).expect_err(what);
        println!("{what}: {e}");
    }
    assert_eq!(fb(&[]).unwrap(), (0.0, 0), "empty batch");
    assert_eq!(fb(&[seq(0, 1, 2)]).unwrap(), (0.0, 0), "empty sequence");
    assert_eq!(fb(&[seq(5, 1, -100)]).unwrap(), (0.0, 0), "nothing trained");
    assert!(tm.params().grads.iter().all(|&g| g == 0.0));
    assert!(tm
        .forward_backward(&[seq(4, 1, 2)], f32::NAN, &mut rng)
        .is_err());
    assert!(
        tm.eval(&[seq(4, 1, 2)]).unwrap().0.is_finite(),
        "usable after errors"
    );
    // Buffers for a context beyond the model's, or adapters of another shape.
    let o = TrainOptions {
        max_seq: 65,
        ..opts(false)
    };
    assert!(TrainModel::new(&model, &cpu, params(&model, c.clone()), o).is_err());
    let other = tiny("tiny3", &cpu);
    assert!(TrainModel::new(&model, &cpu, params(&other, c), opts(false)).is_err());
}

#[test]
fn activation_bytes_is_what_new_allocates() {
    let cpu = CpuBackend::new(1);
    let model = tiny("tiny3", &cpu);
    for (p, ckpt) in [(0.0, false), (0.0, true), (0.1, false), (0.1, true)] {
        let c = cfg(4, p, vec![Target::Q, Target::K, Target::Down]);
        let o = opts(ckpt);
        let want = TrainModel::activation_bytes(&model.config, &c, &o);
        let tm = TrainModel::new(&model, &cpu, params(&model, c), o).unwrap();
        println!("dropout {p}, checkpointing {ckpt}: {want} bytes");
        assert_eq!(tm.buffer_bytes(), want);
    }
}
