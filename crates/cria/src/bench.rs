//! `cria bench`: prompt-processing and generation throughput as llama.cpp's `llama-bench`
//! measures it (`cria_engine::bench`), over models and thread counts, printed as a Markdown table
//! or JSON; this machine's read bandwidth and each row's peak memory measured here.

use anyhow::{bail, Result};
use cria_core::DType;
use cria_engine::bench::{
    measure, random_adapter, spec_bench, Row, Test, Variant, MAX_RANDOM_RANK,
};
use cria_engine::lora::{load_adapters, LoraSpec};
use cria_engine::speculative::SpecConfig;
use cria_engine::LoadedModel;
use cria_model::{ActiveLora, Lora};
use std::io::Write;
use std::sync::Arc;

pub struct BenchOptions {
    pub models: Vec<Option<String>>,
    pub prompt: usize,
    pub gen: usize,
    pub threads: Vec<usize>,
    pub reps: usize,
    pub json: bool,
    pub kv_type: cria_model::KvType,
    /// Adapter files (`--lora PATH[:SCALE]`): every stream runs with all of them.
    pub lora: Vec<LoraSpec>,
    /// `--lora-random RANK`: a random adapter of this rank over every linear layer, one of its
    /// own per stream.
    pub lora_random: Option<usize>,
    /// Element types of the random adapters, one variant each (`--lora-type f32,f16`).
    pub lora_types: Vec<DType>,
    /// `--parallel N`: a test of N concurrent generations (each `gen` tokens) through the
    /// scheduler, base and with adapters; 0: none.
    pub parallel: usize,
    /// `--lookup` / `--draft-model`: instead of the pp/tg tests, decode speed with and without
    /// speculation over the prompt of `prompt_file` (`-n` tokens, greedy).
    pub spec: crate::spec_args::SpecArgs,
    pub prompt_file: Option<std::path::PathBuf>,
    /// (temperature, seed) of the speculative test; temperature 0: greedy.
    pub spec_sampling: (f32, u64),
}

/// `--lora-type`: f32, f16 or bf16.
pub fn lora_type(s: &str) -> std::result::Result<DType, String> {
    match DType::from_name(&s.to_ascii_uppercase()) {
        Some(t @ (DType::F32 | DType::F16 | DType::BF16)) => Ok(t),
        _ => Err(format!("{s:?}: f32, f16 or bf16")),
    }
}

/// Most bytes of random adapters a run holds (all streams and types).
const MAX_RANDOM_BYTES: usize = 4 << 30;

/// Most concurrent streams `--parallel` takes (each is a slot with its own KV cache).
pub const MAX_PARALLEL: usize = 256;

