//! `cria quantize`: a model ([`Source`]) into a GGUF of another type, tensor by tensor, with
//! llama.cpp's per-tensor types ([`crate::mix`]) and its metadata, so the file is the one
//! `llama-quantize` writes from the same input.
//!
//! Streaming: each tensor is read, converted to f32 chunk by chunk (only when its type changes)
//! and quantized on all threads, and written before the next is read; the input's mapped pages
//! are dropped after each slab of rows, so memory stays near one slab plus one output tensor.

use crate::mix::{self, Choice, Ftype, MixOptions, ModelInfo};
use crate::source::Source;
use cria_core::gguf::{GgufStreamWriter, TensorInfo, Value};
use cria_core::{quant, quantize::quantize_rows, DType, Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// Values per slab (16 MiB as f32): how much mapped input is read before its pages are dropped.
const SLAB_VALUES: usize = 4 << 20;
/// Values quantized per work item (llama.cpp's `min_chunk_size`); only speed depends on it.
const CHUNK_VALUES: usize = 32 * 512;

/// An importance matrix as the quantizer uses it.
pub struct ImatrixInput<'a> {
    /// Written as `quantize.imatrix.file`.
    pub file: String,
    /// The first dataset, written as `quantize.imatrix.dataset`.
    pub dataset: Option<String>,
    /// Entries (tensors) in the file: `quantize.imatrix.entries_count`.
    pub n_entries: usize,
    /// Chunks it was computed on: `quantize.imatrix.chunks_count` (not written when 0).
    pub n_chunks: u32,
    /// A tensor's weights, `n_per_row` per expert matrix (what llama-quantize hands its
    /// quantizers), or None when the file has no entry for it.
    pub weights: Box<dyn Fn(&str) -> Option<Vec<f32>> + Sync + 'a>,
}

/// What `cria quantize` is asked to do (llama-quantize's options).
pub struct Options<'a> {
    pub ftype: Ftype,
    pub allow_requantize: bool,
    pub pure: bool,
    pub output_tensor_type: Option<DType>,
    pub token_embedding_type: Option<DType>,
    /// Worker threads (at least 1).
    pub threads: usize,
    pub imatrix: Option<ImatrixInput<'a>>,
}

impl Options<'_> {
    pub fn new(ftype: Ftype) -> Self {
        Self {
            ftype,
            allow_requantize: false,
            pure: false,
            output_tensor_type: None,
            token_embedding_type: None,
            threads: 1,
            imatrix: None,
        }
    }
}

/// One tensor done, for a progress display.
#[derive(Clone, Debug)]
pub struct Progress<'a> {
    /// 0-based, in output order.
    pub index: usize,
    pub count: usize,
    pub name: &'a str,
    pub from: DType,
    pub to: DType,
    pub bytes_in: usize,
    pub bytes_out: usize,
}

/// What was written.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    pub n_tensors: usize,
    pub n_elements: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Tensors per output type.
    pub types: BTreeMap<String, usize>,
    /// Tensors whose row length made the mix fall back to another type.
    pub n_fallback: usize,
}

impl Report {
    pub fn bpw_in(&self) -> f64 {
        self.bytes_in as f64 * 8.0 / self.n_elements.max(1) as f64
    }
    pub fn bpw_out(&self) -> f64 {
        self.bytes_out as f64 * 8.0 / self.n_elements.max(1) as f64
    }
}

/// The plan: output order (source indices) and each tensor's type, checked against everything
/// that would stop llama-quantize, before any file is created.
pub struct Plan {
    pub order: Vec<usize>,
    /// Indexed like `order`.
    pub choices: Vec<Choice>,
}

