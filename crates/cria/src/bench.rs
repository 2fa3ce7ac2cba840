//! `cria bench`: prompt-processing and generation throughput as llama.cpp's `llama-bench`
//! measures it (`cria_engine::bench`), over models and thread counts, printed as a Markdown table
//! or JSON; this machine's read bandwidth and each row's peak memory measured here.

use anyhow::{bail, Result};
use cria_engine::bench::{measure, Row, Test};
use std::io::Write;

pub struct BenchOptions {
    pub models: Vec<Option<String>>,
    pub prompt: usize,
    pub gen: usize,
    pub threads: Vec<usize>,
    pub reps: usize,
    pub json: bool,
    pub kv_type: cria_model::KvType,
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
    if o.prompt == 0 && o.gen == 0 {
        bail!("nothing to measure: both -p and -n are 0");
    }
    if o.threads.contains(&0) {
        bail!("thread counts must be at least 1");
    }
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
        writeln!(
            out,
            "| model | size | params | backend | threads | test | t/s | GB/s | roofline | logits |"
        )?;
        writeln!(out, "|---|---:|---:|---|---:|---:|---:|---:|---:|---|")?;
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
            for test in tests {
                reset_peak_rss();
                let (mut row, mismatches) = measure(&l, test, o.reps, bandwidth)?;
                row.peak_rss = peak_rss().max(load_peak);
                for x in mismatches {
                    eprintln!(
                        "warning: {} {} t={threads}: repetition {} gave logits hash {}, the \
                         warm-up run {}: not deterministic",
                        row.model, row.test, x.rep, x.hash, x.warm_up
                    );
                }
                if !o.json {
                    print_md(&row, out)?;
                }
                rows.push(row);
            }
        }
    }
    if o.json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
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

fn print_md(r: &Row, out: &mut dyn Write) -> Result<()> {
    let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("".to_string(), f);
    writeln!(
        out,
        "| {} {} | {:.1} MiB | {} | {} | {} | {} | {:.2} ± {:.2} | {} | {} | {} |",
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