/// The variants every test runs: the base, then (when adapters are asked for) one per random
/// adapter type, each stream with its own random adapter (seeded by its index) and the
/// `--lora` files.
fn variants(o: &BenchOptions, l: &LoadedModel, streams: usize) -> Result<Vec<Variant>> {
    let mut out = vec![Variant::default()];
    let files = load_adapters(l, &o.lora)?;
    let names: Vec<String> = o.lora.iter().map(|s| s.display_name()).collect();
    let types: Vec<Option<DType>> = match o.lora_random {
        Some(_) => o.lora_types.iter().copied().map(Some).collect(),
        None if files.is_empty() => return Ok(out),
        None => vec![None],
    };
    if let Some(rank) = o.lora_random {
        // Every stream's adapter of every type is held at once: refuse what would not fit.
        let per_rank: usize = l
            .model
            .weights
            .layers
            .iter()
            .flat_map(|lw| lw.matrices())
            .map(|w| w.rows + w.cols)
            .sum();
        let bytes: usize =
            o.lora_types.iter().map(|t| t.type_size()).sum::<usize>() * rank * per_rank * streams;
        if bytes > MAX_RANDOM_BYTES {
            bail!(
                "--lora-random {rank} with {streams} stream(s) and {} type(s) needs {:.1} GiB of \
                 adapters (at most {} GiB): a lower rank, fewer streams or types",
                o.lora_types.len(),
                bytes as f64 / (1u64 << 30) as f64,
                MAX_RANDOM_BYTES >> 30
            );
        }
    }
    for ty in types {
        let mut label = names.join("+");
        let mut per_stream = Vec::new();
        for i in 0..streams {
            let mut set: Vec<ActiveLora> = files.clone();
            if let (Some(rank), Some(ty)) = (o.lora_random, ty) {
                let file = random_adapter(&l.model, rank, ty, i as u64 + 1)?;
                let lora = Lora::build(&format!("random{i}"), file, &l.model, &l.backend)?;
                set.push(ActiveLora {
                    lora: Arc::new(lora),
                    scale: 1.0,
                });
            }
            per_stream.push(set);
        }
        if let (Some(rank), Some(ty)) = (o.lora_random, ty) {
            if !label.is_empty() {
                label.push('+');
            }
            let each = if streams > 1 { " each" } else { "" };
            label.push_str(&format!(
                "random r{rank} {}{each}",
                ty.to_string().to_lowercase()
            ));
        }
        out.push(Variant {
            label,
            streams: per_stream,
        });
    }
    Ok(out)
}

