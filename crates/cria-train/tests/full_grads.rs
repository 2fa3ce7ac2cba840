//! cria_train::full (every weight trained) against PyTorch autograd in float64 (fixtures from
//! tests/gen_full_fixture.py over the committed tiny models tests/fixtures/tiny-llama2 and
//! tiny-llama31), finite differences, checkpointing, the HF folder round trip, the init and
//! AdamW with weight-decay groups.
//!
//! Gradient error of a tensor: max |cria - torch| / max |torch| (relative to the tensor's scale).

use cria_core::safetensors::SafetensorsModel;
use cria_kernels::CpuBackend;
use cria_model::config::Config;
use cria_model::model::{LoadOptions, Model};
use cria_train::full::{FullModel, Kind};
use cria_train::model::{Seq, TrainOptions};
use cria_train::optim::{clip_grad_norm, AdamW, AdamWConfig};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/full")
        .join(name)
}

fn opts(grad_checkpoint: bool) -> TrainOptions {
    TrainOptions {
        max_rows: 64,
        max_seq: 32,
        grad_checkpoint,
        exact_forward: true,
    }
}

struct Fix {
    seqs: Vec<Seq>,
    loss_sum: f64,
    count: usize,
}

fn read_fix(name: &str) -> Fix {
    let text = std::fs::read_to_string(fixture(&format!("{name}.json"))).unwrap();
    let j: serde_json::Value = serde_json::from_str(&text).unwrap();
    let list = |k: &str| -> Vec<Vec<i64>> { serde_json::from_value(j[k].clone()).unwrap() };
    let seqs = list("tokens")
        .into_iter()
        .zip(list("targets"))
        .map(|(t, g)| Seq {
            tokens: t.into_iter().map(|x| x as u32).collect(),
            targets: g.into_iter().map(|x| x as i32).collect(),
        })
        .collect();
    Fix {
        seqs,
        loss_sum: j["loss_sum"].as_f64().unwrap(),
        count: j["count"].as_u64().unwrap() as usize,
    }
}

fn load(name: &str, cpu: &CpuBackend, grad_checkpoint: bool) -> FullModel {
    let m = Model::load(
        &root().join("tests/fixtures").join(name),
        LoadOptions { f32: true },
        cpu,
    )
    .unwrap();
    FullModel::from_model(&m, opts(grad_checkpoint)).unwrap()
}

/// max |a - b| / max |b|.
fn rel(a: &[f32], b: &[f32]) -> f64 {
    let diff = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).abs())
        .fold(0.0, f64::max);
    let scale = b.iter().map(|&y| (y as f64).abs()).fold(0.0, f64::max);
    diff / scale.max(1e-30)
}

fn against_torch(name: &str, tied: bool) {
    let cpu = CpuBackend::new(2);
    let fix = read_fix(name);
    let mut m = load(name, &cpu, false);
    assert_eq!(m.params().tied, tied);
    let (sum, count) = m
        .forward_backward(&cpu, &fix.seqs, 1.0 / fix.count as f32)
        .unwrap();
    assert_eq!(count, fix.count);
    let loss_err = (sum - fix.loss_sum).abs() / fix.loss_sum;
    println!(
        "{name}: loss sum {sum} (torch {}), rel {loss_err:.2e}",
        fix.loss_sum
    );
    assert!(loss_err < 1e-6, "{name}: loss rel error {loss_err:.2e}");
    let st = SafetensorsModel::open_file(&fixture(&format!("{name}_grads.safetensors"))).unwrap();
    let p = m.params();
    let mut worst = (0.0, String::new());
    for e in &p.entries {
        let want = st.get(&e.name).unwrap().to_f32_vec().unwrap();
        let got = &p.grads[e.range.clone()];
        assert_eq!(got.len(), want.len(), "{}", e.name);
        let r = rel(got, &want);
        assert!(r < 1e-4, "{name}: {} gradient rel error {r:.2e}", e.name);
        if r > worst.0 {
            worst = (r, e.name.clone());
        }
    }
    println!(
        "{name}: {} gradients within 1e-4 of torch; worst {:.2e} ({})",
        p.entries.len(),
        worst.0,
        worst.1
    );
}

#[test]
fn grads_match_torch_tiny_llama2_untied_mha() {
    against_torch("tiny-llama2", false);
}

#[test]
fn grads_match_torch_tiny_llama31_tied_gqa_llama3_rope() {
    against_torch("tiny-llama31", true);
}

