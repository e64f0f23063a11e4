//! Which instruction set the CPU engine's kernels use, found at run time.

/// Kernel families, fastest first. Every family computes the same values: the INT8 ones
/// exactly, the FP32 GEMM ones to the twin's tolerance (FMA contracts where the twin rounds
/// twice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Isa {
    /// Plain Rust, no SIMD assumed beyond the target's baseline.
    Portable,
    /// AVX2 + FMA: the portable kernels compiled for 256-bit vectors.
    Avx2,
    /// AVX-512F: FP32 micro-kernel on 512-bit registers; INT8 as AVX2.
    Avx512,
    /// AVX-512 VNNI (`vpdpbusd`): INT8 dot products of four byte pairs per lane.
    Avx512Vnni,
}

impl Isa {
    /// The best family this CPU runs; `BEVRT_CPU_ISA=portable|avx2|avx512` caps it (tests and
    /// benchmarks of the slower paths on a fast machine).
    pub fn detect() -> Isa {
        let best = Self::best_available();
        match std::env::var("BEVRT_CPU_ISA").ok().as_deref() {
            Some("portable") => Isa::Portable,
            Some("avx2") => best.min(Isa::Avx2),
            Some("avx512") => best.min(Isa::Avx512),
            _ => best,
        }
    }

    #[cfg(target_arch = "x86_64")]
    pub fn best_available() -> Isa {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512vnni") {
            Isa::Avx512Vnni
        } else if has!("avx512f") {
            Isa::Avx512
        } else if has!("avx2") && has!("fma") {
            Isa::Avx2
        } else {
            Isa::Portable
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub fn best_available() -> Isa {
        Isa::Portable
    }

    /// Every family this CPU can run (for tests that compare them).
    pub fn all_available() -> Vec<Isa> {
        let best = Self::best_available();
        [Isa::Portable, Isa::Avx2, Isa::Avx512, Isa::Avx512Vnni]
            .into_iter()
            .filter(|i| *i <= best)
            .collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Avx512Vnni => "avx512-vnni",
        }
    }
}
