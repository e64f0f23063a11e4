//! The micro-kernels: `acc[r][x] = sum_j a[j][r] * b[j][x]` for a panel of [`MR`] output
//! channels and `nr` pixels, the accumulators in registers for the whole sum. `*_rows`
//! variants read each tap's pixels at an offset into a row source; the packed ones read a
//! packed `[j][nr]` panel (Winograd's transformed tiles).

use super::isa::Isa;

/// Output channels per weight panel (rows of the micro-kernel).
pub const MR: usize = 8;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) fn micro_f32_avx512(kdim: usize, a: &[f32], b: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    assert!(a.len() >= kdim * MR && b.len() >= kdim * 32 && out.len() >= MR * 32);
    let mut acc = [_mm512_setzero_ps(); 2 * MR];
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    for j in 0..kdim {
        // SAFETY: j < kdim, bounds asserted above.
        unsafe {
            let b0 = _mm512_loadu_ps(pb.add(j * 32));
            let b1 = _mm512_loadu_ps(pb.add(j * 32 + 16));
            for r in 0..MR {
                let av = _mm512_set1_ps(*pa.add(j * MR + r));
                acc[2 * r] = _mm512_fmadd_ps(av, b0, acc[2 * r]);
                acc[2 * r + 1] = _mm512_fmadd_ps(av, b1, acc[2 * r + 1]);
            }
        }
    }
    for (i, v) in acc.iter().enumerate() {
        // SAFETY: out holds MR x 32 floats.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(i * 16), *v) };
    }
}

/// [`micro_f32_avx512`]'s sum with each tap's `nr` pixels read at `b + offs[j]` (the row
/// source), for every instruction set.
///
/// # Safety
/// `b + offs[j] .. + nr` is readable for every j < kdim.
#[inline(always)]
pub(super) unsafe fn micro_f32_rows(
    isa: Isa,
    width: usize,
    kdim: usize,
    a: &[f32],
    b: *const f32,
    offs: &[u32],
    acc: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: the ISA was detected on this CPU; the caller guarantees the reads.
        Isa::Avx512 | Isa::Avx512Vnni if width == 16 => unsafe {
            return micro_f32_rows_avx512_16(kdim, a, b, offs, acc);
        },
        Isa::Avx512 | Isa::Avx512Vnni => unsafe {
            return micro_f32_rows_avx512(kdim, a, b, offs, acc);
        },
        Isa::Avx2 => unsafe { return micro_f32_rows_avx2(kdim, a, b, offs, acc) },
        _ => {}
    }
    let _ = width;
    // NEON is the aarch64 baseline: `mul_add` on it is FMLA, vectorised by the compiler.
    #[cfg(target_arch = "aarch64")]
    if matches!(isa, Isa::Neon | Isa::NeonDot) {
        return unsafe { micro_f32_rows_generic::<8, true>(kdim, a, b, offs, acc) };
    }
    let _ = isa;
    unsafe { micro_f32_rows_generic::<8, false>(kdim, a, b, offs, acc) }
}