#[test]
fn checkpointing_gives_the_same_gradients() {
    let cpu = CpuBackend::new(2);
    let fix = read_fix("tiny-llama2");
    let mut a = load("tiny-llama2", &cpu, false);
    let mut b = load("tiny-llama2", &cpu, true);
    let ra = a.forward_backward(&cpu, &fix.seqs, 0.5).unwrap();
    let rb = b.forward_backward(&cpu, &fix.seqs, 0.5).unwrap();
    assert_eq!(ra, rb);
    assert_eq!(a.params().grads, b.params().grads);
}

/// Central differences of the mean loss on the largest-gradient entry of a few tensors.
#[test]
fn finite_differences_on_a_few_entries() {
    let cpu = CpuBackend::new(2);
    let fix = read_fix("tiny-llama31");
    let mut m = load("tiny-llama31", &cpu, false);
    let n = fix.count as f64;
    m.forward_backward(&cpu, &fix.seqs, 1.0 / n as f32).unwrap();
    let names = [
        "model.embed_tokens.weight",
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.self_attn.k_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
        "model.norm.weight",
    ];
    for name in names {
        let e = m.params().find(name).unwrap().clone();
        let g = &m.params().grads[e.range.clone()];
        let (j, &analytic) = g
            .iter()
            .enumerate()
            .max_by(|x, y| x.1.abs().total_cmp(&y.1.abs()))
            .unwrap();
        let i = e.range.start + j;
        let x0 = m.params().data[i];
        let h = 1e-2f32;
        let at = |v: f32, m: &mut FullModel| {
            m.params_mut().data[i] = v;
            m.eval(&cpu, &fix.seqs).unwrap().0 / n
        };
        let (lp, lm) = (at(x0 + h, &mut m), at(x0 - h, &mut m));
        at(x0, &mut m);
        let fd = (lp - lm) / (2.0 * h as f64);
        let err = (fd - analytic as f64).abs() / (analytic as f64).abs();
        println!("{name}[{j}]: analytic {analytic:.6e}, fd {fd:.6e}, rel {err:.1e}");
        assert!(err < 2e-3, "{name}[{j}]: analytic {analytic} vs fd {fd}");
    }
}

fn small_config(tied: bool) -> Config {
    Config::from_hf_json(
        &serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
            "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 100,
            "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "tie_word_embeddings": tied,
        })
        .to_string(),
    )
    .unwrap()
}

#[test]
fn seeded_init_is_transformers_llama_init() {
    let c = small_config(false);
    let a = FullModel::from_config(&c, 0.02, 7, opts(false)).unwrap();
    let b = FullModel::from_config(&c, 0.02, 7, opts(false)).unwrap();
    assert_eq!(a.params().data, b.params().data, "same seed, same weights");
    let p = a.params();
    // embedding + head 100x32, final norm; per layer q 32x32, k, v 16x32, o 32x32, gate and
    // up 64x32, down 32x64, two norms.
    let layer = 2 * 32 * 32 + 2 * 16 * 32 + 3 * 64 * 32 + 2 * 32;
    assert_eq!(p.n_params(), 2 * 100 * 32 + 32 + 2 * layer);
    for e in &p.entries {
        let v = &p.data[e.range.clone()];
        if e.kind == Kind::Norm {
            assert!(v.iter().all(|&x| x == 1.0), "{}", e.name);
        } else {
            let n = v.len() as f64;
            let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
            let sd = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
            assert!(
                mean.abs() < 3e-3 && (sd - 0.02).abs() < 2e-3,
                "{}: {mean} {sd}",
                e.name
            );
        }
    }
}

