//! AdamW, clipping, schedules and LoRA init: bad input is an error, and LoRA's initial weights
//! have PEFT's distribution.

use cria_train::optim::{
    check_lr, clip_grad_norm, grad_norm, lora_init, warmup_steps, AdamW, AdamWConfig, AdamWState,
    LoraInit, LrSchedule, OptimError, Rng, ScheduleKind,
};

#[test]
fn bad_hyper_parameters_are_errors() {
    let bad = [
        AdamWConfig {
            betas: (1.0, 0.999),
            ..Default::default()
        },
        AdamWConfig {
            betas: (0.9, f64::NAN),
            ..Default::default()
        },
        AdamWConfig {
            eps: -1.0,
            ..Default::default()
        },
        AdamWConfig {
            weight_decay: f64::INFINITY,
            ..Default::default()
        },
    ];
    for c in bad {
        assert!(
            matches!(AdamW::new(c, &[3]), Err(OptimError::Hyper { .. })),
            "{c:?}"
        );
    }
    for lr in [f64::NAN, -1e-3, f64::INFINITY] {
        assert!(check_lr(lr).is_err());
        assert!(LrSchedule::new(ScheduleKind::Constant, lr, 0, 10).is_err());
    }
    assert!(LrSchedule::new(
        ScheduleKind::Cosine {
            num_cycles: f64::NAN
        },
        1e-3,
        0,
        10
    )
    .is_err());
    assert!(warmup_steps(f64::NAN, 10).is_err());
}

#[test]
fn step_checks_before_changing_anything() {
    let mut opt = AdamW::new(AdamWConfig::default(), &[2, 3]).unwrap();
    let mut a = [1.0f32, 2.0];
    let mut b = [3.0f32; 3];
    let g = [0.5f32; 3];
    let err = opt
        .step(f64::NAN, &mut [&mut a, &mut b], &[&g[..2], &g])
        .unwrap_err();
    assert!(err.to_string().contains("learning rate"), "{err}");
    let err = opt
        .step(1e-3, &mut [&mut a, &mut b], &[&g[..2], &g[..2]])
        .unwrap_err();
    assert_eq!(
        err,
        OptimError::TensorLen {
            what: "gradients",
            index: 1,
            expected: 3,
            got: 2
        }
    );
    let err = opt.step(1e-3, &mut [&mut a], &[&g[..2]]).unwrap_err();
    assert_eq!(
        err,
        OptimError::TensorCount {
            what: "parameters",
            expected: 2,
            got: 1
        }
    );
    assert_eq!((a, b, opt.steps()), ([1.0, 2.0], [3.0; 3], 0));
    opt.step(1e-3, &mut [&mut a, &mut b], &[&g[..2], &g])
        .unwrap();
    assert_eq!(opt.steps(), 1);
    // First step of Adam moves each element by lr (times the decay) against the gradient's sign.
    assert!((a[0] - (1.0 * (1.0 - 1e-5) - 1e-3)).abs() < 1e-6, "{a:?}");
}

#[test]
fn clipping() {
    let mut g1 = vec![3.0f32, 0.0];
    let mut g2 = vec![4.0f32];
    let total = clip_grad_norm(&mut [&mut g1, &mut g2], 1.0).unwrap();
    assert_eq!(total, 5.0);
    let after = grad_norm([&g1[..], &g2[..]].into_iter());
    assert!((after - 1.0).abs() < 1e-6, "{after}");
    // Below max_norm: untouched.
    let mut g = vec![0.1f32, 0.2];
    clip_grad_norm(&mut [&mut g], 1.0).unwrap();
    assert_eq!(g, [0.1, 0.2]);
    // NaN in a gradient: an error, gradients unchanged.
    let mut g = vec![1.0f32, f32::NAN];
    assert!(matches!(
        clip_grad_norm(&mut [&mut g], 1.0),
        Err(OptimError::NonFiniteGradNorm(_))
    ));
    assert_eq!(g[0], 1.0);
    assert!(clip_grad_norm(&mut [&mut [1.0f32][..]], 0.0).is_err());
}

#[test]
fn warmup_ratio_as_the_trainer() {
    assert_eq!(warmup_steps(0.03, 1000).unwrap(), 30);
    assert_eq!(warmup_steps(0.03, 50).unwrap(), 2); // ceil(1.5)
    assert_eq!(warmup_steps(10.0, 50).unwrap(), 10);
    let s = LrSchedule::new(ScheduleKind::Linear, 2e-4, 2, 10).unwrap();
    assert_eq!(
        [s.lr(0), s.lr(1), s.lr(2), s.lr(10), s.lr(11)],
        [0.0, 1e-4, 2e-4, 0.0, 0.0]
    );
}

