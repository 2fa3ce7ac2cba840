//! Test helpers: a seeded RNG, random weight rows that are valid blocks of every supported type,
//! and dequantizers for the activation types (the weights go through cria-core's).
#![allow(dead_code)]

use cria_core::tensor::AlignedBuf;
use cria_core::{Bytes, DType, Tensor};
use half::{bf16, f16};

/// xorshift64*: deterministic, no dependency.
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1)
    }
    pub fn u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    /// Uniform in [0, 1).
    pub fn f32(&mut self) -> f32 {
        (self.u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.f32()
    }
    /// Roughly normal (sum of 4 uniforms), sd about `sd`.
    pub fn normal(&mut self, sd: f32) -> f32 {
        (self.f32() + self.f32() + self.f32() + self.f32() - 2.0) * sd * 1.7
    }
    pub fn bytes(&mut self, out: &mut [u8]) {
        for b in out {
            *b = self.u64() as u8;
        }
    }
}

fn put_f16(b: &mut [u8], o: usize, v: f32) {
    b[o..o + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
}

/// Byte offsets of the f16 scale fields of one block, and whether each may be negative.
fn scale_fields(t: DType) -> &'static [(usize, bool)] {
    match t {
        DType::Q4_0 | DType::Q5_0 | DType::Q8_0 | DType::IQ4_NL | DType::IQ4_XS => &[(0, true)],
        DType::Q4_1 | DType::Q5_1 => &[(0, false), (2, true)],
        DType::Q2_K => &[(80, false), (82, false)],
        DType::Q3_K => &[(108, true)],
        DType::Q4_K | DType::Q5_K => &[(0, false), (2, false)],
        DType::Q6_K => &[(208, true)],
        DType::IQ3_XXS
        | DType::IQ3_S
        | DType::IQ2_XXS
        | DType::IQ2_XS
        | DType::IQ2_S
        | DType::IQ1_S => &[(0, true)],
        _ => &[],
    }
}

/// `rows` random rows of `cols` elements of `t`: random bits everywhere (every quant pattern is
/// exercised), then scale fields overwritten with sane f16 values so no block is inf/NaN.
/// Q8_0 quants avoid -128, which ggml's quantizer never writes (and which the AVX2 sign trick
/// would saturate on, exactly as llama.cpp's kernel does).
pub fn random_weights(rng: &mut Rng, t: DType, rows: usize, cols: usize) -> Tensor {
    let nbytes = t.bytes_for(rows * cols).unwrap();
    let mut b = vec![0u8; nbytes];
    match t {
        DType::F32 => {
            for c in b.chunks_exact_mut(4) {
                c.copy_from_slice(&rng.normal(0.5).to_le_bytes());
            }
        }
        DType::F16 => {
            for c in b.chunks_exact_mut(2) {
                c.copy_from_slice(&f16::from_f32(rng.normal(0.5)).to_le_bytes());
            }
        }
        DType::BF16 => {
            for c in b.chunks_exact_mut(2) {
                c.copy_from_slice(&bf16::from_f32(rng.normal(0.5)).to_le_bytes());
            }
        }
        _ => {
            rng.bytes(&mut b);
            for blk in b.chunks_exact_mut(t.type_size()) {
                for &(o, signed) in scale_fields(t) {
                    let mag = rng.range(0.002, 0.03);
                    let v = if signed && rng.u64() & 1 == 1 {
                        -mag
                    } else {
                        mag
                    };
                    put_f16(blk, o, v);
                }
                if t == DType::IQ1_M {
                    // The f16 super-block scale is the top nibble of each scale word @48.
                    let mag = rng.range(0.002, 0.03);
                    let d = f16::from_f32(if rng.u64() & 1 == 1 { -mag } else { mag }).to_bits();
                    for w in 0..4 {
                        let o = 48 + 2 * w;
                        let v = u16::from_le_bytes([blk[o], blk[o + 1]]) & 0x0FFF
                            | (d >> (4 * w) & 0xF) << 12;
                        blk[o..o + 2].copy_from_slice(&v.to_le_bytes());
                    }
                }
                if t == DType::Q8_0 {
                    for q in &mut blk[2..] {
                        if *q == 0x80 {
                            *q = 0x81;
                        }
                    }
                }
            }
        }
    }
    Tensor::new(
        "w",
        t,
        vec![cols, rows],
        Bytes::owned(AlignedBuf::from_slice(&b)),
    )
    .unwrap()
}

/// Activations with the awkward cases in them: an all-zero block, a block with a big outlier,
/// values that hit rounding ties (x * 127/amax = k + 0.5 exactly when amax = 127).
pub fn random_acts(rng: &mut Rng, t: usize, k: usize) -> Vec<f32> {
    let mut x: Vec<f32> = (0..t * k).map(|_| rng.normal(1.0)).collect();
    for r in 0..t {
        let row = &mut x[r * k..(r + 1) * k];
        if k >= 64 && r % 2 == 0 {
            row[32..64].fill(0.0);
        }
        if k >= 96 {
            row[64] = 127.0;
            row[65] = 0.5;
            row[66] = -2.5;
            row[67] = 63.5;
        }
        if k >= 300 && r % 3 == 1 {
            row[290] = -40.0;
        }
    }
    x
}