/// Resets the peak-RSS mark to the current RSS (Linux >= 4.0; elsewhere a no-op, and the marks
/// below then cover the whole process so far).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident memory of this process since the last reset (Linux `VmHWM`), bytes.
fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub fn run(o: &BenchOptions, out: &mut dyn Write) -> Result<()> {
    if o.reps == 0 {
        bail!("-r must be at least 1");
    }
    if let Some(cfg) = o.spec.config()? {
        return run_spec(o, cfg, out);
    }
    if o.prompt_file.is_some() {
        bail!("--prompt-file is the prompt of the speculative test: add --lookup N or --draft-model M");
    }
    if o.prompt == 0 && o.gen == 0 {
        bail!("nothing to measure: both -p and -n are 0");
    }
    if o.threads.contains(&0) {
        bail!("thread counts must be at least 1");
    }
    if o.parallel > MAX_PARALLEL {
        bail!("--parallel {}: at most {MAX_PARALLEL} streams", o.parallel);
    }
    if o.parallel > 0 && o.gen == 0 {
        bail!("--parallel needs generated tokens (-n)");
    }
    if let Some(r) = o.lora_random {
        if r == 0 || r > MAX_RANDOM_RANK {
            bail!("--lora-random {r}: a rank of 1..={MAX_RANDOM_RANK}");
        }
        if o.lora_types.is_empty() {
            bail!("--lora-type: no type");
        }
        if let Some(t) = o
            .lora_types
            .iter()
            .find(|t| !matches!(t, DType::F32 | DType::F16 | DType::BF16))
        {
            bail!("--lora-type {t}: f32, f16 or bf16");
        }
    }
    let with_lora = o.lora_random.is_some() || !o.lora.is_empty();
    let mut bw = Vec::new();
    for &t in &o.threads {
        // 1 GiB: far beyond any L3, so this is DRAM.
        bw.push((t, cria_kernels::membw::read_bandwidth(t, 1024, 5)));
        eprintln!(
            "read bandwidth, {t} thread(s): {:.1} GB/s",
            bw.last().unwrap().1 / 1e9
        );
    }
    // Each row's peak memory is what loading the model and running that one test takes: the
    // mark is reset before each load (after the bandwidth probe's 1 GiB is freed) and before
    // each test, and a row reports max(load peak, test peak). Without the per-test reset a tg
    // row would carry the pp test's larger KV cache and activations, run before it in this
    // process.
    let mut rows = Vec::new();
    if !o.json {
        if with_lora {
            writeln!(
                out,
                "| model | size | params | backend | threads | test | lora | t/s | vs base | GB/s | roofline | logits |"
            )?;
            writeln!(
                out,
                "|---|---:|---:|---|---:|---:|---|---:|---:|---:|---:|---|"
            )?;
        } else {
            writeln!(
                out,
                "| model | size | params | backend | threads | test | t/s | GB/s | roofline | logits |"
            )?;
            writeln!(out, "|---|---:|---:|---|---:|---:|---:|---:|---:|---|")?;
        }
    }
    for spec in &o.models {
        for &(threads, bandwidth) in &bw {
            reset_peak_rss();
            let l = crate::load::with(
                spec.as_deref(),
                &cria_engine::LoadOptions {
                    f32: false,
                    threads: Some(threads),
                    kv_type: o.kv_type,
                },
            )?;
            let load_peak = peak_rss();
            let mut tests = Vec::new();
            if o.prompt > 0 {
                tests.push(Test::Prompt(o.prompt));
            }
            if o.gen > 0 {
                tests.push(Test::Gen(o.gen));
            }
            if o.parallel > 0 {
                tests.push(Test::Streams {
                    streams: o.parallel,
                    n: o.gen,
                });
            }
            for test in tests {
                let vs = variants(o, &l, test.streams())?;
                reset_peak_rss();
                let measured = measure(&l, test, o.reps, bandwidth, &vs)?;
                let peak = peak_rss().max(load_peak);
                let base = measured.first().map(|(r, _)| r.mean());
                for (mut row, mismatches) in measured {
                    row.peak_rss = peak;
                    for x in mismatches {
                        eprintln!(
                            "warning: {} {} {} t={threads}: repetition {} gave logits hash {}, \
                             the warm-up run {}: not deterministic",
                            row.model, row.test, row.lora, x.rep, x.hash, x.warm_up
                        );
                    }
                    let vs_base = base
                        .filter(|_| !row.lora.is_empty())
                        .map(|b| row.mean() / b);
                    if !o.json {
                        print_md(&row, with_lora.then_some(vs_base), out)?;
                    }
                    rows.push((row, vs_base));
                }
            }
        }
    }
    if o.json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(r, vs_base)| {
                serde_json::json!({
                    "lora": r.lora, "vs_base": vs_base,
                    "model": r.model, "type": r.dtype, "size_bytes": r.size_bytes,
                    "params": r.params, "backend": r.backend, "threads": r.threads,
                    "test": r.test, "n_tokens": r.tokens, "avg_ts": r.mean(),
                    "stddev_ts": r.stddev(), "samples_ts": r.samples_ts,
                    "bytes_per_token": r.bytes_per_token, "read_bandwidth": r.bandwidth,
                    "gbps": r.gbps(), "roofline": r.roofline(), "logits_hash": r.logits_hash,
                    "kv_bytes": r.kv_bytes, "kv_type": o.kv_type.name(), "peak_rss_bytes": r.peak_rss,
                })
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    }
    Ok(())
}

/// One row of the table; `lora`: the adapter columns (what it ran with, its speed over the
/// base's), when the run has adapters.
fn print_md(r: &Row, lora: Option<Option<f64>>, out: &mut dyn Write) -> Result<()> {
    let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("".to_string(), f);
    let (lora_col, ratio_col) = match lora {
        Some(vs) => (
            format!(" {} |", if r.lora.is_empty() { "-" } else { &r.lora }),
            format!(" {} |", opt(vs, &|x| format!("{:.1}%", x * 100.0))),
        ),
        None => (String::new(), String::new()),
    };
    writeln!(
        out,
        "| {} {} | {:.1} MiB | {} | {} | {} | {} |{lora_col} {:.2} ± {:.2} |{ratio_col} {} | {} | {} |",
        r.model,
        r.dtype,
        r.size_bytes as f64 / (1 << 20) as f64,
        crate::inspect::params(r.params),
        r.backend,
        r.threads,
        r.test,
        r.mean(),
        r.stddev(),
        opt(r.gbps(), &|g| format!("{g:.1}")),
        opt(r.roofline(), &|x| format!("{:.0}%", x * 100.0)),
        r.logits_hash
    )?;
    out.flush()?;
    Ok(())
}

