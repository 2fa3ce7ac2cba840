//! The optimizer side of training, as the Python stack does it:
//!
//! - [`AdamW`]: `torch.optim.AdamW` (torch 2.15, `_single_tensor_adam` with
//!   `decoupled_weight_decay`, the CPU default path), with the same order of operations and the
//!   same f64/f32 split: the scalars (bias corrections, step size) in f64 as Python floats, the
//!   element-wise work in f32 with each f64 scalar rounded to f32 where torch hands it to a kernel.
//! - [`LrSchedule`]: transformers' `get_{cosine,linear,constant}_schedule_with_warmup` (the lr of
//!   optimizer step `k`, counted from 0, is `base_lr * factor(k)`, as `LambdaLR` after `k`
//!   `scheduler.step()` calls).
//! - [`clip_grad_norm`]: `torch.nn.utils.clip_grad_norm_` (L2 over all tensors).
//! - [`lora_init`]: PEFT's `reset_lora_parameters` (A Kaiming-uniform with a = sqrt(5), i.e.
//!   U(-1/sqrt(fan_in), 1/sqrt(fan_in)), or normal(0, 1/r) for "gaussian"; B zeros) drawn from
//!   cria's own seeded [`Rng`] (the distribution is torch's, the bits are not).

use thiserror::Error;

#[derive(Debug, Error, PartialEq)]
pub enum OptimError {
    #[error("invalid {name}: {value} ({why})")]
    Hyper {
        name: &'static str,
        value: f64,
        why: &'static str,
    },
    #[error("{what}: expected {expected} tensors, got {got}")]
    TensorCount {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("{what} {index}: expected {expected} values, got {got}")]
    TensorLen {
        what: &'static str,
        index: usize,
        expected: usize,
        got: usize,
    },
    #[error("gradient norm is not finite ({0}): a NaN or infinity in the gradients")]
    NonFiniteGradNorm(f32),
    #[error("optimizer state: {0}")]
    State(String),
}

fn check(name: &'static str, value: f64, ok: bool, why: &'static str) -> Result<(), OptimError> {
    if ok {
        Ok(())
    } else {
        Err(OptimError::Hyper { name, value, why })
    }
}

/// AdamW's hyper-parameters; `Default` is torch's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl AdamWConfig {
    /// torch's constructor checks, with NaN refused as well.
    pub fn validate(&self) -> Result<(), OptimError> {
        let (b1, b2) = self.betas;
        check("beta1", b1, (0.0..1.0).contains(&b1), "must be in [0, 1)")?;
        check("beta2", b2, (0.0..1.0).contains(&b2), "must be in [0, 1)")?;
        check(
            "eps",
            self.eps,
            self.eps >= 0.0 && self.eps.is_finite(),
            "must be finite and >= 0",
        )?;
        let wd = self.weight_decay;
        check(
            "weight_decay",
            wd,
            wd >= 0.0 && wd.is_finite(),
            "must be finite and >= 0",
        )
    }
}

/// Checks a learning rate handed to a step or a schedule.
pub fn check_lr(lr: f64) -> Result<(), OptimError> {
    check(
        "learning rate",
        lr,
        lr >= 0.0 && lr.is_finite(),
        "must be finite and >= 0",
    )
}

/// AdamW's state: the step count (shared by all tensors: cria steps them together) and, per
/// tensor, the first and second moments. Saved and restored with [`AdamWState::to_bytes`] /
/// [`AdamWState::from_bytes`].
#[derive(Clone, Debug, PartialEq)]
pub struct AdamWState {
    pub step: u64,
    pub exp_avg: Vec<Vec<f32>>,
    pub exp_avg_sq: Vec<Vec<f32>>,
}

const STATE_MAGIC: &[u8; 8] = b"CRIAADAM";
const STATE_VERSION: u32 = 1;

impl AdamWState {
    /// Zero moments for tensors of these lengths, step 0.
    pub fn zeros(lens: &[usize]) -> Self {
        Self {
            step: 0,
            exp_avg: lens.iter().map(|&n| vec![0.0; n]).collect(),
            exp_avg_sq: lens.iter().map(|&n| vec![0.0; n]).collect(),
        }
    }

    /// The lengths of the tensors this state is for.
    pub fn lens(&self) -> Vec<usize> {
        self.exp_avg.iter().map(Vec::len).collect()
    }