/// Dequantizes one activation row of `at` (a vec_dot_type) of `k` elements.
pub fn dequant_act(at: DType, a: &[u8], k: usize) -> Vec<f32> {
    let h = |b: &[u8], o: usize| f16::from_le_bytes([b[o], b[o + 1]]).to_f32();
    let mut out = Vec::with_capacity(k);
    match at {
        DType::F32 => out.extend(
            a.chunks_exact(4)
                .take(k)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        DType::F16 => out.extend(
            a.chunks_exact(2)
                .take(k)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        DType::BF16 => out.extend(
            a.chunks_exact(2)
                .take(k)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        DType::Q8_0 => {
            for blk in a.chunks_exact(34).take(k / 32) {
                out.extend(blk[2..].iter().map(|&q| q as i8 as f32 * h(blk, 0)));
            }
        }
        DType::Q8_1 => {
            for blk in a.chunks_exact(36).take(k / 32) {
                out.extend(blk[4..].iter().map(|&q| q as i8 as f32 * h(blk, 0)));
            }
        }
        DType::Q8_K => {
            for blk in a.chunks_exact(292).take(k / 256) {
                let d = f32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]]);
                out.extend(blk[4..260].iter().map(|&q| q as i8 as f32 * d));
            }
        }
        other => panic!("not an activation type: {other}"),
    }
    out
}

/// The `s` field (f16 d*sum(q)) of each Q8_1 block of a row.
pub fn q8_1_sums(a: &[u8], k: usize) -> Vec<f32> {
    a.chunks_exact(36)
        .take(k / 32)
        .map(|b| f16::from_le_bytes([b[2], b[3]]).to_f32())
        .collect()
}

/// The min `m` of each Q4_1/Q5_1 block of a weight row.
pub fn block_mins(t: DType, w: &[u8]) -> Vec<f32> {
    match t {
        DType::Q4_1 | DType::Q5_1 => w
            .chunks_exact(t.type_size())
            .map(|b| f16::from_le_bytes([b[2], b[3]]).to_f32())
            .collect(),
        _ => vec![],
    }
}

/// The SIMD ISAs among `isas` (in order) this CPU runs. For each one of this build's
/// architecture that it lacks, one loud line in the test output, so a kernel family that went
/// untested is visible rather than a silent pass. `what` names the test or comparison.
pub fn isas_or_skip(isas: &[cria_kernels::Isa], what: &str) -> Vec<cria_kernels::Isa> {
    isas.iter()
        .copied()
        .filter(|&isa| has_isa_or_skip(isa, what))
        .collect()
}

/// Whether this CPU runs `isa`; if not (and `isa` belongs to this build's architecture), prints
/// "SKIPPED: <ISA> kernels not tested (<what>): this CPU lacks <features>".
pub fn has_isa_or_skip(isa: cria_kernels::Isa, what: &str) -> bool {
    use cria_kernels::Isa;
    if isa.available() {
        return true;
    }
    let (name, lacks, this_arch) = match isa {
        Isa::Scalar => return true,
        Isa::Avx2 => ("AVX2", "avx2/fma/f16c", cfg!(target_arch = "x86_64")),
        Isa::Avx512 => (
            "AVX-512",
            "avx512f/bw/vl/vnni",
            cfg!(target_arch = "x86_64"),
        ),
        Isa::Neon => ("NEON", "neon", cfg!(target_arch = "aarch64")),
        Isa::NeonDot => ("NEON dot-product", "dotprod", cfg!(target_arch = "aarch64")),
    };
    if this_arch {
        say_skipped(&format!(
            "{name} kernels not tested ({what}): this CPU lacks {lacks}"
        ));
    }
    false
}

/// Every ISA of `Isa::ALL` this CPU runs (scalar included), with a SKIPPED line for each of this
/// architecture's it lacks.
pub fn all_isas_or_skip(what: &str) -> Vec<cria_kernels::Isa> {
    isas_or_skip(&cria_kernels::Isa::ALL, what)
}

/// "SKIPPED: <why>" on the process's stderr, past the test harness's output capture (which takes
/// only the print macros), so `cargo test` shows it for passing tests too.
pub fn say_skipped(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
}

/// An attention call's shape with the usual scale 1/sqrt(head_dim).
pub fn attn_shape(
    (n_heads, n_kv_heads, head_dim): (usize, usize, usize),
    t: usize,
    pos0: usize,
    window: Option<usize>,
) -> cria_kernels::AttnShape {
    cria_kernels::AttnShape {
        n_heads,
        n_kv_heads,
        head_dim,
        t,
        pos0,
        window,
        scale: 1.0 / (head_dim as f32).sqrt(),
    }
}

/// The largest |a - b| (infinite if any difference is NaN).
pub fn worst_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(
            0f32,
            |m, d| {
                if d.is_nan() {
                    f32::INFINITY
                } else {
                    m.max(d)
                }
            },
        )
}
