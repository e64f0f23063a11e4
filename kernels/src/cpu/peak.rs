//! The machine's FP32 FMA peak, measured: independent FMA chains on every register of the
//! widest vector unit the engine uses, long enough to hide the FMA latency, on one thread and
//! on every thread of a pool. Per-layer GFLOP/s are reported as a share of it.

use super::isa::Isa;
use super::pool::WorkerPool;
use std::time::Instant;

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct FmaPeak {
    pub isa: Isa,
    pub threads: usize,
    /// GFLOP/s (2 per FMA) on one thread.
    pub gflops_1: f64,
    /// GFLOP/s on all of the pool's threads together.
    pub gflops_all: f64,
}

/// Run `iters` rounds of independent FMAs; returns the flops done (and a value that depends
/// on every chain, so nothing is optimised away).
fn chains(isa: Isa, iters: usize) -> (f64, f32) {
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: the ISA was detected on this CPU.
        Isa::Avx512 | Isa::Avx512Vnni => return unsafe { chains_avx512(iters) },
        Isa::Avx2 => return unsafe { chains_avx2(iters) },
        _ => {}
    }
    if matches!(isa, Isa::Neon | Isa::NeonDot) {
        return chains_fma(iters);
    }
    let mut acc = [1.0f32; 32];
    let m = std::hint::black_box(0.999_999f32);
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = *a * m + 1e-7;
        }
    }
    (iters as f64 * 32.0 * 2.0, acc.iter().sum())
}

/// 16 NEON registers of FMLA chains (2 FMA pipes x 4 cycles latency on a Cortex-A78 need 8).
fn chains_fma(iters: usize) -> (f64, f32) {
    let mut acc = [1.0f32; 64];
    let m = std::hint::black_box(0.999_999f32);
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = a.mul_add(m, 1e-7);
        }
    }
    (iters as f64 * 64.0 * 2.0, acc.iter().sum())
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn chains_avx512(iters: usize) -> (f64, f32) {
    use std::arch::x86_64::*;
    let m = _mm512_set1_ps(std::hint::black_box(0.999_999));
    let c = _mm512_set1_ps(1e-7);
    let mut acc = [_mm512_set1_ps(1.0); 24];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm512_fmadd_ps(*a, m, c);
        }
    }
    let mut s = _mm512_setzero_ps();
    for a in acc {
        s = _mm512_add_ps(s, a);
    }
    (iters as f64 * 24.0 * 16.0 * 2.0, _mm512_reduce_add_ps(s))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn chains_avx2(iters: usize) -> (f64, f32) {
    use std::arch::x86_64::*;
    let m = _mm256_set1_ps(std::hint::black_box(0.999_999));
    let c = _mm256_set1_ps(1e-7);
    let mut acc = [_mm256_set1_ps(1.0); 12];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm256_fmadd_ps(*a, m, c);
        }
    }
    let mut s = _mm256_setzero_ps();
    for a in acc {
        s = _mm256_add_ps(s, a);
    }
    let mut v = [0f32; 8];
    // SAFETY: 8 floats.
    unsafe { _mm256_storeu_ps(v.as_mut_ptr(), s) };
    (iters as f64 * 12.0 * 8.0 * 2.0, v.iter().sum())
}

/// Best of a few ~10 ms runs on one thread, then on every thread of `pool` at once.
pub fn measure(isa: Isa, pool: &WorkerPool) -> FmaPeak {
    let iters = 200_000;
    let one = || {
        let t0 = Instant::now();
        let (flops, v) = chains(isa, iters);
        std::hint::black_box(v);
        flops / t0.elapsed().as_secs_f64() / 1e9
    };
    let gflops_1 = (0..5).map(|_| one()).fold(0.0, f64::max);
    let threads = pool.threads();
    let mut gflops_all: f64 = 0.0;
    for _ in 0..5 {
        let t0 = Instant::now();
        pool.run(threads, &|_, _| {
            std::hint::black_box(chains(isa, iters));
        });
        let flops = chains_flops(isa, iters) * threads as f64;
        gflops_all = gflops_all.max(flops / t0.elapsed().as_secs_f64() / 1e9);
    }
    FmaPeak {
        isa,
        threads,
        gflops_1,
        gflops_all,
    }
}

fn chains_flops(isa: Isa, iters: usize) -> f64 {
    match isa {
        Isa::Avx512 | Isa::Avx512Vnni => iters as f64 * 24.0 * 16.0 * 2.0,
        Isa::Avx2 => iters as f64 * 12.0 * 8.0 * 2.0,
        Isa::Portable => iters as f64 * 32.0 * 2.0,
        Isa::Neon | Isa::NeonDot => iters as f64 * 64.0 * 2.0,
    }
}
