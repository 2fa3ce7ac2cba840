//! The per-dtype kernel table, after ggml-cpu's `type_traits_cpu`: for each weight type, the
//! activation type its dot product wants (`vec_dot_type`), the converter from an f32 activation
//! row into that type (`from_float`) and the dot itself (`vec_dot`), for a given `Isa`.
//!
//! The activation types are ggml's, because cria must reproduce llama.cpp's numbers: Q4_0, Q5_0,
//! Q8_0 and IQ4_NL dot against Q8_0; Q4_1 and Q5_1 against Q8_1 (whose stored sum serves the min
//! term); the K-quants, IQ4_XS and the IQ grid types (IQ3_XXS ... IQ1_M) against Q8_K; F16 against F16, BF16 against BF16, F32 against
//! F32.
//!
//! `vec_dot(n, w, rows, a, stride, out)` dots `rows` consecutive weight rows of `n` elements
//! (`w`) with `cols = out.len() / rows` activation rows (`a`, `stride` bytes apart, 1..=`max_cols`):
//! `out[r * cols + c] = dot(w row r, a row c)`. Several activation rows per weight row let prompt
//! processing load and decode each weight block once per group of tokens; several weight rows per
//! call keep the checks and the dispatch out of the row loop. An element's result is the same bits
//! whatever `rows` and `cols` are.

pub mod layout;

#[cfg(target_arch = "x86_64")]
use crate::arch::avx2::dot as avx2;
#[cfg(target_arch = "aarch64")]
use crate::arch::neon::dot as neon;
use crate::arch::scalar::dot as scalar;
use crate::arch::scalar::dot_iq as scalar_iq;
use crate::Isa;
use cria_core::DType;

/// Converts an f32 row into the layout of a `vec_dot_type`; `out.len()` must be exactly the
/// byte size of `x.len()` elements of that type.
pub type FromFloat = fn(x: &[f32], out: &mut [u8]);
/// See the module doc.
pub type VecDot = fn(n: usize, w: &[u8], rows: usize, a: &[u8], stride: usize, out: &mut [f32]);

#[derive(Clone, Copy)]
pub struct Kernel {
    pub isa: Isa,
    /// Weight type.
    pub dtype: DType,
    /// What activations are converted to before the dot.
    pub vec_dot_type: DType,
    pub from_float: FromFloat,
    pub vec_dot: VecDot,
    /// How many activation rows (columns) one `vec_dot` call takes at most.
    pub max_cols: usize,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Kernel({} x {} on {}, {} cols)",
            self.dtype, self.vec_dot_type, self.isa, self.max_cols
        )
    }
}

/// Weight types with a matmul kernel, in every ISA.
pub const SUPPORTED: [DType; 22] = [
    DType::F32,
    DType::F16,
    DType::BF16,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q8_0,
    DType::IQ4_NL,
    DType::Q2_K,
    DType::Q3_K,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
    DType::IQ4_XS,
    DType::IQ3_XXS,
    DType::IQ3_S,
    DType::IQ2_XXS,
    DType::IQ2_XS,
    DType::IQ2_S,
    DType::IQ1_S,
    DType::IQ1_M,
];

/// The IQ grid types, which dot against Q8_K.
const IQ_GRID: [DType; 7] = cria_core::quant_iq::IQ_TYPES;

/// Activation rows a float `vec_dot` takes at once: 4 accumulators per column, 2 columns fill
/// 8 of the 16 ymm registers, leaving room for the weight vectors.
const FLOAT_COLS: usize = 2;
/// Quantized kernels take 4 (one decoded weight block serves 4 tokens).
const QUANT_COLS: usize = 4;