/// Chooses every tensor's type and checks the run can go through: types cria can make,
/// requantizing allowed, the importance matrix present and of the right size where needed.
pub fn plan(source: &dyn Source, opts: &Options) -> Result<Plan> {
    let tensors = source.tensors();
    let meta = source.metadata();
    let model = ModelInfo::from_metadata(&meta)?;
    let order = mix::llama_order(tensors);
    let sorted: Vec<_> = order.iter().map(|&i| tensors[i].clone()).collect();
    let mix_opts = MixOptions {
        ftype: opts.ftype,
        pure: opts.pure,
        output_tensor_type: opts.output_tensor_type,
        token_embedding_type: opts.token_embedding_type,
        has_imatrix: opts.imatrix.is_some(),
    };
    let choices = mix::plan(&sorted, &model, &mix_opts)?;
    let mut probes: Vec<(DType, bool)> = Vec::new();
    for (t, c) in sorted.iter().zip(&choices) {
        if c.dtype == t.dtype {
            continue;
        }
        if t.ne[0] % c.dtype.block_size() != 0 {
            return Err(Error::msg(format!(
                "tensor {}: its rows of {} cannot be {} (blocks of {}): pick another type for it",
                t.name,
                t.ne[0],
                c.dtype,
                c.dtype.block_size()
            )));
        }
        if t.dtype.is_quantized() && !opts.allow_requantize {
            return Err(Error::msg(format!(
                "tensor {} is {}: requantizing from type {} is disabled (pass --allow-requantize; \
                 quality suffers: quantize from F32/F16/BF16 where you can)",
                t.name, t.dtype, t.dtype
            )));
        }
        if !quant::can_dequantize(t.dtype) {
            return Err(Error::Unsupported(format!(
                "tensor {}: reading type {} to requantize it",
                t.name, t.dtype
            )));
        }
        let weights = match &opts.imatrix {
            Some(im) => imatrix_for(im, t)?,
            None => None,
        };
        if c.requires_imatrix && weights.is_none() {
            return Err(Error::msg(match opts.imatrix {
                None => format!(
                    "{} requires an importance matrix (tensor {} would be {}): pass --imatrix FILE",
                    opts.ftype.name, t.name, c.dtype
                ),
                Some(_) => format!(
                    "Missing importance matrix for tensor {} in a very low-bit quantization ({})",
                    t.name, c.dtype
                ),
            }));
        }
        let key = (c.dtype, weights.is_some());
        if !probes.contains(&key) {
            probes.push(key);
        }
    }
    // Types cria cannot make yet are reported after the checks above, which name the input's
    // own problems.
    for (dtype, weighted) in probes {
        probe(dtype, weighted)?;
    }
    Ok(Plan { order, choices })
}

/// The imatrix weights for a tensor, checked as llama-quantize checks them: finite, and
/// `ne[0] * ne[2]` of them (a mismatched `token_embd` entry is ignored, any other is an error).
fn imatrix_for(im: &ImatrixInput, t: &crate::source::SrcTensor) -> Result<Option<Vec<f32>>> {
    let Some(w) = (im.weights)(&t.name) else {
        return Ok(None);
    };
    let want = t.ne[0] * t.ne.get(2).copied().unwrap_or(1);
    if w.len() != want {
        if t.name == "token_embd.weight" || t.name == "per_layer_token_embd.weight" {
            return Ok(None);
        }
        return Err(Error::msg(format!(
            "imatrix {}: size {} is different from tensor size {want} for {}",
            im.file,
            w.len(),
            t.name
        )));
    }
    if let Some(x) = w.iter().find(|x| !x.is_finite()) {
        return Err(Error::msg(format!(
            "imatrix {}: non-finite value {x} for {}",
            im.file, t.name
        )));
    }
    Ok(Some(w))
}

/// Refuses, before any output exists, a type cria does not make yet.
fn probe(dtype: DType, weighted: bool) -> Result<()> {
    if cria_core::quantize::can_quantize_rows(dtype) {
        return Ok(());
    }
    Err(Error::Unsupported(format!(
        "quantizing to {dtype}{}: not supported yet",
        if weighted {
            " with an importance matrix"
        } else {
            ""
        }
    )))
}

