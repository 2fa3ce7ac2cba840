//! Which instruction set the CPU kernels use, chosen once at run time.
//!
//! A binary built for generic x86-64 must still use AVX2 where the CPU has it, so nothing here
//! relies on `-C target-cpu=native`: kernels carry `#[target_feature]` and are only reachable
//! through tables built for an `Isa` that `available()` confirmed. `CRIA_CPU=scalar|avx2|avx512|auto`
//! overrides the choice so every path can be tested on one machine.
//!
//! `Avx512` is a superset of `Avx2`: where it has no kernel of its own, the AVX2 one runs
//! (`has_avx2`), and its own kernels give the same bits as the AVX2 ones (integer dots are
//! exact, float accumulations keep their per-lane order), so switching between the two never
//! changes a result.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable Rust, no intrinsics: the twin every SIMD kernel is tested against.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C (Haswell / Zen and later).
    Avx2,
    /// x86-64 AVX2 plus AVX-512 F, BW, VL and VNNI (Ice Lake / Sapphire Rapids / Zen 4 and
    /// later): 32 vector registers, 512-bit FMAs, `vpdpbusd` for the quantized dots.
    Avx512,
    /// aarch64 Advanced SIMD (every ARMv8-A core).
    Neon,
    /// NEON plus the dot-product extension (`sdot`; ARMv8.2+: Cortex-A55/A76, Apple M1,
    /// Graviton 2 and later). Gives the same bits as `Neon`.
    NeonDot,
}

impl Isa {
    /// Every ISA this build knows, slowest first.
    pub const ALL: [Isa; 5] = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon, Isa::NeonDot];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
            Isa::NeonDot => "neon-dotprod",
        }
    }

    pub fn from_name(s: &str) -> Option<Isa> {
        Isa::ALL
            .into_iter()
            .find(|i| i.name().eq_ignore_ascii_case(s.trim()))
    }

    /// Whether the AVX2 kernels may run (AVX2 itself, or AVX-512, which includes it).
    #[inline]
    pub fn has_avx2(self) -> bool {
        matches!(self, Isa::Avx2 | Isa::Avx512)
    }

    /// Whether this CPU can run the kernels of `self`.
    pub fn available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                Isa::Avx2.available()
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 | Isa::Avx512 => false,
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[cfg(target_arch = "aarch64")]
            Isa::NeonDot => {
                Isa::Neon.available() && std::arch::is_aarch64_feature_detected!("dotprod")
            }
            #[cfg(not(target_arch = "aarch64"))]
            Isa::Neon | Isa::NeonDot => false,
        }
    }

    /// The best ISA this CPU supports.
    pub fn best() -> Isa {
        Isa::ALL
            .into_iter()
            .rev()
            .find(|i| i.available())
            .unwrap_or(Isa::Scalar)
    }

    /// The ISA asked for by `CRIA_CPU` (unset, empty or `auto`: the best available). An unknown
    /// name, or an ISA this CPU lacks, is an error rather than a silent fallback: whoever set the
    /// variable wants to know which kernels ran.
    pub fn from_env() -> Result<Isa, String> {
        Isa::parse_request(std::env::var("CRIA_CPU").ok().as_deref())
    }

    /// `from_env` on a given value of the variable.
    pub fn parse_request(v: Option<&str>) -> Result<Isa, String> {
        let v = v.map(str::trim).unwrap_or("");
        if v.is_empty() || v.eq_ignore_ascii_case("auto") {
            return Ok(Isa::best());
        }
        let isa = Isa::from_name(v).ok_or_else(|| {
            let names: Vec<_> = Isa::ALL.iter().map(|i| i.name()).collect();
            format!(
                "CRIA_CPU={v:?}: unknown; expected auto or one of {}",
                names.join(", ")
            )
        })?;
        if isa.available() {
            Ok(isa)
        } else {
            Err(format!(
                "CRIA_CPU={v:?}: this CPU does not support {}",
                isa.name()
            ))
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn names_round_trip_and_best_is_available() {
        for i in Isa::ALL {
            assert_eq!(Isa::from_name(i.name()), Some(i));
        }
        assert_eq!(Isa::from_name("AVX2"), Some(Isa::Avx2));
        assert_eq!(Isa::from_name("NEON"), Some(Isa::Neon));
        assert_eq!(Isa::from_name("neon-DotProd"), Some(Isa::NeonDot));
        #[cfg(not(target_arch = "aarch64"))]
        assert!(!Isa::Neon.available());
        assert!(Isa::best().available());
        assert!(Isa::Scalar.available());
    }

    #[test]
    fn cria_cpu_values() {
        assert_eq!(Isa::parse_request(None), Ok(Isa::best()));
        assert_eq!(Isa::parse_request(Some(" auto ")), Ok(Isa::best()));
        assert_eq!(Isa::parse_request(Some("")), Ok(Isa::best()));
        assert_eq!(Isa::parse_request(Some("scalar")), Ok(Isa::Scalar));
        let e = Isa::parse_request(Some("avx1024")).unwrap_err();
        assert!(
            e.contains("unknown") && e.contains("scalar, avx2, avx512"),
            "{e}"
        );
        assert_eq!(Isa::from_name("AVX512"), Some(Isa::Avx512));
        if Isa::Avx512.available() {
            assert!(Isa::Avx2.available());
            assert_eq!(Isa::parse_request(Some("avx512")), Ok(Isa::Avx512));
        }
        if Isa::Avx2.available() {
            assert_eq!(Isa::parse_request(Some("AVX2")), Ok(Isa::Avx2));
        } else {
            assert!(Isa::parse_request(Some("avx2"))
                .unwrap_err()
                .contains("does not support"));
        }
    }
}