/// The kernel for weights of `dtype` on `isa`; None when the type has no kernel or the CPU
/// lacks the ISA (so an AVX2 kernel can never be handed out on a CPU without AVX2).
pub fn kernel(isa: Isa, dtype: DType) -> Option<Kernel> {
    if !isa.available() {
        return None;
    }
    let (vec_dot_type, cols) = match dtype {
        DType::F32 | DType::F16 | DType::BF16 => (dtype, FLOAT_COLS),
        DType::Q4_0 | DType::Q5_0 | DType::Q8_0 | DType::IQ4_NL => (DType::Q8_0, QUANT_COLS),
        DType::Q4_1 | DType::Q5_1 => (DType::Q8_1, QUANT_COLS),
        DType::Q2_K | DType::Q3_K | DType::Q4_K | DType::Q5_K | DType::Q6_K | DType::IQ4_XS => {
            (DType::Q8_K, QUANT_COLS)
        }
        t if IQ_GRID.contains(&t) => (DType::Q8_K, QUANT_COLS),
        _ => return None,
    };
    let (from_float, vec_dot) = match isa {
        Isa::Scalar => (scalar_from_float(vec_dot_type)?, scalar_vec_dot(dtype)?),
        #[cfg(target_arch = "x86_64")]
        // AVX-512 CPUs run the AVX2 row kernels (the hot paths have their own, in cpu/), except
        // the IQ grid types, whose row loops are compiled with AVX-512 enabled (32 registers).
        Isa::Avx2 => (avx2_from_float(vec_dot_type)?, avx2_vec_dot(dtype)?),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => (
            avx2_from_float(vec_dot_type)?,
            avx512_iq_vec_dot(dtype).or_else(|| avx2_vec_dot(dtype))?,
        ),
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2 | Isa::Avx512 => return None,
        // Per type: the NEON kernel where there is one, else the scalar one.
        #[cfg(target_arch = "aarch64")]
        Isa::Neon | Isa::NeonDot => (
            neon::from_float(vec_dot_type).or_else(|| scalar_from_float(vec_dot_type))?,
            neon::vec_dot(dtype, isa == Isa::NeonDot).or_else(|| scalar_vec_dot(dtype))?,
        ),
        #[cfg(not(target_arch = "aarch64"))]
        Isa::Neon | Isa::NeonDot => return None,
    };
    Some(Kernel {
        isa,
        dtype,
        vec_dot_type,
        from_float,
        vec_dot,
        max_cols: cols,
    })
}

fn scalar_from_float(t: DType) -> Option<FromFloat> {
    Some(match t {
        DType::F32 => scalar::to_f32,
        DType::F16 => scalar::to_f16,
        DType::BF16 => scalar::to_bf16,
        DType::Q8_0 => scalar::quantize_q8_0,
        DType::Q8_1 => scalar::quantize_q8_1,
        DType::Q8_K => scalar::quantize_q8_k,
        _ => return None,
    })
}

#[cfg(target_arch = "x86_64")]
fn avx2_from_float(t: DType) -> Option<FromFloat> {
    Some(match t {
        DType::F16 => avx2::to_f16,
        DType::Q8_0 => avx2::quantize_q8_0,
        DType::Q8_1 => avx2::quantize_q8_1,
        // Rare (BF16) or not worth it (Q8_K: once per row of activations, 1/n of the matmul).
        other => return scalar_from_float(other),
    })
}

/// Wraps a one-row, one-column scalar dot into the table's signature.
macro_rules! scalar_cols {
    ($($name:ident => $f:path, $g:ident;)*) => {$(
        fn $name(n: usize, w: &[u8], rows: usize, a: &[u8], stride: usize, out: &mut [f32]) {
            let (rb, cols) = check_dot_args(geom::$g, n, w, rows, a, stride, out.len());
            for r in 0..rows {
                for c in 0..cols {
                    out[r * cols + c] = $f(n, &w[r * rb..], &a[c * stride..]);
                }
            }
        }
    )*};
}
scalar_cols! {
    s_f32 => scalar::dot_f32, F32;
    s_f16 => scalar::dot_f16, F16;
    s_bf16 => scalar::dot_bf16, BF16;
    s_q4_0 => scalar::dot_q4_0, Q4_0;
    s_q4_1 => scalar::dot_q4_1, Q4_1;
    s_q5_0 => scalar::dot_q5_0, Q5_0;
    s_q5_1 => scalar::dot_q5_1, Q5_1;
    s_q8_0 => scalar::dot_q8_0, Q8_0;
    s_iq4_nl => scalar::dot_iq4_nl, IQ4_NL;
    s_q2_k => scalar::dot_q2_k, Q2_K;
    s_q3_k => scalar::dot_q3_k, Q3_K;
    s_q4_k => scalar::dot_q4_k, Q4_K;
    s_q5_k => scalar::dot_q5_k, Q5_K;
    s_q6_k => scalar::dot_q6_k, Q6_K;
    s_iq4_xs => scalar::dot_iq4_xs, IQ4_XS;
    s_iq3_xxs => scalar_iq::dot_iq3_xxs, IQ3_XXS;
    s_iq3_s => scalar_iq::dot_iq3_s, IQ3_S;
    s_iq2_xxs => scalar_iq::dot_iq2_xxs, IQ2_XXS;
    s_iq2_xs => scalar_iq::dot_iq2_xs, IQ2_XS;
    s_iq2_s => scalar_iq::dot_iq2_s, IQ2_S;
    s_iq1_s => scalar_iq::dot_iq1_s, IQ1_S;
    s_iq1_m => scalar_iq::dot_iq1_m, IQ1_M;
}