/// save_hf then cria's own HF loader gives the same weights and losses (tied and untied, and
/// llama3 RoPE); `CRIA_FULL_HF_OUT=dir` keeps the folders for tests/check_full_hf.py.
#[test]
fn save_hf_round_trip() {
    let cpu = CpuBackend::new(2);
    let fix = read_fix("tiny-llama31");
    let keep = std::env::var_os("CRIA_FULL_HF_OUT").map(PathBuf::from);
    let tmp = std::env::temp_dir().join(format!("cria_full_hf_{}", std::process::id()));
    let base = keep.clone().unwrap_or(tmp.clone());
    let models = [
        (
            "init_untied",
            FullModel::from_config(&small_config(false), 0.02, 3, opts(false)).unwrap(),
        ),
        (
            "init_tied",
            FullModel::from_config(&small_config(true), 0.02, 4, opts(false)).unwrap(),
        ),
        ("tiny-llama31", load("tiny-llama31", &cpu, false)),
    ];
    for (name, mut m) in models {
        let dir = base.join(name);
        m.save_hf(&dir).unwrap();
        let back = Model::load(&dir, LoadOptions { f32: true }, &cpu).unwrap();
        let mut r = FullModel::from_model(&back, opts(false)).unwrap();
        assert_eq!(r.params().entries, m.params().entries, "{name}");
        assert_eq!(r.params().data, m.params().data, "{name}");
        let seqs: Vec<Seq> = fix
            .seqs
            .iter()
            .map(|s| Seq {
                tokens: s.tokens.iter().map(|&t| t % 100).collect(),
                targets: s
                    .targets
                    .iter()
                    .map(|&g| if g < 0 { g } else { g % 100 })
                    .collect(),
            })
            .collect();
        assert_eq!(
            m.eval(&cpu, &seqs).unwrap(),
            r.eval(&cpu, &seqs).unwrap(),
            "{name}"
        );
    }
    if keep.is_none() {
        std::fs::remove_dir_all(&tmp).ok();
    }
}

/// A GGUF model (Q/K rows in llama.cpp's interleaved order) comes out of save_hf in Hugging
/// Face's order: the same tensors as the committed HF folder of the same model.
#[test]
fn save_hf_from_gguf_undoes_the_row_permutation() {
    let cpu = CpuBackend::new(2);
    let dir = root().join("tests/fixtures/tiny-llama2");
    let g = Model::load(&dir.join("model.gguf"), LoadOptions { f32: true }, &cpu).unwrap();
    assert!(g.config.rope_interleaved);
    let m = FullModel::from_model(&g, opts(false)).unwrap();
    let out = std::env::temp_dir().join(format!("cria_full_gguf_{}", std::process::id()));
    m.save_hf(&out).unwrap();
    let got = SafetensorsModel::open_file(&out.join("model.safetensors")).unwrap();
    let want = SafetensorsModel::open_file(&dir.join("model.safetensors")).unwrap();
    for e in &m.params().entries {
        let (a, b) = (got.get(&e.name).unwrap(), want.get(&e.name).unwrap());
        let r = rel(&a.to_f32_vec().unwrap(), &b.to_f32_vec().unwrap());
        assert!(r < 1e-3, "{}: rel {r:.2e}", e.name);
    }
    std::fs::remove_dir_all(&out).ok();
}

/// AdamW over the flat parameters in two groups (weight decay on `decay_flags`, none on the
/// rest), as a trainer would run it; optional clipping of the global gradient norm first.
struct Groups {
    flags: Vec<bool>,
    decay: AdamW,
    plain: AdamW,
}

impl Groups {
    fn new(m: &FullModel, wd: f64) -> Groups {
        let flags = m.params().decay_flags();
        let lens = m.params().lens();
        let pick = |want: bool| -> Vec<usize> {
            lens.iter()
                .zip(&flags)
                .filter(|(_, &f)| f == want)
                .map(|(&l, _)| l)
                .collect()
        };
        let cfg = |weight_decay| AdamWConfig {
            weight_decay,
            ..Default::default()
        };
        Groups {
            decay: AdamW::new(cfg(wd), &pick(true)).unwrap(),
            plain: AdamW::new(cfg(0.0), &pick(false)).unwrap(),
            flags,
        }
    }

    fn step(&mut self, m: &mut FullModel, lr: f64, clip: Option<f64>) {
        let (ps, mut gs) = m.params_mut().split_mut();
        if let Some(c) = clip {
            clip_grad_norm(&mut gs, c).unwrap();
        }
        let (mut pd, mut pn, mut gd, mut gn) = (vec![], vec![], vec![], vec![]);
        for ((p, g), &f) in ps.into_iter().zip(gs).zip(&self.flags) {
            if f {
                pd.push(p);
                gd.push(&*g);
            } else {
                pn.push(p);
                gn.push(&*g);
            }
        }
        self.decay.step(lr, &mut pd, &gd).unwrap();
        self.plain.step(lr, &mut pn, &gn).unwrap();
    }
}

