//! Which type each tensor gets: llama.cpp's per-tensor rules (`src/llama-quant.cpp`:
//! `tensor_allows_quantization`, `llama_tensor_get_type(_impl)`, `tensor_type_fallback`,
//! `tensor_requires_imatrix`, `llama_ftype_get_default_type`), ported for LLaMA-family models so
//! `cria quantize` picks, tensor for tensor, the types `llama-quantize` picks.

use crate::source::SrcTensor;
use cria_core::gguf::Value;
use cria_core::{DType, Error, Result};

/// A file type as `llama-quantize` names it (its `TYPE` argument), with llama.cpp's
/// `llama_ftype` number (written as `general.file_type`) and the default tensor type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ftype {
    /// The name as llama-quantize prints it (`Q4_K_M`).
    pub name: &'static str,
    /// `llama_ftype` (`general.file_type`).
    pub id: u32,
    /// `llama_ftype_get_default_type`.
    pub default: DType,
}

macro_rules! ftypes {
    ($($c:ident = $id:literal, $name:literal, $d:ident;)*) => {
        impl Ftype { $(pub const $c: Ftype = Ftype { name: $name, id: $id, default: DType::$d };)* }
        /// Every file type, in llama-quantize's list order (aliases excluded).
        pub const FTYPES: &[Ftype] = &[$(Ftype::$c),*];
    };
}

ftypes! {
    Q4_0 = 2, "Q4_0", Q4_0;
    Q4_1 = 3, "Q4_1", Q4_1;
    Q5_0 = 8, "Q5_0", Q5_0;
    Q5_1 = 9, "Q5_1", Q5_1;
    IQ2_XXS = 19, "IQ2_XXS", IQ2_XXS;
    IQ2_XS = 20, "IQ2_XS", IQ2_XS;
    IQ2_S = 28, "IQ2_S", IQ2_XS;
    IQ2_M = 29, "IQ2_M", IQ2_S;
    IQ1_S = 24, "IQ1_S", IQ1_S;
    IQ1_M = 31, "IQ1_M", IQ1_M;
    Q2_K = 10, "Q2_K", Q2_K;
    Q2_K_S = 21, "Q2_K_S", Q2_K;
    IQ3_XXS = 23, "IQ3_XXS", IQ3_XXS;
    IQ3_S = 26, "IQ3_S", IQ3_S;
    IQ3_M = 27, "IQ3_M", IQ3_S;
    IQ3_XS = 22, "IQ3_XS", IQ3_S;
    Q3_K_S = 11, "Q3_K_S", Q3_K;
    Q3_K_M = 12, "Q3_K_M", Q3_K;
    Q3_K_L = 13, "Q3_K_L", Q3_K;
    IQ4_NL = 25, "IQ4_NL", IQ4_NL;
    IQ4_XS = 30, "IQ4_XS", IQ4_XS;
    Q4_K_S = 14, "Q4_K_S", Q4_K;
    Q4_K_M = 15, "Q4_K_M", Q4_K;
    Q5_K_S = 16, "Q5_K_S", Q5_K;
    Q5_K_M = 17, "Q5_K_M", Q5_K;
    Q6_K = 18, "Q6_K", Q6_K;
    Q8_0 = 7, "Q8_0", Q8_0;
    F16 = 1, "F16", F16;
    BF16 = 32, "BF16", BF16;
    F32 = 0, "F32", F32;
}

impl Ftype {
    /// Parses a `llama-quantize` TYPE name (case-insensitive), its aliases (`Q3_K` = Q3_K_M,
    /// `Q4_K` = Q4_K_M, `Q5_K` = Q5_K_M) and llama.cpp's numeric ftype ids.
    pub fn parse(s: &str) -> Result<Ftype> {
        let u = s.trim().to_ascii_uppercase();
        let alias = match u.as_str() {
            "Q3_K" => Some(Ftype::Q3_K_M),
            "Q4_K" => Some(Ftype::Q4_K_M),
            "Q5_K" => Some(Ftype::Q5_K_M),
            _ => None,
        };
        let found = alias
            .or_else(|| FTYPES.iter().copied().find(|f| f.name == u))
            .or_else(|| {
                let id: u32 = u.parse().ok()?;
                FTYPES.iter().copied().find(|f| f.id == id)
            });
        found.ok_or_else(|| {
            let names: Vec<&str> = FTYPES.iter().map(|f| f.name).collect();
            Error::msg(format!(
                "unknown quantization type '{s}' (known: {})",
                names.join(", ")
            ))
        })
    }
}

