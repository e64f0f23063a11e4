//! FP32 3x3 stride-1 convolutions by Winograd's minimal filtering F(2x2, 3x3) (Lavin &
//! Gray, 2016): each 2x2 output tile comes from a 4x4 input tile with 16 multiplies per
//! (input, output) channel pair instead of 36, so 2.25x fewer multiply-adds than the GEMM.
//!
//! - Load: every filter is transformed, `U = G g Gᵀ` (16 values), and packed per transform
//!   element `e` into the GEMM's panels (`[e][panel][c][MR]`).
//! - Per frame: the input is copied into a padded buffer whose rows are split into even and
//!   odd columns, so element (i, j) of 16 horizontally consecutive tiles is one contiguous
//!   vector; per task (an output tile row) and block of 32 tiles, `V = Bᵀ d B` for every
//!   input channel (vectorised over tiles), 16 GEMMs `M_e = U_e V_e` on the GEMM's
//!   micro-kernel, then `Y = Aᵀ M A`, the bias, the activation and the store (the epilogue
//!   shared with the GEMM), two output rows per tile row.
//!
//! Sums run in another order than the twin's direct sum and through the transforms' adds:
//! results match the twin to ~1e-6 relative (tested at 1e-5).
//!
//! Two sets of block steps ([`BlockSteps`]): AVX-512 intrinsics with the GEMM's AVX-512
//! micro-kernels, and plain 16-lane arrays the compiler vectorises for NEON (aarch64's
//! baseline; FMLA for the GEMM). Chosen on AVX-512 and on aarch64 (NEON); elsewhere (AVX2,
//! portable x86) the engine keeps the GEMM. `BEVRT_CPU_WINOGRAD=0` turns it off (for A/B
//! measurements).

use super::conv::{Acc, Epilogue, InBuf, OutBuf, as_f32};
use super::isa::Isa;
use super::micro::MR;
#[cfg(target_arch = "x86_64")]
use super::micro::{micro_f32_16, micro_f32_avx512};
use super::phases::split_phases;
use crate::params::ConvParams;

/// Tiles per block: the GEMM micro-kernel's 32 columns.
const NT: usize = 32;

pub struct WinogradConv {
    pub p: ConvParams,
    /// `[e][panel][c][MR]`
    u: Vec<f32>,
    epi: Epilogue,
    /// Which block steps run: AVX-512 on x86-64 (where it applies on AVX-512 only); on
    /// aarch64 always the lanes.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    isa: Isa,
    tiles_w: usize,
    tiles_h: usize,
    /// Padded input `[n][c][hp][2][wph]` (even / odd columns), zero borders, plus slack.
    buf: std::cell::UnsafeCell<Vec<f32>>,
    hp: usize,
    wph: usize,
}

// SAFETY: `buf` is written only by `pad_task`, one (image, channel) plane per task, in a
// phase that ends before any tile task reads it (as the GEMM's row source).
unsafe impl Sync for WinogradConv {}

impl WinogradConv {
    /// Whether a convolution is one this kernel runs (and it is enabled on this CPU).
    pub fn applies(p: &ConvParams, isa: Isa) -> bool {
        let enabled = std::env::var("BEVRT_CPU_WINOGRAD").map_or(true, |v| v != "0");
        enabled
            && matches!(
                isa,
                Isa::Avx512 | Isa::Avx512Vnni | Isa::Neon | Isa::NeonDot
            )
            && p.r == 3
            && p.s == 3
            && p.stride_h == 1
            && p.stride_w == 1
            && p.dil_h == 1
            && p.dil_w == 1
            && p.groups == 1
            && p.c >= 8
            && p.k >= 8
            // below 16x16 outputs the GEMM's blocks across rows win (ResNet-50's 14x14 and
            // 7x7 3x3s: Winograd 1.6 / 3.9 ms, GEMM 1.4 / 1.6-1.9 ms, 2 threads, Zen 4)
            && p.oh * p.ow >= 256
            && p.out_mode != crate::params::out_mode::F16
    }

