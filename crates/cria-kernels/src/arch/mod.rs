//! The ISA-specific kernels, one folder per ISA, one file per kernel family:
//!
//! ```text
//! arch/scalar/   dot.rs  gemm_q.rs  ops.rs                            (every target)
//! arch/avx2/     dot.rs  gemm_q.rs  gemm_half.rs  gemm_float.rs  ops.rs   (x86-64)
//! arch/avx512/           gemm_q.rs  gemm_half.rs                 ops.rs   (x86-64)
//! arch/neon/     dot.rs                                                (aarch64)
//! ```
//!
//! Families: `dot` (per-dtype row dots and activation converters, `crate::dot`'s table),
//! `gemm_q` (tile kernels on the repacked quantized layout, `cpu::gemm_q`), `gemm_half` (F16/BF16
//! panels, `cpu::gemm_half`), `gemm_float` (file-layout F32/F16/BF16, `cpu::gemm_float`), `ops`
//! (rmsnorm, rope, silu_mul, attention and flash tiles, `crate::ops`). Outside `arch/` are the
//! ISA-independent parts: layouts, argument checks, tiling, threads, and the dispatch that picks
//! a kernel from the backend's `Isa` (isa.rs), checked once at construction.
//!
//! A new ISA: a folder here (cfg'd on its target_arch), its `Isa` variant in isa.rs, and its arms
//! in the dispatchers (`dot::kernel`, `cpu::gemm_q::tile_fn`, ...). A new kernel family: one file
//! per ISA that has it, the driver outside `arch/`. A higher ISA may reuse a lower one's helpers
//! (`avx512` imports from `avx2`). Every SIMD kernel has a scalar twin under `arch/scalar` with
//! the same operation order, and tests/ compares them (bit for bit where the order is the same).

pub mod scalar;

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
#[cfg(target_arch = "aarch64")]
pub mod neon;