/// 12 AdamW steps (clipping, decay groups) from the committed weights over three batches give
/// the losses of torch.optim.AdamW with the same parameter groups (float64).
fn adamw_against_torch(name: &str) {
    let cpu = CpuBackend::new(2);
    let fix = read_fix(name);
    let text = std::fs::read_to_string(fixture(&format!("{name}.json"))).unwrap();
    let j: serde_json::Value = serde_json::from_str(&text).unwrap();
    let a = &j["adamw"];
    let mut batches = vec![fix.seqs.clone()];
    for b in a["batches"].as_array().unwrap() {
        let (t, g): (Vec<Vec<u32>>, Vec<Vec<i32>>) = serde_json::from_value(b.clone()).unwrap();
        let seqs = t
            .into_iter()
            .zip(g)
            .map(|(tokens, targets)| Seq { tokens, targets });
        batches.push(seqs.collect());
    }
    let want: Vec<f64> = serde_json::from_value(a["losses"].clone()).unwrap();
    let lr = a["lr"].as_f64().unwrap();
    let clip = a["max_grad_norm"].as_f64().unwrap();
    let mut m = load(name, &cpu, false);
    let mut opt = Groups::new(&m, a["weight_decay"].as_f64().unwrap());
    let mut worst = 0f64;
    for (step, &w) in want.iter().enumerate() {
        let seqs = &batches[step % batches.len()];
        let n: usize = seqs
            .iter()
            .map(|s| s.targets.iter().filter(|&&g| g >= 0).count())
            .sum();
        m.params_mut().zero_grads();
        let (sum, count) = m.forward_backward(&cpu, seqs, 1.0 / n as f32).unwrap();
        assert_eq!(count, n);
        let loss = sum / n as f64;
        let r = (loss - w).abs() / w;
        assert!(
            r < 1e-4,
            "{name} step {step}: loss {loss} vs torch {w} (rel {r:.2e})"
        );
        worst = worst.max(r);
        opt.step(&mut m, lr, Some(clip));
    }
    println!(
        "{name}: {} AdamW steps, loss {:.4} -> {:.4}, worst rel vs torch {worst:.2e}",
        want.len(),
        want[0],
        want[want.len() - 1]
    );
}

#[test]
fn adamw_matches_torch_tiny_llama2() {
    adamw_against_torch("tiny-llama2");
}

#[test]
fn adamw_matches_torch_tiny_llama31() {
    adamw_against_torch("tiny-llama31");
}

#[test]
fn adamw_with_decay_groups() {
    let cpu = CpuBackend::new(2);
    let fix = read_fix("tiny-llama2");
    let mut m = load("tiny-llama2", &cpu, false);
    let flags = m.params().decay_flags();
    for (e, &d) in m.params().entries.iter().zip(&flags) {
        assert_eq!(d, matches!(e.kind, Kind::Matrix | Kind::Head), "{}", e.name);
    }
    assert!(
        !flags[0] && flags[flags.len() - 1],
        "embedding no, untied head yes"
    );
    let wd = 0.1;
    let mut opt = Groups::new(&m, wd);
    let mut step = |m: &mut FullModel, lr: f64| opt.step(m, lr, None);
    // Zero gradients: only the decayed group moves, by exactly the decay factor.
    let before = m.params().data.clone();
    let lr = 1e-2;
    step(&mut m, lr);
    let f = (1.0 - lr * wd) as f32;
    for (e, &d) in m.params().entries.iter().zip(&flags) {
        let (a, b) = (&m.params().data[e.range.clone()], &before[e.range.clone()]);
        let want: Vec<f32> = b.iter().map(|&x| if d { x * f } else { x }).collect();
        assert_eq!(a, &want[..], "{}", e.name);
    }
    // Training on one batch lowers its loss.
    let n = fix.count as f32;
    let first = m.eval(&cpu, &fix.seqs).unwrap().0;
    for _ in 0..5 {
        m.params_mut().zero_grads();
        m.forward_backward(&cpu, &fix.seqs, 1.0 / n).unwrap();
        step(&mut m, 3e-3);
    }
    let last = m.eval(&cpu, &fix.seqs).unwrap().0;
    println!(
        "5 AdamW steps: loss {:.4} -> {:.4}",
        first / n as f64,
        last / n as f64
    );
    assert!(last < 0.8 * first, "{first} -> {last}");
}