    /// Transform and pack `[k][kpad]` float weights.
    pub fn new(p: ConvParams, w: &[f32], bias: &[f32], isa: Isa) -> WinogradConv {
        let (k, c, kpad) = (p.k as usize, p.c as usize, p.kpad as usize);
        let panels = k.div_ceil(MR);
        let mut u = vec![0f32; 16 * panels * c * MR];
        for kk in 0..k {
            for ci in 0..c {
                let g = &w[kk * kpad + ci * 9..][..9];
                let t = filter_transform(g);
                for (e, v) in t.iter().enumerate() {
                    u[((e * panels + kk / MR) * c + ci) * MR + kk % MR] = *v;
                }
            }
        }
        let tiles_w = (p.ow as usize).div_ceil(2);
        let tiles_h = (p.oh as usize).div_ceil(2);
        // tile (ty, tx) reads padded rows 2ty..2ty+4 and columns 2tx..2tx+4
        let hp = (2 * tiles_h + 2).max(p.h as usize + p.pad_h as usize);
        let wph = (tiles_w + 1).max((p.w as usize + p.pad_w as usize).div_ceil(2));
        let len = p.n as usize * c * hp * 2 * wph + 2 * NT + 16;
        WinogradConv {
            p,
            u,
            epi: Epilogue {
                bias: bias.to_vec(),
                mult: vec![],
                corr: vec![],
            },
            isa,
            tiles_w,
            tiles_h,
            buf: std::cell::UnsafeCell::new(vec![0f32; len]),
            hp,
            wph,
        }
    }

    /// Padding tasks (one per image and input channel), all before [`WinogradConv::tasks`].
    pub fn pad_tasks(&self) -> usize {
        (self.p.n * self.p.c) as usize
    }

    /// One task per image and output tile row.
    pub fn tasks(&self) -> usize {
        self.p.n as usize * self.tiles_h
    }

    pub fn scratch_bytes(&self) -> usize {
        // V: [16][c][NT], M: [16][MR][NT], two output rows of 2 NT
        (16 * self.p.c as usize * NT + 16 * MR * NT + 4 * NT) * 4 + 64
    }