#[test]
fn state_bytes_round_trip_and_bad_bytes_are_errors() {
    let mut opt = AdamW::new(AdamWConfig::default(), &[2, 1]).unwrap();
    let (mut a, mut b) = ([1.0f32, -1.0], [0.5f32]);
    opt.step(1e-2, &mut [&mut a, &mut b], &[&[0.3, -0.2], &[1.0]])
        .unwrap();
    let bytes = opt.state().to_bytes();
    let back = AdamWState::from_bytes(&bytes).unwrap();
    assert_eq!(&back, opt.state());
    assert!(AdamW::resume(AdamWConfig::default(), back.clone(), &[2, 2]).is_err());
    assert!(AdamW::resume(AdamWConfig::default(), back, &[2]).is_err());
    for cut in [0, 7, 12, 20, 24, bytes.len() - 1] {
        assert!(
            AdamWState::from_bytes(&bytes[..cut]).is_err(),
            "cut at {cut}"
        );
    }
    let mut long = bytes.clone();
    long.push(0);
    assert!(AdamWState::from_bytes(&long)
        .unwrap_err()
        .to_string()
        .contains("trailing"));
    let mut magic = bytes.clone();
    magic[0] = b'X';
    assert!(AdamWState::from_bytes(&magic)
        .unwrap_err()
        .to_string()
        .contains("magic"));
    let mut nan = bytes.clone();
    nan[32..36].copy_from_slice(&f32::NAN.to_le_bytes());
    assert!(AdamWState::from_bytes(&nan).is_err());
    let mut huge = bytes;
    huge[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(AdamWState::from_bytes(&huge).is_err());
}

#[test]
fn rng_is_seeded_and_restorable() {
    let mut a = Rng::new(42);
    let mut b = Rng::new(42);
    let mut c = Rng::new(43);
    let xs: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
    assert_eq!(xs, (0..4).map(|_| b.next_u64()).collect::<Vec<_>>());
    assert_ne!(xs, (0..4).map(|_| c.next_u64()).collect::<Vec<_>>());
    let mut d = Rng::from_state(a.state()).unwrap();
    assert_eq!(a.next_u64(), d.next_u64());
    assert!(Rng::from_state([0; 4]).is_none());
}

/// PEFT's default A is U(-1/sqrt(in), 1/sqrt(in)): every value inside the bound, mean 0 and
/// variance bound^2/3 within 4 standard errors, the extremes near the bound; B is zero.
/// "gaussian" A is normal(0, 1/r).
#[test]
fn lora_init_has_peft_distribution() {
    let (r, fin, fout) = (16, 576, 192);
    let (a, b) = lora_init(LoraInit::Default, r, fin, fout, &mut Rng::new(7)).unwrap();
    assert_eq!((a.len(), b.len()), (r * fin, fout * r));
    assert!(b.iter().all(|&x| x == 0.0));
    let bound = 1.0 / (fin as f64).sqrt();
    let n = a.len() as f64;
    assert!(a.iter().all(|&x| (x as f64).abs() <= bound * (1.0 + 1e-6)));
    let mean = a.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    let want_var = bound * bound / 3.0;
    assert!(mean.abs() < 4.0 * (want_var / n).sqrt(), "mean {mean}");
    // Var of x^2 for U(-c, c) is 4c^4/45.
    assert!(
        (var - want_var).abs() < 4.0 * (4.0 * bound.powi(4) / 45.0 / n).sqrt(),
        "var {var} vs {want_var}"
    );
    let max = a.iter().fold(0.0f64, |m, &x| m.max((x as f64).abs()));
    assert!(max > 0.999 * bound, "{max}");
    // Another seed, other values.
    let (a2, _) = lora_init(LoraInit::Default, r, fin, fout, &mut Rng::new(8)).unwrap();
    assert_ne!(a, a2);

    let (g, _) = lora_init(LoraInit::Gaussian, 8, 1000, 4, &mut Rng::new(1)).unwrap();
    let n = g.len() as f64;
    let mean = g.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = g.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    let want = 1.0 / 64.0;
    assert!(mean.abs() < 4.0 * (want / n).sqrt(), "mean {mean}");
    assert!(
        (var - want).abs() < 4.0 * want * (2.0 / n).sqrt(),
        "var {var}"
    );
    let within1 = g.iter().filter(|&&x| (x as f64).abs() < 0.125).count() as f64 / n;
    assert!((within1 - 0.6827).abs() < 0.01, "{within1}");

    assert!(lora_init(LoraInit::Default, 0, 4, 4, &mut Rng::new(1)).is_err());
    let err = lora_init(LoraInit::Default, 2, 4, usize::MAX, &mut Rng::new(1)).unwrap_err();
    assert!(err.to_string().contains("B size overflows"), "{err}");
}
