//! NEON kernels (aarch64; the `dotprod` ones where the CPU has it).

pub mod dot;