/// What the rules need to know of the model (llama.cpp's `hparams`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelInfo {
    pub arch: String,
    /// `{arch}.block_count`.
    pub n_layer: usize,
    /// Attention heads and KV heads of layer 0 (llama.cpp's `n_gqa()` is their ratio).
    pub n_head: usize,
    pub n_head_kv: usize,
    /// `{arch}.expert_count` (0 for dense models).
    pub n_expert: usize,
}

impl ModelInfo {
    /// Reads the hyperparameters from GGUF metadata.
    pub fn from_metadata(meta: &[(String, Value)]) -> Result<ModelInfo> {
        let get = |k: &str| meta.iter().find(|(key, _)| key == k).map(|(_, v)| v);
        let arch = get("general.architecture")
            .and_then(|v| v.as_str())
            .ok_or_else(|| Error::msg("the model has no general.architecture"))?
            .to_string();
        // A scalar, or a per-layer array (llama.cpp takes layer 0's value).
        let num = |k: &str| -> Option<usize> {
            let v = get(&format!("{arch}.{k}"))?;
            match v {
                Value::Array(a) => a.to_i64()?.first().map(|&x| x as usize),
                v => v.as_u64().map(|x| x as usize),
            }
        };
        let n_layer = num("block_count")
            .ok_or_else(|| Error::msg(format!("the model has no {arch}.block_count")))?;
        let n_head = num("attention.head_count").unwrap_or(0);
        Ok(ModelInfo {
            n_layer,
            n_head,
            n_head_kv: num("attention.head_count_kv").unwrap_or(n_head),
            n_expert: num("expert_count").unwrap_or(0),
            arch,
        })
    }

    /// llama.cpp's `hparams.n_gqa()` (0 without KV heads).
    fn n_gqa(&self) -> usize {
        if self.n_head_kv == 0 {
            0
        } else {
            self.n_head / self.n_head_kv
        }
    }

    /// LLaMA's 80-layer model with grouped KV heads (llama.cpp's `LLM_TYPE_70B`).
    fn is_70b(&self) -> bool {
        self.arch == "llama" && self.n_layer == 80 && self.n_head != self.n_head_kv
    }
}

/// `llama-quantize`'s options that steer the types.
#[derive(Clone, Debug, PartialEq)]
pub struct MixOptions {
    pub ftype: Ftype,
    /// `--pure`: every quantizable tensor gets the default type (no _S/_M/_L mix).
    pub pure: bool,
    /// `--output-tensor-type`.
    pub output_tensor_type: Option<DType>,
    /// `--token-embedding-type`.
    pub token_embedding_type: Option<DType>,
    /// An importance matrix is given (some rules depend on it).
    pub has_imatrix: bool,
}

impl MixOptions {
    pub fn new(ftype: Ftype) -> Self {
        Self {
            ftype,
            pure: false,
            output_tensor_type: None,
            token_embedding_type: None,
            has_imatrix: false,
        }
    }
}

/// The type chosen for one tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    pub dtype: DType,
    /// The rules wanted a type whose block does not divide the row length and fell back.
    pub fallback: bool,
    /// llama.cpp refuses to make this tensor without an importance matrix.
    pub requires_imatrix: bool,
    /// The tensor is a weight llama.cpp quantizes at all.
    pub quantizable: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Category {
    Output,
    TokenEmbd,
    AttnQkv,
    AttnKvB,
    AttnV,
    AttnK,
    AttnQ,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Other,
}

fn is_token_embd(name: &str) -> bool {
    name == "token_embd.weight" || name == "per_layer_token_embd.weight"
}

