//! `cria plan --params 20M | --tokens 400M | --hours 8`: a compute-optimal pretraining plan from
//! this machine's MEASURED training throughput.
//!
//! - Chinchilla: tokens D = 20 N, N = all parameters (embedding counted, tied head once, as
//!   `cria pretrain` counts them for its default --tokens). Training FLOPs = D * flops/token,
//!   flops/token = 6 N_matrices + 6 L ctx q_dim (`cria_train::flops`: the matrices a token goes
//!   through, the head included, plus causal attention).
//! - The shape family: dim a multiple of 64; head dim 64 (heads = dim / 64); KV heads = heads / 2
//!   for an even count of 8 heads or more (GQA 2:1), else = heads; FFN = 8/3 dim rounded to a multiple
//!   of 64; layers such that the aspect ratio dim / layers is 32..64; the head tied to the
//!   embedding (a large share of a small model). `--params N`: the shape of that family whose
//!   parameter count is nearest N (in ratio); `--tokens D`: `--params D / 20`; `--hours H`: the
//!   largest shape whose 20 N tokens train within H hours at the measured throughput (a binary
//!   search over the shapes that would fit at the peak, the rate measured once per width).
//! - Throughput: a few real `FullModel::forward_backward` steps of the chosen shape on random
//!   tokens (a micro-batch of `--micro-batch-tokens` rows; a shape whose step would take long is
//!   timed on fewer of its layers and its FLOP/s rate carried over to all of them), about a second
//!   per shape measured. Time = D * flops/token / that rate; the optimizer's own work (a few
//!   FLOPs per parameter per step) and evaluations are not in it.
//! - Batch: the largest power of two of tokens (whole ctx sequences) that leaves at least 2000
//!   optimizer steps, within 8K..512K (GPT-3 used 0.5M at 125M parameters; small models want
//!   more steps). Learning rate: 3e-3 (N / 1M)^(-1/3), within 1e-4..3e-3: cria's 3e-3 at 1M, and
//!   GPT-3's table at the top (125M: 6.0e-4 vs GPT-3's 6e-4; 1.3B: 2.7e-4 vs 2e-4); cosine to
//!   0.1x after a 5% warmup, weight decay 0.1 (`cria pretrain`'s defaults).

use anyhow::{bail, Context, Result};
use clap::{ArgGroup, Args};
use cria_kernels::CpuBackend;
use cria_model::config::Config;
use cria_train::flops;
use cria_train::full::FullModel;
use cria_train::model::{Seq, TrainOptions};
use cria_train::optim::Rng;
use cria_train::pretrain as pt;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Chinchilla's tokens per parameter.
pub const TOKENS_PER_PARAM: u64 = 20;

#[derive(Args, Clone, Debug)]
#[command(group(ArgGroup::new("target").required(true).args(["params", "tokens", "hours"])))]
pub struct PlanArgs {
    /// Parameters (all of them, embedding included): 20M, 500K, 1.2B...
    #[arg(long, value_parser = parse_count)]
    pub params: Option<u64>,
    /// Training tokens (the model gets tokens / 20 parameters).
    #[arg(long, value_parser = parse_count)]
    pub tokens: Option<u64>,
    /// Hours of training on this machine: the largest compute-optimal model that fits.
    #[arg(long)]
    pub hours: Option<f64>,
    /// Threads (default: physical cores), as `cria pretrain -t` will use.
    #[arg(short = 't', long, value_name = "N", value_parser = crate::run::thread_count)]
    pub threads: Option<usize>,
    /// Sequence length.
    #[arg(long, default_value_t = 256)]
    pub ctx: usize,
    /// Vocabulary size (the tokenizer's; `cria pretrain` checks it against the data).
    #[arg(long, default_value_t = 8192)]
    pub vocab: usize,
    /// Rows of one forward/backward, timed as `cria pretrain --micro-batch-tokens` runs them.
    #[arg(long = "micro-batch-tokens", default_value_t = 1024)]
    pub micro_tokens: usize,
    /// Write the shape as an HF config.json for `cria pretrain --config`.
    #[arg(long = "write-config", value_name = "FILE")]
    pub write_config: Option<PathBuf>,
}

/// "20M", "500k", "1.5B", "4096" -> a count.
pub fn parse_count(s: &str) -> Result<u64, String> {
    let t = s.trim().replace('_', "");
    let (num, mul) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1e3),
        Some('M') => (&t[..t.len() - 1], 1e6),
        Some('B') | Some('G') => (&t[..t.len() - 1], 1e9),
        Some('T') => (&t[..t.len() - 1], 1e12),
        _ => (&t[..], 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: not a count (e.g. 20M, 500K, 1.2B)"))?;
    let n = (v * mul).round();
    if !(1.0..1e18).contains(&n) {
        return Err(format!("{s:?}: must be at least 1"));
    }
    Ok(n as u64)
}

