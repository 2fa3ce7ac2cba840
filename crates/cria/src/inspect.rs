//! `cria inspect`: what a model file is, without running it.

use crate::fetch;
use anyhow::{Context, Result};
use cria_core::Tensor;
use cria_model::Config;
use std::io::Write;

fn tensor_table(out: &mut dyn Write, tensors: &[Tensor]) -> Result<()> {
    writeln!(out, "\ntensors ({}):", tensors.len())?;
    writeln!(
        out,
        "  {:<40} {:<7} {:<22} {:>12}",
        "name", "type", "shape (ggml order)", "bytes"
    )?;
    let mut total = 0usize;
    for t in tensors {
        let n = t.bytes().len();
        total += n;
        writeln!(
            out,
            "  {:<40} {:<7} {:<22} {:>12}",
            t.name,
            t.dtype.name(),
            format!("{:?}", t.ne),
            n
        )?;
    }
    writeln!(out, "  total {:.1} MiB", total as f64 / (1 << 20) as f64)?;
    Ok(())
}

fn config_lines(out: &mut dyn Write, c: &Config) -> Result<()> {
    writeln!(out, "architecture: {}", c.arch)?;
    writeln!(
        out,
        "dim {} | layers {} | heads {} (kv {}, head_dim {}) | ffn {} | vocab {} | context {}",
        c.dim,
        c.n_layers,
        c.n_heads,
        c.n_kv_heads,
        c.head_dim,
        c.ffn_dim,
        c.vocab_size,
        c.max_seq_len
    )?;
    writeln!(out, "rms_norm_eps {} | rope_theta {} | rope dims {} | rope scaling {:?} | tied embeddings {} | sliding window {:?}", c.norm_eps, c.rope_theta, c.n_rot, c.rope_scaling, c.tied_embeddings, c.sliding_window)?;
    Ok(())
}

pub fn run(spec: Option<&str>, all_metadata: bool, out: &mut dyn Write) -> Result<()> {
    let r = fetch::resolve(spec)?;
    let p = &r.path;
    writeln!(out, "model: {}", p.display())?;
    if p.is_dir() {
        let text = std::fs::read_to_string(p.join("config.json")).context("reading config.json")?;
        match Config::from_hf_json(&text) {
            Ok(c) => config_lines(out, &c)?,
            Err(e) => writeln!(out, "config: {e}")?,
        }
        let cfg = p.join("tokenizer_config.json");
        match cria_tokenizer::Tokenizer::from_hf(
            &p.join("tokenizer.json"),
            cfg.exists().then_some(cfg.as_path()),
        ) {
            Ok(t) => writeln!(
                out,
                "tokenizer: {} ({} tokens), chat template: {}",
                t.kind(),
                t.vocab_size(),
                if t.chat_template().is_some() {
                    "yes"
                } else {
                    "no"
                }
            )?,
            Err(e) => writeln!(out, "tokenizer: {e}")?,
        }
        let st = cria_core::safetensors::SafetensorsModel::open_folder(p)?;
        tensor_table(out, &st.tensors)?;
    } else {
        let g = cria_core::gguf::GgufFile::open(p)?;
        writeln!(
            out,
            "format: GGUF v{} | {} tensors | {} metadata keys | {:.1} MiB",
            g.version,
            g.tensors.len(),
            g.metadata.len(),
            g.file_bytes as f64 / (1 << 20) as f64
        )?;
        if let Some(n) = g.get_str("general.name") {
            writeln!(out, "name: {n}")?;
        }
        match Config::from_gguf(&g) {
            Ok(c) => config_lines(out, &c)?,
            Err(e) => writeln!(out, "config: {e}")?,
        }
        match cria_tokenizer::Tokenizer::from_gguf(&g) {
            Ok(t) => writeln!(
                out,
                "tokenizer: {} ({} tokens, bos {:?}, eos {:?}, add_bos {}), chat template: {}",
                t.kind(),
                t.vocab_size(),
                t.bos(),
                t.eos(),
                t.add_bos(),
                if t.chat_template().is_some() {
                    "yes"
                } else {
                    "no"
                }
            )?,
            Err(e) => writeln!(out, "tokenizer: {e}")?,
        }
        if all_metadata {
            writeln!(out, "\nmetadata:")?;
            for (k, v) in &g.metadata {
                writeln!(out, "  {k} = {}", v.summary())?;
            }
        }
        tensor_table(out, &g.tensors)?;
    }
    Ok(())
}
