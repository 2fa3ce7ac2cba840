//! Adapter files of a training run: the PEFT folder (`adapter_config.json` +
//! `adapter_model.safetensors`, what `PeftModel.from_pretrained` and `cria run --lora` load), the
//! llama.cpp GGUF LoRA (`--gguf`), and reading a PEFT folder back into [`LoraParams`]
//! (`--init-adapter`, `--resume`).
//!
//! Row order: [`LoraParams`] keeps the B rows of q and k in the BASE model's order. Over a GGUF
//! base with interleaved RoPE rows (`AdapterMeta::interleaved`), a PEFT folder gets them in
//! Hugging Face's half-split order (`permute_rows(.., true)`), the exact inverse of what
//! `cria_model::lora::check_pair` applies when it loads a PEFT adapter over such a base. A GGUF
//! adapter is always in llama.cpp's interleaved order (it is made against a converted base), so
//! over a half-split (HF folder) base its q/k B rows are permuted the other way.
//!
//! Every file is written through [`SyncedWriter`]: to `NAME.tmp`, fsync'd, renamed; a
//! [`WriteBudget`] can make writes fail after a number of bytes (the disk-full test hook).

use crate::params::{Half, LoraConfig, LoraParams};
use crate::{Error, Result};
use cria_core::DType;
use cria_model::config::Config;
use cria_model::lora::{permute_rows, AdapterFile, Target};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

pub const PEFT_CONFIG: &str = "adapter_config.json";
pub const PEFT_WEIGHTS: &str = "adapter_model.safetensors";
pub const GGUF_ADAPTER: &str = "adapter.gguf";

/// What the adapter files say of the base model.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterMeta {
    /// PEFT's base_model_name_or_path (the -m argument as given).
    pub base_model: String,
    /// GGUF `general.architecture` of the adapter (one llama.cpp reads: "llama").
    pub arch: String,
    /// The base's q/k rows are llama.cpp's interleaved RoPE pairs (a GGUF base).
    pub interleaved: bool,
    pub n_heads: usize,
    pub n_kv_heads: usize,
}

impl AdapterMeta {
    pub fn of_config(c: &Config, base_model: &str) -> AdapterMeta {
        AdapterMeta {
            base_model: base_model.to_string(),
            // llama.cpp refuses an adapter whose architecture is not the model's: a GGUF base's
            // own (a config with interleaved rows came from a GGUF), else "llama" (what
            // convert_hf_to_gguf.py names the LLaMA model_types cria reads).
            arch: if c.rope_interleaved {
                c.arch.clone()
            } else {
                "llama".into()
            },
            interleaved: c.rope_interleaved,
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
        }
    }

    /// Heads whose rows a q/k up projection permutes (None for other targets).
    fn heads(&self, t: Target) -> Option<usize> {
        match t {
            Target::Q => Some(self.n_heads),
            Target::K => Some(self.n_kv_heads),
            _ => None,
        }
    }
}

/// PEFT's module name of a layer target (`self_attn.q_proj`, `mlp.down_proj`).
pub fn peft_module(t: Target) -> Option<&'static str> {
    Some(match t {
        Target::Q => "self_attn.q_proj",
        Target::K => "self_attn.k_proj",
        Target::V => "self_attn.v_proj",
        Target::O => "self_attn.o_proj",
        Target::Gate => "mlp.gate_proj",
        Target::Up => "mlp.up_proj",
        Target::Down => "mlp.down_proj",
        Target::Output => return None,
    })
}

/// The short name of a target (`q_proj`), PEFT's target_modules entry.
pub fn peft_target_name(t: Target) -> Option<&'static str> {
    peft_module(t).and_then(|m| m.split('.').nth(1))
}

/// `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`.
pub fn peft_tensor_name(layer: usize, t: Target, half: Half) -> Option<String> {
    let h = match half {
        Half::A => "lora_A",
        Half::B => "lora_B",
    };
    Some(format!(
        "base_model.model.model.layers.{layer}.{}.{h}.weight",
        peft_module(t)?
    ))
}

/// adapter_config.json as PEFT writes it for a plain LoRA.
pub fn peft_config_json(cfg: &LoraConfig, base_model: &str) -> serde_json::Value {
    let targets: Vec<&str> = cfg
        .targets
        .iter()
        .filter_map(|&t| peft_target_name(t))
        .collect();
    serde_json::json!({
        "alpha_pattern": {},
        "base_model_name_or_path": base_model,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "layers_pattern": null,
        "layers_to_transform": null,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "modules_to_save": null,
        "peft_type": "LORA",
        "r": cfg.rank,
        "rank_pattern": {},
        "revision": null,
        "target_modules": targets,
        "task_type": "CAUSAL_LM",
        "use_dora": false,
        "use_rslora": cfg.rslora,
    })
}

/// A byte budget shared by the writes of one run: the test hook for a disk that fills
/// (`CRIA_TEST_FAIL_WRITE_AFTER=BYTES` in `cria finetune`). Once more than `limit` bytes have
/// been written in all, a write fails with ENOSPC ("No space left on device").
#[derive(Debug, Default)]
pub struct WriteBudget {
    limit: Option<u64>,
    used: AtomicU64,
}