    /// Little-endian: magic `CRIAADAM`, u32 version, u64 step, u32 tensor count, then per tensor
    /// a u64 length, its exp_avg and its exp_avg_sq as f32.
    pub fn to_bytes(&self) -> Vec<u8> {
        let total: usize = self.exp_avg.iter().map(|t| 8 + 8 * t.len()).sum();
        let mut out = Vec::with_capacity(24 + total);
        out.extend_from_slice(STATE_MAGIC);
        out.extend_from_slice(&STATE_VERSION.to_le_bytes());
        out.extend_from_slice(&self.step.to_le_bytes());
        out.extend_from_slice(&(self.exp_avg.len() as u32).to_le_bytes());
        for (m, v) in self.exp_avg.iter().zip(&self.exp_avg_sq) {
            out.extend_from_slice(&(m.len() as u64).to_le_bytes());
            for x in m.iter().chain(v) {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        out
    }

    /// Reads what [`AdamWState::to_bytes`] wrote; a truncated, foreign or trailing-garbage buffer
    /// is an error, and so is a non-finite moment or a negative second moment.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, OptimError> {
        let bad = |why: &str| OptimError::State(why.to_string());
        let mut r = bytes;
        let mut take = |n: usize| -> Result<&[u8], OptimError> {
            if r.len() < n {
                return Err(bad("truncated"));
            }
            let (head, tail) = r.split_at(n);
            r = tail;
            Ok(head)
        };
        if take(8)? != STATE_MAGIC {
            return Err(bad("not a cria AdamW state (bad magic)"));
        }
        let version = u32::from_le_bytes(take(4)?.try_into().unwrap());
        if version != STATE_VERSION {
            return Err(OptimError::State(format!("unsupported version {version}")));
        }
        let step = u64::from_le_bytes(take(8)?.try_into().unwrap());
        let count = u32::from_le_bytes(take(4)?.try_into().unwrap()) as usize;
        let mut exp_avg = Vec::new();
        let mut exp_avg_sq = Vec::new();
        for _ in 0..count {
            let len = u64::from_le_bytes(take(8)?.try_into().unwrap());
            let bytes_len = usize::try_from(len)
                .ok()
                .and_then(|n| n.checked_mul(8))
                .ok_or_else(|| bad("tensor length overflows"))?;
            let data = take(bytes_len)?;
            let vals: Vec<f32> = data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            let (m, v) = vals.split_at(vals.len() / 2);
            if m.iter().chain(v).any(|x| !x.is_finite()) || v.iter().any(|&x| x < 0.0) {
                return Err(bad("a moment is not finite or a second moment is negative"));
            }
            exp_avg.push(m.to_vec());
            exp_avg_sq.push(v.to_vec());
        }
        if !r.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(Self {
            step,
            exp_avg,
            exp_avg_sq,
        })
    }
}

/// `torch.optim.AdamW` over a fixed list of f32 tensors.
#[derive(Clone, Debug)]
pub struct AdamW {
    config: AdamWConfig,
    state: AdamWState,
}

impl AdamW {
    /// A fresh optimizer for tensors of these lengths.
    pub fn new(config: AdamWConfig, lens: &[usize]) -> Result<Self, OptimError> {
        config.validate()?;
        Ok(Self {
            config,
            state: AdamWState::zeros(lens),
        })
    }

