//! Test helpers: a seeded RNG and the central finite-difference check every backward goes through.
#![allow(dead_code)]

/// xorshift64*: deterministic, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1)
    }
    fn u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    /// Uniform in [0, 1).
    pub fn f32(&mut self) -> f32 {
        (self.u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Roughly normal (sum of 4 uniforms), sd about `sd`.
    pub fn normal(&mut self, sd: f32) -> f32 {
        (self.f32() + self.f32() + self.f32() + self.f32() - 2.0) * sd * 1.7
    }
    pub fn vec(&mut self, n: usize, sd: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal(sd)).collect()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.u64() % n as u64) as usize
    }
}

/// `sum_i out[i] * r[i]` in f64: the scalar loss whose gradient with respect to `out` is `r`.
pub fn project(out: &[f32], r: &[f32]) -> f64 {
    out.iter().zip(r).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// Central differences of `f` at `params`, each value moved by +-`eps` (in f32, the step actually
/// taken is used), against `analytic`. Passes when every |fd - analytic| <= tol * max|analytic|.
/// The ops run in f32, so the differences carry the forward's rounding (about 1e-7 relative of
/// the loss, divided by 2 eps) as well as the O(eps^2) truncation: each test states its tol.
/// Returns the worst error relative to max|analytic| (printed with `--nocapture`).
pub fn fd_check(
    what: &str,
    params: &[f32],
    analytic: &[f32],
    eps: f32,
    tol: f64,
    f: impl Fn(&[f32]) -> f64,
) -> f64 {
    assert_eq!(params.len(), analytic.len(), "{what}: gradient length");
    let scale = analytic.iter().fold(0f64, |m, &g| m.max((g as f64).abs()));
    assert!(scale > 0.0, "{what}: the analytic gradient is all zero");
    let mut p = params.to_vec();
    let mut worst = 0f64;
    for i in 0..p.len() {
        let x = params[i];
        p[i] = x + eps;
        let (hi, lp) = (p[i] as f64, f(&p));
        p[i] = x - eps;
        let (lo, lm) = (p[i] as f64, f(&p));
        p[i] = x;
        let fd = (lp - lm) / (hi - lo);
        let err = (fd - analytic[i] as f64).abs() / scale;
        assert!(
            err <= tol,
            "{what}[{i}]: finite difference {fd} vs analytic {} (error {err:.2e} of max {scale:.3e})",
            analytic[i]
        );
        worst = worst.max(err);
    }
    println!(
        "{what}: {} values, worst error {worst:.2e} of max |grad| {scale:.3e}",
        p.len()
    );
    worst
}
