//! The training loop on a mock model (a linear-softmax next-token model with one LoRA pair,
//! its gradients checked against finite differences): step semantics, resume to the same bits,
//! checkpoints that survive a failed write, argument checks on resume.

use cria_model::lora::Target;
use cria_train::adapter_io::{AdapterMeta, WriteBudget};
use cria_train::model::Seq;
use cria_train::optim::{AdamWConfig, Rng, ScheduleKind};
use cria_train::params::{Entry, Half, LoraConfig, LoraParams};
use cria_train::trainer::{
    self, load_checkpoint, read_log, Batching, Event, Finish, RunOptions, TrainConfig, Trainable,
    Trainer,
};
use cria_train::Result;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

const V: usize = 11; // vocabulary
const D: usize = 6; // embedding width
const R: usize = 2; // rank

/// logits(x) = W0 x + s * B (A drop(x)), x = E[token]; CE against the next token.
struct Mock {
    e: Vec<f32>,
    w0: Vec<f32>,
    p: LoraParams,
}

impl Mock {
    fn new(dropout: f32, seed: u64) -> Mock {
        let mut rng = Rng::new(seed);
        let mut r = |n: usize| (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect::<Vec<f32>>();
        let e = r(V * D);
        let w0 = r(V * D);
        let cfg = LoraConfig {
            rank: R,
            alpha: 4.0,
            dropout,
            targets: vec![Target::Q],
            rslora: false,
        };
        let entries = vec![
            Entry {
                layer: 0,
                target: Target::Q,
                half: Half::A,
                rows: R,
                cols: D,
                range: 0..R * D,
            },
            Entry {
                layer: 0,
                target: Target::Q,
                half: Half::B,
                rows: V,
                cols: R,
                range: R * D..R * D + V * R,
            },
        ];
        let n = R * D + V * R;
        let mut p = LoraParams {
            cfg,
            data: vec![0.0; n],
            grads: vec![0.0; n],
            entries,
        };
        // B nonzero so that A gets gradients from the first step.
        let init = r(n);
        p.data
            .copy_from_slice(&init.iter().map(|x| 0.3 * x).collect::<Vec<_>>());
        Mock { e, w0, p }
    }

    /// (loss sum, count); with `grads`, adds d(sum * scale)/d(params).
    fn run(
        &mut self,
        seqs: &[Seq],
        scale: f32,
        mut drop: Option<&mut Rng>,
        grads: bool,
    ) -> (f64, usize) {
        let s = self.p.cfg.scale();
        let keep = 1.0 - self.p.cfg.dropout;
        let (a, b) = self.p.data.split_at(R * D);
        let (a, b) = (a.to_vec(), b.to_vec());
        let (mut sum, mut n) = (0f64, 0usize);
        for seq in seqs {
            for (i, &tok) in seq.tokens.iter().enumerate() {
                let x = &self.e[tok as usize * D..(tok as usize + 1) * D];
                let mut xd = x.to_vec();
                if let Some(rng) = drop.as_deref_mut() {
                    if self.p.cfg.dropout > 0.0 {
                        for v in xd.iter_mut() {
                            *v = if rng.next_f32() < self.p.cfg.dropout {
                                0.0
                            } else {
                                *v / keep
                            };
                        }
                    }
                }
                let t = seq.targets[i];
                if t < 0 {
                    continue;
                }
                let h: Vec<f32> = (0..R)
                    .map(|k| (0..D).map(|j| a[k * D + j] * xd[j]).sum())
                    .collect();
                let z: Vec<f64> = (0..V)
                    .map(|v| {
                        let base: f32 = (0..D).map(|j| self.w0[v * D + j] * x[j]).sum();
                        let lo: f32 = (0..R).map(|k| b[v * R + k] * h[k]).sum();
                        (base + s * lo) as f64
                    })
                    .collect();
                let m = z.iter().cloned().fold(f64::MIN, f64::max);
                let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
                sum += lse - z[t as usize];
                n += 1;
                if grads {
                    let dz: Vec<f32> = (0..V)
                        .map(|v| {
                            let p = (z[v] - lse).exp() - if v == t as usize { 1.0 } else { 0.0 };
                            p as f32 * scale
                        })
                        .collect();
                    let (ga, gb) = self.p.grads.split_at_mut(R * D);
                    let mut dh = [0f32; R];
                    for v in 0..V {
                        for k in 0..R {
                            gb[v * R + k] += s * dz[v] * h[k];
                            dh[k] += s * b[v * R + k] * dz[v];
                        }
                    }
                    for k in 0..R {
                        for j in 0..D {
                            ga[k * D + j] += dh[k] * xd[j];
                        }
                    }
                }
            }
        }
        (sum, n)
    }
}

impl Trainable for Mock {
    fn forward_backward(
        &mut self,
        seqs: &[Seq],
        grad_scale: f32,
        rng: &mut Rng,
    ) -> Result<(f64, usize)> {
        Ok(self.run(seqs, grad_scale, Some(rng), true))
    }
    fn eval(&mut self, seqs: &[Seq]) -> Result<(f64, usize)> {
        Ok(self.run(seqs, 0.0, None, false))
    }
    fn params(&self) -> &LoraParams {
        &self.p
    }
    fn params_mut(&mut self) -> &mut LoraParams {
        &mut self.p
    }
}

fn seq(tokens: &[u32], masked_prefix: usize) -> Seq {
    let labels: Vec<i32> = tokens
        .iter()
        .enumerate()
        .map(|(i, &t)| if i < masked_prefix { -100 } else { t as i32 })
        .collect();
    cria_train::data::to_seq(tokens, &labels)
}

fn data() -> Vec<Seq> {
    vec![
        seq(&[1, 2, 3, 4], 0),
        seq(&[5, 6, 7], 1),
        seq(&[8, 9, 10, 1, 2], 2),
        seq(&[3, 3, 4], 0),
        seq(&[0, 10, 9, 8, 7, 6], 3),
    ]
}

fn cfg() -> TrainConfig {
    TrainConfig {
        epochs: 2,
        max_steps: None,
        lr: 0.05,
        warmup: 0.2,
        schedule: ScheduleKind::Cosine { num_cycles: 0.5 },
        adamw: AdamWConfig {
            weight_decay: 0.01,
            ..AdamWConfig::default()
        },
        max_grad_norm: 0.5,
        batching: Batching::Sequences(1),
        grad_accum: 2,
        seed: 7,
        shuffle: true,
    }
}

fn meta() -> AdapterMeta {
    AdapterMeta {
        base_model: "mock".into(),
        arch: "llama".into(),
        interleaved: false,
        n_heads: 1,
        n_kv_heads: 1,
    }
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cria-trainer-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn opts(out: &Path, save_every: Option<u64>, budget: WriteBudget) -> RunOptions {
    RunOptions {
        out: out.to_path_buf(),
        meta: meta(),
        eval_every: Some(2),
        save_every,
        gguf: false,
        budget,
    }
}

#[test]
fn mock_gradients_match_finite_differences() {
    let mut m = Mock::new(0.0, 1);
    let d = data();
    m.p.zero_grads();
    let (_, n) = m.run(&d, 1.0, None, true);
    assert!(n > 0);
    let g = m.p.grads.clone();
    let mut worst = 0f64;
    for (i, &gi) in g.iter().enumerate() {
        let x = m.p.data[i];
        let h = 1e-3f32;
        m.p.data[i] = x + h;
        let (up, _) = m.run(&d, 0.0, None, false);
        m.p.data[i] = x - h;
        let (dn, _) = m.run(&d, 0.0, None, false);
        m.p.data[i] = x;
        let fd = (up - dn) / (2.0 * h as f64);
        worst = worst.max((fd - gi as f64).abs() / (1.0 + fd.abs()));
    }
    assert!(worst < 2e-3, "mock gradient vs finite differences: {worst}");
}

#[test]
fn total_steps_and_order() {
    let d = data();
    let tr = Trainer::new(Mock::new(0.0, 1), cfg(), &d, &[]).unwrap();
    // 5 micro-batches per epoch, 2 per step: 3 steps an epoch, 2 epochs.
    assert_eq!(tr.total_steps(), 6);
    assert_eq!(tr.warmup_steps(), 2); // ceil(0.2 * 6)
    let a = trainer::epoch_order(5, 7, 0, true);
    let b = trainer::epoch_order(5, 7, 1, true);
    let mut s = a.clone();
    s.sort();
    assert_eq!(s, vec![0, 1, 2, 3, 4]);
    assert_eq!(a, trainer::epoch_order(5, 7, 0, true));
    assert_ne!(a, b, "epochs draw their own orders");
    assert_eq!(trainer::epoch_order(5, 7, 0, false), vec![0, 1, 2, 3, 4]);
    // Token batching: whole sequences up to 8 tokens.
    let mb = trainer::micro_batches(&d, &[0, 1, 2, 3, 4], Batching::Tokens(8));
    assert_eq!(mb, vec![vec![0, 1], vec![2, 3], vec![4]]);
    let mut c = cfg();
    c.max_steps = Some(4);
    assert_eq!(
        Trainer::new(Mock::new(0.0, 1), c, &d, &[])
            .unwrap()
            .total_steps(),
        4
    );
}

/// Accumulating two micro-batches of one sequence equals one micro-batch of both: the step's
/// loss is the token-level mean over the whole step, and the first warmup step has lr 0.
#[test]
fn grad_accum_is_a_token_level_mean() {
    let d = data();
    let mut c1 = cfg();
    c1.shuffle = false;
    c1.max_grad_norm = 0.0;
    c1.max_steps = Some(3);
    let mut c2 = c1.clone();
    c2.batching = Batching::Sequences(2);
    c2.grad_accum = 1;
    let mut t1 = Trainer::new(Mock::new(0.0, 1), c1, &d, &[]).unwrap();
    let mut t2 = Trainer::new(Mock::new(0.0, 1), c2, &d, &[]).unwrap();
    let before = t1.model.p.data.clone();
    for k in 0..3 {
        let (a, b) = (t1.step().unwrap(), t2.step().unwrap());
        assert!((a.loss - b.loss).abs() < 1e-12 * a.loss.abs().max(1.0));
        assert!((a.grad_norm - b.grad_norm).abs() <= 1e-5 * a.grad_norm);
        if k == 0 {
            assert_eq!(a.lr, 0.0, "the first warmup step has lr 0");
            assert_eq!(t1.model.p.data, before, "lr 0 and no decay: nothing moves");
        }
        // The token-level mean: sum of CE / trained targets of the step's sequences.
        let seqs = &d[2 * k..(2 * k + 2).min(d.len())];
        let mut m = Mock::new(0.0, 1);
        m.p.data.copy_from_slice(&before);
        if k == 0 {
            let (s, n) = m.run(seqs, 0.0, None, false);
            assert!((a.loss - s / n as f64).abs() < 1e-12);
        }
    }
    let diff = t1
        .model
        .p
        .data
        .iter()
        .zip(&t2.model.p.data)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        diff < 1e-5,
        "grad-accum 2 x 1 vs 1 x 2: adapters differ by {diff}"
    );
}

fn losses(out: &Path) -> (trainer::Curve, trainer::Curve) {
    read_log(&std::fs::read_to_string(out.join(trainer::LOG_FILE)).unwrap())
}

/// 6 steps straight vs 3, a stop (Ctrl-C's path), and a resume of 3: the same adapter bytes and
/// the same losses, bit for bit (dropout on: the RNG state travels in the checkpoint).
#[test]
fn resume_reaches_the_same_bits() {
    let d = data();
    let ev = vec![seq(&[2, 4, 6, 8], 0)];
    for stop_at in [3u64, 4] {
        let a = tmp(&format!("straight{stop_at}"));
        let mut t = Trainer::new(Mock::new(0.1, 1), cfg(), &d, &ev).unwrap();
        let f = trainer::run(
            &mut t,
            &opts(&a, None, WriteBudget::unlimited()),
            &mut |_| {},
            &AtomicBool::new(false),
        )
        .unwrap();
        assert!(matches!(f, Finish::Done { eval_loss: Some(_) }));

        let b = tmp(&format!("resumed{stop_at}"));
        let stop = AtomicBool::new(false);
        let mut t = Trainer::new(Mock::new(0.1, 1), cfg(), &d, &ev).unwrap();
        let f = trainer::run(
            &mut t,
            &opts(&b, None, WriteBudget::unlimited()),
            &mut |e| {
                if let Event::Step(s) = e {
                    if s.step == stop_at {
                        stop.store(true, Ordering::SeqCst);
                    }
                }
            },
            &stop,
        )
        .unwrap();
        let Finish::Interrupted { checkpoint } = f else {
            panic!("not interrupted: {f:?}");
        };
        assert_eq!(checkpoint, b.join(format!("checkpoint-{stop_at}")));
        // A fresh model (other initial values) takes everything from the checkpoint.
        let mut t = Trainer::new(Mock::new(0.1, 1), cfg(), &d, &ev).unwrap();
        t.model.p.data.fill(0.5);
        load_checkpoint(&mut t, &trainer::resolve_checkpoint(&b).unwrap(), &meta()).unwrap();
        assert_eq!(t.steps_done(), stop_at);
        trainer::run(
            &mut t,
            &opts(&b, None, WriteBudget::unlimited()),
            &mut |_| {},
            &AtomicBool::new(false),
        )
        .unwrap();
        let st = |p: &Path| std::fs::read(p.join("adapter_model.safetensors")).unwrap();
        assert_eq!(
            st(&a),
            st(&b),
            "adapters after 6 steps, stopped at {stop_at}"
        );
        let (la, ea) = losses(&a);
        let (lb, eb) = losses(&b);
        assert_eq!(la.len(), 6);
        assert_eq!(la, lb, "losses, stopped at {stop_at}");
        assert_eq!(ea, eb, "eval losses, stopped at {stop_at}");
        assert!(std::fs::read_to_string(a.join("loss.svg"))
            .unwrap()
            .contains("<polyline"));
        let _ = std::fs::remove_dir_all(&a);
        let _ = std::fs::remove_dir_all(&b);
    }
}

#[test]
fn resume_with_other_arguments_is_an_error() {
    let d = data();
    let out = tmp("otherargs");
    let mut t = Trainer::new(Mock::new(0.0, 1), cfg(), &d, &[]).unwrap();
    t.step().unwrap();
    trainer::save_checkpoint(&t, &opts(&out, None, WriteBudget::unlimited())).unwrap();
    let mut c = cfg();
    c.lr = 0.01;
    let mut t = Trainer::new(Mock::new(0.0, 1), c, &d, &[]).unwrap();
    let e = load_checkpoint(&mut t, &out.join("checkpoint-1"), &meta()).unwrap_err();
    assert!(e.0.contains("lr: checkpoint 0.05, now 0.01"), "{e}");
    assert!(trainer::resolve_checkpoint(&out.join("nothing")).is_err());
    let _ = std::fs::remove_dir_all(&out);
}

/// A checkpoint write that fails (the disk fills: a write budget) is a clear error; the
/// previous checkpoint stays byte for byte, no temp folder is left, and it still resumes.
#[test]
fn failed_checkpoint_write_keeps_the_previous_one() {
    let d = data();
    let out = tmp("diskfull");
    let mut t = Trainer::new(Mock::new(0.1, 1), cfg(), &d, &[]).unwrap();
    t.step().unwrap();
    trainer::save_checkpoint(&t, &opts(&out, None, WriteBudget::unlimited())).unwrap();
    let first = out.join("checkpoint-1");
    let files = [
        "adapter_model.safetensors",
        "adapter_config.json",
        "optimizer.bin",
        "trainer_state.json",
    ];
    let before: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(first.join(f)).unwrap())
        .collect();
    let size: usize = before.iter().map(Vec::len).sum();
    t.step().unwrap();
    for limit in [0, 100, size as u64 - 10] {
        let e = trainer::save_checkpoint(&t, &opts(&out, None, WriteBudget::fail_after(limit)))
            .unwrap_err();
        assert!(e.0.contains("No space left on device"), "{e}");
        assert!(e.0.contains("checkpoint-1 is intact"), "{e}");
        let after: Vec<Vec<u8>> = files
            .iter()
            .map(|f| std::fs::read(first.join(f)).unwrap())
            .collect();
        assert_eq!(before, after);
        assert!(!out.join("checkpoint-2").exists());
        let left: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, vec!["checkpoint-1".to_string()], "temp files left");
    }
    // The intact checkpoint resumes.
    let mut t2 = Trainer::new(Mock::new(0.1, 1), cfg(), &d, &[]).unwrap();
    load_checkpoint(&mut t2, &first, &meta()).unwrap();
    assert_eq!(t2.steps_done(), 1);
    // A good write adds checkpoint-2; two are kept, so a third removes the first.
    trainer::save_checkpoint(&t, &opts(&out, None, WriteBudget::unlimited())).unwrap();
    assert!(out.join("checkpoint-2").is_dir() && first.is_dir());
    t.step().unwrap();
    trainer::save_checkpoint(&t, &opts(&out, None, WriteBudget::unlimited())).unwrap();
    assert!(out.join("checkpoint-3").is_dir() && out.join("checkpoint-2").is_dir());
    assert!(!first.exists());
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn bad_configs_are_errors() {
    let d = data();
    let mut c = cfg();
    c.lr = f64::NAN;
    let e = Trainer::new(Mock::new(0.0, 1), c, &d, &[]).err().unwrap();
    assert!(e.0.contains("--lr"), "{e}");
    let mut c = cfg();
    c.lr = -1.0;
    assert!(Trainer::new(Mock::new(0.0, 1), c, &d, &[]).is_err());
    assert!(Trainer::new(Mock::new(0.0, 1), cfg(), &[], &[]).is_err());
    let masked = vec![seq(&[1, 2, 3], 3)];
    let e = Trainer::new(Mock::new(0.0, 1), cfg(), &masked, &[])
        .err()
        .unwrap();
    assert!(e.0.contains("no trainable target"), "{e}");
    let mut c = cfg();
    c.batching = Batching::Tokens(4);
    let e = Trainer::new(Mock::new(0.0, 1), c, &d, &[]).err().unwrap();
    assert!(e.0.contains("--batch-tokens 4"), "{e}");
}