fn category(name: &str) -> Category {
    use Category::*;
    if name == "output.weight" {
        return Output;
    }
    if is_token_embd(name) {
        return TokenEmbd;
    }
    const BY_PART: &[(&str, Category)] = &[
        ("attn_qkv.weight", AttnQkv),
        ("attn_kv_b.weight", AttnKvB),
        ("attn_v.weight", AttnV),
        ("attn_k.weight", AttnK),
        ("attn_q.weight", AttnQ),
        ("attn_output.weight", AttnOutput),
        ("ffn_up", FfnUp),
        ("ffn_gate", FfnGate),
        ("ffn_down", FfnDown),
    ];
    BY_PART
        .iter()
        .find(|(p, _)| name.contains(p))
        .map_or(Other, |&(_, c)| c)
}

fn is_attn_v(c: Category) -> bool {
    matches!(c, Category::AttnV | Category::AttnQkv | Category::AttnKvB)
}

/// ggml's `ggml_n_dims`: dimensions up to the last one above 1 (at least 1).
fn n_dims(ne: &[usize]) -> usize {
    ne.iter().rposition(|&d| d > 1).map_or(1, |i| i + 1)
}

/// llama.cpp's `tensor_allows_quantization` (the parts that can apply to a LLaMA-family file).
pub fn allows_quantization(t: &SrcTensor) -> bool {
    if n_dims(&t.ne) < 2 {
        return false;
    }
    let name = t.name.as_str();
    const NEVER: &[&str] = &[
        "_norm.weight",
        "ffn_gate_inp.weight",
        "ffn_gate_tid2eid.weight",
        "altup",
        "laurel",
        "per_layer_model_proj",
        "ssm_conv1d",
        "shortconv.conv.weight",
        "indexer.k_proj.weight",
        "indexer.q_proj.weight",
        "time_mix_first.weight",
        "time_mix_w0.weight",
        "time_mix_w1.weight",
        "time_mix_w2.weight",
        "time_mix_v0.weight",
        "time_mix_v1.weight",
        "time_mix_v2.weight",
        "time_mix_a0.weight",
        "time_mix_a1.weight",
        "time_mix_a2.weight",
        "time_mix_g1.weight",
        "time_mix_g2.weight",
        "time_mix_decay_w1.weight",
        "time_mix_decay_w2.weight",
        "time_mix_lerp_fused.weight",
        "attn_rel_b.weight",
        ".position_embd",
        "sam.pos_embd",
        "sam.neck.",
        "sam.net_",
        ".rel_pos",
        ".patch_embd",
        ".patch_merger",
        "a.rvq.codebook",
        "mm.a.code_embd",
    ];
    name.ends_with("weight")
        && !NEVER.iter().any(|p| name.contains(p))
        && name != "position_embd.weight"
        && name != "token_types.weight"
}

/// llama.cpp's `tensor_type_fallback`: a type whose block does not divide the row length.
fn fallback(ncols: usize, want: DType) -> Result<(DType, bool)> {
    use DType::*;
    if ncols % want.block_size() == 0 {
        return Ok((want, false));
    }
    let mut t = match want {
        IQ1_S | IQ1_M | IQ2_XXS | IQ2_XS | IQ2_S | IQ3_XXS | IQ3_S | IQ4_XS => IQ4_NL,
        Q2_K | Q3_K | TQ1_0 | TQ2_0 => Q4_0,
        Q4_K => Q5_0,
        Q5_K => Q5_1,
        Q6_K => Q8_0,
        t if t.block_size() <= 32 => t,
        t => {
            return Err(Error::msg(format!(
                "no tensor type fallback is defined for type {t}"
            )))
        }
    };
    if ncols % t.block_size() != 0 {
        t = F16;
    }
    Ok((t, true))
}

