//! Counters for `GET /metrics` (Prometheus text format). Plain atomics: the scheduler and the
//! handlers bump them, a scrape reads them; no locks on the token path.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

#[derive(Default)]
pub struct Metrics {
    pub requests_chat: AtomicU64,
    pub requests_completion: AtomicU64,
    pub requests_embedding: AtomicU64,
    pub requests_other: AtomicU64,
    /// Requests answered with a 4xx/5xx.
    pub errors: AtomicU64,
    /// The scheduler's counters.
    pub sched: Arc<cria_engine::scheduler::Metrics>,
    /// Grammar compilations running now (on blocking threads).
    pub compiling: AtomicU64,
}

/// One metric family in Prometheus text: its HELP and TYPE lines, then a line per (labels,
/// value).
fn family(s: &mut String, name: &str, kind: &str, help: &str, lines: &[(String, f64)]) {
    let _ = writeln!(s, "# HELP cria_{name} {help}");
    let _ = writeln!(s, "# TYPE cria_{name} {kind}");
    for (labels, v) in lines {
        let _ = writeln!(s, "cria_{name}{labels} {v}");
    }
}

impl Metrics {
    pub fn render(&self, slots: usize) -> String {
        let g = |a: &AtomicU64| a.load(Relaxed);
        let sc = &self.sched;
        let mut s = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, f64)]| {
            family(&mut s, name, kind, help, lines)
        };
        let one = |v: u64| vec![(String::new(), v as f64)];
        metric(
            "requests_total",
            "counter",
            "HTTP requests by endpoint.",
            &[
                ("{endpoint=\"chat\"}".into(), g(&self.requests_chat) as f64),
                (
                    "{endpoint=\"completion\"}".into(),
                    g(&self.requests_completion) as f64,
                ),
                (
                    "{endpoint=\"embedding\"}".into(),
                    g(&self.requests_embedding) as f64,
                ),
                (
                    "{endpoint=\"other\"}".into(),
                    g(&self.requests_other) as f64,
                ),
            ],
        );
        metric(
            "request_errors_total",
            "counter",
            "Requests answered with an error status.",
            &one(g(&self.errors)),
        );
        metric(
            "requests_cancelled_total",
            "counter",
            "Generations stopped because the client disconnected.",
            &one(g(&sc.cancelled)),
        );
        metric(
            "prompt_tokens_total",
            "counter",
            "Prompt tokens of generations (cached ones included).",
            &one(g(&sc.prompt_tokens)),
        );
        metric(
            "prompt_tokens_cached_total",
            "counter",
            "Prompt tokens whose keys and values were reused from a cached prefix.",
            &one(g(&sc.prompt_tokens_cached)),
        );
        metric(
            "tokens_generated_total",
            "counter",
            "Tokens generated.",
            &one(g(&sc.generated_tokens)),
        );
        metric(
            "queue_depth",
            "gauge",
            "Requests waiting for a free slot.",
            &one(g(&sc.queue_depth)),
        );
        metric(
            "grammar_compilations",
            "gauge",
            "Grammar and JSON schema compilations running now.",
            &one(g(&self.compiling)),
        );
        metric(
            "slots_busy",
            "gauge",
            "Slots generating now.",
            &one(g(&sc.slots_busy)),
        );
        metric(
            "slots",
            "gauge",
            "Slots in all (--parallel).",
            &one(slots as u64),
        );
        let (sum, n) = (g(&sc.ttft_us_sum), g(&sc.ttft_count));
        metric(
            "time_to_first_token_seconds",
            "summary",
            "From a request reaching the scheduler to its first generated token.",
            // "labels" that are suffixes: cria_time_to_first_token_seconds_sum / _count.
            &[
                ("_sum".into(), sum as f64 / 1e6),
                ("_count".into(), n as f64),
            ],
        );
        metric(
            "batch_steps_total",
            "counter",
            "Batched forward passes.",
            &one(g(&sc.steps)),
        );
        metric(
            "batch_tokens_total",
            "counter",
            "Tokens evaluated by the batched forward passes.",
            &one(g(&sc.step_tokens)),
        );
        metric(
            "busy_seconds_total",
            "counter",
            "Time the scheduler spent in forward passes and sampling.",
            &[(String::new(), g(&sc.busy_us) as f64 / 1e6)],
        );
        metric(
            "tokens_per_second",
            "gauge",
            "Tokens generated per second over the last ten seconds.",
            &[(String::new(), g(&sc.recent_tps_milli) as f64 / 1e3)],
        );
        s
    }
}

/// The LoRA adapters' lines: how many are loaded and their bytes, and per adapter (by name)
/// the requests served with it and those running now.
pub fn render_adapters(loaded: usize, bytes: usize, per: &[(String, u64, usize)]) -> String {
    let mut s = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, f64)]| {
        family(&mut s, name, kind, help, lines)
    };
    // Adapter names are [A-Za-z0-9._-]: nothing to escape in a label.
    let by = |f: &dyn Fn(&(String, u64, usize)) -> f64| -> Vec<(String, f64)> {
        per.iter()
            .map(|a| (format!("{{adapter=\"{}\"}}", a.0), f(a)))
            .collect()
    };
    metric(
        "lora_adapters",
        "gauge",
        "LoRA adapters loaded.",
        &[(String::new(), loaded as f64)],
    );
    metric(
        "lora_adapter_bytes",
        "gauge",
        "Memory the LoRA adapters loaded take.",
        &[(String::new(), bytes as f64)],
    );
    metric(
        "lora_requests_total",
        "counter",
        "Requests run with each LoRA adapter (since it was loaded).",
        &by(&|a| a.1 as f64),
    );
    metric(
        "lora_requests_running",
        "gauge",
        "Requests running now with each LoRA adapter.",
        &by(&|a| a.2 as f64),
    );
    s
}