    /// Copy input plane `t` (image, channel) into the padded even/odd buffer.
    ///
    /// # Safety
    /// As `GemmConv::pad_task`.
    pub unsafe fn pad_task(&self, t: usize, x: InBuf) {
        #[cfg(target_arch = "x86_64")]
        if matches!(self.isa, Isa::Avx512 | Isa::Avx512Vnni) {
            return unsafe { self.pad_avx512(t, x) };
        }
        unsafe { self.pad_plane(t, x) }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    unsafe fn pad_avx512(&self, t: usize, x: InBuf) {
        unsafe { self.pad_plane(t, x) }
    }

    #[inline(always)]
    unsafe fn pad_plane(&self, t: usize, x: InBuf) {
        let InBuf::F32(x) = x else { return };
        let p = &self.p;
        let (h, w) = (p.h as usize, p.w as usize);
        let (ph, pw) = (p.pad_h as usize, p.pad_w as usize);
        let row = 2 * self.wph;
        let plane = self.hp * row;
        let buf = unsafe { &mut *self.buf.get() };
        let dst = &mut buf[t * plane..][..plane];
        let src = unsafe { std::slice::from_raw_parts(x.add(t * h * w), h * w) };
        for (iy, line) in src.chunks_exact(w).enumerate() {
            let d = &mut dst[(iy + ph) * row..][..row];
            split_phases::<2, _, _>(line, d, pw, self.wph, |v| v);
        }
    }

    /// Run task `t` (image, tile row).
    ///
    /// # Safety
    /// As `GemmConv::run_task`; the padding phase has completed.
    pub unsafe fn run_task(&self, t: usize, y: OutBuf, scratch: &mut [u8]) {
        #[cfg(target_arch = "x86_64")]
        if matches!(self.isa, Isa::Avx512 | Isa::Avx512Vnni) {
            return unsafe { self.task_avx512(t, y, scratch) };
        }
        unsafe { self.task::<Lanes>(t, y, scratch) }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    unsafe fn task_avx512(&self, t: usize, y: OutBuf, scratch: &mut [u8]) {
        unsafe { self.task::<Avx512>(t, y, scratch) }
    }

    /// One tile row: per block of tiles, the input transform of every channel, per panel of
    /// output channels the 16 GEMMs, then the output transform and the epilogue.
    #[inline(always)]
    unsafe fn task<S: BlockSteps>(&self, t: usize, y: OutBuf, scratch: &mut [u8]) {
        let p = &self.p;
        let (c, k) = (p.c as usize, p.k as usize);
        let (img, ty) = (t / self.tiles_h, t % self.tiles_h);
        let (v, rest) = as_f32(scratch).split_at_mut(16 * c * NT);
        let (m, rows) = rest.split_at_mut(16 * MR * NT);
        let row = 2 * self.wph;
        let plane = self.hp * row;
        let src = unsafe {
            (*self.buf.get())
                .as_ptr()
                .add(img * c * plane + 2 * ty * row)
        };
        let mut tx0 = 0;
        while tx0 < self.tiles_w {
            // 32 tiles a block; a tail of at most 16 on the half-width micro-kernel
            let left = self.tiles_w - tx0;
            let width = if left <= 16 { 16 } else { NT };
            let nt = width.min(left);
            for ci in 0..c {
                for half in 0..width / 16 {
                    // SAFETY: rows 2ty..2ty+4 of channel ci lie in the plane; a partial block
                    // reads up to 16 lanes past the row (the next row or the slack)
                    unsafe {
                        let at = src.add(ci * plane + tx0 + half * 16);
                        S::input_transform(at, row, self.wph, v, (ci, c, width), half)
                    };
                }
            }
            let panels = k.div_ceil(MR);
            for panel in 0..panels {
                for e in 0..16 {
                    let a = &self.u[(e * panels + panel) * c * MR..][..c * MR];
                    let b = &v[e * c * width..][..c * width];
                    let out = &mut m[e * MR * width..][..MR * width];
                    unsafe { S::gemm(c, a, b, out, width) };
                }
                for r in 0..MR.min(k - panel * MR) {
                    let kk = panel * MR + r;
                    unsafe { S::output_tiles(m, r, width, rows) };
                    let (oh, ow) = (p.oh as usize, p.ow as usize);
                    let cols = (2 * nt).min(ow - 2 * tx0);
                    let base = (img * k + kk) * oh * ow + 2 * tx0;
                    for i in 0..2.min(oh - 2 * ty) {
                        let acc = Acc::F32(&rows[i * 2 * NT..][..cols]);
                        unsafe { self.epi.row(p, kk, acc, y, base + (2 * ty + i) * ow) };
                    }
                }
            }
            tx0 += nt;
        }
    }
}

/// The vector steps of a block of tiles, per instruction set.
trait BlockSteps {
    /// `V = Bᵀ d B` for 16 consecutive tiles of one channel (lanes = tiles) into
    /// `v[e][ci][half * 16 ..]` (rows of `width` tiles); `src` is the tiles' first padded row
    /// at their first tile.
    ///
    /// # Safety
    /// Four rows of `row` floats from `src` (each read at both phases, 17 lanes) are readable.
    unsafe fn input_transform(
        src: *const f32,
        row: usize,
        wph: usize,
        v: &mut [f32],
        at: (usize, usize, usize),
        half: usize,
    );
    /// `out[MR][width] = a[c][MR]ᵀ b[c][width]` (one transform element's GEMM for a panel).
    ///
    /// # Safety
    /// The instruction set is this CPU's.
    unsafe fn gemm(c: usize, a: &[f32], b: &[f32], out: &mut [f32], width: usize);
    /// `Y = Aᵀ M A` for output channel row `r` of the panel's `M` blocks, into two output
    /// rows of `2 NT` values (tile columns interleaved).
    ///
    /// # Safety
    /// The instruction set is this CPU's.
    unsafe fn output_tiles(m: &[f32], r: usize, width: usize, rows: &mut [f32]);
}

#[cfg(target_arch = "x86_64")]
struct Avx512;

#[cfg(target_arch = "x86_64")]
impl BlockSteps for Avx512 {
    #[inline(always)]
    unsafe fn input_transform(
        src: *const f32,
        row: usize,
        wph: usize,
        v: &mut [f32],
        at: (usize, usize, usize),
        half: usize,
    ) {
        unsafe { input_transform_avx512(src, row, wph, v, at, half) }
    }

    #[inline(always)]
    unsafe fn gemm(c: usize, a: &[f32], b: &[f32], out: &mut [f32], width: usize) {
        if width == 16 {
            unsafe { micro_f32_16(c, a, b, out) }
        } else {
            unsafe { micro_f32_avx512(c, a, b, out) }
        }
    }

    #[inline(always)]
    unsafe fn output_tiles(m: &[f32], r: usize, width: usize, rows: &mut [f32]) {
        unsafe { output_tiles_avx512(m, r, width, rows) }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn output_tiles_avx512(m: &[f32], r: usize, width: usize, rows: &mut [f32]) {
    use std::arch::x86_64::*;
    // interleave y?0 and y?1 lane by lane: [a0 b0 a1 b1 ...]
    let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    for half in 0..width / 16 {
        let at =
            |e: usize| unsafe { _mm512_loadu_ps(m.as_ptr().add((e * MR + r) * width + half * 16)) };
        let mv: [__m512; 16] = std::array::from_fn(at);
        // S = Aᵀ M (rows), then Y = S A (columns)
        let s0: [__m512; 4] =
            std::array::from_fn(|j| _mm512_add_ps(_mm512_add_ps(mv[j], mv[4 + j]), mv[8 + j]));
        let s1: [__m512; 4] =
            std::array::from_fn(|j| _mm512_sub_ps(_mm512_sub_ps(mv[4 + j], mv[8 + j]), mv[12 + j]));
        for (i, s) in [s0, s1].iter().enumerate() {
            let y0 = _mm512_add_ps(_mm512_add_ps(s[0], s[1]), s[2]);
            let y1 = _mm512_sub_ps(_mm512_sub_ps(s[1], s[2]), s[3]);
            let out = unsafe { rows.as_mut_ptr().add(i * 2 * NT + half * 32) };
            unsafe {
                _mm512_storeu_ps(out, _mm512_permutex2var_ps(y0, lo, y1));
                _mm512_storeu_ps(out.add(16), _mm512_permutex2var_ps(y0, hi, y1));
            }
        }
    }
}

/// `V = Bᵀ d B` for 16 consecutive tiles of one channel (lanes = tiles) into
/// `v[e][ci][half * 16 ..]` (rows of `width` tiles); `src` is the tiles' first padded row at
/// their first tile.
///
/// # Safety
/// Four rows of `row` floats from `src` (each read at both phases, 17 lanes) are readable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn input_transform_avx512(
    src: *const f32,
    row: usize,
    wph: usize,
    v: &mut [f32],
    (ci, c, width): (usize, usize, usize),
    half: usize,
) {
    use std::arch::x86_64::*;
    // d[i][j] of tiles tx.. = padded column 2tx + j: phase j % 2, index tx + j / 2
    let d =
        |i: usize, j: usize| unsafe { _mm512_loadu_ps(src.add(i * row + (j % 2) * wph + j / 2)) };
    let dm: [[__m512; 4]; 4] = std::array::from_fn(|i| std::array::from_fn(|j| d(i, j)));
    // T = Bᵀ d (rows)
    let t: [[__m512; 4]; 4] = [
        std::array::from_fn(|j| _mm512_sub_ps(dm[0][j], dm[2][j])),
        std::array::from_fn(|j| _mm512_add_ps(dm[1][j], dm[2][j])),
        std::array::from_fn(|j| _mm512_sub_ps(dm[2][j], dm[1][j])),
        std::array::from_fn(|j| _mm512_sub_ps(dm[1][j], dm[3][j])),
    ];
    for (i, ti) in t.iter().enumerate() {
        // V = T B (columns)
        let vi = [
            _mm512_sub_ps(ti[0], ti[2]),
            _mm512_add_ps(ti[1], ti[2]),
            _mm512_sub_ps(ti[2], ti[1]),
            _mm512_sub_ps(ti[1], ti[3]),
        ];
        for (j, x) in vi.iter().enumerate() {
            let e = i * 4 + j;
            unsafe { _mm512_storeu_ps(v.as_mut_ptr().add((e * c + ci) * width + half * 16), *x) };
        }
    }
}

/// `U = G g Gᵀ` of one 3x3 filter, row-major 4x4.
fn filter_transform(g: &[f32]) -> [f32; 16] {
    const G: [[f32; 3]; 4] = [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0.0, 0.0, 1.0],
    ];
    let mut gg = [[0f32; 3]; 4]; // G g
    for i in 0..4 {
        for j in 0..3 {
            gg[i][j] = (0..3).map(|q| G[i][q] * g[q * 3 + j]).sum();
        }
    }
    let mut u = [0f32; 16];
    for i in 0..4 {
        for j in 0..4 {
            u[i * 4 + j] = (0..3).map(|q| gg[i][q] * G[j][q]).sum();
        }
    }
    u
}

/// Sixteen tiles, one value each.
type L = [f32; 16];

#[inline(always)]
fn zip(a: &L, b: &L, f: impl Fn(f32, f32) -> f32) -> L {
    std::array::from_fn(|l| f(a[l], b[l]))
}

#[inline(always)]
fn add(a: &L, b: &L) -> L {
    zip(a, b, |x, y| x + y)
}

#[inline(always)]
fn sub(a: &L, b: &L) -> L {
    zip(a, b, |x, y| x - y)
}

/// The block steps on plain `[f32; 16]` lanes: what the compiler vectorises for NEON (the
/// aarch64 baseline: four FP32 lanes a register, FMLA for `mul_add`). The same operations in
/// the same order as the AVX-512 steps.
struct Lanes;

impl BlockSteps for Lanes {
    #[inline(always)]
    unsafe fn input_transform(
        src: *const f32,
        row: usize,
        wph: usize,
        v: &mut [f32],
        (ci, c, width): (usize, usize, usize),
        half: usize,
    ) {
        // SAFETY: the caller guarantees four rows of 17 lanes at both phases
        let d = |i: usize, j: usize| -> L {
            unsafe { std::ptr::read_unaligned(src.add(i * row + (j % 2) * wph + j / 2).cast()) }
        };
        let dm: [[L; 4]; 4] = std::array::from_fn(|i| std::array::from_fn(|j| d(i, j)));
        // T = Bᵀ d (rows), then V = T B (columns)
        let t: [[L; 4]; 4] = [
            std::array::from_fn(|j| sub(&dm[0][j], &dm[2][j])),
            std::array::from_fn(|j| add(&dm[1][j], &dm[2][j])),
            std::array::from_fn(|j| sub(&dm[2][j], &dm[1][j])),
            std::array::from_fn(|j| sub(&dm[1][j], &dm[3][j])),
        ];
        for (i, ti) in t.iter().enumerate() {
            let vi = [
                sub(&ti[0], &ti[2]),
                add(&ti[1], &ti[2]),
                sub(&ti[2], &ti[1]),
                sub(&ti[1], &ti[3]),
            ];
            for (j, x) in vi.iter().enumerate() {
                let e = i * 4 + j;
                v[(e * c + ci) * width + half * 16..][..16].copy_from_slice(x);
            }
        }
    }

    /// Eight columns at a time: an 8x8 block of accumulators is 16 of NEON's 32 registers,
    /// 16 FMLA per input channel against one 32-byte load of `b` and eight scalars of `a`.
    #[inline(always)]
    unsafe fn gemm(c: usize, a: &[f32], b: &[f32], out: &mut [f32], width: usize) {
        assert!(a.len() >= c * MR && b.len() >= c * width && width.is_multiple_of(8));
        for x0 in (0..width).step_by(8) {
            let mut acc = [[0f32; 8]; MR];
            for ci in 0..c {
                // SAFETY: ci < c and x0 + 8 <= width, inside the lengths checked above
                let (av, bv): ([f32; MR], [f32; 8]) = unsafe {
                    (
                        std::ptr::read_unaligned(a.as_ptr().add(ci * MR).cast()),
                        std::ptr::read_unaligned(b.as_ptr().add(ci * width + x0).cast()),
                    )
                };
                for r in 0..MR {
                    for x in 0..8 {
                        acc[r][x] = av[r].mul_add(bv[x], acc[r][x]);
                    }
                }
            }
            for (r, row) in acc.iter().enumerate() {
                out[r * width + x0..][..8].copy_from_slice(row);
            }
        }
    }

    #[inline(always)]
    unsafe fn output_tiles(m: &[f32], r: usize, width: usize, rows: &mut [f32]) {
        for half in 0..width / 16 {
            let mv: [L; 16] = std::array::from_fn(|e| {
                m[(e * MR + r) * width + half * 16..][..16]
                    .try_into()
                    .unwrap()
            });
            // S = Aᵀ M (rows), then Y = S A (columns), tile columns interleaved
            let s0: [L; 4] = std::array::from_fn(|j| add(&add(&mv[j], &mv[4 + j]), &mv[8 + j]));
            let s1: [L; 4] =
                std::array::from_fn(|j| sub(&sub(&mv[4 + j], &mv[8 + j]), &mv[12 + j]));
            for (i, s) in [s0, s1].iter().enumerate() {
                let y0 = add(&add(&s[0], &s[1]), &s[2]);
                let y1 = sub(&sub(&s[1], &s[2]), &s[3]);
                let out = &mut rows[i * 2 * NT + half * 32..][..32];
                for l in 0..16 {
                    out[2 * l] = y0[l];
                    out[2 * l + 1] = y1[l];
                }
            }
        }
    }
}