/// `cria bench --lookup N | --draft-model M --prompt-file F -n N`: decode tokens/s without and
/// with speculation (one row per model and thread count), the acceptance rate and tokens per
/// forward; the prompt file's text is the user message of the model's chat template (plain text
/// without one).
fn run_spec(o: &BenchOptions, cfg: SpecConfig, out: &mut dyn Write) -> Result<()> {
    let Some(file) = &o.prompt_file else {
        bail!("--lookup/--draft-model in bench need --prompt-file FILE (the text to answer)");
    };
    if o.gen == 0 {
        bail!("-n 0: nothing to generate");
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("--prompt-file {}: {e}", file.display()))?;
    if !o.json {
        writeln!(
            out,
            "| model | threads | prompt | n | spec | plain t/s | spec t/s | speedup | acceptance | tokens/forward | same output |"
        )?;
        writeln!(out, "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|")?;
    }
    let what = match (&o.spec.lookup, &o.spec.draft_model) {
        (Some(n), _) => format!("lookup {n}"),
        (None, Some(m)) => format!("draft {m} ({})", cfg.draft_max),
        _ => String::new(),
    };
    for spec in &o.models {
        for &threads in &o.threads {
            let lo = cria_engine::LoadOptions {
                f32: false,
                threads: Some(threads),
                kv_type: o.kv_type,
            };
            let l = crate::load::with(spec.as_deref(), &lo)?;
            let draft = crate::spec_args::load_draft_with(&o.spec, &lo)?;
            let prompt = if l.tok.chat_template().is_some() {
                let msgs = [cria_engine::template::Message::new("user", text.clone())];
                cria_engine::render_chat(&l.tok, &msgs, true, None)?.1
            } else {
                l.tok.encode(&text, true, false)
            };
            let (temperature, seed) = o.spec_sampling;
            let sampler = match temperature > 0.0 {
                true => cria_engine::sampler::SamplerConfig {
                    temperature,
                    seed,
                    ..Default::default()
                },
                false => cria_engine::sampler::SamplerConfig::greedy(),
            };
            let r = spec_bench(&l, draft.as_ref(), &prompt, o.gen, cfg, o.reps, &sampler)?;
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
            let (p, q) = (mean(&r.plain_tps), mean(&r.spec_tps));
            let name = spec.clone().unwrap_or_else(|| "default".into());
            let tpf = r.gen_tokens as f64 / r.stats.forwards.max(1) as f64;
            if o.json {
                let j = serde_json::json!({
                    "model": name, "threads": threads, "prompt_tokens": prompt.len(),
                    "n_gen": o.gen, "spec": what, "plain_tps": r.plain_tps,
                    "spec_tps": r.spec_tps, "speedup": q / p,
                    "drafted": r.stats.drafted, "accepted": r.stats.accepted,
                    "acceptance": r.stats.acceptance(), "tokens_per_forward": tpf,
                    "forwards": r.stats.forwards, "plain_forwards_of_the_gate": r.stats.gated,
                    "same_output": r.same_output, "row_costs_s": r.row_costs,
                    "temperature": temperature, "seed": seed,
                });
                writeln!(out, "{j}")?;
            } else {
                writeln!(
                    out,
                    "| {name} | {threads} | {} | {} | {what} | {p:.1} | {q:.1} | {:.2}x | {:.1}% | {tpf:.2} | {} |",
                    prompt.len(),
                    o.gen,
                    q / p,
                    100.0 * r.stats.acceptance(),
                    if r.same_output { "yes" } else { "NO" }
                )?;
            }
            if !r.same_output {
                bail!(
                    "speculation changed the (greedy or seeded) output: a bug (please report it)"
                );
            }
        }
    }
    Ok(())
}