/// The memory prediction is what `new` allocates, and stays so after a step (no growth).
#[test]
fn activation_bytes_is_what_new_allocates() {
    let cpu = CpuBackend::new(2);
    let fix = read_fix("tiny-llama31");
    for ckpt in [false, true] {
        let mut m = load("tiny-llama31", &cpu, ckpt);
        let want = FullModel::activation_bytes(&m.config, &opts(ckpt));
        assert_eq!(m.buffer_bytes(), want, "checkpointing {ckpt}");
        m.forward_backward(&cpu, &fix.seqs, 1.0).unwrap();
        assert_eq!(m.buffer_bytes(), want, "checkpointing {ckpt}, after a step");
    }
}

#[test]
fn bad_input_is_an_error() {
    let cpu = CpuBackend::new(2);
    let c = small_config(false);
    let mut m = FullModel::from_config(&c, 0.02, 1, opts(false)).unwrap();
    let bad = |tokens: Vec<u32>, targets: Vec<i32>| vec![Seq { tokens, targets }];
    assert!(m
        .forward_backward(&cpu, &bad(vec![1, 100], vec![2, 3]), 1.0)
        .is_err());
    assert!(m
        .forward_backward(&cpu, &bad(vec![1, 2], vec![2, 100]), 1.0)
        .is_err());
    assert!(m
        .forward_backward(&cpu, &bad(vec![1, 2], vec![2]), 1.0)
        .is_err());
    assert!(m
        .forward_backward(&cpu, &bad(vec![1; 33], vec![2; 33]), 1.0)
        .is_err());
    assert!(m
        .forward_backward(&cpu, &bad(vec![1], vec![2]), f32::NAN)
        .is_err());
    assert!(
        m.params().grads.iter().all(|&g| g == 0.0),
        "nothing accumulated"
    );
    // Parameters of another shape.
    let other = m.params().clone();
    let c2 = small_config(true);
    let rope = m.rope.clone();
    assert!(FullModel::new(c2, rope, other, opts(false)).is_err());
    let mut c3 = small_config(false);
    c3.n_heads = 5;
    assert!(FullModel::from_config(&c3, 0.02, 1, opts(false)).is_err());
}

/// Forward+backward tokens/s on a ~20M-parameter config (2 threads); not a CI test:
/// `cargo test --profile ci -p cria-train --test full_grads -- --ignored --nocapture bench`.
#[test]
#[ignore]
fn bench_20m() {
    let cpu = CpuBackend::new(2);
    let c = Config::from_hf_json(
        &serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": 384, "intermediate_size": 1024, "num_attention_heads": 6,
            "num_key_value_heads": 6, "num_hidden_layers": 8, "vocab_size": 8192,
            "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "tie_word_embeddings": true,
        })
        .to_string(),
    )
    .unwrap();
    let (seq, nseq) = (256usize, 2usize);
    let o = TrainOptions {
        max_rows: seq * nseq,
        max_seq: seq,
        grad_checkpoint: false,
        exact_forward: true,
    };
    let mut m = FullModel::from_config(&c, 0.02, 1, o).unwrap();
    println!(
        "buffers {:.1} MiB, parameters + gradients + AdamW moments {:.1} MiB",
        FullModel::activation_bytes(&c, &o) as f64 / (1 << 20) as f64,
        (16 * m.params().n_params()) as f64 / (1 << 20) as f64
    );
    let seqs: Vec<Seq> = (0..nseq)
        .map(|s| Seq {
            tokens: (0..seq).map(|i| ((i * 31 + s * 7) % 8192) as u32).collect(),
            targets: (0..seq).map(|i| ((i * 17 + s) % 8192) as i32).collect(),
        })
        .collect();
    m.forward_backward(&cpu, &seqs, 1e-3).unwrap();
    let reps = 3;
    let t0 = std::time::Instant::now();
    for _ in 0..reps {
        m.forward_backward(&cpu, &seqs, 1e-3).unwrap();
    }
    let s = t0.elapsed().as_secs_f64() / reps as f64;
    let t1 = std::time::Instant::now();
    for _ in 0..reps {
        m.eval(&cpu, &seqs).unwrap();
    }
    let fwd = t1.elapsed().as_secs_f64() / reps as f64;
    println!(
        "forward alone {fwd:.3} s/step ({:.0}% of forward+backward)",
        100.0 * fwd / s
    );
    let n = m.params().n_params() as f64;
    let toks = (seq * nseq) as f64;
    println!(
        "{:.1}M params, {} tokens/step: {:.3} s/step, {:.0} tokens/s, {:.1} GFLOP/s (6N per token)",
        n / 1e6,
        toks,
        s,
        toks / s,
        6.0 * n * toks / s / 1e9
    );
}