/// A shape of the family (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub dim: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn: usize,
}

impl Shape {
    pub fn new(dim: usize, layers: usize) -> Shape {
        let heads = (dim / 64).max(1);
        let kv_heads = if heads >= 8 && heads.is_multiple_of(2) {
            heads / 2
        } else {
            heads
        };
        let ffn = ((8 * dim) as f64 / 3.0 / 64.0).round().max(1.0) as usize * 64;
        Shape {
            dim,
            layers,
            heads,
            kv_heads,
            ffn,
        }
    }

    /// Every shape of the family with dim 64..=4096.
    pub fn family() -> Vec<Shape> {
        let mut v = Vec::new();
        for dim in (64..=4096usize).step_by(64) {
            for layers in dim.div_ceil(64).max(1)..=(dim / 32) {
                v.push(Shape::new(dim, layers));
            }
        }
        v
    }

    pub fn config_json(&self, vocab: usize, ctx: usize) -> Value {
        json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.dim,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.dim / self.heads,
            "intermediate_size": self.ffn,
            "vocab_size": vocab,
            "max_position_embeddings": ctx,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "tie_word_embeddings": true,
        })
    }

    pub fn config(&self, vocab: usize, ctx: usize) -> Result<Config> {
        pt::config_shape(&self.config_json(vocab, ctx), vocab, ctx).map_err(anyhow::Error::msg)
    }
}

/// The learning rate rule (module doc).
pub fn lr_rule(params: u64) -> f64 {
    (3e-3 * (params as f64 / 1e6).powf(-1.0 / 3.0)).clamp(1e-4, 3e-3)
}

/// The batch rule (module doc): tokens per optimizer step, a multiple of ctx.
pub fn batch_rule(tokens: u64, ctx: usize) -> usize {
    let mut b = 8192usize;
    while b * 2 <= 524288 && tokens / (b as u64 * 2) >= 2000 {
        b *= 2;
    }
    (b / ctx).max(1) * ctx
}

/// A measured training rate: FLOP/s achieved, and how it was measured.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    pub flops_per_s: f64,
    pub layers_timed: usize,
    pub rows: usize,
}

/// Times a few forward_backward steps of `shape` on random tokens (module doc).
fn measure(cpu: &CpuBackend, shape: Shape, vocab: usize, ctx: usize, rows: usize) -> Result<Rate> {
    let peak = flops::peak_flops(cpu);
    let full = shape.config(vocab, ctx)?;
    let fpt = |c: &Config| flops::train_flops_per_token(c, ctx);
    // Layers timed: a step of at most ~0.3 s at a third of the peak, and at most ~3 GiB.
    let with = |l: usize| {
        Shape { layers: l, ..shape }
            .config(vocab, ctx)
            .map(|c| fpt(&c))
    };
    let per_layer = with(2)? - with(1)?;
    let head = with(1)? - per_layer;
    let by_time = ((0.3 * peak / 3.0 / rows as f64 - head) / per_layer).floor();
    let mut layers = (by_time.max(1.0) as usize).min(shape.layers);
    let mut c = full.clone();
    let opts = TrainOptions {
        max_rows: rows,
        max_seq: ctx,
        grad_checkpoint: false,
        exact_forward: true,
    };
    loop {
        c.n_layers = layers;
        let bytes = 8 * flops::param_counts(&c).0 as usize + FullModel::activation_bytes(&c, &opts);
        if bytes <= 3 << 30 || layers == 1 {
            if bytes > 3 << 30 {
                bail!(
                    "dim {} with vocabulary {vocab}: one layer needs {:.1} GiB to time; too large \
                     to plan here",
                    shape.dim,
                    bytes as f64 / (1u64 << 30) as f64
                );
            }
            break;
        }
        layers -= 1;
    }
    let mut model = FullModel::from_config(&c, 0.02, 1, opts).map_err(anyhow::Error::msg)?;
    let mut rng = Rng::new(7);
    let seqs: Vec<Seq> = (0..rows / ctx)
        .map(|_| {
            let tok: Vec<u32> = (0..ctx + 1)
                .map(|_| (rng.next_u64() % vocab as u64) as u32)
                .collect();
            Seq {
                tokens: tok[..ctx].to_vec(),
                targets: tok[1..].iter().map(|&t| t as i32).collect(),
            }
        })
        .collect();
    let mut step = || -> Result<()> {
        model.params_mut().zero_grads();
        model
            .forward_backward(cpu, &seqs, 1.0 / rows as f32)
            .map_err(anyhow::Error::msg)?;
        Ok(())
    };
    step()?;
    let (start, mut runs) = (Instant::now(), 0u32);
    while runs < 2 || start.elapsed() < Duration::from_millis(600) {
        step()?;
        runs += 1;
    }
    let per_step = start.elapsed().as_secs_f64() / runs as f64;
    let done_rows = seqs.len() * ctx;
    Ok(Rate {
        flops_per_s: done_rows as f64 * fpt(&c) / per_step,
        layers_timed: layers,
        rows: done_rows,
    })
}