/// llama.cpp's `tensor_requires_imatrix`.
fn requires_imatrix(name: &str, dtype: DType, ftype: Ftype) -> bool {
    use DType::*;
    if is_token_embd(name) || name == "output.weight" {
        return false;
    }
    match dtype {
        IQ3_XXS | IQ2_XXS | IQ2_XS | IQ2_S | IQ1_M | IQ1_S => true,
        Q2_K => ftype == Ftype::Q2_K_S,
        _ => false,
    }
}

/// Picks every tensor's type, in the order given (llama-quantize's order: see
/// [`llama_order`]), as `llama-quantize` does: the counters of attn_v / ffn_down tensors seen so
/// far steer the _S/_M/_L mixes.
pub fn plan(tensors: &[SrcTensor], model: &ModelInfo, opts: &MixOptions) -> Result<Vec<Choice>> {
    let mut st = State {
        model,
        opts,
        n_attention_wv: tensors
            .iter()
            .filter(|t| is_attn_v(category(&t.name)))
            .count(),
        n_layer: model.n_layer,
        tied: !tensors.iter().any(|t| t.name == "output.weight"),
        i_attention_wv: 0,
        i_ffn_down: 0,
        i_ffn_gate: 0,
        i_ffn_up: 0,
    };
    tensors.iter().map(|t| st.choose(t)).collect()
}

struct State<'a> {
    model: &'a ModelInfo,
    opts: &'a MixOptions,
    n_attention_wv: usize,
    n_layer: usize,
    tied: bool,
    i_attention_wv: usize,
    i_ffn_down: usize,
    i_ffn_gate: usize,
    i_ffn_up: usize,
}

