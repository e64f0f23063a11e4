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
    /// aarch64 Advanced SIMD with the FP32 micro-kernels on FMLA (the portable kernels are
    /// NEON already: it is the aarch64 baseline, and the compiler vectorises them for it).
    Neon,
    /// NEON + the ARMv8.2 dot-product instructions (`sdot`): INT8 dot products of four byte
    /// pairs per lane, as VNNI (Cortex-A78AE: Jetson / DRIVE Orin).
    NeonDot,
}

impl Isa {
    /// The best family this CPU runs; `BEVRT_CPU_ISA=portable|avx2|avx512|neon` caps it
    /// (tests and benchmarks of the slower paths on a fast machine). A name of another
    /// architecture's family does not cap anything.
    pub fn detect() -> Isa {
        let best = Self::best_available();
        let cap = match std::env::var("BEVRT_CPU_ISA").ok().as_deref() {
            Some("portable") => Isa::Portable,
            Some("avx2") => Isa::Avx2,
            Some("avx512") => Isa::Avx512,
            Some("neon") => Isa::Neon,
            _ => return best,
        };
        let here = Self::all_available();
        if here.contains(&cap) {
            best.min(cap)
        } else {
            best
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

    #[cfg(target_arch = "aarch64")]
    pub fn best_available() -> Isa {
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            Isa::NeonDot
        } else {
            Isa::Neon
        }
    }

    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    pub fn best_available() -> Isa {
        Isa::Portable
    }

    /// Every family this CPU can run (for tests that compare them).
    pub fn all_available() -> Vec<Isa> {
        let best = Self::best_available();
        let family: &[Isa] = if cfg!(target_arch = "aarch64") {
            &[Isa::Portable, Isa::Neon, Isa::NeonDot]
        } else {
            &[Isa::Portable, Isa::Avx2, Isa::Avx512, Isa::Avx512Vnni]
        };
        family.iter().copied().filter(|i| *i <= best).collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Avx512Vnni => "avx512-vnni",
            Isa::Neon => "neon",
            Isa::NeonDot => "neon-dotprod",
        }
    }
}