/// Parameters (all) of a shape.
fn params_of(s: &Shape, vocab: usize, ctx: usize) -> Result<u64> {
    Ok(flops::param_counts(&s.config(vocab, ctx)?).0)
}

/// The shape whose parameters are nearest `n` in ratio.
fn nearest(family: &[(Shape, u64)], n: u64) -> (Shape, u64) {
    let d = |p: u64| (p as f64 / n as f64).ln().abs();
    *family
        .iter()
        .min_by(|a, b| d(a.1).total_cmp(&d(b.1)))
        .expect("a non-empty family")
}

/// Seconds to train shape `s` (parameters `p`) on 20 p tokens at `rate` FLOP/s.
fn seconds(s: &Shape, p: u64, vocab: usize, ctx: usize, rate: f64) -> Result<f64> {
    let c = s.config(vocab, ctx)?;
    Ok((TOKENS_PER_PARAM * p) as f64 * flops::train_flops_per_token(&c, ctx) / rate)
}

pub fn run(a: &PlanArgs) -> Result<()> {
    if a.ctx == 0 || a.vocab == 0 {
        bail!("--ctx and --vocab must be at least 1");
    }
    if let Some(h) = a.hours {
        if !(h.is_finite() && h > 0.0) {
            bail!("--hours {h}: must be a positive number");
        }
    }
    let threads = a.threads.unwrap_or_else(cria_engine::load::default_threads);
    let cpu = CpuBackend::try_new(threads).map_err(anyhow::Error::msg)?;
    let rows = (a.micro_tokens / a.ctx).max(1) * a.ctx;
    let family: Vec<(Shape, u64)> = Shape::family()
        .into_iter()
        .map(|s| Ok((s, params_of(&s, a.vocab, a.ctx)?)))
        .collect::<Result<_>>()?;
    eprintln!(
        "measuring this machine: the peak of the training GEMM and a few forward/backward steps \
         of the candidate shapes on random tokens ({threads} threads, {rows} tokens per step)..."
    );
    let peak = flops::peak_flops(&cpu);
    let (shape, params, rate) = match (a.params, a.tokens, a.hours) {
        (Some(n), _, _) => {
            let (s, p) = nearest(&family, n);
            (s, p, measure(&cpu, s, a.vocab, a.ctx, rows)?)
        }
        (None, Some(d), _) => {
            let (s, p) = nearest(&family, (d / TOKENS_PER_PARAM).max(1));
            (s, p, measure(&cpu, s, a.vocab, a.ctx, rows)?)
        }
        (None, None, Some(h)) => {
            let budget = h * 3600.0;
            // Shapes that fit at the peak (an upper bound on any rate), smallest first; then a
            // binary search for the largest that fits at its own measured rate (measured once
            // per dim: the FLOP/s of a width carries over to its other layer counts).
            let mut fit_at_peak = Vec::new();
            for &(c, cp) in &family {
                if seconds(&c, cp, a.vocab, a.ctx, peak)? <= budget {
                    fit_at_peak.push((c, cp));
                }
            }
            fit_at_peak.sort_by_key(|x| x.1);
            if fit_at_peak.is_empty() {
                bail!(
                    "--hours {h}: even the smallest shape ({} parameters) does not train on its \
                     20x tokens in that time here",
                    family.iter().map(|f| f.1).min().unwrap_or(0)
                );
            }
            let mut rates: HashMap<usize, Rate> = HashMap::new();
            let mut fits = |i: usize| -> Result<bool> {
                let (c, cp) = fit_at_peak[i];
                let r = match rates.get(&c.dim) {
                    Some(r) => *r,
                    None => *rates
                        .entry(c.dim)
                        .or_insert(measure(&cpu, c, a.vocab, a.ctx, rows)?),
                };
                Ok(seconds(&c, cp, a.vocab, a.ctx, r.flops_per_s)? <= budget)
            };
            if !fits(0)? {
                bail!(
                    "--hours {h}: even the smallest shape ({} parameters) does not train on its \
                     20x tokens in that time here",
                    fit_at_peak[0].1
                );
            }
            let (mut lo, mut hi) = (0, fit_at_peak.len());
            while hi - lo > 1 {
                let mid = (lo + hi) / 2;
                if fits(mid)? {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            let (s, p) = fit_at_peak[lo];
            (s, p, rates[&s.dim])
        }
        (None, None, None) => bail!("give --params, --tokens or --hours"),
    };
    let cfg_json = shape.config_json(a.vocab, a.ctx);
    let cfg = shape.config(a.vocab, a.ctx)?;
    let (_, mats) = flops::param_counts(&cfg);
    let tokens = a.tokens.unwrap_or(TOKENS_PER_PARAM * params);
    let fpt = flops::train_flops_per_token(&cfg, a.ctx);
    let batch = batch_rule(tokens, a.ctx);
    let steps = tokens.div_ceil(batch as u64);
    let lr = lr_rule(params);
    let tps = rate.flops_per_s / fpt;
    let secs = tokens as f64 * fpt / rate.flops_per_s;
    let non_embed = params - (a.vocab * shape.dim) as u64;
    let out = a
        .write_config
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "CONFIG.json".into());
    println!(
        "shape: dim {} layers {} heads {} kv_heads {} ffn {} vocab {} tied head_dim {} ctx {}",
        shape.dim,
        shape.layers,
        shape.heads,
        shape.kv_heads,
        shape.ffn,
        a.vocab,
        shape.dim / shape.heads,
        a.ctx
    );
    println!(
        "params: {params} ({:.2}M; {:.2}M non-embedding)",
        params as f64 / 1e6,
        non_embed as f64 / 1e6
    );
    println!(
        "tokens: {tokens} ({:.1} per parameter)",
        tokens as f64 / params as f64
    );
    println!("flops_per_token: {fpt:.4e} (6 x {mats} matrix params + 6 L ctx q_dim)");
    println!("train_flops: {:.4e}", tokens as f64 * fpt);
    println!(
        "batch_tokens: {batch} ({} sequences of {})",
        batch / a.ctx,
        a.ctx
    );
    println!("micro_batch_tokens: {}", rate.rows.min(batch));
    println!("steps: {steps}");
    println!("lr: {lr:.2e} (cosine to 0.1x, warmup 5%, weight decay 0.1)");
    println!(
        "throughput: {tps:.0} tokens/s = {:.2} GFLOP/s measured ({} of {} layers timed, {} \
         tokens per step), MFU {:.1}% of the measured peak {:.2} GFLOP/s, {threads} threads",
        rate.flops_per_s / 1e9,
        rate.layers_timed,
        shape.layers,
        rate.rows,
        100.0 * rate.flops_per_s / peak,
        peak / 1e9
    );
    println!("hours: {:.3}", secs / 3600.0);
    println!(
        "command: cria pretrain --config {out} --data DATA -o RUN --tokens {tokens} \
         --batch-tokens {batch} --micro-batch-tokens {} --ctx {} --lr {lr:.2e} -t {threads}",
        rate.rows.min(batch),
        a.ctx
    );
    if let Some(p) = &a.write_config {
        std::fs::write(p, serde_json::to_string_pretty(&cfg_json)? + "\n")
            .with_context(|| format!("writing {}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_parse_and_bad_ones_are_errors() {
        assert_eq!(parse_count("20M"), Ok(20_000_000));
        assert_eq!(parse_count("1.5b"), Ok(1_500_000_000));
        assert_eq!(parse_count("500K"), Ok(500_000));
        assert_eq!(parse_count("4_096"), Ok(4096));
        for bad in ["", "M", "x1", "0", "-3M", "nan"] {
            assert!(parse_count(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_family_follows_its_rule() {
        let s = Shape::new(512, 8);
        assert_eq!((s.heads, s.kv_heads, s.ffn), (8, 4, 1344));
        let s = Shape::new(384, 8);
        assert_eq!((s.heads, s.kv_heads, s.ffn), (6, 6, 1024));
        for s in Shape::family() {
            let r = s.dim as f64 / s.layers as f64;
            assert!((32.0..=64.0).contains(&r), "{s:?}");
            assert!(s.ffn % 64 == 0 && s.dim % s.heads == 0 && s.heads % s.kv_heads == 0);
        }
        assert_eq!(batch_rule(400_000_000, 256), 131072);
        assert_eq!(batch_rule(1000, 256), 8192);
        assert_eq!(batch_rule(1000, 3000), 6000);
        assert_eq!(lr_rule(1_000_000), 3e-3);
        assert!((lr_rule(125_000_000) - 6e-4).abs() < 1e-6);
        assert_eq!(lr_rule(1), 3e-3);
    }
}
