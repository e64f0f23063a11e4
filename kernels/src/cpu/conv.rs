//! Convolutions on the CPU, NCHW as the plan stores them.
//!
//! - [`GemmConv`] (groups = 1, and the 1x1 "convolutions" that matrix products lower to): a
//!   GEMM over output channels x output pixels x taps. Weights are packed at load into panels
//!   of [`MR`] output channels; a micro-kernel keeps an `MR x nr` block of outputs (`nr` = 32
//!   pixels on AVX-512, two registers per channel) in registers over all taps, and the
//!   epilogue adds the bias, applies the activation and stores (or requantizes) the block.
//!   - The taps come from a *row source*: a padded copy of the input whose rows are split
//!     into `stride_w` phases, so the 32 values one tap needs for 32 consecutive output
//!     pixels are consecutive in memory and the micro-kernel loads them straight from there
//!     (an offset per tap, no im2col). FP32 1x1 convolutions read the input in place.
//!   - INT8 keeps four channels interleaved per pixel in its row source (`x + 128` bytes),
//!     the operand layout of `vpdpbusd`, and subtracts `(128 + zero point) * sum(w)` per
//!     channel after, so the integer sum is exactly the twin's `sum((x - zp) * w)`.
//!   - Grouped plans never reach here; the im2col gather remains for shapes a row source
//!     cannot index (offsets beyond 32 bits).
//! - [`DirectConv`] (grouped and depthwise): per task one output channel; its input channels
//!   are copied into a padded, phase-split scratch, then every tap of every output row is one
//!   contiguous multiply-add pass. Taps outside the image read padding that adds nothing
//!   (+0.0, or the zero point for INT8), so the sums equal the twin's.
//!
//! A task's whole body (padding copy, micro-kernel, epilogue) is compiled once per
//! instruction set (`#[target_feature]` wrappers around one `#[inline(always)]` body), so the
//! copies and the epilogue vectorise for the same unit as the micro-kernel. Rust never
//! contracts `a * b + c` into an FMA, so the epilogues round exactly as the twins do.

use super::isa::Isa;
use crate::params::{ConvParams, act, out_mode};
use crate::reference::{activate, clip, quantize_i8};

/// Output channels per weight panel (rows of the micro-kernel).
pub const MR: usize = 8;

/// Where a convolution writes: f32 values or requantized int8.
#[derive(Clone, Copy)]
pub enum OutBuf {
    F32(*mut f32),
    I8(*mut i8),
}

/// Where a convolution reads.
#[derive(Clone, Copy)]
pub enum InBuf {
    F32(*const f32),
    I8(*const i8),
}