    /// An optimizer resumed from a saved state, checked against the tensors' lengths.
    pub fn resume(
        config: AdamWConfig,
        state: AdamWState,
        lens: &[usize],
    ) -> Result<Self, OptimError> {
        config.validate()?;
        check_lens("optimizer state", &state.lens(), lens.iter().copied())?;
        Ok(Self { config, state })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    pub fn state(&self) -> &AdamWState {
        &self.state
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.state.step
    }

    /// One optimizer step at learning rate `lr` (the schedule's value for this step), `params[i]`
    /// updated from `grads[i]`. Shapes and the learning rate are checked before anything changes.
    pub fn step(
        &mut self,
        lr: f64,
        params: &mut [&mut [f32]],
        grads: &[&[f32]],
    ) -> Result<(), OptimError> {
        check_lr(lr)?;
        let lens = self.state.lens();
        check_lens("parameters", &lens, params.iter().map(|p| p.len()))?;
        check_lens("gradients", &lens, grads.iter().map(|g| g.len()))?;
        self.state.step += 1;
        let step = self.state.step as f64;
        let (beta1, beta2) = self.config.betas;
        // torch: param.mul_(1 - lr * weight_decay), a Python float rounded to f32 by the kernel.
        let decay = (1.0 - lr * self.config.weight_decay) as f32;
        let w1 = (1.0 - beta1) as f32; // exp_avg.lerp_(grad, 1 - beta1)
        let beta2_f = beta2 as f32; // exp_avg_sq.mul_(beta2)
        let w2 = (1.0 - beta2) as f32; //   .addcmul_(grad, grad, value=1 - beta2)
        let bias_correction1 = 1.0 - beta1.powf(step);
        let bias_correction2 = 1.0 - beta2.powf(step);
        let step_size = lr / bias_correction1;
        let bc2_sqrt = bias_correction2.sqrt() as f32;
        let eps = self.config.eps as f32;
        let neg_step = (-step_size) as f32;
        let apply_decay = self.config.weight_decay != 0.0;
        for (i, (p, g)) in params.iter_mut().zip(grads).enumerate() {
            let m = &mut self.state.exp_avg[i];
            let v = &mut self.state.exp_avg_sq[i];
            for j in 0..p.len() {
                let gj = g[j];
                let mut pj = p[j];
                if apply_decay {
                    pj *= decay;
                }
                m[j] = lerp(m[j], gj, w1);
                v[j] = v[j] * beta2_f + w2 * gj * gj;
                let denom = v[j].sqrt() / bc2_sqrt + eps;
                p[j] = pj + neg_step * m[j] / denom;
            }
        }
        Ok(())
    }
}

/// ATen's `lerp` (`is_lerp_weight_small` chooses the form; the vectorized kernel fuses).
fn lerp(start: f32, end: f32, weight: f32) -> f32 {
    if weight.abs() < 0.5 {
        weight.mul_add(end - start, start)
    } else {
        (weight - 1.0).mul_add(end - start, end)
    }
}

fn check_lens(
    what: &'static str,
    expected: &[usize],
    got: impl ExactSizeIterator<Item = usize>,
) -> Result<(), OptimError> {
    if got.len() != expected.len() {
        return Err(OptimError::TensorCount {
            what,
            expected: expected.len(),
            got: got.len(),
        });
    }
    for (index, (got, &expected)) in got.zip(expected).enumerate() {
        if got != expected {
            return Err(OptimError::TensorLen {
                what,
                index,
                expected,
                got,
            });
        }
    }
    Ok(())
}

/// `torch.nn.utils.clip_grad_norm_(params, max_norm)` with the L2 norm: each tensor's norm (summed
/// in f64, rounded to f32 as torch's per-tensor norms are f32; torch sums in f32 SIMD lanes, so
/// the norm can differ in its last bit), the total norm over those, the coefficient
/// `max_norm / (total + 1e-6)` clamped to 1 (f32) and every gradient multiplied by it.
/// Returns the total norm before clipping. Unlike torch (which would scale every gradient by NaN),
/// a non-finite total norm is an error and the gradients are left as they were.
pub fn clip_grad_norm(grads: &mut [&mut [f32]], max_norm: f64) -> Result<f32, OptimError> {
    check(
        "max_norm",
        max_norm,
        max_norm > 0.0 && max_norm.is_finite(),
        "must be finite and > 0",
    )?;
    let total = grad_norm(grads.iter().map(|g| &**g));
    if !total.is_finite() {
        return Err(OptimError::NonFiniteGradNorm(total));
    }
    // torch: `max_norm / (total_norm + 1e-6)` on a tensor is `reciprocal(total + 1e-6) * max_norm`.
    let coef = ((1.0 / (total + 1e-6)) * max_norm as f32).min(1.0);
    for g in grads.iter_mut() {
        for x in g.iter_mut() {
            *x *= coef;
        }
    }
    Ok(total)
}

/// The global L2 norm of a list of tensors, as `torch.nn.utils.get_total_norm`.
pub fn grad_norm<'a>(grads: impl Iterator<Item = &'a [f32]>) -> f32 {
    let norms: Vec<f32> = grads
        .map(|g| {
            g.iter()
                .map(|&x| (x as f64) * (x as f64))
                .sum::<f64>()
                .sqrt() as f32
        })
        .collect();
    norms
        .iter()
        .map(|&n| (n as f64) * (n as f64))
        .sum::<f64>()
        .sqrt() as f32
}

/// Which of transformers' schedules.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ScheduleKind {
    /// `get_constant_schedule_with_warmup`.
    Constant,
    /// `get_linear_schedule_with_warmup`: to 0 at `training_steps`.
    Linear,
    /// `get_cosine_schedule_with_warmup` with `num_cycles` (transformers' default 0.5: one half
    /// cosine down to 0 at `training_steps`).
    Cosine { num_cycles: f64 },
}

/// A learning-rate schedule: linear warmup from 0 over `warmup_steps`, then the kind's curve.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrSchedule {
    pub kind: ScheduleKind,
    pub base_lr: f64,
    pub warmup_steps: u64,
    pub training_steps: u64,
}

impl LrSchedule {
    pub fn new(
        kind: ScheduleKind,
        base_lr: f64,
        warmup_steps: u64,
        training_steps: u64,
    ) -> Result<Self, OptimError> {
        check_lr(base_lr)?;
        if let ScheduleKind::Cosine { num_cycles } = kind {
            check(
                "num_cycles",
                num_cycles,
                num_cycles.is_finite() && num_cycles >= 0.0,
                "must be finite and >= 0",
            )?;
        }
        Ok(Self {
            kind,
            base_lr,
            warmup_steps,
            training_steps,
        })
    }

