//! Debugging aid for the bit-exactness work: runs the forward with a probe on every op and
//! compares each op's output element by element with llama.cpp's, as dumped by
//! scripts/fixtures/llamacpp_dump.cpp (same token ids, one batch):
//!
//!   cargo run --release -p cria-model --example cmp_llamacpp -- MODEL.gguf DUMP_DIR 1,2,3 [chunk]
//!
//! Prints, per op and layer: elements differing, max |diff|, max |diff| / max |value|. With
//! CRIA_DUMP=DIR, also writes cria's values to DIR/<name>-<layer>.npy.

use cria_kernels::CpuBackend;
use cria_model::{forward, KvCache, LoadOptions, Logits, Model, Scratch};
use std::path::Path;
use std::sync::{Arc, Mutex};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: cmp_llamacpp MODEL DUMP_DIR IDS [CHUNK]");
        std::process::exit(2);
    }
    let b = CpuBackend::new(2);
    let m = Model::load(Path::new(&args[1]), LoadOptions::default(), &b).expect("load");
    let dir = args[2].clone();
    let ids: Vec<u32> = args[3].split(',').map(|s| s.parse().expect("id")).collect();
    let chunk: usize = args
        .get(4)
        .map(|s| s.parse().expect("chunk"))
        .unwrap_or(ids.len());
    // (name, layer) -> values, concatenated over chunks.
    let seen: Arc<Mutex<Vec<(String, usize, Vec<f32>)>>> = Arc::default();
    let mut kv = KvCache::new(&m, ids.len());
    let mut s = Scratch::new(&m, chunk, Logits::All);
    let rec = seen.clone();
    s.probe = Some(Box::new(move |name, l, v| {
        let mut r = rec.lock().unwrap();
        if let Some(e) = r.iter_mut().find(|e| e.0 == name && e.1 == l) {
            e.2.extend_from_slice(v);
        } else {
            r.push((name.to_string(), l, v.to_vec()));
        }
    }));
    let mut pos = 0;
    for c in ids.chunks(chunk) {
        forward(&m, &b, c, pos, &mut kv, &mut s, Logits::All).expect("forward");
        pos += c.len();
    }
    let r = seen.lock().unwrap();
    for (name, l, got) in r.iter() {
        let file = if matches!(name.as_str(), "embd" | "result_norm" | "result_output") {
            format!("{dir}/{name}.npy")
        } else {
            format!("{dir}/{name}-{l}.npy")
        };
        if let Ok(d) = std::env::var("CRIA_DUMP") {
            cria_core::npy::write_f32(Path::new(&format!("{d}/{name}-{l}.npy")), &[got.len()], got)
                .expect("dump");
        }
        let Ok((_, want)) = cria_core::npy::read_f32(Path::new(&file)) else {
            println!("{name:>12}-{l:<2} (no llama.cpp dump)");
            continue;
        };
        if want.len() != got.len() {
            println!(
                "{name:>12}-{l:<2} length {} vs llama.cpp {}",
                got.len(),
                want.len()
            );
            continue;
        }
        let ndiff = got
            .iter()
            .zip(&want)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        let maxd = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let maxv = want.iter().map(|v| v.abs()).fold(0f32, f32::max);
        println!(
            "{name:>12}-{l:<2} differ {ndiff:>7}/{:<7} max|d| {maxd:.3e} rel {:.3e}",
            got.len(),
            maxd / maxv.max(1e-30)
        );
    }
}