fn use_more_bits(i: usize, n: usize) -> bool {
    let (i, n) = (i as i64, n as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

impl State<'_> {
    fn choose(&mut self, t: &SrcTensor) -> Result<Choice> {
        let ftype = self.opts.ftype;
        let quantizable = allows_quantization(t);
        let mut fell_back = false;
        let cat = category(&t.name);
        let dtype = if !quantizable {
            t.dtype
        } else if let (Some(d), Category::TokenEmbd) = (self.opts.token_embedding_type, cat) {
            d
        } else if let (Some(d), Category::Output) = (self.opts.output_tensor_type, cat) {
            d
        } else if ftype.default.is_quantized() {
            let want = if self.opts.pure {
                ftype.default
            } else {
                self.mix(t, cat)?
            };
            let (d, f) = fallback(t.ne[0], want)?;
            fell_back = f;
            d
        } else {
            ftype.default
        };
        Ok(Choice {
            dtype,
            fallback: fell_back,
            requires_imatrix: requires_imatrix(&t.name, dtype, ftype),
            quantizable,
        })
    }

    /// The layer of a per-layer tensor: the running counter, or with experts the name's
    /// `blk.N.` (llama.cpp's `layer_info`).
    fn layer(&self, counter: usize, name: &str) -> Result<(usize, usize)> {
        let n = self.n_layer;
        if self.model.n_expert > 1 {
            let i = name
                .strip_prefix("blk.")
                .and_then(|r| r.split('.').next())
                .and_then(|s| s.parse::<usize>().ok())
                .ok_or_else(|| {
                    Error::msg(format!("Failed to determine layer for tensor {name}"))
                })?;
            if i >= n {
                return Err(Error::msg(format!(
                    "Bad layer {i} for tensor {name}. Must be in [0, {n})"
                )));
            }
            return Ok((i, n));
        }
        Ok((counter, n))
    }

    /// llama.cpp's `llama_tensor_get_type_impl`.
    fn mix(&mut self, t: &SrcTensor, cat: Category) -> Result<DType> {
        use Category as C;
        use DType::*;
        let f = self.opts.ftype;
        let m = self.model;
        let falcon = m.arch == "falcon";
        let gqa = m.n_gqa();
        let n_expert = m.n_expert;
        let has_imatrix = self.opts.has_imatrix;
        let mut new = f.default;
        let iq_low = [
            Ftype::IQ2_XXS,
            Ftype::IQ2_XS,
            Ftype::IQ1_S,
            Ftype::IQ2_S,
            Ftype::IQ2_M,
            Ftype::IQ1_M,
        ]
        .contains(&f);
        let iq2_sm = f == Ftype::IQ2_S || f == Ftype::IQ2_M;

        if cat == C::Output || (self.tied && cat == C::TokenEmbd) {
            if let Some(d) = self.opts.output_tensor_type {
                new = d;
            } else if falcon || t.ne[0] % new.block_size() != 0 {
                new = Q8_0;
            } else if iq_low || f == Ftype::IQ3_XXS {
                new = Q5_K;
            } else if new != Q8_0 {
                new = Q6_K;
            }
        } else if cat == C::TokenEmbd {
            if [Ftype::IQ2_XXS, Ftype::IQ2_XS, Ftype::IQ1_S, Ftype::IQ1_M].contains(&f) {
                new = Q2_K;
            } else if iq2_sm || f == Ftype::IQ3_XXS {
                new = IQ3_S;
            }
        } else if iq_low {
            if is_attn_v(cat) {
                new = if gqa >= 4 || n_expert >= 4 {
                    Q4_K
                } else if iq2_sm {
                    IQ3_S
                } else {
                    Q2_K
                };
                self.i_attention_wv += 1;
            } else if n_expert == 8 && cat == C::AttnK {
                new = Q4_K;
            } else if cat == C::FfnDown {
                if self.i_ffn_down < self.n_layer / 8 {
                    new = if iq2_sm { IQ3_S } else { Q2_K };
                }
                self.i_ffn_down += 1;
            } else if cat == C::AttnOutput {
                if n_expert == 8 {
                    new = Q5_K;
                } else if f == Ftype::IQ1_S || f == Ftype::IQ1_M {
                    new = IQ2_XXS;
                } else if iq2_sm {
                    new = IQ3_S;
                }
            }
        } else if is_attn_v(cat) {
            let i = self.i_attention_wv;
            if f == Ftype::Q2_K {
                new = if gqa >= 4 { Q4_K } else { Q3_K };
            } else if f == Ftype::Q2_K_S && gqa >= 4 {
                new = Q4_K;
            } else if f == Ftype::IQ3_XXS {
                new = if gqa >= 4 {
                    Q4_K
                } else if !has_imatrix {
                    IQ3_S
                } else {
                    IQ3_XXS
                };
            } else if (f == Ftype::IQ3_XS || f == Ftype::IQ3_S) && gqa >= 4 {
                new = Q4_K;
            } else if f == Ftype::IQ3_M {
                new = Q4_K;
            } else if f == Ftype::Q3_K_M {
                new = if i < 2 { Q5_K } else { Q4_K };
            } else if f == Ftype::Q3_K_L {
                new = Q5_K;
            } else if (f == Ftype::IQ4_NL || f == Ftype::IQ4_XS) && gqa >= 4 {
                new = Q5_K;
            } else if (f == Ftype::Q4_K_M || f == Ftype::Q5_K_M)
                && use_more_bits(i, self.n_attention_wv)
            {
                new = Q6_K;
            } else if f == Ftype::Q4_K_S && i < 4 {
                new = Q5_K;
            }
            if m.is_70b() && (new == Q3_K || new == Q4_K) {
                new = Q5_K;
            }
            if n_expert == 8 {
                new = Q8_0;
            }
            self.i_attention_wv += 1;
        } else if cat == C::AttnK {
            if n_expert == 8 {
                new = Q8_0;
            } else if f == Ftype::IQ3_XS {
                new = IQ3_XXS;
            } else if f == Ftype::IQ3_XXS {
                new = IQ2_S;
            }
        } else if cat == C::AttnQ {
            if f == Ftype::IQ3_XS {
                new = IQ3_XXS;
            } else if f == Ftype::IQ3_XXS {
                new = IQ2_S;
            }
        } else if cat == C::FfnDown {
            let (i, n) = self.layer(self.i_ffn_down, &t.name)?;
            if f == Ftype::Q2_K {
                new = Q3_K;
            } else if f == Ftype::Q2_K_S {
                if i < n / 8 {
                    new = Q4_K;
                }
            } else if f == Ftype::IQ3_XXS && !has_imatrix {
                new = if i < n / 8 { Q4_K } else { Q3_K };
            } else if f == Ftype::Q3_K_M {
                new = if i < n / 16 {
                    Q5_K
                } else if !falcon || use_more_bits(i, n) {
                    Q4_K
                } else {
                    Q3_K
                };
            } else if f == Ftype::IQ3_M && (i < n / 8 || (n_expert == 8 && use_more_bits(i, n))) {
                new = Q4_K;
            } else if f == Ftype::Q3_K_L {
                new = if falcon { Q4_K } else { Q5_K };
            } else if f == Ftype::Q4_K_M {
                if falcon {
                    new = if i < n / 16 {
                        Q6_K
                    } else if use_more_bits(i, n) {
                        Q5_K
                    } else {
                        Q4_K
                    };
                } else if use_more_bits(i, n) {
                    new = Q6_K;
                }
            } else if i < n / 8 && (f == Ftype::IQ4_NL || f == Ftype::IQ4_XS) && !has_imatrix {
                new = Q5_K;
            } else if f == Ftype::Q5_K_M && use_more_bits(i, n) {
                new = Q6_K;
            } else if f == Ftype::Q4_K_S && !falcon && i < n / 8 {
                new = Q5_K;
            } else if (f == Ftype::Q4_0 || f == Ftype::Q5_0) && has_imatrix && i < n / 8 {
                new = if f == Ftype::Q4_0 { Q4_1 } else { Q5_1 };
            }
            self.i_ffn_down += 1;
        } else if cat == C::AttnOutput {
            if !falcon {
                if n_expert == 8 {
                    if [
                        Ftype::Q2_K,
                        Ftype::IQ3_XS,
                        Ftype::IQ3_XXS,
                        Ftype::Q3_K_S,
                        Ftype::Q3_K_M,
                        Ftype::IQ4_NL,
                        Ftype::Q4_K_S,
                        Ftype::Q4_K_M,
                        Ftype::IQ3_S,
                        Ftype::IQ3_M,
                        Ftype::IQ4_XS,
                    ]
                    .contains(&f)
                    {
                        new = Q5_K;
                    }
                } else if f == Ftype::Q2_K {
                    new = Q3_K;
                } else if f == Ftype::IQ3_XXS {
                    new = IQ3_S;
                } else if f == Ftype::Q3_K_M || f == Ftype::IQ3_M {
                    new = Q4_K;
                } else if f == Ftype::Q3_K_L {
                    new = Q5_K;
                }
            } else if f == Ftype::Q3_K_L {
                new = Q4_K;
            }
        } else if cat == C::AttnQkv {
            // (unreachable: attn_qkv is attn_v-like above; kept as llama.cpp has it)
        } else if cat == C::FfnGate || cat == C::FfnUp {
            let counter = if cat == C::FfnGate {
                self.i_ffn_gate
            } else {
                self.i_ffn_up
            };
            let (i, n) = self.layer(counter, &t.name)?;
            if f == Ftype::IQ3_XS && i >= n / 8 && i < 7 * n / 8 {
                new = IQ3_XXS;
            }
            if cat == C::FfnGate {
                self.i_ffn_gate += 1;
            } else {
                self.i_ffn_up += 1;
            }
        }
        Ok(new)
    }
}

/// The order llama-quantize writes tensors in (llama.cpp's `weight_name_comparer`): tensors
/// outside the blocks first, then block by block, by name within each. Returns source indices.
pub fn llama_order(tensors: &[SrcTensor]) -> Vec<usize> {
    let layer = |n: &str| -> i64 {
        n.strip_prefix("blk.")
            .and_then(|r| {
                let digits: String = r.chars().take_while(|c| c.is_ascii_digit()).collect();
                if r[digits.len()..].starts_with('.') {
                    digits.parse().ok()
                } else {
                    None
                }
            })
            .unwrap_or(-1)
    };
    let mut idx: Vec<usize> = (0..tensors.len()).collect();
    idx.sort_by(|&a, &b| {
        let (na, nb) = (&tensors[a].name, &tensors[b].name);
        layer(na)
            .cmp(&layer(nb))
            .then_with(|| na.as_bytes().cmp(nb.as_bytes()))
    });
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, ne: &[usize]) -> SrcTensor {
        SrcTensor {
            name: name.into(),
            dtype: DType::F32,
            ne: ne.to_vec(),
        }
    }

    #[test]
    fn names_parse_like_llama_quantize() {
        assert_eq!(Ftype::parse("q4_k_m").unwrap(), Ftype::Q4_K_M);
        assert_eq!(Ftype::parse("Q4_K").unwrap(), Ftype::Q4_K_M);
        assert_eq!(Ftype::parse("15").unwrap(), Ftype::Q4_K_M);
        assert_eq!(Ftype::parse("iq4_xs").unwrap().id, 30);
        let e = Ftype::parse("Q4_K_X").unwrap_err().to_string();
        assert!(e.contains("unknown quantization type 'Q4_K_X'"), "{e}");
    }

    #[test]
    fn fallback_chain() {
        assert_eq!(fallback(64, DType::Q4_K).unwrap(), (DType::Q5_0, true));
        assert_eq!(fallback(64, DType::Q6_K).unwrap(), (DType::Q8_0, true));
        assert_eq!(fallback(96, DType::IQ4_XS).unwrap(), (DType::IQ4_NL, true));
        assert_eq!(fallback(172, DType::Q2_K).unwrap(), (DType::F16, true));
        assert_eq!(fallback(172, DType::Q8_0).unwrap(), (DType::F16, true));
        assert_eq!(fallback(512, DType::Q3_K).unwrap(), (DType::Q3_K, false));
    }

    #[test]
    fn q4_k_m_mix_on_a_32_layer_gqa_model() {
        let model = ModelInfo {
            arch: "llama".into(),
            n_layer: 32,
            n_head: 32,
            n_head_kv: 8,
            n_expert: 0,
        };
        let mut ts = vec![
            t("output.weight", &[4096, 1000]),
            t("token_embd.weight", &[4096, 1000]),
        ];
        for i in 0..32 {
            ts.push(t(&format!("blk.{i}.attn_norm.weight"), &[4096]));
            ts.push(t(&format!("blk.{i}.attn_v.weight"), &[4096, 1024]));
            ts.push(t(&format!("blk.{i}.ffn_down.weight"), &[14336, 4096]));
        }
        let p = plan(&ts, &model, &MixOptions::new(Ftype::Q4_K_M)).unwrap();
        assert_eq!(p[0].dtype, DType::Q6_K);
        assert_eq!(p[1].dtype, DType::Q4_K); // untied: token_embd keeps the default
        let q6: Vec<usize> = (0..32)
            .filter(|i| p[2 + 3 * i + 1].dtype == DType::Q6_K)
            .collect();
        // layers 0..4, 28..32 and every third in between (i - 4) % 3 == 2
        assert_eq!(
            q6,
            vec![0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
        );
        for i in 0..32 {
            assert_eq!(p[2 + 3 * i].dtype, DType::F32);
            assert!(!p[2 + 3 * i].quantizable);
            assert_eq!(p[2 + 3 * i + 2].dtype, p[2 + 3 * i + 1].dtype);
        }
    }

    #[test]
    fn order_puts_blocks_after_the_rest_numerically() {
        let ts = vec![
            t("blk.10.attn_q.weight", &[1]),
            t("token_embd.weight", &[1]),
            t("blk.2.ffn_up.weight", &[1]),
            t("blk.2.attn_k.weight", &[1]),
            t("output_norm.weight", &[1]),
        ];
        let o: Vec<&str> = llama_order(&ts)
            .into_iter()
            .map(|i| ts[i].name.as_str())
            .collect();
        assert_eq!(
            o,
            [
                "output_norm.weight",
                "token_embd.weight",
                "blk.2.attn_k.weight",
                "blk.2.ffn_up.weight",
                "blk.10.attn_q.weight"
            ]
        );
    }
}