/// The output metadata: the input's, then `general.quantization_version` and
/// `general.file_type` (moved to the end, as gguf's set does), then the imatrix keys
/// llama-quantize writes.
pub fn out_metadata(source: &dyn Source, opts: &Options) -> Vec<(String, Value)> {
    const QV: &str = "general.quantization_version";
    const FT: &str = "general.file_type";
    let mut meta: Vec<(String, Value)> = source
        .metadata()
        .iter()
        .filter(|(k, _)| k != QV && k != FT && !k.starts_with("split."))
        .cloned()
        .collect();
    meta.push((QV.into(), Value::U32(2)));
    meta.push((FT.into(), Value::U32(opts.ftype.id)));
    if let Some(im) = &opts.imatrix {
        let mut set = |k: &str, v: Value| {
            meta.retain(|(key, _)| key != k);
            meta.push((k.into(), v));
        };
        // llama-quantize's overrides hold at most 127 bytes of a string.
        let cut = |s: &str| {
            let mut n = s.len().min(127);
            while !s.is_char_boundary(n) {
                n -= 1;
            }
            s[..n].to_string()
        };
        set("quantize.imatrix.file", Value::String(cut(&im.file)));
        if let Some(d) = &im.dataset {
            set("quantize.imatrix.dataset", Value::String(cut(d)));
        }
        set(
            "quantize.imatrix.entries_count",
            Value::U32(im.n_entries as u32),
        );
        if im.n_chunks > 0 {
            set("quantize.imatrix.chunks_count", Value::U32(im.n_chunks));
        }
    }
    meta
}

/// Quantizes `source` into `out` (written as `OUT.partial`, renamed when complete; removed on
/// any error). `progress` is called after each tensor.
pub fn quantize(
    source: &dyn Source,
    out: &Path,
    opts: &Options,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Report> {
    let plan = plan(source, opts)?;
    let tensors = source.tensors();
    let meta = out_metadata(source, opts);
    let alignment = meta
        .iter()
        .find(|(k, _)| k == "general.alignment")
        .and_then(|(_, v)| v.as_u64())
        .map_or(32, |a| a as usize);
    let infos: Vec<TensorInfo> = plan
        .order
        .iter()
        .zip(&plan.choices)
        .map(|(&i, c)| TensorInfo {
            name: tensors[i].name.clone(),
            dtype: c.dtype,
            ne: tensors[i].ne.clone(),
        })
        .collect();
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut w = GgufStreamWriter::create(out, &meta_refs, &infos, alignment)?;

    let mut report = Report {
        n_tensors: infos.len(),
        ..Report::default()
    };
    let threads = opts.threads.max(1);
    for (k, (&i, c)) in plan.order.iter().zip(&plan.choices).enumerate() {
        let t = &tensors[i];
        let src = source.bytes(i)?;
        let n = t.n_elements();
        let out_bytes = if c.dtype == t.dtype {
            w.write_tensor(&src)?;
            src.len()
        } else {
            let weights = match &opts.imatrix {
                Some(im) => imatrix_for(im, t)?,
                None => None,
            };
            let q = convert_tensor(source, t, &src, c.dtype, weights.as_deref(), threads)?;
            w.write_tensor(&q)?;
            q.len()
        };
        report.n_elements += n as u64;
        report.bytes_in += src.len() as u64;
        report.bytes_out += out_bytes as u64;
        *report.types.entry(c.dtype.name().to_string()).or_default() += 1;
        report.n_fallback += c.fallback as usize;
        drop(src);
        source.release_pages();
        progress(&Progress {
            index: k,
            count: infos.len(),
            name: &t.name,
            from: t.dtype,
            to: c.dtype,
            bytes_in: t.dtype.bytes_for(n)?,
            bytes_out: out_bytes,
        });
    }
    w.finish()?;
    Ok(report)
}

/// One tensor to `to`, in slabs of whole rows (never across an expert matrix; the input's
/// pages are dropped after each): each slab is cut into chunks of rows that `threads` workers
/// convert to f32 (only when the input is not f32 already) and quantize.
fn convert_tensor(
    source: &dyn Source,
    t: &crate::source::SrcTensor,
    src: &[u8],
    to: DType,
    weights: Option<&[f32]>,
    threads: usize,
) -> Result<Vec<u8>> {
    let n_per_row = t.ne[0];
    let n_rows = t.n_elements() / n_per_row.max(1);
    let rows_per_expert = t.ne.get(1).copied().unwrap_or(1).max(1);
    let row_in = t.dtype.bytes_for(n_per_row)?;
    let row_out = to.bytes_for(n_per_row)?;
    let mut out = vec![0u8; n_rows * row_out];
    let slab_rows = (SLAB_VALUES / n_per_row).clamp(1, rows_per_expert);
    let mut r = 0;
    while r < n_rows {
        let expert_end = (r / rows_per_expert + 1) * rows_per_expert;
        let rows = slab_rows.min(expert_end - r).min(n_rows - r);
        let w = weights.map(|w| {
            let e = r / rows_per_expert;
            &w[e * n_per_row..(e + 1) * n_per_row]
        });
        let job = Job {
            from: t.dtype,
            to,
            n_per_row,
            weights: w,
        };
        job.run(
            &src[r * row_in..(r + rows) * row_in],
            &mut out[r * row_out..(r + rows) * row_out],
            threads,
        )
        .map_err(|e| Error::msg(format!("tensor {}: {e}", t.name)))?;
        r += rows;
        source.release_pages();
    }
    Ok(out)
}

/// Rows of one type to another, on scoped workers.
struct Job<'a> {
    from: DType,
    to: DType,
    n_per_row: usize,
    weights: Option<&'a [f32]>,
}