/// Check that the plan's convolution can run here: float in f32 or int8 in int8, output
/// f32 or requantized int8 (the CPU engine runs F32 plans; FP16 storage is the GPU's).
pub fn check(p: &ConvParams, int8: bool) -> Result<(), String> {
    if p.out_mode == out_mode::F16 {
        return Err("FP16 output storage (lower with float = F32 for the CPU engine)".into());
    }
    if !int8 && p.out_mode == out_mode::I8 {
        return Err("a float convolution with int8 output".into());
    }
    if p.n < 1 || p.k < 1 || p.oh < 1 || p.ow < 1 || p.groups < 1 {
        return Err(format!("degenerate convolution {p:?}"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Epilogue: bias (and INT8 rescale), activation, store; one monomorphised loop per activation

/// An activation as a type, so each epilogue loop is compiled for one and vectorises.
trait Act {
    fn apply(p: &ConvParams, y: f32) -> f32;
}
struct NoAct;
struct Relu;
struct Clip;
struct AnyAct;
impl Act for NoAct {
    #[inline(always)]
    fn apply(_: &ConvParams, y: f32) -> f32 {
        y
    }
}
impl Act for Relu {
    #[inline(always)]
    fn apply(_: &ConvParams, y: f32) -> f32 {
        if y < 0.0 { 0.0 } else { y }
    }
}
impl Act for Clip {
    #[inline(always)]
    fn apply(p: &ConvParams, y: f32) -> f32 {
        clip(y, p.act_a, p.act_b)
    }
}
impl Act for AnyAct {
    #[inline(always)]
    fn apply(p: &ConvParams, y: f32) -> f32 {
        activate(y, p.act, p.act_a, p.act_b)
    }
}

/// Per-channel epilogue constants shared by both convolution kinds.
pub struct Epilogue {
    pub bias: Vec<f32>,
    /// INT8: input scale x weight scale per channel.
    pub mult: Vec<f32>,
    /// INT8 GEMM: `(128 + in_zp) * sum(w)` per channel (see the module header).
    pub corr: Vec<i32>,
}

/// Accumulators of one output channel's run of pixels.
#[derive(Clone, Copy)]
pub(super) enum Acc<'a> {
    F32(&'a [f32]),
    /// Integer sums and the correction to subtract from each.
    I32(&'a [i32], i32),
    /// Integer sums held exactly in f32 (below 2^24).
    IntF32(&'a [f32]),
}

impl Epilogue {
    /// Finish `acc` (channel `k`) into the output at element `at`.
    ///
    /// # Safety
    /// `at .. at + acc.len()` lies inside the output.
    #[inline(always)]
    pub(super) unsafe fn row(&self, p: &ConvParams, k: usize, acc: Acc, out: OutBuf, at: usize) {
        unsafe {
            match p.act {
                act::NONE => self.row_with::<NoAct>(p, k, acc, out, at),
                act::RELU => self.row_with::<Relu>(p, k, acc, out, at),
                act::CLIP => self.row_with::<Clip>(p, k, acc, out, at),
                _ => self.row_with::<AnyAct>(p, k, acc, out, at),
            }
        }
    }

    #[inline(always)]
    unsafe fn row_with<A: Act>(&self, p: &ConvParams, k: usize, acc: Acc, out: OutBuf, at: usize) {
        let b = self.bias[k];
        // The twin's order: float `acc + bias`; INT8 `acc * mult + bias`, each rounded.
        match (acc, out) {
            (Acc::F32(a), OutBuf::F32(o)) => {
                let o = unsafe { std::slice::from_raw_parts_mut(o.add(at), a.len()) };
                for (d, v) in o.iter_mut().zip(a) {
                    *d = A::apply(p, *v + b);
                }
            }
            (Acc::I32(a, corr), OutBuf::F32(o)) => {
                let m = self.mult[k];
                let o = unsafe { std::slice::from_raw_parts_mut(o.add(at), a.len()) };
                for (d, v) in o.iter_mut().zip(a) {
                    *d = A::apply(p, (*v - corr) as f32 * m + b);
                }
            }
            (Acc::IntF32(a), OutBuf::F32(o)) => {
                let m = self.mult[k];
                let o = unsafe { std::slice::from_raw_parts_mut(o.add(at), a.len()) };
                for (d, v) in o.iter_mut().zip(a) {
                    *d = A::apply(p, *v * m + b);
                }
            }
            (Acc::IntF32(a), OutBuf::I8(o)) => {
                let m = self.mult[k];
                let o = unsafe { std::slice::from_raw_parts_mut(o.add(at), a.len()) };
                for (d, v) in o.iter_mut().zip(a) {
                    *d = quantize_i8(A::apply(p, *v * m + b), p.out_scale, p.out_zp);
                }
            }
            (Acc::I32(a, corr), OutBuf::I8(o)) => {
                let m = self.mult[k];
                let o = unsafe { std::slice::from_raw_parts_mut(o.add(at), a.len()) };
                for (d, v) in o.iter_mut().zip(a) {
                    let y = A::apply(p, (*v - corr) as f32 * m + b);
                    *d = quantize_i8(y, p.out_scale, p.out_zp);
                }
            }
            (Acc::F32(a), OutBuf::I8(o)) => {
                let o = unsafe { std::slice::from_raw_parts_mut(o.add(at), a.len()) };
                for (d, v) in o.iter_mut().zip(a) {
                    *d = quantize_i8(A::apply(p, *v + b), p.out_scale, p.out_zp);
                }
            }
        }
    }
}

/// Run `$body` (an expression using `self`) compiled for the task's instruction set.
macro_rules! per_isa {
    ($isa:expr, $avx512:ident, $avx2:ident, $portable:ident, ($($arg:expr),*)) => {
        match $isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 | Isa::Avx512Vnni => unsafe { $avx512($($arg),*) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { $avx2($($arg),*) },
            _ => unsafe { $portable($($arg),*) },
        }
    };
}

// ---------------------------------------------------------------------------------------------
// GEMM convolution

pub enum GemmWeights {
    /// `[panel][j][MR]`
    F32(Vec<f32>),
    /// `[panel][j/4][MR][4]`, j padded to a multiple of 4 with zeros.
    I8(Vec<i8>),
}

pub struct GemmConv {
    pub p: ConvParams,
    weights: GemmWeights,
    /// FP32 with unit column stride: taps read straight from a zero-padded copy of the
    /// input (no im2col); `None`: gather.
    rows: Option<RowSource>,
    epi: Epilogue,
    isa: Isa,
    /// Pixels per micro-kernel column panel.
    nr: usize,
    /// Pixels per task (a multiple of `nr`).
    tile: usize,
    kdim: usize,
    /// kdim rounded up to 4 (INT8).
    kdim4: usize,
    /// Row-reading tasks also split the output channels into this many groups of panels
    /// (small planes with many channels would otherwise give a pool too few tasks).
    kgroups: usize,
}

/// Where the row-reading GEMM finds its taps: a padded copy of the input with each row
/// split into `stride_w` phases (columns q, q + s, q + 2s, ... of phase q), so the columns
/// one tap reads for consecutive output pixels are consecutive in memory at any horizontal
/// stride. FP32: `[n][c][hp][phase][wph]`, zero borders. INT8: channels interleaved four at a
/// time, `[n][c/4][hp][phase][wph][4]` as `x + 128` bytes, borders holding the zero point (so
/// 32 pixels of one 4-channel tap group are one 128-byte `vpdpbusd` operand). Borders are
/// written at load and never again; slack at the end absorbs a partial block's over-read.
struct RowSource {
    buf: std::cell::UnsafeCell<RowBuf>,
    hp: usize,
    /// Pixels per padded row (`stride_w * wph`).
    row: usize,
    /// Pixels per phase of a row.
    wph: usize,
    /// Values per pixel: 1 (FP32) or 4 interleaved channels (INT8).
    lanes: usize,
    /// Channel blocks per image: c (FP32) or c / 4 rounded up (INT8).
    blocks: usize,
    /// Element offset of tap j = (c, ry, sx) (FP32) or tap group (c / 4, ry, sx) (INT8) from
    /// the output pixel's first tap.
    offs: Vec<u32>,
    /// FP32 only: the input is read in place (1x1, unit stride, no padding: no copy).
    in_place: bool,
}

enum RowBuf {
    F32(Vec<f32>),
    U8(Vec<u8>),
}

impl RowSource {
    /// `int8_pad`: the byte the INT8 borders hold (`zp + 128`); `None` for FP32.
    fn new(p: &ConvParams, nr: usize, int8_pad: Option<u8>) -> Option<RowSource> {
        if p.groups != 1 {
            return None;
        }
        let (c, h, w) = (p.c as usize, p.h as usize, p.w as usize);
        let (ph, pw) = (p.pad_h as usize, p.pad_w as usize);
        let (sw, dw, dh) = (p.stride_w as usize, p.dil_w as usize, p.dil_h as usize);
        let bottom =
            (((p.oh - 1) * p.stride_h + (p.r - 1) * p.dil_h + 1) as usize).saturating_sub(h + ph);
        let wp = (w + pw).max((p.ow as usize - 1) * sw + (p.s as usize - 1) * dw + 1);
        let hp = h + ph + bottom;
        let wph = wp.div_ceil(sw);
        let row = sw * wph;
        let (lanes, blocks) = match int8_pad {
            Some(_) => (4, c.div_ceil(4)),
            None => (1, c),
        };
        let in_place = int8_pad.is_none() && is_pointwise(p) && bottom == 0 && wp == w;
        let plane = hp * row * lanes;
        if p.n as usize * blocks * plane > u32::MAX as usize / 2 {
            return None;
        }
        let mut offs = vec![];
        for cb in 0..blocks {
            for ry in 0..p.r as usize {
                for sx in 0..p.s as usize {
                    let col = sx * dw;
                    let px = ry * dh * row + (col % sw) * wph + col / sw;
                    offs.push((cb * plane + px * lanes) as u32);
                }
            }
        }
        let len = p.n as usize * blocks * plane + (nr + 16) * lanes;
        let buf = match int8_pad {
            Some(v) => RowBuf::U8(vec![v; len]),
            None if in_place => RowBuf::F32(vec![]),
            None => RowBuf::F32(vec![0f32; len]),
        };
        Some(RowSource {
            buf: std::cell::UnsafeCell::new(buf),
            hp,
            row,
            wph,
            lanes,
            blocks,
            offs,
            in_place,
        })
    }
}

impl RowSource {
    /// Output pixels map one to one onto input pixels (1x1, unit strides, no padding), so
    /// blocks may run across rows.
    fn flat(&self, p: &ConvParams) -> bool {
        is_pointwise(p) && self.row == p.w as usize && self.hp == p.h as usize
    }
}

// SAFETY: `RowSource::buf` is written only by `GemmConv::pad_task`, one (image, channel)
// plane interior per task (disjoint), in a phase that completes before any task reads it.
unsafe impl Sync for GemmConv {}

/// INT8 weight packing: the plan's tap index (if any) of lane `q` of tap group `j4`.
type TapOfGroup = Box<dyn Fn(usize, usize) -> Option<usize>>;

/// Pixels per micro-kernel call for an instruction set.
fn nr_for(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 | Isa::Avx512Vnni => 32,
        _ => 8,
    }
}

impl GemmConv {
    /// Pack float weights (`[k][kpad]` rows of the plan).
    pub fn new_f32(p: ConvParams, w: &[f32], bias: &[f32], isa: Isa) -> GemmConv {
        let (k, kdim, kpad) = (p.k as usize, p.kdim as usize, p.kpad as usize);
        let panels = k.div_ceil(MR);
        let mut packed = vec![0f32; panels * kdim * MR];
        for kk in 0..k {
            let (panel, r) = (kk / MR, kk % MR);
            for j in 0..kdim {
                packed[(panel * kdim + j) * MR + r] = w[kk * kpad + j];
            }
        }
        Self::finish(
            p,
            RowSource::new(&p, nr_for(isa), None),
            GemmWeights::F32(packed),
            Epilogue {
                bias: bias.to_vec(),
                mult: vec![],
                corr: vec![],
            },
            isa,
        )
    }

    /// Pack int8 weights; `wsum` is each row's sum (the plan's constant).
    pub fn new_i8(
        p: ConvParams,
        w: &[i8],
        wsum: &[i32],
        mult: &[f32],
        bias: &[f32],
        isa: Isa,
    ) -> GemmConv {
        let (k, kdim, kpad) = (p.k as usize, p.kdim as usize, p.kpad as usize);
        let panels = k.div_ceil(MR);
        let rows = RowSource::new(&p, nr_for(isa), Some((p.in_zp + 128) as u8));
        // taps in groups of 4 along j: (c, r, s) order for the gather, or the row source's
        // (c / 4, r, s) groups of 4 channels
        let (taps4, tap): (usize, TapOfGroup) = match &rows {
            Some(rs) => {
                let (r, s_) = (p.r as usize, p.s as usize);
                let c = p.c as usize;
                (
                    rs.offs.len(),
                    Box::new(move |j4, q| {
                        let (cb, rest) = (j4 / (r * s_), j4 % (r * s_));
                        let ch = cb * 4 + q;
                        (ch < c).then_some(ch * r * s_ + rest)
                    }),
                )
            }
            None => (
                kdim.div_ceil(4),
                Box::new(move |j4, q| (j4 * 4 + q < kdim).then_some(j4 * 4 + q)),
            ),
        };
        let mut packed = vec![0i8; panels * taps4 * 4 * MR];
        for kk in 0..k {
            let (panel, r) = (kk / MR, kk % MR);
            for j4 in 0..taps4 {
                for q in 0..4 {
                    if let Some(j) = tap(j4, q) {
                        packed[((panel * taps4 + j4) * MR + r) * 4 + q] = w[kk * kpad + j];
                    }
                }
            }
        }
        let corr = wsum.iter().map(|s| (128 + p.in_zp) * s).collect();
        Self::finish(
            p,
            rows,
            GemmWeights::I8(packed),
            Epilogue {
                bias: bias.to_vec(),
                mult: mult.to_vec(),
                corr,
            },
            isa,
        )
    }

    fn finish(
        p: ConvParams,
        rows: Option<RowSource>,
        weights: GemmWeights,
        epi: Epilogue,
        isa: Isa,
    ) -> GemmConv {
        let kdim = p.kdim as usize;
        let nr = nr_for(isa);
        let pixels = (p.oh * p.ow) as usize;
        // A column panel (kdim x nr) should stay in L1 beside the weight panel; a tile of
        // a few panels amortises the task hand-out.
        let bytes_per_pixel = kdim.max(1) * 4;
        let by_cache = (128 * 1024 / bytes_per_pixel / nr).max(1) * nr;
        let tile = by_cache.min(pixels.div_ceil(nr) * nr).min(8 * nr).max(nr);
        let panels = (p.k as usize).div_ceil(MR);
        let pixel_tasks = match &rows {
            Some(r) if r.flat(&p) => p.n as usize * pixels.div_ceil(tile),
            _ => (p.n * p.oh) as usize,
        };
        let kgroups = if rows.is_some() && pixel_tasks < 8 {
            panels.min(8 / pixel_tasks.max(1)).max(1)
        } else {
            1
        };
        GemmConv {
            p,
            weights,
            rows,
            kgroups,
            epi,
            isa,
            nr,
            tile,
            kdim,
            kdim4: kdim.div_ceil(4) * 4,
        }
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn is_int8(&self) -> bool {
        matches!(self.weights, GemmWeights::I8(_))
    }

    /// Independent tasks: output rows (row-reading) or output tiles (gather) of every image.
    pub fn tasks(&self) -> usize {
        match &self.rows {
            Some(r) if r.flat(&self.p) => {
                let pixels = (self.p.oh * self.p.ow) as usize;
                return self.p.n as usize * pixels.div_ceil(self.tile) * self.kgroups;
            }
            Some(_) => return (self.p.n * self.p.oh) as usize * self.kgroups,
            None => {}
        }
        let pixels = (self.p.oh * self.p.ow) as usize;
        self.p.n as usize * pixels.div_ceil(self.tile)
    }

    /// Tasks of the padding phase that must run (all of them) before [`GemmConv::tasks`]:
    /// one per (image, input channel), or none.
    pub fn pad_tasks(&self) -> usize {
        match &self.rows {
            Some(r) if !r.in_place => self.p.n as usize * r.blocks,
            _ => 0,
        }
    }

    /// Copy input plane `t` (image, channel) into the interior of the padded buffer.
    ///
    /// # Safety
    /// `x` holds the whole input; no other task of the same phase has the same `t`, and no
    /// GEMM task of this step runs concurrently.
    pub unsafe fn pad_task(&self, t: usize, x: InBuf) {
        per_isa!(
            self.isa,
            pad_task_avx512,
            pad_task_avx2,
            pad_task_portable,
            (self, t, x)
        )
    }

    #[inline(always)]
    unsafe fn pad(&self, t: usize, x: InBuf) {
        let Some(r) = &self.rows else {
            return;
        };
        let p = &self.p;
        let (h, w, c) = (p.h as usize, p.w as usize, p.c as usize);
        let (ph, pw, sw) = (p.pad_h as usize, p.pad_w as usize, p.stride_w as usize);
        let plane = r.hp * r.row * r.lanes;
        match (unsafe { &mut *r.buf.get() }, x) {
            (RowBuf::F32(buf), InBuf::F32(x)) => {
                let dst = &mut buf[t * plane..][..plane];
                let src = unsafe { std::slice::from_raw_parts(x.add(t * h * w), h * w) };
                for (iy, line) in src.chunks_exact(w).enumerate() {
                    let d = &mut dst[(iy + ph) * r.row..][..r.row];
                    match sw {
                        1 => d[pw..pw + w].copy_from_slice(line),
                        2 => split_phases::<2, _, _>(line, d, pw, r.wph, |v| v),
                        _ => {
                            for (ix, v) in line.iter().enumerate() {
                                let pc = ix + pw;
                                d[(pc % sw) * r.wph + pc / sw] = *v;
                            }
                        }
                    }
                }
            }
            (RowBuf::U8(buf), InBuf::I8(x)) => {
                // t = (image, block of 4 channels): interleave them as x + 128; a block past
                // the last channel repeats channel 0 there (its weights are 0)
                let (img, cb) = (t / r.blocks, t % r.blocks);
                let dst = &mut buf[t * plane..][..plane];
                let chan = |q: usize| {
                    let ch = img * c + if cb * 4 + q < c { cb * 4 + q } else { cb * 4 };
                    unsafe { std::slice::from_raw_parts(x.add(ch * h * w), h * w) }
                };
                let planes = [chan(0), chan(1), chan(2), chan(3)];
                for iy in 0..h {
                    let at = iy * w..(iy + 1) * w;
                    let lines = planes.map(|p| &p[at.clone()]);
                    let d = &mut dst[(iy + ph) * r.row * 4..][..r.row * 4];
                    match sw {
                        1 => interleave4::<1>(lines, d, pw, r.wph),
                        2 => interleave4::<2>(lines, d, pw, r.wph),
                        _ => {
                            for (q, line) in lines.iter().enumerate() {
                                for (ix, v) in line.iter().enumerate() {
                                    let pc = ix + pw;
                                    d[((pc % sw) * r.wph + pc / sw) * 4 + q] = (*v as u8) ^ 0x80;
                                }
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Scratch bytes one thread needs.
    pub fn scratch_bytes(&self) -> usize {
        self.tile * self.kdim4 * 4 + MR * self.nr * 4 + 64
    }

    /// Run task `t` (see [`GemmConv::tasks`]).
    ///
    /// # Safety
    /// `x` and `y` hold the whole input and output tensors; tasks write disjoint outputs;
    /// `scratch` holds [`GemmConv::scratch_bytes`] bytes, 4-byte aligned.
    pub unsafe fn run_task(&self, t: usize, x: InBuf, y: OutBuf, scratch: &mut [u8]) {
        per_isa!(
            self.isa,
            gemm_task_avx512,
            gemm_task_avx2,
            gemm_task_portable,
            (self, t, x, y, scratch)
        )
    }

    /// Tiles of the row-reading GEMM: one output row (padded input), or, for 1x1 unit-stride
    /// convolutions without padding, `tile` consecutive pixels across rows. Every block of
    /// up to `nr` pixels, every panel of channels, taps loaded straight from the row source
    /// (or, FP32 1x1, from the input itself).
    #[inline(always)]
    unsafe fn task_rows(&self, rs: &RowSource, t: usize, x: InBuf, y: OutBuf, scratch: &mut [u8]) {
        let p = &self.p;
        let k = p.k as usize;
        let (oh, ow) = (p.oh as usize, p.ow as usize);
        let plane = rs.hp * rs.row * rs.lanes;
        // this task's share of the channel panels
        let (t, group) = (t / self.kgroups, t % self.kgroups);
        let panels = k.div_ceil(MR);
        let per = panels.div_ceil(self.kgroups);
        let mine = (group * per).min(panels)..((group + 1) * per).min(panels);
        let (img, first, count, b0) = if rs.flat(p) {
            let tiles = (oh * ow).div_ceil(self.tile);
            let (img, q0) = (t / tiles, (t % tiles) * self.tile);
            (img, q0, self.tile.min(oh * ow - q0), q0)
        } else {
            let (img, oy) = (t / oh, t % oh);
            (img, oy * ow, ow, oy * p.stride_h as usize * rs.row)
        };
        // element index of the tile's first pixel in the source
        let base = img * rs.blocks * plane + b0 * rs.lanes;
        let out_img = img * k * oh * ow + first;
        // a partial block reads past its pixels (the next row or the slack), unused
        match (&self.weights, unsafe { &*rs.buf.get() }, x) {
            (GemmWeights::F32(w), buf, x) => {
                let src = match (rs.in_place, buf, x) {
                    (true, _, InBuf::F32(x)) => x,
                    (false, RowBuf::F32(v), _) => v.as_ptr(),
                    _ => return,
                };
                for xb in (0..count).step_by(self.nr) {
                    let n = self.nr.min(count - xb);
                    let b = unsafe { src.add(base + xb) };
                    let acc = as_f32(scratch);
                    let at = out_img + xb;
                    unsafe { self.rows_block(w, b, &rs.offs, acc, y, at, n, mine.clone()) };
                }
            }
            (GemmWeights::I8(w), RowBuf::U8(v), _) => {
                for xb in (0..count).step_by(self.nr) {
                    let n = self.nr.min(count - xb);
                    let b = unsafe { v.as_ptr().add(base + xb * 4) };
                    let acc = as_i32(scratch);
                    let at = out_img + xb;
                    unsafe { self.rows_block_i8(w, b, &rs.offs, acc, y, at, n, mine.clone()) };
                }
            }
            _ => {}
        }
    }

    /// A half-width micro-kernel for short tails (AVX-512: 16 of 32 pixels).
    fn block_width(&self, n: usize) -> usize {
        if n <= self.nr / 2 && self.nr == 32 {
            16
        } else {
            self.nr
        }
    }

    /// Up to `nr` output pixels of every channel from taps at `b + offs[j]`, stored from
    /// element `at` of each channel plane.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn rows_block(
        &self,
        w: &[f32],
        b: *const f32,
        offs: &[u32],
        acc: &mut [f32],
        y: OutBuf,
        at: usize,
        n: usize,
        panels: std::ops::Range<usize>,
    ) {
        let p = &self.p;
        let (k, kdim) = (p.k as usize, offs.len());
        let plane_out = (p.oh * p.ow) as usize;
        let width = self.block_width(n);
        for panel in panels {
            let a = &w[panel * kdim * MR..][..kdim * MR];
            let acc = &mut acc[..MR * width];
            unsafe { micro_f32_rows(self.isa, width, kdim, a, b, offs, acc) };
            for r in 0..MR.min(k - panel * MR) {
                let kk = panel * MR + r;
                let acc_row = Acc::F32(&acc[r * width..][..n]);
                unsafe { self.epi.row(p, kk, acc_row, y, at + kk * plane_out) };
            }
        }
    }

    /// [`GemmConv::rows_block`] for INT8: tap groups of 4 channels at `b + offs[j4]`.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn rows_block_i8(
        &self,
        w: &[i8],
        b: *const u8,
        offs: &[u32],
        acc: &mut [i32],
        y: OutBuf,
        at: usize,
        n: usize,
        panels: std::ops::Range<usize>,
    ) {
        let p = &self.p;
        let (k, k4) = (p.k as usize, offs.len());
        let plane_out = (p.oh * p.ow) as usize;
        let width = self.block_width(n);
        for panel in panels {
            let a = &w[panel * k4 * 4 * MR..][..k4 * 4 * MR];
            let acc = &mut acc[..MR * width];
            unsafe { micro_i8_rows(self.isa, width, k4, a, b, offs, acc) };
            for r in 0..MR.min(k - panel * MR) {
                let kk = panel * MR + r;
                let acc_row = Acc::I32(&acc[r * width..][..n], self.epi.corr[kk]);
                unsafe { self.epi.row(p, kk, acc_row, y, at + kk * plane_out) };
            }
        }
    }

    #[inline(always)]
    unsafe fn task(&self, t: usize, x: InBuf, y: OutBuf, scratch: &mut [u8]) {
        let p = &self.p;
        if let Some(rs) = &self.rows {
            return unsafe { self.task_rows(rs, t, x, y, scratch) };
        }
        let pixels = (p.oh * p.ow) as usize;
        let tiles = pixels.div_ceil(self.tile);
        let (img, p0) = (t / tiles, (t % tiles) * self.tile);
        let count = self.tile.min(pixels - p0);
        let subs = count.div_ceil(self.nr);
        let (cols, acc) = scratch.split_at_mut(self.tile * self.kdim4 * 4);
        let in_plane = (p.c * p.h * p.w) as usize;
        let out_img = img * p.k as usize * pixels;
        unsafe {
            match (x, &self.weights) {
                (InBuf::F32(x), GemmWeights::F32(w)) => {
                    let cols = as_f32(cols);
                    let x = std::slice::from_raw_parts(x.add(img * in_plane), in_plane);
                    for s in 0..subs {
                        let n = self.nr.min(count - s * self.nr);
                        let dst = &mut cols[s * self.kdim * self.nr..][..self.kdim * self.nr];
                        gather(p, x, p0 + s * self.nr, n, self.nr, dst, 0.0, |v| v);
                    }
                    self.gemm_f32(w, cols, as_f32(acc), out_img, p0, count, y);
                }
                (InBuf::I8(x), GemmWeights::I8(w)) => {
                    let x = std::slice::from_raw_parts(x.add(img * in_plane), in_plane);
                    let per_sub = self.kdim4 * self.nr;
                    let pad = (p.in_zp + 128) as u8;
                    for s in 0..subs {
                        let n = self.nr.min(count - s * self.nr);
                        let dst = &mut cols[s * per_sub..][..per_sub];
                        gather_u8(p, x, p0 + s * self.nr, n, self.nr, self.kdim4, dst, pad);
                    }
                    self.gemm_i8(w, cols, as_i32(acc), out_img, p0, count, y);
                }
                _ => unreachable!("input and weight types checked at load"),
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn gemm_f32(
        &self,
        w: &[f32],
        cols: &[f32],
        acc: &mut [f32],
        out_img: usize,
        p0: usize,
        count: usize,
        y: OutBuf,
    ) {
        let p = &self.p;
        let (k, kdim, nr) = (p.k as usize, self.kdim, self.nr);
        let pixels = (p.oh * p.ow) as usize;
        for panel in 0..k.div_ceil(MR) {
            let a = &w[panel * kdim * MR..][..kdim * MR];
            for s in 0..count.div_ceil(nr) {
                let b = &cols[s * kdim * nr..][..kdim * nr];
                let acc = &mut acc[..MR * nr];
                micro_f32(self.isa, kdim, a, b, acc);
                let n = nr.min(count - s * nr);
                for r in 0..MR.min(k - panel * MR) {
                    let kk = panel * MR + r;
                    let at = out_img + kk * pixels + p0 + s * nr;
                    let row = Acc::F32(&acc[r * nr..][..n]);
                    unsafe { self.epi.row(p, kk, row, y, at) };
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn gemm_i8(
        &self,
        w: &[i8],
        cols: &[u8],
        acc: &mut [i32],
        out_img: usize,
        p0: usize,
        count: usize,
        y: OutBuf,
    ) {
        let p = &self.p;
        let (k, kdim4, nr) = (p.k as usize, self.kdim4, self.nr);
        let pixels = (p.oh * p.ow) as usize;
        for panel in 0..k.div_ceil(MR) {
            let a = &w[panel * kdim4 * MR..][..kdim4 * MR];
            for s in 0..count.div_ceil(nr) {
                let b = &cols[s * kdim4 * nr..][..kdim4 * nr];
                let acc = &mut acc[..MR * nr];
                micro_i8(self.isa, kdim4 / 4, a, b, acc);
                let n = nr.min(count - s * nr);
                for r in 0..MR.min(k - panel * MR) {
                    let kk = panel * MR + r;
                    let at = out_img + kk * pixels + p0 + s * nr;
                    let row = Acc::I32(&acc[r * nr..][..n], self.epi.corr[kk]);
                    unsafe { self.epi.row(p, kk, row, y, at) };
                }
            }
        }
    }
}

/// Four channels' input rows into one padded row's `S` phases, interleaved per pixel as
/// `x + 128` bytes (`x ^ 0x80`); constant `S`, so the loops vectorise.
#[inline(always)]
fn interleave4<const S: usize>(lines: [&[i8]; 4], dst: &mut [u8], pw: usize, wph: usize) {
    let w = lines[0].len();
    for q in 0..S {
        let ix0 = (q + S - pw % S) % S;
        if ix0 >= w {
            continue;
        }
        let first = (ix0 + pw) / S;
        let n = (w - ix0).div_ceil(S);
        let out = &mut dst[(q * wph + first) * 4..][..n * 4];
        for (m, o) in out.chunks_exact_mut(4).enumerate() {
            let ix = ix0 + m * S;
            o[0] = (lines[0][ix] as u8) ^ 0x80;
            o[1] = (lines[1][ix] as u8) ^ 0x80;
            o[2] = (lines[2][ix] as u8) ^ 0x80;
            o[3] = (lines[3][ix] as u8) ^ 0x80;
        }
    }
}

/// One input row into its `S` phases of a padded row (phase q holds padded columns
/// q, q + S, ...; the row starts `pw` columns into the padding), each value through `conv`;
/// constant `S`, so the strided reads vectorise.
#[inline(always)]
pub(super) fn split_phases<const S: usize, T: Copy, U: Copy>(
    line: &[T],
    dst: &mut [U],
    pw: usize,
    wph: usize,
    conv: impl Fn(T) -> U,
) {
    for q in 0..S {
        // input columns ix with (ix + pw) % S == q
        let ix0 = (q + S - pw % S) % S;
        if ix0 >= line.len() {
            continue;
        }
        let first = (ix0 + pw) / S;
        let n = (line.len() - ix0).div_ceil(S);
        let out = &mut dst[q * wph + first..][..n];
        let src = &line[ix0..];
        for (m, d) in out.iter_mut().enumerate() {
            *d = conv(src[m * S]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn pad_task_avx512(g: &GemmConv, t: usize, x: InBuf) {
    unsafe { g.pad(t, x) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pad_task_avx2(g: &GemmConv, t: usize, x: InBuf) {
    unsafe { g.pad(t, x) }
}

unsafe fn pad_task_portable(g: &GemmConv, t: usize, x: InBuf) {
    unsafe { g.pad(t, x) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
unsafe fn gemm_task_avx512(g: &GemmConv, t: usize, x: InBuf, y: OutBuf, s: &mut [u8]) {
    unsafe { g.task(t, x, y, s) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gemm_task_avx2(g: &GemmConv, t: usize, x: InBuf, y: OutBuf, s: &mut [u8]) {
    unsafe { g.task(t, x, y, s) }
}

unsafe fn gemm_task_portable(g: &GemmConv, t: usize, x: InBuf, y: OutBuf, s: &mut [u8]) {
    unsafe { g.task(t, x, y, s) }
}

fn as_f32(b: &mut [u8]) -> &mut [f32] {
    // SAFETY: scratch buffers are allocated as u64 words (8-byte aligned); any bit pattern
    // is a valid f32.
    unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr() as *mut f32, b.len() / 4) }
}

fn as_i32(b: &mut [u8]) -> &mut [i32] {
    // SAFETY: as `as_f32`.
    unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr() as *mut i32, b.len() / 4) }
}

// ---------------------------------------------------------------------------------------------
// im2col

/// A 1x1 convolution with unit strides and no padding: output pixel q reads input pixel q.
fn is_pointwise(p: &ConvParams) -> bool {
    p.r == 1 && p.s == 1 && p.stride_h == 1 && p.stride_w == 1 && p.pad_h == 0 && p.pad_w == 0
}

/// A run of a column panel's pixels that share an output row: panel slots `i0..i0 + len`,
/// output row `oy`, output columns from `ox0`.
#[derive(Clone, Copy, Default)]
struct Segment {
    i0: usize,
    len: usize,
    oy: usize,
    ox0: usize,
}

/// The row segments of `n` pixels from `p0` (at most `n`, so 32 suffice).
fn segments(p: &ConvParams, p0: usize, n: usize, out: &mut [Segment; 32]) -> usize {
    let ow = p.ow as usize;
    let (mut i, mut count) = (0, 0);
    while i < n {
        let q = p0 + i;
        let (oy, ox0) = (q / ow, q % ow);
        let len = (ow - ox0).min(n - i);
        out[count] = Segment {
            i0: i,
            len,
            oy,
            ox0,
        };
        count += 1;
        i += len;
    }
    count
}

/// For input row offset `off` (`ix = ox * stride + off`), the output columns `lo..hi` whose
/// input column lies inside `0..w`, clipped to `a..b`.
#[inline(always)]
fn valid_columns(off: isize, stride: isize, w: isize, a: usize, b: usize) -> (usize, usize) {
    let lo = if off >= 0 {
        0
    } else {
        (-off + stride - 1) / stride
    };
    let hi = if w - off <= 0 {
        0
    } else {
        (w - off + stride - 1) / stride
    };
    let lo = (lo as usize).max(a);
    let hi = (hi.max(0) as usize).min(b);
    (lo, hi.max(lo))
}

/// im2col of `n` pixels from `p0` into `[j][nr]`: every tap (c, r, s) gets a row of `nr`
/// values, `conv(x)` inside the image and `pad` outside or past `n`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn gather<T: Copy, U: Copy>(
    p: &ConvParams,
    x: &[T],
    p0: usize,
    n: usize,
    nr: usize,
    dst: &mut [U],
    pad: U,
    conv: impl Fn(T) -> U,
) {
    let (h, w) = (p.h as isize, p.w as isize);
    let plane = (p.h * p.w) as usize;
    let (sh, sw) = (p.stride_h as isize, p.stride_w as isize);
    let mut segs = [Segment::default(); 32];
    let nseg = segments(p, p0, n, &mut segs);
    let mut j = 0;
    for c in 0..(p.c / p.groups) as usize {
        let xc = &x[c * plane..][..plane];
        for ry in 0..p.r as isize {
            for sx in 0..p.s as isize {
                let row = &mut dst[j * nr..][..nr];
                j += 1;
                for sg in &segs[..nseg] {
                    let out = &mut row[sg.i0..sg.i0 + sg.len];
                    let iy = sg.oy as isize * sh + ry * p.dil_h as isize - p.pad_h as isize;
                    if iy < 0 || iy >= h {
                        out.fill(pad);
                        continue;
                    }
                    let off = sx * p.dil_w as isize - p.pad_w as isize;
                    let (lo, hi) = valid_columns(off, sw, w, sg.ox0, sg.ox0 + sg.len);
                    let (lo_i, hi_i) = (lo - sg.ox0, hi - sg.ox0);
                    out[..lo_i].fill(pad);
                    out[hi_i..].fill(pad);
                    let start = (iy * w + lo as isize * sw + off) as usize;
                    let src = &xc[start..];
                    if sw == 1 {
                        for (d, v) in out[lo_i..hi_i].iter_mut().zip(src) {
                            *d = conv(*v);
                        }
                    } else {
                        for (i, d) in out[lo_i..hi_i].iter_mut().enumerate() {
                            *d = conv(src[i * sw as usize]);
                        }
                    }
                }
                row[n..].fill(pad);
            }
        }
    }
}

/// im2col of int8 activations as `x + 128` bytes in `[j/4][nr][4]`; taps outside the image
/// hold the zero point (`zp + 128`), so they add nothing after the correction. Gathered
/// `[j][nr]` a block of 4 taps at a time, then interleaved.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn gather_u8(
    p: &ConvParams,
    x: &[i8],
    p0: usize,
    n: usize,
    nr: usize,
    kdim4: usize,
    dst: &mut [u8],
    pad: u8,
) {
    let kdim = p.kdim as usize;
    // rows of taps, then interleave four at a time: [j][nr] → [j/4][nr][4]
    let mut rows = [0u8; 32 * 4];
    let to_u8 = |v: i8| (v as i32 + 128) as u8;
    let mut block = TapRows::new(p, x, p0, n, nr, pad);
    for j4 in 0..kdim4 / 4 {
        for q in 0..4 {
            let j = j4 * 4 + q;
            let r = &mut rows[q * nr..(q + 1) * nr];
            if j < kdim {
                block.row(j, r, &to_u8);
            } else {
                r.fill(0); // padded taps: weights are 0 there
            }
        }
        let d = &mut dst[j4 * nr * 4..][..nr * 4];
        for i in 0..nr {
            for q in 0..4 {
                d[i * 4 + q] = rows[q * nr + i];
            }
        }
    }
}

/// One tap's row of a column panel at a time (the INT8 gather interleaves them).
struct TapRows<'a> {
    p: &'a ConvParams,
    x: &'a [i8],
    segs: [Segment; 32],
    nseg: usize,
    n: usize,
    pad: u8,
}

impl<'a> TapRows<'a> {
    fn new(p: &'a ConvParams, x: &'a [i8], p0: usize, n: usize, _nr: usize, pad: u8) -> Self {
        let mut segs = [Segment::default(); 32];
        let nseg = segments(p, p0, n, &mut segs);
        TapRows {
            p,
            x,
            segs,
            nseg,
            n,
            pad,
        }
    }

    #[inline(always)]
    fn row(&mut self, j: usize, row: &mut [u8], conv: &impl Fn(i8) -> u8) {
        let p = self.p;
        let (r, s) = (p.r as usize, p.s as usize);
        let (c, ry, sx) = (j / (r * s), (j / s) % r, j % s);
        let (h, w) = (p.h as isize, p.w as isize);
        let plane = (p.h * p.w) as usize;
        let xc = &self.x[c * plane..][..plane];
        let sw = p.stride_w as isize;
        for sg in &self.segs[..self.nseg] {
            let out = &mut row[sg.i0..sg.i0 + sg.len];
            let iy = sg.oy as isize * p.stride_h as isize + ry as isize * p.dil_h as isize
                - p.pad_h as isize;
            if iy < 0 || iy >= h {
                out.fill(self.pad);
                continue;
            }
            let off = sx as isize * p.dil_w as isize - p.pad_w as isize;
            let (lo, hi) = valid_columns(off, sw, w, sg.ox0, sg.ox0 + sg.len);
            let (lo_i, hi_i) = (lo - sg.ox0, hi - sg.ox0);
            out[..lo_i].fill(self.pad);
            out[hi_i..].fill(self.pad);
            let start = (iy * w + lo as isize * sw + off) as usize;
            let src = &xc[start..];
            if sw == 1 {
                for (d, v) in out[lo_i..hi_i].iter_mut().zip(src) {
                    *d = conv(*v);
                }
            } else {
                for (i, d) in out[lo_i..hi_i].iter_mut().enumerate() {
                    *d = conv(src[i * sw as usize]);
                }
            }
        }
        row[self.n..].fill(self.pad);
    }
}

// ---------------------------------------------------------------------------------------------
// Micro-kernels: acc[r][x] = sum_j a[j][r] * b[j][x]

pub(super) fn micro_f32(isa: Isa, kdim: usize, a: &[f32], b: &[f32], acc: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: the ISA was detected on this CPU; slices hold kdim x MR / kdim x nr.
        Isa::Avx512 | Isa::Avx512Vnni => unsafe { return micro_f32_avx512(kdim, a, b, acc) },
        Isa::Avx2 => unsafe { return micro_f32_avx2(kdim, a, b, acc) },
        Isa::Portable => {}
    }
    let _ = isa;
    micro_f32_generic::<8, false>(kdim, a, b, acc)
}

#[inline(always)]
fn micro_f32_generic<const NR: usize, const FMA: bool>(
    kdim: usize,
    a: &[f32],
    b: &[f32],
    out: &mut [f32],
) {
    let mut acc = [[0f32; NR]; MR];
    for (av, bv) in a.chunks_exact(MR).zip(b.chunks_exact(NR)).take(kdim) {
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
fn micro_f32_avx2(kdim: usize, a: &[f32], b: &[f32], acc: &mut [f32]) {
    micro_f32_generic::<8, true>(kdim, a, b, acc)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn micro_f32_avx512(kdim: usize, a: &[f32], b: &[f32], out: &mut [f32]) {
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

/// [`micro_f32`] with each tap's `nr` pixels read at `b + offs[j]` (the padded input).
///
/// # Safety
/// `b + offs[j] .. + nr` is readable for every j < kdim.
#[inline(always)]
unsafe fn micro_f32_rows(
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
        Isa::Portable => {}
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

/// [`micro_i8`] with tap group j4's `width` pixels (4 bytes each) read at `b + offs[j4]`.
///
/// # Safety
/// `b + offs[j4] .. + 4 * width` is readable for every j4 < k4.
#[inline(always)]
unsafe fn micro_i8_rows(
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
        Isa::Portable => {}
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

/// [`micro_f32`] on 16 columns (one AVX-512 register per channel), packed B `[j][16]`.
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

fn micro_i8(isa: Isa, k4: usize, a: &[i8], b: &[u8], acc: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: the ISA was detected on this CPU; slices hold k4 x MR x 4 / k4 x nr x 4.
        Isa::Avx512Vnni => unsafe { return micro_i8_vnni(k4, a, b, acc) },
        Isa::Avx512 => unsafe { return micro_i8_avx2::<32>(k4, a, b, acc) },
        Isa::Avx2 => unsafe { return micro_i8_avx2::<8>(k4, a, b, acc) },
        Isa::Portable => {}
    }
    let _ = isa;
    micro_i8_generic::<8>(k4, a, b, acc)
}

#[inline(always)]
fn micro_i8_generic<const NR: usize>(k4: usize, a: &[i8], b: &[u8], out: &mut [i32]) {
    let mut acc = [[0i32; NR]; MR];
    for (av, bv) in a.chunks_exact(MR * 4).zip(b.chunks_exact(NR * 4)).take(k4) {
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
fn micro_i8_avx2<const NR: usize>(k4: usize, a: &[i8], b: &[u8], acc: &mut [i32]) {
    micro_i8_generic::<NR>(k4, a, b, acc)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
fn micro_i8_vnni(k4: usize, a: &[i8], b: &[u8], out: &mut [i32]) {
    use std::arch::x86_64::*;
    assert!(a.len() >= k4 * MR * 4 && b.len() >= k4 * 128 && out.len() >= MR * 32);
    let mut acc = [_mm512_setzero_si512(); 2 * MR];
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    for j in 0..k4 {
        // SAFETY: j < k4, bounds asserted above.
        unsafe {
            let b0 = _mm512_loadu_si512(pb.add(j * 128) as *const _);
            let b1 = _mm512_loadu_si512(pb.add(j * 128 + 64) as *const _);
            for r in 0..MR {
                let w = _mm512_set1_epi32(std::ptr::read_unaligned(
                    pa.add((j * MR + r) * 4) as *const i32
                ));
                acc[2 * r] = _mm512_dpbusd_epi32(acc[2 * r], b0, w);
                acc[2 * r + 1] = _mm512_dpbusd_epi32(acc[2 * r + 1], b1, w);
            }
        }
    }
    for (i, v) in acc.iter().enumerate() {
        // SAFETY: out holds MR x 32 i32.
        unsafe { _mm512_storeu_si512(out.as_mut_ptr().add(i * 16) as *mut _, *v) };
    }
}

// ---------------------------------------------------------------------------------------------
// Direct (grouped / depthwise) convolution

pub enum DirectWeights {
    F32(Vec<f32>),
    I8(Vec<i8>),
}

pub struct DirectConv {
    pub p: ConvParams,
    /// `[k][kpad]` as in the plan.
    weights: DirectWeights,
    epi: Epilogue,
    isa: Isa,
    /// INT8 weights widened once at load (`[k][kdim]`): as f32 for sums exact in f32 (see
    /// `int8_in_f32`), else as i32.
    w_f32: Vec<f32>,
    w_i32: Vec<i32>,
    /// Padded rows of the task's input channels, each split into `stride_w` phases (as
    /// [`RowSource`]): every tap of every output row is then one contiguous run.
    hp: usize,
    row: usize,
    wph: usize,
}

impl DirectConv {
    pub fn new_f32(p: ConvParams, w: &[f32], bias: &[f32], isa: Isa) -> DirectConv {
        Self::with(p, DirectWeights::F32(w.to_vec()), bias, vec![], isa)
    }

    pub fn new_i8(p: ConvParams, w: &[i8], mult: &[f32], bias: &[f32], isa: Isa) -> DirectConv {
        Self::with(p, DirectWeights::I8(w.to_vec()), bias, mult.to_vec(), isa)
    }

    fn with(
        p: ConvParams,
        weights: DirectWeights,
        bias: &[f32],
        mult: Vec<f32>,
        isa: Isa,
    ) -> DirectConv {
        let (h, w) = (p.h as usize, p.w as usize);
        let (ph, pw, sw) = (p.pad_h as usize, p.pad_w as usize, p.stride_w as usize);
        let hp = (h + ph).max(
            (p.oh as usize - 1) * p.stride_h as usize + (p.r as usize - 1) * p.dil_h as usize + 1,
        );
        let wp = (w + pw).max((p.ow as usize - 1) * sw + (p.s as usize - 1) * p.dil_w as usize + 1);
        let wph = wp.div_ceil(sw);
        let (kdim, kpad) = (p.kdim as usize, p.kpad as usize);
        let widened: Vec<i32> = match &weights {
            DirectWeights::I8(w) => (0..p.k as usize)
                .flat_map(|k| w[k * kpad..k * kpad + kdim].iter().map(|v| *v as i32))
                .collect(),
            DirectWeights::F32(_) => vec![],
        };
        DirectConv {
            p,
            w_f32: widened.iter().map(|v| *v as f32).collect(),
            w_i32: widened,
            weights,
            epi: Epilogue {
                bias: bias.to_vec(),
                mult,
                corr: vec![],
            },
            isa,
            hp,
            row: sw * wph,
            wph,
        }
    }

    pub fn is_int8(&self) -> bool {
        matches!(self.weights, DirectWeights::I8(_))
    }

    /// One task per (image, output channel).
    pub fn tasks(&self) -> usize {
        (self.p.n * self.p.k) as usize
    }

    fn cpg(&self) -> usize {
        (self.p.c / self.p.groups) as usize
    }

    /// Values of the padded input channels: their planes plus one row of slack (a flat
    /// pass's last row reads past the plane into columns it discards).
    fn padded_len(&self) -> usize {
        self.cpg() * self.hp * self.row + self.acc_stride()
    }

    pub fn scratch_bytes(&self) -> usize {
        // padded input channels (4 bytes per value, int8 widened) and the accumulators
        let acc = (self.p.oh as usize * self.acc_stride()).max(self.p.ow as usize);
        (self.padded_len() + acc) * 4 + 64
    }

    /// # Safety
    /// As [`GemmConv::run_task`].
    pub unsafe fn run_task(&self, t: usize, x: InBuf, y: OutBuf, scratch: &mut [u8]) {
        per_isa!(
            self.isa,
            direct_task_avx512,
            direct_task_avx2,
            direct_task_portable,
            (self, t, x, y, scratch)
        )
    }

    /// Copy input channel plane `src` into a padded, phase-split plane (`pad` outside).
    #[inline(always)]
    fn pad_plane<T: Copy, U: Copy>(&self, src: &[T], dst: &mut [U], pad: U, conv: impl Fn(T) -> U) {
        let p = &self.p;
        let (w, ph, pw, sw) = (
            p.w as usize,
            p.pad_h as usize,
            p.pad_w as usize,
            p.stride_w as usize,
        );
        dst.fill(pad);
        for (iy, line) in src.chunks_exact(w).enumerate() {
            let d = &mut dst[(iy + ph) * self.row..][..self.row];
            match sw {
                1 => {
                    for (o, v) in d[pw..pw + w].iter_mut().zip(line) {
                        *o = conv(*v);
                    }
                }
                2 => split_phases::<2, _, _>(line, d, pw, self.wph, &conv),
                _ => {
                    for (ix, v) in line.iter().enumerate() {
                        let pc = ix + pw;
                        d[(pc % sw) * self.wph + pc / sw] = conv(*v);
                    }
                }
            }
        }
    }

    /// A tap's values for the whole output plane are one run of `oh` accumulator rows (see
    /// [`DirectConv::acc_stride`]): its length.
    fn flat_span(&self) -> usize {
        self.p.oh as usize * self.acc_stride()
    }

    /// Accumulator row stride of a flat pass: output row oy's taps start `stride_h` padded
    /// rows after row oy - 1's (a vertical stride of 2 computes every other row in vain,
    /// still cheaper than short row-by-row passes).
    fn acc_stride(&self) -> usize {
        self.p.stride_h as usize * self.row
    }

    /// Every tap (weight index, start of its run for output row 0) in the twin's order.
    fn plane_taps(&self, cpg: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        let (r, s) = (self.p.r as usize, self.p.s as usize);
        (0..cpg * r * s).map(move |wi| {
            let (ci, ry, sx) = (wi / (r * s), (wi / s) % r, wi % s);
            (wi, self.tap_start(ci, 0, ry, sx))
        })
    }

    /// The run of tap (ci, ry, sx) for output row `oy` in the padded planes: `ow` values.
    #[inline(always)]
    fn tap_start(&self, ci: usize, oy: usize, ry: usize, sx: usize) -> usize {
        let p = &self.p;
        let col = sx * p.dil_w as usize;
        let sw = p.stride_w as usize;
        ci * self.hp * self.row
            + (oy * p.stride_h as usize + ry * p.dil_h as usize) * self.row
            + (col % sw) * self.wph
            + col / sw
    }

    /// Sum every tap of one output channel from the padded planes `pad` (weights `w`, in
    /// tap order) into `acc`: output row oy is `acc[oy * acc_stride()..][..ow]`. Each tap is
    /// one pass over the whole plane (rows at the accumulator stride, columns past `ow`
    /// discarded); each output adds its taps in the twin's order. (No closures here: their
    /// bodies would be compiled without the caller's target features.)
    #[inline(always)]
    fn accumulate<T>(&self, pad: &[T], w: &[T], acc: &mut [T])
    where
        T: Copy + Default + std::ops::Add<Output = T> + std::ops::Mul<Output = T>,
    {
        let span = self.flat_span();
        let acc = &mut acc[..span];
        acc.fill(T::default());
        for (wi, at) in self.plane_taps(self.cpg()) {
            let wv = w[wi];
            for (a, v) in acc.iter_mut().zip(&pad[at..][..span]) {
                *a = *a + *v * wv;
            }
        }
    }

    /// INT8 sums small enough to be exact in f32 (|x - zp| <= 255, |w| <= 128, fewer than
    /// 2^24 / 32640 taps) run on the float pipeline, which vectorises better than i32.
    fn int8_in_f32(&self) -> bool {
        self.cpg() * (self.p.r * self.p.s) as usize <= (1 << 24) / (255 * 128)
    }

    #[inline(always)]
    unsafe fn task(&self, t: usize, x: InBuf, y: OutBuf, scratch: &mut [u8]) {
        let p = &self.p;
        let (k, c) = (p.k as usize, p.c as usize);
        let (img, kk) = (t / k, t % k);
        let (cpg, kpg) = (self.cpg(), k / p.groups as usize);
        let c0 = (kk / kpg) * cpg;
        let plane = (p.h * p.w) as usize;
        let ow = p.ow as usize;
        let out_base = (img * k + kk) * p.oh as usize * ow;
        let x_base = (img * c + c0) * plane;
        let padded = self.padded_len();
        let hw = self.hp * self.row;
        let stride = self.acc_stride();
        // Taps outside the image read padding that adds nothing: +0.0 for float (the sum
        // equals the twin's, which skips them), (x - zp) = 0 for int8.
        unsafe {
            match (x, &self.weights) {
                (InBuf::F32(x), DirectWeights::F32(w)) => {
                    let x = std::slice::from_raw_parts(x.add(x_base), cpg * plane);
                    let w = &w[kk * p.kpad as usize..][..p.kdim as usize];
                    let (pad, acc) = as_f32(scratch).split_at_mut(padded);
                    for ci in 0..cpg {
                        let dst = &mut pad[ci * hw..][..hw];
                        self.pad_plane(&x[ci * plane..][..plane], dst, 0.0, |v| v);
                    }
                    self.accumulate(pad, w, acc);
                    for oy in 0..p.oh as usize {
                        let row = Acc::F32(&acc[oy * stride..][..ow]);
                        self.epi.row(p, kk, row, y, out_base + oy * ow);
                    }
                }
                (InBuf::I8(x), DirectWeights::I8(_)) if self.int8_in_f32() => {
                    let x = std::slice::from_raw_parts(x.add(x_base), cpg * plane);
                    let w = &self.w_f32[kk * p.kdim as usize..][..p.kdim as usize];
                    let (pad, acc) = as_f32(scratch).split_at_mut(padded);
                    let zp = p.in_zp;
                    for ci in 0..cpg {
                        let dst = &mut pad[ci * hw..][..hw];
                        let src = &x[ci * plane..][..plane];
                        self.pad_plane(src, dst, 0.0, |v| (v as i32 - zp) as f32);
                    }
                    self.accumulate(pad, w, acc);
                    for oy in 0..p.oh as usize {
                        let row = Acc::IntF32(&acc[oy * stride..][..ow]);
                        self.epi.row(p, kk, row, y, out_base + oy * ow);
                    }
                }
                (InBuf::I8(x), DirectWeights::I8(_)) => {
                    let x = std::slice::from_raw_parts(x.add(x_base), cpg * plane);
                    let w = &self.w_i32[kk * p.kdim as usize..][..p.kdim as usize];
                    let (pad, acc) = as_i32(scratch).split_at_mut(padded);
                    let zp = p.in_zp;
                    for ci in 0..cpg {
                        let dst = &mut pad[ci * hw..][..hw];
                        self.pad_plane(&x[ci * plane..][..plane], dst, 0, |v| v as i32 - zp);
                    }
                    self.accumulate(pad, w, acc);
                    for oy in 0..p.oh as usize {
                        let row = Acc::I32(&acc[oy * stride..][..ow], 0);
                        self.epi.row(p, kk, row, y, out_base + oy * ow);
                    }
                }
                _ => unreachable!("input and weight types checked at load"),
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn direct_task_avx512(d: &DirectConv, t: usize, x: InBuf, y: OutBuf, s: &mut [u8]) {
    unsafe { d.task(t, x, y, s) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn direct_task_avx2(d: &DirectConv, t: usize, x: InBuf, y: OutBuf, s: &mut [u8]) {
    unsafe { d.task(t, x, y, s) }
}

unsafe fn direct_task_portable(d: &DirectConv, t: usize, x: InBuf, y: OutBuf, s: &mut [u8]) {
    unsafe { d.task(t, x, y, s) }
}
