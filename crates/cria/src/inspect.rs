//! `cria inspect`: what a model file (or a LoRA adapter) is, without running it.

use crate::fetch;
use anyhow::{Context, Result};
use cria_core::Tensor;
use cria_model::{Config, RopeScaling};
use cria_tokenizer::Tokenizer;
use std::io::Write;
use std::path::Path;

/// A parameter count as people write it: 134.5M, 1.24B, 960K.
pub fn params(n: usize) -> String {
    let n = n as f64;
    match n {
        _ if n >= 1e9 => format!("{:.2}B", n / 1e9),
        _ if n >= 1e6 => format!("{:.1}M", n / 1e6),
        _ if n >= 1e3 => format!("{:.1}K", n / 1e3),
        _ => format!("{n}"),
    }
}

/// Bytes as text for a terminal: UTF-8 as it is, with \n \t \r \\ \' and other control
/// characters escaped, and bytes that are not UTF-8 (part of a character) as \xHH.
pub fn escaped(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len());
    for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                '\\' => out.push_str("\\\\"),
                '\'' => out.push_str("\\'"),
                c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
                c => out.push(c),
            }
        }
        for x in chunk.invalid() {
            out.push_str(&format!("\\x{x:02x}"));
        }
    }
    out
}

/// Orders names as people count: blk.2 before blk.10 (runs of digits compare as numbers).
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn parts(s: &str) -> impl Iterator<Item = (bool, &str)> {
        let mut rest = s;
        std::iter::from_fn(move || {
            let first = rest.chars().next()?;
            let digits = first.is_ascii_digit();
            let end = rest
                .find(|c: char| c.is_ascii_digit() != digits)
                .unwrap_or(rest.len());
            let (head, tail) = rest.split_at(end);
            rest = tail;
            Some((digits, head))
        })
    }
    fn key((digits, p): (bool, &str)) -> (usize, &str, usize) {
        match digits {
            // Leading zeros aside, a longer run of digits is a larger number.
            true => (
                p.trim_start_matches('0').len(),
                p.trim_start_matches('0'),
                p.len(),
            ),
            false => (0, p, 0),
        }
    }
    parts(a).map(key).cmp(parts(b).map(key))
}

fn tensor_table(out: &mut dyn Write, tensors: &[Tensor]) -> Result<()> {
    writeln!(out, "\ntensors ({}):", tensors.len())?;
    writeln!(
        out,
        "  {:<40} {:<7} {:<22} {:>12}",
        "name", "type", "shape (ggml order)", "bytes"
    )?;
    let mut sorted: Vec<&Tensor> = tensors.iter().collect();
    sorted.sort_by(|a, b| natural_cmp(&a.name, &b.name));
    let mut total = 0usize;
    for t in sorted {
        let n = t.bytes().len();
        total += n;
        let shape: Vec<String> = t.ne.iter().map(|d| d.to_string()).collect();
        writeln!(
            out,
            "  {:<40} {:<7} {:<22} {:>12}",
            t.name,
            t.dtype.name(),
            shape.join(" x "),
            n
        )?;
    }
    writeln!(out, "  total {:.1} MiB", total as f64 / (1 << 20) as f64)?;
    Ok(())
}

/// The parameters of a model: the elements of its tensors.
fn n_params(tensors: &[Tensor]) -> usize {
    tensors.iter().map(|t| t.ne.iter().product::<usize>()).sum()
}

fn rope_scaling(r: &RopeScaling) -> String {
    match r {
        RopeScaling::None => "none".into(),
        RopeScaling::Linear { factor } => format!("linear x{factor}"),
        RopeScaling::Llama3 { factor, .. } => format!("llama3 x{factor}"),
        RopeScaling::FreqFactors(f) => format!("frequency factors ({} pairs)", f.len()),
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn config_lines(out: &mut dyn Write, c: &Config, params_count: usize) -> Result<()> {
    writeln!(
        out,
        "architecture: {} | {} params",
        c.arch,
        params(params_count)
    )?;
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
    writeln!(
        out,
        "rms_norm_eps {} | rope_theta {} | rope dims {} | rope scaling {} | tied embeddings {} | sliding window {}",
        c.norm_eps,
        c.rope_theta,
        c.n_rot,
        rope_scaling(&c.rope_scaling),
        yes_no(c.tied_embeddings),
        c.sliding_window.map_or("none".to_string(), |w| w.to_string())
    )?;
    Ok(())
}

/// A special token as "ID 'TEXT'", or "none".
fn special(t: &Tokenizer, id: Option<u32>) -> String {
    id.map_or("none".into(), |id| {
        format!("{id} '{}'", escaped(t.token_text(id).as_bytes()))
    })
}

/// A LoRA adapter (PEFT folder or GGUF adapter): what it declares and what its tensors hold.
fn adapter(p: &Path, out: &mut dyn Write) -> Result<()> {
    let f = cria_model::AdapterFile::open(p)?;
    writeln!(out, "adapter: {}", p.display())?;
    for (k, v) in f.describe() {
        writeln!(out, "{k}: {v}")?;
    }
    Ok(())
}

pub fn run(spec: Option<&str>, all_metadata: bool, out: &mut dyn Write) -> Result<()> {
    if let Some(p) = spec
        .map(|s| Path::new(s.trim()))
        .filter(|p| cria_model::lora_file::looks_like_adapter(p))
    {
        return adapter(p, out);
    }
    let r = fetch::resolve(spec)?;
    let p = &r.path;
    writeln!(out, "model: {}", p.display())?;
    if p.is_dir() {
        let text = std::fs::read_to_string(p.join("config.json")).context("reading config.json")?;
        let st = cria_core::safetensors::SafetensorsModel::open_folder(p)?;
        match Config::from_hf_json(&text) {
            Ok(c) => config_lines(out, &c, n_params(&st.tensors))?,
            Err(e) => writeln!(out, "config: {e}")?,
        }
        // The tokenizer as the engine loads it (chat_template.jinja included).
        match cria_engine::load_tokenizer_only(p) {
            Ok(t) => writeln!(
                out,
                "tokenizer: {} ({} tokens), chat template: {}",
                t.kind(),
                t.vocab_size(),
                yes_no(t.chat_template().is_some())
            )?,
            Err(e) => writeln!(out, "tokenizer: {e:#}")?,
        }
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
            Ok(c) => config_lines(out, &c, n_params(&g.tensors))?,
            Err(e) => writeln!(out, "config: {e}")?,
        }
        match Tokenizer::from_gguf(&g) {
            Ok(t) => writeln!(
                out,
                "tokenizer: {} ({} tokens, bos {}, eos {}, adds bos {}), chat template: {}",
                t.kind(),
                t.vocab_size(),
                special(&t, t.bos()),
                special(&t, t.eos()),
                yes_no(t.add_bos()),
                yes_no(t.chat_template().is_some())
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