fn scalar_vec_dot(t: DType) -> Option<VecDot> {
    Some(match t {
        DType::F32 => s_f32,
        DType::F16 => s_f16,
        DType::BF16 => s_bf16,
        DType::Q4_0 => s_q4_0,
        DType::Q4_1 => s_q4_1,
        DType::Q5_0 => s_q5_0,
        DType::Q5_1 => s_q5_1,
        DType::Q8_0 => s_q8_0,
        DType::IQ4_NL => s_iq4_nl,
        DType::Q2_K => s_q2_k,
        DType::Q3_K => s_q3_k,
        DType::Q4_K => s_q4_k,
        DType::Q5_K => s_q5_k,
        DType::Q6_K => s_q6_k,
        DType::IQ4_XS => s_iq4_xs,
        DType::IQ3_XXS => s_iq3_xxs,
        DType::IQ3_S => s_iq3_s,
        DType::IQ2_XXS => s_iq2_xxs,
        DType::IQ2_XS => s_iq2_xs,
        DType::IQ2_S => s_iq2_s,
        DType::IQ1_S => s_iq1_s,
        DType::IQ1_M => s_iq1_m,
        _ => return None,
    })
}

/// The IQ grid types' AVX-512 row loops (the AVX2 kernels with VNNI, BMI2, 32 registers).
#[cfg(target_arch = "x86_64")]
fn avx512_iq_vec_dot(t: DType) -> Option<VecDot> {
    use crate::arch::avx512::dot_iq as k;
    // Every AVX-512 CPU so far has BMI2, which these row loops also use; checked all the same.
    if !std::arch::is_x86_feature_detected!("bmi2") {
        return None;
    }
    Some(match t {
        DType::IQ3_XXS => k::vec_dot_iq3_xxs,
        DType::IQ3_S => k::vec_dot_iq3_s,
        DType::IQ2_XXS => k::vec_dot_iq2_xxs,
        DType::IQ2_XS => k::vec_dot_iq2_xs,
        DType::IQ2_S => k::vec_dot_iq2_s,
        DType::IQ1_S => k::vec_dot_iq1_s,
        DType::IQ1_M => k::vec_dot_iq1_m,
        _ => return None,
    })
}

#[cfg(target_arch = "x86_64")]
fn avx2_vec_dot(t: DType) -> Option<VecDot> {
    Some(match t {
        DType::F32 => avx2::vec_dot_f32,
        DType::F16 => avx2::vec_dot_f16,
        DType::BF16 => avx2::vec_dot_bf16,
        DType::Q4_0 => avx2::vec_dot_q4_0,
        DType::Q4_1 => avx2::vec_dot_q4_1,
        DType::Q5_0 => avx2::vec_dot_q5_0,
        DType::Q5_1 => avx2::vec_dot_q5_1,
        DType::Q8_0 => avx2::vec_dot_q8_0,
        DType::IQ4_NL => avx2::vec_dot_iq4_nl,
        DType::Q2_K => avx2::vec_dot_q2_k,
        DType::Q3_K => avx2::vec_dot_q3_k,
        DType::Q4_K => avx2::vec_dot_q4_k,
        DType::Q5_K => avx2::vec_dot_q5_k,
        DType::Q6_K => avx2::vec_dot_q6_k,
        DType::IQ4_XS => avx2::vec_dot_iq4_xs,
        DType::IQ3_XXS => avx2::vec_dot_iq3_xxs,
        DType::IQ3_S => avx2::vec_dot_iq3_s,
        DType::IQ2_XXS => avx2::vec_dot_iq2_xxs,
        DType::IQ2_XS => avx2::vec_dot_iq2_xs,
        DType::IQ2_S => avx2::vec_dot_iq2_s,
        DType::IQ1_S => avx2::vec_dot_iq1_s,
        DType::IQ1_M => avx2::vec_dot_iq1_m,
        _ => return None,
    })
}

/// Block geometry of a (weight, activation) pair, as constants: the checks below run once per
/// weight row, so they must not look anything up (DType's methods search a table).
#[derive(Clone, Copy)]
pub(crate) struct Geometry {
    pub name: &'static str,
    /// Elements per block.
    pub block: usize,
    /// Bytes per weight block / per activation block.
    pub w_bytes: usize,
    pub a_bytes: usize,
}

impl Geometry {
    pub(crate) const fn of(
        name: &'static str,
        block: usize,
        w_bytes: usize,
        a_bytes: usize,
    ) -> Geometry {
        Geometry {
            name,
            block,
            w_bytes,
            a_bytes,
        }
    }
}