#[inline(always)]
unsafe fn micro_f32_rows_generic<const NR: usize, const FMA: bool>(
    kdim: usize,
    a: &[f32],
    b: *const f32,
    offs: &[u32],
    out: &mut [f32],
) {
    let mut acc = [[0f32; NR]; MR];
    for (av, off) in a.chunks_exact(MR).zip(offs).take(kdim) {
        let bv: [f32; NR] =
            unsafe { std::ptr::read_unaligned(b.add(*off as usize) as *const [f32; NR]) };
        for r in 0..MR {
            for x in 0..NR {
                acc[r][x] = if FMA {
                    av[r].mul_add(bv[x], acc[r][x])
                } else {
                    acc[r][x] + av[r] * bv[x]
                };
            }
        }
    }
    for r in 0..MR {
        out[r * NR..][..NR].copy_from_slice(&acc[r]);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn micro_f32_rows_avx2(
    kdim: usize,
    a: &[f32],
    b: *const f32,
    offs: &[u32],
    acc: &mut [f32],
) {
    unsafe { micro_f32_rows_generic::<8, true>(kdim, a, b, offs, acc) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn micro_f32_rows_avx512(
    kdim: usize,
    a: &[f32],
    b: *const f32,
    offs: &[u32],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    assert!(a.len() >= kdim * MR && offs.len() >= kdim && out.len() >= MR * 32);
    let mut acc = [_mm512_setzero_ps(); 2 * MR];
    let pa = a.as_ptr();
    for j in 0..kdim {
        // SAFETY: j < kdim (asserted lengths); the caller guarantees the B reads.
        unsafe {
            let pb = b.add(*offs.get_unchecked(j) as usize);
            let b0 = _mm512_loadu_ps(pb);
            let b1 = _mm512_loadu_ps(pb.add(16));
            for r in 0..MR {
                let av = _mm512_set1_ps(*pa.add(j * MR + r));
                acc[2 * r] = _mm512_fmadd_ps(av, b0, acc[2 * r]);
                acc[2 * r + 1] = _mm512_fmadd_ps(av, b1, acc[2 * r + 1]);
            }
        }
    }
    for (i, v) in acc.iter().enumerate() {
        // SAFETY: out holds MR x 32 floats.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(i * 16), *v) };
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn micro_f32_rows_avx512_16(
    kdim: usize,
    a: &[f32],
    b: *const f32,
    offs: &[u32],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    assert!(a.len() >= kdim * MR && offs.len() >= kdim && out.len() >= MR * 16);
    let mut acc = [_mm512_setzero_ps(); MR];
    let pa = a.as_ptr();
    for j in 0..kdim {
        // SAFETY: as `micro_f32_rows_avx512`.
        unsafe {
            let b0 = _mm512_loadu_ps(b.add(*offs.get_unchecked(j) as usize));
            for (r, acc) in acc.iter_mut().enumerate() {
                *acc = _mm512_fmadd_ps(_mm512_set1_ps(*pa.add(j * MR + r)), b0, *acc);
            }
        }
    }
    for (i, v) in acc.iter().enumerate() {
        // SAFETY: out holds MR x 16 floats.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(i * 16), *v) };
    }
}

/// INT8: tap group j4's `width` pixels (4 bytes each, `x + 128`) read at `b + offs[j4]`,
/// dotted with 4 weights per lane.
///
/// # Safety
/// `b + offs[j4] .. + 4 * width` is readable for every j4 < k4.
#[inline(always)]
pub(super) unsafe fn micro_i8_rows(
    isa: Isa,
    width: usize,
    k4: usize,
    a: &[i8],
    b: *const u8,
    offs: &[u32],
    acc: &mut [i32],
) {
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: the ISA was detected on this CPU; the caller guarantees the reads.
        Isa::Avx512Vnni if width == 16 => unsafe {
            return micro_i8_rows_vnni::<1>(k4, a, b, offs, acc);
        },
        Isa::Avx512Vnni => unsafe { return micro_i8_rows_vnni::<2>(k4, a, b, offs, acc) },
        Isa::Avx512 if width == 16 => unsafe {
            return micro_i8_rows_avx2::<16>(k4, a, b, offs, acc);
        },
        Isa::Avx512 => unsafe { return micro_i8_rows_avx2::<32>(k4, a, b, offs, acc) },
        Isa::Avx2 => unsafe { return micro_i8_rows_avx2::<8>(k4, a, b, offs, acc) },
        _ => {}
    }
    #[cfg(target_arch = "aarch64")]
    if isa == Isa::NeonDot && width == 8 {
        // SAFETY: dotprod was detected on this CPU; the caller guarantees the reads.
        return unsafe { micro_i8_rows_sdot(k4, a, b, offs, acc) };
    }
    let _ = (isa, width);
    unsafe { micro_i8_rows_generic::<8>(k4, a, b, offs, acc) }
}

#[inline(always)]
unsafe fn micro_i8_rows_generic<const NR: usize>(
    k4: usize,
    a: &[i8],
    b: *const u8,
    offs: &[u32],
    out: &mut [i32],
) {
    let mut acc = [[0i32; NR]; MR];
    for (av, off) in a.chunks_exact(MR * 4).zip(offs).take(k4) {
        // SAFETY: the caller guarantees NR x 4 readable bytes at each offset.
        let bv = unsafe { std::slice::from_raw_parts(b.add(*off as usize), NR * 4) };
        for r in 0..MR {
            for x in 0..NR {
                let mut s = 0i32;
                for q in 0..4 {
                    s += bv[x * 4 + q] as i32 * av[r * 4 + q] as i32;
                }
                acc[r][x] += s;
            }
        }
    }
    for r in 0..MR {
        out[r * NR..][..NR].copy_from_slice(&acc[r]);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn micro_i8_rows_avx2<const NR: usize>(
    k4: usize,
    a: &[i8],
    b: *const u8,
    offs: &[u32],
    acc: &mut [i32],
) {
    unsafe { micro_i8_rows_generic::<NR>(k4, a, b, offs, acc) }
}

/// `V` 512-bit vectors (16 pixels each) per channel row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn micro_i8_rows_vnni<const V: usize>(
    k4: usize,
    a: &[i8],
    b: *const u8,
    offs: &[u32],
    out: &mut [i32],
) {
    use std::arch::x86_64::*;
    assert!(a.len() >= k4 * MR * 4 && offs.len() >= k4 && out.len() >= MR * 16 * V);
    let mut acc = [[_mm512_setzero_si512(); V]; MR];
    let pa = a.as_ptr();
    for j in 0..k4 {
        // SAFETY: j < k4 (asserted lengths); the caller guarantees the B reads.
        unsafe {
            let pb = b.add(*offs.get_unchecked(j) as usize);
            let mut bv = [_mm512_setzero_si512(); V];
            for (v, bv) in bv.iter_mut().enumerate() {
                *bv = _mm512_loadu_si512(pb.add(v * 64) as *const _);
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let w = _mm512_set1_epi32(std::ptr::read_unaligned(
                    pa.add((j * MR + r) * 4) as *const i32
                ));
                for v in 0..V {
                    acc[v] = _mm512_dpbusd_epi32(acc[v], bv[v], w);
                }
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (v, a) in acc.iter().enumerate() {
            // SAFETY: out holds MR x 16V i32.
            unsafe { _mm512_storeu_si512(out.as_mut_ptr().add((r * V + v) * 16) as *mut _, *a) };
        }
    }
}

/// [`micro_i8_rows_generic`]`::<8>` on `sdot`. The rows hold `x + 128` as unsigned bytes (the
/// layout VNNI's unsigned-by-signed product wants); `sdot` multiplies signed by signed, so the
/// bytes are flipped back to `x` (xor 0x80) and `128 * sum(w)` per output channel, counted by
/// two more `sdot`s against ones, is added at the end: the same integers, exactly.
///
/// Per tap group: two 16-byte loads of pixels (8 pixels x 4 taps), two of weights (8 channels
/// x 4 taps), and 16 `sdot` by element (`v.4s += b.16b . w.4b[lane]`) into 16 accumulators.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon,dotprod")]
unsafe fn micro_i8_rows_sdot(k4: usize, a: &[i8], b: *const u8, offs: &[u32], out: &mut [i32]) {
    use std::arch::aarch64::*;
    use std::arch::asm;
    assert!(a.len() >= k4 * MR * 4 && offs.len() >= k4 && out.len() >= MR * 8);
    // `vdotq_s32` / `vdotq_laneq_s32` are still unstable in std::arch (rust-lang/rust#117224):
    // the instruction itself, in inline assembly, is stable.
    macro_rules! sdot {
        ($acc:expr, $b:expr, $w:expr) => {
            asm!("sdot {acc:v}.4s, {b:v}.16b, {w:v}.16b", acc = inout(vreg) $acc, b = in(vreg) $b,
                w = in(vreg) $w, options(pure, nomem, nostack, preserves_flags))
        };
        ($acc:expr, $b:expr, $w:expr, $lane:literal) => {
            asm!("sdot {acc:v}.4s, {b:v}.16b, {w:v}.4b[{lane}]", acc = inout(vreg) $acc,
                b = in(vreg) $b, w = in(vreg) $w, lane = const $lane,
                options(pure, nomem, nostack, preserves_flags))
        };
    }
    let zero = vdupq_n_s32(0);
    let mut acc = [[zero; 2]; MR];
    let mut wsum = [zero; 2];
    let flip = vdupq_n_u8(0x80);
    let ones = vdupq_n_s8(1);
    let pa = a.as_ptr();
    for j in 0..k4 {
        // SAFETY: j < k4 (asserted lengths); the caller guarantees 32 bytes at each offset;
        // dotprod is enabled for this function.
        unsafe {
            let pb = b.add(*offs.get_unchecked(j) as usize);
            let b0 = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(pb), flip));
            let b1 = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(pb.add(16)), flip));
            let w0 = vld1q_s8(pa.add(j * MR * 4));
            let w1 = vld1q_s8(pa.add(j * MR * 4 + 16));
            sdot!(wsum[0], w0, ones);
            sdot!(wsum[1], w1, ones);
            macro_rules! row {
                ($r:literal, $w:ident, $lane:literal) => {
                    sdot!(acc[$r][0], b0, $w, $lane);
                    sdot!(acc[$r][1], b1, $w, $lane);
                };
            }
            row!(0, w0, 0);
            row!(1, w0, 1);
            row!(2, w0, 2);
            row!(3, w0, 3);
            row!(4, w1, 0);
            row!(5, w1, 1);
            row!(6, w1, 2);
            row!(7, w1, 3);
        }
    }
    let mut sums = [0i32; MR];
    // SAFETY: MR = 8 i32 in two stores of four.
    unsafe {
        vst1q_s32(sums.as_mut_ptr(), wsum[0]);
        vst1q_s32(sums.as_mut_ptr().add(4), wsum[1]);
    }
    for (r, acc) in acc.iter().enumerate() {
        let shift = vdupq_n_s32(sums[r].wrapping_mul(128));
        for (v, a) in acc.iter().enumerate() {
            // SAFETY: out holds MR x 8 i32.
            unsafe { vst1q_s32(out.as_mut_ptr().add(r * 8 + v * 4), vaddq_s32(*a, shift)) };
        }
    }
}

/// [`micro_f32_avx512`] on 16 columns (one AVX-512 register per channel), packed B `[j][16]`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) fn micro_f32_16(kdim: usize, a: &[f32], b: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    assert!(a.len() >= kdim * MR && b.len() >= kdim * 16 && out.len() >= MR * 16);
    let mut acc = [_mm512_setzero_ps(); MR];
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    for j in 0..kdim {
        // SAFETY: j < kdim, bounds asserted above.
        unsafe {
            let b0 = _mm512_loadu_ps(pb.add(j * 16));
            for (r, acc) in acc.iter_mut().enumerate() {
                *acc = _mm512_fmadd_ps(_mm512_set1_ps(*pa.add(j * MR + r)), b0, *acc);
            }
        }
    }
    for (i, v) in acc.iter().enumerate() {
        // SAFETY: out holds MR x 16 floats.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(i * 16), *v) };
    }
}
