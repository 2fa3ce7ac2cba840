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
use cria_train::params::{LoraConfig, LoraParams};
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
        exact_forward: true,
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
    run_from(model, cpu, params(model, c), o, seqs, rng)
}

/// `run` from the adapters `p`.
fn run_from(
    model: &Model,
    cpu: &CpuBackend,
    p: LoraParams,
    o: TrainOptions,
    seqs: &[Seq],
    rng: &Rng,
) -> (f64, usize, Vec<f32>) {
    let mut tm = TrainModel::new(model, cpu, p, o).unwrap();
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

/// QLoRA over SmolLM2's Q4_1 GGUF against LoRA over the same weights dequantized to f32 (the
/// f32 load), from the fixture's adapters (B != 0) and from PEFT's start (B = 0), on every
/// target. With `exact_forward` both forwards are the same math (f32 activations; the quantized
/// blocks decode to the very values the f32 load holds): only summation order differs. The
/// int8-activation forward's figures are printed for the record.
///   cargo test --profile ci -p cria-train --test model_checks -- --nocapture qlora
#[test]
fn qlora_gradients_are_those_over_the_dequantized_weights() {
    let Some(path) = smol_path() else { return };
    let cpu = CpuBackend::new(2);
    let seqs = batch("smol");
    let c = cfg(2, 0.0, all_targets());
    let rng = Rng::new(1);
    let exact = opts(false);
    let int8 = TrainOptions {
        exact_forward: false,
        ..exact
    };
    // (name, adapters) for each start: the fixture's values, PEFT's initialisation.
    let starts = |m: &Model| {
        let mut peft = LoraParams::zeros(c.clone(), &m.config).unwrap();
        peft.init_peft(&mut Rng::new(7)).unwrap();
        [("random adapters", params(m, c.clone())), ("B = 0", peft)]
    };
    // Per start: the exact and the int8 run over the Q4_1 base.
    let quant: Vec<_> = {
        let q = load(&path, false, &cpu);
        let int8: Vec<_> = starts(&q)
            .map(|(_, p)| run_from(&q, &cpu, p, int8, &seqs, &rng))
            .into();
        starts(&q)
            .map(|(name, p)| (name, run_from(&q, &cpu, p, exact, &seqs, &rng)))
            .into_iter()
            .zip(int8)
            .map(|((name, e), i)| (name, e, i))
            .collect()
    };
    let f = load(&path, true, &cpu);
    for ((name, (lq, _, gq), (li, _, gi)), (_, p)) in quant.into_iter().zip(starts(&f)) {
        let ranges: Vec<_> = p.entries.iter().map(|e| e.range.clone()).collect();
        let (lf, _, gf) = run_from(&f, &cpu, p, exact, &seqs, &rng);
        // (all gradients together, the worst matrix) relative to LoRA's.
        let diff = |g: &[f32]| {
            let worst = ranges
                .iter()
                .map(|r| rel(&g[r.clone()], &gf[r.clone()]))
                .fold(0.0, f64::max);
            (rel(g, &gf), worst)
        };
        let ((r, rw), (ri, riw)) = (diff(&gq), diff(&gi));
        println!(
            "{name}: QLoRA (Q4_1) vs LoRA over the dequantized weights: gradients {r:.2e} \
             relative (worst matrix {rw:.2e}), loss {lq:.6} vs {lf:.6}; int8-activation \
             forward: {ri:.2e} (worst matrix {riw:.2e}), loss {li:.6}"
        );
        assert!(gf.iter().any(|&g| g != 0.0), "{name}: no gradient");
        // The same math; only the summation order of the F32 products differs (`matmul`'s
        // lane-split GEMM over the f32 load, one FMA chain per output over the Q4_1 blocks),
        // which SmolLM2 amplifies ~100-fold. Measured 3.0e-5 (worst matrix 1.3e-4) from the
        // fixture's adapters, 6.8e-6 (2.0e-5) from B = 0; the int8 forward: 0.21 (0.59) and
        // 0.50 (0.67). A wrong weight, row or block is O(1).
        assert!(r < 2e-4, "{name}: QLoRA gradients differ by {r:.2e}");
        assert!(
            rw < 1e-3,
            "{name}: QLoRA gradients of a matrix differ by {rw:.2e}"
        );
        assert!((lq - lf).abs() <= 1e-6 * lf, "{name}: loss {lq} vs {lf}");
    }
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

/// A layer matrix quantized to `q` (`Some`) or to `q` and back to f32 (`None` for `q`'s
/// dequantization): the two bases of the comparison below, from the same f32 values.
fn requantized(
    cpu: &CpuBackend,
    w: &cria_kernels::Weight<CpuBackend>,
    q: cria_core::DType,
    dequantize: bool,
) -> cria_kernels::Weight<CpuBackend> {
    use cria_core::tensor::{AlignedBuf, Bytes};
    let t = &w.base;
    let v = t.to_f32_vec().unwrap();
    let mut bytes = AlignedBuf::zeroed(q.bytes_for(v.len()).unwrap());
    cria_core::quantize::quantize_rows(q, &v, bytes.as_mut_slice(), t.cols(), None).unwrap();
    let mut nt =
        cria_core::Tensor::new(t.name.clone(), q, t.ne.clone(), Bytes::owned(bytes)).unwrap();
    if dequantize {
        let d = nt.to_f32_vec().unwrap();
        let mut fb = AlignedBuf::zeroed(d.len() * 4);
        for (o, x) in fb.as_mut_slice().chunks_exact_mut(4).zip(&d) {
            o.copy_from_slice(&x.to_le_bytes());
        }
        nt = cria_core::Tensor::new(
            t.name.clone(),
            cria_core::DType::F32,
            t.ne.clone(),
            Bytes::owned(fb),
        )
        .unwrap();
    }
    cria_kernels::Weight::prepare(cpu, nt).unwrap()
}

/// The QLoRA types: every layer matrix of SmolLM2 (from its f32 dequantization) quantized
/// to Q4_K where its rows hold whole 256-value super-blocks (ffn_down) and to Q8_0 elsewhere, as
/// Q4_K_M falls back; the adapter gradients over that base against those over the same values
/// dequantized to f32.
#[test]
fn qlora_over_q4_k_and_q8_0_is_lora_over_their_dequantization() {
    use cria_core::DType;
    let Some(path) = smol_path() else { return };
    let cpu = CpuBackend::new(2);
    let seqs = batch("smol");
    let c = cfg(2, 0.0, all_targets());
    let rng = Rng::new(1);
    let mut grads = Vec::new();
    for dequantize in [false, true] {
        let mut m = load(&path, true, &cpu);
        for layer in &mut m.weights.layers {
            for w in [
                &mut layer.attn_q,
                &mut layer.attn_k,
                &mut layer.attn_v,
                &mut layer.attn_output,
                &mut layer.ffn_gate,
                &mut layer.ffn_up,
                &mut layer.ffn_down,
            ] {
                let q = if w.cols % 256 == 0 {
                    DType::Q4_K
                } else {
                    DType::Q8_0
                };
                *w = requantized(&cpu, w, q, dequantize);
            }
        }
        let mut peft = LoraParams::zeros(c.clone(), &m.config).unwrap();
        peft.init_peft(&mut Rng::new(7)).unwrap();
        let (l, _, g) = run_from(&m, &cpu, peft, opts(false), &seqs, &rng);
        let (lr, _, gr) = run(&m, &cpu, c.clone(), opts(false), &seqs, &rng);
        grads.push((l, g, lr, gr));
    }
    let (q, f) = (&grads[0], &grads[1]);
    for (name, lq, gq, lf, gf) in [
        ("B = 0", q.0, &q.1, f.0, &f.1),
        ("random adapters", q.2, &q.3, f.2, &f.3),
    ] {
        let r = rel(gq, gf);
        println!(
            "{name}: QLoRA over Q4_K/Q8_0 vs LoRA over their dequantization: gradients {r:.2e} \
             relative, loss {lq:.6} vs {lf:.6}"
        );
        assert!(gf.iter().any(|&g| g != 0.0), "{name}: no gradient");
        assert!(r < 2e-4, "{name}: gradients differ by {r:.2e}");
        assert!((lq - lf).abs() <= 1e-5 * lf, "{name}: loss {lq} vs {lf}");
    }
}
