//! The CLI's side of loading: a model spec (a path, hf:ORG/REPO[:FILE] or a short name) is
//! resolved to a local path, downloading it if needed, then the engine loads it.

use crate::fetch;
use anyhow::Result;
use cria_engine::{LoadOptions, LoadedModel};
use cria_tokenizer::Tokenizer;

/// Resolves `spec` and loads it with the model flags of `m` (its -m is not read: `spec` is the
/// model, however the command took it), `--lora` adapters included.
pub fn model(spec: Option<&str>, m: &crate::ModelArgs) -> Result<LoadedModel> {
    let o = LoadOptions {
        f32: m.f32,
        threads: m.threads,
        kv_type: m.kv_type(),
    };
    cria_engine::load_with_lora(&fetch::resolve(spec)?.path, &o, &m.lora())
}

/// Resolves `spec` and loads it with options `o`.
pub fn with(spec: Option<&str>, o: &LoadOptions) -> Result<LoadedModel> {
    cria_engine::load(&fetch::resolve(spec)?.path, o)
}

/// The tokenizer of the model `spec` names, without its weights.
pub fn tokenizer(spec: Option<&str>) -> Result<Tokenizer> {
    cria_engine::load_tokenizer_only(&fetch::resolve(spec)?.path)
}

/// The context size: `requested`, else the model's training context as far as its KV cache
/// fits in half the free memory. Printed (with why) on stderr.
pub fn ctx_size(l: &LoadedModel, requested: Option<usize>) -> Result<usize> {
    let c = &l.model.config;
    let per_token = 2 * c.n_layers * l.kv_type.row_bytes(c.kv_dim());
    let (n, why) = cria_engine::memory::choose_ctx_size(c.max_seq_len, per_token, requested)?;
    eprintln!("{why}, {} cache", l.kv_type);
    Ok(n)
}