impl Job<'_> {
    /// Converts whole rows `src` into `dst`: chunks of about [`CHUNK_VALUES`] handed out to
    /// `threads` workers. Every row is quantized on its own, so the bytes do not depend on the
    /// thread count.
    fn run(&self, src: &[u8], dst: &mut [u8], threads: usize) -> Result<()> {
        let row_in = self.from.bytes_for(self.n_per_row)?;
        let row_out = self.to.bytes_for(self.n_per_row)?;
        let n_rows = src.len() / row_in;
        let chunk_rows = CHUNK_VALUES.div_ceil(self.n_per_row).max(1);
        let n_chunks = n_rows.div_ceil(chunk_rows);
        let mut work = src
            .chunks(chunk_rows * row_in)
            .zip(dst.chunks_mut(chunk_rows * row_out));
        if threads <= 1 || n_chunks <= 1 {
            let mut buf = Vec::new();
            return work.try_for_each(|(x, y)| self.chunk(x, y, &mut buf));
        }
        let work = std::sync::Mutex::new(work);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads.min(n_chunks))
                .map(|_| {
                    s.spawn(|| -> Result<()> {
                        let mut buf = Vec::new();
                        loop {
                            let next = work
                                .lock()
                                .map_err(|_| Error::msg("a quantizing thread panicked"))?
                                .next();
                            let Some((x, y)) = next else {
                                return Ok(());
                            };
                            self.chunk(x, y, &mut buf)?;
                        }
                    })
                })
                .collect();
            handles.into_iter().try_for_each(|h| {
                h.join()
                    .map_err(|_| Error::msg("a quantizing thread panicked"))?
            })
        })
    }

    /// One chunk: its f32 values (the input itself when it is aligned f32, else converted into
    /// `buf`), quantized into `dst`.
    fn chunk(&self, src: &[u8], dst: &mut [u8], buf: &mut Vec<f32>) -> Result<()> {
        let values: &[f32] = match (self.from, bytemuck::try_cast_slice::<u8, f32>(src)) {
            (DType::F32, Ok(v)) => v,
            _ => {
                let n = src.len() / self.from.bytes_for(self.n_per_row)? * self.n_per_row;
                buf.resize(n, 0.0);
                quant::dequantize(self.from, src, buf)?;
                buf
            }
        };
        quantize_rows(self.to, values, dst, self.n_per_row, self.weights)
    }
}