/// The contract of every `VecDot`, checked once per call (a few integer ops; the kernels then
/// read without bounds checks): `n` is whole blocks, `w` holds `rows` rows, `out` holds `rows`
/// times `cols` results with 1 <= cols <= 4, `a` holds `cols` rows spaced `stride` bytes apart.
/// Returns (weight row bytes, cols). Violations are bugs in the caller, hence panics.
#[inline(always)]
pub(crate) fn check_dot_args(
    g: Geometry,
    n: usize,
    w: &[u8],
    rows: usize,
    a: &[u8],
    stride: usize,
    outs: usize,
) -> (usize, usize) {
    let nb = n / g.block;
    let (rb, ab) = (nb * g.w_bytes, nb * g.a_bytes);
    let cols = outs.checked_div(rows).unwrap_or(0);
    let ok = nb * g.block == n
        && rows.checked_mul(rb).is_some_and(|b| w.len() >= b)
        && rows * cols == outs
        && cols <= 4
        && (rows == 0
            || (cols >= 1 && (cols == 1 || stride >= ab) && a.len() >= (cols - 1) * stride + ab));
    if !ok {
        bad_dot_args(g, n, w.len(), rows, a.len(), stride, outs);
    }
    (rb, cols)
}

#[cold]
#[inline(never)]
fn bad_dot_args(
    g: Geometry,
    n: usize,
    w: usize,
    rows: usize,
    a: usize,
    stride: usize,
    outs: usize,
) -> ! {
    panic!(
        "vec_dot {}: bad arguments: n={n} (block {}), weights {w} bytes for {rows} rows, activations {a} bytes, stride {stride}, {outs} outputs",
        g.name, g.block
    )
}

/// Geometry of the kernel pairs, by weight type.
pub(crate) mod geom {
    use super::layout::*;
    use super::Geometry as G;
    pub const F32: G = G::of("F32", 1, 4, 4);
    pub const F16: G = G::of("F16", 1, 2, 2);
    pub const BF16: G = G::of("BF16", 1, 2, 2);
    pub const Q4_0: G = G::of("Q4_0", QK, Q4_0_BYTES, Q8_0_BYTES);
    pub const Q4_1: G = G::of("Q4_1", QK, Q4_1_BYTES, Q8_1_BYTES);
    pub const Q5_0: G = G::of("Q5_0", QK, Q5_0_BYTES, Q8_0_BYTES);
    pub const Q5_1: G = G::of("Q5_1", QK, Q5_1_BYTES, Q8_1_BYTES);
    pub const Q8_0: G = G::of("Q8_0", QK, Q8_0_BYTES, Q8_0_BYTES);
    pub const IQ4_NL: G = G::of("IQ4_NL", QK, IQ4_NL_BYTES, Q8_0_BYTES);
    pub const Q2_K: G = G::of("Q2_K", QK_K, Q2_K_BYTES, Q8_K_BYTES);
    pub const Q3_K: G = G::of("Q3_K", QK_K, Q3_K_BYTES, Q8_K_BYTES);
    pub const Q4_K: G = G::of("Q4_K", QK_K, Q4_K_BYTES, Q8_K_BYTES);
    pub const Q5_K: G = G::of("Q5_K", QK_K, Q5_K_BYTES, Q8_K_BYTES);
    pub const Q6_K: G = G::of("Q6_K", QK_K, Q6_K_BYTES, Q8_K_BYTES);
    pub const IQ4_XS: G = G::of("IQ4_XS", QK_K, IQ4_XS_BYTES, Q8_K_BYTES);
    pub const IQ3_XXS: G = G::of("IQ3_XXS", QK_K, IQ3_XXS_BYTES, Q8_K_BYTES);
    pub const IQ3_S: G = G::of("IQ3_S", QK_K, IQ3_S_BYTES, Q8_K_BYTES);
    pub const IQ2_XXS: G = G::of("IQ2_XXS", QK_K, IQ2_XXS_BYTES, Q8_K_BYTES);
    pub const IQ2_XS: G = G::of("IQ2_XS", QK_K, IQ2_XS_BYTES, Q8_K_BYTES);
    pub const IQ2_S: G = G::of("IQ2_S", QK_K, IQ2_S_BYTES, Q8_K_BYTES);
    pub const IQ1_S: G = G::of("IQ1_S", QK_K, IQ1_S_BYTES, Q8_K_BYTES);
    pub const IQ1_M: G = G::of("IQ1_M", QK_K, IQ1_M_BYTES, Q8_K_BYTES);
}