    /// The lr multiplier of optimizer step `step` (0-based), as transformers' lr_lambda.
    pub fn factor(&self, step: u64) -> f64 {
        let warm = self.warmup_steps;
        if step < warm {
            return step as f64 / warm.max(1) as f64;
        }
        let after = self.training_steps.saturating_sub(warm).max(1) as f64;
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => {
                let left = self.training_steps as f64 - step as f64;
                (left / after).max(0.0)
            }
            ScheduleKind::Cosine { num_cycles } => {
                let progress = (step - warm) as f64 / after;
                let c = (std::f64::consts::PI * num_cycles * 2.0 * progress).cos();
                (0.5 * (1.0 + c)).max(0.0)
            }
        }
    }

    /// The learning rate of optimizer step `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        self.base_lr * self.factor(step)
    }
}

/// Warmup steps as the HF Trainer counts them (`TrainingArguments.get_warmup_steps`): a value of
/// at least 1 is a step count, below 1 a ratio of the training steps, rounded up.
pub fn warmup_steps(warmup: f64, training_steps: u64) -> Result<u64, OptimError> {
    check(
        "warmup",
        warmup,
        warmup.is_finite() && warmup >= 0.0,
        "must be finite and >= 0",
    )?;
    Ok(if warmup >= 1.0 {
        warmup as u64
    } else {
        (training_steps as f64 * warmup).ceil() as u64
    })
}

/// cria's seeded generator: xoshiro256** seeded through SplitMix64. Its state can be saved
/// ([`Rng::state`]) and restored ([`Rng::from_state`]) with a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Self {
            s: [next(), next(), next(), next()],
        }
    }

    pub fn state(&self) -> [u64; 4] {
        self.s
    }

    /// Restores a saved state; the all-zero state (which xoshiro never leaves) is refused.
    pub fn from_state(s: [u64; 4]) -> Option<Self> {
        (s != [0; 4]).then_some(Self { s })
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1), 24 random bits.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// Uniform in [0, 1), 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi), as `torch.nn.init.uniform_`.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let x = lo + (hi - lo) * self.next_f32();
        // Rounding can land on hi for a wide interval; keep the half-open range.
        if x >= hi {
            lo
        } else {
            x
        }
    }

    /// Normal(mean, std) by Box-Muller (one of the pair used).
    pub fn normal(&mut self, mean: f64, std: f64) -> f64 {
        let u1 = 1.0 - self.next_f64(); // (0, 1]
        let u2 = self.next_f64();
        mean + std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// PEFT's `init_lora_weights`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoraInit {
    /// `True` (PEFT's default): A = kaiming_uniform_(a = sqrt(5)), B = 0.
    Default,
    /// `"gaussian"`: A = normal(0, 1/r), B = 0.
    Gaussian,
}

/// One LoRA pair's initial weights in PEFT's layout: A (rank, in_features) and B (out_features,
/// rank), row-major. Kaiming-uniform with a = sqrt(5) over fan_in = in_features has gain
/// sqrt(2 / (1 + 5)) and bound gain * sqrt(3 / fan_in) = 1 / sqrt(in_features).
pub fn lora_init(
    init: LoraInit,
    rank: usize,
    in_features: usize,
    out_features: usize,
    rng: &mut Rng,
) -> Result<(Vec<f32>, Vec<f32>), OptimError> {
    if rank == 0 || in_features == 0 || out_features == 0 {
        return Err(OptimError::State(format!(
            "LoRA shape rank {rank}, in {in_features}, out {out_features}: every size must be > 0"
        )));
    }
    let size = |what: &str, x: usize, y: usize| {
        x.checked_mul(y)
            .ok_or_else(|| OptimError::State(format!("LoRA {what} size overflows")))
    };
    let n = size("A", rank, in_features)?;
    let n_b = size("B", out_features, rank)?;
    let a = match init {
        LoraInit::Default => {
            let gain = (2.0 / (1.0 + 5.0f64)).sqrt();
            let bound = (gain * (3.0 / in_features as f64).sqrt()) as f32;
            (0..n).map(|_| rng.uniform(-bound, bound)).collect()
        }
        LoraInit::Gaussian => {
            let std = 1.0 / rank as f64;
            (0..n).map(|_| rng.normal(0.0, std) as f32).collect()
        }
    };
    Ok((a, vec![0.0; n_b]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lerp_matches_both_forms() {
        assert_eq!(lerp(1.0, 3.0, 0.25), 1.5);
        assert_eq!(lerp(1.0, 3.0, 0.75), 2.5);
    }
}