impl WriteBudget {
    pub fn unlimited() -> WriteBudget {
        WriteBudget::default()
    }

    pub fn fail_after(bytes: u64) -> WriteBudget {
        WriteBudget {
            limit: Some(bytes),
            used: AtomicU64::new(0),
        }
    }

    fn take(&self, n: usize) -> std::io::Result<()> {
        let used = self.used.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        match self.limit {
            Some(l) if used > l => Err(std::io::Error::from_raw_os_error(28)),
            _ => Ok(()),
        }
    }
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error(format!("writing {}: {e}", path.display()))
}

/// Writes `bytes` to `path`: to `path.tmp`, fsync'd, renamed over `path` (a failed write leaves
/// `path` as it was and removes the temp file).
pub fn write_synced(path: &Path, bytes: &[u8], budget: &WriteBudget) -> Result<()> {
    let tmp = path.with_extension(match path.extension() {
        Some(e) => format!("{}.tmp", e.to_string_lossy()),
        None => "tmp".into(),
    });
    let res = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        for chunk in bytes.chunks(1 << 20) {
            budget.take(chunk.len())?;
            f.write_all(chunk)?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(path, e));
    }
    Ok(())
}

/// fsync a directory (its entries: the renames into it).
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_err(dir, e))
}

/// A safetensors file's bytes: f32 tensors `(name, shape, values)`, header padded to 8 bytes,
/// `__metadata__ {"format": "pt"}` as PyTorch's writer puts it.
pub fn safetensors_bytes(tensors: &[(String, [usize; 2], &[f32])]) -> Result<Vec<u8>> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0usize;
    for (name, shape, v) in tensors {
        if shape[0] * shape[1] != v.len() {
            return Err(Error(format!(
                "tensor {name}: shape {shape:?} but {} values",
                v.len()
            )));
        }
        let end = offset + 4 * v.len();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut h = serde_json::to_vec(&header).map_err(|e| Error(e.to_string()))?;
    h.resize(h.len().div_ceil(8) * 8, b' ');
    let mut out = Vec::with_capacity(8 + h.len() + offset);
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    for (_, _, v) in tensors {
        for x in v.iter() {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    Ok(out)
}

/// The pairs of `p` as (layer, target, A, B) with B's q/k rows in HF's half-split order (PEFT)
/// or llama.cpp's interleaved one (`interleaved_out`).
fn pairs_in_order(
    p: &LoraParams,
    meta: &AdapterMeta,
    interleaved_out: bool,
) -> Vec<(usize, Target, Vec<f32>, Vec<f32>)> {
    p.entries
        .chunks_exact(2)
        .map(|e| {
            let (a, b) = (&e[0], &e[1]);
            let av = p.data[a.range.clone()].to_vec();
            let mut bv = p.data[b.range.clone()].to_vec();
            if meta.interleaved != interleaved_out {
                if let Some(h) = meta.heads(a.target) {
                    // from_interleaved: the base is interleaved and the file is not.
                    bv = permute_rows(&bv, b.cols, h, meta.interleaved);
                }
            }
            (a.layer, a.target, av, bv)
        })
        .collect()
}

/// The PEFT folder's two files, as bytes: (adapter_config.json, adapter_model.safetensors).
pub fn peft_bytes(p: &LoraParams, meta: &AdapterMeta) -> Result<(Vec<u8>, Vec<u8>)> {
    let cfg = serde_json::to_vec_pretty(&peft_config_json(&p.cfg, &meta.base_model))
        .map_err(|e| Error(e.to_string()))?;
    let pairs = pairs_in_order(p, meta, false);
    let mut tensors: Vec<(String, [usize; 2], &[f32])> = Vec::with_capacity(2 * pairs.len());
    for (e, (layer, t, a, b)) in p.entries.chunks_exact(2).zip(&pairs) {
        let name = |h| {
            peft_tensor_name(*layer, *t, h)
                .ok_or_else(|| Error(format!("target {t:?} has no PEFT module name")))
        };
        tensors.push((name(Half::A)?, [e[0].rows, e[0].cols], a));
        tensors.push((name(Half::B)?, [e[1].rows, e[1].cols], b));
    }
    Ok((cfg, safetensors_bytes(&tensors)?))
}

/// Writes a PEFT folder into `dir` (created if needed), each file synced and renamed into place.
pub fn write_peft(
    dir: &Path,
    p: &LoraParams,
    meta: &AdapterMeta,
    budget: &WriteBudget,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let (cfg, st) = peft_bytes(p, meta)?;
    write_synced(&dir.join(PEFT_WEIGHTS), &st, budget)?;
    write_synced(&dir.join(PEFT_CONFIG), &cfg, budget)?;
    sync_dir(dir)
}

/// Writes llama.cpp's GGUF LoRA: `general.type = adapter`, `adapter.type = lora`,
/// `adapter.lora.alpha` (alpha * sqrt(r) under rsLoRA, so that llama.cpp's alpha / r is the
/// trained scale), tensors `blk.N.<stem>.weight.lora_a` (ne [in, r]) / `.lora_b` (ne [r, out]),
/// f32, q/k rows interleaved.
pub fn write_gguf(path: &Path, p: &LoraParams, meta: &AdapterMeta) -> Result<()> {
    use cria_core::gguf::GgufWriter;
    let r = p.cfg.rank as f32;
    let alpha = if p.cfg.rslora {
        p.cfg.alpha * r.sqrt()
    } else {
        p.cfg.alpha
    };
    let pairs = pairs_in_order(p, meta, true);
    let mut w = GgufWriter::new();
    w.add("general.architecture", meta.arch.as_str());
    w.add("general.type", "adapter");
    w.add("general.name", "cria finetune LoRA");
    w.add("general.base_model.count", 1u32);
    w.add("general.base_model.0.name", meta.base_model.as_str());
    w.add("adapter.type", "lora");
    w.add("adapter.lora.alpha", alpha);
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    for (e, (layer, t, a, b)) in p.entries.chunks_exact(2).zip(&pairs) {
        let base = format!("blk.{layer}.{}.weight", t.gguf_stem());
        let gerr = |e: cria_core::Error| Error(format!("{}: {e}", path.display()));
        w.add_tensor(
            format!("{base}.lora_a"),
            DType::F32,
            vec![e[0].cols, e[0].rows],
            bytes(a),
        )
        .map_err(gerr)?;
        w.add_tensor(
            format!("{base}.lora_b"),
            DType::F32,
            vec![e[1].cols, e[1].rows],
            bytes(b),
        )
        .map_err(gerr)?;
    }
    w.write(path)
        .map_err(|e| Error(format!("writing {}: {e}", path.display())))
}

/// Loads an adapter folder or GGUF file (read by cria's own loader, `AdapterFile::open`) into
/// `p`: every trained pair must be there with `p`'s shapes and scale, and nothing else. B's q/k
/// rows are put in the base's order.
pub fn read_into(path: &Path, p: &mut LoraParams, meta: &AdapterMeta) -> Result<()> {
    let what = |m: String| Error(format!("adapter {}: {m}", path.display()));
    let file = AdapterFile::open(path).map_err(|e| what(e.to_string()))?;
    if !file.replace.is_empty() {
        return Err(what(
            "has modules_to_save (whole matrices), which cria finetune does not train".into(),
        ));
    }
    let mut seen = vec![false; p.entries.len()];
    let want_scale = p.cfg.scale();
    for pair in &file.pairs {
        let (t, layer) = Target::of_gguf_name(&pair.target)
            .ok_or_else(|| what(format!("tensor {} adapts no layer weight", pair.target)))?;
        let layer = layer.ok_or_else(|| {
            what(format!(
                "adapts {} (the output head), not a layer target",
                pair.target
            ))
        })?;
        let i = p.find(layer, t, Half::A).ok_or_else(|| {
            what(format!(
                "adapts {} (layer {layer}, {t:?}), which this run does not train (--target {}, \
                 the base's layers)",
                pair.target,
                p.cfg
                    .targets
                    .iter()
                    .filter_map(|&t| peft_target_name(t))
                    .collect::<Vec<_>>()
                    .join(",")
            ))
        })?;
        let (ea, eb) = (p.entries[i].clone(), p.entries[i + 1].clone());
        let a = pair.a.to_f32_vec().map_err(|e| what(e.to_string()))?;
        let b = pair.b.to_f32_vec().map_err(|e| what(e.to_string()))?;
        if pair.a.rows() != ea.rows
            || pair.a.cols() != ea.cols
            || pair.b.rows() != eb.rows
            || pair.b.cols() != eb.cols
        {
            return Err(what(format!(
                "{}: lora_A {}x{} and lora_B {}x{}, this run's are {}x{} and {}x{} (--lora-r, \
                 the base model)",
                pair.target,
                pair.a.rows(),
                pair.a.cols(),
                pair.b.rows(),
                pair.b.cols(),
                ea.rows,
                ea.cols,
                eb.rows,
                eb.cols
            )));
        }
        if (pair.scale - want_scale).abs() > 1e-6 * want_scale.abs() {
            return Err(what(format!(
                "{}: scale {} (its lora_alpha / r), this run's is {want_scale} (--lora-alpha, \
                 --lora-r, --use-rslora)",
                pair.target, pair.scale
            )));
        }
        if let Some(x) = a.iter().chain(&b).find(|x| !x.is_finite()) {
            return Err(what(format!("{}: holds {x}", pair.target)));
        }
        let b = match meta.heads(t) {
            Some(h) if file.interleaved != meta.interleaved => {
                permute_rows(&b, eb.cols, h, file.interleaved)
            }
            _ => b,
        };
        p.data[ea.range.clone()].copy_from_slice(&a);
        p.data[eb.range.clone()].copy_from_slice(&b);
        seen[i] = true;
        seen[i + 1] = true;
    }
    if let Some(i) = seen.iter().position(|s| !s) {
        let e = &p.entries[i];
        return Err(what(format!(
            "has no pair for layer {} {:?}, which this run trains (--target)",
            e.layer, e.target
        )));
    }
    Ok(())
}
